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


def test_plot_draws_no_forecast_against_the_training_loss_for_a_stage_judged_on_validation_probes() -> None:
    s = sample()
    s.stages[0]["signal"] = "val_loss"  # its forecast is a validation loss: not on the training-loss panel
    labels = plot_schedule(s).axes[1].get_legend_handles_labels()[1]
    assert "forecast of chosen LR" not in labels and "loss reached" not in labels


def test_plot_shows_the_range_test(tmp_path) -> None:
    s = sample()
    s.settings["range_test"] = {"start_step": 0, "steps": 2, "min_lr": 0.001, "max_lr": 1.0}
    fig = plot_schedule(s, tmp_path / "s.png")
    ax_lr = fig.axes[0]
    assert "LR range test" in ax_lr.get_legend_handles_labels()[1]
    dotted = [line for line in ax_lr.get_lines() if line.get_linestyle() == ":"]
    assert sorted(line.get_ydata()[0] for line in dotted) == [0.001, 1.0]
    assert "LR range test" not in plot_schedule(sample()).axes[0].get_legend_handles_labels()[1]


def test_plot_draws_a_warmup_and_range_test_cut_short_by_an_early_stop(tmp_path) -> None:
    """A run stopped inside its warmup (or range test) has fewer LRs than its settings planned: the picture draws the
    steps that ran (it used to raise matplotlib's "x and y must have same first dimension")."""
    s = sample()
    s.lrs, s.stages, s.losses = [0.01, 0.02, 0.03], [], [1.0, 0.9, 0.8]
    s.settings = {"warmup_steps": 300}
    warmup = [line for line in plot_schedule(s, tmp_path / "w.png").axes[0].get_lines() if line.get_label() == "warmup"]
    assert [list(line.get_ydata()) for line in warmup] == [[0.01, 0.02, 0.03]]
    s.settings = {"range_test": {"start_step": 0, "steps": 50, "min_lr": None, "max_lr": None}}
    sweep = [line for line in plot_schedule(s).axes[0].get_lines() if line.get_label() == "LR range test"]
    assert [list(line.get_xdata()) for line in sweep] == [[0, 1, 2]]
    assert (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_draws_the_schedule_of_a_run_without_a_search() -> None:
    """A budget too small for a search, with a warmup you gave: the warmup, then the LR held and decayed, no stage;
    both are drawn."""
    s = sample()
    s.lrs, s.stages, s.losses = [0.05, 0.1, 0.1, 0.075, 0.025, 0.001], [], []
    lines = {line.get_label(): list(line.get_ydata()) for line in plot_schedule(s).axes[0].get_lines()}
    assert lines["warmup"] == [0.05, 0.1] and lines["LR (no search)"] == [0.1, 0.075, 0.025, 0.001]
