"""Imported by the workers' fork server only (`ccdwatch.forkserver.PRELOAD`): warms it up."""

from ccdwatch.forkserver import warm_imports

warm_imports()
