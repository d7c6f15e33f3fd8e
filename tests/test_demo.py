"""The demo runs the whole pipeline end to end, small, and resumes without redoing work."""

import json

from mrrobust.benchmark import DEMO_NORMS, demo


def test_demo_end_to_end_and_resume(tmp_path):
    out = tmp_path / "demo"
    kwargs = dict(volumes=12, slices=6, crop=32, width=8, epochs=1, progress=False)
    summary = demo(out, **kwargs)
    assert set(summary["runs"]) == set(DEMO_NORMS)
    for norm, best in summary["runs"].items():
        assert best["epoch"] == "0" and 0.0 <= float(best["val_auc_mean"]) <= 1.0
        assert (out / "runs" / f"{norm}-seed0" / "model.safetensors").is_file()
    assert (out / "gallery.png").stat().st_size > 10_000
    results = out / "results" / "results.csv"
    assert {"noise", "motion", "clean"} <= {line.split(",")[4] for line in results.read_text().splitlines()[1:]}
    report = (out / "report" / "report.md").read_text()
    assert "Corruption errors" in report or "mCE" in report
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))

    stamps = {p: p.stat().st_mtime_ns for p in [*out.rglob("*.safetensors"), *out.rglob("*.npy")]}
    demo(out, **kwargs)  # every step finished: nothing is trained or predicted again
    assert {p: p.stat().st_mtime_ns for p in [*out.rglob("*.safetensors"), *out.rglob("*.npy")]} == stamps


def test_demo_refuses_other_settings_and_foreign_folders(tmp_path):
    import pytest

    from mrrobust.benchmark import _claim
    from mrrobust.errors import MrRobustError

    out = tmp_path / "demo"
    _claim(out, {"crop": 32, "seed": 0})
    _claim(out, {"crop": 32, "seed": 0})  # the same settings: a resume
    with pytest.raises(MrRobustError, match="crop 32 -> 64"):
        _claim(out, {"crop": 64, "seed": 0})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(MrRobustError, match="not a demo folder"):
        _claim(foreign, {"crop": 32})
