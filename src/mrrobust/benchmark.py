"""The benchmark: train every norm x seed -> evaluate the artifact grid -> report.

Every step writes a folder a later step reads and resumes or is skipped when its output
is complete, so a killed benchmark or demo re-run continues where it stopped. Before it
trains anything the benchmark compares every setting with what `runs/` and `results/`
already hold (`plan`) and refuses differences, unless `retrain`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mrrobust.errors import MrRobustError

NORMS = ("batch", "group", "layer")
SEEDS = (0, 1, 2)  # three seeds per norm: an arm measures its training variance


def benchmark(store: Path, out: Path, norms=NORMS, seeds=SEEDS, *, train_options: dict | None = None,
              evaluate_options: dict | None = None, reference_norm: str | None = None, progress: bool = True,
              retrain: bool = False, dry_run: bool = False, cluster=None, shards: int = 1,
              parallel: int = 1) -> dict:
    """Train every norm x seed into `out/runs/<norm>-seed<k>`, evaluate them on the artifact
    grid into `out/results`, and report into `out/report`. `train_options` go to
    `training.train` (not norm, seed, resume), `evaluate_options` to `evaluation.evaluate`.

    Before anything is trained, every argument is checked and `plan` compares every setting
    with what `out/runs` and `out/results` hold: differences are refused with their list,
    unless `retrain` (then the differing runs, and a RESULTS/REPORT made from other runs or
    settings, are deleted and redone). `dry_run`: only the plan (and a time estimate), nothing
    written. `cluster` (an `executor.ClusterOptions`): the steps run as scheduler jobs instead
    of in this process (training jobs, then `shards` evaluation shards as one job array, then
    the report; `_on_cluster`). `parallel` > 1 (CPU training): that many runs train at once in
    worker processes, each with cpu_count / parallel torch threads (`_train_in_workers`; the
    small networks of a CPU benchmark do not scale over threads). Returns {"plan": plan} for a dry run, else {"runs": {name:
    best epoch row}, "results": evaluate's summary, "report": report's, "plan": plan}."""
    from mrrobust.evaluation import evaluate
    from mrrobust.report import report
    from mrrobust.training import train

    out = Path(out)
    train_options, evaluate_options = dict(train_options or {}), dict(evaluate_options or {})
    quiet = train_options.pop("quiet", not progress)
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise MrRobustError(f"--shards {shards!r} must be a whole number >= 1")
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise MrRobustError(f"--parallel {parallel!r} must be a whole number >= 1")
    if parallel > 1 and train_options.get("accelerator", "auto") != "cpu":
        raise MrRobustError("--parallel trains several runs at once on the CPU only; pass --accelerator cpu, "
                            "or use --devices for DDP on GPUs")
    the_plan = plan(store, out, norms, seeds, train_options=train_options, evaluate_options=evaluate_options)
    if cluster is not None:
        cluster.check()  # an executor that is not installed or configured: refused before any work
    foreign = [run for run in the_plan["runs"] if run["state"] == "foreign"]
    if foreign:
        raise MrRobustError(f"{foreign[0]['path']} is not empty and is not a RUN; move it away or pass another --out")
    differences = plan_differences(the_plan)
    if differences and not retrain and not dry_run:
        shown = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
        raise MrRobustError(f"{out} holds finished work made with other settings ({shown}); nothing was trained: "
                            f"use the same settings, pass --retrain to redo that work, or pass another --out")
    if dry_run:
        the_plan["estimate"] = estimate(the_plan, store, train_options)
        return {"plan": the_plan}
    if retrain:
        for run in the_plan["runs"]:
            if run["state"] == "differs":
                shutil.rmtree(run["path"])
                run["state"] = "new"
        if the_plan["results"]["state"] == "differs" or the_plan["report_changes"]:
            shutil.rmtree(out / "results", ignore_errors=True)
            shutil.rmtree(out / "report", ignore_errors=True)
    if cluster is not None:
        return _on_cluster(the_plan, store, out, train_options, evaluate_options, reference_norm, quiet,
                           cluster, shards)
    from mrrobust.progress import StepLog, logging_to_file

    pending = [run for run in the_plan["runs"] if run["state"] != "finished"]
    if parallel > 1 and len(pending) > 1:
        _train_in_workers(pending, store, quiet, train_options, parallel, progress)
    steps = StepLog("benchmark", len(the_plan["runs"])) if progress and logging_to_file() else None
    runs = {}
    for run in the_plan["runs"]:
        if progress and run["state"] != "finished":
            print(f"train {run['norm']} norm, seed {run['seed']} -> {run['path']}", flush=True)
        # a finished run is not trained again; a killed one continues from its checkpoint
        summary = train(store, run["path"], run["norm"], seed=run["seed"], quiet=quiet,
                        resume=run["state"] in ("resume", "finished"), **train_options)
        if summary is None:  # a DDP rank other than 0: rank 0 alone evaluates and reports
            return {}
        runs[Path(run["path"]).name] = _best_epoch(Path(run["path"]))
        if steps:
            steps.advance(f"{run['name']} trained")
    results = evaluate([Path(run["path"]) for run in the_plan["runs"]], store, out / "results",
                       progress=progress, **evaluate_options)
    written = report(out / "results", out / "report", reference_norm=reference_norm)
    return {"runs": runs, "results": results, "report": written, "plan": the_plan}


def train_job(store: Path, run: Path, norm: str, seed: int, quiet: bool, options: dict):
    """One training job (runs in a scheduler job): resumes a killed run from its checkpoint."""
    from mrrobust.training import train

    run = Path(run)
    return train(store, run, norm, seed=seed, quiet=quiet, resume=(run / "checkpoints" / "last.ckpt").exists(),
                 **options)


def _worker_start(threads: int) -> None:
    """A training worker: `threads` torch threads; dies with the benchmark (Linux
    PR_SET_PDEATHSIG), so a killed benchmark leaves no orphan writing its RUNs."""
    import ctypes
    import signal
    import sys

    import torch

    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _train_in_workers(runs: list[dict], store: Path, quiet: bool, options: dict, parallel: int,
                      progress: bool) -> None:
    """Train the planned `runs` (dicts of `plan`) `parallel` at a time in spawned worker
    processes; each RUN is exactly what `train` in this process writes with that thread
    count (same command, same bytes). Marks them finished in the plan."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // parallel)
    with ProcessPoolExecutor(min(parallel, len(runs)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_start, initargs=(threads,)) as pool:
        futures = {}
        for run in runs:
            if progress:
                print(f"train {run['norm']} norm, seed {run['seed']} -> {run['path']} (in a worker, "
                      f"{threads} thread{'s' if threads > 1 else ''})", flush=True)
            futures[run["name"]] = pool.submit(train_job, Path(store), Path(run["path"]), run["norm"], run["seed"],
                                               quiet, options)
        for run in runs:
            futures[run["name"]].result()  # a worker's MrRobustError is raised here, as in this process
            run["state"] = "finished"


def _on_cluster(the_plan: dict, store: Path, out: Path, train_options: dict, evaluate_options: dict,
                reference_norm, quiet: bool, cluster, shards: int) -> dict:
    """The benchmark as three job stages through `executor.run_stages`: the unfinished
    training runs (one job each; DDP over `devices` x `num_nodes` tasks), the evaluation as
    `shards` jobs of one array (`evaluate --shard I/N` into `out/shards/I-of-N`; one shard
    evaluates into `out/results`), the report (CPU only; merges the shards into
    `out/report/results`)."""
    import functools

    from mrrobust.evaluation import evaluate
    from mrrobust.executor import Job, Stage, run_stages
    from mrrobust.report import report

    runs = [Path(run["path"]) for run in the_plan["runs"]]
    devices = int(train_options.get("devices", 1))
    on_gpu = train_options.get("accelerator", "auto") != "cpu" and cluster.gpus_per_node > 0
    training = Stage("train", [
        Job(run["name"], functools.partial(train_job, Path(store), Path(run["path"]), run["norm"], run["seed"],
                                           quiet, train_options),
            done=(lambda state=run["state"]: state == "finished")) for run in the_plan["runs"]],
        tasks_per_node=devices if on_gpu else 1, nodes=int(train_options.get("num_nodes", 1)))
    if shards == 1:
        folders, results = [out / "results"], out / "results"
    else:
        folders = [out / "shards" / f"{i}-of-{shards}" for i in range(1, shards + 1)]
        results = folders
    evaluation = Stage("evaluate", [
        Job(f"{i}/{shards}", functools.partial(evaluate, runs, Path(store), folder, progress=False,
                                               **({"shard": f"{i}/{shards}"} if shards > 1 else {}),
                                               **evaluate_options))
        for i, folder in enumerate(folders, start=1)])
    reporting = Stage("report", [Job("report", functools.partial(report, results, out / "report",
                                                                 reference_norm=reference_norm))], cpu_only=True)
    outcome = run_stages([training, evaluation, reporting], cluster)
    return {"runs": {run.name: _best_epoch(run) for run in runs}, "results": outcome["evaluate"][0] or {},
            "report": outcome["report"][0], "plan": the_plan}


def _check_norms(norms) -> list[str]:
    from mrrobust.models import NORMS

    norms = [norms] if isinstance(norms, str) else list(norms)
    unknown = [n for n in norms if n not in NORMS]
    twice = sorted({n for n in norms if norms.count(n) > 1})
    if not norms or unknown or twice:
        problem = (f"unknown norm(s) {', '.join(map(repr, unknown))}" if unknown
                   else f"norm(s) {', '.join(twice)} given twice" if twice else "no norm given")
        raise MrRobustError(f"--norms: {problem}; choose among {', '.join(NORMS)}, each once")
    return norms


def _check_seeds(seeds) -> list[int]:
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32]
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if not seeds or bad or twice:
        problem = (f"seed(s) {bad} outside 0..{2**32 - 1}" if bad
                   else f"seed(s) {twice} given twice" if twice else "no seed given")
        raise MrRobustError(f"--seeds: {problem}; pass distinct integers such as 0,1,2")
    return seeds


COMPARED_RESULTS = ("store", "split", "suite", "artifacts", "severities", "bn_modes", "bn_prior",
                    "threshold_from", "seed", "bootstrap", "level", "precision")


def plan(store: Path, out: Path, norms=NORMS, seeds=SEEDS, *, train_options: dict | None = None,
         evaluate_options: dict | None = None) -> dict:
    """What `benchmark` would do, from the arguments and what `out` holds (reads only):
    {"runs": [{name, path, norm, seed, state, epochs, max_epochs, changes, train_slices,
    val_slices, config}], "results": {path, state, changes, cells, done, slices},
    "report": path}. Run states: new, restart, resume, finished, differs, foreign;
    results states: new, resume, differs."""
    from mrrobust.contracts import check_prediction, file_digest, read_results_settings
    from mrrobust.data.store import SliceDataset
    from mrrobust.training import planned_config, run_status

    out, store = Path(out), Path(store)
    train_options = {k: v for k, v in (train_options or {}).items() if k not in ("quiet", "resume", "norm", "seed")}
    norms, seeds = _check_norms(norms), _check_seeds(seeds)
    from mrrobust.evaluation import planned_settings

    expected = planned_settings(store, **(evaluate_options or {}))  # what evaluate records
    if expected["bootstrap"] == 0 and len(seeds) == 1:
        raise MrRobustError("--bootstrap 0 with one seed per norm leaves nothing to resample (neither test volumes "
                            "nor seeds): no interval or test is possible; pass --bootstrap 2000 or several --seeds")
    if out.exists() and not out.is_dir():
        raise MrRobustError(f"--out {out} is a file; choose a folder")
    runs = []
    for seed in seeds:
        for norm in norms:
            path = out / "runs" / f"{norm}-seed{seed}"
            config = planned_config(store, norm, seed=seed, **train_options)
            status = run_status(path, config)
            if status["state"] == "differs" and not (path / "config.json").is_file():
                status["state"] = "foreign"
            runs.append({"name": path.name, "path": str(path), "norm": norm, "seed": seed, **status,
                         "max_epochs": config["training"]["max_epochs"], "config": config,
                         "train_slices": config["store"]["train_slices"], "val_slices": config["store"]["val_slices"]})
    test = SliceDataset(store, expected["split"])
    if len(test) == 0:
        raise MrRobustError(f"STORE {store} has no {expected['split']!r} slices to evaluate; prepare it with a "
                            f"non-zero test fraction")
    results = {"path": str(out / "results"), "state": "new", "changes": [], "slices": len(test), "cells": 0, "done": 0}
    per_mode = 1 + len(expected["artifacts"]) * len(expected["severities"])
    for run in runs:
        run["modes"] = [m for m in expected["bn_modes"] if m == "eval" or run["norm"] == "batch"]
        results["cells"] += per_mode * len(run["modes"])
    record = out / "results" / "evaluation.json"
    if record.is_file():
        before = read_results_settings(out / "results")
        changes = [f"{key} {before.get(key)!r} -> {expected[key]!r}" for key in COMPARED_RESULTS
                   if key in before and before[key] != expected[key]]
        old_runs = [r["name"] for r in before["runs"]]
        if old_runs != [r["name"] for r in runs]:
            changes.append(f"runs {old_runs} -> {[r['name'] for r in runs]}")
        for old, run in zip(before["runs"], runs):
            if old["name"] != run["name"]:
                continue
            if run["state"] != "finished":
                changes.append(f"{run['name']} would be trained ({run['state']}) after its evaluation")
            elif old["weights"] != file_digest(Path(run["path"]) / "model.safetensors"):
                changes.append(f"{run['name']} was retrained since its evaluation")
        results["state"] = "differs" if changes else "resume"
        results["changes"] = changes
        if not changes:
            cells = [("clean", 0)] + [(a, s) for a in expected["artifacts"] for s in expected["severities"]]
            for run in runs:
                for mode in run["modes"]:
                    for artifact, severity in cells:
                        try:
                            check_prediction(out / "results" / "predictions" / run["name"] / mode /
                                             f"{artifact}-{severity}.npy", len(test))
                            results["done"] += 1
                        except MrRobustError:
                            pass
    elif (out / "results").exists() and any((out / "results").iterdir()):
        results["state"], results["changes"] = "differs", [f"{out / 'results'} holds no evaluation.json"]
    report = out / "report"
    merged = (report / "results" / "evaluation.json").is_file()  # the report of sharded evaluations (--shards)
    orphan = results["state"] == "new" and report.is_dir() and any(report.iterdir()) and not merged
    return {"out": str(out), "runs": runs, "results": results, "report": str(report), "evaluation": expected,
            "report_changes": [f"{report} holds a report whose results/ are gone"] if orphan else []}


def plan_differences(the_plan: dict) -> list[str]:
    """Every difference between the plan and the finished work in `out`, one string each."""
    lines = [f"runs/{run['name']}: {change}" for run in the_plan["runs"] if run["state"] in ("differs", "foreign")
             for change in run["changes"]]
    return (lines + [f"results: {change}" for change in the_plan["results"]["changes"]]
            + [f"report: {change}" for change in the_plan.get("report_changes", [])])


def _probe(config: dict, crop: int, steps: int = 2) -> tuple[float, float]:
    """Measured seconds per slice of one training step and of one forward pass of the
    planned network, on its device, at `crop` px (batch min(batch_size, 4), float32)."""
    import time

    import torch

    from mrrobust.models import build

    device = torch.device("cuda" if config["training"]["accelerator"] == "gpu" else "cpu")
    batch = min(config["training"]["batch_size"], 4)
    model = build(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    images = torch.randn(batch, 1, crop, crop, device=device)

    def timed(step) -> float:
        step()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / (steps * batch)

    def train_step():
        optimizer.zero_grad()
        model(images).float().sum().backward()
        optimizer.step()

    def eval_step():
        with torch.no_grad():
            model(images)

    model.train()
    train_time = timed(train_step)
    model.eval()
    return train_time, timed(eval_step)


def estimate(the_plan: dict, store: Path, train_options: dict) -> dict:
    """Seconds the plan needs, from throughput measured now (`_probe` of the first run's
    network; training counted to --max-epochs, an upper bound under early stopping;
    corruption cost not included). {"train_s", "evaluate_s", "total_s", "per_train_slice_s",
    "per_eval_slice_s", "device"}."""
    from mrrobust.data.store import read_manifest

    crop = read_manifest(store)["crop"]
    first = the_plan["runs"][0]["config"]
    per_train, per_eval = _probe(first, crop)
    train_s = 0.0
    for run in the_plan["runs"]:
        if run["state"] == "finished":
            continue
        training = run["config"]["training"]
        done = run["epochs"] if run["state"] == "resume" else 0
        batches = {k: training[f"limit_{k}_batches"] for k in ("train", "val")}
        slices = {k: run[f"{k}_slices"] if batches[k] is None else min(run[f"{k}_slices"], batches[k] * training["batch_size"])
                  for k in ("train", "val")}
        train_s += (run["max_epochs"] - done) * (slices["train"] * per_train + slices["val"] * per_eval)
    results = the_plan["results"]
    todo = results["cells"] - results["done"]
    evaluate_s = todo * results["slices"] * per_eval * 1.5  # adapt cells: a statistics pass too
    return {"train_s": train_s, "evaluate_s": evaluate_s, "total_s": train_s + evaluate_s,
            "per_train_slice_s": per_train, "per_eval_slice_s": per_eval,
            "device": first["training"]["accelerator"]}


def plan_lines(the_plan: dict) -> list[str]:
    """The plan as lines a person reads: one per run, the evaluation, the estimate."""
    lines = [f"plan for {the_plan['out']} (dry run: nothing trained or written)"]
    for run in the_plan["runs"]:
        what = {"new": f"train ({run['max_epochs']} epochs at most)",
                "restart": "train (it died in its first epoch: start over)",
                "resume": f"resume ({run['epochs']} of {run['max_epochs']} epochs done)",
                "finished": f"finished ({run['epochs']} epochs): not trained again",
                "differs": "DIFFERS: " + "; ".join(run["changes"]) + " (--retrain to redo it)",
                "foreign": "REFUSED: " + "; ".join(run["changes"])}[run["state"]]
        lines.append(f"  runs/{run['name']}: {what}")
    r = the_plan["results"]
    state = {"new": "new", "resume": "resume", "differs": "DIFFERS: " + "; ".join(r["changes"]) + " (--retrain to redo it)"}[r["state"]]
    lines.append(f"  results: {r['cells']} cells over {r['slices']} slices, {r['done']} finished before, "
                 f"{r['cells'] - r['done']} to evaluate ({state})")
    lines.append("  report: written from the results at the end")
    e = the_plan.get("estimate")
    if e:
        lines.append(f"  estimate: {_duration(e['total_s'])} (training {_duration(e['train_s'])} at most, to --max-epochs; "
                     f"evaluation {_duration(e['evaluate_s'])}); measured now on {e['device']}: "
                     f"{e['per_train_slice_s'] * 1e3:.1f} ms per training slice, {e['per_eval_slice_s'] * 1e3:.1f} ms per "
                     f"evaluated slice (artifact corruption not included)")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _best_epoch(run: Path) -> dict:
    """The row of `run/metrics.csv` with the highest mean validation AUC (the saved model)."""
    import csv

    from mrrobust.training import MONITOR

    with open(run / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r[MONITOR]]
    best = max(rows, key=lambda r: float(r[MONITOR])) if rows else {}
    return {"run": str(run), **best}
