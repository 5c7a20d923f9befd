"""Shared fixtures: tiny real LightningModules for both flavours (``lightning.pytorch``, ``pytorch_lightning``)."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*number of training batches.*")


def regression_data(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    y = torch.tanh(x @ w) + 0.05 * torch.randn(n, 1, generator=g)
    return x, y


def make_module_class(pl: ModuleType) -> type:
    """A small MLP regression LightningModule of the given Lightning flavour."""

    class TinyRegressor(pl.LightningModule):
        def __init__(
            self,
            lr: float = 0.05,
            optimizer: str = "sgd",
            two_groups: bool = False,
            batch_size: int = 32,
            shuffle: bool = True,
        ):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
            x, y = regression_data()
            self.train_set = TensorDataset(x[:384], y[:384])
            self.val_set = TensorDataset(x[384:], y[384:])
            self.group_lrs: list[list[float]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.mse_loss(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self(x), y))

        def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
            self.group_lrs.append([g["lr"] for g in optimizer.param_groups])

        def configure_optimizers(self) -> Any:
            lr = self.hparams.lr
            if self.hparams.two_groups:
                params = [
                    {"params": self.net[0].parameters(), "lr": lr},
                    {"params": self.net[2].parameters(), "lr": lr / 10},
                ]
            else:
                params = self.parameters()
            if self.hparams.optimizer == "adamw":
                return torch.optim.AdamW(params, lr=lr)
            return torch.optim.SGD(params, lr=lr, momentum=0.9)

        def train_dataloader(self) -> DataLoader:
            g = torch.Generator().manual_seed(0)
            return DataLoader(
                self.train_set, batch_size=self.hparams.batch_size, shuffle=self.hparams.shuffle, generator=g
            )

        def val_dataloader(self) -> DataLoader:
            return DataLoader(self.val_set, batch_size=128)

    return TinyRegressor


FLAVOURS = ["lightning.pytorch", "pytorch_lightning"]


@pytest.fixture(params=FLAVOURS)
def pl(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


@pytest.fixture
def lpl() -> ModuleType:
    return importlib.import_module("lightning.pytorch")


def trainer_kwargs(tmp_path: Any, **kw: Any) -> dict[str, Any]:
    base = dict(
        accelerator="cpu",
        devices=1,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    base.update(kw)
    return base


@pytest.fixture(autouse=True)
def _fixed_seed() -> None:
    """Every test starts from the same global RNG state, whatever ran before it."""
    import random

    random.seed(0)
    torch.manual_seed(0)
