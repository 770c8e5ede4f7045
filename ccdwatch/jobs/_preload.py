"""Imported by the workers' fork server only (`ccdwatch.jobs.forkserver.PRELOAD`): warms it up."""

from ccdwatch.jobs.forkserver import mark_ready, warm_imports

warm_imports()
mark_ready()
