"""REPORT: a RESULTS folder (`evaluate`'s output) as `report.md` plus figures, for a person.

Reads `evaluation.json`, `results.csv` and, when present, `slices.csv`, `comparisons.csv`
and `bn_shift.csv`; never the predictions, never a GPU. Unless a table says otherwise a
number is the AUC of the "mean" label (mean over the four labels). A *model* is a norm in
one BN mode (`eval`: stored statistics; `adapt`: AdaBN); a norm's value is the mean over its
seeds (runs), and its interval is the run's bootstrap CI for one seed, the range over the
seeds for several. Undefined values (NaN) print as "n/a". Figures are written first and
`report.md` last, each atomically, so a reader never meets a report whose figures are missing.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrrobust.atomic import atomic_write
from mrrobust.data.annotations import LABELS
from mrrobust.errors import MrRobustError

FIGURES = ("auc_vs_severity", "corruption_error", "bn_adapt_gain", "bn_shift")
FORMATS = ("png", "pdf", "svg")
EMBEDDABLE = ("png", "svg")
DPI = 120
ALPHA = 0.05  # significance marker for paired comparisons (no multiple-testing correction)
RESULTS_COLUMNS = ("run", "norm", "seed", "bn_mode", "artifact", "severity", "label", "metric",
                   "value", "ci_low", "ci_high")
COMPARISON_COLUMNS = ("run_a", "run_b", "bn_mode_a", "bn_mode_b", "artifact", "severity", "label",
                      "metric", "difference", "ci_low", "ci_high", "p_value")
BN_SHIFT_COLUMNS = ("run", "artifact", "severity", "layer", "depth", "channels", "mean_shift",
                    "var_log_ratio")
THRESHOLD_METRICS = ("sensitivity", "specificity", "balanced_accuracy")
NAN3 = (math.nan, math.nan, math.nan)


# ---- reading a RESULTS folder ------------------------------------------------


def _float(text: str | None, path: Path, line: int) -> float:
    if text is None:
        raise MrRobustError(f"{path} line {line} has too few cells; re-run mrrobust evaluate")
    try:
        return float(text) if text.strip() else math.nan
    except ValueError:
        raise MrRobustError(f"{path} line {line}: {text!r} is not a number; re-run mrrobust evaluate") from None


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict]:
    """Rows of `path` as dicts; [] when the file is absent or empty; MrRobustError when a column is missing."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    missing = [c for c in columns if c not in (reader.fieldnames or columns)]
    if missing:
        raise MrRobustError(f"{path} lacks the column(s) {', '.join(missing)}; re-run mrrobust evaluate into {path.parent}")
    return rows


def _numbers(rows: list[dict], names: tuple[str, ...], path: Path) -> list[dict]:
    """`rows` with the columns `names` as floats ("" or "nan" -> NaN) and `severity` as int."""
    for line, row in enumerate(rows, start=2):
        for name in names:
            row[name] = _float(row[name], path, line)
        if "severity" in row:
            severity = _float(row["severity"], path, line)
            if not severity.is_integer():
                raise MrRobustError(f"{path} line {line}: severity {row['severity']!r} is not an integer; "
                                    f"re-run mrrobust evaluate")
            row["severity"] = int(severity)
    return rows


@dataclass
class Results:
    """A RESULTS folder in memory. `cells[(run, bn_mode, artifact, severity, label, metric)]`
    = (value, ci_low, ci_high); `runs[run]` = (norm, seed) in file order; `severities` are
    the corrupted ones (>= 1), ascending; artifacts exclude "clean"."""

    folder: Path
    settings: dict
    cells: dict
    runs: dict
    artifacts: list
    severities: list
    comparisons: list
    bn_shift: list
    slices: list

    @property
    def norms(self) -> list[str]:
        return list(dict.fromkeys(norm for norm, _ in self.runs.values()))

    def runs_of(self, norm: str, bn_mode: str) -> list[str]:
        """The runs of `norm` that have rows in `bn_mode`."""
        return [run for run, (n, _) in self.runs.items() if n == norm and (run, bn_mode) in self._modes]

    def models(self) -> list[tuple[str, str]]:
        """(norm, bn_mode) pairs present: every norm in eval mode, then those with adapt rows."""
        return [(n, mode) for mode in ("eval", "adapt") for n in self.norms if self.runs_of(n, mode)]

    def cell(self, run, bn_mode, artifact, severity, label="mean", metric="auc") -> tuple:
        return self.cells.get((run, bn_mode, artifact, severity, label, metric), NAN3)

    def model_cell(self, model, artifact, severity, label="mean", metric="auc") -> tuple:
        """(mean, low, high) of a norm over its seeds: one run's CI, or the min..max over runs."""
        norm, mode = model
        cells = [self.cell(run, mode, artifact, severity, label, metric) for run in self.runs_of(norm, mode)]
        if len(cells) == 1:
            return cells[0]
        values = np.array([c[0] for c in cells], dtype=float)
        values = values[np.isfinite(values)]
        return (float(values.mean()), float(values.min()), float(values.max())) if values.size else NAN3

    def curve(self, model, artifact) -> np.ndarray:
        """(3, 1 + S) mean, low, high AUC at severity 0 (clean) and each of `severities`."""
        points = [self.model_cell(model, "clean", 0)]
        points += [self.model_cell(model, artifact, s) for s in self.severities]
        return np.array(points, dtype=float).T

    def seeds_of(self, norm: str) -> int:
        return len(self.runs_of(norm, "eval")) or len(self.runs_of(norm, "adapt"))

    def __post_init__(self):
        self._modes = {(run, mode) for run, mode, *_ in self.cells}


def load_results(results: Path) -> Results:
    """Read a RESULTS folder; MrRobustError (one line) when it is not one."""
    results = Path(results)
    for name in ("evaluation.json", "results.csv"):
        if not (results / name).is_file():
            raise MrRobustError(f"{results} is not a RESULTS folder (no {name}); run `mrrobust evaluate RUN... "
                                f"--data STORE --out {results}` first")
    try:
        settings = json.loads((results / "evaluation.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MrRobustError(f"{results / 'evaluation.json'} is not valid JSON ({err}); re-run mrrobust evaluate") from None
    path = results / "results.csv"
    rows = _numbers(_read_csv(path, RESULTS_COLUMNS), ("value", "ci_low", "ci_high"), path)
    cells, runs = {}, {}
    for r in rows:
        runs.setdefault(r["run"], (r["norm"], r["seed"]))
        cells[(r["run"], r["bn_mode"], r["artifact"], r["severity"], r["label"], r["metric"])] = (
            r["value"], r["ci_low"], r["ci_high"])
    corrupted = [r for r in rows if r["artifact"] != "clean"]
    path = results / "comparisons.csv"
    comparisons = _numbers(_read_csv(path, COMPARISON_COLUMNS), ("difference", "ci_low", "ci_high", "p_value"), path)
    path = results / "bn_shift.csv"
    bn_shift = _numbers(_read_csv(path, BN_SHIFT_COLUMNS), ("depth", "mean_shift", "var_log_ratio"), path)
    return Results(results, settings if isinstance(settings, dict) else {}, cells, runs,
                   list(dict.fromkeys(r["artifact"] for r in corrupted)),
                   sorted({r["severity"] for r in corrupted}), comparisons, bn_shift,
                   _read_csv(results / "slices.csv", ("volume",)))


# ---- numbers as text -----------------------------------------------------------


def _num(x, digits=3, sign=False) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    x = round(float(x), digits) + 0.0  # no "-0.000"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(v, lo, hi, sign=False) -> str:
    """"0.812 [0.790, 0.833]"; the bracket is left out when the interval is undefined."""
    text = _num(v, sign=sign)
    if np.isfinite(v) and np.isfinite(lo) and np.isfinite(hi):
        text += f" [{_num(lo, sign=sign)}, {_num(hi, sign=sign)}]"
    return text


def _p(p) -> str:
    if not np.isfinite(p):
        return ""
    return (" p<0.001" if p < 0.001 else f" p={p:.3f}") + (" *" if p < ALPHA else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def _nanmean(values) -> float:
    """Mean of the finite values; NaN (no warning) when there are none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def _model_name(model) -> str:
    norm, mode = model
    return norm if mode == "eval" else f"{norm} + BN-adapt"


def _severity_text(severities) -> str:
    """"1..5" for a contiguous ladder, else the list ("1, 3, 5")."""
    if len(severities) > 2 and list(severities) == list(range(severities[0], severities[-1] + 1)):
        return f"{severities[0]}..{severities[-1]}"
    return ", ".join(map(str, severities)) or "none"


# ---- numbers derived from the results ----------------------------------------


def _corruption_table(res: Results, models) -> dict:
    """`corruption_errors` input: table[model name][artifact] = mean AUCs over the severities,
    table[model name]["clean"] = clean mean AUC (norm values: mean over seeds)."""
    table = {}
    for model in models:
        table[_model_name(model)] = {a: [res.model_cell(model, a, s)[0] for s in res.severities] for a in res.artifacts}
        table[_model_name(model)]["clean"] = res.model_cell(model, "clean", 0)[0]
    return table


def _robustness(res: Results, models) -> dict:
    """{(model, artifact): (clean AUC, mean AUC over severities, drop = clean - mean)}."""
    out = {}
    for model in models:
        for artifact in res.artifacts:
            curve = res.curve(model, artifact)[0]
            mean = _nanmean(curve[1:])
            out[model, artifact] = (curve[0], mean, curve[0] - mean)
    return out


def _paired(res: Results, reference: str) -> dict:
    """Comparisons of the "mean" AUC grouped per pair: {(a, b, mode_a, mode_b): {(artifact,
    severity): (difference b - a, ci_low, ci_high, p)}}, oriented so that the reference norm
    (between runs) or eval mode (adapt vs eval of one run) is `a`."""
    pairs = {}
    for r in res.comparisons:
        if r["label"] != "mean" or r["metric"] != "auc":
            continue
        a, b, mode_a, mode_b = r["run_a"], r["run_b"], r["bn_mode_a"], r["bn_mode_b"]
        diff, lo, hi = r["difference"], r["ci_low"], r["ci_high"]
        norm_a, norm_b = res.runs.get(a, ("?",))[0], res.runs.get(b, ("?",))[0]
        if (a == b and mode_a == "adapt") or (a != b and norm_b == reference and norm_a != reference):
            a, b, mode_a, mode_b, diff, lo, hi = b, a, mode_b, mode_a, -diff, -hi, -lo
        pairs.setdefault((a, b, mode_a, mode_b), {})[r["artifact"], r["severity"]] = (diff, lo, hi, r["p_value"])
    return pairs


def _bn_shift_means(res: Results) -> dict:
    """{(artifact, severity): {"mean_shift": (D,), "var_log_ratio": (D,), "depth": (D,)}}:
    each layer depth averaged over the BN runs."""
    grouped = {}
    for r in res.bn_shift:
        grouped.setdefault((r["artifact"], r["severity"]), {}).setdefault(r["depth"], []).append(r)
    out = {}
    for key, by_depth in grouped.items():
        depths = sorted(by_depth)
        out[key] = {"depth": np.array(depths)} | {
            name: np.array([_nanmean([r[name] for r in by_depth[d]]) for d in depths])
            for name in ("mean_shift", "var_log_ratio")}
    return out


# ---- figures ------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(res: Results) -> dict:
    return {norm: f"C{k % 10}" for k, norm in enumerate(res.norms)}


def _save(fig, stem: str, folder: Path, formats) -> list[Path]:
    """Write `fig` as `folder/stem.<format>` for every format, atomically; closes the figure."""
    plt = _pyplot()
    paths = []
    try:
        for fmt in formats:
            path = folder / f"{stem}.{fmt}"
            atomic_write(path, lambda temp, fmt=fmt: fig.savefig(temp, dpi=DPI, format=fmt))
            paths.append(path)
    except OSError as err:
        raise MrRobustError(f"cannot write {folder / stem}: {err.strerror or err}; choose a writable --out") from None
    finally:
        plt.close(fig)
    return paths


def _grid(plt, panels: int, width=2.7, height=2.3):
    cols = min(5, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.6), squeeze=False)
    axes = list(axes.flat)
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes


def _figure_auc(res: Results, models, folder, formats) -> list[Path]:
    """Small multiples: mean AUC vs severity (0 = clean) per artifact, one line per model."""
    plt, colors = _pyplot(), _colors(res)
    x = np.array([0, *res.severities])
    fig, axes = _grid(plt, len(res.artifacts))
    for ax, artifact in zip(axes, res.artifacts):
        for model in models:
            mean, lo, hi = res.curve(model, artifact)
            color, dashed = colors[model[0]], model[1] == "adapt"
            ax.plot(x, mean, "--" if dashed else "-", marker="o", ms=3, color=color, label=_model_name(model))
            if not dashed:
                ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
        ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
        ax.set_title(artifact, fontsize=9)
        ax.set_xticks(x)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    top = 1 - 0.4 / fig.get_figheight()  # room for the legend above the panels
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.supxlabel("severity (0 = clean)", fontsize=8)
    fig.supylabel("mean AUC", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, top))
    return _save(fig, "auc_vs_severity", folder, formats)


def _figure_ce(res: Results, names: list[str], errors: dict, reference: str, folder, formats) -> list[Path]:
    """Heatmap of CE (rows: models, columns: artifacts and mCE), centred on the reference's 1."""
    plt = _pyplot()
    columns = [*res.artifacts, "mCE"]
    matrix = np.array([[errors[n]["ce"].get(a, math.nan) for a in res.artifacts] + [errors[n]["mce"]] for n in names],
                      dtype=float)
    finite = matrix[np.isfinite(matrix)]
    spread = max(float(np.abs(finite - 1).max()) if finite.size else 0.0, 0.05)
    cmap = plt.get_cmap("RdYlGn_r").with_extremes(bad="0.85")
    fig, ax = plt.subplots(figsize=(max(4.5, 1.8 + 0.7 * len(columns)), 1.2 + 0.45 * len(names)))
    ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=1 - spread, vmax=1 + spread, aspect="auto")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, _num(value, 2), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title(f"corruption error (error = 1 - AUC)\nrelative to {reference}; below 1: fewer errors", fontsize=8)
    fig.tight_layout()
    return _save(fig, "corruption_error", folder, formats)


def _figure_gain(res: Results, adapted: list[str], folder, formats) -> list[Path]:
    """BN-adapt gain (adapt - eval mean AUC, mean over seeds) vs severity, one line per artifact."""
    plt = _pyplot()
    x = np.array([0, *res.severities])
    fig, axes = _grid(plt, len(adapted), width=4.0, height=2.8)
    for ax, norm in zip(axes, adapted):
        clean_gain = res.model_cell((norm, "adapt"), "clean", 0)[0] - res.model_cell((norm, "eval"), "clean", 0)[0]
        for k, artifact in enumerate(res.artifacts):
            gain = res.curve((norm, "adapt"), artifact)[0] - res.curve((norm, "eval"), artifact)[0]
            gain[0] = clean_gain
            ax.plot(x, gain, marker="o", ms=3, color=f"C{k % 10}", label=artifact)
        ax.axhline(0, color="0.4", lw=0.8)
        ax.set_title(f"{norm}: BN-adapt - eval", fontsize=9)
        ax.set_xticks(x)
        ax.set_xlabel("severity (0 = clean)", fontsize=8)
        ax.set_ylabel("gain in mean AUC", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, ncol=2, frameon=False)
    fig.tight_layout()
    return _save(fig, "bn_adapt_gain", folder, formats)


def _figure_bn_shift(res: Results, shift: dict, shown: list, folder, formats) -> list[Path]:
    """mean_shift and var_log_ratio vs layer depth: clean and each artifact at its highest severity."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    from matplotlib.ticker import MaxNLocator

    for artifact, severity in shown:
        s = shift[artifact, severity]
        style = (dict(color="black", lw=2) if artifact == "clean"
                 else dict(color=f"C{res.artifacts.index(artifact) % 10}", lw=1))
        label = "clean" if artifact == "clean" else f"{artifact} {severity}"
        for ax, name in zip(axes, ("mean_shift", "var_log_ratio")):
            ax.plot(s["depth"], s[name], marker=".", label=label, **style)
    axes[0].set_ylabel("|mean - running mean| / running std", fontsize=8)
    axes[1].set_ylabel("log(var / running var)", fontsize=8)
    axes[1].axhline(0, color="0.6", lw=0.8, ls=":")
    for ax in axes:
        ax.set_xlabel("BN layer (depth)", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    axes[1].legend(fontsize=6, ncol=2, frameon=False)
    fig.suptitle("batch-norm input statistics vs the running statistics (eval mode)", fontsize=9)
    fig.tight_layout()
    return _save(fig, "bn_shift", folder, formats)


# ---- report sections ----------------------------------------------------------------


def _embed(paths: list[Path], title: str, out: Path) -> str:
    shown = [p for p in paths if p.suffix.lstrip(".") in EMBEDDABLE]
    if shown:
        return f"![{title}]({shown[0].relative_to(out).as_posix()})\n"
    return "".join(f"[{title} ({p.suffix.lstrip('.')})]({p.relative_to(out).as_posix()})\n" for p in paths)


def _header(res: Results) -> str:
    s, level = res.settings, res.settings.get("level", 0.95)
    runs = ", ".join(f"{run} ({norm}, seed {seed})" for run, (norm, seed) in res.runs.items())
    lines = [f"- RESULTS: `{res.folder}`", f"- runs: {runs}",
             f"- norms: {', '.join(f'{n} ({res.seeds_of(n)} seed(s))' for n in res.norms)}"]
    if res.slices:
        volumes = len({r['volume'] for r in res.slices})
        positives = ", ".join(f"{label} {sum(r[label].strip() in ('1', '1.0') for r in res.slices)}"
                              for label in LABELS if label in res.slices[0])
        lines.append(f"- test set: split `{s.get('split', '?')}`, {len(res.slices)} slices from {volumes} volumes"
                     + (f"; positive slices: {positives}" if positives else ""))
    else:
        lines.append(f"- split: `{s.get('split', '?')}`")
    lines += [f"- store: `{s.get('store', '?')}`",
              f"- artifact suite `{s.get('suite', '?')}`: {', '.join(res.artifacts) or 'none'}; "
              f"severities {', '.join(map(str, res.severities)) or 'none'}",
              f"- BN modes: {', '.join(s.get('bn_modes') or ['eval'])}; corruption seed {s.get('seed', '?')}"
              + (f"; predicted on {s['device']}, precision {s.get('precision', '?')}" if "device" in s else ""),
              f"- intervals: {s.get('bootstrap', '?')} volume-level bootstrap resamples, "
              f"{100 * float(level):g}% percentile CI; paired p-values two-sided from the same resamples"
              if s.get("bootstrap", 1) else "- intervals: none (evaluated without bootstrap)"]
    return "## What was evaluated\n\n" + "\n".join(lines) + "\n"


def _clean_section(res: Results) -> str:
    header = ["mean AUC", *LABELS, "sensitivity", "specificity", "balanced acc."]

    def cells(get) -> list[str]:
        return [_ci(*get("auc", "mean")), *(_ci(*get("auc", label)) for label in LABELS),
                *(_ci(*get(metric, "mean")) for metric in THRESHOLD_METRICS)]

    per_run = [[run, norm, str(seed), *cells(lambda m, lab, run=run: res.cell(run, "eval", "clean", 0, lab, m))]
               for run, (norm, seed) in res.runs.items() if run in res.runs_of(norm, "eval")]
    per_norm = [[norm, str(res.seeds_of(norm)),
                 *cells(lambda m, lab, norm=norm: res.model_cell((norm, "eval"), "clean", 0, lab, m))]
                for norm in res.norms if res.runs_of(norm, "eval")]
    text = ("## Clean performance\n\nPer run (bn_mode eval); AUC per label, and sensitivity / specificity / "
            "balanced accuracy of the mean label at the operating point chosen on the clean validation set. "
            "Brackets: bootstrap CI.\n\n" + _table(["run", "norm", "seed", *header], per_run))
    if len(per_norm) < len(per_run):  # some norm has several seeds
        text += ("\nPer norm, mean over seeds (brackets: the CI for one seed, the min..max over seeds for several)."
                 "\n\n" + _table(["norm", "seeds", *header], per_norm))
    return text


def _robustness_section(res: Results, models, robust: dict, figure: list[Path], out: Path) -> str:
    sev = _severity_text(res.severities)
    summary = [[a, *(f"{_num(robust[m, a][1])} ({_num(-robust[m, a][2], sign=True)})" for m in models)]
               for a in res.artifacts]
    means = [_nanmean([robust[m, a][1] for a in res.artifacts]) for m in models]
    summary.append(["**all artifacts**", *(f"{_num(v)} ({_num(v - res.model_cell(m, 'clean', 0)[0], sign=True)})"
                                           for m, v in zip(models, means))])
    full = [[a, _model_name(m), *(_num(v) for v in res.curve(m, a)[0]), _num(robust[m, a][1]), _num(robust[m, a][2])]
            for a in res.artifacts for m in models]
    return ("## Robustness to artifacts\n\n" + _embed(figure, "mean AUC vs severity", out)
            + f"\nMean AUC per artifact, one line per norm (mean over seeds; band: CI for one seed, range over seeds "
            f"for several); dashed: with BN-adapt; dotted: chance.\n\nMean AUC averaged over severities {sev} "
            f"(in brackets: the change from clean).\n\n" + _table(["artifact", *map(_model_name, models)], summary)
            + "\nMean AUC per severity; drop = clean - the mean over severities.\n\n"
            + _table(["artifact", "model", "clean", *map(str, res.severities), f"mean {sev}", "drop"], full))


def _ce_section(res: Results, names, errors: dict, reference: str, note: str, figure, out) -> str:
    ce = [[n, *(_num(errors[n]["ce"].get(a)) for a in res.artifacts), _num(errors[n]["mce"]),
           _num(errors[n]["relative_mce"])] for n in names]
    relative = [[n, *(f"{_num(errors[n]['relative_ce'].get(a))} / {_num(errors[n]['degradation'].get(a))}"
                      for a in res.artifacts)] for n in names]
    return (f"## Corruption errors\n\n{note}Error = 1 - mean AUC (norm values: mean over seeds). "
            f"CE = sum over severities of a model's error / the same sum for **{reference}** (ImageNet-C); "
            f"mCE = mean CE over artifacts; relative CE subtracts each model's clean error first. Below 1: fewer "
            f"errors than {reference}.\n\n" + _embed(figure, "corruption error", out) + "\n"
            + _table(["model", *res.artifacts, "mCE", "relative mCE"], ce)
            + "\nRelative CE / ROOD-MRI degradation (weighted mean drop of AUC from clean, weight (2/3)^s at "
            "severity s).\n\n"
            + _table(["model", *res.artifacts], relative))


def _matrix(res: Results, cells: dict) -> str:
    """Rows: artifacts; columns: severities and their mean; cells: difference [CI] p."""
    rows = []
    for artifact in res.artifacts:
        diffs = [cells.get((artifact, s), (math.nan,) * 4) for s in res.severities]
        mean = _nanmean([d[0] for d in diffs])
        rows.append([artifact, *(_ci(*d[:3], sign=True) + _p(d[3]) for d in diffs), _num(mean, sign=True)])
    clean = cells.get(("clean", 0), (math.nan,) * 4)
    return (f"Clean: {_ci(*clean[:3], sign=True)}{_p(clean[3])}.\n\n"
            + _table(["artifact", *map(str, res.severities), "mean"], rows))


def _comparison_section(res: Results, pairs: dict) -> str:
    between = {k: v for k, v in pairs.items() if k[0] != k[1]}
    if not between:
        return "## Paired comparisons\n\nNo paired comparisons between runs in comparisons.csv.\n"
    text = ("## Paired comparisons\n\nDifference in mean AUC (second run minus first) on the same slices and "
            "corruptions, with the paired bootstrap CI and two-sided p; * marks p < 0.05 (no correction for "
            "the many tests). p >= 0.05 means these data do not show a difference, not that there is none.\n")
    for (a, b, mode_a, mode_b), cells in between.items():
        text += (f"\n### {b} ({res.runs.get(b, ('?',))[0]}, {mode_b}) - {a} ({res.runs.get(a, ('?',))[0]}, {mode_a})\n\n"
                 + _matrix(res, cells))
    return text


def _adapt_section(res: Results, pairs: dict, adapted: list[str], figure, out) -> str:
    text = ("## BN adaptation\n\nBN-adapt (AdaBN) re-estimates batch norm's running statistics on each corrupted "
            "test set before predicting; the gain is its mean AUC minus that of the same run in eval mode.\n\n"
            + _embed(figure, "BN-adapt gain", out))
    own = {k: v for k, v in pairs.items() if k[0] == k[1]}
    for (run, _, _, _), cells in own.items():
        text += f"\n### {run}: adapt - eval\n\n" + _matrix(res, cells)
    if not own:
        for norm in adapted:
            cells = {(a, s): (res.model_cell((norm, "adapt"), a, s)[0] - res.model_cell((norm, "eval"), a, s)[0],
                              math.nan, math.nan, math.nan) for a in [*res.artifacts, "clean"] for s in [0, *res.severities]}
            text += f"\n### {norm} (mean over seeds): adapt - eval (no paired tests in comparisons.csv)\n\n" + _matrix(res, cells)
    return text


def _bn_shift_section(res: Results, shift: dict, figure, out) -> str:
    rows = [[a, *(_num(_nanmean(shift[a, s]["mean_shift"])) if (a, s) in shift else "n/a" for s in res.severities)]
            for a in res.artifacts]
    clean = _nanmean(shift["clean", 0]["mean_shift"]) if ("clean", 0) in shift else math.nan
    return ("## Batch-norm statistics shift\n\nIn eval mode BN normalises with running statistics from training. "
            "mean_shift = mean over channels of |mean of the layer's input - running mean| / running std; "
            "var_log_ratio = mean of log(input variance / running variance). Large values mean BN's running statistics "
            "no longer match the input, so the layer no longer standardises it; AdaBN removes exactly this mismatch, "
            "group and layer norm never have it.\n\n" + _embed(figure, "BN statistics shift", out)
            + f"\nmean_shift averaged over layers and BN runs, per severity (clean slices: {_num(clean)}).\n\n"
            + _table(["artifact", *map(str, res.severities)], rows))


def _overlap(a, b) -> bool:
    return all(np.isfinite([a[1], a[2], b[1], b[2]])) and a[1] <= b[2] and b[1] <= a[2]


def _findings(res: Results, models, robust, errors, reference, pairs, shift) -> list[str]:
    """Three to six sentences stated from the numbers only."""
    found = []
    norms = [m for m in models if m[1] == "eval"]
    clean = {m: res.model_cell(m, "clean", 0) for m in norms}
    ranked = sorted((m for m in norms if np.isfinite(clean[m][0])), key=lambda m: -clean[m][0])
    if ranked:
        best, rest = ranked[0], ranked[1:]
        text = f"On clean slices {best[0]} has the highest mean AUC ({_num(clean[best][0])}"
        text += "".join(f"; {m[0]} {_num(clean[m][0])}" for m in rest) + ")"
        overlapping = [m[0] for m in rest if _overlap(clean[best], clean[m])]
        if overlapping:
            text += f"; its interval overlaps that of {', '.join(overlapping)}, so this ordering is not established"
        found.append(text + ".")
    mce = {_model_name(m): errors[_model_name(m)]["mce"] for m in norms} if errors else {}
    mce = {n: v for n, v in mce.items() if np.isfinite(v)}
    if len(mce) > 1:
        low = min(mce, key=mce.get)
        found.append(f"Relative to {reference} (mCE 1 by definition), {low} has the lowest mCE ({_num(mce[low])}; "
                     + ", ".join(f"{n} {_num(v)}" for n, v in mce.items() if n != low)
                     + "). mCE has no interval here; the paired comparisons below carry the uncertainty.")
    drops = {k: v[2] for k, v in robust.items() if k[0][1] == "eval" and np.isfinite(v[2])}
    if drops and max(drops.values()) > 0:
        (model, artifact) = max(drops, key=drops.get)
        c, m, d = robust[model, artifact]
        others = [f"{o[0]} {_num(-robust[o, artifact][2], sign=True)}" for o in norms
                  if o != model and np.isfinite(robust[o, artifact][2])]
        found.append(f"The largest drop from clean is {model[0]} under {artifact}: mean AUC {_num(c)} -> {_num(m)} "
                     f"averaged over severities {_severity_text(res.severities)} ({_num(-d, sign=True)})"
                     + (f"; under the same artifact {', '.join(others)}" if others else "") + ".")
    elif drops:
        found.append("No norm loses mean AUC under any artifact on average over the severities.")
    for norm in [m[0] for m in models if m[1] == "adapt"]:
        gains = np.array([res.model_cell((norm, "adapt"), a, s)[0] - res.model_cell((norm, "eval"), a, s)[0]
                          for a in res.artifacts for s in res.severities], dtype=float)
        gains = gains[np.isfinite(gains)]
        if not gains.size:
            continue
        tests = [c for (a, b, _, _), cells in pairs.items() if a == b and res.runs.get(a, ("",))[0] == norm
                 for (artifact, _), c in cells.items() if artifact != "clean" and np.isfinite(c[3])]
        text = (f"BN-adapt changes {norm}'s mean AUC by {_num(gains.mean(), sign=True)} on average over {gains.size} "
                f"artifact x severity cells (higher in {int((gains > 0).sum())})")
        if tests:
            up = sum(c[3] < ALPHA and c[0] > 0 for c in tests)
            down = sum(c[3] < ALPHA and c[0] < 0 for c in tests)
            text += (f"; p < 0.05 in {up + down} of {len(tests)} paired tests ({up} gains, {down} losses)" if up + down
                     else f"; none of {len(tests)} paired tests gives p < 0.05, so these data do not show a change")
        name = _model_name((norm, "adapt"))
        if errors and name in errors and np.isfinite(errors[name]["mce"]):
            text += f"; its mCE is {_num(errors[name]['mce'])} against {_num(errors[norm]['mce'])} without adaptation"
        found.append(text + ".")
    by_norms = {}
    for (a, b, mode_a, mode_b), cells in pairs.items():
        if a != b:
            key = (res.runs.get(b, ("?",))[0], res.runs.get(a, ("?",))[0])
            by_norms.setdefault(key, []).extend(c for (art, _), c in cells.items() if art != "clean" and np.isfinite(c[3]))
    counts = []
    for (norm_b, norm_a), tests in by_norms.items():
        up = sum(c[3] < ALPHA and c[0] > 0 for c in tests)
        down = sum(c[3] < ALPHA and c[0] < 0 for c in tests)
        if tests:
            counts.append(f"{norm_b} vs {norm_a}: p < 0.05 in {up + down} of {len(tests)} "
                          f"({up} in favour of {norm_b}, {down} of {norm_a})")
    if counts:
        found.append("Paired artifact x severity tests, " + "; ".join(counts)
                     + "; where p >= 0.05 these data show no difference.")
    top = max(res.severities) if res.severities else None
    at_top = {a: _nanmean(shift[a, top]["mean_shift"]) for a in res.artifacts if (a, top) in shift}
    at_top = {a: v for a, v in at_top.items() if np.isfinite(v)}
    if at_top:
        artifact = max(at_top, key=at_top.get)
        text = (f"Batch norm's input statistics move furthest from the running ones under {artifact} at severity {top} "
                f"(mean shift {_num(at_top[artifact], 2)} running standard deviations, averaged over layers")
        if ("clean", 0) in shift:
            text += f", against {_num(_nanmean(shift['clean', 0]['mean_shift']), 2)} on clean slices"
        found.append(text + ").")
    return found[:6]


# ---- the report -----------------------------------------------------------------------


def _formats(formats) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(str(f).lower().lstrip(".") for f in (formats or ())))
    unknown = [f for f in chosen if f not in FORMATS]
    if not chosen or unknown:
        raise MrRobustError(f"figure format(s) {', '.join(unknown) or 'none given'}: choose from {', '.join(FORMATS)} "
                            f"(e.g. --formats png,pdf)")
    return chosen


def report(results: Path, out: Path, *, reference_norm: str = "batch", formats=("png",)) -> dict:
    """Write REPORT `out`: `figures/<name>.<format>` then `report.md` (tables, figures, findings)
    from the RESULTS folder `results`. Returns {"report": path, "figures": [paths]}."""
    formats = _formats(formats)
    res = load_results(results)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MrRobustError(f"{out} exists and is not a folder; choose another --out")
    figures_dir = out / "figures"
    try:
        figures_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MrRobustError(f"cannot write the report to {out} ({err.strerror}); choose a writable --out") from None
    models = res.models()
    adapted = [m[0] for m in models if m[1] == "adapt"]
    reference, note = reference_norm, ""
    if (reference_norm, "eval") not in models and models:
        reference = models[0][0]
        note = f"The reference norm {reference_norm} is not among the runs; CE below is relative to {reference}.\n\n"
    robust = _robustness(res, models)
    pairs = _paired(res, reference)
    shift = _bn_shift_means(res)
    written = {}
    if res.artifacts and models:
        written["auc_vs_severity"] = _figure_auc(res, models, figures_dir, formats)
    errors, names = {}, [_model_name(m) for m in models]
    if res.artifacts and res.severities and (reference, "eval") in models:
        from mrrobust.metrics import corruption_errors

        errors = corruption_errors(_corruption_table(res, models), _model_name((reference, "eval")),
                                   severities=res.severities)
        written["corruption_error"] = _figure_ce(res, names, errors, reference, figures_dir, formats)
    if adapted and res.artifacts:
        written["bn_adapt_gain"] = _figure_gain(res, adapted, figures_dir, formats)
    top = max(res.severities) if res.severities else 0
    shown = [k for k in [("clean", 0), *((a, top) for a in res.artifacts)] if k in shift]
    if shown:
        written["bn_shift"] = _figure_bn_shift(res, shift, shown, figures_dir, formats)

    findings = _findings(res, models, robust, errors, reference, pairs, shift)
    seeds = {res.seeds_of(n) for n in res.norms}
    caveat = ("One seed per norm: the intervals describe test-set sampling (volume bootstrap), not training variability."
              if seeds == {1} else "Norm values are means over seeds; per-run intervals are in the tables.")
    sections = ["# mrrobust report: normalisation vs MR artifacts\n", _header(res),
                "## Key findings\n\n" + "".join(f"- {f}\n" for f in findings) + f"\n{caveat}\n",
                _clean_section(res)]
    if res.artifacts and models:
        sections.append(_robustness_section(res, models, robust, written["auc_vs_severity"], out))
    if errors:
        sections.append(_ce_section(res, names, errors, reference, note, written["corruption_error"], out))
    elif note:
        sections.append("## Corruption errors\n\n" + note)
    sections.append(_comparison_section(res, pairs))
    if adapted:
        sections.append(_adapt_section(res, pairs, adapted, written.get("bn_adapt_gain", []), out))
    if shown:
        sections.append(_bn_shift_section(res, shift, written["bn_shift"], out))
    else:
        sections.append("## Batch-norm statistics shift\n\nNo BN statistics in this RESULTS folder (no batch-norm run "
                        "evaluated in eval mode, or bn_shift.csv absent).\n")
    path = out / "report.md"
    try:
        atomic_write(path, lambda temp: temp.write_text("\n".join(sections)))
    except OSError as err:
        raise MrRobustError(f"cannot write {path}: {err.strerror or err}; choose a writable --out") from None
    for stem in FIGURES:  # figures of an earlier report that this one no longer has
        for fmt in FORMATS:
            if fmt not in formats or stem not in written:
                (figures_dir / f"{stem}.{fmt}").unlink(missing_ok=True)
    return {"report": path, "figures": [p for paths in written.values() for p in paths]}
