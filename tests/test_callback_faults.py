"""Faults: exceptions and early stops inside a search, diverging LRs (trial and exploit), skipped batches."""

from __future__ import annotations

import signal

import pytest
import torch

from lightning_autolrs import AutoLRS

from .helpers import autolrs, make_module_class, trainer_kwargs


def recorder(lpl):
    class Recorder(lpl.Callback):
        """The weights at each stage start and after every step (keyed by the global step)."""

        def __init__(self) -> None:
            self.stage_params: dict[int, list[torch.Tensor]] = {}
            self.after: dict[int, list[torch.Tensor]] = {0: []}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            cb = next(c for c in trainer.callbacks if isinstance(c, AutoLRS))
            if cb.history and cb.history[-1]["start_step"] == trainer.global_step:
                self.stage_params[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.after[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]

    return Recorder()


def failing_at(lpl, step: int, exc: BaseException):
    class Fail(lpl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == step:
                raise exc

    return Fail()


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def best_completed_trial(cb: AutoLRS) -> dict:
    """The stage's leading completed trial: the lowest forecast, unless the anchor (trial 0) is within 3 % of it."""
    done = [t for t in cb.history[-1]["trials"] if not t["diverged"]]
    best = min(done, key=lambda t: (t["predicted_loss"], t["lr"]))
    anchor = cb.history[-1]["trials"][0]
    tie = not anchor["diverged"] and anchor["predicted_loss"] - best["predicted_loss"] <= 0.03 * best["predicted_loss"]
    return anchor if tie else best


def kept_trial_end(cb: AutoLRS, rec) -> list[torch.Tensor]:
    best = best_completed_trial(cb)
    return rec.after[best["start_step"] + best["steps"]]


def test_exception_mid_trial_keeps_the_best_completed_trial(lpl, tmp_path) -> None:
    cb, rec = autolrs(), recorder(lpl)  # tau' = 5: at step 8 trial 0 has completed, trial 1 is in flight
    model = make_module_class(lpl)()
    trainer = lpl.Trainer(
        callbacks=[cb, rec, failing_at(lpl, 8, RuntimeError("boom")), lpl.callbacks.OnExceptionCheckpoint(tmp_path)],
        **trainer_kwargs(tmp_path, max_steps=100, enable_checkpointing=True),
    )
    with (
        pytest.raises(RuntimeError, match="boom"),
        pytest.warns(UserWarning, match=r"kept that trial's 5 steps, discarded the other 3") as w,
    ):
        trainer.fit(model)
    assert cb.phase == "search" and trainer.global_step == 8
    assert "RuntimeError was raised during stage 0's search" in str(w[-1].message)
    assert same(model.parameters(), rec.after[5]) and not same(model.parameters(), rec.stage_params[0])
    saved = torch.load(tmp_path / "on_exception.ckpt", weights_only=True)["state_dict"]
    assert same(saved.values(), rec.after[5])  # the checkpoint is the committed state


def test_exception_before_any_trial_completed_restores_the_stage_start(lpl, tmp_path) -> None:
    cb, rec = autolrs(), recorder(lpl)
    model = make_module_class(lpl)()
    trainer = lpl.Trainer(
        callbacks=[cb, rec, failing_at(lpl, 3, RuntimeError("boom"))], **trainer_kwargs(tmp_path, max_steps=100)
    )
    with (
        pytest.raises(RuntimeError),
        pytest.warns(UserWarning, match=r"start of stage 0's search.*kept 0 steps, discarded the 3"),
    ):
        trainer.fit(model)
    assert same(model.parameters(), rec.stage_params[0])


@pytest.mark.parametrize("at_end", [False, True])
def test_exception_in_the_range_test_restores_where_the_sweep_began(lpl, tmp_path, at_end) -> None:
    """Inside the sweep, and at its last step (its restore still due; the message said "stage -1's search" there)."""
    cb = AutoLRS(seed=0, verbose=False)  # no range given: a sweep of up to 35 steps first

    class Fail(lpl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if (cb.range_test_result is not None) if at_end else trainer.global_step == 7:
                raise RuntimeError("boom")

    lpl.seed_everything(0)
    model = make_module_class(lpl)()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = lpl.Trainer(callbacks=[cb, Fail()], **trainer_kwargs(tmp_path, max_steps=700))
    with pytest.raises(RuntimeError), pytest.warns(UserWarning, match="during the LR range test") as w:
        trainer.fit(model)
    step = trainer.global_step
    assert (step == 7) != at_end and (cb.range_test_result is not None) == at_end
    message = str(w[-1].message)
    assert f"restored the model and optimizer to where the sweep began: discarded its {step} steps" in message
    assert "stage -1" not in message and "trial" not in message
    assert same(model.parameters(), before)


def test_keyboard_interrupt_mid_trial_keeps_the_best_completed_trial(lpl, tmp_path) -> None:
    cb, rec = autolrs(), recorder(lpl)
    model = make_module_class(lpl)()
    trainer = lpl.Trainer(
        callbacks=[cb, rec, failing_at(lpl, 12, KeyboardInterrupt())], **trainer_kwargs(tmp_path, max_steps=100)
    )
    try:
        with pytest.raises(SystemExit), pytest.warns(UserWarning, match="KeyboardInterrupt"):
            trainer.fit(model)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT after an interrupt
    assert len(cb.history[0]["trials"]) == 2  # trials 0 and 1 completed, trial 2 in flight
    assert same(model.parameters(), kept_trial_end(cb, rec))


@pytest.mark.parametrize("reuse_best_trial", [True, False])
def test_run_stopped_mid_search_ends_at_the_best_completed_trial(lpl, tmp_path, reuse_best_trial) -> None:
    """A stop the budget planner cannot see (``should_stop`` in an unbounded run, ``max_time``) keeps the best
    completed trial's end state (a real training state at the best LR so far), not the stage start."""

    class Stop(lpl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 57:  # inside stage 1's search (trials of 10 steps), after two trials
                trainer.should_stop = True

    cb, rec = autolrs(reuse_best_trial=reuse_best_trial), recorder(lpl)
    model = make_module_class(lpl)()
    trainer = lpl.Trainer(callbacks=[cb, rec, Stop()], **trainer_kwargs(tmp_path, max_steps=-1, max_epochs=-1))
    with pytest.warns(UserWarning, match="the run ended during stage 1's search") as w:
        trainer.fit(model)
    assert trainer.global_step == 57 and cb.phase == "search" and cb.total_steps is None
    stage_start = cb.history[-1]["start_step"]
    assert len(cb.history[-1]["trials"]) == 2 and cb.history[-1]["tau_prime"] == 10
    since = 57 - stage_start
    if reuse_best_trial:  # the best trial's end: its 10 steps kept, the others discarded
        assert same(model.parameters(), kept_trial_end(cb, rec))
        assert f"kept that trial's 10 steps, discarded the other {since - 10} steps" in str(w[-1].message)
    else:  # no best-trial snapshot to keep: the stage start
        assert same(model.parameters(), rec.stage_params[stage_start])
        assert f"kept 0 steps, discarded the {since} steps since" in str(w[-1].message)
    assert not same(model.parameters(), rec.stage_params[0])  # trained weights, never the initial ones


def test_huge_max_lr_ends_finite_and_shrinks_the_range(lpl, tmp_path) -> None:
    cb = autolrs(max_lr=1e6, num_trials=4)
    model = make_module_class(lpl)(lr=1e5)  # stage 0 searches around the configured LR: 3.3e4 ... 3e5
    lpl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=150)).fit(model)
    first = cb.history[0]
    diverged = [t for t in first["trials"] if t["diverged"]]
    assert diverged
    losses, limit = cb.controller.losses, 5.0 * cb.controller.losses[0]  # stage 0's reference: its first loss
    for t in diverged:  # cut at the very step the loss crossed the limit (or went NaN), not later
        last = t["start_step"] + t["steps"] - 1
        assert losses[last] is None or losses[last] > limit
        assert all(v is not None and v <= limit for v in losses[t["start_step"] : last])
    assert cb.history[1]["lr_range"][1] <= min(t["lr"] for t in first["trials"] if t["diverged"]) < 1e6
    assert all(torch.isfinite(p).all() for p in model.parameters())


def nan_at(lpl, steps: set[int]):
    cls = make_module_class(lpl)

    class NanAt(cls):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.trainer.global_step in steps else loss

    return NanAt()


@pytest.mark.parametrize("late", [False, True])
def test_exploit_divergence_falls_back_and_stays_finite(lpl, tmp_path, monkeypatch, late: bool) -> None:
    """``late``: the exploit's losses are read one step late, as on an accelerator (a CPU loss is read at once)."""
    if late:
        monkeypatch.setattr(AutoLRS, "_reads_late", staticmethod(lambda trainer: True))
    cb = autolrs()
    model = nan_at(lpl, {25})  # stage 0 exploits steps 15..34
    lpl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=80)).fit(model)
    first = cb.history[0]
    assert first["exploit_start"] <= 25 < first["exploit_start"] + first["exploit_steps"]
    (fallback,) = first["fallbacks"]
    assert (
        fallback["step"] == 25 and fallback["failed_lr"] == first["best_lr"] and fallback["new_lr"] < first["best_lr"]
    )
    # read at once, step 26 starts from the restored snapshot at the smaller LR; read one step late (no host-device
    # sync per step), step 26 already ran at the failed LR on the NaN weights, and step 27 starts from the snapshot
    restored = 27 if late else 26
    assert cb.lrs[restored - 1] == fallback["failed_lr"] and cb.lrs[restored] == fallback["new_lr"]
    assert len(first["fallbacks"]) == 1  # (read late, step 26's NaN loss is not judged again: its weights were dropped)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("late", [False, True])
def test_trial_divergence_read_late_is_cut_within_two_steps(lpl, tmp_path, monkeypatch, late: bool) -> None:
    """A NaN inside a trial (not at its last step). ``late``: trial losses read one step late, as on an accelerator
    (no host-device sync in a trial step but its last): the step after the NaN already ran at the trial's LR on the
    NaN weights, so the trial ends one step later, and the next trial starts from the stage snapshot after it."""
    if late:
        monkeypatch.setattr(AutoLRS, "_reads_late", staticmethod(lambda trainer: True))

    class Before(lpl.Callback):  # the weights each step starts from (after AutoLRS's restore: listed after it)
        def __init__(self) -> None:
            self.params: dict[int, list[torch.Tensor]] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.params[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]

    cb, before = autolrs(), Before()
    model = nan_at(lpl, {6})  # stage 0's trials (5 steps each): 0-4, then 5..., the NaN at the second's 2nd step
    lpl.Trainer(callbacks=[cb, before], **trainer_kwargs(tmp_path, max_steps=60)).fit(model)
    trials = cb.history[0]["trials"]
    assert [t["diverged"] for t in trials] == [False, True, False]
    cut = 7 if late else 6  # the trial's last step
    assert trials[1]["steps"] == cut - 4 and trials[2]["start_step"] == cut + 1
    assert cb.lrs[cut] == trials[1]["lr"] and cb.lrs[cut + 1] == trials[2]["lr"]
    assert bool(torch.isfinite(before.params[7][0]).all()) is not late  # read late, step 7 ran on the NaN weights
    assert same(before.params[cut + 1], before.params[0])  # the next trial starts from the stage start
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("step", [6, 25])
def test_an_exception_in_the_step_after_a_late_nan_leaves_a_committed_model(lpl, tmp_path, monkeypatch, step) -> None:
    """Losses read one step late (as on an accelerator): a NaN at ``step`` is still waiting when the next step's
    `training_step` raises. In the exploit phase (25) the exception hands it over, so the model is left at the stage
    start, where the fallback goes, rather than at the NaN weights; in a trial (6) at the best completed trial's end."""
    monkeypatch.setattr(AutoLRS, "_reads_late", staticmethod(lambda trainer: True))
    cls = make_module_class(lpl)

    class NanThenRaise(cls):
        def training_step(self, batch, batch_idx):
            if self.trainer.global_step == step + 1:
                raise RuntimeError("boom")
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.trainer.global_step == step else loss

    cb, rec, model = autolrs(), recorder(lpl), NanThenRaise()
    trainer = lpl.Trainer(callbacks=[cb, rec], **trainer_kwargs(tmp_path, max_steps=80))
    with pytest.raises(RuntimeError, match="boom"), pytest.warns(UserWarning, match="RuntimeError was raised"):
        trainer.fit(model)
    assert trainer.global_step == step + 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert same(model.parameters(), rec.after[5] if step == 6 else rec.stage_params[0])  # (trial 0: steps 0-4)
    if step == 6:  # the trial the NaN diverged is recorded (the step that raised is dropped, never taken)
        trials = cb.history[0]["trials"]
        assert [(t["start_step"], t["steps"], t["diverged"]) for t in trials] == [(0, 5, False), (5, 2, True)]


def test_a_run_that_ends_with_a_step_open_records_the_late_divergence_waiting(lpl, tmp_path, monkeypatch) -> None:
    """Losses read one step late: a NaN at step 6 (trial 1's second step) is still waiting when the module's
    ``on_train_batch_start`` returns -1 at step 7 in the last epoch, which ends the run with that step planned but
    never taken. The run's end drops the open step and hands the loss over: trial 1 is recorded as diverged after its
    two steps, and the model is left at the end of trial 0, the best completed trial."""
    monkeypatch.setattr(AutoLRS, "_reads_late", staticmethod(lambda trainer: True))
    cls = make_module_class(lpl)

    class NanThenStop(cls):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.trainer.global_step == 6 else loss

        def on_train_batch_start(self, batch, batch_idx):
            return -1 if self.trainer.global_step == 7 else None

    cb, rec, model = autolrs(), recorder(lpl), NanThenStop(batch_size=4)  # (an epoch of 96 steps)
    trainer = lpl.Trainer(callbacks=[cb, rec], **trainer_kwargs(tmp_path, max_steps=80, max_epochs=1))
    with pytest.warns(UserWarning, match="the run ended"):
        trainer.fit(model)
    assert trainer.global_step == 7 and len(cb.lrs) == 7
    trials = cb.history[0]["trials"]
    assert [(t["start_step"], t["steps"], t["diverged"]) for t in trials] == [(0, 5, False), (5, 2, True)]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert same(model.parameters(), rec.after[5])  # (trial 0: steps 0-4)


def test_nan_at_the_last_step_is_undone(lpl, tmp_path) -> None:
    cb = autolrs()
    model = nan_at(lpl, {79})
    with pytest.warns(UserWarning, match="restored the model"):
        lpl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=80)).fit(model)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.filterwarnings("ignore:.*returned `None`")
def test_skipped_batches_do_not_corrupt_the_loss_series(lpl, tmp_path) -> None:
    cls = make_module_class(lpl)

    class Skipping(cls):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return None if batch_idx % 4 == 3 else loss

    cb = autolrs()
    trainer = lpl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=80))
    trainer.fit(Skipping())  # Lightning warns once per process that `training_step` returned None
    assert len(cb.lrs) == trainer.global_step == 80
    missing = [i for i, v in enumerate(cb.controller.losses) if v is None]
    assert missing and len(missing) == 80 // 4
    assert all(t["predicted_loss"] is not None for h in cb.history for t in h["trials"] if not t["diverged"])


@pytest.mark.parametrize("range_given", [True, False], ids=["search", "range_test"])
def test_a_loss_nan_at_every_lr_raises_and_leaves_a_finite_model(lpl, tmp_path, range_given) -> None:
    from lightning_autolrs import NonFiniteLossError

    cls = make_module_class(lpl)

    class AlwaysNan(cls):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx) * float("nan")

    cb = autolrs() if range_given else AutoLRS(verbose=False)
    model = AlwaysNan()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = lpl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=800))
    match = "every training loss .* down to min_lr" if range_given else "range test saw no finite training loss"
    with pytest.raises(NonFiniteLossError, match=match), pytest.warns(UserWarning, match="restored"):
        trainer.fit(model)
    assert trainer.global_step < 10  # at once, not ~170 fallback warnings later
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the stage start: the initial weights
