"""The study's pre-activation ResNet with one 2-way head per label (REFERENCE s.1).

CIFAR-style: a 3x3 stride-1 stem, no max-pool, four stages of `width * (1, 2, 4, 8)`
channels (strides 1, 2, 2, 2) of pre-activation basic blocks (norm-ReLU-conv, twice),
a `pool x pool` adaptive average pool and one `Linear(8 * width * pool**2, 2)` per label.
Depth 18 at width 64 on 1x320x320 input is the study's network (about 11.6 M parameters).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from mrrobust.errors import MrRobustError
from mrrobust.models.norms import make_norm

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STAGE_STRIDES = (1, 2, 2, 2)
STAGE_WIDTHS = (1, 2, 4, 8)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """norm-ReLU-conv3x3-norm-ReLU-conv3x3 plus identity (or a 1x1 projection of the
    pre-activated input when the stride or width changes). `norm(channels, name)`."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Callable[[int, str], nn.Module],
                 name: str):
        super().__init__()
        self.norm1 = norm(cin, f"{name}.norm1")
        self.conv1 = _conv3x3(cin, cout, stride)
        self.norm2 = norm(cout, f"{name}.norm2")
        self.conv2 = _conv3x3(cout, cout)
        self.relu = nn.ReLU(inplace=True)
        projects = stride != 1 or cin != cout
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if projects else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu(self.norm2(out)))
        return out + skip


class PreActResNet(nn.Module):
    """`(B, in_channels, H, W)` float -> logits `(B, len(labels), 2)` in `labels` order.

    `norm` is a factory `norm(channels, name) -> nn.Module` (see `models.norms.make_norm`).
    """

    def __init__(self, depth: int, width: int, norm: Callable[..., nn.Module],
                 labels: Sequence[str], in_channels: int = 1, pool: int = 10):
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise MrRobustError(f"unsupported depth {depth}; choose one of "
                                f"{', '.join(map(str, STAGE_BLOCKS))}")
        if width < 1 or pool < 1:
            raise MrRobustError(f"width ({width}) and pool ({pool}) must be positive")
        self.labels = tuple(labels)
        self.stem = _conv3x3(in_channels, width)
        stages, cin = [], width
        for index, (blocks, stride, factor) in enumerate(
                zip(STAGE_BLOCKS[depth], STAGE_STRIDES, STAGE_WIDTHS), start=1):
            cout = width * factor
            stage = []
            for b in range(blocks):
                stage.append(PreActBlock(cin, cout, stride if b == 0 else 1, norm,
                                         f"stages.{index - 1}.{b}"))
                cin = cout
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.heads = nn.ModuleDict({label: nn.Linear(cin * pool * pool, 2)
                                    for label in self.labels})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.flatten(self.pool(self.stages(self.stem(x))), 1)
        return torch.stack([head(features) for head in self.heads.values()], dim=1)


def parameter_count(depth: int, width: int, labels: int, in_channels: int = 1, pool: int = 10) -> int:
    """Weights of `PreActResNet(depth, width, ..., labels, in_channels, pool)` counted from
    the architecture, without building it (norm parameters, at most 2 per channel, included)."""
    count, cin = 9 * in_channels * width, width
    for blocks, stride, factor in zip(STAGE_BLOCKS[depth], STAGE_STRIDES, STAGE_WIDTHS):
        cout = width * factor
        for b in range(blocks):
            projects = (stride if b == 0 else 1) != 1 or cin != cout
            count += 9 * cin * cout + 9 * cout * cout + (cin * cout if projects else 0) + 2 * (cin + cout)
            cin = cout
    return count + labels * (cin * pool * pool * 2 + 2)


def norm_factory(kind: str, groups: int, impl: str) -> Callable[[int, str], nn.Module]:
    """Bind a norm kind to `(channels, name) -> nn.Module` for the blocks."""
    return lambda channels, name: make_norm(kind, channels, groups, name=name, impl=impl)

