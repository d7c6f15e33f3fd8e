"""Per-label classification metrics: AUC and the study's operating point (REFERENCE s.1).

Scores are probabilities of the positive class; a slice is called positive when
`score >= threshold` (scikit-learn's convention). AUC and the operating point are
undefined for a label whose targets hold one class only: they are NaN, never a crash.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

MIN_SENSITIVITY = 0.9
FALLBACK_MAX_FPR = 0.25


def _binary(targets, scores) -> tuple[np.ndarray, np.ndarray]:
    targets = np.asarray(targets).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if targets.shape != scores.shape:
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} differ in shape")
    return targets, scores


def auc(targets, scores) -> float:
    """ROC AUC of `scores` `(N,)` for binary `targets` `(N,)`; NaN when one class is absent."""
    targets, scores = _binary(targets, scores)
    if targets.all() or not targets.any():
        return math.nan
    return float(roc_auc_score(targets, scores))


def label_aucs(targets, scores) -> np.ndarray:
    """Per-label AUC `(L,)` for targets and scores `(N, L)`; NaN where undefined."""
    targets, scores = np.asarray(targets), np.asarray(scores)
    return np.array([auc(targets[:, k], scores[:, k]) for k in range(targets.shape[1])])


def operating_point(targets, scores, min_sensitivity: float = MIN_SENSITIVITY,
                    fallback_max_fpr: float = FALLBACK_MAX_FPR) -> dict:
    """The study's threshold: the highest one whose sensitivity is >= `min_sensitivity`;
    when no threshold reaches it (no positives), the first (highest) threshold whose false
    positive rate exceeds `fallback_max_fpr`.

    Returns `{threshold, sensitivity, specificity, rule, positives, negatives}`; a
    quantity that is undefined (no positives / no negatives / no samples) is NaN.
    """
    targets, scores = _binary(targets, scores)
    positives, negatives = int(targets.sum()), int((~targets).sum())
    result = {"threshold": math.nan, "sensitivity": math.nan, "specificity": math.nan,
              "rule": "undefined", "positives": positives, "negatives": negatives}
    if positives + negatives == 0:
        return result
    with warnings.catch_warnings():  # one class absent: sklearn warns and fills NaN
        warnings.simplefilter("ignore")
        fpr, tpr, thresholds = roc_curve(targets, scores, drop_intermediate=False)
    reached = np.flatnonzero(tpr >= min_sensitivity) if positives else np.array([], int)
    if reached.size:
        index, rule = reached[0], f"sensitivity>={min_sensitivity}"
    else:
        over = np.flatnonzero(fpr > fallback_max_fpr) if negatives else np.array([], int)
        if not over.size:
            return result
        index, rule = over[0], f"fpr>{fallback_max_fpr} (fallback)"
    result.update(threshold=float(thresholds[index]), rule=rule,
                  sensitivity=float(tpr[index]) if positives else math.nan,
                  specificity=float(1.0 - fpr[index]) if negatives else math.nan)
    return result


# ---- thresholds, slice-weight bootstrap, DeLong, corruption errors ---------------------------
#
# A bootstrap resample is a row of non-negative weights `(N,)` (how often each slice was drawn);
# `weights` `(B, N)` holds B of them. Every weighted metric equals the plain metric on the data
# with each slice repeated `weight` times, so integer weights are exactly row duplication.
# (evaluate's tables use the per-volume form of the same resamples, `mrrobust.resampling`,
# and the two-level bootstrap of `mrrobust.arm_statistics`.)

METRICS = ("auc", "sensitivity", "specificity", "balanced_accuracy")
DEGRADATION_BASE = 2.0 / 3.0  # ROOD-MRI: severity s weighs a**s


def _finite_binary(targets, scores) -> tuple[np.ndarray, np.ndarray]:
    targets, scores = _binary(targets, scores)
    if not np.isfinite(scores).all():
        raise ValueError(f"scores hold {int((~np.isfinite(scores)).sum())} non-finite values")
    return targets, scores


def _resample_weights(weights, n: int) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != n:
        raise ValueError(f"weights {weights.shape} must be (B, {n})")
    if not (np.isfinite(weights).all() and (weights >= 0).all()):
        raise ValueError("weights must be finite and non-negative")
    return weights


def _divide(numerator, denominator) -> np.ndarray:
    """`numerator / denominator`, NaN where the denominator is 0 (no warning)."""
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, np.float64),
                                                 np.asarray(denominator, np.float64))
    out = np.full(numerator.shape, math.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _nanmean(values, axis=None):
    """Mean over the finite entries along `axis`; NaN where there is none (no warning)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    return _divide(np.where(finite, values, 0.0).sum(axis=axis), finite.sum(axis=axis))


AUC_BLOCK = 64  # resamples per block of `_weighted_auc`: its temporaries stay in cache


def _weighted_auc(targets: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`weighted_auc` on checked input, O(B N). The smaller class is sorted once; per block of
    resamples its weights are summed cumulatively (block, K + 1), and for each slice of the other
    class the weight of the smaller class scoring below it plus half the weight tied with it is
    the midpoint of the cumulative sums at the two `searchsorted` bounds of its score (one bound
    when no score is tied across the classes). With positives as the smaller class this counts
    the pairs a negative wins, hence `pairs - wins`."""
    positives_counted = targets.sum() <= (~targets).sum()
    counted, other = (targets, ~targets) if positives_counted else (~targets, targets)
    counted, other = np.flatnonzero(counted), np.flatnonzero(other)
    counted = counted[np.argsort(scores[counted], kind="stable")]
    bounds = [np.searchsorted(scores[counted], scores[other], side=side) for side in ("left", "right")]
    if np.array_equal(*bounds):
        bounds = bounds[:1]
    wins, pairs = np.empty(weights.shape[0]), np.empty(weights.shape[0])
    for start in range(0, weights.shape[0], AUC_BLOCK):
        block = weights[start:start + AUC_BLOCK]
        cumulative = np.zeros((block.shape[0], counted.size + 1))
        np.cumsum(np.take(block, counted, axis=1), axis=1, out=cumulative[:, 1:])
        beaten = sum(np.take(cumulative, bound, axis=1) for bound in bounds) / len(bounds)
        other_weights = np.take(block, other, axis=1)
        wins[start:start + AUC_BLOCK] = np.einsum("bk,bk->b", other_weights, beaten)
        pairs[start:start + AUC_BLOCK] = other_weights.sum(axis=1) * cumulative[:, -1]
    return _divide(pairs - wins if positives_counted else wins, pairs)


def weighted_auc(targets, scores, weights) -> np.ndarray:
    """ROC AUC `(B,)` of every weighted resample: targets and scores `(N,)`, weights `(B, N)`.

    AUC = sum over (positive i, negative j) of w_i w_j ([s_i > s_j] + [s_i == s_j] / 2) divided by
    (sum of positive weights)(sum of negative weights); NaN for a resample with zero weight on
    either class. Weights of ones give `auc`. O(B N): one sort, then cumulative sums over blocks
    of `AUC_BLOCK` resamples (no loop over single resamples).
    """
    targets, scores = _finite_binary(targets, scores)
    return _weighted_auc(targets, scores, _resample_weights(weights, targets.size))


def _weighted_threshold_metrics(targets: np.ndarray, scores: np.ndarray, threshold: float,
                                weights: np.ndarray) -> dict[str, np.ndarray]:
    if math.isnan(threshold):
        undefined = np.full(weights.shape[0], math.nan)
        return {metric: undefined.copy() for metric in METRICS[1:]}
    called = scores >= threshold
    classes = np.stack([targets & called, targets, ~targets & ~called, ~targets]).astype(np.float64)
    # einsum, not `@`: BLAS threads left spinning after a matmul slow the next numpy calls
    true_positive, positive, true_negative, negative = np.einsum("bn,kn->kb", weights, classes)
    sensitivity, specificity = _divide(true_positive, positive), _divide(true_negative, negative)
    return {"sensitivity": sensitivity, "specificity": specificity,
            "balanced_accuracy": 0.5 * (sensitivity + specificity)}


def weighted_threshold_metrics(targets, scores, threshold: float, weights) -> dict[str, np.ndarray]:
    """Sensitivity, specificity and balanced accuracy `(B,)` of every weighted resample (weights
    `(B, N)`), a slice called positive when `score >= threshold`. NaN where a class has zero
    weight (balanced accuracy then NaN too) and everywhere for a NaN threshold."""
    targets, scores = _finite_binary(targets, scores)
    return _weighted_threshold_metrics(targets, scores, float(threshold),
                                       _resample_weights(weights, targets.size))


def threshold_metrics(targets, scores, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity and balanced accuracy (floats) of `score >= threshold` on
    targets and scores `(N,)`; NaN where a class is absent or the threshold is NaN."""
    targets, scores = _finite_binary(targets, scores)
    ones = np.ones((1, targets.size))
    return {metric: float(values[0]) for metric, values in
            _weighted_threshold_metrics(targets, scores, float(threshold), ones).items()}


def cluster_weights(groups, n_boot: int, seed: int) -> np.ndarray:
    """Cluster (volume-level) bootstrap weights `(n_boot, N)` float64 for `groups` `(N,)`.

    The G distinct groups are sorted (`np.unique`); resample b draws G group indices with
    replacement, row b of `np.random.default_rng(seed).integers(0, G, size=(n_boot, G))`, and a
    slice's weight is how often its group was drawn. The weights depend only on the sorted
    distinct groups, each row's group, `n_boot` and `seed`: reordering the rows reorders the
    columns, and every model evaluated on the same slices gets the same resamples.
    """
    from mrrobust.resampling import volume_counts

    counts, group_of_row = volume_counts(groups, n_boot, seed)
    return np.take(counts, group_of_row, axis=1)


def delong(targets, scores_a, scores_b) -> dict[str, float]:
    """DeLong, DeLong & Clarke-Pearson (1988) test of two correlated AUCs on the same slices, in
    the fast midrank form of Sun & Xu (2014), O(N log N).

    With m positives and n negatives, midranks among the positives (T_x), the negatives (T_y)
    and all slices (T_z) give the structural components V10_i = (T_z,i - T_x,i) / n and
    V01_j = 1 - (T_z,j - T_y,j) / m; AUC = mean V10; S = cov(V10) / m + cov(V01) / n (2x2,
    ddof 1); se = sqrt(S_aa + S_bb - 2 S_ab); z = (auc_b - auc_a) / se; p = 2 (1 - Phi(|z|)).
    Returns `{auc_a, auc_b, difference (b - a), se, z, p_value}`: all NaN with one class absent;
    se, z, p NaN with a single positive or negative; z = 0, p = 1 when se = 0 and the AUCs agree.
    """
    from scipy.stats import norm, rankdata

    targets, scores_a = _finite_binary(targets, scores_a)
    _, scores_b = _finite_binary(targets, scores_b)
    result = dict.fromkeys(("auc_a", "auc_b", "difference", "se", "z", "p_value"), math.nan)
    m, n = int(targets.sum()), int((~targets).sum())
    if m == 0 or n == 0:
        return result
    scores = np.stack([scores_a, scores_b])  # (2, N)
    positives, negatives = scores[:, targets], scores[:, ~targets]
    rank_all = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    v10 = (rank_all[:, :m] - rankdata(positives, axis=1)) / n  # (2, m)
    v01 = 1.0 - (rank_all[:, m:] - rankdata(negatives, axis=1)) / m  # (2, n)
    aucs = v10.mean(axis=1)
    difference = float(aucs[1] - aucs[0])
    result.update(auc_a=float(aucs[0]), auc_b=float(aucs[1]), difference=difference)
    if m < 2 or n < 2:
        return result
    covariance = np.cov(v10) / m + np.cov(v01) / n
    variance = covariance[0, 0] + covariance[1, 1] - 2.0 * covariance[0, 1]
    se = math.sqrt(max(variance, 0.0))
    if se == 0.0:
        z = 0.0 if difference == 0.0 else math.copysign(math.inf, difference)
    else:
        z = difference / se
    result.update(se=se, z=z, p_value=float(2.0 * norm.sf(abs(z))))
    return result


def corruption_errors(table: dict, reference: str, severities=None) -> dict[str, dict]:
    """ImageNet-C corruption errors and the ROOD-MRI degradation from AUCs.

    `table[model][artifact]` = AUCs over severities 1..S (a list), `table[model]["clean"]` = the
    clean AUC; every model has the reference's artifacts and ladder lengths. With error
    E = 1 - AUC, per model and artifact c: CE_c = sum_s E_s(f) / sum_s E_s(ref); relative
    CE_c = sum_s (E_s(f) - E_clean(f)) / sum_s (E_s(ref) - E_clean(ref)); degradation_c =
    sum_s a^s (AUC_clean - AUC_s) / sum_s a^s with a = 2/3 over the `severities` of the ladder
    entries (default 1..S; pass e.g. (1, 3, 5) when only those were evaluated). A ratio whose reference
    sum is 0 is NaN, and so is a relative CE whose reference error does not increase;
    "mce" and "relative_mce" are the means over the artifacts where defined.
    Returns `{model: {"ce": {c: CE}, "mce", "relative_ce": {c: ..}, "relative_mce",
    "degradation": {c: ..}}}`; the reference model's CE is 1 wherever defined.
    """
    if reference not in table:
        raise ValueError(f"reference model {reference!r} is not in the table ({sorted(table)})")

    def ladders(model: str) -> tuple[float, dict[str, np.ndarray]]:
        row = table[model]
        if "clean" not in row:
            raise ValueError(f"model {model!r} has no 'clean' AUC")
        return float(row["clean"]), {artifact: np.asarray(aucs, dtype=np.float64).ravel()
                                     for artifact, aucs in row.items() if artifact != "clean"}

    reference_clean, reference_ladders = ladders(reference)
    result = {}
    for model in table:
        clean, model_ladders = ladders(model)
        ce, relative_ce, degradation = {}, {}, {}
        for artifact, aucs in model_ladders.items():
            reference_aucs = reference_ladders.get(artifact)
            if reference_aucs is None or reference_aucs.shape != aucs.shape or aucs.size == 0:
                raise ValueError(f"model {model!r} artifact {artifact!r}: {aucs.size} severities, "
                                 f"the reference {reference!r} has "
                                 f"{'none' if reference_aucs is None else reference_aucs.size}")
            errors, reference_errors = 1.0 - aucs, 1.0 - reference_aucs
            ce[artifact] = float(_divide(errors.sum(), reference_errors.sum()))
            reference_increase = (reference_errors - (1.0 - reference_clean)).sum()
            # a reference that does not get worse leaves the ratio meaningless (sign flips, blows up)
            relative_ce[artifact] = (float(_divide((errors - (1.0 - clean)).sum(), reference_increase))
                                     if reference_increase > 0 else math.nan)
            levels = np.arange(1, aucs.size + 1) if severities is None else np.asarray(severities, dtype=np.float64)
            if levels.shape != aucs.shape:
                raise ValueError(f"severities {list(levels)} do not match the {aucs.size} AUCs of {model!r} {artifact!r}")
            severity_weights = DEGRADATION_BASE ** levels
            degradation[artifact] = float((severity_weights * (clean - aucs)).sum() / severity_weights.sum())
        result[model] = {"ce": ce, "mce": float(_nanmean(list(ce.values()))),
                         "relative_ce": relative_ce,
                         "relative_mce": float(_nanmean(list(relative_ce.values()))),
                         "degradation": degradation}
    return result
