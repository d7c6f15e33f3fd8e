"""Built-in synthetic knee-like slices for measuring the ladders (no data needed).

Ellipses for leg, fat, femur and tibia (textured marrow), a bright cartilage
band and a joint gap, on a zero background, times a smooth phase; each slice
jitters positions and contrasts from its own seed.
"""

from __future__ import annotations

import numpy as np


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def phantom(slices: int = 8, size: int = 96, seed: int = 0) -> np.ndarray:
    """`(slices, size, size)` complex64 knee-like images, magnitude about 0..1, zero background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    out = np.zeros((slices, size, size), np.complex64)
    for s in range(slices):
        j = rng.uniform(-0.05, 0.05, 8)
        m = np.zeros((size, size))
        m[_ellipse(yy, xx, j[0], j[1], 0.9, 0.62)] = 0.35  # fat
        m[_ellipse(yy, xx, j[0], j[1], 0.86, 0.55)] = 0.22  # muscle
        femur = _ellipse(yy, xx, -0.42 + j[2], j[3], 0.42, 0.36)
        tibia = _ellipse(yy, xx, 0.5 + j[4], j[3], 0.36, 0.34)
        m[_ellipse(yy, xx, -0.42 + j[2], j[3], 0.47, 0.41)] = 0.9  # cartilage band
        m[_ellipse(yy, xx, 0.5 + j[4], j[3], 0.41, 0.39)] = 0.85
        marrow = 0.5 + 0.12 * np.sin(2 * np.pi * (6 + rng.uniform(0, 4)) * (xx + 0.5 * yy) + rng.uniform(0, 6))
        m[femur | tibia] = marrow[femur | tibia]
        m[np.abs(yy - (0.04 + j[5])) < 0.025] *= 0.3  # joint gap
        m[_ellipse(yy, xx, 0.05 + j[5], 0.3 + j[6], 0.05, 0.12)] = 0.1  # meniscus
        m *= rng.uniform(0.8, 1.2)
        phase = np.pi * (0.3 * xx * rng.uniform(-1, 1) + 0.3 * yy * rng.uniform(-1, 1) + 0.2 * xx * yy)
        out[s] = m * np.exp(1j * phase)
    return out
