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
int64 (B,)) -> complex (B, H, W)` on x's device (`noise` also takes
`reference=`, the per-sample signal level). Parameters are drawn on the CPU
from `random` (per sample) and moved to the device; nothing loops over samples.
The seed fixes each artifact's random pattern and the ladder entry scales or
extends it, so for one seed severity s + 1 is never milder than s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
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


_SQUARES_SAFE = (1e-18, 1e18)  # |x| peak range where re^2 + im^2 neither overflows nor loses the small values


def magnitude(x: torch.Tensor) -> torch.Tensor:
    """complex `(..., H, W)` -> float32 |x|: sqrt(re^2 + im^2) on the real view (half the time of
    `torch.hypot` on the CPU, within an ulp of it); when the largest value lies outside
    1e-18 .. 1e18 (squares would overflow or underflow in float32), `torch.hypot`. Off the CPU
    always `torch.hypot` (cheap there, and checking the range would sync the device)."""
    planes = torch.view_as_real(x)
    re, im = planes[..., 0], planes[..., 1]
    if x.device.type != "cpu":
        return torch.hypot(re, im)
    out = torch.addcmul(re * re, im, im).sqrt_()
    peak = float(out.max()) if out.numel() else 1.0
    low, high = _SQUARES_SAFE
    return out if low <= peak <= high else torch.hypot(re, im)


# ---- noise --------------------------------------------------------------------


def signal_level(x: torch.Tensor) -> torch.Tensor:
    """`(B,)` float32 per-slice signal level: RMS of |x| (= k-space energy per sample, by Parseval).

    One float32 pass; the slices whose float32 sum of squares overflows or underflows (|x| beyond
    ~1e18 or below ~1e-19) are recomputed in float64, so every finite input gives a finite level.
    Off the CPU all in float64 (no device sync to find those slices)."""
    planes = torch.view_as_real(x)
    root = math.sqrt(x.shape[-2] * x.shape[-1])
    if x.device.type != "cpu":
        return (torch.linalg.vector_norm(planes, dim=(1, 2, 3), dtype=torch.float64) / root).to(torch.float32)
    level = torch.linalg.vector_norm(planes, dim=(1, 2, 3)) / root
    redo = ~torch.isfinite(level) | (level < 1e-18)
    if bool(redo.any()):
        level[redo] = (torch.linalg.vector_norm(planes[redo], dim=(1, 2, 3), dtype=torch.float64) / root).to(level.dtype)
    return level.to(torch.float32)


rms_level = signal_level  # former name


def volume_level(volume) -> float:
    """One signal level for a whole scan: RMS of |x| over all its slices `(N, H, W)` (complex or
    magnitude). Pass it to `corrupt(..., reference=...)` for every slice of that volume, so the
    scan gets one thermal noise sigma, as a receiver has."""
    v = torch.as_tensor(volume)
    planes = torch.view_as_real(v) if v.is_complex() else v
    return float(torch.linalg.vector_norm(planes, dtype=torch.float64) / math.sqrt(v.numel()))


def add_complex_noise(x: torch.Tensor, sigma: torch.Tensor, seeds: torch.Tensor, name: str,
                      magnitude_only: bool = False) -> torch.Tensor:
    """x + sigma * (n_re + i n_im), n i.i.d. N(0, 1) per pixel (`random.normal_field` as the real
    view of the H W complex normals); sigma `(B,)`. On the CPU the multiply-add is done block by
    block while the draws are in cache (`random.for_each_normal_block`), on contiguous runs.
    `magnitude_only`: return `magnitude` of that, float32 `(B, H, W)`; on the CPU with H W even
    taken in the same blocks by numpy's complex absolute value (hypot-exact, no overflow, within
    2 ulp of `magnitude`), so the complex result is never written."""
    batch, n = x.shape[0], x.shape[-2] * x.shape[-1]
    sigma = sigma.to(device=x.device, dtype=torch.float32)
    if x.device.type != "cpu":
        noisy = _add_complex_noise_torch(x, sigma, seeds, name)
        return magnitude(noisy) if magnitude_only else noisy
    planes = torch.view_as_real(x.detach().resolve_conj()).reshape(batch, 2 * n)
    fused = magnitude_only and n % 2 == 0  # a block's entries then hold whole pixels (both parts)
    source = planes.numpy()
    result = torch.empty(x.shape, dtype=torch.float32 if fused else x.dtype)
    target = (result if fused else torch.view_as_real(result)).view(batch, -1).numpy()
    scale = sigma.detach().numpy()[:, None]

    def add(rows, pairs, first, second):
        for offset, noise in ((0, first), (n, second)):
            entries = slice(pairs.start + offset, pairs.stop + offset)
            if not fused:
                out = np.multiply(noise, scale[rows], out=target[rows, entries])
                out += source[rows, entries]
                continue
            noisy = np.multiply(noise, scale[rows], out=noise)  # the thread's buffer: free to overwrite
            noisy += source[rows, entries]
            np.abs(noisy.view(np.complex64), out=target[rows, entries.start // 2:entries.stop // 2])

    rnd.for_each_normal_block(seeds, name, n, add)
    return magnitude(result) if magnitude_only and not fused else result


def _add_complex_noise_torch(x: torch.Tensor, sigma: torch.Tensor, seeds: torch.Tensor, name: str) -> torch.Tensor:
    """`add_complex_noise` in torch ops on any device (the path off the CPU; tested on the CPU)."""
    planes = torch.view_as_real(x.resolve_conj()).reshape(x.shape[0], -1)
    noise = rnd._normal_field_torch(seeds, name, x.shape[-2] * x.shape[-1], x.device)  # = normal_field off the CPU
    out = torch.addcmul(planes, sigma.to(device=x.device, dtype=torch.float32)[:, None], noise)
    return torch.view_as_complex(out.view(*x.shape, 2))


@register(ARTIFACTS, "noise", ladder=(0.021, 0.043, 0.0786, 0.126, 0.19), domain="k-space", unit="sigma / RMS signal",
          reference=True, blocked=True)
def noise(x, level, seeds, reference=None, magnitude_only=False):
    """Thermal noise: complex white Gaussian noise in k-space; Rician magnitude.

    Receiver thermal noise is white, zero-mean complex Gaussian in k-space with
    the same sigma in the real and imaginary channel. The orthonormal FFT is
    unitary, so that noise is also white complex Gaussian with the same sigma in
    image space, where we add it (same distribution, no FFT); the magnitude then
    follows a Rician law, Rayleigh (mean sigma*sqrt(pi/2)) where there is no
    signal (Gudbjartsson & Patz, MRM 1995). sigma = level * reference, with
    `reference` `(B,)` the signal level of each sample's scan (`volume_level`:
    one sigma per volume); without it each slice's own RMS |x| (`signal_level`:
    one SNR per slice). The field is fixed by the seed; severity scales sigma.
    `magnitude_only`: return |y| (`add_complex_noise`).
    """
    base = signal_level(x) if reference is None else reference.to(device=x.device, dtype=torch.float32)
    return add_complex_noise(x, level * base, seeds, "noise", magnitude_only)


# ---- ghosting -----------------------------------------------------------------


def scale_lines(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply k-space column `line` by `factor[b, line]` (complex `(B, W)`, centred line order)."""
    order = line_index(x.shape[-1]).to(x.device)
    k = fft_pe(x)
    k *= factor[:, order][:, None, :]
    return ifft_pe(k)


def comb_lines(x: torch.Tensor, period: int, residue: torch.Tensor) -> torch.Tensor:
    """The part of x whose phase-encode lines are `line % period == residue` (`(B,)`, centred line
    index): `x - remove_comb(x, ...)` with weight 1 (see there)."""
    return x - remove_comb(x, period, residue, torch.ones(x.shape[0], dtype=x.dtype, device=x.device))


def remove_comb(x: torch.Tensor, period: int, residue: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x - weight * comb(x), comb(x) the part of x on the lines `line % period == residue`,
    `weight` `(B,)` complex on x's device. Without an FFT when period divides W: the comb in
    k-space is the average of the period's circular shifts by W / period, each with the phase
    exp(-2 pi i j q / period), q = (residue - W // 2) mod period (the signed frequency's class),
    so the result is x (1 - weight / period) plus weighted shifts: one multiply-add per shift."""
    width = x.shape[-1]
    if width % period:
        hit = (torch.arange(width)[None, :] - residue[:, None]) % period == 0
        return x - weight[:, None, None] * scale_lines(x, hit.to(device=x.device, dtype=x.dtype))
    q = ((residue - width // 2) % period).double()
    out = x * (1 - weight / period)[:, None, None]
    for j in range(1, period):
        phase = _to_complex(torch.polar(torch.full_like(q, 1.0 / period), -2 * math.pi * j * q / period), x)
        out.addcmul_(-(weight * phase)[:, None, None], torch.roll(x, -j * width // period, -1))
    return out


def _to_complex(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(device=x.device, dtype=x.dtype)


@register(ARTIFACTS, "ghosting", ladder=((2, 0.161), (2, 0.315), (2, 0.513), (2, 0.756), (2, 1.083)), domain="k-space",
          unit="(period P lines, line error |d|)")
def ghosting(x, level, seeds):
    """Ghosting: a periodic line-to-line inconsistency along phase encoding.

    Every P-th phase-encode line (offset r in 0..P-1) is acquired with a complex
    error, line *= 1 - d, |d| from the ladder, arg d uniform, as with odd/even
    echo mismatch in EPI or periodic (cardiac, respiratory) signal change. A
    k-space modulation with period P lines puts P - 1 ghosts of the object at
    shifts of W/P along phase encoding; P = 2 is the N/2 ghost (Haacke et al.,
    Magnetic Resonance Imaging: Physical Principles and Sequence Design, Wiley
    1999, ch. on artifacts). The seed fixes r and arg d; severity scales |d|, so
    the ghost grows in place. Computed as x - d * comb(x) (`remove_comb`).
    """
    period, magnitude = level
    offset = rnd.integers(seeds, "ghosting-offset", period)
    phase = 2 * math.pi * rnd.uniform(seeds, "ghosting-phase")
    error = _to_complex(torch.polar(torch.full_like(phase, float(magnitude)), phase), x)
    return remove_comb(x, period, offset, error)


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


@register(ARTIFACTS, "spike", ladder=((1, 0.04), (1, 0.0837), (2, 0.11), (2, 0.174), (3, 0.213)), domain="k-space",
          unit="(spikes, amplitude / k-space peak)")
def spike(x, level, seeds):
    """Spike (herringbone, corduroy): a few corrupted k-space samples.

    An electrostatic discharge or a loose connection writes one very bright
    sample into k-space; its plane wave lays stripes over the whole image whose
    direction and spacing are set by the sample's position (Zhuo & Gullapalli,
    "MR artifacts, safety, and quality control", RadioGraphics 26(1), 2006;
    Bernstein, King & Zhou, Handbook of MRI Pulse Sequences, Elsevier 2004).
    Each spike's signed frequency is drawn per axis with |f| uniform in
    [n/16, n/2) (so no spike lies on the central cross |f_h| < H/16 or
    |f_w| < W/16), its phase uniform; amplitude = level x the magnitude image's
    k-space peak. The seed fixes the positions and phases of the ladder's
    largest count; severity s takes the first `count` of them and scales the
    amplitude, so a spike once present stays where it is.
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


def resampled_planes(x: torch.Tensor, degrees: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """`(B, C, H, W)` float: x `(B, H, W)` in the rigid pose (`rigid_grid`), bilinear, zeros outside
    the field of view; C = 2 (real, imaginary) for complex x, C = 1 for real x (a magnitude)."""
    h, w = x.shape[-2:]
    grid = rigid_grid(degrees, shifts, h, w, x.device)
    planes = torch.view_as_real(x).permute(0, 3, 1, 2) if x.is_complex() else x.unsqueeze(1)
    return F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rigid_move(x: torch.Tensor, degrees: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """`(B, H, W)` in the rigid pose (`resampled_planes`): complex out for complex x, real out for
    real x (one channel resampled: half the work)."""
    moved = resampled_planes(x, degrees, shifts)
    if not x.is_complex():
        return moved[:, 0]
    return torch.view_as_complex(moved.permute(0, 2, 3, 1).contiguous())


def line_spectrum(planes: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """`(B, H, L)` complex: `fft_pe` of the image held in `planes` `(B, C, H, W)` (`resampled_planes`)
    at the FFT columns `columns` `(B, L)` int64 only: an orthonormal DFT as two real matrix
    products (phases from exact integer products mod W). Cheaper than the FFT for a few lines."""
    b, c, h, w = planes.shape
    phase = (torch.arange(w, device=columns.device)[None, :, None] * columns[:, None, :]) % w  # (B, W, L)
    angle = phase.double() * (-2 * math.pi / w)
    basis = torch.cat((torch.cos(angle), torch.sin(angle)), dim=-1).div_(math.sqrt(w)).to(planes.dtype)
    by_cos, by_sin = torch.bmm(planes.reshape(b, c * h, w), basis).chunk(2, dim=-1)  # (B, C*H, L) each
    if c == 1:
        return torch.complex(by_cos, by_sin)
    # (re + i im)(cos + i sin) = re cos - im sin + i (re sin + im cos)
    return torch.complex(by_cos[:, :h] - by_sin[:, h:], by_sin[:, :h] + by_cos[:, h:])


FEW_LINES = 8  # CPU: a pose holding at most 8 lines (two shots of echo train 4) gets them by
#               `line_spectrum`'s 8-column DFT (cheaper than the image's FFT), more lines a full FFT


def real_samples(x: torch.Tensor) -> torch.Tensor:
    """`(B,)` bool CPU: the samples of complex `(B, H, W)` whose imaginary parts are all exactly 0
    (magnitude images). The first row decides for most complex images; only the others are
    scanned whole."""
    imaginary = torch.view_as_real(x)[..., 1]
    phased = imaginary[:, 0].any(dim=1)
    undecided = (~phased).nonzero().flatten()
    if len(undecided):
        phased[undecided] = imaginary[undecided].flatten(1).any(dim=1)
    return ~phased.cpu()


def real_part_if_real(x: torch.Tensor) -> torch.Tensor:
    """complex `(B, H, W)` -> its real part `(B, H, W)` float (contiguous) when every sample is a
    magnitude image (`real_samples`), else x unchanged."""
    return torch.view_as_real(x)[..., 0].contiguous() if bool(real_samples(x).all()) else x


@dataclass(frozen=True)
class ViewOrder:
    """When each phase-encode line is acquired in a 2-D (turbo) spin echo.

    A shot (one excitation, one TR) acquires `echo_train_length` lines, one per
    echo. "interleaved" (turbo spin echo's linear-segmented order; Bernstein,
    King & Zhou, Handbook of MRI Pulse Sequences, 2004, ch. 16 on RARE): the W
    lines form ETL contiguous segments of S = ceil(W / ETL) lines, shot j
    acquires line j of every segment, and the segment holding the k-space
    centre is read at echo `effective_echo` (the echo that sets the contrast;
    default ETL // 2), neighbouring segments at neighbouring echoes (cyclic).
    "sequential": shot j acquires the lines j*ETL .. j*ETL + ETL - 1 in linear
    order (with ETL 1, a conventional spin echo).
    The default ETL 4 is the fastMRI knee protocol's echo train length
    (Zbontar et al., arXiv 1811.08839, knee sequence parameters: 2-D coronal TSE).
    """

    echo_train_length: int = 4
    order: str = "interleaved"
    effective_echo: int | None = None

    def __post_init__(self):
        if self.order not in ("interleaved", "sequential"):
            raise ValueError(f"view order must be 'interleaved' or 'sequential'; got {self.order!r}")
        if self.echo_train_length < 1:
            raise ValueError(f"echo train length must be >= 1; got {self.echo_train_length}")

    def shots(self, width: int) -> int:
        """Number of shots (excitations) to acquire `width` lines."""
        return -(-width // self.echo_train_length)

    def shot(self, width: int) -> torch.Tensor:
        """`(W,)` int64: the shot (acquisition time step 0..shots-1) of each centred line."""
        line = torch.arange(width)
        if self.order == "sequential":
            return line // self.echo_train_length
        return line % self.shots(width)

    def echo(self, width: int) -> torch.Tensor:
        """`(W,)` int64: the echo (0..ETL-1) that acquires each centred line."""
        line, etl = torch.arange(width), self.echo_train_length
        if self.order == "sequential":
            return line % etl
        centre_echo = etl // 2 if self.effective_echo is None else self.effective_echo
        segment, centre_segment = line // self.shots(width), (width // 2) // self.shots(width)
        return (segment - centre_segment + centre_echo) % etl


FASTMRI_KNEE = ViewOrder(echo_train_length=4, order="interleaved")
MAX_MOVES = 5  # movement windows drawn per seed; severity s uses the first `moves` of them


def moving_acquisition(x: torch.Tensor, pose: torch.Tensor, degrees: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Reconstruct from k-space lines acquired in different rigid poses of the object.

    `pose` `(B, W)` int64 per centred line: 0 = the reference (clean) pose,
    m = the pose `degrees[:, m-1]`, `shifts[:, m-1]` (`(B, M)`, `(B, M, 2)` pixels).
    One bilinear resampling per pose over the whole batch; its lines by a 1-D FFT, or by a DFT
    of just those lines when they are few (`FEW_LINES`: one shot's lines of a TSE). A magnitude
    image (`real_samples`) resamples one channel; the choice is per sample, so a slice's bits
    do not depend on the other slices of its batch."""
    real = real_samples(x)
    if bool(real.all()) or not bool(real.any()):
        return _acquire(x, pose, degrees, shifts, one_channel=bool(real.all()))
    out = torch.empty_like(x)
    for group, one_channel in ((real, True), (~real, False)):
        rows = group.nonzero().flatten()
        out[rows.to(x.device)] = _acquire(x[rows.to(x.device)], pose[rows], degrees[rows], shifts[rows], one_channel)
    return out


def _acquire(x: torch.Tensor, pose: torch.Tensor, degrees: torch.Tensor, shifts: torch.Tensor,
             one_channel: bool) -> torch.Tensor:
    """`moving_acquisition` of a batch whose samples are all magnitude images (`one_channel`:
    the real part is resampled) or all complex."""
    m, w = degrees.shape[1], x.shape[-1]
    pick = pose[:, line_index(w)].to(x.device)  # (B, W) in FFT column order
    source = torch.view_as_real(x)[..., 0].contiguous() if one_channel else x
    k = fft_pe(source)
    limit = FEW_LINES if x.device.type == "cpu" else 0  # CUDA: the FFT (a batched GEMM's kernel may change with the batch)
    for move in range(m):
        lines = pick == move + 1
        count = lines.sum(dim=1)
        if not bool(count.any()):
            continue
        planes = resampled_planes(source, degrees[:, move], shifts[:, move])
        # each sample's path (and the DFT's width) depends on its own lines only: batch-independent bits
        for chosen, replace in ((count <= limit, _replace_few_lines), ((count > limit), _replace_lines_by_fft)):
            if bool(chosen.all()):
                k = replace(k, planes, lines, limit)
            elif bool(chosen.any()):
                k[chosen] = replace(k[chosen], planes[chosen], lines[chosen], limit)
    return ifft_pe(k)


def _replace_few_lines(k: torch.Tensor, planes: torch.Tensor, lines: torch.Tensor, limit: int) -> torch.Tensor:
    """k `(B, H, W)` with the columns where `lines` `(B, W)` (at most `limit` per sample) replaced by
    those of the image in `planes` (`line_spectrum`, always `limit` columns wide)."""
    if limit == 0:  # no lines to replace
        return k
    h = k.shape[-2]
    columns = torch.argsort((~lines).to(torch.uint8), dim=1, stable=True)[:, :limit]  # the lines first
    index = columns[:, None, :].expand(-1, h, -1)
    used = (torch.arange(limit, device=k.device)[None, :] < lines.sum(dim=1)[:, None])[:, None, :]
    return k.scatter_(-1, index, torch.where(used, line_spectrum(planes, columns), k.gather(-1, index)))


def _replace_lines_by_fft(k: torch.Tensor, planes: torch.Tensor, lines: torch.Tensor, limit: int) -> torch.Tensor:
    """`_replace_few_lines` for any number of lines: the full `fft_pe` of the moved image."""
    moved = planes[:, 0] if planes.shape[1] == 1 else torch.view_as_complex(planes.permute(0, 2, 3, 1).contiguous())
    return torch.where(lines[:, None, :], fft_pe(moved), k)


def segmented_acquisition(x: torch.Tensor, times: torch.Tensor, degrees: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Lines in linear order, the object moving to pose m + 1 after time `times[:, m]` (sorted
    fractions in (0, 1)) and staying; the block holding the k-space centre keeps the reference
    pose (Shaw et al., MIDL 2019). `degrees` `(B, M)`, `shifts` `(B, M, 2)` pixels."""
    width = x.shape[-1]
    line = torch.arange(width, dtype=torch.float64)
    segment = (line[None, :, None] >= times[:, None, :] * width).sum(-1)  # (B, W) in 0..M
    centre = segment[:, width // 2]
    pose = torch.where(segment == centre[:, None], 0, segment + (segment < centre[:, None]).long())
    return moving_acquisition(x, pose, degrees, shifts)


def movement_windows(seeds: torch.Tensor, fraction: float, shots: int,
                     name: str = "motion") -> tuple[torch.Tensor, torch.Tensor]:
    """`(B, MAX_MOVES)` start and end times (fractions of the scan) of disjoint movement windows.

    The scan of `shots` shots is cut into MAX_MOVES equal slots; movement m gets
    slot sigma(m) (a per-seed permutation) and a centre at the time of a shot
    drawn uniformly among the slot's shots (shot j at time (j + 0.5) / shots);
    its window is max(`fraction` of a slot, one shot) long about that centre,
    clipped to the slot, so it always holds that shot. The centres are fixed by
    the seed, so a larger fraction gives windows that contain the smaller ones
    (nested), whatever the number of movements used."""
    slot = torch.argsort(rnd.uniform(seeds, name + "-slot", (MAX_MOVES,)), dim=-1).double()
    lo, hi = slot / MAX_MOVES, (slot + 1) / MAX_MOVES
    first, after = torch.ceil(lo * shots - 0.5), torch.ceil(hi * shots - 0.5)  # the slot's shots: first .. after - 1
    count = (after - first).clamp(min=1)
    pick = torch.floor(rnd.uniform(seeds, name + "-centre", (MAX_MOVES,)) * count)
    centre = (first + pick + 0.5) / shots
    half = max(fraction / MAX_MOVES, 1 / shots) / 2
    return torch.maximum(lo, centre - half), torch.minimum(hi, centre + half)


def transient_motion(x: torch.Tensor, level, seeds: torch.Tensor, order: ViewOrder = FASTMRI_KNEE,
                     name: str = "motion") -> torch.Tensor:
    """Rigid movements during windows of shots, the object back in place in between.

    level = (moves, window fraction of a slot, max degrees, max shift % of FOV).
    Per seed and movement: a window (`movement_windows`), a rotation u * max
    degrees and a shift v * max shift % of the field of view per axis, u, v
    fixed uniforms in (-1, 1). A line takes the pose of the window its shot lies
    in (shot time = (j + 0.5) / shots); every other line, the reference pose."""
    moves, fraction, max_degrees, max_shift = level
    h, w = x.shape[-2:]
    start, end = movement_windows(seeds, fraction, order.shots(w), name)
    time = (order.shot(w).double() + 0.5) / order.shots(w)  # (W,) centred lines
    inside = (time[None, :, None] >= start[:, None, :moves]) & (time[None, :, None] < end[:, None, :moves])
    pose = (inside.long() * torch.arange(1, moves + 1)).sum(-1)  # (B, W): windows are disjoint
    degrees = max_degrees * (2 * rnd.uniform(seeds, name + "-degrees", (MAX_MOVES,)) - 1)[:, :moves]
    unit_shift = (2 * rnd.uniform(seeds, name + "-shifts", (MAX_MOVES, 2)) - 1)[:, :moves]
    shifts = max_shift / 100 * unit_shift * torch.tensor([h, w], dtype=torch.float64)
    return moving_acquisition(x, pose, degrees, shifts)


@register(ARTIFACTS, "motion", ladder=((1, 0.0, 2.82, 1.97), (2, 0.0, 3.45, 2.42), (3, 0.0, 5.0, 3.5),
                                       (4, 0.625, 5.0, 3.5), (5, 0.625, 5.0, 3.5)),
          domain="k-space", unit="(movements, window / slot, max degrees, max shift % of FOV)")
def motion(x, level, seeds):
    """Rigid in-plane motion between the shots of a 2-D turbo spin echo: ghosts along phase encoding.

    The knee moves `moves` times during the scan, each time for a window of
    shots, to a rigid pose (rotation about the centre, translation), and back
    (`transient_motion`). Lines are acquired in the fastMRI knee order
    (`FASTMRI_KNEE`: turbo spin echo, echo train 4, interleaved shots), so a
    moved shot corrupts lines spread over all of k-space, the centre segment
    included: coherent ghosts along phase encoding (the k-space model of Shaw
    et al., "MRI k-space motion artefact augmentation", MIDL 2019, with a TSE
    view order). The seed fixes the windows' slots and centres and every
    pose's direction; severity adds movements and lengthens the windows
    (nested; at least one shot each), so each step moves a superset of the
    previous step's lines; the poses grow up to severity 3 and then stay.
    """
    return transient_motion(x, level, seeds)


# ---- undersampling ------------------------------------------------------------


def undersampling_mask(seeds: torch.Tensor, width: int, acceleration: float, center_fraction: float,
                       kind: str = "random") -> torch.Tensor:
    """`(B, W)` bool CPU mask over centred phase-encode lines (fastMRI's `RandomMaskFunc` /
    `EquispacedMaskFunc` conventions).

    A fully sampled centre of n = round(W * center_fraction) lines starting at
    (W - n + 1) // 2. "random": each other line kept when its per-seed uniform
    u_line < (W / R - n) / (W - n); the uniforms are fixed by the seed, so for
    one seed a higher R (with a smaller centre) keeps a subset of a lower R's
    lines, as fastMRI's masks do for one seed. "equispaced": the lines
    round(o + j * s) for s = R (n - W) / (n R - W) and an offset o uniform in
    [0, s) (continuous, so every seed gets its own phase); not nested across R.
    Either way about W / R lines are kept in total.
    """
    n_low = round(width * center_fraction)
    pad = (width - n_low + 1) // 2
    line = torch.arange(width)
    centre = (line >= pad) & (line < pad + n_low)
    if kind == "random":
        prob = (width / acceleration - n_low) / (width - n_low)
        return (rnd.uniform(seeds, "mask-lines", (width,)) < prob) | centre
    if kind != "equispaced":
        raise ValueError(f"mask kind must be 'random' or 'equispaced'; got {kind!r}")
    spacing = acceleration * (n_low - width) / (n_low * acceleration - width)
    offset = spacing * rnd.uniform(seeds, "mask-offset")
    picks = torch.round(offset[:, None] + torch.arange(math.ceil(width / spacing) + 1) * spacing).long()
    keep = torch.zeros(seeds.shape[0], width + 1, dtype=torch.bool)
    keep.scatter_(1, picks.clamp(max=width), True)
    return keep[:, :width] | centre


@register(ARTIFACTS, "undersampling", ladder=((1.17, 0.273), (1.41, 0.227), (1.78, 0.18), (2.41, 0.133), (3.15, 0.102)),
          domain="k-space", unit="(acceleration R, centre fraction)")
def undersampling(x, level, seeds):
    """Accelerated acquisition: phase-encode lines skipped, zero-filled reconstruction.

    fastMRI random masks (Zbontar et al., arXiv 1811.08839; `undersampling_mask`):
    a fully sampled centre and random outer lines, about W / R lines in all,
    nested along the ladder for one seed; the missing lines are zero, giving
    noise-like aliasing along phase encoding and loss of detail.
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


@register(ARTIFACTS, "gibbs", ladder=(0.719, 0.531, 0.406, 0.3125, 0.25), domain="k-space", unit="kept fraction of k-space per axis")
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
