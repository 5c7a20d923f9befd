"""Run a short AutoLRS fit on 2 CPU processes (gloo) and dump each rank's view of the schedule as JSON.

Usage: python tests/scripts/ddp_fit.py STRATEGY OUT_DIR [NAN_RANK NAN_STEP | range | count | overfit]
(``range``: no min_lr/max_lr, so the LR range test runs first; ``count``: with validation data, so trials are judged
on validation probes, and every ``torch.distributed`` call made inside AutoLRS's per-step hooks is recorded per step,
with the pickled size of what a broadcast sends; ``overfit``: ``AutoLRS()`` at its defaults on a model that overfits,
whose final anneal begins early)
Used by tests/test_callback_distributed.py (a DDP launch re-runs this script per rank, so it cannot run inside pytest).
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import lightning.pytorch as lpl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autolrs import AutoLRS
from tests.helpers import memorizer_parts  # (the ranks run with this checkout on PYTHONPATH)


class Regressor(lpl.LightningModule):
    adam = False  # Adam instead of SGD: the first stage's exploit phase warms up

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
        if self.adam:
            return torch.optim.Adam(self.parameters(), lr=0.01)
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(512, 8, generator=g)
        y = torch.tanh(x @ torch.randn(8, 1, generator=g))
        return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


class WithValidation(Regressor):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def val_dataloader(self):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(128, 8, generator=g)
        return DataLoader(TensorDataset(x, torch.tanh(x.sum(dim=1, keepdim=True))), batch_size=32)


class Memorizer(lpl.LightningModule):
    """Few training samples, a wide net and noisy targets (``overfit``): the exploit phase overfits, the final anneal
    begins early, and the hold after it probes on."""

    def __init__(self) -> None:
        super().__init__()
        self.train_set, self.val_set, self.net = memorizer_parts()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=4)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=32)


_COLLECTIVES = ("all_reduce", "broadcast", "broadcast_object_list", "all_gather", "all_gather_object", "barrier")


class CountCollectives(lpl.Callback):
    """Records the ``torch.distributed`` calls AutoLRS makes in its per-step hooks, one list per optimizer step."""

    def __init__(self) -> None:
        self.steps: list[list[str]] = []
        self.broadcast_bytes: list[int] = []
        self._current: list[str] | None = None

    def setup(self, trainer, pl_module, stage) -> None:
        for name in _COLLECTIVES:
            original = getattr(torch.distributed, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                if self._current is not None:
                    self._current.append(_name)
                    if _name == "broadcast_object_list":
                        self.broadcast_bytes.append(len(pickle.dumps(args[0][0])))
                return _original(*args, **kwargs)

            setattr(torch.distributed, name, counted)

    def on_train_start(self, trainer, pl_module) -> None:
        cb = next(c for c in trainer.callbacks if isinstance(c, AutoLRS))
        start, end = cb.on_train_batch_start, cb.on_train_batch_end

        def on_start(*args, **kwargs):
            self._current = []
            start(*args, **kwargs)

        def on_end(*args, **kwargs):
            end(*args, **kwargs)
            self.steps.append(self._current or [])
            self._current = None

        cb.on_train_batch_start, cb.on_train_batch_end = on_start, on_end


class Dump(lpl.Callback):
    def __init__(self, out: str, counter: CountCollectives | None = None) -> None:
        self.out = out
        self.counter = counter

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
            "late_reads": cb._late_reads,
        }
        if self.counter is not None:
            doc["collectives"] = self.counter.steps
            doc["broadcast_bytes"] = self.counter.broadcast_bytes
            doc["state_bytes"] = len(pickle.dumps(cb.controller.state_dict()))
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(doc))

    def teardown(self, trainer, pl_module, stage) -> None:
        # The last hook every rank runs (after on_fit_end; no collective follows it, in ddp_spawn's workers either):
        # tear the gloo process group down here, before the interpreter does. Left to interpreter exit (Lightning's
        # atexit handler), its threads were now and then destroyed while joinable ("terminate called without an active
        # exception", SIGABRT at a rank's exit: 1 of 22 ddp_spawn runs, where only that handler destroyed it).
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def main() -> None:
    strategy, out, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    if "late" in extra:  # read exploit losses one step late, as on an accelerator (a CPU loss is read at once)
        extra.remove("late")
        AutoLRS._reads_late = staticmethod(lambda trainer: True)  # type: ignore[method-assign]
    if "adam" in extra:
        extra.remove("adam")
        Regressor.adam = True
    nan_rank, nan_step = (int(extra[0]), int(extra[1])) if len(extra) > 1 else (-1, -1)
    range_test = extra == ["range"]
    count = extra == ["count"]
    overfit = extra == ["overfit"]
    torch.set_num_threads(1)
    lpl.seed_everything(0)
    args = dict(num_trials=3, tau=20, tau_max=40, search_ratio=0.25, seed=0, verbose=False)
    if overfit:  # the defaults, as a user's run
        cb = AutoLRS(verbose=False)
    elif range_test:
        cb = AutoLRS(range_test_steps=20, **args)
    else:
        cb = AutoLRS(min_lr=1e-3, max_lr=0.5, **args)
    counter = CountCollectives() if count else None
    trainer = lpl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=1000 if overfit else 90 if range_test else 70,
        callbacks=[cb, Dump(out, counter)] + ([counter] if counter else []),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        # count: validation data, so trials are judged on probes (whose values join the step's all-reduce)
        **({"limit_val_batches": 4, "num_sanity_val_steps": 0} if count else {}),
        **({"check_val_every_n_epoch": 100000, "num_sanity_val_steps": 0} if overfit else {}),
    )
    trainer.fit(Memorizer() if overfit else WithValidation() if count else Regressor(nan_rank, nan_step))


if __name__ == "__main__":
    main()
