"""Other budgets: ``AutoLRS()`` against the schedules one would use instead, at budgets other than the workloads' own
(short ones, where the budget leaves little room, and long ones, where three stages fit).

Below the budget a search needs (614 steps at the defaults with no range given) ``AutoLRS()`` does not search: it
warns once and trains a fixed schedule at the module's configured LR; a little above it, it searches in one or two
stages, and from 4 150 steps in three (τ, 2τ, 4τ; at the defaults with no range given). This benchmark trains the
quality benchmark's workloads (:data:`benchmarks.workloads.WORKLOADS`, their modules, data and validation sets) for
``--budgets`` optimizer steps each, with ``AutoLRS()`` at its defaults (validation data given to the Trainer, as in the
quality benchmark) and with three schedules at the configured LR: cosine with a 5 % warmup (the quality benchmark's
``cosine_configured``), a constant LR (``constant_configured``) and warmup-stable-decay with AutoLRS's final anneal
(``wsd_sqrt_configured``: 5 % warmup, the LR held, ``1 - sqrt(t)`` over the last 20 %). Issue #12 asks of that
schedule: never worse than cosine or a constant LR at the module's LR. One row per workload and budget: medians over
the seeds, and in how many seeds ``AutoLRS()`` ended at or below each baseline (the same seed's run: same data, same
initial weights).

``python -m benchmarks.short_budget`` runs it with the package it imports (``--kinds`` picks the rows; ``autolrs`` is
always among them).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from benchmarks import paired
except ImportError:  # run by path with an older checkout first on PYTHONPATH
    import paired  # type: ignore[no-redef]

#: The rows, by the names the table uses (cosine, constant and WSD at the module's configured LR).
KINDS = {"autolrs": "AutoLRS()", "cosine": "cosine", "constant": "constant", "wsd_sqrt": "WSD"}
BASELINES = ("cosine", "constant")


def run(task: dict[str, Any]) -> dict[str, Any]:
    """Train one run: ``task`` has ``workload``, ``kind`` (a key of :data:`KINDS`), ``seed`` and ``steps`` (the
    budget, in place of the workload's own)."""
    from benchmarks import workloads as w

    name, kind = task["workload"], task["kind"]
    own = w.WORKLOADS[name]
    workload = dataclasses.replace(own, budget=task["steps"])
    w.WORKLOADS[name] = workload  # (run_one reads the workload by name; this process runs one task at a time)
    try:
        job = {"workload": name, "kind": kind, "seed": task["seed"], "quick": False, "evals": 10}
        if kind == "autolrs":
            job.update(lr=None, autolrs_args=w.autolrs_kwargs("autolrs", workload, task["seed"], False))
        else:
            job["lr"] = workload.lr
        result = w.run_one(job)
    finally:
        w.WORKLOADS[name] = own
    out = {**task, "val_loss": result["final_loss"], "cpu": result["versions"]["cpu"]}
    if kind == "autolrs":
        out["stages"] = len(result["autolrs"]["stages"])
        out["search_steps"] = result["autolrs"]["search_steps"]
        # what the search found and chose: the range, and each stage's trials and pick
        out["autolrs"] = {k: result["autolrs"][k] for k in ("range_test", "found_range", "stages")}
    return out


def table(runs: list[dict[str, Any]], kinds: Sequence[str], command: str, started: str, wall_min: float) -> str:
    cpus = sorted({r["cpu"] for r in runs})
    others = [k for k in kinds if k != "autolrs"]  # AutoLRS() is paired with each
    both = all(b in kinds for b in BASELINES)  # issue #12's two baselines, cosine and a constant LR
    seeds = sorted({r["seed"] for r in runs})
    searched = sum(r.get("stages", 0) > 0 for r in runs if r["kind"] == "autolrs")
    total = sum(r["kind"] == "autolrs" for r in runs)
    lines = [
        "# Other budgets (`python -m benchmarks.short_budget`)",
        "",
        f"Command: `{command}`",
        "",
        f"Written by that command, started {started}, {wall_min:.1f} min wall, on {', '.join(cpus)}; package: "
        f"{paired.package()}. Seeds {', '.join(map(str, seeds))}; final validation loss on the workload's whole "
        f"validation set (the quality benchmark's evaluation). AutoLRS() runs that searched: {searched} of {total} "
        "(below 614 steps none does). "
        "cosine: a 5 % linear warmup, then a half cosine to 0; constant: the configured LR throughout; WSD: a 5 % "
        "linear warmup, the LR held, then 1 - sqrt(t) to 0 over the last 20 % (AutoLRS's final anneal); all three at "
        "the module's configured LR. Medians over the seeds; a count pairs each AutoLRS() run with the same seed's.",
        "",
        "| workload | budget | "
        + " | ".join([f"{KINDS[k]}: median" for k in kinds] + [f"AutoLRS() at or below {KINDS[b]}" for b in others])
        + (" | at or below both |" if both else " |"),
        "| --- | ---: | " + " | ".join("---:" for _ in (*kinds, *others)) + (" | ---: |" if both else " |"),
    ]
    totals = {b: 0 for b in others}
    both_total = count = 0
    for name in dict.fromkeys(r["workload"] for r in runs):
        for budget in sorted({r["steps"] for r in runs if r["workload"] == name}):
            by = {(r["kind"], r["seed"]): r["val_loss"] for r in runs if r["workload"] == name and r["steps"] == budget}
            cells = []
            for k in kinds:
                values = [by[k, s] for s in seeds if by.get((k, s)) is not None]
                cells.append(paired.fmt(statistics.median(values)) if values else "—")
            n = both_ok = 0
            ok = {b: 0 for b in others}
            for s in seeds:
                a = by.get(("autolrs", s))
                base = {b: by.get((b, s)) for b in others}
                if a is None or any(v is None for v in base.values()):
                    continue
                n += 1
                for b, v in base.items():
                    ok[b] += a <= v
                both_ok += all(a <= base[b] for b in BASELINES if b in base)
            for b in others:
                totals[b] += ok[b]
            both_total += both_ok
            count += n
            row = cells + [f"{ok[b]} of {n}" for b in others] + ([f"{both_ok} of {n}"] if both else [])
            lines.append(f"| {name} | {budget} | " + " | ".join(row) + " |")
    if others:
        summary = [f"{KINDS[b]} in {totals[b]} of {count}" for b in others]
        if both:
            summary.append(f"cosine and constant both in {both_total} of {count}")
        lines += ["", "All rows: AutoLRS() at or below " + ", ".join(summary) + "."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.workloads import WORKLOADS

    p = argparse.ArgumentParser(prog="python -m benchmarks.short_budget", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--budgets", type=int, nargs="+", default=[300, 500])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a smoke run: one workload (friedman3_sgd), 100 steps, seed 0")
    p.add_argument("--out", type=Path, default=paired.DEFAULT_OUT, help="folder for short_budget.md and .json")
    args = p.parse_args(argv)
    if args.quick:
        args.workloads, args.budgets, args.seeds = ["friedman3_sgd"], [100], [0]
    kinds = ["autolrs", *(k for k in args.kinds if k != "autolrs")]
    tasks = [
        {"workload": name, "kind": kind, "seed": s, "steps": budget}
        for name in args.workloads
        for budget in args.budgets
        for s in args.seeds
        for kind in kinds
    ]
    runs, started, minutes = paired.run_all(run, tasks, args.workers)
    command = paired.command("short_budget", argv, by_path=__spec__ is None)
    paired.write(args.out, "short_budget", table(runs, kinds, command, started, minutes), runs)
    return 0


if __name__ == "__main__":
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
