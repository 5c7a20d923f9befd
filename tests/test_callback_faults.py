"""Faults: exceptions and early stops inside a search, diverging LRs (trial and exploit), skipped batches."""

from __future__ import annotations

import signal

import pytest
import torch

from lightning_autolrs import AutoLRS

from .helpers import autolrs, make_module_class, trainer_kwargs


def recorder(lpl):
    class Recorder(lpl.Callback):
        def __init__(self) -> None:
            self.stage_params: dict[int, list[torch.Tensor]] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            cb = next(c for c in trainer.callbacks if isinstance(c, AutoLRS))
            if cb.history and cb.history[-1]["start_step"] == trainer.global_step:
                self.stage_params[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]

    return Recorder()


def failing_at(lpl, step: int, exc: BaseException):
    class Fail(lpl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == step:
                raise exc

    return Fail()


def test_exception_mid_trial_leaves_the_stage_start_state(lpl, tmp_path) -> None:
    cb, rec = autolrs(), recorder(lpl)
    model = make_module_class(lpl)()
    trainer = lpl.Trainer(
        callbacks=[cb, rec, failing_at(lpl, 8, RuntimeError("boom")), lpl.callbacks.OnExceptionCheckpoint(tmp_path)],
        **trainer_kwargs(tmp_path, max_steps=100, enable_checkpointing=True),
    )
    with pytest.raises(RuntimeError, match="boom"), pytest.warns(UserWarning, match="restored the model"):
        trainer.fit(model)
    assert cb.phase == "search" and trainer.global_step == 8
    start = rec.stage_params[0]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), start))
    saved = torch.load(tmp_path / "on_exception.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a, b) for a, b in zip(saved.values(), start))  # the checkpoint is the committed state


def test_keyboard_interrupt_mid_trial_restores(lpl, tmp_path) -> None:
    cb, rec = autolrs(), recorder(lpl)
    model = make_module_class(lpl)()
    trainer = lpl.Trainer(
        callbacks=[cb, rec, failing_at(lpl, 7, KeyboardInterrupt())], **trainer_kwargs(tmp_path, max_steps=100)
    )
    try:
        with pytest.raises(SystemExit), pytest.warns(UserWarning, match="KeyboardInterrupt"):
            trainer.fit(model)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT after an interrupt
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), rec.stage_params[0]))


def test_run_stopped_mid_search_ends_with_the_stage_start_state(lpl, tmp_path) -> None:
    """A stop the budget planner cannot see (``max_time``, ``should_stop``) never leaves a trial's weights."""

    class Stop(lpl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 43:  # inside stage 1's search
                trainer.should_stop = True

    cb, rec = autolrs(), recorder(lpl)
    model = make_module_class(lpl)()
    trainer = lpl.Trainer(callbacks=[cb, rec, Stop()], **trainer_kwargs(tmp_path, max_steps=200))
    with pytest.warns(UserWarning, match="the run ended"):
        trainer.fit(model)
    assert trainer.global_step == 43 and cb.phase == "search"
    stage_start = cb.history[-1]["start_step"]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), rec.stage_params[stage_start]))


def test_huge_max_lr_ends_finite_and_shrinks_the_range(lpl, tmp_path) -> None:
    cb = autolrs(max_lr=1e6, num_trials=4)
    model = make_module_class(lpl)(lr=1e5)  # stage 0 searches around the configured LR: 1.1e4 ... 9e5
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


def test_exploit_divergence_falls_back_and_stays_finite(lpl, tmp_path) -> None:
    cb = autolrs()
    model = nan_at(lpl, {25})  # stage 0 exploits steps 15..34
    lpl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=80)).fit(model)
    first = cb.history[0]
    assert first["exploit_start"] <= 25 < first["exploit_start"] + first["exploit_steps"]
    (fallback,) = first["fallbacks"]
    assert (
        fallback["step"] == 25 and fallback["failed_lr"] == first["best_lr"] and fallback["new_lr"] < first["best_lr"]
    )
    # the exploit's loss is read one step late (no host-device sync per step): step 26 already ran at the failed LR
    # on the NaN weights, and step 27 starts from the restored snapshot at the smaller LR
    assert cb.lrs[26] == fallback["failed_lr"] and cb.lrs[27] == fallback["new_lr"]
    assert len(first["fallbacks"]) == 1  # step 26's own (NaN) loss is not judged again: its weights were dropped
    assert all(torch.isfinite(p).all() for p in model.parameters())


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
