"""How much each severity degrades a slice: NRMSE and SSIM against the clean magnitude.

`ladder_table` measures every artifact's five steps on synthetic validation
slices of our own `synth` data set (`validation_slices`, in memory, no files) or
on public real MR test slices (`realmr`); `mrrobust artifacts` prints it. A
ladder is monotone when the median NRMSE rises and the median SSIM falls from
severity 1 to 5; a (slice, seed) pair is monotone when its own curves do
(`monotone_pairs`): the ladders are coupled, so that holds for nearly every pair.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mrrobust.artifacts import SEVERITIES, SUITES, corrupt
from mrrobust.errors import MrRobustError
from mrrobust.fft import center_crop

# Calibration (docs/artifacts.md): on the 12 real MR slices at 64 px, 4 seeds each, every ladder step
# of `ARTIFACTS` was set (bisection on its strength, steps non-decreasing) so that the MEAN SSIM over the
# 48 pairs hits SSIM_TARGETS (the mean: the median jumps between slices); bias_field, to which SSIM is
# nearly blind (a smooth gain), hits NRMSE_TARGETS (mean NRMSE) instead.
SSIM_TARGETS = (0.95, 0.90, 0.83, 0.74, 0.63)
SSIM_BANDS = ((0.92, 0.98), (0.865, 0.935), (0.79, 0.87), (0.695, 0.785), (0.58, 0.68))  # targets -+ 0.03 .. 0.05
NRMSE_TARGETS = (0.05, 0.10, 0.15, 0.22, 0.30)
NRMSE_BANDS = ((0.0375, 0.0625), (0.075, 0.125), (0.1125, 0.1875), (0.165, 0.275), (0.225, 0.375))  # targets -+ 25 %
CALIBRATED_BY = {"bias_field": "nrmse"}  # every other artifact: "ssim"
SYNTH_VOLUMES = 8  # volumes planned by `synth.plan_volumes`; its validation split is used


def validation_slices(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """`(count, size, size)` complex64 slices of `synth`'s validation volumes, each scaled to max |x| = 1.

    The volumes are planned as `mrrobust synth --volumes 8 --seed SEED` plans them,
    drawn at `--crop size` and centre-cropped from the acquisition grid to
    `(size, size)` like `prepare` (noise-free: the artifacts add their own)."""
    from mrrobust.data.synth import plan_volumes, volume_images

    val = [plan for plan in plan_volumes(SYNTH_VOLUMES, count, seed) if plan.split == "val"]
    stack = np.concatenate([center_crop(volume_images(plan, count, size), (size, size)) for plan in val])
    images = stack[np.linspace(0, len(stack) - 1, count).round().astype(int)]  # spread over volumes and positions
    peak = np.abs(images).max(axis=(-2, -1), keepdims=True)
    return torch.from_numpy(np.ascontiguousarray(images / peak).astype(np.complex64))


def nrmse(clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """`(B,)` ||corrupted - clean|| / ||clean|| per slice; inputs `(B, H, W)` real."""
    return (corrupted - clean).flatten(1).norm(dim=1) / clean.flatten(1).norm(dim=1).clamp(min=1e-12)


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def ssim(clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """`(B,)` SSIM (Wang et al., IEEE TIP 2004): Gaussian window sigma 1.5, K1 0.01, K2 0.03,
    data range = the clean slice's maximum, mean over the window's valid positions."""
    g = _gaussian_window().to(clean.device)
    kernel_rows, kernel_cols = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    x, y = clean.double()[:, None], corrupted.double()[:, None]
    data_range = x.amax(dim=(1, 2, 3), keepdim=True)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    maps = torch.cat([x, y, x * x, y * y, x * y])  # the five local means in one separable blur
    mx, my, mxx, myy, mxy = F.conv2d(F.conv2d(maps, kernel_rows), kernel_cols).chunk(5)
    vx, vy, cxy = mxx - mx**2, myy - my**2, mxy - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).float()


def measurement_slices(source: str, size: int, slices: int) -> torch.Tensor:
    """`(N, size, size)` complex64 slices to measure ladders on: "synth" (`validation_slices`,
    N = slices) or "real" (`realmr.real_mr_slices`, the 12 public MR test slices; needs the
    `test` extra)."""
    if source == "synth":
        return validation_slices(slices, size)
    if source == "real":
        from mrrobust.artifacts.realmr import real_mr_slices

        return real_mr_slices(size)[0]
    raise MrRobustError(f"unknown slice source {source!r}; choose synth or real")


def ladder_table(size: int = 96, slices: int = 6, repeats: int = 2, suite: str = "mrrobust",
                 source: str = "synth") -> list[dict]:
    """Per artifact: ladder, domain, unit and the median NRMSE and SSIM at severities 1..5,
    over the `source` slices x `repeats` seeds each, plus `monotone` (the medians) and
    `pairs_monotone` (the fraction of (slice, seed) pairs whose own curves are monotone) and the
    means `nrmse_mean`, `ssim_mean` (what the ladders are calibrated on)."""
    clean_c = measurement_slices(source, size, slices).repeat(repeats, 1, 1)
    clean = clean_c.abs()
    seeds = torch.arange(clean_c.shape[0], dtype=torch.int64) * 7919 + 1
    rows = []
    steps = range(1, SEVERITIES + 1)
    reference = clean.repeat(SEVERITIES, 1, 1)
    for name, artifact in SUITES[suite].items():
        corrupted = torch.cat([corrupt(clean_c, name, severity, seeds, suite=suite) for severity in steps])
        curves_nrmse = nrmse(reference, corrupted).view(SEVERITIES, -1)
        curves_ssim = ssim(reference, corrupted).view(SEVERITIES, -1)
        medians_nrmse = curves_nrmse.median(dim=1).values.tolist()
        medians_ssim = curves_ssim.median(dim=1).values.tolist()
        pairs = float(monotone_pairs(curves_nrmse, curves_ssim).double().mean())
        means = dict(nrmse_mean=curves_nrmse.mean(dim=1).tolist(), ssim_mean=curves_ssim.mean(dim=1).tolist())
        monotone = all(b > a for a, b in zip(medians_nrmse, medians_nrmse[1:])) and all(
            b < a for a, b in zip(medians_ssim, medians_ssim[1:])
        )
        rows.append(dict(name=name, domain=artifact.domain, unit=artifact.unit, description=artifact.description,
                         ladder=artifact.ladder, nrmse=medians_nrmse, ssim=medians_ssim, monotone=monotone,
                         pairs_monotone=pairs, **means))
    return rows




def severity_curves(clean: torch.Tensor, name: str, seeds: torch.Tensor, suite: str = "mrrobust") -> tuple[torch.Tensor, torch.Tensor]:
    """NRMSE and SSIM `(SEVERITIES, B)` of each (slice, seed) pair at severities 1..5 against the
    clean magnitude; `clean` `(B, H, W)` complex, one seed per slice."""
    reference = clean.abs()
    nrmses, ssims = [], []
    for severity in range(1, SEVERITIES + 1):
        corrupted = corrupt(clean, name, severity, seeds, suite=suite)
        nrmses.append(nrmse(reference, corrupted))
        ssims.append(ssim(reference, corrupted))
    return torch.stack(nrmses), torch.stack(ssims)


def monotone_pairs(nrmses: torch.Tensor, ssims: torch.Tensor, tolerance: float = 1e-6) -> torch.Tensor:
    """`(B,)` bool: severity s + 1 never weaker than s for this pair (NRMSE and 1 - SSIM both
    non-decreasing from 1 to 5, up to `tolerance`)."""
    rising = (nrmses.diff(dim=0) >= -tolerance).all(dim=0)
    falling = (ssims.diff(dim=0) <= tolerance).all(dim=0)
    return rising & falling
