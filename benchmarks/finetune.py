"""Fine-tuning: ``AutoLRS()`` at its defaults against cosine at the module's LR, from weights already trained.

Each run first trains the module for ``--pretrain`` steps (cosine with a 5 % warmup at its configured LR, the seed's
batches), then trains ``--steps`` more from those weights with a fresh optimizer: with ``AutoLRS()`` (its LR range test
then sweeps a model that is already trained) or with cosine at the module's LR again. Workloads: the quality
benchmark's digits MLP (SGD, lr=0.05) and Friedman regression MLP (Adam, lr=1e-3), validation data given to the
Trainer. One row per workload and seed: the validation loss after pretraining and after each fine-tuning run (the
whole validation set), and what the range test did (its steps, whether it stopped early, the ``max_lr`` it found).

``python -m benchmarks.finetune`` runs it with the package it imports; another version of the package runs it by path
with its checkout first on ``PYTHONPATH`` (as ``benchmarks/small_batches.py``).
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

WORKLOADS = ("digits_mlp", "friedman")


def run(task: dict[str, Any]) -> dict[str, Any]:
    """Pretrain, then fine-tune: ``task`` has ``workload``, ``kind`` (``"autolrs"`` or ``"cosine"``), ``seed``,
    ``pretrain``, ``steps``, ``quick``."""
    import lightning.pytorch as pl
    import torch

    from benchmarks.workloads import DiabetesMLP, DigitsMLP, FriedmanDataModule, quiet
    from lightning_autolrs import AutoLRS
    from lightning_autolrs.demos import DigitsDataModule

    quiet()
    torch.set_num_threads(1)
    seed = task["seed"]

    def make() -> tuple[Any, Any]:
        if task["workload"] == "digits_mlp":
            return DigitsMLP(lr=0.05), DigitsDataModule(batch_size=64, seed=seed)
        samples = 600 if task["quick"] else 6000
        return DiabetesMLP(lr=1e-3), FriedmanDataModule(batch_size=64, seed=seed, n_samples=samples)

    def val_loss(model: Any, dm: Any) -> float:
        dm.setup()
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for x, y in dm.val_dataloader():
                total += float(type(model).loss(model(x), y)) * len(y)
                count += len(y)
        return total / count

    start = time.perf_counter()
    pl.seed_everything(seed, verbose=False)
    model, dm = make()
    model = paired.cosine_twin(model, task["pretrain"])
    paired.fit(model, dm, task["pretrain"], [])
    out: dict[str, Any] = {**task, "pretrained_loss": val_loss(model, dm)}
    pl.seed_everything(seed + 1000, verbose=False)  # the fine-tuning run's batches: the same for both kinds
    tuned, dm = make()
    tuned.load_state_dict(model.state_dict())
    if task["kind"] == "cosine":
        tuned = paired.cosine_twin(tuned, task["steps"])
        paired.fit(tuned, dm, task["steps"], [])
    else:
        cb = AutoLRS(seed=seed, verbose=False)
        paired.fit(tuned, dm, task["steps"], [cb])
        rt = cb.range_test_result
        if rt is not None:
            out["range_test"] = {"steps": rt["steps"], "stopped_early": rt["stopped_early"], "max_lr": rt["max_lr"]}
        out["stage_lrs"] = [h["best_lr"] for h in cb.history]
    out["val_loss"] = val_loss(tuned, dm)
    out["wall_s"] = time.perf_counter() - start
    return out


def table(runs: list[dict[str, Any]], command: str, started: str, wall_min: float, package: str) -> str:
    groups = [(w, paired.pairs(runs, "workload", w)) for w in WORKLOADS if any(r["workload"] == w for r in runs)]
    first = runs[0]
    lines = [
        "# Fine-tuning (`python -m benchmarks.finetune`)",
        "",
        f"Command: `{command}`",
        "",
        f"Written by that command, started {started}, {wall_min:.1f} min wall; package: {package}. Each run: "
        f"{first['pretrain']} steps of cosine at the module's LR, then {first['steps']} steps from those weights. "
        "Final validation loss on the whole validation set.",
        "",
        "| workload | seed | after pretraining | AutoLRS() | cosine at the module's LR | AutoLRS ÷ cosine | "
        "range test: steps, stopped early | found max_lr | stage LRs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for w, paired_runs in groups:
        for s, a, c in paired_runs:
            rt = a.get("range_test") or {}
            stages = " → ".join(f"{lr:.3g}" for lr in a.get("stage_lrs", []) if lr is not None)
            lines.append(
                f"| {w} | {s} | {a['pretrained_loss']:.4g} | {a['val_loss']:.4g} | {c['val_loss']:.4g} | "
                f"{a['val_loss'] / c['val_loss']:.3f} | {rt.get('steps', '—')}, "
                f"{'yes' if rt.get('stopped_early') else 'no'} | {rt.get('max_lr', float('nan')):.3g} | {stages} |"
            )
    lines += paired.summary("workload", groups)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain", type=int, default=600)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a smoke run: Friedman on 600 samples, seed 0, 600 + 700 steps")
    p.add_argument("--out", type=Path, default=paired.DEFAULT_OUT, help="folder for finetune.md and .json")
    args = p.parse_args(argv)
    if args.quick:
        args.workloads, args.seeds, args.pretrain, args.steps = ["friedman"], [0], 600, 700
    tasks = [
        {"workload": w, "kind": k, "seed": s, "pretrain": args.pretrain, "steps": args.steps, "quick": args.quick}
        for w in args.workloads
        for s in args.seeds
        for k in ("autolrs", "cosine")
    ]
    runs, started, minutes = paired.run_all(run, tasks, args.workers)
    command = paired.command("finetune", argv, by_path=__spec__ is None)
    paired.write(args.out, "finetune", table(runs, command, started, minutes, paired.package()), runs)
    return 0


if __name__ == "__main__":
    # run by its path: `benchmarks` importable, after a checkout put first on PYTHONPATH (whose package then trains)
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
