"""report: a RESULTS folder built by hand (`report_results`: evaluate's file formats, numbers from
a known model) -> report.md, report.html and figures. Every number checked here is recomputed
from that model, and every guard rail of issue 8 has a test that builds its case."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from report_results import (B, CLEAN, CLEAN_COST, HALF, RECOVER, SLOPE, WEIGHT, arm_auc, corruption_errors, pooled,
                            retained, write_results)

from mrrobust.errors import MrRobustError
from mrrobust.report import figures as figures_module
from mrrobust.report import report

SEVERITIES = (1, 2, 3, 4, 5)


@pytest.fixture(autouse=True)
def low_dpi(monkeypatch):
    monkeypatch.setattr(figures_module, "DPI", 30)


def section(markdown: str, title: str) -> str:
    """The text of the `## title` section (up to the next `## `)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in `text`: rows (the header first) of cells."""
    found, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                found.append(current)
            if not set(line) <= set("|-"):
                current.append([c.strip() for c in line.strip("|").split("|")])
        else:
            current = None
    return found


def row_of(table, *first: str) -> dict:
    rows = [r for r in table[1:] if tuple(r[:len(first)]) == first]
    assert len(rows) == 1, (first, table)
    return dict(zip(table[0], rows[0]))


def bullets(text: str) -> list[str]:
    return [line[2:] for line in text.splitlines() if line.startswith("- ")]


def f3(x, sign=False) -> str:
    x = round(float(x), 3) + 0.0
    return f"{x:+.3f}" if sign else f"{x:.3f}"


def bracket(v, half, sign=False) -> str:
    return f"{f3(v, sign)} [{f3(v - half, sign)}, {f3(v + half, sign)}]"


def edit_csv(path: Path, match: dict, **changes) -> None:
    """Set `changes` in the rows of `path` whose cells equal `match`."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    hits = 0
    for row in rows:
        if all(row[k] == str(v) for k, v in match.items()):
            row.update({k: str(v) for k, v in changes.items()})
            hits += 1
    assert hits, match
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_full_report(tmp_path):
    results = write_results(tmp_path / "results")
    written = report(results, tmp_path / "report")
    md = written["report"].read_text()
    assert sorted(p.name for p in written["figures"]) == [
        "adaptation_gain.png", "auc_vs_severity.png", "bn_shift.png", "corruption_error.png",
        "difference_heatmap.png", "reliability.png"]
    for path in written["figures"]:
        assert f"figures/{path.name}" in md
    assert not list((tmp_path / "report").rglob("*.tmp"))

    # header: provenance, sizes, arms with training settings and seeds, software, machine, wall time, B
    head = section(md, "What was evaluated")
    for text in ("**synthetic**", "| test (evaluated) | 12 | 24 | 12 | 12 | 12 | 12 |", "| train | 60 | 120 | 40",
                 "| batch | batch | 0, 1 | batch-seed0, batch-seed1 | as below | measured | yes |",
                 "Training settings of every arm: lr 0.001, max_epochs 8.",
                 "torch 2.13.0", "platform test-machine", "wall time: 123 s", f"B = {B} bootstrap",
                 "smallest attainable p 0.0010", "resamples dropped: auc 3 of 1000", "fallback rule was used in 1 case"):
        assert text in head, text
    assert "training variance unmeasured" not in md

    # the first finding is the primary endpoint: group - batch over every artifact and severity
    found = bullets(section(md, "Key findings"))
    d = pooled("group", "eval", "all", SEVERITIES) - pooled("batch", "eval", "all", SEVERITIES)
    assert found[0].startswith("Primary endpoint: mean AUC over every artifact and severity, group - batch = "
                               f"{bracket(d, 0.03, True)}, p 0.001, Holm over the arms 0.010 (group above batch)")
    assert "clean gap -0.020 [-0.050, +0.010] (interval includes 0)" in found[0]
    d_layer = pooled("layer", "eval", "all", SEVERITIES) - pooled("batch", "eval", "all", SEVERITIES)
    assert found[1].startswith(f"Primary endpoint: mean AUC over every artifact and severity, layer - batch = "
                               f"{bracket(d_layer, 0.03, True)}")
    primary = row_of(tables(section(md, "Primary endpoint"))[0], "group - batch")
    assert primary["mean AUC difference"] == bracket(d, 0.03, True) and primary["p (Holm)"] == "0.010"
    mce = 0.1 * (SLOPE["group"] - SLOPE["batch"]) / SLOPE["batch"]
    assert primary["mCE difference"] == bracket(mce, 0.05, True)

    # cell-wise counts only from the adjusted columns, both adjustments named
    cells = {a: [arm_auc("group", "eval", a, s) - arm_auc("batch", "eval", a, s) for s in SEVERITIES] for a in WEIGHT}
    holm = sum(abs(x) >= 0.05 for v in cells.values() for x in v)  # p 0.001 * 10 cells = 0.01 < 0.05
    counts = next(f for f in found if f.startswith("Cell-wise tests"))
    assert f"group vs batch: {holm} of 10 after Holm ({holm} in favour of group, 0 of batch), {holm} after " \
           f"Benjamini-Hochberg" in counts and "smallest attainable p 0.0010" in counts
    matrix = tables(section(md, "Paired comparisons"))[0]
    assert row_of(matrix, "noise")["5"] == f"{bracket(cells['noise'][4], 0.03, True)} Holm p 0.010, BH q 0.002"

    # clean table per arm (two-level intervals) and per run (test-set only)
    clean = tables(section(md, "Clean performance"))
    assert row_of(clean[0], "group")["mean AUC"] == bracket(CLEAN["group"], HALF)
    assert row_of(clean[0], "batch + AdaBN")["mean AUC"] == bracket(CLEAN["batch"] - CLEAN_COST["adapt"], HALF)
    assert row_of(clean[0], "batch")["ECE"] == bracket(0.05 + (0.9 - CLEAN["batch"]) / 2, HALF)
    assert row_of(clean[1], "layer-seed1")["mean AUC"] == bracket(CLEAN["layer"] - 0.01, 0.03)

    # robustness: pooled AUC, retained room above chance, the ladder's physical parameters
    robust = tables(section(md, "Robustness to artifacts"))
    assert row_of(robust[0], "motion")["group"] == bracket(pooled("group", "eval", "motion", SEVERITIES), HALF)
    assert row_of(robust[1], "motion")["batch"] == bracket(retained("batch", "eval", "motion", SEVERITIES), 0.05)
    assert row_of(robust[2], "noise", "layer")["3"] == bracket(arm_auc("layer", "eval", "noise", 3), HALF)
    from mrrobust.artifacts import SUITES  # the ladder table shows the registry's physical parameters

    noise, motion = SUITES["mrrobust"]["noise"].ladder, SUITES["mrrobust"]["motion"].ladder
    assert row_of(robust[3], "noise")["1"] == f"{noise[0]:g}"
    assert row_of(robust[3], "motion")["5"] == "/".join(f"{v:g}" for v in motion[4])

    # threshold metrics and ECE under every artifact, not only clean
    operating = tables(section(md, "Operating point under artifacts"))
    assert "fallback rule (FPR > 0.25, no threshold reached sensitivity 0.9): batch-seed0 acl (eval, clean 0)." in \
        section(md, "Operating point under artifacts")
    spec = arm_auc("batch", "eval", "motion", 5) - 0.2
    assert row_of(operating[1], "motion", "batch")["5"] == bracket(spec, HALF)
    assert row_of(operating[2], "motion", "batch")["5"] == bracket((0.9 + spec) / 2, HALF)
    ece = tables(section(md, "Calibration"))[0]
    assert row_of(ece, "noise", "group")["4"] == bracket(0.05 + (0.9 - arm_auc("group", "eval", "noise", 4)) / 2, HALF)
    assert "figures/reliability.png" in section(md, "Calibration")

    # corruption errors by hand (error = 1 - mean AUC, relative to batch)
    ce = tables(section(md, "Corruption errors"))
    for arm in ("group", "layer"):
        e = {a: corruption_errors(arm, "eval", a, SEVERITIES) for a in WEIGHT}
        row = row_of(ce[0], arm)
        assert row["noise"] == bracket(e["noise"]["ce"], 0.04)
        assert row["mCE"] == bracket(np.mean([e[a]["ce"] for a in WEIGHT]), 0.04)
        assert row_of(ce[1], arm)["motion"] == (f"{bracket(e['motion']['relative_ce'], 0.04)} / "
                                                f"{bracket(e['motion']['degradation'], 0.04)}")

    # adaptation: gain split into clean and artifact-specific; the fraction of BN's loss recovered
    adapt = tables(section(md, "Test-time adaptation"))
    clean_gain = -CLEAN_COST["adapt"]
    total = pooled("batch", "adapt", "noise", SEVERITIES) - pooled("batch", "eval", "noise", SEVERITIES)
    row = row_of(adapt[0], "noise", "batch + AdaBN")
    assert row["clean gain"] == bracket(clean_gain, 0.03, True)
    assert row["artifact-specific gain"] == bracket(total - clean_gain, 0.03, True)
    loss = sum(CLEAN["batch"] - arm_auc("batch", "eval", "motion", s) for s in SEVERITIES)
    won = sum(arm_auc("batch", "adapt", "motion", s) - arm_auc("batch", "eval", "motion", s) for s in SEVERITIES)
    assert row_of(adapt[1], "motion", "batch + AdaBN")["fraction recovered"] == bracket(won / loss, 0.1)
    assert won / loss == pytest.approx(RECOVER["adapt"] - CLEAN_COST["adapt"] * 5 / loss)
    loss = sum(CLEAN["batch"] - arm_auc("batch", "eval", a, s) for a in WEIGHT for s in SEVERITIES)
    won = sum(arm_auc("batch", "adapt", a, s) - arm_auc("batch", "eval", a, s) for a in WEIGHT for s in SEVERITIES)
    assert row_of(adapt[1], "**all artifacts**", "batch + AdaBN")["fraction recovered"] == bracket(won / loss, 0.1)
    assert f"it recovers {bracket(won / loss, 0.1)} of batch's artifact loss" in written["findings"][2]

    # the report ends with the three findings report() returns
    assert md.rstrip().endswith(written["findings"][-1])
    assert bullets(section(md, "In three lines")) == written["findings"] and len(written["findings"]) == 3
    assert written["findings"][0].startswith("group - batch, mean AUC over all artifacts")


def test_html_is_self_contained(tmp_path):
    results = write_results(tmp_path / "results", arms=("batch", "group"), artifacts=("noise",), severities=(2, 5))
    written = report(results, tmp_path / "report", formats=("svg",))
    text = written["html"].read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    images = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(images) == len(written["figures"]) and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(?!data:)', text)  # nothing outside the file
    import base64

    import matplotlib.image

    png = base64.b64decode(images[0].split(",", 1)[1])
    (tmp_path / "x.png").write_bytes(png)
    assert matplotlib.image.imread(tmp_path / "x.png").ndim == 3
    for finding in written["findings"]:  # the same findings, escaped
        assert finding.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in text
    assert "<h2>Primary endpoint</h2>" in text and "<table>" in text


def test_not_learned_by_chance_interval(tmp_path):
    """A run whose clean mean AUC interval includes 0.5: its arm is flagged, no robustness claim."""
    results = write_results(tmp_path / "results", clean={"batch": 0.56}, run_clean_half={"batch-seed1": 0.08})
    md = report(results, tmp_path / "report")["report"].read_text()
    rails = tables(section(md, "Guard rails: did each model learn?"))[0]
    assert "includes chance (0.5)" in row_of(rails, "batch-seed1")["verdict"]
    assert row_of(rails, "batch-seed0")["verdict"] == "learned"
    found = bullets(section(md, "Key findings"))
    assert found[0].startswith("Primary endpoint") and "batch did not learn, so no robustness claim" in found[0]
    assert not any(f.startswith("Cell-wise") for f in found)  # every comparison is with the arm that did not learn
    assert "batch" not in next(f for f in found if f.startswith("Room above chance"))
    assert row_of(tables(section(md, "Primary endpoint"))[0], "group - batch")["note"] == "no claim: not learned"
    assert "Not learned: batch" in section(md, "In three lines")
    assert not any("AdaBN" in f for f in found)  # no adaptation claim from the arm that did not learn
    assert "**batch** not learned" in section(md, "Guard rails: did each model learn?")


def test_not_learned_by_early_peak(tmp_path):
    curve = {"epochs": 8, "best_epoch": 1, "best_val_auc": 0.7, "first_val_auc": 0.66, "peaked_early": True}
    results = write_results(tmp_path / "results", curves={"group-seed0": curve})
    md = report(results, tmp_path / "report")["report"].read_text()
    row = row_of(tables(section(md, "Guard rails: did each model learn?"))[0], "group-seed0")
    assert row["best epoch"] == "2 of 8" and row["verdict"] == "validation AUC peaked at epoch 2 of 8"
    assert "group did not learn" in bullets(section(md, "Key findings"))[0]
    assert row_of(tables(section(md, "What was evaluated"))[1], "group")["learned"] == "**not learned**"


def test_early_peak_rule():
    from mrrobust.report.statistics import early_peak, training_curve

    assert early_peak(1, 8) and early_peak(0, 4) and not early_peak(2, 8) and not early_peak(0, 3)
    assert training_curve({"curve": {"epochs": 12, "best_epoch": 2}})["peaked_early"]
    assert training_curve({}) == {}


def test_confounded_by_the_clean_gap(tmp_path):
    """group is clearly worse on clean slices: its robustness gap is called confounded."""
    results = write_results(tmp_path / "results", arms=("batch", "group"), clean={"group": 0.78}, clean_gap_half=0.02)
    md = report(results, tmp_path / "report")["report"].read_text()
    first = bullets(section(md, "Key findings"))[0]
    gap = 0.78 - CLEAN["batch"]
    assert f"confounded: the clean gap is {bracket(gap, 0.02, True)}" in first
    assert row_of(tables(section(md, "Primary endpoint"))[0], "group - batch")["note"] == "confounded by the clean gap"
    assert "confounded by the clean gap" in section(md, "In three lines")


def test_orderings_come_from_the_paired_test(tmp_path):
    """Clean arm intervals overlap (0.830 +- 0.02 vs 0.850 +- 0.02): an ordering is still stated when
    the paired test rejects, and none is stated when it does not, whatever the intervals."""
    results = write_results(tmp_path / "results", arms=("batch", "group"))
    path = results / "arm_comparisons.csv"
    edit_csv(path, dict(arm_b="group", artifact="clean", metric="auc"), p_value=0.004, p_holm=0.004)
    md = report(results, tmp_path / "a")["report"].read_text()
    assert "group - batch -0.020 [-0.050, +0.010] (group below batch)" in section(md, "Key findings")
    edit_csv(path, dict(arm_b="group", artifact="clean", metric="auc"), p_value=0.3, p_holm=0.3,
             difference=-0.2, ci_low=-0.21, ci_high=-0.19)
    md = report(results, tmp_path / "b")["report"].read_text()
    assert "(ordering of group and batch not established, Holm p 0.300)" in section(md, "Key findings")


def test_relative_ce_undefined_where_the_reference_does_not_drop(tmp_path):
    results = write_results(tmp_path / "results", flat=[("batch", "noise")])
    md = report(results, tmp_path / "report")["report"].read_text()
    ce = section(md, "Corruption errors")
    assert "Relative CE is **undefined** under noise" in ce
    relative = tables(ce)[1]
    assert row_of(relative, "group")["noise"].startswith("undefined / ")
    assert row_of(tables(ce)[0], "group")["relative mCE"] == "n/a"  # averages every artifact
    e = corruption_errors("group", "eval", "motion", SEVERITIES, flat=(("batch", "noise"),))
    assert row_of(relative, "group")["motion"].startswith(bracket(e["relative_ce"], 0.04))


def test_relative_ce_without_arms_uses_the_point_rule(tmp_path):
    """An older RESULTS folder (no arms.csv): one arm per run; relative CE undefined where the
    reference's drop is not positive; training variance unmeasured."""
    results = write_results(tmp_path / "results", seeds=(0,), flat=[("batch", "noise")], comparisons=False)
    (results / "arms.csv").unlink()
    md = report(results, tmp_path / "report")["report"].read_text()
    assert "training variance unmeasured" in md and "has no arms.csv" in section(md, "What was evaluated")
    assert "Relative CE is **undefined** under noise" in section(md, "Corruption errors")
    row = row_of(tables(section(md, "Corruption errors"))[0], "group-seed0")
    errors = (1 - np.array([arm_auc("group", "eval", "motion", s) + 0.01 for s in SEVERITIES])).sum()
    reference = (1 - np.array([arm_auc("batch", "eval", "motion", s) + 0.01 for s in SEVERITIES])).sum()
    assert row["motion"] == f3(errors / reference)  # point value, no interval
    retained_row = row_of(tables(section(md, "Robustness to artifacts"))[1], "motion")
    clean = CLEAN["group"] + 0.01
    expected = np.mean([(arm_auc("group", "eval", "motion", s) + 0.01 - 0.5) / (clean - 0.5) for s in SEVERITIES])
    assert retained_row["group-seed0"] == f3(expected)


def test_few_positive_volumes_are_flagged(tmp_path):
    results = write_results(tmp_path / "results", positive={"acl": 6})
    md = report(results, tmp_path / "report")["report"].read_text()
    sizes = tables(section(md, "What was evaluated"))[0]
    assert row_of(sizes, "test (evaluated)")["acl +vol"] == "6 **(< 10)**"
    assert row_of(sizes, "train")["acl +vol"] == "40"
    assert "Fewer than 10 positive volumes in the evaluated split (test) for acl (6)" in section(md, "Key findings")
    assert "acl (< 10 +vol)" in tables(section(md, "Clean performance"))[0][0]


def test_positive_volumes_counted_from_slices_without_sizes(tmp_path):
    import json

    results = write_results(tmp_path / "results", positive={"mtear": 4})
    settings = json.loads((results / "evaluation.json").read_text())
    del settings["sizes"]
    (results / "evaluation.json").write_text(json.dumps(settings))
    md = report(results, tmp_path / "report")["report"].read_text()
    assert row_of(tables(section(md, "What was evaluated"))[0], "test (evaluated)")["mtear +vol"] == "4 **(< 10)**"


@pytest.mark.parametrize("case", ["one seed", "no batch arm", "one arm", "no adaptation", "no reference arm"])
def test_subsets(tmp_path, case):
    options = {"one seed": dict(seeds=(0,)), "no batch arm": dict(arms=("group", "layer"), reference="group"),
               "no reference arm": dict(arms=("group", "layer"), reference=None),
               "one arm": dict(arms=("layer",), reference="layer"), "no adaptation": dict(modes=("eval",))}[case]
    results = write_results(tmp_path / "results", artifacts=("noise",), severities=(1, 3), **options)
    written = report(results, tmp_path / "report")
    md = written["report"].read_text()
    assert len(written["findings"]) == 3 and "n/a [" not in md
    found = bullets(section(md, "Key findings"))
    if case == "one seed":
        assert "training variance unmeasured" in section(md, "What was evaluated")
        assert "One seed per arm: training variance unmeasured" in " ".join(found)
    if case == "no batch arm":
        assert found[0].startswith("Primary endpoint: mean AUC over every artifact and severity, layer - group")
        assert "No BN statistics" in md and "No adaptation modes" in md
    if case == "one arm":
        assert found[0].startswith("One arm only (layer)")
        assert "One arm only" in section(md, "Primary endpoint")
        assert written["findings"][0].startswith("layer: mean AUC over all artifacts "
                                                 + bracket(pooled("layer", "eval", "all", (1, 3), ("noise",)), HALF))
    if case == "no reference arm":  # evaluate compared nothing: said so; CE from the point values against group
        assert found[0] == ("Primary endpoint layer - group: not in arm_comparisons.csv (evaluate chose no reference "
                            "arm; re-run it with --reference-arm).")
        ce = row_of(tables(section(md, "Corruption errors"))[0], "layer")["noise"]
        assert ce == f3(sum(1 - arm_auc("layer", "eval", "noise", s) for s in (1, 3))
                        / sum(1 - arm_auc("group", "eval", "noise", s) for s in (1, 3)))
    if case == "no adaptation":
        assert "No adaptation modes" in md
        assert "adaptation_gain.png" not in [p.name for p in written["figures"]]


def test_reference_other_than_evaluates(tmp_path):
    results = write_results(tmp_path / "results", arms=("batch", "group"), artifacts=("noise",), severities=(2,))
    md = report(results, tmp_path / "report", reference_norm="group")["report"].read_text()
    assert "evaluate compared every arm with batch" in md
    # comparisons are found whichever way round arm_comparisons.csv holds them
    d = arm_auc("batch", "eval", "noise", 2) - arm_auc("group", "eval", "noise", 2)
    assert row_of(tables(section(md, "Paired comparisons"))[0], "noise")["2"].startswith(bracket(d, 0.03, True))
    errors = (1 - arm_auc("batch", "eval", "noise", 2)) / (1 - arm_auc("group", "eval", "noise", 2))
    assert row_of(tables(section(md, "Corruption errors"))[0], "batch")["noise"] == f3(errors)


def test_stale_figures_are_removed(tmp_path):
    out = tmp_path / "report"
    report(write_results(tmp_path / "full", artifacts=("noise",), severities=(1, 2)), out)
    assert (out / "figures" / "bn_shift.png").is_file()
    (out / "figures" / "bn_adapt_gain.png").write_bytes(b"old")
    small = write_results(tmp_path / "small", arms=("group",), seeds=(0,), artifacts=("noise",), severities=(2,),
                          reference="group", predictions=False)
    written = report(small, out)
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(p.name for p in written["figures"]) == [
        "auc_vs_severity.png", "corruption_error.png"]


@pytest.mark.parametrize("missing", ["results.csv", "evaluation.json"])
def test_missing_file_is_one_line_error(tmp_path, missing):
    results = write_results(tmp_path / "results", arms=("batch",), artifacts=("noise",), severities=(1,))
    (results / missing).unlink()
    with pytest.raises(MrRobustError) as err:
        report(results, tmp_path / "report")
    message = str(err.value)
    assert "\n" not in message and str(results) in message and missing in message and "mrrobust evaluate" in message
    assert not (tmp_path / "report" / "report.md").exists()


def test_bad_inputs_are_one_line_errors(tmp_path):
    results = write_results(tmp_path / "results", arms=("batch",), artifacts=("noise",), severities=(1,))
    with pytest.raises(MrRobustError, match="figure format"):
        report(results, tmp_path / "report", formats=("gif",))
    (results / "evaluation.json").write_text("{not json")
    with pytest.raises(MrRobustError, match="not valid JSON"):
        report(results, tmp_path / "report")
    (results / "evaluation.json").write_text("{}")
    (results / "arms.csv").write_text("arm,bn_mode\nx,eval\n")
    with pytest.raises(MrRobustError, match="lacks the column"):
        report(results, tmp_path / "report")
    (results / "arms.csv").unlink()
    header = (results / "results.csv").read_text().splitlines()[0]
    text = (results / "results.csv").read_text()
    (results / "results.csv").write_text(header + "\n")
    with pytest.raises(MrRobustError, match="results.csv has no rows"):
        report(results, tmp_path / "report")
    (results / "results.csv").write_text(text)
    edit_csv(results / "results.csv", dict(artifact="clean", label="mean", metric="auc"), value="high")
    with pytest.raises(MrRobustError, match="is not a number"):
        report(results, tmp_path / "report")
    assert not (tmp_path / "report" / "report.md").exists()


def test_command_line(tmp_path):
    """`mrrobust report` writes both reports and prints the three findings; a folder that is not
    RESULTS is one line and exit 2."""
    from commands import call_cli

    code, _, err = call_cli("report", tmp_path / "nowhere", "--out", tmp_path / "report")
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no evaluation.json" in lines[0] and "mrrobust evaluate" in lines[0]
    results = write_results(tmp_path / "results", arms=("batch", "group"), artifacts=("noise",), severities=(5,),
                            predictions=False)
    code, printed, err = call_cli("report", results, "--out", tmp_path / "report", "--formats", "svg")
    assert code == 0, err
    assert (tmp_path / "report" / "report.html").is_file() and (tmp_path / "report" / "figures" / "bn_shift.svg").is_file()
    printed = [line[2:] for line in printed.splitlines() if line.startswith("- ")]
    md = (tmp_path / "report" / "report.md").read_text()
    assert printed == bullets(section(md, "In three lines")) and len(printed) == 3


def test_training_settings_that_differ_between_arms(tmp_path):
    import json

    results = write_results(tmp_path / "results", arms=("batch", "group"), seeds=(0,), artifacts=("noise",),
                            severities=(2,), predictions=False)
    settings = json.loads((results / "evaluation.json").read_text())
    for run in settings["runs"]:
        if run["norm"] == "group":
            run["training"]["lr"] = 0.01
    (results / "evaluation.json").write_text(json.dumps(settings))
    head = section(report(results, tmp_path / "report")["report"].read_text(), "What was evaluated")
    arms = tables(head)[1]
    assert row_of(arms, "group")["training settings"] == "lr 0.01"
    assert row_of(arms, "batch")["training settings"] == "lr 0.001"
    assert "Training settings of every arm: max_epochs 8." in head


def test_damaged_prediction_stops_before_anything_is_written(tmp_path):
    results = write_results(tmp_path / "results", arms=("batch", "group"), seeds=(0,), artifacts=("noise",),
                            severities=(1,))
    np.save(results / "predictions" / "group-seed0" / "eval" / "clean-0.npy", np.zeros((5, 4), np.float32))
    with pytest.raises(MrRobustError) as err:
        report(results, tmp_path / "report")
    assert "clean-0.npy has shape (5, 4), not (24, 4)" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "report").exists()


def test_null_arms_claim_nothing(tmp_path):
    """Two arms with the same model (as two arms of one norm would be): no ordering, no cell significant."""
    results = write_results(tmp_path / "results", arms=("batch", "group"), clean={"group": CLEAN["batch"]},
                            slope={"group": SLOPE["batch"]}, modes=("eval",))
    md = report(results, tmp_path / "report")["report"].read_text()
    found = bullets(section(md, "Key findings"))
    assert "(ordering of group and batch not established, Holm p" in found[0]
    assert "group vs batch: 0 of 10 after Holm (0 in favour of group, 0 of batch), 0 after Benjamini-Hochberg" in md
    assert "group above batch" not in md and "group below batch" not in md


def test_adaptation_without_arms_from_point_values(tmp_path):
    """An older RESULTS folder: the gain split and the recovered share from the point values."""
    results = write_results(tmp_path / "results", arms=("batch",), seeds=(0,), comparisons=False, predictions=False)
    (results / "arms.csv").unlink()
    md = report(results, tmp_path / "report")["report"].read_text()
    adapt = tables(section(md, "Test-time adaptation"))
    clean_gain = -CLEAN_COST["adapt"]
    total = pooled("batch", "adapt", "all", SEVERITIES) - pooled("batch", "eval", "all", SEVERITIES)
    row = row_of(adapt[0], "**all artifacts**", "batch-seed0 + AdaBN")
    assert (row["total gain"], row["clean gain"], row["artifact-specific gain"]) == (
        f3(total, True), f3(clean_gain, True), f3(total - clean_gain, True))
    loss = CLEAN["batch"] - pooled("batch", "eval", "motion", SEVERITIES)
    gain = pooled("batch", "adapt", "motion", SEVERITIES) - pooled("batch", "eval", "motion", SEVERITIES)
    assert row_of(adapt[1], "motion", "batch-seed0 + AdaBN")["fraction recovered"] == f3(gain / loss)
