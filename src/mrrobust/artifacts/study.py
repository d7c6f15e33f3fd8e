"""The study suite: the released protocol's corruptions at integer level p = severity.

Madaan et al. (MIDL 2023) corrupted the magnitude image with torchio 1.x at an
integer level p (REFERENCE s.1). We rerun that setting with our k-space
implementations, on the complex image and along the phase-encode axis, with
torchio's parameter draws (a single number d means U(0, d) for ghosting's
counts and intensity, U(-d, d) otherwise):

| name       | released protocol (torchio 1.x)                        | ours (`corrupt(..., suite="study")`)                                       |
|------------|--------------------------------------------------------|----------------------------------------------------------------------------|
| noise      | Rician, sigma = p % of the slice maximum               | complex Gaussian, sigma = p % of max|x| per slice; magnitude is Rician       |
| ghosting   | RandomGhosting(num_ghosts=7, intensity=p): every n-th  | every n-th phase-encode line (n ~ U{0..7}, n = 0: none) times (1 - s),     |
|            | plane of the magnitude's spectrum times (1 - s),       | s ~ U(0, p), centre line restored; always the phase-encode axis            |
|            | centre restored; axis random                           |                                                                            |
| spike      | RandomSpike(intensity=p): one sample at a uniform      | one k-space sample at a uniform position, amplitude r x the magnitude      |
|            | position += r x max|spectrum|, r ~ U(-p, p)            | image's spectrum peak (as torchio), r ~ U(-p, p), added to complex k-space |
| bias_field | RandomBiasField(coefficients=p), order 3, field = exp  | same polynomial (order 3, constant term included), c ~ U(-p, p)            |
| motion     | RandomMotion(degrees=5p, translation=2p), 2 moves; on  | 2 moves at times 1/3, 2/3 (+-0.1), rotation U(-5p, 5p) deg, shifts        |
|            | a 2-D slice it returns a rigidly moved copy (no ghost) | U(-2p, 2p) px of a 320 px slice per axis (scaled: 2p * W / 320 px), blocks |
|            |                                                        | of phase-encode lines, centre block in the reference pose: real ghosting   |

Severity 0 is the clean image; p = 1..5. torchio took the real part of its
result, we take the magnitude (what the model is fed).

Image size: the study's slices are 320 x 320 with 1 mm-like pixels, and its only
size-bound parameter is the motion translation (2p mm = 2p px). We express it as
a fraction of the field of view (2p / 320), so a 64 px slice gets the same
physical corruption as a 320 px one; every other parameter is already relative
(percent of the maximum, fraction of the spectrum peak, normalised coordinates,
every n-th line).

Not a graded ladder by nature (read the `mrrobust artifacts --suite study`
table with this in mind): torchio draws each parameter uniformly up to the
bound p (or 5p, 2p), so a level-p corruption can be milder than a level-1 one
for a given draw; only the distribution widens with p. Three of the five are
also far outside a realistic range at high p, as in the release: the spike
adds up to p times the spectrum peak (the DC term) to one sample, so from p = 1
the stripes rival the image and from p = 3 they dominate it (NRMSE > 1); the
bias field is exp of a cubic polynomial with coefficients up to +-p, i.e. up to
e**(9p) of contrast across the slice; ghosting with n = 0 (1 draw in 8) leaves
the slice clean at every p. Motion saturates early: once two thirds of the
phase-encode lines come from a pose moved by more than a few pixels they are
decorrelated from the reference, and a larger move adds little further error,
so its median NRMSE rises only slowly with p (see the table).
"""

from __future__ import annotations

import torch

from mrrobust.artifacts import random as rnd
from mrrobust.artifacts.image import multiply_log_polynomial
from mrrobust.artifacts.kspace import add_complex_noise, add_spikes, magnitude_spectrum_peak, scale_lines, segmented_acquisition
from mrrobust.artifacts.registry import STUDY, register

LEVELS = (1, 2, 3, 4, 5)
TABLE_NOTE = ("study suite: torchio draws each parameter uniformly up to the bound set by p, so p widens a "
              "distribution rather than grading one corruption; spike (up to p x the spectrum peak) and bias field "
              "(exp of coefficients up to +-p) are extreme from p = 2, and motion saturates early (slow rise). "
              "Motion shifts are 2p px of a 320 px slice, scaled to the slice size.")


@register(STUDY, "noise", ladder=LEVELS, domain="k-space", unit="p: sigma = p % of slice max")
def study_noise(x, p, seeds):
    """Rician noise, sigma = p % of the slice maximum (the release's own noise)."""
    sigma = p / 100 * x.abs().amax(dim=(-2, -1))
    return add_complex_noise(x, sigma, seeds, "study-noise")


@register(STUDY, "ghosting", ladder=LEVELS, domain="k-space", unit="p: torchio intensity, 7 ghosts")
def study_ghosting(x, p, seeds):
    """torchio RandomGhosting(num_ghosts=7, intensity=p) along the phase-encode axis."""
    width = x.shape[-1]
    step = rnd.integers(seeds, "study-ghosting-n", 8)  # U{0..7}
    strength = p * rnd.uniform(seeds, "study-ghosting-s")
    line = torch.arange(width)[None, :]
    hit = (step[:, None] > 0) & (line % step.clamp(min=1)[:, None] == 0) & (line != width // 2)
    factor = torch.where(hit, 1 - strength[:, None], torch.ones(()).double())
    return scale_lines(x, factor.to(device=x.device, dtype=x.dtype))


@register(STUDY, "spike", ladder=LEVELS, domain="k-space", unit="p: torchio intensity")
def study_spike(x, p, seeds):
    """torchio RandomSpike(intensity=p): one k-space sample += r x spectrum peak, r ~ U(-p, p)."""
    h, w = x.shape[-2:]
    rows = rnd.integers(seeds, "study-spike-row", h, (1,)) - h // 2
    cols = rnd.integers(seeds, "study-spike-col", w, (1,)) - w // 2
    r = p * (2 * rnd.uniform(seeds, "study-spike-r", (1,)) - 1)
    amplitude = r.to(device=x.device, dtype=x.dtype) * magnitude_spectrum_peak(x)[:, None]  # on the device: no sync
    return add_spikes(x, rows, cols, amplitude)


@register(STUDY, "bias_field", ladder=LEVELS, domain="image", unit="p: torchio coefficients")
def study_bias_field(x, p, seeds):
    """torchio RandomBiasField(coefficients=p, order=3): exp of a polynomial, c ~ U(-p, p)."""
    return multiply_log_polynomial(x, p * (2 * rnd.uniform(seeds, "study-bias", (4, 4)) - 1))


@register(STUDY, "motion", ladder=LEVELS, domain="k-space", unit="p: torchio degrees 5p, translation 2p px at 320")
def study_motion(x, p, seeds):
    """torchio RandomMotion(degrees=5p, translation=2p, num_transforms=2) as a real 2-D acquisition."""
    h, w = x.shape[-2:]
    times = torch.tensor([1 / 3, 2 / 3]) + 0.1 * (2 * rnd.uniform(seeds, "study-motion-t", (2,)) - 1)
    degrees = 5 * p * (2 * rnd.uniform(seeds, "study-motion-deg", (2,)) - 1)
    pixels_of_320 = 2 * p * (2 * rnd.uniform(seeds, "study-motion-px", (2, 2)) - 1)  # torchio's mm on a 320 px slice
    shifts = pixels_of_320 * torch.tensor([h, w]) / 320
    return segmented_acquisition(x, times, degrees, shifts)

