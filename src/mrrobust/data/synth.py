"""Synthetic sagittal knee volumes and fastMRI+ style annotations, in the real file formats.

`synth` writes what `prepare` reads from a real download:
`OUT/knee/{singlecoil|multicoil}_{train,val}/fileNNNNNNN.h5` and
`OUT/annotations/{knee.csv, knee_file_list.csv}`.

Anatomy is drawn in the fastMRI+ annotation frame (the up/down flipped 320x320
image: femur on top, anterior on the left), in "units" of 1/320 of the
reconstructed field of view, with anti-aliased signed-distance shapes on the
2x readout-oversampled acquisition grid `(2*crop, W)`: a femoral shaft that
widens smoothly into rounded condyles, a tibial plateau over a flared
metaphysis, an oval patella. Each tissue has a proton-density (CORPD_FBK) and a
fat-suppressed (CORPDFS_FBK) intensity, modulated by band-limited random
textures seen through the voxel (trabecular marrow, striated muscle, slowly
varying fat), and the painted slice is blurred by a Gaussian of `EDGE_BLUR`
units so that tissue edges are not binary.
Findings are drawn as localized, label-specific lesions inside the box that
the annotation row records, over a few consecutive slices.

The complex image gets a smooth phase, goes to k-space with the centred
orthonormal FFT, loses its zero-padded phase-encode edge columns and gets
complex Gaussian noise on the acquired ones; the stored reconstructions are
computed from that k-space exactly as fastMRI defines them.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from mrrobust.atomic import atomic_write
from mrrobust.errors import MrRobustError
from mrrobust.fft import center_crop, fft2c, ifft2c

FRAME = 320.0  # annotation frame size: all geometry below is in 1/320 of the field of view
FIRST_ID = 1_900_000  # synthetic ids stay clear of the real fastMRI ids (1000000..1002570)
VAL_FRACTION = 0.2
INTENSITY = 2e-4  # typical maximum of a fastMRI knee reconstruction
NOISE = 0.012  # k-space noise std as a fraction of the image maximum
CSV_HEADER = ("file", "slice", "study_level", "x", "y", "width", "height", "label")

# tissue: (proton density, fat suppressed) magnitude
CONTRAST = {
    "fat": (1.00, 0.10),
    "muscle": (0.36, 0.28),
    "marrow": (0.86, 0.12),
    "cortex": (0.03, 0.03),
    "cartilage": (0.55, 0.50),
    "fluid": (0.78, 1.00),
    "meniscus": (0.05, 0.05),
    "ligament": (0.09, 0.07),
    "tendon": (0.05, 0.04),
    "edema": (0.42, 0.86),
    "sprain": (0.48, 0.62),
    "lesion": (0.62, 0.92),
}

# Per-slice prevalence of each target over all reviewed fastMRI+ knee volumes (REFERENCE s.3:
# positive slices / the 41,877 slices of single-coil train + val, e.g. mtear 4,858 -> 11.6%),
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
ARTIFACT_LABEL = "artifact"


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


def plan_volumes(volumes: int, slices: int, seed: int) -> list[VolumePlan]:
    """Everything random about the data set except pixels: ids, split, contrast, findings."""
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
                params = _finding_params(rng, group, label)
                run = _run(rng, _allowed(group, params, z), int(rng.integers(2, max_run + 1)))
                if run:
                    plan.findings.append(Finding(group, label, run, params))
        plans.append(plan)
    return plans


# ---- drawing: signed distances on the acquisition grid -------------------------------------


def _ellipse(X, Y, cx, cy, a, b):
    """Approximate signed distance (units) to an axis-aligned ellipse; negative inside."""
    return (np.sqrt(((X - cx) / a) ** 2 + ((Y - cy) / b) ** 2) - 1.0) * min(a, b)


def _segment(X, Y, p, q, half):
    """Signed distance to a segment p-q thickened by `half` units each side."""
    px, py = p
    dx, dy = q[0] - px, q[1] - py
    t = np.clip(((X - px) * dx + (Y - py) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(X - px - t * dx, Y - py - t * dy) - half


def _box(X, Y, x0, y0, x1, y1, radius=0.0):
    """Signed distance to a rectangle with rounded corners."""
    cx, cy, hx, hy = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 - radius, (y1 - y0) / 2 - radius
    qx, qy = np.abs(X - cx) - hx, np.abs(Y - cy) - hy
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - radius


def _triangle(X, Y, pts):
    """Signed distance (exact inside, a lower bound outside) to a triangle: max over its edges' half-planes."""
    (x0, y0), (x1, y1), (x2, y2) = pts
    orientation = math.copysign(1.0, (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0))
    d = None
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y1)), ((x1, y1), (x2, y2)), ((x2, y2), (x0, y0))):
        ex, ey = bx - ax, by - ay
        outside = orientation * ((X - ax) * ey - (Y - ay) * ex) / math.hypot(ex, ey)
        d = outside if d is None else np.maximum(d, outside)
    return d


def _smooth_min(a, b, k):
    """Union of two signed distances with a rounded fillet of about `k` units where they meet."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smoothstep(start, stop, x):
    """0 before `start`, 1 after `stop`, a smooth cubic in between."""
    t = np.clip((x - start) / (stop - start), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _capped_column(X, Y, cx, half, top, radius):
    """Signed distance to a vertical column `|X - cx| <= half` below `Y = top`, its top corners
    rounded by `radius`; `cx` and `half` may vary with Y (then the distance is approximate)."""
    qx, qy = np.abs(X - cx) - (half - radius), (top + radius) - Y
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - radius


class _Canvas:
    """A magnitude image painted back to front with anti-aliased shapes.

    `texture` maps a tissue to a multiplicative gain `(H, W)` applied wherever it is painted."""

    def __init__(self, shape, pixel, fat_suppressed, texture=None):
        self.image = np.zeros(shape, np.float32)
        self.pixel = pixel  # units per pixel
        self.column = 1 if fat_suppressed else 0
        self.texture = texture or {}

    def alpha(self, distance):
        """Coverage of a pixel by the shape `distance <= 0`, linear over one pixel."""
        return np.clip(0.5 - distance / self.pixel, 0.0, 1.0).astype(np.float32)

    def paint(self, tissue, alpha, gain=1.0):
        value = np.float32(CONTRAST[tissue][self.column] * gain) * self.texture.get(tissue, np.float32(1.0))
        self.image += alpha * (value - self.image)


# Knee geometry in knee units (the annotation frame before the per-volume shift and zoom).
MENISCUS = {
    "anterior": ((118.0, 182.0), (118.0, 198.0), (150.0, 190.0)),
    "posterior": ((224.0, 180.0), (224.0, 200.0), (184.0, 190.0)),
}
ACL = ((182.0, 146.0), (141.0, 191.0))
SPRAIN = (0.4, 0.9)  # the part of the ACL (fractions of its length) a sprain swells
SPRAIN_HALF = 7.0
PCL = ((170.0, 134.0), (214.0, 202.0))
CARTILAGE = 6.0
CORTEX = 3.5  # cortical bone under the joint; the shafts' cortex is thicker
SHAFT_CORTEX = 3.0  # extra cortex far up the femur and far down the tibia
SUBCHONDRAL = 12.0  # depth of the edema under a full-thickness cartilage defect (inside its box)


def _knee_layers(canvas: _Canvas, X, Y, z: float, findings: list[tuple[Finding, float]]):
    """Paint one sagittal knee slice at position `z` (-1..1) with its findings.

    X, Y: knee-unit coordinates of every pixel `(H, W)`; findings: (finding, taper) where
    taper in (0, 1] shrinks a lesion towards the ends of its slice run.
    """
    A = canvas.alpha
    notch = math.exp(-((z / 0.3) ** 2))  # 1 in the intercondylar notch, 0 over the condyles
    menisci_seen = 1.0 - math.exp(-((z / 0.3) ** 2))
    by_kind = {}
    for f, taper in findings:
        by_kind.setdefault(f.group if f.group != "abnormal" else f.params["kind"], []).append((f, taper))

    # leg: subcutaneous fat, muscle, fat pads, normal fluid
    skin = np.maximum(38 + 6 * np.sin(Y / 70) - X, X - (292 - 8 * np.sin(Y / 90 + 1)))
    canvas.paint("fat", A(skin))
    canvas.paint("muscle", A(skin + 11))
    canvas.paint("fat", A(_ellipse(X, Y, 232, 172, 30, 46)))  # popliteal fat
    canvas.paint("fat", A(_ellipse(X, Y, 110, 192, 22, 22)))  # Hoffa's fat pad
    canvas.paint("fat", A(_ellipse(X, Y, 114, 72, 11, 52)))  # prefemoral fat
    canvas.paint("fat", A(_ellipse(X, Y, 172, 176, 30, 17)), gain=notch)  # notch fat
    canvas.paint("fluid", A(_ellipse(X, Y, 100, 80, 3.5, 38)), gain=0.8)  # suprapatellar recess
    for f, taper in by_kind.get("effusion", []) + by_kind.get("cyst", []):
        p = f.params
        canvas.paint("fluid", A(_ellipse(X, Y, p["x"], p["y"], p["a"] * taper, p["b"] * taper)))

    # tendons
    canvas.paint("tendon", A(_segment(X, Y, (66, 92), (86, -200), 4.5)))  # quadriceps
    canvas.paint("tendon", A(_segment(X, Y, (62, 156), (102, 246), 3.5)))  # patellar

    # bones with articular cartilage: femur, tibia, patella
    femur, tibia, cortex = _bones(X, Y, z, notch)
    patella = _ellipse(X, Y, 64, 125, 13, 30)
    articular_femur = A(120 - Y) * (1 - notch)
    articular_tibia = A(Y - 199) * A(118 - X) * A(X - 226)
    canvas.paint("cartilage", A(femur - CARTILAGE) * articular_femur)
    canvas.paint("cartilage", A(tibia - CARTILAGE) * articular_tibia)
    canvas.paint("cartilage", A(patella - CARTILAGE) * A(66 - X))
    defects = []  # (params, bone distance, articular side mask, taper)
    for f, taper in by_kind.get("cartilage", []):
        on_femur = f.params["surface"] == "femur"
        defects.append((f.params, femur if on_femur else tibia, A(150 - Y) if on_femur else A(Y - 210), taper))
    for params, surface, articular, taper in defects:
        _cartilage_defect(canvas, X, Y, surface, params, taper, articular)
    for bone, thickness in ((femur, cortex["femur"]), (tibia, cortex["tibia"]), (patella, CORTEX)):
        canvas.paint("cortex", A(bone))
        canvas.paint("marrow", A(bone + thickness))
    marrow = A(np.minimum(femur, tibia) + CORTEX)
    for f, taper in by_kind.get("edema", []) + by_kind.get("fracture", []) + by_kind.get("lesion", []):
        p = f.params
        blob = A(_ellipse(X, Y, p["x"], p["y"], p["a"] * taper, p["b"] * taper))
        canvas.paint("lesion" if p["kind"] == "lesion" else "edema", blob * marrow)
        if p["kind"] == "fracture":
            t = math.radians(p["angle"])
            dx, dy = math.cos(t) * p["a"] * taper, math.sin(t) * p["a"] * taper
            line = (p["x"] - dx, p["y"] - dy), (p["x"] + dx, p["y"] + dy)
            canvas.paint("cortex", A(_segment(X, Y, *line, max(1.5, 0.5 * canvas.pixel))) * marrow)
    for params, surface, articular, taper in defects:
        if params["full"]:  # subchondral signal under a full-thickness defect
            under = A(np.abs(X - params["x"]) - params["width"] * taper / 2) * articular
            canvas.paint("edema", A(surface + CORTEX) * A(-(surface + SUBCHONDRAL)) * under, gain=0.9)

    # joint fluid line, menisci, cruciate ligaments
    canvas.paint("fluid", A(_box(X, Y, 150, 186.5, 200, 189.5)) * (1 - notch), gain=0.7)
    for horn, pts in MENISCUS.items():
        meniscus = A(_triangle(X, Y, pts)) * menisci_seen
        canvas.paint("meniscus", meniscus)
        for f, _ in by_kind.get("mtear", []):
            if f.params["horn"] == horn:
                canvas.paint("fluid", meniscus * A(_tear_line(X, Y, pts, f.params["angle"], canvas.pixel)))
    ligaments_seen = math.exp(-((z / 0.35) ** 2)) * (1 - A(np.minimum(femur, tibia)))  # in the notch, not in bone
    canvas.paint("ligament", A(_segment(X, Y, *PCL, 5.5)) * ligaments_seen)
    canvas.paint("ligament", A(_segment(X, Y, *ACL, 4.5)) * ligaments_seen)
    for f, _ in by_kind.get("acl", []):
        _acl_sprain(canvas, X, Y, f.params, ligaments_seen)


def _bones(X, Y, z: float, notch: float):
    """Signed distances (units) to femur and tibia, and their cortex thickness `(H, W)`.

    Femur: a shaft, a little anterior to the condyles, widening smoothly (metaphyseal flare)
    into a rounded condyle with a posterior bulge, smaller in the intercondylar notch.
    Tibia: a plateau at Y = 195 with rounded corners over a flared metaphysis that narrows
    to the shaft, with the tibial tubercle in front."""
    flare = _smoothstep(20.0, 128.0, Y)
    shaft = np.maximum(np.abs(X - (160.0 + 8.0 * flare)) - (31.0 + 17.0 * flare), Y - 135.0)
    condyle_b = 45 - 22 * notch
    condyle = _smooth_min(_ellipse(X, Y, 168, 135, 52 * (1 - 0.08 * z * z), condyle_b),
                          _ellipse(X, Y, 194, 132, 34, max(10.0, condyle_b - 9)), 10.0)
    femur = _smooth_min(shaft, condyle, 14.0)
    half = 37.0 + 23.0 * (1.0 - _smoothstep(212.0, 290.0, Y))
    tibia = _smooth_min(_capped_column(X, Y, 172.0, half, 195.0, 11.0), _ellipse(X, Y, 134, 262, 9, 24), 18.0)
    cortex = {"femur": CORTEX + SHAFT_CORTEX * (1.0 - _smoothstep(-40.0, 100.0, Y)),
              "tibia": CORTEX + SHAFT_CORTEX * _smoothstep(250.0, 330.0, Y)}
    return femur, tibia, cortex


def _tear_line(X, Y, pts, angle, pixel):
    """Signed distance to a cleft through the meniscus horn (at least one pixel wide)."""
    cx = sum(p[0] for p in pts) / 3
    cy = sum(p[1] for p in pts) / 3
    t = math.radians(angle)
    dx, dy = 30 * math.cos(t), 30 * math.sin(t)
    return _segment(X, Y, (cx - dx, cy - dy), (cx + dx, cy + dy), max(1.5, 0.5 * pixel))


def _acl_sprain(canvas, X, Y, params, seen):
    """A thickened, bright mid-ACL; high grade adds a fluid gap across the band."""
    A = canvas.alpha
    canvas.paint("sprain", A(_segment(X, Y, *_acl_part(*SPRAIN), SPRAIN_HALF - 1)) * seen)
    if params["high_grade"]:
        (x0, y0), (x1, y1) = ACL
        at = params["at"]
        mx, my = x0 + at * (x1 - x0), y0 + at * (y1 - y0)
        nx, ny = -(y1 - y0), x1 - x0
        n = math.hypot(nx, ny)
        nx, ny = SPRAIN_HALF * nx / n, SPRAIN_HALF * ny / n
        canvas.paint("fluid", A(_segment(X, Y, (mx - nx, my - ny), (mx + nx, my + ny), max(3.0, 0.6 * canvas.pixel))) * seen)


def _acl_part(start: float, stop: float):
    """End points of the ACL stretch between two fractions of its length."""
    (x0, y0), (x1, y1) = ACL
    return (x0 + start * (x1 - x0), y0 + start * (y1 - y0)), (x0 + stop * (x1 - x0), y0 + stop * (y1 - y0))


def _cartilage_defect(canvas, X, Y, bone, params, taper, articular):
    """Fluid in place of the cartilage (joint-side 60% for partial, all of it for full thickness)."""
    A = canvas.alpha
    half = params["width"] * taper / 2
    span = A(np.abs(X - params["x"]) - half)
    inner = 0.0 if params["full"] else 0.4 * CARTILAGE
    layer = A(bone - CARTILAGE - 1.0) * A(inner - bone)
    canvas.paint("fluid", layer * span * articular)


def finding_box(finding: Finding, taper: float) -> tuple[float, float, float, float]:
    """(x, y, width, height) in knee units of the box around a finding's lesion."""
    p = finding.params
    if finding.group == "mtear":
        pts = np.array(MENISCUS[p["horn"]])
        x0, y0 = pts.min(0) - 2
        x1, y1 = pts.max(0) + 2
    elif finding.group == "acl":
        ends = np.array(_acl_part(*SPRAIN))
        x0, y0 = ends.min(0) - SPRAIN_HALF
        x1, y1 = ends.max(0) + SPRAIN_HALF
    elif finding.group == "cartilage":
        half = p["width"] * taper / 2
        x0, x1 = p["x"] - half, p["x"] + half
        y0, y1 = (176.0, 190.0) if p["surface"] == "femur" else (187.0, 200.0)
        if p["full"]:
            y0, y1 = (y0 - SUBCHONDRAL, y1) if p["surface"] == "femur" else (y0, y1 + SUBCHONDRAL)
    else:
        a, b = p["a"] * taper, p["b"] * taper
        x0, x1, y0, y1 = p["x"] - a, p["x"] + a, p["y"] - b, p["y"] + b
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def _taper(position: int, length: int) -> float:
    """Lesion size along its run: 1 in the middle, 0.7 at the ends."""
    if length <= 1:
        return 1.0
    u = (position - (length - 1) / 2) / ((length - 1) / 2)
    return 1.0 - 0.3 * u * u


# ---- pixels, k-space and files -----------------------------------------------------------------


def acquisition_width(crop: int) -> int:
    """Phase-encode matrix W, a little wider than the crop like fastMRI knee (368 for 320)."""
    return 2 * round(crop * 1.15 / 2)


def edge_padding(width: int) -> int:
    """Zero-filled phase-encode columns on each side of k-space."""
    return max(1, round(width * 0.03))


def _knee_coordinates(plan: VolumePlan, crop: int, width: int):
    """Knee-unit coordinates (X, Y) `(2*crop, width)` of the acquisition grid, in the annotation frame.

    Array row r of the centre crop is annotation row `crop - 1 - r` (the up/down flip).
    """
    height = 2 * crop
    unit = FRAME / crop
    rows = (crop - (np.arange(height) - (height - crop) // 2) - 0.5) * unit
    cols = (np.arange(width) - (width - crop) // 2 + 0.5) * unit
    (sx, sy), zoom = plan.shift, plan.zoom
    Y = ((rows - FRAME / 2 - sy) / zoom + FRAME / 2)[:, None]
    X = ((cols - FRAME / 2 - sx) / zoom + FRAME / 2)[None, :]
    return np.broadcast_to(X, (height, width)).astype(np.float32), np.broadcast_to(Y, (height, width)).astype(np.float32)


def _random_field(rng: np.random.Generator, shape: tuple[int, int], pixel: float, ring: float, width: float,
                  stretch: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Gaussian random field `(H, W)` as voxels of `pixel` units see it.

    Its spectrum is a ring of radius `ring` and std `width` (cycles per unit) in frequencies
    scaled by `stretch` = (along rows Y, along columns X): stretch (4, 1) gives features 4x
    longer along Y. The std is 1 when the voxels resolve the features and falls as box
    voxels average them out (a coarse crop sees a faint texture, not pixel noise)."""
    h, w = shape
    fy, fx = np.fft.fftfreq(h, d=pixel)[:, None], np.fft.rfftfreq(w, d=pixel)[None, :]
    rho = np.hypot(fy * stretch[0], fx * stretch[1])
    spectrum = np.exp(-(((rho - ring) / width) ** 2) / 2) * np.sinc(fy * pixel) * np.sinc(fx * pixel)
    r = np.linspace(0.0, ring + 8 * width, 2048)  # power of the unfiltered spectrum, over the plane
    power = np.trapezoid(np.exp(-(((r - ring) / width) ** 2)) * 2 * np.pi * r, r) / (stretch[0] * stretch[1])
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * spectrum, s=shape)
    return (field / (pixel * math.sqrt(power))).astype(np.float32)


@dataclass
class _Texture:
    """A tissue texture that drifts smoothly from slice to slice: a gain of mean about 1.

    Plain: 1 + amplitude * 2 tanh(field / 2) (the field's rare peaks squashed to 2).
    Ridged: dark lines (trabeculae) where the field crosses zero, 1 - amplitude at their
    centre, divided by its mean; voxels too coarse to resolve the lines see them as uniform."""

    fields: tuple[np.ndarray, np.ndarray]
    amplitude: float
    ridged: bool = False

    def gain(self, angle: float) -> np.ndarray:
        field = math.cos(angle) * self.fields[0] + math.sin(angle) * self.fields[1]
        if not self.ridged:
            return 1 + self.amplitude * 2 * np.tanh(field / 2)
        gain = 1 - self.amplitude * np.clip(1 - np.abs(field) / RIDGE, 0.0, 1.0)
        return gain / gain.mean()


RIDGE = 0.6  # half width of a trabecular line, in field std
EDGE_BLUR = 1.0  # std (units) of the Gaussian that softens tissue edges: about a pixel at crop 320
SLICE_DRIFT = 0.5  # how far (radians) each texture turns between its two fields from one slice to the next


def _tissue_textures(rng: np.random.Generator, shape, pixel: float) -> dict[str, list[_Texture]]:
    """Per tissue, the textures that multiply its intensity (band-limited noise, see `_random_field`)."""
    def pair(ring, width, stretch=(1.0, 1.0)):
        return tuple(_random_field(rng, shape, pixel, ring, width, stretch) for _ in range(2))

    smooth = _Texture(pair(0.0, 1 / 90), 0.04)  # slow signal variation across fat and muscle
    return {
        "marrow": [_Texture(pair(1 / 8, 1 / 20, (1.4, 1.0)), 0.3, ridged=True), _Texture(pair(0.0, 1 / 30), 0.05)],
        "muscle": [_Texture(pair(1 / 6, 1 / 14, (0.2, 1.0)), 0.08), smooth],  # fibres run along the leg
        "fat": [_Texture(pair(1 / 6, 1 / 14), 0.02), smooth],
    }


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of `(H, W)` with std `sigma` pixels (periodic, through the FFT)."""
    fy, fx = np.fft.fftfreq(image.shape[0])[:, None], np.fft.rfftfreq(image.shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    return np.fft.irfft2(np.fft.rfft2(image) * kernel, s=image.shape).astype(np.float32)


def volume_images(plan: VolumePlan, slices: int, crop: int) -> np.ndarray:
    """Complex images `(slices, 2*crop, W)` on the acquisition grid (intensity in fastMRI units)."""
    width = acquisition_width(crop)
    X, Y = _knee_coordinates(plan, crop, width)
    rng = np.random.default_rng([plan.pixel_seed, 1])
    pixel = FRAME / crop / plan.zoom
    shading = 1 + 0.05 * _random_field(rng, X.shape, pixel, 0.0, 1 / 60)  # receive-field shading
    textures = _tissue_textures(rng, X.shape, pixel)
    start = rng.uniform(0, 2 * np.pi)
    yn, xn = np.linspace(-1, 1, X.shape[0])[:, None], np.linspace(-1, 1, X.shape[1])[None, :]
    z = _slice_z(slices)
    images = np.empty((slices, *X.shape), np.complex64)
    for s in range(slices):
        angle = start + SLICE_DRIFT * s
        gains = {tissue: math.prod((t.gain(angle) for t in ts), start=np.float32(1.0))
                 for tissue, ts in textures.items()}
        canvas = _Canvas(X.shape, pixel, plan.fat_suppressed, gains)
        here = [(f, _taper(f.slices.index(s), len(f.slices))) for f in plan.findings if s in f.slices]
        _knee_layers(canvas, X, Y, float(z[s]), here)
        c = rng.normal(0, 1, 5) * (np.pi, 0.8, 0.8, 0.5, 0.5)
        phase = c[0] + c[1] * xn + c[2] * yn + c[3] * xn * xn + c[4] * yn * yn
        magnitude = np.maximum(_blur(canvas.image, EDGE_BLUR / pixel), 0.0)
        images[s] = magnitude * shading * plan.scale * np.exp(1j * phase)
    return images


def coil_sensitivities(coils: int, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Smooth complex receive sensitivities `(coils, H, W)` of a ring of coils around the knee."""
    rng = np.random.default_rng([seed, 2])
    yn, xn = np.linspace(-1, 1, shape[0])[:, None], np.linspace(-1, 1, shape[1])[None, :]
    angles = np.linspace(0, 2 * np.pi, coils, endpoint=False) + rng.uniform(0, 2 * np.pi)
    sens = []
    for a in angles:
        cy, cx = 0.55 * np.sin(a), 0.9 * np.cos(a)
        magnitude = np.exp(-(((yn - cy) / 0.55) ** 2 + ((xn - cx) / 0.9) ** 2) / 2)
        g = rng.normal(0, 1, 3)
        sens.append(magnitude * np.exp(1j * (g[0] * np.pi + g[1] * xn + g[2] * yn)))
    sens = np.stack(sens)
    return (sens / np.sqrt((np.abs(sens) ** 2).sum(0)).max()).astype(np.complex64)


def _acquire(images: np.ndarray, plan: VolumePlan, rng: np.random.Generator) -> np.ndarray:
    """Images `(..., H, W)` -> k-space with zeroed phase-encode edges, noise, and motion for artifact volumes."""
    kspace = fft2c(images)
    width = kspace.shape[-1]
    pad = edge_padding(width)
    sigma = NOISE * float(np.abs(images).max()) / math.sqrt(2)
    kspace.real += sigma * rng.standard_normal(kspace.shape, dtype=np.float32)
    kspace.imag += sigma * rng.standard_normal(kspace.shape, dtype=np.float32)
    if plan.artifact:  # patient motion along the phase-encode axis on some lines: ghosting
        moved = rng.random(width) < 0.3
        shift = rng.uniform(-1.5, 1.5, width) * moved
        ky = np.arange(width) - width // 2
        kspace *= np.exp(-2j * np.pi * ky * shift / width).astype(np.complex64)
    kspace[..., :pad] = 0
    kspace[..., width - pad :] = 0
    return kspace.astype(np.complex64)


def ismrmrd_header(height: int, width: int, crop: int, acquisition: str, coils: int) -> bytes:
    """ISMRMRD XML with the fields fastMRI's SliceDataset reads (REFERENCE s.2)."""
    pad = edge_padding(width)
    centre = width // 2 - pad
    maximum = width - 2 * pad - 1
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <acquisitionSystemInformation><receiverChannels>{coils}</receiverChannels></acquisitionSystemInformation>
  <measurementInformation><protocolName>{acquisition}</protocolName></measurementInformation>
  <encoding>
    <encodedSpace>
      <matrixSize><x>{height}</x><y>{width}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>280</x><y>{140 * width / crop:.1f}</y><z>4.5</z></fieldOfView_mm>
    </encodedSpace>
    <reconSpace>
      <matrixSize><x>{crop}</x><y>{crop}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>140</x><y>140</y><z>4.5</z></fieldOfView_mm>
    </reconSpace>
    <trajectory>cartesian</trajectory>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{maximum}</maximum><center>{centre}</center></kspace_encoding_step_1>
    </encodingLimits>
  </encoding>
</ismrmrdHeader>
""".encode()


def _write_h5(path: Path, datasets: dict, attrs: dict) -> None:
    """Write one volume file atomically; no timestamps, so equal content gives equal bytes."""
    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w", libver="latest", track_order=False) as hf:
            for name, data in datasets.items():
                hf.create_dataset(name, data=data, track_times=False)
            for name, value in attrs.items():
                hf.attrs[name] = value

    atomic_write(path, write)


def write_volume(path: Path, plan: VolumePlan, slices: int, crop: int, multicoil: bool, coils: int) -> None:
    """Render, acquire and write one volume in the fastMRI file format."""
    images = volume_images(plan, slices, crop)
    rng = np.random.default_rng([plan.pixel_seed, 3])
    acquisition = "CORPDFS_FBK" if plan.fat_suppressed else "CORPD_FBK"
    if multicoil:
        images = images[:, None] * coil_sensitivities(coils, images.shape[-2:], plan.pixel_seed)
    kspace = _acquire(images, plan, rng)
    coil_images = center_crop(ifft2c(kspace), (crop, crop))
    if multicoil:
        rss = np.sqrt((np.abs(coil_images) ** 2).sum(axis=1)).astype(np.float32)
        recons = {"reconstruction_rss": rss}
    else:
        esc = np.abs(coil_images).astype(np.float32)
        recons = {"reconstruction_esc": esc, "reconstruction_rss": esc}  # one coil: RSS is the magnitude
    target = recons["reconstruction_rss"] if multicoil else recons["reconstruction_esc"]
    header = ismrmrd_header(kspace.shape[-2], kspace.shape[-1], crop, acquisition, coils if multicoil else 1)
    attrs = {"acquisition": acquisition, "max": float(target.max()), "norm": float(np.linalg.norm(target)),
             "patient_id": plan.patient_id}
    _write_h5(path, {"ismrmrd_header": np.bytes_(header), "kspace": kspace, **recons}, attrs)


def annotation_rows(plans: list[VolumePlan], crop: int) -> list[tuple]:
    """fastMRI+ knee.csv rows (reviewed volumes only), boxes scaled to `crop` in the flipped frame."""
    scale = crop / FRAME
    rows = []
    for plan in plans:
        if not plan.reviewed:
            continue
        if plan.artifact:
            rows.append((plan.volume_id, 0, "Yes", "", "", "", "", ARTIFACT_LABEL))
        for f in plan.findings:
            for i, s in enumerate(f.slices):
                x, y, w, h = finding_box(f, _taper(i, len(f.slices)))
                # knee units -> annotation-frame units (per-volume shift and zoom) -> crop pixels
                x = (x - FRAME / 2) * plan.zoom + FRAME / 2 + plan.shift[0]
                y = (y - FRAME / 2) * plan.zoom + FRAME / 2 + plan.shift[1]
                x0, y0 = max(0, round(x * scale)), max(0, round(y * scale))
                x1, y1 = min(crop, round((x + w * plan.zoom) * scale)), min(crop, round((y + h * plan.zoom) * scale))
                rows.append((plan.volume_id, s, "No", x0, y0, max(1, x1 - x0), max(1, y1 - y0), f.label))
    study_first = {"Yes": 0, "No": 1}
    return sorted(rows, key=lambda r: (r[0], r[1], study_first[r[2]], r[7], r[3], r[4]))


def _csv_text(rows, header=None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _write_text(path: Path, text: str) -> None:
    """Write atomically; refuse to replace a different existing file (another synth run)."""
    if path.exists() and path.read_text() != text:
        raise MrRobustError(f"{path} exists with other content (another synth run?); choose an empty OUT or delete it")
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _check(volumes, slices, crop, coils, multicoil, seed):
    problems = []
    if seed < 0:
        problems.append(f"--seed {seed} (need >= 0)")
    if volumes < 1:
        problems.append(f"--volumes {volumes} (need >= 1)")
    if slices < 1:
        problems.append(f"--slices {slices} (need >= 1)")
    if crop < 32 or crop % 2:
        problems.append(f"--crop {crop} (need an even number >= 32)")
    if multicoil and coils < 2:
        problems.append(f"--coils {coils} (need >= 2 with --multicoil)")
    if problems:
        raise MrRobustError(f"bad {', '.join(problems)}")


def synth(out: Path, volumes: int = 24, slices: int = 16, crop: int = 320, seed: int = 0,
          multicoil: bool = False, coils: int = 8, progress: bool = False) -> dict:
    """Write a synthetic fastMRI knee data set with fastMRI+ annotations under `out`.

    Files: `out/knee/{singlecoil|multicoil}_{train,val}/fileNNNNNNN.h5` (k-space
    `(slices, 2*crop, W)` or `(slices, coils, 2*crop, W)`), `out/annotations/knee.csv`,
    `out/annotations/knee_file_list.csv`. Same arguments, same bytes. The plan (ids,
    split, findings, annotations) does not depend on `multicoil`/`coils`, so single-
    and multi-coil sets written to one `out` share their annotations.
    Returns a summary dict.
    """
    _check(volumes, slices, crop, coils, multicoil, seed)
    out = Path(out)
    challenge = "multicoil" if multicoil else "singlecoil"
    folders = {split: out / "knee" / f"{challenge}_{split}" for split in ("train", "val")}
    for folder in folders.values():
        if folder.is_dir() and any(folder.glob("*.h5")):
            raise MrRobustError(f"{folder} already holds .h5 volumes; choose an empty OUT or delete that folder")
    plans = plan_volumes(volumes, slices, seed)
    rows = annotation_rows(plans, crop)
    try:
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        (out / "annotations").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MrRobustError(f"cannot create folders under {out} ({err.strerror}); choose a writable OUT") from None
    _write_text(out / "annotations" / "knee.csv", _csv_text(rows, CSV_HEADER))
    reviewed = sorted(p.volume_id for p in plans if p.reviewed)
    _write_text(out / "annotations" / "knee_file_list.csv", _csv_text([[v] for v in reviewed] + [["Knee data"]]))

    iterator = plans
    if progress:
        from rich.console import Console
        from rich.progress import track

        iterator = track(plans, description=f"synth {challenge}", transient=True, console=Console(stderr=True))
    for plan in iterator:
        write_volume(folders[plan.split] / f"{plan.volume_id}.h5", plan, slices, crop, multicoil, coils)

    positives = {group: set() for group in PREVALENCE}
    for plan in (p for p in plans if p.reviewed):  # what the annotations say
        for f in plan.findings:
            positives[f.group].update((plan.volume_id, s) for s in f.slices)
    return {
        "out": str(out),
        "challenge": challenge,
        "volumes": volumes,
        "train": sum(p.split == "train" for p in plans),
        "val": sum(p.split == "val" for p in plans),
        "slices": volumes * slices,
        "kspace_shape": [slices, *([coils] if multicoil else []), 2 * crop, acquisition_width(crop)],
        "crop": crop,
        "reviewed": len(reviewed),
        "study_level": sum(r[2] == "Yes" for r in rows),
        "boxes": sum(r[2] == "No" for r in rows),
        "positive_slices": {group: len(s) for group, s in positives.items()},
    }
