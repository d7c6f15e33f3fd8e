"""`benchmark`: every setting compared with what OUT holds before anything is trained;
--retrain to redo finished work; --dry-run prints the plan and a measured estimate."""

import sys

import pytest

from mrrobust.benchmark import benchmark, plan, plan_differences
from mrrobust.errors import MrRobustError

TRAIN = dict(width=4, groups=4, max_epochs=1, workers=0, lr=1e-3, batch_size=16, accelerator="cpu", quiet=True)
EVALUATE = dict(artifacts=["noise"], severities=[1], bootstrap=20, bn_modes=["eval", "adapt"], device="cpu")


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from mrrobust.cli import main

    monkeypatch.setattr(sys, "argv", ["mrrobust", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bad_arguments_are_refused_before_the_first_file(tiny_store, tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    for extra, says in ((["--norms", "batch,foo"], "unknown norm(s) 'foo'"),
                        (["--norms", "batch,batch"], "given twice"),
                        (["--seeds", "0,0"], "given twice"),
                        (["--width", "0"], "field width"),
                        (["--severities", "9"], "severities")):
        code, _, err = run_cli(monkeypatch, capsys, "benchmark", "--data", tiny_store, "--out", out, *extra)
        assert code == 2 and err.count("\n") == 1 and says in err, err
        assert not out.exists() and not list(tmp_path.glob(".*lock"))


def test_finished_work_is_never_overwritten_without_retrain(tiny_store, tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    first = benchmark(tiny_store, out, ["layer"], [0], train_options=TRAIN, evaluate_options=EVALUATE, progress=False)
    weights = (out / "runs" / "layer-seed0" / "model.safetensors").read_bytes()
    assert [run["state"] for run in first["plan"]["runs"]] == ["new"]

    again = plan(tiny_store, out, ["layer"], [0], train_options=TRAIN, evaluate_options=EVALUATE)
    assert [run["state"] for run in again["runs"]] == ["finished"]
    assert again["results"]["state"] == "resume" and again["results"]["done"] == again["results"]["cells"] == 2
    assert plan_differences(again) == []
    # the plan's evaluation settings are those evaluate recorded (one function: planned_settings)
    import json

    from mrrobust.benchmark import COMPARED_RESULTS

    recorded = json.loads((out / "results" / "evaluation.json").read_text())
    assert set(COMPARED_RESULTS) <= set(again["evaluation"]) <= set(recorded)
    assert again["evaluation"] == {key: recorded[key] for key in again["evaluation"]}
    assert {"batch_size", "device", "compile", "tent"} <= set(again["evaluation"])

    longer = dict(TRAIN, max_epochs=2)
    with pytest.raises(MrRobustError, match=r"runs/layer-seed0: max_epochs 1 -> 2 .the finished run would train "
                                            r"further.; results: layer-seed0 would be trained .*nothing was trained"):
        benchmark(tiny_store, out, ["layer"], [0], train_options=longer, evaluate_options=EVALUATE, progress=False)
    with pytest.raises(MrRobustError, match=r"results: severities \[1\] -> \[1, 2\]"):
        benchmark(tiny_store, out, ["layer"], [0], train_options=TRAIN,
                  evaluate_options=dict(EVALUATE, severities=[1, 2]), progress=False)
    with pytest.raises(MrRobustError, match=r"results: runs \['layer-seed0'\] -> \['layer-seed0', 'group-seed0'\]"):
        benchmark(tiny_store, out, ["layer", "group"], [0], train_options=TRAIN, evaluate_options=EVALUATE,
                  progress=False)
    assert (out / "runs" / "layer-seed0" / "model.safetensors").read_bytes() == weights  # untouched
    assert not (out / "runs" / "group-seed0").exists()

    code, printed, err = run_cli(monkeypatch, capsys, "benchmark", "--data", tiny_store, "--out", out, "--norms", "layer",
                                 "--width", "4", "--groups", "4", "--max-epochs", "2", "--workers", "0", "--lr", "1e-3",
                                 "--batch-size", "16", "--accelerator", "cpu", "--artifacts", "noise", "--severities", "1",
                                 "--bootstrap", "20", "--device", "cpu", "--seeds", "0", "--bn-modes", "eval,adapt", "--dry-run")
    assert code == 0, err
    assert "runs/layer-seed0: DIFFERS: max_epochs 1 -> 2" in printed and "estimate:" in printed
    assert "ms per training slice" in printed

    redone = benchmark(tiny_store, out, ["layer"], [0], train_options=longer, evaluate_options=EVALUATE,
                       progress=False, retrain=True)
    assert redone["runs"]["layer-seed0"]["epoch"] in ("0", "1")
    assert len((out / "runs" / "layer-seed0" / "metrics.csv").read_text().splitlines()) == 3  # 2 epochs, from scratch
    assert plan_differences(plan(tiny_store, out, ["layer"], [0], train_options=longer, evaluate_options=EVALUATE)) == []
    import shutil

    shutil.rmtree(out / "results")  # a report whose results are gone is not overwritten implicitly
    assert plan_differences(plan(tiny_store, out, ["layer"], [0], train_options=longer, evaluate_options=EVALUATE)) == [
        f"report: {out / 'report'} holds a report whose results/ are gone"]


def test_dry_run_on_a_new_folder_writes_nothing(tiny_store, tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    code, printed, err = run_cli(monkeypatch, capsys, "benchmark", "--data", tiny_store, "--out", out,
                                 "--norms", "batch,layer", "--width", "4", "--groups", "4", "--max-epochs", "3",
                                 "--accelerator", "cpu", "--artifacts", "noise,motion", "--severities", "1,2",
                                 "--device", "cpu", "--seeds", "0", "--bn-modes", "eval,adapt", "--dry-run")
    assert code == 0, err
    assert "runs/batch-seed0: train (3 epochs at most)" in printed and "runs/layer-seed0: train" in printed
    # batch norm: eval and adapt, layer norm: eval only; each (1 clean + 2 artifacts x 2 severities)
    assert "results: 15 cells over 36 slices, 0 finished before, 15 to evaluate (new)" in printed
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_benchmark_through_the_local_executor_with_shards(tiny_store, tmp_path, monkeypatch):
    """--executor local: the training job, two evaluation shards (one job array) and the report
    as real submitit jobs; the merged shards give the same tables as the benchmark in-process."""
    import os
    from pathlib import Path

    import mrrobust
    from mrrobust.executor import ClusterOptions

    source = str(Path(mrrobust.__file__).resolve().parents[1])  # the jobs import this checkout
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    evaluate = dict(EVALUATE, bn_modes=["eval"])
    out = tmp_path / "cluster"
    result = benchmark(tiny_store, out, ["layer"], [0], train_options=TRAIN, evaluate_options=evaluate,
                       progress=False, cluster=ClusterOptions("local", folder=tmp_path / "jobs", time=20, array_parallelism=2),
                       shards=2)
    assert (out / "runs" / "layer-seed0" / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["1-of-2", "2-of-2"]
    assert Path(result["report"]["report"]).is_file() and (out / "report" / "results" / "arms.csv").is_file()
    import torch

    local, threads = tmp_path / "local", torch.get_num_threads()
    torch.set_num_threads(1)  # as the jobs (OMP_NUM_THREADS=1): the same bits
    try:
        benchmark(tiny_store, local, ["layer"], [0], train_options=TRAIN, evaluate_options=evaluate, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert ((local / "runs" / "layer-seed0" / "model.safetensors").read_bytes()
            == (out / "runs" / "layer-seed0" / "model.safetensors").read_bytes())
    for table in ("results.csv", "arms.csv", "arm_comparisons.csv"):
        assert (local / "results" / table).read_bytes() == (out / "report" / "results" / table).read_bytes(), table


def test_shards_and_executor_refused_before_any_work(tiny_store, tmp_path):
    from mrrobust.executor import ClusterOptions

    out = tmp_path / "b"
    with pytest.raises(MrRobustError, match=r"--shards 0 must be a whole number >= 1"):
        benchmark(tiny_store, out, ["layer"], [0], train_options=TRAIN, evaluate_options=EVALUATE, shards=0)
    with pytest.raises(MrRobustError, match=r"--executor 'pbs': choose one of local, slurm"):
        benchmark(tiny_store, out, ["layer"], [0], train_options=TRAIN, evaluate_options=EVALUATE,
                  cluster=ClusterOptions("pbs", folder=tmp_path / "jobs"))
    assert not out.exists() and not (tmp_path / "jobs").exists()


def test_a_benchmark_killed_while_training_or_evaluating_resumes_to_the_same_bytes(tiny_store, tmp_path):
    """SIGKILL `mrrobust benchmark` during training (a checkpoint exists) and again during the
    evaluation (a first prediction exists); the same command then gives the bytes of an
    uninterrupted benchmark (the same command in this process, at one thread as the process):
    weights, metrics, every table of RESULTS."""
    from commands import call_cli, cli_command, kill_then_resume, torch_threads

    def command(out) -> list:
        return ["benchmark", "--data", tiny_store, "--out", out, "--norms", "batch", "--seeds", "0", "--width", "4",
                "--groups", "4", "--max-epochs", "2", "--patience", "2", "--workers", "0", "--lr", "1e-3",
                "--batch-size", "16", "--accelerator", "cpu", "--artifacts", "noise,motion", "--severities", "1,3",
                "--bn-modes", "eval,adapt", "--bootstrap", "50", "--device", "cpu", "--quiet"]

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    with torch_threads(1):
        code, _, err = call_cli(*command(whole))
    assert code == 0, err
    kill_then_resume(cli_command(*command(killed)), killed,
                     ("runs/batch-seed0/checkpoints/last.ckpt", "results/predictions/*/*/*.npy"))
    for name in ("runs/batch-seed0/model.safetensors", "runs/batch-seed0/metrics.csv",
                 "runs/batch-seed0/operating_points.json", "results/results.csv", "results/arms.csv",
                 "results/arm_comparisons.csv", "results/thresholds.csv", "results/bn_shift.csv",
                 "results/predictions/batch-seed0/adapt/motion-3.npy"):
        assert (whole / name).read_bytes() == (killed / name).read_bytes(), name
