"""`prepare`: volumes + annotations -> STORE; the split, resume after a kill, bad input."""

from __future__ import annotations

import csv
import random
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from mrrobust.cli import app
from mrrobust.data.annotations import LABELS
from mrrobust.data.prepare import prepare, split_volumes, summary_lines
from mrrobust.data.store import read_manifest
from mrrobust.errors import MrRobustError
from mrrobust.fft import fft2c

HEADER = "file,slice,study_level,x,y,width,height,label\n"


def _tree(store) -> dict[str, bytes]:
    """Every visible file of a STORE (nothing under a hidden name), relative path -> bytes."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(store).parts)}


def _write_volume(path, kspace, patient_id="", acquisition="CORPD_FBK"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as hf:
        hf["kspace"] = kspace
        hf.attrs["patient_id"] = patient_id
        hf.attrs["acquisition"] = acquisition


def _good_kspace(seed, slices=3, shape=(80, 72)):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(slices, *shape)) + 1j * rng.normal(size=(slices, *shape))
    return fft2c(image.astype(np.complex64))


def _annotations(folder, volumes, rows=""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "knee.csv").write_text(HEADER + rows)
    (folder / "knee_file_list.csv").write_text("".join(f"{v}\n" for v in volumes) + "Knee data\n")
    return folder


# ---- the split ------------------------------------------------------------------------------


def _patients(n=60):
    rng = np.random.default_rng(5)
    return {f"file{1000000 + i}": f"p{int(rng.integers(0, n // 2))}" if i % 3 else "" for i in range(n)}


def test_split_deterministic_whatever_the_listing_order():
    patients = _patients()
    first = split_volumes(patients, (0.7, 0.15, 0.15), seed=0)
    shuffled = list(patients.items())
    random.Random(1).shuffle(shuffled)
    assert split_volumes(dict(shuffled), (0.7, 0.15, 0.15), seed=0) == first
    assert split_volumes(patients, (0.7, 0.15, 0.15), seed=1) != first


def test_split_covers_disjointly_and_keeps_patients_together():
    patients = _patients(300)
    splits = split_volumes(patients, (0.7, 0.15, 0.15), seed=0)
    assert set(splits) == set(patients) and set(splits.values()) == {"train", "val", "test"}
    by_patient = {}
    for volume, pid in patients.items():
        if pid:
            by_patient.setdefault(pid, set()).add(splits[volume])
    assert all(len(s) == 1 for s in by_patient.values())
    assert any(sum(1 for p in patients.values() if p == pid) > 1 for pid in by_patient)  # the test has shared patients
    share = {s: sum(v == s for v in splits.values()) / len(splits) for s in ("train", "val", "test")}
    assert share == pytest.approx({"train": 0.7, "val": 0.15, "test": 0.15}, abs=0.03)
    no_test = split_volumes(patients, (0.8, 0.2, 0.0), seed=0)
    assert "test" not in no_test.values()


# ---- the STORE from synth ------------------------------------------------------------------


def test_no_patient_spans_two_splits_end_to_end(tiny_store):
    """synth makes PD + PDFS pairs of one knee; prepare keeps each patient in one split."""
    with open(tiny_store / "slices.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    volumes, splits = {}, {}
    for row in rows:
        volumes.setdefault(row["patient_id"], set()).add(row["volume"])
        splits.setdefault(row["patient_id"], set()).add(row["split"])
    assert any(len(v) > 1 for v in volumes.values())  # the rule is exercised
    assert all(len(s) == 1 for s in splits.values())


def test_store_rows_follow_the_annotations(tiny_store, synth_root):
    """Targets and labels in slices.csv against a plain re-reading of synth's knee.csv."""
    expected = {}
    lines = (synth_root / "annotations" / "knee.csv").read_text().splitlines()[1:]
    for line in lines:
        volume, slice_, level, *_box, label = line.split(",")
        if level == "No":
            expected.setdefault((volume, int(slice_)), set()).add(label.strip())
    with open(tiny_store / "slices.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    reviewed = set((synth_root / "annotations" / "knee_file_list.csv").read_text().split()) - {"Knee", "data"}
    assert {r["volume"] for r in rows} == reviewed
    for r in rows:
        labels = expected.get((r["volume"], int(r["slice"])), set())
        assert set(filter(None, r["labels"].split("|"))) == labels
        assert int(r["mtear"]) == any("Meniscus Tear" in l for l in labels)
        assert int(r["acl"]) == any("ACL" in l for l in labels)
        assert int(r["cartilage"]) == any("cartilage" in l.lower() for l in labels)
        assert int(r["abnormal"]) == any(not any(k in l for k in ("Meniscus Tear", "ACL", "Cartilage")) for l in labels)
    splits = {}
    for r in rows:
        splits.setdefault(r["volume"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    manifest = read_manifest(tiny_store)
    assert manifest["not_reviewed"] == 24 - len(reviewed)
    notes = {line.split(",")[0] for line in lines if line.split(",")[2] == "Yes"}
    assert set(manifest["volume_notes"]) == notes & reviewed


def test_images_match_the_fastmri_reference_reconstruction(tiny_store, synth_root):
    import fastmri
    from fastmri.data import transforms as T

    files = sorted((synth_root / "knee" / "singlecoil_train").glob("*.h5"))
    path = next(p for p in files if (tiny_store / "volumes" / f"{p.stem}.npy").exists())
    with h5py.File(path, "r") as hf:
        kspace = T.to_tensor(hf["kspace"][()])
    reference = T.center_crop(fastmri.complex_abs(fastmri.ifft2c(kspace)), (64, 64)).numpy()
    ours = np.load(tiny_store / "volumes" / f"{path.stem}.npy")
    assert ours.dtype == np.complex64 and ours.shape == reference.shape
    np.testing.assert_allclose(np.abs(ours), reference, rtol=1e-4, atol=1e-5 * reference.max())


def test_resume_after_kill_finishes_the_same_store(tiny_store, synth_root, tmp_path):
    """SIGKILL a prepare run mid-way, re-run it (2 workers): byte-identical to the
    uninterrupted STORE, and the volumes finished before the kill are not redone."""
    store = tmp_path / "store"
    driver = (
        "import sys, time\n"
        "import mrrobust.data.prepare as p\n"
        "original = p.prepare_volume\n"
        "def slow(task):\n"
        "    result = original(task)\n"
        "    time.sleep(0.25)\n"
        "    return result\n"
        "p.prepare_volume = slow\n"
        "p.prepare(sys.argv[1], sys.argv[2], annotations=sys.argv[3], crop=64, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver, str(synth_root / "knee"), str(store), str(synth_root / "annotations")])
    deadline = time.monotonic() + 120
    while len(list((store / "volumes").glob("*.json"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "prepare ended before the kill"
    proc.kill()
    proc.wait()
    assert not (store / "manifest.json").exists() and not (store / "slices.csv").exists()
    with pytest.raises(MrRobustError, match="unfinished"):
        read_manifest(store)
    done = {p.stem for p in (store / "volumes").glob("*.json")}  # a record is written after its .npy
    stamps = {v: ((store / "volumes" / f"{v}.npy").stat().st_ino, (store / "volumes" / f"{v}.npy").stat().st_mtime_ns) for v in done}
    total = read_manifest(tiny_store)["counts"]["volumes"]
    assert 3 <= len(done) < total

    summary = prepare(synth_root / "knee", store, annotations=synth_root / "annotations", crop=64, workers=2, progress=False)
    assert (summary["reused"], summary["prepared"]) == (len(done), total - len(done))
    for v, stamp in stamps.items():  # not rewritten
        assert ((store / "volumes" / f"{v}.npy").stat().st_ino, (store / "volumes" / f"{v}.npy").stat().st_mtime_ns) == stamp
    assert _tree(store) == _tree(tiny_store)


def test_rerun_of_a_finished_store_redoes_nothing_and_new_crop_redoes_all(tiny_store, tmp_path, synth_root):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    again = prepare(synth_root / "knee", store, annotations=synth_root / "annotations", crop=64, progress=False)
    assert again["prepared"] == 0 and _tree(store) == _tree(tiny_store)
    assert again["changed_settings"] == {} and not any("settings differ" in line for line in summary_lines(again))
    smaller = prepare(synth_root / "knee", store, annotations=synth_root / "annotations", crop=48, progress=False)
    assert smaller["reused"] == 0 and read_manifest(store)["crop"] == 48
    assert np.load(next((store / "volumes").glob("*.npy"))).shape[1:] == (48, 48)
    assert smaller["changed_settings"] == {"crop": [64, 48]}
    assert [line for line in summary_lines(smaller) if "settings differ" in line] == [
        f"settings differ from the STORE's previous run (crop 64 -> 48): {smaller['prepared']} volumes redone, split and scale recomputed"]
    assert not (store / ".incoming").exists()


def test_failed_rerun_leaves_a_finished_store_as_it_was(tiny_store, tmp_path, synth_root):
    """Every volume failing (crop too large) must not unfinish or touch the STORE."""
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    with pytest.raises(MrRobustError, match="no usable volume.*still holds the previous finished STORE"):
        prepare(synth_root / "knee", store, annotations=synth_root / "annotations", crop=1000, progress=False)
    assert _tree(store) == _tree(tiny_store) and sorted(p.name for p in store.iterdir()) == ["manifest.json", "slices.csv", "volumes"]


def test_interrupted_rerun_with_new_settings_keeps_the_old_store_then_resumes(tiny_store, tmp_path, synth_root, monkeypatch):
    """Killed half-way through a crop change, the old STORE is still finished and whole;
    the re-run reuses the volumes done before the kill and swaps in the new STORE."""
    import mrrobust.data.prepare as P

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    original, done = P.prepare_volume, []

    def interrupted(task):
        if len(done) == 3:
            raise KeyboardInterrupt
        done.append(task)
        return original(task)

    monkeypatch.setattr(P, "prepare_volume", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(synth_root / "knee", store, annotations=synth_root / "annotations", crop=48, progress=False)
    assert _tree(store) == _tree(tiny_store) and read_manifest(store)["crop"] == 64
    monkeypatch.setattr(P, "prepare_volume", original)
    summary = prepare(synth_root / "knee", store, annotations=synth_root / "annotations", crop=48, progress=False)
    assert summary["reused"] == 3 and summary["prepared"] == summary["counts"]["volumes"] - 3
    assert all(np.load(p, mmap_mode="r").shape[1:] == (48, 48) for p in (store / "volumes").glob("*.npy"))
    assert not (store / ".incoming").exists()


# ---- bad input -------------------------------------------------------------------------------


@pytest.fixture
def messy_root(tmp_path):
    """Two good volumes and one of every kind of broken file, all listed as reviewed."""
    train = tmp_path / "fastmri" / "singlecoil_train"
    _write_volume(train / "file0000001.h5", _good_kspace(1), patient_id="a")
    _write_volume(train / "file0000002.h5", _good_kspace(2), patient_id="b")
    data = (train / "file0000001.h5").read_bytes()
    (train / "file0000003.h5").write_bytes(data[: len(data) // 2])  # truncated
    (train / "file0000004.h5").write_text("this is not HDF5\n")
    with h5py.File(train / "file0000005.h5", "w") as hf:
        hf["image"] = np.zeros((2, 8, 8), np.float32)  # no kspace
    _write_volume(train / "file0000006.h5", np.zeros((80, 72), np.complex64))  # rank 2
    nan = _good_kspace(6)
    nan[1, 40, 36] = np.nan
    _write_volume(train / "file0000007.h5", nan)
    _write_volume(train / "file0000008.h5", np.stack([_good_kspace(8)] * 2, axis=1))  # multi-coil in a single-coil folder
    _write_volume(train / "file0000009.h5", np.zeros((0, 80, 72), np.complex64))  # 0 slices
    names = [f"file000000{i}" for i in range(1, 10)]
    rows = "file0000001,1,No,1,2,3,4,Meniscus Tear\nfile0000002,0,No,1,2,3,4,Brand New Finding\n"
    annotations = _annotations(tmp_path / "ann", names, rows)
    return tmp_path / "fastmri", annotations


def test_broken_files_are_skipped_with_one_reason_each(messy_root, tmp_path):
    root, annotations = messy_root
    summary = prepare(root, tmp_path / "store", annotations=annotations, crop=32, progress=False)
    reasons = {item["file"].rsplit("/", 1)[-1]: item["reason"] for item in summary["skipped"]}
    assert set(reasons) == {f"file000000{i}.h5" for i in range(3, 10)}
    assert "HDF5" in reasons["file0000003.h5"] and "HDF5" in reasons["file0000004.h5"]
    assert "kspace" in reasons["file0000005.h5"]
    assert "shape (80, 72)" in reasons["file0000006.h5"]
    assert "NaN" in reasons["file0000007.h5"]
    assert "multi-coil" in reasons["file0000008.h5"]
    assert "0 slices" in reasons["file0000009.h5"]
    assert all("\n" not in r for r in reasons.values())
    assert read_manifest(tmp_path / "store")["skipped"] == summary["skipped"]
    assert summary["counts"]["volumes"] == 2 and summary["counts"]["slices"] == 6
    assert summary["unseen_labels"] == ["Brand New Finding"]
    assert summary["counts"]["splits"]["train"]["positives"]["abnormal"] + summary["counts"]["splits"]["val"]["positives"][
        "abnormal"] + summary["counts"]["splits"]["test"]["positives"]["abnormal"] == 1


def _cli(*args):
    result = CliRunner().invoke(app, ["prepare", *map(str, args)])
    return result.exit_code, result.output


def test_cli_exit_2_with_one_line_only_when_nothing_usable(messy_root, tmp_path):
    root, annotations = messy_root
    code, output = _cli("--fastmri", root, "--annotations", annotations, "--out", tmp_path / "ok", "--crop", 32, "--no-progress")
    assert code == 0 and "skipped" in output and "file0000007.h5" in output
    for good in ("file0000001.h5", "file0000002.h5"):
        (root / "singlecoil_train" / good).unlink()
    code, output = _cli("--fastmri", root, "--annotations", annotations, "--out", tmp_path / "none", "--crop", 32, "--no-progress")
    assert code == 2 and output.strip().count("\n") == 0 and "no usable volume" in output
    code, output = _cli("--fastmri", root, "--annotations", annotations, "--out", tmp_path / "neg", "--seed", -1, "--no-progress")
    assert code == 2 and output.strip().count("\n") == 0 and "seed -1" in output
    assert not (tmp_path / "neg").exists()
    assert not (tmp_path / "none" / "manifest.json").exists()


@pytest.mark.parametrize(
    "case, match",
    [
        ("wrong_path", "folder not found"),
        ("file_as_root", "not a folder"),
        ("no_challenge_folder", "no singlecoil_train"),
        ("empty_folder", "no .h5 files"),
        ("missing_columns", "missing column"),
        ("not_reviewed", "annotation file list"),
        ("bad_fractions", "fractions"),
        ("nan_fraction", "finite"),
        ("negative_seed", "seed -1"),
        ("out_not_a_store", "not a STORE"),
        ("crop_too_large", "no usable volume.*crop 999"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, case, match):
    root = tmp_path / "fastmri"
    _write_volume(root / "singlecoil_val" / "file0000001.h5", _good_kspace(1))
    annotations = _annotations(tmp_path / "ann", ["file0000001"])
    out, kwargs = tmp_path / "store", {"crop": 32}
    if case == "wrong_path":
        root = tmp_path / "nowhere"
    elif case == "file_as_root":
        root = root / "singlecoil_val" / "file0000001.h5"
    elif case == "no_challenge_folder":
        root = tmp_path / "ann"
    elif case == "empty_folder":
        (root / "singlecoil_val" / "file0000001.h5").unlink()
    elif case == "missing_columns":
        (annotations / "knee.csv").write_text("file,slice,label\nfile0000001,1,Meniscus Tear\n")
    elif case == "not_reviewed":
        (annotations / "knee_file_list.csv").write_text("file0000009\n")
    elif case == "bad_fractions":
        kwargs["fractions"] = (0.7, 0.2, 0.2)
    elif case == "nan_fraction":
        kwargs["fractions"] = (float("nan"), 0.5, 0.5)
    elif case == "negative_seed":
        kwargs["seed"] = -1
    elif case == "out_not_a_store":
        out.mkdir()
        (out / "thesis.tex").write_text("precious")
    elif case == "crop_too_large":
        kwargs["crop"] = 999
    with pytest.raises(MrRobustError, match=match):
        prepare(root, out, annotations=annotations, progress=False, **kwargs)
    if case == "out_not_a_store":
        assert (out / "thesis.tex").read_text() == "precious"
    else:
        assert not out.exists()  # nothing half-written: a failed run leaves no folder behind


def test_default_annotations_are_the_packaged_fastmri_plus(tmp_path):
    """A fastMRI user needs no --annotations: real volume ids pick up the real labels."""
    root = tmp_path / "knee"
    _write_volume(root / "singlecoil_train" / "file1000001.h5", _good_kspace(1, slices=20), patient_id="x")
    _write_volume(root / "singlecoil_train" / "file1001022.h5", _good_kspace(2, slices=4), patient_id="y")
    summary = prepare(tmp_path, tmp_path / "store", crop=32, progress=False)  # ROOT/knee is found too
    with open(tmp_path / "store" / "slices.csv", newline="") as fh:
        rows = {(r["volume"], int(r["slice"])): r for r in csv.DictReader(fh)}
    # file1000001 slice 15: cartilage partial thickness + bone edema (knee.csv lines 3-4)
    assert [int(rows[("file1000001", 15)][label]) for label in LABELS] == [1, 0, 0, 1]
    assert rows[("file1000001", 15)]["labels"] == "Cartilage - Partial Thickness loss/defect|Bone- Subchondral edema"
    assert summary["volume_notes"] == {"file1001022": ["artifact"]}
    assert summary["reviewed_missing"] == 1170 and summary["annotations"].startswith("packaged")


def test_multicoil_challenge(tmp_path):
    from mrrobust.data.synth import synth

    synth(tmp_path / "mc", volumes=5, slices=3, crop=32, seed=1, multicoil=True, coils=4)
    summary = prepare(tmp_path / "mc" / "knee", tmp_path / "store", annotations=tmp_path / "mc" / "annotations",
                      challenge="multicoil", crop=32, progress=False)
    assert summary["challenge"] == "multicoil" and summary["counts"]["volumes"] >= 4 and not summary["skipped"]
    volume = np.load(next((tmp_path / "store" / "volumes").glob("*.npy")))
    assert volume.dtype == np.complex64 and volume.shape == (3, 32, 32)
    with pytest.raises(MrRobustError, match="no singlecoil_train"):
        prepare(tmp_path / "mc" / "knee", tmp_path / "store2", annotations=tmp_path / "mc" / "annotations", crop=32, progress=False)
