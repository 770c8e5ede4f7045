"""The only code in ccdwatch that opens FITS files.

Raw frames come from a camera program we do not control, so :func:`read_raw` treats every file as
hostile until proven otherwise (opened once without following links, headers walked and sizes
checked before any data is read, never memory-mapped; every refusal is a :class:`RejectedFile`).
Raw files are never modified, moved, or written next to. Products (our own files) are written
atomically with :func:`write_product`: temp file in the same directory, fsync, ``os.replace``,
fsync of the directory. :func:`safe_component` and :func:`safe_product_path` turn untrusted header
values into path components that cannot leave the products root.

Modules, one job each:

* :mod:`~ccdwatch.fitsio.raw` -- the hostile-file reader (:func:`read_raw`, :class:`RawFrame`);
* :mod:`~ccdwatch.fitsio.layout` -- the header walk that validates declared sizes before reading;
* :mod:`~ccdwatch.fitsio.unwritten` -- preallocated files whose tail is not written yet;
* :mod:`~ccdwatch.fitsio.rejected` -- :class:`RejectedFile` and its reason codes, :class:`ProductGone`;
* :mod:`~ccdwatch.fitsio.descriptor` -- positioned reads through one file descriptor;
* :mod:`~ccdwatch.fitsio.product` -- reading our own products back, :func:`sha256_file`;
* :mod:`~ccdwatch.fitsio.atomic` -- durable product writes, :class:`DiskFull`, temp-file sweeping;
* :mod:`~ccdwatch.fitsio.compress` -- tile-compressed products, written and read back as plain;
* :mod:`~ccdwatch.fitsio.tiles` -- tile-compressed raw images checked tile by tile (no bomb);
* :mod:`~ccdwatch.fitsio.names` -- temp and FITS file names, safe path components.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ccdwatch.lazy import module_getattr

if TYPE_CHECKING:
    from ccdwatch.fitsio.atomic import DiskFull, sweep_temp_files, write_bytes_atomic, write_product
    from ccdwatch.fitsio.compress import Compression
    from ccdwatch.fitsio.descriptor import BLOCK_SIZE, read_ahead
    from ccdwatch.fitsio.names import TEMP_PREFIX, fits_suffix, is_temp_name, safe_component, safe_product_path
    from ccdwatch.fitsio.product import (
        MappedProduct,
        map_product,
        map_product_planes,
        read_product,
        read_product_hdus,
        read_product_table,
        sha256_file,
    )
    from ccdwatch.fitsio.raw import RawFrame, read_raw
    from ccdwatch.fitsio.rejected import ProductGone, RejectedFile

#: Where each public name lives. Loaded on first use (PEP 562), so code that only names files or
#: sweeps temp files (the daemon's start-up) never imports astropy or numpy.
_HOME = {
    "DiskFull": "atomic", "sweep_temp_files": "atomic", "write_bytes_atomic": "atomic",
    "write_product": "atomic",
    "Compression": "compress", "BLOCK_SIZE": "descriptor",
    "TEMP_PREFIX": "names", "fits_suffix": "names", "is_temp_name": "names", "safe_component": "names",
    "safe_product_path": "names",
    "MappedProduct": "product", "map_product": "product", "map_product_planes": "product",
    "read_product": "product", "read_product_hdus": "product",
    "read_product_table": "product",
    "sha256_file": "product",
    "RawFrame": "raw", "read_ahead": "descriptor", "read_raw": "raw", "RejectedFile": "rejected",
    "ProductGone": "rejected",
}

__all__ = [
    "BLOCK_SIZE", "TEMP_PREFIX", "Compression", "DiskFull", "RawFrame", "RejectedFile", "fits_suffix",
    "MappedProduct", "ProductGone", "is_temp_name", "map_product", "map_product_planes",
    "read_ahead", "read_product", "read_product_hdus", "read_product_table", "read_raw", "safe_component",
    "safe_product_path",
    "sha256_file", "sweep_temp_files", "write_bytes_atomic", "write_product",
]


__getattr__ = module_getattr(__name__, _HOME)
