"""Every on-disk contract of mrrobust, checked at the door, in one place.

STORE (`manifest.json`, `slices.csv`, `volumes/*.npy`), RUN (`config.json`,
`operating_points.json`), RESULTS (`evaluation.json`, `results.csv`, prediction `.npy`
files) and the fastMRI HDF5 structure each have a schema here; every reader calls the
matching `read_*` / `check_*` before it indexes a dict or an array. A violation raises
`MrRobustError` with one line: the file, the field, what was expected and what to do.

Schemas are pydantic v2 models in strict mode (a string where a number goes is refused,
NaN and Inf are refused): pydantic is the field's most used, best kept validator, its core
is compiled (a 35 000-row slices.csv checks in well under a second), and its errors carry
the field's location, which the one-line message names. Unknown keys are allowed, so a
newer writer's extra fields do not break an older reader.

Cheap checks happen at every open (headers, sizes, digests of the small files); the full
checksum pass over the volume data is `verify` (`mrrobust verify PATH`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mrrobust.data.annotations import LABELS
from mrrobust.errors import MrRobustError

STORE_FORMAT, STORE_VERSION = "mrrobust-store", 1
RUN_FORMAT, RUN_VERSION = "mrrobust-run", 1
RESULTS_FORMAT, RESULTS_VERSION = "mrrobust-results", 2
SPLITS = ("train", "val", "test")
CHECKSUM = "sha256"  # of a volume's array data in C order; of slices.csv's bytes (SHA-NI: ~2x blake2b here)
VOLUME_DTYPE = "complex64"

# Sane bounds (fastMRI's largest knee and brain volumes: 64 slices, 20 coils, 768x396 k-space;
# the study's images are 320 px). A declaration beyond them is refused before any read.
MAX_SLICES = 1024
MAX_COILS = 128
MAX_MATRIX = 4096
MAX_CROP = 2048
MAX_WIDTH = 1024
MAX_HEADER_BYTES = 16 << 20  # an ISMRMRD XML header larger than this is not read
_CHUNK = 1 << 24

PREPARE_FIX = "re-run `mrrobust prepare` into a new folder"
TRAIN_FIX = "re-run `mrrobust train` for this RUN"
EVALUATE_FIX = "re-run `mrrobust evaluate` into a new folder"


# ---- the machinery -----------------------------------------------------------------------


class Contract(BaseModel):
    """Base of every schema: strict types, no NaN/Inf, extra keys allowed."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")


def _where(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(schema: type[Contract], value: Any, path: Path | str, fix: str, where: str = "") -> Contract:
    """`schema` instance from `value`; MrRobustError naming `path`, the first bad field,
    what it expected, what it got, and `fix`."""
    try:
        return schema.model_validate(value)
    except ValidationError as err:
        first = err.errors()[0]
        got = "missing" if first["type"] == "missing" else f"got {_shown(first.get('input'))}"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise MrRobustError(f"{path}{where}: field {_where(first['loc'])}: {first['msg'].lower()}, "
                            f"{got}{more}; {fix}") from None


def read_json_object(path: Path | str, fix: str) -> dict:
    """The JSON object in `path`; MrRobustError when unreadable, not UTF-8, not JSON, not an object."""
    path = Path(path)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise MrRobustError(f"{path}: file not found; {fix}") from None
    except OSError as err:
        raise MrRobustError(f"{path}: cannot read it ({err.strerror or err}); check its permissions") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise MrRobustError(f"{path}: unreadable, not valid UTF-8 JSON ({err}); {fix}") from None
    if not isinstance(value, dict):
        raise MrRobustError(f"{path}: a JSON {type(value).__name__}, not an object; {fix}")
    return value


def read_csv_rows(path: Path | str, columns: tuple, fix: str) -> list[dict]:
    """Rows of a UTF-8 CSV file with at least `columns` (dicts of strings)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise MrRobustError(f"{path}: file not found; {fix}") from None
    except OSError as err:
        raise MrRobustError(f"{path}: cannot read it ({err.strerror or err}); check its permissions") from None
    except UnicodeDecodeError as err:
        raise MrRobustError(f"{path}: not UTF-8 text ({err}); {fix}") from None
    try:
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise MrRobustError(f"{path}: missing column(s) {', '.join(missing)}; {fix}")
        rows = list(reader)
    except csv.Error as err:
        raise MrRobustError(f"{path}: not a readable CSV ({err}); {fix}") from None
    for line, row in enumerate(rows, start=2):
        if None in row or any(row[c] is None for c in columns):
            raise MrRobustError(f"{path} line {line}: {'too many' if None in row else 'too few'} cells; {fix}")
    return rows


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (Linux MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(nbytes: int, what: str, fix: str, share: int = 1) -> None:
    """Refuse `what` needing `nbytes` when it exceeds the available memory / `share`."""
    free = available_memory()
    if free is not None and nbytes > free // max(share, 1):
        raise MrRobustError(f"{what} needs {nbytes / 2**30:.1f} GiB, more than the "
                            f"{free / 2**30 / max(share, 1):.1f} GiB available{' per worker' if share > 1 else ''}; {fix}")


def file_digest(path: Path | str, algorithm: str = "blake2b") -> str:
    """Hex digest of a file's bytes (read in 16 MiB blocks): "blake2b" (128 bits, as RESULTS
    record RUN weights) or "sha256" (STORE checksums)."""
    digest = hashlib.blake2b(digest_size=16) if algorithm == "blake2b" else hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def array_digest(array: np.ndarray) -> str:
    """SHA-256 hex digest of an array's data in C order (a memory map is read in blocks)."""
    digest = hashlib.sha256()
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    for start in range(0, flat.size, _CHUNK):
        digest.update(flat[start:start + _CHUNK])
    return digest.hexdigest()


# ---- .npy headers --------------------------------------------------------------------------


def npy_header(path: Path | str, fix: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of a `.npy` file from its header alone, after checking that the file
    holds exactly that much data (a truncated or padded file is refused) in C order."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            reader = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if reader is None:
                raise ValueError(f"npy format version {version}")
            shape, fortran, dtype = reader(fh)
            offset = fh.tell()
        size = path.stat().st_size
    except FileNotFoundError:
        raise MrRobustError(f"{path}: file not found; {fix}") from None
    except OSError as err:
        raise MrRobustError(f"{path}: cannot read it ({err.strerror or err}); check its permissions") from None
    except (ValueError, SyntaxError, TypeError) as err:
        raise MrRobustError(f"{path}: not a readable .npy array ({err}); {fix}") from None
    if fortran or dtype.hasobject:
        raise MrRobustError(f"{path}: a {'Fortran-order' if fortran else 'object'} array, expected "
                            f"C-order numbers; {fix}")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        raise MrRobustError(f"{path}: {size} bytes, its header {shape} {dtype} declares {expected} "
                            f"(truncated or padded); {fix}")
    return tuple(shape), dtype


def check_npy(path: Path | str, shape: tuple, dtype: str, fix: str) -> None:
    """Refuse a `.npy` file whose header is not `shape` (None: any length) and `dtype`."""
    found_shape, found_dtype = npy_header(path, fix)
    same = len(found_shape) == len(shape) and all(e is None or e == f for e, f in zip(shape, found_shape))
    if not same or found_dtype != np.dtype(dtype):
        want = "(" + ", ".join("N" if e is None else str(e) for e in shape) + ")"
        raise MrRobustError(f"{path}: {found_dtype} {found_shape}, expected {np.dtype(dtype)} {want}; {fix}")


# ---- STORE ---------------------------------------------------------------------------------


PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]


class VolumeFile(Contract):
    shape: Annotated[list[Annotated[int, Field(ge=1, le=max(MAX_SLICES, MAX_CROP))]], Field(min_length=3, max_length=3)]
    dtype: Literal["complex64"]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class VolumeRecord(Contract):
    """`volumes/<volume>.json`, the per-volume record `prepare` resumes from."""

    source: dict
    volume: Annotated[str, Field(pattern=r"^[\w.-]+$")]
    slices: Annotated[int, Field(ge=1, le=MAX_SLICES)]
    patient_id: str
    acquisition: str
    p99: Annotated[float, Field(ge=0)]
    npy: VolumeFile


def usable_record(record: dict | None, npy: Path) -> bool:
    """Whether a resumed volume record is well-formed and its `.npy` header matches it
    (else `prepare` redoes the volume)."""
    if record is None:
        return False
    try:
        validate(VolumeRecord, record, npy.with_suffix(".json"), PREPARE_FIX)
        check_npy(npy, tuple(record["npy"]["shape"]), VOLUME_DTYPE, PREPARE_FIX)
    except MrRobustError:
        return False
    return record["npy"]["shape"][0] == record["slices"]


class Checksums(Contract):
    algorithm: Literal["sha256"]
    slices_csv: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    volumes: dict[Annotated[str, Field(pattern=r"^[\w.-]+$")], VolumeFile]


class SplitCounts(Contract):
    volumes: Count
    slices: Count
    positives: dict[str, Count]


class Counts(Contract):
    volumes: Count
    slices: Count
    splits: dict[Literal["train", "val", "test"], SplitCounts]


class Skipped(Contract):
    file: str
    reason: str


class StoreManifest(Contract):
    """What readers use is required (format, version, crop, scale); the record of how the
    STORE was made is type-checked when present; `checksums` (written by `prepare` since
    the integrity checks came) is checked against slices.csv and the volume files."""

    format: Literal["mrrobust-store"]
    version: Literal[1]
    crop: Annotated[int, Field(ge=1, le=MAX_CROP)]
    scale: Annotated[float, Field(gt=0)]
    source: str = None
    challenge: Literal["singlecoil", "multicoil"] = None
    seed: Count = None
    fractions: Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=3, max_length=3)] = None
    counts: Counts = None
    skipped: list[Skipped] = []
    warnings: list[str] = []
    checksums: Optional[Checksums] = None

    @field_validator("checksums")
    @classmethod
    def _crop_matches(cls, value, info):
        crop = info.data.get("crop")
        bad = [name for name, v in (value.volumes.items() if value else ()) if v.shape[1:] != [crop, crop]]
        if bad:
            raise ValueError(f"volume {bad[0]} is not (slices, crop, crop) with crop {crop}")
        return value


class SliceRow(Contract):
    model_config = ConfigDict(strict=False, extra="allow")
    volume: Annotated[str, Field(pattern=r"^[\w.-]+$")]
    slice: Annotated[int, Field(ge=0, lt=MAX_SLICES)]
    split: Literal["train", "val", "test"]
    abnormal: Literal["0", "1"]
    mtear: Literal["0", "1"]
    acl: Literal["0", "1"]
    cartilage: Literal["0", "1"]


def read_store_manifest(store: Path | str) -> dict:
    """The STORE's manifest, schema-checked (plain dict, as written)."""
    store = Path(store)
    path = store / "manifest.json"
    if not path.is_file():
        hint = ("it is unfinished: re-run the same `mrrobust prepare` to finish it" if (store / "volumes").is_dir()
                else "make one with `mrrobust prepare` (or `mrrobust synth` + `prepare`)")
        raise MrRobustError(f"{store}: not a finished STORE (no manifest.json); {hint}")
    value = read_json_object(path, PREPARE_FIX)
    if value.get("format") != STORE_FORMAT or value.get("version") != STORE_VERSION:
        raise MrRobustError(f"{path}: format {value.get('format')!r} version {value.get('version')!r}, this "
                            f"mrrobust reads {STORE_FORMAT!r} version {STORE_VERSION}; re-run `mrrobust prepare`")
    validate(StoreManifest, value, path, PREPARE_FIX)
    return value


def _edited(path: Path) -> str:
    return f"{path}: edited since `mrrobust prepare` wrote it (its checksum differs from the manifest's); {PREPARE_FIX}"


def read_store_slices(store: Path | str, manifest: dict) -> list[dict]:
    """Rows of `slices.csv` (dicts of strings), checked: digest against the manifest's,
    schema per row, every volume's file header (shape `(S, crop, crop)` complex64, sized
    right), slice indices exactly 0..S-1 per volume, and the manifest's recorded shapes."""
    from mrrobust.data.store import SLICE_COLUMNS

    store = Path(store)
    path = store / "slices.csv"
    if not path.is_file():
        raise MrRobustError(f"{store}: no slices.csv; re-run `mrrobust prepare` to finish the STORE")
    rows = read_csv_rows(path, SLICE_COLUMNS, PREPARE_FIX)
    for line, row in enumerate(rows, start=2):
        validate(SliceRow, row, path, PREPARE_FIX, where=f" line {line}")
    checksums = manifest.get("checksums")
    slices: dict[str, list[int]] = {}
    for row in rows:
        slices.setdefault(row["volume"], []).append(int(row["slice"]))
    crop = manifest["crop"]
    for volume, indices in slices.items():
        file = store / "volumes" / f"{volume}.npy"
        recorded = (checksums or {}).get("volumes", {}).get(volume) if checksums else None
        if checksums and recorded is None:
            raise MrRobustError(f"{path}: volume {volume} is not in the manifest's checksums; {PREPARE_FIX}")
        shape = tuple(recorded["shape"]) if recorded else (None, crop, crop)
        check_npy(file, shape, VOLUME_DTYPE, PREPARE_FIX)
        count = npy_header(file, PREPARE_FIX)[0][0]
        if sorted(indices) != list(range(count)):
            raise MrRobustError(f"{path}: volume {volume} lists slices {_shown(sorted(indices))}, its file holds "
                                f"slices 0..{count - 1}; {PREPARE_FIX}")
    if checksums and file_digest(path, CHECKSUM) != checksums["slices_csv"]:  # a well-formed edit
        raise MrRobustError(_edited(path))
    return rows


def verify_store(store: Path | str) -> str:
    """The full pass over a STORE: the open-time checks plus every volume's data checksum.
    Returns a one-line summary; raises naming the first file that differs."""
    store = Path(store)
    manifest = read_store_manifest(store)
    rows = read_store_slices(store, manifest)
    checksums = manifest.get("checksums")
    if not checksums:
        raise MrRobustError(f"{store / 'manifest.json'}: no checksums (written by an older mrrobust); "
                            f"re-run the same `mrrobust prepare` to add them")
    for volume, recorded in sorted(checksums["volumes"].items()):
        file = store / "volumes" / f"{volume}.npy"
        check_npy(file, tuple(recorded["shape"]), VOLUME_DTYPE, PREPARE_FIX)
        if array_digest(np.load(file, mmap_mode="r", allow_pickle=False)) != recorded["sha256"]:
            raise MrRobustError(_edited(file))
    return f"{store}: STORE intact ({len(checksums['volumes'])} volumes, {len(rows)} slices, checksums match)"


# ---- RUN -----------------------------------------------------------------------------------


class ModelSection(Contract):
    arch: Literal["preact_resnet"]
    depth: Literal[18, 34]
    width: Annotated[int, Field(ge=1, le=MAX_WIDTH)]
    norm: Literal["batch", "group", "layer", "instance", "none"]
    groups: Annotated[int, Field(ge=1, le=MAX_WIDTH * 8)]
    pool: Annotated[int, Field(ge=1, le=64)]
    in_channels: Annotated[int, Field(ge=1, le=64)]
    labels: list[str]
    group_norm_impl: str

    @field_validator("labels")
    @classmethod
    def _labels(cls, value):
        if tuple(value) != LABELS:
            raise ValueError(f"labels must be {list(LABELS)}")
        return value


class TrainingSection(Contract):
    """What `train` records: every key typed when present (null only where train writes null);
    `models.save` callers may record less."""

    lr: Annotated[float, Field(gt=0)] = None
    weight_decay: Annotated[float, Field(ge=0)] = None
    batch_size: PositiveInt = None
    max_epochs: PositiveInt = None
    patience: PositiveInt = None
    seed: Annotated[int, Field(ge=0, lt=2**32)] = None
    weighted_sampler: bool = None
    augment: Optional[str] = None
    precision: Literal["32", "bf16-mixed", "16-mixed"] = None
    compile: bool = None
    accelerator: Literal["cpu", "gpu"] = None
    devices: PositiveInt = None
    num_nodes: PositiveInt = None
    workers: Count = None
    limit_train_batches: Optional[PositiveInt] = None
    limit_val_batches: Optional[PositiveInt] = None
    monitor: str = None


class StoreSection(Contract):
    path: str = None
    scale: Annotated[float, Field(gt=0)] = None
    crop: Annotated[int, Field(ge=1, le=MAX_CROP)] = None
    version: int = None
    train_slices: Count = None
    val_slices: Count = None


class RunConfig(Contract):
    """The MODEL contract (format, version, model) and, in a RUN written by `train`, the
    training and store sections (type-checked when present: `models.save` writes a model
    without them)."""

    format: Literal["mrrobust-run"]
    version: Literal[1]
    model: ModelSection
    training: Optional[TrainingSection] = None
    store: Optional[StoreSection] = None


def read_run_config(run: Path | str) -> dict:
    """A RUN's `config.json`, schema-checked (plain dict, as written)."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise MrRobustError(f"no config.json in {run}: not a mrrobust RUN folder (make one with `mrrobust train`)")
    value = read_json_object(path, TRAIN_FIX)
    if value.get("format") != RUN_FORMAT:
        raise MrRobustError(f"{path} is not a mrrobust RUN config (format is not {RUN_FORMAT!r}); point to a "
                            f"folder written by `mrrobust train`")
    if value.get("version") != RUN_VERSION:
        raise MrRobustError(f"{path} has RUN version {_shown(value.get('version'))}, this mrrobust reads version "
                            f"{RUN_VERSION}; retrain with this version")
    validate(RunConfig, value, path, TRAIN_FIX)
    return value


Probability = Optional[Annotated[float, Field(ge=0, le=1)]]


class LabelPoint(Contract):
    threshold: Probability
    auc: Probability


class OperatingPoints(Contract):
    split: str
    epoch: Count
    slices: Count
    labels: dict[str, LabelPoint]

    @field_validator("labels")
    @classmethod
    def _all_labels(cls, value):
        missing = [label for label in LABELS if label not in value]
        if missing:
            raise ValueError(f"no entry for label(s) {', '.join(missing)}")
        return value


def read_operating_points(run: Path | str) -> dict:
    """A RUN's `operating_points.json`, schema-checked; `thresholds` in LABELS order (None: undefined)."""
    path = Path(run) / "operating_points.json"
    value = read_json_object(path, TRAIN_FIX)
    validate(OperatingPoints, value, path, TRAIN_FIX)
    return value


def verify_run(run: Path | str) -> str:
    """The full pass over a RUN: config, operating points, weights matching the config."""
    from mrrobust.models import load

    run = Path(run)
    config = read_run_config(run)
    read_operating_points(run)
    model, _ = load(run)
    count = sum(p.numel() for p in model.parameters())
    return f"{run}: RUN intact ({config['model']['norm']} norm, depth {config['model']['depth']}, {count} parameters)"


# ---- RESULTS -------------------------------------------------------------------------------


BN_MODE = Literal["eval", "adapt", "prior", "tent"]


class RunRecord(Contract):
    name: Annotated[str, Field(pattern=r"^[^/\\]+$")]
    path: str
    norm: str
    seed: Optional[Count]
    batch_norm: bool
    bn_modes: Annotated[list[BN_MODE], Field(min_length=1)]
    weights: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    kind: Literal["run", "model"] = "run"
    labels: Optional[list[Literal["abnormal", "mtear", "acl", "cartilage"]]] = None


class ArmRecord(Contract):
    name: Annotated[str, Field(min_length=1)]
    runs: Annotated[list[str], Field(min_length=1)]


class ShardRecord(Contract):
    index: PositiveInt
    count: PositiveInt


class ResultsSettings(Contract):
    format: Literal["mrrobust-results"]
    version: Literal[2]
    runs: Annotated[list[RunRecord], Field(min_length=1)]
    arms: Annotated[list[ArmRecord], Field(min_length=1)]
    reference_arm: Optional[str]
    store: str
    split: Literal["train", "val", "test"]
    suite: str
    artifacts: list[Annotated[str, Field(pattern=r"^[\w.-]+$")]]
    severities: list[Annotated[int, Field(ge=1, le=5)]]
    bn_modes: Annotated[list[BN_MODE], Field(min_length=1)]
    bn_prior: Annotated[float, Field(ge=0)]
    threshold_from: Literal["clean-val", "corrupted-val"]
    seed: Count
    bootstrap: Count
    level: Annotated[float, Field(gt=0, lt=1)]
    batch_size: PositiveInt
    device: str
    precision: str
    compile: bool = False  # evaluate --compile (float rounding only; not compared between shards)
    shard: Optional[ShardRecord] = None


def _number_or_empty(value: str):
    return None if value == "" else value


class ResultRow(Contract):
    model_config = ConfigDict(strict=False, extra="allow", allow_inf_nan=True)
    run: str
    norm: str
    seed: Count
    bn_mode: BN_MODE
    artifact: str
    severity: Annotated[int, Field(ge=0, le=5)]
    label: Literal["abnormal", "mtear", "acl", "cartilage", "mean"]
    metric: str
    value: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]

    @field_validator("value", "ci_low", "ci_high", mode="before")
    @classmethod
    def _empty(cls, value):
        return _number_or_empty(value)


RESULT_COLUMNS = tuple(ResultRow.model_fields)


def read_results_settings(results: Path | str) -> dict:
    """A RESULTS folder's `evaluation.json`, schema-checked (plain dict, as written)."""
    path = Path(results) / "evaluation.json"
    if not path.is_file():
        raise MrRobustError(f"{results} is not a RESULTS folder (no evaluation.json); run `mrrobust evaluate` first")
    value = read_json_object(path, EVALUATE_FIX)
    validate(ResultsSettings, value, path, EVALUATE_FIX)
    return value


def read_results_csv(results: Path | str) -> list[dict]:
    """Rows of `results.csv` (dicts of strings), every row schema-checked."""
    path = Path(results) / "results.csv"
    rows = read_csv_rows(path, RESULT_COLUMNS, EVALUATE_FIX)
    for line, row in enumerate(rows, start=2):
        validate(ResultRow, row, path, EVALUATE_FIX, where=f" line {line}")
    return rows


def check_prediction(path: Path | str, rows: int) -> None:
    """Refuse a prediction file that is not float32 `(rows, 4)` (header and size only)."""
    check_npy(path, (rows, len(LABELS)), "float32", EVALUATE_FIX)


def read_prediction(path: Path | str, rows: int, present=None) -> np.ndarray:
    """A checked prediction file: float32 `(rows, 4)` probabilities in [0, 1] in the `present`
    label columns (default all four; a MODEL's absent labels are NaN)."""
    check_prediction(path, rows)
    array = np.load(path, allow_pickle=False)
    shown = array if present is None else array[:, np.asarray(present, dtype=bool)]
    if not (np.isfinite(shown).all() and shown.min(initial=0) >= 0 and shown.max(initial=0) <= 1):
        raise MrRobustError(f"{path}: holds values outside 0..1 or NaN; {EVALUATE_FIX}")
    return array


def _check_complete_results(path: Path, rows: list[dict], cells: set[tuple]) -> None:
    """Refuse a results.csv cut short: it must end with a newline (no row cut mid-value) and hold
    every (run, bn_mode, artifact, severity) of `cells` with its metrics x labels rows, no other."""
    from mrrobust.arm_statistics import COLUMN_LABELS, RUN_METRICS

    if not path.read_bytes().endswith(b"\n"):
        raise MrRobustError(f"{path}: ends mid-row (truncated); {EVALUATE_FIX}")
    per_cell = len(RUN_METRICS) * len(COLUMN_LABELS)
    counts: dict[tuple, int] = {}
    for row in rows:
        key = (row["run"], row["bn_mode"], row["artifact"], row["severity"])
        counts[key] = counts.get(key, 0) + 1
    wrong = sorted(cell for cell in cells | set(counts) if counts.get(cell, 0) != per_cell or cell not in cells)
    if wrong:
        run, mode, artifact, severity = wrong[0]
        raise MrRobustError(f"{path}: {len(wrong)} cell(s) without exactly their {per_cell} rows (first: run {run}, "
                            f"{mode}, {artifact}-{severity}: {counts.get(wrong[0], 0)} rows); truncated or edited; "
                            f"{EVALUATE_FIX}")


def verify_results(results: Path | str) -> str:
    """The full pass over a RESULTS folder: settings, slices.csv, every prediction file of
    the grid the settings name, results.csv."""
    results = Path(results)
    settings = read_results_settings(results)
    slices = read_csv_rows(results / "slices.csv", ("slice_id", "volume", "slice", *LABELS), EVALUATE_FIX)
    cells = [("clean", 0)] + [(a, s) for a in settings["artifacts"] for s in settings["severities"]]
    checked = 0
    for run in settings["runs"]:
        present = None if run.get("labels") is None else [label in run["labels"] for label in LABELS]
        for mode in run["bn_modes"]:
            for artifact, severity in cells:
                read_prediction(results / "predictions" / run["name"] / mode / f"{artifact}-{severity}.npy",
                                len(slices), present)
                checked += 1
    rows = read_results_csv(results)
    _check_complete_results(results / "results.csv", rows, {(run["name"], mode, artifact, str(severity))
                                                            for run in settings["runs"] for mode in run["bn_modes"]
                                                            for artifact, severity in cells})
    return f"{results}: RESULTS intact ({checked} prediction files of {len(slices)} slices, {len(rows)} result rows)"


def verify(path: Path | str) -> str:
    """`verify_store`, `verify_run` or `verify_results`, by what `path` holds."""
    path = Path(path)
    for marker, check in (("manifest.json", verify_store), ("config.json", verify_run),
                          ("evaluation.json", verify_results)):
        if (path / marker).is_file():
            return check(path)
    if (path / "volumes").is_dir():
        return verify_store(path)  # says: unfinished
    raise MrRobustError(f"{path}: neither a STORE (manifest.json), a RUN (config.json) nor a RESULTS folder "
                        f"(evaluation.json); pass one of those")


# ---- fastMRI HDF5 --------------------------------------------------------------------------


def check_kspace(path: Path, hf, fix: str, workers: int = 1):
    """The `kspace` dataset of an open fastMRI file, checked from its declaration alone
    (nothing is read): a dataset, complex, `(S, H, W)` or `(S, C, H, W)`, within the sane
    bounds, non-empty, and fitting the available memory (shared by `workers`)."""
    import h5py

    if "kspace" not in hf:
        raise MrRobustError(f"{path}: no 'kspace' dataset (keys: {_shown(sorted(hf.keys()))}); not a fastMRI volume, remove it")
    node = hf.get("kspace", getlink=False)
    if not isinstance(node, h5py.Dataset):
        raise MrRobustError(f"{path}: 'kspace' is an HDF5 {type(node).__name__.lower()}, expected a dataset; {fix}")
    shape, dtype = tuple(node.shape or ()), node.dtype
    if dtype.kind != "c" or len(shape) not in (3, 4):
        raise MrRobustError(f"{path}: 'kspace' must be complex (slices, H, W) or (slices, coils, H, W), "
                            f"got {dtype} shape {shape}; {fix}")
    if 0 in shape:
        raise MrRobustError(f"{path}: 'kspace' {shape} holds no samples (0 slices, coils or lines); {fix}")
    bounds = (MAX_SLICES, MAX_MATRIX, MAX_MATRIX) if len(shape) == 3 else (MAX_SLICES, MAX_COILS, MAX_MATRIX, MAX_MATRIX)
    if any(n > bound for n, bound in zip(shape, bounds)):
        raise MrRobustError(f"{path}: 'kspace' declares shape {shape}, beyond any MR volume (at most "
                            f"{bounds}); skipped unread: {fix}")
    samples = math.prod(shape)
    check_fits(samples * 8 * 2, f"{path}: 'kspace' {shape}", f"skipped unread: {fix}", share=workers)
    return node


def read_header(hf) -> bytes | None:
    """The `ismrmrd_header` bytes when it is a small scalar or 1-D dataset, else None."""
    import h5py

    node = hf.get("ismrmrd_header")
    if not isinstance(node, h5py.Dataset) or node.ndim > 1 or node.id.get_storage_size() > MAX_HEADER_BYTES:
        return None
    value = node[()]
    if isinstance(value, np.ndarray):
        value = value.tobytes()
    return value if isinstance(value, (bytes, str)) else None


def check_recon_size(size, kspace_shape: tuple) -> tuple[int, int] | None:
    """An ISMRMRD recon size `(h, w)` when both are positive and fit the k-space matrix, else None."""
    if not size or len(size) != 2:
        return None
    h, w = size
    return (h, w) if 0 < h <= kspace_shape[-2] and 0 < w <= kspace_shape[-1] else None
