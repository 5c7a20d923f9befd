"""AutoLRS as a Lightning callback: the learning rate of each training stage is chosen by Bayesian optimisation.

The callback is the thin Lightning edge of the package. It turns Trainer hooks into events for the pure
:class:`~lightning_autolrs.controller.StageController` (which owns the algorithm) and carries out what the controller
decides: set the LR, capture or restore the in-memory :class:`~lightning_autolrs.snapshot.StateSnapshot`, log.

Works with ``lightning.pytorch`` and with ``pytorch_lightning`` Trainers: the class derives from the ``Callback`` of
each package that is installed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_autolrs._edge import ProgressBarHook, callback_bases, check_strategy, reduce_loss, report_event
from lightning_autolrs._validation import check_int
from lightning_autolrs.controller import RANGE_SPAN, StageController, check_settings, default_tau, tau_prime_for
from lightning_autolrs.exceptions import InvalidArgumentError, UnsupportedSetupError
from lightning_autolrs.probe import ValidationProbe
from lightning_autolrs.proposer import DEFAULT_BETA
from lightning_autolrs.schedule import Schedule, save_schedule
from lightning_autolrs.snapshot import StateSnapshot

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["AutoLRS"]


_DEFAULT_RANGE_BELOW = 100.0
_DEFAULT_RANGE_ABOVE = 10.0
_RANGE_TEST_BELOW = 1e-4  # the range test sweeps from the configured LR × 1e-4 ...
_RANGE_TEST_ABOVE = 1e2  # ... to × 1e2
_RANGE_TEST_SHARE = 0.05
_RANGE_TEST_MIN_STEPS = 20
_RANGE_TEST_MAX_STEPS = 100
_SNAPSHOT_KEY = "autolrs_stage_snapshot"
_BEST_SNAPSHOT_KEY = "autolrs_best_trial_snapshot"
_NO_LOSS_LIMIT = 10  # consecutive loss-less optimizer steps (at least one trial's length) before we give up


class AutoLRS(*callback_bases()):  # type: ignore[misc]
    r"""Choose the learning rate of each training stage on the fly by Bayesian optimisation (Jin et al., ICLR 2021).

    Training is cut into stages. At the start of a stage the model and optimizer are snapshotted in memory;
    ``num_trials`` candidate LRs, proposed by a Gaussian process with an upper-confidence-bound acquisition, are each
    trained for τ' = ``search_ratio``·τ steps from that snapshot; an exponential model fitted to each trial's loss
    curve forecasts the loss after τ steps. The stage then restores the snapshot and trains τ steps with the LR of the
    best forecast. τ and τ' double each stage until τ reaches ``tau_max``. All steps, trials included, are real
    optimizer steps of the Trainer, so ``max_steps`` / ``max_epochs`` bound the whole run.

    Args:
        min_lr: lower end of the LR search range. Default (``None``): found by the LR range test (see
            ``range_test``), or ``max_lr`` / 1000 when only ``max_lr`` is given.
        max_lr: upper end of the LR search range. Default (``None``): found by the LR range test, or ``min_lr`` × 1000
            when only ``min_lr`` is given.
        num_trials: candidate LRs tried per stage (≥ 2).
        tau: the first stage's exploit length τ in optimizer steps. Default (``None``): derived from the Trainer's
            step budget so that at least three full stages fit
            (``(budget − warmup_steps) / (7·(1 + num_trials·search_ratio))``), or 1000 if the budget is unbounded.
        tau_max: τ doubles each stage until it reaches ``tau_max``.
        search_ratio: trial length as a fraction of τ, in (0, 1).
        beta: UCB exploration weight (``mean + sqrt(beta)·sigma`` on the negated forecast loss). The default 8 explores
            a lot, which is cheap: the stage keeps the best *observed* trial, and a stage has only ~10 trials.
        warmup_steps: linear LR warmup steps before the first stage (no search during warmup).
        warmup_lr: LR reached at the end of warmup. Default: the optimizer's configured LR, clamped to the range when
            the range is known before warmup (no range test).
        seed: seed of each stage's first, space-filling proposals (stage ``s`` uses ``seed + s``; ``None`` acts as 0).
        divergence_factor: a trial whose loss exceeds this multiple of the stage's reference loss (or is NaN/inf) is
            stopped at once and restored.
        monitor: what a trial is judged on. ``"train_loss"``: the training loss of every trial step.
            ``"val_loss"``: the loss on ``val_batches`` fixed validation batches, probed at 8 evenly spaced steps of
            each trial (the paper's objective; needs a validation dataloader). ``"auto"`` (default): validation
            probes once trials are at least 200 steps long (and a validation dataloader exists), the training loss
            for shorter trials, where 8 probes of 10 batches would cost too much relative to the trial and the
            training loss is the less noisy signal.
        reuse_best_trial: continue the exploit phase from the end state of the best trial (one more in-memory
            snapshot) instead of re-training its τ' steps from the stage start; saves τ' steps per stage.
        early_stop: end a stage's search early, after at least ``min_trials`` trials, once the GP's optimistic bound
            (``mean + sigma``) nowhere beats the best trial.
        min_trials: fewest trials per stage when ``early_stop`` is on (≥ 2).
        abort_trials: end a running trial at half of its length when its partial forecast is worse than the stage's
            best trial by more than half of that trial's forecast improvement (needs trials of ≥ 8 steps or probes).
        warm_start: a later stage's first trial re-tries the previous stage's LR, and the previous stage's other
            forecasts, shifted by that trial's change, enter the GP as prior points (fewer trials with ``early_stop``).
        range_test: find ``min_lr``/``max_lr`` with a short LR range test before the first stage: the LR sweeps
            geometrically from the configured LR × 1e-4 to × 1e2, stopping once the loss blows up; ``max_lr`` is the
            LR three sweep steps before the lowest smoothed loss (the loss lags the LR) and ``min_lr`` = ``max_lr`` /
            1000. The model and optimizer are then
            restored, so the test costs its steps (counted in the budget, in the ``"warmup"`` phase) and nothing else;
            its result is logged and kept in :attr:`range_test_result`. ``None`` (default): on when neither
            ``min_lr`` nor ``max_lr`` is given. ``False``: the range is the configured LR ÷ 100 … × 10 instead.
        range_test_steps: length of the sweep; default (``None``): 5 % of the step budget, clipped to [20, 100]
            (100 when the budget is unbounded).
        val_batches: batches of the validation dataloader used by the probe.
        val_loss_fn: ``val_loss_fn(module, batch) -> loss`` for the probe; default: the module's
            ``validation_step`` (its returned loss, or the value it logs as ``*val_loss``).
        snapshot_device: where the stage snapshot lives: ``None`` keeps each copy on its tensor's device, ``"cpu"``
            keeps it in host memory.
        checkpoint_snapshot: put the stage snapshot into checkpoints saved during a search (one extra copy of model
            and optimizer state), so a resumed run continues the interrupted trial exactly. ``False`` keeps
            checkpoints small; a run resumed in the middle of a search then restarts that stage's search from the
            resumed weights.
        save_files: at fit end, write ``autolrs_schedule.json`` and ``autolrs_schedule.png`` into the Trainer's log
            dir (only when the Trainer has a logger; the PNG needs matplotlib).
        verbose: print one line per trial and per stage on rank zero.

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
        num_trials: int = 10,
        tau: int | None = None,
        tau_max: int = 8000,
        search_ratio: float = 0.1,
        beta: float = DEFAULT_BETA,
        warmup_steps: int = 0,
        warmup_lr: float | None = None,
        seed: int | None = None,
        divergence_factor: float = 5.0,
        monitor: str = "auto",
        reuse_best_trial: bool = False,
        early_stop: bool = False,
        min_trials: int = 3,
        abort_trials: bool = False,
        warm_start: bool = False,
        range_test: bool | None = None,
        range_test_steps: int | None = None,
        val_batches: int = 10,
        val_loss_fn: Callable[[Any, Any], Any] | None = None,
        snapshot_device: str | None = None,
        checkpoint_snapshot: bool = True,
        save_files: bool = True,
        verbose: bool = True,
    ) -> None:
        super().__init__()
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
        self._min_lr: float | None = checked["min_lr"]
        self._max_lr: float | None = checked["max_lr"]
        self._range: tuple[float | None, float | None] = (self._min_lr, self._max_lr)  # resolved at fit start
        self._num_trials: int = checked["num_trials"]
        self._tau: int | None = checked["tau"]
        self._tau_max: int = checked["tau_max"]
        self._search_ratio: float = checked["search_ratio"]
        self._beta: float = checked["beta"]
        self._warmup_steps: int = checked["warmup_steps"]
        self._warmup_lr: float | None = checked["warmup_lr"]
        self._seed: int | None = checked["seed"]
        self._divergence_factor: float = checked["divergence_factor"]
        self._monitor: str = checked["monitor"]
        self._min_trials: int = checked["min_trials"]
        if snapshot_device is not None and not isinstance(snapshot_device, str | torch.device):
            raise InvalidArgumentError(
                f"`snapshot_device` must be None or a device name like 'cpu', got {snapshot_device!r}."
            )
        self._snapshot_device = snapshot_device
        self._val_batches = check_int("val_batches", val_batches, minimum=1)
        self._reuse_best_trial = bool(reuse_best_trial)
        self._early_stop = bool(early_stop)
        self._abort_trials = bool(abort_trials)
        self._warm_start = bool(warm_start)
        if range_test is not None and not isinstance(range_test, bool):
            raise InvalidArgumentError(f"`range_test` must be None, True or False, got {range_test!r}.")
        self._range_test = (min_lr is None and max_lr is None) if range_test is None else range_test
        self._range_test_steps = check_int("range_test_steps", range_test_steps, minimum=2, allow_none=True)
        self.range_test_steps = 0
        if val_loss_fn is not None and not callable(val_loss_fn):
            raise InvalidArgumentError(f"`val_loss_fn` must be callable as fn(module, batch), got {val_loss_fn!r}.")
        self._val_loss_fn = val_loss_fn
        self._probe: ValidationProbe | None = None
        self._checkpoint_snapshot = bool(checkpoint_snapshot)
        self._save_files = bool(save_files)
        self._verbose = bool(verbose)

        self.controller: StageController | None = None
        self._snapshot: StateSnapshot | None = None
        self._loaded_state: dict[str, Any] | None = None
        self._loaded_snapshot: dict[str, Any] | None = None
        self._loaded_best: dict[str, Any] | None = None
        self._best_snapshot: StateSnapshot | None = None
        self._scaler: Any = None
        self._plan_probe = False
        self._scale_before: float | None = None
        self._progress_bar = ProgressBarHook()
        self._ratios: list[float] = []
        self._step_open = False
        self._step_loss = 0.0
        self._step_loss_count = 0
        self._seen_global_step = 0
        self._steps_without_loss = 0

    # ------------------------------------------------------------------ public results
    @property
    def lrs(self) -> list[float]:
        """Base LR applied at each optimizer step so far (index = global step)."""
        return [] if self.controller is None else self.controller.lrs

    @property
    def history(self) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per stage (see the class docstring)."""
        return [] if self.controller is None else self.controller.history

    @property
    def phase(self) -> str:
        """Current phase: ``"warmup"``, ``"search"`` or ``"exploit"``."""
        return "warmup" if self.controller is None else self.controller.phase

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
        c = self.controller
        if c is not None and (c.range_test_steps == 0 or c.range_test is not None):
            return c.min_lr, c.max_lr  # the controller's range, once it is final
        return self._range

    @property
    def range_test_result(self) -> dict[str, Any] | None:
        """The LR range test's result (``steps``, ``lrs``, ``losses``, ``min_lr``, ``max_lr``, ...), once it ran."""
        c = self.controller
        return None if c is None or c.range_test is None else dict(c.range_test)

    @property
    def schedule(self) -> Schedule:
        """The schedule found so far, as data (see :mod:`lightning_autolrs.schedule`)."""
        c = self.controller
        settings = {
            "min_lr": self.min_lr,
            "max_lr": self.max_lr,
            "num_trials": self._num_trials,
            "tau": getattr(self, "tau", self._tau),
            "tau_max": self._tau_max,
            "search_ratio": self._search_ratio,
            "beta": self._beta,
            "warmup_steps": self._warmup_steps,
            "warmup_lr": getattr(self, "warmup_lr", self._warmup_lr),
            "total_steps": getattr(self, "total_steps", None),
            "seed": self._seed,
        }
        if c is not None and c.range_test is not None:
            settings["range_test"] = dict(c.range_test)
        if c is None:
            return Schedule(lrs=[], stages=[], settings=settings)
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

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_strategy(trainer.strategy)
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise UnsupportedSetupError(
                f"AutoLRS drives exactly one optimizer, but `configure_optimizers` returned {len(optimizers)}. "
                "Return a single optimizer (use param groups for different LRs)."
            )
        if trainer.lr_scheduler_configs:
            raise UnsupportedSetupError(
                "AutoLRS sets the learning rate itself, but `configure_optimizers` also returned an LR scheduler "
                f"({type(trainer.lr_scheduler_configs[0].scheduler).__name__}). Return only the optimizer."
            )
        groups = optimizers[0].param_groups
        base = float(groups[0]["lr"])
        if not base > 0 or not math.isfinite(base):
            raise UnsupportedSetupError(
                f"The optimizer's first param group has lr={base}; AutoLRS needs a positive configured LR to keep the "
                "param groups' LR ratios. Configure a positive `lr`."
            )
        if self._loaded_state is None or not self._ratios:
            self._ratios = [float(g["lr"]) / base for g in groups]
        self._resolve_range(base)
        self._resolve_budget(trainer)

    def _resolve_range(self, configured_lr: float) -> None:
        lo, hi = self._min_lr, self._max_lr
        self.range_test_lrs = (configured_lr * _RANGE_TEST_BELOW, configured_lr * _RANGE_TEST_ABOVE)
        if self._range_test:
            self._range = (lo, hi)  # None until the range test has run (given bounds win)
            self.warmup_lr = configured_lr if self._warmup_lr is None else self._warmup_lr
            return
        if lo is None and hi is None:
            lo, hi = configured_lr / _DEFAULT_RANGE_BELOW, configured_lr * _DEFAULT_RANGE_ABOVE
        elif lo is None:
            assert hi is not None
            lo = hi / RANGE_SPAN
        elif hi is None:
            hi = lo * RANGE_SPAN
        self._range = (float(lo), float(hi))
        if self._warmup_lr is None:
            self.warmup_lr = min(max(configured_lr, float(lo)), float(hi))
        else:
            self.warmup_lr = self._warmup_lr

    def _resolve_budget(self, trainer: pl.Trainer) -> None:
        total = trainer.estimated_stepping_batches
        self.total_steps = None if total is None or math.isinf(total) or total < 0 else int(total)
        self.range_test_steps = 0
        if self._range_test:
            self.range_test_steps = self._range_test_steps or (
                _RANGE_TEST_MAX_STEPS
                if self.total_steps is None
                else min(max(round(_RANGE_TEST_SHARE * self.total_steps), _RANGE_TEST_MIN_STEPS), _RANGE_TEST_MAX_STEPS)
            )
        before = self._warmup_steps + self.range_test_steps  # steps before the first stage
        if self._tau is not None:
            self.tau = self._tau
        else:
            self.tau = min(default_tau(self.total_steps, self._num_trials, self._search_ratio, before), self._tau_max)
            if self.tau < 1:
                raise InvalidArgumentError(
                    f"The Trainer's budget of {self.total_steps} optimizer steps is too small to derive `tau` "
                    f"(needs at least {7 * (1 + self._num_trials * self._search_ratio) + before:.0f} steps for three "
                    f"stages after `warmup_steps`={self._warmup_steps} and {self.range_test_steps} range-test steps); "
                    "raise `max_steps`/`max_epochs`, pass a small `tau`, or give `min_lr`/`max_lr`."
                )
        if self.total_steps is not None and self._loaded_state is None:
            need = before + (self._num_trials + 1) * tau_prime_for(self.tau, self._search_ratio)
            if need > self.total_steps:
                raise InvalidArgumentError(
                    f"`tau`={self.tau} needs at least {need} optimizer steps for one search with `num_trials`="
                    f"{self._num_trials} (plus `warmup_steps`={self._warmup_steps} and {self.range_test_steps} "
                    f"range-test steps), but the Trainer's budget is {self.total_steps}. Lower `tau` or `num_trials`, "
                    "raise `max_steps`, or give `min_lr`/`max_lr`."
                )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        monitor = self._monitor
        self._probe = None
        if monitor != "train_loss":
            self._probe = ValidationProbe.from_trainer(trainer, self._val_batches, self._val_loss_fn)
            if self._probe is None and monitor == "val_loss":
                raise UnsupportedSetupError(
                    "`monitor='val_loss'` needs validation data, but the Trainer has no validation dataloader (or "
                    "`limit_val_batches=0`). Provide `val_dataloader`, or use `monitor='train_loss'`."
                )
            if self._probe is None:
                monitor = "train_loss"
        self.controller = StageController(
            self.min_lr,
            self.max_lr,
            num_trials=self._num_trials,
            tau=self.tau,
            tau_max=max(self._tau_max, self.tau),
            search_ratio=self._search_ratio,
            warmup_steps=self._warmup_steps,
            warmup_lr=self.warmup_lr if self._warmup_steps > 0 else None,
            total_steps=self.total_steps,
            start_step=trainer.global_step,
            beta=self._beta,
            seed=self._seed,
            divergence_factor=self._divergence_factor,
            monitor=monitor,
            reuse_best_trial=self._reuse_best_trial,
            early_stop=self._early_stop,
            min_trials=self._min_trials,
            abort_trials=self._abort_trials,
            warm_start=self._warm_start,
            range_test_steps=self.range_test_steps,
            range_test_lrs=self.range_test_lrs if self.range_test_steps else None,
        )
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._snapshot = StateSnapshot(pl_module, trainer.optimizers[0], scaler=scaler, device=self._snapshot_device)
        self._best_snapshot = (
            StateSnapshot(pl_module, trainer.optimizers[0], scaler=scaler, device=self._snapshot_device)
            if self._reuse_best_trial
            else None
        )
        if self._loaded_state is not None:
            state, self._loaded_state = self._loaded_state, None
            self.controller.load_state_dict(state["controller"])
            if self._loaded_snapshot is not None:
                self._snapshot.load_state_dict(self._loaded_snapshot)
                self._loaded_snapshot = None
                if self._best_snapshot is not None and self._loaded_best is not None:
                    self._best_snapshot.load_state_dict(self._loaded_best)
                self._loaded_best = None
            elif self.controller.needs_snapshot:
                # checkpoint saved without the snapshot: redo the interrupted search (or range test) from the weights
                self.controller.restart_stage()
            elif self.controller.phase == "exploit" and self.controller.stage >= 0:
                self._snapshot.capture()  # the exploit guard falls back to the resumed weights
        self._step_open = False
        self._seen_global_step = trainer.global_step
        self._scaler = scaler
        self._progress_bar.attach(trainer, self._progress_metrics)

    # ------------------------------------------------------------------ the step loop
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._step_open or self.controller is None:
            return
        if self.total_steps is not None and self.controller.step >= self.total_steps:
            return
        plan = self.controller.begin_step()
        assert self._snapshot is not None
        if plan.save_best and self._best_snapshot is not None:
            self._best_snapshot.capture()
        if plan.restore_best and self._best_snapshot is not None:
            self._best_snapshot.restore()
        elif plan.restore:
            self._snapshot.restore()
        if plan.capture:
            self._snapshot.capture()
        for group, ratio in zip(trainer.optimizers[0].param_groups, self._ratios):
            group["lr"] = plan.lr * ratio
        self._scale_before = self._scaler_scale()
        self._plan_probe = plan.probe
        self._step_open = True
        self._step_loss = 0.0
        self._step_loss_count = 0

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._step_open or self.controller is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._step_loss += float(loss.detach())
            self._step_loss_count += 1
        if trainer.global_step == self._seen_global_step:
            return  # gradient accumulation: the optimizer step has not happened yet
        self._seen_global_step = trainer.global_step
        self._step_open = False
        step_loss = self._step_loss if self._step_loss_count else None
        step_loss = reduce_loss(trainer, step_loss)
        self._check_loss_present(step_loss)
        scale_after = self._scaler_scale()
        skipped = self._scale_before is not None and scale_after is not None and scale_after < self._scale_before
        probe, probe_seconds = None, 0.0
        if self._plan_probe and self._probe is not None:
            start = time.perf_counter()
            probe = reduce_loss(trainer, self._probe(pl_module))
            probe_seconds = time.perf_counter() - start
        events = self.controller.end_step(step_loss, progressed=not skipped, probe=probe, probe_seconds=probe_seconds)
        if events and trainer.world_size > 1:
            # rank 0 decides: every rank adopts its decision state, so all ranks apply the same LR at the same step
            self.controller.load_sync_state(trainer.strategy.broadcast(self.controller.sync_state(), src=0))
        pl_module.log("autolrs/lr", self.controller.lrs[-1], on_step=True, on_epoch=False, prog_bar=False)
        for event in events:
            report_event(trainer, event, self.controller, num_trials=self._num_trials, verbose=self._verbose)

    def _scaler_scale(self) -> float | None:
        scaler = self._scaler
        if scaler is None or not getattr(scaler, "is_enabled", lambda: False)():
            return None
        return float(scaler.get_scale())

    @property
    def progress_text(self) -> str:
        """Where the schedule is, e.g. ``"stage 2 · trial 3/10"``, shown in the progress bar."""
        c = self.controller
        if c is not None and c.range_test_running:
            return f"range test {c.range_test_position + 1}/{c.range_test_steps}"
        if c is None or c.phase == "warmup":
            return "warmup"
        if c.phase == "search":
            return f"stage {c.stage} · trial {c.trial + 1}/{self._num_trials}"
        return f"stage {c.stage} · exploit"

    def _progress_metrics(self) -> dict[str, str]:
        """The current LR and :attr:`progress_text`, for the progress bar."""
        c = self.controller
        lr = {"lr": f"{c.lrs[-1]:.3g}"} if c is not None and c.lrs else {}
        return {**lr, "autolrs": self.progress_text}

    def _check_loss_present(self, loss: float | None) -> None:
        assert self.controller is not None
        self._steps_without_loss = 0 if loss is not None else self._steps_without_loss + 1
        limit = max(_NO_LOSS_LIMIT, self.controller.stage_steps[1])
        if self._steps_without_loss >= limit:
            raise UnsupportedSetupError(
                f"`training_step` returned no loss in {self._steps_without_loss} consecutive optimizer steps; AutoLRS "
                "needs the training loss to judge trial LRs. Return the loss tensor (or a dict with a 'loss' key)."
            )

    # ------------------------------------------------------------------ ends of the run
    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._progress_bar.detach()
        self._abandon_search("the run ended")

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self._save_files and trainer.loggers and trainer.is_global_zero and self.controller is not None):
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
            rank_zero_warn("AutoLRS: matplotlib is not installed, so autolrs_schedule.png was not written.")
        if self._verbose:
            rank_zero_info(f"AutoLRS: wrote {', '.join(written)}")

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._progress_bar.detach()
        self._abandon_search(f"{type(exception).__name__} was raised")

    def _abandon_search(self, why: str) -> None:
        if self.controller is None or self._snapshot is None or not self._snapshot.captured:
            return
        if self.controller.finalize():
            self._snapshot.restore()
            rank_zero_warn(
                f"AutoLRS: {why} in the middle of a search (or right after a diverged step); restored the model "
                "and optimizer to the stage start, the last committed state."
            )

    # ------------------------------------------------------------------ checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        if self.controller is None:
            return {}
        return {"version": 1, "ratios": list(self._ratios), "controller": self.controller.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self._loaded_state = dict(state_dict)
        self._ratios = [float(r) for r in state_dict.get("ratios", [])]

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        c, snap = self.controller, self._snapshot
        if self._checkpoint_snapshot and c is not None and snap is not None and snap.captured and c.needs_snapshot:
            checkpoint[_SNAPSHOT_KEY] = snap.state_dict()
            if self._best_snapshot is not None and self._best_snapshot.captured:
                checkpoint[_BEST_SNAPSHOT_KEY] = self._best_snapshot.state_dict()

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._loaded_snapshot = checkpoint.get(_SNAPSHOT_KEY)
        self._loaded_best = checkpoint.get(_BEST_SNAPSHOT_KEY)
