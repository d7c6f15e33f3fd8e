"""Per-sample randomness that is the same on every batch, order and device.

Every draw is a pure function of `(seed, stream, counter)`: a 32-bit integer
hash (xorshift-multiply, "hash prospector" constants, all products below 2**63
so int64 arithmetic never overflows) evaluated with torch integer ops. Integer
ops give identical bits on the CPU and on CUDA, so a slice with a given seed gets
the same corruption whatever the batch around it.

- Small parameter vectors (angles, positions, coefficients) are drawn on the
  CPU in float64 by `uniform` / `normal` and then moved to the device.
- Large random fields (thermal noise) come from `normal_field`: a counter-based
  generator. Counter i of sample b is hashed as lowbias32(a_b * i + c_b)
  (Wellons' "hash prospector" 2-round integer hash, uint32 / int32 ops with
  wrap-around multiplication, identical bits on the CPU and CUDA), with a_b
  (odd) and c_b two 32-bit keys of the sample's seed; the hashes of counters j
  and n + j give Box-Muller's two uniforms (24 bits each) for the pair of
  normals j. No shared bank: every (seed, counter) is its own draw, so two
  seeds' fields are independent, not windows of one array.

A stream is a stable 32-bit id of a name (`stream("noise")`), never Python's
salted `hash`.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

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
    if array.dtype == object and all(isinstance(v, int) and not isinstance(v, bool) for v in array.flat):
        raise ValueError("seeds must lie in the int64 range -2**63 .. 2**63 - 1; got a larger integer (not wrapped)")
    if array.dtype.kind not in "iu":
        raise TypeError(f"seeds must be integers (int64); got dtype {array.dtype}")
    if array.dtype.kind == "u" and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"seeds must lie in the int64 range; got {int(array.max())} (not wrapped)")
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


def _int32(values: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2**32) -> the int32 with the same 32 bits."""
    return (values - ((values >> 31) << 32)).to(torch.int32)


_LOWBIAS = ((16, _int32(torch.tensor(0x7FEB352D)).item()), (15, _int32(torch.tensor(0x846CA68B)).item()), (16, None))


def _lowbias32_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """In place: Wellons' lowbias32 hash of int32 bit patterns (logical shifts emulated by masking)."""
    for shift, multiplier in _LOWBIAS:
        torch.bitwise_right_shift(x, shift, out=scratch)
        scratch &= (1 << (32 - shift)) - 1
        x ^= scratch
        if multiplier is not None:
            x *= multiplier
    return x


_BLOCK = 2**17  # CPU: pixels per block (one 320x320 slice): measured fastest, 2**15 .. 2**19, on 2 threads
_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)


def _workers() -> ThreadPoolExecutor | None:
    """The CPU block workers: a thread pool of torch.get_num_threads() threads (numpy's ufuncs and
    torch's ops release the GIL), made again in a forked child or when the count changes; None
    for one thread."""
    global _POOL
    workers = torch.get_num_threads()
    if workers <= 1:
        return None
    if _POOL is None or _POOL[:2] != (os.getpid(), workers):
        _POOL = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="mrrobust-noise"))
    return _POOL[2]


def _workspace(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """This thread's two CPU buffers for a `(k, 2, m)` block, uint32: the hashes (then, in place,
    the uniforms as float32) and the scratch (then the two normals of each pair). Reused from
    block to block (a fresh array of this size costs its page faults again on every call, as
    much as the arithmetic), and only two, so a block's working set stays in the L2 cache."""
    cache = _LOCAL.__dict__.setdefault("workspaces", {})
    if shape not in cache:
        cache.clear()
        cache[shape] = (np.empty(shape, np.uint32), np.empty(shape, np.uint32))
    return cache[shape]


_LOCAL = threading.local()


def _sample_keys(seeds: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`(B,)` int64: each sample's odd multiplier a and increment c (32-bit values) of its counters."""
    keys = bits(seeds, name, 2)
    return keys[:, 0] | 1, keys[:, 1]


def for_each_normal_block(seeds: torch.Tensor, name: str, n: int, consume) -> None:
    """CPU: call `consume(rows, pairs, first, second)` for every block of the `(B, 2n)` normal
    field `normal_field` lays out: `first`, `second` `(k, m)` float32 numpy arrays, its entries
    `pairs` and `n + pairs` (`pairs` a slice of 0..n-1) of the samples `rows`; the same bits
    whatever the blocking. The blocks run on `_workers()` threads, so `consume` must write only
    its own block, must not keep `first`, `second` (the thread's buffers, overwritten by its
    next block), and must use numpy only: a torch op of over 32,768 elements called from another
    thread starts a second OpenMP team, and after that every later torch op in the process ran
    slower (measured: anisotropy 2.4x, torchio's transforms too; more OpenMP threads than
    cores)."""
    multiplier, increment = (k.numpy().astype(np.uint64) for k in _sample_keys(seeds, name))
    batch = seeds.shape[0]
    pair_step = min(n, _BLOCK)
    rows_step = max(1, _BLOCK // n) if pair_step == n else 1

    def block(rows: slice, pairs: slice) -> None:
        k, m = rows.stop - rows.start, pairs.stop - pairs.start
        hashed, scratch = (buffer[:k, :, :m] for buffer in _workspace((rows_step, 2, pair_step)))
        a, c = multiplier[rows, None], increment[rows, None]
        # counters j (u1) and n + j (u2) under a * counter + c (mod 2**32), from one arange
        np.multiply(_arange(pair_step)[:m], (a & _MASK).astype(np.uint32), out=hashed[:, 0])
        hashed[:, 0] += ((a * pairs.start + c) & _MASK).astype(np.uint32)
        np.add(hashed[:, 0], ((a * n) & _MASK).astype(np.uint32), out=hashed[:, 1])
        _lowbias32_numpy_(hashed, scratch)
        # (top + 0.5) 2**-24, exact in float32 (tops < 2**24), written over the hashes
        u = hashed.view(np.float32)
        np.multiply(hashed.view(np.int32), np.float32(2.0**-24), out=u, dtype=np.float32, casting="unsafe")
        u += np.float32(2.0**-25)
        radius = np.sqrt(np.multiply(np.log(u[:, 0], out=u[:, 0]), np.float32(-2.0), out=u[:, 0]), out=u[:, 0])
        angle = np.multiply(u[:, 1], np.float32(2 * math.pi), out=u[:, 1])
        first, second = scratch[:, 0].view(np.float32), scratch[:, 1].view(np.float32)
        consume(rows, pairs, np.multiply(np.cos(angle, out=first), radius, out=first),
                np.multiply(np.sin(angle, out=second), radius, out=second))

    blocks = [(slice(lo, min(lo + rows_step, batch)), slice(j0, min(j0 + pair_step, n)))
              for lo in range(0, batch, rows_step) for j0 in range(0, n, pair_step)]
    pool = _workers() if len(blocks) > 1 else None
    if pool is None:
        for rows, pairs in blocks:
            block(rows, pairs)
    else:
        def run(group):
            for rows, pairs in group:
                block(rows, pairs)

        share = -(-len(blocks) // torch.get_num_threads())  # one task per worker (`_workers`)
        for done in [pool.submit(run, blocks[i:i + share]) for i in range(0, len(blocks), share)]:
            done.result()  # re-raises a worker's error here


def normal_field(seeds: torch.Tensor, name: str, n: int, device) -> torch.Tensor:
    """`(B, 2n)` float32 i.i.d. N(0, 1) on `device`, a pure function of (seed, name, n, index):
    pair j (0..n-1) is hashed from counters j and n + j (module docstring) and Box-Muller puts
    r cos(theta) at entry j, r sin(theta) at entry n + j. Viewed as `(B, n, 2)` it is the real
    view of n complex normals. On the CPU `for_each_normal_block` assembled; elsewhere the
    same hash in torch int32 ops (identical hash bits; the float transcendentals may differ in
    the last ulp between devices)."""
    device = torch.device(device)
    if device.type == "cpu":
        field = torch.empty(seeds.shape[0], 2, n)
        array = field.numpy()

        def store(rows, pairs, first, second):
            array[rows, 0, pairs] = first
            array[rows, 1, pairs] = second

        for_each_normal_block(seeds, name, n, store)
        return field.view(-1, 2 * n)
    return _normal_field_torch(seeds, name, n, device)


def _normal_field_torch(seeds: torch.Tensor, name: str, n: int, device) -> torch.Tensor:
    """`normal_field` in torch ops on any device (the path off the CPU; tested on the CPU)."""
    multiplier, increment = (_int32(k)[:, None, None].to(device) for k in _sample_keys(seeds, name))
    counter = _int32(torch.arange(n, dtype=torch.int64, device=device)[None, :] + torch.tensor([[0], [n]], device=device))
    top = _hash_torch(counter, multiplier, increment)
    u = torch.add(torch.tensor(2.0**-25, device=device), top, alpha=2.0**-24)  # (top + 0.5) 2**-24
    radius = u[:, 0].log_().mul_(-2.0).sqrt_()
    angle = u[:, 1].mul_(2 * math.pi)
    return torch.cat((torch.cos(angle).mul_(radius), torch.sin(angle).mul_(radius)), dim=1)


@functools.lru_cache(maxsize=8)
def _arange(m: int) -> np.ndarray:
    """`(m,)` uint32 0 .. m - 1, made once per length (read only; the cache is thread-safe)."""
    values = np.arange(m, dtype=np.uint32)
    values.flags.writeable = False
    return values


def _hash_torch(counter: torch.Tensor, multiplier: torch.Tensor, increment: torch.Tensor) -> torch.Tensor:
    """`(k, 2, m)` int32: the top 24 bits of lowbias32(a * counter + c) (int32 ops, wrap-around)."""
    x = counter[None] * multiplier  # int32: wraps mod 2**32
    x += increment
    scratch = torch.empty_like(x)
    _lowbias32_(x, scratch)
    torch.bitwise_right_shift(x, 8, out=scratch)
    return scratch.bitwise_and_(0xFFFFFF)


def _hash_numpy(counter: np.ndarray, multiplier: torch.Tensor, increment: torch.Tensor) -> np.ndarray:
    """`_hash_torch` in numpy uint32 (native logical shifts and wrap-around products: the same
    bits, about 3x faster on the CPU)."""
    a = multiplier.numpy().view(np.uint32)
    c = increment.numpy().view(np.uint32)
    x = counter[None] * a
    x += c
    return _lowbias32_numpy_(x, np.empty_like(x)).view(np.int32)


def _lowbias32_numpy_(x: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """In place on uint32 `x`: lowbias32, then the top 24 bits (`x >> 8`)."""
    for shift, factor in _LOWBIAS_U32:
        np.right_shift(x, shift, out=scratch)
        x ^= scratch
        if factor is not None:
            x *= factor
    x >>= 8
    return x


_LOWBIAS_U32 = ((16, np.uint32(0x7FEB352D)), (15, np.uint32(0x846CA68B)), (16, None))


def complex_noise(seeds: torch.Tensor, name: str, shape: tuple[int, int], device) -> torch.Tensor:
    """`(B, H, W, 2)` float32 (real, imaginary) parts, i.i.d. N(0, 1): `normal_field` of H W pairs."""
    h, w = shape
    return normal_field(seeds, name, h * w, device).view(-1, h, w, 2)
