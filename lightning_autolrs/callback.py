"""AutoLRS as a Lightning callback: the learning rate of each training stage is chosen by Bayesian optimisation.

The callback is the thin Lightning edge of the package. It turns Trainer hooks into events for the pure
:class:`~lightning_autolrs.controller.StageController` (which owns the algorithm) and carries out what the controller
decides: set the LR, capture or restore the in-memory :class:`~lightning_autolrs.snapshot.StateSnapshot`, log.

Works with ``lightning.pytorch`` and with ``pytorch_lightning`` Trainers: the class derives from the ``Callback`` of
each package that is installed.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_autolrs._edge import (
    LateLoss,
    LRLogger,
    ProgressBarHook,
    apply_lr,
    callback_bases,
    check_single_optimizer,
    check_strategy,
    move_first,
    optimizer_step_counter,
    reduce_loss,
    report_event,
    second_moment_beta,
)
from lightning_autolrs.controller import STATE_VERSION, StageController, StepPlan, check_state_version
from lightning_autolrs.exceptions import AutoLRSWarning, UnsupportedSetupError
from lightning_autolrs.probe import ValidationProbe, implements_validation_step
from lightning_autolrs.proposer import DEFAULT_BETA
from lightning_autolrs.schedule import Schedule, save_schedule
from lightning_autolrs.settings import Derived, Settings, derive, docstring_args
from lightning_autolrs.snapshot import StateSnapshot

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["AutoLRS", "check_strategy"]

_SNAPSHOT_KEY = "autolrs_stage_snapshot"
_BEST_SNAPSHOT_KEY = "autolrs_best_trial_snapshot"
_TRIAL_KEY = "autolrs_trial_state"  # the in-flight trial's state; the checkpoint's own state_dict is the committed one
_NO_LOSS_LIMIT = 10  # consecutive loss-less optimizer steps (at least one trial's length) before we give up


def _warn_weights_only_checkpoints(trainer: pl.Trainer) -> None:
    """Lightning calls no callback hook when it writes a weights-only checkpoint, so one written inside a search
    holds the trial's weights: say so once, at fit start, naming the fix."""
    if any(getattr(c, "save_weights_only", False) for c in trainer.checkpoint_callbacks):
        rank_zero_warn(
            "AutoLRS: a checkpoint callback has `save_weights_only=True`; Lightning calls no callback hook for such "
            "checkpoints, so one written during a search holds the running trial's weights, not the committed ones. "
            "Use `save_weights_only=False` (AutoLRS then writes the committed weights into `state_dict`).",
            category=AutoLRSWarning,
        )


def _fallback_schedule(settings: Settings, derived: Derived) -> str:
    """The schedule of a run too small for a search, in words (the too-small-budget warning)."""
    peak = derived.start_lr
    lr = f"the configured lr={peak:.4g}"
    if peak != derived.configured_lr:
        lr = f"lr={peak:.4g} (the configured lr={derived.configured_lr:.4g} clamped to `min_lr`…`max_lr`)"
    total = int(derived.total_steps or 0)
    if settings.warmup_steps:
        warmup = settings.warmup_steps
        start = f"a {warmup}-step linear warmup (`warmup_steps`) to lr={derived.warmup_lr:.4g}, then {lr} held"
    else:
        warmup = 0
        start = f"{lr} from the first step, held"
    decay = min(derived.decay_steps or 0, max(0, total - warmup))
    if decay > 0 and derived.min_lr is not None and peak <= derived.min_lr:
        return f"{start} to the end (it is `min_lr` already: the final anneal has nothing to decay)"
    if decay <= 0:
        why = "no final anneal" if settings.anneal_ratio == 0 else "its decay rounds to no step at this budget"
        return f"{start} to the end (`anneal_ratio`={settings.anneal_ratio:g}: {why})"
    decayed = f"decayed along 1 - sqrt(t) to {derived.min_lr:.4g} over the last {decay} steps (the final anneal)"
    return f"{start}, then {decayed}"


def _check_snapshot_device_available(device: Any) -> None:
    """Refuse at fit start a ``snapshot_device`` this machine does not have (e.g. ``"cuda"`` without a GPU)."""
    if device is None or torch.device(device).type == "cpu":
        return
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:  # (torch raises AssertionError when built without CUDA)
        raise UnsupportedSetupError(
            f"`snapshot_device={str(device)!r}` is not available on this machine ({err}). Use `snapshot_device=None` "
            "(each copy on its tensor's device) or 'cpu'."
        ) from None


class AutoLRS(*callback_bases()):  # type: ignore[misc]
    r"""Choose the learning rate of each training stage on the fly by Bayesian optimisation (Jin et al., ICLR 2021).

    Training is cut into stages. At the start of a stage the model and optimizer are snapshotted in memory;
    ``num_trials`` candidate LRs are each trained for τ' = ``search_ratio``·τ steps from that snapshot: the first at
    the stage's anchor (the optimizer's configured LR in stage 0, the LR the previous stage ended at after it), the
    others proposed by a Gaussian process with an upper-confidence-bound acquisition within ÷/× 3 of the anchor. An
    exponential model fitted to each trial's loss series (validation probes on fixed batches when the Trainer has
    validation data) forecasts the loss after τ steps; the stage continues from the trial with the best forecast,
    unless the anchor's forecast is within 3 % of it (the stage before the final anneal searches only upwards from its
    anchor, and where the model showed no generalization gap before it, validation loss at or below training loss,
    with an optimizer that keeps no second-moment estimate, takes the highest LR forecast within 2× of the best). τ and
    τ' double each stage until τ reaches ``tau_max``; the last ``anneal_ratio`` of the budget decays the last LR along
    ``1 - sqrt(t)`` (with validation data it begins earlier once an exploit phase overfits: validation loss up,
    training loss down; it then drops the LR to ``min_lr`` after one step). A slow collapse of the training loss back
    to its stage-start level falls back to a smaller LR.
    All steps, trials included, are real optimizer steps of the Trainer, so ``max_steps`` / ``max_epochs`` bound the
    whole run; a budget too small for trials of 20 steps gets a warning and, instead of a search, the configured LR
    from the first step, held, then the final anneal's decay over half its usual length.

    Inside a search, what the rest of Lightning sees is the committed state (the stage start, or the end of the stage's
    best completed trial): Lightning's validation loop runs on its weights (swapped into the module in place and back),
    so ``EarlyStopping`` and ``ModelCheckpoint(monitor=...)`` never judge a trial in flight; a checkpoint holds it in
    ``state_dict`` and ``optimizer_states``, and the trial in flight under its own key, so a resume is exact.

    Args:
        {settings_args}

    Attributes:
        lrs: the base LR applied at each optimizer step (index = global step; the first param group's LR).
        history: one JSON-serialisable dict per stage: ``stage``, ``start_step``, ``tau``, ``tau_prime``, ``trials``
            (``lr``, ``predicted_loss``, ``steps``, ``diverged``, ...), ``best_lr``, ``exploit_start``, ...
        phase: ``"warmup"``, ``"search"`` or ``"exploit"``.

    Example:
        >>> from lightning_autolrs import AutoLRS
        >>> cb = AutoLRS(min_lr=1e-4, max_lr=1e-1, num_trials=5)
        >>> cb.phase
        'warmup'
    """

    def __init__(
        self,
        min_lr: float | None = None,
        max_lr: float | None = None,
        *,
        num_trials: int = 4,
        tau: int | None = None,
        tau_max: int = 8000,
        search_ratio: float = 0.05,
        beta: float = DEFAULT_BETA,
        warmup_steps: int = 0,
        warmup_lr: float | None = None,
        seed: int | None = None,
        divergence_factor: float = 5.0,
        monitor: str = "auto",
        reuse_best_trial: bool = True,
        range_test: bool | None = None,
        range_test_steps: int | None = None,
        val_batches: int = 4,
        val_loss_fn: Callable[[Any, Any], Any] | None = None,
        snapshot_device: str | None = None,
        checkpoint_snapshot: bool = True,
        save_files: bool = True,
        verbose: bool = True,
        anneal_ratio: float = 0.2,
    ) -> None:
        arguments = locals()  # the arguments above, declared once in `Settings` (a test keeps both in step)
        super().__init__()
        self._settings = Settings(**{f.name: arguments[f.name] for f in fields(Settings)})  # checks every argument
        self._derived: Derived | None = None  # derived at fit start
        self._probe: ValidationProbe | None = None
        self._controller: StageController | None = None  # (read through `controller`, which brings it up to date)
        self._snapshot: StateSnapshot | None = None
        self._loaded_state: dict[str, Any] | None = None
        self._loaded_snapshot: dict[str, Any] | None = None
        self._loaded_best: dict[str, Any] | None = None
        self._best_snapshot: StateSnapshot | None = None
        # while the model holds the committed state (validation, a checkpoint, after a stop), the in-flight one;
        # what is swapped: None (nothing), "module" (the module's tensors, for validation) or "all"
        self._trial: StateSnapshot | None = None
        self._held: str | None = None
        self._validation_swapped = False
        self._loaded_trial: dict[str, Any] | None = None
        self._scaler: Any = None
        self._plan_probe = False
        self._level: tuple[float | None] | None = None  # the stage-start probe, reported with the step's loss
        # the plan whose LR the optimizer holds (a kept plan's later steps set nothing); None after anything that may
        # have set the optimizer's param groups from elsewhere (a snapshot put back, a new fit)
        self._applied: Any = None
        self._applied_base: Any = None  # ... or the first plan of the ramp it is a step of (StepPlan.ramp_of)
        self._applied_lr = math.nan  # the LR it set in the first param group
        self._scale_before: torch.Tensor | float | None = None  # the AMP scale at the step's start (see _scale_now)
        self._reads_scale = False  # the plan's steps read the AMP scale before and after (a search step, with AMP)
        self._loss_only = False  # the plan's steps end with their loss alone (_apply_plan)
        # a quiet run (StageController.quiet_run): steps planned ahead whose losses are handed to the controller
        # together at the run's end (or before anything reads it); its plans (empty: no run), the losses of its steps
        # ended so far (as many: the next step to begin is the one at that index), and the highest loss one may end with
        self._run_plans: list[StepPlan] = []
        self._run_losses: list[float] = []
        self._run_below = math.nan
        self._progress_bar = ProgressBarHook()
        self._lr_logger = LRLogger()
        self._log_in: float = 0  # steps to the next step whose LR goes to the loggers (LRLogger's countdown)
        self._world_size = 1
        self._ratios: list[float] = []
        self._step_open = False
        self._step_loss: torch.Tensor | None = None  # the step's loss summed over micro-batches, on its device
        self._late: LateLoss | None = None  # the previous step's loss, on its way to the host
        self._late_reads = False  # this fit reads losses that may wait one step late (_reads_late)
        self._trainer: Any = None
        self._optimizer: Any = None  # the optimizer whose LR is set (trainer.optimizers[0], read at train start)
        self._budget: float = math.inf  # total_steps, read at train start (inf: unbounded)
        self._global_step: Any = None  # `completed` reads trainer.global_step (`optimizer_step_counter`)
        self._seen_global_step = 0
        self._steps_without_loss = 0

    # ------------------------------------------------------------------ public results
    @property
    def controller(self) -> StageController | None:
        """The run's :class:`~lightning_autolrs.controller.StageController` (``None`` before training starts), with
        every step ended so far recorded: the steps of a quiet run are handed to it when it is read, so an object kept
        from an earlier read may lag behind by the steps of the run in progress."""
        self._sync()
        return self._controller

    @property
    def lrs(self) -> list[float]:
        """Base LR applied at each optimizer step so far (index = global step). The controller's list, brought up to
        date by this read: a list kept from an earlier read may lag behind by the steps of a quiet run in progress."""
        self._sync()
        return [] if self._controller is None else self._controller.lrs

    @property
    def history(self) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per stage (see the class docstring)."""
        self._sync()
        return [] if self._controller is None else self._controller.history

    @property
    def phase(self) -> str:
        """Current phase: ``"warmup"``, ``"search"`` or ``"exploit"``."""
        return "warmup" if self._controller is None else self._controller.phase

    @property
    def min_lr(self) -> float | None:
        """Lower end of the LR range in use: given, derived at fit start, or found by the range test (``None`` until
        a range test has run)."""
        return self._range_in_use()[0]

    @property
    def max_lr(self) -> float | None:
        """Upper end of the LR range in use (see :attr:`min_lr`)."""
        return self._range_in_use()[1]

    def _range_in_use(self) -> tuple[float | None, float | None]:
        c = self._controller
        if c is not None and (c.range_test_steps == 0 or c.range_test is not None):
            return c.min_lr, c.max_lr  # the controller's range, once it is final
        if self._derived is not None:
            return self._derived.min_lr, self._derived.max_lr  # derived at fit start (None until a range test ran)
        return self._settings.min_lr, self._settings.max_lr

    @property
    def tau(self) -> int | None:
        """The first stage's τ: given, or derived from the step budget at fit start."""
        return self._settings.tau if self._derived is None else self._derived.tau

    @property
    def warmup_lr(self) -> float | None:
        """The LR reached at the end of warmup: given, or derived at fit start (the configured LR, bounded by the range
        once it is known: given, or found by the range test)."""
        if self._controller is not None and self._controller.warmup_lr is not None:
            return self._controller.warmup_target
        return self._settings.warmup_lr if self._derived is None else self._derived.warmup_lr

    @property
    def total_steps(self) -> int | None:
        """The Trainer's step budget (``None``: unbounded or before fit start)."""
        return None if self._derived is None else self._derived.total_steps

    @property
    def range_test_steps(self) -> int:
        """Length of the LR range test of this run (0: none, or before fit start)."""
        return 0 if self._derived is None else self._derived.range_test_steps

    @property
    def range_test_result(self) -> dict[str, Any] | None:
        """The LR range test's result (``steps``, ``lrs``, ``losses``, ``min_lr``, ``max_lr``, ...), once it ran."""
        c = self._controller
        return None if c is None or c.range_test is None else dict(c.range_test)

    @property
    def schedule(self) -> Schedule:
        """The schedule found so far, as data (see :mod:`lightning_autolrs.schedule`)."""
        self._sync()
        c = self._controller
        settings = self._settings.to_json()  # the settings, with the values in use where derived
        settings.update(min_lr=self.min_lr, max_lr=self.max_lr, tau=self.tau, warmup_lr=self.warmup_lr)
        settings["total_steps"] = self.total_steps
        del settings["range_test"]  # the key holds the range test's result, once it ran
        if c is not None and c.range_test is not None:
            settings["range_test"] = c.range_test
        if c is None:
            return Schedule(lrs=[], stages=[], settings=settings)
        if not c.fallback:  # the warmup in use: the one you gave, or one derived for a one-stage budget
            settings["warmup_steps"] = c.warmup_steps
        return Schedule(lrs=list(c.lrs), stages=c.history, settings=settings, losses=list(c.losses))

    def save_schedule(self, path: str | os.PathLike[str]) -> Path:
        """Write the schedule found so far as JSON (format in :mod:`lightning_autolrs.schedule`); returns the path."""
        return save_schedule(self.schedule, path)

    # ------------------------------------------------------------------ set-up checks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not getattr(pl_module, "automatic_optimization", True):
            raise UnsupportedSetupError(
                "AutoLRS needs automatic optimization, but the LightningModule sets `automatic_optimization = False`. "
                "Remove AutoLRS from the callbacks or use automatic optimization."
            )
        move_first(trainer, self)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_strategy(trainer.strategy)
        base = check_single_optimizer(trainer, "AutoLRS")
        if self._loaded_state is None or not self._ratios:
            self._ratios = [float(g["lr"]) / base for g in trainer.optimizers[0].param_groups]
        self._check_validation_step(pl_module)
        _check_snapshot_device_available(self._settings.snapshot_device)
        self._held, self._validation_swapped = None, False  # a new fit trains on from the model's weights
        self._derived = None
        if getattr(trainer, "fast_dev_run", False):  # a smoke test of a few batches: nothing to search
            rank_zero_info(
                f"AutoLRS: `fast_dev_run` is on, so AutoLRS steps aside: no search, and the optimizer keeps its "
                f"configured lr={base:.4g}."
            )
            return
        resumed = self._loaded_state is not None  # the budget was checked when the run began
        self._derived = derive(
            self._settings,
            base,
            trainer.estimated_stepping_batches,
            check_budget=not resumed,
            beta2=second_moment_beta(trainer.optimizers[0]),
        )
        if not self._derived.fallback:
            _warn_weights_only_checkpoints(trainer)
        if self._derived.fallback and not resumed:
            rank_zero_warn(
                f"AutoLRS: the Trainer's budget of {self._derived.total_steps} optimizer steps is too small for a "
                f"search with trials of at least 20 steps (it needs at least {self._derived.needed_steps} steps with "
                f"`num_trials`={self._settings.num_trials}); training without a search instead: "
                f"{_fallback_schedule(self._settings, self._derived)}. Raise `max_steps`/`max_epochs` to search.",
                category=AutoLRSWarning,
            )

    def _check_validation_step(self, pl_module: pl.LightningModule) -> None:
        """``monitor="val_loss"`` probes with ``validation_step`` unless ``val_loss_fn`` is given: refuse at fit start a
        module that does not implement it (instead of failing inside the first trial)."""
        s = self._settings
        if s.monitor == "val_loss" and s.val_loss_fn is None and not implements_validation_step(pl_module):
            raise UnsupportedSetupError(
                f"`monitor='val_loss'` judges trials on the validation loss, but {type(pl_module).__name__} does not "
                "implement `validation_step`. Implement `validation_step` (returning or logging the loss as "
                "'val_loss'), pass `val_loss_fn=lambda module, batch: ...`, or use `monitor='train_loss'`."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._controller = None
        if self._derived is None:  # stepped aside at fit start (`fast_dev_run`)
            return
        monitor = self._settings.monitor
        self._probe = None
        loss_fn = self._settings.val_loss_fn
        if monitor != "train_loss" and (loss_fn is not None or implements_validation_step(pl_module)):
            self._probe = ValidationProbe.from_trainer(trainer, self._settings.val_batches, loss_fn)
        if monitor != "train_loss":
            if self._probe is None and monitor == "val_loss":
                raise UnsupportedSetupError(
                    "`monitor='val_loss'` needs validation data, but the Trainer has no validation dataloader (or "
                    "`limit_val_batches=0`). Provide `val_dataloader`, or use `monitor='train_loss'`."
                )
            if self._probe is None:
                monitor = "train_loss"
        assert self._derived is not None
        self._controller = StageController.from_settings(
            self._settings, self._derived, start_step=trainer.global_step, monitor=monitor
        )
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._snapshot = StateSnapshot(
            pl_module, trainer.optimizers[0], scaler=scaler, device=self._settings.snapshot_device
        )
        self._best_snapshot = (
            StateSnapshot(pl_module, trainer.optimizers[0], scaler=scaler, device=self._settings.snapshot_device)
            if self._settings.reuse_best_trial
            else None
        )
        self._trial = StateSnapshot(
            pl_module, trainer.optimizers[0], scaler=scaler, device=self._settings.snapshot_device
        )  # (allocated at its first capture: the first checkpoint or validation inside a search)
        self._held = None
        if self._loaded_state is not None:
            state, self._loaded_state = self._loaded_state, None
            self._controller.load_state_dict(state["controller"])
            if self._loaded_snapshot is not None:
                self._snapshot.load_state_dict(self._loaded_snapshot)
                self._loaded_snapshot = None
                if self._loaded_trial is not None:  # the checkpoint's weights are the committed state: continue the
                    self._trial.load_state_dict(self._loaded_trial)  # trial that was in flight
                    self._trial.restore()
                if self._best_snapshot is not None and self._loaded_best is not None:
                    self._best_snapshot.load_state_dict(self._loaded_best)
                self._loaded_best = None
            elif self._controller.needs_snapshot and self._controller.phase in ("search", "warmup"):
                # checkpoint saved without the snapshot: redo the interrupted search (or range test) from the weights
                self._controller.restart_stage()
            elif self._controller.phase == "exploit" and self._controller.stage >= 0:
                self._controller.restart_stage()  # (a restore the checkpoint could not carry is dropped)
                self._snapshot.capture()  # the exploit guard falls back to the resumed weights
            if self._controller.holds_best_state and (self._best_snapshot is None or not self._best_snapshot.captured):
                self._controller.drop_best_state()  # (a checkpoint without it: no rollback to a state it did not keep)
            self._loaded_trial = None
        self._step_open = False
        self._run_losses, self._run_plans = [], []
        self._applied = self._applied_base = None
        self._seen_global_step = trainer.global_step
        # read once: the per-step hooks below run on every optimizer step and must stay cheap
        self._scaler = scaler if getattr(scaler, "is_enabled", lambda: False)() else None
        self._world_size = trainer.world_size
        self._late_reads = self._reads_late(trainer)
        self._optimizer = trainer.optimizers[0]  # (the one the snapshots copy)
        self._budget = math.inf if self.total_steps is None else self.total_steps
        self._global_step = optimizer_step_counter(trainer)
        self._trainer = trainer
        self._late = None
        self._lr_logger.attach(trainer)
        self._log_in = 0  # (the first step asks the logger)
        self._progress_bar.attach(trainer, self._progress_metrics)

    # ------------------------------------------------------------------ the step loop
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        ended = self._run_losses
        if ended and len(ended) < len(self._run_plans) and not self._step_open:  # a quiet run's step: its plan's LR
            if self._optimizer.param_groups[0]["lr"] == self._applied_lr:
                plan = self._run_plans[len(ended)]
                if plan is not self._applied:  # (a ramp's or the anneal's next LR)
                    apply_lr(self._optimizer, plan.lr, self._ratios)
                    self._applied = plan
                    self._applied_lr = self._optimizer.param_groups[0]["lr"]
                self._log_in -= 1
                if self._log_in <= 0 or trainer.should_stop:
                    self._log_in = self._lr_logger(trainer, plan.lr)
                self._step_open = True
                self._step_loss = None
                return
            self._sync()  # code outside AutoLRS wrote another LR: the controller's plan is applied again
        controller = self._controller
        if self._step_open or controller is None or controller.step >= self._budget:
            return
        plan = controller.begin_step()
        # most steps reuse the plan of the step before, whose LR the optimizer holds, unless code outside AutoLRS
        # wrote another one (AutoLRS's own LR wins at every step, as it did before plans were kept)
        if plan is not self._applied or self._optimizer.param_groups[0]["lr"] != self._applied_lr:
            if plan.ramp_of is not None and plan.ramp_of is self._applied_base:  # a ramp's next LR: nothing else
                apply_lr(self._optimizer, plan.lr, self._ratios)
                self._applied = plan
                self._applied_lr = self._optimizer.param_groups[0]["lr"]
            else:
                self._apply_plan(plan, pl_module)
        self._log_in -= 1
        if self._log_in <= 0 or trainer.should_stop:
            self._log_in = self._lr_logger(trainer, plan.lr)
        if self._reads_scale:  # a skipped AMP step only matters to a trial's step count (no host read: _scale_now)
            self._scale_before = self._scale_now()
        elif self._loss_only and not self._late_reads and not self._steps_without_loss:
            self._begin_run(controller)
        self._step_open = True
        self._step_loss = None

    def _begin_run(self, controller: StageController) -> None:
        """Start a quiet run at the step just planned, where the controller plans one of two steps or more (see
        :meth:`StageController.quiet_run`; on CPU, where a loss is read at once, without probes, DDP or AMP): its
        steps to come only set their plan's LR, and their losses reach the controller together at its end."""
        plans = controller.quiet_run()
        steps = int(min(len(plans), self._budget - controller.step))
        if steps >= 2:
            self._run_plans = plans[:steps]
            self._run_losses = []
            self._run_below = controller.quiet_below

    def _sync(self) -> None:
        """Bring the controller up to date with a quiet run's steps ended so far (:meth:`_end_run`), before anything
        reads it (a checkpoint, validation, the public results, the run's end)."""
        if self._run_plans:
            events = self._end_run()
            if events:  # (none: a run's events come at its last step, whose hook ends the run)
                self._act_on(self._trainer, events)

    def _end_run(self) -> list[Any]:
        """Hand the losses of the quiet run's ended steps to the controller (:meth:`StageController.end_quiet_run`),
        and begin its step still open there, so the controller is where the steps one at a time would have left it;
        before anything reads the controller. The controller's events (only at the end of a full run)."""
        if not self._run_plans:
            return []
        controller = self._controller
        assert controller is not None
        losses, plans = self._run_losses, self._run_plans
        self._run_losses, self._run_plans = [], []
        if not losses:  # (the run's first step, still open: the controller planned it)
            return []
        events = controller.end_quiet_run(losses, plans)
        if self._step_open:  # a step of the run the controller has not planned yet: plan it
            plan = controller.begin_step()
            if events or not plan.takes_as(self._applied):
                raise RuntimeError("AutoLRS: a quiet run ended inside a step planned otherwise")
            self._applied = plan
        return events

    def _apply_plan(self, plan: StepPlan, pl_module: pl.LightningModule) -> None:
        """What a step's plan asks for before its step (snapshot copies, the stage-start probe), its LR set in the
        optimizer, and what the end of its step will have to read (a probe, the AMP scale), once per plan: the steps
        of a plan kept from the step before need none of it again."""
        if plan.save_best or plan.restore_best or plan.restore or plan.capture or plan.probe_before:
            self._prepare_step(plan, pl_module)
        else:  # nothing to copy or probe
            self._level = None
        apply_lr(self._optimizer, plan.lr, self._ratios)
        self._applied = plan
        self._applied_base = plan.ramp_of or plan  # (the ramp whose next plans need only their LR set)
        self._applied_lr = self._optimizer.param_groups[0]["lr"]
        self._plan_probe = plan.probe
        self._reads_scale = self._scaler is not None and plan.phase == "search"
        self._scale_before = None
        # the step's end hands the controller its loss and nothing else (most steps)
        self._loss_only = not (plan.probe or self._reads_scale or self._level is not None or self._world_size > 1)

    def _prepare_step(self, plan: StepPlan, pl_module: pl.LightningModule) -> None:
        """The snapshot copies and the stage-start probe a step's plan asks for, before its LR is set."""
        assert self._snapshot is not None
        if plan.save_best and self._best_snapshot is not None:
            self._best_snapshot.capture()
        if plan.restore_best and self._best_snapshot is not None:
            self._best_snapshot.restore()
        elif plan.restore:
            self._snapshot.restore()
        if plan.capture:
            self._snapshot.capture()
        self._level = (self._probe(pl_module),) if plan.probe_before and self._probe is not None else None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        controller = self._controller
        if not self._step_open or controller is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # summed on the device: no host read per micro-batch
            if loss.requires_grad:  # (Lightning hands over a detached loss: detaching again costs a dispatch)
                loss = loss.detach()
            self._step_loss = loss if self._step_loss is None else self._step_loss + loss
        global_step = self._global_step.completed  # (trainer.global_step)
        if global_step == self._seen_global_step:
            return  # gradient accumulation: the optimizer step has not happened yet
        self._seen_global_step = global_step
        if self._run_plans:
            step_loss = None if self._step_loss is None else self._step_loss.item()
            if type(step_loss) is float and -math.inf < step_loss <= self._run_below:  # (False for NaN)
                self._step_open = False
                self._run_losses.append(step_loss)
                if len(self._run_losses) == len(self._run_plans):  # the run's last step: its losses to the controller
                    events = self._end_run()
                    if events:
                        self._act_on(trainer, events)
                return
            self._sync()  # a loss the short path does not take: the steps before it, then the general path
            self._step_open = False
            events = self._end_step(trainer, pl_module, step_loss)
            if events:
                self._act_on(trainer, events)
            return
        self._step_open = False
        if self._late is not None:
            self._report_late_loss()  # the previous step's loss, which waited
        if self._late_reads and controller.loss_can_wait and not isinstance(self._scale_before, float):
            # a step whose loss only feeds the guards or its trial's series: read it one step late, so the device
            # queue never waits on it; under a GradScaler whether it skipped the step follows with it (a scale the
            # scaler holds in no tensor yet, before its first step, is read at once)
            skipped = None if self._scale_before is None else self._skipped()
            self._late = LateLoss(trainer, self._step_loss, self._world_size, skipped)
            controller.end_step(None, late=True)
            return
        # the one host read of this step (`item` reads the same value as `float`, with less dispatch)
        step_loss = None if self._step_loss is None else self._step_loss.item()
        if self._loss_only and step_loss is not None and not self._steps_without_loss:
            events = controller.end_step(step_loss)  # most steps
        else:
            events = self._end_step(trainer, pl_module, step_loss)
        if events:
            self._act_on(trainer, events)

    def _end_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step_loss: float | None) -> list[Any]:
        """The controller's ``end_step`` with what the step's plan asked for besides its loss (a skipped AMP step, the
        validation probe, the stage-start probe, the mean over the ranks), and the check for steps without a loss."""
        controller = self._controller
        assert controller is not None
        skipped = False
        if self._scale_before is not None:
            skipped = bool(self._skipped())
        probe, probe_seconds = None, 0.0
        if self._plan_probe and self._probe is not None:
            start = time.perf_counter()
            probe = self._probe(pl_module)
            probe_seconds = time.perf_counter() - start
        level, self._level = self._level, None
        if self._world_size > 1:  # one all-reduce per step: the step's loss, with its probes when it has any
            step_loss, probe, *rest = reduce_loss(trainer, step_loss, probe, *(level or ()))
            level = (rest[0],) if level is not None else None
        if level is not None:
            controller.record_level(level[0])
        if step_loss is None or self._steps_without_loss:
            self._check_loss_present(step_loss)
        return controller.end_step(step_loss, progressed=not skipped, probe=probe, probe_seconds=probe_seconds)

    @staticmethod
    def _reads_late(trainer: pl.Trainer) -> bool:
        """Whether this fit reads a step's loss that may wait (:attr:`StageController.loss_can_wait`) one step late:
        on an accelerator, where a host read now would stall the device queue. On CPU a loss is read at once: that
        waits for nothing, lets the guards act a step sooner, and keeps the quiet step's path short (issue #14).
        Decided once per fit from the strategy's device, so every rank takes the same path (the same collectives)."""
        return trainer.strategy.root_device.type != "cpu"

    def _act_on(self, trainer: pl.Trainer, events: list[Any]) -> None:
        controller = self._controller
        assert controller is not None
        if events and self._world_size > 1:
            # rank 0 decides: every rank adopts its decision, so all ranks apply the same LR at the same step
            controller.load_sync_state(trainer.strategy.broadcast(controller.sync_state(), src=0))
        for event in events:
            report_event(
                trainer, event, controller, num_trials=self._settings.num_trials, verbose=self._settings.verbose
            )

    def _report_late_loss(self, act: bool = True) -> None:
        """Hand the controller the loss that waited a step (see :class:`~lightning_autolrs._edge.LateLoss`); also
        before a checkpoint and at the run's end or an exception, so no state is written or left without it.
        ``act=False``: the controller's events are neither logged nor broadcast to the other ranks."""
        late, self._late = self._late, None
        if late is None or self._controller is None:
            return
        loss = late.read()
        if loss is None or self._steps_without_loss:
            self._check_loss_present(loss)
        events = self._controller.report_late_loss(loss, progressed=not late.skipped)
        if events and act:
            self._act_on(self._trainer, events)

    def _scale_now(self) -> torch.Tensor | float | None:
        """The AMP GradScaler's scale without a host read: a copy of the tensor it keeps it in, on its device (the
        scaler updates that tensor in place); a float before its first step (no tensor yet: its initial scale) or for
        a scaler without the accessor. ``None`` without a scaler."""
        scaler = self._scaler
        if scaler is None:
            return None
        get_async = getattr(scaler, "_get_scale_async", None)
        scale = None if get_async is None else get_async()
        return float(scaler.get_scale()) if scale is None else scale.detach().clone()

    def _skipped(self) -> torch.Tensor | bool:
        """Whether the GradScaler skipped the step that just ended (an overflow lowers its scale): a 0-d tensor on the
        scale's device where the scale was in a tensor before and after the step (no host read), else a bool."""
        before, after = self._scale_before, self._scale_now()
        assert before is not None and after is not None
        if isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor):
            return after < before
        return float(after) < float(before)

    @property
    def progress_text(self) -> str:
        """Where the schedule is, e.g. ``"stage 2 · trial 3/10"``, shown in the progress bar."""
        c = self._controller
        if c is not None and c.range_test_running:
            return f"range test {c.range_test_position + 1}/{c.range_test_steps}"
        if c is None or c.phase == "warmup":
            return "warmup"
        if c.phase == "search":
            return f"stage {c.stage} · trial {c.trial + 1}/{self._settings.num_trials}"
        return f"stage {c.stage} · exploit"

    def _progress_metrics(self) -> dict[str, str]:
        """The current LR and :attr:`progress_text`, for the progress bar."""
        c = self._controller
        if self._run_losses:  # (a quiet run's steps, not handed to the controller yet: the last one's LR)
            return {"lr": f"{self._run_plans[len(self._run_losses) - 1].lr:.3g}", "autolrs": self.progress_text}
        lr = {"lr": f"{c.lrs[-1]:.3g}"} if c is not None and c.lrs else {}
        return {**lr, "autolrs": self.progress_text}

    def _check_loss_present(self, loss: float | None) -> None:
        assert self._controller is not None
        self._steps_without_loss = 0 if loss is not None else self._steps_without_loss + 1
        limit = max(_NO_LOSS_LIMIT, self._controller.stage_steps[1])
        if self._steps_without_loss >= limit:
            raise UnsupportedSetupError(
                f"`training_step` returned no loss in {self._steps_without_loss} consecutive optimizer steps; AutoLRS "
                "needs the training loss to judge trial LRs. Return the loss tensor (or a dict with a 'loss' key)."
            )

    # ------------------------------------------------------------------ ends of the run
    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync()
        self._drop_open_step()
        self._report_late_loss()
        self._progress_bar.detach()
        self._abandon_search("the run ended")
        controller = self._controller
        back = controller.stages[-1].restored_at_end if controller is not None and controller.stages else None
        if back is not None and self._settings.verbose:
            rank_zero_info(
                f"AutoLRS: the validation loss rose in the hold after the early anneal; the last step went back to the "
                f"weights of step {back} (the hold's lowest validation probe)."
            )

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (
            self._settings.save_files and trainer.loggers and trainer.is_global_zero and self._controller is not None
        ):
            return
        log_dir = trainer.log_dir
        if log_dir is None:
            return
        out = Path(log_dir)
        out.mkdir(parents=True, exist_ok=True)
        json_path = self.save_schedule(out / "autolrs_schedule.json")
        written = [str(json_path)]
        try:
            from lightning_autolrs.plot import plot_schedule

            plot_schedule(self.schedule, out / "autolrs_schedule.png", title="AutoLRS schedule")
            written.append(str(out / "autolrs_schedule.png"))
        except ImportError:
            rank_zero_warn(
                "AutoLRS: matplotlib is not installed, so autolrs_schedule.png was not written.",
                category=AutoLRSWarning,
            )
        if self._settings.verbose:
            rank_zero_info(f"AutoLRS: wrote {', '.join(written)}")

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._progress_bar.detach()
        try:  # the loss still waiting (read late): a divergence in it decides which state is committed
            self._end_run()  # (a quiet run's losses: no events before its last step)
            self._drop_open_step()
            self._report_late_loss(act=False)  # (no logging, no collective: the run is ending, maybe on one rank)
        except Exception as err:  # never mask the exception being handled; the committed state is chosen without it
            log.debug("AutoLRS: the waiting loss could not be read after %s: %r", type(exception).__name__, err)
        self._abandon_search(f"{type(exception).__name__} was raised")

    def _drop_open_step(self) -> None:
        """At the run's end: a step begun but never ended (the module's ``on_train_batch_start`` returned -1 in the
        last epoch, or the step raised) is dropped from the controller, so the loss still waiting is judged as the
        last step's: a trial it diverged is recorded."""
        if self._step_open and self._controller is not None:
            self._controller.drop_open_step()
            self._step_open = False

    def _abandon_search(self, why: str) -> None:
        """A run cut short: leave the model at the best committed training state (the end of the stage's best
        completed trial when there is one, else the stage start) and say how many steps that kept and discarded."""
        c = self._controller
        if c is None or self._snapshot is None or not self._snapshot.captured or not c.finalize():
            return
        state, trial, kept, discarded = self._committed()
        self._hold_committed("all")  # (the in-flight state stays in `_trial`: a checkpoint written now resumes exactly)
        sweep = c.range_test_running or not c.stages  # (in the sweep, or at its end with its restore still due)
        where = "the LR range test" if sweep else f"stage {c.stage}'s search"
        if sweep:
            what = f"restored the model and optimizer to where the sweep began: discarded its {discarded} steps"
        elif trial is None:
            what = (
                f"restored the model and optimizer to the start of {where} (no trial had completed, a step had just "
                f"diverged, or the stage keeps no trial): kept 0 steps, discarded the {discarded} steps since"
            )
        else:
            verb = "kept the model and optimizer at" if state == "current" else "restored the model and optimizer to"
            what = (
                f"{verb} the end of its best completed trial (lr={c.stages[-1].trials[trial].lr:.4g}): kept that "
                f"trial's {kept} steps, discarded the other {discarded} steps since the stage start"
            )
        rank_zero_warn(f"AutoLRS: {why} during {where}; {what}.", category=AutoLRSWarning)

    # ------------------------------------------------------------------ the committed state
    def _committed(self) -> tuple[str, int | None, int, int]:
        """:meth:`StageController.committed_on_stop`, with ``"best"`` read as ``"stage"`` when no best-trial snapshot
        holds it: ``(state, trial, kept, discarded)``, ``state`` one of ``"current"``, ``"best"``, ``"stage"``."""
        c, snap = self._controller, self._snapshot
        if c is None or snap is None or not snap.captured:
            return "current", None, 0, 0
        state, trial, kept, discarded = c.committed_on_stop()
        best = self._best_snapshot
        if state == "best" and (best is None or not best.captured):
            return "stage", None, 0, kept + discarded
        return state, trial, kept, discarded

    def _hold_committed(self, what: str) -> bool:
        """Put the committed training state (the stage start, or the best completed trial's end) into the model in
        place, keeping the in-flight state in the trial snapshot; :meth:`_release_committed` swaps back.

        Args:
            what: ``"all"``: model, optimizer and scaler; ``"module"``: the module's tensors only (for validation).

        Returns:
            Whether the model now holds a committed state other than the live one (``False``: outside a search, or
            the live state is the committed one).
        """
        if self._held == what or self._held == "all":
            return True
        state = self._committed()[0]
        if state == "current" or self._trial is None:
            return False
        self._release_committed()  # ("module" -> "all": the in-flight module first)
        committed = self._best_snapshot if state == "best" else self._snapshot
        assert committed is not None
        if what == "all":
            self._trial.capture()
            committed.restore()
        else:
            self._trial.capture_module()
            committed.restore_module()
        self._held = what
        self._applied = self._applied_base = None  # (the optimizer's param groups may hold the committed state's LR)
        return True

    def _release_committed(self) -> None:
        """Put the in-flight state back after :meth:`_hold_committed` (in place)."""
        if self._held is not None:
            assert self._trial is not None
            if self._held == "all":
                self._trial.restore()
            else:
                self._trial.restore_module()
            self._held = None
            self._applied = self._applied_base = None

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning validates (and EarlyStopping / ModelCheckpoint(monitor=...) judge) the committed weights
        self._sync()
        self._validation_swapped = not trainer.sanity_checking and self._held is None and self._hold_committed("module")

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_swapped:
            self._validation_swapped = False
            self._release_committed()

    # ------------------------------------------------------------------ checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        if self._controller is None:
            return {}
        self._sync()
        self._report_late_loss()  # the state includes the last step's loss (and any fallback it calls for)
        return {"version": STATE_VERSION, "ratios": list(self._ratios), "controller": self._controller.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        check_state_version(state_dict, "AutoLRS callback state")
        self._loaded_state = dict(state_dict)
        self._ratios = [float(r) for r in state_dict.get("ratios", [])]

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._sync()
        self._report_late_loss()
        c, snap = self._controller, self._snapshot
        if c is None or snap is None:
            return
        held = self._held
        try:
            if self._hold_committed("all"):  # the checkpoint's model and optimizer state are the committed ones
                checkpoint["state_dict"] = copy.deepcopy(trainer.strategy.lightning_module_state_dict())
                checkpoint["optimizer_states"] = [
                    copy.deepcopy(trainer.strategy.optimizer_state(o)) for o in trainer.optimizers
                ]
                precision = trainer.precision_plugin
                if type(precision).__qualname__ in checkpoint:  # the AMP scaler's state
                    checkpoint[type(precision).__qualname__] = copy.deepcopy(precision.state_dict())
                if self._settings.checkpoint_snapshot and snap.captured:
                    assert self._trial is not None
                    checkpoint[_TRIAL_KEY] = self._trial.state_dict()
            # the stage snapshot from the first stage on: an exploit fallback (or the final anneal's restore after a
            # non-finite loss) of the resumed run goes back to the same stage start as the uninterrupted run
            if self._settings.checkpoint_snapshot and snap.captured and (c.needs_snapshot or c.stage >= 0):
                checkpoint[_SNAPSHOT_KEY] = snap.state_dict()
                if (
                    (c.needs_snapshot or c.holds_best_state)
                    and self._best_snapshot is not None
                    and self._best_snapshot.captured
                ):
                    checkpoint[_BEST_SNAPSHOT_KEY] = self._best_snapshot.state_dict()
        finally:
            if self._held != held:  # as it was: the in-flight state, or the committed module (during validation)
                self._release_committed()
                if held is not None:
                    self._hold_committed(held)

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._loaded_snapshot = checkpoint.get(_SNAPSHOT_KEY)
        self._loaded_best = checkpoint.get(_BEST_SNAPSHOT_KEY)
        self._loaded_trial = checkpoint.get(_TRIAL_KEY)


AutoLRS.__doc__ = (AutoLRS.__doc__ or "").replace("{settings_args}", docstring_args().lstrip())
