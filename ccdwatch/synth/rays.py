"""A calibrated synthetic light with cosmic rays at known places, and a detector's score on it.

Ground truth for `ccdwatch.cosmics` (tests and benchmarks/cosmics.py): the project's camera
(sky, noise, hot pixels, flat field) at a 2k-like star density with a few saturated stars,
calibrated with its noise-free masters, with cosmic rays of log-uniform energy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ccdwatch.synth.camera import (
    Camera,
    CosmicRays,
    bias_pattern,
    cosmic_rays,
    dark_rate,
    expose,
    flat_response,
    hot_pixels,
    quantise,
)
from ccdwatch.synth.stars import Stars, render_stars, star_field

__all__ = ["Scene", "scene", "score"]


@dataclass
class Scene:
    data: np.ndarray  # calibrated light, ADU
    hot: np.ndarray  # known bad pixels (hot, saturated)
    rays: CosmicRays
    noise: np.ndarray  # true noise sigma of every pixel, ADU (calibrated)
    stars: Stars


def scene(size: int = 2048, n_stars: int = 2500, n_rays: int = 300, seed: int = 7, fwhm: float = 3.0,
          energy: tuple[float, float] = (20.0, 3000.0)) -> Scene:
    """A calibrated synthetic light with stars and cosmic rays (truth included)."""
    camera = Camera(shape=(size, size), seed=seed)
    rng = np.random.default_rng(seed)
    stars = star_field(camera.shape, n_stars, rng=rng, flux_range=(5.0, 2000.0), margin=10)
    bright = min(10, n_stars)  # a few saturated stars
    stars.flux[:bright] = 2e4
    t, sky = 200.0, 2.0
    raw = expose(camera, kind="light", exptime=t, rng=rng, sky=sky, stars=stars, fwhm=fwhm)
    lo, hi = energy
    rays = cosmic_rays(camera.shape, n_rays, rng, energy=(0.0, 1.0))
    rays = CosmicRays(rays.y, rays.x, lo * (hi / lo) ** rays.energy, rays.hit, rays.shape)
    raw += rays.image()
    adu = quantise(raw, saturation=camera.saturation).astype(np.float32)
    response = flat_response(camera)
    data = ((adu - bias_pattern(camera) - dark_rate(camera) * t) / response).astype(np.float32)
    signal = dark_rate(camera) * t + response * (sky * t + render_stars(camera.shape, stars, fwhm=fwhm,
                                                                                      exptime=t))
    noise = np.sqrt(signal / camera.gain + camera.read_noise**2) / response
    bad = hot_pixels(camera) | (adu >= camera.saturation)
    return Scene(data, bad, rays, noise, stars)


def score(sc: Scene, found: np.ndarray, *, nsigma: float = 5.0) -> dict[str, Any]:
    """Completeness of ray pixels above ``nsigma`` (and of hits by their brightest pixel), false
    positives (flagged pixels no ray touched), star centres flagged."""
    rays = sc.rays
    truth = rays.mask()
    usable = ~sc.hot[rays.y, rays.x]
    strong = usable & (rays.energy > nsigma * sc.noise[rays.y, rays.x])
    n_hits = int(rays.hit.max()) + 1 if rays.hit.size else 0
    best = np.full(n_hits, -1)
    for i in np.argsort(rays.energy):  # the brightest pixel of each hit
        best[rays.hit[i]] = i
    best = best[best >= 0]
    strong_hits = best[strong[best]]
    false = found & ~truth
    # a false positive touching a ray pixel's neighbour is the ray's charge, counted apart
    near = np.zeros_like(truth)
    near[1:, :] |= truth[:-1, :]
    near[:-1, :] |= truth[1:, :]
    near[:, 1:] |= truth[:, :-1]
    near[:, :-1] |= truth[:, 1:]
    sx = np.rint(sc.stars.x).astype(int)
    sy = np.rint(sc.stars.y).astype(int)
    star_hit = found[sy, sx] & ~truth[sy, sx]
    mpix = found.size / 1e6
    return {
        "ray_pixels_above": int(strong.sum()),
        "pixel_completeness": float(found[rays.y[strong], rays.x[strong]].mean()) if strong.any() else None,
        "hits_above": int(strong_hits.size),
        "hit_completeness": float(found[rays.y[strong_hits], rays.x[strong_hits]].mean())
        if strong_hits.size else None,
        "false_pixels": int(false.sum()),
        "false_pixels_away_from_rays": int((false & ~near).sum()),
        "false_per_mpix": float((false & ~near).sum() / mpix),
        "star_centres_flagged": int(star_hit.sum()),
    }
