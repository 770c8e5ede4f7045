"""ccdwatch: an unattended CCD reduction daemon.

Watches the directory a camera program writes FITS files into, catalogues every frame in
SQLite, builds master calibrations, calibrates lights as they arrive and stacks completed
groups.
"""

__version__ = "0.1.0"
