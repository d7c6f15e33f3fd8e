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
