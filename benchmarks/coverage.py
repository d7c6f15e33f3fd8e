"""Coverage of the arm and run intervals of `evaluate` on simulated clustered data; prints JSON.

Each replication draws a test set of V volumes x S slices and an arm of k runs (training
seeds), and computes the two-level bootstrap of `mrrobust.arm_statistics` exactly as
`evaluate` does (B replicates, 95% intervals: percentile for the AUC, cluster-adjusted Wilson for
sensitivity, specificity and balanced accuracy). It records whether the arm's interval covers the
arm's true value (the mean over the population of seeds) and whether one run's interval (volumes
resampled alone) covers that run's true value, and the intervals' mean widths (`width_*`).

The simulation has a known truth. Per label: a volume is positive w.p. 0.5, then each of its
slices w.p. 0.6 (positives cluster in volumes). A run's logit is z = beta_r * y + u_v + e:
u_v ~ N(0, 0.7^2) a volume effect shared by all runs, e ~ N(0, 1) slice noise (64% of its variance
shared by all runs), beta_r = beta + tau * N(0, 1) the run's (seed's) skill. Across volumes
z_pos - z_neg ~ N(beta_r, 2 s^2) with s^2 = 0.49 + 1, so the population AUC of a run is
Phi(beta_r / sqrt(2 s^2)) and its sensitivity at the threshold 0.5 (z > 0) is Phi(beta_r / s); the
arm's truths are their means over seeds, Phi(beta / sqrt(2 s^2 + tau^2)) and
Phi(beta / sqrt(s^2 + tau^2)). A negative's logit u_v + e is symmetric about 0: specificity 0.5
for every run, balanced accuracy (sensitivity + 0.5) / 2. The four labels are independent copies, so the mean label's truth
equals each label's. The slice-level AUC of a finite test set also counts the pairs within one
volume (about 1/V of all pairs), where the volume effect cancels: at small V it is biased
upwards, and the coverage here is against the population value, bias included.

    python benchmarks/coverage.py                       # 7, 30, 100 volumes; tau 0 and 0.3
    python benchmarks/coverage.py --replications 100 --bootstrap 500   # quicker
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
from scipy.stats import norm

from mrrobust.arm_statistics import ArmRuns, ArmStatistics

VOLUME_SD, SHARED = 0.7, 0.8  # volume effect sd; sqrt of the shared share of the slice noise
POSITIVE_VOLUME, POSITIVE_SLICE = 0.5, 0.6
THRESHOLD = 0.5
ARM_KEYS = (("abnormal", "auc"), ("abnormal", "sensitivity"), ("mean", "auc"))
RUN_KEYS = (("abnormal", "auc"), ("abnormal", "sensitivity"), ("mean", "auc"), ("mean", "sensitivity"),
            ("abnormal", "specificity"), ("abnormal", "balanced_accuracy"))


def truths(beta: float, tau: float) -> dict:
    s2 = VOLUME_SD**2 + 1.0
    sensitivity = float(norm.cdf(beta / math.sqrt(s2 + tau**2)))
    # a negative's logit u_v + e is symmetric about the threshold 0: specificity 0.5 for every run
    return {"auc": float(norm.cdf(beta / math.sqrt(2 * s2 + tau**2))), "sensitivity": sensitivity,
            "specificity": 0.5, "balanced_accuracy": 0.5 * (sensitivity + 0.5)}


def run_truths(beta_r: float) -> dict:
    return truths(beta_r, 0.0)


def replication(rng, volumes: int, slices: int, runs: int, beta: float, tau: float, bootstrap: int,
                seed: int) -> dict:
    volume = np.repeat(np.arange(volumes), slices)
    targets = (rng.random((volumes, 4)) < POSITIVE_VOLUME)[volume] & (rng.random((volume.size, 4)) < POSITIVE_SLICE)
    effect = rng.normal(0, VOLUME_SD, (volumes, 4))[volume]
    shared = rng.normal(size=targets.shape)
    betas = beta + tau * rng.normal(size=runs)
    scores = {}
    for r, b in enumerate(betas):
        noise = SHARED * shared + math.sqrt(1 - SHARED**2) * rng.normal(size=targets.shape)
        scores[f"r{r}"] = 1 / (1 + np.exp(-(b * targets + effect + noise)))
    arm = ArmRuns("arm", list(scores), ["eval"])
    statistics = ArmStatistics(targets, np.array([f"v{v}" for v in volume]), [arm],
                               {name: ("batch", r) for r, name in enumerate(scores)}, reference=None,
                               replicates=bootstrap, resample_volumes=True, seed=seed, level=0.95)
    statistics.compute([], [], lambda run, mode, artifact, severity: scores[run],
                       lambda *key: np.full(4, THRESHOLD))
    arm_truth, run_truth = truths(beta, tau), run_truths(float(betas[0]))
    out = {}
    for row in statistics.arm_rows:
        if (row["label"], row["metric"]) in ARM_KEYS:
            out.update(_covers(f"arm_{row['label']}_{row['metric']}", row, arm_truth[row["metric"]]))
    for row in statistics.run_rows:
        if row["run"] == "r0" and (row["label"], row["metric"]) in RUN_KEYS:
            out.update(_covers(f"run_{row['label']}_{row['metric']}", row, run_truth[row["metric"]]))
    out["dropped_share"] = statistics.statistics["mean_label"]["resamples_dropped"]["auc"] / bootstrap
    return out


def _covers(key: str, row: dict, truth: float) -> dict:
    """{key: 1.0 if the interval covers `truth` else 0.0, width_key: its width}; NaN for an
    undefined interval (counted apart)."""
    if math.isnan(row["ci_low"]):
        return {key: math.nan, f"width_{key}": math.nan}
    return {key: float(row["ci_low"] <= truth <= row["ci_high"]),
            f"width_{key}": row["ci_high"] - row["ci_low"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", default="7,30,100")
    parser.add_argument("--taus", default="0,0.3", help="seed-to-seed sd of the runs' skill")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="runs (seeds) per arm")
    parser.add_argument("--beta", type=float, default=1.5)
    parser.add_argument("--replications", type=int, default=300)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started, cpu = time.perf_counter(), time.process_time()
    results = []
    for tau in [float(t) for t in args.taus.split(",")]:
        for volumes in [int(v) for v in args.volumes.split(",")]:
            rng = np.random.default_rng([args.seed, volumes, int(tau * 1000)])
            rows = [replication(rng, volumes, args.slices, args.runs, args.beta, tau, args.bootstrap,
                                seed=i) for i in range(args.replications)]
            summary = {"volumes": volumes, "tau": tau, "replications": args.replications}
            for key in rows[0]:
                values = np.array([row[key] for row in rows], dtype=np.float64)
                if key == "dropped_share":
                    summary["mean_label_resamples_dropped"] = round(float(values.mean()), 4)
                else:
                    finite = values[np.isfinite(values)]
                    summary[key] = round(float(finite.mean()), 3) if finite.size else None
                    if finite.size < values.size and not key.startswith("width_"):
                        summary[f"{key}_undefined"] = int(values.size - finite.size)
            results.append(summary)
            print(json.dumps(summary), flush=True)
    print(json.dumps({"benchmark": "coverage", "goal": ">= 0.90 at 30 volumes", "level": 0.95,
                      "settings": vars(args), "truth": {"tau=0": truths(args.beta, 0.0)},
                      "results": results, "wall_s": round(time.perf_counter() - started, 1),
                      "cpu_s": round(time.process_time() - cpu, 1)}))


if __name__ == "__main__":
    main()
