"""Training and inference throughput of the classifier per norm and numeric mode.

Synthetic `(B, 1, S, S)` inputs (no data loading); each (norm, mode) pair builds a fresh
network, runs `--warmup` steps (torch.compile compiles here), then times `--steps` steps,
each between device synchronisations (images/s from the median step). A training step
is forward, the summed cross-entropy of the four heads, backward and an AdamW step, as in
`mrrobust train`.

Norms: `batch`, `group`, `layer`, `instance`, `none`; `KIND:IMPL` picks a group-norm
implementation of `models/norms.py` (`group:native`, `group:sums`, `group:grouped`, ...).
Modes: `PRECISION-LAYOUT-EXECUTION` with precision fp32 | tf32 | bf16 (autocast), layout
cl (channels-last) | contig | pref (the norm's `memory_format` choice), execution eager |
compiled.

Each result is printed as one JSON line the moment it is measured; a final JSON object
collects them with group/batch and layer/batch ratios. `--budget-s` bounds the wall time:
pairs not started within it are listed as skipped. On an H100 the goal is batch norm >=
855 training images/s (bf16 channels-last compiled, REFERENCE s.6) and group and layer norm
>= 0.9x batch norm.

    python benchmarks/train.py --device cuda            # full study size, 320x320, width 64
    python benchmarks/train.py --device cpu --size 64 --width 16 --modes fp32-contig-eager,bf16-cl-eager

Compiled modes are for CUDA: on the CPU, torch 2.13's inductor backward of this network
crashes the process (which is why `mrrobust train --compile` is refused on the CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from mrrobust.models import build, memory_format, model_config
from mrrobust.training import per_sample_loss

# the default plan, most important first: the goal (compiled bf16 channels-last), then the
# released setup and eager bf16, then the alternative group-norm implementations
DEFAULT_PAIRS = [
    *[(n, "bf16-cl-compiled") for n in ("batch", "group", "layer")],
    *[(n, "fp32-contig-eager") for n in ("batch", "group", "layer")],
    *[(n, "bf16-cl-eager") for n in ("batch", "group", "layer")],
    ("group:native", "bf16-contig-compiled"), ("group:grouped", "bf16-cl-compiled"),
    ("group:native", "bf16-cl-compiled"), ("layer:native", "bf16-contig-compiled"),
]


def parse_mode(mode: str) -> tuple[str, str, bool]:
    precision, layout, execution = mode.split("-")
    if precision not in ("fp32", "tf32", "bf16") or layout not in ("cl", "contig", "pref") \
            or execution not in ("eager", "compiled"):
        raise SystemExit(f"bad mode {mode!r}: PRECISION-LAYOUT-EXECUTION, e.g. bf16-cl-compiled")
    return precision, layout, execution == "compiled"


def parse_norm(norm: str) -> tuple[str, str]:
    kind, _, impl = norm.partition(":")
    return kind, impl or "auto"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(norm: str, mode: str, args, device: torch.device) -> dict:
    kind, impl = parse_norm(norm)
    precision, layout, compiled = parse_mode(mode)
    fmt = {"cl": torch.channels_last, "contig": torch.contiguous_format,
           "pref": memory_format(kind, impl)}[layout]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net = build(model_config(norm=kind, groups=args.groups, width=args.width, depth=args.depth,
                             group_norm_impl=impl)).to(device).to(memory_format=fmt)
    run = torch.compile(net) if compiled else net
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5, weight_decay=1e-4,
                                  fused=device.type == "cuda")
    images = torch.randn(args.batch, 1, args.size, args.size, device=device)
    images = images.contiguous(memory_format=fmt)
    targets = torch.randint(0, 2, (args.batch, 4), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def train_step():
        with autocast:
            loss = per_sample_loss(run(images), targets).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer_step():
        with torch.no_grad(), autocast:
            run(images)

    result = {"norm": norm, "mode": mode, "device": str(device), "size": args.size,
              "width": args.width, "batch": args.batch, "memory_format": str(fmt).split(".")[-1]}
    for name, step, setup in (("train", train_step, net.train), ("infer", infer_step, net.eval)):
        setup()
        start = time.perf_counter()
        for _ in range(args.warmup):
            step()
        synchronize(device)
        result[f"{name}_warmup_s"] = round(time.perf_counter() - start, 2)
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            synchronize(device)
            times.append(time.perf_counter() - start)
        # the median step resists interference from other processes; the mean is also given
        result[f"{name}_images_per_s"] = round(args.batch / statistics.median(times), 1)
        result[f"{name}_images_per_s_mean"] = round(args.batch * len(times) / sum(times), 1)
    del run, net, optimizer
    torch._dynamo.reset()  # fresh guards and caches for the next network
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return result


def ratios(results: list[dict]) -> dict:
    """Per mode and phase: each norm's images/s over batch norm's."""
    table = {}
    for r in results:
        base = next((b for b in results if b["norm"] == "batch" and b["mode"] == r["mode"]), None)
        if base is None or r["norm"] == "batch" or "error" in r or "error" in base:
            continue
        for phase in ("train", "infer"):
            table[f"{r['norm']}/batch {r['mode']} {phase}"] = round(
                r[f"{phase}_images_per_s"] / base[f"{phase}_images_per_s"], 3)
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--groups", type=int, help="group-norm groups (default min(32, width))")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per phase")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation) per phase")
    parser.add_argument("--norms", help="comma list (with --modes: every pair, mode by mode); "
                        "default: a built-in plan of " + str(len(DEFAULT_PAIRS)) + " pairs")
    parser.add_argument("--modes", help="comma list, e.g. fp32-contig-eager,bf16-cl-compiled")
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="start no new (norm, mode) pair after this many seconds")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.groups = args.groups or min(32, args.width)
    if args.norms or args.modes:
        modes = (args.modes or "fp32-contig-eager").split(",")
        norms = (args.norms or "batch,group,layer").split(",")
        pairs = [(norm, mode) for mode in modes for norm in norms]
    else:
        pairs = DEFAULT_PAIRS
    for _, mode in pairs:
        parse_mode(mode)
    start, results, skipped = time.perf_counter(), [], []
    for norm, mode in pairs:
        if time.perf_counter() - start > args.budget_s:
            skipped.append(f"{norm} {mode}")
            continue
        try:
            result = measure(norm, mode, args, device)
        except Exception as err:  # one failing pair must not lose the others' figures
            result = {"norm": norm, "mode": mode, "error": f"{type(err).__name__}: {err}"[:300]}
            torch._dynamo.reset()
        results.append(result)
        print(json.dumps(result), flush=True)
    summary = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "elapsed_s": round(time.perf_counter() - start, 1), "results": results,
               "ratio_to_batch": ratios(results), "skipped": skipped}
    print(json.dumps(summary, indent=1), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
