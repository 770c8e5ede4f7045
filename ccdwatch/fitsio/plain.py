"""Plain images decoded straight from the bytes read: the common raw frame (an uncompressed
image, unscaled or with the unsigned-integer offset) without a second parse by astropy.

The header walk (`ccdwatch.fitsio.layout`) has already validated the layout and sizes of every
HDU of these bytes; astropy would only copy the data out of a ``BytesIO``, convert the
pseudo-unsigned integers and copy it again to native byte order. The result is what
``astropy.io.fits`` gives with ``uint=True`` (tested value for value and dtype for dtype); any
other image (scaled, with BLANK, random groups, more than two real axes) returns None and is
decoded by astropy as before.
"""

from __future__ import annotations

import numbers

import numpy as np

from ccdwatch.fitsio.layout import _HDU

__all__ = ["plain_image"]

#: BITPIX -> the stored (big-endian) dtype
_STORED = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
#: BITPIX -> (the BZERO astropy reads as an unsigned offset, the dtype it gives, the bit to flip)
_OFFSET = {8: (-128, np.int8, 0x80), 16: (32768, np.uint16, 0x8000), 32: (2**31, np.uint32, 0x8000_0000),
           64: (2**63, np.uint64, 0x8000_0000_0000_0000)}


def _number(value: object, default: int) -> float | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def plain_image(payload: bytes, hdu: _HDU) -> np.ndarray | None:
    """The 2-D data of ``hdu`` in ``payload`` (native byte order, writable), or None when it is
    not a plain image (then astropy decodes it)."""
    if hdu.compressed or hdu.groups or hdu.xtension not in (None, "IMAGE") or hdu.bitpix not in _STORED:
        return None
    if len(hdu.axes) < 2 or any(n != 1 for n in hdu.axes[2:]) or "BLANK" in hdu.header:
        return None
    bscale, bzero = _number(hdu.header.get("BSCALE"), 1), _number(hdu.header.get("BZERO"), 0)
    if bscale != 1.0 or bzero is None:
        return None
    nx, ny = hdu.axes[0], hdu.axes[1]
    if hdu.data_offset + nx * ny * abs(hdu.bitpix) // 8 > len(payload):
        return None
    stored = np.frombuffer(payload, dtype=_STORED[hdu.bitpix], count=nx * ny, offset=hdu.data_offset)
    if bzero == 0.0:
        return stored.reshape(ny, nx).astype(stored.dtype.newbyteorder("="))
    offset = _OFFSET.get(hdu.bitpix)
    if offset is None or bzero != float(offset[0]):
        return None
    bits = stored.astype(stored.dtype.newbyteorder("=")).view(f"u{stored.dtype.itemsize}")
    bits ^= bits.dtype.type(offset[2])  # adding the offset to a two's complement value flips its top bit
    return bits.view(offset[1]).reshape(ny, nx)
