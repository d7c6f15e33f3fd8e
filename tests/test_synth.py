"""mrrobust.data.synth: the fastMRI reference loader reads the files, annotations follow fastMRI+,
lesions sit inside their boxes, same seed gives the same bytes."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

import fastmri
import mrrobust
from fastmri.data import SliceDataset
from fastmri.data import transforms as T
from mrrobust.data import synth as S
from mrrobust.errors import MrRobustError
from mrrobust.fft import center_crop

CROP, VOLUMES, SLICES = 64, 12, 8
REAL_KNEE_CSV = Path(mrrobust.__file__).parent / "resources" / "fastmri_plus" / "knee.csv"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    summary = S.synth(root, volumes=VOLUMES, slices=SLICES, crop=CROP, seed=1)
    return root, summary


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    S.synth(root, volumes=3, slices=3, crop=CROP, seed=1, multicoil=True, coils=5)
    return root


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_layout_and_split(single):
    root, summary = single
    train = sorted((root / "knee" / "singlecoil_train").glob("*.h5"))
    val = sorted((root / "knee" / "singlecoil_val").glob("*.h5"))
    assert (len(train), len(val)) == (summary["train"], summary["val"]) == (10, 2)
    assert all(p.stem.startswith("file") and len(p.stem) == 11 and p.stem[4:].isdigit() for p in train + val)
    with h5py.File(train[0]) as hf:
        assert hf["kspace"].dtype == np.complex64 and hf["kspace"].shape == (SLICES, 2 * CROP, S.acquisition_width(CROP))
        assert hf["reconstruction_esc"].dtype == np.float32 and hf["reconstruction_esc"].shape == (SLICES, CROP, CROP)
        assert hf.attrs["acquisition"] in ("CORPD_FBK", "CORPDFS_FBK")
        assert 1e-5 < hf.attrs["max"] < 1e-3  # fastMRI knee intensity scale
        assert hf.attrs["max"] == pytest.approx(float(hf["reconstruction_esc"][()].max()))


def test_reference_loader_reads_single_coil_and_reconstructs_the_target(single):
    root, _ = single
    for split in ("train", "val"):
        ds = SliceDataset(root / "knee" / f"singlecoil_{split}", challenge="singlecoil")
        assert len(ds) == len(list(ds.raw_samples)) == SLICES * (10 if split == "train" else 2)
        for i in (0, len(ds) - 1):
            kspace, mask, target, attrs, fname, dataslice = ds[i]
            assert attrs["recon_size"] == (CROP, CROP, 1) and attrs["encoding_size"] == (2 * CROP, kspace.shape[-1], 1)
            # columns outside [padding_left, padding_right) are the zero-filled edges, inside are acquired
            acquired = np.abs(kspace).sum(axis=0) > 0
            expected = np.zeros_like(acquired)
            expected[attrs["padding_left"] : attrs["padding_right"]] = True
            np.testing.assert_array_equal(acquired, expected)
            image = fastmri.complex_abs(T.complex_center_crop(fastmri.ifft2c(T.to_tensor(kspace)), (CROP, CROP)))
            np.testing.assert_allclose(image.numpy(), target, rtol=1e-4, atol=1e-6 * target.max())
            # the reference's own U-Net transform crops to the same recon size
            unet = T.UnetDataTransform(which_challenge="singlecoil")(kspace, mask, target, attrs, fname, dataslice)
            assert tuple(unet.image.shape) == (CROP, CROP)


def test_reference_loader_reads_multi_coil_rss(multi):
    ds = SliceDataset(multi / "knee" / "multicoil_train", challenge="multicoil")
    kspace, _, target, attrs, _, _ = ds[0]
    assert kspace.shape == (5, 2 * CROP, S.acquisition_width(CROP)) and attrs["recon_size"] == (CROP, CROP, 1)
    rss = fastmri.rss(fastmri.complex_abs(T.complex_center_crop(fastmri.ifft2c(T.to_tensor(kspace)), (CROP, CROP))))
    np.testing.assert_allclose(rss.numpy(), target, rtol=1e-4, atol=1e-6 * target.max())
    with h5py.File(next((multi / "knee" / "multicoil_train").glob("*.h5"))) as hf:
        assert "reconstruction_esc" not in hf


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    def digests(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    a, b, c = (tmp_path / n for n in "abc")
    for root, seed in ((a, 5), (b, 5), (c, 6)):
        S.synth(root, volumes=3, slices=3, crop=32, seed=seed)
    assert digests(a) == digests(b)
    assert not set(digests(a).values()) & set(digests(c).values())


def test_annotations_follow_fastmri_plus(single):
    root, summary = single
    rows = _read_csv(root / "annotations" / "knee.csv")
    assert rows[0] == ["file", "slice", "study_level", "x", "y", "width", "height", "label"]
    real_labels = {r[7] for r in _read_csv(REAL_KNEE_CSV)[1:]}
    assert {r[7] for r in rows[1:]} <= real_labels
    listed = [r[0] for r in _read_csv(root / "annotations" / "knee_file_list.csv")]
    assert listed[-1] == "Knee data"
    volumes = sorted(p.stem for p in (root / "knee").rglob("*.h5"))
    reviewed = listed[:-1]
    assert set(reviewed) < set(volumes) and len(reviewed) == summary["reviewed"] < VOLUMES
    assert {r[0] for r in rows[1:]} <= set(reviewed)
    study = [r for r in rows[1:] if r[2] == "Yes"]
    assert study and all(r[1] == "0" and r[3:7] == ["", "", "", ""] and r[7] == "artifact" for r in study)
    for r in (r for r in rows[1:] if r[2] == "No"):
        x, y, w, h = map(int, r[3:7])
        assert 0 <= x and 0 <= y and w >= 1 and h >= 1 and x + w <= CROP and y + h <= CROP


def test_prevalence_close_to_fastmri_plus():
    """PREVALENCE is the real per-slice rate over reviewed volumes (own count of the packaged
    knee.csv over the 41,877 single-coil train + val slices), and synth draws about that rate."""
    reviewed = {r[0] for r in _read_csv(REAL_KNEE_CSV.with_name("knee_file_list.csv")) if r[0] != "Knee data"}
    positive_slices = {group: set() for group in S.PREVALENCE}
    for file, slice_, study, *_, label in _read_csv(REAL_KNEE_CSV)[1:]:
        if study == "No" and file in reviewed:
            group = "acl" if "ACL" in label else "mtear" if "Meniscus Tear" in label else (
                "cartilage" if "cartilage" in label.lower() else "abnormal")
            positive_slices[group].add((file, slice_))
    for group, target in S.PREVALENCE.items():
        assert target == pytest.approx(len(positive_slices[group]) / 41_877, abs=5e-4), group
    plans = [p for p in S.plan_volumes(600, 16, seed=0) if p.reviewed]
    total = len(plans) * 16
    for group, target in S.PREVALENCE.items():
        positive = sum(len(f.slices) for p in plans for f in p.findings if f.group == group)
        assert 0.8 * target < positive / total < 1.2 * target, group
    runs = [len(f.slices) for p in plans for f in p.findings]
    assert min(runs) >= 1 and 2 <= np.mean(runs) <= 5  # boxes span a few consecutive slices


@pytest.mark.parametrize("crop, slices, scale", [(64, 16, 1.0), (160, 8, 1.0), (48, 16, 3.0)])
def test_each_lesion_is_drawn_inside_its_box(crop, slices, scale):
    """Noise-free images with and without findings differ (mostly) inside the annotated box,
    read in the array frame as row = crop - y - height (the fastMRI+ flip)."""
    plans = S.plan_volumes(40, slices, seed=2, lesion_scale=scale)
    seen = set()
    for plan in plans:  # one volume for each kind of finding
        todo = [f for f in plan.findings if (f.group, f.params.get("kind")) not in seen]
        if not todo:
            continue
        plan = dataclasses.replace(plan, findings=todo[:1], reviewed=True, artifact=False)
        finding = todo[0]
        seen.add((finding.group, finding.params.get("kind")))
        healthy = dataclasses.replace(plan, findings=[])
        sick_img, healthy_img = (np.abs(center_crop(S.volume_images(p, slices, crop), (crop, crop))) for p in (plan, healthy))
        diff = np.abs(sick_img - healthy_img) / healthy_img.max()
        for _, s, _, x, y, w, h, label in S.annotation_rows([plan], crop):
            assert label == finding.label
            inside = np.zeros((crop, crop), bool)
            row = crop - y - h
            inside[max(0, row - 1) : row + h + 1, max(0, x - 1) : x + w + 1] = True
            d = diff[s]
            assert d[inside].max() > 0.15, (label, s)  # visible: a clear change of intensity
            assert d[inside].sum() > 0.9 * d.sum(), (label, s)  # and localised in the box
    groups = {g for g, _ in seen}
    kinds = {k for _, k in seen if k}
    assert groups == set(S.PREVALENCE) and {"effusion", "edema", "cyst", "fracture"} <= kinds


def test_fat_suppression_changes_contrast():
    plan = S.plan_volumes(1, 3, seed=0)[0]
    pd, fs = (np.abs(S.volume_images(dataclasses.replace(plan, fat_suppressed=v, findings=[]), 3, 64))[1]
              for v in (False, True))
    pd, fs = pd / pd.max(), fs / fs.max()
    # subcutaneous fat and marrow are the brightest in proton density and dark with fat suppression
    bright_pd = pd > 0.8
    assert bright_pd.mean() > 0.05 and np.median(fs[bright_pd]) < 0.3


def test_bad_arguments_and_existing_output(tmp_path):
    with pytest.raises(MrRobustError, match="crop"):
        S.synth(tmp_path / "x", crop=31)
    with pytest.raises(MrRobustError, match="coils"):
        S.synth(tmp_path / "x", multicoil=True, coils=1, crop=32)
    with pytest.raises(MrRobustError, match="--seed -1"):
        S.synth(tmp_path / "x", volumes=2, slices=2, crop=32, seed=-1)
    with pytest.raises(MrRobustError, match="lesion-scale 0.5"):
        S.synth(tmp_path / "x", volumes=2, slices=2, crop=32, lesion_scale=0.5)
    assert not (tmp_path / "x").exists()
    S.synth(tmp_path / "y", volumes=2, slices=2, crop=32)
    again = S.synth(tmp_path / "y", volumes=2, slices=2, crop=32)  # the same call: finished, nothing written
    assert (again["written"], again["reused"]) == (0, 2)
    with pytest.raises(MrRobustError, match=r"other settings \(volumes 2 -> 3\)"):
        S.synth(tmp_path / "y", volumes=3, slices=2, crop=32)
    with pytest.raises(MrRobustError, match="other content"):
        S.synth(tmp_path / "y", volumes=3, slices=2, crop=32, multicoil=True)
    assert not (tmp_path / "y" / "knee" / "multicoil_train").exists()  # refused before writing
    foreign = tmp_path / "z" / "knee" / "singlecoil_train"
    foreign.mkdir(parents=True)
    (foreign / "file1000001.h5").write_bytes(b"a real volume")
    with pytest.raises(MrRobustError, match="no synth record"):
        S.synth(tmp_path / "z", volumes=2, slices=2, crop=32)
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("kwargs, words", [
    (dict(crop=100_000), "--crop 100000 (need an even number in 32..640"),
    (dict(slices=100_000), "--slices 100000 (need 1..100"),
    (dict(volumes=0, crop=7), "--volumes 0 (need 1..5000), --crop 7"),
    (dict(multicoil=True, coils=1000), "--coils 1000 (need 2..32"),
])
def test_sizes_are_checked_before_anything_is_allocated(tmp_path, kwargs, words):
    """Bounds from fastMRI's largest knee volumes; one line, nothing written."""
    with pytest.raises(MrRobustError) as info:
        S.synth(tmp_path / "x", **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()


def test_memory_and_disk_are_checked_against_what_the_volumes_need(tmp_path, monkeypatch):
    memory, size = S._volume_bytes(36, 320, 15)  # a fastMRI multi-coil knee volume
    assert size == 36 * 15 * 640 * 368 * 8 + 36 * 320 * 320 * 4  # k-space + the RSS
    assert memory > 4 * 36 * 15 * 640 * 368 * 8
    monkeypatch.setattr(S, "_available_memory", lambda: memory - 1)
    with pytest.raises(MrRobustError, match="needs about .* of memory"):
        S.synth(tmp_path / "x", volumes=1, slices=36, crop=320, multicoil=True, coils=15)
    monkeypatch.setattr(S, "_available_memory", lambda: None)
    monkeypatch.setattr(S, "_free_disk", lambda out: 10 * size - 1)
    with pytest.raises(MrRobustError, match="10 volumes need about .* on disk"):
        S.synth(tmp_path / "x", volumes=10, slices=36, crop=320, multicoil=True, coils=15)
    assert not (tmp_path / "x").exists()


def test_a_killed_synth_resumes_to_the_same_bytes(tmp_path):
    """SIGKILL a real synth process mid-way; the same call again finishes it, and the files
    equal those of an uninterrupted synth."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = dict(volumes=60, slices=8, crop=32, seed=4)
    code = (f"from mrrobust.data.synth import synth; synth({str(tmp_path / 'killed')!r}, **{args!r})")
    env = {**os.environ, "PYTHONPATH": str(Path(mrrobust.__file__).parents[1])}
    process = subprocess.Popen([sys.executable, "-c", code], env=env)
    train = tmp_path / "killed" / "knee" / "singlecoil_train"
    deadline = time.monotonic() + 120
    while not (train.is_dir() and len(list(train.glob("*.h5"))) >= 3) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(list((tmp_path / "killed").rglob("*.h5")))
    assert 3 <= written < args["volumes"]  # killed mid-way
    resumed = S.synth(tmp_path / "killed", **args)
    assert resumed["written"] == args["volumes"] - written
    S.synth(tmp_path / "fresh", **args)

    def digests(root):
        return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert digests(tmp_path / "killed") == digests(tmp_path / "fresh")


def test_lesion_scale_draws_larger_lesions_inside_larger_boxes():
    """The plan's draws do not change with the scale; the boxes (and the lesions in them) grow."""
    base, large = S.plan_volumes(30, 8, seed=2), S.plan_volumes(30, 8, seed=2, lesion_scale=3.0)
    assert [p.volume_id for p in base] == [p.volume_id for p in large]
    pairs = [(a, b) for p, q in zip(base, large) for a, b in zip(p.findings, q.findings)]
    assert pairs and all(a.slices == b.slices and a.label == b.label for a, b in pairs)
    for a, b in pairs:
        box_a, box_b = S.finding_box(a, 1.0), S.finding_box(b, 1.0)
        if a.group != "mtear":  # the tear grows inside its meniscus, whose box is fixed
            assert box_b[2] * box_b[3] > box_a[2] * box_a[3]
    volume = next(k for k, p in enumerate(base) if p.findings)
    clean = np.abs(S.volume_images(dataclasses.replace(base[volume], findings=[]), 8, 64))
    changed = {scale: int((np.abs(np.abs(S.volume_images(plans[volume], 8, 64)) - clean) > 0.05 * clean.max()).sum())
               for scale, plans in ((1, base), (3, large))}
    assert changed[3] > 2 * changed[1] > 0  # the lesions change more pixels


def test_some_volumes_share_a_patient_as_pd_and_pdfs_pairs():
    plans = S.plan_volumes(40, 4, seed=0)
    by_patient = {}
    for p in plans:
        by_patient.setdefault(p.patient_id, []).append(p)
    pairs = [scans for scans in by_patient.values() if len(scans) > 1]
    assert pairs and max(len(scans) for scans in pairs) == 2
    assert all(a.fat_suppressed != b.fat_suppressed for a, b in pairs)
