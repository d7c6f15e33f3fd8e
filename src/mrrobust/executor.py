"""Run the benchmark's steps as scheduler jobs through submitit: `--executor local|slurm`.

The benchmark is three stages, each waiting for the one before: the training jobs, the
evaluation shards, the report. Each stage is submitted as one job array (`Executor.batch`:
one `sbatch --array` on SLURM), its jobs run `Job.fn` (a picklable callable, e.g. a
`functools.partial` of `training.train`), and the driver waits for all of them before the
next stage. A job whose `done()` is already true is not submitted again, and every step
resumes its own folder, so re-running a killed benchmark continues where it stopped.

"local" runs the jobs as subprocesses of this machine (submitit's LocalExecutor, for tests
and single workstations); "slurm" submits with sbatch from a login node. Job scripts,
pickled callables and logs live under `ClusterOptions.folder` (`<out>/jobs/%j`).

Multi-node training on SLURM: a stage's `nodes` x `tasks_per_node` tasks (one per GPU) each
run the job's callable; Lightning's SLURMEnvironment reads SLURM_NTASKS, SLURM_PROCID,
SLURM_LOCALID, SLURM_NODELIST and the master address from the allocation, so
`train(devices=G, num_nodes=N)` in a job of N nodes with G tasks and G GPUs per node runs
DDP across them (training writes its RUN on global rank 0 only).
"""

from __future__ import annotations

import importlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mrrobust.errors import MrRobustError

EXECUTORS = ("local", "slurm")
_RAISED = re.compile(r"[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b: ")
JOBS_FOLDER = "jobs"


@dataclass
class ClusterOptions:
    """Where and with what the jobs run. `time` is minutes per job; `partition`, `account`,
    `qos`, `constraint` and `additional` (other sbatch options, e.g. {"exclusive": True})
    are SLURM only; `array_parallelism` caps the jobs of one array that run at once."""

    executor: str = "local"
    folder: Path = Path(JOBS_FOLDER)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time: int = 60
    array_parallelism: int | None = None
    additional: dict = field(default_factory=dict)

    def check(self) -> None:
        """Refuse bad values, an executor that is not installed or not configured (one
        line each), before any job is submitted."""
        if self.executor not in EXECUTORS:
            raise MrRobustError(f"--executor {self.executor!r}: choose one of "
                                f"{', '.join(EXECUTORS)}")
        for flag, value in (("--gpus-per-node", self.gpus_per_node), ("--time", self.time),
                            ("--cpus-per-task", self.cpus_per_task),
                            ("--array-parallelism", self.array_parallelism)):
            if value is not None and (not isinstance(value, int) or value < (0 if flag == "--gpus-per-node" else 1)):
                raise MrRobustError(f"{flag} {value!r} must be a whole number >= "
                                    f"{0 if flag == '--gpus-per-node' else 1}")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise MrRobustError(f"--mem-gb {self.mem_gb} must be > 0")
        _submitit(self.executor)
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if self.executor == "slurm" and missing:
            raise MrRobustError(f"--executor slurm: no `{missing[0]}` on PATH (this is not a "
                                f"SLURM login node, or its module is not loaded); submit from "
                                f"the cluster, or use --executor local")
        if self.executor == "local" and self.gpus_per_node:
            import torch

            wanted = self.gpus_per_node * (self.array_parallelism or 1)
            if torch.cuda.device_count() < wanted:
                raise MrRobustError(f"--executor local: {self.array_parallelism or 1} job(s) at "
                                    f"once x --gpus-per-node {self.gpus_per_node} = {wanted} "
                                    f"GPUs, this machine has {torch.cuda.device_count()}; ask "
                                    f"for fewer or use --executor slurm")


@dataclass
class Job:
    """One job: `fn()` does the work (picklable: it runs in another process or node);
    `done()` (run here) says it is finished already, so it is not submitted again."""

    name: str
    fn: Callable[[], Any]
    done: Callable[[], bool] | None = None


@dataclass
class Stage:
    """Jobs submitted together as one array, with the resources each of them gets:
    `gpus_per_node` None = the options' value, `tasks_per_node` (one per GPU for DDP),
    `nodes`, `cpu_only` (the report: no GPU asked for)."""

    name: str
    jobs: list[Job]
    gpus_per_node: int | None = None
    tasks_per_node: int = 1
    nodes: int = 1
    cpu_only: bool = False


def _submitit(kind: str):
    try:
        return importlib.import_module("submitit")
    except ImportError:
        raise MrRobustError(f"--executor {kind} needs submitit, which is not installed: "
                            f"pip install 'mrrobust[cluster]' (or pip install submitit)") from None


def _gpus(options: ClusterOptions, stage: Stage) -> int:
    if stage.cpu_only:
        return 0
    return options.gpus_per_node if stage.gpus_per_node is None else stage.gpus_per_node


def make_executor(options: ClusterOptions, stage: Stage, slot: int = 0):
    """A submitit executor for `stage` with `options` (checked by `options.check()`). On
    the local executor, concurrent job `slot` gets its own GPUs (slot * G .. slot * G + G-1)."""
    submitit = _submitit(options.executor)
    options.folder = Path(options.folder)
    options.folder.mkdir(parents=True, exist_ok=True)
    try:
        executor = submitit.AutoExecutor(folder=str(options.folder / "%j"), cluster=options.executor)
    except RuntimeError as err:  # e.g. no srun: `options.check()` says it first
        raise MrRobustError(f"--executor {options.executor}: {err}") from None
    gpus = _gpus(options, stage)
    parameters = {"name": f"mrrobust-{stage.name}", "timeout_min": options.time,
                  "gpus_per_node": gpus, "tasks_per_node": stage.tasks_per_node,
                  "nodes": stage.nodes, "cpus_per_task": options.cpus_per_task,
                  "mem_gb": options.mem_gb}
    if options.executor == "slurm":
        slurm = {"partition": options.partition, "account": options.account,
                 "qos": options.qos, "constraint": options.constraint,
                 "array_parallelism": options.array_parallelism}
        parameters.update({f"slurm_{k}": v for k, v in slurm.items() if v is not None})
        if options.additional:
            parameters["slurm_additional_parameters"] = dict(options.additional)
    try:
        executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
        if options.executor == "local" and gpus:  # AutoExecutor does not pass this one on
            executor._executor.update_parameters(
                visible_gpus=tuple(range(slot * gpus, (slot + 1) * gpus)))
    except (NameError, ValueError, AssertionError) as err:  # submitit's refusals
        raise MrRobustError(f"--executor {options.executor}: {str(err).splitlines()[0]}") from None
    return executor


def _failure(stage: Stage, job: Job, submitted, err: Exception) -> MrRobustError:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    raised = [line for line in lines if _RAISED.match(line)]  # the job's exception line
    cause = (raised or lines or [type(err).__name__])[-1 if raised else 0]
    cause = cause.removeprefix(f"{MrRobustError.__module__}.{MrRobustError.__name__}: ")
    log = getattr(getattr(submitted, "paths", None), "stderr", "its log")
    return MrRobustError(f"{stage.name} job {job.name} ({submitted.job_id}) failed: {cause} "
                         f"(log {log}); fix it and run the same command again to resume")


def _submit(options: ClusterOptions, stage: Stage, jobs: list[Job]) -> list:
    """Submit `jobs` of `stage`: on SLURM as one array; locally each with its own GPUs."""
    if options.executor == "local":
        return [make_executor(options, stage, slot).submit(job.fn) for slot, job in enumerate(jobs)]
    executor = make_executor(options, stage)
    with executor.batch():
        return [executor.submit(job.fn) for job in jobs]


def run_stages(stages: list[Stage], options: ClusterOptions,
               report: Callable[[str], None] | None = print) -> dict[str, list]:
    """Submit each stage's unfinished jobs as one array, wait for them, then the next
    stage. Returns {stage name: [result of each job, None for one done before]}. A failed
    job stops the run with one line naming it and its log; nothing later is submitted.
    The local executor runs `array_parallelism` jobs at a time (default 1), each on its
    own GPUs; SLURM schedules the whole array (at most `array_parallelism` at once)."""
    options.check()
    results = {}
    for stage in stages:
        pending = [job for job in stage.jobs if job.done is None or not job.done()]
        if report:
            report(f"{stage.name}: {len(pending)} job(s) to run, "
                   f"{len(stage.jobs) - len(pending)} finished before")
        width = len(pending) if options.executor == "slurm" else options.array_parallelism or 1
        outcome = {}
        for start in range(0, len(pending), max(width, 1)):
            wave = pending[start:start + width]
            submitted = _submit(options, stage, wave)
            for job, handle in zip(wave, submitted):
                try:
                    outcome[job.name] = handle.result()
                except Exception as err:  # submitit's FailedJobError / UncompletedJobError
                    for other in submitted:
                        if not other.done():
                            other.cancel(check=False)
                    raise _failure(stage, job, handle, err) from None
        results[stage.name] = [outcome.get(job.name) for job in stage.jobs]
    return results
