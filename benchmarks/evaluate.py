"""Throughput, stage times and peak memory of `evaluate` over the artifact grid; prints JSON.

Synthesizes `--volumes` knee volumes of `--slices` slices at `--size` px, prepares them all as
the test split, and writes one RUN per norm with freshly initialised weights (seeded;
operating points 0.5): untrained networks predict as fast as trained ones, so this measures
throughput only, never accuracy. After an untimed warm-up (one cell: CUDA context, cuDNN
autotuning, torch.compile's compilation with `--compile`) it times `evaluate` over
`--artifacts` (default: the whole suite) x `--severities`, the batch-norm run in
`--bn-modes` (default eval,adapt: the issue's three arms incl. AdaBN), and reports

    model passes = slices x cells x (runs + batch-norm runs x (1 per extra bn mode, +1 adapt))
                   (adapt: one pass to re-estimate the statistics, one to predict)

as passes/s of the whole evaluate (`model_passes_per_s`) and per norm over that norm's model
passes alone (`passes_per_s_by_norm`); stage seconds (`evaluation.stage_times`: loading,
artifact synthesis, model passes per norm, writing, statistics; CUDA synchronised at every
stage boundary) and the synthesis share of the evaluate's wall time.

`--memory N,N,...`: peak memory of one evaluate (clean + noise 5 + motion 5, every run and
bn mode above) on test splits of N slices each (`--slices` per volume), each in a fresh
process: CUDA `torch.cuda.max_memory_allocated`, CPU the peak resident set (ru_maxrss) and
its growth over the process's resident set before evaluate. The split is streamed from the
STORE, so the peak should not grow with N. On the CPU, glibc's default malloc raises its mmap
threshold after the first large free and then keeps freed batch buffers in its heap, so the
resident set drifts up with the number of batches although nothing holds them; run with
`MALLOC_MMAP_THRESHOLD_=131072` (a fixed threshold) to measure what the data path itself holds.

    python benchmarks/evaluate.py --device cuda --compile                # 320x320, width 64 (the study's size)
    python benchmarks/evaluate.py --device cpu --size 64 --width 16      # CPU
    python benchmarks/evaluate.py --device cpu --size 64 --width 16 --slices 30 --memory 630,6300 --skip-grid

`--work DIR` keeps the synthesized STOREs and reuses them (`--stores-only` makes them without a
device: benchmarks/gpu_evaluate.sh prepares the memory STOREs on the CPU while the GPU times the grid).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
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

MEMORY_GRID = dict(artifacts=["noise", "motion"], severities=[5])


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


def make_store(folder: Path, volumes: int, slices: int, size: int) -> Path:
    """A STORE whose every slice is in the test split (one made before in `folder` is reused)."""
    store = folder / "store"
    if (store / "manifest.json").is_file():
        return store
    synth(folder / "synth", volumes=volumes, slices=slices, crop=size, seed=0)
    prepare(folder / "synth" / "knee", store, annotations=folder / "synth" / "annotations", crop=size,
            fractions=(0.0, 0.0, 1.0), progress=False)
    return store


def make_runs(folder: Path, store: Path, norms: list[str], width: int) -> list[Path]:
    runs = []
    for norm in norms:
        runs.append(folder / "runs" / f"{norm}-seed0")
        make_run(runs[-1], store, norm, width, seed=0)
    return runs


def count_passes(slices: int, cells: int, norms: list[str], bn_modes: list[str]) -> int:
    per_batch_norm_run = len(bn_modes) + ("adapt" in bn_modes)  # adapt: statistics + predictions
    return slices * cells * sum(per_batch_norm_run if norm == "batch" else 1 for norm in norms)


def grid(args, folder: Path) -> dict:
    from mrrobust.evaluation import stage_times

    norms, bn_modes = args.norms.split(","), args.bn_modes.split(",")
    severities = [int(s) for s in args.severities.split(",")]
    artifacts = args.artifacts.split(",") if args.artifacts else list(SUITES["mrrobust"])
    store = make_store(folder / f"store{args.size}-{args.volumes}x{args.slices}", args.volumes, args.slices, args.size)
    runs = make_runs(folder, store, norms, args.width)
    for done in ("warmup", "results"):
        shutil.rmtree(folder / done, ignore_errors=True)
    options = dict(batch_size=args.batch_size, device=args.device, bn_modes=bn_modes, compile=args.compile,
                   progress=False)
    evaluate(runs, store, folder / "warmup", artifacts=["noise"], severities=[1], bootstrap=10,
             **options)
    cpu_started, started = time.process_time(), time.perf_counter()
    with stage_times() as times:
        result = evaluate(runs, store, folder / "results", artifacts=artifacts, severities=severities,
                          bootstrap=args.bootstrap, **options)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    slices = sum(1 for _ in open(store / "slices.csv")) - 1
    cells = 1 + len(artifacts) * len(severities)  # clean + artifacts x severities
    passes = count_passes(slices, cells, norms, bn_modes)
    stages = {name: round(s, 3) for name, s in sorted(times["seconds"].items())}
    per_norm = {norm: round(times["slices"][norm] / times["seconds"][f"model passes: {norm}"], 1)
                for norm in norms if times["slices"].get(norm)}
    foreground = sum(s for name, s in times["seconds"].items() if not name.endswith("(background)"))
    return {"size": args.size, "width": args.width, "slices": slices, "runs": norms, "bn_modes": bn_modes,
            "artifacts": len(artifacts), "severities": severities, "grid_cells": cells,
            "batch_size": args.batch_size, "compile": args.compile, "bootstrap": args.bootstrap,
            "evaluate_summary": {k: v for k, v in result.items() if k != "out"},
            "seconds": round(seconds, 2), "process_cpu_seconds": round(cpu_seconds, 2),
            "model_passes": passes, "model_passes_per_s": round(passes / seconds, 1),
            "passes_per_s_by_norm": per_norm,
            "model_passes_counted": times["slices"], "stage_seconds": stages,
            "other_seconds": round(seconds - foreground, 3),
            "synthesis_share": round(times["seconds"].get("artifact synthesis", 0.0) / seconds, 4)}


def _peak_child(store: str, runs: list[str], out: str, device: str, batch_size: int, bn_modes: list[str],
                compile: bool, answer) -> None:
    """One evaluate in this fresh process; sends its peak memory."""
    import torch

    from mrrobust.evaluation import evaluate as run

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    before = _rss_mib()
    extra = {"compile": True} if compile else {}  # (absent: also runs code from before --compile)
    run(runs, store, out, batch_size=batch_size, device=device, bn_modes=bn_modes, bootstrap=10,
        progress=False, **MEMORY_GRID, **extra)
    answer.send({"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                 "rss_before_evaluate_mib": round(before, 1),
                 "peak_rss_growth_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before, 1),
                 **({"cuda_max_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if cuda else {})})


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(args, folder: Path) -> list[dict]:
    norms, bn_modes = args.norms.split(","), args.bn_modes.split(",")
    rows = []
    for slices in [int(n) for n in args.memory.split(",")]:
        part = folder / f"memory{args.size}-{slices}"
        store = make_store(part, -(-slices // args.slices), args.slices, args.size)
        if args.stores_only:
            continue
        runs = make_runs(part, store, norms, args.width)
        shutil.rmtree(part / "results", ignore_errors=True)
        split = sum(1 for _ in open(store / "slices.csv")) - 1
        receive, send = multiprocessing.get_context("spawn").Pipe(duplex=False)
        child = multiprocessing.get_context("spawn").Process(target=_peak_child, args=(
            str(store), [str(r) for r in runs], str(part / "results"), args.device, args.batch_size, bn_modes,
            args.compile, send))
        child.start()
        peak = receive.recv()
        child.join()
        split_mib = split * args.size * args.size * 8 / 2**20  # the complex split, as held on the device before
        rows.append({"slices": split, "size": args.size, "batch_size": args.batch_size,
                     "complex_split_mib": round(split_mib, 1), **peak})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--slices", type=int, default=16, help="slices per volume")
    parser.add_argument("--norms", default="batch,group,layer")
    parser.add_argument("--bn-modes", default="eval,adapt")
    parser.add_argument("--artifacts", default=None, help="comma-separated (default: every artifact of the suite)")
    parser.add_argument("--severities", default="1,2,3,4,5")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--compile", action="store_true", help="evaluate --compile")
    parser.add_argument("--memory", default=None, help="N,N,...: peak memory on test splits of N slices")
    parser.add_argument("--skip-grid", action="store_true", help="only --memory")
    parser.add_argument("--stores-only", action="store_true",
                        help="only synthesize and prepare the --memory STOREs into --work (no device needed)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the STOREs here and reuse them in later calls (default: a temporary folder)")
    args = parser.parse_args()
    report = {"machine": f"{platform.machine()} {os.cpu_count()} cpu, torch {torch.__version__}, "
                         f"{torch.get_num_threads()} threads",
              "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if not args.skip_grid and not args.stores_only:
            report["grid"] = grid(args, work / "grid")
        if args.memory:
            report["peak_memory"] = memory(args, work)
    if not args.stores_only:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
