"""The artifact suite on real MR slices (public pydicom / pydicom-data / nibabel test files):
coupled monotone ladders, calibrated bands, noise independence and level, TSE motion, fastMRI masks."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mrrobust.artifacts import ARTIFACTS, corrupt, kspace
from mrrobust.artifacts import random as rnd
from mrrobust.artifacts.quality import CALIBRATED_BY, NRMSE_BANDS, SSIM_BANDS, monotone_pairs, severity_curves, ssim
from mrrobust.errors import MrRobustError
from mrrobust.fft import fft2c

pytest.importorskip("pydicom")
pytest.importorskip("nibabel")

from mrrobust.artifacts.realmr import real_mr_slices  # noqa: E402


@pytest.fixture(scope="module")
def real():
    """`(N, 64, 64)` complex64 real MR slices, max |x| = 1, smooth synthetic phase."""
    images, names = real_mr_slices(64)
    assert len(names) == images.shape[0] >= 6
    return images


@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_ladders_are_coupled_on_real_slices(real, name):
    """For a fixed slice and seed, severity s + 1 is never weaker than s (NRMSE and 1 - SSIM)."""
    seeds_per_slice = 8
    clean = real.repeat(seeds_per_slice, 1, 1)
    seeds = torch.arange(clean.shape[0]) * 104729 + 17
    nrmses, ssims = severity_curves(clean, name, seeds)
    fraction = float(monotone_pairs(nrmses, ssims).double().mean())
    assert fraction >= 0.98, (name, fraction)  # >= 99 % over 12 x 40 pairs in docs/artifacts.md


@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_ladders_sit_in_their_ssim_bands_on_real_slices(real, name):
    clean = real.repeat(4, 1, 1)
    seeds = torch.arange(clean.shape[0]) * 31 + 5  # not the calibration's seeds
    nrmses, ssims = severity_curves(clean, name, seeds)
    by_nrmse = CALIBRATED_BY.get(name) == "nrmse"
    means = (nrmses if by_nrmse else ssims).mean(dim=1)
    for severity, (low, high) in enumerate(NRMSE_BANDS if by_nrmse else SSIM_BANDS, start=1):
        assert low <= float(means[severity - 1]) <= high, (name, severity, means.tolist())


def test_undersampling_masks_nest_along_the_ladder():
    seeds = torch.arange(200)
    masks = [kspace.undersampling_mask(seeds, 96, r, c) for r, c in ARTIFACTS["undersampling"].ladder]
    for lower, higher in zip(masks, masks[1:]):
        assert bool((higher <= lower).all())  # a higher acceleration keeps a subset of the lines
        assert float(higher.double().sum(1).mean()) < float(lower.double().sum(1).mean())


def test_undersampling_masks_match_fastmri_statistics():
    from fastmri.data.subsample import EquispacedMaskFractionFunc, RandomMaskFunc

    width, draws = 368, 400
    seeds = torch.arange(draws)
    for acceleration, fraction in ((4, 0.08), (8, 0.04)):
        n_low = round(width * fraction)
        for kind, reference in (("random", RandomMaskFunc), ("equispaced", EquispacedMaskFractionFunc)):
            ours = kspace.undersampling_mask(seeds, width, acceleration, fraction, kind=kind).double()
            func = reference([fraction], [acceleration])
            theirs = torch.stack([func((1, width, 2), seed=s)[0].flatten() for s in range(draws)]).double()
            pad = (width - n_low + 1) // 2
            assert bool(ours[:, pad : pad + n_low].all()) and bool(theirs[:, pad : pad + n_low].all())
            assert abs(float(ours.sum(1).mean()) - float(theirs.sum(1).mean())) < 0.02 * width / acceleration
            if kind == "random":  # per-line keep probability outside the centre, same on both sides
                outer = torch.ones(width, dtype=torch.bool)
                outer[pad : pad + n_low] = False
                assert abs(float(ours[:, outer].mean()) - float(theirs[:, outer].mean())) < 0.01
    # equispaced masks vary with the seed over the whole (continuous) offset range: many more
    # distinct masks than fastMRI's integer offsets give
    equi = kspace.undersampling_mask(seeds, width, 4, 0.08, kind="equispaced")
    func = EquispacedMaskFractionFunc([0.08], [4])
    theirs = torch.stack([func((1, width, 2), seed=s)[0].flatten() for s in range(draws)])
    assert torch.unique(equi, dim=0).shape[0] >= 10 * torch.unique(theirs, dim=0).shape[0]


def test_noise_fields_are_independent_per_seed():
    seeds = torch.arange(300)
    field = rnd.complex_noise(seeds, "noise", (32, 32), "cpu").reshape(300, -1)
    field = (field - field.mean(1, keepdim=True)) / field.std(1, keepdim=True)
    corr = field @ field.T / field.shape[1]
    off = corr[~torch.eye(300, dtype=torch.bool)]
    assert float(off.abs().max()) < 6 / math.sqrt(field.shape[1])  # no overlaps, no shared windows
    # within a field: white (no correlation between neighbours), N(0, 1) per part
    f = rnd.complex_noise(seeds[:8], "noise", (64, 64), "cpu")
    assert abs(float((f[:, :, 1:] * f[:, :, :-1]).mean())) < 0.01
    assert abs(float(f.std()) - 1) < 0.01
    from scipy import stats

    assert stats.kstest(f[..., 0].flatten().numpy(), "norm").pvalue > 1e-3


def test_noise_field_is_the_same_whatever_the_blocking_and_hash_backend(monkeypatch):
    seeds = torch.tensor([0, 1, -7, 2**40, 2**62], dtype=torch.int64)
    whole = rnd.complex_noise(seeds, "noise", (40, 24), "cpu")
    monkeypatch.setattr(rnd, "_BLOCK", 100)  # pixel blocks that cut a slice (960 pixels) unevenly
    assert torch.equal(whole, rnd.complex_noise(seeds, "noise", (40, 24), "cpu"))
    monkeypatch.setattr(rnd, "_BLOCK", 4000)  # several slices per block
    assert torch.equal(whole, rnd.complex_noise(seeds, "noise", (40, 24), "cpu"))
    # the numpy uint32 hash (CPU) and the torch int32 hash (CUDA) give the same bits
    counter = np.arange(2 * 960, dtype=np.uint32).reshape(2, 960)
    keys = rnd.bits(seeds, "noise", 2)
    a, c = rnd._int32(keys[:, 0] | 1)[:, None, None], rnd._int32(keys[:, 1])[:, None, None]
    ours = rnd._hash_numpy(counter, a, c)
    assert np.array_equal(ours, rnd._hash_torch(torch.from_numpy(counter.view(np.int32)), a, c).numpy())
    assert 0 <= ours.min() and ours.max() < 2**24 and len(np.unique(ours)) > 0.99 * ours.size
    # the whole field off the CPU (torch ops) is the CPU's numpy field up to the transcendentals' ulp
    cpu = rnd.normal_field(seeds, "noise", 960, "cpu")
    torch.testing.assert_close(rnd._normal_field_torch(seeds, "noise", 960, "cpu"), cpu, rtol=2e-6, atol=2e-6)


def test_magnitude_matches_hypot_over_the_whole_float32_range():
    x = torch.randn(3, 16, 16, dtype=torch.complex64)
    for scale in (1.0, 1e-30, 1e-10, 1e10, 1e30):
        y = x * scale
        expected = torch.hypot(y.real, y.imag)
        got = kspace.magnitude(y)
        assert bool(torch.isfinite(got).all()) and bool((expected > 0).all())
        assert float(((got - expected).abs() / expected).max()) < 3e-7  # within ~2 ulp


def test_noise_level_per_volume_and_without_overflow(real):
    volume = real[:6]
    level = kspace.volume_level(volume)
    seeds = torch.arange(6)
    y = corrupt(volume, "noise", 3, seeds, reference=level)
    sigma = ARTIFACTS["noise"].ladder[2] * level
    residual = (torch.view_as_real(kspace.noise(volume, ARTIFACTS["noise"].ladder[2], seeds,
                                                reference=torch.full((6,), level))) - torch.view_as_real(volume))
    per_slice = residual.flatten(1).std(dim=1) / sigma  # one sigma for the whole volume
    assert bool(((per_slice - 1).abs() < 0.05).all())
    assert torch.equal(y, corrupt(volume, "noise", 3, seeds, reference=[level] * 6))
    own = corrupt(volume, "noise", 3, seeds)  # default: each slice's own RMS
    assert not torch.equal(own, y)
    huge = volume * 1e30  # squares overflow float32; the level must not
    assert math.isfinite(kspace.volume_level(huge)) and bool(torch.isfinite(kspace.signal_level(huge)).all())
    assert bool(torch.isfinite(corrupt(huge, "noise", 2, seeds)).all())
    for bad in (0.0, -1.0, float("nan"), [level] * 5):
        with pytest.raises(MrRobustError, match="reference"):
            corrupt(volume, "noise", 3, seeds, reference=bad)


def test_noise_background_is_rayleigh_under_one_volume_sigma():
    x = torch.zeros(8, 96, 96, dtype=torch.complex64)
    x[:, :, :48] = 2.0
    sigma = 0.1
    y = corrupt(x, "noise", 1, torch.arange(8), reference=sigma / ARTIFACTS["noise"].ladder[0])
    air = y[:, :, 48:].double()
    assert abs(float(air.mean()) / (sigma * math.sqrt(math.pi / 2)) - 1) < 0.01
    from scipy import stats

    assert stats.kstest(air.flatten().numpy()[:20000] / sigma, "rayleigh").pvalue > 1e-3


def test_seeds_outside_int64_are_refused(real):
    with pytest.raises(MrRobustError, match="int64"):
        corrupt(real[:1], "noise", 1, [2**63])
    with pytest.raises(MrRobustError, match="int64"):
        corrupt(real[:1], "noise", 1, np.array([2**64 - 1], dtype=np.uint64))
    assert corrupt(real[:1], "noise", 1, [2**63 - 1]).shape == (1, 64, 64)


# ---- turbo spin echo motion -----------------------------------------------------


def test_view_order_interleaves_shots_and_reads_the_centre_at_the_effective_echo():
    order = kspace.ViewOrder(echo_train_length=4)
    width = 64
    shot, echo = order.shot(width), order.echo(width)
    assert order.shots(width) == 16 and int(shot.max()) == 15
    for j in range(16):  # each shot acquires ETL lines, one per segment, one per echo
        lines = (shot == j).nonzero().flatten()
        assert lines.tolist() == [j + 16 * e for e in range(4)]
        assert sorted(echo[lines].tolist()) == [0, 1, 2, 3]
    assert int(echo[width // 2]) == 2  # effective echo ETL // 2 at the k-space centre
    assert int(kspace.ViewOrder(4, effective_echo=0).echo(width)[width // 2]) == 0
    sequential = kspace.ViewOrder(4, order="sequential").shot(width)
    assert sequential.tolist() == [line // 4 for line in range(width)]
    with pytest.raises(ValueError):
        kspace.ViewOrder(4, order="spiral")


def _one_shift(x, order, shift=(0.0, 4.0), window=(0.3, 0.5)):
    """x acquired with one movement (pure shift, pixels (rows, cols)) during a window of the scan."""
    width = x.shape[-1]
    time = (order.shot(width).double() + 0.5) / order.shots(width)
    pose = ((time >= window[0]) & (time < window[1])).long()[None].expand(x.shape[0], -1)
    return kspace.moving_acquisition(x, pose, torch.zeros(x.shape[0], 1), torch.tensor([[shift]] * x.shape[0]))


def test_tse_motion_ghosts_lie_along_phase_encoding(real):
    # real slices, empty border rows: a move along phase encoding mixes lines within each readout
    # row only, so rows without signal stay empty while the error spreads along the rows
    x = real.clone()
    x[:, :8], x[:, -8:] = 0, 0
    error = (_one_shift(x, kspace.FASTMRI_KNEE).abs() - x.abs()).square()
    assert float(error[:, :8].sum() + error[:, -8:].sum()) < 1e-8 * float(error.sum())
    # a blob: both a PE and a readout move leave ghosts in the blob's rows (+- the move), spread along PE
    blob = torch.zeros(1, 64, 64, dtype=torch.complex64)
    blob[0, 28:36, 10:18] = 1.0
    for shift in ((0.0, 4.0), (4.0, 0.0)):
        y = _one_shift(blob, kspace.FASTMRI_KNEE, shift).abs()[0]
        rows = (y.square().sum(dim=1) > 1e-4 * y.square().sum()).nonzero().flatten()
        assert int(rows.min()) >= 28 - 5 and int(rows.max()) <= 35 + 5  # readout: confined
        far = torch.cat([y[23:41, 26:], y[23:41, :2]], dim=1)  # >= 8 px from the blob along PE
        assert float(far.square().sum()) > 1e-3 * float(y.square().sum())  # PE: ghosts reach far


def test_tse_motion_differs_from_every_rigid_shift_and_from_sequential(real):
    x = real[:6]
    clean = x.abs()

    def best_shift_nrmse(a, b):  # min over all circular integer shifts of b, by FFT correlation
        corr = torch.fft.ifft2(torch.fft.fft2(a) * torch.fft.fft2(b).conj()).real
        return torch.sqrt((a.square().sum() + b.square().sum() - 2 * corr.max()).clamp(min=0)) / a.norm()

    y = corrupt(x, "motion", 4, torch.arange(6) + 100)
    for b in range(6):
        assert float(best_shift_nrmse(y[b], clean[b])) > 0.02
    # the same movement (4 px along PE) during 10 % of the scan, at each of 10 places: interleaved
    # shots spread the moved lines over all of k-space, centre segment included, so every placement
    # gives a ghost; sequential shots move one band, harmless unless it is near the centre
    clean = real.abs()

    def errors(order):
        out = [(_one_shift(real, order, window=(p / 10, p / 10 + 0.1)).abs() - clean).flatten(1).norm(dim=1)
               for p in range(10)]
        return torch.stack(out) / clean.flatten(1).norm(dim=1)  # (placements, slices) NRMSE

    tse, sequential = errors(kspace.FASTMRI_KNEE), errors(kspace.ViewOrder(4, order="sequential"))
    assert bool((tse.min(0).values > 1.8 * sequential.min(0).values).all())
    assert bool((tse.mean(0) > 1.15 * sequential.mean(0)).all())
    cv = lambda e: e.std(0) / e.mean(0)  # noqa: E731
    assert bool((cv(tse) < 0.6 * cv(sequential)).all())
    kspace_error = fft2c(_one_shift(x, kspace.FASTMRI_KNEE) - x).abs().square().sum(dim=1)  # (B, W)
    moved_lines = (kspace_error > 1e-6 * kspace_error.amax(dim=1, keepdim=True)).double().mean(dim=1)
    assert bool((moved_lines > 0.15).all())


def test_motion_adds_movements_without_reassigning_lines():
    seeds = torch.arange(50)
    start, end = kspace.movement_windows(seeds, 1.0, 16)
    assert bool((end > start).all()) and float(start.min()) >= 0 and float(end.max()) <= 1
    order = torch.argsort(start, dim=1)
    s, e = start.gather(1, order), end.gather(1, order)
    assert bool((s[:, 1:] >= e[:, :-1]).all())  # disjoint windows
    ladder = ARTIFACTS["motion"].ladder
    previous = None
    for step, (moves, fraction, degrees, shift) in enumerate(ladder):  # each step: a superset of the lines
        assert step == 0 or (degrees >= ladder[step - 1][2] and shift >= ladder[step - 1][3])
        a, b = kspace.movement_windows(seeds, fraction, 16)
        time = (kspace.FASTMRI_KNEE.shot(64).double() + 0.5) / kspace.FASTMRI_KNEE.shots(64)
        moved = ((time[None, :, None] >= a[:, None, :moves]) & (time[None, :, None] < b[:, None, :moves]))
        pose = (moved.long() * torch.arange(1, moves + 1)).sum(-1)
        assert bool(((pose > 0).sum(1) >= 4 * moves).all())  # each movement moves >= 1 shot (ETL 4 lines)
        if previous is not None:
            kept = previous > 0
            assert torch.equal(pose[kept], previous[kept]) and int((pose > 0).sum()) > int(kept.sum())
        previous = pose


def test_ghosting_without_fft_matches_the_kspace_definition(real):
    x = real[:3]
    seeds = torch.tensor([1, 2, 3])
    for period in (2, 3, 4, 5):  # 5 does not divide 64: the FFT path
        offset = rnd.integers(seeds, "g", period)
        hit = (torch.arange(64)[None, :] - offset[:, None]) % period == 0
        ref = kspace.scale_lines(x, hit.to(x.dtype))
        torch.testing.assert_close(kspace.comb_lines(x, period, offset), ref, atol=2e-6, rtol=1e-5)


def test_physics_on_real_slices(real):
    x = real[:4]
    seeds = torch.arange(4) + 7
    y = ARTIFACTS["undersampling"].function(x, (4, 0.08), seeds)
    mask = kspace.undersampling_mask(seeds, 64, 4, 0.08)
    k_y = fft2c(y)
    for b in range(4):
        assert float(k_y[b][:, ~mask[b]].abs().max()) < 1e-5
    count, relative = ARTIFACTS["spike"].ladder[4]
    diff = fft2c(ARTIFACTS["spike"].function(x, (count, relative), seeds) - x).abs()
    peaks = x.abs().sum(dim=(-2, -1)) / 64
    top = diff.flatten(1).topk(count + 1, dim=1).values
    torch.testing.assert_close(top[:, :count], (relative * peaks)[:, None].expand(-1, count), rtol=1e-3, atol=0)
    assert bool((ssim(x.abs(), corrupt(x, "bias_field", 5, seeds)) < 1).all())


def test_rigid_move_of_a_magnitude_resamples_one_channel_with_the_same_values(real):
    x = real[:4].abs().to(torch.complex64)  # zero phase: a magnitude image
    degrees, shifts = torch.tensor([0.0, 3.0, -5.0, 1.5]), torch.tensor([[0.0, 0.0], [1.5, -2.0], [0.3, 4.0], [-1.0, 0.0]])
    two_channels = kspace.rigid_move(x, degrees, shifts)
    one_channel = kspace.rigid_move(x.real.contiguous(), degrees, shifts)
    assert not one_channel.is_complex() and torch.equal(two_channels.real, one_channel)
    assert not bool(two_channels.imag.any())
    phased = real[:4]
    assert kspace.real_part_if_real(x).dtype == torch.float32 and kspace.real_part_if_real(phased) is phased


def test_line_spectrum_is_the_fft_at_those_lines_and_motion_takes_either_path(real):
    x = real[:5]
    columns = torch.tensor([[0, 3, 63], [1, 2, 4], [10, 11, 40], [5, 5, 5], [62, 0, 31]])
    for planes in (torch.view_as_real(x).permute(0, 3, 1, 2), x.abs().unsqueeze(1)):
        image = planes[:, 0] if planes.shape[1] == 1 else x
        expected = torch.fft.fft(image, dim=-1, norm="ortho").gather(-1, columns[:, None, :].expand(-1, 64, -1))
        assert torch.allclose(kspace.line_spectrum(planes.contiguous(), columns), expected, atol=2e-6, rtol=1e-5)
    # one movement of one shot (4 lines: the DFT path) gives the FFT path's image, and per sample
    # the same bits whatever the batch around it
    level = ARTIFACTS["motion"].ladder[1]
    seeds = torch.tensor([3, 8, -1, 2**41, 17])
    few = kspace.motion(x, level, seeds)
    old = kspace.FEW_LINES
    try:
        kspace.FEW_LINES = 0  # every pose by the FFT (as on CUDA)
        full_fft = kspace.motion(x, level, seeds)
    finally:
        kspace.FEW_LINES = old
    assert torch.allclose(few, full_fft, atol=1e-5) and not torch.equal(few, x)
    assert torch.equal(kspace.motion(x[[4, 1]], level, seeds[[4, 1]]), few[[4, 1]])
    assert torch.equal(kspace.motion(x[2:3], level, seeds[2:3]), few[2:3])


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_noise_workers_start_no_openmp_team():
    # a torch op run on a noise worker thread would start an OpenMP team of its own there (one
    # more OS thread per worker), after which every later torch op in the process ran slower;
    # the workers run numpy only, so a noise call adds its pool's threads and nothing else
    script = """
import os, torch
torch.set_num_threads(2)
from mrrobust.artifacts import corrupt
x = torch.rand(4, 320, 320)
count = lambda: len(os.listdir("/proc/self/task"))
corrupt(x, "anisotropy", 3, torch.arange(4))  # the main thread's OpenMP team
before = count()
corrupt(x, "noise", 3, torch.arange(4))  # several blocks: the pool of 2 workers
corrupt(x, "noise", 2, torch.arange(4))
print(count() - before)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == 2


def test_motion_of_a_magnitude_slice_does_not_depend_on_complex_slices_beside_it(real):
    # a magnitude image resamples one channel: decided per sample, not per batch
    magnitude = real[:6].abs().to(torch.complex64)
    seeds = torch.arange(6)
    alone = corrupt(magnitude, "motion", 3, seeds)
    mixed = corrupt(torch.cat([real[:6], magnitude]), "motion", 3, torch.cat([seeds, seeds]))
    assert torch.equal(mixed[6:], alone)
    assert torch.equal(mixed[:6], corrupt(real[:6], "motion", 3, seeds))
    assert kspace.real_samples(torch.cat([real[:2], magnitude[:2]])).tolist() == [False, False, True, True]
