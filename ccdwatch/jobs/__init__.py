"""Work that runs on the workers, away from the daemon.

``tasks``       the jobs (ingest, build_master, calibrate_light, stack_group): specs in, files and
                small results out, no catalogue
``pool``        the process pool that runs them with time and memory limits
``forkserver``  the workers' multiprocessing context, started early and warm

This package's ``__init__`` imports nothing: the CLI starts the fork server
(``ccdwatch.jobs.forkserver``) before numpy, astropy or OpenCV are loaded.
"""
