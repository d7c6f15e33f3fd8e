"""Multiple-testing adjustment of p-values: Holm's step-down procedure (family-wise error) and
Benjamini-Hochberg (false discovery rate).

Both take a family of p-values of any shape; NaN entries (tests that could not be made) are
left out of the family and stay NaN. An empty or all-NaN family comes back unchanged.
"""

from __future__ import annotations

import numpy as np


def _adjust(p, step) -> np.ndarray:
    """The finite entries of `p` (the family; NaN stays NaN, values outside [0, 1] refused)
    adjusted by `step(sorted ascending (m,)) -> adjusted in that order (m,)`."""
    p = np.asarray(p, dtype=np.float64)
    finite = np.isfinite(p)
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError("p-values must lie in [0, 1]")
    out = np.full(p.shape, np.nan)
    values = p[finite]
    if values.size:
        order = np.argsort(values, kind="stable")
        adjusted = np.empty(values.size)
        adjusted[order] = step(values[order])
        out[finite] = adjusted
    return out


def holm(p) -> np.ndarray:
    """Holm (1979) adjusted p-values: with the m finite p sorted ascending, p_(i) becomes
    max over j <= i of min(1, (m - j + 1) p_(j)). Rejecting where adjusted <= alpha controls
    the family-wise error rate at alpha under any dependence."""
    return _adjust(p, lambda v: np.maximum.accumulate(np.minimum(1.0, (v.size - np.arange(v.size)) * v)))


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg (1995) q-values: with the m finite p sorted ascending, p_(i) becomes
    min over j >= i of min(1, m p_(j) / j) (as `scipy.stats.false_discovery_control`, method
    "bh"). Rejecting where q <= alpha controls the false discovery rate at alpha for independent
    or positively dependent tests."""
    return _adjust(p, lambda v: np.minimum.accumulate(
        np.minimum(1.0, v.size * v / np.arange(1, v.size + 1))[::-1])[::-1])
