"""Frame quality: source detection, seeing and sky metrics, outlier rejection, reference choice.

Pure numerics: arrays in, new values out; the input image is never modified.

:mod:`~ccdwatch.qa.frame` measures one frame (:func:`measure` gives its :class:`FrameQuality` and
:class:`Sources`); :mod:`~ccdwatch.qa.group` judges a group of frames (:func:`reject_outliers`,
:func:`choose_reference`).
"""

from __future__ import annotations

import sep as sep  # reachable as ``qa.sep``, as before the split (the tests patch sep through it)

from ccdwatch.qa.frame import FrameQuality, Sources, measure
from ccdwatch.qa.frame import _run_sep_extract as _run_sep_extract
from ccdwatch.qa.group import choose_reference, reject_outliers

__all__ = [
    "FrameQuality",
    "Sources",
    "choose_reference",
    "measure",
    "reject_outliers",
]
