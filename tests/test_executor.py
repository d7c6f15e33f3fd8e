"""The executor end to end with submitit's local executor (jobs are real subprocesses):
training jobs -> evaluation jobs as one array -> the report; a re-run submits nothing; a
failed job, a missing or unconfigured executor and bad options are one line each."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

import mrrobust
from mrrobust.errors import MrRobustError
from mrrobust.executor import ClusterOptions, Job, Stage, make_executor, run_stages


@pytest.fixture(autouse=True)
def importable_in_jobs(monkeypatch):
    """Jobs are new Python processes: they import this checkout of mrrobust."""
    source = str(Path(mrrobust.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def finished_run(run: Path) -> bool:
    return (run / "model.safetensors").is_file() and (run / "operating_points.json").is_file()


def stages(store: Path, out: Path) -> list[Stage]:
    from mrrobust.evaluation import evaluate
    from mrrobust.report import report
    from mrrobust.training import train

    runs = [out / "runs" / f"{norm}-seed0" for norm in ("batch", "layer")]
    training = [Job(run.name, functools.partial(
        train, store, run, run.name.split("-")[0], width=8, groups=4, max_epochs=1,
        batch_size=32, workers=0, accelerator="cpu", quiet=True, lr=1e-3),
        done=functools.partial(finished_run, run)) for run in runs]
    # two evaluation jobs in one array (the lead's evaluate --shard I/N takes their place)
    shards = {artifact: out / f"results-{artifact}" for artifact in ("noise", "gibbs")}
    evaluation = [Job(artifact, functools.partial(
        evaluate, runs, store, folder, artifacts=[artifact], severities=[2], split="val",
        bn_modes=["eval"], batch_size=32, device="cpu", bootstrap=20, progress=False),
        done=functools.partial(Path.is_file, folder / "results.csv"))
        for artifact, folder in shards.items()]
    reporting = [Job("report", functools.partial(report, shards["noise"], out / "report"),
                     done=functools.partial(Path.is_file, out / "report" / "report.md"))]
    return [Stage("train", training), Stage("evaluate", evaluation),
            Stage("report", reporting, cpu_only=True)]


def test_local_executor_runs_the_benchmark_stages_and_resumes(tiny_store, tmp_path):
    out = tmp_path / "bench"
    # two jobs at once (one per core): the two runs train, and the two shards evaluate, together
    options = ClusterOptions("local", folder=out / "jobs", time=20, array_parallelism=2)
    lines = []
    results = run_stages(stages(tiny_store, out), options, report=lines.append)
    assert all(finished_run(out / "runs" / f"{n}-seed0") for n in ("batch", "layer"))
    assert [r["run"] for r in results["train"]] == [str(out / "runs" / f"{n}-seed0")
                                                   for n in ("batch", "layer")]
    assert [r["computed"] for r in results["evaluate"]] == [4, 4]  # 2 runs x (clean, artifact-2)
    assert (out / "report" / "report.md").is_file()
    assert lines[0] == "train: 2 job(s) to run, 0 finished before"
    logs = sorted((out / "jobs").iterdir())
    again = run_stages(stages(tiny_store, out), options, report=lines.append)
    assert again == {"train": [None, None], "evaluate": [None, None], "report": [None]}
    assert lines[-1] == "report: 0 job(s) to run, 1 finished before"
    assert sorted((out / "jobs").iterdir()) == logs  # nothing submitted


def test_a_failed_job_is_one_line_naming_it_and_its_log(tmp_path):
    # the check `train` fails at first on a missing STORE, as the job: its process imports the
    # contracts (under a second), not training's Lightning (seconds)
    from mrrobust.contracts import read_store_manifest

    job = Job("batch-seed0", functools.partial(read_store_manifest, tmp_path / "no-store"))
    with pytest.raises(MrRobustError, match=r"train job batch-seed0 \(\d+\) failed: .*no-store.*"
                                            r"not a finished STORE.*log .*\.err") as err:
        run_stages([Stage("train", [job]), Stage("report", [job])],
                   ClusterOptions("local", folder=tmp_path / "jobs", time=5), report=None)
    assert "\n" not in str(err.value) and [p.name for p in tmp_path.iterdir()] == ["jobs"]  # nothing else written
    assert len([p for p in (tmp_path / "jobs").iterdir() if p.name.isdigit()]) == 1  # the report stage: not submitted


def test_missing_or_unconfigured_executors_and_bad_options(tmp_path, monkeypatch):
    with pytest.raises(MrRobustError, match="choose one of local, slurm"):
        ClusterOptions("pbs").check()
    with pytest.raises(MrRobustError, match="--time 0"):
        ClusterOptions("local", time=0).check()
    with pytest.raises(MrRobustError, match="--gpus-per-node -1"):
        ClusterOptions("slurm", gpus_per_node=-1).check()
    import torch

    too_many = torch.cuda.device_count() + 1
    with pytest.raises(MrRobustError, match=f"= {2 * too_many} GPUs, this machine has"):
        ClusterOptions("local", gpus_per_node=too_many, array_parallelism=2).check()
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(MrRobustError, match="no `sbatch` on PATH"):  # neither sbatch nor srun
        ClusterOptions("slurm", folder=tmp_path / "jobs").check()
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    with pytest.raises(MrRobustError, match=r"needs submitit, which is not installed: pip install"):
        ClusterOptions("local", folder=tmp_path / "jobs").check()
    assert not (tmp_path / "jobs").exists()


def test_local_jobs_at_once_get_their_own_gpus(tmp_path):
    options = ClusterOptions("local", folder=tmp_path / "jobs", gpus_per_node=2)
    stage = Stage("evaluate", [])
    for slot, gpus in ((0, (0, 1)), (1, (2, 3))):  # the devices the controller makes visible
        executor = make_executor(options, stage, slot)._executor
        assert executor.parameters["visible_gpus"] == gpus
        assert executor.parameters["gpus_per_node"] == 2
    assert not make_executor(options, Stage("report", [], cpu_only=True))._executor.parameters.get(
        "visible_gpus")


def test_slurm_options_reach_the_job_script(tmp_path, monkeypatch):
    """The sbatch header submitit would submit (written here; nothing is submitted)."""
    from submitit.slurm.slurm import _make_sbatch_string

    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("sbatch", "srun"):  # present, as on a login node; never called here
        (tools / name).write_text("#!/bin/sh\nexit 1\n")
        (tools / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")

    options = ClusterOptions("slurm", folder=tmp_path / "jobs", partition="gpu", account="lab",
                             gpus_per_node=4, time=90, cpus_per_task=8,
                             additional={"exclusive": True})
    executor = make_executor(options, Stage("train", [], tasks_per_node=4, nodes=2))
    script = _make_sbatch_string(command="python -m job", folder=str(tmp_path / "jobs" / "%j"),
                                 **executor._executor.parameters)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --time=90", "#SBATCH --cpus-per-task=8", "#SBATCH --nodes=2",
                 "#SBATCH --ntasks-per-node=4", "#SBATCH --exclusive"):
        assert line in script, line
    report_executor = make_executor(options, Stage("report", [], cpu_only=True))
    assert not report_executor._executor.parameters.get("gpus_per_node")
