"""Thresholds for a MODEL: the study's operating point on the clean validation split.

`calibrate(model, store)` predicts the MODEL on the STORE's clean `val` slices (the inputs a
RUN is validated on in training: `|x| / scale`, float32) and writes
`MODEL/operating_points.json` in the RUN's format (`training.operating_points`: per label the
highest threshold with sensitivity >= 0.9, else the first with FPR > 0.25). Labels the MODEL
lacks are recorded with rule "absent" and null numbers. An existing file is replaced only
with `force`; the MODEL's digest covers it, so a RESULTS folder evaluated with the old
thresholds refuses to resume with the new ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mrrobust.data.annotations import LABELS
from mrrobust.errors import MrRobustError

ABSENT_RULE = "absent"


def predict_split(model: torch.nn.Module, dataset, batch_size: int,
                  device: torch.device) -> np.ndarray:
    """Positive probabilities float64 `(N, 4)` of `model` (two-way logits `(B, 4, 2)`) on a
    magnitude `SliceDataset`, in its order; NaN in the columns of absent labels."""
    from torch.utils.data import DataLoader

    from mrrobust.data.store import collate_slices
    from mrrobust.models import positive_probability

    scores = []
    with torch.inference_mode():
        for images, _, _ in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_slices):
            scores.append(positive_probability(model(images.to(device))).double().cpu())
    return torch.cat(scores).numpy()


def operating_points_of(targets: np.ndarray, scores: np.ndarray, present: np.ndarray,
                        split: str) -> dict:
    """operating_points.json content: `training.operating_points` on the present labels,
    absent labels (`present` False) null with rule "absent"."""
    from mrrobust.training import operating_points

    filled = np.where(present[None, :], scores, 0.0)  # absent columns are replaced below
    record = operating_points(targets, filled, epoch=None)
    for label, kept in zip(LABELS, present):
        if not kept:
            record["labels"][label] = {key: None for key in record["labels"][label]}
            record["labels"][label]["rule"] = ABSENT_RULE
    record["split"] = split
    return record


def calibrate(model: Path, store: Path, *, split: str = "val", batch_size: int = 64,
              device: str = "auto", force: bool = False) -> dict:
    """Write `model/operating_points.json` from the clean `split` of `store` (module
    docstring). Returns {"out", "slices", "labels": {label: threshold or None}}."""
    from mrrobust.data.store import SliceDataset, write_json_atomic
    from mrrobust.evaluation import resolve_device
    from mrrobust.models.exported import OPERATING_POINTS_FILE, load_model, present_labels

    model, store = Path(model), Path(store)
    target = model / OPERATING_POINTS_FILE
    if batch_size < 1:
        raise MrRobustError(f"--batch-size {batch_size} must be >= 1")
    if target.is_file() and not force:
        raise MrRobustError(f"{target} exists; pass --force to replace its thresholds (results "
                            f"evaluated with them will no longer resume)")
    where = resolve_device(device)
    network, record = load_model(model, map_location=where)  # the MODEL first, then the STORE
    dataset = SliceDataset(store, split)  # checks the STORE and the split name
    if len(dataset) == 0:
        raise MrRobustError(f"STORE {store} has no {split!r} slices; choose another --split")
    network.factor = record.input_factor(dataset.scale)
    present = present_labels(record)
    scores = predict_split(network, dataset, batch_size, where)
    if not np.isfinite(scores[:, present]).all():
        raise MrRobustError(f"MODEL {model} gives NaN or inf on the clean {split} split of "
                            f"{store}; check the program and its input_scale")
    points = operating_points_of(dataset.targets, scores, present, split)
    points["store"] = str(store.resolve())
    write_json_atomic(target, points)
    return {"out": target, "slices": len(dataset),
            "labels": {label: points["labels"][label]["threshold"] for label in LABELS}}
