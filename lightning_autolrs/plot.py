"""Pictures of an AutoLRS run (matplotlib, headless Agg backend).

Top panel: the LR against the global step on a log axis; each search trial is drawn as its own short coloured
segment, each exploit phase as a thick dark line, warmup in grey, an LR range test in orange (with the range it found
as dotted lines). Bottom panel: the training loss per step (light) and
its running mean, with, per stage judged on the training loss, the best trial's forecast of the loss after τ steps (a
marker at the end of the exploit phase) next to the loss actually reached there (a stage judged on validation probes
forecasts a validation loss, which this panel does not draw).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from lightning_autolrs.schedule import Schedule

__all__ = ["plot_schedule"]


def _running_mean(values: list[float | None], window: int) -> tuple[list[int], list[float]]:
    xs, ys, buf = [], [], []
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            continue
        buf.append(v)
        if len(buf) > window:
            buf.pop(0)
        xs.append(i)
        ys.append(sum(buf) / len(buf))
    return xs, ys


def plot_schedule(schedule: Schedule, path: str | os.PathLike[str] | None = None, *, title: str | None = None) -> Any:
    """Draw ``schedule`` and optionally save it as a PNG.

    Args:
        schedule: a :class:`~lightning_autolrs.schedule.Schedule` (``AutoLRS.schedule`` or ``load_schedule(path)``).
        path: where to write the PNG (written atomically); ``None`` only returns the figure.
        title: figure title.

    Returns:
        The matplotlib ``Figure``.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7), dpi=110, layout="constrained")
    ax_lr, ax_loss = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    lrs = schedule.lrs
    cmap = plt.get_cmap("viridis")
    warm, warm_from = schedule.warmup_steps, schedule.warmup_start
    # (a run that stopped early, inside its warmup or range test, has fewer steps than the settings planned)
    warm_lrs = lrs[warm_from : warm_from + warm]
    if warm_lrs:
        ax_lr.plot(range(warm_from, warm_from + len(warm_lrs)), warm_lrs, color="0.6", lw=2, label="warmup")
    rt = schedule.settings.get("range_test")
    rt_end = 0  # the step after the range test's last (0: no range test)
    if isinstance(rt, dict) and rt.get("steps"):
        rt_start, rt_n = int(rt.get("start_step", 0)), int(rt["steps"])
        rt_lrs = lrs[rt_start : rt_start + rt_n]
        rt_end = rt_start + len(rt_lrs)
        ax_lr.plot(
            range(rt_start, rt_end),
            rt_lrs,
            color="tab:orange",
            lw=1.5,
            label="LR range test",
        )
        for bound in (rt.get("min_lr"), rt.get("max_lr")):
            if bound:
                ax_lr.axhline(bound, color="tab:orange", lw=0.8, ls=":")
    search_labelled = exploit_labelled = False
    for stage in schedule.stages:
        trials = stage.get("trials", [])
        for j, trial in enumerate(trials):
            start = trial.get("start_step")
            if start is None:
                continue
            n = int(trial.get("steps", 0))
            color = "tab:red" if trial.get("diverged") else cmap(j / max(1, len(trials) - 1))
            ax_lr.plot(
                [start, start + n],
                [trial["lr"]] * 2,
                color=color,
                lw=4,
                solid_capstyle="butt",
                label=None if search_labelled else "search trials",
            )
            search_labelled = True
        start, n = stage.get("exploit_start"), int(stage.get("exploit_steps", 0))
        exploit_lrs = lrs[start : start + n] if start is not None else []
        if start is not None and exploit_lrs:
            ax_lr.plot(
                range(start, start + len(exploit_lrs)),
                exploit_lrs,
                color="black",
                lw=2.5,
                label=None if exploit_labelled else "exploit (chosen LR)",
            )
            exploit_labelled = True
            ax_lr.axvline(stage["start_step"], color="0.85", lw=0.8, zorder=0)
            ax_lr.annotate(
                f"stage {stage['stage']}",
                (stage["start_step"], 1.0),
                xycoords=("data", "axes fraction"),
                va="top",
                ha="left",
                fontsize=8,
                color="0.35",
                xytext=(2, -2),
                textcoords="offset points",
            )
    if not schedule.stages:  # no search (a budget too small for one) or a run that stopped before its first stage
        rest = max(warm_from + len(warm_lrs), rt_end)
        if lrs[rest:]:
            ax_lr.plot(range(rest, len(lrs)), lrs[rest:], color="black", lw=2.5, label="LR (no search)")
    if any(t.get("diverged") for s in schedule.stages for t in s.get("trials", [])):
        ax_lr.plot([], [], color="tab:red", lw=4, label="diverged trial")
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(True, which="major", alpha=0.3)
    ax_lr.legend(loc="lower left", fontsize=8)
    if title:
        ax_lr.set_title(title)

    losses = schedule.losses
    if losses:
        finite = [(i, v) for i, v in enumerate(losses) if v is not None and math.isfinite(v)]
        if finite:
            ax_loss.plot(
                [i for i, _ in finite],
                [v for _, v in finite],
                color="tab:blue",
                alpha=0.25,
                lw=0.8,
                label="training loss",
            )
            xs, ys = _running_mean(losses, max(1, len(losses) // 100))
            ax_loss.plot(xs, ys, color="tab:blue", lw=1.5, label="running mean")
        shown = False
        for stage in schedule.stages:
            if stage.get("signal", "train_loss") != "train_loss":
                continue  # its forecast is of the validation loss, which this panel does not draw
            best = [
                t
                for t in stage.get("trials", [])
                if t.get("lr") == stage.get("best_lr") and t.get("predicted_loss") is not None
            ]
            start, n = stage.get("exploit_start"), int(stage.get("exploit_steps", 0))
            if not best or start is None or not n:
                continue
            end = start + n
            tail = [v for v in losses[max(start, end - max(1, n // 10)) : end] if v is not None]
            ax_loss.scatter(
                [end - 1],
                [best[0]["predicted_loss"]],
                marker="v",
                color="tab:orange",
                zorder=3,
                label=None if shown else "forecast of chosen LR",
            )
            if tail:
                ax_loss.scatter(
                    [end - 1],
                    [sum(tail) / len(tail)],
                    marker="o",
                    color="tab:green",
                    zorder=3,
                    label=None if shown else "loss reached",
                )
            shown = True
        positive = all(v is None or v > 0 for v in losses)
        if positive and finite and max(v for _, v in finite) / max(min(v for _, v in finite), 1e-12) > 30:
            ax_loss.set_yscale("log")
        ax_loss.legend(loc="upper right", fontsize=8)
    ax_loss.set_ylabel("training loss")
    ax_loss.set_xlabel("optimizer step (search trials included)")
    ax_loss.grid(True, alpha=0.3)

    if path is not None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.png")
        try:
            fig.savefig(tmp, format="png")
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
    return fig
