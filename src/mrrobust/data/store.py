"""The STORE: `prepare`'s output folder, its atomic writers, and the torch Dataset over it.

Layout (STORE_VERSION 1):
  manifest.json        format, version, source, challenge, crop, scale, seed, fractions,
                       counts, skipped [{file, reason}], unseen_labels, ... (written LAST:
                       a STORE without it is unfinished)
  slices.csv           one row per slice, columns `SLICE_COLUMNS`; `labels` = raw
                       fastMRI+ strings joined by `|`
  volumes/<vol>.npy    complex64 `(S, crop, crop)` unscaled images (memory-mapped on read)
  volumes/<vol>.json   the per-volume record `prepare` resumes from

Every file is written to a temporary name in the same folder and then
`os.replace`d, so a killed writer never leaves a half-written file under its
final name.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler, default_collate, get_worker_info

from mrrobust.atomic import TEMP_SUFFIX, atomic_write
from mrrobust.contracts import STORE_FORMAT, STORE_VERSION, read_store_manifest, read_store_slices
from mrrobust.data.annotations import LABELS
from mrrobust.errors import MrRobustError

MANIFEST = "manifest.json"
SLICES = "slices.csv"
VOLUMES = "volumes"
SPLITS = ("train", "val", "test")
SLICE_COLUMNS = ("volume", "slice", "split", *LABELS, "labels", "patient_id", "acquisition")
LABEL_SEPARATOR = "|"
_OPEN_VOLUMES = 64  # memory maps kept open per process (LRU)


# ---- atomic writers ----------------------------------------------------------------------


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (`mrrobust.atomic`)."""
    atomic_write(path, lambda temp: temp.write_bytes(data))


def write_json_atomic(path: Path, value) -> None:
    """`value` as indented, key-sorted JSON (stable bytes for equal values)."""
    write_bytes_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """`np.save` `array` to `path` atomically (no pickle)."""

    def write(temp: Path) -> None:
        with temp.open("wb") as fh:
            np.save(fh, array, allow_pickle=False)

    atomic_write(path, write)


def slices_csv_bytes(rows: list[dict]) -> bytes:
    """`rows` (dicts with `SLICE_COLUMNS`) as the bytes of `slices.csv`."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SLICE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def write_slices_csv(path: Path, rows: list[dict]) -> None:
    """`rows` (dicts with `SLICE_COLUMNS`) -> `slices.csv`, atomically."""
    write_bytes_atomic(path, slices_csv_bytes(rows))


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def remove_temp_files(folder: Path) -> None:
    """Delete leftovers of killed writers (`.<name>.<pid>.tmp`) in `folder`."""
    for temp in folder.glob(f".*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)


# ---- readers -----------------------------------------------------------------------------


def read_manifest(store: Path | str) -> dict:
    """The STORE's `manifest.json`, schema-checked (`contracts.read_store_manifest`)."""
    return read_store_manifest(store)


def read_slices(store: Path | str, manifest: dict | None = None) -> list[dict]:
    """Rows of `slices.csv` as dicts of strings (column names `SLICE_COLUMNS`), checked
    against the manifest and the volume file headers (`contracts.read_store_slices`)."""
    return read_store_slices(store, read_manifest(store) if manifest is None else manifest)


def slice_seed(slice_id: str, seed: int = 0) -> int:
    """A stable non-negative int64 for `slice_id` and `seed` (BLAKE2b, not Python's salted hash)."""
    digest = hashlib.blake2b(f"{int(seed)}:{slice_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class SliceDataset(Dataset):
    """Slices of a STORE: `ds[i] -> (image, target, slice_id)`.

    kind="magnitude": image float32 `(1, H, W)` = |x| / scale; kind="complex": complex64
    `(H, W)` = x / scale. target float32 `(4,)` in `LABELS` order; slice_id `"file1000001:14"`.
    Volumes are memory-mapped lazily in the process that reads them (safe with DataLoader
    workers) and kept in a small per-process LRU of open maps.
    """

    def __init__(self, store: Path | str, split: str | None = None, kind: str = "magnitude"):
        if split is not None and split not in SPLITS:
            raise MrRobustError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} (or none for all)")
        if kind not in ("magnitude", "complex"):
            raise MrRobustError(f"unknown kind {kind!r}; use 'magnitude' or 'complex'")
        self.store = Path(store)
        self.manifest = read_manifest(self.store)
        self.scale = float(self.manifest["scale"])
        self.kind = kind
        self.split = split
        self.rows = [row for row in read_slices(self.store, self.manifest) if split is None or row["split"] == split]
        self.targets = np.array([[int(row[label]) for label in LABELS] for row in self.rows], np.float32).reshape(-1, len(LABELS))
        self.slice_ids = [f"{row['volume']}:{row['slice']}" for row in self.rows]
        self._volume_names = sorted({row["volume"] for row in self.rows})
        index = {name: i for i, name in enumerate(self._volume_names)}
        self._volume_of = np.array([index[row["volume"]] for row in self.rows], np.int64)
        self._slice_of = np.array([int(row["slice"]) for row in self.rows], np.int64)
        self._inverse_scale = np.float32(1.0 / self.scale)
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._pid = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"], state["_pid"] = OrderedDict(), None
        return state

    def _volume(self, i: int) -> np.ndarray:
        if self._pid != os.getpid():  # first use in this process (e.g. a forked worker)
            self._maps, self._pid = OrderedDict(), os.getpid()
        volume = self._maps.get(i)
        if volume is None:
            path = self.store / VOLUMES / f"{self._volume_names[i]}.npy"
            try:
                volume = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as err:
                raise MrRobustError(f"{path}: unreadable volume ({err}); re-run `mrrobust prepare`") from None
            self._maps[i] = volume
            if len(self._maps) > _OPEN_VOLUMES:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(i)
        return volume

    def __getitem__(self, i: int):
        image = self._volume(int(self._volume_of[i]))[self._slice_of[i]]
        if self.kind == "magnitude":
            data = np.abs(image)
            data *= self._inverse_scale
            tensor = torch.from_numpy(data).unsqueeze(0)
        else:
            tensor = torch.from_numpy(image * self._inverse_scale)
        return tensor, torch.from_numpy(self.targets[i]), self.slice_ids[i]

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Slices `start:stop` of the split as one array, each equal to `self[i]`'s image:
        complex64 `(n, H, W)` = x / scale (kind "complex") or float32 `(n, H, W)` = |x| / scale
        ("magnitude"). Written into `out` when given (e.g. a pinned buffer of that shape).

        Each run of consecutive slices of one volume is one positioned read of its `.npy`
        file, with no memory map left open: memory stays bounded by the `n` slices read,
        whatever the size of the split (what `evaluate` streams)."""
        rows = np.arange(start, stop)
        if out is None:
            kind = np.complex64 if self.kind == "complex" else np.float32
            out = np.empty((len(rows), *self.image_shape), kind)
        # complex: read straight into `out` and scale in place; magnitude: via a complex buffer
        raw = out if self.kind == "complex" else np.empty((len(rows), *self.image_shape), np.complex64)
        begin = 0
        while begin < len(rows):  # one read per run of consecutive slices of one volume
            volume, first = self._volume_of[rows[begin]], self._slice_of[rows[begin]]
            end = begin + 1
            while (end < len(rows) and self._volume_of[rows[end]] == volume
                   and self._slice_of[rows[end]] == first + (end - begin)):
                end += 1
            self._read_slices(int(volume), int(first), raw[begin:end])
            begin = end
        if self.kind == "magnitude":
            np.abs(raw, out=out)
            out *= self._inverse_scale
        else:
            out *= self._inverse_scale  # the same ufunc as __getitem__
        return out

    @property
    def image_shape(self) -> tuple[int, int]:
        """`(H, W)` of every slice: the STORE's crop."""
        crop = int(self.manifest["crop"])
        return crop, crop

    def _read_slices(self, volume: int, first: int, into: np.ndarray) -> None:
        """Slices `first:first + len(into)` of volume `volume` (complex64) into `into`."""
        path = self.store / VOLUMES / f"{self._volume_names[volume]}.npy"
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(fh)
                if dtype != np.complex64 or fortran or tuple(shape[1:]) != into.shape[1:] \
                        or first + len(into) > shape[0]:
                    raise ValueError(f"holds {dtype} {shape}, not complex64 slices of {into.shape[1:]}")
                fh.seek(fh.tell() + first * into[0].nbytes)
                if fh.readinto(memoryview(into).cast("B")) != into.nbytes:
                    raise ValueError("is shorter than its header says")
        except (OSError, ValueError) as err:
            raise MrRobustError(f"{path}: unreadable volume ({err}); re-run `mrrobust prepare`") from None


def collate_slices(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """DataLoader `collate_fn` for `SliceDataset` items -> (images `(B, ...)`, targets `(B, 4)`, ids).

    In the main process it stacks with numpy: torch's multi-threaded stack can be ~100x
    slower when the cores are busy (measured on a loaded 2-core machine). In a DataLoader
    worker it defers to `default_collate`, which stacks straight into shared memory."""
    if get_worker_info() is not None:
        return default_collate(batch)
    images, targets, ids = zip(*batch)
    return (torch.from_numpy(np.stack([image.numpy() for image in images])),
            torch.from_numpy(np.stack([target.numpy() for target in targets])), list(ids))


def positive_counts(targets: np.ndarray) -> np.ndarray:
    """Number of positive labels per slice, int64 `(N,)`, from targets `(N, 4)`."""
    return np.asarray(targets).sum(axis=1).round().astype(np.int64)


def sampler_weights(targets: np.ndarray) -> np.ndarray:
    """float64 `(N,)`: 1 / (how many slices share this slice's number of positive labels)."""
    counts = positive_counts(targets)
    frequency = np.bincount(counts, minlength=len(LABELS) + 1)
    return 1.0 / frequency[counts]


def weighted_sampler(dataset, generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """The study's sampler: weights inverse to the frequency of the NUMBER of positive labels
    on a slice (0..4); draws `len(dataset)` indices with replacement. `dataset` is a
    `SliceDataset` (or anything with `.targets` `(N, 4)`)."""
    if len(dataset.targets) == 0:
        split = getattr(dataset, "split", None)
        raise MrRobustError(f"the {split or 'selected'} split has no slices to sample; prepare more volumes or change --fractions")
    weights = torch.from_numpy(sampler_weights(dataset.targets))
    return WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)
