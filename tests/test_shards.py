"""Shards: spec parsing, the partition of the cells, and the merge of shard folders.

The shard folders are cut out of one real evaluation (its prediction files split by
`shard_cells`), so a correct merge is that evaluation again: `evaluate` into the merged
folder reuses every prediction and writes byte-identical tables.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mrrobust.errors import MrRobustError
from mrrobust.evaluation import (
    PREDICTIONS, SETTINGS_FILE, SLICES_FILE, evaluate, grid_cells, prediction_path)
from mrrobust.shards import Shard, all_cells, check_shards, merge_shards, parse_shard, shard_cells

from commands import call_cli

TABLES = ("results.csv", "arms.csv", "arm_comparisons.csv", "thresholds.csv", "bn_shift.csv")
SETTINGS = dict(artifacts=["noise", "gibbs"], severities=[1, 3], split="val", bn_modes=["eval", "adapt"],
                batch_size=32, bootstrap=20, device="cpu", progress=False)


@pytest.mark.parametrize("text, shard", [("1/4", Shard(1, 4)), (" 4 / 4 ", Shard(4, 4)),
                                         ("1/1", Shard(1, 1)), (None, None)])
def test_parse_shard(text, shard):
    assert parse_shard(text) == shard


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "a/b", "1-4", "", "1/4/2", "-1/4", "1.5/4"])
def test_bad_shard_specs_are_one_line(text):
    with pytest.raises(MrRobustError, match="--shard") as err:
        parse_shard(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("runs, count", [(["a", "b", "c"], 4), (["a"], 7), (["a", "b"], 1),
                                         (["a", "b", "c", "d", "e"], 3)])
def test_shards_partition_the_cells_in_order_evenly(runs, count):
    grid = grid_cells(["noise", "motion"], [1, 2, 3])
    everything = all_cells(runs, grid)
    assert len(everything) == len(runs) * 7 and len(set(everything)) == len(everything)
    assert everything[:len(runs)] == [(run, "clean", 0) for run in runs]  # grid-major
    parts = [shard_cells(runs, grid, Shard(i, count)) for i in range(1, count + 1)]
    assert sum(parts, []) == everything  # contiguous blocks, in order, each cell once
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert parts == [shard_cells(list(runs), list(grid), Shard(i, count)) for i in range(1, count + 1)]


def test_more_shards_than_cells_is_refused():
    with pytest.raises(MrRobustError, match="at most 3 shards"):
        shard_cells(["a"], grid_cells(["noise"], [1, 2]), Shard(4, 4))


# ---- merging shard folders ---------------------------------------------------------------


@pytest.fixture(scope="module")
def whole(tiny_store, tiny_runs, tmp_path_factory) -> tuple[Path, list[Path]]:
    """One finished evaluation of two tiny runs (batch: eval + adapt; layer: eval)."""
    runs = [tiny_runs["batch"], tiny_runs["layer"]]
    out = tmp_path_factory.mktemp("shard_runs") / "whole"
    evaluate(runs, tiny_store, out, **SETTINGS)
    return out, runs


def cut(whole: Path, root: Path, count: int, skip=()) -> list[Path]:
    """The shard folders `whole` would have been, had it been run as `count` shards."""
    settings = json.loads((whole / SETTINGS_FILE).read_text())
    names = [run["name"] for run in settings["runs"]]
    grid = grid_cells(settings["artifacts"], settings["severities"])
    folders = []
    for index in range(1, count + 1):
        folder = root / f"shard{index}"
        folder.mkdir(parents=True)
        (folder / SETTINGS_FILE).write_text(json.dumps(
            {**settings, "shard": {"index": index, "count": count}, "batch_size": 8 * index}))
        shutil.copyfile(whole / SLICES_FILE, folder / SLICES_FILE)
        for run, artifact, severity in shard_cells(names, grid, Shard(index, count)):
            if (index, run, artifact, severity) in skip:
                continue
            for source in (whole / PREDICTIONS / run).rglob(f"{artifact}-{severity}.*"):
                target = folder / source.relative_to(whole)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
        folders.append(folder)
    return folders


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted((folder / PREDICTIONS).rglob("*")) if p.is_file()}


def test_merged_shards_are_the_whole_evaluation(whole, tiny_store, tmp_path):
    out, runs = whole
    shards = cut(out, tmp_path, 3)
    assert all(files(folder) for folder in shards)  # every shard holds some cells
    merged = merge_shards(list(reversed(shards)), tmp_path / "merged")  # any order
    assert files(merged) == files(out)
    assert json.loads((merged / SETTINGS_FILE).read_text())["runs"] == \
        json.loads((out / SETTINGS_FILE).read_text())["runs"]
    summary = evaluate(runs, tiny_store, merged, **SETTINGS)
    assert summary["computed"] == 0 and summary["reused"] == summary["cells"]
    for table in TABLES:
        assert (merged / table).read_bytes() == (out / table).read_bytes(), table
    assert merge_shards(shards, merged) == merged  # merging again into it is allowed


def test_merge_refusals_name_the_problem(whole, tmp_path):
    out, _ = whole
    shards = cut(out, tmp_path / "a", 3)
    with pytest.raises(MrRobustError, match=r"shard 2/3 missing"):
        check_shards([shards[0], shards[2]])
    with pytest.raises(MrRobustError, match="overlapping shards: .*shard1 and .*shard1"):
        check_shards([shards[0], shards[0], shards[1], shards[2]])
    with pytest.raises(MrRobustError, match="whole evaluation"):
        check_shards([out, shards[0]])
    other = cut(out, tmp_path / "b", 3)
    record = json.loads((other[1] / SETTINGS_FILE).read_text())
    (other[1] / SETTINGS_FILE).write_text(json.dumps({**record, "seed": 7}))
    with pytest.raises(MrRobustError, match="different evaluations .*seed"):
        check_shards([other[0], other[1], other[2]])
    with pytest.raises(MrRobustError, match=r"\[2, 3\] shards"):
        check_shards(shards[:1] + cut(out, tmp_path / "c", 2))
    settings = json.loads((out / SETTINGS_FILE).read_text())
    assert settings["runs"][0]["batch_norm"] and settings["bn_modes"] == ["eval", "adapt"]
    first = (1, settings["runs"][0]["name"], "clean", 0)
    unfinished = cut(out, tmp_path / "d", 3, skip={first})
    with pytest.raises(MrRobustError, match=r"shard 1/3 .* has not finished 2 cell"):
        check_shards(unfinished)  # the batch-norm run's eval and adapt files of that cell
    no_adapt = cut(out, tmp_path / "e", 3)
    next((no_adapt[2] / PREDICTIONS).rglob("adapt/*.npy")).unlink()
    with pytest.raises(MrRobustError, match=r"shard 3/3 .* has not finished 1 cell.* adapt "):
        check_shards(no_adapt)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(MrRobustError, match="not empty"):
        merge_shards(shards, busy)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_the_prediction_paths_the_merge_reads_are_evaluations():
    assert prediction_path(Path("R"), "run", "eval", "noise", 3) == \
        Path("R") / PREDICTIONS / "run" / "eval" / "noise-3.npy"


# ---- real shards: evaluate --shard, merged by report ------------------------------------------


@pytest.fixture(scope="module")
def sharded(whole, tiny_store, tmp_path_factory) -> list[Path]:
    """The evaluation of `whole` run as 3 shards, each into its own folder (the same batch
    size: float sums over other batches differ in the last bits)."""
    _, runs = whole
    root = tmp_path_factory.mktemp("shards")
    folders = []
    for index in (1, 2):
        folders.append(root / f"part{index}")
        summary = evaluate(runs, tiny_store, folders[-1], shard=f"{index}/3", **SETTINGS)
        assert summary["computed"] > 0
    folders.append(root / "part3")  # the last through the command line
    code, printed, err = call_cli("evaluate", *runs, "--data", tiny_store, "--out", folders[-1], "--shard", "3/3",
                                  "--artifacts", "noise,gibbs", "--severities", "1,3", "--split", "val",
                                  "--bn-modes", "eval,adapt", "--batch-size", "32", "--bootstrap", "20",
                                  "--device", "cpu", "--quiet")
    assert code == 0, err
    assert "shard 3/3" in printed and "mrrobust report SHARD" in printed
    return folders


def test_a_shard_predicts_only_its_cells_and_writes_no_tables(whole, sharded):
    out, _ = whole
    settings = json.loads((out / SETTINGS_FILE).read_text())
    names = [run["name"] for run in settings["runs"]]
    grid = grid_cells(settings["artifacts"], settings["severities"])
    for index, folder in enumerate(sharded, start=1):
        record = json.loads((folder / SETTINGS_FILE).read_text())
        assert record["shard"] == {"index": index, "count": 3}
        assert "statistics" not in record and record["operating_points"] == settings["operating_points"]
        assert not any((folder / table).exists() for table in TABLES)
        mine = shard_cells(names, grid, Shard(index, 3))
        stems = {(p.parent.parent.name, p.stem) for p in (folder / PREDICTIONS).rglob("*.npy")}
        assert stems == {(run, f"{a}-{s}") for run, a, s in mine}
    assert "shard" not in settings  # an unsharded evaluation records none


def test_report_merges_the_shards_into_the_whole_evaluations_tables(whole, sharded, tmp_path):
    from mrrobust.report import report

    out, _ = whole
    written = report(list(reversed(sharded)), tmp_path / "report")
    merged = tmp_path / "report" / "results"
    assert written["report"].is_file() and files(merged) == files(out)
    for table in TABLES:
        assert (merged / table).read_bytes() == (out / table).read_bytes(), table
    mine, theirs = (json.loads((f / SETTINGS_FILE).read_text()) for f in (merged, out))
    assert mine["statistics"] == theirs["statistics"] and mine["thresholds"] == theirs["thresholds"]
    assert "shard" not in mine
    report(sharded, tmp_path / "report")  # again into the same REPORT: allowed
    assert (merged / "arms.csv").read_bytes() == (out / "arms.csv").read_bytes()


def test_report_refuses_bad_shard_sets_in_one_line_and_writes_nothing(sharded, whole, tmp_path):
    target = tmp_path / "report"
    code, _, err = call_cli("report", sharded[0], sharded[2], "--out", target)
    assert code == 2 and "shard 2/3 missing" in err
    assert len(err.strip().splitlines()) == 1 and not target.exists()
    _, runs = whole
    code, _, err = call_cli("evaluate", *runs, "--data", "nowhere", "--out", target, "--shard", "0/3")
    assert code == 2 and ("--shard '0/3'" in err or "--shard 0/3" in err)
    assert len(err.strip().splitlines()) == 1 and not target.exists()
    from mrrobust.report import report

    with pytest.raises(MrRobustError, match="overlapping shards"):
        report([sharded[0], sharded[0], sharded[1], sharded[2]], target)
    with pytest.raises(MrRobustError, match="whole evaluation"):
        report([whole[0], sharded[0]], target)
    assert not target.exists()


def test_bad_shard_specs_and_resuming_another_shard_are_refused(whole, sharded, tiny_store, tmp_path):
    _, runs = whole
    with pytest.raises(MrRobustError, match="--shard '2/x'"):
        evaluate(runs, tiny_store, tmp_path / "bad", shard="2/x", **SETTINGS)
    with pytest.raises(MrRobustError, match="at most 10 shards"):
        evaluate(runs, tiny_store, tmp_path / "bad", shard="11/11", **SETTINGS)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(MrRobustError, match="other settings .*shard"):
        evaluate(runs, tiny_store, sharded[0], shard="2/3", **SETTINGS)


def test_shards_with_thresholds_from_the_corrupted_validation_split(whole, tiny_store, tmp_path):
    """corrupted-val: the shards' validation predictions are merged too, and the thresholds
    re-chosen per cell from them are those of the unsharded evaluation."""
    from mrrobust.evaluation import THRESHOLD_PREDICTIONS, write_tables

    _, runs = whole
    settings = {**SETTINGS, "artifacts": ["noise"], "severities": [2], "bn_modes": ["eval"],
                "threshold_from": "corrupted-val"}
    evaluate(runs[1:], tiny_store, tmp_path / "all", **settings)
    parts = [tmp_path / f"p{i}" for i in (1, 2)]
    for index, folder in enumerate(parts, start=1):
        evaluate(runs[1:], tiny_store, folder, shard=f"{index}/2", **settings)
    assert all(any((folder / THRESHOLD_PREDICTIONS).rglob("*.npy")) for folder in parts)
    merged = merge_shards(parts, tmp_path / "merged")
    write_tables(merged)
    for table in TABLES:
        assert (merged / table).read_bytes() == (tmp_path / "all" / table).read_bytes(), table
