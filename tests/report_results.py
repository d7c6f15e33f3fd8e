"""A RESULTS folder built by hand for the report tests, in evaluate's file formats (docs/API.md
RESULTS), from a model with a known truth, so every printed number can be recomputed here.

The model: an arm's mean AUC = CLEAN[arm] - SLOPE[arm] * WEIGHT[artifact] * severity; each
run adds SEED_OFFSET[seed]; adaptation modes recover RECOVER[mode] of the drop and cost
CLEAN_COST[mode] on clean slices. Intervals are value -/+ HALF (arms) or RUN_HALF (runs);
paired differences -/+ DIFF_HALF with p = 0.001 when |d| >= 0.05, else 0.4.
"""

from __future__ import annotations

import csv
import json
import math
from itertools import product
from pathlib import Path

import numpy as np

from mrrobust.data.annotations import LABELS

CLEAN = {"batch": 0.85, "group": 0.83, "layer": 0.82, "instance": 0.80, "none": 0.78}
SLOPE = {"batch": 0.05, "group": 0.012, "layer": 0.02, "instance": 0.03, "none": 0.03}
WEIGHT = {"noise": 1.0, "motion": 1.5}
SEED_OFFSET = {0: 0.01, 1: -0.01, 2: 0.0}
LABEL_OFFSET = {"abnormal": 0.02, "mtear": -0.02, "acl": 0.01, "cartilage": -0.01}
RECOVER = {"adapt": 0.5, "tent": 0.25}
CLEAN_COST = {"adapt": 0.005, "tent": 0.002}
HALF, RUN_HALF, DIFF_HALF = 0.02, 0.03, 0.03
B = 1000
COLUMNS = {
    "results.csv": ("run", "norm", "seed", "bn_mode", "artifact", "severity", "label", "metric", "value",
                    "ci_low", "ci_high"),
    "arms.csv": ("arm", "bn_mode", "artifact", "severity", "label", "metric", "value", "ci_low", "ci_high", "runs"),
    "arm_comparisons.csv": ("arm_a", "arm_b", "bn_mode_a", "bn_mode_b", "artifact", "severity", "label", "metric",
                            "difference", "ci_low", "ci_high", "p_value", "p_holm", "q_bh"),
    "bn_shift.csv": ("run", "artifact", "severity", "layer", "depth", "channels", "mean_shift", "var_log_ratio"),
    "slices.csv": ("slice_id", "volume", "slice", *LABELS),
}


def arm_auc(arm, mode, artifact, severity, clean=CLEAN, slope=SLOPE, flat=()) -> float:
    """The arm's mean AUC (mean over its seeds: the seed offsets of 0 and 1 cancel); `flat`
    holds (arm, artifact) pairs that do not degrade."""
    if artifact == "clean":
        return clean[arm] - CLEAN_COST.get(mode, 0.0)
    rate = 0.0 if (arm, artifact) in flat else slope[arm]
    return clean[arm] - CLEAN_COST.get(mode, 0.0) - (1 - RECOVER.get(mode, 0.0)) * rate * WEIGHT[artifact] * severity


def pooled(arm, mode, artifact, severities, artifacts=tuple(WEIGHT), **model) -> float:
    """Mean over the severities of `artifact` ("all": over every artifact and severity)."""
    chosen = list(artifacts) if artifact == "all" else [artifact]
    return float(np.mean([arm_auc(arm, mode, a, s, **model) for a in chosen for s in severities]))


def retained(arm, mode, artifact, severities, artifacts=tuple(WEIGHT), **model) -> float:
    chosen = list(artifacts) if artifact == "all" else [artifact]
    c = arm_auc(arm, mode, "clean", 0, **model)
    return float(np.mean([(arm_auc(arm, mode, a, s, **model) - 0.5) / (c - 0.5) for a in chosen for s in severities]))


def corruption_errors(arm, mode, artifact, severities, **model) -> dict:
    """CE, relative CE and degradation of one artifact against batch in eval mode, by hand."""
    aucs = np.array([arm_auc(arm, mode, artifact, s, **model) for s in severities])
    ref = np.array([arm_auc("batch", "eval", artifact, s, **model) for s in severities])
    clean, ref_clean = arm_auc(arm, mode, "clean", 0, **model), arm_auc("batch", "eval", "clean", 0, **model)
    ref_drop = (ref_clean - ref).sum()
    weights = (2 / 3) ** np.asarray(severities, float)
    return {"ce": (1 - aucs).sum() / (1 - ref).sum(),
            "relative_ce": (clean - aucs).sum() / ref_drop if ref_drop > 0 else math.nan,
            "degradation": (weights * (clean - aucs)).sum() / weights.sum()}


def p_value(difference: float) -> float:
    return 0.001 if abs(difference) >= 0.05 else 0.4


def cell_text(x) -> str:
    if isinstance(x, float):
        return "" if math.isnan(x) else repr(float(x))
    return str(x)


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS[path.name])
        writer.writerows([[cell_text(row[c]) for c in COLUMNS[path.name]] for row in rows])


def metric_rows(value: float, half: float) -> list[dict]:
    """Rows of every label and metric around a mean AUC `value`."""
    rows = []
    for label, offset in [("mean", 0.0), *LABEL_OFFSET.items()]:
        auc = value + offset
        spec = auc - 0.2
        for metric, v in (("auc", auc), ("sensitivity", 0.9), ("specificity", spec),
                          ("balanced_accuracy", (0.9 + spec) / 2), ("ece", 0.05 + (0.9 - auc) / 2)):
            rows.append(dict(label=label, metric=metric, value=v, ci_low=v - half, ci_high=v + half))
    return rows


def write_results(folder: Path, arms=("batch", "group", "layer"), seeds=(0, 1), artifacts=("noise", "motion"),
                  severities=(1, 2, 3, 4, 5), modes=("eval", "adapt"), clean=None, slope=None, flat=(),
                  run_clean_half=None, curves=None, positive=None, comparisons=True, clean_gap_half=None,
                  predictions=True, bn_shift=True, reference="batch") -> Path:
    """Write a RESULTS folder (docs/API.md, RESULTS version 2). Adaptation modes apply to batch
    only. Overrides: `clean` / `slope` per arm; `flat` (arm, artifact) pairs without a drop;
    `run_clean_half[run]` one run's clean interval half width; `curves[run]` its `curve`
    record; `positive[label]` positive test volumes; `clean_gap_half` the clean gap's half
    width."""
    clean, slope = {**CLEAN, **(clean or {})}, {**SLOPE, **(slope or {})}
    model = dict(clean=clean, slope=slope, flat=tuple(flat))
    folder.mkdir(parents=True)
    grid = [("clean", 0), *product(artifacts, severities)]
    runs = {arm: [f"{arm}-seed{s}" for s in seeds] for arm in arms}
    arm_modes = {arm: [m for m in modes if m == "eval" or arm == "batch"] for arm in arms}
    # slices: 12 volumes of 2 slices; positive test volumes per label as asked (default 12: all)
    positive = {label: 12 for label in LABELS} | (positive or {})
    slices = [dict(slice_id=f"file{v:03d}:{k}", volume=f"file{v:03d}", slice=k,
                   **{label: int(v < positive[label] and k == 0) for label in LABELS})
              for v in range(12) for k in range(2)]
    write_csv(folder / "slices.csv", slices)
    curve = {"epochs": 8, "best_epoch": 7, "best_val_auc": 0.8, "first_val_auc": 0.6, "peaked_early": False}
    settings = {
        "format": "mrrobust-results", "version": 2, "store": "/data/store", "split": "test", "suite": "mrrobust",
        "artifacts": list(artifacts), "severities": list(severities), "bn_modes": list(modes), "bn_prior": 16,
        "seed": 0, "bootstrap": B, "level": 0.95, "threshold_from": "clean-val", "device": "cpu", "precision": "32",
        "batch_size": 64,
        "reference_arm": reference if reference in arms else None,
        "runs": [{"name": name, "path": f"/runs/{name}", "weights": "0" * 32, "norm": arm, "seed": s,
                  "batch_norm": arm == "batch", "bn_modes": arm_modes[arm],
                  "training": {"lr": 0.001, "max_epochs": 8, "seed": s},
                  "curve": (curves or {}).get(name, curve)}
                 for arm in arms for name, s in zip(runs[arm], seeds)],
        "arms": [{"name": arm, "runs": runs[arm], "norm": arm, "seeds": list(seeds), "bn_modes": arm_modes[arm],
                  "explicit": False, "training_variance": "measured" if len(seeds) > 1 else "unmeasured"}
                 for arm in arms],
        "statistics": {"replicates": B, "minimum_p": 1 / B, "volumes_resampled": True,
                       "seeds_resampled": len(seeds) > 1, "level": 0.95, "ece_bins": 15,
                       "mean_label": {"labels": list(LABELS), "resamples_dropped": {"auc": 3}, "of": B}},
        "provenance": {"kind": "synthetic", "source": "mrrobust-synth", "rule": "manifest source"},
        "sizes": {"train": {"volumes": 60, "slices": 120, "positive_volumes": {label: 40 for label in LABELS}},
                  "test": {"volumes": 12, "slices": 24, "positive_volumes": {l: positive[l] for l in LABELS}}},
        "few_positive_volumes": [label for label in LABELS if positive[label] < 10],
        "thresholds": {"rule": "clean-val", "fallback": [{"run": f"{arms[0]}-seed{seeds[0]}", "bn_mode": "eval",
                                                          "artifact": "clean", "severity": 0, "label": "acl"}]},
        "environment": {"software": {"python": "3.11", "mrrobust": "0.1.0", "torch": "2.13.0"},
                        "machine": {"platform": "test-machine", "cpus": 2}, "wall_time_s": 123.0,
                        "finished": "2026-12-01T00:00:00Z"}}
    (folder / "evaluation.json").write_text(json.dumps(settings))

    results, arm_rows = [], []
    for arm in arms:
        for name, seed in zip(runs[arm], seeds):
            for mode in arm_modes[arm]:
                for artifact, severity in grid:
                    value = arm_auc(arm, mode, artifact, severity, **model) + SEED_OFFSET[seed]
                    half = (run_clean_half or {}).get(name, RUN_HALF) if artifact == "clean" else RUN_HALF
                    results += [dict(run=name, norm=arm, seed=seed, bn_mode=mode, artifact=artifact, severity=severity,
                                     **row) for row in metric_rows(value, half) if row["metric"] != "ece"]
        for mode in arm_modes[arm]:
            key = dict(arm=arm, bn_mode=mode, runs=len(seeds))
            half_clean = max((run_clean_half or {}).get(n, 0) for n in runs[arm]) or HALF
            chance = arm_auc(arm, mode, "clean", 0, **model) - half_clean <= 0.5
            for artifact, severity in [*grid, *((a, "all") for a in artifacts), ("all", "all")]:
                pooled_row = severity == "all"
                value = (pooled(arm, mode, artifact, severities, artifacts, **model) if pooled_row
                         else arm_auc(arm, mode, artifact, severity, **model))
                half = half_clean if artifact == "clean" else HALF
                arm_rows += [dict(key, artifact=artifact, severity=severity, **row) for row in metric_rows(value, half)]
                if artifact == "clean":
                    continue
                r = math.nan if chance else (retained(arm, mode, artifact, severities, artifacts, **model) if pooled_row
                                             else retained(arm, mode, artifact, [severity], **model))
                arm_rows.append(dict(key, artifact=artifact, severity=severity, label="mean", metric="retained",
                                     value=r, ci_low=r - 0.05, ci_high=r + 0.05))
                if reference in arms and pooled_row:
                    if artifact != "all":
                        e = corruption_errors(arm, mode, artifact, severities, **model)
                        for metric, v in e.items():
                            arm_rows.append(dict(key, artifact=artifact, severity="all", label="mean", metric=metric,
                                                 value=v, ci_low=v - 0.04, ci_high=v + 0.04))
                    else:
                        e = [corruption_errors(arm, mode, a, severities, **model) for a in artifacts]
                        for metric, name in (("ce", "mce"), ("relative_ce", "relative_mce")):
                            v = float(np.mean([x[metric] for x in e]))  # NaN if one is NaN
                            arm_rows.append(dict(key, artifact="all", severity="all", label="mean", metric=name,
                                                 value=v, ci_low=v - 0.04, ci_high=v + 0.04))
    write_csv(folder / "results.csv", results)
    write_csv(folder / "arms.csv", arm_rows)

    if comparisons and reference in arms:
        rows = []
        cells = [*grid, *((a, "all") for a in artifacts), ("all", "all")]
        family = len(artifacts) * len(severities)

        def get(arm, mode, artifact, severity):
            return (pooled(arm, mode, artifact, severities, artifacts, **model) if severity == "all"
                    else arm_auc(arm, mode, artifact, severity, **model))

        def add(arm_a, mode_a, arm_b, mode_b, artifact, severity, metric, d, half=DIFF_HALF):
            p = p_value(d)
            rows.append(dict(arm_a=arm_a, arm_b=arm_b, bn_mode_a=mode_a, bn_mode_b=mode_b, artifact=artifact,
                             severity=severity, label="mean", metric=metric, difference=d, ci_low=d - half,
                             ci_high=d + half, p_value=p, p_holm=min(1.0, p * family), q_bh=min(1.0, p * 2)))

        for arm in arms:
            if arm == reference:
                continue
            for artifact, severity in cells:
                d = get(arm, "eval", artifact, severity) - get(reference, "eval", artifact, severity)
                half = clean_gap_half if artifact == "clean" and clean_gap_half is not None else DIFF_HALF
                add(reference, "eval", arm, "eval", artifact, severity, "auc", d, half)
            d = 0.1 * (slope[arm] - slope[reference]) / slope[reference]  # the mCE difference
            add(reference, "eval", arm, "eval", "all", "all", "mce", d, 0.05)
        for mode in arm_modes.get(reference, []):
            if mode == "eval":
                continue
            clean_gain = get(reference, mode, "clean", 0) - get(reference, "eval", "clean", 0)
            add(reference, "eval", reference, mode, "clean", 0, "auc", clean_gain)
            add(reference, "eval", reference, mode, "clean", 0, "clean_gain", clean_gain)
            for artifact, severity in cells[1:]:
                total = get(reference, mode, artifact, severity) - get(reference, "eval", artifact, severity)
                add(reference, "eval", reference, mode, artifact, severity, "auc", total)
                add(reference, "eval", reference, mode, artifact, severity, "artifact_gain", total - clean_gain)
                chosen = list(artifacts) if artifact == "all" else [artifact]
                levels = severities if severity == "all" else [severity]
                loss = sum(get(reference, "eval", "clean", 0) - get(reference, "eval", a, s) for a in chosen for s in levels)
                won = sum(get(reference, mode, a, s) - get(reference, "eval", a, s) for a in chosen for s in levels)
                add(reference, "eval", reference, mode, artifact, severity, "recovered", won / loss if loss > 0 else math.nan, 0.1)
        write_csv(folder / "arm_comparisons.csv", rows)

    if predictions:  # probabilities for the reliability diagram: calibrated on clean, shifted up under artifacts
        rng = np.random.default_rng(0)
        targets = np.array([[s[label] for label in LABELS] for s in slices], float)
        for arm in arms:
            for name in runs[arm]:
                for artifact, severity in grid:
                    p = np.clip(0.3 + 0.4 * targets + rng.normal(0, 0.1, targets.shape), 0.01, 0.99)
                    if artifact != "clean":
                        p = np.clip(p + 0.05 * severity, 0.01, 0.99)
                    path = folder / "predictions" / name / "eval" / f"{artifact}-{severity}.npy"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(path, p.astype(np.float32))
    if bn_shift and "batch" in arms:
        rows = [dict(run=name, artifact=artifact, severity=severity, layer=f"layer{depth}", depth=depth, channels=16,
                     mean_shift=0.05 + 0.02 * severity * WEIGHT.get(artifact, 0) * (depth + 1) + 0.01 * k,
                     var_log_ratio=0.1 * severity)
                for k, name in enumerate(runs["batch"]) for artifact, severity in grid for depth in range(4)]
        write_csv(folder / "bn_shift.csv", rows)
    return folder
