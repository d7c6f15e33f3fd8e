"""Test-time adaptation of batch norm beside AdaBN (`analysis.adapt_batch_norm`):

- BN-adapt with a prior (Schneider et al. 2020, "Improving robustness against common corruptions
  by covariate shift adaptation"): each test batch of n samples is normalised with the mixture
  N/(N+n) * (the trained running statistics) + n/(N+n) * (the batch's own statistics), N the
  prior strength. N = 0 is pure test-batch statistics, N -> infinity the trained network.
  Statistics are per evaluation batch, so the results depend on --batch-size (recorded).
- TENT (Wang et al. 2021, "Tent: fully test-time adaptation by entropy minimization"): batch norm
  normalises with test-batch statistics and only its affine parameters (weight, bias) are
  trained, by minimising the entropy of the predictions; here the binary entropy of each label's
  two-way softmax, averaged over labels and slices, with Adam (lr 1e-3, as TENT's CIFAR setting),
  one update per batch, each batch predicted by the forward pass that computes its update (as the
  reference implementation does). Episodic per cell: every cell starts from the trained weights.

Modes (`BN_MODES`): `eval` (the trained network), `adapt` (AdaBN), `prior`, `tent`; a model
without batch norm has `eval` only.
"""

from __future__ import annotations

import copy
from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mrrobust.analysis import batch_norm_layers

BN_MODES = ("eval", "adapt", "prior", "tent")
DEFAULT_PRIOR = 16.0  # Schneider et al. 2020 found N of about 16 good for small test batches
TENT_LR = 1e-3
TENT_STEPS = 1


class PriorBatchNorm(nn.Module):
    """A batch-norm layer that normalises each batch `(B, C, ...)` with
    w * running + (1 - w) * batch statistics per channel, w = prior / (prior + B), the batch
    variance over all B * H * W values without Bessel's correction (what batch norm normalises
    with in training, so prior 0 is the train-mode forward), then applies the affine map."""

    def __init__(self, norm: _BatchNorm, prior: float):
        super().__init__()
        self.norm, self.prior = norm, float(prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        dims = [0, *range(2, x.ndim)]
        var, mean = torch.var_mean(x.float(), dim=dims, correction=0)
        weight = self.prior / (self.prior + x.shape[0])
        mixed_mean = weight * norm.running_mean.float() + (1.0 - weight) * mean
        mixed_var = weight * norm.running_var.float() + (1.0 - weight) * var
        shape = (1, -1) + (1,) * (x.ndim - 2)
        out = (x.float() - mixed_mean.view(shape)) * torch.rsqrt(mixed_var.view(shape) + norm.eps)
        if norm.weight is not None:
            out = out * norm.weight.view(shape) + norm.bias.view(shape)
        return out.to(x.dtype)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def prior_batch_norm(model: nn.Module, prior: float = DEFAULT_PRIOR) -> nn.Module:
    """An eval-mode copy of `model` whose batch-norm layers (with running statistics) become
    `PriorBatchNorm(prior)`; `model` is untouched. `prior` >= 0."""
    if not prior >= 0:
        raise ValueError(f"prior {prior} must be >= 0")
    adapted = copy.deepcopy(model).eval()
    for name, module in batch_norm_layers(adapted):
        if module.track_running_stats and module.running_mean is not None:
            _replace(adapted, name, PriorBatchNorm(module, prior))
    return adapted


def binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the two-way softmax of logits `(B, L, 2)` over slices and labels."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1).mean()


def tent_predict(model: nn.Module, batches: Iterable[torch.Tensor], lr: float = TENT_LR,
                 steps: int = TENT_STEPS, autocast=None) -> np.ndarray:
    """TENT over `batches` (model inputs `(B, 1, H, W)`, in order) from a copy of `model`:
    positive probabilities float32 `(N, L)`. Batch norm runs on batch statistics; only its
    weight and bias are trained (Adam, `lr`), `steps` updates per batch, each batch's prediction
    taken from the forward pass of its last update. `autocast`: a context-manager factory for
    the forward (None: none). `model` is untouched. `Tent` is the same one batch at a time."""
    tent = Tent(model, lr, steps, autocast)
    predictions = [tent.step(batch) for batch in batches]
    return torch.cat(predictions).float().cpu().numpy()


class Tent:
    """TENT (`tent_predict`) fed batch by batch, in order: `step(batch)` updates the copy's
    batch-norm affine parameters on `batch` `(B, 1, H, W)` and returns its positive
    probabilities `(B, L)` (on the device, detached). Runs eagerly: its backward and optimizer
    step are not compiled."""

    def __init__(self, model: nn.Module, lr: float = TENT_LR, steps: int = TENT_STEPS,
                 autocast=None):
        from contextlib import nullcontext

        adapted = copy.deepcopy(model).eval()
        for parameter in adapted.parameters():
            parameter.requires_grad_(False)
        parameters = []
        for _, module in batch_norm_layers(adapted):
            module.train()
            module.track_running_stats = False  # normalise with batch statistics only
            module.running_mean = module.running_var = None
            for parameter in (module.weight, module.bias):
                if parameter is not None:
                    parameter.requires_grad_(True)
                    parameters.append(parameter)
        self.adapted, self.steps = adapted, steps
        self.optimizer = torch.optim.Adam(parameters, lr=lr, betas=(0.9, 0.999)) if parameters else None
        self.device = next(adapted.parameters()).device
        self.context = autocast or nullcontext

    def step(self, batch: torch.Tensor) -> torch.Tensor:
        from mrrobust.models import positive_probability

        batch = batch.to(self.device)
        with torch.enable_grad():
            for _ in range(max(1, self.steps)):
                with self.context():
                    logits = self.adapted(batch)
                if self.optimizer is not None:
                    loss = binary_entropy(logits)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
        return positive_probability(logits.detach())
