"""Read files into the page cache ahead of the workers that process them.

`prepare`'s workers alternate between waiting for the disk and computing; on a cold
data set (the usual case: fastMRI knee is far larger than memory) a background thread
that reads the next few files keeps the disk busy while the workers compute, so they
find their input in memory. The kernel's hints (`posix_fadvise(WILLNEED)`,
`readahead(2)`, `madvise(WILLNEED)`) did not populate the cache on the virtual disk we
measured; a read-only `mmap` with `MAP_POPULATE` does, for about half the CPU time of
reading the bytes (which is the fallback where `MAP_POPULATE` does not exist).

`prefetch(items, ahead)` is the same idea one level up, for `evaluate`: a background thread
produces the next batches (read from the STORE, copied to the GPU) while the caller computes
on the current one.
"""

from __future__ import annotations

import mmap
import queue
import threading
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

CHUNK_BYTES = 8 << 20


class ReadAhead:
    """Read `files` in order, at most `ahead` files beyond those reported `done()`.

    Use as a context manager around the loop that consumes the results; unreadable
    files are passed over silently (the worker that opens them reports the error).
    """

    def __init__(self, files: list[str | Path], ahead: int):
        self._files = list(files)
        self._slots = threading.Semaphore(max(ahead, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mrrobust-readahead", daemon=True)

    def __enter__(self) -> "ReadAhead":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._slots.release()  # wake the thread if it waits for a slot
        self._thread.join()

    def done(self) -> None:
        """One file was processed: the thread may read one more."""
        self._slots.release()

    def _run(self) -> None:
        for path in self._files:
            self._slots.acquire()
            if self._stop.is_set():
                return
            try:
                load(path)
            except (OSError, ValueError):  # unreadable or empty: the worker reports it
                continue


def load(path: str | Path) -> None:
    """Bring the file's bytes into the page cache (kernel-side where the platform allows)."""
    with open(path, "rb", buffering=0) as fh:
        if hasattr(mmap, "MAP_POPULATE"):
            mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ).close()
            return
        buffer = bytearray(CHUNK_BYTES)
        while fh.readinto(buffer):
            pass


_END = object()


def prefetch(items: Iterable[T], ahead: int = 1) -> Iterator[T]:
    """`items` in order, produced by a background thread at most `ahead` items beyond the one
    the caller holds (memory: `ahead + 2` items at most). An exception in the producer is
    raised here, at the item it failed on; closing the generator early stops the thread."""
    slots: queue.Queue = queue.Queue(maxsize=max(ahead, 1))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((_END, None))
        except BaseException as err:  # handed to the consumer
            slots.put((_END, err))

    thread = threading.Thread(target=produce, name="mrrobust-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # drain, so a producer blocked on a full queue sees stop
            try:
                slots.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
