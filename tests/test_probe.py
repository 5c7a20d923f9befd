"""The validation-loss signal: probes during trials, logging untouched, custom loss functions, errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_autolrs import AutoLRS
from lightning_autolrs.exceptions import UnsupportedSetupError
from lightning_autolrs.probe import ValidationProbe

from . import helpers
from .helpers import make_module_class, trainer_kwargs


def autolrs(**kw) -> AutoLRS:
    return helpers.autolrs(**{"tau": 64, "tau_max": 64, **kw})  # trials long enough for 8 probes


def test_val_loss_monitor_probes_every_trial(lpl, tmp_path) -> None:
    cls = make_module_class(lpl)
    calls: list[bool] = []

    class Counting(cls):
        def validation_step(self, batch, batch_idx):
            calls.append(self.training)
            return super().validation_step(batch, batch_idx)

    cb = autolrs(monitor="val_loss", val_batches=2)
    kw = trainer_kwargs(tmp_path, max_steps=100, limit_val_batches=1.0, check_val_every_n_epoch=100)
    model = Counting()
    trainer = lpl.Trainer(callbacks=[cb], **kw)
    trainer.fit(model)
    stage = cb.history[0]
    assert stage["signal"] == "val_loss" and stage["probe_seconds"] > 0
    tau_prime = stage["tau_prime"]  # 5 steps: a probe every step -> 5 probes per trial
    probes_per_trial = tau_prime // max(1, tau_prime // 5)
    assert probes_per_trial >= 5
    finished = [t for t in stage["trials"] if not t["diverged"]]
    # every trial's probes, and one of the stage-start model (the val set is a single batch of 128)
    assert len(calls) >= len(finished) * probes_per_trial + 1
    assert not any(calls)  # the module was in eval mode during every probe ...
    assert model.training  # ... and is back in train mode afterwards
    assert "val_loss" not in trainer.logged_metrics  # no validation loop ran, and the probe logged nothing


def test_auto_monitor_probes_whenever_there_is_validation_data(lpl, tmp_path) -> None:
    cb = autolrs()
    kw = trainer_kwargs(tmp_path, max_steps=100, limit_val_batches=1.0, check_val_every_n_epoch=100)
    lpl.Trainer(callbacks=[cb], **kw).fit(make_module_class(lpl)())
    assert cb.history[0]["signal"] == "val_loss" and cb.history[0]["probe_seconds"] > 0.0
    without = autolrs()
    lpl.Trainer(callbacks=[without], **trainer_kwargs(tmp_path, max_steps=100)).fit(make_module_class(lpl)())
    assert without.history[0]["signal"] == "train_loss" and without.history[0]["probe_seconds"] == 0.0


def test_val_loss_fn_overrides_validation_step(lpl, tmp_path) -> None:
    seen: list[int] = []

    def loss_fn(module, batch) -> torch.Tensor:
        x, y = batch
        seen.append(len(x))
        return torch.nn.functional.l1_loss(module(x), y)

    cb = autolrs(monitor="val_loss", val_batches=1, val_loss_fn=loss_fn)
    kw = trainer_kwargs(tmp_path, max_steps=100, limit_val_batches=1.0, check_val_every_n_epoch=100)
    lpl.Trainer(callbacks=[cb], **kw).fit(make_module_class(lpl)())
    assert seen and set(seen) == {128}
    assert cb.history[0]["signal"] == "val_loss"


def test_val_loss_without_val_data_is_rejected(lpl, tmp_path) -> None:
    trainer = lpl.Trainer(callbacks=[autolrs(monitor="val_loss")], **trainer_kwargs(tmp_path, max_steps=100))
    with pytest.raises(UnsupportedSetupError, match="no validation dataloader"):
        trainer.fit(make_module_class(lpl)())


def test_probe_reads_the_logged_loss_and_logs_nothing(lpl) -> None:
    cls = make_module_class(lpl)
    model = cls()  # its validation_step only logs "val_loss" and returns None
    x, y = model.val_set.tensors
    probe = ValidationProbe([(x[:64], y[:64]), (x[64:], y[64:])])
    expected = (
        float(torch.nn.functional.mse_loss(model(x[:64]), y[:64]))
        + float(torch.nn.functional.mse_loss(model(x[64:]), y[64:]))
    ) / 2
    assert probe(model) == pytest.approx(expected, rel=1e-6)
    assert "log" not in vars(model)  # the capture was removed again


def test_probe_without_any_loss_is_a_clear_error(lpl) -> None:
    cls = make_module_class(lpl)

    class Silent(cls):
        def validation_step(self, batch, batch_idx):
            return None

    x, y = Silent().val_set.tensors
    with pytest.raises(UnsupportedSetupError, match="val_loss_fn") as err:
        ValidationProbe([(x, y)])(Silent())
    assert "`monitor='auto'`" in str(err.value) and "`monitor='train_loss'`" in str(err.value)  # every way out


def test_probe_batches_come_from_the_val_dataloader(lpl, tmp_path) -> None:
    model = make_module_class(lpl)()
    trainer = lpl.Trainer(**trainer_kwargs(tmp_path, max_steps=1, limit_val_batches=1.0))
    trainer.fit(model)
    trainer.fit_loop.epoch_loop.val_loop.setup_data()
    probe = ValidationProbe.from_trainer(trainer, 1)
    assert probe is not None and len(probe.batches) == 1
    first = next(iter(DataLoader(model.val_set, batch_size=128)))
    assert torch.equal(probe.batches[0][0], first[0])


def test_probe_prefers_val_loss_over_other_logged_losses_and_passes_dataloader_idx(lpl) -> None:
    cls = make_module_class(lpl)
    seen: list[int] = []

    class Several(cls):
        def validation_step(self, batch, batch_idx, dataloader_idx):  # (Lightning's form with several val loaders)
            seen.append(dataloader_idx)
            x, y = batch
            self.log("val_kl_loss", torch.tensor(123.0))  # logged first: not the loss to judge trials on
            self.log("val/loss", torch.nn.functional.mse_loss(self(x), y))

    model = Several()
    x, y = model.val_set.tensors
    value = ValidationProbe([(x, y)])(model)  # it raised TypeError (dataloader_idx missing), then judged on 123
    assert seen == [0] and value == pytest.approx(float(torch.nn.functional.mse_loss(model(x), y)), rel=1e-6)


def test_probe_batches_take_the_precision_of_the_model(lpl, tmp_path) -> None:
    """Under ``precision="64-true"`` the model is float64: the probe's batches are converted as Lightning's own
    validation converts them (it raised "mat1 and mat2 must have the same dtype")."""
    cb = autolrs(monitor="val_loss", val_batches=1)
    kw = trainer_kwargs(tmp_path, max_steps=100, limit_val_batches=1.0, check_val_every_n_epoch=100)
    lpl.Trainer(callbacks=[cb], precision="64-true", **kw).fit(make_module_class(lpl)())
    trials = cb.history[0]["trials"]
    assert cb.history[0]["signal"] == "val_loss" and all(t["predicted_loss"] is not None for t in trials)


def test_probe_calls_a_step_without_dataloader_idx_as_lightning_does_with_one_loader(lpl) -> None:
    """``validation_step(self, *args, **kwargs)`` forwarding to a two-argument helper, one validation loader: Lightning
    calls it with (batch, batch_idx), and so does the probe."""
    cls = make_module_class(lpl)

    class Forwarding(cls):
        def validation_step(self, *args, **kwargs):
            return self._shared(*args, **kwargs)

        def _shared(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

    model = Forwarding()
    x, y = model.val_set.tensors
    assert ValidationProbe([(x, y)])(model) == pytest.approx(float(torch.nn.functional.mse_loss(model(x), y)))


def test_probe_takes_the_first_of_a_dict_of_validation_loaders(lpl, tmp_path) -> None:
    """A ``val_dataloader`` returning a dict of loaders (it enumerated the dict's keys as batches and failed)."""
    cls = make_module_class(lpl)
    seen: list[int] = []

    class TwoLoaders(cls):
        def val_dataloader(self):
            return {"a": DataLoader(self.val_set, batch_size=64), "b": DataLoader(self.val_set, batch_size=32)}

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            seen.append(dataloader_idx)
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

    cb = autolrs(monitor="val_loss", val_batches=1)
    kw = trainer_kwargs(tmp_path, max_steps=100, limit_val_batches=1.0, check_val_every_n_epoch=100)
    lpl.Trainer(callbacks=[cb], **kw).fit(TwoLoaders())
    assert cb.history[0]["signal"] == "val_loss" and seen and set(seen) == {0}
