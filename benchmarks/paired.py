"""What the paired benchmarks share (:mod:`benchmarks.small_batches`, :mod:`benchmarks.finetune`): ``AutoLRS()`` at its
defaults against cosine at the module's LR in a set-up the quality benchmark does not cover, each runnable against
another version of the package by path (``PYTHONPATH=<checkout> python benchmarks/<name>.py``), so a table names the
command and the package that wrote it.

A benchmark run by path with an older checkout first on ``PYTHONPATH`` imports that checkout's ``benchmarks`` package,
which may not have this module: it then imports this file from its own folder (``import paired``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
Run = dict[str, Any]  # a task, and the run it became (json-able)


def package() -> str:
    """The package this process trains with: its directory and git commit (``+`` when its tree has changes)."""
    import lightning_autolrs

    root = Path(lightning_autolrs.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "."], cwd=root).returncode != 0
    except OSError:
        return str(root)
    commit = head.stdout.strip() if head.returncode == 0 else "unknown"
    return f"{root} at {commit}{' + uncommitted changes' if dirty else ''}"


def command(name: str, argv: Sequence[str] | None, by_path: bool) -> str:
    """The command line that ran benchmark ``name``: ``python -m benchmarks.<name> ...``, or, run by its path
    (``by_path``), ``[PYTHONPATH=...] python benchmarks/<name>.py ...``."""
    words = list(sys.argv[1:] if argv is None else argv)
    if by_path:
        where = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
        return " ".join([f"{where}python benchmarks/{name}.py", *words])
    return " ".join([f"python -m benchmarks.{name}", *words])


def cosine_twin(model: Any, steps: int) -> Any:
    """A copy of ``model`` (its hyperparameters and weights) whose optimizer follows the quality benchmark's cosine
    with a 5 % warmup over ``steps`` steps, at the module's configured LR."""
    import torch

    from benchmarks.workloads import _warmup_cosine

    class Cosine(type(model)):  # type: ignore[misc]
        def configure_optimizers(self) -> Any:
            opt = super().configure_optimizers()
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(steps))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    twin = Cosine(**model.hparams)
    twin.load_state_dict(model.state_dict())
    return twin


def fit(model: Any, datamodule: Any, steps: int, callbacks: list[Any]) -> None:
    """Train ``model`` for ``steps`` steps on CPU, quietly (no logger, checkpoints or progress bar)."""
    import lightning.pytorch as pl

    pl.Trainer(
        max_steps=steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    ).fit(model, datamodule)


def run_all(run: Callable[[Run], Run], tasks: list[Run], workers: int) -> tuple[list[Run], str, float]:
    """Run every task (in ``workers`` spawned processes when more than one): the runs, the start time and the wall
    minutes."""
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            runs = pool.map(run, tasks, chunksize=1)
    else:
        runs = [run(t) for t in tasks]
    return runs, started, (time.perf_counter() - t0) / 60


def fmt(x: float | None, digits: int = 4) -> str:
    """A loss or LR for a table: ``digits`` significant digits, ``—`` when missing or not finite."""
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def pairs(runs: list[Run], group: str, key: Any) -> list[tuple[int, Run, Run]]:
    """``(seed, autolrs run, cosine run)`` of every seed with both runs among ``runs`` whose ``group`` field is
    ``key`` (e.g. ``group="batch_size"``, ``key=8``), by seed."""
    by = {(r["kind"], r["seed"]): r for r in runs if r[group] == key}
    seeds = sorted({seed for _, seed in by})
    return [(s, by["autolrs", s], by["cosine", s]) for s in seeds if ("autolrs", s) in by and ("cosine", s) in by]


def summary(label: str, groups: list[tuple[Any, list[tuple[int, Run, Run]]]]) -> list[str]:
    """The closing table of a paired benchmark: per group (``label``: what its key is, e.g. ``"batch size"``; its
    :func:`pairs`), how many runs end with AutoLRS at or below cosine, and both medians."""
    align = "---:" if all(isinstance(key, int | float) for key, _ in groups) else "---"  # (numbers to the right)
    lines = [
        "",
        f"| {label} | AutoLRS at or below cosine | median AutoLRS | median cosine |",
        f"| {align} | ---: | ---: | ---: |",
    ]
    for key, paired_runs in groups:
        if not paired_runs:
            continue
        autolrs = [a["val_loss"] for _, a, _ in paired_runs]
        cosine = [c["val_loss"] for _, _, c in paired_runs]
        below = sum(a <= c for a, c in zip(autolrs, cosine))
        lines.append(
            f"| {key} | {below} of {len(paired_runs)} | {fmt(statistics.median(autolrs))} | "
            f"{fmt(statistics.median(cosine))} |"
        )
    return lines


def write(out: Path, name: str, text: str, runs: list[Run]) -> None:
    """Write ``<name>.md`` (the table) and ``<name>.json`` (the runs) into the folder ``out``, and print the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps(runs, indent=1))
    print(text)
