"""The LR range test: a geometric LR sweep before the first stage, and its stop rule.

First, on the untrained model (before any warmup: on a warmed-up model the loss stays flat until it blows up, so its
lowest point is noise), the LR sweeps geometrically over ``lrs = (lowest, highest)`` for at most ``steps`` steps, from a
snapshot the caller captures at the sweep's first step. The sweep stops early once a loss is non-finite, or once a
finite loss shows training blowing up (:meth:`RangeTest._blew_up`): above :data:`STOP` (``4×``) the lowest loss so far,
as before, where batch noise spreads one model's losses at most ``2×`` (:meth:`RangeTest.spread`, estimated in the
sweep's first quarter); where it spreads them more (small batches, a model already trained), above the squared spread
times the lowest running median of 3 to :data:`MEDIAN_WINDOW` losses; within the first quarter, above ``4×`` the largest
loss so far. A sweep that stopped on a non-finite loss without having seen a finite one raises
:class:`~lightning_autolrs.exceptions.NonFiniteLossError` instead of deriving a range. ``max_lr`` is the swept LR three
sweep steps before the lowest smoothed loss (centred moving mean over ``2h + 1`` points, ``h = max(1, n // 10)``; the
three steps undo the lag of the loss behind the LR, which otherwise puts the minimum where training is already on its
way to diverging), but never below the configured LR unless the sweep blew up at or below it, nor more than a decade
(:data:`BELOW_BLOWUP`) below the highest LR a sweep that blew up took before it did, and ``min_lr=max_lr/1000``; a bound
the user gave wins (a given ``min_lr`` at or above the ``max_lr`` found, or less than a decade below it: ``max_lr`` is
the highest LR the sweep took without blowing up, at least :data:`GIVEN_MIN_SPAN` x ``min_lr``). The caller then
restores the snapshot, so the sweep costs its steps and nothing else. A sweep begun by an earlier version of the package
ends by the rule it began with (:data:`RULE`; a resumed state without ``rt_rule``: a loss above ``4×`` the lowest so
far, no configured-LR floor).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

from lightning_autolrs._validation import check_float, check_int
from lightning_autolrs.exceptions import InvalidArgumentError, NonFiniteLossError
from lightning_autolrs.forecast import _difference_sigma
from lightning_autolrs.records import RangeTestResult
from lightning_autolrs.settings import RANGE_SPAN

__all__ = ["BELOW_BLOWUP", "GIVEN_MIN_SPAN", "MEDIAN_WINDOW", "RULE", "STOP", "RangeTest"]

STOP = 4.0  # the sweep stops once a loss exceeds this multiple of the lowest loss so far (on a sweep with little noise)
#: Losses per running median: on a sweep whose noise spreads losses more than ``2×``, the reference level of the stop
#: rule is the lowest running median (of 3 to 5 losses), not the lowest loss (with batches of 2, one batch in 25 lies
#: 20× below the rest).
MEDIAN_WINDOW = 5
#: The version of the stop rule and the range it derives, kept in the state (``rt_rule``); 1: a loss above ``STOP×`` the
#: lowest so far ends the sweep, no configured-LR floor, the first stage's reference its own first loss (up to 73ba20c);
#: 2: no :data:`BELOW_BLOWUP` floor (up to 3caaebf, the package tree of 2026-12-06).
RULE = 3
#: A sweep that blew up puts ``max_lr`` at most this factor below the highest LR it took without blowing up. The
#: lowest smoothed loss alone can lie far below that LR where batch noise spreads the losses: on a held-out workload
#: (a tanh MLP regression with SGD + momentum and batches of 32, ``benchmarks.workloads.HELD_OUT``) the sweeps of seeds
#: 0-9 blew up at 0.33-0.66, but their noisy minimum (seed 0: losses 0.2-1.7 from one batch to the next) gave
#: ``max_lr`` = the configured 0.01 in four of them, so no stage could try more, while tuned cosine's best LR there is
#: 0.1. Where the benchmark's tuned cosine LR is known, the sweeps blew up at 0.5-28x it (the digits CNN: 0.8-1.9
#: against 1.58; the digits MLP: 2.6-6.8x; the digits MLP with Adam: 3.4-28x; that regression: 3.3-6.6x), so a tenth
#: of the blow-up is a bound to search below, not a choice.
BELOW_BLOWUP = 10.0
#: Standard deviations of the log-loss noise that :meth:`RangeTest.spread` spans: about the range of 25 samples (a
#: 100-step sweep's first quarter) of a normal variable.
RANGE_SIGMAS = 4.0
LAG = 3  # sweep steps the loss lags behind the LR (momentum, Adam's moments): max_lr steps back this far
#: With a given ``min_lr`` at or above the ``max_lr`` the sweep points to (by rule 3, also less than a decade below it),
#: ``max_lr`` is the highest LR the sweep took without blowing up, but at least this factor above ``min_lr`` (a decade
#: to search in; the divergence guard cuts trials above the blow-up). It was ``min_lr`` x 1000 before, without a word.
GIVEN_MIN_SPAN = 10.0


class RangeTest:
    """The sweep's state: the LRs and losses so far, and its result once it ended.

    Args:
        steps: the sweep's length (0: no range test; else ≥ 2).
        lrs: (lowest, highest) swept LR, required when ``steps > 0``.
        given: the ``(min_lr, max_lr)`` the user gave (``None`` where not given): they win over what the sweep finds.
        configured_lr: the optimizer's configured LR (``None``: unknown). Unless the sweep blew up at or below it,
            ``max_lr`` is never below it: nothing showed that LR too large, and where the loss does not fall during
            the sweep its lowest smoothed point can lie anywhere. A model already trained (fine-tuning: the digits MLP
            after 600 steps at its lr=0.05, a sweep that blew up at 0.44-0.64) had its lowest smoothed loss at
            1.3e-5-5e-4, and so had the Friedman MLP with batches of 2 (0.00016 and 0.00025 against a configured
            0.001); those runs then trained at those LRs. Not one of the benchmark workloads' 150 sweeps of seeds 0-29
            found a ``max_lr`` below the configured LR.

    Example:
        >>> rt = RangeTest(4, (1e-3, 1.0), given=(None, None))
        >>> [f"{rt.lr(i):.3g}" for i in range(4)]
        ['0.001', '0.01', '0.1', '1']
        >>> [rt.record(lr, loss) for lr, loss in [(1e-3, 1.0), (1e-2, 0.5), (0.1, 0.2), (1.0, 9.0)]][-1] is not None
        True
        >>> rt.result.max_lr, rt.result.stopped_early  # a tenth of 0.1, the last LR before the blow-up
        (0.01, True)

    With small batches (one batch's loss many times another's on the same model), a loss must stand out from that
    noise: where the first quarter's batches put successive losses up to 6× apart, a loss 5.8× the lowest does not
    stop the sweep (it would have to exceed the squared spread times the lowest running median of 3-5 losses).

        >>> noisy = RangeTest(20, (1e-3, 1.0), given=(None, None))
        >>> [noisy.record(noisy.lr(i), v) for i, v in enumerate([0.5, 3.0, 1.0, 2.0, 1.0, 2.9])] == [None] * 6
        True
        >>> f"{noisy.spread():.3g}"
        '42.8'
    """

    def __init__(
        self,
        steps: int,
        lrs: tuple[float, float] | None,
        given: tuple[float | None, float | None],
        configured_lr: float | None = None,
    ) -> None:
        self.steps = check_int("range_test_steps", steps, minimum=0)
        self.configured_lr = configured_lr
        if self.steps == 1:
            raise InvalidArgumentError("`range_test_steps` must be 0 (no range test) or at least 2, got 1.")
        self.lrs: tuple[float, float] | None = None
        if self.steps:
            if lrs is None or len(lrs) != 2:
                raise InvalidArgumentError("`range_test_lrs` (lowest, highest) is needed when `range_test_steps` > 0.")
            sweep = (
                check_float("range_test_lrs", lrs[0], positive=True),
                check_float("range_test_lrs", lrs[1], positive=True),
            )
            if not sweep[1] > sweep[0]:
                raise InvalidArgumentError(f"`range_test_lrs` must be (lowest, highest), got {lrs}.")
            self.lrs = sweep
        self.given = given
        self.result: RangeTestResult | None = None
        #: The ``max_lr`` the range test derived (the sweep's, raised to the configured LR and to a tenth of the blow-up
        #: where those floors apply), before a
        #: given ``min_lr`` (``None``: not ended in this process, or ``max_lr`` given; not part of the state: read when
        #: the sweep ends).
        self.found_max_lr: float | None = None
        self._lrs: list[float] = []
        self._losses: list[float | None] = []
        self.rule = RULE
        self._reset_levels()

    def _reset_levels(self) -> None:
        """Forget the running levels of the stop rule (:meth:`_levels` rebuilds them from the losses)."""
        self._counted = 0  # entries of `_losses` folded into the levels below
        self._finite = 0  # finite losses among them
        self._low = math.inf  # their lowest and largest finite loss
        self._high = -math.inf
        self._window: deque[float] = deque(maxlen=MEDIAN_WINDOW)  # the last finite losses
        self._spread: float | None = None  # spread(), once the first quarter is over
        self._low_median = math.inf  # the lowest running median of 3 to MEDIAN_WINDOW finite losses

    @property
    def pending(self) -> bool:
        """Whether a sweep is configured and has not finished."""
        return self.steps > 0 and self.result is None

    @property
    def position(self) -> int:
        """Sweep steps taken so far."""
        return len(self._lrs)

    def restart(self) -> None:
        """Forget the sweep's steps so far (a resume without its start snapshot sweeps again from the weights, by
        this version's rule)."""
        self._lrs, self._losses = [], []
        self.rule = RULE
        self._reset_levels()

    @property
    def started(self) -> bool:
        return bool(self._lrs)

    def placeholder_range(self) -> tuple[float, float]:
        """A range to start from before the sweep has run (the given bounds, else derived from the sweep's LRs)."""
        assert self.lrs is not None
        given_lo, given_hi = self.given
        lo = given_lo or (given_hi or self.lrs[1]) / RANGE_SPAN
        hi = given_hi or max(self.lrs[1], lo * 10)
        return lo, hi

    def lr(self, i: int) -> float:
        """The LR of sweep step ``i``: geometric from the lowest to the highest LR."""
        assert self.lrs is not None
        lo, hi = self.lrs
        return min(lo * (hi / lo) ** (i / (self.steps - 1)), hi)

    def record(self, lr: float, loss: float | None, step: int = 0) -> RangeTestResult | None:
        """Record a sweep step (``step``: the global step after it); the result once the sweep ended, else ``None``."""
        self._lrs.append(lr)
        finite = loss is not None and math.isfinite(loss)
        self._losses.append(loss if finite else None)
        blew_up = loss is not None and (not finite or self._blew_up(loss))
        if not blew_up and len(self._lrs) < self.steps:
            return None
        return self._finish(stopped=blew_up, step=step)

    @property
    def _quarter(self) -> int:
        """Steps in the sweep's first quarter (at least one)."""
        return max(1, self.steps // 4)

    def spread(self) -> float | None:
        """How far batch noise alone spreads one model's losses, estimated from the sweep's first quarter (the untrained
        model on as many batches, at LRs too small to train it: the derived sweep's first quarter stays below
        ``10^-2.5`` times the configured LR): ``exp(RANGE_SIGMAS · σ)``, ``σ`` the noise of a log loss from the median
        absolute deviation of successive log ratios. Successive ratios, so that a trend there (a loss that already
        falls, or rises) does not count as noise. ``None`` before that quarter ends, with fewer than 4 finite losses
        there, or where one is not positive (a ratio of such losses means nothing: only a non-finite loss stops that
        sweep)."""
        if len(self._losses) < self._quarter:
            return None
        start = [v for v in self._losses[: self._quarter] if v is not None]
        if len(start) < 4 or min(start) <= 0:
            return None
        sigma = _difference_sigma([math.log(v) for v in start])  # (of log losses, not of ratios: b / a can overflow)
        return math.exp(min(RANGE_SIGMAS * sigma, 700.0))  # (beyond: noise no finite loss could stand out from)

    def _levels(self, upto: int) -> None:
        """Fold the losses of entries ``< upto`` into the running levels (each entry once: a step costs O(1))."""
        for i in range(self._counted, upto):
            v = self._losses[i]
            if v is None:
                continue
            self._finite += 1
            self._low, self._high = min(self._low, v), max(self._high, v)
            self._window.append(v)
            if len(self._window) >= 3:  # (a median of fewer is one batch's loss again)
                self._low_median = min(self._low_median, statistics.median(self._window))
        self._counted = max(self._counted, upto)

    def _blew_up(self, loss: float) -> bool:
        """Whether the step's finite ``loss`` ends the sweep (after at least 3 finite losses, all positive).

        Within the first quarter, whose noise is not known yet: above :data:`STOP` times the largest loss so far.
        Past it, with the noise's :meth:`spread` ``s``: where ``s² ≤ STOP``, above :data:`STOP` times the lowest
        loss so far (the rule before, to the step), and so where fewer than 4 finite losses fell in the first quarter
        (a ``range_test_steps`` below 16: no noise to measure); else above ``s²`` times the lowest running median of 3
        to :data:`MEDIAN_WINDOW` losses.

        Why: where batch noise alone spreads one model's losses, a loss far above the lowest so far is what that
        noise does over a long sweep, and the lowest loss of many is itself a lucky batch. The rule before (a loss
        above 4× the lowest) stopped a Friedman regression MLP with batches of 8 (losses spread 4.6-5.1× in the first
        quarter) after 12-18 steps of 100, at ``max_lr`` = 1e-7-6e-7, and it trained nothing (validation MSE
        1.04-1.13 against 0.059-0.061 for cosine at its configured LR; batches of 2 and 4 stopped after 4-9 steps).
        Fine-tuning the digits MLP from weights trained 600 steps at its lr=0.05 (training losses of 0.01-0.05 that
        spread 4-6× from batch to batch), it stopped at LRs of 3e-5-0.0034, where a loss reached 4× the lowest batch;
        the losses pass the squared spread times the lowest median only at 0.44-0.64, where training blows up. The
        squared spread, because a long sweep's losses fall further apart than the first quarter shows; a median,
        because with batches of 2 one batch's loss can lie 20× below the rest (a regression MLP: 0.036 among losses
        of 0.3-1.5). A loss that rises or falls steadily within the first quarter adds nothing to the spread, so such
        a sweep stops as before once a loss passes 4× the lowest. On the benchmark workloads' untrained models the
        spread is 1.0-1.1× (the char LM and the digits workloads) and 1.4-2.6× (Friedman's batches of 64, whose sweeps
        run to their end or to a loss far above the lowest): of the 150 sweeps of seeds 0-29 one stops elsewhere
        (Friedman seed 25 ran 2 steps longer, past a noisy batch, to the same ``max_lr``)."""
        i = len(self._losses) - 1  # this step's entry
        self._levels(i)
        if self.rule < 2:  # a sweep begun by an earlier version: its rule, as it was (no test of the sign)
            return self._finite >= 3 and loss > STOP * self._low
        if self._finite < 3 or self._low <= 0:
            return False
        if i < self._quarter:
            return loss > STOP * self._high
        if self._spread is None:
            self._spread = self.spread() or 1.0  # (once per sweep: the first quarter is over)
        squared = self._spread * self._spread  # (inf past float range: then only a non-finite loss stops it)
        if squared <= STOP:
            return loss > STOP * self._low
        return loss > squared * self._low_median

    def start_losses(self) -> list[float]:
        """The finite losses of the sweep's first quarter, less a loss that stopped the sweep there: the untrained
        model on as many batches (:meth:`spread`). The controller's reference loss for the first stage is the largest
        of them (not one batch's loss). Empty before the sweep ended, and for a sweep begun by an earlier version (its
        first stage took its own first loss)."""
        if self.result is None or self.rule < 2:
            return []
        end = min(self._quarter, len(self._losses))
        if self.result.stopped_early and end == len(self._losses) and self._losses[-1] is not None:
            end -= 1  # the loss that blew up
        return [v for v in self._losses[:end] if v is not None]

    def _points(self, stopped: bool) -> list[tuple[float, float]]:
        """The sweep's ``(lr, loss)`` with a finite loss, less the step that blew up when it ``stopped``."""
        points = [(lr, v) for lr, v in zip(self._lrs, self._losses) if v is not None]
        if stopped and points and self._losses[-1] is not None:
            points = points[:-1]  # the step that blew up
        return points

    def _reached(self, stopped: bool) -> float:
        """The highest swept LR whose loss was finite and did not stop the sweep (0.0: none)."""
        return max((lr for lr, _ in self._points(stopped)), default=0.0)

    def _found_max(self, stopped: bool) -> float:
        assert self.lrs is not None
        points = self._points(stopped)
        if not points:  # not a single finite loss (only steps without one): the lowest swept LR
            return self.lrs[0]
        h = max(1, len(points) // 10)
        values = [v for _, v in points]
        smooth = [statistics.fmean(values[max(0, i - h) : i + h + 1]) for i in range(len(values))]
        best = min(range(len(points)), key=lambda i: (smooth[i], i))
        return points[max(0, best - LAG)][0]

    def _found_max_floored(self, stopped: bool) -> float:
        """:meth:`_found_max` with its floors: the configured LR where the sweep did not blow up at or below it (rule
        2 on), a tenth of the highest LR a sweep that blew up took before it did (rule 3 on)."""
        hi = self._found_max(stopped)
        configured = self.configured_lr if self.rule >= 2 else None
        if configured is not None and (not stopped or self._lrs[-1] > configured):
            hi = max(hi, configured)  # no blow-up at or below the configured LR: it was not shown to be too large
        if stopped and self.rule >= 3:
            hi = max(hi, self._reached(stopped) / BELOW_BLOWUP)  # a decade below where the sweep blew up
        return hi

    def _finish(self, stopped: bool, step: int) -> RangeTestResult:
        if stopped and all(v is None for v in self._losses):  # it stopped on a NaN/inf loss and saw no finite one
            assert self.lrs is not None
            # (the sweep stops at its first NaN/inf: the steps before it returned no loss, or, in a sweep resumed from a
            # checkpoint written at that error, one of them was the NaN/inf that raised it)
            n = len(self._lrs)
            seen = "" if n == 1 else f"its first {n - 1} step(s) gave no finite loss and "
            raise NonFiniteLossError(
                f"The LR range test saw no finite training loss: {seen}its step {n}'s loss was NaN/inf at "
                f"lr={self._lrs[-1]:.3g} (the sweep began at {self.lrs[0]:.3g}): no LR gave a finite loss, so the "
                "fault is in `training_step` or the data (a NaN input, log(0), ...), not in the LR. Fix the loss; "
                "giving `min_lr`/`max_lr` skips the range test but will not make it finite."
            )
        given_lo, given_hi = self.given
        hi = given_hi if given_hi is not None else self._found_max_floored(stopped)
        self.found_max_lr = hi if given_hi is None else None
        lo = given_lo if given_lo is not None else hi / RANGE_SPAN
        # a given min_lr at or above what the sweep found (the caller warns), or, by rule 3, less than a decade below it
        # (the blow-up's floor can put that just above a given min_lr): a decade to search in at least
        if not hi > lo or (self.rule >= 3 and given_lo is not None and given_hi is None and hi < lo * GIVEN_MIN_SPAN):
            hi = max(self._reached(stopped), lo * GIVEN_MIN_SPAN)
        self.result = RangeTestResult(
            start_step=step - len(self._lrs),
            steps=len(self._lrs),
            lrs=list(self._lrs),
            losses=list(self._losses),
            stopped_early=stopped,
            min_lr=float(lo),
            max_lr=float(hi),
        )
        return self.result

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The sweep's state: the controller's version-1 keys ``range_test``, ``rt_lrs``, ``rt_losses``, and
        ``rt_rule`` (:data:`RULE`; read as 1 where absent)."""
        return {
            "range_test": None if self.result is None else self.result.to_dict(),
            "rt_lrs": list(self._lrs),
            "rt_losses": list(self._losses),
            "rt_rule": self.rule,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rt = state.get("range_test")
        self.result = None if rt is None else RangeTestResult.from_dict(rt)
        self._lrs = [float(x) for x in state.get("rt_lrs", [])]
        self._losses = [None if x is None else float(x) for x in state.get("rt_losses", [])]
        self.rule = int(state.get("rt_rule", 1))  # (a state without it: written before RULE 2)
        self._reset_levels()
