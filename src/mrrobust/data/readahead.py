"""Read files into the page cache ahead of the workers that process them.

`prepare`'s workers alternate between waiting for the disk and computing; on a cold
data set (the usual case: fastMRI knee is far larger than memory) a background thread
that reads the next few files keeps the disk busy while the workers compute, so they
find their input in memory. The kernel's hints (`posix_fadvise(WILLNEED)`,
`readahead(2)`, `madvise(WILLNEED)`) did not populate the cache on the virtual disk we
measured; a read-only `mmap` with `MAP_POPULATE` does, for about half the CPU time of
reading the bytes (which is the fallback where `MAP_POPULATE` does not exist).
"""

from __future__ import annotations

import mmap
import threading
from pathlib import Path

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
