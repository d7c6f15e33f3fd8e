"""`mrrobust.contracts`: every on-disk contract refused at the door with one line naming the
file and the field; checksums of a STORE; HDF5 declarations checked before any read."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mrrobust import contracts
from mrrobust.data.store import SliceDataset, read_manifest
from mrrobust.errors import MrRobustError, one_line


@pytest.fixture
def store(tiny_store, tmp_path) -> Path:
    """A private copy of the shared tiny STORE, free to damage."""
    return Path(shutil.copytree(tiny_store, tmp_path / "store"))


def edit_manifest(store: Path, **changes) -> None:
    manifest = json.loads((store / "manifest.json").read_text())
    for key, value in changes.items():
        if value is KeyError:
            manifest.pop(key)
        else:
            manifest[key] = value
    (store / "manifest.json").write_text(json.dumps(manifest))


def edit_cell(store: Path, column: str, value: str, row: int = 0) -> None:
    lines = (store / "slices.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1 + row].split(",")
    cells[header.index(column)] = value
    lines[1 + row] = ",".join(cells)
    (store / "slices.csv").write_text("\n".join(lines) + "\n")


def first_volume(store: Path) -> Path:
    return sorted((store / "volumes").glob("*.npy"))[0]


def test_the_prepared_store_passes_and_records_every_volume(tiny_store):
    manifest = read_manifest(tiny_store)
    volumes = sorted(p.stem for p in (tiny_store / "volumes").glob("*.npy"))
    assert sorted(manifest["checksums"]["volumes"]) == volumes
    for name, record in manifest["checksums"]["volumes"].items():
        array = np.load(tiny_store / "volumes" / f"{name}.npy")
        assert record["shape"] == list(array.shape) and record["dtype"] == str(array.dtype)
        # independent digest: hashlib over the raw data bytes
        import hashlib

        assert record["sha256"] == hashlib.sha256(array.tobytes()).hexdigest()
    assert "STORE intact" in contracts.verify(tiny_store)


@pytest.mark.parametrize("changes, says", [
    ({"scale": KeyError}, "field scale: field required, missing"),
    ({"scale": 0}, "field scale: input should be greater than 0"),
    ({"scale": "1.0"}, "field scale: input should be a valid number"),
    ({"scale": None}, "field scale"),
    ({"crop": 32}, "is not (slices, crop, crop) with crop 32"),
    ({"crop": "64"}, "field crop"),
    ({"seed": -1}, "field seed"),
    ({"counts": "many"}, "field counts"),
    ({"checksums": {"algorithm": "md5"}}, "field checksums.algorithm"),
])
def test_damaged_manifest_names_the_file_and_field(store, changes, says):
    edit_manifest(store, **changes)
    with pytest.raises(MrRobustError) as err:
        SliceDataset(store, "train")
    assert f"{store / 'manifest.json'}" in str(err.value) and says in str(err.value)


@pytest.mark.parametrize("column, value, says", [
    ("abnormal", "7", "line 2: field abnormal: input should be '0' or '1', got '7'"),
    ("mtear", "x", "line 2: field mtear"),
    ("slice", "-1", "line 2: field slice: input should be greater than or equal to 0"),
    ("split", "holdout", "line 2: field split"),
    ("volume", "../etc", "line 2: field volume"),
])
def test_damaged_slices_csv_names_the_line_and_field(store, column, value, says):
    edit_cell(store, column, value)
    with pytest.raises(MrRobustError, match="slices.csv") as err:
        SliceDataset(store)
    assert says in str(err.value)


def test_slice_beyond_its_volume_and_valid_looking_edits_are_refused(store):
    rows = (store / "slices.csv").read_text().splitlines()
    slice_column = rows[0].split(",").index("slice")
    edit_cell(store, "slice", "99")
    with pytest.raises(MrRobustError, match="lists slices .* its file holds slices 0..11"):
        SliceDataset(store)
    (store / "slices.csv").write_text("\n".join(rows) + "\n")
    first = rows[1].split(",")
    edit_cell(store, "abnormal", "1" if first[3] == "0" else "0")  # a well-formed edit: the digest catches it
    with pytest.raises(MrRobustError, match="edited since `mrrobust prepare` wrote it"):
        SliceDataset(store)
    assert slice_column == 1
    (store / "slices.csv").write_bytes(b"volume,slice\n\xff\xfe\n")
    with pytest.raises(MrRobustError, match="not UTF-8 text"):
        SliceDataset(store)


@pytest.mark.parametrize("damage, says", [
    (lambda a: a.astype(np.complex128), "complex128 (12, 64, 64), expected complex64 (12, 64, 64)"),
    (lambda a: a[:-1], "complex64 (11, 64, 64), expected complex64 (12, 64, 64)"),
    (lambda a: a[:, :32, :32], "expected complex64 (12, 64, 64)"),
    (lambda a: np.abs(a), "float32"),
])
def test_damaged_volume_headers_are_refused_at_open(store, damage, says):
    path = first_volume(store)
    np.save(path, damage(np.load(path)))
    with pytest.raises(MrRobustError, match=str(path.name)) as err:
        SliceDataset(store)
    assert says in str(err.value)


def test_truncated_volume_and_flipped_byte(store):
    path = first_volume(store)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(MrRobustError, match="truncated or padded"):
        SliceDataset(store)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    path.write_bytes(bytes(flipped))
    SliceDataset(store)  # the cheap checks at open pass (same header, same size) ...
    with pytest.raises(MrRobustError, match=f"{path.name}: edited since"):
        contracts.verify(store)  # ... the full pass finds it


def run_config(tmp_path: Path, **sections) -> Path:
    from mrrobust.models import MODEL_DEFAULTS, write_config

    config = {"model": dict(MODEL_DEFAULTS, width=4, groups=4),
              "training": {"lr": 1e-3, "weight_decay": 0.0, "batch_size": 8, "max_epochs": 1, "patience": 1,
                           "seed": 0, "weighted_sampler": True, "augment": None, "precision": "32",
                           "compile": False, "accelerator": "cpu", "devices": 1, "num_nodes": 1, "workers": 0,
                           "limit_train_batches": None, "limit_val_batches": None, "monitor": "val_auc_mean"},
              "store": {"path": "x", "scale": 1.0, "crop": 64, "version": 1, "train_slices": 1, "val_slices": 1}}
    for name, value in sections.items():
        section, _, key = name.partition("__")
        if key:
            config[section][key] = value
        else:
            config[section] = value
    run = tmp_path / "run"
    write_config(config, run)
    return run


@pytest.mark.parametrize("changes, says", [
    ({}, None),
    ({"model": None}, "field model: input should be a valid dictionary"),
    ({"training__seed": "0"}, "field training.seed: input should be a valid integer"),
    ({"store": "elsewhere"}, "field store"),
    ({"training": "fast"}, "field training"),
    ({"model__width": 10**6}, "field model.width: input should be less than or equal to 1024"),
    ({"model__norm": "weight"}, "field model.norm"),
    ({"model__labels": ["acl"]}, "field model.labels"),
])
def test_run_config_contract(tmp_path, changes, says):
    from mrrobust.models import read_config

    run = run_config(tmp_path, **changes)
    if says is None:
        assert read_config(run)["model"]["width"] == 4
        return
    with pytest.raises(MrRobustError) as err:
        read_config(run)
    assert str(run / "config.json") in str(err.value) and says in str(err.value)


def test_a_network_too_large_for_memory_is_refused_before_allocation(monkeypatch):
    from mrrobust.models import build, model_config

    import torch

    from mrrobust.models import MODEL_DEFAULTS, PreActResNet
    from mrrobust.models.resnet import norm_factory

    with torch.device("meta"):  # the real network, counted without allocating it
        net = PreActResNet(18, 256, norm_factory("batch", 32, "auto"), MODEL_DEFAULTS["labels"])
    weights = sum(p.numel() for p in net.parameters())
    monkeypatch.setattr(contracts, "available_memory", lambda: 2**30)
    with pytest.raises(MrRobustError) as err:
        build(model_config(width=256))
    assert f"width-256 network ({weights / 1e6:.0f} M weights) needs {weights * 16 / 2**30:.1f} GiB" in str(err.value)
    build(model_config(width=8))


def test_operating_points_contract(tmp_path):
    points = {"split": "val", "epoch": 0, "slices": 3,
              "labels": {label: {"threshold": 0.5, "auc": None} for label in ("abnormal", "mtear", "acl", "cartilage")}}
    (tmp_path / "operating_points.json").write_text(json.dumps(points))
    assert contracts.read_operating_points(tmp_path)["epoch"] == 0
    points["labels"]["acl"]["threshold"] = 2
    (tmp_path / "operating_points.json").write_text(json.dumps(points))
    with pytest.raises(MrRobustError, match="field labels.acl.threshold: input should be less than or equal to 1"):
        contracts.read_operating_points(tmp_path)
    del points["labels"]["acl"]
    (tmp_path / "operating_points.json").write_text(json.dumps(points))
    with pytest.raises(MrRobustError, match="no entry for label.s. acl"):
        contracts.read_operating_points(tmp_path)


def test_results_contracts(tmp_path):
    settings = {"format": "mrrobust-results", "version": 2, "store": "s", "split": "test", "suite": "mrrobust",
                "runs": [{"name": "batch-seed0", "path": "p", "norm": "batch", "seed": 0, "batch_norm": True,
                          "bn_modes": ["eval", "tent"], "weights": "0" * 32}],
                "arms": [{"name": "batch", "runs": ["batch-seed0"]}], "reference_arm": "batch",
                "artifacts": ["noise"], "severities": [1], "bn_modes": ["eval", "tent"], "bn_prior": 16.0,
                "threshold_from": "clean-val", "seed": 0, "bootstrap": 20,
                "level": 0.95, "batch_size": 8, "device": "cpu", "precision": "32"}
    (tmp_path / "evaluation.json").write_text(json.dumps(settings))
    assert contracts.read_results_settings(tmp_path)["split"] == "test"
    (tmp_path / "evaluation.json").write_text(json.dumps({**settings, "severities": [9]}))
    with pytest.raises(MrRobustError, match="field severities.0: input should be less than or equal to 5"):
        contracts.read_results_settings(tmp_path)
    (tmp_path / "evaluation.json").write_text(json.dumps({**settings, "runs": []}))
    with pytest.raises(MrRobustError, match="field runs"):
        contracts.read_results_settings(tmp_path)
    (tmp_path / "evaluation.json").write_text(json.dumps({**settings, "threshold_from": "test"}))
    with pytest.raises(MrRobustError, match="field threshold_from"):
        contracts.read_results_settings(tmp_path)
    (tmp_path / "evaluation.json").write_text(json.dumps({**settings, "version": 1}))  # before arms
    with pytest.raises(MrRobustError, match="field version: input should be 2"):
        contracts.read_results_settings(tmp_path)
    (tmp_path / "evaluation.json").write_text(json.dumps({**settings, "compile": "yes"}))
    with pytest.raises(MrRobustError, match="field compile: input should be a valid boolean"):
        contracts.read_results_settings(tmp_path)
    (tmp_path / "evaluation.json").write_text(json.dumps({**settings, "compile": True}))
    assert contracts.read_results_settings(tmp_path)["compile"] is True
    header = ",".join(contracts.RESULT_COLUMNS)
    (tmp_path / "results.csv").write_text(f"{header}\nb,batch,0,eval,noise,1,mean,auc,0.5,,\n")
    assert contracts.read_results_csv(tmp_path)[0]["value"] == "0.5"
    (tmp_path / "results.csv").write_text(f"{header}\nb,batch,0,eval,noise,7,mean,auc,0.5,,\n")
    with pytest.raises(MrRobustError, match="results.csv line 2: field severity"):
        contracts.read_results_csv(tmp_path)
    np.save(tmp_path / "p.npy", np.zeros((5, 4), np.float64))
    with pytest.raises(MrRobustError, match=r"float64 \(5, 4\), expected float32 \(5, 4\)"):
        contracts.check_prediction(tmp_path / "p.npy", 5)
    np.save(tmp_path / "p.npy", np.full((5, 4), 2, np.float32))
    with pytest.raises(MrRobustError, match="outside 0..1"):
        contracts.read_prediction(tmp_path / "p.npy", 5)


def write_h5(path: Path, make) -> Path:
    with h5py.File(path, "w") as hf:
        make(hf)
    return path


@pytest.mark.parametrize("make, says", [
    (lambda hf: hf.create_group("kspace"), "'kspace' is an HDF5 group, expected a dataset"),
    (lambda hf: hf.create_dataset("kspace", shape=(1, 100000, 100000), dtype=np.complex64),
     "declares shape (1, 100000, 100000), beyond any MR volume"),
    (lambda hf: hf.create_dataset("kspace", shape=(1000, 128, 4000, 4000), dtype=np.complex64), "available"),
    (lambda hf: hf.create_dataset("kspace", shape=(4, 8, 8), dtype=np.float32), "must be complex"),
    (lambda hf: hf.create_dataset("kspace", shape=(0, 8, 8), dtype=np.complex64), "holds no samples"),
])
def test_hdf5_declarations_are_checked_before_any_read(tmp_path, make, says):
    from mrrobust.data.fastmri import read_volume

    path = write_h5(tmp_path / "bad.h5", make)
    assert path.stat().st_size < 1 << 20  # nothing was ever allocated in the file either
    with pytest.raises(MrRobustError, match="bad.h5") as err:
        read_volume(path)
    assert says in str(err.value)


@pytest.mark.parametrize("size", [(0, 0), (-4, 10), (10**6, 10**6)])
def test_implausible_recon_sizes_fall_back_to_the_crop(tmp_path, size):
    from mrrobust.artifacts.gallery import load_slice

    header = (f'<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding><reconSpace><matrixSize>'
              f'<x>{size[0]}</x><y>{size[1]}</y></matrixSize></reconSpace></encoding></ismrmrdHeader>')
    kspace = np.fft.fft2(np.random.default_rng(0).normal(size=(3, 40, 36))).astype(np.complex64)
    path = write_h5(tmp_path / "v.h5", lambda hf: (hf.create_dataset("kspace", data=kspace),
                                                   hf.create_dataset("ismrmrd_header", data=header)))
    image, label = load_slice(path)
    assert tuple(image.shape) == (36, 36) and label == "v:1"


def test_unreadable_knee_csv_is_one_line(tmp_path, monkeypatch):
    from mrrobust.data import annotations

    folder = Path(shutil.copytree(annotations.packaged_annotations_dir(), tmp_path / "ann"))
    original = Path.open

    def refuse(self, *args, **kwargs):
        if self.name == "knee.csv":
            raise PermissionError(13, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(MrRobustError, match=r"knee.csv: cannot read the annotation file \(Permission denied\)"):
        annotations.load_annotations(folder)


def test_one_line_folds_embedded_newlines():
    assert one_line("a\n  b\r\nc") == "a b c"
    assert str(MrRobustError("h5py says:\nunable to open\n")) == "h5py says: unable to open"


def test_prepare_never_reads_an_absurd_declaration(tmp_path, synth_root):
    """Peak memory of `prepare` on a file declaring 74.5 GiB of k-space stays that of the
    interpreter (measured in a fresh process, ru_maxrss)."""
    knee = tmp_path / "knee" / "singlecoil_train"
    knee.mkdir(parents=True)
    write_h5(knee / "file1000001.h5", lambda hf: hf.create_dataset("kspace", shape=(1, 100000, 100000), dtype=np.complex64))
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "knee_file_list.csv").write_text("file1000001\n")
    (tmp_path / "ann" / "knee.csv").write_text("file,slice,study_level,x,y,width,height,label\n")
    script = ("import resource, sys\nfrom mrrobust.cli import main\nsys.argv = ['mrrobust', 'prepare', '--fastmri', "
              f"{str(tmp_path / 'knee')!r}, '--annotations', {str(tmp_path / 'ann')!r}, '--out', "
              f"{str(tmp_path / 'out')!r}, '--no-progress']\ntry:\n    main()\nexcept SystemExit as e:\n"
              "    print(e.code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    code, peak_kib = result.stdout.split()
    assert code == "2" and "beyond any MR volume" in result.stderr and result.stderr.count("\n") == 1
    assert int(peak_kib) < 1 << 20  # < 1 GiB (the declaration: 74.5 GiB)
    assert not (tmp_path / "out").exists()


def test_cli_folds_a_warning_and_a_multiline_error_into_one_line(monkeypatch, capsys):
    import logging
    import warnings

    from mrrobust.cli import main

    def noisy(path):
        logging.getLogger("mrrobust.contracts").warning("first\nwarning")
        warnings.warn("a library says\nsomething")
        raise MrRobustError(f"{path}: h5py says:\nunable to open\n")

    monkeypatch.setattr(contracts, "verify", noisy)
    monkeypatch.setattr(sys, "argv", ["mrrobust", "verify", "somewhere"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err == ("mrrobust verify: error: somewhere: h5py says: unable to open (after 2 warning(s): first warning; "
                   "UserWarning: a library says something)\n")


def test_results_csv_cut_short_is_refused(tmp_path):
    from mrrobust.arm_statistics import COLUMN_LABELS, RUN_METRICS

    header = ",".join(contracts.RESULT_COLUMNS)
    cell = [f"b,batch,0,eval,clean,0,{label},{metric},0.5,0.4,0.6" for metric in RUN_METRICS for label in COLUMN_LABELS]
    path = tmp_path / "results.csv"
    path.write_text("\n".join([header, *cell]) + "\n")
    cells = {("b", "eval", "clean", "0")}
    contracts._check_complete_results(path, contracts.read_results_csv(tmp_path), cells)  # complete: passes
    for text, says in (("\n".join([header, *cell[:-1]]) + "\n", "without exactly their 20 rows"),  # a row lost
                       ("\n".join([header, *cell])[:-2], "ends mid-row")):  # cut inside the last value
        path.write_text(text)
        with pytest.raises(MrRobustError, match=says):
            contracts._check_complete_results(path, contracts.read_results_csv(tmp_path), cells)
    path.write_text("\n".join([header, *cell]) + "\n")
    with pytest.raises(MrRobustError, match="run b, eval, noise-1: 0 rows"):  # a cell missing
        contracts._check_complete_results(path, contracts.read_results_csv(tmp_path), cells | {("b", "eval", "noise", "1")})
