"""Synthetic sagittal knee volumes and fastMRI+ style annotations, in the real file formats.

`synth` writes what `prepare` reads from a real download:
`OUT/knee/{singlecoil|multicoil}_{train,val}/fileNNNNNNN.h5` and
`OUT/annotations/{knee.csv, knee_file_list.csv}`.

Modules, in the order of the work: `plan` (volumes and labels), `anatomy` (the knee and
its lesions, drawn per slice), `acquisition` (k-space, noise, coils), `files` (fastMRI
HDF5 and fastMRI+ CSV writing). `synth` below checks the arguments and runs them.
"""

from __future__ import annotations

from pathlib import Path

from mrrobust.data.synth.acquisition import NOISE, acquisition_width, coil_sensitivities, edge_padding
from mrrobust.data.synth.anatomy import CONTRAST, FRAME, finding_box, volume_images
from mrrobust.data.synth.files import (
    ARTIFACT_LABEL, CSV_HEADER, _csv_text, _write_text, annotation_rows, ismrmrd_header, write_volume)
from mrrobust.data.synth.plan import (
    FIRST_ID, INTENSITY, LABELS, PREVALENCE, SAME_PATIENT, VAL_FRACTION, Finding, VolumePlan, plan_volumes)
from mrrobust.errors import MrRobustError

__all__ = ["synth", "plan_volumes", "volume_images", "annotation_rows", "write_volume", "acquisition_width",
           "edge_padding", "coil_sensitivities", "finding_box", "ismrmrd_header", "Finding", "VolumePlan",
           "PREVALENCE", "LABELS", "CONTRAST", "FRAME", "FIRST_ID", "INTENSITY", "NOISE", "SAME_PATIENT",
           "VAL_FRACTION", "ARTIFACT_LABEL", "CSV_HEADER"]


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
