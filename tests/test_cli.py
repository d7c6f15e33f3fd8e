"""The command line as a user meets it: --help everywhere, usage errors as one line."""

import subprocess
import sys

import pytest

from mrrobust.cli import app

COMMANDS = sorted(c.name for c in app.registered_commands)


def run(*args):
    return subprocess.run([sys.executable, "-m", "mrrobust.cli", *args], capture_output=True, text=True, timeout=120)


def test_every_step_of_the_pipeline_is_a_command():
    assert {"synth", "prepare", "artifacts", "gallery", "train", "evaluate", "report", "benchmark",
            "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command):
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and "--help" in result.stdout


@pytest.mark.parametrize("args, says", [
    (["synth"], "Missing argument"),
    (["synth", "/tmp/x", "--volumes", "abc"], "--volumes"),
    (["train"], "Missing option '--data'"),
    (["no-such-command"], "No such command"),
])
def test_usage_error_is_one_line_and_exit_2(args, says):
    result = run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, says", [
    (["evaluate", "no/such/run", "--data", "no/store", "--out", "res"], "RUN folder no/such/run does not exist"),
    (["evaluate", "r", "--data", "s", "--out", "o", "--severities", "1,x"], "--severities '1,x'"),
    (["benchmark", "--data", "no/store", "--out", "b", "--seeds", "0,a"], "--seeds '0,a'"),
    (["report", "no/such/results", "--out", "rep"], "mrrobust evaluate"),
])
def test_evaluation_commands_refuse_bad_input_in_one_line(tmp_path, args, says):
    result = subprocess.run([sys.executable, "-m", "mrrobust.cli", *args], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert not any(tmp_path.iterdir())  # nothing written
