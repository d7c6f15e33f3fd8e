"""The study suite: the released protocol's corruptions at integer level p = severity, with torchio's semantics.

Madaan et al. (MIDL 2023) corrupted the 320 x 320 magnitude image with torchio
at an integer level p (REFERENCE s.1). This suite reproduces what those calls
do on a 2-D slice, tensor `(1, H, W, 1)` (torchio axis 0 = our rows, 1 = our
columns), as torchio 1.2.1 implements them (checked against it in
`tests/test_artifacts_study.py`); only the random draws come from our per-seed
streams instead of torch's global generator. A single number d means U(0, d)
for ghosting's count and intensity (torchio's `min_constraint=0`), U(-d, d)
otherwise:

| name       | release call (torchio 1.2.1)            | what it does on a 2-D magnitude slice m (ours the same)                       |
|------------|-----------------------------------------|-------------------------------------------------------------------------------|
| noise      | the release's own Rician noise          | |m + sigma (n1 + i n2)|, sigma = p % of the slice maximum                       |
| ghosting   | RandomGhosting(num_ghosts=7,            | n ~ U{0..7}, axis ~ U{0, 1} (a 2-D image drops axis 2), s ~ U(0, p): every    |
|            | intensity=p)                            | n-th plane (index 0, n, ...) of fftshift(fftn(m)) along the axis times        |
|            |                                         | (1 - s), centre plane restored; real part kept. n = 0: no change              |
| spike      | RandomSpike(intensity=p)                | one sample at a uniform position of the shifted spectrum += r max|spectrum|,   |
|            |                                         | r ~ U(-p, p); real part kept                                                  |
| bias_field | RandomBiasField(coefficients=p)         | m * exp(sum_{i+j<=3} c_ij y**i x**j), c ~ U(-p, p), y rows, x columns in [-1, 1]|
| motion     | RandomMotion(degrees=5p, translation=2p)| 2-D: rotation U(-5p, 5p) deg about the corner pixel (0, 0) (torchio drops the |
|            |                                         | centre it sets) and shifts U(-2p, 2p) mm; its k-space segments run along the  |
|            |                                         | singleton axis, so the result is m rigidly resampled (linear) to the second   |
|            |                                         | pose, the slice minimum outside the image                                     |

Outputs: the real part for ghosting and spike (torchio's `.real`; it can be
negative), the corrupted values for bias field and motion (real already), the
Rician magnitude for noise. The release fed these to the model; `corrupt`
returns them (the artifact's `output`).

Image size: the release's slices are 320 x 320 with 1 mm pixels, and its only
size-bound parameter is the motion translation (2p mm = 2p px). We express it
as a fraction of the field of view (2p / 320), so a 64 px slice gets the same
relative shift as a 320 px one; every other parameter is already relative.

Not a graded ladder by nature (read the `mrrobust artifacts --suite study`
table with this in mind): torchio draws each parameter uniformly up to the
bound p (or 5p, 2p), so a level-p corruption can be milder than a level-1 one
for a given draw; only the distribution widens with p. The spike adds up to p
times the spectrum peak (the DC term) to one sample, so from p = 1 the stripes
rival the image; the bias field is exp of a cubic polynomial with coefficients
up to +-p; ghosting leaves the slice unchanged for 1 draw in 8 (n = 0) and
runs along the readout axis (rows) for half of the others. Motion is a rigid move, not a motion artifact: the error
comes from misregistration. The physical suite (`ARTIFACTS`) is the
alternative: the same names with k-space physics along the phase-encode axis.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mrrobust.artifacts import random as rnd
from mrrobust.artifacts.image import multiply_log_polynomial
from mrrobust.artifacts.kspace import add_complex_noise, add_spikes, magnitude, magnitude_spectrum_peak, scale_lines
from mrrobust.artifacts.registry import STUDY, register

LEVELS = (1, 2, 3, 4, 5)
TABLE_NOTE = ("study suite (torchio 1.2.1 semantics on a 2-D slice): torchio draws each parameter uniformly up to the "
              "bound set by p, so p widens a distribution rather than grading one corruption; spike (up to p x the "
              "spectrum peak) and bias field (exp of coefficients up to +-p) are extreme from p = 2; ghosting is a no-op "
              "for 1 draw in 8 and runs along rows or columns at random; motion is a rigid move to the second pose. Ghosting and spike keep the "
              "real part. Motion shifts are 2p px of a 320 px slice, scaled to the slice size.")


def _magnitude_image(x: torch.Tensor) -> torch.Tensor:
    """The release corrupted the magnitude image: |x| as complex with zero phase."""
    return magnitude(x).to(x.dtype)


@register(STUDY, "noise", ladder=LEVELS, domain="k-space", unit="p: sigma = p % of slice max", blocked=True)
def study_noise(x, p, seeds, magnitude_only=False):
    """Rician noise, sigma = p % of the slice maximum (the release's own noise)."""
    sigma = p / 100 * magnitude(x).amax(dim=(-2, -1))
    return add_complex_noise(x, sigma, seeds, "study-noise", magnitude_only)


def ghosting_draws(seeds: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RandomGhosting(num_ghosts=7, intensity=p) draws `(B,)` on a 2-D slice: n in 0..7, axis in
    {0, 1} (torchio drops axis 2 for 2-D images), s in (0, p)."""
    return (rnd.integers(seeds, "study-ghosting-n", 8), rnd.integers(seeds, "study-ghosting-axis", 2),
            p * rnd.uniform(seeds, "study-ghosting-s"))


def torchio_ghosting(m: torch.Tensor, count: torch.Tensor, axis: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """torchio's Ghosting on `(B, H, W)` complex m: along `axis` (0 rows, 1 columns), every
    count-th centred plane index (0, n, 2n, ...) times (1 - strength), the centre plane kept."""
    out = m.clone()
    for along, transposed in ((1, False), (0, True)):
        group = ((axis == along) & (count > 0)).nonzero().flatten()
        if not len(group):
            continue
        source = m[group.to(m.device)]
        source = source.transpose(1, 2) if transposed else source
        n = source.shape[-1]
        line = torch.arange(n)[None, :]
        step = count[group][:, None]
        hit = (line % step == 0) & (line != n // 2)
        factor = torch.where(hit, 1 - strength[group][:, None], torch.ones((), dtype=torch.float64))
        result = scale_lines(source.contiguous(), factor.to(device=m.device, dtype=m.dtype))
        out[group.to(m.device)] = result.transpose(1, 2) if transposed else result
    return out


@register(STUDY, "ghosting", ladder=LEVELS, domain="k-space", unit="p: torchio intensity, 7 ghosts, random axis", output="real")
def study_ghosting(x, p, seeds):
    """torchio RandomGhosting(num_ghosts=7, intensity=p) on the magnitude, axis at random, real part."""
    return torchio_ghosting(_magnitude_image(x), *ghosting_draws(seeds, p))


def spike_draws(seeds: torch.Tensor, p: float, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RandomSpike(intensity=p) draws: index (row, col) `(B, 1)` in the shifted spectrum, r `(B, 1)` in (-p, p)."""
    h, w = shape
    return (rnd.integers(seeds, "study-spike-row", h, (1,)), rnd.integers(seeds, "study-spike-col", w, (1,)),
            p * (2 * rnd.uniform(seeds, "study-spike-r", (1,)) - 1))


@register(STUDY, "spike", ladder=LEVELS, domain="k-space", unit="p: torchio intensity", output="real")
def study_spike(x, p, seeds):
    """torchio RandomSpike(intensity=p) on the magnitude: one sample += r x spectrum peak; real part."""
    h, w = x.shape[-2:]
    m = _magnitude_image(x)
    rows, cols, r = spike_draws(seeds, p, (h, w))
    amplitude = r.to(device=x.device, dtype=x.dtype) * magnitude_spectrum_peak(m)[:, None]  # on the device: no sync
    return add_spikes(m, rows - h // 2, cols - w // 2, amplitude)


@register(STUDY, "bias_field", ladder=LEVELS, domain="image", unit="p: torchio coefficients", output="real")
def study_bias_field(x, p, seeds):
    """torchio RandomBiasField(coefficients=p, order=3): exp of a polynomial, c ~ U(-p, p)."""
    return multiply_log_polynomial(_magnitude_image(x), p * (2 * rnd.uniform(seeds, "study-bias", (4, 4)) - 1))


def motion_draws(seeds: torch.Tensor, p: float, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """RandomMotion(degrees=5p, translation=2p) on a 2-D slice, the pose that survives (the second):
    rotation `(B,)` degrees about the slice axis, translation `(B, 2)` pixels (rows, cols), 2p px of
    a 320 px slice scaled to the slice size."""
    h, w = shape
    degrees = 5 * p * (2 * rnd.uniform(seeds, "study-motion-deg") - 1)
    pixels_of_320 = 2 * p * (2 * rnd.uniform(seeds, "study-motion-px", (2,)) - 1)
    return degrees, pixels_of_320 * torch.tensor([h, w], dtype=torch.float64) / 320


def torchio_rigid(m: torch.Tensor, degrees: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """SimpleITK's resampling in torchio 1.2.1's Motion on a 2-D slice: output(i, j) = m at
    R(theta) (i, j) - t (pixel indices), bilinear with edge clamping inside the half-pixel
    border, the slice minimum outside it. The rotation is about pixel (0, 0), the corner:
    torchio sets the centre on its Euler transform, then rebuilds the transform from the
    matrix and the translation parameter only, which drops the centre.
    m `(B, H, W)` complex with zero phase; degrees `(B,)`, translation `(B, 2)` (rows, cols) pixels."""
    h, w = m.shape[-2:]
    theta = torch.deg2rad(degrees.double())
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    i = torch.arange(h, dtype=torch.float64)[None, :, None]
    j = torch.arange(w, dtype=torch.float64)[None, None, :]
    rows = cos * i - sin * j - translation[:, 0, None, None]
    cols = sin * i + cos * j - translation[:, 1, None, None]
    grid = torch.stack([(2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1], dim=-1).to(device=m.device, dtype=torch.float32)
    real = m.real[:, None]
    moved = F.grid_sample(real, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    outside = ((rows < -0.5) | (rows > h - 0.5) | (cols < -0.5) | (cols > w - 0.5)).to(m.device)
    floor = real.amin(dim=(1, 2, 3))[:, None, None]
    return torch.where(outside, floor, moved).to(m.dtype)


@register(STUDY, "motion", ladder=LEVELS, domain="image", unit="p: torchio degrees 5p, translation 2p px at 320", output="real")
def study_motion(x, p, seeds):
    """torchio RandomMotion(degrees=5p, translation=2p, num_transforms=2) on a 2-D slice: a rigid move."""
    degrees, translation = motion_draws(seeds, p, tuple(x.shape[-2:]))
    return torchio_rigid(_magnitude_image(x), degrees, translation)
