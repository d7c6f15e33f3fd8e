"""The command line as a user meets it: --help everywhere, usage errors as one line.

Through `mrrobust.cli.main` in this process (what the console script calls); one real
`python -m mrrobust.cli` process checks the module runs as a program."""

import subprocess
import sys

import pytest

from mrrobust.cli import app

from commands import call_cli, cli_command

COMMANDS = sorted(c.name for c in app.registered_commands)


def test_every_step_of_the_pipeline_is_a_command():
    assert {"synth", "prepare", "artifacts", "gallery", "train", "evaluate", "report", "benchmark",
            "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command):
    code, out, err = call_cli(command, "--help")
    assert code == 0, err
    assert "Usage" in out and "--help" in out


@pytest.mark.parametrize("args, says", [
    (["synth"], "Missing argument"),
    (["synth", "/tmp/x", "--volumes", "abc"], "--volumes"),
    (["train"], "Missing option '--data'"),
    (["no-such-command"], "No such command"),
])
def test_usage_error_is_one_line_and_exit_2(args, says):
    code, _, err = call_cli(*args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], err
    assert "Traceback" not in err


def test_the_module_runs_as_a_program(tmp_path):
    """`python -m mrrobust.cli`: the same one-line usage error and exit code 2 as in-process."""
    result = subprocess.run(cli_command("train"), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("python -m mrrobust.cli train: error: ")
    assert line.partition(": error: ")[2] == call_cli("train")[2].strip().partition(": error: ")[2]


@pytest.mark.parametrize("args, says", [
    (["evaluate", "no/such/run", "--data", "no/store", "--out", "res"], "RUN folder no/such/run does not exist"),
    (["evaluate", "r", "--data", "s", "--out", "o", "--severities", "1,x"], "--severities '1,x'"),
    (["benchmark", "--data", "no/store", "--out", "b", "--seeds", "0,a"], "--seeds '0,a'"),
    (["report", "no/such/results", "--out", "rep"], "mrrobust evaluate"),
])
def test_evaluation_commands_refuse_bad_input_in_one_line(tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    code, _, err = call_cli(*args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], err
    assert not any(tmp_path.iterdir())  # nothing written
