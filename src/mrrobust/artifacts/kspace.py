"""Acquisition artifacts simulated on the complex image's k-space.

Convention (REFERENCE s.2): images `(B, H, W)` complex, H = readout (rows),
W = phase encoding (columns, axis -1); k-space = `fft2c(image)`, orthonormal.
Phase-encode artifacts touch whole k-space columns, so they only need the 1-D
FFT along W (`IFFT_w(g(k_w) FFT_w(x)) == ifft2c(g * fft2c(x))` because the
readout FFT commutes with a per-column factor). We skip the fftshift copies: a
column is addressed by its centred line index `line = f + W // 2` (`f` the
signed frequency), the same index `fft2c` uses; the centring phase ramp does not
change which line is which, nor any per-line factor.

Every function: `fn(x complex (B, H, W), level (one ladder entry), seeds CPU
int64 (B,)) -> complex (B, H, W)` on x's device. Parameters are drawn on the CPU
from `random` (per sample) and moved to the device; nothing loops over samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mrrobust.artifacts import random as rnd
from mrrobust.artifacts.registry import ARTIFACTS, register


def fft_pe(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal FFT along the phase-encode axis (-1), unshifted (hybrid space: rows x k-lines)."""
    return torch.fft.fft(x, dim=-1, norm="ortho")


def ifft_pe(k: torch.Tensor) -> torch.Tensor:
    """Inverse of `fft_pe`."""
    return torch.fft.ifft(k, dim=-1, norm="ortho")


def line_index(width: int) -> torch.Tensor:
    """`(W,)` int64 CPU: centred line index (as in fft2c) of each unshifted FFT column."""
    return torch.fft.fftfreq(width, d=1.0 / width).round().long() + width // 2


def _to(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Move a CPU parameter tensor to x's device (float -> x's real dtype)."""
    real = x.real.dtype if x.is_complex() else x.dtype
    return t.to(device=x.device, dtype=real if t.is_floating_point() else t.dtype)


def magnitude(x: torch.Tensor) -> torch.Tensor:
    """complex `(..., H, W)` -> float32 |x| (hypot of the real view: faster than complex abs on the CPU)."""
    planes = torch.view_as_real(x)
    return torch.hypot(planes[..., 0], planes[..., 1])


# ---- noise --------------------------------------------------------------------


def rms_level(x: torch.Tensor) -> torch.Tensor:
    """`(B,)` per-slice signal level: RMS of |x| (= k-space energy per sample, by Parseval)."""
    return torch.linalg.vector_norm(torch.view_as_real(x), dim=(1, 2, 3)) / math.sqrt(x.shape[-2] * x.shape[-1])


def add_complex_noise(x: torch.Tensor, sigma: torch.Tensor, seeds: torch.Tensor, name: str) -> torch.Tensor:
    """x + sigma * (n_re + i n_im), n i.i.d. N(0, 1) per pixel; sigma `(B,)` on x's device.

    One window copy of the noise bank and one fused multiply-add on the real view."""
    field = rnd.complex_noise(seeds, name, tuple(x.shape[-2:]), x.device)
    return torch.view_as_complex(torch.addcmul(torch.view_as_real(x), sigma.to(field.dtype)[:, None, None, None], field))


@register(ARTIFACTS, "noise", ladder=(0.04, 0.08, 0.13, 0.2, 0.3), domain="k-space", unit="sigma / RMS signal")
def noise(x, level, seeds):
    """Thermal noise: complex white Gaussian noise in k-space; Rician magnitude.

    Receiver thermal noise is white, zero-mean complex Gaussian in k-space with
    the same sigma in the real and imaginary channel. The orthonormal FFT is
    unitary, so that noise is also white complex Gaussian with the same sigma in
    image space, where we add it (same distribution, no FFT); the magnitude then
    follows a Rician law, Rayleigh (mean sigma*sqrt(pi/2)) where there is no
    signal (Gudbjartsson & Patz, MRM 1995). sigma = level * RMS(|x|) per slice,
    so a severity means the same SNR whatever the intensity scale.
    """
    return add_complex_noise(x, level * rms_level(x), seeds, "noise")


# ---- ghosting -----------------------------------------------------------------


def scale_lines(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply k-space column `line` by `factor[b, line]` (complex `(B, W)`, centred line order)."""
    order = line_index(x.shape[-1]).to(x.device)
    k = fft_pe(x)
    k *= factor[:, order][:, None, :]
    return ifft_pe(k)


@register(ARTIFACTS, "ghosting", ladder=((2, 0.08), (2, 0.16), (2, 0.26), (3, 0.45), (3, 0.7)), domain="k-space",
          unit="(period P lines, line error |d|)")
def ghosting(x, level, seeds):
    """Ghosting: a periodic line-to-line inconsistency along phase encoding.

    Every P-th phase-encode line (random offset r) is acquired with a complex
    error, line *= 1 - d with |d| from the ladder and a random phase, as with
    odd/even echo mismatch in EPI or periodic (cardiac, respiratory) signal
    change. A k-space modulation with period P lines puts P - 1 ghosts of the
    object at shifts of W/P along phase encoding; P = 2 is the N/2 ghost
    (Haacke et al., Magnetic Resonance Imaging: Physical Principles and
    Sequence Design, Wiley 1999; McRobbie et al., MRI from Picture to Proton,
    Cambridge University Press, artefacts chapter).
    """
    period, magnitude = level
    b, width = x.shape[0], x.shape[-1]
    offset = rnd.integers(seeds, "ghosting-offset", period)
    phase = 2 * math.pi * rnd.uniform(seeds, "ghosting-phase")
    hit = (torch.arange(width)[None, :] - offset[:, None]) % period == 0
    error = torch.polar(torch.full((b,), float(magnitude), dtype=torch.float64), phase)
    factor = torch.where(hit, 1 - error[:, None], torch.ones((), dtype=torch.complex128))
    return scale_lines(x, factor.to(device=x.device, dtype=x.dtype))


# ---- spike --------------------------------------------------------------------


def magnitude_spectrum_peak(x: torch.Tensor) -> torch.Tensor:
    """`(B,)` sum|x| / sqrt(HW): the k-space peak (DC) of the magnitude image, >= max|fft2c(x)|."""
    return magnitude(x).sum(dim=(-2, -1)) / math.sqrt(x.shape[-2] * x.shape[-1])


def add_spikes(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
    """Add k-space samples `amplitude[b, s]` (complex) at signed frequencies (rows, cols) `(B, S)`.

    A single k-space sample is a plane wave in image space: A / sqrt(HW) *
    exp(2 pi i (f_h h / H + f_w w / W)), the outer product of two 1-D complex
    exponentials; each of the S waves is added by one broadcast multiply-add (no
    FFT, and no matmul, whose rounding would depend on the batch).
    """
    h, w = x.shape[-2:]
    dev = x.device

    def waves(freq, n):  # (B, S, n) complex, phase from exact integer products mod n
        k = (freq.to(dev)[:, :, None] * torch.arange(n, device=dev)) % n
        return torch.polar(torch.ones((), device=dev), 2 * math.pi / n * k.to(torch.float32)).to(x.dtype)

    amp = (amplitude / math.sqrt(h * w)).to(device=dev, dtype=x.dtype)
    along_rows, along_cols = waves(rows, h) * amp[:, :, None], waves(cols, w)
    for s in range(along_rows.shape[1]):  # S <= 3 spikes, each over the whole batch
        x = torch.addcmul(x, along_rows[:, s, :, None], along_cols[:, s, None, :])
    return x


@register(ARTIFACTS, "spike", ladder=((1, 0.02), (1, 0.04), (2, 0.06), (2, 0.09), (3, 0.12)), domain="k-space",
          unit="(spikes, amplitude / k-space peak)")
def spike(x, level, seeds):
    """Spike (herringbone, corduroy): a few corrupted k-space samples.

    An electrostatic discharge or a loose connection writes one very bright
    sample into k-space; its plane wave lays stripes over the whole image whose
    direction and spacing are set by the sample's position (Zhuo & Gullapalli,
    "MR artifacts, safety, and quality control", RadioGraphics 26(1), 2006;
    Bernstein, King & Zhou, Handbook of MRI Pulse Sequences, Elsevier 2004).
    Positions are uniform over k-space outside the central 1/8 (in each axis),
    phases uniform, amplitude = level x the magnitude image's k-space peak.
    """
    count, relative = level
    h, w = x.shape[-2:]

    def frequency(name, n):  # signed frequency, |f| in [n/16, n/2]
        u = rnd.uniform(seeds, name, (count,))
        sign = torch.where(rnd.uniform(seeds, name + "-sign", (count,)) < 0.5, -1, 1)
        return sign * (n // 16 + torch.floor(u * (n // 2 - n // 16)).long())

    phase = 2 * math.pi * rnd.uniform(seeds, "spike-phase", (count,))
    unit = torch.polar(torch.full_like(phase, relative), phase).to(device=x.device, dtype=x.dtype)
    amplitude = unit * magnitude_spectrum_peak(x)[:, None]  # stays on the device: no sync
    return add_spikes(x, frequency("spike-row", h), frequency("spike-col", w), amplitude)


# ---- motion -------------------------------------------------------------------


def rigid_grid(degrees: torch.Tensor, shifts: torch.Tensor, h: int, w: int, device) -> torch.Tensor:
    """`(B, H, W, 2)` grid_sample grid (align_corners=False) of one rigid pose per sample: rotation
    by `degrees` `(B,)` about the centre, then shift by `shifts` `(B, 2)` pixels (rows, cols).
    Built by broadcast multiply-adds (what affine_grid computes, without its batched matmul)."""
    theta = torch.deg2rad(degrees.double())
    cos, sin = torch.cos(theta), torch.sin(theta)
    # output -> input map in normalised [-1, 1] coords (x = columns, y = rows), pixel centres
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, dtype=torch.float64)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, dtype=torch.float64)
    col_x, col_y = cos[:, None] * xs, (sin * w / h)[:, None] * xs  # (B, W)
    row_x = (-sin * h / w)[:, None] * ys - 2 * shifts[:, 1:2] / w  # (B, H)
    row_y = cos[:, None] * ys - 2 * shifts[:, 0:1] / h
    grid = torch.empty(degrees.shape[0], h, w, 2, device=device)
    f32 = dict(device=device, dtype=torch.float32)
    torch.add(row_x.to(**f32)[:, :, None], col_x.to(**f32)[:, None, :], out=grid[..., 0])
    torch.add(row_y.to(**f32)[:, :, None], col_y.to(**f32)[:, None, :], out=grid[..., 1])
    return grid


def segmented_acquisition(x: torch.Tensor, times: torch.Tensor, degrees: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Acquire phase-encode lines in linear order while the object moves (Shaw et al. 2019).

    `times` `(B, M)` sorted fractions in (0, 1): the object takes pose m + 1 after
    time m; the segment that holds the k-space centre keeps the reference pose
    (identity), the others take the rigid poses `degrees`/`shifts` `(B, M)`,
    `(B, M, 2)`. Returns the image reconstructed from the mixed k-space. One
    bilinear resampling (real and imaginary as two channels) and one 1-D FFT per
    movement, each over the whole batch.
    """
    b, m = degrees.shape
    h, width = x.shape[-2:]
    line = torch.arange(width, dtype=torch.float64)
    segment = (line[None, :, None] >= times[:, None, :] * width).sum(-1)  # (B, W) in 0..M
    centre = segment[:, width // 2]
    pose = torch.where(segment == centre[:, None], 0, segment + (segment < centre[:, None]).long())  # 0 = reference
    pick = pose[:, line_index(width)]  # (B, W) in FFT column order
    planes = torch.view_as_real(x).permute(0, 3, 1, 2)  # (B, 2, H, W) view
    k = fft_pe(x)
    for move in range(m):
        grid = rigid_grid(degrees[:, move], shifts[:, move], h, width, x.device)
        moved = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        moved_k = fft_pe(torch.view_as_complex(moved.permute(0, 2, 3, 1).contiguous()))
        k = torch.where((pick == move + 1).to(x.device)[:, None, :], moved_k, k)
    return ifft_pe(k)


@register(ARTIFACTS, "motion", ladder=((1, 1.5, 1.0), (1, 3.0, 2.0), (2, 4.5, 3.0), (3, 6.0, 4.5), (4, 8.0, 6.0)),
          domain="k-space", unit="(movements, max degrees, max shift % of FOV)")
def motion(x, level, seeds):
    """Rigid in-plane motion during the acquisition: ghosting and blurring along phase encoding.

    Lines are acquired in linear phase-encode order; the knee moves M times, at
    times uniform in (0.1, 0.9), to a new rigid pose (rotation uniform in
    +-degrees about the centre, translation uniform in +-shift % of the field of
    view in each axis). Each contiguous block of lines comes from the image in
    its pose (Shaw et al., "MRI k-space motion artefact augmentation: model
    robustness and task-specific uncertainty", MIDL 2019); the block that holds the k-space centre is the reference pose. A
    rigidly moved copy alone (torchio on 2-D slices) has no such artifact.
    """
    moves, max_degrees, max_shift = level
    h, w = x.shape[-2:]
    times = torch.sort(0.1 + 0.8 * rnd.uniform(seeds, "motion-times", (moves,)), dim=-1).values
    degrees = max_degrees * (2 * rnd.uniform(seeds, "motion-degrees", (moves,)) - 1)
    shifts = max_shift / 100 * (2 * rnd.uniform(seeds, "motion-shifts", (moves, 2)) - 1) * torch.tensor([h, w])
    return segmented_acquisition(x, times, degrees, shifts)


# ---- undersampling ------------------------------------------------------------


def undersampling_mask(seeds: torch.Tensor, width: int, acceleration: float, center_fraction: float) -> torch.Tensor:
    """`(B, W)` bool CPU mask over centred phase-encode lines (fastMRI convention).

    A fully sampled centre of round(W * center_fraction) lines starting at
    (W - n + 1) // 2; outside it, per sample at random, either each line kept with
    probability (W / R - n) / (W - n) ("random") or every line at spacing
    R (n - W) / (n R - W) from a random offset ("equispaced"); either way about
    W / R lines are kept in total.
    """
    b = seeds.shape[0]
    n_low = round(width * center_fraction)
    pad = (width - n_low + 1) // 2
    line = torch.arange(width)
    centre = (line >= pad) & (line < pad + n_low)
    prob = (width / acceleration - n_low) / (width - n_low)
    random_kind = rnd.uniform(seeds, "mask-kind") < 0.5
    keep_random = rnd.uniform(seeds, "mask-lines", (width,)) < prob
    spacing = acceleration * (n_low - width) / (n_low * acceleration - width)
    offset = rnd.integers(seeds, "mask-offset", max(1, round(spacing)))
    picks = torch.round(offset[:, None] + torch.arange(math.ceil(width / spacing) + 1) * spacing).long()
    keep_equi = torch.zeros(b, width + 1, dtype=torch.bool)
    keep_equi.scatter_(1, picks.clamp(max=width), True)
    keep = torch.where(random_kind[:, None], keep_random, keep_equi[:, :width])
    return keep | centre


@register(ARTIFACTS, "undersampling", ladder=((2, 0.16), (3, 0.12), (4, 0.08), (6, 0.06), (8, 0.04)),
          domain="k-space", unit="(acceleration R, centre fraction)")
def undersampling(x, level, seeds):
    """Accelerated acquisition: phase-encode lines skipped, zero-filled reconstruction.

    fastMRI masks (Zbontar et al., arXiv 1811.08839): a fully sampled centre and
    random or equispaced outer lines, about W / R lines in all; the missing lines
    are zero, giving aliasing along phase encoding (coherent copies for
    equispaced, noise-like for random) and loss of detail.
    """
    acceleration, center_fraction = level
    keep = undersampling_mask(seeds, x.shape[-1], acceleration, center_fraction)
    return scale_lines(x, keep.to(device=x.device, dtype=x.dtype))


# ---- gibbs --------------------------------------------------------------------


def truncate(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the central `fraction` of k-space along both axes (box window), zero the rest."""
    h, w = x.shape[-2:]

    def box(n):
        return (torch.fft.fftfreq(n, d=1.0 / n).abs() <= fraction * n / 2).to(device=x.device, dtype=x.dtype)

    k = torch.fft.fft2(x, norm="ortho") * (box(h)[:, None] * box(w)[None, :])
    return torch.fft.ifft2(k, norm="ortho")


@register(ARTIFACTS, "gibbs", ladder=(0.7, 0.55, 0.42, 0.32, 0.24), domain="k-space", unit="kept fraction of k-space per axis")
def gibbs(x, level, seeds):
    """Gibbs ringing: k-space truncated by a box window, ringing at every sharp edge.

    A finite acquisition matrix multiplies k-space by a box; in image space every
    edge is convolved with a sinc, with overshoot (about 9 %) and ripples spaced
    by the new pixel size (Gibbs phenomenon; Haacke et al., Magnetic Resonance
    Imaging: Physical Principles and Sequence Design, Wiley 1999, on data
    truncation).
    Deterministic: the same for every seed.
    """
    return truncate(x, level)
