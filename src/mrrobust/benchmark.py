"""The benchmark (train every norm x seed -> evaluate the artifact grid -> report) and the
demo (synthetic data -> STORE -> the benchmark, small, on the CPU).

Every step writes a folder a later step reads and resumes or is skipped when its output
is complete, so a killed benchmark or demo re-run continues where it stopped. The demo's
`out/demo.json` records its settings; a re-run with other settings into the same folder is
refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mrrobust.data.store import MANIFEST, write_json_atomic
from mrrobust.errors import MrRobustError

DEMO_NORMS = ("batch", "group", "layer")


def _claim(out: Path, settings: dict) -> None:
    """Record the demo's settings in `out/demo.json`, or refuse when `out` holds another demo."""
    record = out / "demo.json"
    if record.is_file():
        try:
            before = json.loads(record.read_text())
        except (OSError, ValueError):
            raise MrRobustError(f"{record} is damaged; delete {out} or pass another --out") from None
        if before != settings:
            changed = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in settings.items() if before.get(k) != v)
            raise MrRobustError(f"{out} holds a demo with other settings ({changed}); pass another --out or delete {out}")
    elif out.exists() and any(out.iterdir()):
        raise MrRobustError(f"{out} exists and is not a demo folder; pass another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, settings)


def benchmark(store: Path, out: Path, norms=DEMO_NORMS, seeds=(0,), *, train_options: dict | None = None,
              evaluate_options: dict | None = None, reference_norm: str = "batch", progress: bool = True) -> dict:
    """Train every norm x seed into `out/runs/<norm>-seed<k>`, evaluate them on the artifact
    grid into `out/results`, and report into `out/report`. `train_options` go to
    `training.train` (not norm, seed, resume), `evaluate_options` to `evaluation.evaluate`.
    Returns {"runs": {name: best epoch row}, "results": evaluate's summary, "report": report's}."""
    from mrrobust.evaluation import check_settings, evaluate
    from mrrobust.report import report
    from mrrobust.training import train

    out = Path(out)
    norms, seeds = list(norms), [int(seed) for seed in seeds]
    if not norms or not seeds:
        raise MrRobustError("benchmark needs at least one norm and one seed; pass --norms and --seeds")
    check_settings(**(evaluate_options or {}))  # refuse bad evaluate settings before hours of training
    runs = {}
    for seed in seeds:
        for norm in norms:
            run = out / "runs" / f"{norm}-seed{seed}"
            if progress:
                print(f"train {norm} norm, seed {seed} -> {run}", flush=True)
            # a finished run is not trained again; a killed one continues from its checkpoint
            summary = train(store, run, norm, seed=seed, resume=(run / "checkpoints" / "last.ckpt").exists(),
                            **(train_options or {}))
            if summary is None:  # a DDP rank other than 0: rank 0 alone evaluates and reports
                return {}
            runs[run.name] = _best_epoch(run)
    results = evaluate([out / "runs" / name for name in runs], store, out / "results", progress=progress,
                       **(evaluate_options or {}))
    written = report(out / "results", out / "report", reference_norm=reference_norm)
    return {"runs": runs, "results": results, "report": written}


def demo(out: Path, volumes: int = 96, slices: int = 16, crop: int = 64, width: int = 16,
         epochs: int = 8, seed: int = 0, norms=DEMO_NORMS, bootstrap: int = 200, progress: bool = True) -> dict:
    """Run the whole pipeline small under `out`; returns {step: result} and writes
    `out/summary.json`. Sizes: `crop` px slices, a ResNet-18 of base width `width`;
    `bootstrap` resamples for the confidence intervals."""
    from mrrobust.artifacts.gallery import gallery, load_slice
    from mrrobust.data.prepare import prepare
    from mrrobust.data.synth import synth

    out = Path(out)
    _claim(out, dict(volumes=volumes, slices=slices, crop=crop, width=width, epochs=epochs, seed=seed,
                     norms=list(norms), bootstrap=bootstrap))
    raw, store = out / "synth", out / "store"
    if not (raw / "annotations" / "knee_file_list.csv").is_file():
        shutil.rmtree(raw, ignore_errors=True)  # synth was interrupted: it takes seconds, redo it
        synth(raw, volumes=volumes, slices=slices, crop=crop, seed=seed, progress=progress)
    if not (store / MANIFEST).is_file():
        prepare(raw / "knee", store, annotations=raw / "annotations", crop=crop, seed=seed, progress=progress)
    # the study's lr (1e-5) needs hundreds of epochs; the demo's tiny net learns at 1e-3
    train_options = dict(width=width, groups=4, lr=1e-3, batch_size=32, max_epochs=epochs, patience=epochs,
                         workers=0, accelerator="cpu", quiet=True)
    evaluate_options = dict(device="cpu", seed=seed, bootstrap=bootstrap, batch_size=64)  # 128: activations above glibc's mmap threshold, 30% slower
    result = benchmark(store, out, norms, (seed,), train_options=train_options,
                       evaluate_options=evaluate_options, progress=progress)
    image, label = load_slice(store)
    figure = gallery(image, out / "gallery.png", title=label, seed=seed)
    summary = {"store": str(store), "runs": {name.rsplit("-seed", 1)[0]: best for name, best in result["runs"].items()},
               "results": str(out / "results"), "report": str(result["report"]["report"]), "gallery": str(figure)}
    write_json_atomic(out / "summary.json", summary)
    return summary


def _best_epoch(run: Path) -> dict:
    """The row of `run/metrics.csv` with the highest mean validation AUC (the saved model)."""
    import csv

    from mrrobust.training import MONITOR

    with open(run / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r[MONITOR]]
    best = max(rows, key=lambda r: float(r[MONITOR])) if rows else {}
    return {"run": str(run), **best}
