"""Acquisition: complex images -> fastMRI-like k-space (noise, zero-filled phase-encode
edges, motion on artifact volumes) and the receive-coil sensitivities of multi-coil volumes.

The complex image goes to k-space with the centred orthonormal FFT, loses its zero-padded
phase-encode edge columns and gets complex Gaussian noise on the acquired ones.
"""

from __future__ import annotations

import math

import numpy as np

from mrrobust.data.synth.plan import VolumePlan
from mrrobust.fft import fft2c

NOISE = 0.012  # k-space noise std as a fraction of the image maximum


def acquisition_width(crop: int) -> int:
    """Phase-encode matrix W, a little wider than the crop like fastMRI knee (368 for 320)."""
    return 2 * round(crop * 1.15 / 2)


def edge_padding(width: int) -> int:
    """Zero-filled phase-encode columns on each side of k-space."""
    return max(1, round(width * 0.03))



def coil_sensitivities(coils: int, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Smooth complex receive sensitivities `(coils, H, W)` of a ring of coils around the knee."""
    rng = np.random.default_rng([seed, 2])
    yn, xn = np.linspace(-1, 1, shape[0])[:, None], np.linspace(-1, 1, shape[1])[None, :]
    angles = np.linspace(0, 2 * np.pi, coils, endpoint=False) + rng.uniform(0, 2 * np.pi)
    sens = []
    for a in angles:
        cy, cx = 0.55 * np.sin(a), 0.9 * np.cos(a)
        magnitude = np.exp(-(((yn - cy) / 0.55) ** 2 + ((xn - cx) / 0.9) ** 2) / 2)
        g = rng.normal(0, 1, 3)
        sens.append(magnitude * np.exp(1j * (g[0] * np.pi + g[1] * xn + g[2] * yn)))
    sens = np.stack(sens)
    return (sens / np.sqrt((np.abs(sens) ** 2).sum(0)).max()).astype(np.complex64)


def _acquire(images: np.ndarray, plan: VolumePlan, rng: np.random.Generator) -> np.ndarray:
    """Images `(..., H, W)` -> k-space with zeroed phase-encode edges, noise, and motion for artifact volumes."""
    kspace = fft2c(images)
    width = kspace.shape[-1]
    pad = edge_padding(width)
    sigma = NOISE * float(np.abs(images).max()) / math.sqrt(2)
    kspace.real += sigma * rng.standard_normal(kspace.shape, dtype=np.float32)
    kspace.imag += sigma * rng.standard_normal(kspace.shape, dtype=np.float32)
    if plan.artifact:  # patient motion along the phase-encode axis on some lines: ghosting
        moved = rng.random(width) < 0.3
        shift = rng.uniform(-1.5, 1.5, width) * moved
        ky = np.arange(width) - width // 2
        kspace *= np.exp(-2j * np.pi * ky * shift / width).astype(np.complex64)
    kspace[..., :pad] = 0
    kspace[..., width - pad :] = 0
    return kspace.astype(np.complex64)

