"""The study suite against torchio 1.2.1 (the `bench` extra) on real MR slices.

Each torchio transform is run deterministically with the parameters our seed drew
(torchio's `Ghosting`, `Spike`, `BiasField`, `Motion`), on the `(1, H, W, 1)` tensor the
release built, and must give our output; torchio's random draws (fixed torch seeds)
must follow the distributions ours follow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrrobust.artifacts import corrupt, study

tio = pytest.importorskip("torchio")
pytest.importorskip("pydicom")
pytest.importorskip("nibabel")

from mrrobust.artifacts.realmr import real_mr_slices  # noqa: E402

P = 3


@pytest.fixture(scope="module")
def real():
    return real_mr_slices(64)[0][:8]


def _torchio(transform, m: torch.Tensor) -> torch.Tensor:
    """Run a torchio transform on one `(H, W)` magnitude as the release did: tensor (1, H, W, 1)."""
    subject = tio.Subject(image=tio.ScalarImage(tensor=m[None, :, :, None].float()))
    return transform(subject)["image"].data[0, :, :, 0]


def _close(ours, theirs, m, tolerance=2e-4):
    assert float((ours - theirs).abs().max()) <= tolerance * float(m.abs().max()), float((ours - theirs).abs().max())


def test_ghosting_matches_torchio(real):
    seeds = torch.arange(24) + 1000
    x = real.repeat(3, 1, 1)
    count, axis, strength = study.ghosting_draws(seeds, P)
    ours = corrupt(x, "ghosting", P, seeds, suite="study")
    assert set(axis.tolist()) == {0, 1}
    for b in range(24):
        m = x[b].abs()
        transform = tio.Ghosting(num_ghosts=int(count[b]), axis=int(axis[b]), intensity=float(strength[b]), restore=None)
        _close(ours[b], _torchio(transform, m), m)
    assert bool((ours < -1e-3).any())  # the real part is kept, not the magnitude


def test_spike_matches_torchio(real):
    seeds = torch.arange(8) + 7
    h, w = real.shape[-2:]
    rows, cols, r = study.spike_draws(seeds, P, (h, w))
    ours = corrupt(real, "spike", P, seeds, suite="study")
    for b in range(8):
        m = real[b].abs()
        position = np.array([[(float(rows[b, 0]) + 0.5) / h, (float(cols[b, 0]) + 0.5) / w, 0.0]])
        _close(ours[b], _torchio(tio.Spike(spikes_positions=position, intensity=float(r[b, 0])), m), m, 1e-3)


def test_bias_field_matches_torchio(real):
    seeds = torch.arange(8) + 3
    ours = corrupt(real, "bias_field", 1, seeds, suite="study")
    from mrrobust.artifacts import random as rnd

    c = 1 * (2 * rnd.uniform(seeds, "study-bias", (4, 4)) - 1)
    for b in range(8):
        coefficients = [float(c[b, i, j]) if k == 0 else 0.0
                        for i in range(4) for j in range(4 - i) for k in range(4 - i - j)]
        m = real[b].abs()
        theirs = _torchio(tio.BiasField(coefficients=coefficients, order=3), m)
        assert float(((ours[b] - theirs).abs() / theirs.abs().clamp(min=1e-3)).max()) < 1e-4


def test_motion_matches_torchio_rigid_resampling(real):
    seeds = torch.arange(8) + 11
    h, w = real.shape[-2:]
    degrees, translation = study.motion_draws(seeds, P, (h, w))
    ours = corrupt(real, "motion", P, seeds, suite="study")
    for b in range(8):
        m = real[b].abs()
        second = [0.0, 0.0, float(degrees[b])]
        shift = [float(translation[b, 0]), float(translation[b, 1]), 0.0]
        transform = tio.Motion(degrees=np.array([[0.0, 0.0, 1.0], second]), translation=np.array([[0.5, 0.5, 0.0], shift]),
                               times=np.array([1 / 3, 2 / 3]), image_interpolation="linear")
        _close(ours[b], _torchio(transform, m), m, 2e-3)


def test_torchio_draws_follow_our_distributions(real):
    """RandomGhosting / RandomSpike / RandomMotion with fixed torch seeds: same ranges and axis mix as ours."""
    m = real[0].abs()
    no_change = 0
    for seed in range(60):
        torch.manual_seed(seed)
        no_change += bool(torch.allclose(_torchio(tio.RandomGhosting(num_ghosts=7, intensity=P), m), m, atol=1e-4))
    ours_count, ours_axis, _ = study.ghosting_draws(torch.arange(4000), P)
    ours_unchanged = float((ours_count == 0).double().mean())
    assert abs(ours_unchanged - 1 / 8) < 0.02 and abs(float((ours_axis == 0).double().mean()) - 0.5) < 0.03
    assert abs(no_change / 60 - ours_unchanged) < 0.1  # torchio: n = 0 leaves the slice as it is
    seeds = torch.arange(2000)
    degrees, translation = study.motion_draws(seeds, P, (320, 320))
    assert float(degrees.abs().max()) <= 5 * P and float(degrees.abs().max()) > 0.95 * 5 * P
    assert float(translation.abs().max()) <= 2 * P and float(translation.abs().max()) > 0.95 * 2 * P
