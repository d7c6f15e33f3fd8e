"""The demo: synthetic data -> STORE -> one small classifier per norm -> artifact gallery.

Every step writes a folder a later step reads and is skipped when its output is
already complete, so a killed demo re-run continues where it stopped. `out/demo.json`
records the settings; a re-run with other settings into the same folder is refused.
Evaluation over the artifact grid and the report join here once they exist.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mrrobust.data.store import MANIFEST, write_json_atomic
from mrrobust.errors import MrRobustError

DEMO_NORMS = ("batch", "group", "layer")


def _run_complete(run: Path) -> bool:
    return all((run / name).is_file() for name in ("config.json", "model.safetensors", "metrics.csv", "operating_points.json"))


def _claim(out: Path, settings: dict) -> None:
    """Record the demo's settings in `out/demo.json`, or refuse when `out` holds another demo."""
    record = out / "demo.json"
    if record.is_file():
        before = json.loads(record.read_text())
        if before != settings:
            changed = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in settings.items() if before.get(k) != v)
            raise MrRobustError(f"{out} holds a demo with other settings ({changed}); pass another --out or delete {out}")
    elif out.exists() and any(out.iterdir()):
        raise MrRobustError(f"{out} exists and is not a demo folder; pass another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, settings)


def demo(out: Path, volumes: int = 96, slices: int = 16, crop: int = 64, width: int = 16,
         epochs: int = 8, seed: int = 0, norms=DEMO_NORMS, progress: bool = True) -> dict:
    """Run the whole pipeline small under `out`; returns {step: result} and writes
    `out/summary.json`. Sizes: `crop` px slices, a ResNet-18 of base width `width`."""
    from mrrobust.artifacts.gallery import gallery, load_slice
    from mrrobust.data.prepare import prepare
    from mrrobust.data.synth import synth
    from mrrobust.training import train

    out = Path(out)
    _claim(out, dict(volumes=volumes, slices=slices, crop=crop, width=width, epochs=epochs, seed=seed,
                     norms=list(norms)))
    raw, store = out / "synth", out / "store"
    if not (raw / "annotations" / "knee_file_list.csv").is_file():
        shutil.rmtree(raw, ignore_errors=True)  # synth was interrupted: it takes seconds, redo it
        synth(raw, volumes=volumes, slices=slices, crop=crop, seed=seed, progress=progress)
    if not (store / MANIFEST).is_file():
        prepare(raw / "knee", store, annotations=raw / "annotations", crop=crop, seed=seed, progress=progress)
    runs = {}
    for norm in norms:
        run = out / "runs" / f"{norm}-seed{seed}"
        if not _run_complete(run):
            if progress:
                print(f"train {norm} norm: ResNet-18 width {width}, {epochs} epochs -> {run}", flush=True)
            # the study's lr (1e-5) needs hundreds of epochs; the demo's tiny net learns at 1e-3
            train(store, run, norm, width=width, groups=4, lr=1e-3, batch_size=32, max_epochs=epochs,
                  patience=epochs, seed=seed, workers=0, accelerator="cpu",
                  resume=(run / "checkpoints" / "last.ckpt").exists(), quiet=True)
        runs[norm] = _best_epoch(run)
    image, label = load_slice(store)
    figure = gallery(image, out / "gallery.png", title=label, seed=seed)
    summary = {"store": str(store), "runs": runs, "gallery": str(figure)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _best_epoch(run: Path) -> dict:
    """The row of `run/metrics.csv` with the highest mean validation AUC (the saved model)."""
    import csv

    from mrrobust.training import MONITOR

    with open(run / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r[MONITOR]]
    best = max(rows, key=lambda r: float(r[MONITOR])) if rows else {}
    return {"run": str(run), **best}
