"""Evaluate RUNs over the artifact grid of a STORE split and write a RESULTS folder.

`evaluate(runs, store, out, ...)` predicts every cell of the grid: the clean split
(artifact "clean", severity 0) and every (artifact, severity), for every RUN, in each bn_mode:
"eval" (the trained network as it is) and, for runs with batch norm, the test-time adaptations
of `mrrobust.adaptation`: "adapt" (AdaBN on that cell's corrupted split), "prior" (BN-adapt with
a prior, Schneider et al. 2020) and "tent" (Wang et al. 2021, episodic per cell). The RUNs are
grouped into arms (`mrrobust.arms`), and `mrrobust.arm_statistics` turns the predictions into
per-run, per-arm and arm-vs-arm tables with a two-level bootstrap (docs/API.md, RESULTS).
MODEL folders (`models.exported`, any `torch.export` classifier) are evaluated beside RUNs:
each is an arm of its own, in bn_mode eval only, NaN (n/a) in the labels it lacks. With
`shard="I/N"` only shard I of N of the (run, artifact, severity) cells is predicted
(`mrrobust.shards`) and no table is written; `write_tables` tabulates the merged shards.

RESULTS folder:
  evaluation.json      the settings (written first; another evaluate with other settings
                       into this folder is refused, the same settings resume), rewritten at the
                       end with what the report needs (statistics, provenance, sizes,
                       thresholds, environment). Each RUN is recorded with a digest of its
                       weights, so a RUN retrained since is refused too.
  slices.csv           the evaluated split: slice_id, volume, slice, labels; the row order
                       of every prediction file (threshold_slices.csv: the validation split)
  predictions/<run>/<bn_mode>/<artifact>-<severity>.npy
                       float32 (N, 4) positive probabilities (LABELS order); one file per
                       cell, written atomically: the unit of resume (threshold_predictions/:
                       the validation split, for --threshold-from corrupted-val)
  predictions/<run>/eval/<artifact>-<severity>.bn.json
                       batch-norm runs: `analysis.BNRecorder` rows of that prediction pass
  results.csv          per run: run, norm, seed, bn_mode, artifact, severity, label, metric,
                       value, ci_low, ci_high (volume bootstrap of that run alone)
  thresholds.csv       run, bn_mode, artifact, severity, label, threshold, rule
  arms.csv             arm, bn_mode, artifact, severity, label, metric, value, ci_low,
                       ci_high, runs (two-level bootstrap)
  arm_comparisons.csv  arm_a, arm_b, bn_mode_a, bn_mode_b, artifact, severity, label, metric,
                       difference (b - a), ci_low, ci_high, p_value, p_holm, q_bh
  bn_shift.csv         run, artifact, severity, layer, depth, channels, mean_shift,
                       var_log_ratio (batch-norm runs, eval mode)

The tables are recomputed from the prediction files at the end of every evaluate (not of a
shard), so a resumed evaluation, and merged shards, write the same tables as an uninterrupted
one. An undefined number is an empty cell.

Inputs are built as in training: the complex image divided by the STORE scale, corrupted
on the device (`artifacts.corrupt`, the slice's seed `slice_seed(slice_id, seed)`, so every
model sees identical inputs; `reference=` its whole volume's signal level, from one streamed
pass over the split), magnitude `(B, 1, H, W)`. The split is streamed from the STORE
(`_stream`: a background thread reads the next batch, pinned and copied on a side stream on
CUDA), never held: each batch of a cell is corrupted once and fed to every pending
(run, bn_mode) pass (`_Pass`); AdaBN streams the cell twice (statistics, then predictions).
Device memory is bounded by a few batches. On CUDA the forward runs under bf16 autocast in the
run's memory format; on the CPU in float32. `compile` compiles the passes without hooks.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from mrrobust.data.annotations import LABELS
from mrrobust.errors import MrRobustError

log = logging.getLogger("mrrobust.evaluation")

from mrrobust.contracts import RESULTS_FORMAT, RESULTS_VERSION  # noqa: E402  (defined once, with the schema)
SETTINGS_FILE = "evaluation.json"
SLICES_FILE = "slices.csv"
THRESHOLD_SLICES_FILE = "threshold_slices.csv"
PREDICTIONS = "predictions"
THRESHOLD_PREDICTIONS = "threshold_predictions"
RESULTS_FILE = "results.csv"
THRESHOLDS_FILE = "thresholds.csv"
ARMS_FILE = "arms.csv"
ARM_COMPARISONS_FILE = "arm_comparisons.csv"
BN_SHIFT_FILE = "bn_shift.csv"
BN_SUFFIX = ".bn.json"
CLEAN = "clean"
THRESHOLD_FROM = ("clean-val", "corrupted-val")
THRESHOLD_SPLIT = "val"
DEFAULT_BOOTSTRAP = 2000  # smallest p 1/2000 = 0.0005: the primary endpoint can reach p < 0.001
SEED_ONLY_REPLICATES = 2000  # --bootstrap 0: replicates that resample the seeds alone
FEW_POSITIVE_VOLUMES = 10  # a label with fewer positive test volumes is flagged
SUMMARY_KEYS = ("statistics", "provenance", "sizes", "thresholds", "environment",
                "operating_points")
RUN_FILES = ("config.json", "model.safetensors", "operating_points.json")
SLICE_COLUMNS = ("slice_id", "volume", "slice", *LABELS)
RESULT_COLUMNS = ("run", "norm", "seed", "bn_mode", "artifact", "severity", "label", "metric",
                  "value", "ci_low", "ci_high")
THRESHOLD_COLUMNS = ("run", "bn_mode", "artifact", "severity", "label", "threshold", "rule")
BN_SHIFT_COLUMNS = ("run", "artifact", "severity", "layer", "depth", "channels", "mean_shift",
                    "var_log_ratio")
# evaluation.json entries that do not change the numbers enough to refuse a resume
# (batch_size matters to prior and tent, whose statistics are per batch: compared then)
# (compile, like device, changes float rounding only)
UNCOMPARED = ("batch_size", "device", "compile")  # precision is compared: one table never mixes bf16 and fp32
BATCH_MODES = ("prior", "tent")


# ---- compilation and stage times -----------------------------------------------------------


def _compiled(model: torch.nn.Module, batch_size: int | None = None) -> torch.nn.Module:
    """`torch.compile(model)` for inference, static shapes. With `batch_size` (a network
    whose slices do not interact: eval mode) a short last batch is padded with zeros to
    `batch_size` and its padding dropped from the output, so one graph serves the split;
    without (prior: batch statistics) the last batch compiles a second graph."""
    compiled = torch.compile(model, dynamic=False)
    return compiled if batch_size is None else _FullBatches(compiled, batch_size)


class _FullBatches(torch.nn.Module):
    """`model` fed `(batch_size, ...)` always: a shorter batch `(n, ...)` is zero-padded and
    the output cut back to its `n` rows."""

    def __init__(self, model: torch.nn.Module, batch_size: int):
        super().__init__()
        self.model, self.batch_size = model, batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n >= self.batch_size:
            return self.model(x)
        padding = x.new_zeros((self.batch_size - n, *x.shape[1:]))
        return self.model(torch.cat([x, padding]))[:n]


def check_compile(compile: bool, device: torch.device) -> bool:
    """Refuse --compile where torch.compile cannot build kernels: on the CPU without a C++
    compiler, on CUDA without Triton."""
    import importlib.util
    import shutil

    if not isinstance(compile, bool):
        raise MrRobustError(f"compile {compile!r} must be True or False (--compile)")
    if compile and device.type == "cpu" and not any(
            shutil.which(name) for name in ("g++", "c++", "clang++")):
        raise MrRobustError("--compile on the CPU needs a C++ compiler (g++ or clang++) on the "
                            "PATH; install one or drop --compile")
    if compile and device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise MrRobustError("--compile on CUDA needs Triton (pip install triton); install it or "
                            "drop --compile")
    return compile


_times: dict | None = None  # {"seconds": {stage: s}, "slices": {norm: model passes}} while timed


def stage_times():
    """A context manager timing `evaluate`'s stages while it is active (benchmarks):
    yields `{"seconds": {stage: s}, "slices": {norm: slices through a model pass}}`. On CUDA
    every timed stage ends with a synchronisation, which costs some overlap."""
    from contextlib import contextmanager

    @contextmanager
    def timing():
        global _times
        _times = {"seconds": {}, "slices": {}}
        try:
            yield _times
        finally:
            _times = None
    return timing()


def _add_time(name: str, seconds: float) -> None:
    if _times is not None:
        _times["seconds"][name] = _times["seconds"].get(name, 0.0) + seconds


def _count(norm: str, slices: int) -> None:
    if _times is not None:
        _times["slices"][norm] = _times["slices"].get(norm, 0) + slices


class _stage:
    """`with _stage(name, where):` adds the block's seconds to `stage_times()` (a no-op when
    not timed); synchronises `where`'s CUDA device first and last."""

    def __init__(self, name: str, where=None):
        self.name, self.where = name, where

    def _sync(self) -> None:
        if self.where is not None and self.where.device.type == "cuda":
            torch.cuda.synchronize(self.where.device)

    def __enter__(self):
        if _times is not None:
            self._sync()
            self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if _times is not None:
            self._sync()
            _add_time(self.name, time.perf_counter() - self.started)


# ---- settings ------------------------------------------------------------------------------


@dataclass
class Run:
    """One RUN folder to evaluate: `name` (its folder name, the key in RESULTS)."""

    name: str
    given: str
    path: Path
    norm: str
    seed: int
    thresholds: np.ndarray  # (4,) float64, NaN where the operating point is undefined
    weights_digest: str
    trained_on: dict  # the config's store section (scale, crop, ...)
    config: dict = field(default_factory=dict, repr=False)
    curve: dict = field(default_factory=dict)
    batch_norm: bool = False
    modes: tuple = ()
    model: torch.nn.Module | None = field(default=None, repr=False)
    memory_format: torch.memory_format = torch.contiguous_format
    kind: str = "run"  # "run" (a RUN folder) or "model" (a MODEL folder, models/exported.py)
    present: np.ndarray = field(default_factory=lambda: np.ones(len(LABELS), bool))  # (4,) bool
    rules: list = field(default_factory=lambda: [""] * len(LABELS))  # the operating points' rules
    compile: bool = False  # torch.compile the passes without hooks (`network`, `adapted`)
    _networks: dict = field(default_factory=dict, repr=False)

    def network(self, mode: str, bn_prior: float | None = None,
                batch_size: int | None = None) -> torch.nn.Module:
        """The eval-mode network of a pass without hooks: "eval" (the run's own) or "prior"
        (its `adaptation.prior_batch_norm` copy), made once per run and `torch.compile`d when
        `compile` (a MODEL's program never is: it runs as exported); compiled eval pads a
        short last batch to `batch_size` (`_compiled`)."""
        from mrrobust.adaptation import prior_batch_norm

        key = (mode, bn_prior, batch_size)
        if key not in self._networks:
            model = self.model if mode == "eval" else prior_batch_norm(self.model, bn_prior)
            self._networks[key] = (_compiled(model, batch_size if mode == "eval" else None)
                                   if self.compile and self.kind == "run" else model)
        return self._networks[key]

    def adapted(self, model: torch.nn.Module, batch_size: int | None = None) -> torch.nn.Module:
        """The network of AdaBN's prediction pass, `model` the cell's adapted copy. Compiled:
        one compiled copy per run takes each cell's statistics (its buffers are copied in
        place), so a new cell is not a new compilation; a short last batch is padded."""
        if not self.compile:
            return model
        if "adapt" not in self._networks:
            import copy

            target = copy.deepcopy(model).eval()
            self._networks["adapt"] = (target, _compiled(target, batch_size))
        target, compiled = self._networks["adapt"]
        with torch.no_grad():
            for mine, theirs in zip(target.buffers(), model.buffers()):
                mine.copy_(theirs)
        return compiled

    def record(self) -> dict:
        common = {"name": self.name, "given": self.given, "path": str(self.path),
                  "norm": self.norm, "seed": self.seed, "batch_norm": self.batch_norm,
                  "bn_modes": list(self.modes), "weights": self.weights_digest}
        if self.kind == "model":  # the MODEL's record (labels, output, input_scale)
            model = self.config["mrrobust-model"]
            return {"kind": "model", **common, "labels": model["labels"],
                    "output": model["output"], "input_scale": model["input_scale"]}
        return {**common, "model": self.config.get("model", {}),
                "training": self.config.get("training", {}), "curve": self.curve}

    def operating_points(self) -> dict:
        """The thresholds (None where undefined) and rules evaluate used: evaluation.json's
        `operating_points` entry, from which the tables of merged shards are written."""
        return {"thresholds": [None if math.isnan(v) else float(v) for v in self.thresholds],
                "rules": list(self.rules)}


def training_curve(run: Path) -> dict:
    """The RUN's metrics.csv in brief: `{epochs, best_epoch (0-based), best_val_auc,
    first_val_auc, peaked_early}`; `peaked_early` when the run has >= 4 epochs and its best
    (the saved weights) lies in the first quarter of them (epoch 0 always counts). None values
    when metrics.csv is missing or holds no validation AUC."""
    from mrrobust.training import METRICS_FILE, MONITOR

    curve = dict.fromkeys(("epochs", "best_epoch", "best_val_auc", "first_val_auc"))
    curve["peaked_early"] = None
    try:
        with (run / METRICS_FILE).open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get(MONITOR)]
    except OSError:
        return curve
    if not rows:
        return curve
    values = [float(r[MONITOR]) for r in rows]
    best = int(np.nanargmax(values)) if np.isfinite(values).any() else 0
    curve.update(epochs=len(rows), best_epoch=int(rows[best]["epoch"]), best_val_auc=values[best],
                 first_val_auc=values[0],
                 peaked_early=bool(len(rows) >= 4 and best < max(1.0, len(rows) / 4)))
    return curve


def _file_digest(path: Path) -> str:
    """BLAKE2b-128 of a file (`contracts.file_digest`: the digest `benchmark.plan` compares)."""
    from mrrobust.contracts import file_digest

    return file_digest(path)


def _run_thresholds(path: Path) -> tuple[np.ndarray, list[str]]:
    """A RUN's operating_points.json (schema-checked by `contracts.read_operating_points`):
    the per-label thresholds, (4,) float64 with NaN for null, and the rules ("" where absent)."""
    from mrrobust.contracts import read_operating_points

    labels = read_operating_points(path.parent)["labels"]
    values = [labels[label]["threshold"] for label in LABELS]
    rules = [str(labels[label].get("rule", "")) for label in LABELS]
    return np.array([math.nan if v is None else float(v) for v in values], np.float64), rules


def _rules(path: Path) -> list[str]:
    """The per-label rules of a MODEL's operating_points.json ("" where absent or unreadable)."""
    try:
        labels = json.loads(path.read_text())["labels"]
        return [str((labels.get(label) or {}).get("rule", "")) for label in LABELS]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [""] * len(LABELS)


def _read_model(path: Path, given) -> Run:
    """A MODEL folder as a Run: norm and seed from its record (arm keys), the labels it
    predicts, its thresholds (NaN for absent labels; all NaN without operating points)."""
    from mrrobust.models import exported

    record = exported.read_record(path)
    if not (path / exported.PROGRAM_FILE).is_file():
        raise MrRobustError(f"MODEL {given} lacks {exported.PROGRAM_FILE}; write it with "
                            f"torch.export.save (or `mrrobust export RUN --out {given}`)")
    present = exported.present_labels(record)
    points = exported.thresholds(path)
    values = np.full(len(LABELS), math.nan) if points is None else np.where(present, points, math.nan)
    rules = _rules(path / exported.OPERATING_POINTS_FILE)
    return Run(name=path.name, given=str(given), path=path, norm=record.norm, seed=record.seed,
               thresholds=values, weights_digest=exported.model_digest(path), trained_on={},
               config={"mrrobust-model": record.json()}, kind="model", present=present,
               rules=[rule if ok else "" for rule, ok in zip(rules, present)])


def _read_runs(runs) -> list[Run]:
    """Check the RUN (or MODEL) folders (exist, complete, unique names) and read what the
    tables need."""
    from mrrobust.models import exported, read_config

    if runs is None or isinstance(runs, (str, Path)) or not list(runs):
        raise MrRobustError("evaluate needs one or more RUN folders (`mrrobust train` output); "
                            "pass them as arguments or as --arm NAME=RUN,RUN,...")
    found = []
    for given in runs:
        path = Path(given).resolve()
        if not path.is_dir():
            raise MrRobustError(f"RUN folder {given} does not exist; train it with "
                                f"`mrrobust train --out {given}`")
        if exported.is_model_folder(path):
            found.append(_read_model(path, given))
            continue
        missing = [name for name in RUN_FILES if not (path / name).is_file()]
        if missing:
            raise MrRobustError(f"RUN {given} lacks {', '.join(missing)}: it is not a finished "
                                f"run; finish it with `mrrobust train --resume --out {given}`")
        config = read_config(path)
        thresholds, rules = _run_thresholds(path / "operating_points.json")
        found.append(Run(name=path.name, given=str(given), path=path,
                         norm=str(config["model"]["norm"]),
                         seed=int(config.get("training", {}).get("seed", 0)),
                         thresholds=thresholds,
                         weights_digest=_file_digest(path / "model.safetensors"),
                         trained_on=dict(config.get("store", {})), config=config,
                         curve=training_curve(path),
                         rules=rules))
    names = [run.name for run in found]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise MrRobustError(f"RUN folder names must be unique (they name the prediction "
                            f"folders); {', '.join(twice)} given more than once or from "
                            f"different parents: rename or copy the folders")
    return found


def _grid_axes(suite: str, artifacts, severities) -> tuple[list[str], list[int]]:
    """The artifact names (None = all of `suite`; checked) and severities (1..5), each
    deduplicated in the given order."""
    from mrrobust.artifacts import SEVERITIES, SUITES, lookup

    if artifacts is None:  # an unknown suite is then refused by `lookup` below
        artifacts = list(SUITES[suite]) if isinstance(suite, str) and suite in SUITES else [""]
    names = list(dict.fromkeys([artifacts] if isinstance(artifacts, str) else artifacts))
    for name in names:
        lookup(name, suite)  # an unknown suite or artifact: MrRobustError listing the valid ones
    single = isinstance(severities, (int, np.integer))
    levels = list(dict.fromkeys([severities] if single else severities))
    if not levels or any(isinstance(s, bool) or not isinstance(s, (int, np.integer))
                         or not 1 <= s <= SEVERITIES for s in levels):
        raise MrRobustError(f"severities {levels} must be integers 1..{SEVERITIES} (the "
                            f"clean cell, severity 0, is always evaluated)")
    return names, [int(s) for s in levels]


def grid_cells(artifacts: list[str], severities: list[int]) -> list[tuple[str, int]]:
    """The cells: ("clean", 0), then every (artifact, severity), artifact-major."""
    return [(CLEAN, 0)] + [(name, s) for name in artifacts for s in severities]


def _check_modes(bn_modes) -> list[str]:
    from mrrobust.adaptation import BN_MODES

    modes = [bn_modes] if isinstance(bn_modes, str) else list(dict.fromkeys(bn_modes or ()))
    unknown = [m for m in modes if m not in BN_MODES]
    if unknown:
        raise MrRobustError(f"unknown bn mode {', '.join(map(repr, unknown))}; choose among "
                            f"{', '.join(BN_MODES)} (e.g. --bn-modes eval,adapt)")
    if "eval" not in modes:
        raise MrRobustError(f"bn_modes {modes} must include eval (every adaptation is compared "
                            f"with eval, and runs without batch norm have only eval)")
    return [m for m in BN_MODES if m in modes]


def _check_threshold_from(threshold_from: str) -> str:
    if threshold_from not in THRESHOLD_FROM:
        raise MrRobustError(f"unknown --threshold-from {threshold_from!r}; choose clean-val (the "
                            f"RUN's operating points) or corrupted-val (re-chosen per cell on the "
                            f"validation split corrupted like it)")
    return threshold_from


def _check_prior(bn_prior: float) -> float:
    if isinstance(bn_prior, bool) or not isinstance(bn_prior, (int, float)) or not bn_prior >= 0 \
            or not math.isfinite(bn_prior):
        raise MrRobustError(f"--bn-prior {bn_prior!r} must be a finite number >= 0 (the weight N "
                            f"of the trained statistics against a test batch of n: N / (N + n))")
    return float(bn_prior)


def planned_settings(store: Path | str, **options) -> dict:
    """The evaluation.json entries that follow from `evaluate`'s arguments alone (not from its
    RUNs, arms or shard), checked, with `evaluate`'s defaults for what `options` lacks (keys
    evaluate does not take are ignored): what `evaluate` records and `benchmark.plan`
    compares with a finished evaluation, from one function. Refuses bad settings before any
    work (`benchmark` calls it before training)."""
    import inspect

    from mrrobust.adaptation import TENT_LR, TENT_STEPS

    parameters = inspect.signature(evaluate).parameters
    given = {k: v for k, v in options.items() if k in parameters}
    settings = {name: p.default for name, p in parameters.items()
                if p.default is not inspect.Parameter.empty}
    settings.update(given)
    names, levels = _grid_axes(settings["suite"], settings["artifacts"], settings["severities"])
    modes = _check_modes(settings["bn_modes"])
    threshold_from = _check_threshold_from(settings["threshold_from"])
    bn_prior = _check_prior(settings["bn_prior"])
    batch_size, seed, bootstrap, level = (settings[k] for k in ("batch_size", "seed", "bootstrap", "level"))
    _check_numbers(batch_size, seed, bootstrap, level)
    where = Device.make(settings["device"])
    compile = check_compile(settings["compile"], where.device)
    return {"store": str(Path(store).resolve()), "split": settings["split"],
            "suite": settings["suite"], "artifacts": names, "severities": levels,
            "bn_modes": modes, "bn_prior": bn_prior, "tent": {"lr": TENT_LR, "steps": TENT_STEPS},
            "threshold_from": threshold_from, "seed": int(seed), "bootstrap": int(bootstrap),
            "level": float(level), "batch_size": int(batch_size), "device": str(where.device),
            "precision": where.precision, "compile": compile}


def _check_numbers(batch_size: int, seed: int, bootstrap: int, level: float) -> None:
    if batch_size < 1:
        raise MrRobustError(f"--batch-size {batch_size} must be >= 1")
    if not 0 <= seed < 2**63:
        raise MrRobustError(f"--seed {seed} must be in 0..2**63-1")
    if bootstrap < 0:
        raise MrRobustError(f"--bootstrap {bootstrap} must be >= 0 resamples (0: no "
                            f"confidence intervals)")
    if not 0 < level < 1:
        raise MrRobustError(f"--level {level} must be between 0 and 1 (e.g. 0.95)")


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA when available, else the CPU; a device that is not here is refused."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise MrRobustError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise MrRobustError(f"device {device!r}: no CUDA GPU is visible here; use --device cpu")
    return resolved


def _split_dataset(store: Path, split: str):
    """The split as a complex `SliceDataset`; MrRobustError when the split is empty."""
    from mrrobust.data.store import SliceDataset

    dataset = SliceDataset(store, split, kind="complex")  # checks the STORE and split name
    if len(dataset) == 0:
        raise MrRobustError(f"STORE {store} has no {split!r} slices; choose another --split or "
                            f"prepare the STORE with a non-zero {split} fraction")
    return dataset


def _compared(settings: dict) -> dict:
    """The settings a resume must match: everything but the paths as given, UNCOMPARED (batch
    size only without prior and tent) and the summary written at the end."""
    loose = UNCOMPARED if not set(BATCH_MODES) & set(settings.get("bn_modes", ())) else ("device",)
    same = {k: v for k, v in settings.items() if k not in loose and k not in SUMMARY_KEYS}
    same["runs"] = [{k: v for k, v in run.items() if k != "given"} for run in settings["runs"]]
    return same


def _claim(out: Path, settings: dict) -> None:
    """Write `out/evaluation.json`, or check that `out` holds an evaluation with these settings."""
    from mrrobust.data.store import read_json, write_json_atomic

    record = out / SETTINGS_FILE
    if out.exists() and not out.is_dir():
        raise MrRobustError(f"--out {out} is a file; choose a folder for the RESULTS")
    if record.is_file():
        before = read_json(record)
        if before is None or before.get("format") != RESULTS_FORMAT:
            raise MrRobustError(f"{record} is not a mrrobust evaluation record; choose another "
                                f"--out")
        from mrrobust.contracts import read_results_settings

        read_results_settings(out)  # schema-checked: a damaged or older record is one line
        try:
            old = _compared(before)
        except (KeyError, TypeError, AttributeError):
            raise MrRobustError(f"{record} is damaged (no runs); choose another --out") from None
        new = _compared(settings)
        changed = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
        if changed:
            detail = "; ".join(c if len(c) < 200 else c[:197] + "..." for c in changed)
            raise MrRobustError(f"{out} holds an evaluation with other settings ({detail}); "
                                f"use the same settings to resume it or choose another --out")
        return
    if out.exists() and any(out.iterdir()):
        raise MrRobustError(f"{out} exists, is not empty and holds no {SETTINGS_FILE}; choose "
                            f"another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, settings)
    except OSError as err:
        raise MrRobustError(f"cannot write the RESULTS folder {out} ({err.strerror or err}); "
                            f"choose a writable --out") from None


def _slices_csv(dataset) -> bytes:
    rows = [{"slice_id": slice_id, "volume": row["volume"], "slice": row["slice"], **{l: row[l] for l in LABELS}}
            for slice_id, row in zip(dataset.slice_ids, dataset.rows)]
    return _csv_bytes(SLICE_COLUMNS, rows)


def _write_slices(out: Path, dataset, name: str = SLICES_FILE) -> None:
    """slices.csv (or threshold_slices.csv); refused when a resumed folder's differs (the
    STORE's split changed)."""
    from mrrobust.data.store import write_bytes_atomic

    path, data = out / name, _slices_csv(dataset)
    if path.is_file() and path.read_bytes() != data:
        raise MrRobustError(f"{path} differs from the split of the STORE now (it was prepared "
                            f"again?); evaluate into another --out")
    if not path.is_file():
        write_bytes_atomic(path, data)


# ---- prediction ----------------------------------------------------------------------------


def _cell_name(artifact: str, severity: int) -> str:
    return f"{artifact}-{severity}"


def prediction_path(out: Path, run: str, bn_mode: str, artifact: str, severity: int,
                    root: str = PREDICTIONS) -> Path:
    """`out/<root>/<run>/<bn_mode>/<artifact>-<severity>.npy` (root: predictions, or
    threshold_predictions for the validation split)."""
    return Path(out) / root / run / bn_mode / f"{_cell_name(artifact, severity)}.npy"


def _bn_path(prediction: Path) -> Path:
    return prediction.with_name(prediction.stem + BN_SUFFIX)


def _finished(prediction: Path, size: int, with_bn: bool, present: np.ndarray) -> bool:
    """Whether a cell's files exist and its predictions are float32 `(size, 4)`, finite in
    the `present` labels (NaN in the others: a MODEL's absent labels)."""
    if with_bn and not _bn_path(prediction).is_file():
        return False
    try:
        array = np.load(prediction, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return (array.dtype == np.float32 and array.shape == (size, len(LABELS))
            and bool(np.isfinite(array[:, present]).all()))


@dataclass
class Device:
    """Where and how the networks run: the device, the autocast dtype (None: float32)."""

    device: torch.device
    dtype: torch.dtype | None

    @classmethod
    def make(cls, device: str | torch.device) -> "Device":
        resolved = resolve_device(device)
        bf16 = resolved.type == "cuda" and torch.cuda.is_bf16_supported()
        return cls(resolved, torch.bfloat16 if bf16 else None)

    @property
    def precision(self) -> str:
        return "32" if self.dtype is None else "bf16"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    def memory_format(self, config: dict) -> torch.memory_format:
        """Channels-last on CUDA where the norm prefers it (as training does); eager mode
        runs group-norm `auto` as the native kernel. Contiguous on the CPU (as training)."""
        from mrrobust.models import memory_format

        if self.device.type != "cuda":
            return torch.contiguous_format
        spec = config["model"]
        impl = "native" if spec["group_norm_impl"] == "auto" else spec["group_norm_impl"]
        return memory_format(spec["norm"], impl)


def _warn_other_store(runs: list[Run], store: Path, manifest: dict) -> None:
    """A RUN trained on a STORE of another scale or crop still runs (on this STORE's scale),
    with a warning: its inputs differ from what it was trained on."""
    for run in [run for run in runs if run.kind == "run"]:  # a MODEL names its own scale
        trained = (run.trained_on.get("scale"), run.trained_on.get("crop"))
        if trained != (manifest["scale"], manifest["crop"]):
            log.warning(f"RUN {run.name} was trained with (scale, crop) {trained}, STORE "
                        f"{store} has {(manifest['scale'], manifest['crop'])}; its inputs "
                        f"use this STORE's scale")


def _load_models(runs: list[Run], where: Device, modes: list[str], store_scale: float,
                 size: int, compile: bool = False) -> None:
    """Load each RUN's network once onto the device and choose its bn_modes (eval only
    without batch norm). A MODEL's program: contiguous, eval only (a program cannot adapt
    its normalisation: its other bn_modes are n/a), inputs for a STORE of `store_scale`
    and `size` x `size` images (a program of another fixed size is refused here)."""
    from mrrobust.analysis import has_batch_norm
    from mrrobust.models import exported, load

    for run in runs:
        if run.kind == "model":
            run.model, _ = exported.load_model(run.path, where.device, store_scale)
            if run.model.input_size not in (None, (size, size)):
                height, width = run.model.input_size
                raise MrRobustError(f"MODEL {run.given} takes {height}x{width} images, the STORE "
                                    f"has {size}x{size}; evaluate it on a STORE of its size")
            run.memory_format, run.batch_norm, run.modes = torch.contiguous_format, False, ("eval",)
            continue
        model, config = load(run.path, map_location=where.device)
        run.memory_format = where.memory_format(config)
        run.model = model.to(memory_format=run.memory_format)
        run.batch_norm = has_batch_norm(model)
        run.modes = tuple(m for m in modes if m == "eval" or run.batch_norm)
        run.compile = compile


def _slice_seeds(dataset, seed: int) -> torch.Tensor:
    """int64 `(N,)`: `slice_seed(slice_id, seed)` of every slice of the split, in its order."""
    from mrrobust.data.store import slice_seed

    return torch.tensor([slice_seed(i, seed) for i in dataset.slice_ids], dtype=torch.int64)


def _volume_levels(dataset, batch_size: int) -> torch.Tensor:
    """float64 `(N,)`: each slice's volume signal level (`artifacts.kspace.volume_level` over
    all the volume's slices in the split: a scan has one thermal noise sigma), passed to
    `corrupt(..., reference=)`; the same whichever batch holds which part of a volume. One
    pass over the split on the CPU, `batch_size` slices at a time (bounded memory)."""
    energy, count = {}, {}
    volumes = [i.rsplit(":", 1)[0] for i in dataset.slice_ids]
    for start in range(0, len(dataset), batch_size):
        images = torch.from_numpy(dataset.read(start, min(start + batch_size, len(dataset))))
        power = torch.view_as_real(images).double().square().sum(dim=(1, 2, 3))  # |x|^2 per slice
        for volume, p in zip(volumes[start:start + len(images)], power.tolist()):
            energy[volume] = energy.get(volume, 0.0) + p
            count[volume] = count.get(volume, 0) + images[0].numel()
    level = {v: math.sqrt(energy[v] / count[v]) for v in energy}  # = volume_level of the volume's slices
    return torch.tensor([level[v] for v in volumes], dtype=torch.float64)


def _stream(dataset, batch_size: int, device: torch.device, ahead: int = 1):
    """`(start, complex images (B, H, W) on `device`)` for the consecutive batches of the
    split, read from the STORE (`SliceDataset.read`) by a background thread
    (`readahead.prefetch`) `ahead` batches beyond the one being computed on. On CUDA each
    batch is read into one reused pinned buffer and copied on a side stream; at most
    `ahead + 2` batches are on the device at once, whatever the size of the split."""
    from mrrobust.data.readahead import prefetch

    cuda = device.type == "cuda"

    def produce():
        pinned, side = None, torch.cuda.Stream(device) if cuda else None
        for start in range(0, len(dataset), batch_size):
            stop = min(start + batch_size, len(dataset))
            with _stage("loading (background)"):
                if not cuda:
                    images = torch.from_numpy(dataset.read(start, stop))
                else:
                    if pinned is None or len(pinned) != stop - start:
                        pinned = torch.empty((stop - start, *dataset.image_shape),
                                             dtype=torch.complex64, pin_memory=True)
                    dataset.read(start, stop, out=pinned.numpy())
                    with torch.cuda.stream(side):
                        images = pinned.to(device, non_blocking=True)
                    side.synchronize()  # copied: the pinned buffer may be refilled
                    images.record_stream(torch.cuda.current_stream(device))
            yield start, images

    return prefetch(produce(), ahead)


def model_inputs(images: torch.Tensor, seeds: torch.Tensor, artifact: str, severity: int,
                 suite: str, levels: torch.Tensor | None = None) -> torch.Tensor:
    """Complex `(B, H, W)` (already divided by the STORE scale) -> the model input
    `(B, 1, H, W)` float32: the corrupted magnitude; "clean" (severity 0) is `|x|`. `levels`
    `(B,)`: each slice's volume signal level (noise sigma per volume); None: per slice."""
    from mrrobust.artifacts import corrupt

    if artifact == CLEAN:
        return images.abs()[:, None]
    return corrupt(images, artifact, severity, seeds, suite, reference=levels)[:, None]


def _probabilities(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Positive probabilities `(B, 4)` of `model` on inputs `x` `(B, 1, H, W)`."""
    from mrrobust.models import positive_probability

    return positive_probability(model(x))


class _Pass:
    """One (run, bn_mode) prediction of a cell, fed the cell's inputs batch by batch, in
    order: `rounds` passes over the split (2 for adapt: statistics, then predictions)."""

    def __init__(self, run: Run, mode: str, target: Path, where: Device, record_bn: bool,
                 bn_prior: float, batch_size: int):
        from mrrobust.adaptation import Tent
        from mrrobust.analysis import BatchNormAdapter, BNRecorder

        self.run, self.mode, self.target, self.where = run, mode, target, where
        self.batch_size = batch_size
        self.rounds, self.outputs, self.recorder = (2 if mode == "adapt" else 1), [], None
        self.record_bn = record_bn and mode == "eval" and run.batch_norm
        if mode == "tent":
            self.tent = Tent(run.model, autocast=where.autocast)
        elif mode == "adapt":
            self.adapter = BatchNormAdapter(run.model)
        elif mode == "prior":
            self.model = run.network("prior", bn_prior)
        elif run.batch_norm:  # the recorder's hooks: eager (`Run.network`)
            self.model, self.recorder = run.model, BNRecorder(run.model)
        else:
            self.model = run.network("eval", batch_size=batch_size)

    def feed(self, inputs: torch.Tensor, round: int) -> None:
        """Model inputs `(B, 1, H, W)` of the next batch, in pass `round`."""
        from contextlib import nullcontext

        x = inputs.contiguous(memory_format=self.run.memory_format)
        if self.mode == "tent":
            self.outputs.append(self.tent.step(x))
        elif self.mode == "adapt" and round == 0:
            with self.where.autocast():
                self.adapter.add(x)
        else:
            with torch.inference_mode(), self.where.autocast(), (self.recorder or nullcontext()):
                self.outputs.append(_probabilities(self.model, x))

    def end(self, round: int) -> None:
        if self.mode == "adapt" and round == 0:
            self.model = self.run.adapted(self.adapter.finish(), self.batch_size)

    def write(self) -> None:
        from mrrobust.data.store import save_npy_atomic, write_json_atomic

        predictions = torch.cat(self.outputs).float().cpu().numpy()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if self.record_bn:
            write_json_atomic(_bn_path(self.target), {"rows": self.recorder.rows()})
        save_npy_atomic(self.target, _finite(predictions, self.target, self.run.present))


def _predict_cell(passes: list[_Pass], dataset, artifact: str, severity: int, suite: str,
                  seeds: torch.Tensor, levels: torch.Tensor, batch_size: int,
                  where: Device) -> None:
    """Stream the split from the STORE, corrupt each batch once (`model_inputs`) and feed it
    to every pending pass of the cell; then write their files. AdaBN's second pass streams
    (and corrupts) the split again: the same inputs, from the same per-slice seeds."""
    from contextlib import closing

    for round in range(max(p.rounds for p in passes)):
        active = [p for p in passes if round < p.rounds]
        with closing(_stream(dataset, batch_size, where.device)) as batches:  # an error stops the thread
            while True:
                waited = time.perf_counter()
                start, images = next(batches, (None, None))
                _add_time("loading (wait)", time.perf_counter() - waited)
                if start is None:
                    break
                stop = start + len(images)
                with torch.no_grad(), _stage("artifact synthesis", where):
                    inputs = model_inputs(images, seeds[start:stop], artifact, severity, suite,
                                          levels[start:stop])
                for p in active:
                    with _stage(f"model passes: {p.run.norm}", where):
                        p.feed(inputs, round)
                    _count(p.run.norm, len(images))
                del images, inputs
        for p in active:
            p.end(round)
    with _stage("writing", where):
        for p in passes:
            p.write()


def _finite(predictions: np.ndarray, target: Path, present: np.ndarray) -> np.ndarray:
    """Refuse (before anything is written) predictions holding NaN or inf in the `present`
    labels; the absent labels of a MODEL are stored as NaN (n/a)."""
    if not np.isfinite(predictions[:, present]).all():
        raise MrRobustError(f"{target.parent.parent.name} ({target.parent.name}) gives NaN or inf on "
                            f"{target.stem}: check the RUN, or evaluate into another --out with "
                            f"--device cpu (float32)")
    return predictions


def _predict_grid(out: Path, runs: list[Run], grid: list[tuple[str, int]], dataset, suite: str,
                  batch_size: int, seed: int, where: Device, progress: bool, bn_prior: float,
                  root: str = PREDICTIONS, cells: set | None = None) -> tuple[int, int]:
    """Predict every unfinished (run, bn_mode, cell) of `dataset` into `out/<root>`, only the
    (run, artifact, severity) `cells` when given (a shard); returns (computed, reused) file
    counts. A cell none of whose runs is left is never corrupted."""
    from mrrobust.data.store import remove_temp_files
    from mrrobust.progress import progress_bar

    record_bn = root == PREDICTIONS
    for run in runs:
        for mode in run.modes:
            folder = out / root / run.name / mode
            if folder.is_dir():
                remove_temp_files(folder)  # what a killed evaluate left
    size, levels, computed, reused = len(dataset), None, 0, 0
    with progress_bar(progress) as bar:
        task = bar.add_task("evaluate" if record_bn else "thresholds", total=len(grid))
        for artifact, severity in grid:
            bar.update(task, description=f"{_cell_name(artifact, severity):<18}")
            pending = []
            for run in runs:
                if cells is not None and (run.name, artifact, severity) not in cells:
                    continue
                for mode in run.modes:
                    target = prediction_path(out, run.name, mode, artifact, severity, root)
                    with_bn = record_bn and run.batch_norm and mode == "eval"
                    if _finished(target, size, with_bn, run.present):
                        reused += 1
                    else:
                        pending.append((run, mode, target))
            if pending:
                if levels is None:  # read the split only when something is left to predict
                    with _stage("loading (volume levels)", where):
                        seeds, levels = _slice_seeds(dataset, seed), _volume_levels(dataset, batch_size)
                passes = [_Pass(run, mode, target, where, record_bn, bn_prior, batch_size)
                          for run, mode, target in pending]
                _predict_cell(passes, dataset, artifact, severity, suite, seeds, levels,
                              batch_size, where)
                computed += len(pending)
            bar.advance(task)
    return computed, reused


# ---- tables --------------------------------------------------------------------------------


def _text(value) -> str:
    """A CSV cell: floats in full precision (repr), NaN / None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)


def _csv_bytes(columns: tuple, rows: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_text(row[c]) for c in columns])
    return text.getvalue().encode()


def _load_scores(out: Path, present: dict, root: str = PREDICTIONS):
    """`scores(run, mode, artifact, severity) -> float64 (N, 4)` reading the prediction files
    (NaN in the labels a run lacks, `present` {run: (4,) bool})."""
    def scores(run: str, mode: str, artifact: str, severity: int) -> np.ndarray:
        path = prediction_path(out, run, mode, artifact, severity, root)
        try:
            values = np.load(path, allow_pickle=False).astype(np.float64)
        except (OSError, ValueError) as err:
            raise MrRobustError(f"{path}: missing or unreadable ({type(err).__name__}); re-run "
                                f"the same evaluate to redo that cell") from None
        if not np.isfinite(values[:, present[run]]).all():
            raise MrRobustError(f"{path}: non-finite predictions (the network gives NaN or inf "
                                f"on these inputs); check the RUN, or evaluate with --device cpu")
        return values
    return scores


def _operating_points(out: Path, runs: list[Run], grid, threshold_from: str,
                      threshold_targets) -> tuple[dict, list[dict]]:
    """Thresholds `{(run, mode, artifact, severity): (4,)}` and thresholds.csv rows: the RUN's
    own (clean validation) operating points, or the study's rule on the validation split
    corrupted like the cell (in the same bn_mode)."""
    from mrrobust.metrics import operating_point

    scores = _load_scores(out, {run.name: run.present for run in runs}, THRESHOLD_PREDICTIONS)
    thresholds, rows = {}, []
    for run in runs:
        for mode in run.modes:
            for artifact, severity in grid:
                if threshold_from == "clean-val":
                    values, rules = run.thresholds, run.rules
                else:  # a label the run lacks has no operating point (NaN, no rule)
                    val = scores(run.name, mode, artifact, severity)
                    points = [operating_point(threshold_targets[:, k], val[:, k])
                              if run.present[k] else {"threshold": math.nan, "rule": ""}
                              for k in range(len(LABELS))]
                    values = np.array([point["threshold"] for point in points], np.float64)
                    rules = [point["rule"] for point in points]
                thresholds[(run.name, mode, artifact, severity)] = values
                rows += [{"run": run.name, "bn_mode": mode, "artifact": artifact,
                          "severity": severity, "label": label, "threshold": float(values[k]),
                          "rule": rules[k]} for k, label in enumerate(LABELS)]
    return thresholds, rows


def _fallbacks(rows: list[dict], threshold_from: str) -> list[dict]:
    """Where the study's fallback rule (FPR > 0.25) chose the threshold; clean-val: once per run
    and label (bn_mode, artifact and severity "all": the same threshold everywhere)."""
    found = [row for row in rows if "fallback" in row["rule"]]
    if threshold_from == "clean-val":
        unique = {(row["run"], row["label"]) for row in found}
        return [{"run": run, "bn_mode": "all", "artifact": "all", "severity": "all", "label": label}
                for run, label in sorted(unique)]
    return [{k: row[k] for k in ("run", "bn_mode", "artifact", "severity", "label")} for row in found]


def _write_tables(out: Path, runs: list[Run], arms: list, reference: str | None, grid, targets,
                  volumes: list, seed: int, bootstrap: int, level: float, thresholds: dict) -> dict:
    """results.csv, arms.csv, arm_comparisons.csv and bn_shift.csv from the prediction files;
    returns the statistics summary for evaluation.json."""
    from mrrobust.arm_statistics import (ARM_COLUMNS, COMPARISON_COLUMNS, ArmRuns, ArmStatistics)
    from mrrobust.data.store import read_json, write_bytes_atomic

    by_name = {run.name: run for run in runs}
    arm_runs = [ArmRuns(arm.name, list(arm.runs),
                        [m for m in by_name[arm.runs[0]].modes
                         if all(m in by_name[r].modes for r in arm.runs)]) for arm in arms]
    artifacts = list(dict.fromkeys(a for a, s in grid if a != CLEAN))
    severities = list(dict.fromkeys(s for a, s in grid if a != CLEAN))
    present = {run.name: run.present for run in runs}
    statistics = ArmStatistics(
        targets, np.array(volumes), arm_runs,
        {run.name: (run.norm, run.seed) for run in runs}, reference=reference,
        replicates=bootstrap or SEED_ONLY_REPLICATES, resample_volumes=bootstrap > 0, seed=seed,
        level=level, run_modes={run.name: list(run.modes) for run in runs}, present=present)
    statistics.compute(artifacts, severities, _load_scores(out, present),
                       lambda run, mode, artifact, severity: thresholds[(run, mode, artifact, severity)])
    order = {(run.name, mode): i for i, (run, mode) in
             enumerate((run, mode) for run in runs for mode in run.modes)}
    cells = {cell: i for i, cell in enumerate(grid)}
    results = sorted(statistics.run_rows, key=lambda row: (
        order[(row["run"], row["bn_mode"])], cells[(row["artifact"], row["severity"])]))

    shifts = []
    for run in runs:
        if run.batch_norm and "eval" in run.modes:
            for artifact, severity in grid:
                path = _bn_path(prediction_path(out, run.name, "eval", artifact, severity))
                record = read_json(path)
                if record is None or not isinstance(record.get("rows"), list):
                    raise MrRobustError(f"{path}: unreadable; delete it and re-run the same "
                                        f"evaluate to redo that cell")
                shifts += [{"run": run.name, "artifact": artifact, "severity": severity, **row}
                           for row in record["rows"]]

    write_bytes_atomic(out / RESULTS_FILE, _csv_bytes(RESULT_COLUMNS, results))
    write_bytes_atomic(out / ARMS_FILE, _csv_bytes(ARM_COLUMNS, statistics.arm_rows))
    write_bytes_atomic(out / ARM_COMPARISONS_FILE,
                       _csv_bytes(COMPARISON_COLUMNS, statistics.comparison_rows))
    write_bytes_atomic(out / BN_SHIFT_FILE, _csv_bytes(BN_SHIFT_COLUMNS, shifts))
    return statistics.statistics


# ---- the entry point -----------------------------------------------------------------------


def evaluate(runs, store: Path, out: Path, *, arms: dict | None = None,
             reference_arm: str | None = None, suite: str = "mrrobust", artifacts=None,
             severities=(1, 2, 3, 4, 5), split: str = "test",
             bn_modes=("eval", "adapt", "prior", "tent"), bn_prior: float = 16.0,
             threshold_from: str = "clean-val", batch_size: int = 64, device: str = "auto",
             seed: int = 0, bootstrap: int = DEFAULT_BOOTSTRAP, level: float = 0.95,
             shard: str | None = None, compile: bool = False, progress: bool = True) -> dict:
    """Predict every RUN on every cell of the grid over `store`'s `split` and write the
    RESULTS folder `out` (module docstring; docs/API.md, RESULTS); resumes an interrupted
    evaluation.

    `arms` {name: [RUN folders]} names the arms (then `runs` may be empty); without it the RUNs
    are grouped by their configuration minus the seed (`arms.group_arms`). `reference_arm`
    (default: the batch arm, if any) is what every arm is compared with. `artifacts` None =
    every artifact of `suite`; `bootstrap` replicates of the two-level bootstrap (0: volumes not
    resampled, seeds alone); `seed` seeds the artifacts (per slice) and the bootstrap.
    `runs` may hold MODEL folders (models/exported.py: eval mode only, n/a in the labels they
    lack). `shard` "I/N" predicts only shard I of N of the (run, artifact, severity) cells
    (`mrrobust.shards`) and writes no tables: `write_tables` writes them once the shards are
    merged. Returns `{"out", "cells", "computed", "reused", "arms"}`, counting prediction
    files of the evaluated split (of the shard's cells)."""
    from mrrobust.arms import resolve_arms
    from mrrobust.provenance import environment, provenance, sizes
    from mrrobust.shards import parse_shard, shard_cells

    started = time.perf_counter()
    store, out = Path(store), Path(out)
    part = parse_shard(shard)
    run_paths, explicit = resolve_arms(runs, arms)
    runs = _read_runs(run_paths)
    planned = planned_settings(store, suite=suite, artifacts=artifacts, severities=severities,
                               split=split, bn_modes=bn_modes, bn_prior=bn_prior,
                               threshold_from=threshold_from, batch_size=batch_size,
                               device=device, seed=seed, bootstrap=bootstrap, level=level,
                               compile=compile)
    grid = grid_cells(planned["artifacts"], planned["severities"])
    arm_list, reference = _arms_of(runs, run_paths, explicit, reference_arm, bootstrap)
    cells = None if part is None else set(shard_cells([run.name for run in runs], grid, part))
    where = Device.make(device)
    dataset = _split_dataset(store, split)
    threshold_from = planned["threshold_from"]
    threshold_set = _split_dataset(store, THRESHOLD_SPLIT) if threshold_from == "corrupted-val" else None
    _warn_other_store(runs, store, dataset.manifest)
    _load_models(runs, where, planned["bn_modes"], dataset.scale, int(dataset.manifest["crop"]),
                 compile)
    bn_prior = planned["bn_prior"]
    settings = {"format": RESULTS_FORMAT, "version": RESULTS_VERSION,
                "runs": [run.record() for run in runs],
                "arms": [_arm_record(arm, {run.name: run for run in runs}) for arm in arm_list],
                "reference_arm": reference, **planned}
    if part is not None:  # recorded only when sharded: an unsharded folder still resumes
        settings["shard"] = part.record()
    _claim(out, settings)
    _write_slices(out, dataset)
    computed, reused = _predict_grid(out, runs, grid, dataset, suite, batch_size, seed, where,
                                     progress, bn_prior, cells=cells)
    if threshold_set is not None:
        _write_slices(out, threshold_set, THRESHOLD_SLICES_FILE)
        _predict_grid(out, runs, grid, threshold_set, suite, batch_size, seed, where, progress,
                      bn_prior, THRESHOLD_PREDICTIONS, cells=cells)
    from mrrobust.data.store import write_json_atomic

    summary = {"provenance": provenance(store, dataset.manifest),
               "sizes": sizes(store, split, FEW_POSITIVE_VOLUMES),
               "operating_points": {run.name: run.operating_points() for run in runs}}
    if part is None:
        with _stage("statistics"):
            summary.update(_finish(out, runs, arm_list, reference, grid, dataset.targets,
                                   [row["volume"] for row in dataset.rows], threshold_set,
                                   settings))
    summary["environment"] = environment(where, time.perf_counter() - started)
    write_json_atomic(out / SETTINGS_FILE, {**settings, **summary})
    return {"out": out, "cells": computed + reused, "computed": computed, "reused": reused,
            "arms": {arm.name: list(arm.runs) for arm in arm_list}}


def _finish(out: Path, runs: list[Run], arms: list, reference, grid, targets, volumes,
            threshold_set, settings: dict) -> dict:
    """thresholds.csv and the tables from the prediction files; the summary entries
    `statistics` and `thresholds` of evaluation.json. One code path for an evaluation and
    for merged shards, so both write the same bytes."""
    from mrrobust.data.store import write_bytes_atomic

    threshold_from = settings["threshold_from"]
    thresholds, threshold_rows = _operating_points(
        out, runs, grid, threshold_from, None if threshold_set is None else threshold_set.targets)
    write_bytes_atomic(out / THRESHOLDS_FILE, _csv_bytes(THRESHOLD_COLUMNS, threshold_rows))
    statistics = _write_tables(out, runs, arms, reference, grid, targets, volumes,
                               settings["seed"], settings["bootstrap"], settings["level"],
                               thresholds)
    return {"statistics": statistics,
            "thresholds": {"rule": threshold_from,
                           "fallback": _fallbacks(threshold_rows, threshold_from)}}


@dataclass
class _Slices:
    """A slices.csv read back: `targets` float32 `(N, 4)`, `rows` (dicts with `volume`)."""

    targets: np.ndarray
    rows: list


def _read_slices(path: Path) -> _Slices:
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        targets = np.array([[int(row[label]) for label in LABELS] for row in rows], np.float32)
    except (OSError, csv.Error, KeyError, TypeError, ValueError) as err:
        raise MrRobustError(f"{path}: missing or unreadable ({type(err).__name__}); merge the "
                            f"shards again into a new folder") from None
    return _Slices(targets.reshape(-1, len(LABELS)), rows)


def _run_of(record: dict, points: dict) -> Run:
    """A Run as the tables need it, from its evaluation.json entry and operating points."""
    name = str(record["name"])
    entry = points[name]
    labels = record.get("labels", list(LABELS))
    return Run(name=name, given=str(record.get("given", name)), path=Path(record["path"]),
               norm=str(record["norm"]), seed=int(record["seed"]),
               thresholds=np.array([math.nan if v is None else float(v)
                                    for v in entry["thresholds"]], np.float64),
               weights_digest=str(record["weights"]), trained_on={},
               batch_norm=bool(record["batch_norm"]), modes=tuple(record["bn_modes"]),
               kind=str(record.get("kind", "run")),
               present=np.array([label in labels for label in LABELS]),
               rules=[str(rule) for rule in entry["rules"]])


def write_tables(out: Path) -> dict:
    """Write thresholds.csv and the tables of a RESULTS folder whose prediction files are all
    there (merged shards, `shards.merge_shards`) from its evaluation.json alone: nothing is
    predicted, the STORE and the RUNs are not read. Returns the rewritten evaluation.json."""
    from mrrobust.arms import Arm
    from mrrobust.data.store import read_json, write_json_atomic

    out = Path(out)
    settings = read_json(out / SETTINGS_FILE)
    if settings is None or settings.get("format") != RESULTS_FORMAT:
        raise MrRobustError(f"{out} holds no readable {SETTINGS_FILE}; merge the shards again")
    try:
        runs = [_run_of(record, settings["operating_points"]) for record in settings["runs"]]
        arms = [Arm(str(arm["name"]), [str(r) for r in arm["runs"]],
                    dict(arm.get("configuration") or {}), bool(arm.get("explicit")))
                for arm in settings["arms"]]
        grid = grid_cells(list(settings["artifacts"]), [int(s) for s in settings["severities"]])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise MrRobustError(f"{out / SETTINGS_FILE} lacks what the tables need ({type(err).__name__}: "
                            f"{err}); re-run the shards with this version") from None
    dataset = _read_slices(out / SLICES_FILE)
    threshold_set = (_read_slices(out / THRESHOLD_SLICES_FILE)
                     if settings["threshold_from"] == "corrupted-val" else None)
    summary = _finish(out, runs, arms, settings.get("reference_arm"), grid, dataset.targets,
                      [row["volume"] for row in dataset.rows], threshold_set, settings)
    record = {**settings, **summary}
    write_json_atomic(out / SETTINGS_FILE, record)
    return record


def _arms_of(runs: list[Run], run_paths: list[Path], explicit: dict | None, reference_arm,
             bootstrap: int) -> tuple[list, str | None]:
    """The arms (explicit, or grouped by configuration) and the reference arm, checked."""
    from mrrobust.arms import Arm, default_reference, group_arms

    name_of = {path: run.name for path, run in zip(run_paths, runs)}
    if explicit:
        arms = [Arm(name, [name_of[path] for path in paths],
                    configuration={}, explicit=True) for name, paths in explicit.items()]
    else:  # a MODEL forms its own arm, named by its folder
        arms = group_arms({run.name: run.config for run in runs if run.kind == "run"})
        taken = {arm.name for arm in arms}
        for run in [run for run in runs if run.kind == "model"]:
            if run.name in taken:
                raise MrRobustError(f"MODEL {run.given} would form an arm named {run.name!r}, "
                                    f"which is already an arm; rename its folder or name the "
                                    f"arms with --arm NAME=FOLDER,...")
            arms.append(Arm(run.name, [run.name], configuration={"model": run.name}))
    norms = {arm.name: next(r.norm for r in runs if r.name == arm.runs[0]) for arm in arms}
    names = [arm.name for arm in arms]
    if reference_arm is None:
        reference = default_reference(arms, norms)
    elif reference_arm not in names:
        raise MrRobustError(f"--reference-arm {reference_arm!r} is not an arm ({', '.join(names)}); "
                            f"name one of them")
    else:
        reference = reference_arm
    if bootstrap == 0 and all(len(arm.runs) == 1 for arm in arms):
        raise MrRobustError("--bootstrap 0 with arms of one run each leaves nothing to resample "
                            "(neither test volumes nor seeds): no interval or test is possible; "
                            "pass --bootstrap 2000 or arms of several seeds")
    return arms, reference


def _arm_record(arm, by_name: dict) -> dict:
    from mrrobust.arms import arm_configuration

    members = [by_name[name] for name in arm.runs]
    norms = sorted({run.norm for run in members})
    return {"name": arm.name, "runs": list(arm.runs),
            "norm": norms[0] if len(norms) == 1 else "+".join(norms),
            "configuration": arm.configuration or arm_configuration(members[0].config),
            "seeds": [run.seed for run in members],
            "bn_modes": [m for m in members[0].modes if all(m in r.modes for r in members)],
            "explicit": arm.explicit,
            "training_variance": "measured" if len(members) > 1 else "unmeasured"}
