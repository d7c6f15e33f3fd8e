"""A seeded fuzz of damaged STOREs, RUNs, RESULTS and fastMRI HDF5 files.

Every field of every contract is dropped, retyped, resized or truncated (the offsets of
truncations and injected bytes drawn from a seeded generator); every case goes through the
commands that read it (in-process, through `mrrobust.cli.main`) and must end in exit code
2 with exactly one line on stderr, no traceback, and nothing written. The cases counted
here are the figure of the note (`pytest tests/test_fuzz.py -s` prints the tally).
"""

import io
import json
import os
import random
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

DROP = object()
SEED = 12
TRAIN = ["--width", "4", "--groups", "4", "--max-epochs", "1", "--workers", "0", "--accelerator", "cpu", "--quiet"]


# ---- damage helpers (a damaged file is always a new file: the copies are hard links) ------


def rewrite(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def edit_json(path: Path, dotted: str, value) -> None:
    document = json.loads(path.read_text())
    *parents, last = dotted.split(".")
    node = document
    for key in parents:
        node = node[key] if not isinstance(node, list) else node[int(key)]
    if value is DROP:
        del node[last]
    else:
        node[last] = value
    rewrite(path, json.dumps(document).encode())


def truncate(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    rewrite(path, data[: rng.randrange(1, len(data))])


def inject(path: Path, rng: random.Random, junk: bytes = b"\xff\xfe") -> None:
    data = path.read_bytes()
    at = rng.randrange(0, len(data))
    rewrite(path, data[:at] + junk + data[at:])


def edit_cell(path: Path, row: int, column: str, value) -> None:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[row].split(",")
    if value is DROP:
        del cells[header.index(column)]
    else:
        cells[header.index(column)] = value
    lines[row] = ",".join(cells)
    rewrite(path, ("\n".join(lines) + "\n").encode())


def edit_lines(path: Path, change) -> None:
    lines = path.read_text().splitlines()
    rewrite(path, ("\n".join(change(lines)) + "\n").encode())


def save_npy(path: Path, array) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    rewrite(path, buffer.getvalue())


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x55
    rewrite(path, bytes(data))


# ---- the cases -----------------------------------------------------------------------------


def store_cases(rng: random.Random, volumes: list[str]):
    """(name, damage(store), commands): commands among verify, train, evaluate."""
    every, cases = ("verify", "train", "evaluate"), []
    manifest = lambda key, value: (lambda s: edit_json(s / "manifest.json", key, value))  # noqa: E731
    for key, values in {
        "format": [DROP, 1, None, "mrrobust-run"], "version": [DROP, "1", None, 2, 0],
        "crop": [DROP, "64", None, 0, -1, 32, 10**9, 64.5], "scale": [DROP, "1", None, 0, -1.5, [1]],
        "seed": ["0", -1, 1.5], "fractions": ["x", [1.0], [0.5, 0.5, 0.5, 0.5], [2, -1, 0]],
        "counts": ["x", {"volumes": -1}], "challenge": [1, "mono"], "source": [1, ["x"]],
        "skipped": ["x", [1]], "warnings": [1, [2]], "checksums": ["x", 1, {}],
        "checksums.algorithm": ["md5", DROP], "checksums.slices_csv": ["0" * 64, "x", DROP, 1],
        "checksums.volumes": [{}, "x"],
        f"checksums.volumes.{volumes[0]}.shape": [[12, 64], [11, 64, 64], ["12", 64, 64], DROP],
        f"checksums.volumes.{volumes[0]}.dtype": ["float32", DROP, 1],
        f"checksums.volumes.{volumes[0]}.sha256": ["zz", "0" * 63, DROP],
    }.items():
        for value in values:
            cases.append((f"manifest {key} {'dropped' if value is DROP else repr(value)}", manifest(key, value), every))
    cases.append(("manifest checksum of a volume another well-formed digest",
                  manifest(f"checksums.volumes.{volumes[0]}.sha256", "0" * 64), ("verify",)))  # the full pass only
    cases += [
        ("manifest truncated", lambda s: truncate(s / "manifest.json", rng), every),
        ("manifest non-UTF-8", lambda s: inject(s / "manifest.json", rng), every),
        ("manifest a list", lambda s: rewrite(s / "manifest.json", b"[]"), every),
        ("manifest empty", lambda s: rewrite(s / "manifest.json", b""), every),
        ("manifest deleted", lambda s: (s / "manifest.json").unlink(), every),
    ]
    slices = lambda s: s / "slices.csv"  # noqa: E731
    for column in ("volume", "slice", "split", "abnormal", "mtear", "acl", "cartilage"):
        for value in (DROP, "x", "", "999", "-1", "1.5"):
            row = rng.randrange(1, 100)
            cases.append((f"slices.csv row {row} {column} {'dropped' if value is DROP else repr(value)}",
                          lambda s, r=row, c=column, v=value: edit_cell(slices(s), r, c, v), every))
    for _ in range(4):
        cases.append(("slices.csv truncated", lambda s: truncate(slices(s), rng), every))
        cases.append(("slices.csv non-UTF-8", lambda s: inject(slices(s), rng), every))
    cases += [
        ("slices.csv header column dropped", lambda s: edit_lines(slices(s), lambda l: [l[0].replace("split,", "")] + l[1:]), every),
        ("slices.csv row duplicated", lambda s: edit_lines(slices(s), lambda l: l[:5] + l[4:]), every),
        ("slices.csv row deleted", lambda s: edit_lines(slices(s), lambda l: l[:5] + l[6:]), every),
        ("slices.csv rows deleted (a whole volume)", lambda s: edit_lines(slices(s), lambda l: l[:1] + l[13:]), every),
        ("slices.csv label flipped (well-formed)",
         lambda s: edit_lines(slices(s), lambda l: l[:1] + [l[1].replace(",0,", ",1,", 1) if ",0," in l[1] else l[1].replace(",1,", ",0,", 1)] + l[2:]), every),
        ("slices.csv a cell too many", lambda s: edit_lines(slices(s), lambda l: l[:3] + [l[3] + ",x"] + l[4:]), every),
        ("slices.csv deleted", lambda s: slices(s).unlink(), every),
        ("slices.csv empty", lambda s: rewrite(slices(s), b""), every),
    ]
    for name in (volumes[0], rng.choice(volumes[1:])):
        npy = lambda s, n=name: s / "volumes" / f"{n}.npy"  # noqa: E731
        load = lambda s, n=name: np.load(s / "volumes" / f"{n}.npy")  # noqa: E731
        cases += [
            (f"{name}.npy truncated", lambda s, f=npy: truncate(f(s), rng), every),
            (f"{name}.npy header truncated", lambda s, f=npy: rewrite(f(s), f(s).read_bytes()[:40]), every),
            (f"{name}.npy float64", lambda s, f=npy, a=load: save_npy(f(s), np.abs(a(s)).astype(np.float64)), every),
            (f"{name}.npy complex128", lambda s, f=npy, a=load: save_npy(f(s), a(s).astype(np.complex128)), every),
            (f"{name}.npy int16", lambda s, f=npy, a=load: save_npy(f(s), a(s).real.astype(np.int16)), every),
            (f"{name}.npy one slice fewer", lambda s, f=npy, a=load: save_npy(f(s), a(s)[:-1]), every),
            (f"{name}.npy one slice more", lambda s, f=npy, a=load: save_npy(f(s), np.concatenate([a(s), a(s)[:1]])), every),
            (f"{name}.npy other crop", lambda s, f=npy, a=load: save_npy(f(s), a(s)[:, :32, :32].copy()), every),
            (f"{name}.npy rank 2", lambda s, f=npy, a=load: save_npy(f(s), a(s)[0].copy()), every),
            (f"{name}.npy Fortran order", lambda s, f=npy, a=load: save_npy(f(s), np.asfortranarray(a(s))), every),
            (f"{name}.npy object array (pickle)", lambda s, f=npy: save_npy(f(s), np.array([None, 1], dtype=object)), every),
            (f"{name}.npy garbage", lambda s, f=npy: rewrite(f(s), os.urandom(256)), every),
            (f"{name}.npy empty", lambda s, f=npy: rewrite(f(s), b""), every),
            (f"{name}.npy deleted", lambda s, f=npy: f(s).unlink(), every),
            (f"{name}.npy padded", lambda s, f=npy: rewrite(f(s), f(s).read_bytes() + b"\0" * 8), every),
            (f"{name}.npy one data byte changed", lambda s, f=npy: flip_last_byte(f(s)), ("verify",)),
        ]
    return cases


def run_cases(rng: random.Random):
    both = ("verify", "evaluate")
    config = lambda key, value: (lambda r: edit_json(r / "config.json", key, value))  # noqa: E731
    cases = []
    for key, values in {
        "format": [DROP, "x"], "version": [DROP, 2, "1"], "model": [DROP, None, "x", []],
        "model.width": [DROP, 10**6, 0, "4", 4.0, None], "model.depth": [50, "18", DROP],
        "model.norm": ["foo", 3, DROP], "model.groups": [0, "4"], "model.labels": [["acl"], "x"],
        "model.arch": ["vit", DROP], "model.pool": [0, 10**6], "model.in_channels": [0, "1"],
        "training": ["x", []], "training.seed": ["0", -1, None], "training.lr": ["fast", 0, None],
        "training.batch_size": [0, "32"], "training.precision": ["64"], "training.accelerator": ["tpu"],
        "store": ["elsewhere", 1], "store.scale": [0, "1", None], "store.crop": [0, "64"],
    }.items():
        for value in values:
            cases.append((f"config.json {key} {'dropped' if value is DROP else repr(value)}", config(key, value), both))
    points = lambda key, value: (lambda r: edit_json(r / "operating_points.json", key, value))  # noqa: E731
    for key, values in {"labels": [DROP, "x", {}], "labels.acl": [DROP, "x"], "labels.acl.threshold": ["x", 2, -1],
                        "epoch": [-1, "0"], "slices": ["x"]}.items():
        for value in values:
            cases.append((f"operating_points.json {key} {'dropped' if value is DROP else repr(value)}",
                          points(key, value), ("verify",)))
    for name, commands in (("config.json", both), ("operating_points.json", ("verify",))):
        cases += [(f"{name} truncated", lambda r, n=name: truncate(r / n, rng), commands),
                  (f"{name} non-UTF-8", lambda r, n=name: inject(r / n, rng), commands),
                  (f"{name} deleted", lambda r, n=name: (r / n).unlink(), commands)]
    weights = lambda r: r / "model.safetensors"  # noqa: E731
    cases += [
        ("model.safetensors truncated", lambda r: truncate(weights(r), rng), both),
        ("model.safetensors garbage", lambda r: rewrite(weights(r), os.urandom(512)), both),
        ("model.safetensors a pickle", lambda r: rewrite(weights(r), b"\x80\x04" + os.urandom(64)), both),
        ("model.safetensors a torch.save zip", lambda r: rewrite(weights(r), b"PK\x03\x04" + os.urandom(64)), both),
        ("model.safetensors deleted", lambda r: weights(r).unlink(), both),
        ("model.safetensors of another width", lambda r: edit_json(r / "config.json", "model.width", 8), both),
    ]
    return cases


def results_cases(rng: random.Random):
    settings = lambda key, value: (lambda r: edit_json(r / "evaluation.json", key, value))  # noqa: E731
    cases = []
    for key, values in {
        "format": [DROP, "x"], "runs": [DROP, [], "x"], "runs.0.weights": ["x", DROP], "runs.0.name": ["a/b", 1],
        "severities": [[9], ["1"], "x"], "artifacts": [["../x"], "noise"], "bn_modes": [["x"], []],
        "level": [2, 0, "x"], "bootstrap": [-1], "split": ["holdout"], "seed": ["0"],
    }.items():
        for value in values:
            cases.append((f"evaluation.json {key} {'dropped' if value is DROP else repr(value)}", settings(key, value), ("verify",)))
    csv = lambda r: r / "results.csv"  # noqa: E731
    for column, values in {"severity": ["x", "9", DROP], "label": ["foo"], "value": ["abc"], "bn_mode": ["x"],
                           "seed": ["-1"]}.items():
        for value in values:
            cases.append((f"results.csv {column} {'dropped' if value is DROP else repr(value)}",
                          lambda r, c=column, v=value: edit_cell(csv(r), 2, c, v), ("verify",)))
    prediction = lambda r: sorted((r / "predictions").rglob("*.npy"))[0]  # noqa: E731
    cases += [
        ("evaluation.json truncated", lambda r: truncate(r / "evaluation.json", rng), ("verify",)),
        ("results.csv truncated", lambda r: truncate(csv(r), rng), ("verify",)),
        ("results.csv non-UTF-8", lambda r: inject(csv(r), rng), ("verify",)),
        ("results.csv header only a column", lambda r: rewrite(csv(r), b"run\n"), ("verify",)),
        ("slices.csv of RESULTS deleted", lambda r: (r / "slices.csv").unlink(), ("verify",)),
        ("prediction truncated", lambda r: truncate(prediction(r), rng), ("verify",)),
        ("prediction float64", lambda r: save_npy(prediction(r), np.load(prediction(r)).astype(np.float64)), ("verify",)),
        ("prediction one row fewer", lambda r: save_npy(prediction(r), np.load(prediction(r))[:-1]), ("verify",)),
        ("prediction NaN", lambda r: save_npy(prediction(r), np.full_like(np.load(prediction(r)), np.nan)), ("verify",)),
        ("prediction deleted", lambda r: prediction(r).unlink(), ("verify",)),
    ]
    return cases


def hdf5_cases(rng: random.Random):
    """(name, write(path, source)), every case refused by prepare and gallery."""

    def with_kspace(make):
        def write(path: Path, source: Path) -> None:
            with h5py.File(source, "r") as src, h5py.File(path, "w") as hf:
                for key, value in src.attrs.items():
                    hf.attrs[key] = value
                hf.create_dataset("ismrmrd_header", data=src["ismrmrd_header"][()])
                make(hf, src["kspace"][()])
        return write

    def copy_then(change):
        def write(path: Path, source: Path) -> None:
            shutil.copyfile(source, path)
            change(path)
        return write

    return [
        ("kspace dropped", with_kspace(lambda hf, k: None)),
        ("kspace a group", with_kspace(lambda hf, k: hf.create_group("kspace"))),
        ("kspace a soft link to nowhere", with_kspace(lambda hf, k: hf.__setitem__("kspace", h5py.SoftLink("/nowhere")))),
        ("kspace real float32", with_kspace(lambda hf, k: hf.create_dataset("kspace", data=k.real))),
        ("kspace int16", with_kspace(lambda hf, k: hf.create_dataset("kspace", data=k.real.astype(np.int16)))),
        ("kspace strings", with_kspace(lambda hf, k: hf.create_dataset("kspace", data=np.array([b"x"] * 4)))),
        ("kspace a scalar", with_kspace(lambda hf, k: hf.create_dataset("kspace", data=np.complex64(1)))),
        ("kspace rank 2", with_kspace(lambda hf, k: hf.create_dataset("kspace", data=k[0]))),
        ("kspace rank 5", with_kspace(lambda hf, k: hf.create_dataset("kspace", data=k[None, None]))),
        ("kspace 0 slices", with_kspace(lambda hf, k: hf.create_dataset("kspace", data=k[:0]))),
        ("kspace 0 lines", with_kspace(lambda hf, k: hf.create_dataset("kspace", data=k[:, :0]))),
        ("kspace declared (1, 100000, 100000)", with_kspace(
            lambda hf, k: hf.create_dataset("kspace", shape=(1, 100000, 100000), dtype=np.complex64))),
        ("kspace declared (10**6, 4, 4) slices", with_kspace(
            lambda hf, k: hf.create_dataset("kspace", shape=(10**6, 4, 4), dtype=np.complex64))),
        ("kspace declared beyond memory (1000, 100, 4000, 4000)", with_kspace(
            lambda hf, k: hf.create_dataset("kspace", shape=(1000, 100, 4000, 4000), dtype=np.complex64))),
        ("kspace NaN", with_kspace(lambda hf, k: hf.create_dataset("kspace", data=np.full_like(k, np.nan)))),
        ("kspace smaller than the crop", with_kspace(lambda hf, k: hf.create_dataset("kspace", data=k[:, :16, :16]))),
        ("file truncated", copy_then(lambda p: truncate(p, rng))),
        ("file truncated to its superblock", copy_then(lambda p: rewrite(p, p.read_bytes()[:96]))),
        ("file garbage", copy_then(lambda p: rewrite(p, os.urandom(4096)))),
        ("file empty", copy_then(lambda p: rewrite(p, b""))),
    ]


# ---- the harness ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tiny_store, tmp_path_factory):
    """A finished tiny RUN and RESULTS on the shared STORE (width 4, one epoch, one cell)."""
    from mrrobust.evaluation import evaluate
    from mrrobust.training import train

    root = tmp_path_factory.mktemp("fuzz")
    run = root / "batch-seed0"
    train(tiny_store, run, "batch", width=4, groups=4, max_epochs=1, workers=0, lr=1e-3, batch_size=16,
          accelerator="cpu", quiet=True)
    evaluate([run], tiny_store, root / "results", artifacts=["noise"], severities=[1], bootstrap=20,
             device="cpu", progress=False)
    return {"store": tiny_store, "run": run, "results": root / "results"}


def linked_copy(source: Path, target: Path) -> Path:
    return Path(shutil.copytree(source, target, copy_function=os.link))


class Tally:
    def __init__(self, monkeypatch, capsys):
        self.monkeypatch, self.capsys, self.cases, self.runs, self.failures = monkeypatch, capsys, 0, 0, []

    def expect_refusal(self, case: str, args: list, outputs: list[Path]) -> None:
        from mrrobust.cli import main

        self.runs += 1
        self.monkeypatch.setattr(sys, "argv", ["mrrobust", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code
        err = self.capsys.readouterr().err
        problems = []
        if code != 2:
            problems.append(f"exit {code}")
        if err.count("\n") != 1 or not err.endswith("\n") or ": error: " not in err:
            problems.append(f"stderr not one error line: {err!r}")
        if "Traceback" in err:
            problems.append("traceback")
        written = [str(p) for p in outputs if p.exists()]
        written += [str(p) for out in outputs for p in out.parent.glob(".*.lock")]
        if written:
            problems.append(f"wrote {written}")
        if problems:
            self.failures.append(f"{case} / {args[0]}: {'; '.join(problems)}")


def test_fuzz_every_damage_is_one_line_exit_2_and_writes_nothing(pristine, synth_root, tmp_path, monkeypatch, capsys):
    rng = random.Random(SEED)
    tally = Tally(monkeypatch, capsys)
    store, run, results = pristine["store"], pristine["run"], pristine["results"]
    volumes = sorted(p.stem for p in (store / "volumes").glob("*.npy"))
    for k, (case, damage, commands) in enumerate(store_cases(rng, volumes)):
        copy = linked_copy(store, tmp_path / f"s{k}")
        damage(copy)
        tally.cases += 1
        out = tmp_path / f"s{k}-out"
        command_args = {"verify": (["verify", copy], []),
                        "train": (["train", "--data", copy, "--out", out / "run", *TRAIN], [out / "run"]),
                        "evaluate": (["evaluate", run, "--data", copy, "--out", out / "results", "--device", "cpu", "--quiet"],
                                     [out / "results"])}
        for command in commands:
            tally.expect_refusal(case, *command_args[command])
        shutil.rmtree(copy)
    for k, (case, damage, commands) in enumerate(run_cases(rng)):
        copy = linked_copy(run, tmp_path / f"r{k}" / run.name)
        damage(copy)
        tally.cases += 1
        out = tmp_path / f"r{k}-out" / "results"
        command_args = {"verify": (["verify", copy], []),
                        "evaluate": (["evaluate", copy, "--data", store, "--out", out, "--device", "cpu", "--quiet"], [out])}
        for command in commands:
            tally.expect_refusal(case, *command_args[command])
    for k, (case, damage, commands) in enumerate(results_cases(rng)):
        copy = linked_copy(results, tmp_path / f"x{k}")
        damage(copy)
        tally.cases += 1
        tally.expect_refusal(case, ["verify", copy], [])
    source = sorted((synth_root / "knee" / "singlecoil_train").glob("*.h5"))[0]
    for k, (case, write) in enumerate(hdf5_cases(rng)):
        knee = tmp_path / f"h{k}" / "knee" / "singlecoil_train"
        knee.mkdir(parents=True)
        write(knee / source.name, source)
        annotations = tmp_path / f"h{k}" / "annotations"
        annotations.mkdir()
        (annotations / "knee_file_list.csv").write_text(f"{source.stem}\n")
        (annotations / "knee.csv").write_text("file,slice,study_level,x,y,width,height,label\n")
        tally.cases += 1
        out = tmp_path / f"h{k}-out"
        tally.expect_refusal(case, ["prepare", "--fastmri", knee.parent, "--annotations", annotations, "--out",
                                    out / "store", "--crop", "32", "--no-progress"], [out / "store"])
        tally.expect_refusal(case, ["gallery", "--data", knee / source.name, "--out", out / "g.png"], [out / "g.png"])
    print(f"\nfuzz: {tally.cases} damaged inputs, {tally.runs} command runs, "
          f"{tally.runs - len(tally.failures)} ended as one clear line with exit code 2")
    assert not tally.failures, "\n".join(tally.failures)
