"""The header walk: the layout of a FITS file, validated block by block before any data is read.

The headers are walked 2880-byte block by block: the declared size of every HDU (BITPIX, NAXISn,
PCOUNT, GCOUNT, and ZNAXISn of a tile-compressed image) is checked against the file size and
against a memory budget, so a 5 kB file that declares a 10^6 x 10^6 image is refused without
allocating. The same walk runs on the descriptor (before reading) and on the bytes read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from ccdwatch.fitsio.cards import repair_header
from ccdwatch.fitsio.descriptor import BLOCK_SIZE, MAX_HEADER_BLOCKS, MAX_HEADER_BYTES
from ccdwatch.fitsio.rejected import RejectedFile

__all__ = ["BLOCK_SIZE", "MAX_HDUS", "MAX_HEADER_BLOCKS", "MAX_HEADER_BYTES"]

# the package's logger, as when this was one module: log lines keep their "ccdwatch.fitsio" name
logger = logging.getLogger("ccdwatch.fitsio")

_CARD = 80
#: Most HDUs a raw file may hold.
MAX_HDUS = 1000

_VALID_BITPIX = {8, 16, 32, 64, -32, -64}
_INHERIT_SKIP = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "GROUPS", "BZERO",
    "BSCALE", "BLANK", "CHECKSUM", "DATASUM", "EXTNAME", "EXTVER", "INHERIT", "COMMENT",
    "HISTORY", "", "END",
}


@dataclass
class _HDU:
    index: int
    header_offset: int
    header_bytes: int
    data_offset: int
    data_bytes: int  # declared, unpadded
    header: fits.Header
    xtension: str | None
    axes: tuple[int, ...]  # FITS order (NAXIS1 first)
    bitpix: int
    groups: bool = False
    compressed: bool = False
    zaxes: tuple[int, ...] = ()
    decompressed_bytes: int = 0

    @property
    def padded_bytes(self) -> int:
        return -(-self.data_bytes // BLOCK_SIZE) * BLOCK_SIZE

    @property
    def end(self) -> int:
        return self.data_offset + self.padded_bytes


@dataclass
class _Layout:
    hdus: list[_HDU]
    end: int  # end of the last HDU, padding included
    tail_bytes: int
    missing_padding: int  # bytes of final padding absent from the file
    non_ascii: bool


def _int_card(h: fits.Header, key: str, where: str, *, default: int | None = None, lo: int = 0,
              hi: int | None = None) -> int:
    if key not in h:
        if default is None:
            raise RejectedFile("bad-header", f"{where}: required keyword {key} is missing")
        return default
    v = h[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise RejectedFile("bad-header", f"{where}: {key} = {v!r} is not an integer")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        raise RejectedFile("bad-header", f"{where}: {key} = {v} is out of range")
    return v


def _axes(h: fits.Header, prefix: str, where: str) -> tuple[int, ...]:
    naxis = _int_card(h, prefix, where, hi=999)
    return tuple(_int_card(h, f"{prefix}{i}", where) for i in range(1, naxis + 1))


def _bitpix(h: fits.Header, key: str, where: str) -> int:
    v = _int_card(h, key, where, lo=-64, hi=64)
    if v not in _VALID_BITPIX:
        raise RejectedFile("bad-header", f"{where}: {key} = {v} is not a valid FITS BITPIX")
    return v


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _has_data(axes: tuple[int, ...]) -> bool:
    return len(axes) > 0 and all(a > 0 for a in axes)


def _is_2d(axes: tuple[int, ...]) -> bool:
    return len(axes) >= 2 and axes[0] > 0 and axes[1] > 0 and all(a == 1 for a in axes[2:])


def _read_header(pread: Callable[[int, int], bytes], size: int, offset: int, blocks_left: int,
                 where: str) -> tuple[bytes, int]:
    """Header bytes starting at ``offset`` up to and including the block with the END card."""
    chunks: list[bytes] = []
    pos = offset
    while True:
        if len(chunks) >= blocks_left:
            raise RejectedFile("bad-header", f"{where}: no END card within the first "
                               f"{MAX_HEADER_BLOCKS} header blocks of the file")
        if pos + BLOCK_SIZE > size:
            raise RejectedFile("truncated-header", f"{where}: the file ends ({size} bytes) inside "
                               "the header, before its END card")
        block = pread(pos, BLOCK_SIZE)
        if len(block) < BLOCK_SIZE:
            raise RejectedFile("truncated-header", f"{where}: short read inside the header")
        chunks.append(block)
        pos += BLOCK_SIZE
        if any(block[i:i + 8] == b"END     " for i in range(0, BLOCK_SIZE, _CARD)):
            return b"".join(chunks), pos


def _parse_header(raw: bytes, where: str) -> tuple[fits.Header, bool]:
    try:
        text = raw.decode("ascii")
        non_ascii = False
    except UnicodeDecodeError:
        # what astropy itself does with such headers (decode_ascii): replace by '?'
        text = raw.decode("ascii", errors="replace").replace("\ufffd", "?")
        non_ascii = True
    try:
        header, repairs = repair_header(fits.Header.fromstring(text))
    except RejectedFile:
        raise
    except (Exception, Warning) as exc:  # noqa: BLE001 - astropy raises many types
        raise RejectedFile("bad-header", f"{where}: header cannot be parsed ({exc})") from None
    for note in repairs:
        logger.info("%s: %s (the file is not changed)", where, note)
    return header, non_ascii


def _walk(pread: Callable[[int, int], bytes], size: int, *, max_data_bytes: int,
          allow_compressed: bool) -> _Layout:
    """Walk the HDUs, validating declared sizes before any data is read."""
    first = pread(0, min(size, BLOCK_SIZE))
    if not first.startswith(b"SIMPLE  ="):
        raise RejectedFile("not-fits", "the file does not start with 'SIMPLE  =' (not a FITS file)")
    hdus: list[_HDU] = []
    offset = 0
    blocks_used = 0
    total_data = 0
    non_ascii = False
    tail = 0
    while offset < size:
        index = len(hdus)
        if index > 0 and not _starts_extension(pread, size, offset, index):
            tail = size - offset
            break
        hdu, odd = _next_hdu(pread, size, offset, index, MAX_HEADER_BLOCKS - blocks_used,
                             max_data_bytes=max_data_bytes, allow_compressed=allow_compressed)
        blocks_used += hdu.header_bytes // BLOCK_SIZE
        non_ascii |= odd
        total_data += hdu.data_bytes
        _check_declared_size(hdu, total_data, size, max_data_bytes)
        hdus.append(hdu)
        offset = hdu.end
    return _close_layout(pread, size, hdus, tail, non_ascii)


def _starts_extension(pread: Callable[[int, int], bytes], size: int, offset: int, index: int) -> bool:
    """Does HDU ``index`` start at ``offset`` (else the rest of the file is a tail)? One too many is refused."""
    head = pread(offset, min(8, size - offset))
    if head != b"XTENSION":
        return False
    if index >= MAX_HDUS:
        raise RejectedFile("bad-header", f"more than {MAX_HDUS} HDUs")
    return True


def _next_hdu(pread: Callable[[int, int], bytes], size: int, offset: int, index: int, blocks_left: int, *,
              max_data_bytes: int, allow_compressed: bool) -> tuple[_HDU, bool]:
    """Read, parse and size the HDU whose header starts at ``offset``; True with it when the
    header held non-ASCII bytes."""
    where = f"HDU {index}"
    raw, data_offset = _read_header(pread, size, offset, blocks_left, where)
    h, non_ascii = _parse_header(raw, where)
    xtension = _xtension(h, index, where)
    bitpix = _bitpix(h, "BITPIX", where)
    axes = _axes(h, "NAXIS", where)
    _check_unambiguous(h, where, len(axes))
    groups = index == 0 and h.get("GROUPS") is True and len(axes) > 0 and axes[0] == 0
    nbits = _declared_bits(h, where, bitpix, axes, extension=index > 0, groups=groups)
    hdu = _HDU(index=index, header_offset=offset, header_bytes=len(raw),
               data_offset=data_offset, data_bytes=nbits // 8, header=h, xtension=xtension,
               axes=axes, bitpix=bitpix, groups=groups)
    if xtension == "BINTABLE" and h.get("ZIMAGE") is True:
        _size_compressed(hdu, where, max_data_bytes=max_data_bytes, allow_compressed=allow_compressed)
    return hdu, non_ascii


#: Cards that say where the data is and what its numbers mean (with NAXISn).
_STRUCTURE = ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "BZERO", "BSCALE", "BLANK")


def _check_unambiguous(h: fits.Header, where: str, naxis: int) -> None:
    """Refuse a header that gives one of the data's defining cards twice with different values
    (a camera program's bug): this walk and ccdwatch's decoder read the first, astropy scales with
    the last (BZERO 0 then 32768: every pixel off by 32768), and which one was meant is unknown.
    The same value twice is harmless."""
    for key in (*_STRUCTURE, *(f"NAXIS{i}" for i in range(1, naxis + 1))):
        if key in h and h.count(key) > 1:
            values = [card.value for card in h.cards if card.keyword == key]
            if any(v != values[0] or type(v) is not type(values[0]) for v in values[1:]):
                shown = ", ".join(repr(v) for v in values)
                raise RejectedFile("bad-header", f"{where}: {key} is given {len(values)} times with different "
                                   f"values ({shown}): which one the data follows is ambiguous")


def _xtension(h: fits.Header, index: int, where: str) -> str | None:
    """XTENSION of an extension (upper case), None for the primary, once the first keyword is checked."""
    keys = list(h.keys())
    if index == 0:
        if not keys or keys[0] != "SIMPLE" or h["SIMPLE"] is not True:
            raise RejectedFile("not-fits", "SIMPLE is not T: not a standard FITS file")
        return None
    xtension = h.get("XTENSION")
    if not keys or keys[0] != "XTENSION" or not isinstance(xtension, str):
        raise RejectedFile("bad-header", f"{where}: first keyword is not XTENSION")
    return xtension.strip().upper()


def _declared_bits(h: fits.Header, where: str, bitpix: int, axes: tuple[int, ...], *, extension: bool,
                   groups: bool) -> int:
    """Data size (bits) the header declares: ``|BITPIX| * GCOUNT * (PCOUNT + NAXIS1 * ... * NAXISn)``."""
    if extension or groups:
        pcount = _int_card(h, "PCOUNT", where, default=0)
        gcount = _int_card(h, "GCOUNT", where, default=1)
    else:
        pcount, gcount = 0, 1
    return data_bits(bitpix, axes, pcount=pcount, gcount=gcount, groups=groups)


def data_bits(bitpix: int, axes: tuple[int, ...], *, pcount: int = 0, gcount: int = 1, groups: bool = False) -> int:
    """``|BITPIX| * GCOUNT * (PCOUNT + NAXIS1 * ... * NAXISn)`` (random groups: NAXIS1 left out)."""
    if not axes:
        return 0
    n = _prod(axes[1:]) if groups else _prod(axes)
    return abs(bitpix) * gcount * (pcount + n)


def _size_compressed(hdu: _HDU, where: str, *, max_data_bytes: int, allow_compressed: bool) -> None:
    """Mark a tile-compressed image HDU and check its size once decompressed (ZBITPIX, ZNAXISn)."""
    h = hdu.header
    hdu.compressed = True
    zbitpix = _bitpix(h, "ZBITPIX", where)
    hdu.zaxes = _axes(h, "ZNAXIS", where)
    hdu.decompressed_bytes = abs(zbitpix) // 8 * _prod(hdu.zaxes) if hdu.zaxes else 0
    if allow_compressed and hdu.decompressed_bytes > max_data_bytes:
        raise RejectedFile("too-large", f"{where}: the tile-compressed image declares "
                           f"{hdu.decompressed_bytes} bytes once decompressed "
                           f"(ZNAXISn = {hdu.zaxes}), more than the limit of "
                           f"{max_data_bytes} bytes")


def _check_declared_size(hdu: _HDU, total_data: int, size: int, max_data_bytes: int) -> None:
    """Refuse an HDU that takes the declared data over the budget or past the end of the file."""
    where = f"HDU {hdu.index}"
    if total_data > max_data_bytes:
        raise RejectedFile("too-large", f"{where} declares {hdu.data_bytes} bytes of data "
                           f"(BITPIX = {hdu.bitpix}, NAXISn = {hdu.axes}); the file's declared data "
                           f"({total_data} bytes) exceeds the limit of {max_data_bytes} bytes")
    if hdu.data_offset + hdu.data_bytes > size:
        raise RejectedFile("truncated-data", f"{where} declares {hdu.data_bytes} bytes of data "
                           f"but the file ends after {size - hdu.data_offset} of them "
                           "(still being written, or truncated)")


def _close_layout(pread: Callable[[int, int], bytes], size: int, hdus: list[_HDU], tail: int,
                  non_ascii: bool) -> _Layout:
    """The layout of the walked HDUs; missing final padding and a tail are tolerated and logged."""
    last = hdus[-1]
    missing = max(0, last.end - size)
    if missing:
        logger.info("%d bytes of final FITS padding are missing; tolerated", missing)
    if tail:
        zero = not pread(size - tail, min(tail, BLOCK_SIZE)).strip(b"\0")
        logger.info("%d bytes of %s after the last HDU; ignored", tail,
                    "zero padding" if zero else "non-FITS data")
    return _Layout(hdus=hdus, end=min(last.end, size), tail_bytes=tail, missing_padding=missing,
                   non_ascii=non_ascii)


def _choose(layout: _Layout) -> _HDU:
    """Pick the image HDU: the primary if it has data, else the first 2-D image extension."""
    primary = layout.hdus[0]
    if _has_data(primary.axes):
        if primary.groups or not _is_2d(primary.axes):
            raise RejectedFile("no-image", f"the primary HDU holds data of shape NAXISn = "
                               f"{primary.axes}{' (random groups)' if primary.groups else ''}, "
                               "not a 2-D image")
        return primary
    for hdu in layout.hdus[1:]:
        if hdu.xtension == "IMAGE" and _is_2d(hdu.axes):
            return hdu
        if hdu.compressed and _is_2d(hdu.zaxes):
            return hdu
    kinds = ", ".join(f"{h.index}:{h.xtension or 'PRIMARY'}{list(h.zaxes or h.axes)}" for h in layout.hdus)
    raise RejectedFile("no-image", f"no HDU holds a 2-D image (HDUs: {kinds})")


def _merge_inherit(header: fits.Header, primary: fits.Header) -> fits.Header:
    out = header.copy()
    if header.get("INHERIT") is True:
        for card in primary.cards:
            if card.keyword not in _INHERIT_SKIP and not card.keyword.startswith("NAXIS") \
                    and card.keyword not in out:
                out.append(fits.Card.fromstring(card.image))
    return out

