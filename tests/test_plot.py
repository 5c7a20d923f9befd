"""Tests of the schedule picture."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from lightning_autolrs.plot import plot_schedule

from .helpers import sample


def test_plot_writes_a_png_with_both_panels(tmp_path) -> None:
    fig = plot_schedule(sample(), tmp_path / "s.png", title="t")
    data = (tmp_path / "s.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    ax_lr, ax_loss = fig.axes
    assert ax_lr.get_yscale() == "log"
    labels = ax_lr.get_legend_handles_labels()[1]
    assert {"warmup", "search trials", "exploit (chosen LR)", "diverged trial"} <= set(labels)
    assert "forecast of chosen LR" in ax_loss.get_legend_handles_labels()[1]
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]


def test_plot_shows_the_range_test(tmp_path) -> None:
    s = sample()
    s.settings["range_test"] = {"start_step": 0, "steps": 2, "min_lr": 0.001, "max_lr": 1.0}
    fig = plot_schedule(s, tmp_path / "s.png")
    ax_lr = fig.axes[0]
    assert "LR range test" in ax_lr.get_legend_handles_labels()[1]
    dotted = [line for line in ax_lr.get_lines() if line.get_linestyle() == ":"]
    assert sorted(line.get_ydata()[0] for line in dotted) == [0.001, 1.0]
    assert "LR range test" not in plot_schedule(sample()).axes[0].get_legend_handles_labels()[1]
