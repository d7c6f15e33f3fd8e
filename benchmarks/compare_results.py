"""Compare two RESULTS folders of the same grid (e.g. CUDA bf16 vs CPU fp32); prints JSON:
the largest absolute difference of the predicted probabilities per bn_mode, and of each
metric's value in results.csv (mean label), with where it occurs.

    python benchmarks/compare_results.py RESULTS_A RESULTS_B
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    a, b = (Path(p) for p in sys.argv[1:3])
    probabilities = {}
    for path in sorted((a / "predictions").rglob("*.npy")):
        other = b / path.relative_to(a)
        mode = path.parent.name
        diff = float(np.abs(np.load(path) - np.load(other)).max())
        if diff >= probabilities.get(mode, {}).get("max_abs", -1):
            probabilities[mode] = {"max_abs": diff, "where": str(path.relative_to(a / "predictions"))}

    def table(folder: Path) -> dict:
        with open(folder / "results.csv", newline="") as fh:
            return {(r["run"], r["bn_mode"], r["artifact"], r["severity"], r["metric"]): r["value"]
                    for r in csv.DictReader(fh) if r["label"] == "mean"}

    ta, tb = table(a), table(b)
    metrics = {}
    for key, value in ta.items():
        if value and tb.get(key):
            diff = abs(float(value) - float(tb[key]))
            if diff >= metrics.get(key[-1], {}).get("max_abs", -1):
                metrics[key[-1]] = {"max_abs": round(diff, 6), "where": "/".join(key[:-1])}
    print(json.dumps({"probabilities": probabilities, "mean_label_metrics": metrics,
                      "cells": len(list((a / "predictions").rglob("*.npy")))}, indent=2))


if __name__ == "__main__":
    main()
