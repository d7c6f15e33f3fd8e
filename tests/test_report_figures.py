"""report figures: one fixed colour per norm in every figure and report, a line style per BN
mode, shared y axes, a colour bar on the heatmap, an interval on every estimate, severity axes
labelled with the artifact registry's ladders, and the reliability points against a direct
computation."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex
from report_results import write_results

from mrrobust.artifacts import ARTIFACTS
from mrrobust.report import figures as figures_module
from mrrobust.report import report


@pytest.fixture()
def captured(monkeypatch):
    """{figure name: matplotlib Figure} of every figure the report saves (inspected before closing)."""
    seen, save = {}, figures_module._save

    def keep(fig, name, *args, **kwargs):
        seen[name] = fig
        lines = {ax: [(l.get_label(), to_hex(l.get_color()), l.get_linestyle()) for l in ax.get_lines()]
                 for ax in fig.axes}
        seen[name + ":lines"] = lines
        seen[name + ":ticks"] = {ax: [t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes}
        seen[name + ":shared"] = [ax.get_shared_y_axes().joined(fig.axes[0], ax) for ax in fig.axes if ax.get_visible()]
        seen[name + ":bands"] = sum(len(ax.collections) for ax in fig.axes)
        return save(fig, name, *args, **kwargs)

    monkeypatch.setattr(figures_module, "DPI", 30)
    monkeypatch.setattr(figures_module, "_save", keep)
    return seen


def curve_lines(captured, name) -> dict:
    """{legend label: (colour, line style)} of the named lines of a figure (first occurrence)."""
    out = {}
    for lines in captured[name + ":lines"].values():
        for label, color, style in lines:
            if not label.startswith("_"):
                out.setdefault(label, (color, style))
    return out


def test_colours_per_norm_do_not_depend_on_arm_order(tmp_path, captured):
    write_results(tmp_path / "a", arms=("layer", "group", "batch"), artifacts=("noise", "motion"), severities=(1, 5),
                  modes=("eval", "adapt", "tent"), predictions=False)
    report(tmp_path / "a", tmp_path / "ra")
    lines = curve_lines(captured, "auc_vs_severity")
    colors = figures_module.NORM_COLORS
    assert lines["group"] == (colors["group"], "-") and lines["layer"] == (colors["layer"], "-")
    assert lines["batch"] == (colors["batch"], "-")
    assert lines["batch + AdaBN"] == (colors["batch"], "--") and lines["batch + TENT"] == (colors["batch"], ":")
    assert all(captured["auc_vs_severity:shared"])  # one y scale for every artifact panel
    assert captured["auc_vs_severity:bands"] >= 2 * 5  # an interval band per line and panel
    gain = curve_lines(captured, "adaptation_gain")
    assert gain == {"batch + AdaBN": (colors["batch"], "--"), "batch + TENT": (colors["batch"], ":")}
    # the severity axis names the ladder's physical parameters
    ticks = next(iter(captured["auc_vs_severity:ticks"].values()))
    noise = ARTIFACTS["noise"].ladder
    assert ticks == ["clean", f"1\n{noise[0]:g}", f"5\n{noise[4]:g}"]
    xlabel = captured["auc_vs_severity"].axes[0].get_xlabel()
    assert ARTIFACTS["noise"].unit in xlabel

    captured.clear()
    write_results(tmp_path / "b", arms=("group", "instance"), seeds=(0,), artifacts=("noise",), severities=(2,),
                  reference="group", predictions=False)
    report(tmp_path / "b", tmp_path / "rb")
    lines = curve_lines(captured, "auc_vs_severity")
    assert lines == {"group": (colors["group"], "-"), "instance": (colors["instance"], "-")}


def test_heatmap_has_a_colour_bar_and_marks_holm(tmp_path, captured):
    write_results(tmp_path / "r", arms=("batch", "group", "layer"), seeds=(0,), artifacts=("noise", "motion"),
                  severities=(1, 5), predictions=False)
    report(tmp_path / "r", tmp_path / "out")
    fig = captured["difference_heatmap"]
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "difference in mean AUC" in labels  # the colour bar
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 2 and all(ax.get_shared_y_axes().joined(panels[0], ax) for ax in panels)
    limits = {ax.get_images()[0].get_clim() for ax in panels}
    assert len(limits) == 1  # one shared colour scale
    stars = sum(t.get_text() == "*" for ax in panels for t in ax.texts)
    # p 0.001 -> Holm 0.01 wherever |difference| >= 0.05 (the fixture's rule)
    from report_results import arm_auc

    expected = sum(abs(arm_auc(arm, "eval", a, s) - arm_auc("batch", "eval", a, s)) >= 0.05
                   for arm in ("group", "layer") for a in ("noise", "motion") for s in (1, 5))
    assert stars == expected


def test_corruption_error_bars_carry_intervals(tmp_path, captured):
    write_results(tmp_path / "r", arms=("batch", "group"), seeds=(0,), artifacts=("noise",), severities=(1, 2),
                  predictions=False)
    report(tmp_path / "r", tmp_path / "out")
    ax = captured["corruption_error"].axes[0]
    from matplotlib.container import BarContainer

    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 3  # batch, group, batch + AdaBN: each with its error bars
    assert all(c.errorbar is not None for c in bars)


def test_reliability_points_match_a_direct_computation():
    rng = np.random.default_rng(1)
    targets = (rng.random((60, 2)) < 0.4).astype(float)
    scores = np.clip(0.2 + 0.5 * targets + rng.normal(0, 0.15, targets.shape), 0, 1)
    targets[3, 1] = np.nan  # an undefined target is left out
    volumes = np.repeat(np.arange(20), 3)
    points = figures_module.reliability_points(targets, scores, volumes, bins=10)
    known = np.isfinite(targets)
    y, p = targets[known], scores[known]
    which = np.minimum((p * 10).astype(int), 9)
    for b in range(10):
        inside = which == b
        if inside.any():
            assert points[b, 0] == pytest.approx(p[inside].mean())
            assert points[b, 1] == pytest.approx(y[inside].mean())
            assert 0 <= points[b, 2] <= points[b, 3] <= 1
        else:
            assert np.isnan(points[b]).all()


def test_reliability_interval_is_the_volume_bootstrap():
    """The per-volume-count interval equals the bootstrap written out slice by slice."""
    from mrrobust.metrics import cluster_weights

    rng = np.random.default_rng(2)
    targets = (rng.random((40, 3)) < 0.5).astype(float)
    scores = rng.random((40, 3))
    volumes = np.repeat(np.arange(8), 5)
    points = figures_module.reliability_points(targets, scores, volumes, bins=4, seed=3, level=0.9)
    draws = cluster_weights(np.arange(8), figures_module.RELIABILITY_RESAMPLES, 3)  # (B, volumes)
    weight = draws[:, np.repeat(volumes, 3)]  # each (slice, label) entry weighs as often as its volume was drawn
    y, p = targets.ravel(), scores.ravel()
    inside = np.minimum((p * 4).astype(int), 3) == 2
    freq = (weight[:, inside] @ y[inside]) / weight[:, inside].sum(axis=1)
    assert points[2, 2:] == pytest.approx(np.nanpercentile(freq, [5, 95]))


def test_ladder_labels_come_from_the_registry():
    labels, unit = figures_module.ladder("mrrobust", "motion", [1, 5])
    entry = ARTIFACTS["motion"].ladder
    assert labels == ["1\n" + "/".join(f"{v:g}" for v in entry[0]), "5\n" + "/".join(f"{v:g}" for v in entry[4])]
    assert unit == ARTIFACTS["motion"].unit
    assert figures_module.ladder("mrrobust", "made-up", [2]) == (["2"], "severity")
    assert figures_module.norm_color("batch") == figures_module.NORM_COLORS["batch"]
    assert figures_module.norm_color("weird") == figures_module.norm_color("weird")  # stable for other names
