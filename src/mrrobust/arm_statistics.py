"""Arm estimates and arm comparisons by a two-level bootstrap (the tables arms.csv and
arm_comparisons.csv, plus the per-run rows of results.csv), from predictions in memory.

Replicate b (1..B) draws the test volumes once with replacement (`resampling.volume_counts`),
shared by every run, arm, bn_mode and cell, so every difference is paired on the test data;
and, per arm and independently, the arm's k runs with replacement (k draws). A run's metric in b
is its metric on the volume-resampled test set; the arm's is the mean over all k runs plus
sqrt(k / (k - 1)) times the deviation of the drawn runs' mean from it (so the seed level's
bootstrap variance is the unbiased s^2 / k instead of (k - 1) s^2 / k^2: with 3 seeds the plain
resampling under-covers, benchmarks/coverage.py), clipped to the metric's range [0, 1] per label
(the arm's mean label is the mean of its clipped labels).
Replicate 0 is the point estimate: every volume once, every run once. Every derived quantity
(means over cells, CE, retained fraction, gains) is computed per replicate from these, so its
interval and p-value come from the same replicates. Intervals are percentile intervals of the
finite replicates, except those of sensitivity, specificity and balanced accuracy (runs in
results.csv and arms in arms.csv, volumes resampled): a cluster-adjusted Wilson interval
(`wilson_intervals`: the Wilson score interval at the effective sample size given by the
replicates' variance), because with ~15 positive volumes and a sensitivity near 0.9 a run's
percentile interval covered 0.86 at nominal 0.95 (benchmarks/coverage.py, 30 volumes).
Differences (arm_comparisons.csv) keep percentile intervals. p-values are two-sided: twice the
share of finite replicates on the other side of 0 (0 included), floored at 1 / (finite
replicates). Both are NaN when fewer than half the replicates are finite. A ratio (retained
fraction, relative CE, share of the loss recovered) is NaN, never a huge number, unless its
denominator's interval lies wholly above its null (clean AUC above 0.5, the reference's drop
above 0, the loss above 0).

Labels: the four of LABELS and `mean`, the mean over the FIXED label set (the labels with a
positive and a negative slice in the evaluated split that every evaluated model predicts: a
MODEL lacking a label, `present`, leaves it out of every arm's mean, so all arms average the
same labels and their means stay comparable); a replicate where one of them is undefined has
a NaN mean and is dropped (counted in `statistics["mean_label"]`). A label a run lacks is NaN
(n/a) in every one of its metrics.

Families for Holm and Benjamini-Hochberg (docs/API.md, RESULTS): `cell` rows (a named artifact
and an integer severity >= 1) per (arm_a, arm_b, bn_mode_a, bn_mode_b, label, metric) over the
cells; `artifact` rows (a named artifact, severity "all") per the same key over the artifacts;
`overall` rows (artifact "clean" or "all") per (kind, bn_mode_a, bn_mode_b, artifact, severity,
label, metric) over the compared arm pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable

import numpy as np

from mrrobust.data.annotations import LABELS
from mrrobust.multiplicity import benjamini_hochberg, holm
from mrrobust.resampling import CELL_METRICS, ECE_BINS, CellStatistics, volume_counts

MEAN = "mean"
ALL = "all"
CLEAN = "clean"
COLUMN_LABELS = (*LABELS, MEAN)
RUN_METRICS = ("auc", "sensitivity", "specificity", "balanced_accuracy")  # results.csv
PROPORTIONS = ("sensitivity", "specificity", "balanced_accuracy")  # Wilson intervals (volumes resampled)
MEAN_ONLY = ("ce", "relative_ce", "degradation", "mce", "relative_mce", "recovered")
DEGRADATION_BASE = 2.0 / 3.0
SEED_STREAM = 0x5EED  # the seed draws' generator: default_rng([seed, SEED_STREAM])
ADAPTATION = "adaptation"
VERSUS_REFERENCE = "reference"
ARM_COLUMNS = ("arm", "bn_mode", "artifact", "severity", "label", "metric", "value", "ci_low",
               "ci_high", "runs")
COMPARISON_COLUMNS = ("arm_a", "arm_b", "bn_mode_a", "bn_mode_b", "artifact", "severity", "label",
                      "metric", "difference", "ci_low", "ci_high", "p_value", "p_holm", "q_bh")
RUN_COLUMNS = ("run", "norm", "seed", "bn_mode", "artifact", "severity", "label", "metric",
               "value", "ci_low", "ci_high")


@dataclass
class ArmRuns:
    """An arm as the statistics see it: its name, run names and the bn_modes all runs have."""

    name: str
    runs: list[str]
    modes: list[str]


# ---- replicate summaries --------------------------------------------------------------------


def _finite_enough(replicates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finite mask `(B, C)` and per column whether at least half (and one) are finite."""
    finite = np.isfinite(replicates)
    count = finite.sum(axis=0)
    return finite, (count > 0) & (2 * count >= replicates.shape[0])


def intervals(replicates: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per column of `(B, C)` replicates over its finite entries (numpy's
    default linear interpolation, as `np.nanpercentile`), vectorised over the columns; NaN where
    fewer than half are finite."""
    replicates = np.asarray(replicates, dtype=np.float64)
    low = np.full(replicates.shape[1], math.nan)
    high = low.copy()
    if replicates.shape[0] == 0:
        return low, high
    finite, usable = _finite_enough(replicates)
    # sort each column as a contiguous row (the finite values first)
    ordered = np.sort(np.ascontiguousarray(np.where(finite, replicates, np.inf).T), axis=1)
    count = finite.sum(axis=0)
    columns = np.arange(replicates.shape[1])
    for out, q in ((low, 0.5 * (1 - level)), (high, 0.5 * (1 + level))):
        position = q * np.maximum(count - 1, 0)
        below = np.floor(position).astype(np.int64)
        above = np.minimum(below + 1, np.maximum(count - 1, 0))
        lower, upper = ordered[columns, below], ordered[columns, above]
        fraction = position - below
        with np.errstate(invalid="ignore"):
            value = np.where(fraction > 0, lower + fraction * (upper - lower), lower)
        out[usable] = value[usable]
    return low, high


def wilson_intervals(point: np.ndarray, replicates: np.ndarray, sizes: np.ndarray, level: float,
                     volumes: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster-adjusted Wilson score interval per column of a proportion (or a mean of
    proportions) estimated from clustered slices: the Wilson score interval (Wilson 1927, JASA
    22:209) at the effective sample size n_eff = p (1 - p) / v, i.e. n divided by Kish's design
    effect v / (p (1 - p) / n); p the point `(C,)`, v the variance of the finite bootstrap
    `replicates` `(B, C)` times V / (V - 1) (V = `volumes`: the bootstrap variance of a mean over
    V resampled volumes is (V - 1) / V of the unbiased one). n_eff is at most `sizes` `(C,)` (the
    slices the estimate is over: design effect >= 1) and equals it where v is 0 (p = 0 or 1).
    Unlike a percentile interval it reaches away from the boundary when p is near 0 or 1.
    NaN where p is NaN or fewer than half the replicates are finite."""
    point = np.asarray(point, dtype=np.float64)
    replicates = np.asarray(replicates, dtype=np.float64)
    low = np.full(point.shape, math.nan)
    high = low.copy()
    if replicates.shape[0] < 2:
        return low, high
    finite, usable = _finite_enough(replicates)
    if finite.all():
        variance = replicates.var(axis=0, ddof=1)
    else:
        count = finite.sum(axis=0)
        mean = np.where(finite, replicates, 0.0).sum(axis=0) / np.maximum(count, 1)
        variance = (np.where(finite, replicates - mean, 0.0) ** 2).sum(axis=0) / np.maximum(count - 1, 1)
    variance *= volumes / (volumes - 1) if volumes > 1 else 1.0
    spread = point * (1 - point)
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.minimum(np.where(variance > 0, spread / variance, np.inf), sizes)
        z2 = NormalDist().inv_cdf(0.5 * (1 + level)) ** 2
        centre = (point + z2 / (2 * n)) / (1 + z2 / n)
        half = math.sqrt(z2) / (1 + z2 / n) * np.sqrt(spread / n + z2 / (4 * n * n))
    ok = usable & np.isfinite(point) & (n > 0)
    low[ok] = np.maximum(centre - half, 0.0)[ok]
    high[ok] = np.minimum(centre + half, 1.0)[ok]
    return low, high


def bootstrap_p(point: np.ndarray, replicates: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p per column: 2 x the share of finite replicates on the other side
    of 0 from `point` (0 included), floored at 1 / (finite replicates), at most 1; 1 where the
    point is 0, NaN where it is NaN or fewer than half the replicates are finite."""
    point = np.asarray(point, dtype=np.float64)
    p = np.full(point.shape, math.nan)
    if replicates.shape[0] == 0:
        return p
    finite, usable = _finite_enough(replicates)
    count = np.maximum(finite.sum(axis=0), 1)
    other = np.where(point > 0, (replicates <= 0) & finite, (replicates >= 0) & finite).sum(axis=0)
    raw = np.minimum(1.0, np.maximum(2.0 * other / count, 1.0 / count))
    ok = usable & np.isfinite(point)
    p[ok] = np.where(point[ok] == 0, 1.0, raw[ok])
    return p


def _not_above(replicates: np.ndarray, value: float, level: float, degenerate: bool = False) -> np.ndarray:
    """Per column whether the interval of rows 1.. fails to lie wholly above `value` (it includes
    or lies below it); without (or with `degenerate`, constant) replicates whether the point
    (row 0) is not above `value`. Where True, a ratio over `replicates - value` is undefined."""
    if degenerate or replicates.shape[0] <= 1:
        return ~(replicates[0] > value)
    low, _ = intervals(replicates[1:], level)
    return ~(low > value)


# ---- the computation ------------------------------------------------------------------------


class ArmStatistics:
    """Build with the split's targets `(N, 4)`, volume ids `(N,)`, the arms, run norms and
    seeds, and the replicate settings; `compute(...)` fills `arm_rows`, `comparison_rows`,
    `run_rows` and `statistics`."""

    def __init__(self, targets, volumes, arms: list[ArmRuns], run_info: dict[str, tuple[str, int]],
                 *, reference: str | None, replicates: int, resample_volumes: bool, seed: int,
                 level: float, run_modes: dict[str, list[str]] | None = None,
                 present: dict[str, np.ndarray] | None = None):
        self.targets = np.asarray(targets).astype(bool)
        self.arms, self.run_info, self.reference, self.level = arms, run_info, reference, level
        self.resample_volumes = resample_volumes
        # `present` {run: (4,) bool}: the labels a run predicts (default: all four)
        self.present = {run: np.ones(len(LABELS), bool) if (present or {}).get(run) is None
                        else np.asarray(present[run], bool) for run in run_info}
        self.labels = [k for k in range(len(LABELS))
                       if self.targets[:, k].any() and not self.targets[:, k].all()
                       and all(mask[k] for mask in self.present.values())]
        self.sizes = _independent_sizes(self.targets, self.labels)
        if resample_volumes:
            counts, self.volume = volume_counts(np.asarray(volumes), replicates, seed)
        else:
            _, self.volume = np.unique(np.asarray(volumes), return_inverse=True)
            self.volume = self.volume.ravel()
            counts = np.ones((replicates, int(self.volume.max()) + 1))
        self.count = counts.shape[1]
        self.counts = np.vstack([np.ones((1, self.count)), counts])  # (R, V), row 0 the full data
        rng = np.random.default_rng([seed, SEED_STREAM])
        self.seed_weights = {}
        for arm in arms:
            k = len(arm.runs)
            draws = rng.integers(0, k, size=(replicates, k))
            drawn = np.stack([(draws == r).sum(axis=1) for r in range(k)], axis=1).astype(np.float64)
            # deviations of the drawn mean from the all-runs mean scaled by sqrt(k / (k - 1)):
            # the bootstrap variance of a mean of k runs is then s^2 / k, not (k - 1) s^2 / k^2
            scale = math.sqrt(k / (k - 1)) if k > 1 else 1.0
            weights = 1.0 / k + scale * (drawn / k - 1.0 / k)
            self.seed_weights[arm.name] = np.vstack([np.full((1, k), 1.0 / k), weights])  # (R, k)
        # bn_modes of a run beyond its arm's (a mixed explicit arm): results.csv rows only
        self.extra_modes = {run: [m for m in modes if m not in arm.modes]
                            for arm in arms for run in arm.runs
                            for modes in [(run_modes or {}).get(run, arm.modes)]}
        self.arm_rows, self.comparison_rows, self.run_rows = [], [], []
        self._p_rows = []  # (row, family key)
        self.dropped = {}

    # -- per cell

    def _with_mean(self, values: np.ndarray) -> np.ndarray:
        """`(R, 4)` -> `(R, 5)`: the mean over the fixed labels appended (NaN if any is NaN)."""
        mean = values[:, self.labels].mean(axis=1) if self.labels else np.full(values.shape[0], math.nan)
        return np.concatenate([values, mean[:, None]], axis=1)

    def _run_cell(self, run: str, scores: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
        """{metric: (R, 5)} of one run in one cell; NaN in the labels the run lacks."""
        absent = ~self.present[run]
        if absent.any():  # finite stand-ins for the computation, then undefined
            scores = np.where(absent[None, :], 0.0, scores)
            thresholds = np.where(absent, math.nan, thresholds)
        statistics = CellStatistics.of(self.targets, scores, thresholds, self.volume, self.count)
        replicates = statistics.replicates(self.counts)
        for values in replicates.values():
            values[:, absent] = math.nan
        return {metric: self._with_mean(values) for metric, values in replicates.items()}

    def _cell(self, artifact: str, severity: int, scores: Callable, thresholds: Callable) -> dict:
        """{arm: {mode: {metric: (R, 5)}}} for one cell; run rows written on the way."""
        values = {}
        for arm in self.arms:
            values[arm.name] = {}
            for mode in arm.modes:
                per_run = []
                for run in arm.runs:
                    run_values = self._run_cell(run, scores(run, mode, artifact, severity),
                                                thresholds(run, mode, artifact, severity))
                    self._write_run_rows(run, mode, artifact, severity, run_values)
                    per_run.append(run_values)
                weights = self.seed_weights[arm.name]
                # every cell metric lies in [0, 1]; the scaled seed deviations may overshoot it:
                # each label is clipped, then the mean label is the mean of the clipped labels
                values[arm.name][mode] = {
                    metric: self._with_mean(np.clip(np.einsum(
                        "rk,krc->rc", weights, np.stack([v[metric][:, :len(LABELS)] for v in per_run])), 0.0, 1.0))
                    for metric in CELL_METRICS}
            for run in arm.runs:
                for mode in self.extra_modes[run]:
                    self._write_run_rows(run, mode, artifact, severity, self._run_cell(
                        run, scores(run, mode, artifact, severity), thresholds(run, mode, artifact, severity)))
        return values

    def _intervals(self, stacked: np.ndarray, names, wilson: bool) -> tuple[np.ndarray, np.ndarray]:
        """Intervals of `(R, len(names) * 5)` side-by-side metrics (row 0 the point, then the
        replicates): percentile; with `wilson` the columns of PROPORTIONS the cluster-adjusted
        Wilson interval (`wilson_intervals`, sizes `self.sizes`)."""
        lows, highs = intervals(stacked[1:], self.level)
        proportions = [i for i, metric in enumerate(names) if metric in PROPORTIONS] if wilson else []
        if proportions:
            width = len(COLUMN_LABELS)
            columns = np.concatenate([np.arange(i * width, (i + 1) * width) for i in proportions])
            sizes = np.concatenate([self.sizes[names[i]] for i in proportions])
            lows[columns], highs[columns] = wilson_intervals(
                stacked[0, columns], stacked[1:, columns], sizes, self.level, self.count)
        return lows, highs

    def _write_run_rows(self, run, mode, artifact, severity, run_values) -> None:
        norm, seed = self.run_info[run]
        stacked = np.concatenate([run_values[metric] for metric in RUN_METRICS], axis=1)
        if self.resample_volumes:
            lows, highs = self._intervals(stacked, RUN_METRICS, wilson=True)
        else:
            lows = highs = np.full(stacked.shape[1], math.nan)
        width = len(COLUMN_LABELS)
        for m, metric in enumerate(RUN_METRICS):
            replicates = run_values[metric]
            low, high = lows[m * width:(m + 1) * width], highs[m * width:(m + 1) * width]
            if artifact == CLEAN and metric not in self.dropped:
                self.dropped[metric] = int(np.isnan(replicates[1:, -1]).sum())
            for c, label in enumerate(COLUMN_LABELS):
                self.run_rows.append({"run": run, "norm": norm, "seed": seed, "bn_mode": mode,
                                      "artifact": artifact, "severity": severity, "label": label,
                                      "metric": metric, "value": float(replicates[0, c]),
                                      "ci_low": low[c], "ci_high": high[c]})

    # -- emission

    def _fixed(self, arm: ArmRuns) -> bool:
        """Whether the arm's replicates are all its point value (one run, volumes not resampled)."""
        return len(arm.runs) == 1 and not self.resample_volumes

    def _emit_arm(self, arm: ArmRuns, mode: str, artifact, severity, metrics: dict) -> None:
        single = self._fixed(arm)
        names = list(metrics)
        stacked = np.concatenate([metrics[m] for m in names], axis=1)
        lows, highs = self._intervals(stacked, names, wilson=self.resample_volumes)
        width = len(COLUMN_LABELS)
        for i, metric in enumerate(names):
            for c, label in enumerate(COLUMN_LABELS):
                if metric in MEAN_ONLY and label != MEAN:
                    continue
                j = i * width + c
                self.arm_rows.append({"arm": arm.name, "bn_mode": mode, "artifact": artifact,
                                      "severity": severity, "label": label, "metric": metric,
                                      "value": float(stacked[0, j]),
                                      "ci_low": math.nan if single else float(lows[j]),
                                      "ci_high": math.nan if single else float(highs[j]),
                                      "runs": len(arm.runs)})

    def _emit_differences(self, kind, a, b, mode_a, mode_b, artifact, severity,
                          differences: dict) -> None:
        """Comparison rows of every metric in `differences` {metric: (R, 5) b - a}."""
        names = list(differences)
        stacked = np.concatenate([differences[m] for m in names], axis=1)
        lows, highs = intervals(stacked[1:], self.level)
        ps = bootstrap_p(stacked[0], stacked[1:])
        if isinstance(severity, int) and severity >= 1 and artifact not in (CLEAN, ALL):
            scope = ("cell", a, b, mode_a, mode_b)
        elif artifact not in (CLEAN, ALL):
            scope = ("artifact", a, b, mode_a, mode_b)
        else:
            scope = ("overall", kind, mode_a, mode_b, artifact, severity)
        width = len(COLUMN_LABELS)
        for i, metric in enumerate(names):
            for c, label in enumerate(COLUMN_LABELS):
                if metric in MEAN_ONLY and label != MEAN:
                    continue
                j = i * width + c
                row = {"arm_a": a, "arm_b": b, "bn_mode_a": mode_a, "bn_mode_b": mode_b,
                       "artifact": artifact, "severity": severity, "label": label,
                       "metric": metric, "difference": float(stacked[0, j]),
                       "ci_low": float(lows[j]), "ci_high": float(highs[j]),
                       "p_value": float(ps[j]), "p_holm": math.nan, "q_bh": math.nan}
                self.comparison_rows.append(row)
                self._p_rows.append((row, (*scope, label, metric)))

    def _emit(self, artifact, severity, values: dict, extras: dict) -> None:
        """arms.csv rows and both kinds of comparisons for one row position. `values`
        {arm: {mode: {metric: (R, 5)}}}; `extras` {arm: {mode: {metric: (R, 5)}}} adaptation-only
        metrics (clean_gain, artifact_gain, recovered)."""
        for arm in self.arms:
            for mode in arm.modes:
                self._emit_arm(arm, mode, artifact, severity, values[arm.name][mode])
        reference = self.reference
        if reference is not None:
            ref = next(a for a in self.arms if a.name == reference)
            for arm in self.arms:
                if arm.name == reference:
                    continue
                for mode in [m for m in ref.modes if m in arm.modes]:
                    self._emit_differences(
                        VERSUS_REFERENCE, reference, arm.name, mode, mode, artifact, severity,
                        {metric: replicates - values[reference][mode][metric]
                         for metric, replicates in values[arm.name][mode].items()})
        for arm in self.arms:
            for mode in [m for m in arm.modes if m != "eval"]:
                base = values[arm.name]["eval"]
                differences = {metric: replicates - base[metric]
                               for metric, replicates in values[arm.name][mode].items()}
                differences.update(extras.get(arm.name, {}).get(mode, {}))
                self._emit_differences(ADAPTATION, arm.name, arm.name, "eval", mode, artifact,
                                       severity, differences)

    # -- derived quantities

    def _nan_where(self, replicates: np.ndarray, undefined: np.ndarray) -> np.ndarray:
        out = replicates.copy()
        out[:, undefined] = math.nan
        return out

    def _derive(self, values: dict, clean: dict) -> tuple[dict, dict]:
        """Add `retained` to `values` of a corrupted position and build the adaptation extras
        (artifact_gain, recovered) against the clean values."""
        extras = {}
        for arm in self.arms:
            for mode in arm.modes:
                auc, clean_auc = values[arm.name][mode]["auc"], clean[arm.name][mode]["auc"]
                room = clean_auc - 0.5
                values[arm.name][mode]["retained"] = self._nan_where(
                    _ratio(auc - 0.5, room), _not_above(clean_auc, 0.5, self.level, self._fixed(arm)))
            base, clean_base = values[arm.name]["eval"]["auc"], clean[arm.name]["eval"]["auc"]
            loss = clean_base - base
            for mode in [m for m in arm.modes if m != "eval"]:
                gain = values[arm.name][mode]["auc"] - base
                clean_gain = clean[arm.name][mode]["auc"] - clean_base
                extras.setdefault(arm.name, {})[mode] = {
                    "artifact_gain": gain - clean_gain,
                    "recovered": self._nan_where(_ratio(gain, loss),
                                                 _not_above(loss, 0.0, self.level, self._fixed(arm)))}
        return values, extras

    def compute(self, artifacts: list[str], severities: list[int], scores: Callable,
                thresholds: Callable) -> None:
        """Every position: the clean cell, each cell, each artifact over severities, all."""
        clean = self._cell(CLEAN, 0, scores, thresholds)
        extras = {arm.name: {mode: {"clean_gain": clean[arm.name][mode]["auc"] - clean[arm.name]["eval"]["auc"]}
                             for mode in arm.modes if mode != "eval"} for arm in self.arms}
        self._emit(CLEAN, 0, clean, extras)
        weights = DEGRADATION_BASE ** np.asarray(severities, dtype=np.float64)
        total, per_artifact = None, {}
        for artifact in artifacts:
            summed = None
            degradation = {arm.name: {mode: 0.0 for mode in arm.modes} for arm in self.arms}
            for level, severity in zip(weights, severities):
                values = self._cell(artifact, severity, scores, thresholds)
                for arm in self.arms:
                    for mode in arm.modes:
                        degradation[arm.name][mode] = degradation[arm.name][mode] + level * (
                            clean[arm.name][mode]["auc"] - values[arm.name][mode]["auc"])
                summed = _add(summed, values)
                self._emit(artifact, severity, *self._derive(values, clean))
            mean = _scale(summed, 1.0 / len(severities))
            total = _add(total, mean)
            per_artifact[artifact] = mean
            for arm in self.arms:
                for mode in arm.modes:
                    mean[arm.name][mode]["degradation"] = degradation[arm.name][mode] / weights.sum()
            self._emit(artifact, ALL, *self._with_ce(artifact, *self._derive(mean, clean), clean))
        if total is not None:
            overall = _scale(total, 1.0 / len(artifacts))
            values, extras = self._derive(overall, clean)
            self._emit(ALL, ALL, self._with_mce(values, per_artifact), extras)
        self._adjust()

    def _with_ce(self, artifact, values: dict, extras: dict, clean: dict) -> tuple[dict, dict]:
        """CE and relative CE of `artifact` (mean-label AUCs over its severities) vs the
        reference arm in bn_mode eval."""
        if self.reference is None:
            return values, extras
        ref_auc = values[self.reference]["eval"]["auc"]
        ref_drop = clean[self.reference]["eval"]["auc"] - ref_auc
        reference = next(arm for arm in self.arms if arm.name == self.reference)
        undefined = _not_above(ref_drop, 0.0, self.level, self._fixed(reference))
        for arm in self.arms:
            for mode in arm.modes:
                auc = values[arm.name][mode]["auc"]
                values[arm.name][mode]["ce"] = _ratio(1.0 - auc, 1.0 - ref_auc)
                values[arm.name][mode]["relative_ce"] = self._nan_where(
                    _ratio(clean[arm.name][mode]["auc"] - auc, ref_drop), undefined)
        return values, extras

    def _with_mce(self, values: dict, per_artifact: dict) -> dict:
        if self.reference is None:
            return values
        for arm in self.arms:
            for mode in arm.modes:
                for metric, target in (("ce", "mce"), ("relative_ce", "relative_mce")):
                    # averaging EVERY artifact: one undefined artifact leaves the mean undefined
                    values[arm.name][mode][target] = np.mean(
                        [per_artifact[a][arm.name][mode][metric] for a in per_artifact], axis=0)
        return values

    def _adjust(self) -> None:
        """p_holm and q_bh within each family."""
        families: dict[tuple, list[dict]] = {}
        for row, key in self._p_rows:
            families.setdefault(key, []).append(row)
        for rows in families.values():
            p = np.array([row["p_value"] for row in rows])
            for row, adjusted, q in zip(rows, holm(p), benjamini_hochberg(p)):
                row["p_holm"], row["q_bh"] = float(adjusted), float(q)

    @property
    def statistics(self) -> dict:
        replicates = self.counts.shape[0] - 1
        return {"replicates": replicates, "minimum_p": 1.0 / replicates if replicates else None,
                "volumes_resampled": self.resample_volumes,
                "seeds_resampled": any(len(arm.runs) > 1 for arm in self.arms),
                "level": self.level, "ece_bins": ECE_BINS,
                "mean_label": {"labels": [LABELS[k] for k in self.labels],
                               "resamples_dropped": dict(self.dropped), "of": replicates},
                "families": FAMILIES, "intervals": INTERVALS}


FAMILIES = ("Holm (family-wise) and Benjamini-Hochberg (false discovery rate) within families: "
            "cell rows (named artifact, severity >= 1) per arm_a, arm_b, bn_mode_a, bn_mode_b, "
            "label, metric over the artifact x severity cells; artifact rows (named artifact, "
            "severity all) per the same key over the artifacts; overall rows (artifact clean or "
            "all) per comparison kind, bn_mode_a, bn_mode_b, artifact, severity, label, metric over "
            "the arm pairs (the primary endpoint: over the arms compared with the reference)")


INTERVALS = ("percentile intervals of the bootstrap replicates, except sensitivity, specificity "
             "and balanced accuracy of runs and arms with volumes resampled: the Wilson score "
             "interval at the effective sample size p(1 - p) / v (v the replicates' variance x "
             "V / (V - 1), V test volumes), at most the slices the estimate is over")


def _independent_sizes(targets: np.ndarray, labels: list[int]) -> dict[str, np.ndarray]:
    """{metric of PROPORTIONS: `(5,)` per column label}: the largest sample size of its Wilson
    interval, the effective size the estimate would have were its slices independent.
    Sensitivity: the positives P; specificity: the negatives Q; a mean of m proportions of sizes
    n_i (balanced accuracy, the label mean over `labels`): m^2 / sum(1 / n_i), the size whose
    binomial variance equals the mean's at equal proportions."""
    positives = targets.sum(axis=0).astype(np.float64)
    classes = np.stack([positives, targets.shape[0] - positives])  # (2, 4)

    def mean_of(sizes: np.ndarray) -> float:
        with np.errstate(divide="ignore"):
            return sizes.size**2 / np.sum(1.0 / sizes) if sizes.size else math.nan

    parts = {"sensitivity": classes[:1], "specificity": classes[1:], "balanced_accuracy": classes}
    return {metric: np.append([mean_of(label) for label in parts[metric].T],
                              mean_of(parts[metric][:, labels].ravel())) for metric in PROPORTIONS}


def _ratio(numerator, denominator) -> np.ndarray:
    numerator, denominator = np.broadcast_arrays(numerator, denominator)
    out = np.full(numerator.shape, math.nan)
    np.divide(numerator, denominator, out=out, where=(denominator != 0) & np.isfinite(denominator))
    return out


def _add(total, values):
    if total is None:
        return {a: {m: {k: v for k, v in metrics.items() if k in CELL_METRICS}
                    for m, metrics in modes.items()} for a, modes in values.items()}
    return {a: {m: {k: total[a][m][k] + v for k, v in metrics.items() if k in CELL_METRICS}
                for m, metrics in modes.items()} for a, modes in values.items()}


def _scale(values, factor):
    return {a: {m: {k: v * factor for k, v in metrics.items() if k in CELL_METRICS}
                for m, metrics in modes.items()} for a, modes in values.items()}
