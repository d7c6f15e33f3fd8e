"""fastMRI+ knee annotations (CSV) -> per-slice targets, raw labels, boxes.

`knee.csv` has one row per bounding box: `file, slice, study_level, x, y,
width, height, label`; `knee_file_list.csv` lists the volumes the annotators
reviewed (no header). The study's mapping turns each label string into four
binary targets (order `LABELS`): contains "ACL" -> acl, "Meniscus Tear" ->
mtear, "cartilage" -> cartilage, anything else -> abnormal (so `abnormal` is
"another finding"). A slice without a box is negative for all four.

Known glitches of the published files are absorbed here: exact duplicate rows,
`y = -1`, `height = 0`, stray spaces and hyphens in labels, the stray
`Knee data` line of the file list, rows with a volume but no label (skipped and
counted in `ignored_rows`), and study-level rows (whole-volume notes such as
`artifact`), which never set a slice's targets. Rows whose box fields are
missing or not finite keep their label but give no box.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from mrrobust.errors import MrRobustError

LABELS = ("abnormal", "mtear", "acl", "cartilage")
CSV_COLUMNS = ("file", "slice", "study_level", "x", "y", "width", "height", "label")
ANNOTATION_FILE = "knee.csv"
FILE_LIST = "knee_file_list.csv"
IMAGE_SIZE = 320  # boxes are drawn on the 320x320 reconstruction

# The 22 label strings of the published fastMRI+ knee.csv, as written there.
KNOWN_LABELS = (
    "Bone - Lesion", "Bone- Subchondral edema", "Bone-Fracture/Contusion/dislocation",
    "Cartilage - Full Thickness loss/defect", "Cartilage - Partial Thickness loss/defect",
    "Displaced Meniscal Tissue", "Joint Bodies", "Joint Effusion ",
    "LCL Complex - Low-Mod Grade Sprain", "LCL Complex- High Grade Sprain",
    "Ligament - ACL High Grade Sprain", "Ligament - ACL Low Grade sprain",
    "Ligament - MCL High Grade sprain", "Ligament - MCL Low-Mod Grade Sprain",
    "Ligament - PCL High Grade", "Ligament - PCL Low-Mod grade sprain", "Meniscus Tear",
    "Muscle Strain", "Patellar Retinaculum - High grade sprain", "Periarticular cysts",
    "Soft Tissue Lesion", "artifact",
)

_HYPHENS = re.compile(r"[-\u2010-\u2015\u2212]")
_VOLUME_ID = re.compile(r"^[\w.-]+$")


def normalize_label(label: str) -> str:
    """Lower case, hyphens as spaces, runs of whitespace as one space: `'Bone- Subchondral edema'` -> `'bone subchondral edema'`."""
    return " ".join(_HYPHENS.sub(" ", label).lower().split())


_KNOWN = frozenset(normalize_label(label) for label in KNOWN_LABELS)


def label_targets(label: str) -> np.ndarray:
    """One label string -> `(4,)` uint8 targets in `LABELS` order, by the study's mapping."""
    words = normalize_label(label)
    targets = np.zeros(len(LABELS), np.uint8)
    targets[LABELS.index("acl")] = re.search(r"\bacl\b", words) is not None
    targets[LABELS.index("mtear")] = "meniscus tear" in words
    targets[LABELS.index("cartilage")] = "cartilage" in words
    targets[LABELS.index("abnormal")] = not targets.any()
    return targets


def is_known_label(label: str) -> bool:
    """Whether `label` (after normalising) is one of the 22 published fastMRI+ knee labels."""
    return normalize_label(label) in _KNOWN


@dataclass(frozen=True)
class Box:
    """One finding's box in ARRAY coordinates of the 320x320 image (rows top-down), clipped to it.

    fastMRI+ boxes are drawn on the up/down flipped image: `row = 320 - y - height`, `col = x`.
    """

    label: str
    row: int
    col: int
    height: int
    width: int


def _box(label: str, x: str, y: str, width: str, height: str) -> Box | None:
    try:  # a short row gives None fields (TypeError), `inf` cannot become an int (OverflowError)
        x0, y0, w, h = (int(float(v)) for v in (x, y, width, height))
    except (TypeError, ValueError, OverflowError):
        return None
    top = min(max(IMAGE_SIZE - y0 - h, 0), IMAGE_SIZE)
    bottom = min(max(IMAGE_SIZE - y0, 0), IMAGE_SIZE)
    left = min(max(x0, 0), IMAGE_SIZE)
    right = min(max(x0 + w, 0), IMAGE_SIZE)
    return Box(label, top, left, bottom - top, right - left)


@dataclass
class Annotations:
    """The parsed annotation files of one folder.

    reviewed: volume ids of the file list; unseen_labels: labels (as written, stripped)
    outside the 22 published ones, counted by the mapping (usually as `abnormal`);
    ignored_lines: file-list lines that are not volume ids (e.g. `Knee data`);
    ignored_rows: `knee.csv` line numbers skipped because the row has a volume but no label.
    """

    source: str
    reviewed: set[str] = field(default_factory=set)
    unseen_labels: set[str] = field(default_factory=set)
    ignored_lines: list[str] = field(default_factory=list)
    ignored_rows: list[int] = field(default_factory=list)
    _labels: dict[str, dict[int, list[str]]] = field(default_factory=dict)
    _boxes: dict[str, dict[int, list[Box]]] = field(default_factory=dict)
    _notes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def annotated(self) -> set[str]:
        """Volumes with at least one slice-level finding."""
        return set(self._labels)

    def slice_labels(self, volume: str) -> dict[int, list[str]]:
        """slice -> distinct label strings (stripped, in file order) of the slice-level rows."""
        return {s: list(labels) for s, labels in self._labels.get(volume, {}).items()}

    def slice_targets(self, volume: str) -> dict[int, np.ndarray]:
        """slice -> `(4,)` uint8 targets; slices without a finding are absent (all negative)."""
        return {
            s: np.bitwise_or.reduce([label_targets(label) for label in labels])
            for s, labels in self._labels.get(volume, {}).items()
        }

    def slice_boxes(self, volume: str) -> dict[int, list[Box]]:
        """slice -> distinct boxes in array coordinates (rows with no usable box are left out)."""
        return {s: list(boxes) for s, boxes in self._boxes.get(volume, {}).items()}

    def volume_notes(self, volume: str) -> list[str]:
        """Labels of the study-level rows of `volume` (whole-volume notes such as `artifact`)."""
        return list(self._notes.get(volume, []))


def packaged_annotations_dir() -> Path:
    """The fastMRI+ knee files shipped with mrrobust (MIT licence, `LICENSE` beside them)."""
    return Path(str(resources.files("mrrobust") / "resources" / "fastmri_plus"))


def _read_file_list(path: Path) -> tuple[set[str], list[str]]:
    reviewed, ignored = set(), []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        name = line.strip().removesuffix(".h5")
        if not name:
            continue
        if _VOLUME_ID.match(name):
            reviewed.add(name)
        else:
            ignored.append(line.strip())
    return reviewed, ignored


def _read_boxes(path: Path, annotations: Annotations) -> None:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [column for column in CSV_COLUMNS if column not in header]
        if missing:
            raise MrRobustError(
                f"{path}: missing column(s) {', '.join(missing)} (header: {','.join(header) or 'empty'}); "
                f"a fastMRI+ annotation CSV needs {','.join(CSV_COLUMNS)}"
            )
        reader.fieldnames = header
        for line_no, row in enumerate(reader, start=2):
            volume = (row["file"] or "").strip().removesuffix(".h5")
            label = (row["label"] or "").strip()
            if not volume and not label:
                continue
            if not label:  # an empty label would map to `abnormal`: not a finding
                annotations.ignored_rows.append(line_no)
                continue
            try:
                slice_index = int(str(row["slice"]).strip())
            except ValueError:
                raise MrRobustError(
                    f"{path} line {line_no}: slice {row['slice']!r} is not an integer; fix or delete that row"
                ) from None
            if not is_known_label(label):
                annotations.unseen_labels.add(label)
            if str(row["study_level"]).strip().lower() in ("yes", "true", "1"):
                notes = annotations._notes.setdefault(volume, [])
                if label not in notes:
                    notes.append(label)
                continue
            labels = annotations._labels.setdefault(volume, {}).setdefault(slice_index, [])
            if label not in labels:
                labels.append(label)
            box = _box(label, row["x"], row["y"], row["width"], row["height"])
            boxes = annotations._boxes.setdefault(volume, {}).setdefault(slice_index, [])
            if box is not None and box not in boxes:
                boxes.append(box)


def load_annotations(directory: Path | str | None = None) -> Annotations:
    """Read `knee.csv` and `knee_file_list.csv` from `directory` (None: the packaged fastMRI+ copy)."""
    folder = packaged_annotations_dir() if directory is None else Path(directory)
    if not folder.is_dir():
        raise MrRobustError(f"{folder}: annotation folder not found; pass --annotations DIR holding {ANNOTATION_FILE} and {FILE_LIST}")
    for name in (ANNOTATION_FILE, FILE_LIST):
        if not (folder / name).is_file():
            raise MrRobustError(f"{folder}: no {name}; an annotation folder holds {ANNOTATION_FILE} and {FILE_LIST} (fastMRI+ format)")
    annotations = Annotations(source="packaged fastMRI+ (MIT)" if directory is None else str(folder.resolve()))
    try:
        annotations.reviewed, annotations.ignored_lines = _read_file_list(folder / FILE_LIST)
        _read_boxes(folder / ANNOTATION_FILE, annotations)
    except (UnicodeDecodeError, csv.Error) as err:
        raise MrRobustError(f"{folder}: annotation files are not UTF-8 CSV text ({err}); pass the fastMRI+ CSVs") from None
    except OSError as err:  # permissions, a folder named knee.csv, an I/O error
        raise MrRobustError(f"{err.filename or folder}: cannot read the annotation file ({err.strerror or err}); "
                            f"check its permissions or pass another --annotations") from None
    return annotations
