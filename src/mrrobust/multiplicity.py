"""Multiple-testing adjustment of p-values: Holm's step-down procedure (family-wise error) and
Benjamini-Hochberg (false discovery rate).

Both take a family of p-values of any shape; NaN entries (tests that could not be made) are
left out of the family and stay NaN. An empty or all-NaN family comes back unchanged.
"""

from __future__ import annotations

import numpy as np


def _family(p) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64)
    finite = np.isfinite(p)
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError("p-values must lie in [0, 1]")
    return p, finite


def holm(p) -> np.ndarray:
    """Holm (1979) adjusted p-values: with the m finite p sorted ascending, p_(i) becomes
    max over j <= i of min(1, (m - j + 1) p_(j)). Rejecting where adjusted <= alpha controls
    the family-wise error rate at alpha under any dependence."""
    p, finite = _family(p)
    out = np.full(p.shape, np.nan)
    values = p[finite]
    m = values.size
    if m:
        order = np.argsort(values, kind="stable")
        stepped = np.minimum(1.0, (m - np.arange(m)) * values[order])
        adjusted = np.empty(m)
        adjusted[order] = np.maximum.accumulate(stepped)
        out[finite] = adjusted
    return out


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg (1995) q-values: with the m finite p sorted ascending, p_(i) becomes
    min over j >= i of min(1, m p_(j) / j) (as `scipy.stats.false_discovery_control`, method
    "bh"). Rejecting where q <= alpha controls the false discovery rate at alpha for independent
    or positively dependent tests."""
    p, finite = _family(p)
    out = np.full(p.shape, np.nan)
    values = p[finite]
    m = values.size
    if m:
        order = np.argsort(values, kind="stable")
        scaled = np.minimum(1.0, m * values[order] / np.arange(1, m + 1))
        q = np.empty(m)
        q[order] = np.minimum.accumulate(scaled[::-1])[::-1]
        out[finite] = q
    return out
