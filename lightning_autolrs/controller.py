"""The AutoLRS algorithm as a pure state machine over optimizer steps.

:class:`StageController` knows nothing about Lightning. The callback asks it, before every optimizer step, for a
:class:`StepPlan` (which LR to apply, and whether to capture or restore the stage snapshot first), and reports after the
step the training loss it produced. Everything else (stages, trials, forecasts, BO proposals, the budget) lives here.

The schedule, step by step (``k`` = ``num_trials``, ``τ`` = stage length, ``τ' = search_ratio·τ``):

1. **Warmup** (optional): ``warmup_steps`` steps with ``lr = warmup_lr · (i + 1) / warmup_steps``. No search.
2. **Stage start**: the caller captures a snapshot of model and optimizer.
3. **Search**: ``k`` trials. Trial ``j`` restores the snapshot (all but the first), trains ``τ'`` steps at the LR the
   proposer gives, and its loss series is turned into a forecast of the loss after ``τ`` steps. The proposer (a GP with
   UCB) learns from (LR, forecast) pairs.
4. **Exploit**: the snapshot is restored and the stage trains ``τ`` steps at the trial LR with the lowest forecast
   (ties go to the smaller LR; if every trial diverged, ``min_lr``).
5. **Next stage**: ``τ`` and ``τ'`` double until ``τ`` reaches ``tau_max``.

Budget rule (``total_steps`` known): a stage searches only when the ``k·τ'`` search steps plus at least ``τ'`` exploit
steps fit in what is left; otherwise it exploits the previous stage's LR to the end. A stage whose exploit phase would
leave too few steps for the next stage's search (``(k + 1)·τ'_next``) exploits to the end instead. So every step of the
budget belongs to exactly one phase and the last stage always exploits to the end.

Divergence rule: a step whose loss is NaN/inf, or above ``divergence_factor`` times the stage's reference loss (the
largest training loss of the last 20 steps before the stage, or the stage's first loss for the first stage), stops a
trial at once; the trial is recorded as diverged and the proposer gives it a penalty. In the exploit phase the same test
restores the snapshot and continues the stage at the next-best smaller trial LR (or a tenth of the current LR when
none is left, but never below ``min_lr``). After a stage with a diverged trial the upper end of the range for the
next stage is the smallest LR that diverged; after a stage without divergence it grows back by 2× per stage up to
``max_lr``.

Search-cost options (all off by default in the controller):

* **Range test** (``range_test_steps > 0``; ``min_lr``/``max_lr`` may then be ``None``): after warmup and before the
  first stage, the LR sweeps geometrically over ``range_test_lrs`` for at most ``range_test_steps`` steps from a
  snapshot. The sweep stops early once a loss is non-finite or above ``4×`` the lowest loss so far. ``max_lr`` is the
  swept LR three sweep steps before the lowest smoothed loss (centred moving mean over ``2h + 1`` points,
  ``h = max(1, n // 10)``; the three steps undo the lag of the loss behind the LR, which otherwise puts the minimum
  where training is already on its way to diverging) and ``min_lr = max_lr / 1000`` (given bounds win). The snapshot
  is then restored, so the sweep costs its steps and nothing else. Its steps are accounted to the ``"warmup"`` phase
  (they precede the first stage and their LRs lie outside the range they determine).
* **Trial abort** (``abort_trials``): once a trial has half of its series (at least 4 points of a series of at least
  8), its partial forecast of the τ-step loss is compared with the best complete trial of the stage; if it is worse by
  more than ``abort_margin`` times the best trial's forecast improvement (stage start level − best forecast), the trial
  ends there (recorded with ``aborted: True`` and its partial forecast, which the GP learns from).
* **Warm start** (``warm_start``): a later stage's first trial re-tries the previous stage's chosen LR (the anchor); the
  previous stage's other forecasts, shifted by the anchor's change in forecast, then enter the GP as prior
  observations, so with ``early_stop`` fewer trials are needed.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

from lightning_autolrs._validation import check_float, check_int
from lightning_autolrs.exceptions import InvalidArgumentError
from lightning_autolrs.forecast import ExponentialForecaster
from lightning_autolrs.proposer import DEFAULT_BETA, LRProposer

__all__ = ["MONITORS", "RANGE_SPAN", "StageController", "StepPlan", "default_tau"]

MONITORS = ("auto", "train_loss", "val_loss")

_REFERENCE_WINDOW = 20
_RANGE_TEST_STOP = 4.0  # the range test stops once a loss exceeds this multiple of the lowest loss so far
#: ``max_lr / min_lr`` when only one bound is given or a range test found ``max_lr``.
RANGE_SPAN = 1000.0
_RANGE_TEST_LAG = 3  # sweep steps the loss lags behind the LR (momentum, Adam's moments): max_lr steps back this far


@dataclass(frozen=True)
class StepPlan:
    """What the caller must do before the next optimizer step.

    Attributes:
        lr: base LR for this step (the first param group's; other groups keep their initial ratio to it).
        phase: ``"warmup"``, ``"search"`` or ``"exploit"``.
        restore: restore the stage snapshot before this step.
        capture: capture the stage snapshot before this step (after ``restore`` when both are set).
        probe: evaluate the validation probe after this step and pass it to :meth:`StageController.end_step`.
        save_best: before anything else, copy the current state (the end of the best trial so far) into the
            best-trial snapshot.
        restore_best: restore the best-trial snapshot instead of the stage snapshot.
    """

    lr: float
    phase: str
    restore: bool = False
    capture: bool = False
    probe: bool = False
    save_best: bool = False
    restore_best: bool = False


def default_tau(total_steps: float | None, num_trials: int, search_ratio: float, warmup_steps: int) -> int:
    """First-stage τ derived from the step budget so that at least three full stages fit.

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


def check_settings(
    *,
    min_lr: Any,
    max_lr: Any,
    num_trials: Any,
    tau: Any,
    tau_max: Any,
    search_ratio: Any,
    beta: Any,
    warmup_steps: Any,
    warmup_lr: Any,
    seed: Any,
    divergence_factor: Any,
    monitor: Any,
    min_trials: Any,
) -> dict[str, Any]:
    """Validate the AutoLRS settings shared by the callback and the controller; return them normalised.

    ``min_lr``, ``max_lr``, ``tau`` and ``warmup_lr`` may be ``None`` (the callback derives them at fit start).
    Raises :class:`InvalidArgumentError` / :class:`InvalidArgumentTypeError` naming the argument.
    """
    lo = check_float("min_lr", min_lr, positive=True, allow_none=True)
    hi = check_float("max_lr", max_lr, positive=True, allow_none=True)
    if lo is not None and hi is not None and hi <= lo:
        raise InvalidArgumentError(
            f"`max_lr` must be greater than `min_lr`, got max_lr={max_lr} <= min_lr={min_lr}; widen the range."
        )
    num_trials = check_int("num_trials", num_trials, minimum=2)
    tau = check_int("tau", tau, minimum=1, allow_none=True)
    tau_max = check_int("tau_max", tau_max, minimum=1)
    if tau is not None and tau_max < tau:
        raise InvalidArgumentError(f"`tau_max` must be >= `tau`, got tau_max={tau_max} < tau={tau}.")
    factor = check_float("divergence_factor", divergence_factor, positive=True)
    if factor <= 1.0:
        raise InvalidArgumentError(f"`divergence_factor` must be > 1, got {divergence_factor}.")
    if monitor not in MONITORS:
        raise InvalidArgumentError(f"`monitor` must be one of {', '.join(map(repr, MONITORS))}, got {monitor!r}.")
    min_trials = check_int("min_trials", min_trials, minimum=2)  # above num_trials it simply never stops early
    return {
        "min_lr": lo,
        "max_lr": hi,
        "num_trials": num_trials,
        "tau": tau,
        "tau_max": tau_max,
        "search_ratio": check_float("search_ratio", search_ratio, open_unit=True),
        "beta": check_float("beta", beta, positive=True),
        "warmup_steps": check_int("warmup_steps", warmup_steps, minimum=0),
        "warmup_lr": check_float("warmup_lr", warmup_lr, positive=True, allow_none=True),
        "seed": check_int("seed", seed, allow_none=True),
        "divergence_factor": factor,
        "monitor": monitor,
        "min_trials": min_trials,
    }


def tau_prime_for(tau: int, search_ratio: float) -> int:
    """Trial length τ' for a stage of length τ: ``max(1, round(search_ratio·τ))``."""
    return max(1, round(search_ratio * tau))


def _jsonable(x: float) -> float | None:
    return x if math.isfinite(x) else None


class StageController:
    """AutoLRS stage/trial state machine (see the module docstring for the rules).

    Args:
        min_lr: lower end of the LR search range (> 0).
        max_lr: upper end of the LR search range (> ``min_lr``).
        num_trials: candidate LRs tried per stage (≥ 2).
        tau: first stage's exploit length in optimizer steps.
        tau_max: τ doubles each stage until it reaches this.
        search_ratio: τ' = ``search_ratio``·τ, in (0, 1).
        warmup_steps: linear warmup steps before the first stage.
        warmup_lr: LR reached at the end of warmup (required when ``warmup_steps > 0``).
        total_steps: optimizer steps in the whole run (``None`` = unbounded).
        start_step: global step at which this controller starts (a run that adds AutoLRS mid-way).
        beta: UCB exploration weight handed to the proposer.
        seed: seed of the proposer's initial design; stage ``s`` uses ``seed + s``.
        divergence_factor: a loss above this multiple of the stage's reference loss counts as divergence.
        monitor: the series a trial is judged on: ``"train_loss"`` (every step's training loss), ``"val_loss"``
            (validation probes at ``probes_per_trial`` evenly spaced steps of each trial) or ``"auto"`` (validation
            probes once τ' ≥ ``auto_val_min_tau_prime``, the training loss for shorter trials).
        reuse_best_trial: continue the exploit phase from the end state of the best trial (kept in a second
            snapshot, :attr:`StepPlan.save_best`) instead of re-training its τ' steps from the stage start; the
            exploit phase is then τ − τ' steps long.
        early_stop: end a stage's search before ``num_trials`` once at least ``min_trials`` trials are done and the
            GP's optimistic bound (UCB with ``stop_beta``) nowhere beats the best trial.
        min_trials: fewest trials before ``early_stop`` may end a search.
        stop_beta: UCB weight of the ``early_stop`` test (smaller stops sooner).
        probes_per_trial: validation probes per trial when probing (the stride is ``τ' // probes_per_trial``).
        auto_val_min_tau_prime: the τ' from which ``monitor="auto"`` switches to validation probes.
        proposer: an :class:`LRProposer` to use instead of a new one (for tests).
        forecaster: an :class:`ExponentialForecaster` to use instead of a new one.

    Example:
        >>> c = StageController(1e-3, 1.0, num_trials=2, tau=10, tau_max=10, search_ratio=0.2, total_steps=30, seed=0)
        >>> plan = c.begin_step()
        >>> plan.phase, plan.capture
        ('search', True)
        >>> for _ in range(30):
        ...     _ = c.end_step(1.0)
        ...     plan = c.begin_step() if c.step < 30 else None
        >>> len(c.lrs), [h["tau"] for h in c.history]
        (30, [10, 10])
    """

    def __init__(
        self,
        min_lr: float | None,
        max_lr: float | None,
        *,
        num_trials: int = 10,
        tau: int = 1000,
        tau_max: int = 8000,
        search_ratio: float = 0.1,
        warmup_steps: int = 0,
        warmup_lr: float | None = None,
        total_steps: int | None = None,
        start_step: int = 0,
        beta: float = DEFAULT_BETA,
        seed: int | None = None,
        divergence_factor: float = 5.0,
        monitor: str = "train_loss",
        reuse_best_trial: bool = False,
        early_stop: bool = False,
        min_trials: int = 3,
        stop_beta: float = 1.0,
        probes_per_trial: int = 8,
        auto_val_min_tau_prime: int = 200,
        range_test_steps: int = 0,
        range_test_lrs: tuple[float, float] | None = None,
        abort_trials: bool = False,
        abort_margin: float = 0.5,
        warm_start: bool = False,
        proposer: LRProposer | None = None,
        forecaster: ExponentialForecaster | None = None,
    ) -> None:
        self.range_test_steps = check_int("range_test_steps", range_test_steps, minimum=0)
        if self.range_test_steps == 1:
            raise InvalidArgumentError("`range_test_steps` must be 0 (no range test) or at least 2, got 1.")
        sweep: tuple[float, float] | None = None
        if self.range_test_steps:
            if range_test_lrs is None or len(range_test_lrs) != 2:
                raise InvalidArgumentError("`range_test_lrs` (lowest, highest) is needed when `range_test_steps` > 0.")
            sweep = (
                check_float("range_test_lrs", range_test_lrs[0], positive=True),
                check_float("range_test_lrs", range_test_lrs[1], positive=True),
            )
            if not sweep[1] > sweep[0]:
                raise InvalidArgumentError(f"`range_test_lrs` must be (lowest, highest), got {range_test_lrs}.")
        elif min_lr is None or max_lr is None:
            raise InvalidArgumentError("`min_lr` and `max_lr` are required by the controller without a range test.")
        checked = check_settings(
            min_lr=min_lr,
            max_lr=max_lr,
            num_trials=num_trials,
            tau=tau,
            tau_max=tau_max,
            search_ratio=search_ratio,
            beta=beta,
            warmup_steps=warmup_steps,
            warmup_lr=warmup_lr,
            seed=seed,
            divergence_factor=divergence_factor,
            monitor=monitor,
            min_trials=min_trials,
        )
        if checked["warmup_steps"] > 0 and checked["warmup_lr"] is None:
            raise InvalidArgumentError("`warmup_lr` is required when `warmup_steps` > 0; pass the LR warmup ends at.")
        self._given_range: tuple[float | None, float | None] = (checked["min_lr"], checked["max_lr"])
        if sweep is not None:
            lo = checked["min_lr"] or (checked["max_lr"] or sweep[1]) / RANGE_SPAN
            hi = checked["max_lr"] or max(sweep[1], lo * 10)
            checked["min_lr"], checked["max_lr"] = lo, hi  # placeholders until the range test has run
        self.min_lr: float = checked["min_lr"]
        self.max_lr: float = checked["max_lr"]
        self.num_trials: int = checked["num_trials"]
        self.tau: int = checked["tau"]
        self.tau_max: int = checked["tau_max"]
        self.search_ratio: float = checked["search_ratio"]
        self.beta: float = checked["beta"]
        self.warmup_steps: int = checked["warmup_steps"]
        self.warmup_lr: float | None = checked["warmup_lr"]
        self.seed: int | None = checked["seed"]
        self.divergence_factor: float = checked["divergence_factor"]
        self.monitor: str = checked["monitor"]
        self.min_trials: int = checked["min_trials"]
        self.total_steps = check_int("total_steps", total_steps, minimum=1, allow_none=True)
        self.probes_per_trial = check_int("probes_per_trial", probes_per_trial, minimum=2)
        self.reuse_best_trial = bool(reuse_best_trial)
        self.early_stop = bool(early_stop)
        self.stop_beta = check_float("stop_beta", stop_beta, positive=True)
        self.auto_val_min_tau_prime = check_int("auto_val_min_tau_prime", auto_val_min_tau_prime, minimum=1)
        self.range_test_lrs = sweep
        self.abort_trials = bool(abort_trials)
        self.abort_margin = check_float("abort_margin", abort_margin, positive=True)
        self.warm_start = bool(warm_start)
        self.proposer = proposer or LRProposer(self.min_lr, self.max_lr, beta=self.beta, seed=self.seed)
        self.forecaster = forecaster or ExponentialForecaster()

        self.step = check_int("start_step", start_step, minimum=0)
        self.lrs: list[float] = []
        self.losses: list[float | None] = []
        self.history: list[dict[str, Any]] = []
        self.phase = "warmup" if self.warmup_steps > self.step else "exploit"
        self._plan: StepPlan | None = None
        self._plan_range_test = False  # the open plan is a range-test step
        self._pending_restore = False
        self._pending_capture = False
        self._pending_save_best = False
        self._pending_restore_best = False
        self._best_trial: int | None = None  # index of the trial whose end state the best-trial snapshot holds
        self._recent: deque[float] = deque(maxlen=_REFERENCE_WINDOW)
        self._eff_max_lr = self.max_lr
        # stage state
        self._stage = -1
        self._stage_tau = 0
        self._stage_tau_prime = 0
        self._ref_loss: float | None = None
        self._lr = self.min_lr
        self._exploit_end: float = self.step  # the first begin_step after warmup starts a stage
        self._trial = 0
        self._trial_start = 0
        self._trial_losses: list[float] = []
        self._trial_probes: list[float] = []
        self._probe_stride = 0  # 0: this stage's trials are judged on the training loss
        self._trial_steps = 0
        self._ranking: list[float] = []  # trial LRs of the current stage, best first (exploit fallbacks)
        self._stage_level: float | None = None  # first value of the stage's judged series (trial abort)
        self._abort_checked = False
        self._warm_prior: list[tuple[float, float]] = []  # previous stage's (lr, forecast), anchor first
        # range test
        self.range_test: dict[str, Any] | None = None  # its result, once run
        self._rt_lrs: list[float] = []
        self._rt_losses: list[float | None] = []

    # ------------------------------------------------------------------ the two events
    def begin_step(self) -> StepPlan:
        """Plan the optimizer step number :attr:`step` (0-based global step)."""
        self._plan_range_test = False
        if self.step < self.warmup_steps:
            assert self.warmup_lr is not None
            self.phase = "warmup"
            self._plan = StepPlan(self.warmup_lr * (self.step + 1) / self.warmup_steps, "warmup")
            return self._plan
        if self.range_test_running:
            assert self.range_test_lrs is not None
            lo, hi = self.range_test_lrs
            i = len(self._rt_lrs)
            self.phase = "warmup"
            self._plan_range_test = True
            lr = lo * (hi / lo) ** (i / (self.range_test_steps - 1))
            self._plan = StepPlan(min(lr, hi), "warmup", capture=i == 0)
            return self._plan
        if self.phase == "warmup" or (self.phase == "exploit" and self.step >= self._exploit_end):
            self._start_stage()
        probe = self.phase == "search" and self._probe_stride > 0 and (self._trial_steps + 1) % self._probe_stride == 0
        self._plan = StepPlan(
            self._lr,
            self.phase,
            restore=self._pending_restore and not self._pending_restore_best,
            capture=self._pending_capture,
            probe=probe,
            save_best=self._pending_save_best,
            restore_best=self._pending_restore_best,
        )
        self._pending_restore = self._pending_capture = False
        self._pending_save_best = self._pending_restore_best = False
        return self._plan

    def end_step(
        self, loss: float | None, *, progressed: bool = True, probe: float | None = None, probe_seconds: float = 0.0
    ) -> list[dict[str, Any]]:
        """Record the finished step and its training loss (``None`` when the step produced no loss).

        Args:
            loss: the step's training loss (mean over micro-batches and ranks), or ``None``.
            progressed: ``False`` when the optimizer did not update the weights (an AMP GradScaler skipped the step):
                the step is still accounted to its phase, but it does not count towards a trial's τ' steps.
            probe: the validation probe's loss, when the plan asked for one.
            probe_seconds: time the probe took (summed per stage in ``history``).

        Returns:
            Events for the caller to log: dicts with ``"event"`` in ``{"trial", "search", "fallback"}``.
        """
        if self._plan is None:
            raise RuntimeError("end_step() called without a matching begin_step()")
        plan, self._plan = self._plan, None
        self.lrs.append(plan.lr)
        self.step += 1
        if loss is not None:
            loss = float(loss)
        self.losses.append(loss if loss is not None and math.isfinite(loss) else None)
        events: list[dict[str, Any]] = []
        if self._plan_range_test:
            events += self._record_range_test_step(plan.lr, loss)
        elif plan.phase == "warmup":
            if loss is not None and math.isfinite(loss):
                self._recent.append(loss)
        elif plan.phase == "search":
            self.history[-1]["probe_seconds"] += float(probe_seconds)
            if plan.probe and progressed and probe is not None:
                self._trial_probes.append(float(probe))
            events += self._record_trial_step(loss, progressed)
        else:
            events += self._record_exploit_step(loss)
        return events

    # ------------------------------------------------------------------ range test
    @property
    def range_test_running(self) -> bool:
        """Whether the LR range test has yet to finish (it runs after warmup, before the first stage)."""
        return self.range_test_steps > 0 and self.range_test is None and self.step >= self.warmup_steps

    @property
    def range_test_position(self) -> int:
        """Steps of the range test taken so far."""
        return len(self._rt_lrs)

    def _record_range_test_step(self, lr: float, loss: float | None) -> list[dict[str, Any]]:
        self._rt_lrs.append(lr)
        finite = loss is not None and math.isfinite(loss)
        self._rt_losses.append(loss if finite else None)
        seen = [v for v in self._rt_losses[:-1] if v is not None]
        blew_up = loss is not None and (not finite or (len(seen) >= 3 and loss > _RANGE_TEST_STOP * min(seen)))
        if not blew_up and len(self._rt_lrs) < self.range_test_steps:
            return []
        return [self._finish_range_test(stopped=blew_up)]

    def _finish_range_test(self, stopped: bool) -> dict[str, Any]:
        assert self.range_test_lrs is not None
        points = [(lr, v) for lr, v in zip(self._rt_lrs, self._rt_losses) if v is not None]
        if stopped and points and self._rt_losses[-1] is not None:
            points = points[:-1]  # the step that blew up
        if points:
            h = max(1, len(points) // 10)
            values = [v for _, v in points]
            smooth = [statistics.fmean(values[max(0, i - h) : i + h + 1]) for i in range(len(values))]
            best = min(range(len(points)), key=lambda i: (smooth[i], i))
            found_max = points[max(0, best - _RANGE_TEST_LAG)][0]
        else:  # not a single finite loss: the lowest swept LR
            found_max = self.range_test_lrs[0]
        given_lo, given_hi = self._given_range
        hi = given_hi if given_hi is not None else found_max
        lo = given_lo if given_lo is not None else hi / RANGE_SPAN
        if not hi > lo:
            hi = lo * RANGE_SPAN
        self.min_lr, self.max_lr = float(lo), float(hi)
        self._eff_max_lr = self.max_lr
        self.proposer.reset(min_lr=self.min_lr, max_lr=self.max_lr)
        self.range_test = {
            "start_step": self.step - len(self._rt_lrs),
            "steps": len(self._rt_lrs),
            "lrs": list(self._rt_lrs),
            "losses": list(self._rt_losses),
            "stopped_early": stopped,
            "min_lr": self.min_lr,
            "max_lr": self.max_lr,
        }
        self._pending_restore = True
        summary = {k: v for k, v in self.range_test.items() if k not in ("lrs", "losses")}
        return {"event": "range_test", "first_lr": self.range_test_lrs[0], **summary}

    # ------------------------------------------------------------------ stage planning
    def _remaining(self) -> float:
        return math.inf if self.total_steps is None else self.total_steps - self.step

    def _start_stage(self) -> None:
        self._stage += 1
        tau = min(self.tau * 2 ** min(self._stage, 62), self.tau_max)
        tau_prime = tau_prime_for(tau, self.search_ratio)
        self._stage_tau, self._stage_tau_prime = tau, tau_prime
        self._ref_loss = max(self._recent) if self._recent else None
        search_cost = self.num_trials * tau_prime
        remaining = self._remaining()
        searching = remaining >= search_cost + tau_prime or not self.history
        entry: dict[str, Any] = {
            "stage": self._stage,
            "start_step": self.step,
            "tau": tau,
            "tau_prime": tau_prime,
            "lr_range": [self.min_lr, self._eff_max_lr],
            "trials": [],
            "best_lr": None,
            "search_steps": 0,
            "exploit_start": None,
            "exploit_steps": 0,
            "fallbacks": [],
            "signal": "train_loss",
            "probe_seconds": 0.0,
        }
        probing = self.monitor == "val_loss" or (self.monitor == "auto" and tau_prime >= self.auto_val_min_tau_prime)
        self._probe_stride = max(1, tau_prime // self.probes_per_trial) if probing else 0
        if probing:
            entry["signal"] = "val_loss"
        self.history.append(entry)
        self._pending_capture = True
        self._stage_level = None
        if searching:
            self.phase = "search"
            self.proposer.reset(min_lr=self.min_lr, max_lr=self._eff_max_lr, seed=self._stage_seed())
            self._warm_prior = self._previous_forecasts() if self.warm_start else []
            if self._warm_prior:
                entry["warm_start"] = True
            self._begin_trial(0, lr=self._warm_prior[0][0] if self._warm_prior else None)
        else:
            best = self.history[-2]["best_lr"]
            entry["best_lr"] = best
            self._ranking = [best]
            self._begin_exploit(best)

    def _previous_forecasts(self) -> list[tuple[float, float]]:
        """The last searched stage's (lr, forecast) of trials that did not diverge, its chosen LR first; [] if none."""
        previous = next((h for h in reversed(self.history[:-1]) if h["trials"]), None)
        if previous is None or previous["best_lr"] is None:
            return []
        done = [(t["lr"], t["predicted_loss"]) for t in previous["trials"] if not t["diverged"]]
        done = [(lr, f) for lr, f in done if self.min_lr <= lr <= self._eff_max_lr]
        anchor = [(lr, f) for lr, f in done if lr == previous["best_lr"]]
        if not anchor:
            return []
        return anchor[:1] + [(lr, f) for lr, f in done if lr != previous["best_lr"]]

    def _stage_seed(self) -> int:
        return (0 if self.seed is None else self.seed) + self._stage

    def _begin_trial(self, index: int, lr: float | None = None) -> None:
        self._trial = index
        self._trial_start = self.step
        self._trial_losses = []
        self._trial_probes = []
        self._trial_steps = 0
        self._abort_checked = False
        proposed = self.proposer.propose() if lr is None else lr
        self._lr = min(max(proposed, self.min_lr), self._eff_max_lr)

    def _begin_exploit(self, lr: float, already: int = 0) -> None:
        """Exploit ``lr`` for the rest of the stage; ``already`` steps of it were trained by a reused trial."""
        entry = self.history[-1]
        self.phase = "exploit"
        self._lr = lr
        entry["exploit_start"] = self.step
        remaining = self._remaining()
        exploit = min(max(1, self._stage_tau - already), remaining)
        after = remaining - exploit
        next_tau = min(self._stage_tau * 2, self.tau_max)
        next_tp = tau_prime_for(next_tau, self.search_ratio)
        if after < (self.num_trials + 1) * next_tp:
            exploit = remaining  # last stage: exploit to the end of the budget
        self._exploit_end = math.inf if math.isinf(exploit) else self.step + int(exploit)

    # ------------------------------------------------------------------ trials
    def _diverged(self, loss: float | None) -> bool:
        if loss is None:
            return False
        if not math.isfinite(loss):
            return True
        ref = self._ref_loss
        return ref is not None and ref > 0 and loss > self.divergence_factor * ref

    def _record_trial_step(self, loss: float | None, progressed: bool = True) -> list[dict[str, Any]]:
        entry = self.history[-1]
        entry["search_steps"] += 1
        if not progressed:
            return []
        self._trial_steps += 1
        if self._ref_loss is None and loss is not None and math.isfinite(loss):
            self._ref_loss = loss  # first stage, no history: the stage-start loss
        diverged = self._diverged(loss)
        if loss is not None and not diverged:
            self._trial_losses.append(loss)
        series, _ = self._series()
        if self._stage_level is None and series:
            self._stage_level = series[0]
        if not diverged and self._trial_steps < self._stage_tau_prime:
            partial = self._abort_forecast() if self.abort_trials else None
            return [] if partial is None else self._finish_trial(False, partial)
        return self._finish_trial(diverged)

    def _series(self) -> tuple[list[float], int]:
        """The series the current trial is judged on and its forecast horizon (in that series' units)."""
        if self._probe_stride:  # judged on validation probes, one every `stride` steps
            return self._trial_probes, max(1, self._stage_tau // self._probe_stride)
        return self._trial_losses, self._stage_tau

    def _abort_forecast(self) -> Any:
        """The partial forecast of the running trial when it is clearly worse than the stage's best; else ``None``."""
        series, horizon = self._series()
        full = self._stage_tau_prime // self._probe_stride if self._probe_stride else self._stage_tau_prime
        if self._abort_checked or full < 8 or len(series) < max(4, full // 2):
            return None
        self._abort_checked = True  # one check per trial, at half of its series
        done = [t["predicted_loss"] for t in self.history[-1]["trials"] if not t["diverged"] and not t.get("aborted")]
        if not done or self._stage_level is None:
            return None
        best = min(done)
        margin = self.abort_margin * max(self._stage_level - best, 0.0)
        forecast = self.forecaster.predict(series, horizon)
        if forecast.method == "empty" or not forecast.value > best + margin:
            return None
        return forecast

    def _finish_trial(self, diverged: bool, partial: Any = None) -> list[dict[str, Any]]:
        entry = self.history[-1]
        series, horizon = self._series()
        aborted = partial is not None
        if aborted:
            forecast = partial
        else:
            forecast = None if diverged else self.forecaster.predict(series, horizon)
        predicted = math.inf if forecast is None else forecast.value
        diverged = diverged or not math.isfinite(predicted)
        tail = self._trial_losses[-max(1, len(self._trial_losses) // 4) :]
        trial = {
            "lr": self._lr,
            "start_step": self._trial_start,
            "predicted_loss": None if diverged else predicted,
            "steps": self._trial_steps,
            "diverged": diverged,
            "final_loss": _jsonable(statistics.fmean(tail)) if tail else None,
            "forecast": None if forecast is None else forecast.method,
        }
        if aborted:
            trial["aborted"] = True
        entry["trials"].append(trial)
        self.proposer.observe(self._lr, predicted, diverged=diverged)
        if self._warm_prior and len(entry["trials"]) == 1:
            # warm start: the anchor's change in forecast shifts the previous stage's other forecasts
            if not diverged:
                shift = predicted - self._warm_prior[0][1]
                others = self._warm_prior[1:]
                self.proposer.set_prior([lr for lr, _ in others], [f + shift for _, f in others])
            self._warm_prior = []
        events: list[dict[str, Any]] = [{"event": "trial", "stage": self._stage, "trial": self._trial, **trial}]
        self._pending_restore = True
        if self.reuse_best_trial and not diverged and trial["steps"] == self._stage_tau_prime:
            best_index = self._best_trial
            if best_index is None or (predicted, self._lr) < (
                entry["trials"][best_index]["predicted_loss"],
                entry["trials"][best_index]["lr"],
            ):
                self._best_trial = self._trial
                self._pending_save_best = True
        done = len(entry["trials"])
        stop_early = (
            self.early_stop
            and done < self.num_trials
            and done >= self.min_trials
            and not self.proposer.improvement_plausible(self.stop_beta)
        )
        if stop_early:
            entry["stopped_early"] = True
        if self._trial + 1 < self.num_trials and not stop_early:
            self._begin_trial(self._trial + 1)
            return events
        ranked = sorted((t for t in entry["trials"] if not t["diverged"]), key=lambda t: (t["predicted_loss"], t["lr"]))
        self._ranking = [t["lr"] for t in ranked]
        best = self._ranking[0] if self._ranking else self.min_lr
        entry["best_lr"] = best
        reused = self._best_trial is not None and entry["trials"][self._best_trial]["lr"] == best
        if reused:
            entry["reused_trial"] = self._best_trial
            if self._best_trial == len(entry["trials"]) - 1:
                self._pending_restore = self._pending_save_best = False  # the model already holds that state
            else:
                self._pending_restore_best = True
        diverged_lrs = [t["lr"] for t in entry["trials"] if t["diverged"]]
        if diverged_lrs:
            self._eff_max_lr = max(min(diverged_lrs), self.min_lr * 1.5)
        else:
            self._eff_max_lr = min(self._eff_max_lr * 2, self.max_lr)
        self._best_trial = None
        self._begin_exploit(best, already=self._stage_tau_prime if reused else 0)
        events.append({"event": "search", "stage": self._stage, "best_lr": best, "trials": len(entry["trials"])})
        return events

    # ------------------------------------------------------------------ exploit
    def _record_exploit_step(self, loss: float | None) -> list[dict[str, Any]]:
        entry = self.history[-1]
        entry["exploit_steps"] += 1
        if self._ref_loss is None and loss is not None and math.isfinite(loss):
            self._ref_loss = loss
        if self._diverged(loss):
            failed = self._lr
            if failed in self._ranking:
                self._ranking.remove(failed)
            smaller = [lr for lr in self._ranking if lr < failed]
            self._lr = smaller[0] if smaller else max(failed / 10, self.min_lr)  # never below the range
            fallback = {"step": self.step - 1, "failed_lr": failed, "new_lr": self._lr}
            entry["fallbacks"].append(fallback)
            self._pending_restore = True
            return [{"event": "fallback", "stage": self._stage, **fallback}]
        if loss is not None and math.isfinite(loss):
            self._recent.append(loss)
        return []

    # ------------------------------------------------------------------ queries
    @property
    def stage(self) -> int:
        """Index of the current stage (−1 before the first)."""
        return self._stage

    @property
    def trial(self) -> int:
        """Index of the current trial within the stage's search."""
        return self._trial

    @property
    def stage_steps(self) -> tuple[int, int]:
        """(τ, τ') of the current stage."""
        return self._stage_tau, self._stage_tau_prime

    @property
    def exploit_end(self) -> float:
        """Global step at which the current exploit phase ends (``inf`` when the budget is unbounded)."""
        return self._exploit_end

    def restart_stage(self) -> None:
        """Start the current stage's search again from the current weights (resume without a stage snapshot).

        The trials recorded so far are dropped, the proposer forgets them, and the next step captures a new snapshot.
        """
        if self.phase != "search":
            return
        entry = self.history[-1]
        entry["trials"] = []
        entry["search_steps"] = 0
        entry["start_step"] = self.step
        entry["restarted"] = True
        self.proposer.reset(min_lr=self.min_lr, max_lr=self._eff_max_lr, seed=self._stage_seed())
        self._pending_restore = False
        self._pending_capture = True
        self._pending_save_best = self._pending_restore_best = False
        self._best_trial = None
        self._begin_trial(0)

    def finalize(self) -> bool:
        """End a run cut short in the middle of a search (e.g. by ``max_time``).

        Returns:
            Whether the caller must restore the stage snapshot: the model holds a trial's state (which need not be
            the winner's), or the last step diverged.
        """
        return self.needs_snapshot or self._pending_restore

    @property
    def needs_snapshot(self) -> bool:
        """Whether the model holds uncommitted state that the stage snapshot must undo (a search or range test)."""
        return self.phase == "search" or (self.range_test_running and bool(self._rt_lrs))

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """All mutable state as plain Python values (safe for ``torch.load(weights_only=True)``)."""
        return {
            "version": 1,
            "step": self.step,
            "phase": self.phase,
            "lrs": list(self.lrs),
            "losses": list(self.losses),
            "history": _copy_history(self.history),
            "recent": list(self._recent),
            "eff_max_lr": self._eff_max_lr,
            "stage": self._stage,
            "stage_tau": self._stage_tau,
            "stage_tau_prime": self._stage_tau_prime,
            "ref_loss": self._ref_loss,
            "lr": self._lr,
            "exploit_end": None if math.isinf(self._exploit_end) else self._exploit_end,
            "trial": self._trial,
            "trial_start": self._trial_start,
            "trial_losses": list(self._trial_losses),
            "trial_probes": list(self._trial_probes),
            "probe_stride": self._probe_stride,
            "trial_steps": self._trial_steps,
            "ranking": list(self._ranking),
            "pending_restore": self._pending_restore,
            "pending_capture": self._pending_capture,
            "pending_save_best": self._pending_save_best,
            "pending_restore_best": self._pending_restore_best,
            "best_trial": self._best_trial,
            "proposer": self.proposer.state_dict(),
            "min_lr": self.min_lr,
            "max_lr": self.max_lr,
            "range_test": None if self.range_test is None else _copy_range_test(self.range_test),
            "rt_lrs": list(self._rt_lrs),
            "rt_losses": list(self._rt_losses),
            "stage_level": self._stage_level,
            "abort_checked": self._abort_checked,
            "warm_prior": [list(p) for p in self._warm_prior],
        }

    def sync_state(self) -> dict[str, Any]:
        """The decision state that ranks must share (:meth:`state_dict` without the per-step lists)."""
        state = self.state_dict()
        del state["lrs"], state["losses"]
        return state

    def load_sync_state(self, state: dict[str, Any]) -> None:
        """Adopt another rank's :meth:`sync_state`, keeping this rank's per-step lists."""
        self.load_state_dict({**state, "lrs": self.lrs, "losses": self.losses})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; keys added in later versions are read with defaults."""
        self.step = int(state.get("step", self.step))
        self.phase = state.get("phase", self.phase)
        self.lrs = [float(x) for x in state.get("lrs", [])]
        self.losses = [None if x is None else float(x) for x in state.get("losses", [None] * len(self.lrs))]
        self.history = _copy_history(state.get("history", []))
        self._recent = deque(state.get("recent", []), maxlen=_REFERENCE_WINDOW)
        self._eff_max_lr = float(state.get("eff_max_lr", self.max_lr))
        self._stage = int(state.get("stage", -1))
        self._stage_tau = int(state.get("stage_tau", 0))
        self._stage_tau_prime = int(state.get("stage_tau_prime", 0))
        self._ref_loss = state.get("ref_loss")
        self._lr = float(state.get("lr", self.min_lr))
        end = state.get("exploit_end")
        self._exploit_end = math.inf if end is None else int(end)
        self._trial = int(state.get("trial", 0))
        self._trial_start = int(state.get("trial_start", 0))
        self._trial_losses = [float(x) for x in state.get("trial_losses", [])]
        self._trial_probes = [float(x) for x in state.get("trial_probes", [])]
        self._probe_stride = int(state.get("probe_stride", 0))
        self._trial_steps = int(state.get("trial_steps", 0))
        self._ranking = [float(x) for x in state.get("ranking", [])]
        self._pending_restore = bool(state.get("pending_restore", False))
        self._pending_capture = bool(state.get("pending_capture", False))
        self._pending_save_best = bool(state.get("pending_save_best", False))
        self._pending_restore_best = bool(state.get("pending_restore_best", False))
        best_trial = state.get("best_trial")
        self._best_trial = None if best_trial is None else int(best_trial)
        self.min_lr = float(state.get("min_lr", self.min_lr))
        self.max_lr = float(state.get("max_lr", self.max_lr))
        rt = state.get("range_test")
        self.range_test = None if rt is None else _copy_range_test(rt)
        self._rt_lrs = [float(x) for x in state.get("rt_lrs", [])]
        self._rt_losses = [None if x is None else float(x) for x in state.get("rt_losses", [])]
        level = state.get("stage_level")
        self._stage_level = None if level is None else float(level)
        self._abort_checked = bool(state.get("abort_checked", False))
        self._warm_prior = [(float(lr), float(f)) for lr, f in state.get("warm_prior", [])]
        if "proposer" in state:
            self.proposer.load_state_dict(state["proposer"])
        self._plan = None


def _copy_range_test(result: dict[str, Any]) -> dict[str, Any]:
    return {**result, "lrs": list(result.get("lrs", [])), "losses": list(result.get("losses", []))}


def _copy_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for entry in history:
        e = dict(entry)
        e["trials"] = [dict(t) for t in entry.get("trials", [])]
        e["fallbacks"] = [dict(f) for f in entry.get("fallbacks", [])]
        e["lr_range"] = list(entry.get("lr_range", []))
        out.append(e)
    return out
