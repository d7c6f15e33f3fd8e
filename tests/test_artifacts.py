"""Physics and contract tests for mrrobust.artifacts (no snapshots)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrrobust.artifacts import ARTIFACTS, STUDY, corrupt, kspace
from mrrobust.artifacts import random as rnd
from mrrobust.artifacts.quality import validation_slices
from mrrobust.errors import MrRobustError
from mrrobust.fft import fft2c

SIZE = 64


@pytest.fixture(scope="module")
def slices():
    return validation_slices(6, SIZE, seed=3)


def test_severity_zero_is_the_clean_magnitude(slices):
    seeds = torch.arange(6)
    for suite, registry in (("mrrobust", ARTIFACTS), ("study", STUDY)):
        for name in registry:
            assert torch.equal(corrupt(slices, name, 0, seeds, suite=suite), slices.abs())


def test_real_input_is_zero_phase(slices):
    magnitude = slices.abs()
    seeds = torch.arange(6)
    assert torch.equal(corrupt(magnitude, "motion", 3, seeds), corrupt(magnitude.to(torch.complex64), "motion", 3, seeds))


@pytest.mark.parametrize("suite,name", [("mrrobust", n) for n in ARTIFACTS] + [("study", n) for n in STUDY])
def test_per_sample_determinism_across_batches_and_orders(slices, suite, name, monkeypatch):
    seeds = torch.tensor([5, -3, 2**40 + 7, 0, 11, 123456789012])
    full = corrupt(slices, name, 4, seeds, suite=suite)
    import mrrobust.artifacts as artifacts

    monkeypatch.setattr(artifacts, "CPU_CHUNK_PIXELS", 2 * SIZE * SIZE)  # corrupt cuts the batch in 3 chunks
    assert artifacts.cpu_chunk(slices) == 2
    assert torch.equal(corrupt(slices, name, 4, seeds, suite=suite), full)
    monkeypatch.undo()
    order = [4, 1, 5]
    part = corrupt(slices[order], name, 4, seeds[order], suite=suite)
    single = corrupt(slices[2:3], name, 4, seeds[2:3], suite=suite)
    assert torch.equal(part, full[order])  # exactly the same, not just close
    assert torch.equal(single, full[2:3])
    other_seeds = corrupt(slices[[2] * 6], name, 4, seeds, suite=suite)
    if name != "gibbs":  # gibbs is deterministic by design
        assert any(not torch.allclose(other, single[0]) for other in other_seeds)


def test_parseval_and_white_noise_in_kspace():
    x = torch.zeros(4, 96, 96, dtype=torch.complex64)
    x[:, 20:70, 30:60] = 1.0
    seeds = torch.arange(4)
    noisy = kspace.noise(x, 0.2, seeds)
    field = noisy - x
    k = fft2c(field)
    image_energy = field.abs().square().sum(dim=(-2, -1))
    kspace_energy = k.abs().square().sum(dim=(-2, -1))
    torch.testing.assert_close(kspace_energy, image_energy, rtol=1e-4, atol=0)
    sigma = 0.2 * kspace.rms_level(x)
    # white complex Gaussian in k-space: E|K|^2 = 2 sigma^2 on every sample, real/imag uncorrelated;
    # both means over n = 96 * 96 samples have standard error 1 / sqrt(n): 5 of them bound each
    bound = 5 / math.sqrt(96 * 96)
    per_sample = k.abs().square().mean(dim=(-2, -1)) / (2 * sigma**2)
    assert torch.all((per_sample - 1).abs() < bound)
    assert float(((k.real * k.imag).mean(dim=(-2, -1)) / sigma**2).abs().max()) < bound


def test_noise_background_is_rayleigh():
    x = torch.zeros(8, 128, 128, dtype=torch.complex64)
    x[:, :, :64] = 2.0  # signal on the left half, air on the right
    y = corrupt(x, "noise", 3, torch.arange(8))
    sigma = ARTIFACTS["noise"].ladder[2] * math.sqrt(2.0)  # level * RMS, RMS = sqrt(4 / 2)
    air = y[:, :, 64:].double()
    assert abs(float(air.mean()) / (sigma * math.sqrt(math.pi / 2)) - 1) < 0.01
    assert abs(float(air.var()) / ((2 - math.pi / 2) * sigma**2) - 1) < 0.03
    from scipy import stats

    assert stats.kstest(air.flatten().numpy()[:20000] / sigma, "rayleigh").pvalue > 1e-3


def test_study_noise_sigma_is_percent_of_slice_max():
    x = torch.zeros(4, 128, 128, dtype=torch.complex64)
    x[:, 10:50, :60] = 3.0
    y = corrupt(x, "noise", 4, torch.arange(4), suite="study")
    sigma = 0.04 * 3.0
    assert abs(float(y[:, 64:, 64:].double().mean()) / (sigma * math.sqrt(math.pi / 2)) - 1) < 0.02


def _blob(width=128):
    x = torch.zeros(1, width, width, dtype=torch.complex64)
    x[0, 60:68, 20:28] = 1.0
    return x


def test_ghosts_sit_at_w_over_p_along_phase_encoding():
    x = _blob()
    for level in (ARTIFACTS["ghosting"].ladder[0], ARTIFACTS["ghosting"].ladder[4], (3, 0.5), (4, 0.5)):
        period = level[0]
        y = kspace.magnitude(kspace.ghosting(x, level, torch.tensor([9])))[0]
        ghost = y.clone()
        ghost[60:68, 20:28] = 0
        row, col = divmod(int(ghost.argmax()), 128)
        assert 60 <= row < 68  # same rows: ghosts only along phase encoding
        shift = (col - 20) % 128
        assert any(abs(shift - j * 128 / period) <= 8 for j in range(1, period))
        # energy off the object and its ghosts is negligible
        expected = torch.zeros_like(y, dtype=torch.bool)
        for j in range(period):
            expected[60:68, :].index_fill_(1, (torch.arange(20, 28) + round(j * 128 / period)) % 128, True)
        assert float(y[~expected].square().sum()) < 1e-3 * float(y.square().sum())


def test_undersampling_mask_acceleration_and_centre():
    seeds = torch.arange(400)
    width = 320
    for acceleration, fraction in ARTIFACTS["undersampling"].ladder:
        mask = kspace.undersampling_mask(seeds, width, acceleration, fraction)
        n_low = round(width * fraction)
        pad = (width - n_low + 1) // 2
        assert bool(mask[:, pad : pad + n_low].all())
        kept = mask.double().mean(dim=1)
        assert abs(float(kept.mean()) * acceleration - 1) < 0.05
        assert float(kept.max()) * acceleration < 1.5 + 1 / acceleration
    # equispaced masks (the other fastMRI kind) have regular gaps outside the centre, random ones do not
    for kind, expected in (("equispaced", 1.0), ("random", 0.0)):
        mask = kspace.undersampling_mask(seeds, width, 4, 0.08, kind=kind)
        gaps = [torch.diff(row.nonzero().flatten()) for row in mask[:, :140]]
        regular = [g.numel() > 2 and int(g.max() - g.min()) <= 1 for g in gaps]
        assert abs(np.mean(regular) - expected) < 0.05


def test_undersampling_zero_fills_exactly_the_masked_lines():
    x = validation_slices(2, 64)
    seeds = torch.tensor([1, 2])
    y = kspace.undersampling(x, (4, 0.08), seeds)
    mask = kspace.undersampling_mask(seeds, 64, 4, 0.08)
    k_y, k_x = fft2c(y), fft2c(x)
    for b in range(2):
        assert float(k_y[b][:, ~mask[b]].abs().max()) < 1e-5
        torch.testing.assert_close(k_y[b][:, mask[b]], k_x[b][:, mask[b]], atol=1e-5, rtol=1e-4)


def test_motion_is_not_a_rigidly_moved_copy(slices):
    x = slices[:4]
    clean = x.abs()
    y = corrupt(x, "motion", 5, torch.arange(4) + 100)

    def best_shift_nrmse(a, b):  # min over all circular integer shifts of b, by FFT correlation
        corr = torch.fft.ifft2(torch.fft.fft2(a) * torch.fft.fft2(b).conj()).real
        return torch.sqrt((a.square().sum() + b.square().sum() - 2 * corr.max()).clamp(min=0)) / a.norm()

    shifted = torch.roll(clean[0], (3, -5), (0, 1))
    assert float(best_shift_nrmse(shifted, clean[0])) < 1e-3  # the check finds a moved copy
    for b in range(4):
        assert float(best_shift_nrmse(y[b], clean[b])) > 0.05


def test_motion_ghosts_lie_along_phase_encoding():
    x = _blob()
    times = torch.tensor([[0.3]])
    y = kspace.segmented_acquisition(x, times, torch.tensor([[0.0]]), torch.tensor([[[0.0, 6.0]]])).abs()[0]
    rows_with_signal = (y.square().sum(dim=1) > 1e-3 * y.square().sum()).nonzero().flatten()
    assert int(rows_with_signal.min()) >= 58 and int(rows_with_signal.max()) <= 69  # a shift along columns stays in the rows
    assert float(y[60:68, 40:].square().sum()) > 1e-3 * float(y.square().sum())  # ghost energy spread along columns


def test_spikes_are_single_kspace_samples():
    x = validation_slices(1, 64)
    count, relative = ARTIFACTS["spike"].ladder[4]
    y = kspace.spike(x, (count, relative), torch.tensor([4]))
    diff = fft2c(y - x)[0].abs()
    peak = float(x.abs().sum() / 64)
    top = diff.flatten().topk(count + 1).values
    torch.testing.assert_close(top[:count], torch.full((count,), relative * peak), rtol=1e-3, atol=0)
    assert float(top[count]) < 1e-3 * relative * peak


def test_gibbs_keeps_everything_at_full_fraction_and_rings_at_edges():
    x = _blob()
    torch.testing.assert_close(kspace.truncate(x, 1.0), x, atol=1e-5, rtol=0)
    y = kspace.truncate(x, 0.3).abs()[0]
    profile = y[64]
    assert float(profile.max()) > 1.05  # Gibbs overshoot
    assert float(profile[40:60].max()) > 0.02  # ripples beside the edge


def test_contrast_keeps_phase_and_bias_field_is_smooth(slices):
    x = slices[:2]
    y = ARTIFACTS["contrast"].function(x, ARTIFACTS["contrast"].ladder[4], torch.tensor([1, 2]))
    inside = x.abs() > 0.05
    phase_error = torch.angle(y[inside] * x[inside].conj()).abs()
    assert float(phase_error.max()) < 1e-4
    z = ARTIFACTS["bias_field"].function(x, 0.6, torch.tensor([1, 2]))
    field = (z.abs()[inside] / x.abs()[inside])
    assert float(field.min()) > 0 and float(field.max()) < math.exp(0.6 * 9)


def test_bad_input_raises_clear_errors(slices):
    seeds = torch.arange(6)
    with pytest.raises(MrRobustError, match="noise.*motion"):
        corrupt(slices, "blur", 1, seeds)
    for severity in (-1, 6, 1.5, True):
        with pytest.raises(MrRobustError, match="severity"):
            corrupt(slices, "noise", severity, seeds)
    with pytest.raises(MrRobustError, match=r"\(B, H, W\)"):
        corrupt(slices[0], "noise", 1, seeds[:1])
    bad = slices.clone()
    bad[0, 1, 1] = float("nan")
    with pytest.raises(MrRobustError, match="non-finite"):
        corrupt(bad, "noise", 1, seeds)
    with pytest.raises(MrRobustError, match="seeds"):
        corrupt(slices, "noise", 1, seeds[:3])
    with pytest.raises(MrRobustError, match="suite"):
        corrupt(slices, "noise", 1, seeds, suite="imagenet")
    for severity in (None, float("nan"), 2.0, "3"):
        with pytest.raises(MrRobustError, match="severity"):
            corrupt(slices, "noise", severity, seeds)
    with pytest.raises(MrRobustError, match="unknown artifact"):
        corrupt(slices, ["noise"], 1, seeds)
    with pytest.raises(MrRobustError, match="B >= 1"):
        corrupt(slices[:0], "motion", 1, seeds[:0])
    for floats in (seeds.double() + 0.5, [0.5] * 6, np.zeros(6)):
        with pytest.raises(MrRobustError, match="integers"):
            corrupt(slices, "noise", 1, floats)
    assert torch.equal(corrupt(slices, "noise", 1, np.arange(6, dtype=np.int32)), corrupt(slices, "noise", 1, list(range(6))))


def test_random_streams_are_stable_and_uniform():
    seeds = torch.arange(2000)
    u = rnd.uniform(seeds, "x", (3,))
    assert abs(float(u.mean()) - 0.5) < 0.01 and float(u.min()) > 0 and float(u.max()) < 1
    assert not torch.equal(u, rnd.uniform(seeds, "y", (3,)))
    torch.testing.assert_close(rnd.uniform(seeds[7:8], "x", (3,)), u[7:8], rtol=0, atol=0)
    n = rnd.normal(seeds, "z", (50,))
    assert abs(float(n.mean())) < 0.01 and abs(float(n.std()) - 1) < 0.01


@pytest.mark.parametrize("suite,size", [("mrrobust", 32), ("mrrobust", 31), ("study", 32)])
def test_noise_magnitude_from_its_blocks_is_the_magnitude_of_the_noisy_image(suite, size):
    x = validation_slices(3, size, seed=5)
    seeds = torch.tensor([4, -9, 2**50])
    function = ARTIFACTS["noise"].function if suite == "mrrobust" else STUDY["noise"].function
    level = ARTIFACTS["noise"].ladder[2] if suite == "mrrobust" else 3
    for scale in (1.0, 1e-25, 1e25):  # squares underflow / overflow in float32: the hypot path
        fused = corrupt(x * scale, "noise", 3, seeds, suite=suite)
        expected = kspace.magnitude(function(x * scale, level, seeds))
        assert fused.dtype == torch.float32 and bool(torch.isfinite(fused).all())
        assert float(((fused - expected).abs() / expected).max()) < 3e-7  # within ~2 ulp


def test_the_noise_path_off_the_cpu_gives_the_cpu_noise():
    x = validation_slices(3, 24, seed=2)
    seeds = torch.tensor([1, 2**33, -5])
    sigma = torch.tensor([0.1, 0.2, 0.05])
    cpu = kspace.add_complex_noise(x, sigma, seeds, "noise")
    torch.testing.assert_close(kspace._add_complex_noise_torch(x, sigma, seeds, "noise"), cpu, rtol=2e-6, atol=2e-6)
    assert not torch.equal(cpu, x)
