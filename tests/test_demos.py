"""Tests of the bundled demo workloads (``lightning_autolrs.demos``): data, short real fits and the registry."""

from __future__ import annotations

import inspect
import math
import sysconfig
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

import lightning_autolrs.demos as demos
from lightning_autolrs.demos import (
    DEMOS,
    CharDataModule,
    CharTransformerLM,
    DigitsCNN,
    DigitsDataModule,
    get_demo,
)
from lightning_autolrs.demos import charlm as charlm_mod
from lightning_autolrs.demos import digits as digits_mod
from lightning_autolrs.exceptions import InvalidArgumentError

TRAINER_KW: dict[str, Any] = dict(
    accelerator="cpu",
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)


def _validate(model: pl.LightningModule, dm: pl.LightningDataModule, tmp_path: Path) -> dict[str, float]:
    trainer = pl.Trainer(default_root_dir=str(tmp_path), **TRAINER_KW)
    (metrics,) = trainer.validate(model, datamodule=dm, verbose=False)
    return metrics


def _fit(model: pl.LightningModule, dm: pl.LightningDataModule, tmp_path: Path, steps: int) -> pl.Trainer:
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path), max_steps=steps, num_sanity_val_steps=0, limit_val_batches=0, **TRAINER_KW
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == steps
    return trainer


# --------------------------------------------------------------------------------------------------- digits data


@pytest.fixture(scope="module")
def digits_dm() -> DigitsDataModule:
    dm = DigitsDataModule()
    dm.setup("fit")
    return dm


def test_digits_datamodule_shapes_and_ranges(digits_dm: DigitsDataModule) -> None:
    assert len(digits_dm.train_set) + len(digits_dm.val_set) == 1797
    assert len(digits_dm.val_set) == pytest.approx(0.2 * 1797, abs=1)
    loader = digits_dm.train_dataloader()
    assert len(loader) == len(digits_dm.train_set) // 64 == 22  # drop_last: every step a full batch
    x, y = next(iter(loader))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5  # scaled from 0..16
    assert set(digits_dm.val_set.tensors[1].tolist()) == set(range(10))
    xv, yv = next(iter(digits_dm.val_dataloader()))
    assert xv.shape == (64, 1, 8, 8) and yv.dtype == torch.int64


def test_digits_split_is_deterministic_disjoint_and_stratified(digits_dm: DigitsDataModule) -> None:
    train, val = digits_dm.train_indices, digits_dm.val_indices
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1797))
    again = DigitsDataModule(seed=0)
    again.setup()
    assert torch.equal(again.train_indices, train) and torch.equal(again.val_indices, val)
    assert torch.equal(again.val_set.tensors[0], digits_dm.val_set.tensors[0])
    other = DigitsDataModule(seed=1)
    other.setup()
    assert not torch.equal(other.val_indices, val)
    # stratified: every class is ~20 % held out
    counts = torch.bincount(digits_dm.val_set.tensors[1], minlength=10).float()
    totals = counts + torch.bincount(digits_dm.train_set.tensors[1], minlength=10).float()
    assert torch.all((counts / totals - 0.2).abs() < 0.02)


def test_digits_train_loader_shuffle_is_seeded(digits_dm: DigitsDataModule) -> None:
    first = [y for _, y in digits_dm.train_dataloader()]
    second = [y for _, y in DigitsDataModule(seed=0).train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], digits_dm.train_set.tensors[1][:64])  # actually shuffled


# --------------------------------------------------------------------------------------------------- charlm data


@pytest.fixture(scope="module")
def char_dm() -> CharDataModule:
    dm = CharDataModule()
    dm.setup("fit")
    return dm


def test_charlm_text_comes_from_stdlib_sources(char_dm: CharDataModule) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    paths = charlm_mod.stdlib_paths()
    assert paths and all(p.resolve().is_relative_to(stdlib) and p.suffix == ".py" for p in paths)
    assert list(charlm_mod.STDLIB_FILES) == sorted(charlm_mod.STDLIB_FILES)
    text = char_dm.text
    assert len(text) == 400_000
    first = paths[0].read_bytes().replace(b"\r\n", b"\n")
    assert text.startswith(first[:10_000])
    assert b"import " in text and b"def " in text and b"class " in text
    # same text run-to-run, and max_chars truncates a prefix of it
    again = CharDataModule()
    again.setup()
    assert len(again.text) == len(text) and again.text == text
    small = CharDataModule(max_chars=5_000)
    small.setup()
    assert small.text == text[:5_000]


def test_charlm_split_and_batches(char_dm: CharDataModule) -> None:
    bs, b = char_dm.block_size, char_dm.batch_size
    train, val = char_dm.train_data, char_dm.val_data
    # contiguous split: train is the head, val the tail, no byte in both
    assert len(train) + len(val) == len(char_dm.text)
    assert bytes(train.tolist()) + bytes(val.tolist()) == char_dm.text
    assert len(val) == pytest.approx(0.1 * len(char_dm.text), abs=1)

    loader = char_dm.train_dataloader()
    assert char_dm.samples_per_epoch == len(train) // bs
    assert len(loader) == char_dm.samples_per_epoch // b
    x, y = next(iter(loader))
    assert x.shape == y.shape == (b, bs) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one character
    assert 0 <= int(x.min()) and int(x.max()) < 256
    x2, _ = next(iter(CharDataModule().train_dataloader()))
    assert torch.equal(x, x2)  # seeded random windows
    x3, _ = next(iter(CharDataModule(seed=1).train_dataloader()))
    assert not torch.equal(x, x3)

    # validation: non-overlapping windows in order, covering the val text
    xs, ys = zip(*char_dm.val_dataloader())
    xv, yv = torch.cat(xs), torch.cat(ys)
    n = (len(val) - 1) // bs
    assert xv.shape == (n, bs)
    assert torch.equal(xv.reshape(-1), val[: n * bs].long())
    assert torch.equal(yv.reshape(-1), val[1 : n * bs + 1].long())


# --------------------------------------------------------------------------------------------------- short fits


def test_digits_short_fit_learns(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    dm, model = DigitsDataModule(), DigitsCNN()
    before = _validate(model, dm, tmp_path)
    assert before["val_loss"] > 2.0  # ~ln 10 untrained
    trainer = _fit(model, dm, tmp_path, steps=60)
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    after = _validate(model, dm, tmp_path)
    assert after["val_loss"] < before["val_loss"] - 1.5
    assert after["val_acc"] > 0.85
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.05
    assert not trainer.lr_scheduler_configs


def test_charlm_short_fit_learns(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    dm, model = CharDataModule(batch_size=16, max_chars=120_000), CharTransformerLM()
    before = _validate(model, dm, tmp_path)
    assert before["val_loss"] == pytest.approx(charlm_mod.UNIFORM_LOSS, abs=0.3)  # ~uniform over 256 bytes
    trainer = _fit(model, dm, tmp_path, steps=50)
    assert float(trainer.callback_metrics["train_loss"]) < 4.0
    after = _validate(model, dm, tmp_path)
    assert after["val_loss"] < 3.5 and after["val_loss"] < before["val_loss"] - 1.5
    assert isinstance(trainer.optimizers[0], torch.optim.AdamW) and not trainer.lr_scheduler_configs
    text = model.generate("def ", max_new_chars=20)
    assert text.startswith("def ") and len(text.encode()) >= 20


def test_charlm_model_is_causal_and_checks_length() -> None:
    torch.manual_seed(0)
    model = CharTransformerLM(d_model=32, n_heads=2, block_size=16).eval()
    x = torch.randint(0, 256, (2, 16))
    x2 = x.clone()
    x2[:, 10:] = (x2[:, 10:] + 1) % 256
    out, out2 = model(x), model(x2)
    assert out.shape == (2, 16, 256)
    assert torch.allclose(out[:, :10], out2[:, :10], atol=1e-5)  # the future does not leak into the past
    assert not torch.allclose(out[:, 10:], out2[:, 10:])
    with pytest.raises(InvalidArgumentError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


# --------------------------------------------------------------------------------------------------- registry, API


def test_registry_and_get_demo() -> None:
    assert DEMOS == {"digits": (DigitsCNN, DigitsDataModule), "charlm": (CharTransformerLM, CharDataModule)}
    assert get_demo("digits") == (DigitsCNN, DigitsDataModule)
    assert get_demo("charlm") == (CharTransformerLM, CharDataModule)
    for model_cls, dm_cls in DEMOS.values():
        assert issubclass(model_cls, pl.LightningModule) and issubclass(dm_cls, pl.LightningDataModule)


def test_get_demo_unknown_name_lists_valid_names() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        get_demo("nope")
    message = str(info.value)
    assert "nope" in message and "digits" in message and "charlm" in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("cls", [DigitsDataModule, DigitsCNN, CharDataModule, CharTransformerLM])
def test_init_args_are_typed_defaulted_documented_and_saved(cls: type) -> None:
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    doc = inspect.getdoc(cls) or ""
    assert params and "Args:" in doc
    for p in params:
        assert p.annotation is not inspect.Parameter.empty, f"{cls.__name__}.{p.name} has no type hint"
        assert p.default is not inspect.Parameter.empty, f"{cls.__name__}.{p.name} has no default"
        assert f"    {p.name}: " in doc, f"{cls.__name__}.{p.name} is not documented"
    obj = cls()
    assert dict(obj.hparams) == {p.name: p.default for p in params}


def test_module_docstrings_describe_the_demos() -> None:
    assert "digits" in (digits_mod.__doc__ or "").lower() and "CNN" in (digits_mod.__doc__ or "")
    assert "standard-library" in (charlm_mod.__doc__ or "") and "Transformer" in (charlm_mod.__doc__ or "")
    assert '"digits"' in (demos.__doc__ or "") and '"charlm"' in (demos.__doc__ or "")


def test_invalid_arguments_raise() -> None:
    with pytest.raises(InvalidArgumentError, match="val_fraction"):
        DigitsDataModule(val_fraction=1.5)
    with pytest.raises(InvalidArgumentError, match="n_heads"):
        CharTransformerLM(d_model=30, n_heads=4)
    dm = CharDataModule(block_size=64, max_chars=100)
    with pytest.raises(InvalidArgumentError, match="max_chars"):
        dm.setup()
    assert math.isclose(charlm_mod.UNIFORM_LOSS, math.log(256))
