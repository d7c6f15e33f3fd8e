"""Coverage and width of candidate intervals for ONE run's sensitivity on clustered slices; prints JSON.

The simulation of benchmarks/coverage.py (tau 0): V volumes x 8 slices, a volume positive for a
label w.p. 0.5, then each slice w.p. 0.6; logit beta * y + u_v + e, u_v ~ N(0, 0.7^2), e ~ N(0, 1);
the sensitivity at the threshold 0.5 is Phi(beta / sqrt(1.49)) (0.89 at beta 1.5). The four labels
are independent copies, each counted. Candidates, all from the same volume resamples where they
use any:

- `percentile`: `arm_statistics.intervals` of the cluster-bootstrap replicates;
- `wilson`: `arm_statistics.wilson_intervals` (the Wilson score interval at the effective sample
  size p(1 - p) / v, v = V / (V - 1) x the bootstrap variance; what `evaluate` uses);
- `wilson_df`: the same with a degrees-of-freedom correction in the spirit of Korn & Graubard
  (1998): n_eff x (z / t_{V-1})^2;
- `bca`: scipy.stats.bootstrap(method="BCa") over the volumes (each volume's true positives and
  positives as a paired sample, statistic sum TP / sum P; jackknife acceleration over volumes);
- `t`: the estimate +- t_{V-1} x the bootstrap standard error.

    python benchmarks/interval_candidates.py --replications 300 --bootstrap 1000
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
from scipy.stats import bootstrap, norm, t

from mrrobust.arm_statistics import intervals, wilson_intervals
from mrrobust.resampling import CellStatistics, volume_counts

VOLUME_SD, SLICES, POSITIVE_VOLUME, POSITIVE_SLICE = 0.7, 8, 0.5, 0.6
METHODS = ("percentile", "wilson", "wilson_df", "bca", "t")


def simulate(rng, volumes: int, beta: float):
    volume = np.repeat(np.arange(volumes), SLICES)
    targets = (rng.random((volumes, 4)) < POSITIVE_VOLUME)[volume] & (rng.random((volume.size, 4)) < POSITIVE_SLICE)
    logits = beta * targets + rng.normal(0, VOLUME_SD, (volumes, 4))[volume] + rng.normal(size=targets.shape)
    return targets, volume, 1 / (1 + np.exp(-logits))


def candidates(targets, volume, scores, volumes: int, replicates: int, seed: int, level: float) -> dict:
    """{method: (low (4,), high (4,))} for the four labels' sensitivity."""
    statistics = CellStatistics.of(targets, scores, np.full(4, 0.5), volume, volumes)
    counts, _ = volume_counts(volume, replicates, seed)
    values = statistics.replicates(np.vstack([np.ones((1, volumes)), counts]))["sensitivity"]
    point, draws = values[0], values[1:]
    positives = statistics.positives.sum(axis=1)
    quantile = t.ppf(0.5 * (1 + level), volumes - 1) / norm.ppf(0.5 * (1 + level))
    mean = np.nanmean(draws, axis=0)
    out = {"percentile": intervals(draws, level),
           "wilson": wilson_intervals(point, draws, positives, level, volumes),
           "wilson_df": wilson_intervals(point, mean + quantile * (draws - mean), positives, level, volumes)}
    se = np.nanstd(draws, axis=0, ddof=1)
    out["t"] = (point - quantile * norm.ppf(0.5 * (1 + level)) * se,
                point + quantile * norm.ppf(0.5 * (1 + level)) * se)
    low, high = np.full(4, math.nan), np.full(4, math.nan)
    for k in range(4):
        hits, total = statistics.true_positives[k], statistics.positives[k]
        if total.sum() == 0:
            continue
        if point[k] in (0.0, 1.0):  # no spread: every resample equals the estimate
            low[k] = high[k] = point[k]
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            result = bootstrap((hits, total), lambda a, b, axis=-1: a.sum(axis) / b.sum(axis), paired=True,
                               vectorized=True, n_resamples=replicates, confidence_level=level,
                               method="BCa", random_state=np.random.default_rng(seed))
        low[k], high[k] = result.confidence_interval
    out["bca"] = (low, high)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", default="7,30,100")
    parser.add_argument("--beta", type=float, default=1.5)
    parser.add_argument("--replications", type=int, default=300)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started, cpu = time.perf_counter(), time.process_time()
    truth = float(norm.cdf(args.beta / math.sqrt(VOLUME_SD**2 + 1)))
    results = []
    for volumes in [int(v) for v in args.volumes.split(",")]:
        rng = np.random.default_rng([args.seed, volumes])
        covered = {m: [] for m in METHODS}
        widths = {m: [] for m in METHODS}
        for replication in range(args.replications):
            targets, volume, scores = simulate(rng, volumes, args.beta)
            for method, (low, high) in candidates(targets, volume, scores, volumes, args.bootstrap,
                                                  replication, args.level).items():
                defined = np.isfinite(low)
                covered[method].extend(((low <= truth) & (truth <= high))[defined])
                widths[method].extend((high - low)[defined])
        summary = {"volumes": volumes, "replications": args.replications, "labels": 4,
                   **{m: {"coverage": round(float(np.mean(covered[m])), 3),
                          "mean_width": round(float(np.mean(widths[m])), 3),
                          "defined": len(covered[m])} for m in METHODS}}
        results.append(summary)
        print(json.dumps(summary), flush=True)
    print(json.dumps({"benchmark": "interval_candidates", "truth": truth, "level": args.level,
                      "settings": vars(args), "results": results,
                      "wall_s": round(time.perf_counter() - started, 1),
                      "cpu_s": round(time.process_time() - cpu, 1)}))


if __name__ == "__main__":
    main()
