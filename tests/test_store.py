"""The STORE reader: manifest, SliceDataset, weighted sampler, slice seeds."""

from __future__ import annotations

import collections
import csv
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mrrobust.data.annotations import LABELS
from mrrobust.data.store import (
    SliceDataset,
    read_manifest,
    sampler_weights,
    save_npy_atomic,
    slice_seed,
    weighted_sampler,
    write_json_atomic,
)
from mrrobust.errors import MrRobustError


def _csv_rows(store):
    with open(store / "slices.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_manifest_contract(tiny_store):
    manifest = read_manifest(tiny_store)
    for key in ("format", "version", "source", "challenge", "crop", "scale", "seed", "fractions", "counts", "skipped", "unseen_labels"):
        assert key in manifest
    rows = _csv_rows(tiny_store)
    assert list(rows[0]) == ["volume", "slice", "split", *LABELS, "labels", "patient_id", "acquisition"]
    assert manifest["counts"]["slices"] == len(rows)
    assert manifest["counts"]["volumes"] == len({r["volume"] for r in rows})
    for split, c in manifest["counts"]["splits"].items():
        mine = [r for r in rows if r["split"] == split]
        assert c["slices"] == len(mine)
        assert c["positives"] == {label: sum(int(r[label]) for r in mine) for label in LABELS}


def test_read_manifest_refuses_missing_and_other_versions(tmp_path, tiny_store):
    with pytest.raises(MrRobustError, match="not a finished STORE"):
        read_manifest(tmp_path)
    manifest = json.loads((tiny_store / "manifest.json").read_text())
    write_json_atomic(tmp_path / "manifest.json", {**manifest, "version": 99})
    with pytest.raises(MrRobustError, match="version 99"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(MrRobustError, match="unreadable"):
        read_manifest(tmp_path)
    for value in ("[]", '"text"', "3", "null"):  # valid JSON, not an object
        (tmp_path / "manifest.json").write_text(value)
        with pytest.raises(MrRobustError, match="not an object"):
            read_manifest(tmp_path)


def test_scale_is_median_of_train_volume_p99(tiny_store):
    rows = _csv_rows(tiny_store)
    train = sorted({r["volume"] for r in rows if r["split"] == "train"})
    p99 = [np.percentile(np.abs(np.load(tiny_store / "volumes" / f"{v}.npy")[:, ::2, ::2]), 99) for v in train]
    assert read_manifest(tiny_store)["scale"] == pytest.approx(float(np.median(p99)), rel=1e-6)


def test_magnitude_and_complex_items(tiny_store):
    scale = read_manifest(tiny_store)["scale"]
    rows = _csv_rows(tiny_store)
    magnitude, complex_ = SliceDataset(tiny_store), SliceDataset(tiny_store, kind="complex")
    assert len(magnitude) == len(rows) == len(complex_)
    for i in (0, 7, len(rows) - 1):
        raw = np.load(tiny_store / "volumes" / f"{rows[i]['volume']}.npy")[int(rows[i]["slice"])]
        image, target, slice_id = magnitude[i]
        assert image.dtype == torch.float32 and image.shape == (1, 64, 64)
        np.testing.assert_allclose(image[0].numpy(), np.abs(raw) / scale, rtol=1e-6)
        z, _, _ = complex_[i]
        assert z.dtype == torch.complex64 and z.shape == (64, 64)
        np.testing.assert_allclose(z.numpy(), raw / scale, rtol=1e-6, atol=1e-7)
        assert target.dtype == torch.float32 and target.tolist() == [float(rows[i][label]) for label in LABELS]
        assert slice_id == f"{rows[i]['volume']}:{rows[i]['slice']}"
    # at the dataset scale the typical volume's 99th percentile sits near 1
    assert 0.3 < np.percentile(np.stack([magnitude[i][0].numpy() for i in range(len(magnitude))]), 99) < 3


def test_split_filter_and_unknown_names(tiny_store):
    rows = _csv_rows(tiny_store)
    sizes = {split: len(SliceDataset(tiny_store, split)) for split in ("train", "val", "test")}
    assert sizes == {split: sum(r["split"] == split for r in rows) for split in sizes}
    assert all(sizes.values())
    val = SliceDataset(tiny_store, "val")
    assert {r["split"] for r in val.rows} == {"val"} and val.targets.shape == (sizes["val"], 4)
    with pytest.raises(MrRobustError, match="split"):
        SliceDataset(tiny_store, "training")
    with pytest.raises(MrRobustError, match="kind"):
        SliceDataset(tiny_store, kind="phase")


def test_lazy_maps_and_dataloader_workers(tiny_store):
    ds = SliceDataset(tiny_store, "train")
    assert not ds._maps  # nothing opened in __init__
    direct = torch.stack([ds[i][0] for i in range(len(ds))])
    assert ds._maps
    assert not pickle.loads(pickle.dumps(ds))._maps  # workers start without the parent's maps
    loaded = torch.cat([x for x, _, _ in DataLoader(ds, batch_size=16, num_workers=2)])
    torch.testing.assert_close(loaded, direct, rtol=0, atol=0)


def test_sampler_weights_are_inverse_frequency_of_positive_count():
    targets = np.array([[0, 0, 0, 0]] * 6 + [[1, 0, 0, 0]] * 3 + [[0, 1, 1, 0]] * 1, np.float32)
    np.testing.assert_allclose(sampler_weights(targets), [1 / 6] * 6 + [1 / 3] * 3 + [1.0])


def test_weighted_sampler_balances_positive_counts(tiny_store):
    ds = SliceDataset(tiny_store)
    n_pos = ds.targets.sum(1).astype(int)
    classes = collections.Counter(n_pos.tolist())
    sampler = weighted_sampler(ds, generator=torch.Generator().manual_seed(0))
    assert sampler.num_samples == len(ds)
    draws = []
    for _ in range(200):
        draws += list(sampler)
    drawn = collections.Counter(n_pos[draws].tolist())
    for k in classes:  # every positive-count class drawn about equally often
        assert drawn[k] / len(draws) == pytest.approx(1 / len(classes), abs=0.02)
    again = list(weighted_sampler(ds, generator=torch.Generator().manual_seed(0)))
    assert again == draws[: len(ds)]


def test_slice_seed_is_stable_across_processes_and_distinct():
    ids = [f"file{v}:{s}" for v in (1000001, 1000002) for s in range(30)]
    here = [slice_seed(i, 3) for i in ids]
    code = "import sys; from mrrobust.data.store import slice_seed; print([slice_seed(i, 3) for i in sys.argv[1:]])"
    other = subprocess.run([sys.executable, "-c", code, *ids], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"}).stdout
    assert eval(other) == here
    assert len(set(here)) == len(ids) and all(0 <= s < 2**63 for s in here)
    assert slice_seed(ids[0], 0) != slice_seed(ids[0], 1)


def test_atomic_writers_leave_no_temp_files(tmp_path):
    save_npy_atomic(tmp_path / "a.npy", np.arange(4, dtype=np.complex64))
    write_json_atomic(tmp_path / "a.json", {"b": 1, "a": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(4))
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": 2, "b": 1}


def test_collate_slices_matches_default_collate(tiny_store):
    from torch.utils.data import default_collate

    from mrrobust.data.store import collate_slices

    ds = SliceDataset(tiny_store, "val")
    batch = [ds[i] for i in range(5)]
    ours, reference = collate_slices(batch), default_collate(batch)
    torch.testing.assert_close(ours[0], reference[0], rtol=0, atol=0)
    torch.testing.assert_close(ours[1], reference[1], rtol=0, atol=0)
    assert ours[2] == list(reference[2])
    loaded = next(iter(DataLoader(ds, batch_size=5, num_workers=1, collate_fn=collate_slices)))
    torch.testing.assert_close(loaded[0], ours[0], rtol=0, atol=0)


def test_weighted_sampler_on_an_empty_split_is_one_clear_error():
    from types import SimpleNamespace

    with pytest.raises(MrRobustError, match="test split has no slices"):
        weighted_sampler(SimpleNamespace(targets=np.zeros((0, 4), np.float32), split="test"))
