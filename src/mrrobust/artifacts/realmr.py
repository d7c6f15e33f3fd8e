"""Real MR slices for calibrating and testing the artifacts, from public test files that packages ship.

The project ships no patient data; these files come with pydicom, pydicom-data
and nibabel (the `test` extra installs them; nothing is downloaded):
- pydicom (MIT licence): `MR_small.dcm`, a 64x64 spin-echo head slice downsized
  from NEMA's WG04 `MR1_UNC` sample.
- pydicom-data (MIT licence; found by `pydicom.data.get_testdata_file`):
  `MR2_UNCR.dcm` (1024x1024 spin-echo shoulder, NEMA WG04),
  `MR-SIEMENS-DICOM-WithOverlays.dcm` (484x484 gradient-echo abdomen) and
  `emri_small.dcm` (10 frames of a 64x64 head series).
- nibabel (MIT licence): `tests/data/example4d.nii.gz` (128x96x24 echo-planar
  brain volume, `nibabel.testing.data_path`).

Each slice is centre-cropped to a square, area-resampled to `size` x `size`,
turned so phase encoding runs along columns (axis -1, the project's convention;
DICOM's `InPlanePhaseEncodingDirection` "COL" means along rows, so those are
transposed), scaled to max |x| = 1 and given a smooth synthetic phase (none of
these files has raw k-space). None is a knee.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from mrrobust.errors import MrRobustError

DICOM_FILES = (  # file, frames to take (None: a single-frame file)
    ("MR_small.dcm", None),
    ("MR2_UNCR.dcm", None),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", None),
    ("emri_small.dcm", (0, 3, 6, 9)),
)
NIFTI_FILE, NIFTI_SLICES = "example4d.nii.gz", (6, 9, 12, 15, 18)


def _square(image: np.ndarray, size: int) -> torch.Tensor:
    """2-D array -> `(size, size)` float64: centre crop to a square, then area resampling."""
    h, w = image.shape
    n = min(h, w)
    top, left = (h - n) // 2, (w - n) // 2
    t = torch.from_numpy(np.ascontiguousarray(image[top : top + n, left : left + n], dtype=np.float64))
    return F.interpolate(t[None, None], size=(size, size), mode="area")[0, 0]


def _dicom_images(size: int) -> list[tuple[str, torch.Tensor]]:
    try:
        import pydicom
        from pydicom.data import get_testdata_file
    except ImportError:
        raise MrRobustError("real MR slices need pydicom and nibabel: pip install 'mrrobust[test]'") from None

    out = []
    for name, frames in DICOM_FILES:
        path = get_testdata_file(name, download=False)
        if path is None:  # pydicom-data not installed: use what pydicom itself ships
            continue
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.astype(np.float64)
        stack = pixels[list(frames)] if frames is not None else pixels[None]
        transpose = str(ds.get("InPlanePhaseEncodingDirection", "ROW")).upper() == "COL"
        for k, frame in enumerate(stack):
            image = _square(frame, size)
            out.append((f"{name}:{frames[k] if frames else 0}", image.T if transpose else image))
    return out


def _nifti_images(size: int) -> list[tuple[str, torch.Tensor]]:
    try:
        import nibabel
        from nibabel.testing import data_path
    except ImportError:
        raise MrRobustError("real MR slices need pydicom and nibabel: pip install 'mrrobust[test]'") from None

    volume = np.asanyarray(nibabel.load(os.path.join(data_path, NIFTI_FILE)).dataobj)[..., 0].astype(np.float64)
    return [(f"{NIFTI_FILE}:{z}", _square(volume[:, :, z], size)) for z in NIFTI_SLICES]


def smooth_phase(size: int, index: int) -> torch.Tensor:
    """`(size, size)` float64 radians: a low-order polynomial phase (a few radians across the
    field of view), different for each slice index, deterministic."""
    t = torch.linspace(-1, 1, size, dtype=torch.float64)
    y, x = torch.meshgrid(t, t, indexing="ij")
    a, b, c = math.sin(index + 1.0), math.cos(2.0 * index + 0.5), math.sin(3.0 * index + 2.0)
    return 0.8 * a * x + 0.6 * b * y + 0.5 * c * x * y + 0.4 * (x * x - y * y)


@lru_cache(maxsize=4)
def real_mr_slices(size: int = 64) -> tuple[torch.Tensor, tuple[str, ...]]:
    """`(N, size, size)` complex64 real MR slices (max |x| = 1, smooth phase) and their names
    `file:frame`; N = 12 with pydicom-data installed, 6 without."""
    named = _dicom_images(size) + _nifti_images(size)
    images = []
    for index, (_, magnitude) in enumerate(named):
        magnitude = magnitude.clamp(min=0) / magnitude.max()
        images.append(torch.polar(magnitude, smooth_phase(size, index)))
    return torch.stack(images).to(torch.complex64), tuple(name for name, _ in named)
