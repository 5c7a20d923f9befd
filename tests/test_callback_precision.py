"""Mixed precision, gradient clipping and the AMP GradScaler under AutoLRS (all on CPU)."""

from __future__ import annotations

import pytest
import torch

from .helpers import autolrs, make_module_class, trainer_kwargs, without_probe_times


def test_bf16_mixed_on_cpu(lpl, tmp_path) -> None:
    cb = autolrs()
    model = make_module_class(lpl)()
    trainer = lpl.Trainer(callbacks=[cb], precision="bf16-mixed", **trainer_kwargs(tmp_path, max_steps=80))
    trainer.fit(model)
    assert len(cb.lrs) == trainer.global_step == 80
    assert all(len(h["trials"]) == 3 for h in cb.history[:-1])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_gradient_clipping_keeps_working(lpl, tmp_path) -> None:
    cls = make_module_class(lpl)
    norms: list[float] = []

    class Clipped(cls):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            norms.append(float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in self.parameters()]))))

    cb = autolrs()
    trainer = lpl.Trainer(callbacks=[cb], gradient_clip_val=0.01, **trainer_kwargs(tmp_path, max_steps=60))
    trainer.fit(Clipped())
    assert len(norms) == 60 and max(norms) <= 0.01 + 1e-6
    assert len(cb.lrs) == 60 and cb.history[0]["best_lr"] is not None


def test_grad_scaler_state_is_snapshotted_and_skipped_steps_do_not_count(lpl, tmp_path) -> None:
    """A real GradScaler on CPU (fp16 autocast): an overflow step is skipped by the scaler and not counted as a
    trial step; restoring the snapshot brings the scale back."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    cls = make_module_class(lpl)
    scales: dict[int, float] = {}

    class Overflow(cls):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * 1e30 if self.trainer.global_step == 2 else loss  # inf gradients in fp16 at step 2

        def on_train_batch_start(self, batch, batch_idx) -> None:
            scales[self.trainer.global_step] = float(self.trainer.precision_plugin.scaler.get_scale())

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    cb = autolrs()
    trainer = lpl.Trainer(callbacks=[cb], plugins=[plugin], **trainer_kwargs(tmp_path, max_steps=60))
    trainer.fit(Overflow())
    first = cb.history[0]["trials"][0]
    assert first["steps"] == 5 and cb.history[0]["trials"][1]["start_step"] == 6  # 6 steps taken, 5 counted
    assert scales[3] < scales[2] == 1024.0  # the scaler backed off after the overflow ...
    assert scales[6] == 1024.0  # ... and the restore before trial 2 brought the stage-start scale back
    assert len(cb.lrs) == trainer.global_step == 60


@pytest.mark.parametrize(("overflow_at", "probes"), [(2, False), (3, False), (2, True), (4, True)])
def test_a_trial_step_the_grad_scaler_skipped_is_taken_back_when_its_loss_is_read_late(
    lpl, tmp_path, monkeypatch, overflow_at: int, probes: bool
) -> None:
    """On an accelerator a trial step's loss is read one step late under a GradScaler too: whether the scaler skipped
    the step (its scale fell) is copied along with the loss instead of read in the step. A skipped step is taken back
    from its trial's count when the news arrives, so the trial still has 5 steps that updated the weights, as read at
    once (here forced for CPU losses). Step 3's news arrives after step 4 was planned as the trial's last. With
    validation probes (trials of 10 steps, a probe every 2nd), the step after a skipped one was planned to probe one
    step early: its probe is not recorded, and the trial's probes are where a loss read at once puts them. The scale
    grows every 2nd step (``growth_interval=2``): a scale that rose is no skip."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from lightning_autolrs import AutoLRS
    from lightning_autolrs._edge import LateLoss
    from lightning_autolrs.controller import StageController

    cls = make_module_class(lpl)

    class Overflow(cls):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * 1e30 if self.trainer.global_step == overflow_at else loss  # inf gradients in fp16

    flags: list[bool] = []  # the skip flag each late read carried
    real_read = LateLoss.read

    def read(self):
        value = real_read(self)
        flags.append(self.skipped)
        return value

    monkeypatch.setattr(AutoLRS, "_reads_late", staticmethod(lambda trainer: True))
    monkeypatch.setattr(LateLoss, "read", read)
    runs = []
    for can_wait in (True, False):
        if not can_wait:
            monkeypatch.setattr(StageController, "loss_can_wait", property(lambda self: False))
        flags.clear()
        lpl.seed_everything(0)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
        plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
        cb = autolrs(monitor="val_loss", tau=40) if probes else autolrs()
        trainer_kw = dict(limit_val_batches=2) if probes else {}
        trainer = lpl.Trainer(
            callbacks=[cb],
            plugins=[plugin],
            **trainer_kwargs(tmp_path, max_steps=60 if not probes else 100, **trainer_kw),
        )
        trainer.fit(Overflow())
        runs.append((cb, list(flags)))
    (late, late_flags), (now, now_flags) = runs
    trials = late.history[0]["trials"]
    tau_prime = 10 if probes else 5
    assert late.history[0]["signal"] == ("val_loss" if probes else "train_loss")
    assert trials[0]["steps"] == tau_prime and trials[1]["start_step"] == tau_prime + 1  # one step skipped, as at once
    assert now_flags == [] and late_flags.count(True) == 1 and len(late_flags) > 30
    assert late.lrs == now.lrs

    assert without_probe_times(late.history) == without_probe_times(now.history)
