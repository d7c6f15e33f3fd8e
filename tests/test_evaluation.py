"""evaluate: the RESULTS folder checked against direct forwards, scikit-learn and itself resumed.

Two tiny runs (batch and layer norm, 1 epoch) plus a copy of the batch run under another
folder name; one evaluation of the val split (every label has positives there) over two
artifacts at severities 1 and 5 is shared by most tests.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mrrobust.artifacts import corrupt
from mrrobust.data.annotations import LABELS
from mrrobust.data.store import SliceDataset, slice_seed
from mrrobust.errors import MrRobustError
from mrrobust.evaluation import evaluate, model_inputs, prediction_path
from mrrobust.models import load, positive_probability

ARTIFACTS = ("noise", "gibbs")
SEVERITIES = (1, 5)
SPLIT = "val"
SETTINGS = dict(artifacts=ARTIFACTS, severities=SEVERITIES, split=SPLIT, batch_size=16,
                bootstrap=50, progress=False)
CELLS = [("clean", 0)] + [(a, s) for a in ARTIFACTS for s in SEVERITIES]


@pytest.fixture(scope="module")
def runs(tiny_store, tmp_path_factory) -> dict[str, Path]:
    """batch-seed0, layer-seed0 and twin-seed0 (a byte copy of batch-seed0)."""
    from mrrobust.training import train

    root = tmp_path_factory.mktemp("eval_runs")
    for norm in ("batch", "layer"):
        train(tiny_store, root / f"{norm}-seed0", norm, width=8, groups=4, max_epochs=1,
              batch_size=32, workers=0, accelerator="cpu", quiet=True, lr=1e-3)
    shutil.copytree(root / "batch-seed0", root / "copies" / "twin-seed0")
    return {"batch": root / "batch-seed0", "twin": root / "copies" / "twin-seed0",
            "layer": root / "layer-seed0"}


@pytest.fixture(scope="module")
def results(runs, tiny_store, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eval") / "results"
    summary = evaluate([runs["batch"], runs["twin"], runs["layer"]], tiny_store, out, **SETTINGS)
    return out, summary


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def number(text: str) -> float:
    return math.nan if text == "" else float(text)


def predictions(out: Path, run: str, mode: str, artifact: str, severity: int) -> np.ndarray:
    return np.load(prediction_path(out, run, mode, artifact, severity))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_layout_counts_and_slices(results, tiny_store):
    out, summary = results
    # 2 batch-norm runs x (eval + adapt) + 1 layer-norm run x eval, 5 cells each
    assert summary == {"out": out, "cells": 25, "computed": 25, "reused": 0}
    for name in ("evaluation.json", "slices.csv", "results.csv", "comparisons.csv", "bn_shift.csv"):
        assert (out / name).is_file()
    dataset = SliceDataset(tiny_store, SPLIT)
    slices = read_csv(out / "slices.csv")
    assert list(slices[0]) == ["slice_id", "volume", "slice", *LABELS]
    assert [row["slice_id"] for row in slices] == dataset.slice_ids
    targets = np.array([[int(row[label]) for label in LABELS] for row in slices])
    np.testing.assert_array_equal(targets, dataset.targets)
    array = predictions(out, "layer-seed0", "eval", "noise", 5)
    assert array.dtype == np.float32 and array.shape == (len(dataset), 4)
    assert ((array >= 0) & (array <= 1)).all()


def test_inputs_and_predictions_are_those_of_training(results, runs, tiny_store):
    """Clean: the model fed SliceDataset's magnitudes as training feeds it; corrupted: fed
    corrupt() of the complex split with each slice's slice_seed(slice_id, 0)."""
    out, _ = results
    magnitude = torch.stack([image for image, _, _ in SliceDataset(tiny_store, SPLIT)])
    complex_set = SliceDataset(tiny_store, SPLIT, kind="complex")
    images = torch.stack([image for image, _, _ in complex_set])
    seeds = torch.tensor([slice_seed(i, 0) for i in complex_set.slice_ids])
    clean = model_inputs(images, seeds, "clean", 0, "mrrobust")
    # |x / scale| vs |x| / scale: equal to float32 rounding (one ulp)
    torch.testing.assert_close(clean, magnitude, rtol=3e-7, atol=0)
    noisy = corrupt(images, "noise", 5, seeds)[:, None]
    for name in ("batch", "layer"):
        model, _ = load(runs[name])
        with torch.inference_mode():
            direct_clean = positive_probability(model(magnitude)).numpy()
            direct_noisy = positive_probability(model(noisy)).numpy()
        run = runs[name].name
        np.testing.assert_allclose(predictions(out, run, "eval", "clean", 0), direct_clean,
                                   rtol=0, atol=1e-6)
        np.testing.assert_allclose(predictions(out, run, "eval", "noise", 5), direct_noisy,
                                   rtol=0, atol=1e-6)


def test_every_run_sees_the_same_inputs(results):
    """A copy of a RUN under another name gets bit-identical predictions and BN statistics in
    every cell, eval and adapt: the artifacts do not depend on the model or its order."""
    out, _ = results
    for mode in ("eval", "adapt"):
        for artifact, severity in CELLS:
            np.testing.assert_array_equal(predictions(out, "batch-seed0", mode, artifact, severity),
                                          predictions(out, "twin-seed0", mode, artifact, severity))
    shifts = read_csv(out / "bn_shift.csv")
    strip = [{k: v for k, v in row.items() if k != "run"} for row in shifts]
    assert [s for s, row in zip(strip, shifts) if row["run"] == "batch-seed0"] == \
           [s for s, row in zip(strip, shifts) if row["run"] == "twin-seed0"]


def test_results_agree_with_scikit_learn(results, runs):
    out, _ = results
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == ["run", "norm", "seed", "bn_mode", "artifact", "severity", "label",
                             "metric", "value", "ci_low", "ci_high"]
    targets = np.array([[int(r[label]) for label in LABELS] for r in read_csv(out / "slices.csv")])
    thresholds = json.loads((runs["layer"] / "operating_points.json").read_text())["labels"]
    checked = 0
    for run, mode, artifact, severity in [("layer-seed0", "eval", "noise", 5),
                                          ("batch-seed0", "adapt", "gibbs", 1),
                                          ("batch-seed0", "eval", "clean", 0)]:
        scores = predictions(out, run, mode, artifact, severity)
        cell = {(r["label"], r["metric"]): r for r in rows
                if (r["run"], r["bn_mode"], r["artifact"], r["severity"])
                == (run, mode, artifact, str(severity))}
        assert len(cell) == 5 * 4  # 4 labels + mean, 4 metrics
        aucs = []
        for k, label in enumerate(LABELS):
            row = cell[(label, "auc")]
            assert row["norm"] == run.split("-")[0] and row["seed"] == "0"
            if 0 < targets[:, k].sum() < len(targets):
                expected = roc_auc_score(targets[:, k], scores[:, k])
                assert number(row["value"]) == pytest.approx(expected, abs=1e-12)
                assert number(row["ci_low"]) <= number(row["ci_high"])
                aucs.append(expected)
                checked += 1
            else:
                assert row["value"] == ""
        assert number(cell[("mean", "auc")]["value"]) == pytest.approx(np.mean(aucs), abs=1e-12)
        if run == "layer-seed0":  # thresholds: that RUN's operating points
            for k, label in enumerate(LABELS):
                t = thresholds[label]["threshold"]
                positive = targets[:, k] == 1
                expected = math.nan if t is None or not positive.any() else \
                    float(np.mean(scores[positive, k] >= t))
                value = number(cell[(label, "sensitivity")]["value"])
                assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected)
    assert checked >= 6


def test_comparisons_pair_same_seed_runs_and_adapt_with_eval(results):
    out, _ = results
    rows = read_csv(out / "comparisons.csv")
    assert list(rows[0]) == ["run_a", "run_b", "bn_mode_a", "bn_mode_b", "artifact", "severity",
                             "label", "metric", "difference", "ci_low", "ci_high", "p_value"]
    pairs = {(r["run_a"], r["run_b"], r["bn_mode_a"], r["bn_mode_b"]) for r in rows}
    assert pairs == {("batch-seed0", "twin-seed0", "eval", "eval"),
                     ("batch-seed0", "layer-seed0", "eval", "eval"),
                     ("twin-seed0", "layer-seed0", "eval", "eval"),
                     ("batch-seed0", "batch-seed0", "eval", "adapt"),
                     ("twin-seed0", "twin-seed0", "eval", "adapt")}
    assert len(rows) == len(pairs) * len(CELLS) * 5
    results_auc = {(r["run"], r["bn_mode"], r["artifact"], r["severity"], r["label"]): number(r["value"])
                   for r in read_csv(out / "results.csv") if r["metric"] == "auc"}
    for r in rows:
        cell = (r["artifact"], r["severity"], r["label"])
        a = results_auc[(r["run_a"], r["bn_mode_a"], *cell)]
        b = results_auc[(r["run_b"], r["bn_mode_b"], *cell)]
        if r["run_a"] == "batch-seed0" and r["run_b"] == "twin-seed0":
            assert number(r["difference"]) == 0 and number(r["p_value"]) == 1
        elif not math.isnan(b - a):
            assert number(r["difference"]) == pytest.approx(b - a, abs=1e-12)
            assert 0 < number(r["p_value"]) <= 1


def test_adapt_only_for_batch_norm_runs(results):
    out, _ = results
    assert not (out / "predictions" / "layer-seed0" / "adapt").exists()
    modes = {(r["run"], r["bn_mode"]) for r in read_csv(out / "results.csv")}
    assert modes == {("batch-seed0", "eval"), ("batch-seed0", "adapt"), ("twin-seed0", "eval"),
                     ("twin-seed0", "adapt"), ("layer-seed0", "eval")}
    # AdaBN changed the predictions
    assert not np.array_equal(predictions(out, "batch-seed0", "eval", "noise", 5),
                              predictions(out, "batch-seed0", "adapt", "noise", 5))


def test_bn_shift_rows_for_batch_norm_runs_grow_under_noise(results, runs):
    out, _ = results
    rows = read_csv(out / "bn_shift.csv")
    assert list(rows[0]) == ["run", "artifact", "severity", "layer", "depth", "channels",
                             "mean_shift", "var_log_ratio"]
    assert {r["run"] for r in rows} == {"batch-seed0", "twin-seed0"}
    model, _ = load(runs["batch"])
    layers = [name for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    mine = [r for r in rows if r["run"] == "batch-seed0"]
    assert len(mine) == len(layers) * len(CELLS)
    assert [r["layer"] for r in mine if r["artifact"] == "clean"] == layers

    def shifts(artifact, severity):
        return np.array([float(r["mean_shift"]) for r in mine
                         if (r["artifact"], r["severity"]) == (artifact, str(severity))])

    clean, noisy = shifts("clean", 0), shifts("noise", 5)
    assert noisy.mean() > clean.mean() and noisy[0] > clean[0]


def test_resume_recomputes_the_missing_cells_to_the_same_bytes(results, runs, tiny_store, tmp_path):
    original, _ = results
    out = tmp_path / "results"
    shutil.copytree(original, out)
    before = snapshot(out)
    removed = [prediction_path(out, "batch-seed0", "eval", "noise", 5),
               prediction_path(out, "batch-seed0", "adapt", "clean", 0),
               prediction_path(out, "layer-seed0", "eval", "gibbs", 1)]
    for path in removed:
        path.unlink()
    # a cell whose BN record is gone is recomputed too; a killed writer's temp file is swept
    prediction_path(out, "twin-seed0", "eval", "gibbs", 5).with_suffix(".bn.json").unlink()
    leftover = prediction_path(out, "twin-seed0", "eval", "gibbs", 5).with_name(".gibbs-5.npy.1.tmp")
    leftover.write_bytes(b"half")
    (out / "results.csv").unlink()
    (out / "comparisons.csv").write_text("garbage")
    summary = evaluate([runs["batch"], runs["twin"], runs["layer"]], tiny_store, out, **SETTINGS)
    assert summary["computed"] == 4 and summary["reused"] == 21
    assert snapshot(out) == before


def test_other_settings_are_refused(results, runs, tiny_store, tmp_path):
    original, _ = results
    out = tmp_path / "results"
    shutil.copytree(original, out)
    before = snapshot(out)
    given = [runs["batch"], runs["twin"], runs["layer"]]
    for change in (dict(severities=(1, 3)), dict(bootstrap=20), dict(seed=1)):
        with pytest.raises(MrRobustError, match="other settings") as err:
            evaluate(given, tiny_store, out, **{**SETTINGS, **change})
        assert "\n" not in str(err.value)
    with pytest.raises(MrRobustError, match="other settings"):
        evaluate(given[::2], tiny_store, out, **SETTINGS)
    assert snapshot(out) == before


def test_without_bootstrap_no_intervals(runs, tiny_store, tmp_path):
    out = tmp_path / "results"
    summary = evaluate([runs["batch"], runs["layer"]], tiny_store, out, artifacts=["noise"],
                       severities=[1], bn_modes=["eval"], bootstrap=0, progress=False)
    assert summary["cells"] == 4 and not (out / "predictions" / "batch-seed0" / "adapt").exists()
    rows = read_csv(out / "results.csv")
    slice_ids = [r["slice_id"] for r in read_csv(out / "slices.csv")]
    assert slice_ids == SliceDataset(tiny_store, "test").slice_ids  # the default split
    assert all(r["ci_low"] == r["ci_high"] == "" for r in rows)
    auc = {(r["run"], r["artifact"], r["label"]): number(r["value"]) for r in rows
           if r["metric"] == "auc"}
    comparisons = read_csv(out / "comparisons.csv")
    assert len(comparisons) == 2 * 5
    for r in comparisons:
        assert r["ci_low"] == r["ci_high"] == r["p_value"] == ""
        expected = auc[("layer-seed0", r["artifact"], r["label"])] - \
            auc[("batch-seed0", r["artifact"], r["label"])]
        assert number(r["difference"]) == pytest.approx(expected, nan_ok=True)


def test_bad_input_is_one_line_and_writes_nothing(runs, tiny_store, tmp_path):
    unfinished = tmp_path / "runs" / "half-seed0"
    shutil.copytree(runs["layer"], unfinished)
    (unfinished / "operating_points.json").unlink()
    same_name = tmp_path / "other" / "batch-seed0"
    shutil.copytree(runs["batch"], same_name)
    no_test = tmp_path / "no-test-store"
    no_test.mkdir()
    shutil.copy(tiny_store / "manifest.json", no_test)
    lines = (tiny_store / "slices.csv").read_text().splitlines(keepends=True)
    (no_test / "slices.csv").write_text("".join(l for l in lines if ",test," not in l))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    out = tmp_path / "results"
    cases = [
        (dict(runs=[unfinished]), "half-seed0 lacks operating_points.json"),
        (dict(runs=[runs["batch"], same_name]), "must be unique"),
        (dict(runs=[tmp_path / "nowhere"]), "does not exist"),
        (dict(artifacts=["nosie"]), "unknown artifact 'nosie'"),
        (dict(severities=[0, 1]), "severities"),
        (dict(bn_modes=["train"]), "bn_modes"),
        (dict(bn_modes=["adapt"]), "must be eval, or eval and adapt"),
        (dict(store=no_test), "no 'test' slices"),
        (dict(store=tmp_path / "nowhere"), "not a finished STORE"),
        (dict(out=busy), "holds no evaluation.json"),
    ]
    for change, says in cases:
        arguments = {"runs": [runs["layer"]], "store": tiny_store, "out": out, **change}
        with pytest.raises(MrRobustError, match=says) as err:
            evaluate(arguments.pop("runs"), arguments.pop("store"), arguments.pop("out"),
                     progress=False, **arguments)
        assert "\n" not in str(err.value)
        assert not out.exists()
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


def test_non_finite_predictions_are_refused_and_redone_on_resume(runs, tiny_store, tmp_path, monkeypatch):
    from mrrobust import evaluation

    out = tmp_path / "results"
    real = evaluation._predict
    monkeypatch.setattr(evaluation, "_predict", lambda *a, **k: real(*a, **k) * np.nan)
    with pytest.raises(MrRobustError, match="NaN or inf") as err:
        evaluate([runs["layer"]], tiny_store, out, artifacts=["noise"], severities=[1], bn_modes=["eval"],
                 bootstrap=0, progress=False)
    assert "\n" not in str(err.value)
    assert not list((out / "predictions").rglob("*.npy"))  # nothing counted as finished
    monkeypatch.setattr(evaluation, "_predict", real)
    summary = evaluate([runs["layer"]], tiny_store, out, artifacts=["noise"], severities=[1], bn_modes=["eval"],
                       bootstrap=0, progress=False)
    assert summary["computed"] == 2 and summary["reused"] == 0


def test_benchmark_refuses_bad_evaluate_settings_before_training(tiny_store, tmp_path):
    from mrrobust.benchmark import benchmark

    with pytest.raises(MrRobustError, match="severities"):
        benchmark(tiny_store, tmp_path / "bench", ("batch",), (0,), evaluate_options={"severities": [7]},
                  progress=False)
    assert not (tmp_path / "bench").exists()
