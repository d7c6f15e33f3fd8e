"""The report's figures (matplotlib, Agg backend), each written atomically in every format
asked for, plus PNG bytes for the self-contained HTML.

Conventions shared by every figure and every report: one fixed colour per norm
(`NORM_COLORS`), one line style per BN mode (`MODE_STYLES`), a band or error bar for every
estimate that has an interval, shared y axes within a figure, a colour bar on heatmaps,
and severity axes labelled with the artifact ladder's physical parameters.
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mrrobust.atomic import atomic_write
from mrrobust.errors import MrRobustError
from mrrobust.report import statistics as st
from mrrobust.report.loading import CLEAN, Results

NORM_COLORS = {"batch": "#1f77b4", "group": "#d62728", "layer": "#2ca02c", "instance": "#9467bd",
               "none": "#7f7f7f"}
OTHER_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")  # norms outside the table
MODE_STYLES = {"eval": "-", "adapt": "--", "prior": "-.", "tent": ":"}
MODE_NAMES = {"eval": "eval", "adapt": "AdaBN", "prior": "BN-adapt prior", "tent": "TENT"}
ARM_MARKERS = ("o", "s", "^", "D", "v")  # arms of one norm (e.g. with and without augmentation)
DPI = 120
CALIBRATION_BINS = 15  # evaluate's ECE bins when evaluation.json does not say
RELIABILITY_RESAMPLES = 200


def norm_color(norm: str) -> str:
    """The fixed colour of `norm`; other names get a stable colour from their text."""
    return NORM_COLORS.get(norm, OTHER_COLORS[zlib.crc32(norm.encode()) % len(OTHER_COLORS)])


def mode_style(mode: str) -> str:
    return MODE_STYLES.get(mode, (0, (1, 1)))


def model_name(arm: str, mode: str) -> str:
    return arm if mode == "eval" else f"{arm} + {MODE_NAMES.get(mode, mode)}"


@dataclass
class Figure:
    """A written figure: its name, files (one per format) and PNG bytes for the HTML."""

    name: str
    title: str
    paths: list[Path]
    png: bytes = field(repr=False, default=b"")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, name: str, title: str, folder: Path, formats) -> Figure:
    """Write `fig` as `folder/name.<format>` for every format, atomically, and keep PNG bytes; closes it."""
    plt = _pyplot()
    paths = []
    try:
        for fmt in formats:
            path = folder / f"{name}.{fmt}"
            atomic_write(path, lambda temp, fmt=fmt: fig.savefig(temp, dpi=DPI, format=fmt))
            paths.append(path)
        if "png" in formats:  # the HTML embeds the written file's bytes; else render once more
            png = (folder / f"{name}.png").read_bytes()
        else:
            buffer = io.BytesIO()
            fig.savefig(buffer, dpi=DPI, format="png")
            png = buffer.getvalue()
    except OSError as err:
        raise MrRobustError(f"cannot write {folder / name}: {err.strerror or err}; choose a writable --out") from None
    finally:
        plt.close(fig)
    return Figure(name, title, paths, png)


def _grid(plt, panels: int, width=2.6, height=2.2, sharey=True):
    cols = min(4, max(1, panels))
    rows = math.ceil(max(1, panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.7), squeeze=False, sharey=sharey)
    axes = list(axes.flat)
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes


def _entry(value) -> str:
    if isinstance(value, (list, tuple)):
        return "/".join(_entry(v) for v in value)
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def ladder(suite: str, artifact: str, severities) -> tuple[list[str], str]:
    """Tick labels "s\\nparameters" for `severities` from the artifact registry, and the
    ladder's unit; plain severities when the artifact is not registered."""
    try:
        from mrrobust.artifacts import lookup

        entry = lookup(artifact, suite)
    except Exception:  # an unknown suite or artifact: label by severity alone
        return [str(s) for s in severities], "severity"
    return [f"{s}\n{_entry(entry.ladder[s - 1])}" if 1 <= s <= len(entry.ladder) else str(s)
            for s in severities], entry.unit


def _severity_axis(ax, res: Results, artifact: str, clean: bool = True) -> np.ndarray:
    labels, unit = ladder(res.settings.get("suite", "mrrobust"), artifact, res.severities)
    x = np.arange(len(res.severities) + clean)
    ax.set_xticks(x, (["clean"] if clean else []) + labels, fontsize=6)
    ax.set_xlabel(f"severity: {unit}", fontsize=6)
    ax.set_title(artifact, fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    return x


def _models(res: Results) -> list[tuple[str, str]]:
    return [(arm, mode) for arm in res.arms for mode in res.modes_of(arm)]


def _markers(res: Results) -> dict:
    seen, markers = {}, {}
    for arm in res.arms:
        norm = res.norm_of(arm)
        markers[arm] = ARM_MARKERS[seen.get(norm, 0) % len(ARM_MARKERS)]
        seen[norm] = seen.get(norm, 0) + 1
    return markers


def _legend(fig, axes) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)


def auc_vs_severity(res: Results, folder: Path, formats) -> Figure:
    """Mean AUC vs severity per artifact, one line per arm and BN mode, band = the arm's interval."""
    plt, markers = _pyplot(), _markers(res)
    fig, axes = _grid(plt, len(res.artifacts))
    for ax, artifact in zip(axes, res.artifacts):
        x = _severity_axis(ax, res, artifact)
        for arm, mode in _models(res):
            value, low, high = res.curve(arm, mode, artifact)
            color = norm_color(res.norm_of(arm))
            ax.plot(x, value, linestyle=mode_style(mode), marker=markers[arm], ms=3, color=color,
                    label=model_name(arm, mode))
            ax.fill_between(x, low, high, color=color, alpha=0.12, lw=0)
        ax.axhline(st.CHANCE, color="0.5", lw=0.7)
    axes[0].set_ylabel("mean AUC", fontsize=7)
    _legend(fig, axes)
    fig.suptitle("mean AUC vs severity (band: interval; grey: chance)", fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return _save(fig, "auc_vs_severity", "mean AUC vs severity", folder, formats)


def corruption_error(res: Results, errors: dict, reference: str, folder: Path, formats) -> Figure:
    """CE per artifact and mCE, one bar per arm and BN mode (error bar: interval where known)."""
    plt = _pyplot()
    models = list(errors)
    names = [*res.artifacts, "mCE"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 1), 2.8))
    width = 0.8 / max(1, len(models))
    for k, model in enumerate(models):
        arm, mode = model
        values = np.array([errors[model]["ce"].get(a, st.NAN3) for a in res.artifacts] + [errors[model]["mce"]],
                          dtype=float)
        x = np.arange(len(names)) + (k - (len(models) - 1) / 2) * width
        ax.bar(x, values[:, 0], width, color=norm_color(res.norm_of(arm)), alpha=0.85 if mode == "eval" else 0.45,
               hatch=None if mode == "eval" else "//", label=model_name(arm, mode),
               yerr=_yerr(values), capsize=2, error_kw=dict(lw=0.7))
    ax.axhline(1.0, color="0.3", lw=0.8)
    ax.set_xticks(np.arange(len(names)), names, fontsize=7, rotation=30)
    ax.set_ylabel(f"CE (relative to {reference})", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=6, frameon=False, ncol=2)
    fig.tight_layout()
    return _save(fig, "corruption_error", "corruption error", folder, formats)


def _yerr(values: np.ndarray):
    """(2, K) distances to the interval ends; None when no interval is known."""
    low, high = values[:, 0] - values[:, 1], values[:, 2] - values[:, 0]
    if not (np.isfinite(low).any() and np.isfinite(high).any()):
        return None
    return np.nan_to_num(np.vstack([low, high]), nan=0.0).clip(min=0)


def adaptation_gain(res: Results, folder: Path, formats) -> Figure:
    """Gain in mean AUC of every adaptation over eval mode vs severity, per artifact (band:
    the paired interval from arm_comparisons.csv where present)."""
    plt, markers = _pyplot(), _markers(res)
    adapted = [(arm, mode) for arm, mode in _models(res) if mode != "eval" and "eval" in res.modes_of(arm)]
    fig, axes = _grid(plt, len(res.artifacts))
    for ax, artifact in zip(axes, res.artifacts):
        x = _severity_axis(ax, res, artifact)
        for arm, mode in adapted:
            points = []
            for a, s in [(CLEAN, 0), *((artifact, s) for s in res.severities)]:
                row = res.comparison(arm, arm, "eval", mode, a, s)
                points.append((row["difference"], row["ci_low"], row["ci_high"]) if row else
                              (res.cell(arm, mode, a, s)[0] - res.cell(arm, "eval", a, s)[0], math.nan, math.nan))
            value, low, high = np.array(points, dtype=float).T
            color = norm_color(res.norm_of(arm))
            ax.plot(x, value, linestyle=mode_style(mode), marker=markers[arm], ms=3, color=color,
                    label=model_name(arm, mode))
            ax.fill_between(x, low, high, color=color, alpha=0.12, lw=0)
        ax.axhline(0, color="0.5", lw=0.7)
    axes[0].set_ylabel("gain in mean AUC over eval", fontsize=7)
    _legend(fig, axes)
    fig.suptitle("test-time adaptation: gain over eval mode (band: paired interval)", fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return _save(fig, "adaptation_gain", "adaptation gain", folder, formats)


def difference_heatmap(res: Results, reference: str, folder: Path, formats) -> Figure | None:
    """Per arm: mean AUC minus the reference arm's, artifact x severity (eval mode), one shared
    colour scale with a colour bar; * marks cells significant after Holm (the cell family)."""
    others = [arm for arm in res.arms if arm != reference]
    grids = {}
    for arm in others:
        grid = np.full((len(res.artifacts), len(res.severities)), math.nan)
        stars = np.zeros(grid.shape, bool)
        for i, artifact in enumerate(res.artifacts):
            for j, severity in enumerate(res.severities):
                row = res.comparison(reference, arm, "eval", "eval", artifact, severity)
                if row is not None:
                    grid[i, j], stars[i, j] = row["difference"], st.significant(row, "p_holm")
        if np.isfinite(grid).any():
            grids[arm] = (grid, stars)
    if not grids:
        return None
    plt = _pyplot()
    limit = max(float(np.nanmax(np.abs(g))) for g, _ in grids.values()) or 1e-3
    fig, axes = plt.subplots(1, len(grids), figsize=(0.5 * len(res.severities) * len(grids) + 2.2,
                                                     0.3 * len(res.artifacts) + 1.4), squeeze=False, sharey=True)
    for ax, (arm, (grid, stars)) in zip(axes[0], grids.items()):
        image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for i, j in zip(*np.nonzero(stars)):
            ax.text(j, i, "*", ha="center", va="center", fontsize=8,
                    color="white" if abs(grid[i, j]) > 0.6 * limit else "black")
        ax.set_xticks(range(len(res.severities)), [str(s) for s in res.severities], fontsize=6)
        ax.set_yticks(range(len(res.artifacts)), res.artifacts, fontsize=6)
        ax.set_xlabel("severity (parameters: the ladder table)", fontsize=6)
        ax.set_title(f"{arm} - {reference}", fontsize=7)
    bar = fig.colorbar(image, ax=list(axes[0]), shrink=0.9)
    bar.set_label("difference in mean AUC", fontsize=6)
    bar.ax.tick_params(labelsize=6)
    return _save(fig, "difference_heatmap", "difference in mean AUC against the reference", folder, formats)


def reliability_points(targets: np.ndarray, scores: np.ndarray, volumes: np.ndarray, bins: int = CALIBRATION_BINS,
                       seed: int = 0, level: float = 0.95) -> np.ndarray:
    """(bins, 4): per equal-width bin of predicted probability, (mean predicted, observed
    frequency, its low, its high), every label's (target, score) pooled; targets and scores
    (N, L), volumes (N,); NaN targets and NaN scores (a MODEL's absent labels) are left
    out. The interval is the `level` percentile
    interval of a volume bootstrap (`metrics.cluster_weights` over the distinct volumes), so
    correlated slices of a knee do not narrow it; it works on per-volume counts (B x V)."""
    from mrrobust.metrics import cluster_weights

    known = np.isfinite(targets) & np.isfinite(scores)
    y, p = targets[known], scores[known]
    distinct, volume = np.unique(np.broadcast_to(volumes[:, None], targets.shape)[known], return_inverse=True)
    draws = cluster_weights(np.arange(distinct.size), RELIABILITY_RESAMPLES, seed)  # (B, V): times volume v drawn
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    points = np.full((bins, 4), math.nan)
    for b in range(bins):
        inside = which == b
        if not inside.any():
            continue
        n = np.bincount(volume[inside], minlength=distinct.size)  # (V,) entries of each volume in the bin
        positives = np.bincount(volume[inside], weights=y[inside], minlength=distinct.size)
        counts = draws @ n
        freq = np.divide(draws @ positives, counts, out=np.full(counts.shape, math.nan), where=counts > 0)
        low, high = (np.nanpercentile(freq, [50 * (1 - level), 50 * (1 + level)]) if np.isfinite(freq).any()
                     else (math.nan, math.nan))
        points[b] = (p[inside].mean(), y[inside].mean(), low, high)
    return points


def reliability_panels(res: Results, cells: dict) -> dict:
    """{arm: {(artifact, severity): reliability_points}} for clean and `cells[arm]` = (artifact,
    severity), each arm's runs' eval-mode predictions pooled; reads predictions/ (before anything
    is written: a damaged prediction file stops the report with one line). {} without slices.csv."""
    if not res.slices:
        return {}
    statistics = res.settings.get("statistics") or {}
    bins = int(statistics.get("ece_bins") or CALIBRATION_BINS)
    level = float(statistics.get("level", res.settings.get("level", 0.95)))
    targets = res.targets()
    volumes = np.array([row["volume"] for row in res.slices])
    panels = {}
    for arm, worst in cells.items():
        curves = {}
        for artifact, severity in [(CLEAN, 0), worst]:
            scores = [res.predictions(run, "eval", artifact, severity) for run in res.arms[arm]]
            scores = [s for s in scores if s is not None]
            if scores:
                curves[artifact, severity] = reliability_points(
                    np.tile(targets, (len(scores), 1)), np.vstack(scores), np.tile(volumes, len(scores)),
                    bins=bins, seed=int(res.settings.get("seed", 0) or 0), level=level)
        if curves:
            panels[arm] = curves
    return panels


def reliability(res: Results, panels: dict, folder: Path, formats) -> Figure | None:
    """Reliability diagram per arm (`reliability_panels`): clean vs the arm's worst artifact at the
    highest severity; None when there is nothing to show."""
    if not panels:
        return None
    bins = len(next(iter(next(iter(panels.values())).values())))
    plt = _pyplot()
    fig, axes = _grid(plt, len(panels), width=2.6, height=2.5)
    for ax, (arm, curves) in zip(axes, panels.items()):
        color = norm_color(res.norm_of(arm))
        for (artifact, severity), points in curves.items():
            clean = artifact == CLEAN
            label = "clean" if clean else f"{artifact} {severity}"
            shown = np.isfinite(points[:, 0])
            ax.errorbar(points[shown, 0], points[shown, 1], yerr=_yerr(points[shown][:, [1, 2, 3]]),
                        fmt="o-" if clean else "s--", ms=3, lw=1, capsize=2, color=color,
                        alpha=1.0 if clean else 0.6, label=label)
        ax.plot([0, 1], [0, 1], color="0.5", lw=0.7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(arm, fontsize=8)
        ax.set_xlabel("mean predicted probability", fontsize=6)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, frameon=False)
    axes[0].set_ylabel("observed frequency", fontsize=7)
    fig.suptitle(f"reliability, labels pooled ({bins} bins, as the ECE; bars: volume bootstrap interval)", fontsize=8)
    fig.tight_layout()
    return _save(fig, "reliability", "reliability diagram", folder, formats)


def bn_shift(res: Results, shift: dict, shown: list, folder: Path, formats) -> Figure:
    """mean_shift and var_log_ratio vs BN layer depth: clean and each artifact at its highest
    severity (band: min..max over the batch-norm runs)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8))
    for artifact, severity in shown:
        s = shift[artifact, severity]
        color = "black" if artifact == CLEAN else f"C{res.artifacts.index(artifact) % 10}"
        label = "clean" if artifact == CLEAN else f"{artifact} {severity}"
        for ax, name in zip(axes, ("mean_shift", "var_log_ratio")):
            ax.plot(s["depth"], s[name][0], marker=".", color=color, lw=2 if artifact == CLEAN else 1, label=label)
            ax.fill_between(s["depth"], s[name][1], s[name][2], color=color, alpha=0.12, lw=0)
    axes[0].set_ylabel("|mean - running mean| / running std", fontsize=6)
    axes[1].set_ylabel("log(var / running var)", fontsize=6)
    axes[1].axhline(0, color="0.5", lw=0.7)
    for ax in axes:
        ax.set_xlabel("BN layer (depth)", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=6)
    axes[1].legend(fontsize=5, ncol=2, frameon=False)
    fig.suptitle("batch-norm input statistics vs the running statistics (eval mode; band: range over runs)", fontsize=7)
    fig.tight_layout()
    return _save(fig, "bn_shift", "BN statistics shift", folder, formats)


FIGURES = ("auc_vs_severity", "corruption_error", "adaptation_gain", "difference_heatmap", "reliability",
           "bn_shift")
