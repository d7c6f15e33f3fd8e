"""Volume-level bootstrap replicates of per-label metrics from per-volume sufficient statistics.

A cluster-bootstrap resample draws the test VOLUMES with replacement; it is a row of counts
`(V,)` (how often each volume was drawn). Every metric here is a function of sums over
volumes, so one evaluation cell's predictions are reduced once to per-volume statistics
(`CellStatistics`) and all replicates are matrix products with the count matrix `(R, V)`:

- AUC: W[u, v] = sum over positive slices i of volume u and negative slices j of volume v of
  [s_i > s_j] + [s_i == s_j] / 2; with positives P and negatives Q per volume,
  AUC(c) = c W c / ((c . P) (c . Q)), the AUC of the data with volume v repeated c_v times.
- sensitivity / specificity at a threshold (positive when score >= threshold): c . TP / c . P,
  c . TN / c . Q; balanced accuracy their mean.
- expected calibration error with `ECE_BINS` equal-width bins of the positive probability:
  ECE(c) = sum over bins k of |c . D_k| / (c . n), D_k[v] = sum over slices of volume v in bin k
  of (target - probability), n[v] = slices of volume v.

A row of ones is the full data (the point estimate). NaN where a class has zero weight. The
counts come from `volume_counts`, the same draws as `metrics.cluster_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15
CELL_METRICS = ("auc", "sensitivity", "specificity", "balanced_accuracy", "ece")


def volume_counts(groups, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster-bootstrap draws: counts `(n_boot, G)` float64 over the sorted distinct `groups`
    and each row's group index `(N,)`. Resample b is row b of
    `np.random.default_rng(seed).integers(0, G, size=(n_boot, G))`, counted per group."""
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.size == 0:
        raise ValueError(f"groups {groups.shape} must be a non-empty (N,) array")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot {n_boot!r} must be a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed {seed!r} must be an integer")
    distinct, group_of_row = np.unique(groups, return_inverse=True)
    count = distinct.size
    draws = np.random.default_rng(seed).integers(0, count, size=(n_boot, count))
    offsets = count * np.arange(n_boot)[:, None]
    drawn = np.bincount((draws + offsets).ravel(), minlength=n_boot * count).reshape(n_boot, count)
    return drawn.astype(np.float64), group_of_row.ravel()


def _divide(numerator, denominator) -> np.ndarray:
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, np.float64),
                                                 np.asarray(denominator, np.float64))
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _auc_matrix(target: np.ndarray, score: np.ndarray, volume: np.ndarray, count: int) -> np.ndarray:
    """W `(V, V)`: the positive-negative pair wins of volume u's positives over volume v's
    negatives (ties one half). Scores become dense ranks, negatives are keyed volume * R + rank
    and sorted once; one `searchsorted` per bound gives, for every positive and volume, how many
    of that volume's negatives score below (and tie with) it."""
    distinct, ranks = np.unique(score, return_inverse=True)
    ranks = ranks.ravel().astype(np.int64)
    span = np.int64(distinct.size + 1)
    negative = ~target
    keys = np.sort(volume[negative].astype(np.int64) * span + ranks[negative])
    positives = np.flatnonzero(target)
    offsets = np.arange(count, dtype=np.int64) * span
    queries = offsets[None, :] + ranks[positives][:, None]  # (P, V)
    below = np.searchsorted(keys, queries, side="left")
    tied = np.searchsorted(keys, queries, side="right") - below
    wins = (below - np.searchsorted(keys, offsets, side="left")[None, :]) + 0.5 * tied
    matrix = np.zeros((count, count))
    np.add.at(matrix, volume[positives], wins)
    return matrix


def _flat(values: np.ndarray) -> np.ndarray:
    """(L, V, X) -> a C-contiguous (V, L * X): every label's columns side by side."""
    return np.ascontiguousarray(values.transpose(1, 0, 2).reshape(values.shape[1], -1))


@dataclass
class CellStatistics:
    """Per-volume sufficient statistics of one cell's predictions, per label `l` of L.

    `pairs` (L, V, V) AUC pair wins, `positives` / `negatives` (L, V) slice counts,
    `true_positives` / `true_negatives` (L, V) at the thresholds, `calibration` (L, V, K)
    sums of target - probability per bin, `slices` (V,)."""

    pairs: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray
    true_positives: np.ndarray
    true_negatives: np.ndarray
    calibration: np.ndarray
    slices: np.ndarray

    @classmethod
    def of(cls, targets, scores, thresholds, volume: np.ndarray, count: int) -> "CellStatistics":
        """targets and scores `(N, L)`, thresholds `(L,)` (NaN: no threshold metrics),
        `volume` `(N,)` the volume index 0..count-1 of each slice."""
        targets = np.asarray(targets).astype(bool)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != targets.shape or scores.ndim != 2 or volume.shape != scores.shape[:1]:
            raise ValueError(f"targets {targets.shape}, scores {scores.shape} and volumes "
                             f"{volume.shape} must be (N, L), (N, L), (N,)")
        if not np.isfinite(scores).all():
            raise ValueError(f"scores hold {int((~np.isfinite(scores)).sum())} non-finite values")
        thresholds = np.asarray(thresholds, dtype=np.float64)
        labels = targets.shape[1]
        one_hot = np.zeros((scores.shape[0], count))
        one_hot[np.arange(scores.shape[0]), volume] = 1.0
        called = scores >= np.where(np.isnan(thresholds), np.inf, thresholds)[None, :]
        per_volume = lambda values: np.einsum("nl,nv->lv", values.astype(np.float64), one_hot)
        bins = np.clip((scores * ECE_BINS).astype(np.int64), 0, ECE_BINS - 1)  # (N, L)
        calibration = np.zeros((labels, count, ECE_BINS))
        for k in range(labels):
            np.add.at(calibration[k], (volume, bins[:, k]), targets[:, k] - scores[:, k])
        true_positives = per_volume(targets & called)
        true_negatives = per_volume(~targets & ~called)
        undefined = np.isnan(thresholds)
        true_positives[undefined] = np.nan
        true_negatives[undefined] = np.nan
        return cls(pairs=np.stack([_auc_matrix(targets[:, k], scores[:, k], volume, count)
                                   for k in range(labels)]),
                   positives=per_volume(targets), negatives=per_volume(~targets),
                   true_positives=true_positives, true_negatives=true_negatives,
                   calibration=calibration, slices=one_hot.sum(axis=0))

    def replicates(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric of CELL_METRICS `(R, L)` for volume counts `(R, V)`."""
        counts = np.asarray(counts, dtype=np.float64)
        labels, count = self.positives.shape
        # quadratic forms c W_l c for every label through one matrix product (V, L * V)
        halves = counts @ _flat(self.pairs)
        wins = np.einsum("rlv,rv->rl", halves.reshape(-1, labels, count), counts)
        positive, negative = counts @ self.positives.T, counts @ self.negatives.T
        sensitivity = _divide(counts @ np.nan_to_num(self.true_positives.T, nan=0.0), positive)
        specificity = _divide(counts @ np.nan_to_num(self.true_negatives.T, nan=0.0), negative)
        undefined = np.isnan(self.true_positives[:, 0])
        sensitivity[:, undefined] = np.nan
        specificity[:, undefined] = np.nan
        bins = self.calibration.shape[2]
        gaps = np.einsum("rlk->rl", np.abs(counts @ _flat(self.calibration)).reshape(-1, labels, bins))
        return {"auc": _divide(wins, positive * negative), "sensitivity": sensitivity,
                "specificity": specificity, "balanced_accuracy": 0.5 * (sensitivity + specificity),
                "ece": _divide(gaps, (counts @ self.slices)[:, None])}
