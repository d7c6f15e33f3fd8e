"""`mrrobust train`: the RUN contract, determinism, resume, DDP, bad input; metrics."""

import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from mrrobust.cli import app
from mrrobust.data.annotations import LABELS
from mrrobust.data.store import (STORE_FORMAT, STORE_VERSION, SliceDataset, save_npy_atomic,
                                 slice_seed, write_json_atomic, write_slices_csv)
from mrrobust.errors import MrRobustError
from mrrobust.metrics import auc, operating_point
from mrrobust.models import load, positive_probability
from mrrobust.training import (Classifier, EpochSampler, SeededSlices, ShardSampler, epoch_seed,
                               train)

FAST = dict(width=8, groups=4, batch_size=8, workers=0, lr=1e-3, quiet=True, limit_train_batches=4)


def write_store(out: Path, splits=None, slices=4, size=32, seed=0, val_negative=(),
                version=STORE_VERSION, train_negative=()) -> Path:
    """A STORE whose label k brightens one quadrant: learnable in an epoch or two.
    `val_negative` (`train_negative`) labels have no positives in the validation (train) split."""
    splits = splits or {"train": 6, "val": 4}
    (out / "volumes").mkdir(parents=True)
    rng, rows, volume = np.random.default_rng(seed), [], 0
    for split, count in splits.items():
        for _ in range(count):
            name, volume = f"file{1000000 + volume}", volume + 1
            targets = (rng.random((slices, len(LABELS))) < 0.4).astype(int)
            negative = {"val": val_negative, "train": train_negative}.get(split, ())
            targets[:, [LABELS.index(label) for label in negative]] = 0
            images = rng.normal(size=(slices, size, size, 2)).astype(np.float32).view(np.complex64)[..., 0]
            half = size // 2
            for s, k in zip(*np.nonzero(targets)):
                images[s, half * (k // 2):half * (k // 2 + 1), half * (k % 2):half * (k % 2 + 1)] += 2
            save_npy_atomic(out / "volumes" / f"{name}.npy", images)
            rows += [{"volume": name, "slice": s, "split": split, "labels": "", "patient_id": name,
                      "acquisition": "CORPD_FBK", **dict(zip(LABELS, map(int, targets[s])))}
                     for s in range(slices)]
    write_slices_csv(out / "slices.csv", rows)
    write_json_atomic(out / "manifest.json", {"format": STORE_FORMAT, "version": version,
                                              "scale": 2.0, "crop": size, "source": "test"})
    return out


@pytest.fixture(scope="module")
def store(tiny_store):
    """The shared tiny synthetic STORE (64x64); its validation split has no ACL positives."""
    return tiny_store


def read_metrics(run: Path) -> list[dict]:
    import csv

    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


# ---- metrics ------------------------------------------------------------------------------


def brute_force_operating_point(targets, scores, min_sensitivity=0.9, max_fpr=0.25):
    """Every distinct score as a threshold (positive when score >= t), highest first."""
    targets = np.asarray(targets, bool)
    candidates = []
    for t in sorted(set(scores.tolist()), reverse=True):
        called = scores >= t
        sensitivity = called[targets].mean() if targets.any() else math.nan
        fpr = called[~targets].mean() if (~targets).any() else math.nan
        candidates.append((t, sensitivity, 1 - fpr, fpr))
    for t, sens, spec, _ in candidates:
        if sens >= min_sensitivity:
            return t, sens, spec
    for t, sens, spec, fpr in candidates:
        if fpr > max_fpr:
            return t, sens, spec
    return None


@pytest.mark.parametrize("seed", range(6))
def test_operating_point_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 60
    targets = rng.random(n) < 0.3 if seed != 5 else np.zeros(n, bool)  # seed 5: no positives
    scores = np.round(rng.random(n) + 0.5 * targets, 1 if seed % 2 else 3)  # ties on odd seeds
    point = operating_point(targets, scores)
    threshold, sensitivity, specificity = brute_force_operating_point(targets, scores)
    assert point["threshold"] == pytest.approx(threshold)
    assert point["specificity"] == pytest.approx(specificity)
    if targets.any():
        assert point["rule"].startswith("sensitivity") and point["sensitivity"] == pytest.approx(sensitivity)
    else:
        assert point["rule"].endswith("(fallback)") and math.isnan(point["sensitivity"])
        assert math.isnan(auc(targets, scores))


def test_auc_agrees_with_sklearn_and_is_nan_when_undefined():
    rng = np.random.default_rng(0)
    targets, scores = rng.random(50) < 0.5, rng.random(50)
    assert auc(targets, scores) == pytest.approx(roc_auc_score(targets, scores))
    assert math.isnan(auc(np.ones(5), rng.random(5)))


# ---- samplers -----------------------------------------------------------------------------


def test_epoch_sampler_depends_on_seed_and_epoch_only_and_shards_for_ddp(monkeypatch):
    weights = torch.tensor([1.0, 1.0, 4.0, 0.0, 2.0])
    sampler = EpochSampler(5, seed=3, weights=weights)
    sampler.set_epoch(1)
    keys = list(sampler)
    assert {epoch for _, epoch in keys} == {1}  # the epoch travels with each index
    first = [index for index, _ in keys]
    other = EpochSampler(5, seed=3, weights=weights)
    other.set_epoch(1)
    assert list(other) == keys and 3 not in first  # zero weight never drawn
    other.set_epoch(2)
    assert [index for index, _ in other] != first
    import mrrobust.training as training

    shards = []
    for rank in range(2):
        monkeypatch.setattr(training, "_rank_and_world", lambda rank=rank: (rank, 2))
        shards.append([index for index, _ in sampler])
        assert len(shards[-1]) == len(sampler) == 3
    assert sorted(shards[0][:3] + shards[1][:2]) == sorted(first)  # the single-process draw
    monkeypatch.setattr(training, "_rank_and_world", lambda: (1, 2))
    assert list(ShardSampler(5)) == [1, 3, 0]


# ---- the RUN contract ---------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["batch", "group", "layer", "instance", "none"])
def test_one_epoch_writes_the_run_contract(store, tmp_path, norm):
    run = tmp_path / "run"
    summary = train(store, run, norm, max_epochs=1, **FAST)
    assert summary["epochs"] == 1 and summary["best_epoch"] == 0
    assert {p.name for p in run.iterdir()} >= {"config.json", "model.safetensors", "metrics.csv",
                                               "operating_points.json", "checkpoints"}
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["norm"] == norm
    assert config["store"]["scale"] == json.loads((store / "manifest.json").read_text())["scale"]
    assert config["training"]["lr"] == 1e-3 and config["training"]["patience"] == 5
    # the saved model, reloaded without Lightning, reproduces the logged validation AUCs
    model, _ = load(run)
    val = SliceDataset(store, "val")
    images = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        scores = positive_probability(model(images)).numpy()
    (row,) = read_metrics(run)
    defined = []
    for k, label in enumerate(LABELS):
        if len(set(val.targets[:, k])) == 1:
            assert row[f"val_auc_{label}"] == ""  # AUC undefined: an empty cell
            continue
        defined.append(roc_auc_score(val.targets[:, k], scores[:, k]))
        assert float(row[f"val_auc_{label}"]) == pytest.approx(defined[-1], abs=2e-6)
    assert len(defined) >= 2
    assert float(row["val_auc_mean"]) == pytest.approx(np.mean(defined), abs=2e-6)
    points = json.loads((run / "operating_points.json").read_text())
    assert points["epoch"] == 0
    for k, label in enumerate(LABELS):
        want = operating_point(val.targets[:, k], scores[:, k])
        assert points["labels"][label]["threshold"] == pytest.approx(want["threshold"], abs=1e-6)
        got = points["labels"][label]["sensitivity"]
        assert (got is None) if math.isnan(want["sensitivity"]) else got == pytest.approx(want["sensitivity"])


def test_same_command_same_metrics_with_or_without_workers_and_another_seed_differs(
        store, tmp_path):
    runs = [tmp_path / name for name in ("a", "b", "c")]
    for run, seed, workers in zip(runs, (7, 7, 8), (0, 2, 0)):  # two seeded loader workers
        train(store, run, "batch", seed=seed, max_epochs=2, augment="noise:2",
              **dict(FAST, workers=workers, limit_val_batches=2))
    first, second, other = ((run / "metrics.csv").read_bytes() for run in runs)
    assert first == second
    assert first != other
    weights = [load_file(run / "model.safetensors") for run in runs[:2]]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_resume_ends_where_an_uninterrupted_run_would(store, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(store, straight, "batch", max_epochs=3, **FAST)
    train(store, resumed, "batch", max_epochs=1, **FAST)
    assert len(read_metrics(resumed)) == 1
    summary = train(store, resumed, "batch", max_epochs=3, resume=True, **FAST)
    assert summary["epochs"] == 3
    assert (resumed / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()
    for name in ("operating_points.json",):
        assert (resumed / name).read_text() == (straight / name).read_text()
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_label_without_validation_positives_is_reported_not_fatal(tmp_path, caplog):
    store = write_store(tmp_path / "store", val_negative=("acl",))
    with caplog.at_level("WARNING", logger="mrrobust.training"):
        train(store, tmp_path / "run", "group", max_epochs=1, **FAST)
    assert "acl (no positives)" in caplog.text
    (row,) = read_metrics(tmp_path / "run")
    assert row["val_auc_acl"] == ""
    others = [float(row[f"val_auc_{l}"]) for l in LABELS if l != "acl"]
    assert float(row["val_auc_mean"]) == pytest.approx(np.mean(others), abs=2e-6)
    acl = json.loads((tmp_path / "run" / "operating_points.json").read_text())["labels"]["acl"]
    assert acl["auc"] is None and acl["sensitivity"] is None and acl["positives"] == 0


def test_augmented_training_is_seeded_and_changes_training(store, tmp_path):
    runs = {name: tmp_path / name for name in ("plain", "noisy", "noisy_again")}
    train(store, runs["plain"], "group", max_epochs=1, **FAST)
    for name in ("noisy", "noisy_again"):
        train(store, runs[name], "group", max_epochs=1, augment="noise:5,ghosting:3", **FAST)
    plain, noisy, again = (read_metrics(run)[0] for run in runs.values())
    assert noisy == again
    assert noisy["train_loss"] != plain["train_loss"]
    assert json.loads((runs["noisy"] / "config.json").read_text())["training"]["augment"] == "noise:5,ghosting:3"
    code, output = run_cli("--data", store, "--out", tmp_path / "bad", "--augment", "bogus:2")
    assert code == 2 and "unknown artifact 'bogus'" in output and not (tmp_path / "bad").exists()


# ---- bad input ----------------------------------------------------------------------------


def run_cli(*args):
    result = CliRunner().invoke(app, ["train", *map(str, args), "--quiet"])
    return result.exit_code, result.output


def test_bad_input_is_one_line(store, tmp_path):
    cases = {
        "missing store": ([tmp_path / "nowhere"], "not a finished STORE"),
        "groups": ([store, "--norm", "group", "--groups", "3", "--width", "8"], "does not divide"),
        "resume without checkpoint": ([store, "--resume"], "no checkpoint"),
        "16-bit on cpu": ([store, "--precision", "16-mixed", "--accelerator", "cpu"], "needs a GPU"),
        "unknown precision": ([store, "--precision", "8"], "is not one of"),
        "too many gpus": ([store, "--accelerator", "gpu", "--devices", "64"], "more GPUs"),
        "unknown norm": ([store, "--norm", "weight"], "unknown norm"),
        "compile on cpu": ([store, "--compile", "--accelerator", "cpu"], "--compile is for GPUs"),
        "negative lr": ([store, "--lr", "-1"], "--lr -1.0 must be a positive finite number"),
        "nan lr": ([store, "--lr", "nan"], "must be a positive finite number"),
        "negative weight decay": ([store, "--weight-decay", "-1e-4"], "--weight-decay -0.0001"),
        "seed out of range": ([store, "--seed", "-1"], "--seed -1 must be in"),
        "zero patience": ([store, "--patience", "0"], "--patience 0 must be >= 1"),
        "zero batches": ([store, "--limit-train-batches", "0"], "--limit-train-batches 0"),
    }
    for name, (args, message) in cases.items():
        out = tmp_path / name.replace(" ", "_")
        code, output = run_cli("--data", args[0], "--out", out, *args[1:])
        assert code == 2, (name, output)
        assert message in output and output.count("\n") == 1, (name, output)
        assert not out.exists(), name  # nothing half-written


def test_bad_stores_and_runs(tmp_path, store):
    other = write_store(tmp_path / "v99", version=99)
    with pytest.raises(MrRobustError, match="version"):
        train(other, tmp_path / "r1", "batch", **FAST)
    no_val = write_store(tmp_path / "noval", splits={"train": 2})
    with pytest.raises(MrRobustError, match="the val split has no slices"):
        train(no_val, tmp_path / "r2", "batch", **FAST)
    hopeless = write_store(tmp_path / "hopeless", val_negative=LABELS)
    with pytest.raises(MrRobustError, match="undefined for every label"):
        train(hopeless, tmp_path / "r3", "batch", **FAST)
    run = tmp_path / "run"
    train(store, run, "batch", max_epochs=1, **FAST)
    with pytest.raises(MrRobustError, match="already holds a finished run; show it with --resume"):
        train(store, run, "batch", max_epochs=1, **FAST)
    with pytest.raises(MrRobustError, match="already holds an unfinished run .1 of 2 epochs.; "
                                            "continue it with --resume"):
        train(store, run, "batch", max_epochs=2, **FAST)
    with pytest.raises(MrRobustError, match=r"other settings \(lr 0.001 -> 0.01\)"):
        train(store, run, "batch", max_epochs=2, resume=True, **dict(FAST, lr=1e-2))
    with pytest.raises(MrRobustError, match=r"other settings \(lr 0.001 -> 0.01\)"):
        train(store, run, "batch", max_epochs=2, **dict(FAST, lr=1e-2))
    assert len(read_metrics(run)) == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MrRobustError, match="holds no RUN"):
        train(store, foreign, "batch", **FAST)


def test_limited_validation_without_both_classes_is_refused_before_writing(store, tmp_path,
                                                                        monkeypatch):
    import mrrobust.training as training

    val = SliceDataset(store, "val")
    first = val.targets[:4]  # the one validated batch of 4 (ShardSampler order)
    assert all(len(set(first[:, k])) == 1 for k in range(len(LABELS)))
    assert any(len(set(val.targets[:, k])) == 2 for k in range(len(LABELS)))
    run = tmp_path / "run"
    limited = dict(width=8, groups=4, batch_size=4, limit_val_batches=1, max_epochs=2,
                   workers=0, quiet=True, limit_train_batches=1)
    with pytest.raises(MrRobustError, match="undefined for every label on the 4 validated "
                                            "slices.*raise --limit-val-batches"):
        train(store, run, "batch", **limited)
    assert not run.exists()
    assert training.validated_slices(10, 4, 2, world=1) == 8
    assert training.validated_slices(10, 4, 2, world=2) == 10
    assert training.validated_slices(10, 4, None, world=1) == 10
    # were the check bypassed, the epoch raises instead of early stopping silently
    monkeypatch.setattr(training, "_check_splits", lambda *args: None)
    with pytest.raises(MrRobustError, match="undefined for every label in epoch 0"):
        train(store, run, "batch", **limited)
    assert not (run / "metrics.csv").exists() and not (run / "checkpoints").exists()


def test_unwritable_run_folder_is_one_line(store, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    outs = [blocker / "run"]
    if os.geteuid() != 0:  # root writes through chmod
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        outs.append(locked / "run")
    try:
        for out in outs:
            code, output = run_cli("--data", store, "--out", out, "--width", "8",
                                   "--max-epochs", "1", "--workers", "0")
            assert code == 2 and output.count("\n") == 1, output
            assert f"cannot write the RUN folder {out}" in output, output
            assert not out.exists()
    finally:
        (tmp_path / "locked").exists() and (tmp_path / "locked").chmod(0o755)


# ---- DDP ----------------------------------------------------------------------------------


def test_two_process_cpu_ddp(store, tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, PYTHONHASHSEED="0")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "mrrobust.cli", "train", "--data", str(store), "--out", str(run),
         "--norm", "batch", "--width", "8", "--batch-size", "4", "--max-epochs", "1",
         "--workers", "0", "--accelerator", "cpu", "--devices", "2", "--lr", "1e-3", "--quiet"],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("best epoch 0") == 1  # printed by rank 0 only
    (row,) = read_metrics(run)
    assert 0 <= float(row["val_auc_mean"]) <= 1
    model, config = load(run)
    assert config["training"]["devices"] == 2


# ---- re-running into a RUN: kill and resume, finished runs, restarts -----------------------

def training_state(checkpoint: Path) -> dict:
    from mrrobust.training import _read_run_state

    return _read_run_state(checkpoint)


KILL = dict(groups=4, width=8, batch_size=8, workers=0, lr=1e-3, limit_train_batches=3,
            limit_val_batches=3, max_epochs=6, patience=6, seed=2, quiet=True)
KILL_FLAGS = ["--norm", "group", *[f"--{key.replace('_', '-')}={value}"
                                   for key, value in KILL.items() if key != "quiet"]]


def cli(*args, quiet=True) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mrrobust.cli", "train", *map(str, args), *(["--quiet"] * quiet)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# the CLI, held (asleep) right after the checkpoint of epoch 1, with a marker file written
HOLD_AFTER_EPOCH_1 = """
import pathlib, sys, time
import mrrobust.training as training
from mrrobust.cli import app

original = training.RunWriter.on_train_epoch_end

def hold(self, trainer, module):
    original(self, trainer, module)
    if trainer.current_epoch == 1:
        pathlib.Path(sys.argv[1]).write_text("epoch 1 checkpointed")
        time.sleep(600)

training.RunWriter.on_train_epoch_end = hold
app(["train", *sys.argv[2:]])
"""


def test_killed_run_resumes_to_the_uninterrupted_result(store, tmp_path):
    straight, killed, held = tmp_path / "straight", tmp_path / "killed", tmp_path / "held"
    train(store, straight, "group", **KILL)
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_AFTER_EPOCH_1, str(held), "--data", str(store),
         "--out", str(killed), *KILL_FLAGS, "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not held.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # held after epoch 1's checkpoint, mid-run
    _, err = process.communicate()
    assert held.exists() and process.returncode == -signal.SIGKILL, err[-3000:]
    assert training_state(checkpoint)["epochs"] == 2
    assert len(read_metrics(killed)) == 2
    # a plain re-run refuses to overwrite it and says how to continue
    with pytest.raises(MrRobustError, match="unfinished run .* continue it with --resume"):
        train(store, killed, "group", **KILL)
    resumed = cli("--data", store, "--out", killed, *KILL_FLAGS, "--resume", quiet=False)
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-3000:]
    # stdout (a pipe, not a terminal): one plain line per resumed epoch, then the summary; the bar is on stderr
    lines = out.splitlines()
    assert [line.split("]")[0] for line in lines[:-1]] == ["[train killed"] * 4 and "6 epochs" in lines[-1], out
    assert "Tip" not in err and "litlogger" not in err
    for name in ("metrics.csv", "operating_points.json", "model.safetensors"):
        assert (killed / name).read_bytes() == (straight / name).read_bytes(), name
    assert json.loads((killed / "config.json").read_text())["training"]["precision"] == "32"


def test_checkpoint_is_written_after_every_epoch(store, tmp_path, monkeypatch):
    import mrrobust.training as training

    seen = []
    original = training.RunWriter.on_train_epoch_end

    def spy(self, trainer, module):
        original(self, trainer, module)
        state = training._read_run_state(self.checkpoint)
        seen.append((trainer.current_epoch, state["epochs"], len(state["history"])))

    monkeypatch.setattr(training.RunWriter, "on_train_epoch_end", spy)
    train(store, tmp_path / "run", "batch", max_epochs=2, **FAST)
    assert seen == [(0, 1, 1), (1, 2, 2)]
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp*"))


def test_resuming_a_finished_run_returns_its_summary_without_training(store, tmp_path):
    run = tmp_path / "run"
    first = train(store, run, "batch", max_epochs=2, **FAST)
    files = {name: (run / name).read_bytes() for name in
             ("metrics.csv", "model.safetensors", "operating_points.json", "config.json",
              "checkpoints/last.ckpt")}
    again = train(store, run, "batch", max_epochs=2, resume=True, **FAST)
    fewer = train(store, run, "batch", max_epochs=1, resume=True, **FAST)
    assert again == fewer == first and first["epochs"] == 2 and not first["stopped_early"]
    assert {name: (run / name).read_bytes() for name in files} == files
    # a learning rate too small to change the ranking: no better AUC, early stop at epoch 1
    stopped = tmp_path / "stopped"
    slow = dict(FAST, lr=1e-12)
    summary = train(store, stopped, "group", max_epochs=6, patience=1, **slow)
    assert summary["stopped_early"] and summary["epochs"] == 2
    weights = (stopped / "model.safetensors").read_bytes()
    assert train(store, stopped, "group", max_epochs=9, patience=1, resume=True, **slow) == summary
    assert (stopped / "model.safetensors").read_bytes() == weights
    assert len(read_metrics(stopped)) == 2


def test_run_that_died_in_its_first_epoch_restarts(store, tmp_path, monkeypatch):
    run = tmp_path / "run"

    def crash(self, batch, batch_index):
        raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr(Classifier, "training_step", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(store, run, "batch", max_epochs=1, **FAST)
    assert (run / "config.json").is_file() and not (run / "checkpoints" / "last.ckpt").exists()
    (run / "metrics.csv").write_text("stale\n")  # what a run killed after validation leaves
    train(store, run, "batch", max_epochs=1, **FAST)  # no --resume needed
    assert len(read_metrics(run)) == 1
    import shutil

    shutil.rmtree(run / "checkpoints")
    assert train(store, run, "batch", max_epochs=1, resume=True, **FAST)["epochs"] == 1


# ---- design: step logic in the module, files by the callback; defaults; ranks --------------


@pytest.mark.filterwarnings("ignore:.*LeafSpec")  # Lightning internals on torch 2.13
def test_the_lightning_module_writes_nothing(store, tmp_path):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from mrrobust.models import model_config

    config = {"model": model_config(norm="batch", width=8),
              "training": {"lr": 1e-3, "weight_decay": 0.0, "compile": False}}
    module = Classifier(config)
    data = SeededSlices(SliceDataset(store, "val"), seed=0)
    loader = DataLoader(data, batch_size=8)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2,
                         limit_val_batches=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path / "root", num_sanity_val_steps=0)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        trainer.fit(module, loader, loader)
    finally:
        os.chdir(cwd)
    assert list(tmp_path.iterdir()) == []
    assert set(module.validation["row"]) >= {"epoch", "val_auc_mean"}


def test_batches_carry_the_augmentation_seeds(store):
    slices = SliceDataset(store, "train")
    seeded = SeededSlices(slices, seed=5)
    image, target, index, seed = seeded[(3, 2)]
    assert index == 3 and seed == slice_seed(slices.slice_ids[3], 5 * 1_000_003 + 2)
    assert seed == slice_seed(slices.slice_ids[3], epoch_seed(5, 2))
    assert torch.equal(image, slices[3][0])
    sampler = EpochSampler(len(slices), seed=5)
    sampler.set_epoch(2)
    batch = next(iter(torch.utils.data.DataLoader(seeded, sampler=sampler, batch_size=4)))
    assert batch[3].dtype == torch.int64 and batch[3].shape == (4,)
    assert batch[3].tolist() == [slice_seed(slices.slice_ids[i], epoch_seed(5, 2))
                                 for i in batch[2].tolist()]


def test_rank_one_checks_too_and_writes_nothing(tmp_path, store, monkeypatch):
    no_val = write_store(tmp_path / "noval", splits={"train": 2})
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(MrRobustError, match="the val split has no slices"):
        train(no_val, tmp_path / "r", "batch", **FAST)
    with pytest.raises(MrRobustError, match="must be a positive finite number"):
        train(store, tmp_path / "r", "batch", **dict(FAST, lr=-1.0))
    assert not (tmp_path / "r").exists()


def test_files_are_world_readable_and_train_labels_without_positives_warn(tmp_path, caplog):
    store = write_store(tmp_path / "store", train_negative=("mtear",))
    with caplog.at_level("WARNING", logger="mrrobust.training"):
        train(store, tmp_path / "run", "batch", max_epochs=1, **FAST)
    assert "no positive training slices for mtear;" in caplog.text
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "metrics.csv", "operating_points.json", "config.json"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o666 & ~umask, name
