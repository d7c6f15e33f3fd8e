"""How much each severity degrades a slice: NRMSE and SSIM against the clean magnitude.

`ladder_table` measures every artifact's five steps on the built-in phantom
slices (`phantom`); `mrrobust artifacts` prints it. A ladder is monotone when
the median NRMSE rises and the median SSIM falls from severity 1 to 5.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from mrrobust.artifacts import SEVERITIES, SUITES, corrupt
from mrrobust.artifacts.phantom import phantom


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

    def blur(z):
        return F.conv2d(F.conv2d(z, kernel_rows), kernel_cols)

    x, y = clean.double()[:, None], corrupted.double()[:, None]
    data_range = x.amax(dim=(1, 2, 3), keepdim=True)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).float()


def ladder_table(size: int = 96, slices: int = 6, repeats: int = 2, suite: str = "mrrobust") -> list[dict]:
    """Per artifact: ladder, domain, unit and the median NRMSE and SSIM at severities 1..5,
    over `slices` phantom slices x `repeats` seeds each, plus `monotone`."""
    clean_c = torch.from_numpy(phantom(slices, size, seed=0)).repeat(repeats, 1, 1)
    clean = clean_c.abs()
    seeds = torch.arange(clean_c.shape[0], dtype=torch.int64) * 7919 + 1
    rows = []
    for name, artifact in SUITES[suite].items():
        medians_nrmse, medians_ssim = [], []
        for severity in range(1, SEVERITIES + 1):
            corrupted = corrupt(clean_c, name, severity, seeds, suite=suite)
            medians_nrmse.append(float(nrmse(clean, corrupted).median()))
            medians_ssim.append(float(ssim(clean, corrupted).median()))
        monotone = all(b > a for a, b in zip(medians_nrmse, medians_nrmse[1:])) and all(
            b < a for a, b in zip(medians_ssim, medians_ssim[1:])
        )
        rows.append(dict(name=name, domain=artifact.domain, unit=artifact.unit, description=artifact.description,
                         ladder=artifact.ladder, nrmse=medians_nrmse, ssim=medians_ssim, monotone=monotone))
    return rows


