"""Train one classifier on a STORE and write a RUN (DESIGN: the RUN contract).

`train(data, out, norm, ...)` sets up Lightning around the plain-torch network of
`mrrobust.models`. The study's defaults (REFERENCE s.1): AdamW, lr 1e-5, weight decay 1e-4,
batch 32, the weighted sampler, sum of the four cross-entropies, early stopping (patience
5) and the best epoch on mean validation AUC over the labels.

Who does what: `Classifier` (the LightningModule) holds the step logic and turns each
validation epoch into one metrics row; `RunWriter` (a callback) writes the RUN folder.

RUN folder:
  config.json            model section (rebuilds the net), training flags, store scale
  model.safetensors      the best epoch's weights (rewritten each time the mean AUC improves)
  operating_points.json  per-label operating points of that epoch on the clean validation set
  metrics.csv            one row per epoch: train/val loss, per-label and mean validation AUC
  checkpoints/last.ckpt  Lightning's resume state, rewritten (atomically) after every epoch
                         (a pickle inside; only a resume reads it, with weights_only=True).
                         Nothing else in a RUN is a pickle.

Re-running into an existing RUN:
  - `--resume` continues from last.ckpt; a run that already finished (it stopped early, or
    it reached --max-epochs) is not trained again: its summary is returned. Raising
    --max-epochs continues a run that ended at its old --max-epochs; an early-stopped run
    stays finished (its best epoch was chosen by the stopping rule; train into another
    --out with a larger --patience instead).
  - a RUN with the same settings but no checkpoint (it died in its first epoch) starts over,
    with or without `--resume`.
  - anything else (another run's settings, or a checkpoint without `--resume`) is refused.

Reproducibility: every draw comes from generators seeded by `seed` (per-epoch sampler
generators, per-slice augmentation seeds), so an epoch does not depend on how the run got
there: the same command gives the same metrics.csv on the CPU, and a resumed run ends
where an uninterrupted one would.
Known limit: a kill in the short window between writing an improved epoch's
model.safetensors and its checkpoint makes the resume replay that epoch; on the CPU the
replay is identical, on a GPU (non-deterministic kernels) it may not improve again, and
the RUN then keeps the killed epoch's weights while metrics.csv names an earlier best.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import signal
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from mrrobust.atomic import atomic_write
from mrrobust.errors import MrRobustError
from mrrobust.metrics import label_aucs, operating_point
from mrrobust.models import (
    CONFIG_FILE, LABELS, WEIGHTS_FILE, build, memory_format, model_config,
    positive_probability, read_config, save, write_config)

log = logging.getLogger("mrrobust.training")

PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
METRICS_FILE = "metrics.csv"
OPERATING_POINTS_FILE = "operating_points.json"
TENSORBOARD = "tensorboard"
MONITOR = "val_auc_mean"
EPOCH_SEED_STRIDE = 1_000_003  # sampler and augmentation seed of an epoch: seed * stride + epoch
# settings a resumed run may change without changing the numbers of the epochs it replays
RESUMABLE_CHANGES = frozenset({"max_epochs", "workers"})


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything drawn in `epoch` of a run seeded `seed`."""
    return seed * EPOCH_SEED_STRIDE + epoch


# ---- sampling ------------------------------------------------------------------------------


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochSampler(Sampler[tuple]):
    """Training keys `(index, epoch)` for one epoch from a generator seeded by `(seed, epoch)`.

    `weights` `(N,)` draws N indices with replacement in proportion to them (the study's
    sampler); `None` draws a permutation. Under DDP each rank takes every world-th index
    (the draw padded by wrap-around to a multiple of the world size), so together the
    ranks see the single-process epoch. The trainer calls `set_epoch` before each epoch;
    the epoch travels with each index to the data-loader workers (see `SeededSlices`).
    """

    def __init__(self, size: int, seed: int, weights: torch.Tensor | None = None):
        self.size, self.seed, self.weights, self.epoch = size, seed, weights, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_indices(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        if self.weights is None:
            return torch.randperm(self.size, generator=generator)
        return torch.multinomial(self.weights, self.size, replacement=True, generator=generator)

    def __iter__(self):
        rank, world = _rank_and_world()
        indices = self._epoch_indices()
        padded = -len(indices) % world
        indices = torch.cat([indices, indices[:padded]])
        return iter([(i, self.epoch) for i in indices[rank::world].tolist()])

    def __len__(self) -> int:
        return math.ceil(self.size / _rank_and_world()[1])


class ShardSampler(Sampler[int]):
    """Evaluation indices in order; under DDP every world-th per rank, padded by
    wrap-around to equal length (the duplicates are dropped after gathering)."""

    def __init__(self, size: int):
        self.size = size

    def __iter__(self):
        rank, world = _rank_and_world()
        indices = list(range(self.size))
        indices += indices[: -self.size % world]
        return iter(indices[rank::world])

    def __len__(self) -> int:
        return math.ceil(self.size / _rank_and_world()[1])


class SeededSlices(Dataset):
    """`SliceDataset` items by key `index` or `(index, epoch)` ->
    `(image, target, index, seed)`: `seed` is the slice's int64 augmentation seed for that
    epoch (`slice_seed(slice_id, epoch_seed(seed, epoch))`; epoch 0 for a plain index)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        from mrrobust.data.store import slice_seed

        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, target, slice_id = self.dataset[index]
        return image, target, index, slice_seed(slice_id, epoch_seed(self.seed, epoch))


# ---- metrics files -------------------------------------------------------------------------


def per_sample_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over labels of the 2-way cross-entropy: logits `(B, L, 2)`, targets `(B, L)` -> `(B,)`."""
    b, labels, _ = logits.shape
    losses = F.cross_entropy(logits.float().reshape(b * labels, 2),
                             targets.reshape(-1).long(), reduction="none")
    return losses.view(b, labels).sum(1)


def metrics_csv(history: list[dict]) -> str:
    """The metrics.csv text: one row per epoch; an undefined value is an empty cell."""
    columns = ["epoch", "train_loss", "val_loss", *[f"val_auc_{l}" for l in LABELS], MONITOR]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in history:
        writer.writerow(["" if isinstance(row[c], float) and math.isnan(row[c])
                         else (f"{row[c]:.6f}" if isinstance(row[c], float) else row[c])
                         for c in columns])
    return out.getvalue()


def _json_number(value: float):
    return None if isinstance(value, float) and math.isnan(value) else value


def operating_points(targets: np.ndarray, scores: np.ndarray, epoch: int) -> dict:
    """operating_points.json content for `(N, L)` clean validation targets and scores."""
    aucs = label_aucs(targets, scores)
    labels = {}
    for k, label in enumerate(LABELS):
        point = operating_point(targets[:, k], scores[:, k])
        labels[label] = {key: _json_number(v) for key, v in point.items()}
        labels[label]["auc"] = _json_number(float(aucs[k]))
    return {"split": "val", "clean": True, "epoch": epoch, "slices": int(len(targets)),
            "rule": "highest threshold with sensitivity >= 0.9; fallback: first threshold "
                    "with FPR > 0.25; positive when score >= threshold",
            "labels": labels}


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


# ---- the LightningModule: step logic only -------------------------------------------------


def _lightning():
    import lightning.pytorch as pl

    return pl


class Classifier(_lightning().LightningModule):
    """Step logic around the plain network `self.net` (built from `config`).

    A batch is `(images, targets, index, seeds)` (`SeededSlices`); `seeds` `(B,)` int64
    drive the train-time artifacts. At each validation epoch end the predictions of all
    ranks are gathered into `self.validation = {"row", "targets", "scores"}` (`row`: this
    epoch's metrics.csv row) and the mean AUC is logged for early stopping. Writes nothing.
    """

    def __init__(self, config: dict, augment=None, channels_last: bool = False):
        super().__init__()
        self.config, self.augment = config, augment
        self.net = build(config)
        spec = config["model"]
        self.memory_format = (memory_format(spec["norm"], spec["group_norm_impl"])
                              if channels_last else torch.contiguous_format)
        self.net.to(memory_format=self.memory_format)
        compiled = torch.compile(self.net) if config["training"]["compile"] else self.net
        object.__setattr__(self, "forward_net", compiled)  # not a second registered submodule
        self.validation: dict | None = None
        self._val_rows: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_net(images.contiguous(memory_format=self.memory_format))

    # training
    def on_train_epoch_start(self) -> None:
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._loss_count = torch.zeros((), dtype=torch.float64, device=self.device)

    def training_step(self, batch, batch_index):
        images, targets, _, seeds = batch
        if self.augment is not None:
            images = self.augment(images, seeds).unsqueeze(1)
        loss = per_sample_loss(self(images), targets)
        self._loss_sum += loss.detach().double().sum()
        self._loss_count += len(loss)
        return loss.mean()

    # validation
    def validation_step(self, batch, batch_index):
        images, targets, index, _ = batch
        logits = self(images)
        loss = per_sample_loss(logits, targets)
        self._val_rows.append(torch.cat([index[:, None].double(), loss[:, None].double(),
                                         positive_probability(logits).double(),
                                         targets.double()], dim=1))

    def _gathered_validation(self) -> np.ndarray:
        local = (torch.cat(self._val_rows) if self._val_rows
                 else torch.zeros((0, 2 + 2 * len(LABELS)), dtype=torch.float64, device=self.device))
        self._val_rows = []
        rows = self.all_gather(local).reshape(-1, local.shape[1]).cpu().numpy()
        _, first = np.unique(rows[:, 0], return_index=True)  # drop DDP padding duplicates
        return rows[first]

    def on_validation_epoch_end(self) -> None:
        rows = self._gathered_validation()
        scores, targets = rows[:, 2:2 + len(LABELS)], rows[:, 2 + len(LABELS):]
        if not np.isfinite(rows[:, 1:]).all():
            raise MrRobustError(f"training diverged by epoch {self.current_epoch} (non-finite "
                                f"outputs); lower --lr or use --precision 32")
        aucs = label_aucs(targets, scores)
        if not np.isfinite(aucs).any():  # `_check_splits` prevents it; never stop silently
            raise MrRobustError(f"validation AUC is undefined for every label in epoch "
                                f"{self.current_epoch} ({len(targets)} validated slices); "
                                f"raise --limit-val-batches or --batch-size")
        mean_auc = float(np.nanmean(aucs))
        strategy = self.trainer.strategy
        train_sum = float(strategy.reduce(self._loss_sum.clone(), reduce_op="sum"))
        train_count = float(strategy.reduce(self._loss_count.clone(), reduce_op="sum"))
        row = {"epoch": self.current_epoch,
               "train_loss": train_sum / train_count if train_count else math.nan,
               "val_loss": float(rows[:, 1].mean()),
               **{f"val_auc_{l}": float(a) for l, a in zip(LABELS, aucs)}, MONITOR: mean_auc}
        for key in ("train_loss", "val_loss", MONITOR):
            self.log(key, row[key], sync_dist=False)  # already global on every rank
        self.validation = {"row": row, "targets": targets, "scores": scores}

    def configure_optimizers(self):
        training = self.config["training"]
        return torch.optim.AdamW(self.net.parameters(), lr=training["lr"],
                                 weight_decay=training["weight_decay"],
                                 fused=self.device.type == "cuda")


# ---- the RUN writer ------------------------------------------------------------------------


def _checkpoint_base():
    from lightning.pytorch.callbacks import Checkpoint

    return Checkpoint


class RunWriter(_checkpoint_base()):
    """Writes the RUN folder: after each validation, metrics.csv and (when the mean AUC
    improves) model.safetensors and operating_points.json; after each training epoch
    (after early stopping has decided: Lightning runs checkpoint callbacks last),
    checkpoints/last.ckpt. Files are written on global rank 0, each atomically.

    Its state (history, best epoch, epochs done, stopped early) travels in the checkpoint,
    so a resumed run continues the same files and a finished run is recognised.
    """

    def __init__(self, run_dir: Path, config: dict):
        self.run_dir, self.config = Path(run_dir), config
        self.history: list[dict] = []
        self.best_auc, self.best_epoch = -math.inf, -1
        self.epochs, self.stopped_early = 0, False

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINTS / LAST_CHECKPOINT

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or module.validation is None:
            return
        row, epoch = module.validation["row"], trainer.current_epoch
        self.history = [r for r in self.history if r["epoch"] < epoch] + [row]
        improved = row[MONITOR] > self.best_auc
        if improved:
            self.best_auc, self.best_epoch = row[MONITOR], epoch
        if trainer.is_global_zero:
            _write_text(self.run_dir / METRICS_FILE, metrics_csv(self.history))
            if improved:
                save(module.net, self.config, self.run_dir)
                points = operating_points(module.validation["targets"],
                                          module.validation["scores"], epoch)
                _write_text(self.run_dir / OPERATING_POINTS_FILE,
                            json.dumps(points, indent=2) + "\n")
        module.validation = None

    def on_train_epoch_end(self, trainer, module) -> None:
        self.epochs = trainer.current_epoch + 1
        self.stopped_early = bool(trainer.should_stop)  # set by EarlyStopping just before
        temp = self.checkpoint.with_name(f".{LAST_CHECKPOINT}.tmp")
        trainer.save_checkpoint(temp, weights_only=False)  # every rank; rank 0 writes
        if trainer.is_global_zero:
            os.replace(temp, self.checkpoint)
        trainer.strategy.barrier("RunWriter.checkpoint")

    def summary(self) -> dict:
        return {"run": str(self.run_dir), "epochs": len(self.history),
                "best_epoch": self.best_epoch, "best_val_auc_mean": self.best_auc,
                "stopped_early": self.stopped_early}

    def state_dict(self) -> dict:
        return {"history": self.history, "best_auc": self.best_auc,
                "best_epoch": self.best_epoch, "epochs": self.epochs,
                "stopped_early": self.stopped_early}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best_auc, self.best_epoch = (
            state["history"], state["best_auc"], state["best_epoch"])
        self.epochs, self.stopped_early = state["epochs"], state["stopped_early"]


def _read_run_state(checkpoint: Path) -> dict:
    """The `RunWriter` state stored in a resume checkpoint."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        return state["callbacks"][RunWriter.__qualname__]
    except Exception as err:  # a truncated or foreign file: say which, never a traceback
        raise MrRobustError(f"{checkpoint} is not a readable mrrobust checkpoint "
                            f"({type(err).__name__}); delete {checkpoint.parent} to start "
                            f"the run over") from None


# ---- checks before anything is written (every rank) ----------------------------------------


def _launch_rank(devices: int) -> int:
    """This process's global rank from the launcher's environment (before DDP is set up)."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    return int(os.environ.get("NODE_RANK", 0)) * devices + int(os.environ.get("LOCAL_RANK", 0))


def _resolve_devices(accelerator: str, precision: str, devices: int, num_nodes: int,
                     compile: bool) -> tuple[str, str]:
    """(accelerator, precision) with `auto` resolved; an impossible combination is refused."""
    if precision not in PRECISIONS:
        raise MrRobustError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if devices < 1 or num_nodes < 1:
        raise MrRobustError(f"--devices ({devices}) and --num-nodes ({num_nodes}) must be >= 1")
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator not in ("cpu", "gpu"):
        raise MrRobustError(f"--accelerator {accelerator!r} is not one of auto, cpu, gpu")
    if accelerator == "gpu" and devices > torch.cuda.device_count():
        raise MrRobustError(f"--devices {devices} asks for more GPUs than the "
                            f"{torch.cuda.device_count()} visible here; lower --devices "
                            f"or use --accelerator cpu")
    if precision == "auto":
        precision = ("bf16-mixed" if accelerator == "gpu" and torch.cuda.is_bf16_supported()
                     else "32")
    if accelerator == "cpu" and precision == "16-mixed":
        raise MrRobustError("--precision 16-mixed needs a GPU; use bf16-mixed or 32 on the CPU")
    if accelerator == "cpu" and compile:
        # torch.compile's CPU backward of this network crashes the process (segfault, torch
        # 2.13 CPU build), so the combination is refused rather than left to kill the run
        raise MrRobustError("--compile is for GPUs (torch.compile's CPU backward crashes on "
                            "this network); drop --compile on the CPU")
    return accelerator, precision


def _check_numbers(lr: float, weight_decay: float, batch_size: int, max_epochs: int,
                   patience: int, seed: int, workers: int, limits: dict) -> None:
    if not (math.isfinite(lr) and lr > 0):
        raise MrRobustError(f"--lr {lr} must be a positive finite number (the study: 1e-5)")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise MrRobustError(f"--weight-decay {weight_decay} must be a finite number >= 0")
    for flag, value in (("--batch-size", batch_size), ("--max-epochs", max_epochs),
                        ("--patience", patience)):
        if value < 1:
            raise MrRobustError(f"{flag} {value} must be >= 1")
    if workers < 0:
        raise MrRobustError(f"--workers {workers} must be >= 0")
    if not 0 <= seed < 2**32:
        raise MrRobustError(f"--seed {seed} must be in 0..{2**32 - 1}")
    for flag, value in limits.items():
        if value is not None and value < 1:
            raise MrRobustError(f"{flag} {value} must be >= 1 batch")


def validated_slices(size: int, batch_size: int, limit_val_batches: int | None,
                     world: int) -> int:
    """How many of the `size` validation slices an epoch validates: every rank takes at most
    `limit_val_batches` batches of its `ShardSampler` shard, so together the first
    `limit * batch_size * world` slices in order (all of them without a limit)."""
    return size if limit_val_batches is None else min(size, limit_val_batches * batch_size * world)


def _check_splits(data: Path, train_set, val_set, rank: int, validated: int) -> None:
    """Empty splits and undefined validation AUCs raise (every rank); warnings on rank 0.
    The AUCs are judged on the `validated` first slices of the val split, the ones each
    epoch validates (`validated_slices`)."""
    for name, dataset in (("train", train_set), ("val", val_set)):
        if len(dataset) == 0:
            raise MrRobustError(f"{data}: the {name} split has no slices; prepare the STORE "
                                f"from more volumes")
    limited = validated < len(val_set)
    targets = val_set.targets[:validated]
    positives, count = targets.sum(0), len(targets)
    undefined = [f"{label} ({'no positives' if p == 0 else 'no negatives'})"
                 for label, p in zip(LABELS, positives) if p == 0 or p == count]
    where = (f"the {validated} validated slices (--limit-val-batches x --batch-size)"
             if limited else "validation")
    if len(undefined) == len(LABELS):
        remedy = ("raise --limit-val-batches or --batch-size" if limited
                  else "prepare the STORE from more volumes")
        raise MrRobustError(f"{data}: AUC is undefined for every label on {where} "
                            f"({', '.join(undefined)}); {remedy}")
    if rank != 0:
        return
    if undefined:
        log.warning(f"{data}: AUC undefined on {where} for {', '.join(undefined)}; "
                    f"left empty in metrics.csv, the mean AUC uses the other labels")
    unlearnable = [label for label, p in zip(LABELS, train_set.targets.sum(0)) if p == 0]
    if unlearnable:
        log.warning(f"{data}: no positive training slices for {', '.join(unlearnable)}; "
                    f"the model cannot learn {'it' if len(unlearnable) == 1 else 'them'}")


def _changed_settings(old: dict, new: dict) -> list[str]:
    changes = []
    for section in ("model", "training", "store"):
        previous = old.get(section) or {}  # a model-only config has no training/store section
        for key in sorted(set(previous) | set(new[section])):
            before, after = previous.get(key), new[section].get(key)
            if before != after and key not in RESUMABLE_CHANGES and key != "path":
                changes.append(f"{key} {before!r} -> {after!r}")
    return changes


def _run_dir_state(out: Path, config: dict, resume: bool) -> tuple[str, dict | None]:
    """What to do with RUN folder `out` (module docstring): ("fresh" | "restart" |
    "resume" | "finished", the checkpoint's RunWriter state). Reads only, so every rank
    may ask, before or after rank 0 has written this run's config.json."""
    checkpoint = out / CHECKPOINTS / LAST_CHECKPOINT
    if out.exists() and not out.is_dir():
        raise MrRobustError(f"--out {out} is a file; choose a folder")
    if not (out / CONFIG_FILE).is_file():
        if resume:
            raise MrRobustError(f"--resume: no checkpoint {checkpoint}; start the run "
                                f"without --resume")
        if out.exists() and any(out.iterdir()):
            raise MrRobustError(f"{out} already exists, is not empty and holds no RUN "
                                f"(no {CONFIG_FILE}); choose another --out")
        return "fresh", None
    changes = _changed_settings(read_config(out), config)
    if changes:
        raise MrRobustError(f"{out} holds a run trained with other settings "
                            f"({'; '.join(changes)}); use the same flags or train into "
                            f"another --out")
    if not checkpoint.is_file():
        return "restart", None  # it died before its first epoch ended: start over
    state = _read_run_state(checkpoint)
    max_epochs = config["training"]["max_epochs"]
    finished = state["stopped_early"] or state["epochs"] >= max_epochs
    if not resume:
        what = ("a finished run" if finished
                else f"an unfinished run ({state['epochs']} of {max_epochs} epochs)")
        raise MrRobustError(f"{out} already holds {what}; "
                            f"{'show it' if finished else 'continue it'} with --resume or "
                            f"choose another --out")
    return ("finished" if finished else "resume"), state


def _start_over(out: Path) -> None:
    """Remove what a run that died in its first epoch left (rank 0, before training)."""
    for name in (METRICS_FILE, WEIGHTS_FILE, OPERATING_POINTS_FILE):
        (out / name).unlink(missing_ok=True)
    for name in (CHECKPOINTS, TENSORBOARD):
        shutil.rmtree(out / name, ignore_errors=True)


# ---- setup ---------------------------------------------------------------------------------


def _make_augment(augment: str | None):
    if not augment:
        return None
    from mrrobust.artifacts.augment import RandomArtifacts

    return RandomArtifacts(augment)


class _DropTips(logging.Filter):
    """Lightning's advertising lines ("Tip: ... litlogger / litmodels") and its Ctrl-C notice."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()  # and the shutdown notice: the CLI prints its own line
        return "Tip:" not in message and "Detected KeyboardInterrupt" not in message


def _configure_lightning_logging(quiet: bool) -> None:
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTips())
    if quiet:
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _loggers(out: Path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(out), name=TENSORBOARD, version="")
    return False


def _display_callbacks(quiet: bool, name: str) -> list:
    """Progress bar on stderr (stdout keeps the one summary line) and the model summary,
    both only without --quiet; one plain line per epoch on stdout when it is not a terminal
    (a log file or a cluster job), quiet or not."""
    from mrrobust.progress import EpochLines, logging_to_file

    lines = [EpochLines(name)] if logging_to_file() else []
    if quiet:
        return lines
    from lightning.pytorch.callbacks import ModelSummary, RichProgressBar

    return [RichProgressBar(console_kwargs={"stderr": True}), ModelSummary(), *lines]


def _plan(data: Path, norm: str, *, depth: int = 18, width: int = 64, groups: int = 32,
          lr: float = 1e-5, weight_decay: float = 1e-4, batch_size: int = 32, max_epochs: int = 200,
          patience: int = 5, seed: int = 0, weighted_sampler: bool = True, augment: str | None = None,
          precision: str = "auto", compile: bool = False, accelerator: str = "auto", devices: int = 1,
          num_nodes: int = 1, workers: int = 2, limit_train_batches: int | None = None,
          limit_val_batches: int | None = None):
    """Every check `train` makes before writing, and the RUN config it would write:
    (config, train_set, val_set, augmentation, launch rank). Reads the STORE, writes nothing."""
    from mrrobust.data.store import SliceDataset, read_manifest

    data = Path(data)
    accelerator, precision = _resolve_devices(accelerator, precision, devices, num_nodes,
                                              compile)
    _check_numbers(lr, weight_decay, batch_size, max_epochs, patience, seed, workers,
                   {"--limit-train-batches": limit_train_batches,
                    "--limit-val-batches": limit_val_batches})
    manifest = read_manifest(data)
    model = model_config(depth=depth, width=width, norm=norm, groups=groups)
    build(model)  # a bad norm/groups/depth or a model too large fails here, before anything is written
    augmentation = _make_augment(augment)  # likewise a bad --augment spec
    rank = _launch_rank(devices)
    train_set = SliceDataset(data, "train", kind="complex" if augment else "magnitude")
    val_set = SliceDataset(data, "val")
    _check_splits(data, train_set, val_set, rank,
                  validated_slices(len(val_set), batch_size, limit_val_batches,
                                   devices * num_nodes))
    config = {
        "model": model,
        "training": {"lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
                     "max_epochs": max_epochs, "patience": patience, "seed": seed,
                     "weighted_sampler": weighted_sampler, "augment": augment or None,
                     "precision": precision, "compile": compile, "accelerator": accelerator,
                     "devices": devices, "num_nodes": num_nodes, "workers": workers,
                     "limit_train_batches": limit_train_batches,
                     "limit_val_batches": limit_val_batches, "monitor": MONITOR},
        "store": {"path": str(data.resolve()), "scale": manifest["scale"],
                  "crop": manifest["crop"], "version": manifest["version"],
                  "train_slices": len(train_set), "val_slices": len(val_set)},
    }
    return config, train_set, val_set, augmentation, rank


def planned_config(data, norm: str = "batch", **options) -> dict:
    """The RUN config `train(data, out, norm, **options)` would write (same checks, writes
    nothing); `options` are `train`'s keywords except out, resume and quiet."""
    return _plan(Path(data), norm, **options)[0]


def run_status(out: Path, config: dict) -> dict:
    """What RUN folder `out` holds against the planned `config` (reads only):
    {"state": "new" | "restart" | "resume" | "finished" | "differs", "epochs": done,
    "changes": [setting old -> new]}. "differs" also covers a finished run that the new
    --max-epochs would train further (its weights would change)."""
    out = Path(out)
    if not (out / CONFIG_FILE).is_file():
        foreign = out.exists() and (not out.is_dir() or any(out.iterdir()))
        return {"state": "differs" if foreign else "new", "epochs": 0,
                "changes": [f"{out} is not empty and holds no {CONFIG_FILE}"] if foreign else []}
    old = read_config(out)
    changes = _changed_settings(old, config)
    checkpoint = out / CHECKPOINTS / LAST_CHECKPOINT
    if changes:
        return {"state": "differs", "epochs": 0, "changes": changes}
    if not checkpoint.is_file():
        return {"state": "restart", "epochs": 0, "changes": []}
    saved = _read_run_state(checkpoint)
    after = config["training"]["max_epochs"]
    before = (old.get("training") or {}).get("max_epochs", after)
    done_before = saved["stopped_early"] or saved["epochs"] >= before
    if done_before and not saved["stopped_early"] and after > before:
        return {"state": "differs", "epochs": saved["epochs"],
                "changes": [f"max_epochs {before} -> {after} (the finished run would train further)"]}
    finished = saved["stopped_early"] or saved["epochs"] >= after
    return {"state": "finished" if finished else "resume", "epochs": saved["epochs"], "changes": []}


def train(data, out, norm: str = "batch", *, depth: int = 18, width: int = 64,
          groups: int = 32, lr: float = 1e-5, weight_decay: float = 1e-4,
          batch_size: int = 32, max_epochs: int = 200, patience: int = 5, seed: int = 0,
          weighted_sampler: bool = True, augment: str | None = None, precision: str = "auto",
          compile: bool = False, accelerator: str = "auto", devices: int = 1,
          num_nodes: int = 1, workers: int = 2, limit_train_batches: int | None = None,
          limit_val_batches: int | None = None, resume: bool = False,
          quiet: bool = False) -> dict | None:
    """Train one classifier on STORE `data` into RUN folder `out` (module docstring).

    `precision="auto"`: bf16-mixed on a GPU, 32 on the CPU; GPUs also use channels-last.
    Returns a summary dict on global rank 0 (`run, epochs, best_epoch, best_val_auc_mean,
    stopped_early`) and None on the other DDP ranks. Every check runs on every rank before
    anything is written; only global rank 0 writes.
    """
    from mrrobust.data.store import sampler_weights

    data, out = Path(data), Path(out)
    config, train_set, val_set, augmentation, rank = _plan(
        data, norm, depth=depth, width=width, groups=groups, lr=lr, weight_decay=weight_decay,
        batch_size=batch_size, max_epochs=max_epochs, patience=patience, seed=seed,
        weighted_sampler=weighted_sampler, augment=augment, precision=precision, compile=compile,
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, workers=workers,
        limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches)
    _configure_lightning_logging(quiet)
    accelerator = config["training"]["accelerator"]
    precision = config["training"]["precision"]
    state, saved = _run_dir_state(out, config, resume)
    writer = RunWriter(out, config)
    if state == "finished":
        writer.load_state_dict(saved)
        return writer.summary() if rank == 0 else None
    if rank == 0:
        if state == "restart":
            log.info(f"{out}: no checkpoint of this run; starting it over")
            _start_over(out)
        write_config(config, out)

    pl = _lightning()
    from lightning.pytorch.callbacks import EarlyStopping

    pl.seed_everything(seed, workers=True, verbose=False)
    weights = torch.from_numpy(sampler_weights(train_set.targets)) if weighted_sampler else None
    loader = dict(batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0,
                  pin_memory=accelerator == "gpu")
    train_loader = DataLoader(SeededSlices(train_set, seed),
                              sampler=EpochSampler(len(train_set), seed, weights), **loader)
    val_loader = DataLoader(SeededSlices(val_set, seed), sampler=ShardSampler(len(val_set)),
                            **loader)
    module = Classifier(config, augment=augmentation, channels_last=accelerator == "gpu")
    distributed = devices * num_nodes > 1
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes,
        strategy="ddp" if distributed else "auto", precision=precision,
        sync_batchnorm=distributed and accelerator == "gpu",  # converts batch norm layers only
        max_epochs=max_epochs, deterministic=accelerator == "cpu",
        benchmark=accelerator == "gpu", num_sanity_val_steps=0, use_distributed_sampler=False,
        limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
        callbacks=[EarlyStopping(monitor=MONITOR, mode="max", patience=patience,
                                 check_finite=True), writer,  # NaN raises in the module
                   *_display_callbacks(quiet, Path(out).name)],
        logger=_loggers(out), enable_progress_bar=not quiet, enable_model_summary=False,
        default_root_dir=out, log_every_n_steps=1)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
            warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")  # Lightning internals
            trainer.fit(module, train_loader, val_loader,
                        ckpt_path=writer.checkpoint if state == "resume" else None,
                        weights_only=True)
    except SystemExit:
        # Lightning turns Ctrl-C into sys.exit(1) after its shutdown; give it back as
        # KeyboardInterrupt (the RUN resumes from its last finished epoch)
        if not trainer.interrupted:
            raise
        raise KeyboardInterrupt from None
    finally:
        if sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT from its shutdown on
    return writer.summary() if trainer.is_global_zero else None
