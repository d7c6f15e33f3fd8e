"""CPU time of the RESULTS statistics (`mrrobust.arm_statistics`: results.csv, arms.csv and
arm_comparisons.csv rows) on simulated predictions of the demo's shape; prints one JSON object.

Default: 3 norms x 3 seeds (9 runs; the batch-norm runs in eval, adapt, prior and tent), 10
artifacts x 5 severities + clean (51 cells), 14 test volumes x 16 slices, B = 2000 replicates.

    python benchmarks/arm_statistics.py
    python benchmarks/arm_statistics.py --volumes 150 --slices 35    # a real-size test split
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mrrobust.arm_statistics import ArmRuns, ArmStatistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=14)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--artifacts", type=int, default=10)
    parser.add_argument("--severities", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    volume = np.repeat(np.arange(args.volumes), args.slices)
    targets = rng.random((volume.size, 4)) < 0.3
    norms = ("batch", "group", "layer")
    runs = {f"{n}-seed{k}": (n, k) for n in norms for k in range(args.seeds)}
    arms = [ArmRuns(n, [f"{n}-seed{k}" for k in range(args.seeds)],
                    ["eval", "adapt", "prior", "tent"] if n == "batch" else ["eval"]) for n in norms]
    artifacts = [f"artifact{i}" for i in range(args.artifacts)]
    severities = list(range(1, args.severities + 1))
    cache = {}

    def scores(run, mode, artifact, severity):
        key = (run, mode, artifact, severity)
        if key not in cache:
            noise = np.random.default_rng(len(cache)).normal(size=targets.shape)
            cache[key] = 1 / (1 + np.exp(-(1.5 * targets - 0.2 * severity + noise)))
        return cache[key]

    for run in runs:  # predictions made before the clock starts, as evaluate reads files
        for arm in arms:
            if run in arm.runs:
                for mode in arm.modes:
                    for artifact, severity in [("clean", 0)] + [(a, s) for a in artifacts for s in severities]:
                        scores(run, mode, artifact, severity)
    cpu, wall = time.process_time(), time.perf_counter()
    statistics = ArmStatistics(targets, np.array([f"v{v}" for v in volume]), arms, runs,
                               reference="batch", replicates=args.bootstrap, resample_volumes=True,
                               seed=0, level=0.95)
    statistics.compute(artifacts, severities, scores, lambda *key: np.full(4, 0.5))
    print(json.dumps({"benchmark": "arm_statistics", "settings": vars(args),
                      "runs": len(runs), "cells": 1 + len(artifacts) * len(severities),
                      "run_mode_cells": len(cache), "rows": {"results": len(statistics.run_rows),
                                                             "arms": len(statistics.arm_rows),
                                                             "arm_comparisons": len(statistics.comparison_rows)},
                      "cpu_s": round(time.process_time() - cpu, 2),
                      "wall_s": round(time.perf_counter() - wall, 2)}))


if __name__ == "__main__":
    main()
