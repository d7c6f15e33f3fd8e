"""report on a RESULTS folder that `evaluate` wrote (tiny runs on the tiny STORE): the report reads
evaluate's real files, and its printed numbers are the ones in arms.csv / arm_comparisons.csv /
results.csv; its guard-rail verdicts follow the rule applied here to those files directly."""

from __future__ import annotations

import csv
import json
import re
import shutil

import pytest

from mrrobust.report import figures as figures_module
from mrrobust.report import report


def read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def f3(x: str, sign=False) -> str:
    v = round(float(x), 3) + 0.0
    return f"{v:+.3f}" if sign else f"{v:.3f}"


@pytest.fixture(scope="module")
def evaluated(tiny_store, tiny_runs, tmp_path_factory):
    from mrrobust.evaluation import evaluate

    root = tmp_path_factory.mktemp("report_pipeline")
    shutil.copytree(tiny_runs["batch"], root / "runs" / "batch-seed1")  # a second run of the batch arm
    evaluate([], tiny_store, root / "results", arms={"batch": [tiny_runs["batch"], root / "runs" / "batch-seed1"],
                                                     "layer": [tiny_runs["layer"]]},
             artifacts=["noise"], severities=[1, 5], split="val", bn_modes=["eval", "adapt"], batch_size=32,
             device="cpu", bootstrap=50, progress=False)
    return root / "results"


def test_report_reads_what_evaluate_wrote(evaluated, tmp_path, monkeypatch):
    monkeypatch.setattr(figures_module, "DPI", 30)
    written = report(evaluated, tmp_path / "report")
    md = written["report"].read_text()
    assert {p.name for p in written["figures"]} >= {"auc_vs_severity.png", "adaptation_gain.png", "reliability.png"}
    assert written["html"].is_file() and len(written["findings"]) == 3

    comparisons = read_csv(evaluated / "arm_comparisons.csv")
    primary = [r for r in comparisons if (r["arm_a"], r["arm_b"], r["bn_mode_a"], r["bn_mode_b"], r["artifact"],
                                          r["severity"], r["label"], r["metric"])
               == ("batch", "layer", "eval", "eval", "all", "all", "mean", "auc")]
    assert len(primary) == 1
    row = primary[0]
    first = re.search(r"^- (.*)$", md.split("## Key findings", 1)[1], re.M).group(1)
    assert first.startswith("Primary endpoint: mean AUC over every artifact and severity, layer - batch = "
                            f"{f3(row['difference'], True)} [{f3(row['ci_low'], True)}, {f3(row['ci_high'], True)}]")

    arms = read_csv(evaluated / "arms.csv")
    clean = {r["arm"]: r for r in arms if (r["bn_mode"], r["artifact"], r["label"], r["metric"])
             == ("eval", "clean", "mean", "auc")}
    for arm, r in clean.items():
        assert f"| {arm} | " in md and f"{f3(r['value'])} [{f3(r['ci_low'])}, {f3(r['ci_high'])}]" in md

    # not learned: a run's clean mean AUC interval includes 0.5, or its curve peaked early
    settings = json.loads((evaluated / "evaluation.json").read_text())
    results = read_csv(evaluated / "results.csv")
    flagged = set()
    for run in settings["runs"]:
        r = next(x for x in results if (x["run"], x["bn_mode"], x["artifact"], x["label"], x["metric"])
                 == (run["name"], "eval", "clean", "mean", "auc"))
        if (r["ci_low"] and float(r["ci_low"]) <= 0.5) or run["curve"]["peaked_early"]:
            flagged.add(next(a["name"] for a in settings["arms"] if run["name"] in a["runs"]))
    rails = md.split("## Guard rails: did each model learn?", 1)[1].split("\n## ", 1)[0]
    for arm in ("batch", "layer"):
        assert (f"**{arm}** not learned" in rails) == (arm in flagged)
    if flagged:
        assert "did not learn, so no robustness claim" in first
