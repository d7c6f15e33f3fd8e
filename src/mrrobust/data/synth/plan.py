"""The plan of a synthetic data set: which volume is which (ids, split, contrast, patient)
and which findings it has on which slices, with their drawing parameters.

Independent of the crop and of the coils, so single- and multi-coil sets of one seed share
their annotations; `plan_volumes` is the only source of randomness here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FIRST_ID = 1_900_000  # synthetic ids stay clear of the real fastMRI ids (1000000..1002570)
VAL_FRACTION = 0.2
INTENSITY = 2e-4  # typical maximum of a fastMRI knee reconstruction

# and the real label strings drawn for it with their fastMRI+ box counts as weights.
PREVALENCE = {"mtear": 0.116, "abnormal": 0.107, "cartilage": 0.071, "acl": 0.034}
SAME_PATIENT = 0.3  # chance that a volume is the second scan (other contrast) of the previous volume's knee
LABELS = {
    "mtear": {"Meniscus Tear": 5658},
    "acl": {"Ligament - ACL Low Grade sprain": 765, "Ligament - ACL High Grade Sprain": 678},
    "cartilage": {"Cartilage - Partial Thickness loss/defect": 2985, "Cartilage - Full Thickness loss/defect": 615},
    "abnormal": {
        "Joint Effusion ": 1311,
        "Bone-Fracture/Contusion/dislocation": 1060,
        "Bone- Subchondral edema": 986,
        "Periarticular cysts": 864,
        "Bone - Lesion": 183,
    },
}


# ---- plan: which volume has what where (independent of crop and coils) -------------------


@dataclass
class Finding:
    """One finding: a group, its real label string, the slices it spans and drawing parameters."""

    group: str
    label: str
    slices: list[int]
    params: dict


@dataclass
class VolumePlan:
    volume_id: str
    split: str  # "train" | "val"
    fat_suppressed: bool
    reviewed: bool
    artifact: bool
    patient_id: str
    pixel_seed: int  # seeds texture, phase, noise, coils
    scale: float
    shift: tuple[float, float]  # (x, y) in units
    zoom: float
    findings: list[Finding] = field(default_factory=list)


def _choice(rng: np.random.Generator, weights: dict) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], float)
    return names[rng.choice(len(names), p=p / p.sum())]


def _slice_z(slices: int) -> np.ndarray:
    """Slice position across the knee, -1 (one side) .. 1 (other side); 0 = intercondylar notch."""
    return np.linspace(-1.0, 1.0, slices) if slices > 1 else np.zeros(1)


# Where each finding can be seen: menisci, condylar cartilage and bone findings off the notch,
# the ACL in it, effusion and cysts anywhere but the outermost slices.
def _allowed(group: str, params: dict, z: np.ndarray) -> np.ndarray:
    if group == "acl":
        return np.abs(z) <= 0.25
    if group == "abnormal" and params["kind"] in ("effusion", "cyst"):
        return np.abs(z) <= 0.9
    return (np.abs(z) >= 0.3) & (np.abs(z) <= 0.9)


def _run(rng: np.random.Generator, allowed: np.ndarray, length: int) -> list[int]:
    """A run of `length` consecutive allowed slices (shorter when no allowed stretch is long enough)."""
    idx = np.flatnonzero(allowed)
    if idx.size == 0:
        return []
    # contiguous stretches of allowed slices
    stretches = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
    stretch = stretches[rng.integers(len(stretches))]
    length = min(length, stretch.size)
    start = rng.integers(stretch.size - length + 1)
    return [int(s) for s in stretch[start : start + length]]


def _finding_params(rng: np.random.Generator, group: str, label: str) -> dict:
    """Drawing parameters of one finding, in knee units (see `_knee_layers`)."""
    if group == "mtear":
        return {"horn": "posterior" if rng.random() < 0.7 else "anterior", "angle": float(rng.uniform(-35, 35))}
    if group == "acl":
        return {"high_grade": "High" in label, "at": float(rng.uniform(0.55, 0.75))}
    if group == "cartilage":
        surface = "femur" if rng.random() < 0.65 else "tibia"
        return {"surface": surface, "x": float(rng.uniform(140, 200)), "width": float(rng.uniform(22, 40)),
                "full": "Full" in label}
    if label == "Joint Effusion ":
        return {"kind": "effusion", "x": float(rng.uniform(96, 104)), "y": float(rng.uniform(70, 85)),
                "a": float(rng.uniform(14, 22)), "b": float(rng.uniform(42, 62))}
    if label == "Periarticular cysts":
        return {"kind": "cyst", "x": float(rng.uniform(226, 244)), "y": float(rng.uniform(150, 200)),
                "a": float(rng.uniform(10, 17)), "b": float(rng.uniform(10, 20))}
    bone_y = {"femur": (150, 168), "tibia": (206, 226)}
    bone = "femur" if rng.random() < 0.5 else "tibia"
    y = float(rng.uniform(*bone_y[bone]))
    if label == "Bone- Subchondral edema":
        y = 168.0 if bone == "femur" else 207.0
        return {"kind": "edema", "x": float(rng.uniform(145, 190)), "y": y,
                "a": float(rng.uniform(11, 17)), "b": float(rng.uniform(8, 12))}
    if label == "Bone - Lesion":
        return {"kind": "lesion", "x": float(rng.uniform(150, 185)), "y": 115.0 if bone == "femur" else 240.0,
                "a": float(rng.uniform(10, 15)), "b": float(rng.uniform(10, 15))}
    return {"kind": "fracture", "x": float(rng.uniform(150, 185)), "y": y,
            "a": float(rng.uniform(17, 25)), "b": float(rng.uniform(14, 20)), "angle": float(rng.uniform(-30, 30))}


def _scaled(params: dict, scale: float) -> dict:
    """Lesion parameters `scale` times larger: sizes (a, b, width) and, through `params["scale"]`,
    the line widths the drawing uses (tear, sprain, fracture line, subchondral depth)."""
    if scale == 1.0:
        return params
    sized = {k: v * scale if k in ("a", "b", "width") else v for k, v in params.items()}
    return {**sized, "scale": scale}


def plan_volumes(volumes: int, slices: int, seed: int, lesion_scale: float = 1.0) -> list[VolumePlan]:
    """Everything random about the data set except pixels: ids, split, contrast, findings.

    `lesion_scale` > 1 draws every lesion that many times larger (the same draws otherwise), so
    that findings stay visible at a small crop (the demo's 32..64 px)."""
    rng = np.random.default_rng([seed, 0])
    ids = np.sort(rng.choice(100_000, size=volumes, replace=False)) + FIRST_ID
    n_val = round(volumes * VAL_FRACTION) if volumes > 1 else 0
    is_val = np.zeros(volumes, bool)
    is_val[rng.permutation(volumes)[:n_val]] = True
    order = rng.permutation(volumes)
    n_artifact = 0 if volumes < 4 else 1 + (volumes >= 12)
    n_unreviewed = 0 if volumes < 5 else max(1, round(volumes * 0.08))
    artifact = set(order[:n_artifact].tolist())
    unreviewed = set(order[n_artifact : n_artifact + n_unreviewed].tolist())

    z = _slice_z(slices)
    max_run = min(6, max(2, slices // 4))
    mean_run = (2 + max_run) / 2
    plans = []
    for v in range(volumes):
        paired = len(plans) > 1 and plans[-2].patient_id == plans[-1].patient_id  # at most two scans a knee
        second_scan = rng.random() < SAME_PATIENT and bool(plans) and not paired  # like PD + PDFS of one knee
        fat_suppressed = bool(rng.random() < 0.5)
        patient_id = rng.bytes(32).hex()
        if second_scan:
            fat_suppressed, patient_id = not plans[-1].fat_suppressed, plans[-1].patient_id
        plan = VolumePlan(
            volume_id=f"file{ids[v]}",
            split="val" if is_val[v] else "train",
            fat_suppressed=fat_suppressed,
            reviewed=v not in unreviewed,
            artifact=v in artifact,
            patient_id=patient_id,
            pixel_seed=int(rng.integers(2**62)),
            scale=float(INTENSITY * np.exp(rng.normal(0, 0.25))),
            shift=(float(rng.uniform(-10, 10)), float(rng.uniform(-10, 10))),
            zoom=float(rng.uniform(0.93, 1.07)),
        )
        for group, prevalence in PREVALENCE.items():
            if rng.random() < min(1.0, prevalence * slices / mean_run):
                label = _choice(rng, LABELS[group])
                params = _scaled(_finding_params(rng, group, label), lesion_scale)
                run = _run(rng, _allowed(group, params, z), int(rng.integers(2, max_run + 1)))
                if run:
                    plan.findings.append(Finding(group, label, run, params))
        plans.append(plan)
    return plans

