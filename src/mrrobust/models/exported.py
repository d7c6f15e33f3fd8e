"""MODEL folders: any classifier as a `torch.export` program, evaluated like a RUN.

A MODEL folder holds
  model.pt2              a `torch.export.save` archive: one program, input `(B, 1, H, W)`
                         float32, output `(B, L)`: one binary logit (or probability) per label
  mrrobust-model.json    {"format": "mrrobust-model", "labels": [...], "output": "logits" |
                         "probabilities", "input_scale": "store" | NUMBER}; optional "norm"
                         (str) and "seed" (int) name the arm it belongs to
  operating_points.json  optional: thresholds (`mrrobust calibrate`, or copied by `export`
                         from the RUN); without it the MODEL has AUCs only

Labels are a subset of LABELS in any order; the others are absent (n/a, never zero). The
input is the magnitude image `|x| / input_scale` (x: the STORE's unscaled complex image);
"store" means the STORE's own scale, i.e. the input a RUN trained on that STORE sees.

Loading never unpickles an arbitrary object. `torch.export.load` (torch 2.13) unpickles in
several places: pickled weights and constants (`torch.load(weights_only=False)`), opaque
constants (`pickle.loads`), torchbind objects, the sample inputs (`weights_only=True` with a
fallback to `weights_only=False`), the pre-2.8 archive layout (torch.load); it loads
AOTInductor shared libraries; it evaluates the program's symbolic shape strings with
`sympy.sympify` (Python `eval`), and `ExportedProgram.module()` `exec`s its guard code.
`check_archive` therefore reads the zip with `zipfile` and JSON only, before torch sees it,
and refuses anything but the layout `torch.export.save` writes for plain tensors: no
pickled payload, no custom or opaque object, no AOTInductor or legacy entries, sample
inputs that load with `weights_only=True` (so torch's fallback never runs), shape strings
and guards from a small grammar, no carriage return in any string (FX writes Python
source from node metadata). After loading, every call in the graph must be a registered
torch operator.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import operator
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mrrobust.data.annotations import LABELS
from mrrobust.errors import MrRobustError

MODEL_FORMAT = "mrrobust-model"
PROGRAM_FILE = "model.pt2"
RECORD_FILE = "mrrobust-model.json"
OPERATING_POINTS_FILE = "operating_points.json"  # the RUN's name and format
OUTPUTS = ("logits", "probabilities")
RECORD_KEYS = {"format", "labels", "output", "input_scale", "norm", "seed"}
UNKNOWN_NORM = "unknown"

_PICKLE_HEAD = b"\x80"  # pickle protocol 2+
_ZIP_HEAD = b"PK\x03\x04"
# the archive layout of torch.export.save for plain tensors, names below the archive root
_ARCHIVE_FILES = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/(?P<model>[A-Za-z0-9_]+)\.json"
    r"|data/sample_inputs/[A-Za-z0-9_]+\.pt"
    r"|data/weights/[A-Za-z0-9_]+_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/[A-Za-z0-9_]+_constants_config\.json|data/constants/tensor_\d+"
    r"|extra/[^/]+")
# what `sympy.sympify` may see: numbers, operators, symbol names (s0, u12, ...), the sympy
# and torch.utils._sympy function names below, Symbol('s0', positive=True, ...)
_SYMPY_NAMES = frozenset((
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise", "floor", "ceiling",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "IsNonNegativeInteger", "PowByNatural", "FloatPow",
    "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat",
    "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "oo", "zoo", "nan",
    "True", "False", "positive", "integer", "real", "nonnegative", "finite", "int_oo"))
_EXPR_TOKENS = re.compile(r"\s+|\d+(?:\.\d+)?(?:e[+-]?\d+)?|'[a-z]{1,4}\d+'|[A-Za-z_]\w*"
                          r"|\*\*|//|==|!=|<=|>=|[-+*/%(),<>=~&|]")
_SYMBOL_NAME = re.compile(r"[a-z]{1,4}\d+")
# what ExportedProgram.module() may exec as guards: size/stride comparisons of the inputs
_GUARD_TOKENS = re.compile(r"\s+|L\['[A-Za-z_]\w*'\](?:\[\d+\])*|\.(?:size|stride)\(\)\[\d+\]"
                           r"|\.storage_offset\(\)|\d+|==|!=|<=|>=|//|\*\*|[-+*/%()<>]"
                           r"|\b(?:and|or|not)\b")


@dataclass
class ModelRecord:
    """`mrrobust-model.json`, checked: labels in the program's order, output kind, input
    scale ("store" or a positive float), norm and seed (arm keys; defaults unknown, 0)."""

    labels: tuple[str, ...]
    output: str
    input_scale: str | float
    norm: str = UNKNOWN_NORM
    seed: int = 0

    def json(self) -> dict:
        return {"format": MODEL_FORMAT, "labels": list(self.labels), "output": self.output,
                "input_scale": self.input_scale, "norm": self.norm, "seed": self.seed}

    def input_factor(self, store_scale: float) -> float:
        """What a STORE-scaled input (|x| / store_scale) is multiplied by to become the
        program's input (|x| / input_scale); exactly 1.0 when the two scales agree."""
        if self.input_scale == "store":
            return 1.0
        return float(store_scale) / float(self.input_scale)


def is_model_folder(path: Path) -> bool:
    """Whether `path` is a MODEL folder (it holds mrrobust-model.json)."""
    return (Path(path) / RECORD_FILE).is_file()


def read_record(folder: Path) -> ModelRecord:
    """`folder/mrrobust-model.json`, checked (module docstring); one line per problem."""
    path = Path(folder) / RECORD_FILE
    try:
        record = json.loads(path.read_text())
    except OSError as err:
        raise MrRobustError(f"{path}: unreadable ({err.strerror or err}); a MODEL folder needs "
                            f"{RECORD_FILE} beside {PROGRAM_FILE}") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise MrRobustError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise MrRobustError(f"{path}: format is not {MODEL_FORMAT!r}; write "
                            f'{{"format": "{MODEL_FORMAT}", "labels": [...], "output": ..., '
                            f'"input_scale": ...}}')
    unknown = sorted(set(record) - RECORD_KEYS)
    labels = record.get("labels")
    if unknown:
        raise MrRobustError(f"{path}: unknown key(s) {unknown}; known: {sorted(RECORD_KEYS)}")
    if (not isinstance(labels, list) or not labels or len(set(labels)) != len(labels)
            or any(label not in LABELS for label in labels)):
        raise MrRobustError(f"{path}: labels {labels!r} must be a non-empty list of distinct "
                            f"names from {', '.join(LABELS)}")
    if record.get("output") not in OUTPUTS:
        raise MrRobustError(f"{path}: output {record.get('output')!r} must be one of "
                            f"{', '.join(OUTPUTS)}")
    scale = record.get("input_scale")
    number = isinstance(scale, (int, float)) and not isinstance(scale, bool)
    if not (scale == "store" or (number and math.isfinite(scale) and scale > 0)):
        raise MrRobustError(f"{path}: input_scale {scale!r} must be \"store\" or a positive "
                            f"number (the program's input is |x| / input_scale)")
    norm, seed = record.get("norm", UNKNOWN_NORM), record.get("seed", 0)
    if not isinstance(norm, str) or isinstance(seed, bool) or not isinstance(seed, int):
        raise MrRobustError(f"{path}: norm must be a string and seed an integer")
    return ModelRecord(tuple(labels), record["output"],
                       "store" if scale == "store" else float(scale), norm, seed)


# ---- the archive check: nothing torch would unpickle or execute --------------------------


def _refuse(path: Path, why: str, fix: str) -> MrRobustError:
    return MrRobustError(f"{path}: {why}; {fix}")


_EXPORT_FIX = "save the program with torch.export.export(...) and torch.export.save(...)"


def _archive_names(path: Path) -> tuple[zipfile.ZipFile, str, list[str]]:
    """The open zip, its root folder and the names below it; refuses what is not a zip or
    is another torch format (a pickle, torch.save, TorchScript)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as err:
        raise _refuse(path, f"unreadable ({err.strerror or err})", "check the MODEL folder") from None
    if head.startswith(_PICKLE_HEAD):
        raise _refuse(path, "is a pickle, not a torch.export program (mrrobust never "
                            "unpickles models)", _EXPORT_FIX)
    if head != _ZIP_HEAD:
        raise _refuse(path, "is not a torch.export archive (not a zip file)", _EXPORT_FIX)
    try:
        archive = zipfile.ZipFile(path)
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as err:
        raise _refuse(path, f"is a damaged zip archive ({err})", _EXPORT_FIX) from None
    roots = {name.split("/", 1)[0] for name in names}
    inner = [name.split("/", 1)[1] if "/" in name else "" for name in names]
    why = None
    if any(part == "constants.pkl" or part.startswith("code/") for part in inner):
        why = "is a TorchScript archive (torch.jit.save), not a torch.export program"
    elif "data.pkl" in inner or "archive_format" not in inner:
        why = "is a torch.save archive (a pickle), not a torch.export program"
    elif len(roots) != 1:
        why = f"has {len(roots)} root folders; a torch.export archive has one"
    if why:
        archive.close()
        raise _refuse(path, why, _EXPORT_FIX)
    return archive, roots.pop(), inner


def _json_entry(archive: zipfile.ZipFile, root: str, name: str, path: Path):
    try:
        return json.loads(archive.read(f"{root}/{name}"))
    except (KeyError, ValueError, UnicodeDecodeError) as err:
        raise _refuse(path, f"entry {name} is missing or not JSON ({err})", _EXPORT_FIX) from None


def _strings(value):
    """Every (key, string) pair in a JSON value, depth first."""
    stack = [(None, value)]
    while stack:
        key, item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.items())
        elif isinstance(item, list):
            stack.extend((key, v) for v in item)
        elif isinstance(item, str):
            yield key, item


def _tokens_only(text: str, tokens: re.Pattern) -> list[str] | None:
    """`text` split into `tokens`, or None when some part of it is not one."""
    found, at = [], 0
    while at < len(text):
        match = tokens.match(text, at)
        if match is None:
            return None
        found.append(match.group())
        at = match.end()
    return found


def _safe_expression(text: str) -> bool:
    parts = _tokens_only(text, _EXPR_TOKENS)
    return parts is not None and all(
        not (p[0].isalpha() or p[0] == "_") or p in _SYMPY_NAMES or _SYMBOL_NAME.fullmatch(p)
        for p in parts)


def _check_program_json(program: dict, path: Path) -> None:
    """Shape strings (sympify) and guards (exec) from the grammars; no carriage returns."""
    for guard in program.get("guards_code") or []:
        if not isinstance(guard, str) or _tokens_only(guard, _GUARD_TOKENS) is None:
            raise _refuse(path, f"carries guard code mrrobust does not run ({str(guard)[:60]!r}; "
                                f"torch would exec it)", "export without such constraints")
    symbols = list((program.get("range_constraints") or {}).keys())
    for key, text in _strings(program):
        if "\r" in text or "\x00" in text:
            raise _refuse(path, "holds a string with a carriage return or NUL (torch writes "
                                "Python source from the graph's strings)", _EXPORT_FIX)
        if key == "expr_str" and not _safe_expression(text):
            raise _refuse(path, f"holds a shape expression outside the sympy grammar "
                                f"({text[:60]!r}; torch would eval it)", _EXPORT_FIX)
    if not all(isinstance(s, str) and _SYMBOL_NAME.fullmatch(s) for s in symbols):
        raise _refuse(path, f"has range constraints on names that are not symbols "
                            f"({symbols[:3]})", _EXPORT_FIX)


def _check_payloads(archive, root: str, names: list[str], model: str, path: Path) -> None:
    """Weights and constants are raw tensors (no pickle, no custom or opaque objects); the
    sample inputs load with the weights-only unpickler."""
    for kind, prefix in (("weights", "weight_"), ("constants", "tensor_")):
        config = _json_entry(archive, root, f"data/{kind}/{model}_{kind}_config.json", path)
        entries = config.get("config") if isinstance(config, dict) else None
        if not isinstance(entries, dict):
            raise _refuse(path, f"its {kind} config is not a mapping", _EXPORT_FIX)
        for fqn, meta in entries.items():
            if (not isinstance(meta, dict) or meta.get("use_pickle") is not False
                    or not str(meta.get("path_name", "")).startswith(prefix)):
                raise _refuse(path, f"{kind[:-1]} {fqn!r} is a pickled or custom object, not a "
                                    f"plain tensor (mrrobust never unpickles models)",
                              "export a program whose weights and constants are plain tensors")
    samples = f"data/sample_inputs/{model}.pt"
    if samples in names:
        try:
            torch.load(io.BytesIO(archive.read(f"{root}/{samples}")), weights_only=True)
        except Exception as err:  # the restricted unpickler refused: torch would retry unsafely
            raise _refuse(path, f"its sample inputs are not plain tensors ({type(err).__name__})",
                          _EXPORT_FIX) from None


def check_archive(path: Path) -> None:
    """Refuse (one line) a `model.pt2` that `torch.export.load` would unpickle arbitrary
    objects from, execute code from, or that is not a single torch.export program."""
    path = Path(path)
    archive, root, names = _archive_names(path)
    with archive:
        strange = [name for name in names if not _ARCHIVE_FILES.fullmatch(name)]
        if strange:
            raise _refuse(path, f"holds entries outside a plain torch.export program "
                                f"({', '.join(strange[:3])}: compiled code, legacy pickles or "
                                f"custom objects)", _EXPORT_FIX)
        models = [m.group("model") for m in map(_ARCHIVE_FILES.fullmatch, names) if m["model"]]
        if len(models) != 1:
            raise _refuse(path, f"holds {len(models)} programs; a MODEL holds exactly one",
                          _EXPORT_FIX)
        format_name = archive.read(f"{root}/archive_format").decode(errors="replace").strip()
        if format_name != "pt2":
            raise _refuse(path, f"archive format {format_name!r} is not pt2", _EXPORT_FIX)
        program = _json_entry(archive, root, f"models/{models[0]}.json", path)
        if not isinstance(program, dict):
            raise _refuse(path, "its program is not a JSON object", _EXPORT_FIX)
        _check_program_json(program, path)
        _check_payloads(archive, root, names, models[0], path)


# ---- loading ---------------------------------------------------------------------------------


def _operators_only(program, path: Path) -> None:
    """Every call in the graph is a registered torch operator (or tuple indexing)."""
    allowed = (torch._ops.OpOverload, torch._ops.HigherOrderOperator)
    for node in program.graph.nodes:
        if node.op == "call_function" and not (isinstance(node.target, allowed)
                                               or node.target is operator.getitem):
            raise _refuse(path, f"calls {node.target!r}, not a torch operator", _EXPORT_FIX)
        if node.op in ("call_module", "call_method"):
            raise _refuse(path, f"holds a {node.op} node; a torch.export program calls "
                                f"operators only", _EXPORT_FIX)


def _signature(program, path: Path, labels: int) -> tuple[int, int] | None:
    """Check one float32 input `(B, 1, H, W)` and one output `(B, labels)`; returns (H, W)
    when they are fixed, None when they are symbolic."""
    inputs = [n for n in program.graph.nodes if n.op == "placeholder"
              and n.name in program.graph_signature.user_inputs]
    outputs = program.graph_signature.user_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise _refuse(path, f"takes {len(inputs)} inputs and returns {len(outputs)} outputs; a "
                            f"MODEL takes one (B, 1, H, W) tensor and returns one (B, L)",
                      _EXPORT_FIX)
    given = inputs[0].meta.get("val")
    if (not isinstance(given, torch.Tensor) or given.dtype != torch.float32 or given.dim() != 4
            or given.shape[1] != 1):
        shape = tuple(given.shape) if isinstance(given, torch.Tensor) else given
        raise _refuse(path, f"its input is {shape} {getattr(given, 'dtype', '')}, not (B, 1, H, "
                            f"W) float32", _EXPORT_FIX)
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    result = output_node.args[0][0].meta.get("val")
    if (not isinstance(result, torch.Tensor) or result.dim() != 2
            or not isinstance(result.shape[1], int) or result.shape[1] != labels):
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else result
        raise _refuse(path, f"returns {shape}, but {RECORD_FILE} names {labels} label(s)",
                      f"return (B, {labels}) or list the program's labels in {RECORD_FILE}")
    height, width = given.shape[2:]
    return (height, width) if isinstance(height, int) and isinstance(width, int) else None


def load_program(path: Path, labels: int):
    """The checked `torch.export.ExportedProgram` in `path` (`check_archive`, then
    `torch.export.load`, then operators and signature: `(B, 1, H, W)` -> `(B, labels)`)
    and its fixed input size (H, W), or None when H and W are dynamic."""
    path = Path(path)
    if not path.is_file():
        raise MrRobustError(f"no {path.name} in {path.parent}: a MODEL folder holds "
                            f"{PROGRAM_FILE} and {RECORD_FILE} (write one with `mrrobust export`)")
    check_archive(path)
    try:
        program = torch.export.load(path)
    except Exception as err:  # a checked archive torch still cannot read (e.g. a newer schema)
        raise _refuse(path, f"torch.export.load failed ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})",
                      f"export it with torch {torch.__version__.split('+')[0]}") from None
    _operators_only(program, path)
    return program, _signature(program, path, labels)


class ExportedClassifier(nn.Module):
    """A MODEL as the network of a RUN: `(B, 1, H, W)` STORE-scaled float32 -> two-way
    logits `(B, 4, 2)` in LABELS order, so `models.positive_probability` gives the positive
    probability; absent labels are NaN. `present` `(4,)` bool marks the MODEL's labels,
    `input_size` is the program's fixed (H, W) or None."""

    def __init__(self, program, record: ModelRecord, store_scale: float,
                 input_size: tuple[int, int] | None):
        super().__init__()
        self.program = program.module()
        self.record, self.input_size = record, input_size
        self.factor = record.input_factor(store_scale)
        order = [record.labels.index(label) if label in record.labels else -1 for label in LABELS]
        self.register_buffer("columns", torch.tensor([max(i, 0) for i in order]), persistent=False)
        self.register_buffer("present", torch.tensor([i >= 0 for i in order]), persistent=False)

    def train(self, mode: bool = True) -> "ExportedClassifier":
        """A program has no training mode (its graph is fixed): only the flag changes."""
        self.training = bool(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and tuple(x.shape[2:]) != self.input_size:
            raise MrRobustError(f"the MODEL takes {self.input_size[0]}x{self.input_size[1]} "
                                f"images, the STORE has {x.shape[2]}x{x.shape[3]}; evaluate it "
                                f"on a STORE of its size")
        inputs = x.float() if self.factor == 1.0 else x.float() * self.factor
        values = self.program(inputs).float()[:, self.columns]
        if self.record.output == "probabilities":
            logits = torch.stack([torch.log1p(-values), torch.log(values)], dim=-1)
        else:
            logits = torch.stack([torch.zeros_like(values), values], dim=-1)
        return logits.masked_fill(~self.present[None, :, None], math.nan)


def load_model(folder: Path, map_location: str | torch.device = "cpu",
               store_scale: float = 1.0) -> tuple[ExportedClassifier, ModelRecord]:
    """The MODEL in `folder` as an `ExportedClassifier` on `map_location` (eval mode), for
    STORE-scaled inputs of a STORE with scale `store_scale`, and its record."""
    folder = Path(folder)
    record = read_record(folder)
    program, input_size = load_program(folder / PROGRAM_FILE, len(record.labels))
    model = ExportedClassifier(program, record, store_scale, input_size)
    return model.to(map_location).eval(), record


def present_labels(record: ModelRecord) -> np.ndarray:
    """`(4,)` bool in LABELS order: the labels the MODEL predicts."""
    return np.array([label in record.labels for label in LABELS])


def thresholds(folder: Path) -> np.ndarray | None:
    """`(4,)` float64 thresholds from `folder/operating_points.json` (NaN where undefined or
    absent), or None when the MODEL has none (AUC only)."""
    path = Path(folder) / OPERATING_POINTS_FILE
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text())["labels"]
        values = [(labels.get(label) or {}).get("threshold") for label in LABELS]
        return np.array([math.nan if v is None else float(v) for v in values], np.float64)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise MrRobustError(f"{path}: unreadable operating points ({type(err).__name__}); "
                            f"delete it and run `mrrobust calibrate {folder} --data STORE`") from None


def model_digest(folder: Path) -> str:
    """BLAKE2b-128 over the program, the record and the operating points (when present):
    any change to what the MODEL predicts or how it is thresholded changes it."""
    digest = hashlib.blake2b(digest_size=16)
    for name in (PROGRAM_FILE, RECORD_FILE, OPERATING_POINTS_FILE):
        path = Path(folder) / name
        if path.is_file():
            digest.update(name.encode() + b"\0")
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()


def evaluation_record(folder: Path, given: str) -> dict:
    """The entry of a MODEL in evaluation.json's "runs" (a RUN's keys plus kind, labels,
    output and input_scale; "weights" is `model_digest`)."""
    folder = Path(folder).resolve()
    record = read_record(folder)
    return {"kind": "model", "name": folder.name, "given": str(given), "path": str(folder),
            "norm": record.norm, "seed": record.seed, "batch_norm": False,
            "labels": list(record.labels), "output": record.output,
            "input_scale": record.input_scale, "weights": model_digest(folder)}


# ---- export: a RUN as a MODEL ------------------------------------------------------------------


class BinaryLogits(nn.Module):
    """A RUN's network `(B, 1, H, W)` -> `(B, L)` binary logits `l1 - l0` of its two-way
    heads (so `sigmoid(l1 - l0) = softmax(l)[..., 1]`)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return logits[..., 1] - logits[..., 0]


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise MrRobustError(f"--out {out} is a file; choose a folder for the MODEL")
    if out.is_dir() and any(out.iterdir()) and not (force and is_model_folder(out)):
        what = "holds a MODEL" if is_model_folder(out) else "is not empty"
        raise MrRobustError(f"--out {out} {what}; choose another folder"
                            + (" or pass --force to replace it" if is_model_folder(out) else ""))


def export_run(run: Path, out: Path, *, input_scale: str = "run", force: bool = False) -> dict:
    """Write RUN `run` as the MODEL folder `out`: the network in eval mode as a program with
    a dynamic batch and the RUN's crop, the record (labels, "logits", input_scale: the RUN's
    training scale, or "store" for `input_scale="store"`, norm, seed) and the RUN's
    operating points. Returns {"out", "labels", "input_size", "input_scale"}."""
    from mrrobust.atomic import atomic_write
    from mrrobust.data.store import write_json_atomic
    from mrrobust.models import load, read_config

    run, out = Path(run), Path(out)
    if input_scale not in ("run", "store"):
        raise MrRobustError(f"--input-scale {input_scale!r} must be run (the RUN's training "
                            f"scale, a number) or store")
    net, config = load(run)  # checks the RUN folder
    points = run / OPERATING_POINTS_FILE
    if not points.is_file():
        raise MrRobustError(f"RUN {run} lacks {OPERATING_POINTS_FILE}: it is not a finished "
                            f"run; finish it with `mrrobust train --resume --out {run}`")
    _check_out(out, force)
    store = config.get("store", {})
    crop, scale = store.get("crop"), store.get("scale")
    if not isinstance(crop, int) or not isinstance(scale, (int, float)) or scale <= 0:
        raise MrRobustError(f"{run}/config.json has no store crop and scale; re-run `mrrobust "
                            f"train` with this version")
    example = torch.zeros(2, 1, crop, crop)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(BinaryLogits(net).eval(), (example,),
                                      dynamic_shapes=({0: batch},))
    record = ModelRecord(tuple(net.labels), "logits",
                         "store" if input_scale == "store" else float(scale),
                         str(config["model"]["norm"]),
                         int(config.get("training", {}).get("seed", 0)))
    try:
        out.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        atomic_write(out / PROGRAM_FILE, lambda p: p.write_bytes(buffer.getvalue()))
        atomic_write(out / OPERATING_POINTS_FILE, lambda p: p.write_bytes(points.read_bytes()))
        write_json_atomic(out / RECORD_FILE, record.json())  # last: a MODEL without it is unfinished
    except OSError as err:
        raise MrRobustError(f"cannot write the MODEL folder {out} ({err.strerror or err}); "
                            f"choose a writable --out") from None
    return {"out": out, "labels": list(record.labels), "input_size": (crop, crop),
            "input_scale": record.input_scale}
