"""The classifier as plain torch: build it from a config, save and load a RUN without pickle.

A RUN folder holds `config.json` (format "mrrobust-run"; its `model` section rebuilds the
network) and `model.safetensors` (the weights, metadata format "mrrobust-run"). Lightning
checkpoints under `RUN/checkpoints/` are the trainer's own resume state and are never read
here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mrrobust.atomic import atomic_write
from mrrobust.contracts import RUN_FORMAT, RUN_VERSION, ModelSection, check_fits, read_run_config, validate
from mrrobust.data.annotations import LABELS
from mrrobust.errors import MrRobustError
from mrrobust.models.norms import DEFAULT_GROUP_NORM_IMPL, NORMS, make_norm, memory_format
from mrrobust.models.resnet import PreActResNet, norm_factory, parameter_count

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

MODEL_DEFAULTS = {
    "arch": "preact_resnet",
    "depth": 18,
    "width": 64,
    "norm": "batch",
    "groups": 32,
    "pool": 10,
    "in_channels": 1,
    "labels": list(LABELS),
    "group_norm_impl": DEFAULT_GROUP_NORM_IMPL,
}

__all__ = ["PreActResNet", "make_norm", "memory_format", "build", "save", "load", "atomic_write",
           "model_config", "positive_probability", "NORMS", "LABELS", "MODEL_DEFAULTS"]


def model_config(**overrides) -> dict:
    """The `model` section of a RUN config: MODEL_DEFAULTS with `overrides`."""
    unknown = set(overrides) - set(MODEL_DEFAULTS)
    if unknown:
        raise MrRobustError(f"unknown model setting(s) {sorted(unknown)}; "
                            f"known: {', '.join(MODEL_DEFAULTS)}")
    return {**MODEL_DEFAULTS, **overrides}


TRAINING_COPIES = 4  # weights, gradients and AdamW's two moments, float32 each


def build(config: dict) -> PreActResNet:
    """The network described by a RUN config (or by its `model` section alone). The section
    is schema-checked (`contracts.ModelSection`) and the weights' training memory
    (`TRAINING_COPIES` float32 copies) checked against the available memory before any
    allocation."""
    section = config.get("model", config) if isinstance(config, dict) else None
    if not isinstance(section, dict) or section.get("arch", MODEL_DEFAULTS["arch"]) != MODEL_DEFAULTS["arch"]:
        raise MrRobustError(f"cannot build a model from {str(config)[:80]!r}: expected a mrrobust "
                            f"config with arch {MODEL_DEFAULTS['arch']!r}")
    spec = model_config(**section)
    if isinstance(spec["norm"], str) and spec["norm"] not in NORMS:  # a flag (a file is checked when read)
        raise MrRobustError(f"unknown norm {spec['norm']!r}; choose one of {', '.join(NORMS)}")
    validate(ModelSection, spec, "the model settings", "choose --depth 18 or 34, --width 1..1024 "
             "and a known --norm (a RUN's config.json: re-run `mrrobust train`)")
    count = parameter_count(spec["depth"], spec["width"], len(spec["labels"]), spec["in_channels"], spec["pool"])
    check_fits(count * 4 * TRAINING_COPIES, f"a depth-{spec['depth']} width-{spec['width']} network "
               f"({count / 1e6:.0f} M weights)", "choose a smaller --width")
    try:
        norm = norm_factory(spec["norm"], spec["groups"], spec["group_norm_impl"])
        return PreActResNet(spec["depth"], spec["width"], norm, spec["labels"],
                            in_channels=spec["in_channels"], pool=spec["pool"])
    except (TypeError, ValueError) as err:  # a hand-edited config: a string where a number goes
        raise MrRobustError(f"cannot build a model from the model section {section!r} "
                            f"({err}); re-run `mrrobust train`") from None


def positive_probability(logits: torch.Tensor) -> torch.Tensor:
    """Logits `(B, L, 2)` -> probability of the positive class `(B, L)` (float32)."""
    return torch.softmax(logits.float(), dim=-1)[..., 1]


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def write_config(config: dict, run_dir: Path) -> None:
    """Write `run_dir/config.json` atomically, stamped with the RUN format and version."""
    run_dir = Path(run_dir)
    stamped = {"format": RUN_FORMAT, "version": RUN_VERSION,
               **{k: v for k, v in config.items() if k not in ("format", "version")}}
    text = json.dumps(stamped, indent=2, sort_keys=False) + "\n"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / CONFIG_FILE, lambda p: p.write_text(text))
    except OSError as err:  # read-only parent, a file in the path, a full disk
        raise MrRobustError(f"cannot write the RUN folder {run_dir} ({err.strerror or err}); "
                            f"choose a writable --out") from None


def save(model: nn.Module, config: dict, run_dir: Path) -> None:
    """Write `config.json` and `model.safetensors` into `run_dir` (each atomically)."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    write_config(config, run_dir)
    tensors = _plain_state_dict(model)
    atomic_write(run_dir / WEIGHTS_FILE,
                  lambda p: save_file(tensors, str(p), metadata={"format": RUN_FORMAT}))


def read_config(run_dir: Path) -> dict:
    """`run_dir/config.json`, schema-checked (`contracts.read_run_config`)."""
    return read_run_config(run_dir)


_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save zip archive; raw pickle protocol 2+


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a mrrobust safetensors file; a pickle or foreign file is refused."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise MrRobustError(f"no {path.name} in {path.parent}: the run has not finished "
                            f"(resume it with `mrrobust train --resume`)")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(_PICKLE_MAGIC):
        raise MrRobustError(f"{path} is a pickle (torch.save), not safetensors; mrrobust "
                            f"never unpickles weights: export them with safetensors")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != RUN_FORMAT:
                raise MrRobustError(f"{path} is a safetensors file but not a mrrobust model "
                                    f"(metadata format {meta.get('format')!r})")
            return {key: fh.get_tensor(key) for key in fh.keys()}
    except SafetensorError as err:
        raise MrRobustError(f"{path} is not a readable safetensors file ({err})")


def load(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[PreActResNet, dict]:
    """Rebuild the network of a RUN from `config.json` and `model.safetensors`, in eval mode."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MrRobustError(f"RUN folder {run_dir} does not exist; train one with "
                            f"`mrrobust train --out {run_dir}`")
    config = read_config(run_dir)
    model = build(config)
    tensors = read_weights(run_dir / WEIGHTS_FILE)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    resized = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or resized:
        raise MrRobustError(
            f"{run_dir / WEIGHTS_FILE} does not match its {CONFIG_FILE} (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, other shape {resized[:3]}); the two files come from "
            f"different runs: re-run `mrrobust train`")
    model.load_state_dict(tensors)
    return model.to(map_location).eval(), config
