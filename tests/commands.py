"""`mrrobust` commands in tests: in this process (`call_cli`: the same `mrrobust.cli.main` the
console script runs) or, where a test kills a command, as a real process (`cli_command`,
`kill_when`, `kill_then_resume`). A new process pays the torch import, seconds each time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import mrrobust


def call_cli(*args) -> tuple[int, str, str]:
    """`mrrobust ARGS` through `mrrobust.cli.main` in this process: (exit code, stdout, stderr)."""
    from mrrobust.cli import main

    argv, out, err = sys.argv, StringIO(), StringIO()
    sys.argv = ["mrrobust", *map(str, args)]
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


@contextmanager
def torch_threads(threads: int):
    """Run the block with `threads` torch intra-op threads (a CLI process under OMP_NUM_THREADS=1
    has one: the same bits), then restore the number before."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cli_command(*args) -> list[str]:
    """`python -m mrrobust.cli ARGS` with this interpreter."""
    return [sys.executable, "-m", "mrrobust.cli", *map(str, args)]


def cli_env() -> dict[str, str]:
    """The environment of a CLI process: this checkout of mrrobust first, one torch thread."""
    return {**os.environ, "PYTHONPATH": str(Path(mrrobust.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}


def kill_when(command: list[str], folder: Path, pattern: str, seconds: float = 240) -> None:
    """Start `command`, SIGKILL it as soon as a file matching `pattern` exists under `folder`;
    fails when the command ends (or `seconds` pass) before that file appears."""
    process = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and process.poll() is None and not list(folder.glob(pattern)):
            time.sleep(0.01)
        assert process.poll() is None, f"{command[3]} ended before {pattern} appeared under {folder}"
        assert list(folder.glob(pattern)), f"no {pattern} under {folder} after {seconds} s"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def kill_then_resume(command: list[str], folder: Path, patterns: tuple[str, ...]) -> None:
    """Kill `command` (writing `folder`) once per pattern, when that pattern's first file
    exists, then run it to the end; fails unless that last run exits 0."""
    for pattern in patterns:
        kill_when(command, folder, pattern)
    done = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
