"""`mrrobust.locks`: one writer per output folder; a stale lock of a killed owner is taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mrrobust.errors import MrRobustError
from mrrobust.locks import lock_owner, lock_path, output_lock

HOLD = ("import sys, time\nfrom mrrobust.locks import output_lock\n"
        "with output_lock(sys.argv[1], 'holder'):\n    print('held', flush=True)\n    time.sleep(120)\n")


@pytest.fixture
def holder(tmp_path):
    """A separate process holding the lock of tmp_path/out (killed at the end)."""
    folder = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert process.stdout.readline().strip() == "held"
    yield folder, process
    process.kill()
    process.wait()


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    from mrrobust.cli import main

    monkeypatch.setattr(sys, "argv", ["mrrobust", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


def test_a_live_owner_refuses_a_second_writer_naming_it(holder):
    folder, process = holder
    owner = lock_owner(folder)
    assert owner["pid"] == process.pid and owner["host"] == socket.gethostname() and owner["command"] == "holder"
    with pytest.raises(MrRobustError, match=rf"being written by `mrrobust holder` \(pid {process.pid} on "):
        with output_lock(folder, "second"):
            pass
    assert lock_owner(folder)["pid"] == process.pid  # the refused one changed nothing
    assert not folder.exists()  # the lock lives beside the folder, never inside


def test_a_killed_owner_leaves_a_stale_lock_that_is_taken_over(holder):
    folder, process = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert lock_owner(folder)["pid"] == process.pid  # the file is still there, its owner dead
    with output_lock(folder, "next") as previous:
        assert previous["pid"] == process.pid
        assert lock_owner(folder)["pid"] == os.getpid()
    assert not lock_path(folder).exists()  # released: removed


def test_an_unreadable_stale_lock_is_taken_over(tmp_path):
    lock_path(tmp_path / "out").write_bytes(b"\x00garbage")
    with output_lock(tmp_path / "out", "next") as previous:
        assert "unreadable" in previous


@pytest.mark.parametrize("command", [
    ["prepare", "--fastmri", "nowhere", "--out", "{out}"],
    ["train", "--data", "nowhere", "--out", "{out}"],
    ["evaluate", "nowhere", "--data", "nowhere", "--out", "{out}"],
    ["benchmark", "--data", "nowhere", "--out", "{out}"],
])
def test_every_writing_command_is_refused_at_once_while_another_writes(holder, monkeypatch, capsys, command):
    folder, process = holder
    code, err = run_cli(monkeypatch, capsys, *[part.format(out=folder) for part in command])
    assert code == 2 and err.count("\n") == 1
    assert f"is being written by `mrrobust holder` (pid {process.pid}" in err
    assert not folder.exists()


def test_lock_file_records_owner_as_json(tmp_path):
    with output_lock(tmp_path / "out", "train"):
        record = json.loads(lock_path(tmp_path / "out").read_text())
    assert record["pid"] == os.getpid() and record["command"] == "train" and "started" in record
