"""The noise model in the jobs: the masters' noise cards, a calibrated light's units and
uncertainty plane, and the uncertainty of a stack's inputs (numerics in `ccdwatch.noise`).

Cards written (README, "Units and uncertainty"):

* masters: ``PIXNOISE``, the per-pixel noise of the master from its combination (ADU rms; a flat's
  relative), on a bias ``RDNOIADU``, the read noise measured from its input frames (ADU rms), and on
  a monochrome flat ``GAINMEAS`` / ``GAINMERR`` / ``GAINPAIR``, the gain measured from its inputs by
  photon transfer (e-/ADU, its standard error, pairs used: `ccdwatch.ptc`);
* calibrated lights: ``BUNIT`` ('electron' when the gain is known, else 'adu'), ``GAIN`` (e-/ADU) and
  ``RDNOISE`` (in BUNIT) with where they came from, ``GAINSET`` (a raw GAIN card that was a camera
  setting), and the ``UNCERT`` image extension: 1-sigma uncertainty in BUNIT (astropy's
  ``StdDevUncertainty`` convention). Without a known gain there is no Poisson term, hence no UNCERT.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.io import fits

from ccdwatch import noise, ptc
from ccdwatch.detector import NoiseSpec

__all__ = ["LightNoise", "NoiseSpec", "forget", "light_noise", "master_cards", "remember",
           "stack_planes"]

#: Master header cards the noise model reads, per master path (the worker's cache beside its pixels).
_CARDS: dict[str, dict[str, float]] = {}
_READ = ("PIXNOISE", "RDNOIADU")


def remember(path: str, header: fits.Header) -> None:
    """Keep the noise cards of the master at ``path`` (called as it is read)."""
    cards = {}
    for key in _READ:
        v = header.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            cards[key] = float(v)
    _CARDS[path] = cards


def forget(keep: Sequence[str]) -> None:
    for path in [p for p in _CARDS if p not in keep]:
        del _CARDS[path]


def _card(path: str | None, key: str) -> float:
    return _CARDS.get(path or "", {}).get(key, 0.0 if key == "PIXNOISE" else math.nan)


def master_cards(kind: str, arrays: Sequence[np.ndarray], scales: Sequence[float] | None,
                 method: str, *, bias_path: str | None = None, measure_gain: bool = True) -> dict[str, Any]:
    """``PIXNOISE`` (and a bias's ``RDNOIADU``) measured from a master's prepared inputs; a
    monochrome flat's (``scales`` given: inputs still in ADU) gain when ``measure_gain``, the read
    noise taken from the master bias at ``bias_path`` (neglected when unknown, `ccdwatch.ptc`)."""
    one = noise.pair_noise(arrays, scales or None)
    if not math.isfinite(one):
        return {}
    unit = "relative" if kind == "flat" else "ADU rms"
    cards: dict[str, Any] = {"PIXNOISE": (noise.combined_noise(one, len(arrays), method),
                                          f"per-pixel noise of this master, {unit}")}
    if kind == "bias":
        cards["RDNOIADU"] = (one, "read noise measured from the biases, ADU rms")
    if kind == "flat" and scales and measure_gain:
        rn = _card(bias_path, "RDNOIADU")
        m = ptc.photon_transfer_gain(arrays, read_noise=rn if math.isfinite(rn) else None)
        if m is not None:
            cards["GAINMEAS"] = (round(m.gain, 4), "e-/ADU from the flats by photon transfer")
            cards["GAINMERR"] = (round(m.scatter, 4), "e-/ADU, standard error of GAINMEAS")
            cards["GAINPAIR"] = (m.pairs, "pairs of flats GAINMEAS was measured from")
    return cards


@dataclass
class LightNoise:
    """A calibrated light's noise: its uncertainty plane (ADU until `finish`) and cards."""

    spec: NoiseSpec | None
    sigma: np.ndarray | None
    read_noise_adu: float | None
    read_noise_source: str

    def finish(self, data: np.ndarray, flux: np.ndarray) -> tuple[dict[str, Any], list[fits.ImageHDU]]:
        """Scale ``data`` and ``flux`` to electrons in place when the gain is known; the product's
        cards and its UNCERT extension (none without a gain)."""
        spec = self.spec
        gain = spec.gain if spec is not None else None
        unit = "electron" if gain else "adu"
        cards: dict[str, Any] = {"BUNIT": (unit, "unit of the image and of UNCERT"), "GAIN": None, "RDNOISE": None,
                                 "GAINSET": None}
        if spec is not None and spec.gain_setting is not None:
            cards["GAINSET"] = (spec.gain_setting, "camera gain setting (raw GAIN card)")
        if gain:
            data *= np.float32(gain)
            flux *= gain
            source = spec.gain_source if spec else ""
            cards["GAIN"] = (gain, (f"e-/ADU used, {source}" if source.startswith("measured")
                                    else f"e-/ADU used, from {source}")[:47])
        if self.read_noise_adu is not None and math.isfinite(self.read_noise_adu):
            cards["RDNOISE"] = (self.read_noise_adu * (gain or 1.0),
                                f"{unit} rms, {self.read_noise_source}"[:47])
        if self.sigma is None:
            return cards, []
        hdu = fits.ImageHDU(self.sigma, name="UNCERT")
        hdu.header["BUNIT"] = (unit, "1-sigma uncertainty of each pixel (std dev)")
        return cards, [hdu]


def light_noise(spec: NoiseSpec | None, raw: np.ndarray, data: np.ndarray, *, masters: Mapping[str, Any],
                paths: Mapping[str, str | None], dark_scale: float) -> LightNoise:
    """The uncertainty (ADU, before `LightNoise.finish`) of a light calibrated with ``masters``
    (bias, dark, flat arrays or None) read from ``paths``."""
    if spec is None:
        return LightNoise(None, None, None, "")
    measured = _card(paths.get("bias"), "RDNOIADU")
    rn_adu: float | None
    if spec.read_noise is not None and spec.gain and spec.read_noise_source.startswith("config"):
        rn_adu, source = spec.read_noise / spec.gain, spec.read_noise_source
    elif math.isfinite(measured):
        rn_adu, source = measured, "measured from the biases"
    elif spec.read_noise is not None and spec.gain:
        rn_adu, source = spec.read_noise / spec.gain, spec.read_noise_source
    else:
        rn_adu, source = None, ""
    if not spec.gain or not spec.plane:
        return LightNoise(spec, None, rn_adu, source)
    sigma = noise.light_sigma(
        raw, data, gain=spec.gain, read_noise=rn_adu or 0.0, bias=masters.get("bias"), dark=masters.get("dark"),
        dark_scale=dark_scale, flat=masters.get("flat"), bias_noise=_card(paths.get("bias"), "PIXNOISE"),
        dark_noise=_card(paths.get("dark"), "PIXNOISE"), flat_noise=_card(paths.get("flat"), "PIXNOISE"),
        scale=spec.gain)
    return LightNoise(spec, sigma, rn_adu, source)


def stack_planes(sigma: np.ndarray | None, expmap: np.ndarray | None, unit: str) -> list[fits.ImageHDU]:
    """A stack's UNCERT (1 sigma, in ``unit``) and EXPMAP (seconds of exposure combined at each
    pixel) extensions, after its NFRAMES and MEMBERS."""
    hdus = []
    if sigma is not None:
        hdus.append(fits.ImageHDU(np.asarray(sigma, dtype=np.float32), name="UNCERT"))
        hdus[-1].header["BUNIT"] = (unit, "1-sigma uncertainty of each pixel (std dev)")
    if expmap is not None:
        hdus.append(fits.ImageHDU(np.asarray(expmap, dtype=np.float32), name="EXPMAP"))
        hdus[-1].header["BUNIT"] = ("s", "exposure time combined at each pixel")
    return hdus
