"""report: a RESULTS folder built by hand (evaluate's file formats, constructed numbers) ->
report.md and figures; every number checked here is recomputed from the fixture's own model."""

from __future__ import annotations

import csv
import json
import math
import re
from itertools import product
from pathlib import Path

import numpy as np
import pytest

from mrrobust import report as report_module
from mrrobust.errors import MrRobustError
from mrrobust.report import report

# the fixture's model: mean AUC = clean + seed offset - slope * artifact weight * severity
CLEAN = {"batch": 0.85, "group": 0.83, "layer": 0.82}
SLOPE = {"batch": 0.05, "group": 0.012, "layer": 0.02}
WEIGHT = {"noise": 1.0, "motion": 1.5}
SEED_OFFSET = {0: 0.01, 1: -0.01}
LABEL_OFFSET = {"abnormal": 0.02, "mtear": -0.02, "acl": None, "cartilage": 0.0}  # acl: one class only -> NaN
ALL_RUNS = [(norm, seed) for seed in (0, 1) for norm in ("batch", "group", "layer")]
FORMAT_COLUMNS = {
    "results.csv": ("run", "norm", "seed", "bn_mode", "artifact", "severity", "label", "metric", "value",
                    "ci_low", "ci_high"),
    "comparisons.csv": ("run_a", "run_b", "bn_mode_a", "bn_mode_b", "artifact", "severity", "label", "metric",
                        "difference", "ci_low", "ci_high", "p_value"),
    "bn_shift.csv": ("run", "artifact", "severity", "layer", "depth", "channels", "mean_shift", "var_log_ratio"),
}


@pytest.fixture(autouse=True)
def low_dpi(monkeypatch):
    monkeypatch.setattr(report_module, "DPI", 40)


def mean_auc(norm, seed, mode, artifact, severity) -> float:
    if artifact == "clean":
        return CLEAN[norm] + SEED_OFFSET[seed] - (0.005 if mode == "adapt" else 0.0)
    factor = 0.5 if mode == "adapt" else 1.0  # AdaBN recovers half of batch norm's drop
    return CLEAN[norm] + SEED_OFFSET[seed] - factor * SLOPE[norm] * WEIGHT[artifact] * severity


def p_value(difference: float) -> float:
    return 0.001 if abs(difference) >= 0.05 else 0.4


def cell_text(x) -> str:
    """As evaluate writes a CSV cell: floats in full precision, NaN as an empty cell."""
    if isinstance(x, float):
        return "" if math.isnan(x) else repr(x)
    return str(x)


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FORMAT_COLUMNS[path.name])
        writer.writerows([[cell_text(row[c]) for c in FORMAT_COLUMNS[path.name]] for row in rows])


def write_results(folder: Path, runs=ALL_RUNS, artifacts=("noise", "motion"), severities=(1, 2, 3, 4, 5),
                  comparisons=True, bn_shift=True) -> Path:
    """A RESULTS folder in evaluate's formats for `runs` [(norm, seed)]; batch-norm runs get
    adapt rows, eval-vs-adapt comparisons and BN shift rows."""
    folder.mkdir(parents=True)
    grid = [("clean", 0), *product(artifacts, severities)]
    names = {(norm, seed): f"{norm}-seed{seed}" for norm, seed in runs}
    settings = {"format": "mrrobust-results", "version": 1, "store": "/data/store", "split": "test",
                "suite": "mrrobust", "artifacts": list(artifacts), "severities": list(severities),
                "bn_modes": ["eval", "adapt"], "seed": 0, "bootstrap": 200, "level": 0.95,
                "runs": [{"name": names[r], "norm": r[0], "seed": r[1]} for r in runs]}
    (folder / "evaluation.json").write_text(json.dumps(settings))
    results = []
    for norm, seed in runs:
        for mode in ("eval", "adapt") if norm == "batch" else ("eval",):
            for artifact, severity in grid:
                m = mean_auc(norm, seed, mode, artifact, severity)
                key = dict(run=names[norm, seed], norm=norm, seed=seed, bn_mode=mode, artifact=artifact,
                           severity=severity)
                for label, offset in [*LABEL_OFFSET.items(), ("mean", 0.0)]:
                    auc = math.nan if offset is None else m + offset
                    results.append(dict(key, label=label, metric="auc", value=auc, ci_low=auc - 0.03, ci_high=auc + 0.03))
                    spec = auc - 0.2
                    for metric, value in (("sensitivity", 0.9), ("specificity", spec), ("balanced_accuracy", (0.9 + spec) / 2)):
                        results.append(dict(key, label=label, metric=metric, value=value, ci_low=value - 0.05,
                                            ci_high=value + 0.05))
    write_csv(folder / "results.csv", results)
    if comparisons:
        pairs = [((("group", s), "eval"), (("batch", s), "eval")) for s in (0, 1)]  # reversed: report flips it
        pairs += [(((a, s), "eval"), ((b, s), "eval")) for s in (0, 1) for a, b in (("batch", "layer"), ("group", "layer"))]
        pairs += [(((n, s), "eval"), ((n, s), "adapt")) for n, s in runs if n == "batch"]
        rows = []
        for (ra, ma), (rb, mb) in pairs:
            if ra not in names or rb not in names:
                continue
            for artifact, severity in grid:
                d = mean_auc(*rb, mb, artifact, severity) - mean_auc(*ra, ma, artifact, severity)
                for label in ("abnormal", "mean"):
                    rows.append(dict(run_a=names[ra], run_b=names[rb], bn_mode_a=ma, bn_mode_b=mb, artifact=artifact,
                                     severity=severity, label=label, metric="auc", difference=d if label == "mean" else 9.0,
                                     ci_low=d - 0.03, ci_high=d + 0.03, p_value=p_value(d)))
        write_csv(folder / "comparisons.csv", rows)
    if bn_shift:
        rows = [dict(run=names[n, s], artifact=artifact, severity=severity, layer=f"layer{depth}", depth=depth,
                     channels=16, mean_shift=0.05 + 0.02 * severity * WEIGHT.get(artifact, 0) * (depth + 1) + 0.01 * s,
                     var_log_ratio=0.1 * severity)
                for n, s in runs if n == "batch" for artifact, severity in grid for depth in range(5)]
        write_csv(folder / "bn_shift.csv", rows)
    return folder


def section(markdown: str, title: str) -> str:
    """The text of the `## title` section (up to the next `## `)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in `text`: rows (the header first, the --- line left out) of cells."""
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


def row_of(table, first: str) -> dict:
    header = table[0]
    rows = [r for r in table[1:] if r[0] == first]
    assert len(rows) == 1, (first, table)
    return dict(zip(header, rows[0]))


def seed_mean(norm, mode, artifact, severity) -> float:
    return float(np.mean([mean_auc(norm, s, mode, artifact, severity) for s in (0, 1)]))


def check_png(path: Path) -> None:
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 20 and image.shape[1] > 20


def test_full_report(tmp_path):
    results = write_results(tmp_path / "results")
    written = report(results, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    names = sorted(p.name for p in written["figures"])
    assert names == ["auc_vs_severity.png", "bn_adapt_gain.png", "bn_shift.png", "corruption_error.png"]
    for path in written["figures"]:
        check_png(path)
        assert f"figures/{path.name}" in md  # embedded
    assert written["report"] == tmp_path / "report" / "report.md"
    assert not list((tmp_path / "report").rglob("*.tmp"))

    # header: what was evaluated
    head = section(md, "What was evaluated")
    for text in ("batch-seed0 (batch, seed 0)", "layer-seed1", "noise, motion", "1, 2, 3, 4, 5", "200 volume-level",
                 "95% percentile CI", "`test`"):
        assert text in head, text

    # clean table: per run with CI, per norm = mean over the two seeds with the seed range; acl undefined
    clean = tables(section(md, "Clean performance"))
    run_row = row_of(clean[0], "group-seed1")
    auc = CLEAN["group"] - 0.01
    assert run_row["mean AUC"] == f"{auc:.3f} [{auc - 0.03:.3f}, {auc + 0.03:.3f}]"
    assert run_row["acl"] == "n/a"
    assert run_row["sensitivity"].startswith("0.900 [0.850, 0.950]")
    for norm in CLEAN:
        norm_row = row_of(clean[1], norm)
        assert norm_row["seeds"] == "2"
        assert norm_row["mean AUC"] == f"{CLEAN[norm]:.3f} [{CLEAN[norm] - 0.01:.3f}, {CLEAN[norm] + 0.01:.3f}]"
        spec = np.mean([mean_auc(norm, s, "eval", "clean", 0) - 0.2 + 0.0 for s in (0, 1)])
        assert norm_row["balanced acc."].startswith(f"{(0.9 + spec) / 2:.3f}")

    # robustness: mean AUC over severities 1..5 per norm x artifact, its change from clean, the full ladder
    robust = tables(section(md, "Robustness to artifacts"))
    for norm, artifact in product(CLEAN, WEIGHT):
        ladder = [seed_mean(norm, "eval", artifact, s) for s in range(1, 6)]
        mean = np.mean(ladder)
        assert row_of(robust[0], artifact)[norm] == f"{mean:.3f} ({mean - CLEAN[norm]:+.3f})"
        full = [r for r in robust[1] if r[:2] == [artifact, norm]][0]
        assert full[2:8] == [f"{v:.3f}" for v in [CLEAN[norm], *ladder]]
    adapt = seed_mean("batch", "adapt", "motion", 5)
    assert [r for r in robust[1] if r[:2] == ["motion", "batch + BN-adapt"]][0][7] == f"{adapt:.3f}"

    # corruption errors by hand: error = 1 - seed-mean AUC, relative to batch
    ce = tables(section(md, "Corruption errors"))
    def errors(norm, mode, artifact):
        return np.array([1 - seed_mean(norm, mode, artifact, s) for s in range(1, 6)])
    mce, relative = {}, {}
    for norm in CLEAN:
        ces = [errors(norm, "eval", a).sum() / errors("batch", "eval", a).sum() for a in WEIGHT]
        rels = [(errors(norm, "eval", a) - (1 - CLEAN[norm])).sum() / (errors("batch", "eval", a) - (1 - CLEAN["batch"])).sum()
                for a in WEIGHT]
        mce[norm], relative[norm] = np.mean(ces), np.mean(rels)
        row = row_of(ce[0], norm)
        assert row["noise"] == f"{ces[0]:.3f}" and row["motion"] == f"{ces[1]:.3f}"
        assert row["mCE"] == f"{mce[norm]:.3f}" and row["relative mCE"] == f"{relative[norm]:.3f}"
    assert row_of(ce[0], "batch")["mCE"] == "1.000"
    adapt_ce = np.mean([errors("batch", "adapt", a).sum() / errors("batch", "eval", a).sum() for a in WEIGHT])
    assert row_of(ce[0], "batch + BN-adapt")["mCE"] == f"{adapt_ce:.3f}"
    weights = (2 / 3) ** np.arange(1, 6)
    ladder = np.array([seed_mean("layer", "eval", "motion", s) for s in range(1, 6)])
    degradation = (weights * (CLEAN["layer"] - ladder)).sum() / weights.sum()
    assert row_of(ce[1], "layer")["motion"].endswith(f" / {degradation:.3f}")

    # paired comparisons: the (group, batch) rows are flipped to group - batch; * where p < 0.05
    paired = section(md, "Paired comparisons")
    heading = "### group-seed0 (group, eval) - batch-seed0 (batch, eval)"
    assert heading in paired
    matrix = tables(paired[paired.index(heading):])[0]
    d = mean_auc("group", 0, "eval", "noise", 5) - mean_auc("batch", 0, "eval", "noise", 5)
    assert row_of(matrix, "noise")["5"] == f"{d:+.3f} [{d - 0.03:+.3f}, {d + 0.03:+.3f}] p=0.001 *"
    d1 = mean_auc("group", 0, "eval", "noise", 1) - mean_auc("batch", 0, "eval", "noise", 1)
    assert row_of(matrix, "noise")["1"] == f"{d1:+.3f} [{d1 - 0.03:+.3f}, {d1 + 0.03:+.3f}] p=0.400"
    assert "9.000" not in md  # per-label comparison rows are not mixed into the mean-AUC tables

    # BN adaptation: one matrix per batch run; BN shift table averaged over layers and runs
    assert "### batch-seed1: adapt - eval" in section(md, "BN adaptation")
    shift = tables(section(md, "Batch-norm statistics shift"))[0]
    expected = np.mean([0.05 + 0.02 * 5 * 1.5 * (depth + 1) + 0.01 * s for depth in range(5) for s in (0, 1)])
    assert row_of(shift, "motion")["5"] == f"{expected:.3f}"

    # findings: lowest mCE, the largest drop, significance counts, all from the numbers
    findings = section(md, "Key findings")
    assert 4 <= findings.count("\n- ") + findings.startswith("- ") <= 7
    assert re.search(r"(\w+) has the lowest mCE", findings).group(1) == min(mce, key=mce.get) == "group"
    assert "largest drop from clean is batch under motion" in findings
    tests = [(mean_auc("group", s, "eval", a, v) - mean_auc("batch", s, "eval", a, v))
             for s in (0, 1) for a in WEIGHT for v in range(1, 6)]
    significant = sum(abs(t) >= 0.05 for t in tests)
    assert f"group vs batch: p < 0.05 in {significant} of {len(tests)}" in findings
    assert "BN-adapt changes batch's mean AUC by +" in findings
    assert "under motion at severity 5" in findings


def test_one_run_without_batch_norm_comparisons_or_shift(tmp_path):
    results = write_results(tmp_path / "results", runs=[("group", 0)], comparisons=False)
    written = report(results, tmp_path / "report", formats=("png", "svg"))
    md = written["report"].read_text()
    assert sorted(p.name for p in written["figures"]) == ["auc_vs_severity.png", "auc_vs_severity.svg",
                                                        "corruption_error.png", "corruption_error.svg"]
    assert "The reference norm batch is not among the runs; CE below is relative to group." in md
    assert row_of(tables(section(md, "Corruption errors"))[0], "group")["mCE"] == "1.000"
    assert "No paired comparisons" in md and "No BN statistics" in md
    assert "BN adaptation" not in md
    assert "One seed per norm" in md
    clean = tables(section(md, "Clean performance"))
    assert len(clean) == 1  # one seed per norm: no per-norm table repeating the per-run one
    assert row_of(clean[0], "group-seed0")["mean AUC"] == "0.840 [0.810, 0.870]"


def test_no_batch_norm_single_cell_and_stale_figures(tmp_path):
    out = tmp_path / "report"
    report(write_results(tmp_path / "full"), out)
    assert (out / "figures" / "bn_shift.png").is_file()
    results = write_results(tmp_path / "small", runs=[("group", 0), ("layer", 0)], artifacts=("noise",),
                            severities=(3,), bn_shift=False)
    (results / "bn_shift.csv").write_text(",".join(FORMAT_COLUMNS["bn_shift.csv"]) + "\n")  # header only
    written = report(results, out, reference_norm="layer")
    md = written["report"].read_text()
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["auc_vs_severity.png", "corruption_error.png"]
    for path in written["figures"]:
        check_png(path)
    ce = row_of(tables(section(md, "Corruption errors"))[0], "group")
    expected = (1 - mean_auc("group", 0, "eval", "noise", 3)) / (1 - mean_auc("layer", 0, "eval", "noise", 3))
    assert ce["noise"] == f"{expected:.3f}"
    assert "layer has the lowest mCE" in md or "group has the lowest mCE" in md
    assert "No BN statistics" in md and "bn_shift" not in md.split("## Batch-norm")[0].split("## Robustness")[1]
    # the file holds layer - group; with layer as the reference it is shown as group - layer
    d = mean_auc("group", 0, "eval", "noise", 3) - mean_auc("layer", 0, "eval", "noise", 3)
    heading = "### group-seed0 (group, eval) - layer-seed0 (layer, eval)"
    assert heading in md
    assert row_of(tables(md[md.index(heading):])[0], "noise")["3"].startswith(f"{d:+.3f} [")
    assert f"group vs layer: p < 0.05 in {int(abs(d) >= 0.05)} of 1" in md


def test_undefined_values_print_as_na(tmp_path):
    results = write_results(tmp_path / "results", runs=[("batch", 0), ("group", 0)], artifacts=("noise",),
                            severities=(1, 2), comparisons=False, bn_shift=False)
    text = (results / "results.csv").read_text().splitlines()
    # every group AUC undefined under noise: empty cells, as evaluate writes NaN
    text = [re.sub(r"(,auc),[^,]*,[^,]*,[^,]*$", r"\1,,,", line) if line.startswith("group-seed0") and ",noise," in line
            else line for line in text]
    (results / "results.csv").write_text("\n".join(text) + "\n")
    md = report(results, tmp_path / "report")["report"].read_text()
    row = [r for r in tables(section(md, "Robustness to artifacts"))[1] if r[:2] == ["noise", "group"]][0]
    assert row[3:] == ["n/a", "n/a", "n/a", "n/a"]
    assert row_of(tables(section(md, "Corruption errors"))[0], "group")["mCE"] == "n/a"


@pytest.mark.parametrize("missing", ["results.csv", "evaluation.json"])
def test_missing_file_is_one_line_error(tmp_path, missing):
    results = write_results(tmp_path / "results", runs=[("batch", 0)])
    (results / missing).unlink()
    with pytest.raises(MrRobustError) as err:
        report(results, tmp_path / "report")
    message = str(err.value)
    assert "\n" not in message and str(results) in message and missing in message and "mrrobust evaluate" in message
    assert not (tmp_path / "report" / "report.md").exists()


def test_bad_inputs_are_one_line_errors(tmp_path):
    results = write_results(tmp_path / "results", runs=[("batch", 0)])
    with pytest.raises(MrRobustError, match="figure format"):
        report(results, tmp_path / "report", formats=("gif",))
    (results / "results.csv").write_text("run,norm\nx,batch\n")
    with pytest.raises(MrRobustError, match="lacks the column"):
        report(results, tmp_path / "report")


def test_command_line(tmp_path):
    """`mrrobust report` writes the report; a folder that is not RESULTS is one line and exit 2."""
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "mrrobust.cli", "report", *map(str, args)], capture_output=True,
                              text=True, timeout=120)

    missing = run(tmp_path / "nowhere", "--out", tmp_path / "report")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "no evaluation.json" in lines[0] and "mrrobust evaluate" in lines[0]
    results = write_results(tmp_path / "results", runs=[("batch", 0)], artifacts=("noise",), severities=(5,))
    done = run(results, "--out", tmp_path / "report", "--formats", "svg")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "figures" / "bn_shift.svg").is_file()
