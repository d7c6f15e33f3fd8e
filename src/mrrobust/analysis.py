"""Batch-norm statistics under artifacts: how far a layer's input moves from its running
statistics (`BNRecorder`), and test-time re-estimation of those statistics (AdaBN,
`adapt_batch_norm`).

Batch-norm layers are every `torch.nn.modules.batchnorm._BatchNorm` (`nn.BatchNorm2d`,
`nn.SyncBatchNorm`, ...), named as in `model.named_modules()` and numbered (`depth`) in
that order, which for `PreActResNet` is the forward order. Statistics are per channel
(dim 1) over every other axis: per batch in float32 whatever the input's dtype or memory
format (bf16, channels-last), combined across batches in float64 (Chan et al.'s pairwise
update of mean and sum of squared deviations), so they do not depend on how the data was
split into batches beyond float32 rounding. Variances use torch's running-statistics convention: unbiased, with
n = the number of values per channel (B * H * W over all batches).
"""

from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mrrobust.errors import MrRobustError

def batch_norm_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """`(name, module)` of every batch-norm layer of `model`, in `named_modules()` order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


def has_batch_norm(model: nn.Module) -> bool:
    """Whether `model` holds at least one batch-norm layer."""
    return bool(batch_norm_layers(model))


class _Moments:
    """Per-channel count, mean and sum of squared deviations (float64) of `(B, C, ...)`
    inputs, combined exactly across batches."""

    def __init__(self):
        self.count = 0
        self.mean = self.m2 = None  # (C,) float64 on the input's device

    def add(self, x: torch.Tensor) -> None:
        """Add a batch: its per-channel moments in float32 (torch's Welford reduction; 5x
        cheaper than converting the activations to float64), merged in float64."""
        x = x.detach()
        dims = [0, *range(2, x.ndim)]
        var, mean = torch.var_mean(x.float(), dim=dims, correction=0)
        count = x.numel() // x.shape[1]
        self._combine(count, mean.double(), var.double() * count)

    def _combine(self, count: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * count / total)
        self.count = total

    def var(self) -> torch.Tensor:
        """Unbiased per-channel variance `(C,)` (torch's running_var convention)."""
        return self.m2 / max(self.count - 1, 1)


class BNRecorder:
    """While active (`with BNRecorder(model) as rec:`), every batch-norm layer's input is
    added to per-channel float64 statistics; they persist after the block until `reset()`.

    `rows()` -> one dict per batch-norm layer: `layer` (module name), `depth` (0-based
    order), `channels`, `mean_shift` = mean over channels of
    |mu - running_mean| / sqrt(running_var + eps), and `var_log_ratio` = mean over channels
    of log((var + eps) / (running_var + eps)). NaN for a layer that saw no input or keeps
    no running statistics. A model without batch norm gives no rows.
    """

    def __init__(self, model: nn.Module):
        self.layers = batch_norm_layers(model)
        self._handles = []
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self._moments = {name: _Moments() for name, _ in self.layers}

    def __enter__(self) -> "BNRecorder":
        for name, module in self.layers:
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def record(module: nn.Module, args: tuple) -> None:
            self._moments[name].add(args[0])
        return record

    def statistics(self) -> dict[str, tuple[torch.Tensor, torch.Tensor] | None]:
        """Per layer name: `(mean, unbiased var)` float64 `(C,)`, or None if it saw no input."""
        return {name: None if m.mean is None else (m.mean, m.var())
                for name, m in self._moments.items()}

    def rows(self) -> list[dict]:
        statistics = self.statistics()
        rows = []
        for depth, (name, module) in enumerate(self.layers):
            shift = log_ratio = math.nan
            stats = statistics[name]
            if stats is not None and module.running_mean is not None:
                mean, var = (s.cpu() for s in stats)
                running_mean = module.running_mean.detach().double().cpu()
                running_var = module.running_var.detach().double().cpu()
                scale = torch.sqrt(running_var + module.eps)
                shift = float(((mean - running_mean).abs() / scale).mean())
                log_ratio = float(torch.log((var + module.eps) / (running_var + module.eps)).mean())
            rows.append({"layer": name, "depth": depth, "channels": module.num_features,
                         "mean_shift": shift, "var_log_ratio": log_ratio})
        return rows


def adapt_batch_norm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """AdaBN: a deep copy of `model` in eval mode whose batch-norm running statistics are
    re-estimated from `batches` (model inputs `(B, 1, H, W)`, moved to the model's device).

    One no-grad pass with only the batch-norm layers in train mode (dropout and the rest in
    eval), so each layer normalises with its batch's statistics; its running_mean and
    running_var become the cumulative mean and unbiased variance of its input over all
    samples of all batches. For one batch this is exactly torch's `momentum=None`; for
    several it is the population statistic, where torch averages per-batch means and
    variances (weighting a short last batch like a full one and dropping the spread
    between batch means). `num_batches_tracked` counts the batches.
    Everything else in the copy equals `model`, which is left untouched. A model without
    batch norm comes back as an eval-mode copy. `BatchNormAdapter` is the same fed one batch
    at a time (what `evaluate` streams).
    """
    adapter = BatchNormAdapter(model)
    for batch in batches:
        adapter.add(batch)
    return adapter.finish()


class BatchNormAdapter:
    """AdaBN (`adapt_batch_norm`) fed batch by batch: `add(batch)` for every batch of the
    (corrupted) split, then `finish()` -> the adapted eval-mode copy. `model` is untouched."""

    def __init__(self, model: nn.Module):
        self.adapted = copy.deepcopy(model).eval()
        self.layers = [(name, m) for name, m in batch_norm_layers(self.adapted) if m.track_running_stats]
        parameter = next(self.adapted.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        for _, module in self.layers:
            module.reset_running_stats()
            module.train()
        self.recorder = BNRecorder(self.adapted)
        self.seen = 0

    def add(self, batch: torch.Tensor) -> None:
        """One no-grad forward of `batch` `(B, 1, H, W)` with batch norm in train mode."""
        if not self.layers:  # nothing to estimate
            return
        with torch.no_grad(), self.recorder:
            self.adapted(batch.to(self.device, non_blocking=True))
        self.seen += 1

    def finish(self) -> nn.Module:
        """The copy with every batch-norm layer's running statistics set to those of its
        input over every batch added, in eval mode."""
        if not self.layers:
            return self.adapted
        if not self.seen:
            raise MrRobustError("adapt_batch_norm got no input batches; pass the (corrupted) "
                                "split's inputs to re-estimate the batch-norm statistics from")
        statistics = self.recorder.statistics()
        with torch.no_grad():
            for name, module in self.layers:
                if statistics[name] is not None:
                    mean, var = statistics[name]
                    module.running_mean.copy_(mean)
                    module.running_var.copy_(var)
        return self.adapted.eval()
