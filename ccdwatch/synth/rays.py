"""A calibrated synthetic light with cosmic rays at known places, and a detector's score on it.

Ground truth for `ccdwatch.cosmics` (tests and benchmarks/cosmics.py): the project's camera
(sky, noise, hot pixels, flat field) at a 2k-like star density with a few saturated stars,
calibrated with its noise-free masters, with cosmic rays of log-uniform energy.

``kind="compact"`` draws the hits a binned camera with a compact PSF shows (the real
phy241_m51 night, 2x2 binned, FWHM ~2.7 px): single pixels, blobs of 2 to 4 pixels, and tracks at
any angle (diagonal and staircase ones: 8-connected, not 4-connected) whose charge varies along
their length; `score` then also asks whether every hit is masked whole.
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

__all__ = ["KINDS", "Scene", "compact_rays", "scene", "score"]

#: ``scene``'s ray kinds: the camera's straight 1-4 pixel rows and columns, or `compact_rays`.
KINDS = ("straight", "compact")


@dataclass
class Scene:
    data: np.ndarray  # calibrated light, ADU
    hot: np.ndarray  # known bad pixels (hot, saturated)
    rays: CosmicRays
    noise: np.ndarray  # true noise sigma of every pixel, ADU (calibrated)
    stars: Stars


def compact_rays(shape: tuple[int, int], n: int, rng: np.random.Generator, *,
                 energy: tuple[float, float] = (20.0, 3000.0), max_length: int = 9) -> CosmicRays:
    """``n`` hits as a binned camera shows them: a third single pixels or blobs of 2-4 pixels
    (a pair, an L, a 2x2 square), the rest tracks of 3 to ``max_length`` pixels at a random angle
    (rasterised 8-connected, one or two pixels per row or column). A hit's peak charge is
    log-uniform in ``energy``; each pixel gets 0.2-1 of it (a track brightens and fades along its
    length: a smooth profile times pixel-to-pixel scatter)."""
    ny, nx = shape
    lo, hi = energy
    blobs = ([(0, 0)], [(0, 0), (0, 1)], [(0, 0), (1, 1)], [(0, 0), (0, 1), (1, 0)],
             [(0, 0), (0, 1), (1, 0), (1, 1)])
    ys: list[int] = []
    xs: list[int] = []
    es: list[float] = []
    hits: list[int] = []
    for h in range(n):
        y0, x0 = int(rng.integers(0, ny)), int(rng.integers(0, nx))
        peak = lo * (hi / lo) ** rng.random()
        if rng.random() < 1 / 3:
            cells = blobs[int(rng.integers(len(blobs)))]
            weights = rng.uniform(0.3, 1.0, len(cells))
        else:
            length = int(rng.integers(3, max_length + 1))
            angle = rng.uniform(0.0, np.pi)
            t = np.linspace(0.0, length - 1.0, 2 * length)
            dy, dx = np.rint(t * np.sin(angle)).astype(int), np.rint(t * np.cos(angle)).astype(int)
            cells = list(dict.fromkeys(zip(dy.tolist(), dx.tolist(), strict=True)))
            u = np.linspace(0.0, 1.0, len(cells))
            profile = 0.6 + 0.4 * np.sin(np.pi * (u * rng.uniform(0.5, 2.0) + rng.random()))
            weights = np.clip(profile * rng.uniform(0.5, 1.0, len(cells)), 0.2, 1.0)
        weights = weights / weights.max()
        for (dy_, dx_), w in zip(cells, weights, strict=True):
            yy, xx = y0 + dy_, x0 + dx_
            if 0 <= yy < ny and 0 <= xx < nx:
                ys.append(yy)
                xs.append(xx)
                es.append(float(peak * w))
                hits.append(h)
    return CosmicRays(np.array(ys, dtype=np.int64), np.array(xs, dtype=np.int64), np.array(es, dtype=float),
                      np.array(hits, dtype=np.int64), (int(ny), int(nx)))


def scene(size: int = 2048, n_stars: int = 2500, n_rays: int = 300, seed: int = 7, fwhm: float = 3.0,
          energy: tuple[float, float] = (20.0, 3000.0), kind: str = "straight") -> Scene:
    """A calibrated synthetic light with stars and cosmic rays of ``kind`` (`KINDS`; truth included)."""
    if kind not in KINDS:
        raise ValueError(f"unknown ray kind {kind!r}; use one of {', '.join(KINDS)}")
    camera = Camera(shape=(size, size), seed=seed)
    rng = np.random.default_rng(seed)
    stars = star_field(camera.shape, n_stars, rng=rng, flux_range=(5.0, 2000.0), margin=10)
    bright = min(10, n_stars)  # a few saturated stars
    stars.flux[:bright] = 2e4
    t, sky = 200.0, 2.0
    raw = expose(camera, kind="light", exptime=t, rng=rng, sky=sky, stars=stars, fwhm=fwhm)
    lo, hi = energy
    if kind == "compact":
        rays = compact_rays(camera.shape, n_rays, rng, energy=energy)
    else:
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
    """Completeness of ray pixels above ``nsigma`` (of all hits, and of the hits found: is a hit
    masked whole once found?), of hits by their brightest pixel, and of hits masked whole (every
    pixel above ``nsigma``); false positives (flagged pixels no ray touched), star centres flagged."""
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
    hit_found = found[rays.y, rays.x] | ~strong  # pixels below nsigma do not count against a hit
    whole = np.ones(n_hits, dtype=bool)
    np.logical_and.at(whole, rays.hit, hit_found)
    whole = whole[rays.hit[strong_hits]]
    seen = np.zeros(n_hits, dtype=bool)  # hits found (any pixel above nsigma masked)
    np.logical_or.at(seen, rays.hit, found[rays.y, rays.x] & strong)
    of_seen = strong & seen[rays.hit]
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
        "hits_masked_whole": float(whole.mean()) if strong_hits.size else None,
        "pixel_completeness_of_found_hits": float(found[rays.y[of_seen], rays.x[of_seen]].mean())
        if of_seen.any() else None,
        "false_pixels": int(false.sum()),
        "false_pixels_away_from_rays": int((false & ~near).sum()),
        "false_per_mpix": float((false & ~near).sum() / mpix),
        "star_centres_flagged": int(star_hit.sum()),
    }
