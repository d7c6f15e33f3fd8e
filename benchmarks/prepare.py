"""Benchmark `prepare` and the STORE Dataset; prints one JSON object.

- prepare throughput in MB/s of input (.h5 bytes of the reviewed volumes) beside a raw
  h5py read of the same files' full `kspace`, one volume at a time, as prepare reads it;
  "cold" runs start with the files evicted from the page cache (fsync, then
  POSIX_FADV_DONTNEED), "warm" ones read them from memory (raw warm: best of 3). A
  one-volume-set warm-up prepare runs first, so one-time imports are not timed;
- SliceDataset slices/s: `__getitem__` alone, and through a DataLoader with 0 and 2
  workers (batch 32, shuffled, `collate_slices`; also torch's default collate, 0 workers).

It synthesizes its own data with `synth` in a temporary folder (goal: prepare at least
half the raw-read speed; Dataset above 2,000 slices/s at 320x320).

    python benchmarks/prepare.py [--volumes 40] [--slices 16] [--crop 320] [--workers 2] [--threads 0] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from mrrobust.data.annotations import load_annotations
from mrrobust.data.prepare import prepare
from mrrobust.data.store import SliceDataset, collate_slices
from mrrobust.data.synth import synth


def evict(files: list[Path]) -> None:
    """Drop the files from the page cache so the next read comes from disk: fsync first (dirty
    pages cannot be dropped), then POSIX_FADV_DONTNEED."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read_seconds(files: list[Path]) -> float:
    """Read every file's full `kspace` with h5py, one volume at a time, as `prepare` reads it
    (`read_direct` into a complex64 array, the fastest plain h5py read)."""
    start = time.perf_counter()
    for path in files:
        with h5py.File(path, "r") as hf:
            dataset = hf["kspace"]
            dataset.read_direct(np.empty(dataset.shape, np.complex64))
    return time.perf_counter() - start


def getitem_rate(store: Path, min_seconds: float = 2.0) -> float:
    """Slices per second of `SliceDataset.__getitem__` alone (one process, maps warm)."""
    dataset = SliceDataset(store)
    for i in range(len(dataset)):
        dataset[i]
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        for i in range(len(dataset)):
            dataset[i]
        count += len(dataset)
    return count / (time.perf_counter() - start)


def dataset_rate(store: Path, workers: int, device: str, collate=collate_slices, min_seconds: float = 2.0) -> float:
    """Slices per second through a DataLoader (magnitude images moved to `device`)."""
    loader = DataLoader(SliceDataset(store), batch_size=32, shuffle=True, num_workers=workers, collate_fn=collate,
                        persistent_workers=workers > 0, pin_memory=device.startswith("cuda"), generator=torch.Generator().manual_seed(0))
    for image, _, _ in loader:  # warm-up epoch: worker start, first maps
        image.to(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        for image, _, _ in loader:
            image.to(device, non_blocking=True)
            count += image.shape[0]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=40, help="synth volumes (about 43 MB each at crop 320); enough that worker start-up is a small share")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--crop", type=int, default=320)
    parser.add_argument("--workers", type=int, default=2, help="prepare workers for the parallel run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in this process (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth(tmp / "synth", volumes=args.volumes, slices=args.slices, crop=args.crop, seed=0)
        root, annotations = tmp / "synth" / "knee", tmp / "synth" / "annotations"
        reviewed = load_annotations(annotations).reviewed  # the files prepare reads
        files = sorted(p for p in root.glob("*/*.h5") if p.stem in reviewed)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        evict(files)
        raw_cold = raw_read_seconds(files)
        raw = min(raw_read_seconds(files) for _ in range(3))
        # one-time costs (imports, FFT set-up) out of the way, as in a long real run
        prepare(root, tmp / "warmup", annotations=annotations, crop=args.crop, progress=False)
        timings = {}
        for workers in sorted({1, args.workers}):
            for cache in ("cold", "warm"):
                if cache == "cold":
                    evict(files)
                start = time.perf_counter()
                summary = prepare(root, tmp / f"store{workers}{cache}", annotations=annotations, crop=args.crop,
                                  workers=workers, progress=False)
                timings[cache, workers] = time.perf_counter() - start
        store = tmp / f"store{args.workers}warm"
        result = {
            "machine": f"{platform.machine()} {os.cpu_count()} cpu, torch {torch.__version__}, device {args.device}",
            "torch_threads": torch.get_num_threads(),
            "volumes": args.volumes,
            "prepared_volumes": summary["counts"]["volumes"],
            "slices": summary["counts"]["slices"],
            "crop": args.crop,
            "input_MB": round(megabytes, 1),
            "raw_read_MB_per_s_cold": round(megabytes / raw_cold, 1),
            "raw_read_MB_per_s_warm": round(megabytes / raw, 1),
            **{f"prepare_MB_per_s_{c}_workers{w}": round(megabytes / t, 1) for (c, w), t in timings.items()},
            **{f"prepare_vs_raw_{c}_workers{w}": round((raw_cold if c == "cold" else raw) / t, 3) for (c, w), t in timings.items()},
            "dataset_getitem_slices_per_s": round(getitem_rate(store)),
            "dataset_slices_per_s_workers0": round(dataset_rate(store, 0, args.device)),
            "dataset_slices_per_s_workers2": round(dataset_rate(store, 2, args.device)),
            "dataset_slices_per_s_workers0_default_collate": round(dataset_rate(store, 0, args.device, default_collate)),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
