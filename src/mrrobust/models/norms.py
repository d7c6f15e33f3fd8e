"""The one place a normalisation layer is chosen: `make_norm(kind, channels, groups)`.

Blocks receive a norm factory and never branch on its kind. Kinds (REFERENCE s.1):

- `batch`: `nn.BatchNorm2d` (running statistics; becomes SyncBatchNorm under multi-GPU DDP).
- `group`: group norm with `groups` groups (the study: 32).
- `layer`: group norm with one group (the study's layer norm: statistics over C, H, W).
- `instance`: group norm with one group per channel.
- `none`: identity.

Group, layer and instance norm share one module, `GroupNorm`, whose parameters
(`weight`, `bias`, shape `(C,)`) match `nn.GroupNorm`, so every implementation below
loads the same weights. The implementation is an internal switch (`GROUP_NORM_IMPLS`)
so one GPU run of `benchmarks/train.py` can compare them:

- `native`: `F.group_norm` (the ATen kernel; under autocast it returns float32).
- `sums`: per-channel mean and variance over (H, W) in float32 (`var_mean`, a Welford
  reduction: stable at any offset, unlike E[x^2] - E[x]^2), combined exactly into group
  statistics (mean of channel means; mean of channel variances plus the variance of
  channel means), then one per-(sample, channel) `y = (x - mean) * a + b`. These are
  the same reductions batch norm does in channels-last (over the spatial axes, channel
  innermost), which torch.compile fuses into one read of x for the statistics and one
  read/write for the output; the output keeps the input's dtype.
- `grouped`: a `(B, G, C/G, H, W)` view and `var_mean` over the group in float32
  (the straightforward tensor-op formulation; a baseline for the benchmark).
- `auto` (default): `native` in eager mode, `sums` while torch.compile traces.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mrrobust.errors import MrRobustError

EPS = 1e-5


def _group_norm_native(x: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    if x.device.type == "cpu" and not x.is_contiguous():
        # the CPU kernel's channels-last path sums x and x^2 in float32 and loses the
        # variance at large offsets (torch 2.13: error 0.7 at mean/std 1e3); contiguous is exact
        x = x.contiguous()
    return F.group_norm(x, groups, weight, bias, eps)


def _group_norm_sums(x: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    b, c, h, w = x.shape
    per_group = c // groups
    xf = x.float()
    # per-channel statistics over (H, W): one stable (Welford) reduction, as batch norm does
    channel_var, channel_mean = torch.var_mean(xf, dim=(2, 3), correction=0)  # (B, C)
    channel_var = channel_var.view(b, groups, per_group)
    channel_mean = channel_mean.view(b, groups, per_group)
    # channels of a group hold equal pixel counts: the group mean is the mean of the channel
    # means, the group variance the mean channel variance plus the spread of channel means
    mean = channel_mean.mean(-1, keepdim=True)  # (B, G, 1)
    var = channel_var.mean(-1, keepdim=True) + (channel_mean - mean).square().mean(-1, keepdim=True)
    scale = torch.rsqrt(var + eps).expand(b, groups, per_group).reshape(b, c)  # (B, C)
    mean = mean.expand(b, groups, per_group).reshape(b, c)
    if weight is not None:
        scale = scale * weight.float()
    # centre before scaling: x * a + b would cancel two numbers of size |mean| * rstd
    y = (xf - mean[:, :, None, None]) * scale[:, :, None, None]
    if bias is not None:
        y = y + bias.float()[:, None, None]
    return y.to(x.dtype)


def _group_norm_grouped(x: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    b, c, h, w = x.shape
    xg = x.float().reshape(b, groups, c // groups, h, w)
    var, mean = torch.var_mean(xg, dim=(2, 3, 4), correction=0, keepdim=True)
    y = ((xg - mean) * torch.rsqrt(var + eps)).reshape(b, c, h, w)
    if weight is not None:
        y = y * weight.float()[:, None, None] + bias.float()[:, None, None]
    return y.to(x.dtype)


def _group_norm_auto(x: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return _group_norm_sums(x, groups, weight, bias, eps)
    return _group_norm_native(x, groups, weight, bias, eps)


GROUP_NORM_IMPLS: dict[str, Callable] = {
    "auto": _group_norm_auto,
    "native": _group_norm_native,
    "sums": _group_norm_sums,
    "grouped": _group_norm_grouped,
}
DEFAULT_GROUP_NORM_IMPL = "auto"


class GroupNorm(nn.Module):
    """Group norm over `(B, C, H, W)`; parameters and result as `nn.GroupNorm`.

    `impl` names an entry of `GROUP_NORM_IMPLS` (a speed choice, not a numerical one).
    """

    def __init__(self, groups: int, channels: int, impl: str = DEFAULT_GROUP_NORM_IMPL,
                 eps: float = EPS):
        super().__init__()
        if impl not in GROUP_NORM_IMPLS:
            raise MrRobustError(f"unknown group-norm implementation {impl!r}; "
                                f"choose one of {', '.join(GROUP_NORM_IMPLS)}")
        self.num_groups, self.num_channels, self.eps, self.impl = groups, channels, eps, impl
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self._fn = GROUP_NORM_IMPLS[impl]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, impl={self.impl}"


def _checked_groups(groups: int, channels: int, name: str) -> int:
    if groups < 1 or channels % groups:
        where = f" at layer {name}" if name else ""
        raise MrRobustError(
            f"--groups {groups} does not divide the {channels} channels{where}; "
            f"choose a divisor of every stage width (e.g. a power of two <= the --width)")
    return groups


NormFactory = Callable[..., nn.Module]

NORMS: dict[str, NormFactory] = {
    "batch": lambda channels, groups, name, impl: nn.BatchNorm2d(channels, eps=EPS),
    "group": lambda channels, groups, name, impl: GroupNorm(
        _checked_groups(groups, channels, name), channels, impl),
    "layer": lambda channels, groups, name, impl: GroupNorm(1, channels, impl),
    "instance": lambda channels, groups, name, impl: GroupNorm(channels, channels, impl),
    "none": lambda channels, groups, name, impl: nn.Identity(),
}


def make_norm(kind: str, channels: int, groups: int = 32, *, name: str = "",
              impl: str = DEFAULT_GROUP_NORM_IMPL) -> nn.Module:
    """A norm layer for `(B, channels, H, W)` inputs. `name` labels errors (the layer path)."""
    if kind not in NORMS:
        raise MrRobustError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")
    return NORMS[kind](channels, groups, name, impl)


def memory_format(kind: str, impl: str = DEFAULT_GROUP_NORM_IMPL) -> torch.memory_format:
    """The faster GPU memory format for a norm: channels-last except the native group-norm
    kernel, which copies channels-last input to contiguous (REFERENCE s.6: GN contiguous
    compiled 705 vs channels-last 583 images/s)."""
    native_group = kind in ("group", "layer", "instance") and impl == "native"
    return torch.contiguous_format if native_group else torch.channels_last
