"""Image-domain artifacts: bias field, elastic deformation, anisotropy, contrast.

Same signature as `kspace`: `fn(x complex (B, H, W), level, seeds CPU int64 (B,))
-> complex (B, H, W)` on x's device. Linear operations (interpolation,
resampling) act on the real and imaginary parts, as a scanner's
reconstruction would on the complex data; multiplicative ones keep the phase.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mrrobust.artifacts import random as rnd
from mrrobust.artifacts.kspace import _to, magnitude
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
    with i + j > order ignored).

    Separable: a_j(y) = sum_i c_ij y**i `(B, H, order+1)` is small and built on the
    CPU; the full field takes order + 1 broadcast multiply-adds a_j(y) x**j (no
    matmul, whose rounding would depend on the batch), one exp, one multiply."""
    order = coefficients.shape[-1] - 1
    h, w = x.shape[-2:]
    keep = (torch.arange(order + 1)[:, None] + torch.arange(order + 1)[None, :]) <= order
    c = coefficients.double() * keep
    rows, cols = polynomial_basis(h, order), _to(polynomial_basis(w, order), x)
    a = sum(rows[None, :, i, None] * c[:, None, i, :] for i in range(order + 1))  # (B, H, order+1)
    a = _to(a, x)
    log_field = a[:, :, 0, None] * cols[:, 0]
    for j in range(1, order + 1):
        log_field.addcmul_(a[:, :, j, None], cols[:, j])
    return torch.view_as_complex(torch.view_as_real(x) * torch.exp_(log_field)[..., None])


@register(ARTIFACTS, "bias_field", ladder=(0.0876, 0.171, 0.25, 0.352, 0.456), domain="image", unit="max |coefficient| (log field)")
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
    in fractions of the image size, upsampled bicubically to a quarter of the image size,
    then bilinearly to full size (smooth to well below a pixel); one bilinear resampling."""
    b, h, w = x.shape
    coarse = F.interpolate(_to(control.flip(1), x), size=(-(-h // 4), -(-w // 4)), mode="bicubic", align_corners=True)
    field = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)  # (B, 2, H, W), (x, y) order
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # (H, W, 2) in (x, y) order
    grid = torch.add(base, field.permute(0, 2, 3, 1), alpha=2)
    return _complex(F.grid_sample(_planes(x), grid, mode="bilinear", padding_mode="zeros", align_corners=False))


@register(ARTIFACTS, "elastic", ladder=(0.0095, 0.0139, 0.0194, 0.0271, 0.0375), domain="image", unit="max displacement / FOV")
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


def anisotropy_kernel(factor: float, oversample: int = 64) -> torch.Tensor:
    """`(K,)` float64 point-spread function along the coarse axis, on the fine pixel grid: a
    pixel `factor` times wider (box of width factor) displayed by linear interpolation
    (triangle of half-width factor); K = 2 ceil(1.5 factor) + 1 taps, sum 1. Widens
    continuously with the factor (factor 1: close to the identity)."""
    radius = math.ceil(1.5 * factor)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    u = (torch.arange(oversample, dtype=torch.float64) + 0.5) / oversample * factor - factor / 2  # box samples
    triangle = (1 - (taps[:, None] - u[None, :]).abs() / factor).clamp(min=0)
    kernel = triangle.mean(dim=1)
    return kernel / kernel.sum()


BLUR_SLICES = 2  # CPU: slices blurred at a time, so every tap's pass stays in the L2 cache


def blur_along(x: torch.Tensor, factor: float, axis: int) -> torch.Tensor:
    """complex `(n, H, W)` convolved along `axis` (-2: rows, H; -1: columns, W) with
    `anisotropy_kernel(factor)`, edges replicated.

    On the real view, padded along that axis (`(n, H, 2W)` for rows, `(n, H, W, 2)` for columns)
    by concatenating edge copies (4x faster than `F.pad`'s replicate mode on the columns' view),
    so the real and imaginary parts are filtered alike and no transpose is copied; one
    multiply-add per tap (a conv kernel's summation order would depend on the batch size)."""
    n, h, w = x.shape
    kernel = anisotropy_kernel(factor).tolist()
    radius = len(kernel) // 2
    planes = torch.view_as_real(x)
    planes, dim = (planes.reshape(n, h, 2 * w), 1) if axis == -2 else (planes, 2)
    length = planes.shape[dim]
    edge = [-1] * planes.ndim
    edge[dim] = radius
    padded = torch.cat((planes.narrow(dim, 0, 1).expand(edge), planes, planes.narrow(dim, length - 1, 1).expand(edge)), dim)
    out = padded.narrow(dim, 0, length) * kernel[0]
    for tap in range(1, len(kernel)):
        out.add_(padded.narrow(dim, tap, length), alpha=kernel[tap])
    return torch.view_as_complex(out.reshape(n, h, w, 2))


@register(ARTIFACTS, "anisotropy", ladder=(1.71, 2.42, 3.35, 4.55, 6.34), domain="image", unit="resolution loss factor")
def anisotropy(x, level, seeds):
    """Anisotropy: resolution reduced by a factor along one axis, then interpolated back.

    A protocol with larger pixels (or thicker slices, seen in a reformatted
    plane) along one axis, displayed on the original grid: a pixel `factor`
    times wider integrates the signal over its width (box) and is shown by
    linear interpolation (triangle), so the image is convolved with their
    convolution (`anisotropy_kernel`, shift-invariant, so the blur grows
    continuously with the factor). torchio's RandomAnisotropy, the
    inspiration, instead resamples: nearest neighbours down, linear back up
    (aliasing rather than averaging). The axis (rows or columns) is fixed by
    the seed, the factor grows with severity; each slice is blurred along its
    own axis (`blur_along`; on the CPU `BLUR_SLICES` slices at a time). Group
    membership is known on the CPU: no device sync.
    """
    along_columns = (rnd.uniform(seeds, "anisotropy-axis") < 0.5).tolist()
    out = torch.empty_like(x)
    step = BLUR_SLICES if x.device.type == "cpu" else x.shape[0]  # CUDA: one launch per tap and group
    for axis in (-2, -1):
        index = [b for b, columns in enumerate(along_columns) if columns == (axis == -1)]
        for lo in range(0, len(index), step):
            rows = torch.tensor(index[lo:lo + step], device=x.device)
            out[rows] = blur_along(x[rows], level, axis)
    return out


# ---- contrast -----------------------------------------------------------------


@register(ARTIFACTS, "contrast", ladder=((0.195, 0.108), (0.29, 0.16), (0.405, 0.223), (0.547, 0.301), (0.733, 0.403)), domain="image",
          unit="(|log gamma|, |log gain|)")
def contrast(x, level, seeds):
    """Contrast shift: global gamma and gain change of the magnitude, phase kept.

    Another scanner, coil or protocol (TR, TE, receiver gain, vendor
    post-processing) changes intensities globally: m -> gain * M (m / M)**gamma,
    M the slice maximum, with gamma = exp(+-a) and gain = exp(+-b), signs drawn per
    sample (the simplest scanner shift; Perez-Garcia et al., "TorchIO", Comput.
    Methods Programs Biomed. 2021, RandomGamma).
    """
    log_gamma, log_gain = level
    signs = torch.where(rnd.uniform(seeds, "contrast-signs", (2,)) < 0.5, -1.0, 1.0).double()
    gamma, gain = _to(torch.exp(log_gamma * signs[:, 0]), x), _to(torch.exp(log_gain * signs[:, 1]), x)
    m = magnitude(x)
    peak = m.amax(dim=(-2, -1), keepdim=True).clamp(min=torch.finfo(m.dtype).tiny)
    scale = gain[:, None, None] * peak * (m / peak).pow(gamma[:, None, None]) / m.clamp(min=torch.finfo(m.dtype).tiny)
    return x * scale
