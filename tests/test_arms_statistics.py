"""The two-level bootstrap tables against brute force, scikit-learn, scipy and simulations with
a known truth (a null of six seeds of one norm split into two arms)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from scipy.stats import binomtest, false_discovery_control, norm
from sklearn.metrics import roc_auc_score

from mrrobust.arm_statistics import (SEED_STREAM, ArmRuns, ArmStatistics, bootstrap_p,
                                     intervals, wilson_intervals)
from mrrobust.data.annotations import LABELS
from mrrobust.multiplicity import benjamini_hochberg, holm
from mrrobust.resampling import ECE_BINS, CellStatistics, volume_counts


# ---- simulated clustered predictions ----------------------------------------------------------


def clustered(volumes, slices=6, seed=0):
    """targets (N, 4) clustered in volumes (a volume is positive for a label w.p. 0.5, then each
    of its slices w.p. 0.6), volume ids (N,), a shared volume effect (N,) and shared slice noise."""
    rng = np.random.default_rng(seed)
    volume = np.repeat(np.arange(volumes), slices)
    positive_volume = rng.random((volumes, 4)) < 0.5
    targets = positive_volume[volume] & (rng.random((volume.size, 4)) < 0.6)
    effect = rng.normal(0, 0.7, (volumes, 4))[volume]
    shared = rng.normal(size=(volume.size, 4))
    return targets, np.array([f"file{v:04d}" for v in volume]), effect, shared


def stable_seed(*key) -> int:
    """A seed from a key, the same in every process (str hashes are salted per process)."""
    return zlib.crc32(repr(key).encode())


def run_scores(targets, effect, shared, strength, seed, own=0.6):
    """Positive probabilities of one simulated run: sigmoid(strength * y + volume effect +
    slice noise (shared by all runs, plus the run's own))."""
    rng = np.random.default_rng(1000 + seed)
    noise = np.sqrt(1 - own**2) * shared + own * rng.normal(size=targets.shape)
    return 1 / (1 + np.exp(-(strength * targets + effect + noise)))


# ---- multiplicity -----------------------------------------------------------------------------


def brute_holm(p):
    m = len(p)
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def brute_bh(p):
    m = len(p)
    return np.array([min(1.0, min(m * p[j] / (sum(p <= p[j])) for j in range(m) if p[j] >= p[i]))
                     for i in range(m)])


@pytest.mark.parametrize("seed", range(4))
def test_holm_and_bh_match_their_definitions_and_scipy(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(25) ** 3
    p[3] = p[7]  # a tie
    np.testing.assert_allclose(holm(p), brute_holm(p), atol=1e-15)
    np.testing.assert_allclose(benjamini_hochberg(p), brute_bh(p), atol=1e-15)
    np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p, method="bh"), atol=1e-15)


def test_multiplicity_leaves_nan_out_of_the_family():
    p = np.array([0.01, np.nan, 0.02, 0.04])
    np.testing.assert_allclose(holm(p), [0.03, np.nan, 0.04, 0.04])
    np.testing.assert_allclose(benjamini_hochberg(p), [0.03, np.nan, 0.03, 0.04])
    assert np.isnan(holm([np.nan])).all() and holm([]).size == 0
    with pytest.raises(ValueError):
        holm([1.5])


# ---- per-volume statistics --------------------------------------------------------------------


def brute_ece(target, score, weight):
    """Expected calibration error of weighted slices, binned with np.histogram."""
    edges = np.linspace(0, 1, ECE_BINS + 1)
    index = np.clip(np.digitize(score, edges[1:-1]), 0, ECE_BINS - 1)
    total = 0.0
    for k in range(ECE_BINS):
        inside = index == k
        total += abs(np.sum(weight[inside] * (target[inside] - score[inside])))
    return total / weight.sum()


def test_cell_statistics_replicates_equal_scikit_learn_on_the_resampled_data():
    targets, volumes, effect, shared = clustered(9, seed=3)
    scores = np.round(run_scores(targets, effect, shared, 1.5, 0), 2)  # ties across volumes
    thresholds = np.array([0.5, 0.6, np.nan, 0.4])
    counts, volume = volume_counts(volumes, 25, 7)
    statistics = CellStatistics.of(targets, scores, thresholds, volume, 9)
    got = statistics.replicates(counts)
    for b in range(25):
        weight = counts[b][volume]
        for k in range(4):
            t, s = targets[:, k], scores[:, k]
            if t[weight > 0].all() or not t[weight > 0].any():
                assert math.isnan(got["auc"][b, k])
            else:
                assert got["auc"][b, k] == pytest.approx(roc_auc_score(t, s, sample_weight=weight), abs=1e-12)
            if k == 2:
                assert math.isnan(got["sensitivity"][b, k]) and math.isnan(got["specificity"][b, k])
            else:
                called = s >= thresholds[k]
                positive, negative = np.sum(weight * t), np.sum(weight * ~t)
                sensitivity = np.sum(weight * (t & called)) / positive if positive else math.nan
                specificity = np.sum(weight * (~t & ~called)) / negative if negative else math.nan
                assert got["sensitivity"][b, k] == pytest.approx(sensitivity, nan_ok=True)
                assert got["balanced_accuracy"][b, k] == pytest.approx((sensitivity + specificity) / 2, nan_ok=True)
            assert got["ece"][b, k] == pytest.approx(brute_ece(t, s, weight), abs=1e-12)


def test_volume_counts_follow_the_documented_draw():
    counts, volume = volume_counts(np.array(["b", "a", "b", "c"]), 6, 11)
    draws = np.random.default_rng(11).integers(0, 3, size=(6, 3))
    np.testing.assert_array_equal(counts, [[np.sum(row == g) for g in range(3)] for row in draws])
    np.testing.assert_array_equal(volume, [1, 0, 1, 2])


def test_intervals_and_p_values_against_numpy_and_a_loop():
    rng = np.random.default_rng(2)
    x = rng.normal(0.3, 1, size=(400, 5))
    x[:100, 1] = np.nan
    x[:300, 2] = np.nan  # fewer than half finite: undefined
    low, high = intervals(x, 0.9)
    for c in (0, 1, 3, 4):
        assert low[c] == pytest.approx(np.nanpercentile(x[:, c], 5))
        assert high[c] == pytest.approx(np.nanpercentile(x[:, c], 95))
    assert math.isnan(low[2]) and math.isnan(high[2])
    point = np.array([0.3, -0.2, 0.3, 0.0, np.nan])
    p = bootstrap_p(point, x)
    for c, d in enumerate(point[:2]):
        column = x[:, c][np.isfinite(x[:, c])]
        other = np.mean(column <= 0) if d > 0 else np.mean(column >= 0)
        assert p[c] == pytest.approx(min(1, max(2 * other, 1 / column.size)))
    assert math.isnan(p[2]) and p[3] == 1 and math.isnan(p[4])


# ---- the two-level bootstrap ------------------------------------------------------------------


# ---- per-run intervals of proportions ---------------------------------------------------------


def scipy_wilson(k, n, level=0.95):
    interval = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return interval.low, interval.high


@pytest.mark.parametrize("k, n", [(9, 10), (27, 30), (50, 100), (3, 40), (40, 40), (0, 25)])
def test_wilson_interval_at_the_binomial_variance_is_scipys(k, n):
    """Replicates whose (V / (V - 1) scaled) variance is p (1 - p) / n give n_eff = n: the plain
    Wilson interval of k successes in n, as scipy's; at p = 0 or 1 (no spread) n_eff = sizes."""
    p, volumes = k / n, 20
    signs = np.tile([1.0, -1.0], 50)  # mean 0, sample variance 100 / 99
    spread = math.sqrt(p * (1 - p) / n * (volumes - 1) / volumes * 99 / 100)
    replicates = (p + spread * signs)[:, None]
    low, high = wilson_intervals(np.array([p]), replicates, np.array([float(n)]), 0.95, volumes)
    assert (low[0], high[0]) == pytest.approx(scipy_wilson(k, n), abs=1e-12)
    # a larger size cap changes nothing where the variance sets n_eff; a smaller one binds
    if 0 < k < n:
        assert wilson_intervals(np.array([p]), replicates, np.array([1e9]), 0.95, volumes)[0][0] == pytest.approx(low[0], abs=1e-12)
        capped = wilson_intervals(np.array([p]), replicates, np.array([n / 4]), 0.95, volumes)
        assert capped[0][0] < low[0] and capped[1][0] > high[0]


def test_wilson_interval_without_clusters_is_the_binomial_one_and_nan_where_undefined():
    """One slice per volume: the volume bootstrap's variance (scaled by V / (V - 1)) estimates
    p (1 - p) / n, so the interval is close to scipy's Wilson interval of k in n."""
    rng = np.random.default_rng(5)
    n, k = 60, 51
    hits = np.zeros(n)
    hits[rng.permutation(n)[:k]] = 1
    counts, _ = volume_counts(np.arange(n), 20000, 3)
    replicates = (counts @ hits / n)[:, None]
    low, high = wilson_intervals(np.array([k / n]), replicates, np.array([float(n)]), 0.95, n)
    assert (low[0], high[0]) == pytest.approx(scipy_wilson(k, n), abs=0.004)
    nan = wilson_intervals(np.array([math.nan, 0.5]), np.full((10, 2), math.nan), np.ones(2) * 9, 0.95, 5)
    assert np.isnan(nan).all()


def test_run_proportion_intervals_cover_a_known_truth_where_percentile_intervals_miss():
    """A simulation with a known truth: 10 volumes of 6 slices (positives clustered in volumes,
    a volume effect), sensitivity Phi(1.5 / sqrt(1.49)) = 0.89 at the threshold 0.5; 300
    replications x 4 independent labels. The per-run rows' sensitivity interval (cluster-adjusted
    Wilson) covers it >= 0.9 of the time; the percentile interval of the same replicates, below
    0.8. The AUC rows keep the percentile interval."""
    truth = norm.cdf(1.5 / math.sqrt(0.7**2 + 1))
    wilson_hits, percentile_hits, widths = [], [], []
    for replication in range(300):
        targets, volumes, effect, shared = clustered(10, seed=100 + replication)
        scores = {("r", "eval", "clean", 0): run_scores(targets, effect, shared, 1.5, replication)}
        statistics = tables([ArmRuns("arm", ["r"], ["eval"])], scores, targets, volumes, replicates=200,
                            artifacts=(), severities=(), seed=replication)
        rows = {(r["label"], r["metric"]): r for r in statistics.run_rows}
        counts, volume = volume_counts(volumes, 200, replication)
        replicates = CellStatistics.of(targets, scores[("r", "eval", "clean", 0)], np.full(4, 0.5), volume,
                                       10).replicates(counts)
        low, high = intervals(replicates["sensitivity"], 0.95)
        auc_low, auc_high = intervals(replicates["auc"], 0.95)
        for k, label in enumerate(LABELS):
            row = rows[(label, "sensitivity")]
            if math.isnan(row["value"]):
                continue  # no positive volume
            wilson_hits.append(row["ci_low"] <= truth <= row["ci_high"])
            percentile_hits.append(low[k] <= truth <= high[k])
            widths.append((row["ci_high"] - row["ci_low"], high[k] - low[k]))
            auc = rows[(label, "auc")]
            assert (auc["ci_low"], auc["ci_high"]) == pytest.approx((auc_low[k], auc_high[k]), abs=1e-12, nan_ok=True)
    wilson_width, percentile_width = np.mean(widths, axis=0)
    assert len(wilson_hits) > 1000
    assert np.mean(wilson_hits) >= 0.9 > 0.8 > np.mean(percentile_hits)
    assert percentile_width < wilson_width < 2 * percentile_width  # wider, not absurdly


def tables(arm_runs, scores, targets, volumes, replicates=200, artifacts=("blur",), severities=(1, 2),
           reference=None, resample_volumes=True, seed=0, thresholds=None):
    runs = {run: ("batch", i) for arm in arm_runs for i, run in enumerate(arm.runs)}
    statistics = ArmStatistics(targets, volumes, arm_runs, runs, reference=reference,
                               replicates=replicates, resample_volumes=resample_volumes, seed=seed,
                               level=0.95)
    statistics.compute(list(artifacts), list(severities),
                       lambda run, mode, artifact, severity: scores[(run, mode, artifact, severity)],
                       thresholds or (lambda *key: np.full(4, 0.5)))
    return statistics


def simulate_cells(runs, targets, effect, shared, strengths, modes=("eval",), artifacts=("blur",),
                   severities=(1, 2), drop=0.4):
    scores = {}
    for run in runs:
        for mode in modes:
            for artifact in ("clean", *artifacts):
                for severity in ((0,) if artifact == "clean" else severities):
                    strength = strengths[run] - drop * severity
                    scores[(run, mode, artifact, severity)] = run_scores(targets, effect, shared,
                                                                         strength, stable_seed(run, mode, artifact, severity) % 997)
    return scores


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_arm_replicates_are_the_mean_over_drawn_seeds_on_drawn_volumes():
    """Replicate b rebuilt by hand (warnings: sklearn on a resample without positives): volume
    counts from volume_counts(seed), each arm's seed draws from default_rng([seed, SEED_STREAM])
    in arm order; with scikit-learn's weighted AUC of each run on the resampled volumes, the arm
    AUC = mean over all k runs + sqrt(k / (k - 1)) x (mean over the drawn runs - that mean),
    clipped to [0, 1], and its percentile interval; the arm sensitivity's Wilson interval."""
    targets, volumes, effect, shared = clustered(12, seed=5)
    arms = [ArmRuns("a", ["a0", "a1", "a2"], ["eval"]), ArmRuns("b", ["b0", "b1"], ["eval"])]
    strengths = {"a0": 1.0, "a1": 1.6, "a2": 2.2, "b0": 0.8, "b1": 1.4}
    scores = simulate_cells(strengths, targets, effect, shared, strengths)
    replicates = 40
    statistics = tables(arms, scores, targets, volumes, replicates=replicates, artifacts=(), severities=(),
                        reference="a")
    counts, volume = volume_counts(volumes, replicates, 0)
    rng = np.random.default_rng([0, SEED_STREAM])
    draws = {arm.name: rng.integers(0, len(arm.runs), size=(replicates, len(arm.runs))) for arm in arms}

    def arm_auc(arm, b, k):
        aucs = [roc_auc_score(targets[:, k], scores[(run, "eval", "clean", 0)][:, k],
                              sample_weight=counts[b][volume]) for run in arm.runs]
        drawn = np.mean([aucs[r] for r in draws[arm.name][b]])
        n = len(arm.runs)
        return np.clip(np.mean(aucs) + np.sqrt(n / (n - 1)) * (drawn - np.mean(aucs)), 0, 1)

    expected = {arm.name: np.array([[arm_auc(arm, b, k) for k in range(4)] for b in range(replicates)])
                for arm in arms}
    rows = {(r["arm"], r["label"], r["metric"]): r for r in statistics.arm_rows}
    for arm in arms:
        for k, label in enumerate(LABELS):
            row = rows[(arm.name, label, "auc")]
            point = np.mean([roc_auc_score(targets[:, k], scores[(run, "eval", "clean", 0)][:, k]) for run in arm.runs])
            assert row["value"] == pytest.approx(point, abs=1e-12)
            assert row["ci_low"] == pytest.approx(np.nanpercentile(expected[arm.name][:, k], 2.5), abs=1e-12)
            assert row["ci_high"] == pytest.approx(np.nanpercentile(expected[arm.name][:, k], 97.5), abs=1e-12)
    # sensitivity at 0.5: the Wilson score interval, the roots of (p - x)^2 = z^2 x (1 - x) / n_eff,
    # n_eff = p (1 - p) / (V / (V - 1) x the replicates' variance), at most the positives
    def arm_sensitivity(arm, b, k):
        weight, positive = counts[b][volume], targets[:, k]
        values = [np.sum(weight * positive * (scores[(run, "eval", "clean", 0)][:, k] >= 0.5)) / np.sum(weight * positive)
                  for run in arm.runs]
        drawn = np.mean([values[r] for r in draws[arm.name][b]])
        n = len(arm.runs)
        return np.clip(np.mean(values) + np.sqrt(n / (n - 1)) * (drawn - np.mean(values)), 0, 1)

    z2 = norm.ppf(0.975) ** 2
    for arm in arms:
        for k, label in enumerate(LABELS):
            row = rows[(arm.name, label, "sensitivity")]
            with np.errstate(invalid="ignore"):  # a resample without positives: NaN, left out
                values = np.array([arm_sensitivity(arm, b, k) for b in range(replicates)])
            p, variance = row["value"], np.nanvar(values, ddof=1) * 12 / 11
            n = min(p * (1 - p) / variance if variance > 0 else np.inf, targets[:, k].sum())
            low, high = np.sort(np.roots([1 + z2 / n, -(2 * p + z2 / n), p * p]).real)
            assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=1e-9)
    difference = expected["b"].mean(axis=1) - expected["a"].mean(axis=1)
    difference = difference[np.isfinite(difference)]
    row = next(r for r in statistics.comparison_rows if r["label"] == "mean" and r["metric"] == "auc")
    assert (row["arm_a"], row["arm_b"], row["artifact"]) == ("a", "b", "clean")
    assert row["ci_low"] == pytest.approx(np.percentile(difference, 2.5), abs=1e-12)
    other = np.mean(difference >= 0) if row["difference"] < 0 else np.mean(difference <= 0)
    assert row["p_value"] == pytest.approx(min(1, max(2 * other, 1 / difference.size)))
    assert statistics.statistics["seeds_resampled"] is True


def test_null_six_seeds_of_one_norm_in_two_arms():
    """Six runs of one norm (seed-to-seed variation in how well they learned, clustered test
    volumes) split 3 / 3 into two arms: no cell-wise difference is Holm-significant, the primary
    endpoint is not significant, and each arm's intervals are no narrower than a single run's
    test-set interval."""
    targets, volumes, effect, shared = clustered(30, seed=11)
    rng = np.random.default_rng(12)
    strengths = {f"s{i}": 1.5 + 0.3 * rng.normal() for i in range(6)}
    artifacts, severities = ("blur", "noise", "motion"), (1, 2, 3)
    scores = simulate_cells(strengths, targets, effect, shared, strengths, artifacts=artifacts,
                            severities=severities)
    arms = [ArmRuns("first", ["s0", "s1", "s2"], ["eval"]), ArmRuns("second", ["s3", "s4", "s5"], ["eval"])]
    statistics = tables(arms, scores, targets, volumes, replicates=1000, artifacts=artifacts,
                        severities=severities, reference="first")
    rows = statistics.comparison_rows
    cells = [r for r in rows if isinstance(r["severity"], int) and r["severity"] >= 1]
    assert len(cells) == len(artifacts) * len(severities) * 5 * 6
    assert min(r["p_holm"] for r in cells if not math.isnan(r["p_holm"])) > 0.05
    primary = [r for r in rows if (r["artifact"], r["severity"], r["label"], r["metric"]) == ("all", "all", "mean", "auc")]
    assert len(primary) == 1 and primary[0]["p_value"] > 0.05
    assert primary[0]["ci_low"] < 0 < primary[0]["ci_high"]
    arm_of = {run: arm.name for arm in arms for run in arm.runs}
    run_width = {}
    for r in statistics.run_rows:
        if r["label"] == "mean" and r["metric"] == "auc":
            key = (arm_of[r["run"]], r["artifact"], r["severity"])
            run_width.setdefault(key, []).append(r["ci_high"] - r["ci_low"])
    compared = 0
    for r in statistics.arm_rows:
        if r["label"] == "mean" and r["metric"] == "auc" and isinstance(r["severity"], int):
            # no narrower than the median single run of that arm (test-set interval alone)
            assert r["ci_high"] - r["ci_low"] >= np.median(run_width[(r["arm"], r["artifact"], r["severity"])])
            compared += 1
    assert compared == 2 * (1 + len(artifacts) * len(severities))


def test_one_seed_per_arm_leaves_training_variance_unmeasured_and_bootstrap_zero_has_fixed_arms():
    targets, volumes, effect, shared = clustered(10, seed=1)
    strengths = {"x": 1.5, "y": 1.5}
    scores = simulate_cells(strengths, targets, effect, shared, strengths)
    arms = [ArmRuns("x", ["x"], ["eval"]), ArmRuns("y", ["y"], ["eval"])]
    statistics = tables(arms, scores, targets, volumes, reference="x")
    assert statistics.statistics["seeds_resampled"] is False
    fixed = tables(arms, scores, targets, volumes, reference="x", resample_volumes=False)
    assert all(math.isnan(r["ci_low"]) for r in fixed.arm_rows)
    assert all(math.isnan(r["ci_low"]) for r in fixed.run_rows)


def test_relative_ce_is_undefined_where_the_reference_does_not_degrade_and_mce_averages_every_artifact():
    targets, volumes, effect, shared = clustered(20, seed=4)
    runs = {"ref": 1.8, "other": 1.8}
    scores = {}
    for run in runs:
        for artifact in ("clean", "blur", "flat"):
            for severity in ((0,) if artifact == "clean" else (1, 2)):
                # "flat" leaves the reference exactly as clean: a zero drop
                drop = 0.0 if (artifact in ("clean",) or (artifact == "flat" and run == "ref")) else 0.6 * severity
                scores[(run, "eval", artifact, severity)] = run_scores(
                    targets, effect, shared, runs[run] - drop, 0 if (run == "ref" and drop == 0) else stable_seed(run, artifact, severity) % 99)
    arms = [ArmRuns("ref", ["ref"], ["eval"]), ArmRuns("other", ["other"], ["eval"])]
    statistics = tables(arms, scores, targets, volumes, artifacts=("blur", "flat"), reference="ref")
    rows = {(r["arm"], r["artifact"], r["metric"]): r for r in statistics.arm_rows if r["label"] == "mean"}
    assert math.isnan(rows[("other", "flat", "relative_ce")]["value"])
    assert not math.isnan(rows[("other", "blur", "relative_ce")]["value"])
    assert math.isnan(rows[("other", "all", "relative_mce")]["value"])
    ce = [rows[("other", a, "ce")]["value"] for a in ("blur", "flat")]
    assert rows[("other", "all", "mce")]["value"] == pytest.approx(np.mean(ce))
    assert rows[("ref", "blur", "ce")]["value"] == pytest.approx(1.0)


def test_retained_is_undefined_for_an_arm_at_chance_and_the_mean_label_counts_dropped_resamples():
    targets, volumes, effect, shared = clustered(7, seed=8)
    # one label with a single positive volume: resamples that miss it are dropped from the mean
    keep = volumes == volumes[np.flatnonzero(targets[:, 2])[0]]
    targets[:, 2] &= keep
    rng = np.random.default_rng(0)
    scores = {}
    for run, strength in (("good", 2.5), ("chance", 0.0)):
        for artifact, severity in (("clean", 0), ("blur", 1)):
            scores[(run, "eval", artifact, severity)] = (rng.random(targets.shape) if run == "chance"
                                                         else run_scores(targets, effect, shared, strength - severity, 1))
    arms = [ArmRuns("good", ["good"], ["eval"]), ArmRuns("chance", ["chance"], ["eval"])]
    statistics = tables(arms, scores, targets, volumes, replicates=300, severities=(1,))
    rows = {(r["arm"], r["artifact"], r["label"], r["metric"]): r for r in statistics.arm_rows}
    assert all(math.isnan(rows[("chance", "blur", label, "retained")]["value"]) for label in ("mean", "abnormal"))
    assert not math.isnan(rows[("good", "blur", "abnormal", "retained")]["value"])
    counts, volume = volume_counts(volumes, 300, 0)
    positive_volume = np.unique(volume[targets[:, 2]])
    missed = int(np.sum(counts[:, positive_volume].sum(axis=1) == 0))
    assert missed > 0 and statistics.statistics["mean_label"]["resamples_dropped"]["auc"] == missed
