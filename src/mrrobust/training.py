"""Train one classifier on a STORE and write a RUN (DESIGN: the RUN contract).

`train(data, out, norm, ...)` sets up Lightning around the plain-torch network of
`mrrobust.models`. The study's defaults (REFERENCE s.1): AdamW, lr 1e-5, weight decay 1e-4,
batch 32, the weighted sampler, sum of the four cross-entropies, early stopping (patience
5) and the best epoch on mean validation AUC over the labels.

RUN folder:
  config.json            model section (rebuilds the net), training flags, store scale
  model.safetensors      the best epoch's weights (rewritten each time the mean AUC improves)
  operating_points.json  per-label operating points of that epoch on the clean validation set
  metrics.csv            one row per epoch: train/val loss, per-label and mean validation AUC
  checkpoints/last.ckpt  Lightning's own resume state (a pickle inside; only `--resume` reads
                         it, with weights_only=True). Nothing else in a RUN is a pickle.

Reproducibility: every draw comes from generators seeded by `seed` (per-epoch sampler
generators, per-slice augmentation seeds), so an epoch does not depend on how the run got
there: the same command gives the same metrics.csv on the CPU, and a resumed run ends
where an uninterrupted one would.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from mrrobust.errors import MrRobustError
from mrrobust.metrics import label_aucs, operating_point
from mrrobust.models import (
    LABELS, build, model_config, read_config, save, write_config, memory_format)

log = logging.getLogger("mrrobust.training")

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
METRICS_FILE = "metrics.csv"
OPERATING_POINTS_FILE = "operating_points.json"
MONITOR = "val_auc_mean"
# settings a resumed run may change without changing the numbers of the epochs it replays
RESUMABLE_CHANGES = frozenset({"max_epochs", "workers", "quiet"})


# ---- sampling ------------------------------------------------------------------------------


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochSampler(Sampler[int]):
    """Training indices for one epoch from a generator seeded by `(seed, epoch)`.

    `weights` `(N,)` draws N indices with replacement in proportion to them (the study's
    sampler); `None` draws a permutation. Under DDP each rank takes every world-th index
    (the draw padded by wrap-around to a multiple of the world size), so together the
    ranks see the single-process epoch. The trainer calls `set_epoch` before each epoch.
    """

    def __init__(self, size: int, seed: int, weights: torch.Tensor | None = None):
        self.size, self.seed, self.weights, self.epoch = size, seed, weights, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_indices(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is None:
            return torch.randperm(self.size, generator=generator)
        return torch.multinomial(self.weights, self.size, replacement=True, generator=generator)

    def __iter__(self):
        rank, world = _rank_and_world()
        indices = self._epoch_indices()
        padded = -len(indices) % world
        indices = torch.cat([indices, indices[:padded]])
        return iter(indices[rank::world].tolist())

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


class Indexed(Dataset):
    """`SliceDataset` items `(image, target, slice_id)` -> `(image, target, index)`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, target, _ = self.dataset[i]
        return image, target, i


# ---- the LightningModule: step logic only -------------------------------------------------


def _lightning():
    import lightning.pytorch as pl

    return pl


def per_sample_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over labels of the 2-way cross-entropy: logits `(B, L, 2)`, targets `(B, L)` -> `(B,)`."""
    b, labels, _ = logits.shape
    losses = F.cross_entropy(logits.float().reshape(b * labels, 2),
                             targets.reshape(-1).long(), reduction="none")
    return losses.view(b, labels).sum(1)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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


class Classifier(_lightning().LightningModule):
    """Step logic around the plain network `self.net` (built from `config`).

    On every validation epoch end (all ranks, predictions gathered) it appends a
    metrics row; on rank 0 it rewrites metrics.csv and, when the mean AUC improves, the
    RUN's model.safetensors and operating_points.json. Its history and best score travel
    in the Lightning checkpoint, so a resumed run continues the same files.
    """

    def __init__(self, config: dict, run_dir: Path, augment=None, channels_last: bool = False):
        super().__init__()
        self.config, self.run_dir, self.augment = config, Path(run_dir), augment
        self.net = build(config)
        spec = config["model"]
        self.memory_format = (memory_format(spec["norm"], spec["group_norm_impl"])
                              if channels_last else torch.contiguous_format)
        self.net.to(memory_format=self.memory_format)
        compiled = torch.compile(self.net) if config["training"]["compile"] else self.net
        object.__setattr__(self, "forward_net", compiled)  # not a second registered submodule
        self.history: list[dict] = []
        self.best_auc, self.best_epoch = -math.inf, -1
        self._val_rows: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_net(images.contiguous(memory_format=self.memory_format))

    # training
    def on_train_epoch_start(self) -> None:
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._loss_count = torch.zeros((), dtype=torch.float64, device=self.device)

    def _train_inputs(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.augment is None:
            return images
        seed = self.config["training"]["seed"]
        slice_ids = self.trainer.train_dataloader.dataset.dataset.slice_ids
        from mrrobust.data.store import slice_seed

        seeds = torch.tensor([slice_seed(slice_ids[i], seed * 1_000_003 + self.current_epoch)
                              for i in index.tolist()], dtype=torch.int64)
        return self.augment(images, seeds).unsqueeze(1)

    def training_step(self, batch, batch_index):
        images, targets, index = batch
        loss = per_sample_loss(self(self._train_inputs(images, index)), targets)
        self._loss_sum += loss.detach().double().sum()
        self._loss_count += len(loss)
        return loss.mean()

    # validation
    def validation_step(self, batch, batch_index):
        images, targets, index = batch
        logits = self(images)
        scores = torch.softmax(logits.float(), dim=-1)[..., 1]
        loss = per_sample_loss(logits, targets)
        self._val_rows.append(torch.cat([index[:, None].double(), loss[:, None].double(),
                                         scores.double(), targets.double()], dim=1))

    def _gathered_validation(self) -> np.ndarray:
        local = (torch.cat(self._val_rows) if self._val_rows
                 else torch.zeros((0, 2 + 2 * len(LABELS)), dtype=torch.float64, device=self.device))
        self._val_rows = []
        rows = self.all_gather(local).reshape(-1, local.shape[1]).cpu().numpy()
        _, first = np.unique(rows[:, 0], return_index=True)  # drop DDP padding duplicates
        return rows[first]

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._val_rows = []
            return
        rows = self._gathered_validation()
        scores, targets = rows[:, 2:2 + len(LABELS)], rows[:, 2 + len(LABELS):]
        if not np.isfinite(rows[:, 1:]).all():
            raise MrRobustError(f"training diverged by epoch {self.current_epoch} (non-finite "
                                f"outputs); lower --lr or use --precision 32")
        aucs = label_aucs(targets, scores)
        mean_auc = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else math.nan
        strategy = self.trainer.strategy
        train_sum = float(strategy.reduce(self._loss_sum.clone(), reduce_op="sum"))
        train_count = float(strategy.reduce(self._loss_count.clone(), reduce_op="sum"))
        row = {"epoch": self.current_epoch,
               "train_loss": train_sum / train_count if train_count else math.nan,
               "val_loss": float(rows[:, 1].mean()),
               **{f"val_auc_{l}": float(a) for l, a in zip(LABELS, aucs)}, MONITOR: mean_auc}
        self.history = [r for r in self.history if r["epoch"] < self.current_epoch] + [row]
        for key in ("train_loss", "val_loss", MONITOR):
            self.log(key, row[key], sync_dist=False)  # already global on every rank
        improved = mean_auc > self.best_auc
        if improved:
            self.best_auc, self.best_epoch = mean_auc, self.current_epoch
        if self.trainer.is_global_zero:
            _write_atomic(self.run_dir / METRICS_FILE, metrics_csv(self.history))
            if improved:
                save(self.net, self.config, self.run_dir)
                _write_atomic(self.run_dir / OPERATING_POINTS_FILE, json.dumps(
                    operating_points(targets, scores, self.current_epoch), indent=2) + "\n")

    def configure_optimizers(self):
        training = self.config["training"]
        return torch.optim.AdamW(self.net.parameters(), lr=training["lr"],
                                 weight_decay=training["weight_decay"],
                                 fused=self.device.type == "cuda")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mrrobust"] = {"history": self.history, "best_auc": self.best_auc,
                                  "best_epoch": self.best_epoch}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["mrrobust"]
        self.history, self.best_auc, self.best_epoch = (
            state["history"], state["best_auc"], state["best_epoch"])


# ---- setup ---------------------------------------------------------------------------------


def _launch_rank(devices: int) -> int:
    """This process's global rank from the launcher's environment (before DDP is set up)."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    return int(os.environ.get("NODE_RANK", 0)) * devices + int(os.environ.get("LOCAL_RANK", 0))


def _resolve_accelerator(accelerator: str, precision: str, devices: int, num_nodes: int,
                         compile: bool) -> str:
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
    if accelerator == "cpu" and precision == "16-mixed":
        raise MrRobustError("--precision 16-mixed needs a GPU; use bf16-mixed or 32 on the CPU")
    if accelerator == "cpu" and compile:
        # torch.compile's CPU backward of this network crashes the process (segfault, torch
        # 2.13 CPU build), so the combination is refused rather than left to kill the run
        raise MrRobustError("--compile is for GPUs (torch.compile's CPU backward crashes on "
                            "this network); drop --compile on the CPU")
    return accelerator


def _check_splits(data: Path, train_set, val_set) -> None:
    for name, dataset in (("train", train_set), ("val", val_set)):
        if len(dataset) == 0:
            raise MrRobustError(f"{data}: the {name} split has no slices; prepare the STORE "
                                f"from more volumes")
    positives, count = val_set.targets.sum(0), len(val_set)
    undefined = [f"{label} ({'no positives' if p == 0 else 'no negatives'})"
                 for label, p in zip(LABELS, positives) if p == 0 or p == count]
    if len(undefined) == len(LABELS):
        raise MrRobustError(f"{data}: validation AUC is undefined for every label "
                            f"({', '.join(undefined)}); prepare the STORE from more volumes")
    if undefined:
        log.warning(f"{data}: validation AUC undefined for {', '.join(undefined)}; "
                    f"left empty in metrics.csv, the mean AUC uses the other labels")


def _changed_settings(old: dict, new: dict) -> list[str]:
    changes = []
    for section in ("model", "training", "store"):
        for key in sorted(set(old.get(section, {})) | set(new[section])):
            before, after = old.get(section, {}).get(key), new[section].get(key)
            if before != after and key not in RESUMABLE_CHANGES and key != "path":
                changes.append(f"{key} {before!r} -> {after!r}")
    return changes


def _prepare_run_dir(out: Path, config: dict, resume: bool) -> None:
    """Check `out` against `resume` and write its config.json (rank 0 only)."""
    checkpoint = out / CHECKPOINTS / LAST_CHECKPOINT
    if resume:
        if not checkpoint.is_file():
            raise MrRobustError(f"--resume: no checkpoint {checkpoint}; start the run "
                                f"without --resume")
        changes = _changed_settings(read_config(out), config)
        if changes:
            raise MrRobustError(f"--resume: {out} was trained with other settings "
                                f"({'; '.join(changes)}); resume with the same flags or "
                                f"train into another --out")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MrRobustError(f"{out} already exists and is not empty; continue that run with "
                            f"--resume or choose another --out")
    write_config(config, out)


def _make_augment(augment: str | None):
    if not augment:
        return None
    from mrrobust.artifacts.augment import RandomArtifacts

    return RandomArtifacts(augment)


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _loggers(out: Path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(out), name="tensorboard", version="")
    return False


def train(data, out, norm: str = "batch", *, depth: int = 18, width: int = 64,
          groups: int = 32, lr: float = 1e-5, weight_decay: float = 1e-4,
          batch_size: int = 32, max_epochs: int = 200, patience: int = 5, seed: int = 0,
          weighted_sampler: bool = True, augment: str | None = None, precision: str = "32",
          compile: bool = False, accelerator: str = "auto", devices: int = 1,
          num_nodes: int = 1, workers: int = 2, limit_train_batches: int | None = None,
          limit_val_batches: int | None = None, resume: bool = False,
          quiet: bool = False) -> dict | None:
    """Train one classifier on STORE `data` into RUN folder `out` (module docstring).

    Returns a summary dict on global rank 0 (`run, epochs, best_epoch, best_val_auc_mean,
    stopped_early`) and None on the other DDP ranks.
    """
    from mrrobust.data.store import SliceDataset, read_manifest, weighted_sampler as sampler_of

    data, out = Path(data), Path(out)
    accelerator = _resolve_accelerator(accelerator, precision, devices, num_nodes, compile)
    if batch_size < 1 or max_epochs < 1 or patience < 1 or workers < 0:
        raise MrRobustError("--batch-size, --max-epochs and --patience must be >= 1 and "
                            "--workers >= 0")
    manifest = read_manifest(data)
    model = model_config(depth=depth, width=width, norm=norm, groups=groups)
    build(model)  # a bad norm/groups/depth fails here, before anything is written
    augmentation = _make_augment(augment)  # likewise a bad --augment spec
    rank = _launch_rank(devices)
    if quiet:
        _quiet_lightning()
    train_set = SliceDataset(data, "train", kind="complex" if augment else "magnitude")
    val_set = SliceDataset(data, "val")
    if rank == 0:
        _check_splits(data, train_set, val_set)
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
    if rank == 0:
        _prepare_run_dir(out, config, resume)
    checkpoint = out / CHECKPOINTS / LAST_CHECKPOINT
    if resume and not checkpoint.is_file():
        raise MrRobustError(f"--resume: no checkpoint {checkpoint}; start without --resume")

    pl = _lightning()
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    pl.seed_everything(seed, workers=True, verbose=False)
    weights = sampler_of(train_set).weights if weighted_sampler else None
    loader = dict(batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0,
                  pin_memory=accelerator == "gpu")
    train_loader = DataLoader(Indexed(train_set), sampler=EpochSampler(len(train_set), seed, weights),
                              **loader)
    val_loader = DataLoader(Indexed(val_set), sampler=ShardSampler(len(val_set)), **loader)
    module = Classifier(config, out, augment=augmentation,
                        channels_last=accelerator == "gpu")
    distributed = devices * num_nodes > 1
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes,
        strategy="ddp" if distributed else "auto", precision=precision,
        sync_batchnorm=distributed and norm == "batch" and accelerator == "gpu",
        max_epochs=max_epochs, deterministic=accelerator == "cpu",
        benchmark=accelerator == "gpu", num_sanity_val_steps=0, use_distributed_sampler=False,
        limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
        callbacks=[EarlyStopping(monitor=MONITOR, mode="max", patience=patience),
                   ModelCheckpoint(dirpath=out / CHECKPOINTS, save_top_k=0, save_last=True)],
        logger=_loggers(out), enable_progress_bar=not quiet, enable_model_summary=not quiet,
        default_root_dir=out, log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
        warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")  # Lightning internals
        trainer.fit(module, train_loader, val_loader,
                    ckpt_path=checkpoint if resume else None, weights_only=True)
    if not trainer.is_global_zero:
        return None
    stopper = trainer.early_stopping_callback
    return {"run": str(out), "epochs": len(module.history), "best_epoch": module.best_epoch,
            "best_val_auc_mean": module.best_auc,
            "stopped_early": bool(stopper is not None and stopper.stopped_epoch > 0)}
