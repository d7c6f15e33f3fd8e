"""Synthetic sagittal knee volumes and fastMRI+ style annotations, in the real file formats.

`synth` writes what `prepare` reads from a real download:
`OUT/knee/{singlecoil|multicoil}_{train,val}/fileNNNNNNN.h5` and
`OUT/annotations/{knee.csv, knee_file_list.csv}`.

Modules, in the order of the work: `plan` (volumes and labels), `anatomy` (the knee and
its lesions, drawn per slice), `acquisition` (k-space, noise, coils), `files` (fastMRI
HDF5 and fastMRI+ CSV writing). `synth` below checks the arguments and runs them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mrrobust.data.synth.acquisition import NOISE, acquisition_width, coil_sensitivities, edge_padding
from mrrobust.data.synth.anatomy import CONTRAST, FRAME, finding_box, volume_images
from mrrobust.data.synth.files import (
    ARTIFACT_LABEL, CSV_HEADER, _csv_text, _write_text, annotation_rows, ismrmrd_header, write_volume)
from mrrobust.data.synth.plan import (
    FIRST_ID, INTENSITY, LABELS, PREVALENCE, SAME_PATIENT, VAL_FRACTION, Finding, VolumePlan, plan_volumes)
from mrrobust.errors import MrRobustError
from mrrobust.atomic import atomic_write
from mrrobust.settings_record import matches_record

__all__ = ["synth", "plan_volumes", "volume_images", "annotation_rows", "write_volume", "acquisition_width",
           "edge_padding", "coil_sensitivities", "finding_box", "ismrmrd_header", "Finding", "VolumePlan",
           "PREVALENCE", "LABELS", "CONTRAST", "FRAME", "FIRST_ID", "INTENSITY", "NOISE", "SAME_PATIENT",
           "VAL_FRACTION", "ARTIFACT_LABEL", "CSV_HEADER"]


# Bounds of the arguments, from fastMRI's largest volumes (REFERENCE s.2): knee k-space is
# (slices, 640, ~372) for a 320 crop, 15 coils, about 36 slices a volume (at most ~50), and
# the knee train + val sets hold 1,172 volumes. Twice those is plenty for a synthetic set.
MAX_CROP = 640
MAX_SLICES = 100
MAX_COILS = 32
MAX_VOLUMES = 5000
MAX_LESION_SCALE = 4.0
RECORD = "synth_{challenge}.json"  # the settings of the synth that writes OUT/knee/<challenge>_*
MEMORY_FACTOR = 4  # peak memory of one volume: about 4 copies of its complex images (images, k-space, inverse)


def _volume_bytes(slices: int, crop: int, coils: int) -> tuple[int, int]:
    """(peak memory, file size) in bytes of one volume: complex64 k-space `(slices, coils, 2*crop, W)`
    and float32 reconstructions `(slices, crop, crop)` (two for single-coil, ESC and RSS)."""
    kspace = slices * coils * 2 * crop * acquisition_width(crop) * 8
    recons = slices * crop * crop * 4 * (2 if coils == 1 else 1)
    return MEMORY_FACTOR * kspace + recons, kspace + recons


def _available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _free_disk(out: Path) -> int | None:
    """Free bytes on the file system that `out` (or its nearest existing parent) is on."""
    folder = out.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _check(out, volumes, slices, crop, coils, multicoil, seed, lesion_scale):
    """Every argument and the memory and disk they need, before anything is allocated or written."""
    problems = []
    if seed < 0:
        problems.append(f"--seed {seed} (need >= 0)")
    if not 1 <= volumes <= MAX_VOLUMES:
        problems.append(f"--volumes {volumes} (need 1..{MAX_VOLUMES})")
    if not 1 <= slices <= MAX_SLICES:
        problems.append(f"--slices {slices} (need 1..{MAX_SLICES}; fastMRI knee volumes have about 36)")
    if not 32 <= crop <= MAX_CROP or crop % 2:
        problems.append(f"--crop {crop} (need an even number in 32..{MAX_CROP}; fastMRI knee is 320)")
    if multicoil and not 2 <= coils <= MAX_COILS:
        problems.append(f"--coils {coils} (need 2..{MAX_COILS} with --multicoil; fastMRI knee has 15)")
    if not 1.0 <= lesion_scale <= MAX_LESION_SCALE:
        problems.append(f"--lesion-scale {lesion_scale} (need 1..{MAX_LESION_SCALE:g})")
    if problems:
        raise MrRobustError(f"bad {', '.join(problems)}")
    memory, size = _volume_bytes(slices, crop, coils if multicoil else 1)
    available = _available_memory()
    if available is not None and memory > available:
        raise MrRobustError(f"one volume of {slices} slices at --crop {crop} needs about {_gib(memory)} of memory, "
                            f"{_gib(available)} is available; lower --crop, --slices or --coils")
    free = _free_disk(Path(out))
    if free is not None and volumes * size > free:
        raise MrRobustError(f"{volumes} volumes need about {_gib(volumes * size)} on disk, {_gib(free)} is free "
                            f"under {out}; lower --volumes, --slices or --crop, or choose another OUT")


def _claim(out: Path, challenge: str, settings: dict, folders: dict) -> None:
    """Refuse unless `out` is empty for this challenge or holds a synth with the same `settings`
    (then it resumes). Writes nothing."""
    record = out / RECORD.format(challenge=challenge)
    if matches_record(record, settings, f"{challenge} synth",
                      if_damaged=f"delete {out / 'knee'} and it, or choose an empty OUT",
                      if_changed="use the same arguments to finish it, or choose an empty OUT"):
        return
    for folder in folders.values():
        if folder.is_dir() and any(folder.glob("*.h5")):
            raise MrRobustError(f"{folder} already holds .h5 volumes that no synth record ({record.name}) "
                                f"describes; choose an empty OUT or delete that folder")


def synth(out: Path, volumes: int = 24, slices: int = 16, crop: int = 320, seed: int = 0,
          multicoil: bool = False, coils: int = 8, lesion_scale: float = 1.0, progress: bool = False) -> dict:
    """Write a synthetic fastMRI knee data set with fastMRI+ annotations under `out`.

    Files: `out/knee/{singlecoil|multicoil}_{train,val}/fileNNNNNNN.h5` (k-space
    `(slices, 2*crop, W)` or `(slices, coils, 2*crop, W)`), `out/annotations/knee.csv`,
    `out/annotations/knee_file_list.csv`, and `out/synth_<challenge>.json` (the settings).
    Same arguments, same bytes. The plan (ids, split, findings, annotations) does not depend
    on `multicoil`/`coils`, so single- and multi-coil sets written to one `out` share their
    annotations. `lesion_scale` draws every lesion that many times larger (the demo's small
    crops). A killed synth resumes: the same call again writes only the missing volumes
    (each file is written whole or not at all). Returns a summary dict.
    """
    from mrrobust.data.store import remove_temp_files
    from mrrobust.progress import progress_bar

    out = Path(out)
    _check(out, volumes, slices, crop, coils, multicoil, seed, lesion_scale)
    challenge = "multicoil" if multicoil else "singlecoil"
    folders = {split: out / "knee" / f"{challenge}_{split}" for split in ("train", "val")}
    settings = {"volumes": volumes, "slices": slices, "crop": crop, "seed": seed,
                "coils": coils if multicoil else 1, "lesion_scale": lesion_scale}
    _claim(out, challenge, settings, folders)
    plans = plan_volumes(volumes, slices, seed, lesion_scale)
    rows = annotation_rows(plans, crop)
    reviewed = sorted(p.volume_id for p in plans if p.reviewed)
    texts = {out / "annotations" / "knee.csv": _csv_text(rows, CSV_HEADER),
             out / "annotations" / "knee_file_list.csv": _csv_text([[v] for v in reviewed] + [["Knee data"]])}
    for path, text in texts.items():  # another synth's annotations: refused before anything is written
        if path.exists() and path.read_text() != text:
            raise MrRobustError(f"{path} exists with other content (another synth run?); choose an empty OUT or delete it")
    try:
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
            remove_temp_files(folder)  # what a killed synth left
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        atomic_write(out / RECORD.format(challenge=challenge),
                     lambda tmp: tmp.write_text(json.dumps(settings, indent=1) + "\n"))
    except OSError as err:
        raise MrRobustError(f"cannot write under {out} ({err.strerror}); choose a writable OUT") from None
    for path, text in texts.items():
        _write_text(path, text)

    todo = [plan for plan in plans if not (folders[plan.split] / f"{plan.volume_id}.h5").is_file()]
    with progress_bar(progress) as bar:
        task = bar.add_task(f"synth {challenge}", total=len(todo))
        for plan in todo:
            write_volume(folders[plan.split] / f"{plan.volume_id}.h5", plan, slices, crop, multicoil, coils)
            bar.advance(task)

    positives = {group: set() for group in PREVALENCE}
    for plan in (p for p in plans if p.reviewed):  # what the annotations say
        for f in plan.findings:
            positives[f.group].update((plan.volume_id, s) for s in f.slices)
    return {
        "out": str(out),
        "challenge": challenge,
        "volumes": volumes,
        "written": len(todo),
        "reused": volumes - len(todo),
        "train": sum(p.split == "train" for p in plans),
        "val": sum(p.split == "val" for p in plans),
        "slices": volumes * slices,
        "kspace_shape": [slices, *([coils] if multicoil else []), 2 * crop, acquisition_width(crop)],
        "crop": crop,
        "lesion_scale": lesion_scale,
        "reviewed": len(reviewed),
        "study_level": sum(r[2] == "Yes" for r in rows),
        "boxes": sum(r[2] == "No" for r in rows),
        "positive_slices": {group: len(s) for group, s in positives.items()},
    }
