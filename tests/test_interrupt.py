"""Ctrl-C in every command: one line, exit code 130, and the same command resumes."""

import filecmp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from commands import call_cli

LINE = "interrupted; run the same command to resume"
SRC = str(Path(__file__).parents[1] / "src")
TRAIN = ["--width", "4", "--groups", "4", "--batch-size", "16", "--workers", "0", "--lr", "1e-3",
         "--accelerator", "cpu", "--quiet"]


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    from mrrobust.cli import main

    monkeypatch.setattr(sys, "argv", ["mrrobust", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


def interrupt_on_call(monkeypatch, owner, name: str, call: int) -> None:
    """Make `owner.name` raise KeyboardInterrupt (as Ctrl-C does) on its `call`-th call."""
    original, calls = getattr(owner, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


def same_tree(a: Path, b: Path) -> bool:
    compared = filecmp.dircmp(a, b)
    return (not compared.left_only and not compared.right_only and not compared.diff_files
            and not compared.funny_files and all(same_tree(a / d, b / d) for d in compared.common_dirs)
            and all(filecmp.cmp(a / f, b / f, shallow=False) for f in compared.common_files))


def test_prepare_interrupted_is_one_line_and_resumes_to_the_same_store(synth_root, tiny_store, tmp_path,
                                                                      monkeypatch, capsys):
    from mrrobust.data import prepare

    out = tmp_path / "store"
    args = ["prepare", "--fastmri", synth_root / "knee", "--annotations", synth_root / "annotations",
            "--out", out, "--crop", "64", "--no-progress"]
    interrupt_on_call(monkeypatch, prepare, "prepare_volume", 5)
    code, err = run_cli(monkeypatch, capsys, *args)
    assert (code, err) == (130, f"mrrobust prepare: {LINE}\n")
    assert not (out / "manifest.json").exists() and len(list((out / "volumes").glob("*.npy"))) == 4
    monkeypatch.undo()
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert same_tree(out, tiny_store)  # byte for byte the uninterrupted STORE


def test_train_interrupted_under_lightning_exits_130_and_resumes(tiny_store, tmp_path, monkeypatch, capsys):
    from mrrobust.training import Classifier

    out = tmp_path / "run"
    args = ["train", "--data", tiny_store, "--out", out, "--max-epochs", "2", *TRAIN]
    original = Classifier.training_step

    def step(self, batch, index):
        if self.current_epoch == 1:  # after epoch 0 and its checkpoint
            raise KeyboardInterrupt
        return original(self, batch, index)

    monkeypatch.setattr(Classifier, "training_step", step)
    code, err = run_cli(monkeypatch, capsys, *args)
    assert (code, err) == (130, f"mrrobust train: {LINE} with --resume\n")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Lightning's SIG_IGN undone
    assert (out / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.undo()
    code, err = run_cli(monkeypatch, capsys, *args, "--resume")
    assert code == 0, err
    assert len((out / "metrics.csv").read_text().splitlines()) == 3  # header + epochs 0 and 1


def test_benchmark_interrupted_while_training(tiny_store, tmp_path, monkeypatch, capsys):
    from mrrobust.training import Classifier

    interrupt_on_call(monkeypatch, Classifier, "training_step", 2)
    code, err = run_cli(monkeypatch, capsys, "benchmark", "--data", tiny_store, "--out", tmp_path / "b",
                        "--norms", "layer", "--max-epochs", "1", *TRAIN, "--artifacts", "noise",
                        "--severities", "1", "--bootstrap", "20", "--device", "cpu")
    assert (code, err) == (130, f"mrrobust benchmark: {LINE}\n")


def wait_for(path_glob: str, folder: Path, process: subprocess.Popen, seconds: float = 120) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end and process.poll() is None:
        if list(folder.glob(path_glob)):
            return True
        time.sleep(0.02)
    return False


def test_real_sigint_in_train_and_evaluate(tiny_store, tmp_path):
    """A real SIGINT (what the terminal sends on Ctrl-C) while Lightning trains, then while
    evaluate predicts: one line, exit code 130, and the same command then finishes."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    train = [sys.executable, "-m", "mrrobust.cli", "train", "--data", str(tiny_store), "--out", str(run),
             "--max-epochs", "200", "--patience", "200", *TRAIN]
    process = subprocess.Popen(train, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert wait_for("checkpoints/last.ckpt", run, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (130, f"mrrobust train: {LINE} with --resume\n")
    # finish it quickly (in this process): the same run with a lower --max-epochs is finished at once
    args = train[3:]
    code, _, err = call_cli(*args[:args.index("--max-epochs") + 1], "1", *args[args.index("--max-epochs") + 2:], "--resume")
    assert code == 0, err
    results = tmp_path / "results"
    evaluate = [sys.executable, "-m", "mrrobust.cli", "evaluate", str(run), "--data", str(tiny_store), "--out",
                str(results), "--bootstrap", "20", "--device", "cpu", "--quiet"]
    process = subprocess.Popen(evaluate, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    if not wait_for("predictions/*/*/*.npy", results, process):
        pytest.fail(f"evaluate ended before its first prediction: {process.communicate()}")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("evaluate finished before the signal arrived")
    assert (process.returncode, err) == (130, f"mrrobust evaluate: {LINE}\n")


def test_real_sigint_in_prepare_with_two_workers(synth_root, tiny_store, tmp_path):
    """SIGINT to the whole process group (as a terminal sends it): the pool workers stay
    silent, the parent prints one line; the same command then finishes the same STORE."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "store"
    command = [sys.executable, "-m", "mrrobust.cli", "prepare", "--fastmri", str(synth_root / "knee"),
               "--annotations", str(synth_root / "annotations"), "--out", str(out), "--crop", "64",
               "--workers", "2", "--no-progress"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    assert wait_for("volumes/*.npy", out, process)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("prepare finished before the signal arrived")
    assert (process.returncode, err) == (130, f"mrrobust prepare: {LINE}\n")
    code, _, err = call_cli(*command[3:])  # the same command, in this process
    assert code == 0, err
    assert same_tree(out, tiny_store)
