"""Shared builders of the tests: tiny real LightningModules, Trainer arguments, an AutoLRS factory, runs and sample
schedules. Test modules import them from here (``from .helpers import ...``); ``conftest.py`` holds fixtures only."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autolrs import AutoLRS
from lightning_autolrs.controller import StageController
from lightning_autolrs.schedule import Schedule

#: The AutoLRS arguments most callback tests share: a given range, three short trials, quiet.
AUTOLRS_DEFAULTS: dict[str, Any] = dict(
    min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, tau_max=40, search_ratio=0.25, seed=0, verbose=False
)
FULL_BATCH_STEPS = 120  # fit_full_batch: full batch, one step per epoch; a checkpoint every 12 epochs (= steps)


def without_probe_times(history: list[dict]) -> list[dict]:
    """``history`` without each stage's ``probe_seconds``: the wall time of its validation probes differs from run to
    run (and from rank to rank), everything else of two runs that train alike is equal."""
    return [{k: v for k, v in h.items() if k != "probe_seconds"} for h in history]


def autolrs(**kw: Any) -> AutoLRS:
    """An :class:`AutoLRS` with :data:`AUTOLRS_DEFAULTS`, overridden by ``kw``."""
    return AutoLRS(**{**AUTOLRS_DEFAULTS, **kw})


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


def fit_full_batch(
    lpl: ModuleType,
    root: Path,
    cb: AutoLRS,
    ckpt_path: str | None = None,
    save_every_epoch: bool = False,
    every: int = 12,
    callbacks: tuple[Any, ...] = (),
    accelerator: str = "cpu",
    validation: bool = False,
    optimizer: str = "sgd",
) -> tuple[Any, Any]:
    """Fit the tiny regressor full-batch (so the data a step sees does not depend on where a resumed run restarts) for
    :data:`FULL_BATCH_STEPS` steps, optionally saving a checkpoint every ``every`` steps under ``root / "ckpt"``, with
    ``callbacks`` after ``cb``; with ``validation`` the Trainer has validation data (AutoLRS probes it; Lightning's
    validation loop does not run within the budget); ``optimizer``: ``"sgd"`` or ``"adamw"``."""
    lpl.seed_everything(0)
    model = make_module_class(lpl)(shuffle=False, batch_size=384, optimizer=optimizer)
    callbacks = (cb, *callbacks)
    if save_every_epoch:
        every_epoch = lpl.callbacks.ModelCheckpoint(
            dirpath=root / "ckpt",
            filename="{step}",
            every_n_epochs=every,
            save_top_k=-1,
            save_on_train_epoch_end=True if validation else None,  # (validation never runs: save at the epoch's end)
        )
        callbacks = (*callbacks, every_epoch)
    checkpointing = save_every_epoch or any(isinstance(c, lpl.callbacks.Checkpoint) for c in callbacks)
    kw = trainer_kwargs(
        root,
        max_steps=FULL_BATCH_STEPS,
        enable_checkpointing=checkpointing,
        deterministic=True,
        accelerator=accelerator,
        **(dict(limit_val_batches=1.0, check_val_every_n_epoch=10 * FULL_BATCH_STEPS) if validation else {}),
    )
    trainer = lpl.Trainer(callbacks=list(callbacks), **kw)
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, model


def sample() -> Schedule:
    stages = [
        {
            "stage": 0,
            "start_step": 2,
            "tau": 4,
            "tau_prime": 1,
            "lr_range": [0.01, 1.0],
            "best_lr": 0.1,
            "trials": [
                {
                    "lr": 0.5,
                    "start_step": 2,
                    "predicted_loss": None,
                    "final_loss": None,
                    "steps": 1,
                    "diverged": True,
                    "forecast": None,
                },
                {
                    "lr": 0.1,
                    "start_step": 3,
                    "predicted_loss": 0.25,
                    "final_loss": 0.3,
                    "steps": 1,
                    "diverged": False,
                    "forecast": "short",
                },
            ],
            "exploit_start": 4,
            "exploit_steps": 4,
            "search_steps": 2,
            "fallbacks": [],
        },
    ]
    lrs = [0.05, 0.1, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1]
    return Schedule(lrs=lrs, stages=stages, settings={"warmup_steps": 2}, losses=[1.0, 0.9, None, 0.8] + [0.5] * 4)


# -------------------------------------------------------------------------------- the controller, no Trainer
class Quadratic:
    """Noisy gradient descent on 0.5·Σ h_i w_i²; diverges for lr > 2 / max(h) = 0.2. Executes a controller's plans."""

    def __init__(self, seed: int = 0, nan_above: float | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.h = torch.logspace(-1, 1, 16, dtype=torch.float64)
        self.w = torch.randn(16, generator=g, dtype=torch.float64) * 3
        self.gen = g
        self.saved: torch.Tensor | None = None
        self.best: torch.Tensor | None = None
        self.best_restores = 0
        self.inputs: list[torch.Tensor] = []  # weights each step started from (after restores)
        self.outputs: list[torch.Tensor] = []  # weights after each step
        self.restores = 0
        self.captures = 0
        self.nan_above = nan_above

    def run(self, c: StageController, steps: int) -> None:
        for _ in range(steps):
            plan = c.begin_step()
            if plan.save_best:
                self.best = self.w.clone()
            if plan.restore_best:
                assert self.best is not None and not plan.restore
                self.w.copy_(self.best)
                self.best_restores += 1
            if plan.restore:
                assert self.saved is not None
                self.w.copy_(self.saved)
                self.restores += 1
            if plan.capture:
                self.saved = self.w.clone()
                self.captures += 1
            self.inputs.append(self.w.clone())
            noise = torch.randn(16, generator=self.gen, dtype=torch.float64) * 0.1
            loss = float(0.5 * (self.h * (self.w + noise) ** 2).sum())
            self.w -= plan.lr * self.h * (self.w + noise)
            if self.nan_above is not None and plan.lr > self.nan_above:
                loss = math.nan
                self.w.fill_(math.nan)
            self.outputs.append(self.w.clone())
            c.end_step(loss)


def make(total: int | None = 1000, min_lr: float = 1e-3, max_lr: float = 1.0, **kw) -> StageController:
    args = dict(num_trials=4, tau=40, tau_max=160, search_ratio=0.25, total_steps=total, seed=0)
    args.update(kw)
    return StageController(min_lr, max_lr, **args)


def clone_gen(gen: torch.Generator) -> torch.Generator:
    out = torch.Generator()
    out.set_state(gen.get_state())
    return out


def memorizer_parts() -> tuple[TensorDataset, TensorDataset, nn.Module]:
    """Few noisy training samples (64 of 320) and a wide net: a model that fits the noise, whose validation loss
    turns up (the early anneal's tests, in one process and under DDP). The net draws from the global RNG."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 8, generator=g)
    y = x[:, :1] + 0.8 * torch.randn(320, 1, generator=g)
    net = nn.Sequential(nn.Linear(8, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1))
    return TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:]), net
