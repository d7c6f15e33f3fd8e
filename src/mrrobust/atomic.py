"""Atomic file writes: a reader sees the old file or the whole new one, never a half.

Every output of the project (STORE, RUN, synth volumes, figures) is written through
`atomic_write`: the writer fills a hidden temporary file beside the target, which is
then renamed onto it. Temporary names end in `TEMP_SUFFIX`, so a resumed job can sweep
what a killed one left behind.
"""

from __future__ import annotations

import os
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def temp_name(path: Path) -> Path:
    """The hidden temporary name beside `path` used while it is written (per process)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write) -> None:
    """`write(temp_path)`, then rename onto `path` with the usual file mode (0644 under
    umask 022; some writers create 0600 files); the temporary file never outlives a failure."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
