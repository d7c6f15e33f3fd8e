"""The demo: synthetic data -> STORE -> the benchmark (three seeds of batch, group and layer
norm, the artifact grid, the report) -> a gallery, small enough for a 2-core CPU in about
three minutes.

Every step writes a folder a later step reads and resumes or is skipped when its output is
complete, so a killed demo re-run continues where it stopped. `out/demo.json` records the
settings; a re-run with other settings into the same folder is refused. Every argument is
checked before anything is written.

Why these sizes (README, "Why batch norm failed in the demo"): lesions drawn at their
320 px size are a pixel or less at a small crop, so a network only memorises; 32 px slices
with lesions three times larger (`synth --lesion-scale 3`) keep every finding a few pixels
wide, and a width-8 ResNet-18 at lr 1e-3 with weight decay 0.05 learns them in a few epochs. The uniform sampler:
on a small set the study's sampler (weights inverse to the number of positive labels on a
slice) gives the one or two slices with three positive labels a quarter of every batch.
"""

from __future__ import annotations

import time
from pathlib import Path

from mrrobust.data.store import MANIFEST, write_json_atomic
from mrrobust.errors import MrRobustError

DEMO_NORMS = ("batch", "group", "layer")
DEMO_SEEDS = (0, 1, 2)
# the artifact grid of the demo: two k-space artifacts (noise; motion, the study's headline
# artifact) and one image-domain one (coil shading), at three of the five severities
DEMO_ARTIFACTS = ("noise", "motion", "bias_field")
DEMO_SEVERITIES = (1, 3, 5)
DEMO_BN_MODES = ("eval", "adapt")
DEMO = dict(volumes=96, slices=16, crop=32, lesion_scale=3.0, width=8, epochs=8, seed=0, bootstrap=2000)


def check_demo(volumes: int, slices: int, crop: int, lesion_scale: float, width: int, epochs: int, seed: int,
               bootstrap: int, norms, seeds, threads: int | None = None) -> None:
    """Refuse bad demo settings in one line, before anything is written (demo.json included)."""
    from mrrobust.data.synth import MAX_CROP, MAX_LESION_SCALE, MAX_SLICES, MAX_VOLUMES

    problems = []
    if not 12 <= volumes <= MAX_VOLUMES:
        problems.append(f"--volumes {volumes} (need 12..{MAX_VOLUMES}: train, val and test need volumes)")
    if not 2 <= slices <= MAX_SLICES:
        problems.append(f"--slices {slices} (need 2..{MAX_SLICES})")
    if not 32 <= crop <= MAX_CROP or crop % 2:
        problems.append(f"--crop {crop} (need an even number in 32..{MAX_CROP})")
    if not 1.0 <= lesion_scale <= MAX_LESION_SCALE:
        problems.append(f"--lesion-scale {lesion_scale} (need 1..{MAX_LESION_SCALE:g})")
    if width < 4 or width % 4:
        problems.append(f"--width {width} (need a multiple of 4, >= 4: group norm uses 4 groups)")
    if epochs < 1:
        problems.append(f"--epochs {epochs} (need >= 1)")
    if not 0 <= seed < 2**32:
        problems.append(f"--seed {seed} (need 0..{2**32 - 1})")
    if bootstrap < 0:
        problems.append(f"--bootstrap {bootstrap} (need >= 0)")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        problems.append(f"--seeds {','.join(map(str, seeds))} (need distinct seeds >= 0)")
    if threads is not None and threads < 1:
        problems.append(f"--threads {threads} (need >= 1, or leave it out for torch's default)")
    if not norms or len(set(norms)) != len(norms):
        problems.append(f"norms {','.join(norms)} (need distinct norms)")
    if problems:
        raise MrRobustError(f"bad {', '.join(problems)}")


def _claim(out: Path, settings: dict) -> None:
    """Record the demo's settings in `out/demo.json`, or refuse when `out` holds another demo."""
    from mrrobust.settings_record import matches_record

    if matches_record(out / "demo.json", settings, "demo", if_damaged=f"delete {out} or pass another --out",
                      if_changed=f"pass another --out or delete {out}"):
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MrRobustError(f"{out} exists and is not a demo folder; pass another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MrRobustError(f"cannot create {out} ({err.strerror}); pass a writable --out") from None
    write_json_atomic(out / "demo.json", settings)


def _clean_aucs(results: Path) -> dict[str, float | None]:
    """Clean test mean AUC per run from `results/results.csv` (bn_mode eval); None where it is
    undefined (a test split without positives)."""
    import csv

    aucs = {}
    with open(results / "results.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if (row.get("artifact") == "clean" and row.get("label") == "mean" and row.get("metric") == "auc"
                    and row.get("bn_mode", "eval") == "eval"):
                aucs[row["run"]] = float(row["value"]) if row.get("value") else None
    return aucs


def demo(out: Path, volumes: int = DEMO["volumes"], slices: int = DEMO["slices"], crop: int = DEMO["crop"],
         lesion_scale: float = DEMO["lesion_scale"], width: int = DEMO["width"], epochs: int = DEMO["epochs"],
         seed: int = DEMO["seed"], seeds=DEMO_SEEDS, norms=DEMO_NORMS, bootstrap: int = DEMO["bootstrap"],
         threads: int | None = None, progress: bool = True) -> dict:
    """Run the whole pipeline small under `out`; returns the summary it writes to
    `out/summary.json`: store, runs (best epoch rows), clean test mean AUC per run, results,
    report, findings (the report's, when it returns them), gallery, and `stages` (wall
    seconds of each stage, and CPU seconds of this process). `seed` seeds data, split and
    corruptions; `seeds` are the training seeds of every norm; `crop` px slices; a
    ResNet-18 of base width `width`; `bootstrap` resamples for the confidence intervals;
    `threads` torch's intra-op threads (None: torch's default; on a busy machine 1 is much
    faster for this small network, README "Troubleshooting")."""
    from mrrobust.benchmark import benchmark

    norms, seeds = list(norms), [int(s) for s in seeds]
    check_demo(volumes, slices, crop, lesion_scale, width, epochs, seed, bootstrap, norms, seeds, threads)
    out = Path(out)
    _claim(out, dict(volumes=volumes, slices=slices, crop=crop, lesion_scale=lesion_scale, width=width,
                     epochs=epochs, seed=seed, seeds=seeds, norms=norms, bootstrap=bootstrap))
    if threads is not None:  # not a result-changing setting: not part of demo.json
        import torch

        torch.set_num_threads(threads)
    raw, store = out / "synth", out / "store"
    stages: dict[str, float] = {}
    started, cpu = time.perf_counter(), time.process_time()

    def stage(name: str, since: float) -> float:
        now = time.perf_counter()
        stages[name] = round(now - since, 1)
        return now

    from mrrobust.data.synth import synth

    synth(raw, volumes=volumes, slices=slices, crop=crop, seed=seed, lesion_scale=lesion_scale,
          progress=progress)  # resumes a killed synth; a finished one is only checked
    mark = stage("synth", started)
    if not (store / MANIFEST).is_file():
        from mrrobust.data.prepare import prepare

        prepare(raw / "knee", store, annotations=raw / "annotations", crop=crop, seed=seed, progress=progress)
    mark = stage("prepare", mark)
    # the study's lr (1e-5) needs hundreds of epochs; the demo's tiny net learns at 1e-3.
    # The uniform sampler and the sizes: see the module docstring.
    # Weight decay 0.05 (AdamW's usual range; the study's 1e-4 barely regularises 8 epochs):
    # batch norm's weakest seed 0.791 -> 0.877 clean test mean AUC (README).
    train_options = dict(width=width, groups=4, lr=1e-3, weight_decay=0.05, batch_size=32, max_epochs=epochs,
                         patience=epochs, weighted_sampler=False, workers=0, accelerator="cpu", quiet=True)
    # batch norm: stored statistics and AdaBN (prior and TENT cost two thirds more evaluation
    # time; `mrrobust benchmark` runs them by default)
    evaluate_options = dict(device="cpu", seed=seed, bootstrap=bootstrap, batch_size=64,
                            artifacts=list(DEMO_ARTIFACTS), severities=list(DEMO_SEVERITIES),
                            bn_modes=list(DEMO_BN_MODES))
    import os

    # the small networks do not scale over threads: one worker process per core, one thread each
    # (2 cores: 181 s against 240 s in this process; 3 workers on 2 cores: 193 s)
    result = benchmark(store, out, norms, seeds, train_options=train_options, evaluate_options=evaluate_options,
                       progress=progress, parallel=max(1, os.cpu_count() or 1))
    mark = stage("benchmark (train, evaluate, report)", mark)
    from mrrobust.artifacts.gallery import gallery, load_slice

    image, label = load_slice(store)
    figure = gallery(image, out / "gallery.png", title=label, seed=seed)
    stage("gallery", mark)
    stages["total"] = round(time.perf_counter() - started, 1)
    stages["cpu (this process)"] = round(time.process_time() - cpu, 1)
    written = result["report"]
    summary = {"store": str(store), "runs": result["runs"], "clean_test_auc": _clean_aucs(out / "results"),
               "results": str(out / "results"), "report": str(written["report"]),
               "findings": [str(f) for f in written.get("findings", [])][:3], "gallery": str(figure),
               "stages": stages}
    write_json_atomic(out / "summary.json", summary)
    return summary
