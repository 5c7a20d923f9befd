"""Tests of the Lightning plumbing in :mod:`lightning_autolrs._edge`: event reporting, the progress-bar hook."""

from __future__ import annotations

import csv
import logging
import math
import re

import pytest
import torch

from lightning_autolrs import AutoLRS
from lightning_autolrs._edge import ProgressBarHook, second_moment_beta

from .helpers import make_module_class, trainer_kwargs


def test_events_become_log_lines_and_logged_metrics(lpl, tmp_path, caplog) -> None:
    cb = AutoLRS(num_trials=4, tau=80, tau_max=80, search_ratio=0.2, seed=0, save_files=False)
    logger = lpl.loggers.CSVLogger(tmp_path, name="run")
    lpl.seed_everything(0)
    trainer = lpl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=500, logger=logger))
    with caplog.at_level(logging.INFO):
        trainer.fit(make_module_class(lpl)(lr=0.02))
    text = caplog.text
    rt = cb.range_test_result
    assert f"AutoLRS range test: {rt['steps']} steps from lr=2e-06" in text
    assert f"max_lr={cb.max_lr:.4g}" in text
    assert "AutoLRS stage 0 trial 1/4: lr=" in text and "AutoLRS stage 0: best lr=" in text
    trials = [t for h in cb.history for t in h["trials"]]
    assert len(re.findall(r"AutoLRS stage \d+ trial \d+/4: lr=\S+, \d+ steps, ", text)) == len(trials) > 0
    with open(logger.log_dir + "/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [float(r["autolrs/range_max_lr"]) for r in rows if r.get("autolrs/range_max_lr")]
    assert logged == [pytest.approx(cb.max_lr)]
    trial_lrs = [float(r["autolrs/trial_lr"]) for r in rows if r.get("autolrs/trial_lr")]
    assert trial_lrs == pytest.approx([t["lr"] for h in cb.history for t in h["trials"]])


def test_progress_bar_hook_attaches_once_and_detaches(lpl, tmp_path) -> None:
    trainer = lpl.Trainer(**trainer_kwargs(tmp_path, enable_progress_bar=True))
    bar = trainer.progress_bar_callback
    original = bar.get_metrics
    hook = ProgressBarHook()
    hook.attach(trainer, lambda: {"autolrs": "x"})
    hook.attach(trainer, lambda: {"autolrs": "y"})  # a second attach is a no-op
    wrapped = bar.get_metrics
    assert wrapped is not original
    hook.detach()
    assert bar.get_metrics == original
    hook.detach()  # idempotent


@pytest.mark.parametrize(("value", "expected"), [(2.5, 2.5), (math.inf, math.nan), (math.nan, math.nan)])
def test_late_loss_device_path_reads_what_reduce_loss_would(value: float, expected: float) -> None:
    """The accelerator path of LateLoss (run here on a CPU tensor: no pinned memory, no CUDA event) reads the loss,
    or NaN for a non-finite one (which the controller treats as the at-once path's inf or NaN: a divergence)."""
    from types import SimpleNamespace

    from lightning_autolrs._edge import LateLoss

    trainer = SimpleNamespace(world_size=1)
    late = LateLoss(trainer, None)  # no loss: read at once, None
    assert late.read() is None
    late._start_on_device(trainer, torch.tensor(value, dtype=torch.float32))
    assert late.read() == pytest.approx(expected, nan_ok=True) and not late.skipped
    for skipped in (True, False):  # a GradScaler's skip flag travels with the loss, in the same copy
        late._start_on_device(trainer, torch.tensor(value, dtype=torch.float32), torch.tensor(skipped))
        assert late.read() == pytest.approx(expected, nan_ok=True) and late.skipped is skipped


@pytest.mark.parametrize("accumulate", [1, 3])
def test_optimizer_step_counter_reads_the_global_step(lpl, tmp_path, accumulate: int) -> None:
    """The per-step hooks read the Trainer's optimizer-step counter instead of `trainer.global_step`: both agree at
    every batch, with gradient accumulation too, in both Lightning flavours."""
    from lightning_autolrs._edge import optimizer_step_counter

    seen: list[tuple[int, int]] = []

    class Check(lpl.Callback):
        counter = None

        def on_train_start(self, trainer, pl_module) -> None:
            self.counter = optimizer_step_counter(trainer)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seen.append((self.counter.completed, trainer.global_step))

    trainer = lpl.Trainer(
        callbacks=[Check()], **trainer_kwargs(tmp_path, max_steps=7, accumulate_grad_batches=accumulate)
    )
    trainer.fit(make_module_class(lpl)(lr=0.02))
    assert len(seen) == 7 * accumulate and all(a == b for a, b in seen)
    assert seen[-1][1] == 7


def test_second_moment_beta_reads_the_first_groups_betas() -> None:
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert second_moment_beta(torch.optim.Adam(p)) == 0.999
    assert second_moment_beta(torch.optim.NAdam(p, betas=(0.9, 0.98))) == pytest.approx(0.98)
    assert second_moment_beta(torch.optim.Adam(p, betas=(torch.tensor(0.9), torch.tensor(0.95)))) == pytest.approx(0.95)
    assert second_moment_beta(torch.optim.SGD(p, lr=0.1)) is None
    assert second_moment_beta(torch.optim.RMSprop(p)) is None
