"""The LR range test: a geometric LR sweep before the first stage, and its stop rule.

First, on the untrained model (before any warmup: on a warmed-up model the loss stays flat until it blows up, so its
lowest point is noise), the LR sweeps geometrically over ``lrs = (lowest, highest)`` for at most ``steps`` steps,
from a snapshot the caller captures at the sweep's first step. The sweep stops early once a loss is non-finite, or,
after its first quarter, once a loss lies above :data:`STOP` (``4×``) the lowest loss so far; where batch noise alone
spreads the losses more than that (small batches: see :meth:`RangeTest.spread`), above that spread times the lowest
running median of :data:`MEDIAN_WINDOW` losses instead. A sweep that stopped on a non-finite loss without having
seen a finite one raises :class:`~lightning_autolrs.exceptions.NonFiniteLossError` instead of deriving a range.
``max_lr`` is the swept LR three sweep steps before the lowest smoothed loss (centred moving mean over ``2h + 1``
points, ``h = max(1, n // 10)``; the three steps undo the lag of the loss behind the LR, which otherwise puts the
minimum where training is already on its way to diverging), but never below the configured LR after a sweep that ran
its whole length without a blow-up, and ``min_lr = max_lr / 1000``; a bound the user gave wins. The caller then
restores the snapshot, so the sweep costs its steps and nothing else.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from lightning_autolrs._validation import check_float, check_int
from lightning_autolrs.exceptions import InvalidArgumentError, NonFiniteLossError
from lightning_autolrs.records import RangeTestResult
from lightning_autolrs.settings import RANGE_SPAN

__all__ = ["MEDIAN_WINDOW", "STOP", "RangeTest"]

STOP = 4.0  # the sweep stops once a loss exceeds this multiple of the lowest loss so far (on a sweep with little noise)
#: Losses per running median of the stop rule's reference on a noisy sweep (:meth:`RangeTest.spread` above
#: :data:`STOP`).
MEDIAN_WINDOW = 5
LAG = 3  # sweep steps the loss lags behind the LR (momentum, Adam's moments): max_lr steps back this far


class RangeTest:
    """The sweep's state: the LRs and losses so far, and its result once it ended.

    Args:
        steps: the sweep's length (0: no range test; else ≥ 2).
        lrs: (lowest, highest) swept LR, required when ``steps > 0``.
        given: the ``(min_lr, max_lr)`` the user gave (``None`` where not given): they win over what the sweep finds.
        configured_lr: the optimizer's configured LR (``None``: unknown). A sweep that runs its whole length without
            a blow-up never puts ``max_lr`` below it: nothing in it showed that LR too large, and on noisy losses the
            lowest smoothed loss can lie anywhere (a Friedman MLP with batches of 2, losses spread 40-140x between
            batches: at 0.00016 and 0.00025 against a configured 0.001, where the run then ended 2.8-2.9x above
            cosine at that LR). Not one of the benchmark workloads' 150 sweeps of seeds 0-29 that ran their whole length
            found a ``max_lr`` below the configured LR.

    Example:
        >>> rt = RangeTest(4, (1e-3, 1.0), given=(None, None))
        >>> [f"{rt.lr(i):.3g}" for i in range(4)]
        ['0.001', '0.01', '0.1', '1']
        >>> [rt.record(lr, loss) for lr, loss in [(1e-3, 1.0), (1e-2, 0.5), (0.1, 0.2), (1.0, 9.0)]][-1] is not None
        True
        >>> rt.result.max_lr, rt.result.stopped_early
        (0.001, True)

    With small batches (one batch's loss many times another's on the same model), a loss must stand out from that
    noise: with the first quarter's losses spread 6× by batch noise, a loss 5.8× the lowest does not stop the sweep.

        >>> noisy = RangeTest(8, (1e-3, 1.0), given=(None, None))
        >>> [noisy.record(noisy.lr(i), v) for i, v in enumerate([0.5, 3.0, 1.0, 2.0, 1.0, 2.9])] == [None] * 6
        True
        >>> noisy.spread()
        6.0
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
        self._lrs: list[float] = []
        self._losses: list[float | None] = []

    @property
    def pending(self) -> bool:
        """Whether a sweep is configured and has not finished."""
        return self.steps > 0 and self.result is None

    @property
    def position(self) -> int:
        """Sweep steps taken so far."""
        return len(self._lrs)

    def restart(self) -> None:
        """Forget the sweep's steps so far (a resume without its start snapshot sweeps again from the weights)."""
        self._lrs, self._losses = [], []

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
        """How far batch noise alone spreads the sweep's losses: the largest over the smallest finite loss of its
        first quarter (the untrained model on as many batches, at LRs too small to train it: the derived sweep's first
        quarter stays below ``10^-2.5`` times the configured LR); ``None`` before that quarter ends, or where a loss
        there is not positive (a ratio of such losses means nothing: only a non-finite loss stops that sweep)."""
        if len(self._losses) < self._quarter:
            return None
        start = [v for v in self._losses[: self._quarter] if v is not None]
        if not start or min(start) <= 0:
            return None
        return max(start) / min(start)

    def _blew_up(self, loss: float) -> bool:
        """Whether the step's finite ``loss`` ends the sweep: past its first quarter, above :data:`STOP` times the
        lowest loss so far; on a sweep whose :meth:`spread` exceeds :data:`STOP`, above the spread times the lowest
        running median of :data:`MEDIAN_WINDOW` losses so far instead.

        Why: with small batches one batch's loss lies many times another's on the same model. A Friedman regression
        MLP (Adam, lr=1e-3) with batches of 8 (losses spread about 6× in the first quarter) stopped its sweep after
        11-17 steps on one such batch, at ``max_lr`` = 1e-7-6e-7, and trained nothing (validation MSE 1.04-1.13
        against 0.058-0.061 for cosine at its configured LR; batches of 2 and 4 stopped after 3-8 steps). A lowest
        running median is a level the model reaches, not one lucky batch, and a blow-up must exceed what noise does.
        On a sweep with less noise (the benchmark workloads' first quarters spread 1.01-1.9×) the rule is the one
        before, to the step."""
        seen = [v for v in self._losses[:-1] if v is not None]
        spread = self.spread()
        if spread is None or len(seen) < 3 or len(self._losses) <= self._quarter:
            return False
        if spread <= STOP:
            return loss > STOP * min(seen)
        medians = [statistics.median(seen[i - MEDIAN_WINDOW : i]) for i in range(MEDIAN_WINDOW, len(seen) + 1)]
        return bool(medians) and loss > spread * min(medians)

    def start_losses(self) -> list[float]:
        """The finite losses of the sweep's first quarter: the untrained model on as many batches (:meth:`spread`).
        The controller takes them as the history before the first stage, whose reference loss is the largest of them
        (not one batch's loss). Empty before the sweep ended."""
        if self.result is None:
            return []
        return [v for v in self._losses[: self._quarter] if v is not None]

    def _found_max(self, stopped: bool) -> float:
        assert self.lrs is not None
        points = [(lr, v) for lr, v in zip(self._lrs, self._losses) if v is not None]
        if stopped and points and self._losses[-1] is not None:
            points = points[:-1]  # the step that blew up
        if not points:  # not a single finite loss (only steps without one): the lowest swept LR
            return self.lrs[0]
        h = max(1, len(points) // 10)
        values = [v for _, v in points]
        smooth = [statistics.fmean(values[max(0, i - h) : i + h + 1]) for i in range(len(values))]
        best = min(range(len(points)), key=lambda i: (smooth[i], i))
        return points[max(0, best - LAG)][0]

    def _finish(self, stopped: bool, step: int) -> RangeTestResult:
        if stopped and all(v is None for v in self._losses):  # it stopped on a NaN/inf loss and saw no finite one
            assert self.lrs is not None
            raise NonFiniteLossError(
                f"The LR range test saw only non-finite training losses (NaN/inf) in its {len(self._lrs)} step(s) "
                f"from lr={self.lrs[0]:.3g}: the loss is not finite even at the smallest swept LR, so the fault is in "
                "`training_step` or the data (a NaN input, log(0), ...), not in the LR. Fix the loss; giving "
                "`min_lr`/`max_lr` skips the range test but will not make it finite."
            )
        given_lo, given_hi = self.given
        hi = given_hi if given_hi is not None else self._found_max(stopped)
        if given_hi is None and not stopped and self.configured_lr is not None:
            hi = max(hi, self.configured_lr)  # no blow-up seen: the configured LR was not shown to be too large
        lo = given_lo if given_lo is not None else hi / RANGE_SPAN
        if not hi > lo:
            hi = lo * RANGE_SPAN
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
        """The sweep's state (the controller's version-1 keys ``range_test``, ``rt_lrs``, ``rt_losses``)."""
        return {
            "range_test": None if self.result is None else self.result.to_dict(),
            "rt_lrs": list(self._lrs),
            "rt_losses": list(self._losses),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rt = state.get("range_test")
        self.result = None if rt is None else RangeTestResult.from_dict(rt)
        self._lrs = [float(x) for x in state.get("rt_lrs", [])]
        self._losses = [None if x is None else float(x) for x in state.get("rt_losses", [])]
