"""fastMRI+ annotations: the packaged real CSVs, the study's label mapping, the glitches."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

from mrrobust.data.annotations import LABELS, load_annotations, label_targets, normalize_label, packaged_annotations_dir
from mrrobust.errors import MrRobustError

HEADER = "file,slice,study_level,x,y,width,height,label\n"


@pytest.fixture(scope="module")
def real():
    return load_annotations()


def _independent_counts() -> tuple[dict[str, set], set]:
    """Count positive (volume, slice) pairs per target straight from the packaged text,
    with plain string splitting and the study's rules as REFERENCE s.1 words them."""
    text = (resources.files("mrrobust") / "resources" / "fastmri_plus" / "knee.csv").read_text()
    positives = {label: set() for label in LABELS}
    slices = set()
    for line in text.splitlines()[1:]:
        volume, slice_, study_level, _x, _y, _w, _h, label = line.split(",", 7)
        if study_level == "Yes":
            continue
        key = (volume, int(slice_))
        slices.add(key)
        hits = [name for name, hit in (("acl", "ACL" in label), ("mtear", "Meniscus Tear" in label),
                                        ("cartilage", "cartilage" in label.lower())) if hit]
        for name in hits or ["abnormal"]:
            positives[name].add(key)
    return positives, slices


def test_real_label_counts_match_independent_count_and_reference(real):
    positives, slices = _independent_counts()
    ours = {label: 0 for label in LABELS}
    n_slices = 0
    for volume in real.annotated:
        for targets in real.slice_targets(volume).values():
            n_slices += 1
            for label, t in zip(LABELS, targets):
                ours[label] += int(t)
    assert ours == {label: len(keys) for label, keys in positives.items()}
    assert ours == {"mtear": 4858, "abnormal": 4484, "cartilage": 2986, "acl": 1439}  # REFERENCE s.3
    assert n_slices == len(slices) == 9581
    assert len(real.annotated) == len({v for v, _ in slices}) == 969


def test_file_list_is_singlecoil_train_plus_val_and_drops_stray_line(real):
    manifest = resources.files("mrrobust") / "resources" / "fastmri_manifest"
    names = set()
    for split in ("train", "val"):
        names |= {line.strip().removesuffix(".h5") for line in (manifest / f"knee_singlecoil_{split}.txt").read_text().split()}
    assert len(real.reviewed) == 1172
    assert real.reviewed == names
    assert real.ignored_lines == ["Knee data"]
    assert real.ignored_rows == []  # the published knee.csv has no label-less rows
    assert real.annotated <= real.reviewed
    assert real.unseen_labels == set()


def test_study_level_rows_are_volume_notes_not_slice_targets(real):
    noted = [v for v in real.reviewed if real.volume_notes(v)]
    assert len(noted) == 13 and all(real.volume_notes(v) == ["artifact"] for v in noted)
    for volume in noted:
        assert "artifact" not in [label for labels in real.slice_labels(volume).values() for label in labels]
    # the released code marks slice 0 of these volumes abnormal (4,497); we must not
    assert sum(int(t[0]) for v in real.annotated for t in real.slice_targets(v).values()) == 4484


def test_boxes_are_flipped_into_array_rows_and_clipped(real):
    # file1000001,14,No,90,173,35,10,Cartilage - Partial Thickness loss/defect
    box = real.slice_boxes("file1000001")[14][0]
    assert (box.row, box.col, box.height, box.width) == (320 - 173 - 10, 90, 10, 35)
    # y = -1 (file1001259,11,No,93,-1,175,153): bottom edge clipped to the image
    box = real.slice_boxes("file1001259")[11][0]
    assert (box.row, box.row + box.height, box.col, box.width) == (320 + 1 - 153, 320, 93, 175)
    # height = 0 (file1002097,27,No,190,201,18,0) is kept as a finding
    assert "Cartilage - Partial Thickness loss/defect" in real.slice_labels("file1002097")[27]
    for volume in real.annotated:
        for boxes in real.slice_boxes(volume).values():
            for b in boxes:
                assert 0 <= b.row <= b.row + b.height <= 320 and 0 <= b.col <= b.col + b.width <= 320


@pytest.mark.parametrize(
    "label, expected",
    [
        ("Meniscus Tear", "mtear"),
        ("  meniscus-TEAR ", "mtear"),
        ("Ligament - ACL Low Grade sprain", "acl"),
        ("Ligament-ACL  High Grade Sprain", "acl"),
        ("Cartilage - Full Thickness loss/defect", "cartilage"),
        ("Bone- Subchondral edema", "abnormal"),
        ("Joint Effusion ", "abnormal"),
        ("Ligament - MCL High Grade sprain", "abnormal"),  # MCL/PCL/LCL are not ACL
        ("Displaced Meniscal Tissue", "abnormal"),
        ("Something nobody has seen", "abnormal"),
    ],
)
def test_label_mapping(label, expected):
    targets = label_targets(label)
    assert targets.dtype == np.uint8 and targets.shape == (4,)
    assert [LABELS[i] for i in np.flatnonzero(targets)] == [expected]


def test_normalization_merges_spacing_case_and_hyphen_variants():
    variants = ["Bone- Subchondral edema", "Bone - Subchondral edema", "bone -subchondral  EDEMA", "Bone\u2013Subchondral edema"]
    assert len({normalize_label(v) for v in variants}) == 1


def _write(folder, rows: str, file_list: str, header: str = HEADER):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "knee.csv").write_text(header + rows)
    (folder / "knee_file_list.csv").write_text(file_list)
    return folder


def test_glitches_duplicates_unseen_and_study_level(tmp_path):
    rows = (
        "file1,3,No,10,20,5,5,Meniscus Tear\n"
        "file1,3,No,10,20,5,5,Meniscus Tear\n"          # exact duplicate
        "file1,3,No,40,20,5,5,Ligament - ACL High Grade Sprain\n"
        "file1,0,Yes,,,,,artifact\n"                     # study level: a note only
        "file2,5,No,1,-1,5,0,Loose  Hardware\n"          # unseen label, y=-1, height 0
    )
    ann = load_annotations(_write(tmp_path / "a", rows, "file1\nfile2.h5\n\nKnee data\n"))
    assert ann.reviewed == {"file1", "file2"}
    assert ann.slice_labels("file1") == {3: ["Meniscus Tear", "Ligament - ACL High Grade Sprain"]}
    assert list(ann.slice_targets("file1")[3]) == [0, 1, 1, 0]
    assert 0 not in ann.slice_targets("file1")
    assert ann.volume_notes("file1") == ["artifact"]
    assert list(ann.slice_targets("file2")[5]) == [1, 0, 0, 0]
    assert ann.unseen_labels == {"Loose  Hardware"}
    assert len(ann.slice_boxes("file1")[3]) == 2


def test_short_empty_label_and_infinite_rows_are_skipped_not_crashes(tmp_path):
    rows = (
        "file1,3\n"                                      # short row: no box, no label
        "file1,4,No,10,20,5,5,\n"                         # a volume but an empty label
        "file1,5,No,10,20,5,5,   \n"                      # a label of spaces only
        "file1,6,No,inf,20,5,5,Meniscus Tear\n"           # a box that is not finite
        "file1,6,No,nan,20,5,5,Meniscus Tear\n"
        "file1,7,No,10,20,5,5,Meniscus Tear\n"
    )
    ann = load_annotations(_write(tmp_path / "a", rows, "file1\n"))
    assert ann.ignored_rows == [2, 3, 4]  # csv line numbers, header = line 1
    assert set(ann.slice_targets("file1")) == {6, 7}  # no slice marked abnormal by an empty label
    assert list(ann.slice_targets("file1")[6]) == [0, 1, 0, 0]
    boxes = ann.slice_boxes("file1")
    assert boxes[6] == [] and len(boxes[7]) == 1  # the label counts, the non-finite box is dropped
    assert ann.unseen_labels == set()


def test_missing_columns_is_one_clear_error(tmp_path):
    folder = _write(tmp_path / "a", "file1,3,No,10,20,5,5\n", "file1\n", header="file,slice,study_level,x,y,width,height\n")
    with pytest.raises(MrRobustError, match="missing column.*label"):
        load_annotations(folder)


def test_bad_slice_number_names_the_line(tmp_path):
    folder = _write(tmp_path / "a", "file1,three,No,10,20,5,5,Meniscus Tear\n", "file1\n")
    with pytest.raises(MrRobustError, match="line 2"):
        load_annotations(folder)


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(MrRobustError, match="not found"):
        load_annotations(tmp_path / "nowhere")
    (tmp_path / "only_csv").mkdir()
    (tmp_path / "only_csv" / "knee.csv").write_text(HEADER)
    with pytest.raises(MrRobustError, match="knee_file_list.csv"):
        load_annotations(tmp_path / "only_csv")


def test_packaged_copy_ships_with_its_licence():
    folder = packaged_annotations_dir()
    assert (folder / "LICENSE").read_text().lstrip().startswith("MIT License")
    assert {"knee.csv", "knee_file_list.csv"} <= {p.name for p in folder.iterdir()}
