"""Tile-compressed images (fpack, ``ZIMAGE = T``) checked tile by tile before astropy decodes them.

The header walk (:mod:`ccdwatch.fitsio.layout`) already caps the image a compressed HDU declares
(ZBITPIX x ZNAXISn) and the compressed table against the file size. That is not enough: astropy
inflates each GZIP tile without a bound, so a 250 kB file whose one tile inflates to 256 MiB of
zeros costs 600 MB of memory before astropy notices the size is wrong. So before any pixel is
decoded, :func:`check_tiles` checks

* the tiles: every ZTILEn between 1 and ZNAXISn, and the table holding one row per tile;
* every GZIP stream (``GZIP_1``/``GZIP_2`` tiles, and the ``GZIP_COMPRESSED_DATA`` column of
  tiles that could not be quantised) by inflating it with a bound: the size of the tile's pixels;
* every HCOMPRESS stream's own image size (its header) against the tile's.

RICE_1 and PLIO_1 decoders write exactly one tile's pixels whatever the stream says.
Memory: the compressed table plus one tile.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable

import numpy as np
from astropy.io import fits

from ccdwatch.fitsio.rejected import RejectedFile

__all__ = ["check_tiles"]

_GZIP = {"GZIP_1", "GZIP_2"}
_HCOMPRESS_MAGIC = b"\xdd\x99"


def _prod(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _tiles(header: fits.Header, zaxes: tuple[int, ...], where: str) -> tuple[tuple[int, ...], int]:
    """ZTILEn (default: one row per tile) and the number of tiles; refuse absurd tiles."""
    tile = []
    for i, n in enumerate(zaxes, start=1):
        t = header.get(f"ZTILE{i}", n if i == 1 else 1)
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= int(t) <= n:
            raise RejectedFile("bad-header", f"{where}: ZTILE{i} = {t!r} is not a tile size between 1 "
                               f"and ZNAXIS{i} = {n}")
        tile.append(int(t))
    count = _prod(-(-n // t) for n, t in zip(zaxes, tile, strict=True))
    return tuple(tile), count


def _inflate_bounded(stream: bytes, bound: int, where: str, row: int) -> None:
    """Inflate a zlib/gzip stream to at most ``bound`` bytes; more is a decompression bomb."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, as CFITSIO writes either
    try:
        out = inflater.decompress(stream, bound + 1)
    except zlib.error as exc:
        raise RejectedFile("unreadable", f"{where}: tile {row + 1} is not a valid GZIP stream ({exc})") from None
    if len(out) > bound or inflater.unconsumed_tail:
        raise RejectedFile("too-large", f"{where}: tile {row + 1} inflates to more than its {bound} bytes "
                           "of pixels (a decompression bomb); refused")


def _hcompress_size(stream: bytes, where: str, row: int, tile: tuple[int, ...]) -> None:
    if len(stream) < 10 or stream[:2] != _HCOMPRESS_MAGIC:
        raise RejectedFile("unreadable", f"{where}: tile {row + 1} is not an HCOMPRESS stream")
    ny, nx = (int(v) for v in np.frombuffer(stream[2:10], dtype=">i4"))
    if ny * nx > _prod(tile) or ny < 0 or nx < 0:
        raise RejectedFile("too-large", f"{where}: tile {row + 1} says it holds {nx}x{ny} pixels, more than "
                           f"its tile of {_prod(tile)}; refused")


def check_tiles(payload: bytes, index: int, zaxes: tuple[int, ...], where: str) -> None:
    """Refuse a tile-compressed image HDU ``index`` of the FITS bytes ``payload`` whose tiles would
    decode to more than they declare (see the module's docstring). Raises :class:`RejectedFile`."""
    with fits.open(io.BytesIO(payload), mode="readonly", memmap=False, disable_image_compression=True,
                   lazy_load_hdus=True) as hdul:
        hdu = hdul[index]
        header = hdu.header
        tile, count = _tiles(header, zaxes, where)
        method = str(header.get("ZCMPTYPE", "")).strip().upper()
        table = hdu.data
        if table is None or len(table) != count:
            raise RejectedFile("bad-header", f"{where}: the compressed table has "
                               f"{0 if table is None else len(table)} rows for {count} tiles")
        names = {n.upper() for n in table.columns.names}
        bound = _prod(tile) * 8  # the widest pixel: 8 bytes (float64, int64)
        for row in range(count):
            if "COMPRESSED_DATA" in names:
                stream = np.asarray(table.field("COMPRESSED_DATA")[row]).tobytes()
                if method in _GZIP and stream:
                    _inflate_bounded(stream, bound, where, row)
                elif method == "HCOMPRESS_1" and stream:
                    _hcompress_size(stream, where, row, tile)
            if "GZIP_COMPRESSED_DATA" in names:
                stream = np.asarray(table.field("GZIP_COMPRESSED_DATA")[row]).tobytes()
                if stream:
                    _inflate_bounded(stream, bound, where, row)
