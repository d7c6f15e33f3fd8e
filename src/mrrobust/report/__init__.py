"""REPORT: a RESULTS folder (`evaluate`'s output) as `report.md` and a self-contained
`report.html` plus figures, for a person; never the GPU, the STORE or the RUNs.

Modules: `loading` (the RESULTS folder -> `Results`), `statistics` (guard rails and derived
numbers), `findings` (the sentences), `tables` (sections as data), `figures`, `markdown` and
`html` (the two renderings of the same sections). Figures are written first, then
`report.html` and `report.md`, each atomically, so a reader never meets a report whose
figures are missing.
"""

from __future__ import annotations

from pathlib import Path

from mrrobust.atomic import atomic_write
from mrrobust.errors import MrRobustError
from mrrobust.report import figures as fig
from mrrobust.report import findings as fnd
from mrrobust.report import html, markdown
from mrrobust.report import statistics as st
from mrrobust.report import tables as tab
from mrrobust.report.figures import FIGURES, MODE_STYLES, NORM_COLORS, norm_color
from mrrobust.report.loading import CLEAN, Results, gather_results, load_results
from mrrobust.report.tables import Bullets, Section

FORMATS = ("png", "pdf", "svg")
OLD_FIGURES = ("bn_adapt_gain",)  # written by earlier versions
TITLE = "mrrobust report: normalisation vs MR artifacts"
__all__ = ["report", "load_results", "Results", "NORM_COLORS", "MODE_STYLES", "norm_color", "FORMATS", "FIGURES"]


def _formats(formats) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(str(f).lower().lstrip(".") for f in (formats or ())))
    unknown = [f for f in chosen if f not in FORMATS]
    if not chosen or unknown:
        raise MrRobustError(f"figure format(s) {', '.join(unknown) or 'none given'}: choose from {', '.join(FORMATS)} "
                            f"(e.g. --formats png,pdf)")
    return chosen


def _write_text(path: Path, text: str) -> None:
    try:
        atomic_write(path, lambda temp: temp.write_text(text))
    except OSError as err:
        raise MrRobustError(f"cannot write {path}: {err.strerror or err}; choose a writable --out") from None


def _figures(res: Results, reference: str, errors: dict, shift: dict, panels: dict, folder: Path, formats) -> dict:
    """{name: Figure} for every figure the data allow."""
    written = {}
    if res.artifacts and res.arms:
        written["auc_vs_severity"] = fig.auc_vs_severity(res, folder, formats)
    if errors:
        written["corruption_error"] = fig.corruption_error(res, errors, reference, folder, formats)
    if res.artifacts and any(m != "eval" for m in res.bn_modes):
        written["adaptation_gain"] = fig.adaptation_gain(res, folder, formats)
    if res.artifacts and res.severities:
        heatmap = fig.difference_heatmap(res, reference, folder, formats)
        if heatmap:
            written["difference_heatmap"] = heatmap
        reliability = fig.reliability(res, panels, folder, formats)
        if reliability:
            written["reliability"] = reliability
    top = res.severities[-1] if res.severities else 0
    shown = [k for k in [(CLEAN, 0), *((a, top) for a in res.artifacts)] if k in shift]
    if shown:
        written["bn_shift"] = fig.bn_shift(res, shift, shown, folder, formats)
    return written


def report(results, out: Path, *, reference_norm: str | None = None, formats=("png",)) -> dict:
    """Write REPORT `out` from the RESULTS folder `results` (or the list of the shard folders of
    one evaluation, merged into `out/results` first: `loading.gather_results`):
    `figures/<name>.<format>`, then
    `report.html` (figures embedded) and `report.md`. `reference_norm` names the reference
    arm (an arm name, or a norm: its first arm); None = evaluate's `reference_arm` (else
    batch). Comparisons exist only against evaluate's reference arm. Everything is read and
    checked before anything is written. Returns {"report": md path, "html": html path,
    "figures": [paths], "findings": [the three most important findings, short lines]}."""
    formats = _formats(formats)
    res = load_results(gather_results(results, out))
    worst = {arm: st.worst_cell(res, arm) for arm in res.arms if "eval" in res.modes_of(arm)}
    panels = fig.reliability_panels(res, {arm: cell for arm, cell in worst.items() if cell})  # reads predictions/
    reference = st.reference_arm(res, reference_norm)
    note, recorded = "", res.settings.get("reference_arm")
    if reference_norm is not None and reference is not None and reference_norm not in (reference, res.norm_of(reference)):
        note = f"The reference {reference_norm} is not among the arms; the reference below is {reference}. "
    if recorded and recorded in res.arms and reference != recorded:
        note += (f"evaluate compared every arm with {recorded}: paired comparisons against {reference} exist only "
                 f"where arm_comparisons.csv holds them (re-run mrrobust evaluate --reference-arm {reference}). ")
    flagged = st.not_learned(res)
    models = tab.models(res)
    errors = (st.corruption_errors(res, models, reference)
              if res.artifacts and res.severities and reference and "eval" in res.modes_of(reference) else {})
    shift = tab.bn_shift_means(res)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MrRobustError(f"{out} exists and is not a folder; choose another --out")
    figures_dir = out / "figures"
    try:
        figures_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MrRobustError(f"cannot write the report to {out} ({err.strerror}); choose a writable --out") from None
    written = _figures(res, reference, errors, shift, panels, figures_dir, formats)

    found = fnd.findings(res, reference, flagged) if reference else ["No arms in this RESULTS folder."]
    short = fnd.three_lines(res, reference, flagged) if reference else found[:1]
    sections = [tab.header(res, flagged),
                Section("Key findings", [Bullets(found)] + ([note] if note else [])),
                tab.primary_section(res, reference, flagged), tab.guard_rails(res, flagged), tab.clean_section(res)]
    if res.artifacts:
        sections += [tab.robustness_section(res, written.get("auc_vs_severity"), flagged), tab.operating_section(res),
                     tab.calibration_section(res, written.get("reliability"))]
    if errors:
        sections.append(tab.ce_section(res, errors, reference, written.get("corruption_error"), note))
    sections += [tab.comparison_section(res, reference, written.get("difference_heatmap"), flagged),
                 tab.adaptation_section(res, written.get("adaptation_gain")),
                 tab.bn_shift_section(res, shift, written.get("bn_shift")),
                 Section("In three lines", [Bullets(short)])]
    html_path, md_path = out / "report.html", out / "report.md"
    _write_text(html_path, html.render(TITLE, sections))
    _write_text(md_path, markdown.render(TITLE, sections, out))
    for stem in (*FIGURES, *OLD_FIGURES):  # figures of an earlier report that this one no longer has
        for fmt in FORMATS:
            if fmt not in formats or stem not in written:
                (figures_dir / f"{stem}.{fmt}").unlink(missing_ok=True)
    return {"report": md_path, "html": html_path, "figures": [p for f in written.values() for p in f.paths],
            "findings": short}
