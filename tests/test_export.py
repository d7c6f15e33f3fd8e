"""MODEL folders: `export` of a RUN reproduces the RUN, foreign programs load with their
labels mapped, `calibrate` reproduces training's thresholds, and the loader refuses what
torch.export.load would unpickle or execute (shown by letting torch itself run the bait)."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

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


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrrobust.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(tiny_store, tmp_path_factory) -> Path:
    from mrrobust.training import train

    out = tmp_path_factory.mktemp("export_run") / "batch-seed0"
    train(tiny_store, out, "batch", width=8, groups=4, max_epochs=1, batch_size=32, workers=0,
          accelerator="cpu", quiet=True, lr=1e-3)
    return out


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


def test_the_export_predicts_evaluates_corrupted_cells_like_the_run(run, exported, tiny_store,
                                                                      tmp_path):
    """evaluate's prediction files of the RUN, against the export on evaluate's own inputs."""
    from torch.utils.data import DataLoader

    from mrrobust.data.store import slice_seed
    from mrrobust.evaluation import evaluate, model_inputs, prediction_path

    out = tmp_path / "results"
    evaluate([run], tiny_store, out, artifacts=["noise", "motion"], severities=[4], split="val",
             bn_modes=["eval"], batch_size=16, bootstrap=0, device="cpu", progress=False)
    dataset = SliceDataset(tiny_store, "val", kind="complex")
    model, _ = load_model(exported, store_scale=dataset.scale)
    for artifact, severity in (("clean", 0), ("noise", 4), ("motion", 4)):
        predicted = []
        for images, _, ids in DataLoader(dataset, batch_size=16, collate_fn=collate_slices):
            seeds = torch.tensor([slice_seed(i, 0) for i in ids], dtype=torch.int64)
            with torch.inference_mode():
                x = model_inputs(images, seeds, artifact, severity, "mrrobust")
                predicted.append(positive_probability(model(x)))
        saved = np.load(prediction_path(out, run.name, "eval", artifact, severity))
        np.testing.assert_allclose(torch.cat(predicted).numpy(), saved, rtol=1e-5, atol=1e-6)


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


def test_absent_labels_are_undefined_in_the_metrics_and_left_out_of_the_mean():
    from sklearn.metrics import roc_auc_score

    from mrrobust.metrics import cell_metrics, cluster_weights, paired_difference
    from mrrobust.models.exported import mask_absent

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (60, 4))
    scores = np.clip(targets * 0.3 + rng.random((60, 4)) * 0.7, 0, 1)
    present = np.array([True, False, True, False])
    scores[:, ~present] = np.nan
    weights = cluster_weights(np.arange(60) // 3, 40, 0)
    masked = mask_absent(targets, scores, np.full(4, 0.5), present)
    rows = {(r["label"], r["metric"]): r for r in cell_metrics(*masked, weights)}
    for label in ("mtear", "cartilage"):
        assert all(np.isnan(rows[(label, m)]["value"]) and np.isnan(rows[(label, m)]["ci_low"])
                   for m in ("auc", "sensitivity", "specificity", "balanced_accuracy"))
    expected = [roc_auc_score(targets[:, k], scores[:, k]) for k in (0, 2)]
    assert rows[("acl", "auc")]["value"] == pytest.approx(expected[1])
    assert rows[("mean", "auc")]["value"] == pytest.approx(np.mean(expected))
    assert np.isfinite(rows[("mean", "auc")]["ci_low"])
    other = np.clip(scores + rng.normal(0, 0.1, scores.shape), 0, 1)
    both, a, _ = mask_absent(targets, scores, np.full(4, 0.5), present)
    _, b, _ = mask_absent(targets, other, np.full(4, 0.5), present)
    differences = {r["label"]: r["difference"] for r in paired_difference(both, a, b, weights)}
    assert np.isnan(differences["mtear"]) and np.isfinite(differences["mean"])


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
