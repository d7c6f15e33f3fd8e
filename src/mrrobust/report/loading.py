"""Reading a RESULTS folder (`evaluate`'s output) into one `Results` object.

Reads `evaluation.json`, `results.csv` (per run), and when present `arms.csv`,
`arm_comparisons.csv`, `slices.csv`, `bn_shift.csv` and `predictions/` (reliability diagram
only). Never a GPU, never the STORE or the RUN folders. A RESULTS folder written before arms
existed (no `arms.csv`) is read with one arm per run, built from `results.csv`, so the
report still works on it (and says that training variance is unmeasured).
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mrrobust.data.annotations import LABELS
from mrrobust.errors import MrRobustError

RESULTS_COLUMNS = ("run", "norm", "seed", "bn_mode", "artifact", "severity", "label", "metric",
                   "value", "ci_low", "ci_high")
ARM_COLUMNS = ("arm", "bn_mode", "artifact", "severity", "label", "metric", "value", "ci_low",
               "ci_high", "runs")
ARM_COMPARISON_COLUMNS = ("arm_a", "arm_b", "bn_mode_a", "bn_mode_b", "artifact", "severity",
                          "label", "metric", "difference", "ci_low", "ci_high", "p_value",
                          "p_holm", "q_bh")
COMPARISON_KEY = ARM_COMPARISON_COLUMNS[:8]  # arm_a .. metric
BN_SHIFT_COLUMNS = ("run", "artifact", "severity", "layer", "depth", "channels", "mean_shift",
                    "var_log_ratio")
CLEAN = "clean"
ALL = "all"  # artifact and severity of the pooled rows (the primary endpoint)
MEAN = "mean"
NAN3 = (math.nan, math.nan, math.nan)
BN_MODE_ORDER = ("eval", "adapt", "prior", "tent")


def _float(text, path: Path, line: int) -> float:
    if text is None:
        raise MrRobustError(f"{path} line {line} has too few cells; re-run mrrobust evaluate")
    try:
        return float(text) if str(text).strip() else math.nan
    except ValueError:
        raise MrRobustError(f"{path} line {line}: {text!r} is not a number; re-run mrrobust evaluate") from None


def _severity(text, path: Path, line: int):
    """An integer severity, or "all" for pooled rows."""
    if str(text).strip() == ALL:
        return ALL
    value = _float(text, path, line)
    if not value.is_integer():
        raise MrRobustError(f"{path} line {line}: severity {text!r} is not an integer; re-run mrrobust evaluate")
    return int(value)


def read_csv(path: Path, columns: tuple[str, ...], numbers: tuple[str, ...] = ()) -> list[dict]:
    """Rows of `path` as dicts with `numbers` as floats ("" -> NaN) and `severity` as int (or
    "all"); [] when the file is absent; MrRobustError (one line) when a column is missing."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MrRobustError(f"{path} is unreadable ({err}); re-run mrrobust evaluate") from None
    missing = [c for c in columns if c not in (reader.fieldnames or columns)]
    if missing:
        raise MrRobustError(f"{path} lacks the column(s) {', '.join(missing)}; re-run mrrobust evaluate "
                            f"into {path.parent}")
    for line, row in enumerate(rows, start=2):
        for name in numbers:
            row[name] = _float(row[name], path, line)
        if "severity" in row:
            row["severity"] = _severity(row["severity"], path, line)
    return rows


def _members(text) -> list[str]:
    """The run names of an arms.csv `runs` cell ("a|b", "a;b", "a b"); [] for a bare count."""
    parts = [p for p in re.split(r"[|; ]+", str(text or "").strip()) if p]
    return [] if len(parts) == 1 and parts[0].isdigit() else parts


def _mode_order(modes) -> list[str]:
    modes = list(dict.fromkeys(modes))
    return sorted(modes, key=lambda m: (BN_MODE_ORDER.index(m) if m in BN_MODE_ORDER else len(BN_MODE_ORDER), m))


@dataclass
class Results:
    """A RESULTS folder in memory.

    `arm_cells[(arm, bn_mode, artifact, severity, label, metric)] = (value, ci_low, ci_high)`;
    `run_cells` likewise keyed by run; `arms[arm]` = its run names; `runs[run]` = {norm, seed,
    record (its evaluation.json entry, {} when absent)}; `artifacts` exclude "clean";
    `severities` are the corrupted ones (>= 1), ascending; `comparisons` are arm_comparisons.csv
    rows; `from_runs` is True when arms.csv was absent (one arm per run)."""

    folder: Path
    settings: dict
    runs: dict
    run_cells: dict
    arms: dict
    arm_cells: dict
    arm_runs: dict
    artifacts: list
    severities: list
    comparisons: list
    bn_shift: list
    slices: list
    from_runs: bool = False
    _modes: dict = field(default_factory=dict, repr=False)
    _compared: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for arm, mode, *_ in self.arm_cells:
            self._modes.setdefault(arm, set()).add(mode)
        self._compared = {tuple(row[c] for c in COMPARISON_KEY): row for row in self.comparisons}

    def modes_of(self, arm: str) -> list[str]:
        return _mode_order(self._modes.get(arm, ()))

    @property
    def bn_modes(self) -> list[str]:
        return _mode_order(m for modes in self._modes.values() for m in modes)

    def norm_of(self, arm: str) -> str:
        """The norm of the arm's runs ("mixed" when they differ, the arm name when unknown)."""
        norms = {self.runs[r]["norm"] for r in self.arms.get(arm, ()) if r in self.runs}
        return norms.pop() if len(norms) == 1 else ("mixed" if norms else arm)

    def seeds_of(self, arm: str) -> list:
        return [self.runs[r]["seed"] for r in self.arms.get(arm, ()) if r in self.runs]

    def cell(self, arm, bn_mode, artifact, severity, label=MEAN, metric="auc") -> tuple:
        """(value, ci_low, ci_high) of an arm; NaNs when absent."""
        return self.arm_cells.get((arm, bn_mode, artifact, severity, label, metric), NAN3)

    def run_cell(self, run, bn_mode, artifact, severity, label=MEAN, metric="auc") -> tuple:
        return self.run_cells.get((run, bn_mode, artifact, severity, label, metric), NAN3)

    def curve(self, arm, bn_mode, artifact, metric="auc") -> np.ndarray:
        """(3, 1 + S): value, low, high at severity 0 (clean) and each of `severities`."""
        points = [self.cell(arm, bn_mode, CLEAN, 0, metric=metric)]
        points += [self.cell(arm, bn_mode, artifact, s, metric=metric) for s in self.severities]
        return np.array(points, dtype=float).T

    def comparison(self, arm_a, arm_b, mode_a, mode_b, artifact, severity, label=MEAN, metric="auc") -> dict | None:
        """The arm_comparisons row of b - a (found either way round: a row of a - b is returned
        negated, its interval flipped; p-values are symmetric); None when absent."""
        row = self._compared.get((arm_a, arm_b, mode_a, mode_b, artifact, severity, label, metric))
        if row is not None:
            return row
        row = self._compared.get((arm_b, arm_a, mode_b, mode_a, artifact, severity, label, metric))
        if row is None:
            return None
        return dict(row, arm_a=arm_a, arm_b=arm_b, bn_mode_a=mode_a, bn_mode_b=mode_b,
                    difference=-row["difference"], ci_low=-row["ci_high"], ci_high=-row["ci_low"])

    def predictions(self, run: str, bn_mode: str, artifact: str, severity: int) -> np.ndarray | None:
        """The (N, 4) positive probabilities of one cell, None when the file is absent."""
        path = self.folder / "predictions" / run / bn_mode / f"{artifact}-{severity}.npy"
        if not path.is_file():
            return None
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise MrRobustError(f"{path} is unreadable ({err}); delete it and re-run the same evaluate") from None
        if values.ndim != 2 or values.shape != (len(self.slices), len(LABELS)):
            raise MrRobustError(f"{path} has shape {values.shape}, not ({len(self.slices)}, {len(LABELS)}) as "
                                f"slices.csv says; re-run mrrobust evaluate")
        return values.astype(np.float64)

    def targets(self) -> np.ndarray:
        """(N, 4) float targets of slices.csv (NaN where a cell is empty)."""
        return np.array([[_label_value(row.get(label)) for label in LABELS] for row in self.slices], dtype=float)


def _label_value(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _settings(results: Path) -> dict:
    path = results / "evaluation.json"
    try:
        settings = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MrRobustError(f"{path} is not valid JSON ({err}); re-run mrrobust evaluate") from None
    if not isinstance(settings, dict):
        raise MrRobustError(f"{path} holds no settings object; re-run mrrobust evaluate")
    from mrrobust.contracts import RESULTS_VERSION, read_results_settings

    if settings.get("version") == RESULTS_VERSION:  # the schema of the one validation layer;
        read_results_settings(results)               # older folders (no arms) are read as before
    return settings


def _arm_members(settings: dict, rows: list[dict]) -> dict:
    """{arm: [runs]} from evaluation.json's `arms` ({name: [runs]} or [{name, runs}]), else
    from arms.csv's `runs` cells."""
    recorded = settings.get("arms")
    if isinstance(recorded, dict):
        return {str(k): [str(r) for r in (v.get("runs", []) if isinstance(v, dict) else v)] for k, v in recorded.items()}
    if isinstance(recorded, list):
        return {str(a.get("name")): [str(r) for r in a.get("runs", [])] for a in recorded if isinstance(a, dict)}
    members = {}
    for row in rows:
        members.setdefault(row["arm"], [])
        for run in _members(row["runs"]):
            if run not in members[row["arm"]]:
                members[row["arm"]].append(run)
    return members


MERGED = "results"  # the folder of a REPORT that holds its merged shards


def gather_results(folders, out: Path) -> Path:
    """The RESULTS folder to report on: one whole evaluation as it is; the shard folders of one
    evaluation (`evaluate --shard I/N`) checked (`shards.check_shards`: refused when they come
    from different evaluations, overlap or miss a shard, naming it), merged into `out/results`
    and given their tables (`evaluation.write_tables`: nothing is predicted again). Everything is
    checked before anything is written."""
    from mrrobust.evaluation import SETTINGS_FILE, write_tables
    from mrrobust.shards import SHARD_KEY, check_merge_target, check_shards, merge_shards

    folders = [Path(folder) for folder in ([folders] if isinstance(folders, (str, Path)) else folders)]
    if not folders:
        raise MrRobustError("pass one RESULTS folder, or every shard folder of one evaluation")
    if len(folders) == 1:
        try:
            settings = json.loads((folders[0] / SETTINGS_FILE).read_text())
        except (OSError, ValueError):
            settings = None
        if not isinstance(settings, dict) or SHARD_KEY not in settings:
            return folders[0]  # a whole evaluation (load_results checks it)
    found = check_shards(folders)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MrRobustError(f"{out} exists and is not a folder; choose another --out")
    target = out / MERGED
    check_merge_target(found, target)
    merge_shards(found.folders, target)
    write_tables(target)
    return target


def load_results(results: Path) -> Results:
    """Read a RESULTS folder; MrRobustError (one line) when it is not one."""
    results = Path(results)
    for name in ("evaluation.json", "results.csv"):
        if not (results / name).is_file():
            raise MrRobustError(f"{results} is not a RESULTS folder (no {name}); run `mrrobust evaluate RUN... "
                                f"--data STORE --out {results}` first")
    settings = _settings(results)
    numbers = ("value", "ci_low", "ci_high")
    rows = read_csv(results / "results.csv", RESULTS_COLUMNS, numbers)
    if not rows:
        raise MrRobustError(f"{results / 'results.csv'} has no rows (an interrupted evaluate?); re-run the same "
                            f"mrrobust evaluate to finish it")
    records = {str(r.get("name")): r for r in settings.get("runs", []) if isinstance(r, dict)}
    runs, run_cells = {}, {}
    for r in rows:
        runs.setdefault(r["run"], {"norm": r["norm"], "seed": r["seed"], "record": records.get(r["run"], {})})
        run_cells[(r["run"], r["bn_mode"], r["artifact"], r["severity"], r["label"], r["metric"])] = (
            r["value"], r["ci_low"], r["ci_high"])
    arm_rows = read_csv(results / "arms.csv", ARM_COLUMNS, numbers)
    from_runs = not arm_rows
    if from_runs:  # an older RESULTS folder: every run is an arm of one seed
        arms = {run: [run] for run in runs}
        arm_cells, arm_runs = dict(run_cells), {key: 1 for key in run_cells}
    else:
        arms = _arm_members(settings, arm_rows)
        arm_cells = {(r["arm"], r["bn_mode"], r["artifact"], r["severity"], r["label"], r["metric"]):
                     (r["value"], r["ci_low"], r["ci_high"]) for r in arm_rows}
        arm_runs = {(r["arm"], r["bn_mode"], r["artifact"], r["severity"]): r["runs"] for r in arm_rows}
    comparisons = read_csv(results / "arm_comparisons.csv", ARM_COMPARISON_COLUMNS,
                           ("difference", "ci_low", "ci_high", "p_value", "p_holm", "q_bh"))
    corrupted = [r for r in rows if r["artifact"] not in (CLEAN, ALL)]
    bn_shift = read_csv(results / "bn_shift.csv", BN_SHIFT_COLUMNS, ("depth", "mean_shift", "var_log_ratio"))
    slices = read_csv(results / "slices.csv", ("volume",))
    return Results(results, settings, runs, run_cells, arms, arm_cells, arm_runs,
                   list(dict.fromkeys(r["artifact"] for r in corrupted)),
                   sorted({r["severity"] for r in corrupted}), comparisons, bn_shift, slices, from_runs)
