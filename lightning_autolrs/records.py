"""What a run records, declared once: trials, stages, the range test's result and the events the controller emits.

Each record is a dataclass with ``to_dict`` / ``from_dict``. ``AutoLRS.history`` is ``[stage.to_dict() ...]``, the
schedule JSON writes the same dicts (:mod:`lightning_autolrs.schedule`), the log lines are made from the events
(:mod:`lightning_autolrs._edge`) and the plot reads the stages through :meth:`StageRecord.from_dict`, so a field added
here appears everywhere.

Optional fields (``reused_trial``, ``restarted``, ``anneal_start``, ``anneal_lr``, ``exploit_warmup``,
``overfitting``, ``rolled_back_to``, ``high_pick``) appear in the dicts only once they are set, as they always have.
``from_dict`` ignores keys it does not know, such as those of options since removed (``aborted``, ``warm_start``,
``stopped_early``).

Example:
    >>> t = TrialRecord(lr=0.1, start_step=0, predicted_loss=0.5, steps=10, diverged=False)
    >>> TrialRecord.from_dict(t.to_dict() | {"aborted": True}) == t
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

__all__ = [
    "AnnealEvent",
    "Event",
    "FallbackEvent",
    "FallbackRecord",
    "RangeTestEvent",
    "RangeTestResult",
    "SearchEvent",
    "StageRecord",
    "TrialEvent",
    "TrialRecord",
    "event_from_dict",
]


def _present(value: Any) -> bool:
    """Whether an optional field is set (``None`` and ``False`` are its "absent" values)."""
    return value is not None and value is not False


@dataclass
class TrialRecord:
    """One trial of a stage's search.

    Attributes:
        lr: the trial's LR.
        start_step: global step at which the trial's first step began.
        predicted_loss: forecast of the loss after τ steps; ``None`` when the trial diverged.
        steps: optimizer steps the trial took (fewer than τ' when it diverged).
        diverged: whether the trial diverged (its forecast is then ``None``).
        final_loss: mean training loss of the last quarter of its steps (``None`` when it diverged or had no finite
            loss).
        forecast: the forecaster's method (``"exp"``, ...), ``None`` when the trial diverged.
        noise: the noise of one point of the series it was judged on
            (:func:`~lightning_autolrs.search.series_noise`; it narrows the tie of a stage after the first); ``None``,
            and left out of :meth:`to_dict`, when it diverged, had fewer than 3 points, or belongs to a run begun
            before the tie used it (resumed from an older checkpoint).
    """

    lr: float
    start_step: int
    predicted_loss: float | None
    steps: int
    diverged: bool
    final_loss: float | None = None
    forecast: str | None = None
    noise: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if d["noise"] is None:  # (a run begun before the noise existed records its trials as it did)
            del d["noise"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialRecord:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every key its dict can have, in order."""
        return tuple(f.name for f in fields(cls))


@dataclass
class FallbackRecord:
    """An exploit step that diverged: the stage restored its snapshot and continued at ``new_lr``."""

    step: int
    failed_lr: float
    new_lr: float

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "failed_lr": self.failed_lr, "new_lr": self.new_lr}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FallbackRecord:
        return cls(step=d["step"], failed_lr=d["failed_lr"], new_lr=d["new_lr"])


@dataclass
class StageRecord:
    """One stage: its search (trials) and its exploit phase.

    Attributes:
        stage: the stage's index.
        start_step: global step at which the stage began (its search, or its exploit phase without a search).
        tau: the stage's τ.
        tau_prime: the stage's trial length τ'.
        lr_range: ``[min_lr, upper end]`` the stage's trials could use.
        trials: the trials, in order.
        best_lr: the LR chosen for the exploit phase (``None`` while searching).
        search_steps: optimizer steps spent on trials.
        exploit_start: global step at which the exploit phase began (``None`` while searching).
        exploit_steps: optimizer steps of the exploit phase so far.
        fallbacks: exploit steps that diverged.
        signal: what the trials were judged on: ``"train_loss"`` or ``"val_loss"``.
        probe_seconds: time spent in validation probes.
        reused_trial: index of the trial whose end state the exploit phase continued (``reuse_best_trial``).
        restarted: set when the search restarted from resumed weights (a checkpoint without the stage snapshot).
        anneal_start: global step at which the final anneal began (the last stage only).
        anneal_lr: the LR the final anneal decays from.
        exploit_warmup: steps of the linear warmup that began the exploit phase (the first stage, with an
            Adam-family optimizer), which then started from the stage start instead of a trial's end.
        overfitting: set when the exploit phase was found overfitting and the final anneal began early: the median
            validation and training losses of the best and the latest probe windows,
            ``{"val_loss": [best, now], "train_loss": [then, now]}``.
        rolled_back_to: set when that early anneal began from the exploit phase's best-probed state instead of the
            overfit one (``reuse_best_trial``): the global step that state had trained to (its probe followed that
            many steps).
        high_pick: set when the stage, the last before the final anneal, found no generalization gap: it searched
            from its anchor up to ``HIGH_PICK_REACH`` (9×) instead of 3× (``lr_range``) and exploits the highest LR
            whose forecast is within ``HIGH_PICK_FACTOR`` (2×) of the lowest (:mod:`lightning_autolrs.search`), not
            the lowest forecast.
        restored_at_end: set when the budget's last step went back to the best-probed state of the hold after an
            early anneal (``reuse_best_trial``), the probes since having risen above it: the global step that state
            had trained to.
    """

    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "reused_trial",
        "restarted",
        "anneal_start",
        "anneal_lr",
        "exploit_warmup",
        "overfitting",
        "rolled_back_to",
        "high_pick",
        "restored_at_end",
    )

    stage: int
    start_step: int
    tau: int
    tau_prime: int
    lr_range: list[float]
    trials: list[TrialRecord] = field(default_factory=list)
    best_lr: float | None = None
    search_steps: int = 0
    exploit_start: int | None = None
    exploit_steps: int = 0
    fallbacks: list[FallbackRecord] = field(default_factory=list)
    signal: str = "train_loss"
    probe_seconds: float = 0.0
    reused_trial: int | None = None
    restarted: bool = False
    anneal_start: int | None = None
    anneal_lr: float | None = None
    exploit_warmup: int | None = None
    overfitting: dict[str, list[float]] | None = None
    rolled_back_to: int | None = None
    high_pick: bool = False
    restored_at_end: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.OPTIONAL and not _present(value):
                continue
            if f.name in ("trials", "fallbacks"):
                value = [x.to_dict() for x in value]
            elif f.name == "lr_range":
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageRecord:
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw["trials"] = [TrialRecord.from_dict(t) for t in d.get("trials", [])]
        kw["fallbacks"] = [FallbackRecord.from_dict(x) for x in d.get("fallbacks", [])]
        kw["lr_range"] = list(d.get("lr_range", []))
        return cls(**kw)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every key its dict can have, in order."""
        return tuple(f.name for f in fields(cls))


@dataclass
class RangeTestResult:
    """The LR range test's result.

    Attributes:
        start_step: global step of the sweep's first step.
        steps: steps the sweep took.
        lrs: the swept LRs.
        losses: the training loss at each swept LR (``None`` where not finite).
        stopped_early: whether the sweep stopped because the loss blew up.
        min_lr: lower end of the range found (or given).
        max_lr: upper end of the range found (or given).
    """

    start_step: int
    steps: int
    lrs: list[float]
    losses: list[float | None]
    stopped_early: bool
    min_lr: float
    max_lr: float

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), list) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RangeTestResult:
        return cls(
            start_step=d["start_step"],
            steps=d["steps"],
            lrs=list(d["lrs"]),
            losses=list(d["losses"]),
            stopped_early=d["stopped_early"],
            min_lr=d["min_lr"],
            max_lr=d["max_lr"],
        )


class Event:
    """Something the controller reports after a step, for the caller to log. ``event["key"]`` reads a field of
    :meth:`to_dict` (the events were plain dicts before they were records)."""

    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]


@dataclass
class TrialEvent(Event):
    """A trial finished."""

    kind: ClassVar[str] = "trial"
    stage: int
    trial: int
    record: TrialRecord

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "stage": self.stage, "trial": self.trial, **self.record.to_dict()}


@dataclass
class SearchEvent(Event):
    """A stage's search finished: ``best_lr`` is exploited next."""

    kind: ClassVar[str] = "search"
    stage: int
    best_lr: float
    trials: int

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "stage": self.stage, "best_lr": self.best_lr, "trials": self.trials}


@dataclass
class RangeTestEvent(Event):
    """The range test finished (``first_lr``: the sweep's lowest LR; ``found_max_lr``: the ``max_lr`` the range
    test derived before a given ``min_lr`` applied, ``None`` where ``max_lr`` was given)."""

    kind: ClassVar[str] = "range_test"
    first_lr: float
    result: RangeTestResult
    found_max_lr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        summary = {k: v for k, v in self.result.to_dict().items() if k not in ("lrs", "losses")}
        return {"event": self.kind, "first_lr": self.first_lr, **summary, "found_max_lr": self.found_max_lr}


@dataclass
class FallbackEvent(Event):
    """An exploit step diverged and the stage fell back to a smaller LR."""

    kind: ClassVar[str] = "fallback"
    stage: int
    fallback: FallbackRecord

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "stage": self.stage, **self.fallback.to_dict()}


@dataclass
class AnnealEvent(Event):
    """The exploit phase was overfitting: the final anneal began early, at ``step``, from ``lr``."""

    kind: ClassVar[str] = "anneal"
    stage: int
    step: int
    lr: float
    evidence: dict[str, list[float]]

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "stage": self.stage, "step": self.step, "lr": self.lr, "overfitting": self.evidence}


def event_from_dict(d: dict[str, Any]) -> Event:
    """The event record of a dict written by an event's ``to_dict``."""
    kind = d["event"]
    if kind == "trial":
        return TrialEvent(d["stage"], d["trial"], TrialRecord.from_dict(d))
    if kind == "search":
        return SearchEvent(d["stage"], d["best_lr"], d["trials"])
    if kind == "range_test":
        rest = {k: v for k, v in d.items() if k not in ("event", "first_lr", "found_max_lr")}
        result = RangeTestResult.from_dict({"lrs": [], "losses": [], **rest})
        return RangeTestEvent(d["first_lr"], result, d.get("found_max_lr"))
    if kind == "fallback":
        return FallbackEvent(d["stage"], FallbackRecord.from_dict(d))
    if kind == "anneal":
        return AnnealEvent(d["stage"], d["step"], d["lr"], d["overfitting"])
    raise ValueError(f"unknown event {kind!r}")
