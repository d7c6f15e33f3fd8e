"""The report's sections as data (`Section` of paragraphs, `Bullets`, `Table`, figures), built
from a `Results`; `markdown` and `html` render the same structures.

Numbers print with three decimals, intervals in brackets ("0.812 [0.790, 0.833]"), undefined
values (NaN) as "n/a"; a bracket is left out where no interval exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mrrobust.data.annotations import LABELS
from mrrobust.report import statistics as st
from mrrobust.report.figures import MODE_NAMES, Figure, ladder, model_name
from mrrobust.report.loading import ALL, CLEAN, MEAN, Results

THRESHOLD_METRICS = ("sensitivity", "specificity", "balanced_accuracy")
METRIC_NAMES = {"sensitivity": "sensitivity", "specificity": "specificity", "balanced_accuracy": "balanced acc.",
                "ece": "ECE"}


@dataclass
class Table:
    header: list
    rows: list


@dataclass
class Bullets:
    items: list


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)


# ---- numbers as text ------------------------------------------------------------------


def num(x, digits: int = 3, sign: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    x = round(float(x), digits) + 0.0  # no "-0.000"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def ci(cell, sign: bool = False) -> str:
    """"0.812 [0.790, 0.833]" for (value, low, high); the bracket only when the interval is defined."""
    v, lo, hi = cell[:3]
    text = num(v, sign=sign)
    if np.isfinite(v) and np.isfinite(lo) and np.isfinite(hi):
        text += f" [{num(lo, sign=sign)}, {num(hi, sign=sign)}]"
    return text


def p_text(p) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def compared(row: dict | None) -> tuple:
    return (row["difference"], row["ci_low"], row["ci_high"]) if row else st.NAN3


def models(res: Results) -> list[tuple[str, str]]:
    """(arm, bn_mode) pairs: every arm in eval mode, then each adaptation mode."""
    return [(arm, mode) for mode in res.bn_modes for arm in res.arms if mode in res.modes_of(arm)]


# ---- header -------------------------------------------------------------------------------


def _pairs(record) -> str:
    """"k v, k v" of a record's plain entries; "not recorded" for none."""
    if not isinstance(record, dict):
        return "not recorded"
    return ", ".join(f"{k} {v}" for k, v in record.items() if not isinstance(v, (dict, list))) or "not recorded"


def _record(settings: dict, *keys) -> dict:
    """settings[k1][k2]... as a dict ({} when absent or not a dict)."""
    for key in keys:
        settings = settings.get(key) if isinstance(settings, dict) else None
    return settings if isinstance(settings, dict) else {}


def sizes_table(res: Results) -> Table | None:
    """Volumes, slices and positive volumes per label, per split (evaluation.json `sizes`, else
    the evaluated split from slices.csv); a label with < 10 positive test volumes is flagged."""
    positives = st.positive_volumes(res)
    if not positives:
        return None
    sizes, split = _record(res.settings, "sizes"), res.settings.get("split", "test")
    rows = []
    for name, counts in positives.items():
        volumes = sizes.get(name, {}).get("volumes", len({r["volume"] for r in res.slices}) if name == split else "?")
        slices = sizes.get(name, {}).get("slices", len(res.slices) if name == split else "?")
        rows.append([name + (" (evaluated)" if name == split else ""), str(volumes), str(slices),
                     *(f"{counts[label]}" + (" **(< 10)**" if name == split and counts[label] < st.MIN_POSITIVE_VOLUMES
                                             else "") for label in LABELS)])
    return Table(["split", "volumes", "slices", *(f"{label} +vol" for label in LABELS)], rows)


def _arm_record(res: Results, arm: str) -> dict:
    for record in res.settings.get("arms", []) if isinstance(res.settings.get("arms"), list) else []:
        if isinstance(record, dict) and record.get("name") == arm:
            return record
    return {}


QUIET_SETTINGS = ("seed", "norm", "labels", "in_channels", "arch", "monitor", "group_norm_impl", "accelerator",
                  "devices", "num_nodes", "workers", "compile", "precision", "limit_train_batches", "limit_val_batches")


def training_settings(res: Results) -> dict:
    """{arm: {setting: value}}: the arm's recorded configuration (model + training sections of its
    first run when evaluation.json has no arm record), without the seed, the norm (its own
    column) and the settings that do not change what is learned or are unset."""
    out = {}
    for arm, members in res.arms.items():
        config = _record(_arm_record(res, arm), "configuration")
        if not config and members:
            record = res.runs.get(members[0], {}).get("record", {})
            config = {**_record(record, "model"), **_record(record, "training")}
        out[arm] = {k: v for k, v in config.items() if k not in QUIET_SETTINGS and v is not None
                    and not isinstance(v, (dict, list))}
    return out


def header(res: Results, arms_not_learned: dict) -> Section:
    """What was evaluated: provenance, sizes, training settings per arm, seeds, software,
    machine, wall time, intervals."""
    s = res.settings
    provenance = _record(s, "provenance")
    kind = provenance.get("kind", "not recorded")
    blocks = [f"Data: **{kind}** (source `{provenance.get('source', '?')}`"
              + (f"; {provenance['rule']}" if provenance.get("rule") else "")
              + f"); store `{s.get('store', '?')}`, evaluated split `{s.get('split', '?')}`."]
    sizes = sizes_table(res)
    if sizes:
        blocks += [f"Sizes per split; +vol = positive **volumes** per label (a volume is positive when one of its "
                   f"slices is). A label with fewer than {st.MIN_POSITIVE_VOLUMES} positive volumes in the evaluated "
                   f"split is flagged: its intervals under-cover.", sizes]
    settings = training_settings(res)
    shared = {k: v for k, v in next(iter(settings.values()), {}).items()
              if all(other.get(k) == v for other in settings.values())}
    arm_rows = []
    for arm, members in res.arms.items():
        variance = _arm_record(res, arm).get("training_variance", "measured" if len(members) > 1 else "unmeasured")
        own = {k: v for k, v in settings.get(arm, {}).items() if k not in shared}
        arm_rows.append([arm, res.norm_of(arm), ", ".join(str(x) for x in res.seeds_of(arm)) or "?",
                         ", ".join(members), _pairs(own) if own else "as below", variance,
                         "**not learned**" if arm in arms_not_learned else "yes"])
    if res.from_runs:
        blocks.append("This RESULTS folder has no arms.csv (evaluated before arms existed): each run is shown as an arm "
                      "of one seed with its own test-set interval; re-run mrrobust evaluate for arm statistics.")
    blocks += ["Arms (runs that differ only in their training seed) and the training settings that differ between them.",
               Table(["arm", "norm", "seeds", "runs", "training settings", "training variance", "learned"], arm_rows),
               "Training settings of every arm: " + _pairs(shared) + "."]
    statistics, environment = _record(s, "statistics"), _record(s, "environment")
    machine = _record(environment, "machine")
    wall = environment.get("wall_time_s")
    b, level = st.replicates(res), float(statistics.get("level", s.get("level", 0.95)))
    mean_label = _record(statistics, "mean_label")
    dropped = {k: v for k, v in _record(mean_label, "resamples_dropped").items() if v}
    fallback = _record(s, "thresholds").get("fallback")
    details = [f"artifact suite `{s.get('suite', '?')}`: {', '.join(res.artifacts) or 'none'}; severities "
               f"{', '.join(map(str, res.severities)) or 'none'} (ladders in the robustness section)",
               f"BN modes: {', '.join(MODE_NAMES.get(m, m) for m in res.bn_modes) or 'eval'}"
               + (f" (prior N = {s['bn_prior']})" if "prior" in res.bn_modes and "bn_prior" in s else "")
               + f"; corruption seed {s.get('seed', '?')}"
               + (f"; predicted on {s['device']}, precision {s.get('precision', '?')}" if "device" in s else ""),
               f"operating points: {s.get('threshold_from', 'clean-val')} ("
               + ("re-chosen on the validation split corrupted like the cell" if s.get("threshold_from") == "corrupted-val"
                  else "each RUN chose them on the clean validation split") + "); "
               + (f"the FPR > 0.25 fallback rule was used in {len(fallback)} case(s)" if isinstance(fallback, list)
                else "use of the FPR > 0.25 fallback rule not recorded"),
               (f"intervals: B = {b} bootstrap replicates ({'seeds within each arm and ' if not res.from_runs else ''}"
                f"test volumes, the volumes shared by every run and cell), {100 * level:g}%: "
                f"{statistics.get('intervals', 'percentile intervals of the bootstrap replicates')}; smallest "
                f"attainable p {num(st.smallest_p(res), 4)}" if b else "intervals: none (evaluated without bootstrap)"),
               "mean label over " + (", ".join(mean_label.get("labels", [])) or "the labels") + "; resamples dropped: "
               + (", ".join(f"{k} {v} of {mean_label.get('of', b)}" for k, v in dropped.items()) or "none"),
               "software: " + _pairs(_record(environment, "software")),
               "machine: " + _pairs(machine),
               f"wall time: {num(wall, 0) + ' s' if isinstance(wall, (int, float)) else 'not recorded'}"
               + (f", finished {environment['finished']}" if environment.get("finished") else ""),
               f"RESULTS: `{res.folder}`"]
    blocks.append(Bullets(details))
    if all(len(m) <= 1 for m in res.arms.values()):
        blocks.append("One seed per arm: **training variance unmeasured**; the intervals describe test-set sampling only.")
    return Section("What was evaluated", blocks)


# ---- guard rails ---------------------------------------------------------------------------


def guard_rails(res: Results, flagged: dict) -> Section:
    rows = []
    for run, info in res.runs.items():
        curve = st.training_curve(info.get("record", {}))
        best = (f"{int(curve['best_epoch']) + 1} of {curve['epochs']}" if isinstance(curve.get("best_epoch"), int)
                else "not recorded")
        why = st.run_not_learned(res, run)
        rows.append([run, info["norm"], str(info["seed"]), ci(res.run_cell(run, "eval", CLEAN, 0)), best,
                     "; ".join(why) if why else "learned"])
    text = (f"A run is **not learned** when its clean mean AUC interval includes chance (0.5) or its validation AUC "
            f"peaked in the first {int(100 * st.EARLY_FRACTION)}% of its epochs (runs of 4 or more epochs; the first "
            f"epoch always counts); an arm with such a run is excluded "
            f"from every robustness claim below.")
    blocks = [text, Table(["run", "norm", "seed", "clean mean AUC", "best epoch", "verdict"], rows)]
    if flagged:
        blocks.append(Bullets([f"**{arm}** not learned: {'; '.join(why)}" for arm, why in flagged.items()]))
    return Section("Guard rails: did each model learn?", blocks)


# ---- primary endpoint ------------------------------------------------------------------------


def primary_rows(res: Results, reference: str) -> list[dict]:
    """Per arm other than the reference (eval mode): the primary endpoint (mean AUC over every
    artifact and severity), the clean gap and the mCE difference, as arm_comparisons rows."""
    out = []
    for arm in res.arms:
        if arm == reference:
            continue
        out.append({"arm": arm,
                    "primary": res.comparison(reference, arm, "eval", "eval", ALL, ALL),
                    "clean": res.comparison(reference, arm, "eval", "eval", CLEAN, 0),
                    "mce": res.comparison(reference, arm, "eval", "eval", ALL, ALL, metric=st.MCE)})
    return out


def primary_section(res: Results, reference: str, flagged: dict) -> Section:
    rows = []
    for r in primary_rows(res, reference):
        confounded = r["clean"] is not None and st.excludes(compared(r["clean"]), 0.0)
        verdict = ("no claim: not learned" if {r["arm"], reference} & set(flagged)
                   else "confounded by the clean gap" if confounded else "")
        rows.append([f"{r['arm']} - {reference}", ci(compared(r["primary"]), sign=True),
                     p_text(r["primary"]["p_value"]) if r["primary"] else "n/a",
                     p_text(r["primary"]["p_holm"]) if r["primary"] else "n/a",
                     ci(compared(r["clean"]), sign=True), p_text(r["clean"]["p_value"]) if r["clean"] else "n/a",
                     ci(compared(r["mce"]), sign=True), p_text(r["mce"]["p_value"]) if r["mce"] else "n/a", verdict])
    if not rows:
        return Section("Primary endpoint", ["One arm only: there is no comparison to make."])
    text = (f"Each arm against the reference arm **{reference}** (eval mode): the difference in mean AUC over every "
            f"artifact and severity (the primary endpoint), paired on the same evaluated volumes, with its interval and "
            f"two-sided p, and p adjusted by Holm over the arms compared with the reference. The clean gap is shown beside it: when its interval "
            f"excludes 0 the robustness comparison is confounded by clean accuracy. B = {st.replicates(res)}, "
            f"smallest attainable p {num(st.smallest_p(res), 4)}.")
    return Section("Primary endpoint", [text, Table(["comparison", "mean AUC difference", "p", "p (Holm)", "clean gap", "p (clean)",
                                                     "mCE difference", "p (mCE)", "note"], rows)])


# ---- clean performance ------------------------------------------------------------------------


def _metric_cells(get, ece: bool = True) -> list[str]:
    return [ci(get("auc", MEAN)), *(ci(get("auc", label)) for label in LABELS),
            *(ci(get(metric, MEAN)) for metric in THRESHOLD_METRICS), *([ci(get(st.ECE, MEAN))] if ece else [])]


def clean_header(res: Results) -> list[str]:
    """Column names; a label with fewer than 10 positive volumes in the evaluated split is marked."""
    weak = st.underpowered(res)
    return ["mean AUC", *(f"{label} (< 10 +vol)" if label in weak else label for label in LABELS),
            "sensitivity", "specificity", "balanced acc."]


def clean_section(res: Results) -> Section:
    per_arm = [[model_name(arm, mode), str(len(res.arms[arm])),
                *_metric_cells(lambda m, lab, arm=arm, mode=mode: res.cell(arm, mode, CLEAN, 0, lab, m))]
               for arm, mode in models(res)]
    blocks = ["Per arm (its runs' seeds and the test volumes resampled together). AUC per label; sensitivity, "
              "specificity, balanced accuracy of the mean label at the operating point; expected calibration error "
              "(ECE).",
              Table(["arm", "runs", *clean_header(res), "ECE"], per_arm)]
    if not res.from_runs:
        per_run = [[run, info["norm"], str(info["seed"]),
                    *_metric_cells(lambda m, lab, run=run: res.run_cell(run, "eval", CLEAN, 0, lab, m), ece=False)]
                   for run, info in res.runs.items()]
        blocks += ["Per run (eval mode; test-set interval of that run alone).",
                   Table(["run", "norm", "seed", *clean_header(res)], per_run)]
    return Section("Clean performance", blocks)


# ---- robustness ---------------------------------------------------------------------------------


def _pooled(res: Results, arm: str, mode: str, artifact: str, metric: str = "auc") -> tuple:
    """The arm's value over the severities of `artifact`: arms.csv's severity=all row (with
    interval) or the mean of the per-severity values (no interval)."""
    row = res.cell(arm, mode, artifact, ALL, MEAN, metric)
    if np.isfinite(row[0]):
        return row
    return (st.nanmean([res.cell(arm, mode, artifact, s, MEAN, metric)[0] for s in res.severities]), math.nan, math.nan)


def robustness_section(res: Results, figure: Figure | None, flagged: dict) -> Section:
    ms = models(res)
    names = [model_name(a, m) + (" (not learned)" if a in flagged else "") for a, m in ms]
    summary = [[a, *(ci(_pooled(res, arm, mode, a)) for arm, mode in ms)] for a in res.artifacts]
    summary.append(["**all artifacts**", *(ci(res.cell(arm, mode, ALL, ALL)) for arm, mode in ms)])
    retained = [[a, *(ci(st.retained(res, arm, mode, a, ALL)) for arm, mode in ms)] for a in res.artifacts]
    full = [[a, model_name(arm, mode), *(ci(res.cell(arm, mode, art, s)) for art, s in
                                                [(CLEAN, 0), *((a, s) for s in res.severities)])]
            for a in res.artifacts for arm, mode in ms]
    blocks = [figure] if figure else []
    blocks += ["Mean AUC averaged over the severities, per artifact (all artifacts: the primary endpoint's quantity).",
               Table(["artifact", *names], summary),
               "Retained fraction of the room above chance, (AUC_s - 0.5) / (AUC_clean - 0.5), averaged over the "
               "severities: 1 = no loss, 0 = chance. A model near chance cannot look robust on this scale.",
               Table(["artifact", *names], retained),
               "Mean AUC per severity; the severities' physical parameters are in the ladder table below.",
               Table(["artifact", "arm", "clean", *map(str, res.severities)], full),
               "Severity ladders (the artifact registry's parameters at each severity).", ladders_table(res)]
    return Section("Robustness to artifacts", blocks)


def ladders_table(res: Results) -> Table:
    rows = []
    for artifact in res.artifacts:
        labels, unit = ladder(res.settings.get("suite", "mrrobust"), artifact, res.severities)
        rows.append([artifact, unit, *(label.split("\n", 1)[-1] for label in labels)])
    return Table(["artifact", "parameters", *map(str, res.severities)], rows)


def operating_section(res: Results) -> Section:
    ms = [(a, m) for a, m in models(res) if m == "eval"] or models(res)
    blocks = ["Sensitivity, specificity and balanced accuracy of the mean label under every artifact, at the "
              f"operating point ({res.settings.get('threshold_from', 'clean-val')}). Cells whose operating point used "
              "the fallback rule (FPR > 0.25, no threshold reached sensitivity 0.9): " + _fallbacks(res) + "."]
    for metric in THRESHOLD_METRICS:
        rows = [[a, model_name(arm, mode), *(ci(res.cell(arm, mode, art, s, MEAN, metric)) for art, s in
                                                   [(CLEAN, 0), *((a, s) for s in res.severities)])]
                for a in res.artifacts for arm, mode in ms]
        blocks += [f"**{METRIC_NAMES[metric]}**", Table(["artifact", "arm", "clean", *map(str, res.severities)], rows)]
    return Section("Operating point under artifacts", blocks)


def _fallbacks(res: Results) -> str:
    fallback = _record(res.settings, "thresholds").get("fallback")
    if not isinstance(fallback, list):
        return "not recorded"
    return "; ".join(f"{f.get('run')} {f.get('label')}" + ("" if f.get("artifact") in (None, ALL) else
                                                           f" ({f.get('bn_mode')}, {f.get('artifact')} {f.get('severity')})")
                     for f in fallback if isinstance(f, dict)) or "none"


def calibration_section(res: Results, figure: Figure | None) -> Section:
    rows = [[a, model_name(arm, mode), *(ci(res.cell(arm, mode, art, s, MEAN, st.ECE)) for art, s in
                                               [(CLEAN, 0), *((a, s) for s in res.severities)])]
            for a in res.artifacts for arm, mode in models(res)]
    blocks = ["Expected calibration error (mean label; lower is better) per cell."]
    if any(np.isfinite(res.cell(arm, mode, CLEAN, 0, MEAN, st.ECE)[0]) for arm, mode in models(res)):
        blocks.append(Table(["artifact", "arm", "clean", *map(str, res.severities)], rows))
    else:
        blocks.append("No ECE rows in this RESULTS folder (evaluated before calibration was measured).")
    if figure:
        blocks += [figure, "Reliability diagram: each arm's runs pooled, clean vs its worst artifact at the highest "
                           "severity (lowest mean AUC); every label's probability pooled; bars: volume-bootstrap "
                           "interval of the observed frequency; grey: perfect calibration."]
    return Section("Calibration", blocks)


def ce_section(res: Results, errors: dict, reference: str, figure: Figure | None, note: str) -> Section:
    rows = [[model_name(*m), *(ci(e["ce"][a]) for a in res.artifacts), ci(e["mce"]), ci(e["relative_mce"])]
            for m, e in errors.items()]
    relative = [[model_name(*m), *(("undefined" if a in e["undefined"] else ci(e["relative_ce"][a]))
                                         + f" / {ci(e['degradation'][a])}" for a in res.artifacts)]
                for m, e in errors.items()]
    undefined = next(iter(errors.values()))["undefined"] if errors else []
    text = (f"{note}Error = 1 - mean AUC. CE = sum over severities of an arm's error / the same sum for **{reference}** "
            f"(ImageNet-C); mCE = mean CE over artifacts; relative CE subtracts each arm's clean error first and "
            f"averages every artifact. Below 1: fewer errors than {reference}.")
    if undefined:
        text += (f" Relative CE is **undefined** under {', '.join(undefined)}: the reference's drop there is not "
                 f"distinguishable from 0, so the ratio would be noise divided by noise; the relative mCE is "
                 f"undefined with it.")
    blocks = [text] + ([figure] if figure else []) + [Table(["arm", *res.artifacts, "mCE", "relative mCE"], rows),
                                                      "Relative CE / ROOD-MRI degradation (weighted mean drop of AUC from "
                                                      "clean, weight (2/3)^s at severity s).",
                                                      Table(["arm", *res.artifacts], relative)]
    return Section("Corruption errors", blocks)


def comparison_section(res: Results, reference: str, figure: Figure | None, flagged: dict) -> Section:
    blocks = []
    for arm in res.arms:
        if arm == reference:
            continue
        counts = st.cell_counts(res, reference, arm)
        if counts is None:
            continue
        rows = []
        for artifact in res.artifacts:
            cells = []
            for severity in res.severities:
                row = res.comparison(reference, arm, "eval", "eval", artifact, severity)
                cells.append("n/a" if row is None else f"{ci(compared(row), sign=True)} Holm p {p_text(row['p_holm'])}, "
                                                      f"BH q {p_text(row['q_bh'])}")
            rows.append([artifact, *cells])
        up_h, down_h = counts["p_holm"]
        up_b, down_b = counts["q_bh"]
        claim = " (not learned: no claim from it)" if {arm, reference} & set(flagged) else ""
        blocks += [f"**{arm} - {reference}**{claim}: of {counts['cells']} cells, {up_h + down_h} significant after Holm "
                   f"(family-wise 5%; {up_h} in favour of {arm}, {down_h} of {reference}), {up_b + down_b} after "
                   f"Benjamini-Hochberg (false discovery rate 5%; {up_b} / {down_b}).",
                   Table(["artifact", *map(str, res.severities)], rows)]
    if not blocks:
        return Section("Paired comparisons", ["No cell-wise comparisons between arms in arm_comparisons.csv."])
    intro = ("Difference in mean AUC (arm minus reference) per artifact x severity, paired on the same volumes, with "
             "its interval and the p-value adjusted over the family of cells (Holm) and the BH q-value. Counts use the "
             "adjusted values only; an ordering is stated only where the paired test rejects, never from overlapping "
             "intervals.")
    return Section("Paired comparisons", [intro, *([figure] if figure else []), *blocks])


def adaptation_section(res: Results, figure: Figure | None) -> Section:
    gain_rows, recovery_rows = [], []
    for arm, mode in models(res):
        if mode == "eval" or "eval" not in res.modes_of(arm):
            continue
        for artifact in [*res.artifacts, ALL]:
            g = st.adaptation_gain(res, arm, mode, artifact)
            name = "**all artifacts**" if artifact == ALL else artifact
            gain_rows.append([name, model_name(arm, mode), ci(g["total"], True), ci(g["clean"], True),
                              ci(g["specific"], True)])
            recovery_rows.append([name, model_name(arm, mode), ci(st.recovery(res, arm, mode, artifact))])
    if not gain_rows:
        return Section("Test-time adaptation", ["No adaptation modes in this RESULTS folder (or no batch-norm arm): "
                                                "n/a."])
    blocks = ([figure] if figure else []) + [
        "Gain in mean AUC over eval mode, averaged over the severities, split into the clean gain (what the "
        "adaptation does on clean slices) and the artifact-specific gain (total - clean).",
        Table(["artifact", "arm", "total gain", "clean gain", "artifact-specific gain"], gain_rows),
        "Why does batch norm fail? The fraction of its artifact loss (clean - corrupted mean AUC in eval mode) that "
        "each adaptation wins back: 1 = all of it, so the loss was the stale BN statistics; 0 = none.",
        Table(["artifact", "arm", "fraction recovered"], recovery_rows)]
    return Section("Test-time adaptation", blocks)


def bn_shift_means(res: Results) -> dict:
    """{(artifact, severity): {"depth": (D,), "mean_shift": (3, D), "var_log_ratio": (3, D)}}:
    per layer depth the mean, min and max over the batch-norm runs."""
    grouped = {}
    for r in res.bn_shift:
        grouped.setdefault((r["artifact"], r["severity"]), {}).setdefault(r["depth"], []).append(r)
    out = {}
    for key, by_depth in grouped.items():
        depths = sorted(by_depth)
        out[key] = {"depth": np.array(depths)}
        for name in ("mean_shift", "var_log_ratio"):
            values = [np.array([r[name] for r in by_depth[d]], float) for d in depths]
            out[key][name] = np.array([[st.nanmean(v) for v in values], [np.nanmin(v) for v in values],
                                       [np.nanmax(v) for v in values]])
    return out


def bn_shift_section(res: Results, shift: dict, figure: Figure | None) -> Section:
    if not shift:
        return Section("Batch-norm statistics shift", ["No BN statistics in this RESULTS folder (no batch-norm run "
                                                       "evaluated in eval mode, or bn_shift.csv absent)."])
    rows = [[a, *(num(st.nanmean(shift[a, s]["mean_shift"][0])) if (a, s) in shift else "n/a" for s in res.severities)]
            for a in res.artifacts]
    clean = st.nanmean(shift[CLEAN, 0]["mean_shift"][0]) if (CLEAN, 0) in shift else math.nan
    return Section("Batch-norm statistics shift", [
        "In eval mode BN normalises with running statistics from training. mean_shift = mean over channels of |mean of "
        "the layer's input - running mean| / running std; var_log_ratio = mean of log(input variance / running "
        "variance). Large values: the stored statistics no longer match the input.",
        *([figure] if figure else []),
        f"mean_shift averaged over layers and BN runs, per severity (clean slices: {num(clean)}).",
        Table(["artifact", *map(str, res.severities)], rows)])
