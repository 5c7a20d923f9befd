"""Run a short AutoLRS fit on 2 CPU processes (gloo) and dump each rank's view of the schedule as JSON.

Usage: python tests/scripts/ddp_fit.py STRATEGY OUT_DIR [NAN_RANK NAN_STEP | range]
(``range``: no min_lr/max_lr, so the LR range test runs first, and trials may be aborted, stages warm-started)
Used by tests/test_callback_distributed.py (a DDP launch re-runs this script per rank, so it cannot run inside pytest).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as lpl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autolrs import AutoLRS


class Regressor(lpl.LightningModule):
    def __init__(self, nan_rank: int = -1, nan_step: int = -1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
        self.nan_rank, self.nan_step = nan_rank, nan_step

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if self.global_rank == self.nan_rank and self.trainer.global_step == self.nan_step:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(512, 8, generator=g)
        y = torch.tanh(x @ torch.randn(8, 1, generator=g))
        return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


class Dump(lpl.Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_fit_end(self, trainer, pl_module) -> None:
        cb = next(c for c in trainer.callbacks if isinstance(c, AutoLRS))
        doc = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "lrs": cb.lrs,
            "losses": cb.controller.losses,
            "history": cb.history,
            "range_test": cb.range_test_result,
            "params": [p.detach().flatten().tolist() for p in pl_module.parameters()],
        }
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(doc))


def main() -> None:
    strategy, out = sys.argv[1], sys.argv[2]
    nan_rank, nan_step = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (-1, -1)
    range_test = sys.argv[3:] == ["range"]
    torch.set_num_threads(1)
    lpl.seed_everything(0)
    args = dict(num_trials=3, tau=20, tau_max=40, search_ratio=0.25, seed=0, verbose=False)
    if range_test:
        cb = AutoLRS(range_test_steps=20, abort_trials=True, warm_start=True, **args)
    else:
        cb = AutoLRS(min_lr=1e-3, max_lr=0.5, **args)
    trainer = lpl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=90 if range_test else 70,
        callbacks=[cb, Dump(out)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regressor(nan_rank, nan_step))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # tear the gloo process group down before the interpreter does: left to interpreter exit, its threads were
        # destroyed while joinable now and then ("terminate called without an active exception", SIGABRT)
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
