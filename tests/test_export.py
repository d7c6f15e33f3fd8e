"""MODEL folders: `export` of a RUN reproduces the RUN, foreign programs load with their
labels mapped, `calibrate` reproduces training's thresholds, and the loader refuses what
torch.export.load would unpickle or execute (shown by letting torch itself run the bait)."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from mrrobust.data.annotations import LABELS
from mrrobust.data.store import SliceDataset, collate_slices
from mrrobust.errors import MrRobustError
from mrrobust.models import load, positive_probability
from mrrobust.models.exported import (
    OPERATING_POINTS_FILE, PROGRAM_FILE, RECORD_FILE, check_archive, evaluation_record,
    load_model, model_digest, present_labels, read_record, thresholds)

from commands import call_cli


def cli(*args) -> SimpleNamespace:
    """`mrrobust ARGS` in this process: `returncode`, `stdout`, `stderr`."""
    code, out, err = call_cli(*args)
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


@pytest.fixture(scope="module")
def run(tiny_runs) -> Path:
    return tiny_runs["batch"]


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export_model") / "batch-model"
    result = cli("export", run, "--out", out)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and "4 labels" in result.stdout
    return out


def val_batches(store: Path) -> list[torch.Tensor]:
    from torch.utils.data import DataLoader

    dataset = SliceDataset(store, "val")
    return [images for images, _, _ in DataLoader(dataset, batch_size=7, collate_fn=collate_slices)]


def save_program(module: nn.Module, folder: Path, record: dict, size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    program = torch.export.export(module.eval(), (torch.rand(2, 1, size, size),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, str(folder / PROGRAM_FILE))
    (folder / RECORD_FILE).write_text(json.dumps(record))
    return folder


class Foreign(nn.Module):
    """Someone else's classifier: 2 labels (acl, abnormal), probabilities, its own scale."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return torch.sigmoid(self.head(self.conv(x).mean((2, 3))))


class ThreeOutputs(Foreign):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 3)


# ---- export reproduces the RUN -------------------------------------------------------------


def test_export_gives_the_runs_logits_on_the_same_inputs(run, exported, tiny_store):
    net, config = load(run)
    model, record = load_model(exported, store_scale=SliceDataset(tiny_store, "val").scale)
    assert record.labels == LABELS and record.output == "logits" and model.factor == 1.0
    assert record.input_scale == config["store"]["scale"] and record.norm == "batch"
    with torch.no_grad():
        for x in val_batches(tiny_store):
            expected = net(x)
            program = model.program(x)  # the raw (B, 4) binary logits
            torch.testing.assert_close(program, expected[..., 1] - expected[..., 0],
                                       rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(positive_probability(model(x)),
                                       positive_probability(expected), rtol=1e-5, atol=1e-6)
        one = positive_probability(model(x[:1]))  # a last batch of one slice
        torch.testing.assert_close(one, positive_probability(net(x[:1])), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(thresholds(exported), np.array(
        [json.loads((run / OPERATING_POINTS_FILE).read_text())["labels"][l]["threshold"]
         for l in LABELS], dtype=np.float64))
    entry = evaluation_record(exported, "given")
    assert entry["kind"] == "model" and entry["weights"] == model_digest(exported)
    assert entry["labels"] == list(LABELS) and entry["batch_norm"] is False


def read_table(path: Path) -> list[dict]:
    import csv

    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_evaluating_the_export_gives_the_runs_predictions_and_aucs(run, exported, tiny_store,
                                                                    tmp_path):
    """The RUN and its export in one evaluate: the same prediction files (to 1e-5) and AUCs;
    the MODEL is an arm of its own, in eval mode only (its adapt rows are n/a)."""
    from mrrobust.evaluation import evaluate, prediction_path

    out = tmp_path / "results"
    summary = evaluate([run, exported], tiny_store, out, artifacts=["noise", "motion"],
                       severities=[4], split="val", bn_modes=["eval", "adapt"], batch_size=16,
                       bootstrap=20, device="cpu", progress=False)
    assert summary["arms"] == {"batch": [run.name], exported.name: [exported.name]}
    for artifact, severity in (("clean", 0), ("noise", 4), ("motion", 4)):
        np.testing.assert_allclose(
            np.load(prediction_path(out, exported.name, "eval", artifact, severity)),
            np.load(prediction_path(out, run.name, "eval", artifact, severity)), rtol=1e-5, atol=1e-5)
    assert not (out / "predictions" / exported.name / "adapt").exists()
    rows = read_table(out / "results.csv")
    auc = {(r["run"], r["artifact"], r["label"]): float(r["value"]) for r in rows
           if r["metric"] == "auc" and r["bn_mode"] == "eval" and r["value"]}
    assert len(auc) == 2 * 3 * 5
    for (name, artifact, label), value in auc.items():
        if name == run.name:
            assert auc[(exported.name, artifact, label)] == pytest.approx(value, abs=1e-4)
    assert {r["bn_mode"] for r in rows if r["run"] == exported.name} == {"eval"}
    settings = json.loads((out / "evaluation.json").read_text())
    entry = next(r for r in settings["runs"] if r["name"] == exported.name)
    assert entry["kind"] == "model" and entry["weights"] == model_digest(exported)
    assert entry["bn_modes"] == ["eval"] and entry["labels"] == list(LABELS)
    thresholds_csv = [r for r in read_table(out / "thresholds.csv") if r["bn_mode"] == "eval"
                      and r["artifact"] == "clean"]
    by = {(r["run"], r["label"]): r for r in thresholds_csv}
    for label in LABELS:  # the export carries the RUN's operating points and rules
        assert by[(exported.name, label)]["threshold"] == by[(run.name, label)]["threshold"]
        assert by[(exported.name, label)]["rule"] == by[(run.name, label)]["rule"]


def test_model_folders_evaluate_refuses_in_one_line(run, exported, tiny_store, tmp_path):
    import shutil

    from mrrobust.evaluation import evaluate

    settings = dict(artifacts=["noise"], severities=[1], split="val", bn_modes=["eval"],
                    bootstrap=20, device="cpu", progress=False)
    clash = tmp_path / "copies" / "batch"  # its arm would be named like the RUN's arm
    shutil.copytree(exported, clash)
    with pytest.raises(MrRobustError, match="arm named 'batch'.*--arm"):
        evaluate([run, clash], tiny_store, tmp_path / "a", **settings)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / RECORD_FILE).write_bytes((exported / RECORD_FILE).read_bytes())
    with pytest.raises(MrRobustError, match=f"lacks {PROGRAM_FILE}"):
        evaluate([empty], tiny_store, tmp_path / "b", **settings)
    small = save_program(Foreign(), tmp_path / "small", {  # a program fixed at 32x32
        "format": "mrrobust-model", "labels": ["acl", "mtear"], "output": "probabilities",
        "input_scale": "store"}, size=32)
    with pytest.raises(MrRobustError, match="takes 32x32 images, the STORE has 64x64"):
        evaluate([small], tiny_store, tmp_path / "c", **settings)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_model_with_a_label_subset_is_n_a_in_the_others(run, tiny_store, tmp_path):
    """A foreign MODEL predicting acl and abnormal: NaN in the other columns of its prediction
    files, empty cells (never 0) in results.csv and arms.csv, AUCs of scikit-learn on the
    labels it has, no thresholds (AUC only); the mean label of every arm averages the labels
    every model predicts."""
    from sklearn.metrics import roc_auc_score

    from mrrobust.evaluation import evaluate, prediction_path

    folder = save_program(Foreign(), tmp_path / "foreign", {
        "format": "mrrobust-model", "labels": ["acl", "abnormal"], "output": "probabilities",
        "input_scale": "store"})
    out = tmp_path / "results"
    evaluate([run, folder], tiny_store, out, artifacts=["noise"], severities=[2], split="val",
             bn_modes=["eval"], batch_size=16, bootstrap=20, device="cpu", progress=False)
    targets = SliceDataset(tiny_store, "val").targets
    absent = [LABELS.index("mtear"), LABELS.index("cartilage")]
    rows = read_table(out / "results.csv")
    arm_rows = read_table(out / "arms.csv")
    for artifact, severity in (("clean", 0), ("noise", 2)):
        scores = np.load(prediction_path(out, "foreign", "eval", artifact, severity))
        assert np.isnan(scores[:, absent]).all() and np.isfinite(np.delete(scores, absent, 1)).all()
        mine = {(r["label"], r["metric"]): r["value"] for r in rows if r["run"] == "foreign"
                and r["artifact"] == artifact}
        arm = {(r["label"], r["metric"]): r["value"] for r in arm_rows if r["arm"] == "foreign"
               and r["artifact"] == artifact and r["severity"] == str(severity)}
        for label in ("mtear", "cartilage"):
            assert all(mine[(label, m)] == "" for m in ("auc", "sensitivity", "specificity"))
            assert arm[(label, "auc")] == "" and arm[(label, "ece")] == ""
        for label in ("acl", "abnormal"):
            k = LABELS.index(label)
            assert float(mine[(label, "auc")]) == pytest.approx(
                roc_auc_score(targets[:, k], scores[:, k]), abs=1e-9)
            assert mine[(label, "sensitivity")] == ""  # no operating points: AUC only
        fixed = [k for k in (LABELS.index("abnormal"), LABELS.index("acl"))
                 if 0 < targets[:, k].sum() < len(targets)]
        assert float(mine[("mean", "auc")]) == pytest.approx(
            np.mean([float(mine[(LABELS[k], "auc")]) for k in fixed]))
        theirs = {r["label"]: float(r["value"]) for r in rows if r["run"] == run.name
                  and r["artifact"] == artifact and r["metric"] == "auc" and r["value"]}
        assert theirs["mean"] == pytest.approx(np.mean([theirs[LABELS[k]] for k in fixed]))
    settings = json.loads((out / "evaluation.json").read_text())
    assert settings["statistics"]["mean_label"]["labels"] == [LABELS[k] for k in sorted(fixed)]
    points = [r for r in read_table(out / "thresholds.csv") if r["run"] == "foreign"]
    assert points and all(r["threshold"] == "" for r in points)
    from mrrobust.report import report

    written = report(out, tmp_path / "report")  # the report reads the n/a cells as such
    text = written["report"].read_text()
    assert "foreign" in text


def test_calibrate_reproduces_the_thresholds_training_chose(run, exported, tiny_store, tmp_path):
    model = tmp_path / "copy"
    model.mkdir()
    for name in (PROGRAM_FILE, RECORD_FILE, OPERATING_POINTS_FILE):
        (model / name).write_bytes((exported / name).read_bytes())
    before = model_digest(model)
    refused = cli("calibrate", model, "--data", tiny_store, "--device", "cpu")
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    result = cli("calibrate", model, "--data", tiny_store, "--device", "cpu", "--force")
    assert result.returncode == 0, result.stderr
    trained = json.loads((run / OPERATING_POINTS_FILE).read_text())["labels"]
    calibrated = json.loads((model / OPERATING_POINTS_FILE).read_text())["labels"]
    for label in LABELS:  # training's validation loop vs calibrate: the same rule, same slices
        for key in ("threshold", "sensitivity", "specificity", "auc"):
            a, b = trained[label][key], calibrated[label][key]
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-5, abs=1e-6), (label, key)
        assert trained[label]["rule"] == calibrated[label]["rule"]
    assert model_digest(model) != before  # new thresholds, new MODEL


def test_export_refuses_to_overwrite_and_bad_runs(run, exported, tmp_path):
    again = cli("export", run, "--out", exported)
    assert again.returncode == 2 and "--force" in again.stderr
    assert cli("export", run, "--out", exported, "--force").returncode == 0
    for args in ([tmp_path / "nowhere", "--out", tmp_path / "m"],
                 [run, "--out", tmp_path / "m2", "--input-scale", "per-slice"]):
        result = cli("export", *args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "m2").exists()


# ---- any classifier ------------------------------------------------------------------------


def test_foreign_model_maps_its_labels_applies_its_scale_and_leaves_the_rest_absent(tmp_path):
    module = Foreign()
    folder = save_program(module, tmp_path / "foreign", {
        "format": "mrrobust-model", "labels": ["acl", "abnormal"], "output": "probabilities",
        "input_scale": 4.0})
    model, record = load_model(folder, store_scale=2.0)  # STORE-scaled input * 2 / 4
    assert model.factor == 0.5 and thresholds(folder) is None
    np.testing.assert_array_equal(present_labels(record), [True, False, True, False])
    x = torch.rand(5, 1, 64, 64)
    with torch.no_grad():
        expected = module(x * 0.5).double()
        probability = positive_probability(model(x)).double()
    torch.testing.assert_close(probability[:, LABELS.index("acl")], expected[:, 0])
    torch.testing.assert_close(probability[:, LABELS.index("abnormal")], expected[:, 1])
    assert torch.isnan(probability[:, [LABELS.index("mtear"), LABELS.index("cartilage")]]).all()
    with pytest.raises(MrRobustError, match="64x64 images, the STORE has 32x32"):
        model(torch.rand(2, 1, 32, 32))


def test_calibrate_a_model_without_all_labels(tmp_path, tiny_store):
    from mrrobust.calibration import calibrate

    folder = save_program(Foreign(), tmp_path / "foreign", {
        "format": "mrrobust-model", "labels": ["acl", "abnormal"], "output": "probabilities",
        "input_scale": "store"})
    result = calibrate(folder, tiny_store, device="cpu")
    assert result["labels"]["mtear"] is None and result["labels"]["cartilage"] is None
    assert all(isinstance(result["labels"][l], float) for l in ("acl", "abnormal"))
    points = json.loads((folder / OPERATING_POINTS_FILE).read_text())["labels"]
    assert points["mtear"]["rule"] == "absent"
    assert np.isnan(thresholds(folder)[LABELS.index("mtear")])


def test_absent_labels_are_undefined_in_the_statistics_and_left_out_of_every_mean():
    """`ArmStatistics(present=...)`: a run lacking labels has NaN in them (every metric, every
    replicate), scikit-learn's AUC in the others; the mean label of EVERY run averages the
    labels all runs predict, so the arms' means and their difference stay comparable."""
    from sklearn.metrics import roc_auc_score

    from mrrobust.arm_statistics import ArmRuns, ArmStatistics

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (60, 4))
    volumes = np.arange(60) // 3
    full = np.clip(targets * 0.3 + rng.random((60, 4)) * 0.7, 0, 1)
    partial = full.copy()
    present = np.array([True, False, True, False])
    partial[:, ~present] = np.nan
    scores = {"full": full, "partial": partial}
    statistics = ArmStatistics(
        targets, volumes, [ArmRuns("a", ["full"], ["eval"]), ArmRuns("b", ["partial"], ["eval"])],
        {"full": ("batch", 0), "partial": ("unknown", 0)}, reference="a", replicates=40,
        resample_volumes=True, seed=0, level=0.95, present={"partial": present})
    statistics.compute([], [], lambda run, *_: scores[run], lambda *_: np.full(4, 0.5))
    rows = {(r["run"], r["label"], r["metric"]): r for r in statistics.run_rows}
    for label in ("mtear", "cartilage"):
        assert all(np.isnan(rows[("partial", label, m)]["value"])
                   and np.isnan(rows[("partial", label, m)]["ci_low"])
                   for m in ("auc", "sensitivity", "specificity", "balanced_accuracy"))
    expected = {k: roc_auc_score(targets[:, k], full[:, k]) for k in range(4)}
    for run in ("full", "partial"):
        assert rows[(run, "acl", "auc")]["value"] == pytest.approx(expected[2])
        assert rows[(run, "mean", "auc")]["value"] == pytest.approx((expected[0] + expected[2]) / 2)
        assert np.isfinite(rows[(run, "mean", "auc")]["ci_low"])
    assert statistics.statistics["mean_label"]["labels"] == ["abnormal", "acl"]
    differences = {(r["label"], r["metric"]): r["difference"] for r in statistics.comparison_rows}
    assert np.isnan(differences[("mtear", "auc")]) and differences[("mean", "auc")] == pytest.approx(0)


@pytest.mark.parametrize("record, message", [
    ({"format": "other"}, "format is not"),
    ({"format": "mrrobust-model", "labels": ["acl", "knee"], "output": "logits",
      "input_scale": "store"}, "labels"),
    ({"format": "mrrobust-model", "labels": ["acl"], "output": "scores", "input_scale": 1},
     "output"),
    ({"format": "mrrobust-model", "labels": ["acl"], "output": "logits", "input_scale": -1},
     "input_scale"),
    ({"format": "mrrobust-model", "labels": ["acl"], "output": "logits", "input_scale": 1,
      "extra": 1}, "unknown key"),
])
def test_bad_records_are_one_line(tmp_path, record, message):
    (tmp_path / RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(MrRobustError, match=message) as err:
        read_record(tmp_path)
    assert "\n" not in str(err.value)


# ---- what is refused -----------------------------------------------------------------------


def test_output_shape_must_match_the_labels(tmp_path):
    folder = save_program(ThreeOutputs(), tmp_path / "three", {
        "format": "mrrobust-model", "labels": ["acl", "abnormal"], "output": "logits",
        "input_scale": "store"})
    result = cli("calibrate", folder, "--data", tmp_path)
    assert result.returncode == 2 and "returns" in result.stderr and "2 label" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, on purpose
@pytest.mark.parametrize("kind, message", [
    ("pickle", "is a pickle"), ("torch.save", "torch.save archive"),
    ("torchscript", "TorchScript"), ("text", "not a zip")])
def test_other_torch_formats_renamed_pt2_are_refused(tmp_path, kind, message):
    module = Foreign()
    path = tmp_path / PROGRAM_FILE
    if kind == "pickle":
        path.write_bytes(pickle.dumps(module.state_dict()))
    elif kind == "torch.save":
        torch.save(module, path)
    elif kind == "torchscript":
        torch.jit.save(torch.jit.trace(module, torch.rand(1, 1, 8, 8)), str(path))
    else:
        path.write_text("not a model")
    with pytest.raises(MrRobustError, match=message) as err:
        check_archive(path)
    assert "\n" not in str(err.value)


class Bait:
    """Unpickling it creates `marker` (what an attacker's payload would run instead)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def rewrite(source: Path, target: Path, change) -> None:
    """Copy a zip archive, `change(name, data) -> data` applied to every entry."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info, change(info.filename, old.read(info.filename)))


def pickled_weight(marker: Path):
    def change(name: str, data: bytes) -> bytes:
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("data/weights/weight_0"):
            return pickle.dumps(Bait(marker))
        return data
    return change


def guard_code(marker: Path):
    def change(name: str, data: bytes) -> bytes:
        if name.endswith("models/model.json"):
            program = json.loads(data)
            program["guards_code"] = [f"open({str(marker)!r}, 'w') is None"]
            return json.dumps(program).encode()
        return data
    return change


def shape_expression(marker: Path):
    def change(name: str, data: bytes) -> bytes:
        if name.endswith("models/model.json"):
            text = data.decode()
            symbol = "Symbol('s77', positive=True, integer=True)"
            assert symbol in text  # the batch dimension's expression, as torch writes it
            bait = f"Symbol('s77', positive=True, integer=True) + 0*len(open({str(marker)!r}, 'w').name)"
            return text.replace(json.dumps(symbol), json.dumps(bait), 1).encode()
        return data
    return change


@pytest.mark.parametrize("bait, message", [
    (pickled_weight, "pickled or custom object"), (guard_code, "guard code"),
    (shape_expression, "shape expression")])
def test_baited_archives_are_refused_before_torch_runs_them(tmp_path, bait, message):
    folder = save_program(Foreign(), tmp_path / "good", {
        "format": "mrrobust-model", "labels": ["acl", "abnormal"], "output": "logits",
        "input_scale": "store"})
    check_archive(folder / PROGRAM_FILE)  # the untouched program passes
    baited = tmp_path / "baited" / PROGRAM_FILE
    baited.parent.mkdir()
    (baited.parent / RECORD_FILE).write_bytes((folder / RECORD_FILE).read_bytes())
    ours, theirs = tmp_path / "ours.marker", tmp_path / "torch.marker"
    rewrite(folder / PROGRAM_FILE, baited, bait(ours))
    with pytest.raises(MrRobustError, match=message):
        load_model(baited.parent)
    assert not ours.exists()
    # the same bait, pointed at another marker, is run by torch.export.load itself
    rewrite(folder / PROGRAM_FILE, tmp_path / "plain.pt2", bait(theirs))
    try:
        torch.export.load(tmp_path / "plain.pt2").module()(torch.rand(2, 1, 64, 64))
    except Exception:  # the bait ran first; what torch does next does not matter here
        pass
    assert theirs.exists()


def test_extra_archive_entries_are_refused(tmp_path):
    folder = save_program(Foreign(), tmp_path / "good", {
        "format": "mrrobust-model", "labels": ["acl", "abnormal"], "output": "logits",
        "input_scale": "store"})
    with zipfile.ZipFile(folder / PROGRAM_FILE, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(MrRobustError, match="outside a plain torch.export program"):
        check_archive(folder / PROGRAM_FILE)
