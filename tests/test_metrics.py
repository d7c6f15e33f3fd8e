"""Evaluation metrics: threshold metrics, cluster bootstrap, weighted AUC, cells, paired tests,
DeLong and corruption errors, each against an independent reference (scikit-learn, brute
force, hand-computed numbers)."""

import math
import warnings

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from mrrobust.metrics import (METRICS, auc, cluster_weights, corruption_errors, delong,
                              threshold_metrics, weighted_auc,
                              weighted_threshold_metrics)


def brute_threshold_metrics(targets, scores, threshold) -> dict:
    """Loop over slices: confusion counts of `score >= threshold`; NaN threshold: all NaN."""
    if math.isnan(threshold):
        return dict.fromkeys(("sensitivity", "specificity", "balanced_accuracy"), math.nan)
    tp = fn = tn = fp = 0
    for target, score in zip(np.asarray(targets, bool), scores):
        called = score >= threshold
        tp, fn = tp + (target and called), fn + (target and not called)
        tn, fp = tn + (not target and not called), fp + (not target and called)
    sensitivity = tp / (tp + fn) if tp + fn else math.nan
    specificity = tn / (tn + fp) if tn + fp else math.nan
    return {"sensitivity": sensitivity, "specificity": specificity,
            "balanced_accuracy": (sensitivity + specificity) / 2}


def assert_same(actual: dict, expected: dict, **tolerance):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], nan_ok=True, **tolerance), key


def random_case(seed, n=60, positive_share=0.3, decimals=None):
    rng = np.random.default_rng(seed)
    targets = rng.random(n) < positive_share
    scores = rng.random(n) + 0.4 * targets
    return targets, (np.round(scores, decimals) if decimals is not None else scores), rng


# ---- threshold metrics --------------------------------------------------------------------


@pytest.mark.parametrize("seed, share, threshold", [(0, 0.3, 0.6), (1, 0.7, 0.5), (2, 0.0, 0.5),
                                                    (3, 1.0, 0.9), (4, 0.5, 0.7)])
def test_threshold_metrics_match_brute_force(seed, share, threshold):
    targets, scores, _ = random_case(seed, positive_share=share, decimals=1)  # ties at the threshold
    assert_same(threshold_metrics(targets, scores, threshold),
                brute_threshold_metrics(targets, scores, threshold))


def test_threshold_metrics_nan_threshold_gives_nan():
    targets, scores, _ = random_case(0)
    assert all(math.isnan(v) for v in threshold_metrics(targets, scores, math.nan).values())
    resampled = weighted_threshold_metrics(targets, scores, math.nan, np.ones((3, 60)))
    assert all(v.shape == (3,) and np.isnan(v).all() for v in resampled.values())


def test_weighted_threshold_metrics_equal_duplicated_rows():
    targets, scores, rng = random_case(5, n=40, decimals=1)
    weights = rng.integers(0, 4, size=(6, 40)).astype(float)
    weights[5, targets] = 0  # a resample without positives: sensitivity undefined
    result = weighted_threshold_metrics(targets, scores, 0.7, weights)
    assert set(result) == set(METRICS[1:]) and all(v.shape == (6,) for v in result.values())
    for b, row in enumerate(weights.astype(int)):
        expected = brute_threshold_metrics(np.repeat(targets, row), np.repeat(scores, row), 0.7)
        assert_same({k: v[b] for k, v in result.items()}, expected)
    assert math.isnan(result["sensitivity"][5]) and math.isnan(result["balanced_accuracy"][5])


# ---- weighted AUC -------------------------------------------------------------------------


@pytest.mark.parametrize("seed, share, decimals", [(0, 0.3, None), (1, 0.7, None), (2, 0.3, 1),
                                                   (3, 0.7, 1), (4, 0.5, 2)])
def test_weighted_auc_matches_sklearn_sample_weight_and_duplicated_rows(seed, share, decimals):
    targets, scores, rng = random_case(seed, n=80, positive_share=share, decimals=decimals)
    weights = rng.integers(0, 4, size=(130, 80)).astype(float)  # more than one block of resamples
    weights[-1] = rng.random(80)  # real-valued weights too
    result = weighted_auc(targets, scores, weights)
    for b in range(130):
        expected = roc_auc_score(targets, scores, sample_weight=weights[b])
        assert result[b] == pytest.approx(expected, abs=1e-12)
    repeat = weights[0].astype(int)
    assert result[0] == pytest.approx(roc_auc_score(np.repeat(targets, repeat), np.repeat(scores, repeat)))
    ones = weighted_auc(targets, scores, np.ones((1, 80)))[0]
    assert ones == pytest.approx(auc(targets, scores), abs=1e-12)


def test_weighted_auc_is_nan_where_a_class_has_no_weight():
    targets, scores, rng = random_case(6, n=30)
    weights = rng.integers(1, 3, size=(3, 30)).astype(float)
    weights[1, targets], weights[2, ~targets] = 0, 0
    result = weighted_auc(targets, scores, weights)
    assert math.isfinite(result[0]) and np.isnan(result[1:]).all()
    assert np.isnan(weighted_auc(np.zeros(30), scores, weights)).all()


def test_weighted_auc_rejects_bad_input():
    targets, scores, _ = random_case(0, n=10)
    with pytest.raises(ValueError, match="weights"):
        weighted_auc(targets, scores, np.ones(10))
    with pytest.raises(ValueError, match="non-negative"):
        weighted_auc(targets, scores, -np.ones((2, 10)))
    with pytest.raises(ValueError, match="non-finite"):
        weighted_auc(targets, np.where(targets, np.nan, scores), np.ones((2, 10)))
    with pytest.raises(ValueError, match="shape"):
        weighted_auc(targets, scores[:5], np.ones((2, 10)))


# ---- cluster bootstrap --------------------------------------------------------------------


def test_cluster_weights_follow_the_documented_draw_and_resample_whole_groups():
    groups = np.repeat(["file1000003", "file1000001", "file1000002"], [4, 2, 3])
    weights = cluster_weights(groups, 50, seed=7)
    assert weights.shape == (50, 9) and weights.dtype == np.float64
    draws = np.random.default_rng(7).integers(0, 3, size=(50, 3))  # sorted ids: ...01, ...02, ...03
    counts = np.array([np.bincount(row, minlength=3) for row in draws])
    np.testing.assert_array_equal(weights, counts[:, [2, 2, 2, 2, 0, 0, 1, 1, 1]])
    assert (counts.sum(axis=1) == 3).all()


def test_cluster_weights_are_deterministic_and_do_not_depend_on_row_order():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"file{k}" for k in range(20)], 5)  # equal sizes: every row sums to N
    weights = cluster_weights(groups, 200, seed=3)
    np.testing.assert_array_equal(weights, cluster_weights(list(groups), 200, seed=3))
    assert (weights.sum(axis=1) == groups.size).all()
    assert not np.array_equal(weights, cluster_weights(groups, 200, seed=4))
    for name in np.unique(groups):  # only whole groups: one weight per group and resample
        assert (weights[:, groups == name] == weights[:, groups == name][:, :1]).all()
    order = rng.permutation(groups.size)
    np.testing.assert_array_equal(cluster_weights(groups[order], 200, seed=3), weights[:, order])
    assert weights.mean() == pytest.approx(1.0, abs=0.05)  # each group drawn once on average


def test_cluster_weights_reject_bad_input():
    for groups, n_boot, seed in [([], 10, 0), (np.zeros((2, 2)), 10, 0), ([1, 2], 0, 0),
                                 ([1, 2], 10, None), ([1, 2], 2.5, 0)]:
        with pytest.raises(ValueError):
            cluster_weights(groups, n_boot, seed)


# ---- cell metrics -------------------------------------------------------------------------


def brute_delong(targets, scores_a, scores_b) -> dict:
    """O(N^2) structural components: psi(x, y) = [x > y] + [x == y] / 2 over all pairs."""
    targets = np.asarray(targets, bool)
    v10, v01 = [], []
    for scores in (scores_a, scores_b):
        x, y = scores[targets], scores[~targets]
        psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    m, n = len(v10[0]), len(v01[0])
    s = np.cov(np.array(v10)) / m + np.cov(np.array(v01)) / n
    se = math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    aucs = [v.mean() for v in v10]
    z = (aucs[1] - aucs[0]) / se
    return {"auc_a": aucs[0], "auc_b": aucs[1], "difference": aucs[1] - aucs[0], "se": se, "z": z,
            "p_value": 2 * norm.sf(abs(z))}


@pytest.mark.parametrize("seed, n, decimals", [(0, 30, None), (1, 45, 1), (2, 12, 2), (3, 60, 1)])
def test_delong_matches_brute_force_components_and_sklearn(seed, n, decimals):
    targets, scores_a, rng = random_case(seed, n=n, positive_share=0.4, decimals=decimals)
    scores_b = scores_a + rng.normal(0, 0.3, n)  # correlated with a
    if decimals is not None:
        scores_b = np.round(scores_b, decimals)
    result = delong(targets, scores_a, scores_b)
    assert_same(result, brute_delong(targets, scores_a, scores_b), rel=1e-9, abs=1e-12)
    assert result["auc_a"] == pytest.approx(roc_auc_score(targets, scores_a))
    assert result["auc_b"] == pytest.approx(roc_auc_score(targets, scores_b))


def test_delong_undefined_and_degenerate_cases():
    scores = np.linspace(0, 1, 8)
    assert all(math.isnan(v) for v in delong(np.zeros(8), scores, scores[::-1]).values())
    single = delong(np.eye(1, 8, 3)[0], scores, scores[::-1])  # one positive: AUCs, no variance
    assert math.isfinite(single["auc_a"]) and math.isnan(single["se"]) and math.isnan(single["p_value"])
    same = delong(scores > 0.5, scores, scores)
    assert (same["difference"], same["se"], same["z"], same["p_value"]) == (0, 0, 0, 1)


# ---- corruption errors --------------------------------------------------------------------


def test_corruption_errors_by_hand():
    table = {
        "batch": {"clean": 0.9, "noise": [0.8, 0.7, 0.6, 0.5, 0.4], "blur": [0.9] * 5, "spike": [1.0] * 5},
        "group": {"clean": 0.95, "noise": [0.9, 0.85, 0.8, 0.75, 0.7], "blur": [0.85] * 5,
                  "spike": [0.9] * 5},
    }
    result = corruption_errors(table, "batch")
    group, batch = result["group"], result["batch"]
    # noise: errors 0.1..0.3 (sum 1.0) against 0.2..0.6 (sum 2.0); relative (1 - 5 * 0.05) / (2 - 5 * 0.1)
    # blur: 0.75 / 0.5; the reference's blur never degrades, spike has no error: NaN, not inf
    assert_same(group["ce"], {"noise": 0.5, "blur": 1.5, "spike": math.nan})
    # spike: the reference improves (E_s - E_clean = -0.1 each): a ratio against an improvement
    # would flip sign (-0.5 here), so it is NaN
    assert_same(group["relative_ce"], {"noise": 0.5, "blur": math.nan, "spike": math.nan})
    assert group["mce"] == pytest.approx(1.0) and group["relative_mce"] == pytest.approx(0.5)
    a = np.array([2 / 3, 4 / 9, 8 / 27, 16 / 81, 32 / 243])  # a^s; clean - AUC_s = 0.05 s for noise
    assert group["degradation"]["noise"] == pytest.approx(0.05 * 946 / 422)
    assert group["degradation"]["noise"] == pytest.approx((a * 0.05 * np.arange(1, 6)).sum() / a.sum())
    assert group["degradation"]["blur"] == pytest.approx(0.1)
    assert_same(batch["ce"], {"noise": 1.0, "blur": 1.0, "spike": math.nan})
    assert batch["mce"] == 1.0
    assert_same(batch["relative_ce"], {"noise": 1.0, "blur": math.nan, "spike": math.nan})
    assert batch["degradation"]["spike"] == pytest.approx(-0.1)


def test_corruption_errors_imagenet_c_style_table():
    """Three models, two corruptions with three severities; numbers worked out on paper."""
    table = {"alexnet": {"clean": 0.6, "fog": [0.5, 0.4, 0.3], "snow": [0.4, 0.4, 0.4]},
             "resnet": {"clean": 0.8, "fog": [0.7, 0.6, 0.5], "snow": [0.7, 0.6, 0.5]},
             "worse": {"clean": 0.5, "fog": [0.2, 0.2, 0.2], "snow": [0.1, 0.1, 0.1]}}
    result = corruption_errors(table, "alexnet")
    # fog errors: alexnet 0.5 + 0.6 + 0.7 = 1.8, resnet 1.2, worse 2.4; snow: 1.8, 1.2, 2.7
    assert_same(result["resnet"]["ce"], {"fog": 1.2 / 1.8, "snow": 1.2 / 1.8})
    assert_same(result["worse"]["ce"], {"fog": 2.4 / 1.8, "snow": 2.7 / 1.8})
    assert result["worse"]["mce"] == pytest.approx((2.4 + 2.7) / 3.6)
    # relative: alexnet fog 1.8 - 3 * 0.4 = 0.6, snow 0.6; resnet 1.2 - 0.6 = 0.6; worse 2.4 - 1.5, 2.7 - 1.5
    assert_same(result["resnet"]["relative_ce"], {"fog": 1.0, "snow": 1.0})
    assert_same(result["worse"]["relative_ce"], {"fog": 1.5, "snow": 2.0})
    assert result["worse"]["relative_mce"] == pytest.approx(1.75)
    assert all(result["alexnet"]["ce"][c] == pytest.approx(1.0) for c in ("fog", "snow"))


def test_corruption_errors_reject_inconsistent_tables():
    good = {"clean": 0.9, "noise": [0.8] * 5}
    for table, reference in [({"a": good}, "b"), ({"a": good, "b": {"clean": 0.9, "noise": [0.8] * 4}}, "a"),
                             ({"a": good, "b": {"clean": 0.9, "motion": [0.8] * 5}}, "a"),
                             ({"a": {"noise": [0.8] * 5}}, "a")]:
        with pytest.raises(ValueError):
            corruption_errors(table, reference)


def test_degradation_weights_follow_the_evaluated_severities():
    table = {"batch": {"clean": 0.9, "noise": [0.8, 0.6, 0.4]}, "group": {"clean": 0.9, "noise": [0.9, 0.8, 0.7]}}
    gaps = corruption_errors(table, "batch", severities=(1, 3, 5))["batch"]["degradation"]["noise"]
    a = np.array([2 / 3, (2 / 3) ** 3, (2 / 3) ** 5])
    assert gaps == pytest.approx((a * np.array([0.1, 0.3, 0.5])).sum() / a.sum())
    assert corruption_errors(table, "batch")["batch"]["degradation"]["noise"] != pytest.approx(gaps)
    with pytest.raises(ValueError):
        corruption_errors(table, "batch", severities=(1, 2))
