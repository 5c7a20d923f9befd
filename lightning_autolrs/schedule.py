"""The schedule AutoLRS found, as data: a versioned JSON format, with save, load and the exploit-only LR sequence.

Format (``"format": "lightning-autolrs/schedule"``, ``"version": 1``)::

    {
      "format": "lightning-autolrs/schedule",
      "version": 1,
      "settings": {"min_lr": ..., "max_lr": ..., "num_trials": ..., "tau": ..., ...,   # every AutoLRS argument
                   "total_steps": ... or null,                                      # (lightning_autolrs.settings)
                   "range_test": {"start_step", "steps", "lrs", "losses", "stopped_early", "min_lr", "max_lr"}},
      "lrs": [lr at global step 0, 1, ...],                # every optimizer step, search trials included
      "losses": [training loss at each step, or null],     # same length as lrs (may be empty)
      "stages": [
        {"stage": 0, "start_step": 0, "tau": 100, "tau_prime": 10, "lr_range": [lo, hi],
         "trials": [{"lr": ..., "start_step": 0, "predicted_loss": ... or null, "steps": 10, "diverged": false,
                     "final_loss": ... or null, "forecast": "exp"},
                    ...],
         "best_lr": ..., "search_steps": 100, "exploit_start": 100, "exploit_steps": 100,
         "fallbacks": [{"step": ..., "failed_lr": ..., "new_lr": ...}],
         "signal": "train_loss" or "val_loss", "probe_seconds": 0.0,
         "reused_trial": 3, "restarted": true},  # only when they acted
        ...
      ]
    }

``predicted_loss`` / ``final_loss`` are ``null`` for diverged trials; a trial's ``final_loss`` is the mean training loss
of the last quarter of its steps. The stage and trial layout is declared once, by
:class:`~lightning_autolrs.records.StageRecord` and :class:`~lightning_autolrs.records.TrialRecord` (the keys written
here are theirs). Unknown keys are ignored on load so later versions can add fields; those of the search options
since removed (a trial's ``aborted``, a stage's ``warm_start`` and ``stopped_early``) are not written again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_autolrs.exceptions import ScheduleFormatError
from lightning_autolrs.records import StageRecord, TrialRecord

__all__ = ["FORMAT", "VERSION", "Schedule", "load_schedule", "save_schedule", "summary_table"]

FORMAT = "lightning-autolrs/schedule"
VERSION = 1
_TRIAL_KEYS = TrialRecord.keys()
_STAGE_KEYS = tuple(k for k in StageRecord.keys() if k != "trials")


@dataclass
class Schedule:
    """A found schedule.

    Attributes:
        lrs: LR at every optimizer step of the run, search trials included.
        stages: one dict per stage (see the module docstring).
        settings: the AutoLRS settings of the run.
        losses: training loss at every optimizer step (``None`` where there was none), or empty.
    """

    lrs: list[float]
    stages: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    losses: list[float | None] = field(default_factory=list)

    @property
    def warmup_steps(self) -> int:
        """Steps of linear warmup in :attr:`lrs` (from :attr:`warmup_start` on)."""
        return int(self.settings.get("warmup_steps", 0) or 0)

    @property
    def warmup_start(self) -> int:
        """The index in :attr:`lrs` where the warmup begins: right after the LR range test when the sweep ran first
        (as it does since the warmup follows it: the first stage then starts ``warmup_steps`` after the sweep's end),
        else 0 (no range test, or a schedule saved when the sweep followed the warmup)."""
        rt = self.settings.get("range_test")
        if not self.warmup_steps or not isinstance(rt, dict) or not rt.get("steps"):
            return 0
        start = int(rt.get("start_step", 0))
        sweep_end = start + int(rt["steps"])
        first = self.stages[0].get("start_step") if self.stages else None
        # the sweep ran first: it began before the warmup could have ended, or the first stage began a warmup after it
        # (later, where a resume restarted the stage)
        ran_first = start < self.warmup_steps or (first is not None and int(first) >= sweep_end + self.warmup_steps)
        return sweep_end if ran_first else 0

    def exploit_lrs(self) -> list[float]:
        """The LR sequence with every search step removed: warmup, then each stage's exploit steps in order.

        Example:
            >>> s = Schedule(lrs=[0.1, 0.2, 0.3, 0.2, 0.2], stages=[{"exploit_start": 3, "exploit_steps": 2}])
            >>> s.exploit_lrs()
            [0.2, 0.2]
        """
        warm = self.warmup_start
        out = list(self.lrs[warm : warm + self.warmup_steps])
        for stage in self.stages:
            start, n = stage.get("exploit_start"), int(stage.get("exploit_steps", 0))
            if start is not None:
                out += self.lrs[int(start) : int(start) + n]
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of this schedule."""
        stages = []
        for stage in self.stages:
            entry = {k: stage[k] for k in _STAGE_KEYS if k in stage}
            entry["trials"] = [{k: t[k] for k in _TRIAL_KEYS if k in t} for t in stage.get("trials", [])]
            stages.append(entry)
        return {
            "format": FORMAT,
            "version": VERSION,
            "settings": dict(self.settings),
            "lrs": list(self.lrs),
            "losses": list(self.losses),
            "stages": stages,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> Schedule:
        """Read a JSON document; raises :class:`ScheduleFormatError` when it is not a schedule of a known version."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ScheduleFormatError(f"not an AutoLRS schedule: expected `format` == {FORMAT!r}.")
        version = doc.get("version")
        if not isinstance(version, int) or version > VERSION or version < 1:
            raise ScheduleFormatError(
                f"unsupported schedule `version` {version!r}; this lightning_autolrs reads versions 1..{VERSION}."
            )
        lrs, stages = doc.get("lrs"), doc.get("stages")
        if not isinstance(lrs, list) or not all(isinstance(x, int | float) for x in lrs):
            raise ScheduleFormatError("schedule `lrs` must be a list of numbers.")
        if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
            raise ScheduleFormatError("schedule `stages` must be a list of objects.")
        losses = doc.get("losses") or []
        if not isinstance(losses, list) or not all(x is None or isinstance(x, int | float) for x in losses):
            raise ScheduleFormatError("schedule `losses` must be a list of numbers or nulls.")
        return cls(
            lrs=[float(x) for x in lrs],
            stages=stages,
            settings=dict(doc.get("settings") or {}),
            losses=[None if x is None else float(x) for x in losses],
        )


def save_schedule(schedule: Schedule, path: str | os.PathLike[str]) -> Path:
    """Write ``schedule`` as JSON to ``path`` atomically (a temporary file renamed into place); returns the path."""
    path = Path(path)
    text = json.dumps(schedule.to_dict(), indent=1, allow_nan=False)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_schedule(path: str | os.PathLike[str]) -> Schedule:
    """Read a schedule written by :func:`save_schedule` (or ``AutoLRS.save_schedule``)."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ScheduleFormatError(f"{path} is not valid JSON: {err}") from err
    return Schedule.from_dict(doc)


def summary_table(schedule: Schedule) -> str:
    """A plain-text table of the stages: one row per trial (LR, forecast loss, the mean training loss of its last
    quarter) and the choice. A stage judged on validation probes forecasts the validation loss (a line under the
    table says so): its forecast and its trials' training losses are different quantities.

    Example:
        >>> s = Schedule(lrs=[0.1] * 4, stages=[{"stage": 0, "start_step": 0, "tau": 2, "tau_prime": 1,
        ...     "trials": [{"lr": 0.1, "predicted_loss": 0.5, "final_loss": 0.6, "diverged": False},
        ...                {"lr": 1.0, "predicted_loss": None, "final_loss": None, "diverged": True}],
        ...     "best_lr": 0.1, "exploit_start": 2, "exploit_steps": 2}])
        >>> print(summary_table(s))
        stage  steps       tau  tau'  trial        lr   forecast  train loss
            0  0-3           2     1      1  1.00e-01     0.5000      0.6000  <- chosen
                                          2  1.00e+00   diverged           -
    """

    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.4f}"

    rows = [
        f"{'stage':>5}  {'steps':<10} {'tau':>4}  {'tau' + chr(39):>4}  {'trial':>5}  {'lr':>8}  "
        f"{'forecast':>9}  {'train loss':>10}"
    ]
    rt = schedule.settings.get("range_test")
    if isinstance(rt, dict) and rt.get("steps"):
        rows.insert(
            0,
            f"LR range test: {rt['steps']} steps from step {rt.get('start_step', 0)} -> "
            f"min_lr {rt.get('min_lr', 0):.2e}, max_lr {rt.get('max_lr', 0):.2e}",
        )
    if not schedule.stages:
        rows.append("(no stage: this run did not search; see its warning or its end)")
    for st in schedule.stages:
        start = st.get("start_step", 0)
        ends = [int(t.get("start_step", start)) + int(t.get("steps", 0)) - 1 for t in st.get("trials", [])]
        if st.get("exploit_start") is not None:
            ends.append(int(st["exploit_start"]) + int(st.get("exploit_steps", 0)) - 1)
        end = max(ends, default=start)  # (a run stopped inside the search has no exploit phase)
        lead = f"{st.get('stage', '?'):>5}  {f'{start}-{end}':<10} {st.get('tau', ''):>4}  {st.get('tau_prime', ''):>4}"
        blank = " " * len(lead)
        trials = st.get("trials", [])
        best = st.get("best_lr")
        if not trials:
            chosen = "-" if best is None else f"{best:.2e}"
            rows.append(f"{lead}  {'-':>5}  {chosen:>8}  (no search: too few steps left; previous LR kept)")
        for j, t in enumerate(trials):
            forecast = "diverged" if t.get("diverged") else num(t.get("predicted_loss"))
            mark = "  <- chosen" if t.get("lr") == best and not t.get("diverged") else ""
            rows.append(
                f"{lead if j == 0 else blank}  {j + 1:>5}  {t['lr']:>8.2e}  {forecast:>9}  "
                f"{num(t.get('final_loss')):>10}{mark}"
            )
        if trials and best is not None and not any(t.get("lr") == best and not t.get("diverged") for t in trials):
            why = "every trial diverged" if all(t.get("diverged") for t in trials) else "no completed trial's LR"
            rows.append(f"{blank}  chosen {best:.2e} ({why})")
        for f in st.get("fallbacks", []):
            rows.append(f"{blank}  exploit diverged at step {f['step']}: lr {f['failed_lr']:.2e} -> {f['new_lr']:.2e}")
    if any(st.get("signal") == "val_loss" for st in schedule.stages):
        rows.append("forecast: of the validation loss on the probe's batches (signal val_loss), not the training loss")
    return "\n".join(rows)
