"""Very small batches: ``AutoLRS()`` at its defaults against cosine at the module's LR when batch noise is large.

The task is the quality benchmark's Friedman regression MLP (Adam, lr=1e-3, :class:`~benchmarks.workloads.DiabetesMLP`
on :class:`~benchmarks.workloads.FriedmanDataModule`) trained for ``--steps`` steps with batches of ``--batch-sizes``
samples (the validation dataloader uses the same batch size, as that data module's does), validation data given to the
Trainer. One row per batch size and seed: the final validation MSE (the whole validation set) of ``AutoLRS()`` and of
cosine with a 5 % warmup at the module's LR, and what the LR range test did (its steps, whether it stopped early, the
``max_lr`` it found, the largest over the smallest loss of its first quarter: the batch noise on the untrained
model), the first stage's diverged trials and exploit fallbacks.

``python -m benchmarks.small_batches`` runs it with the package it imports. To measure another version of the package,
put that checkout first on the path and run this file by its path, e.g. ``PYTHONPATH=<checkout> python
benchmarks/small_batches.py --out <folder>``: the table names the package it ran (its directory and git commit).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from benchmarks import paired
except ImportError:  # run by path with an older checkout first on PYTHONPATH (its `benchmarks` lacks the module)
    import paired  # type: ignore[no-redef]

LR = 1e-3  # DiabetesMLP's configured LR


def run(task: dict[str, Any]) -> dict[str, Any]:
    """Train one run: ``task`` has ``kind`` (``"autolrs"`` or ``"cosine"``), ``batch_size``, ``seed``, ``steps``,
    ``n_samples``."""
    import lightning.pytorch as pl
    import torch

    from benchmarks.workloads import DiabetesMLP, FriedmanDataModule, quiet
    from lightning_autolrs import AutoLRS

    quiet()
    torch.set_num_threads(1)
    steps = task["steps"]
    pl.seed_everything(task["seed"], verbose=False)
    dm = FriedmanDataModule(batch_size=task["batch_size"], n_samples=task["n_samples"], seed=task["seed"])
    model = DiabetesMLP(lr=LR)
    cb = AutoLRS(seed=task["seed"], verbose=False) if task["kind"] == "autolrs" else None
    if cb is None:
        model = paired.cosine_twin(model, steps)
    start = time.perf_counter()
    paired.fit(model, dm, steps, [] if cb is None else [cb])
    x, y = dm.val_set.tensors
    model.eval()
    with torch.no_grad():
        val = float(torch.nn.functional.mse_loss(model(x), y))
    out = {**task, "val_loss": val, "wall_s": time.perf_counter() - start}
    if cb is not None:
        rt = cb.range_test_result
        if rt is not None:
            quarter = max(1, cb.range_test_steps // 4)
            first = [v for v in rt["losses"][:quarter] if v is not None]
            out["range_test"] = {
                "steps": rt["steps"],
                "stopped_early": rt["stopped_early"],
                "max_lr": rt["max_lr"],
                "spread": max(first) / min(first) if first and min(first) > 0 else None,
            }
        stage0 = cb.history[0] if cb.history else {"trials": [], "fallbacks": []}
        out["stage0_diverged"] = sum(bool(t["diverged"]) for t in stage0["trials"])
        out["stage0_fallbacks"] = len(stage0["fallbacks"])
    return out


def table(runs: list[dict[str, Any]], command: str, started: str, wall_min: float, package: str) -> str:
    groups = [(b, paired.pairs(runs, "batch_size", b)) for b in sorted({r["batch_size"] for r in runs})]
    steps = runs[0]["steps"]
    lines = [
        "# Very small batches (`python -m benchmarks.small_batches`)",
        "",
        f"Command: `{command}`",
        "",
        f"Written by that command, started {started}, {wall_min:.1f} min wall; package: {package}. Friedman "
        f"regression MLP (Adam, lr={LR:g}), {steps} steps, validation data given to the Trainer (batches of the "
        "training batch size). Final validation MSE on the whole validation set.",
        "",
        "| batch size | seed | AutoLRS() | cosine at the module's LR | AutoLRS ÷ cosine | range test: steps, "
        "stopped early | found max_lr | first-quarter max / min | stage 0: diverged trials, fallbacks |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b, paired_runs in groups:
        for s, a, c in paired_runs:
            rt = a.get("range_test") or {}
            lines.append(
                f"| {b} | {s} | {paired.fmt(a['val_loss'])} | {paired.fmt(c['val_loss'])} | "
                f"{a['val_loss'] / c['val_loss']:.2f} | {rt.get('steps', '—')}, "
                f"{'yes' if rt.get('stopped_early') else 'no'} | {paired.fmt(rt.get('max_lr'), 3)} | "
                f"{paired.fmt(rt.get('spread'), 3)} | {a.get('stage0_diverged', 0)}, {a.get('stage0_fallbacks', 0)} |"
            )
    lines += paired.summary("batch size", groups)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.small_batches", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a smoke run: 700 steps on 600 samples, batches of 8, seed 0")
    p.add_argument("--out", type=Path, default=paired.DEFAULT_OUT, help="folder for small_batches.md and .json")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.seeds, args.steps = [8], [0], 700
    tasks = [
        {"kind": kind, "batch_size": b, "seed": s, "steps": args.steps, "n_samples": 600 if args.quick else 6000}
        for b in args.batch_sizes
        for s in args.seeds
        for kind in ("autolrs", "cosine")
    ]
    runs, started, minutes = paired.run_all(run, tasks, args.workers)
    command = paired.command("small_batches", argv, by_path=__spec__ is None)
    paired.write(args.out, "small_batches", table(runs, command, started, minutes, paired.package()), runs)
    return 0


if __name__ == "__main__":
    # run by its path: `benchmarks` importable, after a checkout put first on PYTHONPATH (whose package then trains)
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
