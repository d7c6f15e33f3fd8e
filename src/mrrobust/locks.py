"""Advisory locks: one writer per output folder at a time.

`output_lock(folder, command)` holds `.<folder name>.lock` beside the folder (so the
folder itself stays exactly what the command writes, and a folder that does not exist yet
can be locked; parent folders it had to create are removed again when still empty). The lock file holds the owner's pid, host, command and start time (JSON);
the exclusion itself is an `fcntl.flock` on it, which the kernel drops when the owner dies,
so a lock left by a SIGKILLed process is stale by construction and the next command takes it
over (there is no window in which two takers both succeed: the kernel arbitrates). After
taking the flock the taker checks that the path still names the file it locked (a
releasing owner unlinks it), and retries otherwise.

A second writer is refused at once with one line naming the owner.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from mrrobust.errors import MrRobustError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the commands run unlocked
    fcntl = None


def lock_path(folder: Path | str) -> Path:
    """The lock file of output `folder`: `.<name>.lock` in its parent."""
    folder = Path(os.path.abspath(folder))
    return folder.with_name(f".{folder.name}.lock")


def lock_owner(folder: Path | str) -> dict | None:
    """The recorded owner of `folder`'s lock ({pid, host, command, started}), None when
    there is no lock file or it is unreadable. (Recorded is not live: see `output_lock`.)"""
    try:
        value = json.loads(lock_path(folder).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _describe(owner: dict | None) -> str:
    if not owner:
        return "another process"
    return (f"`mrrobust {owner.get('command', '?')}` (pid {owner.get('pid', '?')} on "
            f"{owner.get('host', '?')}, since {owner.get('started', '?')})")


@contextlib.contextmanager
def output_lock(folder: Path | str, command: str):
    """Hold the lock of output `folder` for the body; MrRobustError at once when another
    live process holds it. Yields the previous owner's record when a stale lock (its
    owner died) was taken over, else None."""
    if fcntl is None:
        yield None
        return
    path = lock_path(folder)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()][::-1]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.close(fd)
    except OSError:  # an unwritable place: nobody can write there, the command says why
        _remove_empty(created)
        yield None
        return
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise MrRobustError(f"cannot create the lock {path} ({err.strerror or err}); choose a writable --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            _remove_empty(created)
            raise MrRobustError(f"{folder} is being written by {_describe(lock_owner(folder))}; wait for it "
                                f"to finish (or stop it) and run this command again") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the owner released and unlinked it between our open and flock: retry
    previous = None
    try:
        with os.fdopen(os.dup(fd), "r+") as fh:
            text = fh.read()
            try:
                previous = json.loads(text) if text.strip() else None
            except ValueError:
                previous = {"unreadable": text[:80]}
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
            fh.flush()
        yield previous
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before the flock goes: a waiting taker then sees another inode
        os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the parent folders the lock created, deepest first, while they are empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return
