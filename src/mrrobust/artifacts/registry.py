"""The artifact registries: name -> (function, five-step ladder, domain, description).

An artifact function maps complex images `(B, H, W)` to corrupted complex
images `(B, H, W)` on the same device, given one ladder entry (its physical
parameters) and the per-sample seeds (CPU int64 `(B,)`); one registered with
`reference=True` also takes `reference=` (a `(B,)` signal level per sample, or
None for each slice's own); one registered with `blocked=True` also takes
`magnitude_only=True` (return |y|, float32). The ladder is written
as data on the line that registers the function (ImageNet-C style).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

SEVERITIES = 5


@dataclass(frozen=True)
class Artifact:
    """One registered corruption. `ladder[s - 1]` are the parameters at severity s (1..5)."""

    name: str
    function: Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor]
    ladder: tuple
    domain: str  # "k-space" or "image"
    description: str
    unit: str
    reference: bool = False  # takes the per-sample signal level `reference=` (noise)
    output: str = "magnitude"  # what `corrupt` returns: "magnitude" |y|, or "real" Re(y) (torchio's semantics)
    blocked: bool = False  # works in cache-sized blocks itself and takes `magnitude_only=True` (noise):
    #                        `corrupt` gives it the whole CPU batch and asks it for the magnitude


ARTIFACTS: dict[str, Artifact] = {}
STUDY: dict[str, Artifact] = {}


def register(registry: dict, name: str, ladder: tuple, domain: str, unit: str, reference: bool = False,
             output: str = "magnitude", blocked: bool = False):
    """Decorator: add the function to `registry` under `name` with its ladder; first docstring line is the description."""
    if len(ladder) != SEVERITIES:
        raise ValueError(f"artifact {name!r}: a ladder has {SEVERITIES} steps, got {len(ladder)}")

    def add(fn):
        description = (fn.__doc__ or "").strip().splitlines()[0]
        registry[name] = Artifact(name, fn, tuple(ladder), domain, description, unit, reference, output, blocked)
        return fn

    return add
