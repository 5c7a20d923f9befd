"""Tests of the Lightning edge: AutoLRS inside real Trainers of both Lightning flavours."""

from __future__ import annotations

import csv
import json
import logging
import math
import warnings
from typing import Any

import pytest
import torch

from lightning_autolrs import AutoLRS, AutoLRSWarning
from lightning_autolrs.exceptions import InvalidArgumentError, InvalidArgumentTypeError, UnsupportedSetupError
from lightning_autolrs.settings import Settings, derive, exploit_warmup_steps, plan_tau

from .helpers import autolrs, make_module_class, memorizer_parts, regression_data, trainer_kwargs, without_probe_times


def fit(pl, tmp_path, cb: AutoLRS, max_steps: int = 120, module_kw: dict | None = None, **trainer_kw: Any):
    pl.seed_everything(0)
    model = make_module_class(pl)(**(module_kw or {}))
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=max_steps, **trainer_kw))
    trainer.fit(model)
    return trainer, model


def test_full_stages_and_step_accounting(pl, tmp_path) -> None:
    cb = AutoLRS(
        min_lr=1e-3, max_lr=0.5, num_trials=4, tau=20, tau_max=40, search_ratio=0.25, seed=0, verbose=False,
        reuse_best_trial=False, anneal_ratio=0,
    )  # fmt: skip
    trainer, model = fit(pl, tmp_path, cb, max_steps=160)
    assert len(cb.lrs) == trainer.global_step == 160
    assert len(cb.history) >= 2
    for h in cb.history[:-1]:
        assert len(h["trials"]) == 4 and h["best_lr"] is not None and h["exploit_steps"] >= h["tau"]
    assert all(1e-3 <= lr <= 0.5 for lr in cb.lrs)
    # the LR the optimizer actually saw at each step is the one recorded
    assert [g[0] for g in model.group_lrs] == pytest.approx(cb.lrs)
    assert cb.phase == "exploit"
    json.dumps(cb.history)
    assert list(tmp_path.iterdir()) == []  # no disk I/O


def test_the_lr_the_optimizer_sees_survives_checkpoints_and_validation_inside_a_search(lpl, tmp_path) -> None:
    """A plan kept from the step before is not applied again (issue #14): the optimizer already holds its LR. A
    checkpoint or a validation run inside a search puts the committed state (the stage start, another LR in its
    param groups) into the optimizer and back; every step still runs at the LR AutoLRS recorded for it."""
    cb = AutoLRS(
        min_lr=1e-3, max_lr=0.5, num_trials=3, tau=40, search_ratio=0.25, seed=0, verbose=False, monitor="train_loss",
        anneal_ratio=0.2,
    )  # fmt: skip
    every = lpl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    lpl.seed_everything(0)
    model = make_module_class(lpl)()
    trainer = lpl.Trainer(
        callbacks=[cb, every],
        **trainer_kwargs(tmp_path, max_steps=200, limit_val_batches=1, val_check_interval=5, enable_checkpointing=True),
    )
    trainer.fit(model)
    assert len(list((tmp_path / "ckpt").iterdir())) > 20 and trainer.global_step == 200
    assert [g[0] for g in model.group_lrs] == cb.lrs  # what the optimizer saw at every step, to the bit
    assert len(set(cb.lrs)) > 10  # (trials, exploit phases, the anneal)


def test_an_lr_written_by_other_code_is_overwritten_at_the_next_step(lpl, tmp_path) -> None:
    """AutoLRS sets its LR at every step, also where a kept plan's LR is already in the optimizer: an LR that other
    code writes into the param groups (here the first 18 steps' `training_step`) lasts only that step."""

    class Meddling(make_module_class(lpl)):
        def training_step(self, batch, batch_idx):
            if self.global_step < 18:
                self.optimizers().param_groups[0]["lr"] = 0.01
            return super().training_step(batch, batch_idx)

    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=2, tau=20, search_ratio=0.25, seed=0, verbose=False)
    lpl.seed_everything(0)
    model = Meddling()
    lpl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=80)).fit(model)
    seen = [g[0] for g in model.group_lrs]
    assert seen[:18] == [0.01] * 18 and seen[18:] == cb.lrs[18:]
    assert len(set(cb.lrs[11:25])) == 1 and cb.lrs[18] != 0.01  # (an exploit phase's kept plan, steps 11-24)


def test_param_group_ratios_are_kept(lpl, tmp_path) -> None:
    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, seed=0, verbose=False)
    _, model = fit(lpl, tmp_path, cb, max_steps=60, module_kw=dict(two_groups=True, lr=0.1))
    for (g0, g1), lr in zip(model.group_lrs, cb.lrs):
        assert g0 == pytest.approx(lr) and g1 == pytest.approx(lr / 10)


def test_the_anneals_steps_set_only_their_lr(lpl, tmp_path, monkeypatch) -> None:
    """A step of a ramp (here the final anneal's decay) is the ramp's first plan at another LR: the callback sets that
    LR in every param group, at the group's ratio, and does nothing else (`_apply_plan`, which reads the plan's
    actions, runs at the anneal's first step only); an LR other code writes in the anneal lasts only its step."""
    applied: list[int] = []
    original = AutoLRS._apply_plan

    def spy(self, plan, pl_module):
        applied.append(pl_module.trainer.global_step)
        return original(self, plan, pl_module)

    monkeypatch.setattr(AutoLRS, "_apply_plan", spy)

    class Meddling(make_module_class(lpl)):
        def training_step(self, batch, batch_idx):
            if self.global_step == 150:
                self.optimizers().param_groups[0]["lr"] = 0.01
            return super().training_step(batch, batch_idx)

    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=2, tau=20, search_ratio=0.25, seed=0, verbose=False)
    lpl.seed_everything(0)
    model = Meddling(two_groups=True, lr=0.1)
    lpl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=160)).fit(model)
    start = cb.history[-1]["anneal_start"]
    assert start == 128 and len(set(cb.lrs[start:])) == 160 - start  # (a new LR at every step of the decay)
    assert [step for step in applied if step >= start] == [start]
    seen = model.group_lrs
    assert [g[0] for g in seen[start:]] == [*cb.lrs[start:150], 0.01, *cb.lrs[151:]]
    assert all(g1 == pytest.approx(lr / 10) for (_, g1), lr in zip(seen[start:], cb.lrs[start:]))


def test_trials_start_from_the_bitwise_stage_snapshot(lpl, tmp_path) -> None:
    seen: dict[int, list[torch.Tensor]] = {}
    cls = make_module_class(lpl)

    class Recorder(lpl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]

    lpl.seed_everything(0)
    cb = AutoLRS(
        min_lr=1e-3, max_lr=0.5, num_trials=4, tau=40, search_ratio=0.25, seed=0, verbose=False, reuse_best_trial=False
    )
    model = cls(optimizer="adamw", lr=0.01)
    trainer = lpl.Trainer(callbacks=[cb, Recorder()], **trainer_kwargs(tmp_path, max_steps=120))
    trainer.fit(model)
    stage = cb.history[0]
    starts = [t["start_step"] for t in stage["trials"]] + [stage["exploit_start"]]
    assert len(starts) == 5 and starts[0] == stage["start_step"]
    for s in starts[1:]:
        assert all(torch.equal(a, b) for a, b in zip(seen[starts[0]], seen[s]))
    assert not all(torch.equal(a, b) for a, b in zip(seen[starts[0]], seen[starts[0] + 1]))


def test_diverging_trials_are_restored_and_the_model_stays_finite(lpl, tmp_path) -> None:
    cb = AutoLRS(min_lr=1e-3, max_lr=1e3, num_trials=5, tau=30, search_ratio=0.2, seed=0, verbose=False)
    _, model = fit(lpl, tmp_path, cb, max_steps=150, module_kw=dict(lr=100.0))  # stage 0 searches 33...300
    trials = [t for h in cb.history for t in h["trials"]]
    assert any(t["diverged"] for t in trials), "an LR of a few hundred must blow up an SGD regression"
    assert all(t["steps"] < 6 for t in trials if t["diverged"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_end_to_end_beats_training_at_min_lr(lpl, tmp_path) -> None:
    steps = 600

    def val_loss(model) -> float:
        x, y = model.val_set.tensors
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(model(x), y))

    cb = AutoLRS(min_lr=1e-3, max_lr=1.0, num_trials=5, seed=0, verbose=False)
    _, tuned = fit(lpl, tmp_path, cb, max_steps=steps)
    # the documented default tau rule: one stage fits in what the final anneal leaves (two would need shorter trials)
    assert cb.history[0]["tau"] == plan_tau(steps - round(0.2 * steps), 5, 0.05, True, 8000) == 400
    baseline_cb = lpl.Callback()
    lpl.seed_everything(0)
    base = make_module_class(lpl)(lr=1e-3)
    lpl.Trainer(callbacks=[baseline_cb], **trainer_kwargs(tmp_path, max_steps=steps)).fit(base)
    assert val_loss(tuned) < 0.5 * val_loss(base)


def test_default_range_follows_the_configured_lr(lpl, tmp_path) -> None:
    cb = AutoLRS(num_trials=3, tau=20, verbose=False, range_test=False)
    fit(lpl, tmp_path, cb, max_steps=60, module_kw=dict(lr=0.02))
    assert (cb.min_lr, cb.max_lr) == pytest.approx((0.0002, 0.2))
    only_max = AutoLRS(max_lr=0.5, num_trials=3, tau=20, verbose=False)
    fit(lpl, tmp_path, only_max, max_steps=60)
    assert only_max.min_lr == pytest.approx(0.0005)


def test_warmup_then_search(lpl, tmp_path) -> None:
    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, warmup_steps=10, warmup_lr=0.05, verbose=False)
    fit(lpl, tmp_path, cb, max_steps=80)
    assert cb.lrs[:10] == pytest.approx([0.005 * (i + 1) for i in range(10)])
    assert cb.history[0]["start_step"] == 10


def test_gradient_accumulation_counts_optimizer_steps(lpl, tmp_path) -> None:
    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, search_ratio=0.1, seed=0, verbose=False)
    trainer, _ = fit(lpl, tmp_path, cb, max_steps=60, accumulate_grad_batches=2)
    assert len(cb.lrs) == trainer.global_step == 60
    assert all(t["steps"] == 2 for t in cb.history[0]["trials"])


def test_logs_lr_and_trials(lpl, tmp_path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, seed=0, verbose=False)
    logger = CSVLogger(tmp_path, name="run")
    fit(lpl, tmp_path, cb, max_steps=60, logger=logger, log_every_n_steps=1)
    text = (tmp_path / "run" / "version_0" / "metrics.csv").read_text()
    for key in ("autolrs/lr", "autolrs/trial_lr", "autolrs/trial_predicted_loss", "autolrs/stage_best_lr"):
        assert key in text


def test_lr_reaches_the_loggers_every_log_every_n_steps_without_self_log(lpl, tmp_path, monkeypatch) -> None:
    """Like LearningRateMonitor: `autolrs/lr` goes to the logger on the steps the Trainer logs, with the LR that step
    trained at, and never through `LightningModule.log` (whose per-step bookkeeping was 15 % of a small run)."""
    from lightning.pytorch.loggers import CSVLogger

    logged_names: list[str] = []
    real_log = lpl.LightningModule.log
    monkeypatch.setattr(
        lpl.LightningModule,
        "log",
        lambda self, name, *a, **k: logged_names.append(name) or real_log(self, name, *a, **k),
    )
    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, seed=0, verbose=False)
    logger = CSVLogger(tmp_path, name="run")
    fit(lpl, tmp_path, cb, max_steps=60, logger=logger, log_every_n_steps=5)
    assert "autolrs/lr" not in logged_names
    rows = [r for r in csv.DictReader((tmp_path / "run" / "version_0" / "metrics.csv").open()) if r.get("autolrs/lr")]
    assert [int(r["step"]) for r in rows] == list(range(4, 60, 5))  # the Trainer's own logging steps
    assert [float(r["autolrs/lr"]) for r in rows] == pytest.approx([cb.lrs[int(r["step"])] for r in rows])


def test_every_step_of_a_stopping_trainer_sends_its_lr_to_the_loggers(lpl, tmp_path) -> None:
    """`should_stop` set while `min_steps` keeps the fit going (an EarlyStopping before `min_steps`): like
    LearningRateMonitor, every step from then on sends its LR, and the logging steps before it are the Trainer's own
    (the per-step hook counts down to the next logging step, and a stopping Trainer overrides the countdown)."""
    from lightning.pytorch.loggers import CSVLogger

    class Stop(lpl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 8:
                trainer.should_stop = True

    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, seed=0, verbose=False)
    lpl.seed_everything(0)
    kw = trainer_kwargs(tmp_path, max_steps=60, min_steps=20, log_every_n_steps=5, logger=CSVLogger(tmp_path, "run"))
    trainer = lpl.Trainer(callbacks=[cb, Stop()], **kw)
    trainer.fit(make_module_class(lpl)())
    rows = [r for r in csv.DictReader((tmp_path / "run" / "version_0" / "metrics.csv").open()) if r.get("autolrs/lr")]
    assert trainer.global_step == 20
    assert [int(r["step"]) for r in rows] == [4, *range(8, 20)]
    assert [float(r["autolrs/lr"]) for r in rows] == pytest.approx([cb.lrs[int(r["step"])] for r in rows])


@pytest.mark.parametrize("validation", [False, True])
def test_losses_reach_the_controller_one_step_late_and_change_nothing_else(
    lpl, tmp_path, monkeypatch, validation: bool
) -> None:
    """No host read of the loss in the step that produced it, but at the last step of a trial (which ends the trial)
    and of a phase (the warmup's, an exploit phase's before a stage or the final anneal begins), and at a step that
    probes the validation data (which reads the probe): a step's loss on an accelerator is copied off the device
    without waiting and read at the end of the next step (here forced for CPU losses, which are read at once). The
    schedule is the same as with every loss read at once (only a divergence is acted on one step later)."""
    from lightning_autolrs._edge import LateLoss
    from lightning_autolrs.controller import StageController

    monkeypatch.setattr(AutoLRS, "_reads_late", staticmethod(lambda trainer: True))

    reads: list[tuple[int, int]] = []  # (global step when the loss was read, the step that produced it)
    at_once: list[int] = []  # the steps whose loss was read in the step itself
    probed: list[int] = []  # ... of them, those that probed the validation data (in a trial, or at a stage start)
    real_init, real_read, real_end = LateLoss.__init__, LateLoss.read, StageController.end_step

    def init(self, trainer, loss, *args) -> None:
        real_init(self, trainer, loss, *args)
        self.trainer, self.step = trainer, trainer.global_step - 1  # the step that just ended

    def read(self):
        reads.append((self.trainer.global_step, self.step))
        return real_read(self)

    def end_step(self, loss, **kw):
        if not kw.get("late"):
            at_once.append(self.step)
            probed.extend([self.step] if self._plan.probe or self._plan.probe_before else [])
        return real_end(self, loss, **kw)

    monkeypatch.setattr(LateLoss, "__init__", init)
    monkeypatch.setattr(LateLoss, "read", read)
    monkeypatch.setattr(StageController, "end_step", end_step)
    kw = dict(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, seed=0, verbose=False, warmup_steps=5, warmup_lr=0.01)
    steps = 200 if validation else 120
    trainer_kw = dict(limit_val_batches=1.0) if validation else {}
    if validation:  # trials long enough to have steps between their probes
        kw.update(tau=60, tau_max=60, search_ratio=0.6)
    late = AutoLRS(**kw)
    fit(lpl, tmp_path, late, max_steps=steps, **trainer_kw)
    # each read once the next step has ended, never in its own step; the last step's at the end of the run
    assert [r for r in reads if r[0] != r[1] + 2] == [(steps, steps - 1)]
    assert all(v is not None for v in late.controller.losses)  # and every one of them reached the controller
    assert len(reads) + len(at_once) == steps
    trials = [t for h in late.history for t in h["trials"]]
    trial_ends = {t["start_step"] + t["steps"] - 1 for t in trials}
    phase_ends = {h["start_step"] - 1 for h in late.history} | {late.history[-1]["anneal_start"] - 1}
    assert trial_ends | phase_ends <= set(at_once) <= trial_ends | phase_ends | set(probed)
    assert bool(probed) is validation and late.history[0]["signal"] == ("val_loss" if validation else "train_loss")
    trial_steps = {t["start_step"] + i for t in trials for i in range(t["steps"])}
    late_trial_steps = trial_steps - set(at_once)  # (without probes: all but each trial's last)
    if validation:  # (trials of 36 steps, probed every 7th)
        assert len(late_trial_steps) >= 0.8 * len(trial_steps) > 80
    else:  # (trials of 1, 2 and 4 steps)
        assert len(late_trial_steps) == len(trial_steps) - len(trials) == 12

    monkeypatch.setattr(StageController, "loss_can_wait", property(lambda self: False))
    at_once.clear()
    now = AutoLRS(**kw)
    fit(lpl, tmp_path, now, max_steps=steps, **trainer_kw)
    assert len(at_once) == steps
    assert late.lrs == now.lrs and late.controller.losses == now.controller.losses

    assert without_probe_times(late.history) == without_probe_times(now.history)


def test_cpu_losses_are_read_in_their_own_step(lpl, tmp_path, monkeypatch) -> None:
    """A CPU loss is read at once (nothing to wait for): no loss waits a step, and the controller holds every step's
    loss as soon as the step ends."""
    from lightning_autolrs._edge import LateLoss

    made: list[int] = []
    real_init = LateLoss.__init__

    def init(self, *args, **kwargs) -> None:
        made.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(LateLoss, "__init__", init)
    seen: list[tuple[int, int]] = []  # (steps the controller has recorded, of them with a loss) after each step

    class Watch(lpl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            c = cb.controller
            seen.append((len(c.losses), sum(v is not None for v in c.losses)))

    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, seed=0, verbose=False, warmup_steps=5)
    trainer = lpl.Trainer(callbacks=[cb, Watch()], **trainer_kwargs(tmp_path, max_steps=120))
    trainer.fit(make_module_class(lpl)())
    assert made == []
    assert seen == [(i, i) for i in range(1, 121)]


def test_verbose_prints_one_line_per_trial_and_stage(lpl, tmp_path, caplog) -> None:
    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, seed=0)
    with caplog.at_level("INFO"):
        fit(lpl, tmp_path, cb, max_steps=60)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("AutoLRS stage")]
    trials = sum(len(h["trials"]) for h in cb.history)
    searched = sum(1 for h in cb.history if h["trials"])
    assert len(lines) == trials + searched


# ---------------------------------------------------------------- unsupported set-ups
def test_manual_optimization_is_rejected(lpl, tmp_path) -> None:
    cls = make_module_class(lpl)

    class Manual(cls):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = super().training_step(batch, batch_idx)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    trainer = lpl.Trainer(callbacks=[AutoLRS()], **trainer_kwargs(tmp_path, max_steps=10))
    with pytest.raises(UnsupportedSetupError, match="automatic_optimization"):
        trainer.fit(Manual())


def test_lr_scheduler_is_rejected(lpl, tmp_path) -> None:
    cls = make_module_class(lpl)

    class WithScheduler(cls):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 10)]

    trainer = lpl.Trainer(callbacks=[AutoLRS()], **trainer_kwargs(tmp_path, max_steps=10))
    with pytest.raises(UnsupportedSetupError, match="LR scheduler"):
        trainer.fit(WithScheduler())


@pytest.mark.parametrize("name", ["StochasticWeightAveraging", "BackboneFinetuning"])
def test_callbacks_that_add_an_lr_scheduler_or_param_groups_are_rejected_at_fit_start(lpl, tmp_path, name) -> None:
    """SWA adds its own LR scheduler mid-run and averages trial weights; a finetuning callback adds param groups the
    snapshot cannot restore (it ended the fit with an AutoLRSError mid-run, its restore on the exception failing
    too)."""
    other = getattr(lpl.callbacks, name)(**({"swa_lrs": 0.01} if name == "StochasticWeightAveraging" else {}))
    trainer = lpl.Trainer(callbacks=[AutoLRS(verbose=False), other], **trainer_kwargs(tmp_path, max_steps=10))
    model = make_module_class(lpl)()
    model.backbone = model.net[0]  # (what BackboneFinetuning unfreezes)
    with pytest.raises(UnsupportedSetupError, match=name if name != "BackboneFinetuning" else "param groups"):
        trainer.fit(model)
    assert trainer.global_step == 0


def test_multiple_optimizers_are_rejected(lpl, tmp_path) -> None:
    cls = make_module_class(lpl)

    class TwoOptimizers(cls):
        def configure_optimizers(self):
            return [
                torch.optim.SGD(self.net[0].parameters(), lr=0.1),
                torch.optim.SGD(self.net[2].parameters(), lr=0.1),
            ]

    # Lightning itself refuses several optimizers under automatic optimization, at fit start, naming the fix ...
    trainer = lpl.Trainer(callbacks=[AutoLRS()], **trainer_kwargs(tmp_path, max_steps=10))
    with pytest.raises(RuntimeError, match="multiple optimizers"):
        trainer.fit(TwoOptimizers())

    # ... and with manual optimization AutoLRS refuses before any step is taken.
    class ManualTwo(TwoOptimizers):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    model = ManualTwo()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = lpl.Trainer(callbacks=[AutoLRS()], **trainer_kwargs(tmp_path, max_steps=10))
    with pytest.raises(UnsupportedSetupError, match="automatic_optimization"):
        trainer.fit(model)
    assert trainer.global_step == 0 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.filterwarnings("ignore:.*returned `None`")
def test_training_step_without_loss_is_rejected(lpl, tmp_path) -> None:
    cls = make_module_class(lpl)

    class NoLoss(cls):
        def training_step(self, batch, batch_idx):
            super().training_step(batch, batch_idx)
            return None

    trainer = lpl.Trainer(callbacks=[AutoLRS(num_trials=3, tau=20)], **trainer_kwargs(tmp_path, max_steps=60))
    with pytest.raises(UnsupportedSetupError, match="returned no loss"):
        trainer.fit(NoLoss())


def test_budget_too_small_for_tau_is_rejected(lpl, tmp_path) -> None:
    trainer = lpl.Trainer(callbacks=[AutoLRS(tau=1000)], **trainer_kwargs(tmp_path, max_steps=50))
    with pytest.raises(InvalidArgumentError, match="`tau`=1000"):
        trainer.fit(make_module_class(lpl)())


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(min_lr=0.0), InvalidArgumentError, r"`min_lr` must be > 0, got 0.0"),
        (dict(min_lr=-1e-3), InvalidArgumentError, "`min_lr`"),
        (dict(min_lr=0.1, max_lr=0.01), InvalidArgumentError, "`max_lr` must be greater than `min_lr`"),
        (dict(max_lr=math.nan), InvalidArgumentError, "`max_lr` must be finite"),
        (dict(min_lr=math.inf), InvalidArgumentError, "`min_lr` must be finite"),
        (dict(min_lr="0.1"), InvalidArgumentTypeError, "`min_lr` must be a number"),
        (dict(num_trials=1), InvalidArgumentError, "`num_trials` must be >= 2"),
        (dict(search_ratio=0.0), InvalidArgumentError, "`search_ratio`"),
        (dict(search_ratio=1.5), InvalidArgumentError, "`search_ratio`"),
        (dict(tau=0), InvalidArgumentError, "`tau` must be >= 1"),
        (dict(tau=100, tau_max=50), InvalidArgumentError, "`tau_max` must be >= `tau`"),
        (dict(warmup_steps=-5), InvalidArgumentError, "`warmup_steps` must be >= 0"),
        (dict(warmup_lr=0.0), InvalidArgumentError, "`warmup_lr`"),
        (dict(beta=0.0), InvalidArgumentError, "`beta`"),
        (dict(divergence_factor=0.5), InvalidArgumentError, "`divergence_factor`"),
        (dict(snapshot_device=3), InvalidArgumentError, "`snapshot_device`"),
        (dict(range_test="yes"), InvalidArgumentError, "`range_test`"),
        (dict(range_test_steps=1), InvalidArgumentError, "`range_test_steps`"),
    ],
)
def test_invalid_constructor_arguments(kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        AutoLRS(**kwargs)


def test_is_a_callback_of_both_flavours() -> None:
    import lightning.pytorch
    import pytorch_lightning

    cb = AutoLRS()
    assert isinstance(cb, lightning.pytorch.Callback) and isinstance(cb, pytorch_lightning.Callback)


def test_progress_bar_shows_lr_and_search_position(lpl, tmp_path) -> None:
    seen: list[str] = []

    class Peek(lpl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            metrics = trainer.progress_bar_callback.get_metrics(trainer, pl_module)
            seen.append(metrics["autolrs"])
            assert float(metrics["lr"]) == pytest.approx(cb.lrs[-1], rel=1e-2)

    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, search_ratio=0.25, seed=0, verbose=False)
    trainer = lpl.Trainer(callbacks=[cb, Peek()], **trainer_kwargs(tmp_path, max_steps=40, enable_progress_bar=True))
    trainer.fit(make_module_class(lpl)())
    assert seen[0] == "stage 0 · trial 1/3" and "stage 0 · trial 3/3" in seen and "stage 0 · exploit" in seen
    assert "autolrs" not in trainer.progress_bar_callback.get_metrics(trainer, trainer.lightning_module)  # unhooked


def test_a_budget_too_small_to_search_stays_in_the_range_you_gave_and_says_what_it_trains(lpl, tmp_path) -> None:
    cb = AutoLRS(min_lr=1e-3, max_lr=0.01, warmup_steps=40, verbose=False)
    with pytest.warns(AutoLRSWarning, match="too small") as rec:
        _, model = fit(lpl, tmp_path, cb, max_steps=150, module_kw=dict(lr=0.05))
    (message,) = [str(w.message) for w in rec if "too small" in str(w.message)]
    assert "a 40-step linear warmup (`warmup_steps`) to lr=0.01, then lr=0.01 (the configured lr=0.05 clamp" in message
    assert "held, then decayed along 1 - sqrt(t) to 0.001 over the last 15 steps (the final anneal)" in message
    assert max(cb.lrs) == pytest.approx(0.01) and cb.lrs[39:120] == pytest.approx([0.01] * 81)  # not the module's 0.05
    assert cb.lrs[-1] == pytest.approx(1e-3 + (0.01 - 1e-3) * (1 - math.sqrt(14 / 15)))  # (the decay's last step)
    assert (cb.min_lr, cb.max_lr) == (1e-3, 0.01)
    assert [g[0] for g in model.group_lrs] == pytest.approx(cb.lrs)


def test_a_warmup_as_long_as_the_budget_is_refused_before_training(lpl, tmp_path) -> None:
    model = make_module_class(lpl)()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = lpl.Trainer(
        callbacks=[AutoLRS(warmup_steps=200, verbose=False)], **trainer_kwargs(tmp_path, max_steps=150)
    )
    with pytest.raises(InvalidArgumentError, match=r"`warmup_steps`=200 leaves no step .* budget is 150"):
        trainer.fit(model)
    assert trainer.global_step == 0 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_save_files_writes_the_schedule_into_the_log_dir_only_when_asked(lpl, tmp_path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    for save in (True, False):
        cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, seed=0, verbose=False, save_files=save)
        logger = CSVLogger(tmp_path, name=f"save{save}")
        fit(lpl, tmp_path, cb, max_steps=60, logger=logger)
        run_dir = tmp_path / f"save{save}" / "version_0"
        assert (run_dir / "autolrs_schedule.json").exists() is save
        assert (run_dir / "autolrs_schedule.png").exists() is save


def test_a_run_stopped_inside_its_warmup_still_writes_both_files(lpl, tmp_path) -> None:
    """`should_stop` (an EarlyStopping, `max_time`) inside the warmup: the fit ends normally and saves the schedule
    of the steps that ran, picture included."""
    from lightning.pytorch.loggers import CSVLogger

    class Stop(lpl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 10:
                trainer.should_stop = True

    cb = autolrs(warmup_steps=30)
    trainer = lpl.Trainer(
        callbacks=[cb, Stop()], **trainer_kwargs(tmp_path, max_steps=200, logger=CSVLogger(tmp_path, name="stop"))
    )
    trainer.fit(make_module_class(lpl)())
    run_dir = tmp_path / "stop" / "version_0"
    assert trainer.global_step == 10 and cb.phase == "warmup" and len(cb.lrs) == 10
    assert (run_dir / "autolrs_schedule.json").exists() and (run_dir / "autolrs_schedule.png").exists()


def test_sharded_strategies_are_refused_by_name() -> None:
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy

    from lightning_autolrs.callback import check_strategy

    with pytest.raises(UnsupportedSetupError, match="`FSDPStrategy` strategy"):
        check_strategy(FSDPStrategy())

    class MyFSDP(FSDPStrategy):
        pass

    with pytest.raises(UnsupportedSetupError, match="strategy='ddp'"):
        check_strategy(MyFSDP())
    check_strategy(DDPStrategy())  # allowed
    check_strategy(SingleDeviceStrategy("cpu"))


# ---------------------------------------------------------------------------------------------- range test
def test_range_test_finds_the_range_and_restores_the_model(lpl, tmp_path) -> None:
    seen: dict[int, list[torch.Tensor]] = {}

    class Recorder(lpl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]

    lpl.seed_everything(0)
    cb = AutoLRS(num_trials=3, search_ratio=0.1, seed=0, verbose=False)  # no min_lr/max_lr: the range test runs
    model = make_module_class(lpl)(lr=0.02)
    trainer = lpl.Trainer(callbacks=[cb, Recorder()], **trainer_kwargs(tmp_path, max_steps=400))
    trainer.fit(model)
    rt = cb.range_test_result
    assert rt is not None and rt["start_step"] == 0 and rt["steps"] <= 20  # 5 % of 400, at least 20
    assert rt["lrs"][0] == pytest.approx(0.02 * 1e-4) and rt["lrs"][-1] <= 0.02 * 1e2
    assert (cb.min_lr, cb.max_lr) == (rt["min_lr"], rt["max_lr"]) and cb.max_lr == pytest.approx(1000 * cb.min_lr)
    assert cb.max_lr in rt["lrs"]
    # the sweep is undone: the first stage starts from the initial weights (and optimizer state)
    first = cb.history[0]["start_step"]
    assert first == rt["steps"] and all(torch.equal(a, b) for a, b in zip(seen[0], seen[first]))
    assert len(cb.lrs) == trainer.global_step == 400
    assert all(cb.min_lr <= lr <= cb.max_lr for lr in cb.lrs[first:])
    assert cb.schedule.settings["range_test"]["max_lr"] == cb.max_lr
    assert cb.schedule.exploit_lrs()[0] == cb.history[0]["best_lr"]  # the sweep is not part of the replayed schedule
    json.dumps(cb.schedule.to_dict())


def test_range_test_stops_when_the_loss_blows_up(lpl, tmp_path) -> None:
    cb = AutoLRS(num_trials=3, search_ratio=0.1, seed=0, verbose=False, range_test_steps=60)
    _, model = fit(lpl, tmp_path, cb, max_steps=400, module_kw=dict(lr=1.0))  # sweeps up to lr = 100
    rt = cb.range_test_result
    assert rt["stopped_early"] and rt["steps"] < 60 and cb.max_lr < 1.0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_range_test_counts_in_the_budget_check(lpl, tmp_path) -> None:
    trainer = lpl.Trainer(
        callbacks=[AutoLRS(num_trials=3, tau=100, search_ratio=0.1)], **trainer_kwargs(tmp_path, max_steps=50)
    )
    with pytest.raises(InvalidArgumentError, match="range-test steps"):
        trainer.fit(make_module_class(lpl)())
    assert trainer.global_step == 0
    # without the 20 range-test steps the same search fits: 3 trials + 1 of tau' = 10 steps
    trainer = lpl.Trainer(
        callbacks=[AutoLRS(num_trials=3, tau=100, search_ratio=0.1, range_test=False, verbose=False)],
        **trainer_kwargs(tmp_path, max_steps=50),
    )
    trainer.fit(make_module_class(lpl)())
    assert trainer.global_step == 50


def test_a_warmup_after_the_range_test_ramps_to_the_configured_lr_bounded_by_the_found_range(lpl, tmp_path) -> None:
    """The range test runs before the warmup; a default ``warmup_lr`` (the configured LR) far above where the sweep saw
    training blow up ramps to the range's top instead (it used to ramp to the configured 100, turn the weights NaN and
    end in a NonFiniteLossError that blamed the data)."""
    cb = AutoLRS(seed=0, verbose=False, warmup_steps=20)
    _, model = fit(lpl, tmp_path, cb, max_steps=700, module_kw=dict(lr=100.0))
    start = cb.range_test_result["steps"]
    warm = cb.lrs[start : start + 20]
    assert cb.max_lr < 1.0  # the sweep found where training blows up, far below the configured LR
    assert warm == pytest.approx([cb.max_lr * (i + 1) / 20 for i in range(20)])
    assert cb.warmup_lr == warm[-1]  # what the warmup ramped to, after the stages too
    assert cb.history[0]["trials"][0]["lr"] == pytest.approx(cb.max_lr)  # stage 0's anchor: the same bound
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_one_stage_budget_warms_adamw_up_before_the_search_and_exploits_from_the_winning_trial(lpl, tmp_path) -> None:
    """1000 steps fit one stage. With AdamW its search judges the model after a warmup to the configured LR, only
    upwards from it (the stage the final anneal follows), and the exploit phase continues from the winning trial at its
    LR (no ramp of its own); with SGD, no warmup at all."""
    cb = AutoLRS(seed=0, verbose=False)
    fit(lpl, tmp_path / "adamw", cb, max_steps=1000, module_kw=dict(lr=0.01, optimizer="adamw"))
    (stage,) = cb.history
    start, first = cb.range_test_result["steps"], stage["start_step"]
    beta2 = 0.999  # (AdamW's default)
    warm = exploit_warmup_steps(beta2, derive(Settings(), 0.01, 1000).tau)  # the exploit warmup's length
    assert first - start == warm == 163
    assert cb.lrs[start:first] == pytest.approx([0.01 * (i + 1) / warm for i in range(warm)])
    assert stage["trials"][0]["lr"] == 0.01 and "exploit_warmup" not in stage
    assert stage["lr_range"][0] == 0.01 and all(t["lr"] >= 0.01 for t in stage["trials"])  # only upwards: last stage
    assert stage["reused_trial"] is not None  # the exploit phase continued from the winning trial's end
    assert cb.lrs[stage["exploit_start"]] == stage["best_lr"]  # at the chosen LR from its first step
    assert cb.schedule.warmup_steps == warm and cb.schedule.exploit_lrs()[:warm] == cb.lrs[start:first]
    sgd = AutoLRS(seed=0, verbose=False)
    fit(lpl, tmp_path / "sgd", sgd, max_steps=1000, module_kw=dict(lr=0.01))
    assert sgd.history[0]["start_step"] == sgd.range_test_result["steps"] and sgd.schedule.warmup_steps == 0


def test_a_range_test_that_ends_far_below_the_configured_lr_warns(lpl, tmp_path) -> None:
    def range_warnings(cb: AutoLRS, root, lr: float) -> int:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            fit(lpl, root, cb, max_steps=700, module_kw=dict(lr=lr))
        return sum("range test: max_lr" in str(w.message) for w in seen)

    cb = AutoLRS(seed=0, verbose=False)
    with pytest.warns(AutoLRSWarning, match=r"max_lr=\S+ is \d+x below the optimizer's configured lr=100") as rec:
        fit(lpl, tmp_path, cb, max_steps=700, module_kw=dict(lr=100.0))
    assert sum("range test: max_lr" in str(w.message) for w in rec) == 1 and cb.max_lr < 1.0
    quiet = AutoLRS(seed=0, verbose=False)  # the module's own 0.05 lies within the range found: no warning
    assert range_warnings(quiet, tmp_path / "b", 0.05) == 0
    given = AutoLRS(seed=0, verbose=False, max_lr=1e-3, range_test=True)  # a max_lr you give wins: no advice to give
    assert range_warnings(given, tmp_path / "c", 0.5) == 0 and given.max_lr == 1e-3


def test_a_given_min_lr_above_the_range_found_warns_and_keeps_the_search_near_it(lpl, tmp_path) -> None:
    """``range_test=True`` with a ``min_lr`` above where the sweep found the loss lowest: the search range used to be
    ``min_lr ... min_lr x 1000`` without a word. It warns once, naming both and the fix, searches up to the highest LR
    the sweep took without blowing up (at least 10x ``min_lr``), and the guards keep the model finite."""
    cb = AutoLRS(seed=0, verbose=False, min_lr=2.0, range_test=True)
    with pytest.warns(
        AutoLRSWarning, match=r"given min_lr=2 is at or above the max_lr=\S+ the range test derived"
    ) as rec:
        _, model = fit(lpl, tmp_path, cb, max_steps=700, module_kw=dict(lr=0.05))
    assert sum("given min_lr" in str(w.message) for w in rec) == 1
    assert "Lower `min_lr`" in next(str(w.message) for w in rec if "given min_lr" in str(w.message))
    rt = cb.range_test_result
    assert cb.min_lr == 2.0 and 20.0 <= cb.max_lr <= max(20.0, max(rt["lrs"]))  # (was 2000)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    plain = AutoLRS(seed=0, verbose=False, min_lr=1e-5, range_test=True)  # below the range found: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutoLRSWarning)
        fit(lpl, tmp_path / "b", plain, max_steps=700, module_kw=dict(lr=0.05))
    assert plain.min_lr == 1e-5 and plain.max_lr < 2.0


def test_small_noisy_batches_neither_stop_the_range_test_nor_trip_the_first_stage(lpl, tmp_path) -> None:
    """Batches of 2: one batch's loss on the untrained model lies many times above another's. The range test used to
    stop at the first loss 4x above the lowest (after 6 of its 50 steps here, with max_lr=1e-6, 10 000x below the
    configured LR: validation MSE 0.85 after 1000 steps, warned about but trained nothing); it stops on a running
    median now, where training blows up, and the run trains. (One stage with AdamW: the search follows a warmup and
    searches upwards from the configured LR. At stop 46, searching ÷/× 3, it exploited 0.01 and the slow-collapse
    guard fell back once, at step 681, reading windows of 20 such losses back at the stage-start level as a collapse;
    at stops 47-50 it exploited 0.0159 and no window tripped it; since stop 51's anchored design it exploits 0.0152
    and the guard falls back once again, at step 677, to 0.0132, still above the configured LR: README, Caveats.)"""
    cb = AutoLRS(seed=0, verbose=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "AutoLRS range test", AutoLRSWarning)  # no range far below the configured LR
        _, model = fit(lpl, tmp_path, cb, max_steps=1000, module_kw=dict(lr=0.01, optimizer="adamw", batch_size=2))
    rt = cb.range_test_result
    assert rt["steps"] > 40 and cb.max_lr > 0.01  # it swept up to where training blows up, above the configured LR
    (stage,) = cb.history
    assert not any(t["diverged"] for t in stage["trials"])  # no trial taken for diverged by batch noise
    assert stage["lr_range"][0] == 0.01 and stage["best_lr"] > 0.01
    assert len(stage["fallbacks"]) <= 1 and all(f["new_lr"] > 0.01 for f in stage["fallbacks"])
    x, y = model.val_set.tensors
    with torch.no_grad():
        assert torch.nn.functional.mse_loss(model(x), y).item() < 0.15  # (the targets' variance is about 0.5)


def test_a_budget_too_small_to_search_warns_once_and_decays_from_the_configured_lr(lpl, tmp_path) -> None:
    cb = AutoLRS(verbose=False)
    with pytest.warns(UserWarning, match=r"budget of 150 optimizer steps is too small .* at least \d+ steps") as rec:
        _, model = fit(lpl, tmp_path, cb, max_steps=150, module_kw=dict(lr=0.05))
    assert sum("too small" in str(w.message) for w in rec) == 1
    assert cb.history == [] and cb.range_test_result is None  # no search, no range test
    # instead of 1-step trials: the configured LR from the first step, held, then the final anneal's decay along
    # 1 - sqrt(t) over half its usual length (the last 10 % of the budget)
    (message,) = [str(w.message) for w in rec if "too small" in str(w.message)]
    assert (
        "the configured lr=0.05 from the first step, held, then decayed along 1 - sqrt(t) to 5e-05 over the last 15"
        in (message)
    )
    decay = round(0.1 * 150)
    expected = [0.05] * (150 - decay)
    expected += [5e-5 + (0.05 - 5e-5) * (1 - math.sqrt(i / decay)) for i in range(decay)]
    assert cb.lrs == pytest.approx(expected)
    assert [g[0] for g in model.group_lrs] == pytest.approx(cb.lrs)


def test_defaults_search_with_validation_probes_and_end_in_an_anneal(lpl, tmp_path) -> None:
    cb = AutoLRS(seed=0, verbose=False)
    kw = dict(limit_val_batches=1.0, check_val_every_n_epoch=1000)
    fit(lpl, tmp_path, cb, max_steps=800, module_kw=dict(lr=0.05), **kw)
    first = cb.history[0]
    assert first["signal"] == "val_loss" and first["trials"][0]["lr"] == pytest.approx(0.05)  # the anchor
    assert all(t["steps"] >= 20 for h in cb.history for t in h["trials"] if not t["diverged"])
    last = cb.history[-1]
    assert last["anneal_start"] == 800 - 160 and cb.lrs[-1] < 0.01 * last["anneal_lr"]
    searched = sum(h["search_steps"] for h in cb.history) + cb.range_test_steps
    assert searched <= 0.30 * 800  # search costs at most 30 % of the steps at the defaults


def without_validation_step(pl):
    class NoValidationStep(make_module_class(pl)):
        validation_step = pl.LightningModule.validation_step  # as if the user never wrote one

    return NoValidationStep()


@pytest.mark.filterwarnings("ignore:.*validation_step")
def test_val_loss_without_validation_step_fails_at_fit_start_naming_it(lpl, tmp_path) -> None:
    model = without_validation_step(lpl)
    before = [p.detach().clone() for p in model.parameters()]
    cb = AutoLRS(monitor="val_loss", verbose=False)
    trainer = lpl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=400, limit_val_batches=1.0))
    with pytest.raises(UnsupportedSetupError, match=r"does not implement `validation_step`.*`val_loss_fn="):
        trainer.fit(model)
    assert trainer.global_step == 0 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.filterwarnings("ignore:.*validation_step")
def test_auto_monitor_without_validation_step_judges_on_the_training_loss(lpl, tmp_path) -> None:
    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, search_ratio=0.25, seed=0, verbose=False)
    trainer = lpl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=60, limit_val_batches=1.0))
    trainer.fit(without_validation_step(lpl))
    assert cb.history and all(h["signal"] == "train_loss" for h in cb.history)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_snapshot_device_is_named_at_fit_start(lpl, tmp_path) -> None:
    trainer = lpl.Trainer(callbacks=[AutoLRS(snapshot_device="cuda")], **trainer_kwargs(tmp_path, max_steps=60))
    with pytest.raises(UnsupportedSetupError, match=r"`snapshot_device='cuda'` is not available"):
        trainer.fit(make_module_class(lpl)())
    assert trainer.global_step == 0


@pytest.mark.parametrize("fast_dev_run", [True, 3])
def test_fast_dev_run_steps_aside_with_one_info_line_and_leaves_the_lr_alone(lpl, tmp_path, caplog, fast_dev_run):
    cb = AutoLRS(tau=1000)  # even a tau no budget of a smoke test could fit
    with caplog.at_level("INFO"), warnings.catch_warnings():
        warnings.simplefilter("error", AutoLRSWarning)  # no "budget too small" warning (nor error) either
        trainer, model = fit(lpl, tmp_path, cb, max_steps=500, module_kw=dict(lr=0.05), fast_dev_run=fast_dev_run)
    steps = 1 if fast_dev_run is True else fast_dev_run
    assert trainer.global_step == steps
    assert [g[0] for g in model.group_lrs] == [0.05] * steps  # the configured LR, untouched
    lines = [r.getMessage() for r in caplog.records if "AutoLRS" in r.getMessage()]
    assert lines == ["AutoLRS: `fast_dev_run` is on, so AutoLRS steps aside: no search, and the optimizer keeps its "
                     "configured lr=0.05."]  # fmt: skip
    assert cb.lrs == [] and cb.history == [] and cb.state_dict() == {}


@pytest.mark.parametrize("monitor_first", [True, False], ids=["monitor_listed_first", "autolrs_listed_first"])
def test_learning_rate_monitor_logs_the_lr_of_the_step_being_taken(lpl, tmp_path, monitor_first) -> None:
    import csv

    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, search_ratio=0.25, seed=0, verbose=False)
    monitor = lpl.callbacks.LearningRateMonitor(logging_interval="step")
    callbacks = [monitor, cb] if monitor_first else [cb, monitor]
    logger = lpl.loggers.CSVLogger(tmp_path, name="lrm")
    kw = trainer_kwargs(tmp_path, max_steps=80, logger=logger, log_every_n_steps=1)
    lpl.seed_everything(0)
    trainer = lpl.Trainer(callbacks=callbacks, **kw)
    trainer.fit(make_module_class(lpl)())
    with open(logger.log_dir + "/metrics.csv") as f:
        logged = {int(r["step"]): float(r["lr-SGD"]) for r in csv.DictReader(f) if r.get("lr-SGD")}
    assert sorted(logged) == list(range(80))
    assert len(set(cb.lrs)) > 5  # the LR changes often (trials, stages): each change is a chance to log the old one
    assert [logged[i] for i in range(80)] == pytest.approx(cb.lrs, rel=1e-12)
    assert trainer.callbacks.index(cb) == 0


def test_validation_inside_a_search_scores_the_committed_weights(lpl, tmp_path) -> None:
    """Validation every 4 steps, with EarlyStopping and ModelCheckpoint(monitor="val_loss") in the same Trainer: inside
    stage 0's search (trials of 5 steps from step 0) Lightning validates the stage start at step 4, trial 0's end at
    step 8 and the kept one of trials 0 and 1 at step 12, never the trial in flight; the weights are swapped in place
    and back, so training goes on bitwise as without validation."""

    def params(module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in module.parameters()]

    def same(a, b) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    class Recorder(lpl.Callback):
        def __init__(self) -> None:
            self.after: dict[int, list[torch.Tensor]] = {}
            self.validated: dict[int, list[torch.Tensor]] = {}
            self.logged: dict[int, float] = {}

        def on_train_start(self, trainer, pl_module) -> None:
            self.after[0] = params(pl_module)
            self.tensors = [(p, p.data_ptr()) for p in pl_module.parameters()]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.after[trainer.global_step] = params(pl_module)

        def on_validation_start(self, trainer, pl_module) -> None:  # (after AutoLRS's, which goes first)
            self.validated[trainer.global_step] = params(pl_module)
            assert [(p, p.data_ptr()) for p in pl_module.parameters()] == self.tensors  # in place

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if trainer.global_step == 8:  # a checkpoint written during validation: committed, and validation goes on
                trainer.save_checkpoint(trainer.default_root_dir + "/during_validation.ckpt")
                assert same(pl_module.parameters(), self.validated[8])

        def on_validation_end(self, trainer, pl_module) -> None:
            self.logged[trainer.global_step] = float(trainer.callback_metrics["val_loss"])
            assert same(pl_module.parameters(), self.after[trainer.global_step])  # swapped back

    def run(root, validate: bool):
        cb, rec = autolrs(monitor="train_loss"), Recorder()
        callbacks = [cb, rec]
        kw = trainer_kwargs(root, max_steps=40)
        if validate:
            early = lpl.callbacks.EarlyStopping(monitor="val_loss", patience=1000)
            best = lpl.callbacks.ModelCheckpoint(dirpath=root, filename="{step}", monitor="val_loss", save_top_k=1)
            callbacks += [early, best]
            kw.update(val_check_interval=4, limit_val_batches=1.0, enable_checkpointing=True)
        lpl.seed_everything(0)
        model = make_module_class(lpl)()
        lpl.Trainer(callbacks=callbacks, **kw).fit(model)
        return cb, rec, model, callbacks[2:]

    cb, rec, model, (early, best) = run(tmp_path / "a", validate=True)
    trials = cb.history[0]["trials"]
    assert [(t["start_step"], t["steps"], t["diverged"]) for t in trials] == [(s, 5, False) for s in (0, 5, 10)]
    assert sorted(rec.logged) == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert same(rec.validated[4], rec.after[0])  # no trial completed: the stage start
    assert same(rec.validated[8], rec.after[5])  # trial 0's end
    assert same(rec.validated[12], rec.after[5]) or same(rec.validated[12], rec.after[10])
    assert all(same(rec.validated[s], rec.after[s]) for s in rec.logged if s >= 16)  # exploit: the live weights
    x, y = regression_data()
    probe = make_module_class(lpl)()

    @torch.no_grad()
    def val_loss_of(weights: list[torch.Tensor]) -> float:
        for p, v in zip(probe.parameters(), weights):
            p.copy_(v)
        return float(torch.nn.functional.mse_loss(probe(x[384:]), y[384:]))

    for step, logged in rec.logged.items():  # the logged val_loss is the validated weights' loss, not the trial's
        assert logged == pytest.approx(val_loss_of(rec.validated[step]), rel=1e-6)
    assert all(rec.logged[s] != pytest.approx(val_loss_of(rec.after[s]), rel=1e-3) for s in (4, 8, 12))
    assert float(early.best_score) == pytest.approx(min(rec.logged.values()))
    assert float(best.best_model_score) == pytest.approx(min(rec.logged.values()))
    best_step = min(rec.logged, key=rec.logged.__getitem__)
    saved = torch.load(best.best_model_path, weights_only=True)["state_dict"]
    assert same(saved.values(), rec.validated[best_step])
    during = torch.load(tmp_path / "a" / "during_validation.ckpt", weights_only=True)
    assert same(during["state_dict"].values(), rec.after[5])
    assert same([during["autolrs_trial_state"]["tensors"][f"model.{j}"] for j in range(4)], rec.after[8])

    plain_cb, _, plain_model, _ = run(tmp_path / "b", validate=False)
    assert cb.lrs == plain_cb.lrs and cb.history == plain_cb.history
    assert same(model.parameters(), plain_model.parameters())


@pytest.mark.parametrize("weights_only", [True, False])
def test_weights_only_checkpoints_are_named_at_fit_start(lpl, tmp_path, weights_only) -> None:
    """Lightning writes a weights-only checkpoint without any callback hook, so AutoLRS cannot put the committed
    weights into it: it says so once, at fit start (and nothing for full checkpoints, which hold committed weights)."""
    ckpt = lpl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=10, save_weights_only=weights_only
    )
    trainer = lpl.Trainer(
        callbacks=[autolrs(), ckpt], **trainer_kwargs(tmp_path, max_steps=40, enable_checkpointing=True)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(make_module_class(lpl)())
    named = [w for w in caught if issubclass(w.category, AutoLRSWarning) and "save_weights_only=True" in str(w.message)]
    assert len(named) == (1 if weights_only else 0)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_an_adam_family_optimizer_warms_up_after_the_first_search(lpl, tmp_path, optimizer: str) -> None:
    """AdamW (betas (0.9, 0.999)): the first stage's exploit phase starts again from the stage start and ramps up to
    the chosen LR over a quarter of its τ; SGD: it goes on from the best trial's end, at the chosen LR."""
    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=40, search_ratio=0.25, seed=0, verbose=False)
    trainer, model = fit(lpl, tmp_path, cb, max_steps=200, module_kw=dict(optimizer=optimizer, lr=0.01))
    first = cb.history[0]
    start, lr = first["exploit_start"], first["best_lr"]
    if optimizer == "sgd":
        assert "exploit_warmup" not in first and first["reused_trial"] is not None
        assert cb.lrs[start] == lr
        return
    assert first["exploit_warmup"] == 10 and "reused_trial" not in first and first["exploit_steps"] == 40
    expected = [1e-3 + (lr - 1e-3) * (i + 1) / 10 for i in range(10)]
    assert cb.lrs[start : start + 10] == pytest.approx(expected) and cb.lrs[start + 10] == lr
    assert [g[0] for g in model.group_lrs] == pytest.approx(cb.lrs)  # what the optimizer saw
    assert all(1e-3 <= x <= 0.5 for x in cb.lrs) and len(cb.lrs) == trainer.global_step == 200


def _memorizer(pl, full_batch: bool = False) -> Any:
    """Few noisy training samples, a wide net and Adam: the net fits the noise, and the validation loss turns up.
    ``full_batch``: every step sees the 64 training samples in one batch, in order (a resumed run sees the same)."""
    from torch import nn
    from torch.utils.data import DataLoader

    class Memorizer(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.train_set, self.val_set, self.net = memorizer_parts()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=3e-3)

        def train_dataloader(self) -> Any:
            if full_batch:
                return DataLoader(self.train_set, batch_size=16)
            return DataLoader(self.train_set, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))

        def val_dataloader(self) -> Any:
            return DataLoader(self.val_set, batch_size=64)

    return Memorizer()


def _fit_memorizer(pl, tmp_path, verbose: bool = False) -> tuple[AutoLRS, float]:
    pl.seed_everything(0)
    cb, model = AutoLRS(verbose=verbose), _memorizer(pl)
    kw = trainer_kwargs(tmp_path, max_steps=1000, limit_val_batches=1.0, check_val_every_n_epoch=100000)
    pl.Trainer(callbacks=[cb], **kw).fit(model)
    x, y = model.val_set.tensors
    with torch.no_grad():
        return cb, float(torch.nn.functional.mse_loss(model.net(x), y))


def test_an_overfitting_run_anneals_early_and_ends_lower(lpl, tmp_path, monkeypatch, caplog) -> None:
    """The validation probes of the exploit phase see the validation loss rise while the training loss falls: the
    final anneal begins at once instead of at 80 % of the budget, and the run ends at a lower validation loss than
    the same run whose anneal waits."""
    with caplog.at_level(logging.INFO):
        cb, val_loss = _fit_memorizer(lpl, tmp_path, verbose=True)
    (stage,) = cb.history
    start = stage["anneal_start"]
    assert stage["exploit_start"] < start < 800 and stage["overfitting"]["train_loss"][1] < 0.5
    tail = cb.lrs[start:]  # its first step at the LR in use, then min_lr to the end
    assert tail[-1] < tail[0] / 100 and set(tail[1:]) == {tail[-1]} and len(cb.lrs) == 1000
    back = stage["rolled_back_to"]  # (it begins from the exploit phase's best-probed state: reuse_best_trial)
    assert stage["exploit_start"] < back < start
    assert (
        f"the final anneal begins at step {start} from the weights of step {back} (the lowest validation probe) and "
        f"holds lr={tail[-1]:.4g} from step {start + 1} to the end, probing on: should the validation loss rise "
        "again, the last step goes back to the weights of the hold's lowest probe." in caplog.text
    )
    from lightning_autolrs.exploit import OverfitWatch

    monkeypatch.setattr(OverfitWatch, "overfitting", lambda self, losses, first_step=0: False)
    late, late_val_loss = _fit_memorizer(lpl, tmp_path)
    assert late.history[0]["anneal_start"] == 800 and late.lrs[:start] == cb.lrs[:start]
    assert val_loss < late_val_loss  # (0.911 against 1.198; decaying over the usual 200 steps: 1.004)


def test_the_early_anneal_rolls_back_to_the_best_probed_state_and_resumes_bitwise(lpl, tmp_path, monkeypatch) -> None:
    """The early anneal of an overfitting run (full-batch, so a resumed run sees the same data) restores the exploit
    phase's best-probed state, kept in the best-trial snapshot: a checkpoint written between that capture and the
    anneal carries the snapshot, and the run resumed from it ends bitwise where the uninterrupted one ends. Without
    ``reuse_best_trial`` there is no rollback, and the run ends above the validation loss that began its anneal (the
    rolled-back one below it; at stop 50 the rolled-back run also ended below the other, which the anchored design
    of stop 51 turned: 1.109 against 1.099)."""

    def run(root, ckpt_path=None, **kw):
        lpl.seed_everything(0)
        cb, model = AutoLRS(verbose=False, **kw), _memorizer(lpl, full_batch=True)
        every = lpl.callbacks.ModelCheckpoint(
            dirpath=root / "ckpt", filename="{step}", every_n_train_steps=40, save_top_k=-1
        )
        args = trainer_kwargs(
            root, max_steps=1000, limit_val_batches=1.0, check_val_every_n_epoch=100000, enable_checkpointing=True
        )
        lpl.Trainer(callbacks=[cb, every], deterministic=True, **args).fit(model, ckpt_path=ckpt_path)
        x, y = model.val_set.tensors
        with torch.no_grad():
            return cb, model, float(torch.nn.functional.mse_loss(model.net(x), y))

    ref_cb, ref_model, ref_val = run(tmp_path / "a")
    (stage,) = ref_cb.history
    back, start = stage["rolled_back_to"], stage["anneal_start"]
    steps = [int(p.stem.split("=")[1]) for p in (tmp_path / "a" / "ckpt").glob("step=*.ckpt")]
    between = [s for s in steps if back < s <= start]
    assert between, (back, start, sorted(steps))
    ckpt = tmp_path / "a" / "ckpt" / f"step={between[0]}.ckpt"
    assert "autolrs_best_trial_snapshot" in torch.load(ckpt, weights_only=False)
    cb, model, val = run(tmp_path / "b", ckpt_path=str(ckpt))

    assert cb.lrs == ref_cb.lrs and without_probe_times(cb.history) == without_probe_times(ref_cb.history)
    assert val == ref_val
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))
    # a checkpoint without the snapshots (checkpoint_snapshot=False): the resumed run cannot roll back to a state it
    # did not keep, and trains to the end (it may keep a later best-probed state)
    lean = tmp_path / "d"
    run(lean, checkpoint_snapshot=False)
    lean_cb, lean_model, _ = run(tmp_path / "e", ckpt_path=str(lean / "ckpt" / f"step={between[0]}.ckpt"),
                                 checkpoint_snapshot=False)  # fmt: skip
    assert len(lean_cb.lrs) == 1000 and all(torch.isfinite(p).all() for p in lean_model.parameters())
    assert lean_cb.history[0].get("rolled_back_to", between[0]) >= between[0]
    plain_cb, _, plain_val = run(tmp_path / "c", reuse_best_trial=False)
    assert plain_cb.history[0]["overfitting"] and "rolled_back_to" not in plain_cb.history[0]
    # each against the validation loss that began its own anneal (the watch's latest window): the rolled-back run
    # ends below it, the one without a rollback above it (the weights the overfitting left go on rising)
    assert ref_val < stage["overfitting"]["val_loss"][1]
    assert plain_val > plain_cb.history[0]["overfitting"]["val_loss"][1]
    # the hold after the anneal's drop probed on: the validation loss rose again, and the last step went back to the
    # state after the hold's lowest probe; a checkpoint written in the hold after that capture carries it, and the run
    # resumed from it ends bitwise where the uninterrupted one ends
    kept = stage["restored_at_end"]
    later = sorted(s for s in steps if kept < s < 1000)
    ckpt = tmp_path / "a" / "ckpt" / f"step={later[0]}.ckpt"
    assert start < kept and "autolrs_best_trial_snapshot" in torch.load(ckpt, weights_only=False)
    cb, model, val = run(tmp_path / "f", ckpt_path=str(ckpt))
    assert cb.lrs == ref_cb.lrs and without_probe_times(cb.history) == without_probe_times(ref_cb.history)
    assert val == ref_val and all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))
    # ... and it ends lower than the same run ending on its own weights (the hold's test switched off)
    from lightning_autolrs.exploit import OverfitWatch

    monkeypatch.setattr(OverfitWatch, "rose_from_best", lambda self: False)
    own_cb, _, own_val = run(tmp_path / "g")
    assert "restored_at_end" not in own_cb.history[0] and own_cb.lrs == ref_cb.lrs and ref_val < own_val


def test_the_too_small_budget_warning_says_what_the_run_trains_and_why_it_has_no_decay() -> None:
    """The warning's schedule (no search): the configured LR from the first step, held, then the decay over half the
    anneal's length (10 % of 200 steps); no decay says why: none asked for, half of a tiny anneal rounds to none, or
    the LR held is `min_lr` already."""
    from lightning_autolrs.callback import _fallback_schedule

    s = Settings(verbose=False)
    assert _fallback_schedule(s, derive(s, 0.05, 200)) == (
        "the configured lr=0.05 from the first step, held, then decayed along 1 - sqrt(t) to 5e-05 over the last 20 "
        "steps (the final anneal)"
    )
    off = Settings(anneal_ratio=0.0, verbose=False)
    assert _fallback_schedule(off, derive(off, 0.05, 100)).endswith("to the end (`anneal_ratio`=0: no final anneal)")
    tiny = Settings(anneal_ratio=0.01, verbose=False)
    d = derive(tiny, 0.05, 100)
    assert d.decay_steps == 0 and _fallback_schedule(tiny, d).endswith(
        "held to the end (`anneal_ratio`=0.01: its decay rounds to no step at this budget)"
    )
    above = Settings(min_lr=0.1, max_lr=1.0, verbose=False)  # (the configured 0.05 clamped up to `min_lr`)
    assert _fallback_schedule(above, derive(above, 0.05, 200)) == (
        "lr=0.1 (the configured lr=0.05 clamped to `min_lr`…`max_lr`) from the first step, held to the end (it is "
        "`min_lr` already: the final anneal has nothing to decay)"
    )


@pytest.mark.parametrize(("optimizer", "validation"), [("sgd", False), ("adam", True)])
def test_quiet_runs_train_and_record_what_steps_one_at_a_time_do(
    lpl, tmp_path, monkeypatch, optimizer: str, validation: bool
) -> None:
    """On CPU the steps of a quiet run (a kept exploit plan's, the exploit warmup's ramp with Adam, a trial's, the
    final anneal's planned ahead: issue #14) set their LR and hand their losses to the controller together: every LR
    the optimizer saw, the weights, the schedule, the checkpoints written mid-run and what a callback reads from
    AutoLRS mid-run are those of steps taken one at a time (quiet runs turned off), bitwise."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_autolrs.controller import StageController

    handed: list[int] = []
    real_end_run = StageController.end_quiet_run

    def end_quiet_run(self, losses, plans):
        handed.append(len(losses))
        return real_end_run(self, losses, plans)

    monkeypatch.setattr(StageController, "end_quiet_run", end_quiet_run)
    steps = 300
    out = []
    for runs in (True, False):
        if not runs:
            monkeypatch.setattr(StageController, "quiet_run", lambda self: [])
        seen: list[tuple] = []
        cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=40, seed=0, verbose=False, monitor="train_loss")

        class Reader(lpl.Callback):  # reads AutoLRS mid-run, between the steps of a quiet run
            def __init__(self, cb: AutoLRS, seen: list[tuple]) -> None:
                self.cb, self.seen = cb, seen

            def on_train_batch_end(self, trainer, *args) -> None:
                if trainer.global_step % 37 == 0:
                    cb = self.cb
                    self.seen.append((trainer.global_step, list(cb.lrs), without_probe_times(cb.history), cb.phase))

        folder = tmp_path / f"runs_{runs}"
        checkpoints = ModelCheckpoint(dirpath=folder, every_n_train_steps=50, save_top_k=-1)
        lpl.seed_everything(0)
        model = make_module_class(lpl)(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01)
        trainer_kw = dict(limit_val_batches=1.0, val_check_interval=5) if validation else {}
        trainer = lpl.Trainer(
            callbacks=[cb, Reader(cb, seen), checkpoints],
            **trainer_kwargs(folder, max_steps=steps, enable_checkpointing=True, **trainer_kw),
        )
        trainer.fit(model)
        saved = sorted(folder.glob("*.ckpt"))
        states = [torch.load(p, weights_only=False) for p in saved]
        out.append(
            (
                model.group_lrs, cb.lrs, without_probe_times(cb.history), seen,
                {k: v.clone() for k, v in model.state_dict().items()},
                [(s["state_dict"], s["optimizer_states"], s["callbacks"]["AutoLRS"]) for s in states],
                [p.name for p in saved],
            )
        )  # fmt: skip
        if runs:
            assert sum(handed) > 0.6 * steps  # most steps ended inside a quiet run
            assert any(h["trials"] for h in cb.history) and cb.history[-1].get("anneal_start") is not None
    (lrs, cb_lrs, history, seen, weights, ckpts, names), reference = out
    assert lrs == reference[0] and cb_lrs == reference[1] and len(cb_lrs) == steps
    assert history == reference[2] and seen == reference[3] and len(seen) == steps // 37
    assert weights.keys() == reference[4].keys() and all(torch.equal(weights[k], reference[4][k]) for k in weights)
    assert names == reference[6] and len(names) == steps // 50
    for (model_state, optimizer_state, callback_state), other in zip(ckpts, reference[5]):
        assert all(torch.equal(model_state[k], other[0][k]) for k in model_state)
        assert str(optimizer_state) == str(other[1]) and callback_state == other[2]
