"""fastMRI volumes + fastMRI+ annotations -> STORE (see `mrrobust.data.store`); the split.

Per reviewed volume (listed in `knee_file_list.csv`): read the k-space, reconstruct the
complex centre-cropped slice images, save them, and write a small record (slices,
patient, acquisition, 99th-percentile magnitude). A re-run skips volumes whose record
matches the same source file (path, size, mtime) and settings, so a killed run resumes.
Then, from the records alone: the volume-level split, the dataset scale, `slices.csv`
and, last, `manifest.json`.

Split: volumes are grouped by `patient_id` (a volume without one is its own group); the
sorted group keys are permuted by `numpy.random.default_rng(seed)`, and walked in that
order, each group going to train / val / test by where its midpoint falls on the
cumulative fractions of the volume count. Depends on the seed and the set of volumes
only, never on listing order or Python's hash.

Scale: the median, over train-split volumes, of each volume's 99th-percentile magnitude
(all slices, every second row and column, unscaled complex images); over all volumes
when train is empty.
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np

from mrrobust.contracts import CHECKSUM, MAX_CROP, VOLUME_DTYPE, array_digest, usable_record
from mrrobust.data.annotations import LABELS, Annotations, load_annotations
from mrrobust.data.fastmri import complex_images, read_volume
from mrrobust.data.readahead import ReadAhead
from mrrobust.data.store import (
    LABEL_SEPARATOR,
    MANIFEST,
    SLICES,
    SPLITS,
    STORE_FORMAT,
    STORE_VERSION,
    VOLUMES,
    read_json,
    remove_temp_files,
    save_npy_atomic,
    slices_csv_bytes,
    write_bytes_atomic,
    write_json_atomic,
)
from mrrobust.errors import MrRobustError
from mrrobust.progress import progress_bar

CHALLENGES = ("singlecoil", "multicoil")
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
SOURCE_SPLITS = ("train", "val")
READ_AHEAD = 2  # files read into the page cache beyond those the workers hold
SCALE_DEFINITION = (
    "median over train-split volumes of each volume's 99th-percentile magnitude "
    "of its unscaled complex centre-cropped images (every second row and column)"
)


# ---- inputs ------------------------------------------------------------------------------


def _check_settings(challenge: str, crop: int, seed: int, fractions, workers: int) -> tuple[float, float, float]:
    if challenge not in CHALLENGES:
        raise MrRobustError(f"unknown challenge {challenge!r}; use {' or '.join(CHALLENGES)}")
    if not 1 <= crop <= MAX_CROP:
        raise MrRobustError(f"crop {crop} must be a number of pixels in 1..{MAX_CROP} (fastMRI: 320)")
    if not 1 <= workers <= 256:
        raise MrRobustError(f"workers {workers} must be in 1..256")
    if seed < 0:
        raise MrRobustError(f"seed {seed} must be a non-negative integer (numpy's generator refuses negative seeds)")
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or not np.isfinite(fractions).all() or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise MrRobustError(f"split fractions {fractions} must be three finite non-negative numbers (train, val, test) summing to 1")
    return fractions


def source_folders(fastmri_root: Path, challenge: str) -> list[Path]:
    """The existing `<challenge>_train` / `_val` folders under ROOT (or ROOT/knee)."""
    root = Path(fastmri_root)
    if not root.is_dir():
        problem = "not a folder" if root.exists() else "folder not found"
        raise MrRobustError(f"{root}: {problem}; pass --fastmri the folder holding {challenge}_train/ and {challenge}_val/")
    for base in (root, root / "knee"):
        folders = [base / f"{challenge}_{split}" for split in SOURCE_SPLITS if (base / f"{challenge}_{split}").is_dir()]
        if folders:
            return folders
    raise MrRobustError(
        f"{root}: no {challenge}_train/ or {challenge}_val/ inside; pass --fastmri the fastMRI knee folder"
        f"{' (or --challenge multicoil)' if challenge == 'singlecoil' else ''}"
    )


def find_volumes(folders: list[Path], annotations: Annotations) -> tuple[dict[str, Path], list[dict], int]:
    """Reviewed volume files (name -> path), skipped duplicates [{file, reason}], and the
    number of .h5 files not in the annotators' file list."""
    files = [path for folder in folders for path in sorted(folder.glob("*.h5"))]
    if not files:
        raise MrRobustError(f"no .h5 files in {' or '.join(map(str, folders))}; the folder is empty: download or synth volumes there")
    found: dict[str, Path] = {}
    skipped = []
    for path in files:
        if path.stem in found:
            skipped.append({"file": str(path), "reason": f"duplicate of {found[path.stem]}; kept the first"})
        else:
            found[path.stem] = path
    reviewed = {name: path for name, path in found.items() if name in annotations.reviewed}
    if not reviewed:
        raise MrRobustError(
            f"none of the {len(found)} .h5 files under {folders[0].parent} is in the annotation file list "
            f"({annotations.source}); pass --annotations DIR with a knee_file_list.csv naming them"
        )
    return reviewed, skipped, len(found) - len(reviewed)


# ---- one volume (runs in a worker) ---------------------------------------------------------


def _source_key(path: Path, crop: int, challenge: str) -> dict:
    stat = path.stat()
    return {"file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "crop": crop, "challenge": challenge, "version": STORE_VERSION}


def finished_record(folder: Path, path: Path, crop: int, challenge: str) -> dict | None:
    """The volume's record in `folder` when a previous run finished it there from this very file and settings."""
    name = path.stem
    if not (folder / f"{name}.npy").is_file():
        return None
    record = read_json(folder / f"{name}.json")
    if not usable_record(record, folder / f"{name}.npy") or record.get("source") != _source_key(path, crop, challenge):
        return None  # another source or settings, or a damaged record: redo the volume
    return record


def percentile_99(values: np.ndarray) -> float:
    """`np.percentile(values, 99)` (linear interpolation), exactly, by partial sort: about 2x faster."""
    flat = values.reshape(-1)
    position = (flat.size - 1) * 0.99
    low = int(position)
    high = min(low + 1, flat.size - 1)
    part = np.partition(flat, [low, high])
    return float(part[low] + (part[high] - part[low]) * (position - low))


def prepare_volume(task: tuple[str, str, int, str, int]) -> dict:
    """Reconstruct, save and record one volume. task = (file, folder, crop, challenge,
    workers): the `.npy` and record go to `folder`; the record holds the `.npy`'s shape,
    dtype and data checksum (`contracts.array_digest`). Returns the record, or
    `{"file", "reason"}` when the file is unusable (a declaration that does not fit
    1/workers of the available memory is skipped unread)."""
    file, folder, crop, challenge, workers = task
    path, volumes = Path(file), Path(folder)
    try:
        volume = read_volume(path, workers=workers)
        if volume.multicoil != (challenge == "multicoil"):
            raise MrRobustError(
                f"{path}: {'multi' if volume.multicoil else 'single'}-coil k-space {volume.kspace.shape} in a "
                f"{challenge} folder; move it or pass the matching --challenge"
            )
        images = complex_images(volume.kspace, crop)
    except MrRobustError as err:
        return {"file": str(path), "reason": str(err).removeprefix(f"{path}: ")}
    record = {
        "source": _source_key(path, crop, challenge),
        "volume": volume.name,
        "slices": int(images.shape[0]),
        "patient_id": str(volume.attrs.get("patient_id") or ""),
        "acquisition": str(volume.attrs.get("acquisition") or ""),
        "p99": percentile_99(np.abs(images[:, ::2, ::2])),  # a 4x smaller sample: 4x faster
        "npy": {"shape": list(images.shape), "dtype": VOLUME_DTYPE, "sha256": array_digest(images)},
    }
    try:
        save_npy_atomic(volumes / f"{volume.name}.npy", images)
        write_json_atomic(volumes / f"{volume.name}.json", record)
    except OSError as err:
        raise MrRobustError(f"{volumes}: cannot write the STORE ({err}); check free space and permissions") from None
    return record


def _init_worker() -> None:
    """Pool worker set-up: torch single-threaded; Ctrl-C is the parent's to handle (it ends
    the pool; a worker would print its own traceback); on Linux, die with the parent (a
    killed `prepare` must not leave workers blocked on the task queue)."""
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _run_volumes(tasks: list, workers: int):
    """Yield `prepare_volume` results (any order); `workers` > 1 uses a process pool. A
    `ReadAhead` thread reads the next files into the page cache while the volumes compute.

    Fork where the platform has it (works from any caller, even `python -` or a notebook),
    before the read-ahead thread starts; each worker runs torch single-threaded, which also
    keeps forked OpenMP safe."""
    files = [task[0] for task in tasks]
    if workers == 1 or len(tasks) < 2:
        with ReadAhead(files, ahead=1 + READ_AHEAD) as reader:
            for task in tasks:
                yield prepare_volume(task)
                reader.done()
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with context.Pool(min(workers, len(tasks)), initializer=_init_worker) as pool:
        with ReadAhead(files, ahead=workers + READ_AHEAD) as reader:
            for result in pool.imap_unordered(prepare_volume, tasks):
                yield result
                reader.done()


# ---- split, scale, rows --------------------------------------------------------------------


def split_volumes(patients: dict[str, str], fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, str]:
    """volume -> "train" / "val" / "test"; `patients` maps volume -> patient_id ("" = unknown).

    Volumes of one patient share a split; see the module docstring for the rule."""
    groups: dict[str, list[str]] = {}
    for volume in sorted(patients):
        key = f"patient:{patients[volume]}" if patients[volume] else f"volume:{volume}"
        groups.setdefault(key, []).append(volume)
    keys = sorted(groups)
    bounds = np.cumsum(fractions)[:2] * len(patients)
    splits, start = {}, 0
    for k in np.random.default_rng(seed).permutation(len(keys)):
        members = groups[keys[k]]
        split = SPLITS[int(np.searchsorted(bounds, start + len(members) / 2, side="right"))]
        splits.update((volume, split) for volume in members)
        start += len(members)
    return splits


def dataset_scale(records: dict[str, dict], splits: dict[str, str]) -> float:
    """Median of the train volumes' 99th-percentile magnitudes (all volumes if train is empty)."""
    train = [records[v]["p99"] for v in sorted(records) if splits[v] == "train"]
    scale = float(np.median(train or [records[v]["p99"] for v in sorted(records)]))
    if not np.isfinite(scale) or scale <= 0:
        raise MrRobustError(f"the images' 99th-percentile magnitude is {scale}: the volumes hold no signal; check the k-space")
    return scale


def slice_rows(records: dict[str, dict], splits: dict[str, str], annotations: Annotations) -> tuple[list[dict], list[str]]:
    """`slices.csv` rows (volumes sorted, slices in order) and warnings for annotations on
    slices a volume does not have."""
    rows, warnings = [], []
    for volume in sorted(records):
        record, targets, labels = records[volume], annotations.slice_targets(volume), annotations.slice_labels(volume)
        beyond = sorted(s for s in targets if not 0 <= s < record["slices"])
        if beyond:
            warnings.append(f"{volume}: annotations on slice(s) {beyond} but the volume has {record['slices']} slices; ignored")
        for s in range(record["slices"]):
            target = targets.get(s, np.zeros(len(LABELS), np.uint8))
            rows.append({
                "volume": volume, "slice": s, "split": splits[volume],
                **{label: int(t) for label, t in zip(LABELS, target)},
                "labels": LABEL_SEPARATOR.join(labels.get(s, [])),
                "patient_id": record["patient_id"], "acquisition": record["acquisition"],
            })
    return rows, warnings


def _counts(records: dict[str, dict], splits: dict[str, str], rows: list[dict]) -> dict:
    per_split = {
        split: {
            "volumes": sum(1 for v in records if splits[v] == split),
            "slices": sum(1 for row in rows if row["split"] == split),
            "positives": {label: sum(row[label] for row in rows if row["split"] == split) for label in LABELS},
        }
        for split in SPLITS
    }
    return {"volumes": len(records), "slices": len(rows), "splits": per_split}


# ---- the command ---------------------------------------------------------------------------


STAGING = ".incoming"  # OUT/.incoming/: volumes of a run over a finished STORE, moved into volumes/ at the end
CHANGEABLE = ("challenge", "crop", "seed", "fractions")  # settings a re-run may change


def _check_out(out: Path) -> dict | None:
    """Refuse an OUT that is not a folder or not a STORE; return its manifest when it is a finished STORE."""
    if out.exists() and not out.is_dir():
        raise MrRobustError(f"{out}: exists and is not a folder; pass --out a new or STORE folder")
    if out.is_dir() and any(out.iterdir()) and not ((out / VOLUMES).is_dir() or (out / MANIFEST).is_file()):
        raise MrRobustError(f"{out}: a non-empty folder that is not a STORE; pass --out a new folder")
    return read_json(out / MANIFEST) if (out / MANIFEST).is_file() else None


def _open_store(out: Path, finished: bool) -> tuple[Path, list[Path]]:
    """Create the folders this run writes volumes to; returns (that folder, folders created now).

    Over a finished STORE new volumes go to `OUT/.incoming/`, so the old STORE stays
    complete and readable until `_commit` swaps them in; otherwise straight to `OUT/volumes/`."""
    target = out / (STAGING if finished else VOLUMES)
    created = [folder for folder in (out, out / VOLUMES, target) if not folder.exists()]
    try:
        target.mkdir(parents=True, exist_ok=True)
        (out / VOLUMES).mkdir(exist_ok=True)
    except OSError as err:
        raise MrRobustError(f"{out}: cannot write the STORE there ({err}); pass --out a writable folder") from None
    for folder in (out / VOLUMES, target):
        remove_temp_files(folder)
    return target, created


def _remove_created(created: list[Path]) -> None:
    """Undo `_open_store` after a run that produced nothing: delete the folders it made (newest first)."""
    for folder in reversed(created):
        shutil.rmtree(folder, ignore_errors=True)


def _commit(out: Path, staged: Path, rows: list[dict], manifest: dict) -> None:
    """Make the new STORE visible: staged volumes into `volumes/`, then `slices.csv`, then
    `manifest.json` last. When that changes a finished STORE its old manifest goes first, so
    a crash in between leaves an unfinished STORE (a re-run finishes it), never a mixed one."""
    staged_records = sorted(staged.glob("*.json")) if staged != out / VOLUMES else []
    slices = slices_csv_bytes(rows)
    if staged_records or not (out / SLICES).is_file() or (out / SLICES).read_bytes() != slices:
        (out / MANIFEST).unlink(missing_ok=True)
    for record in staged_records:  # .npy before its record, as `prepare_volume` writes them
        os.replace(staged / f"{record.stem}.npy", out / VOLUMES / f"{record.stem}.npy")
        os.replace(record, out / VOLUMES / record.name)
    if staged != out / VOLUMES:
        shutil.rmtree(staged, ignore_errors=True)
    write_bytes_atomic(out / SLICES, slices)
    write_json_atomic(out / MANIFEST, manifest)


def changed_settings(old: dict | None, new: dict) -> dict[str, list]:
    """{setting: [old, new]} for the `CHANGEABLE` settings a finished STORE's manifest had otherwise."""
    if not old:
        return {}
    return {key: [old.get(key), new[key]] for key in CHANGEABLE if old.get(key) != new[key]}


def prepare(fastmri_root, out, annotations=None, challenge="singlecoil", crop=320, seed=0,
            fractions=(0.7, 0.15, 0.15), workers=1, progress=True) -> dict:
    """Build (or finish, or redo) the STORE `out` from `fastmri_root`; returns the manifest
    plus `store`, `prepared` (volumes done now), `reused` (volumes finished before) and
    `changed_settings` ({setting: [old, new]} against the finished STORE this run replaced).

    A finished STORE in `out` stays finished and unchanged until this run's new manifest
    replaces it; when no volume is usable it is left as it was, and the folders this run
    created are removed."""
    fractions = _check_settings(challenge, crop, seed, fractions, workers)
    folders = source_folders(Path(fastmri_root), challenge)
    labels = load_annotations(annotations)
    files, skipped, not_reviewed = find_volumes(folders, labels)
    out = Path(out)
    previous = _check_out(out)
    target, created = _open_store(out, finished=previous is not None)

    records: dict[str, dict] = {}
    for name, path in files.items():
        record = finished_record(target, path, crop, challenge) or finished_record(out / VOLUMES, path, crop, challenge)
        if record is not None:
            records[name] = record
    reused = len(records)
    tasks = [(str(path), str(target), crop, challenge, workers) for name, path in sorted(files.items()) if name not in records]
    with progress_bar(progress) as bar:
        job = bar.add_task(f"prepare {len(tasks)} volumes ({reused} done before)", total=len(tasks))
        for result in _run_volumes(tasks, workers):
            if "reason" in result:
                skipped.append(result)
            else:
                records[result["volume"]] = result
            bar.update(job, advance=1, description=f"prepare ({len(skipped)} skipped)")
    skipped.sort(key=lambda item: item["file"])
    if not records:
        _remove_created(created)
        first = f": {skipped[0]['file']}: {skipped[0]['reason']}" if skipped else ""
        kept = f"; {out} still holds the previous finished STORE" if previous else ""
        raise MrRobustError(f"no usable volume among {len(files)} reviewed files ({len(skipped)} skipped{first}){kept}; fix the input and re-run")

    splits = split_volumes({v: r["patient_id"] for v, r in records.items()}, fractions, seed)
    rows, warnings = slice_rows(records, splits, labels)
    manifest = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "source": str(folders[0].parent.resolve()),
        "challenge": challenge,
        "crop": crop,
        "scale": dataset_scale(records, splits),
        "scale_definition": SCALE_DEFINITION,
        "seed": seed,
        "fractions": list(fractions),
        "annotations": labels.source,
        "counts": _counts(records, splits, rows),
        "skipped": skipped,
        "not_reviewed": not_reviewed,
        "reviewed_missing": len(labels.reviewed - set(files)),
        "unseen_labels": sorted(labels.unseen_labels),
        "volume_notes": {v: labels.volume_notes(v) for v in sorted(records) if labels.volume_notes(v)},
        "warnings": warnings,
        "checksums": {"algorithm": CHECKSUM, "slices_csv": hashlib.sha256(slices_csv_bytes(rows)).hexdigest(),
                      "volumes": {v: records[v]["npy"] for v in sorted(records)}},
    }
    _commit(out, target, rows, manifest)
    return {**manifest, "store": str(out), "prepared": len(records) - reused, "reused": reused,
            "changed_settings": changed_settings(previous, manifest)}


def summary_lines(summary: dict) -> list[str]:
    """The closing summary of `prepare` as plain lines: totals, skipped files with reasons,
    label prevalence per split, unseen labels."""
    counts = summary["counts"]
    lines = [
        f"{summary['store']}: {counts['volumes']} volumes, {counts['slices']} slices "
        f"({summary['prepared']} volumes prepared now, {summary['reused']} finished before), "
        f"crop {summary['crop']}, scale {summary['scale']:.6g}",
        f"not in the annotators' list: {summary['not_reviewed']} files; listed but not found: {summary['reviewed_missing']}; "
        f"volume notes (study-level rows): {len(summary['volume_notes'])}",
    ]
    if summary.get("changed_settings"):
        changes = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in summary["changed_settings"].items())
        lines.append(f"settings differ from the STORE's previous run ({changes}): {summary['prepared']} volumes redone, split and scale recomputed")
    lines += [f"skipped {item['file']}: {item['reason']}" for item in summary["skipped"]]
    lines.append(f"{'split':<6}{'volumes':>9}{'slices':>9}" + "".join(f"{label:>16}" for label in LABELS))
    for split, c in counts["splits"].items():
        prevalence = "".join(
            f"{c['positives'][label]:>8} {c['positives'][label] / max(c['slices'], 1):6.1%}" for label in LABELS
        )
        lines.append(f"{split:<6}{c['volumes']:>9}{c['slices']:>9}{prevalence}")
    if summary["unseen_labels"]:
        lines.append(f"labels outside the fastMRI+ set (counted by the mapping, usually as abnormal): {', '.join(summary['unseen_labels'])}")
    lines += [f"warning: {text}" for text in summary["warnings"]]
    return lines
