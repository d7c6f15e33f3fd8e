"""Image-domain artifacts: bias field, elastic deformation, anisotropy, contrast.

Same signature as `kspace`: `fn(x complex (B, H, W), level, seeds CPU int64 (B,))
-> complex (B, H, W)` on x's device. Linear operations (interpolation,
resampling) act on the real and imaginary parts, as a scanner's
reconstruction would on the complex data; multiplicative ones keep the phase.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mrrobust.artifacts import random as rnd
from mrrobust.artifacts.kspace import _to
from mrrobust.artifacts.registry import ARTIFACTS, register


def _planes(x: torch.Tensor) -> torch.Tensor:
    """complex (B, H, W) -> real (B, 2, H, W)."""
    return torch.view_as_real(x).permute(0, 3, 1, 2)


def _complex(planes: torch.Tensor) -> torch.Tensor:
    """real (B, 2, H, W) -> complex (B, H, W)."""
    return torch.view_as_complex(planes.permute(0, 2, 3, 1).contiguous())


# ---- bias field ---------------------------------------------------------------


def polynomial_basis(n: int, order: int) -> torch.Tensor:
    """`(n, order + 1)` float64: powers t**j of pixel-centre coordinates t in [-1, 1]."""
    t = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    t = t / t.abs().max().clamp(min=1e-12)
    return t[:, None] ** torch.arange(order + 1, dtype=torch.float64)


def multiply_log_polynomial(x: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """x * exp(sum_{i+j<=order} c_ij y**i x**j); coefficients `(B, order+1, order+1)` (entries
    with i + j > order ignored). The field is built by two small matmuls."""
    order = coefficients.shape[-1] - 1
    h, w = x.shape[-2:]
    keep = (torch.arange(order + 1)[:, None] + torch.arange(order + 1)[None, :]) <= order
    c = _to(coefficients * keep, x)
    rows, cols = _to(polynomial_basis(h, order), x), _to(polynomial_basis(w, order), x)
    log_field = rows @ c @ cols.T  # (B, H, W)
    return x * torch.exp(log_field)


@register(ARTIFACTS, "bias_field", ladder=(0.1, 0.2, 0.3, 0.45, 0.6), domain="image", unit="max |coefficient| (log field)")
def bias_field(x, level, seeds):
    """Bias field: smooth multiplicative shading from the receive coil's sensitivity.

    The coil's sensitivity falls off with distance, so the image is multiplied by
    a smooth positive field, modelled as exp of a 2-D polynomial of order 3
    (Van Leemput et al., IEEE TMI 1999; as torchio's RandomBiasField). The
    constant term is left out (that is a global gain, see `contrast`), the other
    coefficients are uniform in +-level.
    """
    coefficients = level * (2 * rnd.uniform(seeds, "bias-coefficients", (4, 4)) - 1)
    coefficients[:, 0, 0] = 0
    return multiply_log_polynomial(x, coefficients)


# ---- elastic ------------------------------------------------------------------


def displace(x: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """Warp x by a smooth displacement field: control `(B, 2, G, G)` displacements (rows, cols)
    in fractions of the image size, upsampled bicubically to full size; bilinear resampling."""
    b, h, w = x.shape
    field = F.interpolate(_to(control, x), size=(h, w), mode="bicubic", align_corners=True)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # (H, W, 2) in (x, y) order
    grid = base + 2 * field.flip(1).permute(0, 2, 3, 1)
    return _complex(F.grid_sample(_planes(x), grid, mode="bilinear", padding_mode="zeros", align_corners=False))


@register(ARTIFACTS, "elastic", ladder=(0.005, 0.01, 0.016, 0.024, 0.035), domain="image", unit="max displacement / FOV")
def elastic(x, level, seeds):
    """Elastic deformation: smooth non-rigid displacement of the anatomy.

    Soft tissue deforms non-rigidly between scans (positioning, coil pressure,
    flexion); modelled as a B-spline-like displacement field: a 6 x 6 grid of
    control displacements, uniform in +-level of the field of view per axis,
    upsampled bicubically (Simard et al., ICDAR 2003; torchio
    RandomElasticDeformation).
    """
    control = level * (2 * rnd.uniform(seeds, "elastic-control", (2, 6, 6)) - 1)
    return displace(x, control)


# ---- anisotropy ---------------------------------------------------------------


def _blur_rows(planes: torch.Tensor, factor: float) -> torch.Tensor:
    """Average rows down to H / factor, then interpolate linearly back to H."""
    h, w = planes.shape[-2:]
    low = F.interpolate(planes, size=(max(1, round(h / factor)), w), mode="area")
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


@register(ARTIFACTS, "anisotropy", ladder=(1.5, 2.0, 3.0, 4.0, 6.0), domain="image", unit="resolution loss factor")
def anisotropy(x, level, seeds):
    """Anisotropy: resolution reduced by a factor along one axis, then interpolated back.

    A protocol with larger pixels (or thicker slices, seen in a reformatted
    plane) along one axis, displayed on the original grid: area averaging to
    N / factor samples, linear interpolation back (torchio RandomAnisotropy).
    The axis (rows or columns) is drawn per sample.
    """
    along_columns = (rnd.uniform(seeds, "anisotropy-axis") < 0.5).nonzero().flatten()
    along_rows = (rnd.uniform(seeds, "anisotropy-axis") >= 0.5).nonzero().flatten()
    planes = _planes(x)
    out = torch.empty_like(planes)
    for index, transpose in ((along_rows, False), (along_columns, True)):
        if len(index):
            part = planes[index.to(x.device)]
            part = part.transpose(-1, -2) if transpose else part
            part = _blur_rows(part, level)
            out[index.to(x.device)] = part.transpose(-1, -2) if transpose else part
    return _complex(out)


# ---- contrast -----------------------------------------------------------------


@register(ARTIFACTS, "contrast", ladder=((0.1, 0.05), (0.2, 0.1), (0.3, 0.16), (0.45, 0.24), (0.6, 0.35)), domain="image",
          unit="(|log gamma|, |log gain|)")
def contrast(x, level, seeds):
    """Contrast shift: global gamma and gain change of the magnitude, phase kept.

    Another scanner, coil or protocol (TR, TE, receiver gain, vendor
    post-processing) changes intensities globally: m -> gain * M (m / M)**gamma,
    M the slice maximum, with gamma = exp(+-a) and gain = exp(+-b), signs drawn per
    sample (the simplest scanner shift; Perez-Garcia et al., torchio RandomGamma).
    """
    log_gamma, log_gain = level
    signs = torch.where(rnd.uniform(seeds, "contrast-signs", (2,)) < 0.5, -1.0, 1.0).double()
    gamma, gain = _to(torch.exp(log_gamma * signs[:, 0]), x), _to(torch.exp(log_gain * signs[:, 1]), x)
    m = x.abs()
    peak = m.amax(dim=(-2, -1), keepdim=True).clamp(min=torch.finfo(m.dtype).tiny)
    scale = gain[:, None, None] * peak * (m / peak).pow(gamma[:, None, None]) / m.clamp(min=torch.finfo(m.dtype).tiny)
    return x * scale
