"""evaluate: the RESULTS folder checked against direct forwards, scikit-learn and itself resumed.

Two tiny runs (batch and layer norm, 1 epoch) plus a copy of the batch run under another
folder name (so the batch arm holds two runs); one evaluation of the val split (every label
has positives there) over two artifacts at severities 1 and 5, every bn mode, is shared by
most tests.
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
def runs(tiny_runs, tmp_path_factory) -> dict[str, Path]:
    """batch-seed0, layer-seed0 (conftest's `tiny_runs`) and twin-seed0 (a byte copy of batch-seed0)."""
    twin = tmp_path_factory.mktemp("eval_runs") / "copies" / "twin-seed0"
    shutil.copytree(tiny_runs["batch"], twin)
    return {"batch": tiny_runs["batch"], "twin": twin, "layer": tiny_runs["layer"]}


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
    """Every file's bytes; evaluation.json without its environment (wall time, finish time)."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
             if p.is_file()}
    if "evaluation.json" in files:
        record = json.loads(files["evaluation.json"])
        record.pop("environment", None)
        files["evaluation.json"] = json.dumps(record, sort_keys=True).encode()
    return files


MODES = ("eval", "adapt", "prior", "tent")


def test_layout_counts_and_slices(results, tiny_store):
    out, summary = results
    # 2 batch-norm runs x (eval, adapt, prior, tent) + 1 layer-norm run x eval, 5 cells each
    assert summary == {"out": out, "cells": 45, "computed": 45, "reused": 0,
                       "arms": {"batch": ["batch-seed0", "twin-seed0"], "layer": ["layer-seed0"]}}
    for name in ("evaluation.json", "slices.csv", "results.csv", "thresholds.csv", "arms.csv",
                 "arm_comparisons.csv", "bn_shift.csv"):
        assert (out / name).is_file()
    assert not (out / "comparisons.csv").exists()
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
    # noise: one sigma per scan, from the volume's signal level over all its slices
    from mrrobust.artifacts.kspace import volume_level

    volumes = [i.rsplit(":", 1)[0] for i in complex_set.slice_ids]
    level = {v: volume_level(images[[k for k, w in enumerate(volumes) if w == v]]) for v in set(volumes)}
    levels = torch.tensor([level[v] for v in volumes], dtype=torch.float64)
    noisy = corrupt(images, "noise", 5, seeds, reference=levels)[:, None]
    assert not torch.equal(noisy, corrupt(images, "noise", 5, seeds)[:, None])  # per-slice sigma differs
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
    for mode in MODES:
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


def test_adaptations_only_for_batch_norm_runs(results):
    out, _ = results
    for mode in MODES[1:]:
        assert not (out / "predictions" / "layer-seed0" / mode).exists()
    modes = {(r["run"], r["bn_mode"]) for r in read_csv(out / "results.csv")}
    assert modes == {(run, mode) for run in ("batch-seed0", "twin-seed0") for mode in MODES} | \
        {("layer-seed0", "eval")}
    # every adaptation changed the predictions, and each differently
    noisy = {mode: predictions(out, "batch-seed0", mode, "noise", 5) for mode in MODES}
    for a in MODES:
        for b in MODES:
            assert a == b or not np.array_equal(noisy[a], noisy[b])
    record = json.loads((out / "evaluation.json").read_text())
    assert {r["name"]: r["bn_modes"] for r in record["runs"]} == {
        "batch-seed0": list(MODES), "twin-seed0": list(MODES), "layer-seed0": ["eval"]}


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
    (out / "arm_comparisons.csv").write_text("garbage")
    summary = evaluate([runs["batch"], runs["twin"], runs["layer"]], tiny_store, out, **SETTINGS)
    assert summary["computed"] == 4 and summary["reused"] == 41
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


def test_without_bootstrap_the_seeds_alone_are_resampled(runs, tiny_store, tmp_path):
    """--bootstrap 0: no per-run intervals; an arm of two runs still gets replicates (its seeds),
    an arm of one run gets none."""
    out = tmp_path / "results"
    summary = evaluate([runs["batch"], runs["twin"], runs["layer"]], tiny_store, out,
                       artifacts=["noise"], severities=[1], bn_modes=["eval"], bootstrap=0,
                       progress=False)
    assert summary["cells"] == 6 and not (out / "predictions" / "batch-seed0" / "adapt").exists()
    rows = read_csv(out / "results.csv")
    slice_ids = [r["slice_id"] for r in read_csv(out / "slices.csv")]
    assert slice_ids == SliceDataset(tiny_store, "test").slice_ids  # the default split
    assert all(r["ci_low"] == r["ci_high"] == "" for r in rows)
    arms = read_csv(out / "arms.csv")
    assert all(r["ci_low"] == r["ci_high"] == "" for r in arms if r["arm"] == "layer")
    # two identical runs: resampling them changes nothing, the interval is the point
    for r in arms:
        if r["arm"] == "batch" and r["value"] != "":
            assert number(r["ci_low"]) == pytest.approx(number(r["value"]))
    statistics = json.loads((out / "evaluation.json").read_text())["statistics"]
    assert statistics["volumes_resampled"] is False and statistics["seeds_resampled"] is True


def test_bad_input_is_one_line_and_writes_nothing(runs, tiny_store, synth_root, tmp_path):
    unfinished = tmp_path / "runs" / "half-seed0"
    shutil.copytree(runs["layer"], unfinished)
    (unfinished / "operating_points.json").unlink()
    same_name = tmp_path / "other" / "batch-seed0"
    shutil.copytree(runs["batch"], same_name)
    from mrrobust.data.prepare import prepare

    no_test = tmp_path / "no-test-store"  # a whole STORE (its checksums hold) without a test split
    prepare(synth_root / "knee", no_test, annotations=synth_root / "annotations", crop=64, seed=0,
            fractions=(0.8, 0.2, 0.0), progress=False)
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
        (dict(bn_modes=["train"]), "unknown bn mode 'train'"),
        (dict(bn_modes=["adapt"]), "must include eval"),
        (dict(threshold_from="test"), "unknown --threshold-from 'test'"),
        (dict(bn_prior=-1), "--bn-prior"),
        (dict(bootstrap=0), "--bootstrap 0 with arms of one run each"),
        (dict(runs=[], arms={"b": [runs["batch"], runs["batch"]]}), "twice"),
        (dict(runs=[], arms={"b": [runs["batch"]], "c": [runs["batch"]]}), "and so does arm 'b'"),
        (dict(runs=[], arms={"b": [tmp_path / "gone-seed0"]}), "gone-seed0, which does not exist"),
        (dict(runs=[runs["layer"]], arms={"b": [runs["batch"]]}), "not among the RUN folders given"),
        (dict(runs=[runs["layer"], runs["batch"]], arms={"b": [runs["batch"]]}), "is in no --arm"),
        (dict(reference_arm="group"), "--reference-arm 'group' is not an arm"),
        (dict(store=no_test), "no 'test' slices"),
        (dict(store=tmp_path / "nowhere"), "not a finished STORE"),
        (dict(out=busy), "holds no evaluation.json"),
        (dict(compile="yes"), "compile 'yes' must be True or False"),
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
    real = evaluation._probabilities
    monkeypatch.setattr(evaluation, "_probabilities", lambda *a, **k: real(*a, **k) * np.nan)
    with pytest.raises(MrRobustError, match="NaN or inf") as err:
        evaluate([runs["layer"]], tiny_store, out, artifacts=["noise"], severities=[1], bn_modes=["eval"],
                 bootstrap=10, progress=False)
    assert "\n" not in str(err.value)
    assert not list((out / "predictions").rglob("*.npy"))  # nothing counted as finished
    monkeypatch.setattr(evaluation, "_probabilities", real)
    summary = evaluate([runs["layer"]], tiny_store, out, artifacts=["noise"], severities=[1], bn_modes=["eval"],
                       bootstrap=10, progress=False)
    assert summary["computed"] == 2 and summary["reused"] == 0


def test_benchmark_refuses_bad_evaluate_settings_before_training(tiny_store, tmp_path):
    from mrrobust.benchmark import benchmark

    with pytest.raises(MrRobustError, match="severities"):
        benchmark(tiny_store, tmp_path / "bench", ("batch",), (0,), evaluate_options={"severities": [7]},
                  progress=False)
    assert not (tmp_path / "bench").exists()


def _table(out: Path, name: str) -> list[dict]:
    return read_csv(out / name)


def test_arms_group_runs_by_configuration_and_single_run_arms_equal_their_run(results):
    """batch-seed0 and its byte copy form the arm `batch`; `layer` is one run. A one-run arm's
    value and interval are the run's (the same volume draws); the two-run arm's value is the mean
    of its (identical) runs."""
    out, _ = results
    record = json.loads((out / "evaluation.json").read_text())
    arms = {arm["name"]: arm for arm in record["arms"]}
    assert arms["batch"]["runs"] == ["batch-seed0", "twin-seed0"]
    assert arms["batch"]["training_variance"] == "measured" and arms["batch"]["seeds"] == [0, 0]
    assert arms["layer"]["training_variance"] == "unmeasured"
    assert record["reference_arm"] == "batch"
    runs = {(r["run"], r["bn_mode"], r["artifact"], r["severity"], r["label"], r["metric"]): r
            for r in read_csv(out / "results.csv")}
    rows = _table(out, "arms.csv")
    assert list(rows[0]) == ["arm", "bn_mode", "artifact", "severity", "label", "metric", "value",
                             "ci_low", "ci_high", "runs"]
    checked = 0
    for r in rows:
        if r["severity"] == "all" or r["metric"] not in ("auc", "sensitivity", "specificity", "balanced_accuracy"):
            continue
        run = "layer-seed0" if r["arm"] == "layer" else "batch-seed0"
        expected = runs[(run, r["bn_mode"], r["artifact"], r["severity"], r["label"], r["metric"])]
        assert number(r["value"]) == pytest.approx(number(expected["value"]), abs=1e-12, nan_ok=True)
        if r["arm"] == "layer":
            assert r["runs"] == "1"
            for bound in ("ci_low", "ci_high"):
                assert number(r[bound]) == pytest.approx(number(expected[bound]), abs=1e-12, nan_ok=True)
        checked += 1
    assert checked > 100


def test_arm_rows_hold_every_metric_and_the_aggregates_follow_from_the_cells(results):
    out, _ = results
    rows = _table(out, "arms.csv")
    value = {(r["arm"], r["bn_mode"], r["artifact"], r["severity"], r["label"], r["metric"]):
             number(r["value"]) for r in rows}
    metrics = {r["metric"] for r in rows}
    assert metrics == {"auc", "sensitivity", "specificity", "balanced_accuracy", "ece", "retained",
                       "ce", "relative_ce", "degradation", "mce", "relative_mce"}
    for arm, mode in [("batch", "eval"), ("batch", "tent"), ("layer", "eval")]:
        cells = [value[(arm, mode, a, str(s), "mean", "auc")] for a in ARTIFACTS for s in SEVERITIES]
        assert value[(arm, mode, "all", "all", "mean", "auc")] == pytest.approx(np.mean(cells))
        for a in ARTIFACTS:
            ladder = [value[(arm, mode, a, str(s), "mean", "auc")] for s in SEVERITIES]
            reference = [value[("batch", "eval", a, str(s), "mean", "auc")] for s in SEVERITIES]
            assert value[(arm, mode, a, "all", "mean", "ce")] == pytest.approx(
                sum(1 - x for x in ladder) / sum(1 - x for x in reference))
            clean = value[(arm, mode, "clean", "0", "mean", "auc")]
            retained = value[(arm, mode, a, "1", "mean", "retained")]
            assert math.isnan(retained) or retained == pytest.approx((ladder[0] - 0.5) / (clean - 0.5))
        assert value[(arm, mode, "all", "all", "mean", "mce")] == pytest.approx(
            np.mean([value[(arm, mode, a, "all", "mean", "ce")] for a in ARTIFACTS]))
    assert ("layer", "adapt", "clean", "0", "mean", "auc") not in value  # n/a without batch norm


def test_arm_comparisons_primary_endpoint_adjustments_and_adaptation_gains(results):
    out, _ = results
    rows = _table(out, "arm_comparisons.csv")
    assert list(rows[0]) == ["arm_a", "arm_b", "bn_mode_a", "bn_mode_b", "artifact", "severity",
                             "label", "metric", "difference", "ci_low", "ci_high", "p_value",
                             "p_holm", "q_bh"]
    value = {(r["arm"], r["bn_mode"], r["artifact"], r["severity"], r["label"], r["metric"]):
             number(r["value"]) for r in _table(out, "arms.csv")}
    pairs = {(r["arm_a"], r["arm_b"], r["bn_mode_a"], r["bn_mode_b"]) for r in rows}
    assert pairs == {("batch", "layer", "eval", "eval")} | {("batch", "batch", "eval", m) for m in MODES[1:]}
    primary = [r for r in rows if (r["arm_b"], r["bn_mode_b"], r["artifact"], r["severity"], r["label"], r["metric"])
               == ("layer", "eval", "all", "all", "mean", "auc")]
    assert len(primary) == 1
    assert number(primary[0]["difference"]) == pytest.approx(
        value[("layer", "eval", "all", "all", "mean", "auc")] - value[("batch", "eval", "all", "all", "mean", "auc")])
    # a family of one (one arm against the reference): adjusted = raw
    assert primary[0]["p_holm"] == primary[0]["p_value"] == primary[0]["q_bh"]
    for r in rows:
        if r["p_value"] != "":
            p, holm_p, q = number(r["p_value"]), number(r["p_holm"]), number(r["q_bh"])
            assert 1 / SETTINGS["bootstrap"] <= p <= holm_p <= 1 and p <= q <= holm_p + 1e-12
    by = {(r["arm_a"], r["arm_b"], r["bn_mode_b"], r["artifact"], r["severity"], r["label"], r["metric"]): r
          for r in rows}
    for mode in MODES[1:]:
        clean_gain = number(by[("batch", "batch", mode, "clean", "0", "mean", "clean_gain")]["difference"])
        assert clean_gain == pytest.approx(value[("batch", mode, "clean", "0", "mean", "auc")]
                                           - value[("batch", "eval", "clean", "0", "mean", "auc")])
        for a, s in [("noise", "5"), ("all", "all")]:
            gain = value[("batch", mode, a, s, "mean", "auc")] - value[("batch", "eval", a, s, "mean", "auc")]
            assert number(by[("batch", "batch", mode, a, s, "mean", "auc")]["difference"]) == pytest.approx(gain)
            assert number(by[("batch", "batch", mode, a, s, "mean", "artifact_gain")]["difference"]) == \
                pytest.approx(gain - clean_gain)
            loss = value[("batch", "eval", "clean", "0", "mean", "auc")] - value[("batch", "eval", a, s, "mean", "auc")]
            recovered = number(by[("batch", "batch", mode, a, s, "mean", "recovered")]["difference"])
            assert math.isnan(recovered) or recovered == pytest.approx(gain / loss)


def test_evaluation_json_records_what_the_report_needs(results, tiny_store):
    out, _ = results
    record = json.loads((out / "evaluation.json").read_text())
    assert record["version"] == 2 and record["threshold_from"] == "clean-val"
    statistics = record["statistics"]
    assert statistics["replicates"] == SETTINGS["bootstrap"]
    assert statistics["minimum_p"] == pytest.approx(1 / SETTINGS["bootstrap"])
    assert statistics["mean_label"]["labels"] == [l for l in LABELS if 0 < SliceDataset(tiny_store, SPLIT).targets[:, LABELS.index(l)].sum() < len(SliceDataset(tiny_store, SPLIT))]
    assert set(statistics["mean_label"]["resamples_dropped"]) == {"auc", "sensitivity", "specificity", "balanced_accuracy"}
    assert record["provenance"]["kind"] == "synthetic"
    rows = (tiny_store / "slices.csv").read_text().splitlines()
    store_rows = read_csv(tiny_store / "slices.csv")
    for split in ("train", "val", "test"):
        chosen = [r for r in store_rows if r["split"] == split]
        sizes = record["sizes"][split]
        assert sizes["slices"] == len(chosen) and sizes["volumes"] == len({r["volume"] for r in chosen})
        for label in LABELS:
            assert sizes["positive_volumes"][label] == len({r["volume"] for r in chosen if r[label] == "1"})
    assert record["sizes"]["few_positive_volumes"] == [
        l for l in LABELS if record["sizes"][SPLIT]["positive_volumes"][l] < 10]
    run = record["runs"][0]
    assert set(run["curve"]) == {"epochs", "best_epoch", "best_val_auc", "first_val_auc", "peaked_early"}
    assert run["curve"]["epochs"] == 1 and run["curve"]["peaked_early"] is False
    assert run["training"]["seed"] == 0 and run["model"]["norm"] == "batch"
    assert set(record["environment"]["software"]) >= {"python", "torch", "numpy", "scipy"}
    assert record["environment"]["wall_time_s"] > 0 and len(rows) > 1
    assert record["thresholds"]["rule"] == "clean-val"


def test_thresholds_from_the_corrupted_validation_split(runs, tiny_store, tmp_path):
    """corrupted-val: each cell's threshold is the highest validation score whose sensitivity
    on the validation split corrupted like the cell reaches 0.9 (found here by brute force)."""
    out = tmp_path / "results"
    evaluate([runs["layer"], runs["batch"]], tiny_store, out, artifacts=["noise"], severities=[5],
             bn_modes=["eval", "adapt"], threshold_from="corrupted-val", bootstrap=20, progress=False)
    val = SliceDataset(tiny_store, "val")
    assert [r["slice_id"] for r in read_csv(out / "threshold_slices.csv")] == val.slice_ids
    rows = read_csv(out / "thresholds.csv")
    assert len(rows) == (2 + 4) * len(LABELS)  # layer: 2 cells x eval; batch: 2 cells x 2 modes
    for r in rows:
        scores = np.load(prediction_path(out, r["run"], r["bn_mode"], r["artifact"], int(r["severity"]),
                                         root="threshold_predictions"))[:, LABELS.index(r["label"])]
        target = val.targets[:, LABELS.index(r["label"])] == 1
        candidates = [s for s in np.unique(scores) if target.any() and np.mean(scores[target] >= s) >= 0.9]
        if candidates:
            assert number(r["threshold"]) == pytest.approx(max(candidates))
            assert r["rule"] == "sensitivity>=0.9"
    record = json.loads((out / "evaluation.json").read_text())
    assert record["thresholds"]["rule"] == "corrupted-val"
    fallback = {(f["run"], f["bn_mode"], f["artifact"], str(f["severity"]), f["label"]) for f in record["thresholds"]["fallback"]}
    assert fallback == {(r["run"], r["bn_mode"], r["artifact"], r["severity"], r["label"]) for r in rows
                        if "fallback" in r["rule"]}
    # the test-split sensitivity uses that threshold
    results = {(r["run"], r["bn_mode"], r["artifact"], r["severity"], r["label"], r["metric"]): r
               for r in read_csv(out / "results.csv")}
    test = SliceDataset(tiny_store, "test").targets
    r = next(r for r in rows if r["run"] == "batch-seed0" and r["bn_mode"] == "adapt" and r["artifact"] == "noise"
             and r["threshold"] != "" and test[:, LABELS.index(r["label"])].any())
    k = LABELS.index(r["label"])
    scores = predictions(out, "batch-seed0", "adapt", "noise", 5)[:, k]
    expected = np.mean(scores[test[:, k] == 1] >= number(r["threshold"]))
    assert number(results[("batch-seed0", "adapt", "noise", "5", r["label"], "sensitivity")]["value"]) == pytest.approx(expected)


def test_evaluate_command_refuses_bad_arms_and_rules_in_one_line(runs, tiny_store, tmp_path):
    from commands import call_cli

    cases = [
        (["--arm", f"a={runs['batch']}", "--arm", f"a={runs['layer']}"], "--arm a is given twice"),
        ([str(runs["layer"]), "--threshold-from", "bogus"], "unknown --threshold-from 'bogus'"),
        ([str(runs["layer"]), "--bn-modes", "eval,norm"], "unknown bn mode 'norm'"),
        (["--arm", f"a={runs['batch']},{runs['batch']}"], "twice"),
    ]
    for args, says in cases:
        code, _, err = call_cli("evaluate", *args, "--data", tiny_store, "--out", tmp_path / "out", "--quiet")
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], err
        assert not (tmp_path / "out").exists()


def test_explicit_mixed_arm_compares_eval_only_and_keeps_every_run_mode_in_results(results, runs, tiny_store, tmp_path):
    """An explicit arm of a batch-norm and a layer-norm run has eval only (the modes all its runs
    have); results.csv still holds the batch run's adaptations, and the same predictions give the
    same per-run rows as the shared evaluation."""
    original, _ = results
    out = tmp_path / "results"
    summary = evaluate([], tiny_store, out, arms={"mixed": [runs["batch"], runs["layer"]], "twin": [runs["twin"]]},
                       reference_arm="twin", **{**SETTINGS, "artifacts": ["noise"], "severities": [5]})
    assert summary["arms"] == {"mixed": ["batch-seed0", "layer-seed0"], "twin": ["twin-seed0"]}
    record = json.loads((out / "evaluation.json").read_text())
    assert {a["name"]: a["bn_modes"] for a in record["arms"]} == {"mixed": ["eval"], "twin": list(MODES)}
    assert {a["name"]: a["norm"] for a in record["arms"]} == {"mixed": "batch+layer", "twin": "batch"}
    assert {r["bn_mode"] for r in read_csv(out / "arms.csv") if r["arm"] == "mixed"} == {"eval"}
    key = lambda r: (r["run"], r["bn_mode"], r["artifact"], r["severity"], r["label"], r["metric"])
    mine = {key(r): (r["value"], r["ci_low"], r["ci_high"]) for r in read_csv(out / "results.csv")}
    theirs = {key(r): (r["value"], r["ci_low"], r["ci_high"]) for r in read_csv(original / "results.csv")}
    assert {(k[0], k[1]) for k in mine} == {(run, mode) for run in ("batch-seed0", "twin-seed0") for mode in MODES} | \
        {("layer-seed0", "eval")}
    assert len(mine) == 3 * 20 * 2 + 2 * 3 * 20 * 2  # runs x modes x (4 + mean labels x 4 metrics) x 2 cells
    assert mine == {k: theirs[k] for k in mine}  # the same volume draws: the same per-run rows


STREAM = dict(artifacts=("noise", "motion"), severities=(5,), split=SPLIT,
              bn_modes=("eval", "adapt", "tent"), bootstrap=10, progress=False)


def _in_memory(model, images, seeds, levels, artifact, batch_size, mode):
    """The split held whole (SliceDataset items stacked), corrupted and predicted batch by batch
    in order: what `evaluate` computed before it streamed from the STORE."""
    from mrrobust.adaptation import tent_predict
    from mrrobust.analysis import adapt_batch_norm

    chunks = [slice(k, k + batch_size) for k in range(0, len(images), batch_size)]
    with torch.no_grad():
        inputs = [corrupt(images[c], artifact, 5, seeds[c], reference=levels[c])[:, None]
                  if artifact != "clean" else images[c].abs()[:, None] for c in chunks]
    if mode == "tent":
        return tent_predict(model, inputs), inputs
    if mode == "adapt":
        model = adapt_batch_norm(model, inputs)
    with torch.inference_mode():
        return torch.cat([positive_probability(model(x)) for x in inputs]).numpy(), inputs


def test_streamed_batches_give_the_predictions_of_the_split_held_in_memory(runs, tiny_store, tmp_path):
    """Streaming from the STORE changes nothing: with a batch smaller than a volume and with
    one batch holding the whole split, every prediction file equals (bit for bit) the split
    held in memory and predicted batch by batch; each slice's corrupted input (its seed, its
    whole volume's noise level) is the same whichever batch holds it."""
    from mrrobust.artifacts.kspace import volume_level

    complex_set = SliceDataset(tiny_store, SPLIT, kind="complex")
    images = torch.stack([image for image, _, _ in complex_set])
    seeds = torch.tensor([slice_seed(i, 0) for i in complex_set.slice_ids])
    volumes = [i.rsplit(":", 1)[0] for i in complex_set.slice_ids]
    per_volume = {v: volumes.count(v) for v in set(volumes)}
    level = {v: volume_level(images[[k for k, w in enumerate(volumes) if w == v]]) for v in per_volume}
    levels = torch.tensor([level[v] for v in volumes], dtype=torch.float64)
    small, whole = 5, len(complex_set)
    assert small < min(per_volume.values()) and len(per_volume) > 1
    inputs = {}
    for batch_size in (small, whole):
        out = tmp_path / f"batch{batch_size}"
        evaluate([runs["batch"], runs["layer"]], tiny_store, out, batch_size=batch_size, **STREAM)
        for name, modes in (("batch", STREAM["bn_modes"]), ("layer", ("eval",))):
            model, _ = load(runs[name])
            for mode in modes:
                for artifact, severity in (("clean", 0), ("noise", 5), ("motion", 5)):
                    expected, inputs[batch_size, artifact] = _in_memory(
                        model, images, seeds, levels, artifact, batch_size, mode)
                    got = predictions(out, runs[name].name, mode, artifact, severity)
                    np.testing.assert_array_equal(got, expected, err_msg=f"{name} {mode} {artifact} {batch_size}")
    for artifact in ("noise", "motion"):  # batch composition does not change a slice's corruption
        assert torch.equal(torch.cat(inputs[small, artifact]), torch.cat(inputs[whole, artifact]))
    # eval-mode predictions then agree across batch sizes to float rounding
    np.testing.assert_allclose(predictions(tmp_path / f"batch{small}", "layer-seed0", "eval", "noise", 5),
                               predictions(tmp_path / f"batch{whole}", "layer-seed0", "eval", "noise", 5),
                               rtol=0, atol=1e-6)


def test_stream_reads_the_store_batch_by_batch_as_the_dataset_items(tiny_store):
    from mrrobust.evaluation import _stream, _volume_levels
    from mrrobust.artifacts.kspace import volume_level

    dataset = SliceDataset(tiny_store, SPLIT, kind="complex")
    batches = list(_stream(dataset, 7, torch.device("cpu")))
    assert [start for start, _ in batches] == list(range(0, len(dataset), 7))
    streamed = torch.cat([images for _, images in batches])
    assert torch.equal(streamed, torch.stack([image for image, _, _ in dataset]))
    volumes = np.array([i.rsplit(":", 1)[0] for i in dataset.slice_ids])
    levels = _volume_levels(dataset, 7)
    for volume in set(volumes):
        rows = np.flatnonzero(volumes == volume)
        assert torch.allclose(levels[rows], torch.tensor(volume_level(streamed[rows]), dtype=torch.float64),
                              rtol=1e-12, atol=0)


def test_compile_without_a_cpp_compiler_is_refused_before_anything_is_written(runs, tiny_store, tmp_path, monkeypatch):
    import shutil as shell

    monkeypatch.setattr(shell, "which", lambda name: None)
    with pytest.raises(MrRobustError, match="--compile on the CPU needs a C.. compiler") as err:
        evaluate([runs["layer"]], tiny_store, tmp_path / "results", device="cpu", compile=True, progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "results").exists()


def test_compiled_adabn_pass_equals_the_eager_one_in_every_cell(runs, tiny_store, tmp_path):
    """--compile (kept tiny: torch.compile on the CPU builds C++ kernels, about a minute): the
    batch-norm run's AdaBN prediction pass is compiled once and takes each cell's statistics
    (its buffers are updated in place, no stale statistics) and the short last batch (padded);
    its predictions equal the eager ones to float rounding; the recorder's eval pass stays
    eager (equal bit for bit)."""
    settings = dict(artifacts=("noise",), severities=(5,), split=SPLIT, bn_modes=("eval", "adapt"),
                    bootstrap=10, progress=False, device="cpu")
    size = len(SliceDataset(tiny_store, SPLIT)) - 3  # a short last batch: padded, one graph
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    evaluate([runs["batch"]], tiny_store, eager, batch_size=size, **settings)
    evaluate([runs["batch"]], tiny_store, compiled, batch_size=size, compile=True, **settings)
    assert json.loads((compiled / "evaluation.json").read_text())["compile"] is True
    run = runs["batch"].name
    for artifact, severity in (("clean", 0), ("noise", 5)):
        np.testing.assert_allclose(predictions(compiled, run, "adapt", artifact, severity),
                                   predictions(eager, run, "adapt", artifact, severity), rtol=0, atol=1e-5)
        np.testing.assert_array_equal(predictions(compiled, run, "eval", artifact, severity),
                                      predictions(eager, run, "eval", artifact, severity))
    clean, noisy = (predictions(compiled, run, "adapt", *cell) for cell in (("clean", 0), ("noise", 5)))
    assert np.abs(clean - noisy).max() > 1e-3  # the second cell's statistics were taken
    # a compiled folder resumes an eager one (compile changes float rounding only)
    summary = evaluate([runs["batch"]], tiny_store, eager, batch_size=size, compile=True, **settings)
    assert summary["computed"] == 0
