"""Artifact throughput: ours (batched, on the complex k-space) beside torchio 1.2.1 (one slice at a time).

    python benchmarks/artifacts.py                         # CPU, 2 threads, 320x320, ours batch 32, JSON
    python benchmarks/artifacts.py --device cuda --batch 256   # GPU slices/s (+ CPU/CUDA parity)

torchio (optional extra `bench`) runs on a (1, 320, 320, 1) ScalarImage; its
seven transforms are paired with our nearest counterparts.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mrrobust.artifacts import ARTIFACTS, corrupt
from mrrobust.artifacts.quality import validation_slices

TORCHIO = {  # ours -> torchio's nearest equivalent (constructor, kwargs)
    "noise": ("RandomNoise", {}),
    "ghosting": ("RandomGhosting", {}),
    "spike": ("RandomSpike", {}),
    "motion": ("RandomMotion", {}),
    "bias_field": ("RandomBiasField", {}),
    "anisotropy": ("RandomAnisotropy", {"axes": (0, 1)}),
    "elastic": ("RandomElasticDeformation", {}),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours(name, images, seeds, device, repeats, severity=3):
    corrupt(images, name, severity, seeds)  # warm-up (plans, noise bank)
    _sync(device)
    start = time.perf_counter()
    for r in range(repeats):
        corrupt(images, name, severity, seeds + r)
    _sync(device)
    return repeats * images.shape[0] / (time.perf_counter() - start)


def theirs(name, image, repeats):
    import torchio as tio

    cls, kwargs = TORCHIO[name]
    transform = getattr(tio, cls)(**kwargs)
    subject = tio.Subject(image=tio.ScalarImage(tensor=image))
    transform(subject)
    start = time.perf_counter()
    for _ in range(repeats):
        transform(subject)
    return repeats / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="our batch (default 32 on CPU, 256 on CUDA)")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-torchio", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best rate of each side counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch or (256 if device.type == "cuda" else 32)
    repeats = args.repeats or (20 if device.type == "cuda" else 3)
    base = validation_slices(8, args.size, seed=0)  # synth's validation slices
    images = base.repeat((batch + 7) // 8, 1, 1)[:batch].to(device)
    seeds = torch.arange(batch, dtype=torch.int64)
    result = {"device": str(device), "size": args.size, "batch": batch, "threads": args.threads,
              "torch": torch.__version__, "ours_slices_per_s": {}}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    compare = device.type != "cuda" and not args.no_torchio
    if compare:
        import torchio

        result["torchio"] = torchio.__version__
        slice_ = base[:1].abs()[..., None]  # (1, H, W, 1)
    best, tio_rate = {}, {}
    for _ in range(args.rounds):  # rounds interleave ours and torchio; the best rate of each counts
        for name in ARTIFACTS:
            best[name] = max(best.get(name, 0.0), ours(name, images, seeds, device, repeats))
            if compare and name in TORCHIO:
                tio_rate[name] = max(tio_rate.get(name, 0.0), theirs(name, slice_, max(3, 10 * repeats // 3)))
    result["rounds"] = args.rounds
    result["ours_slices_per_s"] = {name: round(rate, 1) for name, rate in best.items()}
    if device.type == "cuda":  # the same seeds give the same corruption on CPU and CUDA
        cpu = images[:4].cpu()
        result["cpu_cuda_max_abs_diff"] = {
            name: float((corrupt(cpu, name, 3, seeds[:4]) - corrupt(images[:4], name, 3, seeds[:4]).cpu()).abs().max())
            for name in ARTIFACTS}
    elif compare:
        result["torchio_slices_per_s"] = {n: round(v, 1) for n, v in tio_rate.items()}
        result["speedup"] = {n: round(result["ours_slices_per_s"][n] / tio_rate[n], 2) for n in TORCHIO}
        ours_ms = sum(1000 / result["ours_slices_per_s"][n] for n in TORCHIO)
        tio_ms = sum(1000 / tio_rate[n] for n in TORCHIO)
        result["seven_ms_per_slice"] = {"ours": round(ours_ms, 2), "torchio": round(tio_ms, 2),
                                         "speedup": round(tio_ms / ours_ms, 2)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
