"""The findings: sentences stated from the numbers only, in an order a referee can check.

The first finding is the primary endpoint (each arm against the reference arm). Orderings
come from paired tests, never from overlapping intervals; cell-wise counts use adjusted
values only (Holm, Benjamini-Hochberg) and name the adjustment. No robustness claim is made
from an arm that did not learn, and a robustness gap whose clean gap is clearly non-zero is
called confounded. `three_lines` are the short lines the report ends with.
"""

from __future__ import annotations

import numpy as np

from mrrobust.report import statistics as st
from mrrobust.report.figures import model_name
from mrrobust.report.loading import ALL, CLEAN, Results
from mrrobust.report.tables import ci, compared, num, p_text, primary_rows


def _ordering(res: Results, row: dict | None, a: str, b: str, column: str = "p_value") -> str:
    """"b above a" / "b below a" when the paired test rejects at 0.05, else "not established"."""
    if row is None or not np.isfinite(row["difference"]):
        return "no paired test"
    if st.significant(row, column):
        return f"{b} {'above' if row['difference'] > 0 else 'below'} {a}"
    return f"ordering of {b} and {a} not established, {'Holm ' if column == 'p_holm' else ''}p {p_text(row[column])}"


def primary(res: Results, reference: str, flagged: dict) -> list[str]:
    """One sentence per arm against the reference: the primary endpoint first."""
    rows = primary_rows(res, reference)
    if not rows:
        return [f"One arm only ({reference}): no comparison between arms, so no primary endpoint."]
    out = []
    for r in rows:
        arm, row = r["arm"], r["primary"]
        if row is None:
            why = ("evaluate chose no reference arm; re-run it with --reference-arm"
                   if not res.settings.get("reference_arm") else
                   f"evaluate compared the arms with {res.settings['reference_arm']}, not {reference}")
            out.append(f"Primary endpoint {arm} - {reference}: not in arm_comparisons.csv ({why}).")
            continue
        text = (f"Primary endpoint: mean AUC over every artifact and severity, {arm} - {reference} = "
                f"{ci(compared(row), sign=True)}, p {p_text(row['p_value'])}, Holm over the arms {p_text(row['p_holm'])} "
                f"({_ordering(res, row, reference, arm, 'p_holm')})")
        lost = sorted({arm, reference} & set(flagged))
        if lost:
            text += f"; {' and '.join(lost)} did not learn, so no robustness claim is made from this comparison"
        elif r["clean"] is not None and st.excludes(compared(r["clean"]), 0.0):
            text += (f"; confounded: the clean gap is {ci(compared(r['clean']), sign=True)}, so the difference mixes "
                     f"clean accuracy with robustness")
        elif r["clean"] is not None:
            text += f"; clean gap {ci(compared(r['clean']), sign=True)} (interval includes 0)"
        if r["mce"] is not None:
            text += f"; mCE difference {ci(compared(r['mce']), sign=True)}, p {p_text(r['mce']['p_value'])}"
        out.append(text + ".")
    return out


def counts(res: Results, reference: str, flagged: dict) -> str | None:
    parts = []
    for arm in res.arms:
        if arm == reference or {arm, reference} & set(flagged):
            continue
        c = st.cell_counts(res, reference, arm)
        if c is None:
            continue
        (up_h, down_h), (up_b, down_b) = c["p_holm"], c["q_bh"]
        parts.append(f"{arm} vs {reference}: {up_h + down_h} of {c['cells']} after Holm ({up_h} in favour of {arm}, "
                     f"{down_h} of {reference}), {up_b + down_b} after Benjamini-Hochberg")
    if not parts:
        return None
    return ("Cell-wise tests (artifact x severity, mean AUC), counted after adjustment only: " + "; ".join(parts)
            + f". B = {st.replicates(res)}, smallest attainable p {num(st.smallest_p(res), 4)}.")


def retained_finding(res: Results, flagged: dict) -> str | None:
    worst = {}
    for arm in res.arms:
        if arm in flagged:
            continue
        values = {a: st.retained(res, arm, "eval", a, ALL) for a in res.artifacts}
        values = {a: v for a, v in values.items() if np.isfinite(v[0])}
        if values:
            artifact = min(values, key=lambda a: values[a][0])
            worst[arm] = (artifact, values[artifact])
    if not worst:
        return None
    return ("Room above chance retained under each arm's worst artifact (averaged over severities): "
            + "; ".join(f"{arm} {ci(v)} under {a}" for arm, (a, v) in worst.items()) + ".")


def adaptation_findings(res: Results, flagged: dict) -> list[str]:
    """Per adaptation of a learned arm: clean gain, artifact-specific gain, share of the loss recovered."""
    out = []
    for arm in res.arms:
        if "eval" not in res.modes_of(arm) or arm in flagged:
            continue
        for mode in res.modes_of(arm):
            if mode == "eval":
                continue
            if not res.artifacts:
                continue
            overall = st.adaptation_gain(res, arm, mode, ALL)
            text = (f"{model_name(arm, mode)}: clean gain {ci(overall['clean'], sign=True)}, artifact-specific gain "
                    f"{ci(overall['specific'], sign=True)} (all artifacts)")
            recovered = st.recovery(res, arm, mode, ALL)
            if np.isfinite(recovered[0]):
                text += f"; it recovers {ci(recovered)} of {arm}'s artifact loss"
            out.append(text + ".")
    return out


def caveats(res: Results, flagged: dict) -> list[str]:
    out = []
    if flagged:
        out.append("Not learned (no robustness claim made from them): "
                   + "; ".join(f"{arm} ({why[0]})" for arm, why in flagged.items()) + ".")
    if all(len(m) <= 1 for m in res.arms.values()):
        out.append("One seed per arm: training variance unmeasured; the intervals cover test-set sampling only.")
    weak = st.underpowered(res)
    if weak:
        out.append(f"Fewer than {st.MIN_POSITIVE_VOLUMES} positive volumes in the evaluated split "
                   f"({res.settings.get('split', 'test')}) for "
                   + ", ".join(f"{label} ({n})" for label, n in weak.items())
                   + ": those labels' intervals under-cover.")
    return out


def findings(res: Results, reference: str, flagged: dict) -> list[str]:
    """The key findings; the first is the primary endpoint."""
    found = primary(res, reference, flagged)
    clean = [(arm, res.comparison(reference, arm, "eval", "eval", CLEAN, 0)) for arm in res.arms if arm != reference]
    clean = [(arm, row) for arm, row in clean if row is not None]
    if clean:
        found.append("Clean slices, paired test: " + "; ".join(
            f"{arm} - {reference} {ci(compared(row), sign=True)} ({_ordering(res, row, reference, arm, 'p_holm')})"
            for arm, row in clean) + ".")
    for extra in (counts(res, reference, flagged), retained_finding(res, flagged)):
        if extra:
            found.append(extra)
    return found + adaptation_findings(res, flagged) + caveats(res, flagged)


def three_lines(res: Results, reference: str, flagged: dict) -> list[str]:
    """The three most important findings as short lines."""
    lines = []
    rows = [r for r in primary_rows(res, reference) if r["primary"] is not None]
    if rows:
        r = rows[0]
        claim = ("no claim (not learned)" if {r["arm"], reference} & set(flagged)
                 else "confounded by the clean gap" if r["clean"] is not None and st.excludes(compared(r["clean"]), 0)
                 else _ordering(res, r["primary"], reference, r["arm"], "p_holm"))
        lines.append(f"{r['arm']} - {reference}, mean AUC over all artifacts: "
                     f"{ci(compared(r['primary']), sign=True)}, p {p_text(r['primary']['p_value'])}: {claim}.")
    else:
        arm = next(iter(res.arms), reference)
        lines.append(f"{arm}: mean AUC over all artifacts {ci(res.cell(arm, 'eval', ALL, ALL))}, clean "
                     f"{ci(res.cell(arm, 'eval', CLEAN, 0))} ("
                     + ("no second arm to compare" if len(res.arms) < 2 else "no paired comparison in RESULTS") + ").")
    if flagged:
        lines.append(f"Not learned: {', '.join(flagged)}; no robustness claim from {'it' if len(flagged) == 1 else 'them'}.")
    else:
        retained = retained_finding(res, flagged)
        lines.append(retained.replace("Room above chance retained under each arm's worst artifact (averaged over "
                                      "severities): ", "Retained room above chance, worst artifact: ")
                     if retained else "Every arm learned (clean mean AUC interval above chance).")
    adaptation = adaptation_findings(res, flagged)
    if adaptation:
        lines.append(adaptation[0])
    elif all(len(m) <= 1 for m in res.arms.values()):
        lines.append("One seed per arm: training variance unmeasured.")
    else:
        weak = st.underpowered(res)
        lines.append(f"Under-powered labels (< {st.MIN_POSITIVE_VOLUMES} positive volumes in the evaluated split): "
                     f"{', '.join(weak)}." if weak else "Every label has at least 10 positive volumes in the evaluated split.")
    return lines[:3]
