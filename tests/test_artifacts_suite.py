"""Ladders, quality metrics, the augmentation hook, the gallery and the commands."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mrrobust.artifacts import ARTIFACTS, corrupt
from mrrobust.artifacts.augment import RandomArtifacts, parse_spec
from mrrobust.artifacts.gallery import gallery
from mrrobust.artifacts.quality import validation_slices
from mrrobust.artifacts.quality import ladder_table, nrmse, ssim
from mrrobust.cli import app
from mrrobust.data import fastmri
from mrrobust.errors import MrRobustError


def test_every_ladder_is_monotone():
    rows = ladder_table(size=64)
    assert [r["name"] for r in rows] == list(ARTIFACTS)
    for row in rows:
        assert row["monotone"], (row["name"], row["nrmse"], row["ssim"])
        assert row["nrmse"][0] > 0.003 and row["ssim"][-1] < 0.97, row["name"]  # each ladder really degrades


def test_ssim_and_nrmse_match_independent_references():
    from skimage.metrics import normalized_root_mse, structural_similarity

    clean = validation_slices(3, 64).abs()
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    ours = ssim(clean, noisy)
    for b in range(3):
        a, c = clean[b].double().numpy(), noisy[b].double().numpy()
        ref = structural_similarity(a, c, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=a.max())
        assert abs(float(ours[b]) - ref) < 1e-5
        assert abs(float(nrmse(clean, noisy)[b]) - normalized_root_mse(a, c, normalization="euclidean")) < 1e-5


def test_random_artifacts_hook():
    x = validation_slices(8, 48)
    seeds = torch.arange(8) * 31
    aug = RandomArtifacts(["noise:3", "motion"])
    entry, severity = aug.choices(torch.arange(4000))
    assert set(entry.tolist()) == {0, 1}
    assert int(severity[entry == 0].max()) == 3 and int(severity[entry == 1].max()) == 5
    out = aug(x, seeds)
    assert out.shape == (8, 48, 48) and out.dtype == torch.float32
    assert torch.equal(aug(x[[5, 2]], seeds[[5, 2]]), out[[5, 2]])
    import mrrobust.artifacts

    assert mrrobust.artifacts.RandomArtifacts is RandomArtifacts  # the documented import path
    assert torch.equal(RandomArtifacts("noise:0")(x, seeds), x.abs())
    # a per-volume noise level reaches the noise entries: same as corrupt with that reference
    noise_only = RandomArtifacts("noise")
    _, severity = noise_only.choices(seeds)
    level = torch.full((8,), 0.3)
    with_level = noise_only(x, seeds, reference=level)
    for b in range(8):
        expected = corrupt(x[b : b + 1], "noise", int(severity[b]), seeds[b : b + 1], reference=level[b : b + 1])
        assert torch.equal(with_level[b : b + 1], expected)
    assert parse_spec("noise:3, motion") == [("noise", 3), ("motion", 5)]
    for bad in ("blur", "noise:9", "noise:x", ""):
        with pytest.raises(MrRobustError):
            parse_spec(bad)


def test_gallery_writes_an_image(tmp_path):
    out = gallery(validation_slices(1, 48)[0], tmp_path / "g.png", "synth", names=["noise", "motion"])
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[0] > 100
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]


def test_commands_report_bad_input_in_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["gallery", "--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "g.png").exists()
    result = runner.invoke(app, ["artifacts", "--size", "8"])
    assert result.exit_code == 2


def _fastmri_file(path):
    import h5py

    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(validation_slices(3, 64).numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    with h5py.File(path, "w") as f:
        f["kspace"] = kspace.astype(np.complex64)
    return path


def test_gallery_user_errors_are_one_line(tmp_path):
    data = _fastmri_file(tmp_path / "file1.h5")
    (tmp_path / "a_file").write_text("x")
    for extra in (["--suite", "foo", "--out", str(tmp_path / "g.png")],  # unknown suite
                  ["--out", str(tmp_path / "a_file" / "g.png")],  # parent is a file: OSError
                  ["--out", str(tmp_path)]):  # an existing folder: OSError on replace
        result = CliRunner().invoke(app, ["gallery", "--data", str(data), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert result.output.strip().count("\n") == 0 and "error:" in result.output, result.output
        assert "Traceback" not in result.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "file1.h5"]  # nothing left behind
    with pytest.raises(MrRobustError, match="suite"):
        gallery(validation_slices(1, 32)[0], tmp_path / "g.png", suite="foo")


def test_gallery_from_a_fastmri_file(tmp_path):
    _fastmri_file(tmp_path / "file1.h5")
    volume = fastmri.read_volume(tmp_path / "file1.h5")
    assert volume.kspace.shape == (3, 64, 64)
    result = CliRunner().invoke(app, ["gallery", "--data", str(tmp_path / "file1.h5"), "--slice", "1", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g.png").stat().st_size > 1000
