"""Files in the real formats: fastMRI HDF5 volumes (k-space, reconstructions, ISMRMRD
header) and the fastMRI+ annotation CSVs (knee.csv, knee_file_list.csv).

The stored reconstructions are computed from the written k-space exactly as fastMRI
defines them. No timestamps, so equal content gives equal bytes.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import h5py
import numpy as np

from mrrobust.atomic import atomic_write
from mrrobust.data.synth.acquisition import _acquire, coil_sensitivities, edge_padding
from mrrobust.data.synth.anatomy import FRAME, _taper, finding_box, volume_images
from mrrobust.data.synth.plan import VolumePlan
from mrrobust.errors import MrRobustError
from mrrobust.fft import center_crop, ifft2c

CSV_HEADER = ("file", "slice", "study_level", "x", "y", "width", "height", "label")
ARTIFACT_LABEL = "artifact"


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


