"""Memory and checkpoint-size overhead of AutoLRS on the bundled demos.

For each demo it trains with AutoLRS, writes a checkpoint inside the second stage's search, and reports:

- the bytes of parameters + buffers and of optimizer state (what a snapshot must copy);
- ``StateSnapshot.nbytes`` (the extra memory AutoLRS holds: one copy of the above);
- the size of a Lightning checkpoint written in the middle of a search with the stage snapshot
  (``checkpoint_snapshot=True``, the default) and without it.

Run: ``python -m benchmarks.memory [--out benchmarks/results]``; writes ``memory.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_autolrs import AutoLRS
from lightning_autolrs.demos import get_demo


class _SaveMidSearch(pl.Callback):
    """Writes a checkpoint at ``step`` (inside the first search) and records its size and the snapshot's."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path
        self.checkpoint_bytes = self.snapshot_bytes = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if trainer.global_step == self.step:
            cb = next(c for c in trainer.callbacks if isinstance(c, AutoLRS))
            assert cb.phase == "search"
            trainer.save_checkpoint(self.path)
            self.checkpoint_bytes = self.path.stat().st_size
            self.snapshot_bytes = cb._snapshot.nbytes if cb._snapshot is not None else 0


def measure(demo: str, keep_snapshot: bool, workdir: Path) -> dict[str, float]:
    model_cls, data_cls = get_demo(demo)
    pl.seed_everything(0)
    model, data = model_cls(), data_cls()
    cb = AutoLRS(num_trials=4, tau=40, search_ratio=0.25, checkpoint_snapshot=keep_snapshot, verbose=False)
    # stage 1 (tau 80, trials of 20 steps) searches steps 80..159: step 95 is inside its first trial, when the
    # optimizer already has state (stage 0 captured before the first step, with empty optimizer state)
    saver = _SaveMidSearch(95, workdir / f"{demo}-{keep_snapshot}.ckpt")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=400,
        callbacks=[cb, saver],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data)
    opt = trainer.optimizers[0]
    model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    opt_bytes = sum(
        v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)
    )
    return {
        "model_bytes": model_bytes,
        "optimizer_bytes": opt_bytes,
        "snapshot_bytes": saver.snapshot_bytes,
        "checkpoint_bytes": saver.checkpoint_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for memory.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for demo in ("digits", "charlm"):
            with_snap = measure(demo, True, Path(tmp))
            without = measure(demo, False, Path(tmp))
            rows.append((demo, with_snap, without))
    mib = 1024 * 1024
    lines = [
        "# Memory and checkpoint overhead (`python -m benchmarks.memory`)",
        "",
        "| demo | params+buffers | optimizer state | snapshot (extra memory) | checkpoint mid-search, with snapshot | "
        "without snapshot |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for demo, w, wo in rows:
        lines.append(
            f"| {demo} | {w['model_bytes'] / mib:.2f} MiB | {w['optimizer_bytes'] / mib:.2f} MiB | "
            f"{w['snapshot_bytes'] / mib:.2f} MiB | {w['checkpoint_bytes'] / mib:.2f} MiB | "
            f"{wo['checkpoint_bytes'] / mib:.2f} MiB |"
        )
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
