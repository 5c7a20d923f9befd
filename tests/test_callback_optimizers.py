"""AutoLRS on top of different optimizers: Adam, AdamW, SGD, and as an LR multiplier on schedule-free AdamW and
Prodigy (their whole state, group hyperparameters included, is part of the stage snapshot)."""

from __future__ import annotations

import pytest
import torch

from lightning_autolrs import AutoLRS

from .helpers import make_module_class, trainer_kwargs


def build(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "schedulefree":
        import schedulefree

        return schedulefree.AdamWScheduleFree(params, lr=lr)
    import prodigyopt

    return prodigyopt.Prodigy(params, lr=lr)


@pytest.mark.parametrize(
    ("name", "lr_range"),
    [
        ("adam", (1e-4, 0.1)),
        ("adamw", (1e-4, 0.1)),
        ("sgd", (1e-3, 0.5)),
        ("schedulefree", (1e-4, 0.1)),
        ("prodigy", (0.1, 10.0)),  # Prodigy's lr multiplies its own step-size estimate d
    ],
)
def test_trials_restore_exactly_on_every_optimizer(lpl, tmp_path, name, lr_range) -> None:
    cls = make_module_class(lpl)
    starts: dict[int, list[torch.Tensor]] = {}
    groups: dict[int, dict] = {}

    class Model(cls):
        def configure_optimizers(self):
            return build(name, self.parameters(), lr_range[0] * 10)

        def on_train_epoch_start(self) -> None:  # schedule-free optimizers need train mode while training
            opt = self.optimizers().optimizer
            if hasattr(opt, "train"):
                opt.train()

        def on_train_batch_start(self, batch, batch_idx) -> None:
            starts[self.trainer.global_step] = [p.detach().clone() for p in self.parameters()]
            opt = self.optimizers().optimizer
            groups[self.trainer.global_step] = {
                k: v for k, v in opt.param_groups[0].items() if k not in ("params", "lr")
            }

    lo, hi = lr_range
    cb = AutoLRS(min_lr=lo, max_lr=hi, num_trials=3, tau=20, search_ratio=0.25, seed=0, verbose=False)
    model = Model()
    trainer = lpl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=70))
    trainer.fit(model)
    assert len(cb.lrs) == trainer.global_step == 70
    stage = cb.history[0]
    first = stage["start_step"]
    for t in stage["trials"][1:]:  # every later trial starts from the stage snapshot, optimizer state included
        assert all(torch.equal(a, b) for a, b in zip(starts[first], starts[t["start_step"]]))
        assert groups[t["start_step"]] == groups[first]
    assert all(torch.isfinite(p).all() for p in model.parameters())
