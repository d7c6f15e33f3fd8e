"""MR acquisition artifacts, simulated on the complex k-space, batched, on any device.

`corrupt(images, name, severity, seeds)` -> `(B, H, W)` float32 magnitude.
`ARTIFACTS` (our physical suite: coupled ladders, each step calibrated on real
MR slices to an SSIM band, see `quality`) and `STUDY` (the released protocol's
five torchio corruptions at level p, see `study`) map a name to an `Artifact`
(function, ladder, domain, description, unit, reference, output); `SUITES` maps
a suite name to its registry. `RandomArtifacts` is the train-time hook.

Determinism: every random draw is a function of (seed, artifact, index) only
(`random`), so a slice with a given seed is corrupted identically whatever the
batch size, order or device.
"""

from __future__ import annotations

import numbers

import torch

from mrrobust.artifacts import image, kspace, study  # noqa: F401  (fill the registries)
from mrrobust.artifacts.kspace import magnitude
from mrrobust.artifacts.random import as_seeds
from mrrobust.artifacts.registry import ARTIFACTS, SEVERITIES, STUDY, Artifact
from mrrobust.errors import MrRobustError

SUITES = {"mrrobust": ARTIFACTS, "study": STUDY}


def lookup(name: str, suite: str = "mrrobust") -> Artifact:
    """The registered artifact; MrRobustError listing the valid names otherwise."""
    if not isinstance(suite, str) or suite not in SUITES:
        raise MrRobustError(f"unknown artifact suite {suite!r}; choose one of {', '.join(SUITES)}")
    registry = SUITES[suite]
    if not isinstance(name, str) or name not in registry:
        raise MrRobustError(f"unknown artifact {name!r} in suite {suite!r}; choose one of {', '.join(registry)}")
    return registry[name]


def as_complex_batch(images) -> torch.Tensor:
    """`(B, H, W)` tensor (complex, or real = magnitude with zero phase) -> complex64; checks rank,
    B >= 1 and finiteness (one host sync on a GPU)."""
    x = torch.as_tensor(images)
    if x.ndim != 3 or x.shape[0] < 1:
        raise MrRobustError(f"artifacts need images of shape (B, H, W) with B >= 1; got shape {tuple(x.shape)}: "
                            "add or remove a batch axis, or skip empty batches")
    if not x.is_complex():
        x = x.to(torch.float32).to(torch.complex64)
    x = x.to(torch.complex64)
    planes = torch.view_as_real(x)
    # one-pass check: a NaN or inf makes the sum non-finite; only then (or on float32 overflow) look closer
    if not bool(torch.isfinite(planes.sum())) and not bool(torch.isfinite(planes).all()):
        raise MrRobustError("artifacts got non-finite values (NaN or inf) in the images; clean or drop those slices first")
    return x


def as_reference(reference, batch: int, device) -> torch.Tensor | None:
    """None, a number or `(B,)` values -> float32 `(B,)` on `device`; MrRobustError unless finite and > 0."""
    if reference is None:
        return None
    r = torch.as_tensor(reference.cpu() if isinstance(reference, torch.Tensor) else reference, dtype=torch.float64)
    if r.ndim == 0:
        r = r.expand(batch)
    if r.shape != (batch,) or not bool(torch.isfinite(r).all()) or not bool((r > 0).all()):
        raise MrRobustError(f"reference must be one finite signal level > 0 per sample, shape ({batch},); got "
                            f"{tuple(r.shape)} with min {float(r.min()) if r.numel() else 'n/a'}: pass "
                            "kspace.volume_level(volume) for each sample's scan, or None")
    return r.to(device=device, dtype=torch.float32)


def corrupt(images, name: str, severity: int, seeds, suite: str = "mrrobust", reference=None) -> torch.Tensor:
    """Corrupt a batch: images `(B, H, W)` complex (real = zero phase), seeds one int64 per sample.

    Returns the `(B, H, W)` float32 magnitude on the images' device (the real
    part for the study suite's torchio artifacts, `Artifact.output`, as the
    release fed them); severity 0 is the clean magnitude exactly, 1..5 walk the
    artifact's ladder. For one
    seed the ladder is coupled: the seed fixes the random pattern and severity
    scales or extends it. `reference` (number or `(B,)`, optional) is the signal
    level of each sample's scan (`kspace.volume_level`) for the artifacts that
    scale with it (`noise`: one sigma per volume); None uses each slice's own.
    """
    artifact = lookup(name, suite)
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or not 0 <= severity <= SEVERITIES:
        raise MrRobustError(f"severity must be an integer 0..{SEVERITIES}; got {severity!r}")
    x = as_complex_batch(images)
    try:
        seeds = as_seeds(seeds, x.shape[0])
    except (ValueError, TypeError) as err:
        raise MrRobustError(f"bad seeds for artifact {name!r}: {err}") from None
    level = as_reference(reference, x.shape[0], x.device)
    if severity == 0:
        return x.abs()
    step = x.shape[0] if artifact.blocked else cpu_chunk(x)
    if step >= x.shape[0]:
        return _apply(artifact, x, severity, seeds, level)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for lo in range(0, x.shape[0], step):
        part = slice(lo, lo + step)
        out[part] = _apply(artifact, x[part], severity, seeds[part], None if level is None else level[part])
    return out


CPU_CHUNK_PIXELS = 2**20  # CPU: pixels corrupted at a time (8 slices of 320 x 320): the temporaries stay in cache


def cpu_chunk(x: torch.Tensor) -> int:
    """Slices per chunk for `corrupt`: on the CPU the batch is cut into equal chunks of at most
    `CPU_CHUNK_PIXELS` pixels (1.1-1.6x faster than the whole batch of 32 at 320 x 320 for the
    artifacts that are not `blocked` themselves; every artifact's per-sample bits are
    batch-independent, so the output is the same); off the CPU the whole batch (fewer kernel
    launches)."""
    batch = x.shape[0]
    if x.device.type != "cpu":
        return batch
    chunks = -(-batch * x.shape[-2] * x.shape[-1] // CPU_CHUNK_PIXELS)
    return -(-batch // max(chunks, 1))


def _apply(artifact: Artifact, x: torch.Tensor, severity: int, seeds: torch.Tensor, level) -> torch.Tensor:
    """The artifact at `severity` (1..5) on a checked batch, as `corrupt` returns it."""
    extra = {"reference": level} if artifact.reference else {}
    if artifact.blocked and artifact.output == "magnitude":
        return artifact.function(x, artifact.ladder[int(severity) - 1], seeds, magnitude_only=True, **extra)
    y = artifact.function(x, artifact.ladder[int(severity) - 1], seeds, **extra)
    return y.real.contiguous() if artifact.output == "real" else magnitude(y)


from mrrobust.artifacts.augment import RandomArtifacts  # noqa: E402  (needs corrupt above)

__all__ = ["ARTIFACTS", "STUDY", "SUITES", "Artifact", "RandomArtifacts", "corrupt", "lookup", "SEVERITIES"]
