"""What an evaluation was run on and where: the STORE's provenance (synthetic or real), its sizes
(volumes, slices, positive volumes and slices per label and split), the software versions and
the machine. Recorded in evaluation.json for the report's header."""

from __future__ import annotations

import os
import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from mrrobust.data.annotations import LABELS

SPLITS = ("train", "val", "test")
SOFTWARE = ("mrrobust", "torch", "numpy", "scipy", "scikit-learn", "lightning")


def provenance(store: Path, manifest: dict) -> dict:
    """`{kind: synthetic | real | mixed, source, rule}`: the manifest's `synthetic` flag when it
    has one, else the volume ids: `synth` numbers its volumes from `synth.FIRST_ID` (1900000),
    clear of the real fastMRI ids (1000000..1002570)."""
    from mrrobust.data.store import read_slices
    from mrrobust.data.synth import FIRST_ID

    source = manifest.get("source")
    if isinstance(manifest.get("synthetic"), bool):
        kind = "synthetic" if manifest["synthetic"] else "real"
        return {"kind": kind, "source": source, "rule": "the STORE manifest's synthetic flag"}
    ids = set()
    for row in read_slices(store):
        match = re.search(r"(\d+)$", row["volume"])
        ids.add(int(match.group(1)) >= FIRST_ID if match else False)
    kind = "mixed" if len(ids) > 1 else ("synthetic" if ids == {True} else "real")
    return {"kind": kind, "source": source,
            "rule": f"volume ids >= {FIRST_ID} are synthetic (mrrobust synth), below are fastMRI"}


def sizes(store: Path, split: str, few: int) -> dict:
    """Per split `{volumes, slices, positive_volumes {label: n}, positive_slices {label: n}}`
    (a volume is positive for a label when one of its slices is), and `few_positive_volumes`:
    the labels with fewer than `few` positive volumes in `split` (their intervals under-cover)."""
    from mrrobust.data.store import read_slices

    result = {}
    rows = read_slices(store)
    for name in dict.fromkeys((*SPLITS, split)):
        chosen = [row for row in rows if row["split"] == name]
        volumes = {row["volume"] for row in chosen}
        result[name] = {
            "volumes": len(volumes), "slices": len(chosen),
            "positive_volumes": {label: len({r["volume"] for r in chosen if int(r[label])})
                                 for label in LABELS},
            "positive_slices": {label: sum(int(r[label]) for r in chosen) for label in LABELS}}
    result["few_positive_volumes"] = [label for label in LABELS
                                      if result[split]["positive_volumes"][label] < few]
    result["few_threshold"] = few
    result["evaluated_split"] = split
    return result


def environment(where, wall_time_s: float) -> dict:
    """Software versions, the machine, this evaluate's wall time (s) and when it finished."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    software = {"python": sys.version.split()[0]}
    for package in SOFTWARE:
        try:
            software[package] = version(package)
        except PackageNotFoundError:
            software[package] = None
    gpu = torch.cuda.get_device_name(where.device) if where.device.type == "cuda" else None
    return {"software": software,
            "machine": {"platform": platform.platform(), "processor": platform.processor() or
                        platform.machine(), "cpus": os.cpu_count(), "device": str(where.device),
                        "gpu": gpu, "precision": where.precision},
            "wall_time_s": round(float(wall_time_s), 3),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
