"""Numbers the report derives from a `Results` (no resampling here: every interval comes
from `evaluate`'s arms.csv / arm_comparisons.csv; a number computed here from point values
has no interval and is shown without one).

Guard rails (issue 8): `not_learned` (a run whose clean mean AUC interval includes 0.5, or
whose validation AUC peaked in its first epochs), `retained` (the fraction of the room
above chance kept under an artifact), `positive_volumes` (per label and split, with the
under-powered labels), `adaptation_gain` (clean gain + artifact-specific gain) and
`recovery` (the fraction of batch norm's artifact loss an adaptation wins back).
"""

from __future__ import annotations

import math

import numpy as np

from mrrobust.data.annotations import LABELS
from mrrobust.report.loading import ALL, CLEAN, MEAN, NAN3, Results

CHANCE = 0.5
EARLY_FRACTION = 0.25  # "peaked in its first epochs": best epoch within the first quarter of training
MIN_EPOCHS_JUDGED = 4  # a curve shorter than this cannot show an early peak
MIN_POSITIVE_VOLUMES = 10  # fewer positive test volumes: the label's intervals under-cover
ALPHA = 0.05
# arms.csv metric names of derived quantities (docs/API.md, RESULTS)
RETAINED = "retained"
ECE = "ece"
CE, MCE, RELATIVE_CE, RELATIVE_MCE, DEGRADATION = "ce", "mce", "relative_ce", "relative_mce", "degradation"
RECOVERED, ARTIFACT_GAIN, CLEAN_GAIN = "recovered", "artifact_gain", "clean_gain"  # arm_comparisons.csv


def nanmean(values) -> float:
    """Mean of the finite values; NaN (no warning) when there are none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def includes(interval, value: float) -> bool:
    """True when (_, low, high) contains `value`; False when the interval is undefined."""
    _, low, high = interval
    return bool(np.isfinite(low) and np.isfinite(high) and low <= value <= high)


def excludes(interval, value: float) -> bool:
    _, low, high = interval
    return bool(np.isfinite(low) and np.isfinite(high) and not low <= value <= high)


def reference_arm(res: Results, wanted: str | None) -> str | None:
    """The reference arm: evaluate's `reference_arm` when `wanted` is None or names it (or its
    norm); else the arm named `wanted`, else the first arm whose runs all have norm `wanted`,
    else the first arm (None when there are no arms)."""
    recorded = res.settings.get("reference_arm")
    if recorded in res.arms and (wanted is None or wanted in (recorded, res.norm_of(recorded))):
        return recorded
    wanted = "batch" if wanted is None else wanted
    if wanted in res.arms:
        return wanted
    for arm in res.arms:
        if res.norm_of(arm) == wanted:
            return arm
    return next(iter(res.arms), None)


# ---- guard rail: did the model learn? ---------------------------------------------------


def training_curve(record: dict) -> dict:
    """A run's evaluation.json `curve` record {epochs, best_epoch (0-based), peaked_early};
    `peaked_early` derived from the other two when absent; {} when not recorded."""
    curve = record.get("curve")
    if not isinstance(curve, dict):
        return {}
    epochs, best = curve.get("epochs"), curve.get("best_epoch")
    if "peaked_early" not in curve and isinstance(epochs, int) and isinstance(best, int):
        curve = dict(curve, peaked_early=early_peak(best, epochs))
    return curve


def early_peak(best_epoch: int, epochs: int) -> bool:
    """The best epoch (0-based) lies in the first quarter of the epochs run (epoch 0 always
    counts), for runs of at least 4 epochs (evaluate's rule, docs/API.md)."""
    return epochs >= MIN_EPOCHS_JUDGED and best_epoch < max(1, int(epochs * EARLY_FRACTION))


def run_not_learned(res: Results, run: str) -> list[str]:
    """Why `run` did not learn (empty: it did): its clean mean AUC interval includes 0.5 (or lies
    below it), or its validation AUC peaked in its first epochs."""
    reasons = []
    value, low, high = res.run_cell(run, "eval", CLEAN, 0)
    if np.isfinite(low) and low <= CHANCE:
        reasons.append(f"clean mean AUC {value:.3f} [{low:.3f}, {high:.3f}] includes chance (0.5)")
    elif not np.isfinite(low) and np.isfinite(value) and value <= CHANCE:
        reasons.append(f"clean mean AUC {value:.3f} is at or below chance (0.5)")
    curve = training_curve(res.runs.get(run, {}).get("record", {}))
    if curve.get("peaked_early"):
        reasons.append(f"validation AUC peaked at epoch {int(curve.get('best_epoch', 0)) + 1} of {curve.get('epochs', '?')}")
    return reasons


def not_learned(res: Results) -> dict:
    """{arm: [reasons]} for every arm with a run that did not learn, or whose own clean mean
    AUC interval includes 0.5. No robustness claim is made from these arms."""
    flagged = {}
    for arm, members in res.arms.items():
        reasons = [f"{run}: {why}" for run in members for why in run_not_learned(res, run)]
        clean = res.cell(arm, "eval", CLEAN, 0)
        if not res.from_runs and np.isfinite(clean[1]) and clean[1] <= CHANCE:
            reasons.append(f"arm clean mean AUC {clean[0]:.3f} [{clean[1]:.3f}, {clean[2]:.3f}] includes chance")
        if reasons:
            flagged[arm] = reasons
    return flagged


# ---- guard rail: retained room above chance ---------------------------------------------


def retained(res: Results, arm: str, mode: str, artifact: str, severity) -> tuple:
    """(AUC_s - 0.5) / (AUC_clean - 0.5): arms.csv's `retained` row (with its interval; NaN
    where the arm's clean interval includes 0.5); for a RESULTS folder without arms.csv from
    the point values, without interval, NaN when the clean AUC is at or below chance.
    `severity` "all" = the mean over the severities."""
    if not res.from_runs:  # evaluate's row: NaN where the clean interval includes 0.5
        return res.cell(arm, mode, artifact, severity, MEAN, RETAINED)
    clean = res.cell(arm, mode, CLEAN, 0)[0]
    if not np.isfinite(clean) or clean <= CHANCE:
        return NAN3
    severities = res.severities if severity == ALL else [severity]
    auc = nanmean([res.cell(arm, mode, artifact, s)[0] for s in severities])
    return ((auc - CHANCE) / (clean - CHANCE), math.nan, math.nan)


# ---- positives ------------------------------------------------------------------------


def positive_volumes(res: Results) -> dict:
    """{split: {label: positive volumes}}: evaluation.json's `sizes` (every split of the STORE)
    when recorded, else counted in slices.csv for the evaluated split (a volume is positive for
    a label when one of its slices is)."""
    sizes = res.settings.get("sizes")
    if isinstance(sizes, dict) and sizes:
        return {str(split): {label: int((v.get("positive_volumes") or {}).get(label, 0)) for label in LABELS}
                for split, v in sizes.items() if isinstance(v, dict)}
    if not res.slices:
        return {}
    positive = {label: set() for label in LABELS}
    for row in res.slices:
        for label in LABELS:
            if str(row.get(label, "")).strip() in ("1", "1.0"):
                positive[label].add(row["volume"])
    return {res.settings.get("split", "test"): {label: len(v) for label, v in positive.items()}}


def underpowered(res: Results) -> dict:
    """{label: positive volumes} for the labels with fewer than 10 in the evaluated split."""
    counts = positive_volumes(res).get(res.settings.get("split", "test"), {})
    return {label: n for label, n in counts.items() if n < MIN_POSITIVE_VOLUMES}


# ---- adaptation --------------------------------------------------------------------------


def _cells(res: Results, artifact: str) -> list[tuple]:
    """The (artifact, severity) cells of `artifact` ("all": of every artifact)."""
    return [(a, s) for a in (res.artifacts if artifact == ALL else [artifact]) for s in res.severities]


def adaptation_gain(res: Results, arm: str, mode: str, artifact: str) -> dict:
    """An adaptation `mode`'s gain over eval for `arm` under `artifact` (mean over the
    severities; "all": over every corrupted cell), each (value, low, high): total = AUC_mode - AUC_eval; clean = the same on
    clean slices; specific = total - clean (what the adaptation does for the artifact beyond
    what it does to clean images). From arm_comparisons.csv (`auc`, `clean_gain`,
    `artifact_gain`, with intervals); from point values, without interval, where absent."""
    def compared(artifact_, severity, *metrics):
        for metric in metrics:
            row = res.comparison(arm, arm, "eval", mode, artifact_, severity, metric=metric)
            if row is not None and np.isfinite(row["difference"]):
                return (row["difference"], row["ci_low"], row["ci_high"])
        return None

    cells = _cells(res, artifact)
    clean = compared(CLEAN, 0, CLEAN_GAIN, "auc") or (
        res.cell(arm, mode, CLEAN, 0)[0] - res.cell(arm, "eval", CLEAN, 0)[0], math.nan, math.nan)
    total = compared(artifact, ALL, "auc") or (
        nanmean([res.cell(arm, mode, a, s)[0] - res.cell(arm, "eval", a, s)[0] for a, s in cells]), math.nan, math.nan)
    specific = compared(artifact, ALL, ARTIFACT_GAIN) or (total[0] - clean[0], math.nan, math.nan)
    return {"total": total, "clean": clean, "specific": specific}


def recovery(res: Results, arm: str, mode: str, artifact: str) -> tuple:
    """The share of `arm`'s eval-mode artifact loss that `mode` wins back, sum_s (AUC_s(mode) -
    AUC_s(eval)) / sum_s (AUC_clean(eval) - AUC_s(eval)): arm_comparisons.csv's `recovered` row
    (with interval; NaN where the loss interval includes 0); from point values, without
    interval, for a RESULTS folder without it (NaN when eval mode loses nothing)."""
    row = res.comparison(arm, arm, "eval", mode, artifact, ALL, metric=RECOVERED)
    if row is not None:
        return (row["difference"], row["ci_low"], row["ci_high"])
    cells = _cells(res, artifact)
    loss = res.cell(arm, "eval", CLEAN, 0)[0] - nanmean([res.cell(arm, "eval", a, s)[0] for a, s in cells])
    gain = nanmean([res.cell(arm, mode, a, s)[0] - res.cell(arm, "eval", a, s)[0] for a, s in cells])
    return (gain / loss, math.nan, math.nan) if np.isfinite(loss) and loss > 0 else NAN3


# ---- comparisons ---------------------------------------------------------------------------


def replicates(res: Results) -> int:
    """B: evaluate's bootstrap replicates (`statistics.replicates`, else `bootstrap`)."""
    return int((res.settings.get("statistics") or {}).get("replicates") or res.settings.get("bootstrap") or 0)


def smallest_p(res: Results) -> float:
    """The smallest p a paired bootstrap of B replicates can give: evaluation.json's
    `statistics.minimum_p` (1 / B), else 1 / bootstrap; NaN without replicates."""
    recorded = (res.settings.get("statistics") or {}).get("minimum_p")
    if isinstance(recorded, (int, float)):
        return float(recorded)
    b = replicates(res)
    return 1.0 / b if b else math.nan


def cell_counts(res: Results, arm_a: str, arm_b: str, mode: str = "eval") -> dict | None:
    """Artifact x severity cells of b - a (mean AUC): counts significant after Holm (p_holm)
    and after Benjamini-Hochberg (q_bh) at 0.05, split by direction; None without rows."""
    rows = [res.comparison(arm_a, arm_b, mode, mode, artifact, severity)
            for artifact in res.artifacts for severity in res.severities]
    rows = [r for r in rows if r is not None and np.isfinite(r["difference"])]
    if not rows:
        return None
    counts = {"cells": len(rows)}
    for column in ("p_holm", "q_bh"):
        significant = [r for r in rows if np.isfinite(r[column]) and r[column] < ALPHA]
        counts[column] = (sum(r["difference"] > 0 for r in significant), sum(r["difference"] < 0 for r in significant))
    return counts


def significant(row: dict | None, column: str = "p_value") -> bool:
    return bool(row is not None and np.isfinite(row[column]) and row[column] < ALPHA)


def worst_cell(res: Results, arm: str, mode: str = "eval") -> tuple | None:
    """(artifact, severity) of the arm's lowest mean AUC at the highest severity; None without artifacts."""
    if not res.artifacts or not res.severities:
        return None
    top = res.severities[-1]
    values = {a: res.cell(arm, mode, a, top)[0] for a in res.artifacts}
    finite = {a: v for a, v in values.items() if np.isfinite(v)}
    return (min(finite, key=finite.get) if finite else res.artifacts[0], top)


# ---- corruption errors ------------------------------------------------------------------


def _point(value) -> tuple:
    return (float(value), math.nan, math.nan)


def corruption_errors(res: Results, models: list, reference: str) -> dict:
    """{(arm, mode): {"ce": {artifact: (v, lo, hi)}, "mce", "relative_ce": {..}, "relative_mce",
    "degradation": {artifact: (..)}, "undefined": [artifacts]}} against the reference arm in
    eval mode (error = 1 - mean AUC; ImageNet-C CE and relative CE; ROOD-MRI degradation).
    When `reference` is the one evaluate used, arms.csv's rows (`ce`, `relative_ce`,
    `degradation` at artifact/all; `mce`, `relative_mce` at all/all) with their intervals;
    otherwise point values from `metrics.corruption_errors`. A relative CE is undefined where
    the reference's drop is not distinguishable from 0 (evaluate: its interval includes 0;
    point values: the drop is not positive); relative mCE averages every artifact, so it is
    undefined when one of them is."""
    from mrrobust.metrics import corruption_errors as point_errors

    rows = not res.from_runs and reference == res.settings.get("reference_arm")
    if rows:
        undefined = [a for a in res.artifacts
                     if not np.isfinite(res.cell(reference, "eval", a, ALL, MEAN, RELATIVE_CE)[0])]
        return {(arm, mode): {
            "ce": {a: res.cell(arm, mode, a, ALL, MEAN, CE) for a in res.artifacts},
            "mce": res.cell(arm, mode, ALL, ALL, MEAN, MCE),
            "relative_ce": {a: res.cell(arm, mode, a, ALL, MEAN, RELATIVE_CE) for a in res.artifacts},
            "relative_mce": res.cell(arm, mode, ALL, ALL, MEAN, RELATIVE_MCE),
            "degradation": {a: res.cell(arm, mode, a, ALL, MEAN, DEGRADATION) for a in res.artifacts},
            "undefined": undefined} for arm, mode in models}
    table = {}
    for arm, mode in {*models, (reference, "eval")}:
        table[arm, mode] = {a: [res.cell(arm, mode, a, s)[0] for s in res.severities] for a in res.artifacts}
        table[arm, mode][CLEAN] = res.cell(arm, mode, CLEAN, 0)[0]
    points = point_errors(table, (reference, "eval"), severities=res.severities)
    undefined = [a for a in res.artifacts if not np.isfinite(points[reference, "eval"]["relative_ce"][a])]
    out = {}
    for model in models:
        p = points[model]
        relative = {a: NAN3 if a in undefined else _point(p["relative_ce"][a]) for a in res.artifacts}
        out[model] = {"ce": {a: _point(p["ce"][a]) for a in res.artifacts}, "mce": _point(p["mce"]),
                      "relative_ce": relative,
                      "relative_mce": NAN3 if undefined else _point(nanmean([v[0] for v in relative.values()])),
                      "degradation": {a: _point(p["degradation"][a]) for a in res.artifacts}, "undefined": undefined}
    return out
