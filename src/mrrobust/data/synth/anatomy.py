"""Anatomy and lesions: one sagittal knee slice painted with anti-aliased signed-distance shapes.

Anatomy is drawn in the fastMRI+ annotation frame (the up/down flipped 320x320
image: femur on top, anterior on the left), in "units" of 1/320 of the
reconstructed field of view, on the 2x readout-oversampled acquisition grid
`(2*crop, W)`: a femoral shaft that widens smoothly into rounded condyles, a
tibial plateau over a flared metaphysis, an oval patella. Each tissue has a
proton-density (CORPD_FBK) and a fat-suppressed (CORPDFS_FBK) intensity,
modulated by band-limited random textures seen through the voxel (trabecular
marrow, striated muscle, slowly varying fat), and the painted slice is blurred
by a Gaussian of `EDGE_BLUR` units so that tissue edges are not binary.
Findings are drawn as localized, label-specific lesions inside the box that the
annotation row records (`finding_box`), over a few consecutive slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mrrobust.data.synth.acquisition import acquisition_width
from mrrobust.data.synth.plan import Finding, VolumePlan, _slice_z

FRAME = 320.0  # annotation frame size: all geometry below is in 1/320 of the field of view


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
            canvas.paint("cortex", A(_segment(X, Y, *line, max(1.5, 0.5 * canvas.pixel) * _lesion_scale(p))) * marrow)
    for params, surface, articular, taper in defects:
        depth = _subchondral_depth(params)
        if depth > 0:  # subchondral signal under a full-thickness (or a scaled-up) defect
            under = A(np.abs(X - params["x"]) - params["width"] * taper / 2) * articular
            canvas.paint("edema", A(surface + CORTEX) * A(-(surface + depth)) * under, gain=0.9)

    # joint fluid line, menisci, cruciate ligaments
    canvas.paint("fluid", A(_box(X, Y, 150, 186.5, 200, 189.5)) * (1 - notch), gain=0.7)
    for horn, pts in MENISCUS.items():
        meniscus = A(_triangle(X, Y, pts)) * menisci_seen
        canvas.paint("meniscus", meniscus)
        for f, _ in by_kind.get("mtear", []):
            if f.params["horn"] == horn:
                canvas.paint("fluid", meniscus * A(_tear_line(X, Y, pts, f.params, canvas.pixel)))
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


def _lesion_scale(params: dict) -> float:
    """How much larger than drawn at scale 1 a lesion is (`plan._scaled`)."""
    return params.get("scale", 1.0)


def _subchondral_depth(params: dict) -> float:
    """Depth (units) of the edema under a cartilage defect: `SUBCHONDRAL` under a full-thickness
    one, none under a partial one; a lesion scale s > 1 deepens both (full: s, partial: s - 1 times it)."""
    scale = _lesion_scale(params)
    return SUBCHONDRAL * (scale if params["full"] else scale - 1)


def _tear_line(X, Y, pts, params, pixel):
    """Signed distance to a cleft through the meniscus horn (at least one pixel wide)."""
    cx = sum(p[0] for p in pts) / 3
    cy = sum(p[1] for p in pts) / 3
    t = math.radians(params["angle"])
    dx, dy = 30 * math.cos(t), 30 * math.sin(t)
    return _segment(X, Y, (cx - dx, cy - dy), (cx + dx, cy + dy), max(1.5, 0.5 * pixel) * _lesion_scale(params))


def _acl_sprain(canvas, X, Y, params, seen):
    """A thickened, bright mid-ACL; high grade adds a fluid gap across the band."""
    A = canvas.alpha
    half = SPRAIN_HALF * _lesion_scale(params)
    canvas.paint("sprain", A(_segment(X, Y, *_acl_part(*SPRAIN), half - 1)) * seen)
    if params["high_grade"]:
        (x0, y0), (x1, y1) = ACL
        at = params["at"]
        mx, my = x0 + at * (x1 - x0), y0 + at * (y1 - y0)
        nx, ny = -(y1 - y0), x1 - x0
        n = math.hypot(nx, ny)
        nx, ny = half * nx / n, half * ny / n
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
        half = SPRAIN_HALF * _lesion_scale(p)
        x0, y0 = ends.min(0) - half
        x1, y1 = ends.max(0) + half
    elif finding.group == "cartilage":
        half = p["width"] * taper / 2
        x0, x1 = p["x"] - half, p["x"] + half
        y0, y1 = (176.0, 190.0) if p["surface"] == "femur" else (187.0, 200.0)
        depth = _subchondral_depth(p)
        if depth > 0:
            y0, y1 = (y0 - depth, y1) if p["surface"] == "femur" else (y0, y1 + depth)
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


