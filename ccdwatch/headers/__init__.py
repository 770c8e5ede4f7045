"""Raw FITS header -> normalised :class:`FrameInfo`.

Pure: no file I/O. The input is any ``Mapping[str, Any]`` (an :class:`astropy.io.fits.Header` or a
plain dict) written by some camera program -- MaxIm DL, N.I.N.A., Ekos/INDI, ACP, SharpCap, APT,
SGP, TheSkyX or an IRAF-style observatory pipeline -- and is treated as untrusted: values may have
the wrong type, be NaN, carry control characters or be kilobytes long. :func:`normalise` never
raises on such values; it records what it noticed in :attr:`FrameInfo.warnings` and falls back to
``None`` (or the documented default).

Conventions
-----------
* Keyword look-up is case-insensitive and ignores a ``HIERARCH`` prefix; for each quantity a list
  of synonyms is tried in order and the first *usable* value wins (a bad value is reported and the
  next synonym tried).
* Every string is cleaned: control and format characters removed, whitespace stripped, capped at
  68 characters (the longest value a FITS card holds); blank becomes ``None``.
* Times are aware UTC :class:`~datetime.datetime`; temperatures degC; exposure seconds; angles
  degrees (RA too), longitude east positive in (-180, 180].
* The *night* of a frame is the local date at the start of the night:
  ``(local time - night_start_hour).date()``, so a frame at 01:54 local belongs to the night that
  began the previous evening.

Modules
-------
* :mod:`~ccdwatch.headers.values` -- lenient reading of one card value (text, numbers, angles);
* :mod:`~ccdwatch.headers.cards` -- case-insensitive access to the cards, with the warnings log;
* :mod:`~ccdwatch.headers.keywords` -- the keyword synonyms per quantity;
* :mod:`~ccdwatch.headers.quantities` -- exposure, filter, binning, size, site and pointing;
* :mod:`~ccdwatch.headers.dates` -- start of the exposure from the date cards;
* :mod:`~ccdwatch.headers.night` -- time zones and the night label;
* :mod:`~ccdwatch.headers.classify` -- image type from header, path and pixels; rules; identity;
* :mod:`~ccdwatch.headers.pixels` -- what the pixel statistics say a frame is;
* :mod:`~ccdwatch.headers.frame` -- :class:`FrameInfo`, :func:`normalise`, :func:`camera_key`;
* :mod:`~ccdwatch.headers.jsonable` -- the raw header as JSON for the catalogue.
"""

from __future__ import annotations

from ccdwatch.headers.classify import (
    CLASSIFIER_VERSION,
    PRODUCT_REASON,
    ClassificationRule,
    ImageType,
    fingerprint,
    parse_image_type,
    path_type,
)
from ccdwatch.headers.frame import FrameInfo, camera_key, normalise
from ccdwatch.headers.jsonable import header_to_jsonable
from ccdwatch.headers.night import night_label
from ccdwatch.headers.pixels import DESCRIPTION, PixelEvidence, pixel_verdict
from ccdwatch.headers.sections import OverscanRules
from ccdwatch.headers.values import MAX_JSON_STRING, MAX_STRING

__all__ = [
    "CLASSIFIER_VERSION",
    "DESCRIPTION",
    "MAX_JSON_STRING",
    "MAX_STRING",
    "ClassificationRule",
    "FrameInfo",
    "ImageType",
    "OverscanRules",
    "PRODUCT_REASON",
    "PixelEvidence",
    "camera_key",
    "fingerprint",
    "header_to_jsonable",
    "night_label",
    "normalise",
    "parse_image_type",
    "path_type",
    "pixel_verdict",
]
