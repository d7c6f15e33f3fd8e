"""Per-sample randomness that is the same on every batch, order and device.

Every draw is a pure function of `(seed, stream, counter)`: a 32-bit integer
hash (xorshift-multiply, "hash prospector" constants, all products below 2**63
so int64 arithmetic never overflows) evaluated with torch integer ops. Integer
ops give identical bits on the CPU and on CUDA, so a slice with a given seed gets
the same corruption whatever the batch around it.

- Small parameter vectors (angles, positions, coefficients) are drawn on the
  CPU in float64 by `uniform` / `normal` and then moved to the device.
- Large random fields (thermal noise) come from `complex_noise`: a fixed bank of
  2**(k+1) complex standard normals, built once per process by the same hash
  (Box-Muller) on the CPU and copied to the device. Each sample reads one
  contiguous window of H*W entries starting at its own hashed offset in
  [0, 2**k), 2**k >= H*W: a row copy, not a per-pixel gather. Within a slice
  every pixel reads a different bank entry, so the field is i.i.d.
  N(0, 1) + i N(0, 1); different samples start at independent offsets.

A stream is a stable 32-bit id of a name (`stream("noise")`), never Python's
salted `hash`.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

_MASK = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """Hash int64 values in [0, 2**32) to int64 values in [0, 2**32) (bijective)."""
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _MASK
    x = x ^ (x >> 12)
    x = (x * 0x297A2D39) & _MASK
    return x ^ (x >> 15)


def stream(name: str) -> int:
    """A stable 32-bit stream id for a purpose name (CRC-32, not Python's hash)."""
    return zlib.crc32(name.encode())


def as_seeds(seeds, batch: int) -> torch.Tensor:
    """Integer seeds (list, numpy or tensor) -> CPU int64 tensor `(B,)`.

    ValueError on a wrong length and TypeError on non-integer values (floats are
    refused, not truncated)."""
    array = np.asarray(seeds.cpu() if isinstance(seeds, torch.Tensor) else seeds)
    if array.dtype.kind not in "iu":
        raise TypeError(f"seeds must be integers (int64); got dtype {array.dtype}")
    t = torch.as_tensor(array.astype(np.int64))
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"seeds must be one int64 per sample, shape ({batch},); got shape {tuple(t.shape)}")
    return t


def _keys(seeds: torch.Tensor, name: str) -> torch.Tensor:
    """Per-sample 32-bit keys `(B,)` mixing both halves of the int64 seed with the stream id."""
    lo, hi = seeds & _MASK, (seeds >> 32) & _MASK
    return _mix32(_mix32(lo ^ stream(name)) ^ hi)


def bits(seeds: torch.Tensor, name: str, count: int) -> torch.Tensor:
    """`(B, count)` int64 hash values in [0, 2**32), CPU, a pure function of (seed, name, index)."""
    keys = _keys(seeds, name)[:, None]
    counter = torch.arange(count, dtype=torch.int64)[None, :]
    return _mix32(_mix32((counter + keys) & _MASK) ^ keys)


def uniform(seeds: torch.Tensor, name: str, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """`(B, *shape)` float64 uniforms in the open interval (0, 1), CPU."""
    n = math.prod(shape)
    u = (bits(seeds, name, n).double() + 0.5) / 2.0**32
    return u.reshape(seeds.shape[0], *shape)


def normal(seeds: torch.Tensor, name: str, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """`(B, *shape)` float64 standard normals (Box-Muller on two hash uniforms), CPU."""
    u = uniform(seeds, name, (2, *shape))
    return torch.sqrt(-2.0 * torch.log(u[:, 0])) * torch.cos(2.0 * math.pi * u[:, 1])


def integers(seeds: torch.Tensor, name: str, high: int, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """`(B, *shape)` int64 uniform on 0..high-1, CPU."""
    return torch.floor(uniform(seeds, name, shape) * high).long().clamp_(max=high - 1)


_BANKS: dict[tuple[int, str], torch.Tensor] = {}


def _bank_bits(size: int) -> int:
    return max(20, (size - 1).bit_length())


def noise_bank(log2_size: int, device: torch.device) -> torch.Tensor:
    """The fixed bank of `2**(log2_size + 1)` complex standard normals (E|z|^2 = 2) on `device`,
    as float32 `(2 * 2**(log2_size + 1),)` interleaved (real, imaginary)."""
    key = (log2_size, str(device))
    if key not in _BANKS:
        cpu_key = (log2_size, "cpu")
        if cpu_key not in _BANKS:
            count = 2 ** (log2_size + 1)
            u = (_mix32(torch.arange(2 * count, dtype=torch.int64) ^ stream("noise-bank")).double() + 0.5) / 2.0**32
            u1, u2 = u[0::2], u[1::2]
            r = torch.sqrt(-2.0 * torch.log(u1))
            pairs = torch.stack([r * torch.cos(2 * math.pi * u2), r * torch.sin(2 * math.pi * u2)], -1)
            _BANKS[cpu_key] = pairs.to(torch.float32).flatten()
        _BANKS[key] = _BANKS[cpu_key].to(device)
    return _BANKS[key]


def complex_noise(seeds: torch.Tensor, name: str, shape: tuple[int, int], device) -> torch.Tensor:
    """`(B, H, W, 2)` float32 (real, imaginary) parts, i.i.d. N(0, 1), identical on every device.

    Sample b is the bank window starting at entry `offset_b`, a hash of its seed."""
    h, w = shape
    log2_size = _bank_bits(h * w)
    bank = noise_bank(log2_size, torch.device(device))
    offset = bits(seeds, name, 1)[:, 0] & (2**log2_size - 1)
    windows = bank.unfold(0, 2 * h * w, 2)  # (entries - H*W + 1, 2*H*W) view, row i = entries i .. i + H*W - 1
    return windows[offset.to(device)].reshape(seeds.shape[0], h, w, 2)
