"""Reading our own products back (trusted files, unlike raw frames; tile-compressed ones as if
plain, see :mod:`ccdwatch.fitsio.compress`) and hashing files."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from ccdwatch.fitsio.compress import expand
from ccdwatch.fitsio.descriptor import _CHUNK, _kind
from ccdwatch.fitsio.rejected import ProductGone

__all__ = ["MappedProduct", "map_product", "map_product_planes", "read_product", "read_product_hdus",
           "read_product_table", "sha256_file"]


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a regular file's bytes, streamed in 1 MiB chunks.

    Raises
    ------
    OSError
        If the path is not a regular file (a FIFO is refused, not waited on).
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(st.st_mode)})", os.fspath(path))
        return _sha256_fd(fd)
    finally:
        os.close(fd)


def _sha256_fd(fd: int) -> str:
    """SHA-256 (hex) of what is left to read of an open file."""
    digest = hashlib.sha256()
    while chunk := os.read(fd, _CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _open_product(path: str | os.PathLike, sha256: str | None = None) -> fits.HDUList:
    """Every HDU of a product loaded into memory, read straight from the file: astropy reads each
    array from a real file into its own buffer (from an in-memory copy of the file it copied every
    array twice more: ~4x the time of a 2k light with its UNCERT, the stack job's largest read).
    With ``sha256``, the file (the same open file: the bytes parsed are those hashed) must have
    that SHA-256, else :class:`ProductGone`."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(st.st_mode)})", os.fspath(path))
        if sha256 is not None:
            _check(fd, os.fspath(path), sha256)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            hdul = fits.open(f, mode="readonly", memmap=False, lazy_load_hdus=False)
            for hdu in hdul:
                _ = hdu.data  # load every HDU while the file is open
            return expand(hdul)  # a tile-compressed product as if it were plain
        except (Exception, Warning) as exc:  # noqa: BLE001
            raise OSError(errno.EIO, f"cannot read product ({type(exc).__name__}: {exc})", os.fspath(path)) from None


def read_product(path: str | os.PathLike) -> tuple[fits.Header, np.ndarray]:
    """Read one of our own products: header and float32 (native order) data of HDU 0, or of the
    first image HDU if HDU 0 has no data.

    Raises
    ------
    OSError
        If the file cannot be read or parsed. ValueError if it holds no image.
    """
    with _open_product(path) as hdul:
        for hdu in hdul:
            if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and hdu.data is not None:
                return hdu.header.copy(), np.array(hdu.data, dtype=np.float32, copy=True)
    raise ValueError(f"{os.fspath(path)} holds no image HDU")


def _check(fd: int, path: str, sha256: str) -> None:
    """The open product ``fd`` has the SHA-256 its catalogue row records (read again from its start
    after), else :class:`ProductGone`: a bad sector, an edit, a copy put back that is another."""
    actual = _sha256_fd(fd)
    if actual != sha256:
        raise ProductGone(path, f"{path} no longer matches its catalogued SHA-256 "
                                f"({sha256[:12]}..., now {actual[:12]}...)")
    os.lseek(fd, 0, os.SEEK_SET)


def read_product_hdus(path: str | os.PathLike, *, sha256: str | None = None) -> fits.HDUList:
    """All HDUs of one of our products, loaded into memory; no file stays open. With ``sha256``
    (its catalogue row's), the file is hashed first (~1 ms per MB: once per master and worker,
    see `ccdwatch.jobs.tasks.load_master`).

    Raises
    ------
    ProductGone
        If ``sha256`` is given and the file's is another.
    OSError
        If the file cannot be read or parsed.
    """
    hdul = _open_product(path, sha256)
    hdul.close()
    return hdul



#: numpy types of the FITS image types a product's planes may be mapped with (big-endian, as stored).
_MAPPABLE = {8: "u1", 16: ">i2", 32: ">i4", -32: ">f4", -64: ">f8"}


def map_product_planes(path: str | os.PathLike, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Read-only memory maps of a product's primary image (key ``"PRIMARY"``) and of its image
    extensions ``names`` that exist, as stored (big-endian); nothing is read but the headers.
    None when the primary image cannot be mapped as it lies (tile-compressed, scaled, not 2-D):
    read it with `read_product_hdus` instead. The maps stay valid when the file is replaced.

    Raises
    ------
    OSError
        If the file cannot be read or parsed.
    """
    return map_product(path, names).planes


@dataclass(frozen=True)
class MappedProduct:
    """What `map_product` found: the planes' memory maps (None: not mappable as they lie), the
    table asked for (None if absent or not asked for) and the primary header."""

    planes: dict[str, np.ndarray] | None
    table: fits.FITS_rec | None
    header: fits.Header


def map_product(path: str | os.PathLike, names: tuple[str, ...], table: str | None = None) -> MappedProduct:
    """`map_product_planes`, and the table HDU ``table`` read and the primary header, in one
    opening of the file (a stack's inputs: each header parsed once, not once per question).

    Raises
    ------
    OSError
        If the file cannot be read or parsed.
    """
    try:
        with fits.open(os.fspath(path), mode="readonly", memmap=False, lazy_load_hdus=True) as hdul:
            where = {"PRIMARY": 0, **{n: i for i, h in enumerate(hdul) if (n := h.name) in names}}
            found: dict[str, tuple[str, tuple[int, int], int]] = {}
            mappable = True
            for name, i in where.items():
                head = hdul[i].header
                dtype = _MAPPABLE.get(head.get("BITPIX", 0))
                if (not isinstance(hdul[i], (fits.PrimaryHDU, fits.ImageHDU)) or head.get("NAXIS") != 2
                        or dtype is None or head.get("BSCALE", 1) != 1 or head.get("BZERO", 0) != 0):
                    if name == "PRIMARY":
                        mappable = False
                        break
                    continue
                found[name] = (dtype, (int(head["NAXIS2"]), int(head["NAXIS1"])), hdul.fileinfo(i)["datLoc"])
            data = hdul[table].data.copy() if table is not None and table in hdul else None
            header = hdul[0].header.copy()
    except (Exception, Warning) as exc:  # noqa: BLE001
        raise OSError(errno.EIO, f"cannot read product ({type(exc).__name__}: {exc})", os.fspath(path)) from None
    planes: dict[str, np.ndarray] | None = None
    if mappable:
        planes = {name: np.memmap(os.fspath(path), dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
                  for name, (dtype, shape, offset) in found.items()}
    return MappedProduct(planes, data, header)


def read_product_table(path: str | os.PathLike, name: str) -> tuple[fits.FITS_rec, int, fits.Header]:
    """The table HDU ``name`` of one of our products, the pixel count of its image and the image's
    header, reading only the headers and that table (the image is skipped, not read: a stack's
    source lists from 40 calibrated 2k lights without reading their 640 MB of pixels). A
    tile-compressed product's image is its first extension.

    Raises
    ------
    OSError
        If the file cannot be read or parsed, or has no such table.
    """
    try:
        with fits.open(os.fspath(path), mode="readonly", memmap=False, lazy_load_hdus=True) as hdul:
            image = hdul[0]
            if not image.header.get("NAXIS", 0) and len(hdul) > 1 and isinstance(hdul[1], fits.CompImageHDU):
                image = hdul[1]
            head = image.header
            pixels = int(np.prod([head.get(f"NAXIS{i + 1}", 0) for i in range(head.get("NAXIS", 0))])) \
                if head.get("NAXIS", 0) else 0
            return hdul[name].data.copy(), pixels, head.copy()
    except (Exception, Warning) as exc:  # noqa: BLE001
        raise OSError(errno.EIO, f"cannot read product ({type(exc).__name__}: {exc})", os.fspath(path)) from None
