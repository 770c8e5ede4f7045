"""Tile-compressed products (``[products] compress``): every image HDU of a product written as a
tile-compressed image (a ``CompImageHDU``, as fpack writes), and read back as it was.

* ``gzip``: GZIP_2 (byte-shuffled), lossless for every pixel type, float images included.
* ``rice``: RICE_1; lossless for integer planes (BADPIX, HOTPIX, NFRAMES); float images are
  quantised to ``quantize_level`` levels per noise sigma of each tile, with subtractive dithering
  from a fixed seed (``dither_seed = 1``), so the same product always gives the same bytes.

A compressed product keeps its name (``.fits``): a FITS reader that knows tile compression (astropy,
ds9, fitsio, CFITSIO tools) reads it. Its first image sits in the first extension (a compressed
image cannot be the primary HDU), named :data:`PRIMARY_NAME`; :func:`expand` puts it back as the
primary image, so every reader of products sees the same HDUs whether compressed or not.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy and astropy load with the first compressed product: the daemon names a
    import numpy as np  # `Compression` in every job it plans, and never writes one itself
    from astropy.io import fits

__all__ = ["PRIMARY_NAME", "Compression", "compress", "expand"]

#: EXTNAME of the compressed primary image.
PRIMARY_NAME = "COMPRESSED_IMAGE"
_DITHER_SEED = 1


@functools.cache
def _deterministic_gzip() -> None:
    """astropy compresses GZIP tiles with ``gzip.compress``, whose stream header carries the time
    of the call: the same product would differ byte for byte from one second to the next. Its
    codec module is given ``gzip.compress`` with ``mtime=0`` instead (the time is no part of the
    pixels; reading is unchanged). tests/test_compressed.py checks the bytes stay the same."""
    try:
        from astropy.io.fits.hdu.compressed import _codecs
    except ImportError:  # pragma: no cover - another astropy layout: the test says so
        return
    if getattr(_codecs, "gzip_compress", None) is gzip.compress:
        _codecs.gzip_compress = functools.partial(gzip.compress, mtime=0)


@dataclass(frozen=True)
class Compression:
    """How products are written: ``method`` ``none``, ``gzip`` or ``rice`` (see the module)."""

    method: str = "none"
    quantize_level: float = 16.0

    @property
    def active(self) -> bool:
        return self.method in ("gzip", "rice")


def _compressed(data: np.ndarray, header: fits.Header, name: str | None, how: Compression) -> fits.CompImageHDU:
    from astropy.io import fits

    _deterministic_gzip()
    floating = data.dtype.kind == "f"
    if how.method == "gzip":
        kwargs: dict[str, object] = {"compression_type": "GZIP_2", "quantize_level": 0.0}
    else:
        kwargs = {"compression_type": "RICE_1"}
        if floating:
            kwargs.update(quantize_level=how.quantize_level, quantize_method=1)
    return fits.CompImageHDU(data=data, header=header, name=name, dither_seed=_DITHER_SEED, **kwargs)


def compress(hdul: fits.HDUList, how: Compression | None) -> fits.HDUList:
    """``hdul`` with every 2-D image HDU tile-compressed (tables as they are); ``hdul`` itself
    when ``how`` is None or ``none``."""
    if how is None or not how.active:
        return hdul
    import numpy as np
    from astropy.io import fits

    out: list[fits.hdu.base.ExtensionHDU | fits.PrimaryHDU] = [fits.PrimaryHDU()]
    for i, hdu in enumerate(hdul):
        is_image = isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.data is not None and hdu.data.ndim == 2
        if not is_image:
            if i > 0:
                out.append(hdu)
            continue
        header = hdu.header.copy()
        for key in ("SIMPLE", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT"):
            header.remove(key, ignore_missing=True)
        out.append(_compressed(np.asarray(hdu.data), header, PRIMARY_NAME if i == 0 else hdu.name, how))
    return fits.HDUList(out)


def expand(hdul: fits.HDUList) -> fits.HDUList:
    """A product read back: a compressed primary image (:data:`PRIMARY_NAME`) becomes the primary
    HDU again and the other compressed images plain image extensions (data already loaded)."""
    from astropy.io import fits

    if len(hdul) < 2 or hdul[0].data is not None or not isinstance(hdul[1], fits.CompImageHDU) \
            or hdul[1].name != PRIMARY_NAME:
        return hdul
    first = hdul[1]
    header = first.header.copy()
    header.remove("EXTNAME", ignore_missing=True)
    out: list[fits.hdu.base.ExtensionHDU | fits.PrimaryHDU] = [fits.PrimaryHDU(data=first.data, header=header)]
    for hdu in hdul[2:]:
        if isinstance(hdu, fits.CompImageHDU):
            out.append(fits.ImageHDU(data=hdu.data, header=hdu.header.copy(), name=hdu.name))
        else:
            out.append(hdu)
    return fits.HDUList(out)
