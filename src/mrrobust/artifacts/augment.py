"""Train-time augmentation: a random artifact and severity per sample, batched on the device.

    aug = RandomArtifacts(["noise:3", "motion"])     # or RandomArtifacts.parse("noise:3,motion")
    magnitude = aug(images_complex, seeds)            # (B, H, W) complex -> (B, H, W) float32
    magnitude = aug(images_complex, seeds, reference=levels)  # noise: one sigma per scan

Each entry is `name[:max severity]` (default 5). Per sample, the entry and a
severity 0..max are drawn from the sample's seed (so a given seed, e.g. from
(slice, epoch), always gives the same augmentation); samples that share an
(artifact, severity) are corrupted together, so there is no per-sample loop.
"""

from __future__ import annotations

import torch

from mrrobust.artifacts import SEVERITIES, as_complex_batch, as_reference, corrupt, lookup
from mrrobust.artifacts import random as rnd
from mrrobust.errors import MrRobustError


def parse_spec(spec) -> list[tuple[str, int]]:
    """"noise:3,motion" or ["noise:3", "motion"] -> [("noise", 3), ("motion", 5)]; MrRobustError if bad."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise MrRobustError("empty artifact list; give ARTIFACT[:MAXSEV],... e.g. noise:3,motion")
    parsed = []
    for item in items:
        name, _, level = item.partition(":")
        lookup(name.strip())
        try:
            top = int(level) if level else SEVERITIES
        except ValueError:
            raise MrRobustError(f"bad max severity in {item!r}; write ARTIFACT[:MAXSEV] with MAXSEV in 0..{SEVERITIES}") from None
        if not 0 <= top <= SEVERITIES:
            raise MrRobustError(f"max severity {top} in {item!r} is outside 0..{SEVERITIES}")
        parsed.append((name.strip(), top))
    return parsed


class RandomArtifacts:
    """Callable `aug(images (B, H, W) complex, seeds (B,) int64) -> (B, H, W) float32 magnitude`."""

    def __init__(self, spec):
        self.entries = parse_spec(spec)

    @classmethod
    def parse(cls, text: str) -> "RandomArtifacts":
        return cls(text)

    def choices(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample `(entry index, severity)`, both CPU int64 `(B,)`."""
        entry = rnd.integers(seeds, "augment-entry", len(self.entries))
        top = torch.tensor([t for _, t in self.entries])[entry]
        severity = torch.floor(rnd.uniform(seeds, "augment-severity") * (top + 1)).long().clamp(max=top)
        return entry, severity

    def __call__(self, images, seeds, reference=None) -> torch.Tensor:
        """`reference`: optional signal level per sample (number or `(B,)`, see `corrupt`)."""
        x = as_complex_batch(images)
        seeds = rnd.as_seeds(seeds, x.shape[0])
        level = as_reference(reference, x.shape[0], x.device)
        entry, severity = self.choices(seeds)
        out = x.abs()
        for key in torch.unique(entry * (SEVERITIES + 1) + severity).tolist():
            e, s = divmod(key, SEVERITIES + 1)
            if s == 0:
                continue
            index = ((entry == e) & (severity == s)).nonzero().flatten()
            on_device = index.to(x.device)
            out[on_device] = corrupt(x[on_device], self.entries[e][0], s, seeds[index],
                                     reference=None if level is None else level[on_device])
        return out

    def __repr__(self) -> str:
        return "RandomArtifacts(" + ",".join(f"{n}:{s}" for n, s in self.entries) + ")"
