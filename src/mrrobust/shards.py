"""Shards of one evaluation: `--shard I/N` specs, the cells of a shard, and the merge check.

The cells of an evaluation are its (run, artifact, severity) triples in one canonical order:
grid-major (`evaluation.grid_cells`: clean first, then artifact-major), runs in the order
given. Shard I of N (1-based) takes the I-th of N contiguous blocks of that order, of equal
size up to one cell, so a cell's corrupted inputs are made by at most two shards and the
same settings always give the same shards.

A shard evaluation records `"shard": {"index": I, "count": N}` in its evaluation.json.
`check_shards` takes the RESULTS folders of the shards and refuses folders of different
evaluations (their settings differ), overlapping shards (the same I twice), a missing shard
(naming it) and a shard that has not finished its cells; `merge_shards` then gathers them
into one RESULTS folder (hard links where possible), for the tables and the report.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from mrrobust.errors import MrRobustError

SHARD_KEY = "shard"
OPERATING_POINTS = "operating_points"  # written by evaluate once a shard has finished
SETTINGS_FILE = "evaluation.json"
_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
# evaluation.json entries that may differ between the shards of one evaluation, beside those
# a resume does not compare (`evaluation._compared`: device; batch size unless prior or tent)
MAY_DIFFER = (SHARD_KEY,)


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1..count) of `count`."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def record(self) -> dict:
        """The `shard` entry of evaluation.json."""
        return {"index": self.index, "count": self.count}


def parse_shard(text: str | None) -> Shard | None:
    """`"I/N"` -> Shard(I, N) with 1 <= I <= N; None stays None (the whole evaluation)."""
    if text is None:
        return None
    match = _SPEC.fullmatch(str(text))
    if match is None:
        raise MrRobustError(f"--shard {text!r}: expected I/N with whole numbers, e.g. 1/4 "
                            f"(shard 1 of 4)")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 1 <= index <= count:
        raise MrRobustError(f"--shard {text}: shards are numbered 1..N with N >= 1 (e.g. "
                            f"1/{max(count, 1)} .. {max(count, 1)}/{max(count, 1)})")
    return Shard(index, count)


def all_cells(runs: list[str], grid: list[tuple[str, int]]) -> list[tuple[str, str, int]]:
    """Every (run, artifact, severity) in the canonical order: grid-major, then runs."""
    return [(run, artifact, severity) for artifact, severity in grid for run in runs]


def shard_cells(runs: list[str], grid: list[tuple[str, int]],
                shard: Shard | None) -> list[tuple[str, str, int]]:
    """The cells of `shard` (all of them for None): block `index` of `count` contiguous,
    near-equal blocks of `all_cells`. More shards than cells is refused."""
    cells = all_cells(runs, grid)
    if shard is None:
        return cells
    if shard.count > len(cells):
        raise MrRobustError(f"--shard {shard}: {shard.count} shards for {len(cells)} cells "
                            f"(runs x artifact-severity cells); use at most {len(cells)} shards")
    start = (shard.index - 1) * len(cells) // shard.count
    stop = shard.index * len(cells) // shard.count
    return cells[start:stop]


# ---- the merge -----------------------------------------------------------------------------


@dataclass
class ShardSet:
    """Checked shard folders of one evaluation: `folders[i]` holds shard i + 1 of `count`;
    `settings` the shared settings (the first folder's, without the shard)."""

    folders: list[Path]
    count: int
    settings: dict


def _settings(folder: Path) -> dict:
    from mrrobust.data.store import read_json
    from mrrobust.evaluation import RESULTS_FORMAT

    record = read_json(Path(folder) / SETTINGS_FILE)
    if record is None or record.get("format") != RESULTS_FORMAT:
        raise MrRobustError(f"{folder} is not a RESULTS folder (no readable {SETTINGS_FILE}); "
                            f"pass folders written by `mrrobust evaluate`")
    return record


def _comparable(settings: dict) -> dict:
    """What must agree between shards: what a resume compares, but the shard."""
    from mrrobust.evaluation import _compared

    try:
        same = _compared(settings)
    except (KeyError, TypeError, AttributeError):
        raise MrRobustError("a shard's evaluation.json is damaged (no runs); re-run that shard "
                            "into a new folder") from None
    return {k: v for k, v in same.items() if k not in MAY_DIFFER}


def _shard_of(folder: Path, settings: dict) -> Shard:
    entry = settings.get(SHARD_KEY)
    if not isinstance(entry, dict):
        raise MrRobustError(f"{folder} is a whole evaluation (no --shard), not a shard; report "
                            f"it alone or pass only shard folders")
    try:
        return parse_shard(f"{int(entry['index'])}/{int(entry['count'])}")
    except (KeyError, TypeError, ValueError):
        raise MrRobustError(f"{folder}: damaged shard entry {entry!r} in its settings; "
                            f"re-run that shard into a new folder") from None


def _grid(settings: dict) -> tuple[list[str], list[tuple[str, int]]]:
    from mrrobust.evaluation import grid_cells

    runs = [run["name"] for run in settings["runs"]]
    return runs, grid_cells(list(settings["artifacts"]), [int(s) for s in settings["severities"]])


def _unfinished(folder: Path, cells: list[tuple[str, str, int]], settings: dict) -> list[str]:
    """The cells of `folder` lacking a prediction file of one of their run's bn_modes
    (every mode for batch-norm runs, eval for the others), of the validation split too
    with --threshold-from corrupted-val."""
    from mrrobust.evaluation import PREDICTIONS, THRESHOLD_PREDICTIONS, prediction_path

    modes = {run["name"]: run.get("bn_modes") or ((settings.get("bn_modes") or ["eval"])
                                                   if run.get("batch_norm") else ["eval"])
             for run in settings["runs"]}
    roots = [PREDICTIONS] + ([THRESHOLD_PREDICTIONS]
                             if settings.get("threshold_from") == "corrupted-val" else [])
    return [f"{run} {mode} {artifact}-{severity}" + ("" if root == PREDICTIONS else " (val)")
            for run, artifact, severity in cells for mode in modes[run] for root in roots
            if not prediction_path(folder, run, mode, artifact, severity, root).is_file()]


def check_shards(folders) -> ShardSet:
    """The shard folders of one evaluation, checked (module docstring), in shard order."""
    folders = [Path(f) for f in folders]
    if len(folders) < 1:
        raise MrRobustError("pass one or more RESULTS folders")
    records = [_settings(folder) for folder in folders]
    shards = [_shard_of(folder, record) for folder, record in zip(folders, records)]
    first, reference = folders[0], _comparable(records[0])
    for folder, record in zip(folders[1:], records[1:]):
        other = _comparable(record)
        changed = sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
        if changed:
            raise MrRobustError(f"{first} and {folder} are shards of different evaluations "
                                f"(settings differ: {', '.join(changed)}); merge shards of one "
                                f"evaluate command only")
    counts = sorted({shard.count for shard in shards})
    if len(counts) > 1:
        raise MrRobustError(f"the folders split the evaluation into {counts} shards; pass the "
                            f"shards of one --shard I/N split")
    count, seen = counts[0], {}
    for folder, shard in zip(folders, shards):
        if shard.index in seen:
            raise MrRobustError(f"overlapping shards: {seen[shard.index]} and {folder} are both "
                                f"shard {shard}; pass each shard once")
        seen[shard.index] = folder
    missing = [f"{i}/{count}" for i in range(1, count + 1) if i not in seen]
    if missing:
        raise MrRobustError(f"shard {', '.join(missing)} missing (given "
                            f"{', '.join(str(s) for s in sorted(shards, key=lambda s: s.index))}); "
                            f"run `mrrobust evaluate ... --shard {missing[0]}` and pass its folder")
    runs, grid = _grid(records[0])
    ordered = [seen[i] for i in range(1, count + 1)]
    for index, folder in enumerate(ordered, start=1):
        unfinished = _unfinished(folder, shard_cells(runs, grid, Shard(index, count)), records[0])
        if unfinished:
            raise MrRobustError(f"shard {index}/{count} ({folder}) has not finished "
                                f"{len(unfinished)} cell(s) ({', '.join(unfinished[:3])}); re-run "
                                f"the same evaluate --shard {index}/{count} to finish it")
    by_index = {shard.index: record for shard, record in zip(shards, records)}
    points = by_index[1].get(OPERATING_POINTS)
    for index, folder in enumerate(ordered, start=1):
        mine = by_index[index].get(OPERATING_POINTS)
        if mine is None:
            raise MrRobustError(f"shard {index}/{count} ({folder}) has not finished (its "
                                f"{SETTINGS_FILE} holds no {OPERATING_POINTS}); re-run the same "
                                f"evaluate --shard {index}/{count} to finish it")
        if mine != points:
            raise MrRobustError(f"{ordered[0]} and {folder} are shards of different evaluations "
                                f"(the runs' operating points differ: a RUN was calibrated or "
                                f"trained again between them); re-run the shards")
    settings = {k: v for k, v in by_index[1].items() if k != SHARD_KEY}
    return ShardSet(ordered, count, settings)


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` becomes `source`'s content: a hard link when possible, else a copy; atomic."""
    from mrrobust.atomic import temp_name

    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_name(target)
    temp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temp)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(source, temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def check_merge_target(found: ShardSet, out: Path) -> None:
    """Refuse an `out` that is a file, or a non-empty folder holding no merge of these shards."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MrRobustError(f"--out {out} is a file; choose a folder for the merged RESULTS")
    if out.is_dir() and any(out.iterdir()):
        before = _settings(out) if (out / SETTINGS_FILE).is_file() else None
        if before is None or _comparable(before) != _comparable(found.settings):
            raise MrRobustError(f"{out} is not empty and holds no merge of these shards; choose "
                                f"another folder")


def merge_shards(folders, out: Path) -> Path:
    """Gather the checked shards (`check_shards`) into the RESULTS folder `out`: their
    slices.csv (identical in every shard; threshold_slices.csv too with corrupted-val), every
    prediction file, and evaluation.json without the shard (written last). `out` must be
    new, empty, or an earlier merge of the same shards. `evaluation.write_tables(out)` then
    writes the tables as for any evaluation."""
    from mrrobust.data.store import write_json_atomic
    from mrrobust.evaluation import (PREDICTIONS, SLICES_FILE, THRESHOLD_PREDICTIONS,
                                     THRESHOLD_SLICES_FILE)

    found, out = check_shards(folders), Path(out)
    check_merge_target(found, out)
    corrupted_val = found.settings.get("threshold_from") == "corrupted-val"
    lists = [SLICES_FILE] + ([THRESHOLD_SLICES_FILE] if corrupted_val else [])
    roots = [PREDICTIONS] + ([THRESHOLD_PREDICTIONS] if corrupted_val else [])
    for name in lists:
        slices = {(folder / name).read_bytes() if (folder / name).is_file() else None
                  for folder in found.folders}
        if len(slices) != 1 or None in slices:
            raise MrRobustError(f"the shards' {name} differ or are missing (the STORE was "
                                f"prepared again between them?); re-run the shards on one STORE")
    try:
        for name in lists:
            _link_or_copy(found.folders[0] / name, out / name)
        for folder in found.folders:
            for root in roots:
                for source in sorted((folder / root).rglob("*")):
                    if source.is_file() and not source.name.startswith("."):
                        _link_or_copy(source, out / source.relative_to(folder))
        write_json_atomic(out / SETTINGS_FILE, found.settings)
    except OSError as err:
        raise MrRobustError(f"cannot write the merged RESULTS folder {out} "
                            f"({err.strerror or err}); choose a writable folder") from None
    return out
