"""Lightning plumbing of the AutoLRS callbacks, kept in one place: callback base classes, the set-up checks shared by
:class:`~lightning_autolrs.AutoLRS` and :class:`~lightning_autolrs.ReplaySchedule`, the per-param-group LR setter, the
LR logging, the cross-rank loss reduction (and its one-step-late form), the progress-bar hook and the reporting of
controller events (log lines and metrics).

Nothing here decides anything about learning rates; :mod:`lightning_autolrs.callback` wires these helpers to the
controller.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn

from lightning_autolrs.exceptions import AutoLRSWarning, UnsupportedSetupError
from lightning_autolrs.records import AnnealEvent, Event, FallbackEvent, RangeTestEvent, SearchEvent, TrialEvent

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_autolrs.controller import StageController

__all__ = [
    "LRLogger",
    "LateLoss",
    "ProgressBarHook",
    "apply_lr",
    "callback_bases",
    "check_single_optimizer",
    "check_strategy",
    "move_first",
    "optimizer_step_counter",
    "reduce_loss",
    "report_event",
    "second_moment_beta",
]

_SHARDED_STRATEGIES = frozenset({"FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy"})


def callback_bases() -> tuple[type, ...]:
    """The ``Callback`` classes of the installed Lightning flavours (``lightning.pytorch``, ``pytorch_lightning``)."""
    bases: list[type] = []
    try:
        from lightning.pytorch.callbacks import Callback as _LightningCallback

        bases.append(_LightningCallback)
    except ImportError:  # pragma: no cover - depends on the installed flavour
        pass
    try:
        from pytorch_lightning.callbacks import Callback as _PLCallback

        bases.append(_PLCallback)
    except ImportError:  # pragma: no cover - depends on the installed flavour
        pass
    if not bases:  # pragma: no cover
        raise ImportError("lightning_autolrs needs `lightning` or `pytorch_lightning`; install one of them.")
    return tuple(bases)


def _class_names(obj: Any) -> set[str]:
    """The names of ``obj``'s class and its bases: a check by name works for ``lightning`` and ``pytorch_lightning``
    classes alike, and needs no optional package importable."""
    return {cls.__name__ for cls in type(obj).__mro__}


def check_strategy(strategy: Any) -> None:
    """Refuse strategies that shard parameters or optimizer state (FSDP, DeepSpeed, model parallel, XLA FSDP).

    The check walks the strategy's class hierarchy by name, so subclasses are caught and no optional package
    (DeepSpeed) has to be importable.
    """
    sharded = sorted(_class_names(strategy) & _SHARDED_STRATEGIES)
    if sharded:
        raise UnsupportedSetupError(
            f"AutoLRS does not support the `{sharded[0]}` strategy yet: its snapshot would have to copy sharded "
            "parameters and optimizer state, which is not verified. Use `strategy='ddp'` (or a single device)."
        )


def check_single_optimizer(trainer: pl.Trainer, who: str) -> float:
    """Check that the Trainer has one optimizer, no LR scheduler (nor a callback that adds one or param groups:
    ``StochasticWeightAveraging``, any ``BaseFinetuning``) and a positive, finite configured LR; return it.

    ``who`` (the callback's name) opens the messages.
    """
    optimizers = trainer.optimizers
    if len(optimizers) != 1:
        raise UnsupportedSetupError(
            f"{who} drives exactly one optimizer, but `configure_optimizers` returned {len(optimizers)}. "
            "Return a single optimizer (use param groups for different LRs)."
        )
    for other in getattr(trainer, "callbacks", []):
        names = _class_names(other)
        if "StochasticWeightAveraging" in names:
            raise UnsupportedSetupError(
                f"{who} sets the learning rate itself, but the Trainer also has `StochasticWeightAveraging`, which "
                "adds its own SWA LR scheduler when averaging starts and averages weights taken at epoch ends, "
                "search trials included. Remove one of the two callbacks."
            )
        if "BaseFinetuning" in names:
            raise UnsupportedSetupError(
                f"{who} refuses `BaseFinetuning` callbacks (`{type(other).__name__}`): they may add param groups to "
                f"the optimizer during training (`BackboneFinetuning` does), which {who} cannot follow (it sets the "
                "LRs of the groups the fit starts with; AutoLRS's stage snapshot holds those groups). Unfreeze before "
                f"the fit (one optimizer with every param group from the start), or remove {who}."
            )
    if trainer.lr_scheduler_configs:
        raise UnsupportedSetupError(
            f"{who} sets the learning rate itself, but `configure_optimizers` also returned an LR scheduler "
            f"({type(trainer.lr_scheduler_configs[0].scheduler).__name__}). Return only the optimizer; under "
            "LightningCLI, also drop the config's `lr_scheduler:` key (or `--lr_scheduler`), which adds one."
        )
    base = float(optimizers[0].param_groups[0]["lr"])
    if not base > 0 or not math.isfinite(base):
        raise UnsupportedSetupError(
            f"The optimizer's first param group has lr={base}; {who} needs a positive configured LR to keep the "
            "param groups' LR ratios. Configure a positive `lr`."
        )
    return base


def second_moment_beta(optimizer: Any) -> float | None:
    """The second-moment decay of an Adam-family optimizer: ``betas[1]`` of its first param group (a float or a
    one-element tensor), ``None`` when it has none (SGD, RMSprop, ...).

    Example:
        >>> p = [torch.nn.Parameter(torch.zeros(1))]
        >>> second_moment_beta(torch.optim.AdamW(p, betas=(0.9, 0.99))), second_moment_beta(torch.optim.SGD(p, lr=1))
        (0.99, None)
    """
    betas = optimizer.param_groups[0].get("betas") if optimizer.param_groups else None
    if not isinstance(betas, (tuple, list)) or len(betas) < 2:
        return None
    try:
        return float(betas[1])
    except (TypeError, ValueError):
        return None


def move_first(trainer: pl.Trainer, callback: Any) -> None:
    """Put ``callback`` first among the Trainer's callbacks (after the fit's callbacks are final, at ``setup``).

    The LR of a step is set in ``on_train_batch_start``; going first there means every other callback's
    ``on_train_batch_start`` (``LearningRateMonitor``'s logging, a user's LR printout) sees the LR of the step being
    taken, whatever order the user listed the callbacks in. The relative order of the others is kept (Lightning keeps
    ``ModelCheckpoint`` last).
    """
    callbacks: list[Any] = getattr(trainer, "callbacks", [])
    for i, cb in enumerate(callbacks):
        if cb is callback and i > 0:
            callbacks.insert(0, callbacks.pop(i))
            return


def apply_lr(optimizer: Any, lr: float, ratios: list[float]) -> None:
    """Set every param group's LR to ``lr`` times the group's ratio to the first group."""
    for group, ratio in zip(optimizer.param_groups, ratios):
        group["lr"] = lr * ratio


class _GlobalStep:
    """Reads ``trainer.global_step`` as :attr:`completed` (the fallback of :func:`optimizer_step_counter`)."""

    def __init__(self, trainer: pl.Trainer) -> None:
        self._trainer = trainer

    @property
    def completed(self) -> int:
        return self._trainer.global_step


def optimizer_step_counter(trainer: pl.Trainer) -> Any:
    """An object whose ``completed`` is ``trainer.global_step`` under automatic optimization, read in one attribute:
    the Trainer's own counter of optimizer steps, which ``global_step`` reaches through five properties (a per-step
    hook reads it every batch). Lightning updates that counter in place (a checkpoint's loop state included); where
    the loop is not laid out so (another version, a custom loop) the counter reads ``trainer.global_step`` itself."""
    try:
        counter = trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step.total
        if isinstance(counter.completed, int) and counter.completed == trainer.global_step:
            return counter
    except AttributeError:  # pragma: no cover - depends on the Lightning version
        pass
    return _GlobalStep(trainer)  # pragma: no cover - depends on the Lightning version


class LRLogger:
    """Sends the LR of the step about to run to the Trainer's loggers as ``autolrs/lr`` on the steps the Trainer logs
    (every ``log_every_n_steps`` optimizer steps, and when it stops), at the loggers' step: what
    ``LearningRateMonitor`` does, without ``self.log``'s per-step bookkeeping. The only place that reads the Trainer's
    private loop state; :meth:`attach` reads the settings once.

    A call returns how many steps later the next logging step comes, so the caller need not call it before then (a
    countdown, checked with ``trainer.should_stop`` in the per-step hook: a step that logs nothing costs a
    decrement)."""

    def __init__(self) -> None:
        self._every = 0
        self._loop: Any = None

    def attach(self, trainer: pl.Trainer) -> None:
        self._every = int(getattr(trainer, "log_every_n_steps", 0) or 0) if trainer.loggers else 0
        self._loop = trainer.fit_loop.epoch_loop

    def __call__(self, trainer: pl.Trainer, lr: float) -> float:
        """Log ``lr`` if the step about to run is a logging step (or the Trainer is stopping); return the number of
        steps from this one to the next logging step (``inf`` without loggers)."""
        every = self._every
        if not every:
            return math.inf
        step = self._loop._batches_that_stepped  # the step the loggers' metrics carry (Lightning's own counter)
        left = every - (step + 1) % every  # (`every` when this step logs)
        if left == every or trainer.should_stop:
            for logger in trainer.loggers:
                logger.log_metrics({"autolrs/lr": lr}, step=step)
        return left


def _rank_mean(total: float, count: float, bad: float) -> float | None:
    """One loss's all-reduced ``[sum over ranks, ranks with a value, ranks with a non-finite value]`` as the mean over
    the ranks that had one: ``None`` where none had one, NaN as soon as one was not finite."""
    return math.nan if bad > 0 else None if count == 0 else float(total / count)


def reduce_loss(trainer: pl.Trainer, *losses: float | None, world_size: int | None = None) -> Any:
    """The mean over the ranks of each loss (``None`` where no rank had one; NaN as soon as any rank's is
    non-finite), all in one all-reduce. One loss in, one value out; several in, a tuple out. ``world_size``: the
    Trainer's, when the caller has it at hand (``None``: read from the Trainer)."""
    if (trainer.world_size if world_size is None else world_size) <= 1:
        return losses[0] if len(losses) == 1 else losses
    rows = []
    for loss in losses:
        finite = loss is not None and math.isfinite(loss)
        rows.append([loss if finite else 0.0, 1.0 if loss is not None else 0.0, 0.0 if finite or loss is None else 1.0])
    value = torch.tensor(rows, dtype=torch.float64, device=trainer.strategy.root_device)
    # per loss: [sum over ranks, ranks with a value, ranks with a non-finite value]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(value)  # one collective: the strategy's `reduce` runs a barrier before it
    else:
        value = trainer.strategy.reduce(value, reduce_op="sum")
    total = value.tolist()
    out = tuple(_rank_mean(s, count, bad) for s, count, bad in total)
    return out[0] if len(out) == 1 else out


class LateLoss:
    """A step's loss on its way to the host without a host-device sync. On an accelerator, constructing it turns the
    step's summed loss tensor into ``[loss or 0, has a loss, not finite]`` on that device, all-reduces it across ranks
    (one collective, queued like any other device work) and starts a non-blocking copy into pinned host memory;
    :meth:`read`, one step later, waits for that copy (long done by then). A CPU loss (or none) is read at once:
    that waits for nothing (the callback reads a CPU loss without one). Either way :meth:`read` returns what
    :func:`reduce_loss` returns: the mean over the ranks that had a loss, ``None`` where none had one, NaN as soon as
    one was not finite. ``world_size``: the Trainer's, when the caller has it at hand (``None``: read from the
    Trainer). ``skipped``: a 0-d tensor, true where an AMP GradScaler skipped the step (its scale after the step
    below the one before), copied along with the loss; :attr:`skipped` holds it once :meth:`read` has run (a rank's
    own: the ranks' gradients, reduced before the scaler checks them, skip alike)."""

    def __init__(
        self,
        trainer: pl.Trainer,
        loss: torch.Tensor | None,
        world_size: int | None = None,
        skipped: torch.Tensor | bool | None = None,
    ) -> None:
        self._value: float | None = None
        self._host: torch.Tensor | None = None
        self._event: Any = None
        self.skipped = False
        if loss is None or loss.is_cpu:
            value = None if loss is None else float(loss.item())
            self._value = reduce_loss(trainer, value, world_size=world_size)
            self.skipped = skipped is not None and bool(skipped)
        else:
            self._start_on_device(trainer, loss, skipped)

    def _start_on_device(
        self, trainer: pl.Trainer, loss: torch.Tensor, skipped: torch.Tensor | bool | None = None
    ) -> None:
        loss = loss.detach().to(torch.float64).reshape(())
        finite = torch.isfinite(loss)
        ones = torch.ones_like(loss)
        value = torch.stack([torch.where(finite, loss, torch.zeros_like(loss)), ones, (~finite).to(loss.dtype)])
        value = value.reshape(1, 3)  # the layout of `reduce_loss`'s all-reduce, for a rank that has no loss
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(value)
        if skipped is not None:  # (not reduced: every rank's is its own)
            flag = torch.as_tensor(skipped).to(value.device, torch.float64).reshape(1)
            value = torch.cat([value.reshape(3), flag]).reshape(1, 4)
        cuda = value.device.type == "cuda"
        self._host = torch.empty(value.shape, dtype=torch.float64, pin_memory=cuda)
        self._host.copy_(value, non_blocking=cuda)
        if cuda:  # pragma: no cover - no GPU where the tests run
            self._event = torch.cuda.Event()
            self._event.record()

    def read(self) -> float | None:
        if self._host is None:
            return self._value
        if self._event is not None:  # pragma: no cover - no GPU where the tests run
            self._event.synchronize()
        values = self._host[0].tolist()
        self.skipped = len(values) > 3 and values[3] > 0
        return _rank_mean(*values[:3])


class ProgressBarHook:
    """Adds entries to the Trainer's progress-bar metrics (TQDM and Rich bars) by wrapping ``get_metrics``."""

    def __init__(self) -> None:
        self._hooked: tuple[Any, Any] | None = None

    def attach(self, trainer: pl.Trainer, extra: Callable[[], dict[str, str]]) -> None:
        bar = trainer.progress_bar_callback
        if bar is None or self._hooked is not None:
            return
        original = bar.get_metrics

        def get_metrics(trainer: Any, pl_module: Any) -> dict[str, Any]:
            return {**original(trainer, pl_module), **extra()}

        bar.get_metrics = get_metrics  # type: ignore[method-assign]
        self._hooked = (bar, original)

    def detach(self) -> None:
        if self._hooked is not None:
            bar, original = self._hooked
            bar.get_metrics = original
            self._hooked = None


#: A range test whose ``max_lr`` lies more than this factor below the configured LR gets a warning (it may have
#: stopped on batch noise: README, "Caveats"); on the benchmark workloads (seeds 0-29) it lies 1.3-66x above it.
FAR_BELOW = 100.0


def report_event(
    trainer: pl.Trainer, event: Event, controller: StageController, *, num_trials: int, verbose: bool
) -> None:
    """Log a controller event's metrics to the Trainer's loggers and, with ``verbose``, one line on rank zero."""
    if isinstance(event, TrialEvent):
        t = event.record
        metrics = {"autolrs/trial_lr": t.lr, "autolrs/trial_diverged": float(t.diverged)}
        if t.predicted_loss is not None:
            metrics["autolrs/trial_predicted_loss"] = t.predicted_loss
        if verbose:
            pred = "diverged" if t.diverged else f"predicted loss {t.predicted_loss:.4g}"
            rank_zero_info(
                f"AutoLRS stage {event.stage} trial {event.trial + 1}/{num_trials}: "
                f"lr={t.lr:.4g}, {t.steps} steps, {pred}"
            )
    elif isinstance(event, SearchEvent):
        metrics = {"autolrs/stage_best_lr": event.best_lr, "autolrs/stage": float(event.stage)}
        if verbose:
            stage = controller.stages[-1]
            rank_zero_info(
                f"AutoLRS stage {event.stage}: best lr={event.best_lr:.4g} of {event.trials} trials; "
                f"exploiting steps {controller.step}..{controller.exploit_end - 1} "
                f"(tau={stage.tau}, tau'={stage.tau_prime}"
                + (f", val probes {stage.probe_seconds:.2f} s)" if stage.signal == "val_loss" else ")")
            )
    elif isinstance(event, RangeTestEvent):
        r = event.result
        metrics = {"autolrs/range_min_lr": r.min_lr, "autolrs/range_max_lr": r.max_lr}
        if verbose:
            end = "stopped when the loss blew up" if r.stopped_early else "full sweep"
            rank_zero_info(
                f"AutoLRS range test: {r.steps} steps from lr={event.first_lr:.3g} ({end}); "
                f"search range min_lr={r.min_lr:.4g}, max_lr={r.max_lr:.4g}; model restored."
            )
        found = event.found_max_lr
        if found is not None and r.min_lr >= found:  # (min_lr is found / 1000 unless given)
            blew_up = f"saw the loss blow up at lr={r.lrs[-1]:.3g}" if r.stopped_early and r.lrs else "saw no blow-up"
            rank_zero_warn(
                f"AutoLRS range test: the given min_lr={r.min_lr:.3g} is at or above the max_lr={found:.3g} the range "
                f"test derived (the sweep {blew_up}), so the search range is min_lr={r.min_lr:.3g} ... "
                f"max_lr={r.max_lr:.3g} and "
                "its trials may diverge. Lower `min_lr` (or leave it out: the range test sets both), or give "
                "`max_lr` too.",
                category=AutoLRSWarning,
            )
        configured = controller.anchor_lr
        if configured is not None and not controller.max_lr_given and configured > FAR_BELOW * r.max_lr:
            rank_zero_warn(
                f"AutoLRS range test: max_lr={r.max_lr:.3g} is {configured / r.max_lr:.0f}x below the optimizer's "
                f"configured lr={configured:.3g}, so the whole run trains at or below it. If the sweep's losses "
                "(`cb.range_test_result`) are batch noise rather than a blow-up (small batches, a large loss scale), "
                "give `min_lr`/`max_lr`, or `range_test=False` (the configured LR / 100 ... x 10).",
                category=AutoLRSWarning,
            )
    elif isinstance(event, AnnealEvent):
        metrics = {"autolrs/anneal_lr": event.lr}
        if verbose:
            assert controller.total_steps is not None  # (an anneal needs a known budget)
            (v0, v1), (t0, t1) = event.evidence["val_loss"], event.evidence["train_loss"]
            back = controller.history[-1].get("rolled_back_to") if controller.history else None
            rank_zero_info(
                f"AutoLRS stage {event.stage}: overfitting at lr={event.lr:.4g} (validation loss {v0:.4g} -> {v1:.4g} "
                f"while the training loss fell {t0:.4g} -> {t1:.4g}); the final anneal begins at step {event.step}"
                + ("" if back is None else f" from the weights of step {back} (the lowest validation probe)")
                + f" and holds lr={min(controller.min_lr, event.lr):.4g} from step "
                f"{event.step + controller.anneal_span} to the end"
                + (
                    ", probing on: should the validation loss rise again, the last step goes back to the weights of "
                    "the hold's lowest probe."
                    if controller.hold_watch
                    else "."
                )
            )
    else:
        assert isinstance(event, FallbackEvent)
        f = event.fallback
        metrics = {"autolrs/fallback_lr": f.new_lr}
        rank_zero_warn(
            f"AutoLRS stage {event.stage}: lr={f.failed_lr:.4g} diverged at step {f.step}; "
            f"restored the stage snapshot and continued at lr={f.new_lr:.4g}.",
            category=AutoLRSWarning,
        )
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
