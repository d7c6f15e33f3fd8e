"""Throughput of `evaluate` over the artifact grid; prints one JSON object.

Synthesizes `--volumes` knee volumes at `--size` px, prepares them all as the test split,
and writes one RUN per norm with freshly initialised weights (seeded; operating points 0.5):
untrained networks predict as fast as trained ones, so this measures throughput only, never
accuracy. Then times `evaluate` over every artifact of the suite x `--severities` with the
batch-norm run also adapted (AdaBN), and reports slices/s of model passes:

    model passes = slices x cells x (runs + 2 x batch-norm runs)   (adapt: one pass to
                   re-estimate the statistics, one to predict)

    python benchmarks/evaluate.py --device cuda                       # 320x320, width 64 (the study's size)
    python benchmarks/evaluate.py --device cpu --size 64 --width 16   # CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from mrrobust.artifacts import SUITES
from mrrobust.data.annotations import LABELS
from mrrobust.data.prepare import prepare
from mrrobust.data.store import read_manifest, write_json_atomic
from mrrobust.data.synth import synth
from mrrobust.evaluation import evaluate
from mrrobust.models import build, model_config, save


def make_run(run: Path, store: Path, norm: str, width: int, seed: int) -> None:
    """A RUN folder holding an untrained network (throughput only)."""
    torch.manual_seed(seed)
    model = build(model_config(norm=norm, width=width, groups=min(32, width // 2)))
    config = {"format": "mrrobust-run", "version": 1, "model": model_config(norm=norm, width=width, groups=min(32, width // 2)),
              "training": {"seed": seed, "note": "untrained: benchmarks/evaluate.py"},
              "store": {"path": str(store), "scale": read_manifest(store)["scale"], "crop": read_manifest(store)["crop"]}}
    save(model, config, run)
    points = {label: {"threshold": 0.5, "auc": 0.5, "rule": "untrained"} for label in LABELS}
    write_json_atomic(run / "operating_points.json", {"split": "val", "clean": True, "epoch": 0,
                                                      "slices": 0, "labels": points})
    (run / "metrics.csv").write_text("epoch\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--norms", default="batch,group,layer")
    parser.add_argument("--severities", default="1,2,3,4,5")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    norms = args.norms.split(",")
    severities = [int(s) for s in args.severities.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth(tmp / "synth", volumes=args.volumes, slices=args.slices, crop=args.size, seed=0)
        store = tmp / "store"
        prepare(tmp / "synth" / "knee", store, annotations=tmp / "synth" / "annotations", crop=args.size,
                fractions=(0.0, 0.0, 1.0), progress=False)
        runs = []
        for norm in norms:
            runs.append(tmp / "runs" / f"{norm}-seed0")
            make_run(runs[-1], store, norm, args.width, seed=0)
        # warm-up: one small cell per run (CUDA context, cuDNN autotuning), not timed
        evaluate(runs, store, tmp / "warmup", artifacts=["noise"], severities=[1], batch_size=args.batch_size,
                 device=args.device, bootstrap=0, progress=False)
        start = time.perf_counter()
        result = evaluate(runs, store, tmp / "results", batch_size=args.batch_size, device=args.device,
                          severities=severities, bootstrap=args.bootstrap, progress=False)
        seconds = time.perf_counter() - start
        slices = sum(1 for _ in open(store / "slices.csv")) - 1
        grid = 1 + len(SUITES["mrrobust"]) * len(severities)  # clean + artifacts x severities
        passes = slices * grid * (len(runs) + 2 * norms.count("batch"))
    print(json.dumps({
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, torch {torch.__version__}",
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "size": args.size, "width": args.width, "slices": slices, "runs": norms,
        "severities": severities, "grid_cells": grid, "evaluate_summary": {k: v for k, v in result.items() if k != "out"}, "bootstrap": args.bootstrap,
        "seconds": round(seconds, 2), "model_passes": passes,
        "model_slices_per_s": round(passes / seconds, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
