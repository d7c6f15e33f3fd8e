"""Evaluate RUNs over the artifact grid of a STORE split and write a RESULTS folder.

`evaluate(runs, store, out, ...)` predicts every cell of the grid: the clean split
(artifact "clean", severity 0) and every (artifact, severity), for every RUN, in bn_mode
"eval" (the trained network as it is) and "adapt" (AdaBN: `analysis.adapt_batch_norm` on
that cell's corrupted split, then predict; runs with batch norm only).

RESULTS folder:
  evaluation.json      the settings (written first; another evaluate with other settings
                       into this folder is refused, the same settings resume). Each RUN is
                       recorded with a digest of its weights, so a RUN retrained since is
                       refused too. batch_size, device and precision are recorded but may
                       change on a resume (e.g. a smaller batch after running out of GPU
                       memory); adapt predictions depend slightly on the batch composition.
  slices.csv           the evaluated split: slice_id, volume, slice, labels; the row order
                       of every prediction file
  predictions/<run>/<bn_mode>/<artifact>-<severity>.npy
                       float32 (N, 4) positive probabilities (LABELS order); one file per
                       cell, written atomically: the unit of resume
  predictions/<run>/eval/<artifact>-<severity>.bn.json
                       batch-norm runs: `analysis.BNRecorder` rows of that prediction pass
                       (written before the .npy, so a finished cell has both)
  results.csv          run, norm, seed, bn_mode, artifact, severity, label, metric, value,
                       ci_low, ci_high (long form; label includes "mean")
  comparisons.csv      run_a, run_b, bn_mode_a, bn_mode_b, artifact, severity, label, metric,
                       difference (b - a), ci_low, ci_high, p_value
  bn_shift.csv         run, artifact, severity, layer, depth, channels, mean_shift,
                       var_log_ratio (batch-norm runs, eval mode)

The three tables are recomputed from the prediction files at the end of every evaluate, so
a resumed evaluation writes the same bytes as an uninterrupted one. An undefined number
(AUC of a one-class label, no bootstrap) is an empty cell.

Inputs are built as in training: the complex image divided by the STORE scale, corrupted
on the device (`artifacts.corrupt`, the slice's seed `slice_seed(slice_id, seed)`, so every
model sees identical inputs), magnitude `(B, 1, H, W)`. Each cell's corrupted split is made
once and fed to every run. On CUDA the forward runs under bf16 autocast in the run's
memory format; on the CPU in float32.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from mrrobust.data.annotations import LABELS
from mrrobust.errors import MrRobustError

log = logging.getLogger("mrrobust.evaluation")

RESULTS_FORMAT = "mrrobust-results"
RESULTS_VERSION = 1
SETTINGS_FILE = "evaluation.json"
SLICES_FILE = "slices.csv"
PREDICTIONS = "predictions"
RESULTS_FILE = "results.csv"
COMPARISONS_FILE = "comparisons.csv"
BN_SHIFT_FILE = "bn_shift.csv"
BN_SUFFIX = ".bn.json"
CLEAN = "clean"
BN_MODES = ("eval", "adapt")
RUN_FILES = ("config.json", "model.safetensors", "operating_points.json")
SLICE_COLUMNS = ("slice_id", "volume", "slice", *LABELS)
RESULT_COLUMNS = ("run", "norm", "seed", "bn_mode", "artifact", "severity", "label", "metric",
                  "value", "ci_low", "ci_high")
COMPARISON_COLUMNS = ("run_a", "run_b", "bn_mode_a", "bn_mode_b", "artifact", "severity",
                      "label", "metric", "difference", "ci_low", "ci_high", "p_value")
BN_SHIFT_COLUMNS = ("run", "artifact", "severity", "layer", "depth", "channels", "mean_shift",
                    "var_log_ratio")
# evaluation.json entries that do not change the numbers enough to refuse a resume
UNCOMPARED = ("batch_size", "device")  # precision is compared: one table never mixes bf16 and fp32


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
    batch_norm: bool = False
    modes: tuple = ()
    model: torch.nn.Module | None = field(default=None, repr=False)
    memory_format: torch.memory_format = torch.contiguous_format

    def record(self) -> dict:
        return {"name": self.name, "given": self.given, "path": str(self.path),
                "norm": self.norm, "seed": self.seed, "batch_norm": self.batch_norm,
                "weights": self.weights_digest}


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _thresholds(path: Path) -> np.ndarray:
    """The per-label thresholds of a RUN's operating_points.json, (4,) float64, NaN for null."""
    try:
        labels = json.loads(path.read_text())["labels"]
        values = [labels[label]["threshold"] for label in LABELS]
        return np.array([math.nan if v is None else float(v) for v in values], np.float64)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MrRobustError(f"{path}: unreadable operating points ({type(err).__name__}: {err}); "
                            f"re-run `mrrobust train` for this RUN") from None


def _read_runs(runs) -> list[Run]:
    """Check the RUN folders (exist, complete, unique names) and read what the tables need."""
    from mrrobust.models import read_config

    if isinstance(runs, (str, Path)) or not list(runs):
        raise MrRobustError("evaluate needs a list of one or more RUN folders (`mrrobust train` "
                            "output); pass at least one --run")
    found = []
    for given in runs:
        path = Path(given).resolve()
        if not path.is_dir():
            raise MrRobustError(f"RUN folder {given} does not exist; train it with "
                                f"`mrrobust train --out {given}`")
        missing = [name for name in RUN_FILES if not (path / name).is_file()]
        if missing:
            raise MrRobustError(f"RUN {given} lacks {', '.join(missing)}: it is not a finished "
                                f"run; finish it with `mrrobust train --resume --out {given}`")
        config = read_config(path)
        found.append(Run(name=path.name, given=str(given), path=path,
                         norm=str(config["model"]["norm"]),
                         seed=int(config.get("training", {}).get("seed", 0)),
                         thresholds=_thresholds(path / "operating_points.json"),
                         weights_digest=_file_digest(path / "model.safetensors"),
                         trained_on=dict(config.get("store", {}))))
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
    modes = [bn_modes] if isinstance(bn_modes, str) else list(dict.fromkeys(bn_modes))
    unknown = [m for m in modes if m not in BN_MODES]
    if not modes or unknown or "eval" not in modes:
        raise MrRobustError(f"bn_modes {modes} must be eval, or eval and adapt (adapt is "
                            f"compared with eval, and runs without batch norm have only eval)")
    return [m for m in BN_MODES if m in modes]


def check_settings(*, suite: str = "mrrobust", artifacts=None, severities=(1, 2, 3, 4, 5),
                   bn_modes=("eval", "adapt"), batch_size: int = 64, device: str = "auto",
                   seed: int = 0, bootstrap: int = 1000, level: float = 0.95, **_) -> None:
    """Refuse bad `evaluate` settings before any work (`benchmark` calls it before training)."""
    _grid_axes(suite, artifacts, severities)
    _check_modes(bn_modes)
    _check_numbers(batch_size, seed, bootstrap, level)
    resolve_device(device)


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
    """The settings a resume must match: everything but the paths as given and UNCOMPARED."""
    same = {k: v for k, v in settings.items() if k not in UNCOMPARED}
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


def _write_slices(out: Path, dataset) -> None:
    """slices.csv; refused when a resumed folder's differs (the STORE's split changed)."""
    from mrrobust.data.store import write_bytes_atomic

    path, data = out / SLICES_FILE, _slices_csv(dataset)
    if path.is_file() and path.read_bytes() != data:
        raise MrRobustError(f"{path} differs from the split of the STORE now (it was prepared "
                            f"again?); evaluate into another --out")
    if not path.is_file():
        write_bytes_atomic(path, data)


# ---- prediction ----------------------------------------------------------------------------


def _cell_name(artifact: str, severity: int) -> str:
    return f"{artifact}-{severity}"


def prediction_path(out: Path, run: str, bn_mode: str, artifact: str, severity: int) -> Path:
    """`out/predictions/<run>/<bn_mode>/<artifact>-<severity>.npy`."""
    return Path(out) / PREDICTIONS / run / bn_mode / f"{_cell_name(artifact, severity)}.npy"


def _bn_path(prediction: Path) -> Path:
    return prediction.with_name(prediction.stem + BN_SUFFIX)


def _finished(prediction: Path, size: int, with_bn: bool) -> bool:
    """Whether a cell's files exist and its predictions are float32 `(size, 4)`."""
    if with_bn and not _bn_path(prediction).is_file():
        return False
    try:
        array = np.load(prediction, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return array.dtype == np.float32 and array.shape == (size, len(LABELS)) and bool(np.isfinite(array).all())


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
    for run in runs:
        trained = (run.trained_on.get("scale"), run.trained_on.get("crop"))
        if trained != (manifest["scale"], manifest["crop"]):
            log.warning(f"RUN {run.name} was trained with (scale, crop) {trained}, STORE "
                        f"{store} has {(manifest['scale'], manifest['crop'])}; its inputs "
                        f"use this STORE's scale")


def _load_models(runs: list[Run], where: Device, modes: list[str]) -> None:
    """Load each RUN's network once onto the device and choose its bn_modes."""
    from mrrobust.analysis import has_batch_norm
    from mrrobust.models import load

    for run in runs:
        model, config = load(run.path, map_location=where.device)
        run.memory_format = where.memory_format(config)
        run.model = model.to(memory_format=run.memory_format)
        run.batch_norm = has_batch_norm(model)
        run.modes = tuple(m for m in modes if m == "eval" or run.batch_norm)


def _clean_batches(dataset, batch_size: int, seed: int, device: torch.device) -> list:
    """The split as `[(complex images (B, H, W) on the device, seeds int64 (B,) on the CPU)]`."""
    from torch.utils.data import DataLoader

    from mrrobust.data.store import collate_slices, slice_seed

    batches = []
    for images, _, ids in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_slices):
        seeds = torch.tensor([slice_seed(i, seed) for i in ids], dtype=torch.int64)
        batches.append((images.to(device), seeds))
    return batches


def model_inputs(images: torch.Tensor, seeds: torch.Tensor, artifact: str, severity: int,
                 suite: str) -> torch.Tensor:
    """Complex `(B, H, W)` (already divided by the STORE scale) -> the model input
    `(B, 1, H, W)` float32: the corrupted magnitude; "clean" (severity 0) is `|x|`."""
    from mrrobust.artifacts import corrupt

    if artifact == CLEAN:
        return images.abs()[:, None]
    return corrupt(images, artifact, severity, seeds, suite)[:, None]


def _predict(model: torch.nn.Module, inputs: list[torch.Tensor], run: Run,
             where: Device) -> np.ndarray:
    """Positive probabilities float32 `(N, 4)` of `model` (eval mode) over the batches."""
    from mrrobust.models import positive_probability

    with torch.inference_mode(), where.autocast():
        probabilities = [positive_probability(model(x.contiguous(memory_format=run.memory_format)))
                         for x in inputs]
    return torch.cat(probabilities).float().cpu().numpy()


def _predict_cell(run: Run, mode: str, inputs: list[torch.Tensor], where: Device,
                  target: Path) -> None:
    """Predict one cell and write its files: eval mode records the batch-norm statistics;
    adapt mode re-estimates them on `inputs` first (AdaBN)."""
    from mrrobust.analysis import BNRecorder, adapt_batch_norm
    from mrrobust.data.store import save_npy_atomic, write_json_atomic

    target.parent.mkdir(parents=True, exist_ok=True)
    if mode == "adapt":
        with where.autocast():
            model = adapt_batch_norm(run.model, (x.contiguous(memory_format=run.memory_format)
                                                 for x in inputs))
        save_npy_atomic(target, _finite(_predict(model, inputs, run, where), target))
        return
    recorder = BNRecorder(run.model)
    with recorder:
        predictions = _finite(_predict(run.model, inputs, run, where), target)
    if run.batch_norm:
        write_json_atomic(_bn_path(target), {"rows": recorder.rows()})
    save_npy_atomic(target, predictions)


def _finite(predictions: np.ndarray, target: Path) -> np.ndarray:
    """Refuse (before anything is written) predictions holding NaN or inf."""
    if not np.isfinite(predictions).all():
        raise MrRobustError(f"{target.parent.parent.name} ({target.parent.name}) gives NaN or inf on "
                            f"{target.stem}: check the RUN, or evaluate into another --out with "
                            f"--device cpu (float32)")
    return predictions


def _predict_grid(out: Path, runs: list[Run], grid: list[tuple[str, int]], dataset, suite: str,
                  batch_size: int, seed: int, where: Device, progress: bool) -> tuple[int, int]:
    """Predict every unfinished (run, bn_mode, cell); returns (computed, reused) file counts."""
    from mrrobust.data.store import remove_temp_files

    for run in runs:
        for mode in run.modes:
            folder = out / PREDICTIONS / run.name / mode
            if folder.is_dir():
                remove_temp_files(folder)  # what a killed evaluate left
    size, clean, computed, reused = len(dataset), None, 0, 0
    from mrrobust.progress import progress_bar

    with progress_bar(progress) as bar:
        task = bar.add_task("evaluate", total=len(grid))
        for artifact, severity in grid:
            bar.update(task, description=f"{_cell_name(artifact, severity):<18}")
            pending = []
            for run in runs:
                for mode in run.modes:
                    target = prediction_path(out, run.name, mode, artifact, severity)
                    if _finished(target, size, with_bn=run.batch_norm and mode == "eval"):
                        reused += 1
                    else:
                        pending.append((run, mode, target))
            if pending:
                if clean is None:  # read the split only when something is left to predict
                    clean = _clean_batches(dataset, batch_size, seed, where.device)
                with torch.no_grad():
                    inputs = [model_inputs(images, seeds, artifact, severity, suite)
                              for images, seeds in clean]
                for run, mode, target in pending:
                    _predict_cell(run, mode, inputs, where, target)
                computed += len(pending)
                del inputs
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


def _write_tables(out: Path, runs: list[Run], grid: list[tuple[str, int]], dataset, seed: int,
                  bootstrap: int, level: float) -> None:
    """results.csv, comparisons.csv and bn_shift.csv from the prediction files."""
    from mrrobust.data.store import read_json, write_bytes_atomic
    from mrrobust.metrics import cell_metrics, cluster_weights, paired_difference

    targets = dataset.targets.astype(np.float64)
    volumes = np.array([row["volume"] for row in dataset.rows])
    weights = cluster_weights(volumes, bootstrap, seed) if bootstrap else None

    def scores(run: Run, mode: str, artifact: str, severity: int) -> np.ndarray:
        path = prediction_path(out, run.name, mode, artifact, severity)
        values = np.load(path, allow_pickle=False).astype(np.float64)
        if not np.isfinite(values).all():
            raise MrRobustError(f"{path}: non-finite predictions (the network gives NaN or inf "
                                f"on these inputs); check the RUN, or evaluate with --device cpu")
        return values

    results, comparisons, shifts = [], [], []
    for run in runs:
        for mode in run.modes:
            for artifact, severity in grid:
                key = {"run": run.name, "norm": run.norm, "seed": run.seed, "bn_mode": mode,
                       "artifact": artifact, "severity": severity}
                results += [{**key, **row} for row in cell_metrics(
                    targets, scores(run, mode, artifact, severity), run.thresholds, weights,
                    level=level)]
        if run.batch_norm and "eval" in run.modes:
            for artifact, severity in grid:
                path = _bn_path(prediction_path(out, run.name, "eval", artifact, severity))
                record = read_json(path)
                if record is None or not isinstance(record.get("rows"), list):
                    raise MrRobustError(f"{path}: unreadable; delete it and re-run the same "
                                        f"evaluate to redo that cell")
                shifts += [{"run": run.name, "artifact": artifact, "severity": severity, **row}
                           for row in record["rows"]]

    pairs = [((a, "eval"), (b, "eval")) for a, b in combinations(runs, 2)
             if a.seed == b.seed and "eval" in a.modes and "eval" in b.modes]
    pairs += [((run, "eval"), (run, "adapt")) for run in runs
              if {"eval", "adapt"} <= set(run.modes)]
    for (run_a, mode_a), (run_b, mode_b) in pairs:
        for artifact, severity in grid:
            key = {"run_a": run_a.name, "run_b": run_b.name, "bn_mode_a": mode_a,
                   "bn_mode_b": mode_b, "artifact": artifact, "severity": severity}
            comparisons += [{**key, **row} for row in _paired(
                targets, scores(run_a, mode_a, artifact, severity),
                scores(run_b, mode_b, artifact, severity), weights, level, paired_difference)]

    write_bytes_atomic(out / RESULTS_FILE, _csv_bytes(RESULT_COLUMNS, results))
    write_bytes_atomic(out / COMPARISONS_FILE, _csv_bytes(COMPARISON_COLUMNS, comparisons))
    write_bytes_atomic(out / BN_SHIFT_FILE, _csv_bytes(BN_SHIFT_COLUMNS, shifts))


def _paired(targets, scores_a, scores_b, weights, level, paired_difference) -> list[dict]:
    """`metrics.paired_difference` rows; without bootstrap weights the AUC difference alone
    (b - a) with empty CI and p-value."""
    if weights is not None:
        return paired_difference(targets, scores_a, scores_b, weights, level=level)
    from mrrobust.metrics import cell_metrics

    no_threshold = np.full(len(LABELS), math.nan)
    a, b = (cell_metrics(targets, s, no_threshold, None, level=level)
            for s in (scores_a, scores_b))
    return [{"label": ra["label"], "metric": "auc", "difference": rb["value"] - ra["value"],
             "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
            for ra, rb in zip(a, b) if ra["metric"] == "auc"]


# ---- the entry point -----------------------------------------------------------------------


def evaluate(runs: list[Path], store: Path, out: Path, *, suite: str = "mrrobust",
             artifacts=None, severities=(1, 2, 3, 4, 5), split: str = "test",
             bn_modes=("eval", "adapt"), batch_size: int = 64, device: str = "auto",
             seed: int = 0, bootstrap: int = 1000, level: float = 0.95,
             progress: bool = True) -> dict:
    """Predict every RUN on every cell of the grid over `store`'s `split` and write the
    RESULTS folder `out` (module docstring); resumes an interrupted evaluation.

    `artifacts` None = every artifact of `suite`; `bootstrap` resamples of volumes for the
    CIs (0: none); `seed` seeds the artifacts (per slice) and the bootstrap. Returns
    `{"out", "cells", "computed", "reused"}`, counting prediction files (one per run,
    bn_mode, artifact and severity)."""
    store, out = Path(store), Path(out)
    runs = _read_runs(runs)
    names, levels = _grid_axes(suite, artifacts, severities)
    grid = grid_cells(names, levels)
    modes = _check_modes(bn_modes)
    _check_numbers(batch_size, seed, bootstrap, level)
    where = Device.make(device)
    dataset = _split_dataset(store, split)
    _warn_other_store(runs, store, dataset.manifest)
    _load_models(runs, where, modes)
    settings = {"format": RESULTS_FORMAT, "version": RESULTS_VERSION,
                "runs": [run.record() for run in runs], "store": str(store.resolve()),
                "split": split, "suite": suite, "artifacts": names, "severities": levels,
                "bn_modes": modes, "seed": int(seed), "bootstrap": int(bootstrap),
                "level": float(level), "batch_size": int(batch_size), "device": str(where.device),
                "precision": where.precision}
    _claim(out, settings)
    _write_slices(out, dataset)
    computed, reused = _predict_grid(out, runs, grid, dataset, suite, batch_size, seed, where,
                                     progress)
    _write_tables(out, runs, grid, dataset, seed, bootstrap, level)
    return {"out": out, "cells": computed + reused, "computed": computed, "reused": reused}
