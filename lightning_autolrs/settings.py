"""The AutoLRS settings, declared once: types, defaults, checks and docs of every argument of
:class:`~lightning_autolrs.AutoLRS`, and the values derived from them at fit start.

:class:`Settings` is the single declaration. ``AutoLRS.__init__`` keeps an explicit keyword signature (LightningCLI and
``inspect.signature`` read it) that a test holds equal to the fields here; its ``Args`` docs, the README's table of
arguments (:func:`markdown_table`) and the schedule JSON's ``settings`` are generated from the fields. Validation runs
once, in ``Settings.__post_init__``.

:func:`derive` is the one pure function that turns the settings, the optimizer's configured LR and the Trainer's step
budget into what the run uses (:class:`Derived`): the LR range (or ``None`` while a range test must find it), the
warmup LR, τ, the range test's length and swept LRs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

import torch

from lightning_autolrs._validation import check_float, check_int
from lightning_autolrs.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from lightning_autolrs.proposer import DEFAULT_BETA

__all__ = [
    "FALLBACK_DECAY",
    "MIN_TRIAL_STEPS",
    "MONITORS",
    "RANGE_SPAN",
    "Derived",
    "Settings",
    "default_tau",
    "derive",
    "docstring_args",
    "exploit_warmup_steps",
    "markdown_table",
    "plan_tau",
    "tau_prime_for",
]

MONITORS = ("auto", "train_loss", "val_loss")
#: ``max_lr / min_lr`` when only one bound is given or a range test found ``max_lr``.
RANGE_SPAN = 1000.0
DEFAULT_RANGE_BELOW = 100.0  # without a range and a range test: the configured LR ÷ 100 ...
DEFAULT_RANGE_ABOVE = 10.0  # ... to × 10
RANGE_TEST_BELOW = 1e-4  # the range test sweeps from the configured LR × 1e-4 ...
RANGE_TEST_ABOVE = 1e2  # ... to × 1e2
RANGE_TEST_SHARE = 0.05
RANGE_TEST_MIN_STEPS = 20
RANGE_TEST_MAX_STEPS = 100
#: The shortest trial the derived τ allows: 5 validation probes at least 4 steps apart. Measured in
#: ``benchmarks/results/forecast_length.md``: on fixed-batch probes the forecast ranks pairs of crossing curves right
#: 67-75 % of the time from 5 points on (their last values 62-71 %); on single-batch training losses neither does
#: better than 53-67 %, even at 40 points.
MIN_TRIAL_STEPS = 20
#: Without a search (a budget too small for one) the configured LR is held from the first step, and the LR decays over
#: this share of the final anneal's usual length (``anneal_ratio``·budget) at the end. At budgets this short a model
#: is far from trained, and every step below the configured LR costs progress a constant LR keeps: measured on the
#: eight workloads of the quality benchmark at 300 and 500 steps (``python -m benchmarks.short_budget``; stop 49,
#: ``benchmarks/HISTORY.md``), the 5 % warmup and the decay over the usual length before ended at or below both cosine
#: and a constant LR at the module's LR in 41 of 80 runs (seeds 0-4); without the warmup and with the decay over half
#: that length, in 56 of 80 (64 runs lower than before, 16 higher; chosen there among four variants), and on seeds
#: 5-9, run after the choice, in 47 of 80 against 40 (59 lower, 21 higher; at or below cosine 78 of 80 against 80).
#: A constant LR still ends lower on the classifier and the GRU in every run: any decay below the configured LR costs
#: them progress at these budgets.
FALLBACK_DECAY = 0.5
#: With an optimizer that keeps a second-moment estimate (``betas`` in its param group: Adam, AdamW, NAdam, ...), the
#: first stage's exploit phase starts again from the stage start and warms up to the chosen LR over
#: ``2 / (1 - beta2)`` steps (the untuned warmup rule of Ma & Yarats, 2021), at most this share of the stage's τ.
#: Measured on ten seeds of the quality benchmark (`benchmarks/HISTORY.md`, where the figures are): it lowers the char
#: LM's (AdamW) and Friedman's (Adam) final loss in most seeds; the same warmup on the two SGD workloads raised theirs,
#: and a warmup of 5 % of τ helped no workload clearly.
EXPLOIT_WARMUP_SHARE = 0.25


def _setting(default: Any, doc: str, check: Callable[[str, Any], Any] | None = None) -> Any:
    """A settings field: its default, its documentation and the check that validates and normalises a value."""
    return field(default=default, metadata={"doc": " ".join(doc.split()), "check": check})


def _as_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):  # `bool("no")` is True: a flag takes only True or False
        raise InvalidArgumentTypeError(f"`{name}` must be True or False, got {value!r} of type {type(value).__name__}.")
    return value


def _positive_or_none(name: str, value: Any) -> float | None:
    return check_float(name, value, positive=True, allow_none=True)


def _int_at_least(minimum: int, allow_none: bool = False) -> Callable[[str, Any], Any]:
    return lambda name, value: check_int(name, value, minimum=minimum, allow_none=allow_none)


def _check_divergence_factor(name: str, value: Any) -> float:
    factor = check_float(name, value, positive=True)
    if factor <= 1.0:
        raise InvalidArgumentError(f"`divergence_factor` must be > 1, got {value}.")
    return factor


def _check_monitor(name: str, value: Any) -> str:
    if value not in MONITORS:
        raise InvalidArgumentError(f"`monitor` must be one of {', '.join(map(repr, MONITORS))}, got {value!r}.")
    return str(value)


def _check_anneal_ratio(name: str, value: Any) -> float:
    ratio = check_float(name, value, nonnegative=True)
    if ratio >= 1.0:
        raise InvalidArgumentError(f"`anneal_ratio` must lie in [0, 1), got {value}; 0 turns the final anneal off.")
    return ratio


def _check_range_test(name: str, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise InvalidArgumentError(f"`range_test` must be None, True or False, got {value!r}.")
    return value


def _check_val_loss_fn(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise InvalidArgumentError(f"`val_loss_fn` must be callable as fn(module, batch), got {value!r}.")
    return value


def _check_snapshot_device(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, str | torch.device):
        raise InvalidArgumentError(f"`snapshot_device` must be None or a device name like 'cpu', got {value!r}.")
    if isinstance(value, str):
        try:
            torch.device(value)
        except RuntimeError:
            raise InvalidArgumentError(
                f"`snapshot_device` must be None or a torch device name such as 'cpu' or 'cuda', got {value!r}."
            ) from None
    return value


@dataclass(frozen=True)
class Settings:
    """Every AutoLRS argument, checked and normalised on construction (the docs of each field are in its metadata).

    Example:
        >>> Settings(min_lr=1e-4, max_lr=1e-1).num_trials
        4
        >>> Settings(min_lr=None, max_lr=None).range_test_on, Settings(min_lr=1e-4).range_test_on
        (True, False)
    """

    min_lr: float | None = _setting(
        None,
        """lower end of the LR search range. Default (``None``): found by the LR range test (see ``range_test``), or
        ``max_lr`` / 1000 when only ``max_lr`` is given.""",
        _positive_or_none,
    )
    max_lr: float | None = _setting(
        None,
        """upper end of the LR search range. Default (``None``): found by the LR range test, or ``min_lr`` × 1000
        when only ``min_lr`` is given. With ``range_test=True`` and a ``min_lr`` at or above what the sweep finds:
        the highest LR the sweep took without the loss blowing up, at least ``min_lr`` × 10, and a warning (the same
        range, without the warning, for a ``min_lr`` less than a decade below what it finds).""",
        _positive_or_none,
    )
    num_trials: int = _setting(
        4,
        """candidate LRs tried per stage (≥ 2); the first one of each stage is the stage's anchor: the optimizer's
        configured LR in stage 0, the previous stage's choice after it. On the quality benchmark 3 and 5 ended
        higher than 4 in most runs, 3 despite the steps it saves (stop 52, `benchmarks/HISTORY.md`).""",
        _int_at_least(2),
    )
    tau: int | None = _setting(
        None,
        """the first stage's exploit length τ in optimizer steps. Default (``None``): derived from the Trainer's step
        budget: the largest τ with which three stages (τ, 2τ, 4τ; else two, else one) and their searches fit in the
        steps left after warmup, the range test and the final anneal, provided trials are at least 20 steps long
        (``search_ratio``·τ ≥ 20). A budget too small for one such stage gets one warning and no search: the
        configured LR (within ``min_lr``/``max_lr`` when given) from the first step (after ``warmup_steps`` when
        given), held, then the final anneal's decay over half its usual length (the last ``anneal_ratio``/2 of the
        budget; :data:`FALLBACK_DECAY`). 1000 if the budget is unbounded. A
        ``tau`` you give is used as is, trials shorter than 20 steps included.""",
        _int_at_least(1, allow_none=True),
    )
    tau_max: int = _setting(8000, "τ doubles each stage until it reaches ``tau_max``.", _int_at_least(1))
    search_ratio: float = _setting(
        0.05,
        """trial length as a fraction of τ, in (0, 1). The default 5 % (with ``num_trials=4``) keeps the search
        at about 15 % of the steps; 10 % lost to it on the quality benchmark (`benchmarks/HISTORY.md`).""",
        lambda n, v: check_float(n, v, open_unit=True),
    )
    beta: float = _setting(
        DEFAULT_BETA,
        """UCB exploration weight (``mean + sqrt(beta)·sigma`` on the negated forecast loss). The default 8 explores a
        lot, which is cheap: the stage keeps the best *observed* trial, and a stage has only a few trials. Neither 2
        nor 32 did better on the quality benchmark's workloads: 2 ended 20 runs lower and 24 higher (seeds 0-2 and
        40-44), 32 5 lower and 9 higher (seeds 0-2; stop 52, `benchmarks/HISTORY.md`).""",
        lambda n, v: check_float(n, v, positive=True),
    )
    warmup_steps: int = _setting(
        0,
        """linear LR warmup steps before the first stage (no search during warmup). ``0``: none, except where the
        budget fits only one stage, also after the warmup, ``tau`` is not given and the optimizer has a second-moment
        estimate (``betas``: Adam, AdamW, ...; 782–1839 steps at the defaults with no range given, for β₂ ≥ 0.99): that
        run warms up to ``warmup_lr`` over min(⌈2 / (1 − β₂)⌉, a quarter of the τ planned without the warmup) steps
        after the range test, then searches.""",
        _int_at_least(0),
    )
    warmup_lr: float | None = _setting(
        None,
        """LR reached at the end of warmup. Default: the optimizer's configured LR, clamped to the range: the one
        given, or the one the range test finds (it runs before the warmup). A ``warmup_lr`` you give is used as is.""",
        _positive_or_none,
    )
    seed: int | None = _setting(
        None,
        "seed of each stage's first, space-filling proposals (from the stage's anchor, the direction of their first "
        "step; without one, where they start); stage ``s`` uses ``seed + s``; ``None`` acts as 0.",
        lambda n, v: check_int(n, v, allow_none=True),
    )
    divergence_factor: float = _setting(
        5.0,
        """a trial whose loss exceeds this multiple of the stage's reference loss and half the fit's first loss (or
        is NaN/inf) is stopped at once (on an accelerator one step later) and restored; in the exploit phase the stage
        falls back to a smaller LR.""",
        _check_divergence_factor,
    )
    monitor: str = _setting(
        "auto",
        """what a trial is judged on. ``"train_loss"``: the training loss of every trial step. ``"val_loss"``: the
        loss on ``val_batches`` fixed validation batches, probed at the stage start and at 5 evenly spaced steps of
        each trial (the paper's objective; needs a validation dataloader). ``"auto"`` (default): validation probes when
        the Trainer has validation data, the training loss otherwise.""",
        _check_monitor,
    )
    reuse_best_trial: bool = _setting(
        True,
        """continue the exploit phase from the end state of the best trial (one more in-memory snapshot) instead of
        re-training its τ' steps from the stage start; saves τ' steps per stage (not in the first stage with an
        Adam-family optimizer, whose exploit phase warms up from the stage start). In an exploit phase the same
        snapshot keeps the best-probed state, which an early anneal (overfitting) starts from, and in the hold after
        it the state the run's last step goes back to should the validation loss rise again.""",
        _as_bool,
    )
    range_test: bool | None = _setting(
        None,
        """find ``min_lr``/``max_lr`` with a short LR range test before the first stage: the LR sweeps geometrically
        from the configured LR × 1e-4 to × 1e2, stopping once the loss blows up; ``max_lr`` is the LR three sweep
        steps before the lowest smoothed loss (the loss lags the LR), not below the configured LR unless the sweep
        blew up at or below it, nor more than a decade below the highest LR a sweep that blew up took before it did,
        and ``min_lr`` = ``max_lr`` / 1000. The model
        and optimizer are then restored, so the test costs its steps (counted in the budget, in the ``"warmup"``
        phase) and nothing else; its result is logged and kept in :attr:`range_test_result`. ``None`` (default): on
        when neither ``min_lr`` nor ``max_lr`` is given. ``False``: the range is the configured LR ÷ 100 … × 10
        instead.""",
        _check_range_test,
    )
    range_test_steps: int | None = _setting(
        None,
        """length of the sweep; default (``None``): 5 % of the step budget, clipped to [20, 100] (100 when the budget
        is unbounded).""",
        _int_at_least(2, allow_none=True),
    )
    val_batches: int = _setting(4, "batches of the validation dataloader used by the probe.", _int_at_least(1))
    val_loss_fn: Callable[[Any, Any], Any] | None = _setting(
        None,
        """``val_loss_fn(module, batch) -> loss`` for the probe; default: the module's ``validation_step`` (its
        returned loss, or the value it logs as ``*val_loss``).""",
        _check_val_loss_fn,
    )
    snapshot_device: str | None = _setting(
        None,
        """where the stage snapshot lives: ``None`` keeps each copy on its tensor's device, ``"cpu"`` keeps it in
        host memory.""",
        _check_snapshot_device,
    )
    checkpoint_snapshot: bool = _setting(
        True,
        """put the stage snapshot, the best-trial snapshot and the trial in flight into checkpoints saved during a
        search (up to three extra copies of model and optimizer state; the checkpoint's own ``state_dict`` is the
        committed state either way), so a resumed run continues the interrupted trial exactly, and the stage snapshot
        into those saved after a stage's search (one extra copy: the state an exploit fallback or the final anneal's
        restore after a non-finite loss goes back to), with the best-trial snapshot too once an exploit phase's
        validation probe has put its best-probed state there (a second copy: the early anneal's rollback). ``False``
        keeps checkpoints small; a run resumed in the middle of a search (or of the range test) then restarts that
        stage's search (or the sweep) from the checkpoint's weights, a fallback after a resume goes back to the
        checkpoint's weights, and an early anneal rolls back only to a state probed after the resume.""",
        _as_bool,
    )
    save_files: bool = _setting(
        True,
        """at fit end, write ``autolrs_schedule.json`` and ``autolrs_schedule.png`` into the Trainer's log dir (only
        when the Trainer has a logger; the PNG needs matplotlib).""",
        _as_bool,
    )
    verbose: bool = _setting(True, "print one line per trial and per stage on rank zero.", _as_bool)
    anneal_ratio: float = _setting(
        0.2,
        """share of the step budget spent on a final anneal: the last stage's LR decays along ``1 - sqrt(t)`` (``t``
        the share of the anneal done: half the way down in its first quarter) to ``min_lr`` over the last
        ``anneal_ratio``·budget steps (no search there). With validation probes it begins earlier once an exploit
        phase overfits (validation loss up from above the training loss while that falls), and then drops the LR to
        ``min_lr`` after its first step. Without a search (a budget too small for one) the decay takes half that
        (:data:`FALLBACK_DECAY`). ``0`` turns it off; unused when the budget is unbounded.""",
        _check_anneal_ratio,
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            check = f.metadata["check"]
            if check is not None:
                object.__setattr__(self, f.name, check(f.name, getattr(self, f.name)))
            if f.name == "max_lr":
                self._check_range()
            elif f.name == "tau_max" and self.tau is not None and self.tau_max < self.tau:
                raise InvalidArgumentError(f"`tau_max` must be >= `tau`, got tau_max={self.tau_max} < tau={self.tau}.")

    def _check_range(self) -> None:
        lo, hi = self.min_lr, self.max_lr
        if lo is not None and hi is not None and hi <= lo:
            raise InvalidArgumentError(
                f"`max_lr` must be greater than `min_lr`, got max_lr={hi} <= min_lr={lo}; widen the range."
            )

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON values (``val_loss_fn`` left out, a ``torch.device`` written as its name)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "val_loss_fn"}
        if out["snapshot_device"] is not None:
            out["snapshot_device"] = str(out["snapshot_device"])
        return out

    @property
    def range_test_on(self) -> bool:
        """Whether a range test runs: ``range_test``, or when ``None`` whether neither bound is given."""
        return (self.min_lr is None and self.max_lr is None) if self.range_test is None else self.range_test


def docstring_args(indent: int = 8, width: int = 120) -> str:
    """The ``Args:`` entries of the settings, Google style, wrapped to ``width`` columns."""
    import textwrap

    lines: list[str] = []
    for f in fields(Settings):
        lines += textwrap.wrap(
            f"{f.name}: {f.metadata['doc']}",
            width=width,
            initial_indent=" " * indent,
            subsequent_indent=" " * (indent + 4),
            break_on_hyphens=False,
        )
    return "\n".join(lines)


def markdown_table() -> str:
    """The README's table of arguments: name, default, meaning (one row per settings field).

    Example:
        >>> markdown_table().splitlines()[2]
        '| `min_lr` | `None` | lower end of the LR search range. Default (``None``): found by the LR range test (see ``range_test``), or ``max_lr`` / 1000 when only ``max_lr`` is given. |'
    """  # noqa: E501
    rows = ["| argument | default | meaning |", "| --- | --- | --- |"]
    for f in fields(Settings):
        default = f.default if f.default is not MISSING else ""
        doc = f.metadata["doc"].replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{default!r}` | {doc} |")
    return "\n".join(rows)


def default_tau(total_steps: float | None, num_trials: int, search_ratio: float, warmup_steps: int) -> int:
    """First-stage τ by the rule before the search rework (issue #12), kept for callers of the keyword controller:
    at least three full stages of ``num_trials`` trials each (:func:`derive` uses :func:`plan_tau` now).

    Three stages with doubling cost ``(1 + 2 + 4)·τ·(1 + num_trials·search_ratio)`` steps, so
    ``τ = floor((total_steps − warmup_steps) / (7·(1 + num_trials·search_ratio)))``. An unbounded budget gives 1000.

    Example:
        >>> default_tau(2000, num_trials=10, search_ratio=0.1, warmup_steps=0)
        142
        >>> default_tau(None, num_trials=10, search_ratio=0.1, warmup_steps=0)
        1000
    """
    if total_steps is None or math.isinf(total_steps):
        return 1000
    return int((total_steps - warmup_steps) // (7 * (1 + num_trials * search_ratio)))


def tau_prime_for(tau: int, search_ratio: float) -> int:
    """Trial length τ' for a stage of length τ: ``max(1, round(search_ratio·τ))``."""
    return max(1, round(search_ratio * tau))


@dataclass(frozen=True)
class Derived:
    """What a run uses, derived by :func:`derive` at fit start.

    Attributes:
        min_lr: lower end of the LR range, ``None`` while a range test must find it (and it was not given).
        max_lr: upper end of the LR range (as ``min_lr``).
        warmup_lr: LR reached at the end of warmup.
        tau: the first stage's τ.
        tau_max: the largest τ (never below ``tau``).
        total_steps: the Trainer's step budget, ``None`` when unbounded.
        range_test_steps: length of the range test (0: none).
        range_test_lrs: (lowest, highest) LR of the range test's sweep.
        configured_lr: the optimizer's configured LR (stage 0's anchor; see :attr:`start_lr`).
        anneal_steps: length of the final anneal (0: none).
        fallback: the budget is too small for a search: no range test and no stages, the whole budget (after
            ``warmup_steps``, when given) is the anneal from :attr:`start_lr`, which holds it before its decay (its
            last :attr:`decay_steps`).
        needed_steps: the smallest budget that allows a search (set when ``fallback``).
        decay_steps: with ``fallback``, the steps at the end of the budget the LR decays over after holding
            :attr:`start_lr`: :data:`FALLBACK_DECAY` of the final anneal's usual length (``anneal_ratio``·budget);
            ``None`` otherwise.
        exploit_warmup: steps of the warmup that begins the first stage's exploit phase (0: none; see
            :func:`exploit_warmup_steps`).
        warmup_steps: steps of the linear warmup before the first stage (after the range test): ``warmup_steps``
            when you give it; else, where the budget fits only one stage, with an optimizer that has a second-moment
            estimate, the length :func:`exploit_warmup_steps` gives (that stage then searches from the warmed-up
            model, keeps the winning trial's steps, and its exploit phase has no warmup of its own); else 0.
        unwarmed_tau: with such a derived warmup, the τ planned without it (and with :attr:`exploit_warmup` instead),
            which a run begun before this rule resumes with; ``None`` otherwise.
        second_moment: the optimizer keeps a second-moment estimate (Adam and the like: ``beta2`` given), so the stage
            before the final anneal never picks high (``StageController``, ``second_moment``).
    """

    min_lr: float | None
    max_lr: float | None
    warmup_lr: float
    tau: int
    tau_max: int
    total_steps: int | None
    range_test_steps: int
    range_test_lrs: tuple[float, float]
    configured_lr: float = 1.0
    anneal_steps: int = 0
    fallback: bool = False
    needed_steps: int = 0
    decay_steps: int | None = None
    exploit_warmup: int = 0
    warmup_steps: int = 0
    unwarmed_tau: int | None = None
    second_moment: bool = False

    @property
    def start_lr(self) -> float:
        """Stage 0's anchor: the configured LR; without a search (``fallback``), the LR held before the decay: the
        configured LR within the range (a range you give bounds that schedule too)."""
        if self.fallback and self.min_lr is not None and self.max_lr is not None:
            return min(max(self.configured_lr, self.min_lr), self.max_lr)
        return self.configured_lr


def exploit_warmup_steps(beta2: float | None, tau: int) -> int:
    """Length of the warmup that begins the first stage's exploit phase: ``2 / (1 - beta2)`` steps for an optimizer
    with a second-moment decay ``beta2`` (its ``betas[1]``), at most :data:`EXPLOIT_WARMUP_SHARE` of the stage's τ;
    0 without one (SGD and the like need no warmup here: measured, see :data:`EXPLOIT_WARMUP_SHARE`).

    Why: Adam's first updates divide by a second-moment estimate made of a handful of gradients, so they are about
    ``lr`` in every coordinate, whatever the gradient's size; a net trained at the full LR from its first step pays for
    them all run long (on the char LM, a warmed-up held LR ends about 1 % lower than the same LR without a warmup).

    Where the budget fits only one stage, :func:`derive` puts a warmup of this length before the search instead
    (:attr:`Derived.warmup_steps`): that stage is also the last, and the trials an exploit warmup throws away are
    13 % of such a budget (``benchmarks/HISTORY.md``, stop 46: one-stage budgets).

    Example:
        >>> exploit_warmup_steps(0.99, tau=1000), exploit_warmup_steps(0.999, tau=1000)
        (200, 250)
        >>> exploit_warmup_steps(None, tau=1000)
        0
    """
    if beta2 is None or not 0.0 <= beta2 <= 1.0:
        return 0
    cap = int(EXPLOIT_WARMUP_SHARE * tau)
    return cap if beta2 >= 1.0 else min(math.ceil(2.0 / (1.0 - beta2) - 1e-9), cap)


def _resolve_range(s: Settings, configured_lr: float) -> tuple[float | None, float | None, float]:
    """(min_lr, max_lr, warmup_lr) before any range test ran."""
    lo, hi = s.min_lr, s.max_lr
    if s.range_test_on:  # None until the range test has run (given bounds win)
        return lo, hi, configured_lr if s.warmup_lr is None else s.warmup_lr
    if lo is None and hi is None:
        lo, hi = configured_lr / DEFAULT_RANGE_BELOW, configured_lr * DEFAULT_RANGE_ABOVE
    elif lo is None:
        assert hi is not None
        lo = hi / RANGE_SPAN
    elif hi is None:
        hi = lo * RANGE_SPAN
    lo, hi = float(lo), float(hi)
    warmup_lr = min(max(configured_lr, lo), hi) if s.warmup_lr is None else s.warmup_lr
    return lo, hi, warmup_lr


def _fallback_range(lo: float | None, hi: float | None, configured_lr: float) -> tuple[float, float]:
    """The range of a run without a search when the range test was due (``lo``/``hi`` are the bounds you gave; with
    the range test off both are already set): the missing one :data:`RANGE_SPAN` away; neither given: the configured
    LR and :data:`RANGE_SPAN` below it."""
    if lo is None and hi is None:
        return configured_lr / RANGE_SPAN, configured_lr
    if lo is None:
        assert hi is not None
        return hi / RANGE_SPAN, hi
    if hi is None:
        return lo, lo * RANGE_SPAN
    return lo, hi


def _range_test_steps(s: Settings, total_steps: int | None) -> int:
    if not s.range_test_on:
        return 0
    if s.range_test_steps:
        return s.range_test_steps
    if total_steps is None:
        return RANGE_TEST_MAX_STEPS
    return min(max(round(RANGE_TEST_SHARE * total_steps), RANGE_TEST_MIN_STEPS), RANGE_TEST_MAX_STEPS)


def plan_tau(region: int, num_trials: int, search_ratio: float, reuse_best_trial: bool, tau_max: int) -> int | None:
    """The first stage's τ for ``region`` steps of stages: the largest τ with which three stages (τ, 2τ, 4τ), else
    two, else one fit with their searches, provided a trial is at least :data:`MIN_TRIAL_STEPS` long; ``None`` when
    not even one such stage fits.

    A stage of length τ costs ``τ·(1 + k·search_ratio)`` steps, ``k`` = ``num_trials`` (``num_trials − 1`` with
    ``reuse_best_trial``: the exploit phase continues from the winning trial, whose steps count).

    Example:
        >>> plan_tau(2300, num_trials=4, search_ratio=0.1, reuse_best_trial=True, tau_max=8000)
        252
        >>> plan_tau(600, 4, 0.1, True, 8000), plan_tau(200, 4, 0.1, True, 8000)
        (461, None)
    """
    plan = _plan_stages(region, num_trials, search_ratio, reuse_best_trial, tau_max)
    return None if plan is None else plan[0]


def _plan_stages(
    region: int, num_trials: int, search_ratio: float, reuse_best_trial: bool, tau_max: int
) -> tuple[int, int] | None:
    """``(τ, stages)`` of :func:`plan_tau`: its τ and how many stages (3, 2 or 1) it planned for."""
    k = num_trials - 1 if reuse_best_trial else num_trials
    per_tau = 1 + k * search_ratio
    tau_min = math.ceil(MIN_TRIAL_STEPS / search_ratio)
    for stages in (3, 2, 1):
        tau = math.floor(region / ((2**stages - 1) * per_tau) + 1e-9)  # (260 / 1.3 is 200, not 199.99…)
        if tau >= tau_min:
            return min(tau, tau_max), stages
    return None


def _plan_for(s: Settings, region: int) -> tuple[int, int] | None:
    """:func:`_plan_stages` for ``region`` steps of stages with the settings' ``num_trials``, ``search_ratio``,
    ``reuse_best_trial`` and ``tau_max``."""
    return _plan_stages(region, s.num_trials, s.search_ratio, s.reuse_best_trial, s.tau_max)


def _planned_tau(s: Settings, total: int) -> int | None:
    """The derived τ for a budget of ``total`` steps (``None``: too small for a search)."""
    before = s.warmup_steps + _range_test_steps(s, total)
    plan = _plan_for(s, total - before - round(s.anneal_ratio * total))
    return None if plan is None else plan[0]


def derive(
    s: Settings,
    configured_lr: float,
    total_steps: float | None,
    *,
    check_budget: bool = True,
    beta2: float | None = None,
) -> Derived:
    """The values a run uses, from the settings, the optimizer's configured LR and the Trainer's step budget.

    Budget (known ``total_steps``): the range test, then warmup, then the stages, then the final anneal
    (``anneal_ratio``·budget steps). τ comes from :func:`plan_tau` over the steps left for stages (where only one
    stage fits and ``beta2`` is given, after a warmup of :func:`exploit_warmup_steps` steps); when not even one
    stage with trials of :data:`MIN_TRIAL_STEPS` fits, the run falls back to no search (``fallback``): the configured LR
    (within the range you give: :attr:`Derived.start_lr`) held from the first step (after ``warmup_steps`` when given),
    then the final anneal's decay over :data:`FALLBACK_DECAY` of its usual length.

    Args:
        s: the settings.
        configured_lr: the LR of the optimizer's first param group (> 0).
        total_steps: the Trainer's estimated stepping batches (``None``, negative or ``inf``: unbounded).
        check_budget: refuse a budget too small for one search with a given ``tau`` (off when resuming).
        beta2: the optimizer's second-moment decay (``betas[1]`` of its first param group; ``None``: it has none), for
            the warmup of the first stage's exploit phase (:func:`exploit_warmup_steps`; none with ``warmup_steps``),
            or, where only one stage fits (also after that warmup) and neither ``tau`` nor ``warmup_steps`` is given,
            for a warmup of the same length before the search (:attr:`Derived.warmup_steps`); given, the stage before
            the final anneal never picks high (:attr:`Derived.second_moment`).

    Raises:
        InvalidArgumentError: a given ``tau`` does not fit one search in the budget, or ``warmup_steps`` is not below
            the budget.

    Example:
        >>> d = derive(Settings(min_lr=1e-3, num_trials=5), configured_lr=0.1, total_steps=3000)
        >>> d.min_lr, d.max_lr, d.warmup_lr, d.tau, d.range_test_steps, d.anneal_steps, d.fallback
        (0.001, 1.0, 0.1, 666, 0, 600, False)
        >>> derive(Settings(), configured_lr=0.1, total_steps=300).fallback
        True
    """
    total = None if total_steps is None or math.isinf(total_steps) or total_steps < 0 else int(total_steps)
    if total is not None and check_budget and 0 < total <= s.warmup_steps:
        raise InvalidArgumentError(
            f"`warmup_steps`={s.warmup_steps} leaves no step after the warmup: the Trainer's budget is {total} "
            f"optimizer steps. Lower `warmup_steps` below {total}, or raise `max_steps`/`max_epochs`."
        )
    lo, hi, warmup_lr = _resolve_range(s, configured_lr)
    rt_steps = _range_test_steps(s, total)
    anneal = 0 if total is None else round(s.anneal_ratio * total)
    before = s.warmup_steps + rt_steps  # steps before the first stage
    sweep = (configured_lr * RANGE_TEST_BELOW, configured_lr * RANGE_TEST_ABOVE)

    def derived(tau: int, warmup: int = s.warmup_steps, unwarmed: int | None = None) -> Derived:
        return Derived(
            min_lr=lo,
            max_lr=hi,
            tau=tau,
            tau_max=max(s.tau_max, tau),
            range_test_steps=rt_steps,
            anneal_steps=anneal,
            warmup_lr=warmup_lr,
            total_steps=total,
            range_test_lrs=sweep,
            configured_lr=configured_lr,
            exploit_warmup=0 if warmup else exploit_warmup_steps(beta2, tau),
            warmup_steps=warmup,
            unwarmed_tau=unwarmed,
            second_moment=beta2 is not None,
        )

    if s.tau is not None:
        tau = s.tau
    elif total is None:
        tau = min(1000, s.tau_max)
    else:
        planned = _plan_for(s, total - before - anneal)
        if planned is None:
            k = s.num_trials - 1 if s.reuse_best_trial else s.num_trials
            stage = math.ceil(MIN_TRIAL_STEPS / s.search_ratio) * (1 + k * s.search_ratio)
            need = math.ceil(
                (stage + s.warmup_steps + (RANGE_TEST_MIN_STEPS if rt_steps else 0)) / (1 - s.anneal_ratio)
            )
            while _planned_tau(s, need) is None:  # correct the estimate: the first budget that searches
                need += 1
            flo, fhi = _fallback_range(lo, hi, configured_lr)
            fallback = replace(
                derived(max(1, total)),
                min_lr=flo,
                max_lr=fhi,
                range_test_steps=0,
                anneal_steps=max(0, total - s.warmup_steps),
                fallback=True,
                exploit_warmup=0,
                needed_steps=need,
                decay_steps=round(FALLBACK_DECAY * s.anneal_ratio * total),
            )
            if s.warmup_lr is not None and s.warmup_steps:
                return fallback  # (its warmup_lr is the one you gave)
            return replace(fallback, warmup_lr=fallback.start_lr)  # the warmup ramps to where the decay starts
        tau, stages = planned
        warm = 0 if stages > 1 or s.warmup_steps else exploit_warmup_steps(beta2, tau)
        if warm:  # one stage, an optimizer with a second-moment estimate: it warms up before the search instead
            again = _plan_for(s, total - before - warm - anneal)
            if again is not None:
                return derived(again[0], warmup=warm, unwarmed=tau)
    if total is not None and check_budget and s.tau is not None:
        need = before + anneal + (s.num_trials + 1) * tau_prime_for(tau, s.search_ratio)
        if need > total:
            raise InvalidArgumentError(
                f"`tau`={tau} needs at least {need} optimizer steps for one search with `num_trials`="
                f"{s.num_trials} (plus `warmup_steps`={s.warmup_steps}, {rt_steps} range-test steps and {anneal} "
                f"final-anneal steps), but the Trainer's budget is {total}. Lower `tau` or `num_trials`, raise "
                "`max_steps`, or leave `tau` to the default."
            )
    return derived(tau)
