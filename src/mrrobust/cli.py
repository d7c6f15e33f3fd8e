"""The `mrrobust` command line: parses flags, calls the library, prints. No logic here.

A user error (`MrRobustError`) becomes one line on stderr and exit code 2; Ctrl-C becomes
one line ("interrupted; run the same command to resume") and exit code 130. Warnings
raised while a command runs are held back and printed after its result, or folded into
its error line, so a failing command always prints exactly one line on stderr. The
commands that write an output folder (prepare, train, evaluate, benchmark) hold its lock
(`mrrobust.locks`) while they run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from mrrobust.errors import MrRobustError, one_line

app = typer.Typer(
    help="Will my MR diagnosis model still work when the scan is not clean?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


INTERRUPTED = "interrupted; run the same command to resume"


class _Held(logging.Handler):
    """Collects the warnings of the `mrrobust` loggers while a command runs."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(one_line(record.getMessage()))


@contextlib.contextmanager
def _held_warnings():
    """Hold back Python warnings and `mrrobust` log warnings; yields the list they go to."""
    held = _Held()
    logger = logging.getLogger("mrrobust")
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(held)
    with warnings.catch_warnings(record=True) as caught:  # the filters stay as they are
        try:
            yield held.messages
        finally:
            logger.removeHandler(held)
            logger.propagate = propagate
            held.messages.extend(one_line(f"{w.category.__name__}: {w.message}") for w in caught)


def command(fn):
    """Register `fn` as a subcommand: a MrRobustError becomes one line and exit code 2,
    Ctrl-C one line and exit code 130 (see the module docstring)."""
    name = fn.__name__.replace("_", "-")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        messages: list[str] = []
        line, code = None, 0
        try:
            with _held_warnings() as messages:
                return fn(*args, **kwargs)
        except MrRobustError as err:
            line, code = f"error: {err}", 2
        except KeyboardInterrupt:
            line, code = INTERRUPTED + (" with --resume" if name == "train" else ""), 130
        finally:
            notes = list(dict.fromkeys(messages))
            if line is None:
                for note in notes:
                    print(f"mrrobust {name}: warning: {note}", file=sys.stderr)
        after = f" (after {len(notes)} warning(s): {'; '.join(notes)})" if notes else ""
        print(one_line(f"mrrobust {name}: {line}{after}"), file=sys.stderr)
        raise typer.Exit(code=code)

    return app.command(name=name)(wrapper)


def _lock(out: Path, name: str):
    """The output lock of `out`; none in the DDP ranks other than 0 (their launcher holds it)."""
    import os

    from mrrobust.locks import output_lock

    if os.environ.get("RANK", "0") != "0" or os.environ.get("LOCAL_RANK", "0") != "0":
        return contextlib.nullcontext()
    return output_lock(out, name)


# ---- data: synth, prepare (issue 2) ----------------------------------------


@command
def synth(
    out: Path = typer.Argument(..., help="Folder to write: OUT/knee/<challenge>_{train,val}/*.h5 and OUT/annotations/*.csv."),
    volumes: int = typer.Option(24, help="Number of knee volumes (about 80% train, 20% val)."),
    slices: int = typer.Option(16, help="Sagittal slices per volume."),
    crop: int = typer.Option(320, help="Reconstruction size (even, 32..640); k-space is (2*crop, ~1.15*crop)."),
    seed: int = typer.Option(0, help="Same seed, same bytes."),
    multicoil: bool = typer.Option(False, "--multicoil", help="Write multicoil_* volumes (coil k-space, RSS only)."),
    coils: int = typer.Option(8, help="Receive coils for --multicoil."),
    lesion_scale: float = typer.Option(1.0, help="Draw every lesion this many times larger (1..4; the demo's small crops use 3)."),
):
    """Write a synthetic fastMRI knee data set with fastMRI+ annotations (no download needed). Resumes."""
    from mrrobust.data.synth import synth as synth_data

    s = synth_data(out, volumes=volumes, slices=slices, crop=crop, seed=seed, multicoil=multicoil, coils=coils,
                   lesion_scale=lesion_scale, progress=True)
    positives = ", ".join(f"{label} {n}" for label, n in s["positive_slices"].items())
    reused = f", {s['reused']} finished before" if s["reused"] else ""
    print(f"{s['out']}: {s['volumes']} {s['challenge']} volumes ({s['train']} train, {s['val']} val{reused}), "
          f"k-space {tuple(s['kspace_shape'])}, {s['reviewed']} reviewed; {s['boxes']} boxes, "
          f"{s['study_level']} study-level rows; positive slices of {s['slices']}: {positives}")


@command
def prepare(
    fastmri: Path = typer.Option(..., "--fastmri", help="fastMRI knee folder holding singlecoil_train/ and singlecoil_val/ (or multicoil_*)."),
    out: Path = typer.Option(..., "--out", help="STORE folder to write (or to finish, after an interrupted run)."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="Folder with knee.csv and knee_file_list.csv; default: the packaged fastMRI+ files."),
    challenge: str = typer.Option("singlecoil", help="singlecoil or multicoil."),
    crop: int = typer.Option(320, help="Centre crop of the complex images (pixels)."),
    seed: int = typer.Option(0, help="Seed of the volume-level split (patients kept together)."),
    train: float = typer.Option(0.7, "--train", help="Fraction of volumes for training."),
    val: float = typer.Option(0.15, "--val", help="Fraction of volumes for validation."),
    test: float = typer.Option(0.15, "--test", help="Fraction of volumes for testing."),
    workers: int = typer.Option(1, help="Processes reading volumes in parallel."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """Build the slice STORE from fastMRI volumes and fastMRI+ labels (resumes an interrupted run)."""
    from mrrobust.data.prepare import prepare as prepare_store, summary_lines

    with _lock(out, "prepare"):  # Ctrl-C: a STORE finished before stays as it was until the new one is done
        summary = prepare_store(fastmri, out, annotations=annotations, challenge=challenge, crop=crop, seed=seed,
                                fractions=(train, val, test), workers=workers, progress=progress)
    print("\n".join(summary_lines(summary)))


# ---- artifacts: artifacts, gallery (issue 3) --------------------------------


@command
def artifacts(
    size: int = typer.Option(96, "--size", help="Slice size in pixels for the measured NRMSE/SSIM (64..128 is fast)."),
    suite: str = typer.Option("mrrobust", "--suite", help="Artifact suite: mrrobust (ours) or study (the released protocol)."),
    source: str = typer.Option("synth", "--source", help="Slices to measure on: synth (synthetic validation knees) or real (the public MR test images of pydicom, pydicom-data and nibabel; needs the test extra)."),
):
    """List the artifacts, their five-step ladders and the measured NRMSE/SSIM per severity (synthetic or real MR slices)."""
    from rich.table import Table

    from mrrobust.artifacts.quality import ladder_table

    if not 16 <= size <= 1024:
        raise MrRobustError(f"--size {size} is outside 16..1024")
    if suite not in ("mrrobust", "study"):
        raise MrRobustError(f"unknown suite {suite!r}; choose mrrobust or study")
    if source not in ("synth", "real"):
        raise MrRobustError(f"--source {source!r}: choose synth or real")
    what = "synthetic validation slices" if source == "synth" else "real MR test slices"
    table = Table(title=f"artifacts (suite {suite}; median and mean over {what} at {size} px; severity 1..5)")
    if suite == "study":
        from mrrobust.artifacts.study import TABLE_NOTE

        table.caption = TABLE_NOTE
    for column in ("artifact", "domain", "ladder (unit)", "NRMSE median 1..5", "SSIM median 1..5", "SSIM mean 1..5",
                   "monotone pairs"):
        table.add_column(column)
    for row in ladder_table(size=size, suite=suite, source=source):
        table.add_row(row["name"], row["domain"], " / ".join(str(step) for step in row["ladder"]) + f"\n({row['unit']})",
                      " ".join(f"{v:.3f}" for v in row["nrmse"]), " ".join(f"{v:.3f}" for v in row["ssim"]),
                      " ".join(f"{v:.3f}" for v in row["ssim_mean"]), f"{row['pairs_monotone']:.1%}")
    Console(width=None if sys.stdout.isatty() else 150).print(table)


@command
def gallery(
    data: Path = typer.Option(..., "--data", help="A STORE folder or a fastMRI .h5 volume."),
    out: Path = typer.Option(Path("gallery.png"), "--out", help="Output image (.png, .pdf, .svg)."),
    slice_index: Optional[int] = typer.Option(None, "--slice", help="Slice index (default: the middle slice)."),
    suite: str = typer.Option("mrrobust", "--suite", help="Artifact suite: mrrobust or study."),
    seed: int = typer.Option(0, "--seed", help="Seed of the corruption."),
):
    """One slice under every artifact at severities 0..5, as one grid image."""
    from mrrobust.artifacts.gallery import gallery as draw, load_slice

    image, label = load_slice(data, slice_index)
    print(draw(image, out, title=label, suite=suite, seed=seed))


# Options that several commands share: (default, help), one place for both.
_TRAINING = dict(
    groups=(32, "Groups for --norm group (must divide every stage width)."),
    depth=(18, "ResNet depth: 18 or 34."),
    width=(64, "Base channels (64 as in the study; narrower for CPU tests and the demo)."),
    lr=(1e-5, "AdamW learning rate."),
    weight_decay=(1e-4, "AdamW weight decay."),
    batch_size=(32, "Batch size per device."),
    max_epochs=(200, "Upper bound on epochs."),
    patience=(5, "Early stopping: epochs without a better mean validation AUC."),
    augment=(None, "Train-time artifacts ARTIFACT[:MAXSEV],... (e.g. noise:3,motion): per slice and epoch one artifact at a random severity <= MAXSEV, on the batch's device."),
    precision=("auto", "auto (bf16-mixed on a GPU, 32 on the CPU), 32, bf16-mixed or 16-mixed (GPU)."),
    compile=(False, "torch.compile the network."),
    accelerator=("auto", "auto, cpu or gpu."),
    devices=(1, "Devices per node (>1: DDP; batch norm becomes SyncBatchNorm on GPUs)."),
    workers=(2, "Data-loader worker processes."),
)
_EVALUATION = dict(
    suite=("mrrobust", "Artifact suite: mrrobust (ours) or study (the released protocol)."),
    artifacts=(None, "Comma-separated artifacts (default: all of the suite)."),
    severities=("1,2,3,4,5", "Comma-separated severities 1..5."),
    bn_modes=("eval,adapt,prior,tent", "Comma-separated: eval (stored statistics), adapt (AdaBN: statistics of each corrupted set), prior (BN-adapt, Schneider et al. 2020: N/(N+n) trained + n/(N+n) test-batch statistics), tent (Wang et al. 2021: entropy minimisation of the BN affine parameters, episodic per cell). Runs without batch norm: eval only."),
    device=("auto", "auto, cpu or cuda."),
    bootstrap=(2000, "Replicates of the two-level bootstrap (test volumes, and seeds within each arm); the smallest p is 1/B. 0: volumes not resampled (seeds alone; refused when every arm has one run)."),
    bn_prior=(16.0, "Prior strength N of --bn-modes prior (Schneider et al. 2020)."),
    threshold_from=("clean-val", "Operating points: clean-val (each RUN's, chosen on the clean validation split: what a deployed model does) or corrupted-val (re-chosen per cell on the validation split corrupted like it: the study's release)."),
)


def _option(table: dict, name: str, *flags: str):
    """A typer option from a shared table entry (flags: e.g. "--compile" for a bare switch)."""
    default, text = table[name]
    return typer.Option(default, *flags, help=text)


# ---- models and training: train (issue 4) -----------------------------------


@command
def train(
    data: Path = typer.Option(..., "--data", help="STORE folder written by `mrrobust prepare`."),
    out: Path = typer.Option(..., "--out", help="RUN folder to write (config.json, model.safetensors, metrics.csv, operating_points.json)."),
    norm: str = typer.Option("batch", help="Normalisation: batch, group, layer, instance or none."),
    groups: int = _option(_TRAINING, "groups"),
    depth: int = _option(_TRAINING, "depth"),
    width: int = _option(_TRAINING, "width"),
    lr: float = _option(_TRAINING, "lr"),
    weight_decay: float = _option(_TRAINING, "weight_decay"),
    batch_size: int = _option(_TRAINING, "batch_size"),
    max_epochs: int = _option(_TRAINING, "max_epochs"),
    patience: int = _option(_TRAINING, "patience"),
    seed: int = typer.Option(0, help="Seeds every generator and data-loader worker."),
    weighted_sampler: bool = typer.Option(True, "--weighted-sampler/--uniform-sampler", help="The study's sampler (inverse frequency of the number of positive labels) or uniform shuffling."),
    augment: Optional[str] = _option(_TRAINING, "augment"),
    precision: str = _option(_TRAINING, "precision"),
    compile: bool = _option(_TRAINING, "compile", "--compile"),
    accelerator: str = _option(_TRAINING, "accelerator"),
    devices: int = _option(_TRAINING, "devices"),
    num_nodes: int = typer.Option(1, help="Nodes for multi-node DDP."),
    workers: int = _option(_TRAINING, "workers"),
    limit_train_batches: Optional[int] = typer.Option(None, help="Train on at most this many batches per epoch (quick checks)."),
    limit_val_batches: Optional[int] = typer.Option(None, help="Validate on at most this many batches per epoch (quick checks)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint (a finished run: show its summary)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar, model summary or Lightning banners."),
):
    """Train one classifier on a STORE and write a RUN folder."""
    from mrrobust.training import train as train_run

    with _lock(out, "train"):
        summary = train_run(
            data, out, norm, depth=depth, width=width, groups=groups, lr=lr, weight_decay=weight_decay,
            batch_size=batch_size, max_epochs=max_epochs, patience=patience, seed=seed,
            weighted_sampler=weighted_sampler, augment=augment, precision=precision, compile=compile,
            accelerator=accelerator, devices=devices, num_nodes=num_nodes, workers=workers,
            limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
            resume=resume, quiet=quiet)
    if summary is not None:
        print(f"{summary['run']}: {summary['epochs']} epochs, best epoch {summary['best_epoch']} "
              f"(mean validation AUC {summary['best_val_auc_mean']:.4f})"
              f"{', stopped early' if summary['stopped_early'] else ''}")



# ---- evaluation, report, benchmark -----------------------------------------


def _names(text: Optional[str]) -> Optional[list[str]]:
    """Comma-separated text -> the list of its non-empty, stripped parts; None stays None."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _integers(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in _names(text)]
    except ValueError:
        raise MrRobustError(f"{flag} {text!r}: expected comma-separated integers such as 1,2,3") from None


@command
def evaluate(
    runs: Optional[List[Path]] = typer.Argument(None, help="RUN folders written by `mrrobust train`, or MODEL folders (model.pt2 + mrrobust-model.json, e.g. `mrrobust export`); unique folder names; optional with --arm."),
    data: Path = typer.Option(..., "--data", help="The STORE the runs were trained on."),
    out: Path = typer.Option(..., "--out", help="RESULTS folder to write (or to finish, after an interrupted run)."),
    arm: Optional[List[str]] = typer.Option(None, "--arm", help="NAME=RUN,RUN,... an arm of runs that differ only in their seed (repeatable). Default: runs grouped by their training configuration minus the seed."),
    reference_arm: Optional[str] = typer.Option(None, "--reference-arm", help="The arm every other arm is compared with and CE is relative to (default: the batch-norm arm)."),
    suite: str = _option(_EVALUATION, "suite"),
    artifacts: Optional[str] = _option(_EVALUATION, "artifacts"),
    severities: str = _option(_EVALUATION, "severities"),
    split: str = typer.Option("test", help="STORE split to evaluate on."),
    bn_modes: str = _option(_EVALUATION, "bn_modes"),
    bn_prior: float = _option(_EVALUATION, "bn_prior"),
    threshold_from: str = _option(_EVALUATION, "threshold_from"),
    batch_size: int = typer.Option(64, help="Slices per batch (also the test batch of prior and tent)."),
    device: str = _option(_EVALUATION, "device"),
    seed: int = typer.Option(0, help="Seed of the corruptions (per slice) and of the bootstrap."),
    bootstrap: int = _option(_EVALUATION, "bootstrap"),
    level: float = typer.Option(0.95, help="Confidence level of the intervals."),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: predict only shard I of N of the (run, artifact, severity) cells, into its own --out; no tables (merge the N folders with `mrrobust report SHARD...`)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the passes without hooks (eval of runs without batch norm, prior, AdaBN's prediction pass); predictions equal to float rounding. Pays on a GPU for large grids; compiling costs about a minute per network."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Every run on every artifact x severity of a STORE split: predictions, per-run and per-arm metrics with CIs, arm comparisons with Holm / BH adjusted p-values."""
    from mrrobust.arms import parse_arm
    from mrrobust.evaluation import evaluate as run_grid

    arms = None
    if arm:
        arms = {}
        for text in arm:
            name, members = parse_arm(text)
            if name in arms:
                raise MrRobustError(f"--arm {name} is given twice; give each arm once, with all its runs")
            arms[name] = members
    with _lock(out, "evaluate"):
        result = run_grid(runs or [], data, out, arms=arms, reference_arm=reference_arm, suite=suite,
                          artifacts=_names(artifacts), severities=_integers(severities, "--severities"), split=split,
                          bn_modes=_names(bn_modes), bn_prior=bn_prior, threshold_from=threshold_from,
                          batch_size=batch_size, device=device, seed=seed, bootstrap=bootstrap, level=level,
                          shard=shard, compile=compile, progress=not quiet)
    if shard is not None:
        print(f"{result['out']}: shard {shard.strip()}: {result['cells']} prediction files ({result['computed']} "
              f"computed now, {result['reused']} finished before); merge every shard with `mrrobust report SHARD... --out REPORT`")
        return
    arms_text = "; ".join(f"{name}: {len(members)} run{'s' if len(members) > 1 else ''}"
                          for name, members in result["arms"].items())
    print(f"{result['out']}: {result['cells']} cells ({result['computed']} computed now, {result['reused']} "
          f"finished before); arms {arms_text}; results.csv, arms.csv, arm_comparisons.csv, thresholds.csv, bn_shift.csv")


@command
def report(
    results: List[Path] = typer.Argument(..., help="RESULTS folder written by `mrrobust evaluate`, or every shard folder of one `evaluate --shard I/N` (merged into OUT/results)."),
    out: Path = typer.Option(..., "--out", help="REPORT folder to write (report.md, report.html, figures/; results/ for merged shards)."),
    reference_norm: Optional[str] = typer.Option(
        None, help="Reference arm (an arm name, or a norm: its first arm); default: evaluate's reference arm."),
    formats: str = typer.Option("png", help="Figure formats, comma-separated (png, pdf, svg)."),
):
    """Tables, figures and findings from a RESULTS folder (no GPU needed): report.md and a self-contained report.html."""
    from mrrobust.report import report as write_report

    written = write_report(results, out, reference_norm=reference_norm, formats=tuple(_names(formats)))
    print(f"{written['report']} and {written['html']} ({len(written['figures'])} figures)")
    for line in written["findings"]:
        print(f"- {line}")


@command
def benchmark(
    data: Path = typer.Option(..., "--data", help="STORE folder written by `mrrobust prepare`."),
    out: Path = typer.Option(..., "--out", help="Folder for runs/, results/ and report/ (re-run to resume)."),
    norms: str = typer.Option("batch,group,layer", help="Comma-separated norms to train."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated training seeds (one run per norm and seed; the seeds of a norm form its arm)."),
    depth: int = _option(_TRAINING, "depth"),
    width: int = _option(_TRAINING, "width"),
    groups: int = _option(_TRAINING, "groups"),
    lr: float = _option(_TRAINING, "lr"),
    weight_decay: float = _option(_TRAINING, "weight_decay"),
    batch_size: int = _option(_TRAINING, "batch_size"),
    max_epochs: int = _option(_TRAINING, "max_epochs"),
    patience: int = _option(_TRAINING, "patience"),
    augment: Optional[str] = _option(_TRAINING, "augment"),
    precision: str = _option(_TRAINING, "precision"),
    compile: bool = _option(_TRAINING, "compile", "--compile"),
    accelerator: str = _option(_TRAINING, "accelerator"),
    devices: int = _option(_TRAINING, "devices"),
    workers: int = _option(_TRAINING, "workers"),
    suite: str = _option(_EVALUATION, "suite"),
    artifacts: Optional[str] = _option(_EVALUATION, "artifacts"),
    severities: str = _option(_EVALUATION, "severities"),
    bn_modes: str = _option(_EVALUATION, "bn_modes"),
    eval_batch_size: int = typer.Option(64, help="Evaluation batch size."),
    eval_compile: bool = typer.Option(False, "--eval-compile", help="Evaluate with torch.compile (as `evaluate --compile`)."),
    device: str = _option(_EVALUATION, "device"),
    bootstrap: int = _option(_EVALUATION, "bootstrap"),
    bn_prior: float = _option(_EVALUATION, "bn_prior"),
    threshold_from: str = _option(_EVALUATION, "threshold_from"),
    reference_arm: Optional[str] = typer.Option(None, "--reference-arm", help="The arm every other arm is compared with and CE is relative to (default: the batch-norm arm)."),
    retrain: bool = typer.Option(False, "--retrain", help="Retrain the runs in --out made with other settings, and redo results/ and report/ made from other runs or settings (deletes that finished work)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (runs to train, cells to evaluate, what is finished) and a time estimate from throughput measured now; write nothing."),
    executor: Optional[str] = typer.Option(None, "--executor", help="Run the steps as scheduler jobs through submitit: local (subprocesses of this machine) or slurm (sbatch from a login node). Default: in this process."),
    parallel: int = typer.Option(1, "--parallel", help="CPU training: train this many runs at once in worker processes (each with cores/parallel threads)."),
    shards: int = typer.Option(1, "--shards", help="With --executor: evaluation shards, one job each, submitted as one job array."),
    slurm_partition: Optional[str] = typer.Option(None, "--slurm-partition", help="SLURM partition."),
    slurm_account: Optional[str] = typer.Option(None, "--slurm-account", help="SLURM account."),
    gpus_per_node: int = typer.Option(0, "--gpus-per-node", help="GPUs per job (training: one task per GPU, DDP)."),
    time_limit: int = typer.Option(60, "--time", help="Time limit per job, minutes."),
    cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task", help="CPUs per task."),
    mem_gb: Optional[float] = typer.Option(None, "--mem-gb", help="Memory per job, GB."),
    array_parallelism: Optional[int] = typer.Option(None, "--array-parallelism", help="At most this many jobs of one array at once."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
):
    """train every norm x seed -> evaluate the artifact grid -> report, in one command (resumes).

    Before training anything it compares every setting with what --out already holds and
    refuses differences (with their list) unless --retrain."""
    from mrrobust.benchmark import benchmark as run_benchmark

    train_options = dict(depth=depth, width=width, groups=groups, lr=lr, weight_decay=weight_decay,
                         batch_size=batch_size, max_epochs=max_epochs, patience=patience, augment=augment,
                         precision=precision, compile=compile, accelerator=accelerator, devices=devices,
                         workers=workers, quiet=quiet)
    evaluate_options = dict(suite=suite, artifacts=_names(artifacts), severities=_integers(severities, "--severities"),
                            bn_modes=_names(bn_modes), batch_size=eval_batch_size, device=device, bootstrap=bootstrap,
                            bn_prior=bn_prior, threshold_from=threshold_from, reference_arm=reference_arm,
                            compile=eval_compile)
    from mrrobust.benchmark import plan_lines

    cluster = None
    if executor is not None:
        from mrrobust.executor import JOBS_FOLDER, ClusterOptions

        cluster = ClusterOptions(executor, folder=out / JOBS_FOLDER, partition=slurm_partition, account=slurm_account,
                                 gpus_per_node=gpus_per_node, time=time_limit, cpus_per_task=cpus_per_task,
                                 mem_gb=mem_gb, array_parallelism=array_parallelism)

    with contextlib.nullcontext() if dry_run else _lock(out, "benchmark"):
        result = run_benchmark(data, out, _names(norms), _integers(seeds, "--seeds"), train_options=train_options,
                               evaluate_options=evaluate_options, reference_norm=reference_arm, progress=not quiet,
                               retrain=retrain, dry_run=dry_run, cluster=cluster, shards=shards,
                               parallel=parallel)
    if dry_run:
        print("\n".join(plan_lines(result["plan"])))
        return
    if not result:  # a DDP rank other than 0
        return
    _print_runs(result["runs"])
    print(f"report {result['report']['report']}")
    for line in result["report"]["findings"]:
        print(f"- {line}")


@command
def verify(
    path: Path = typer.Argument(..., help="A STORE, RUN or RESULTS folder."),
):
    """Full integrity pass: every contract of the folder, every checksum (STORE), weights against the config (RUN), every prediction file (RESULTS)."""
    from mrrobust.contracts import verify as verify_folder

    print(verify_folder(path))


def _print_runs(runs: dict) -> None:
    from mrrobust.training import MONITOR

    for name, best in runs.items():
        aucs = " ".join(f"{k.removeprefix('val_auc_')} {float(v):.3f}" for k, v in best.items()
                        if k.startswith("val_auc_") and k != MONITOR and v)
        print(f"{name:>14}: best epoch {best.get('epoch')}, mean validation AUC "
              f"{float(best.get(MONITOR, 'nan')):.3f} ({aucs}) -> {best['run']}")


# ---- demo --------------------------------------------------------------------


@command
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for the synthetic data, STORE, runs, results, report and gallery."),
    volumes: int = typer.Option(96, help="Synthetic volumes (>= 12)."),
    slices: int = typer.Option(16, help="Slices per volume."),
    crop: int = typer.Option(32, help="Image size in pixels (small, so it runs on a laptop CPU)."),
    lesion_scale: float = typer.Option(3.0, help="Lesions drawn this many times larger, so they stay visible at --crop."),
    width: int = typer.Option(8, help="ResNet base width (a multiple of 4)."),
    epochs: int = typer.Option(8, help="Training epochs per run."),
    seed: int = typer.Option(0, help="Seed of the data, split and corruptions."),
    seeds: str = typer.Option("0,1,2", help="Training seeds: one run per norm and seed."),
    bootstrap: int = typer.Option(2000, help="Bootstrap replicates (the smallest p is 1/B: 2000 lets the primary endpoint reach p < 0.001)."),
    threads: Optional[int] = typer.Option(None, help="Torch threads (default: torch's; 1 is faster on a busy machine)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or progress lines."),
):
    """synth -> prepare -> train batch/group/layer norm x 3 seeds -> evaluate an artifact grid -> report -> gallery, small, on the CPU. Resumes."""
    from mrrobust.demo import demo as run_demo

    summary = run_demo(out, volumes=volumes, slices=slices, crop=crop, lesion_scale=lesion_scale, width=width,
                       epochs=epochs, seed=seed, seeds=_integers(seeds, "--seeds"), bootstrap=bootstrap,
                       threads=threads, progress=not quiet)
    print(f"STORE {summary['store']}")
    _print_runs(summary["runs"])
    for run, auc in summary["clean_test_auc"].items():
        print(f"{run:>14}: clean test mean AUC {'undefined' if auc is None else f'{auc:.3f}'}")
    print(f"results {summary['results']}\ngallery {summary['gallery']}")
    print("wall time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in summary["stages"].items()))
    print(f"report {summary['report']}")
    for number, finding in enumerate(summary["findings"], start=1):
        print(f"finding {number}: {finding}")


# ---- any exported classifier: export, calibrate (issue 11) --------------------


@command
def export(
    run: Path = typer.Argument(..., help="RUN folder written by `mrrobust train`."),
    out: Path = typer.Option(..., "--out", help="MODEL folder to write (model.pt2, mrrobust-model.json, operating_points.json)."),
    input_scale: str = typer.Option("run", help="run: the RUN's training scale as a number (the MODEL takes |x| / that scale on any STORE); store: the evaluated STORE's scale."),
    force: bool = typer.Option(False, "--force", help="Replace the MODEL already in --out."),
):
    """Write a RUN as a MODEL folder: a torch.export program (B,1,H,W) -> (B,4) logits, its record and thresholds."""
    from mrrobust.models.exported import export_run

    result = export_run(run, out, input_scale=input_scale, force=force)
    height, width = result["input_size"]
    print(f"{result['out']}: {len(result['labels'])} labels ({', '.join(result['labels'])}), "
          f"input (B, 1, {height}, {width}) / {result['input_scale']}")


@command
def calibrate(
    model: Path = typer.Argument(..., help="MODEL folder (model.pt2 and mrrobust-model.json)."),
    data: Path = typer.Option(..., "--data", help="STORE whose clean validation split sets the thresholds."),
    split: str = typer.Option("val", help="STORE split to calibrate on."),
    batch_size: int = typer.Option(64, help="Slices per batch."),
    device: str = _option(_EVALUATION, "device"),
    force: bool = typer.Option(False, "--force", help="Replace the MODEL's operating_points.json."),
):
    """Thresholds for a MODEL by the study's rule (sensitivity >= 0.9) on a clean STORE split: MODEL/operating_points.json."""
    from mrrobust.calibration import calibrate as calibrate_model

    result = calibrate_model(model, data, split=split, batch_size=batch_size, device=device, force=force)
    thresholds = ", ".join(f"{label} {'n/a' if t is None else f'{t:.4g}'}" for label, t in result["labels"].items())
    print(f"{result['out']}: thresholds on {result['slices']} {split} slices: {thresholds}")


def main() -> None:
    """Console entry point: like `app()`, but a usage error (missing option, bad value)
    is one line on stderr and exit code 2 instead of a boxed message."""
    try:
        code = app(standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        print(f"mrrobust: {INTERRUPTED}", file=sys.stderr)
        code = 130
    except Exception as err:  # click's UsageError (typer vendors click): exit_code 2
        if getattr(err, "exit_code", None) != 2 or not hasattr(err, "format_message"):
            raise
        ctx = getattr(err, "ctx", None)
        where = ctx.command_path if ctx is not None else "mrrobust"
        if err.format_message():  # empty when no arguments: the help was shown
            print(f"{where}: error: {err.format_message()} (see --help)", file=sys.stderr)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
