"""Per-step path benchmark: AutoLRS's two per-step hooks on quiet steps, this checkout against another, paired.

The per-step path (the callback's ``on_train_batch_start`` and ``on_train_batch_end`` on the steps without a GP
decision, a forecast or a snapshot copy; issue 14's target ≤ 20 µs median) runs between training steps, on caches the
training step has just filled with other things, so its time depends on the machine and its day more than on small
code changes (README, "Overhead": 17–19 µs on one machine, 28–43 µs on another). What a change to that path is worth
is therefore measured here against a baseline checkout in the same session, in alternating runs:

* Each run trains issue 14's MLP case (MLP 256-512-512-10 with Adam, τ = 400, k = 10, τ' = 40, no validation, a CSV
  logger; :mod:`benchmarks.overhead`) for ``--steps`` steps with one torch thread, in a fresh process whose
  ``lightning_autolrs`` is imported from the checkout under test (the process checks where it came from).
* Per step it times the two hooks (their sum is the per-step path, as in :mod:`benchmarks.overhead`) and, inside
  them, the controller's ``begin_step`` and ``end_step`` (wrapped: the wrappers' own cost is in both checkouts' figures
  alike). It keeps the exploit phase's quiet steps, what most steps of a long run are: those planned by the plan the
  controller keeps for the steps of an exploit phase that ask for nothing (:meth:`~lightning_autolrs.controller.
  StageController.begin_step`), without a GP decision, a forecast or a snapshot copy in the hooks. Left out: the
  search's steps, the first stage's exploit warmup (its LR changes every step: no plan is kept), the final anneal.
  In this case (``--steps 800``) that leaves about 140 steps per run, 499-639.
* ``--reps`` runs per checkout, the checkouts' order alternating from repeat to repeat; reported per checkout: the
  median over its runs of each run's median, and the paired ratio (this checkout ÷ baseline, per repeat) as median
  and min-max.

Run: ``python -m benchmarks.step_path --baseline DIR`` (DIR: another checkout, e.g. ``git worktree add DIR <commit>``;
about 20 s per run). Writes ``step_path.md`` into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "measure"]

PARTS = ("path", "start_hook", "end_hook", "begin_step", "end_step")


def measure(steps: int) -> dict[str, Any]:
    """One run in this process (whose ``lightning_autolrs`` is the checkout under test): the per-step times, in
    nanoseconds, of the exploit phase's quiet steps (see the module docstring)."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import CSVLogger

    import lightning_autolrs
    from benchmarks.overhead import ISSUE_CASE, _Instrument, _IssueMLP, wrap_event_sources
    from benchmarks.workloads import quiet
    from lightning_autolrs import AutoLRS

    quiet()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    module, loader = _IssueMLP.build(0)
    cb = AutoLRS(min_lr=1e-4, max_lr=1e-1, seed=0, verbose=False, save_files=False, **ISSUE_CASE)
    clock = time.perf_counter_ns
    times: dict[str, list[int]] = {p: [] for p in PARTS}
    now: dict[str, int] = {}
    inst = _Instrument()  # counts GP decisions, forecasts and snapshot copies (`events` below: how many so far)

    def events() -> int:
        return sum(inst.calls.values())

    def timed(obj: Any, name: str) -> None:
        original = getattr(obj, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = clock()
            try:
                return original(*args, **kwargs)
            finally:
                now[name] = clock() - t

        setattr(obj, name, wrapper)

    on_train_start, start_hook, end_hook = cb.on_train_start, cb.on_train_batch_start, cb.on_train_batch_end

    def train_start(trainer: Any, pl_module: Any) -> None:
        on_train_start(trainer, pl_module)
        wrap_event_sources(cb, inst)
        timed(cb.controller, "begin_step")
        timed(cb.controller, "end_step")

    def on_start(*args: Any, **kwargs: Any) -> None:
        now.clear()
        now["events"] = events()
        t = clock()
        start_hook(*args, **kwargs)
        now["start_hook"] = clock() - t
        c = cb.controller
        now["kept"] = c is not None and c._plan is not None and c._plan is c._quiet  # the plan of the step before

    def on_end(*args: Any, **kwargs: Any) -> None:
        t = clock()
        end_hook(*args, **kwargs)
        now["end_hook"] = clock() - t
        c = cb.controller
        exploit = now["kept"] and c.phase == "exploit" and not c._anneal.active
        if exploit and events() == now["events"] and "begin_step" in now and "end_step" in now:
            now["path"] = now["start_hook"] + now["end_hook"]
            for p in PARTS:
                times[p].append(now[p])

    cb.on_train_start, cb.on_train_batch_start, cb.on_train_batch_end = train_start, on_start, on_end
    with tempfile.TemporaryDirectory(prefix="autolrs-step-path-") as tmp:
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=CSVLogger(tmp),
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            num_sanity_val_steps=0, callbacks=[cb],
        )  # fmt: skip
        trainer.fit(module, train_dataloaders=loader)
    return {"package": str(Path(lightning_autolrs.__file__).resolve().parent.parent), "times": times}


def _run(root: Path, steps: int) -> dict[str, Any]:
    """One run in a fresh process whose ``lightning_autolrs`` comes from ``root``."""
    here = Path(__file__).resolve().parent.parent
    # this checkout's benchmark modules first (they import the package lazily), then the package from `root`
    code = (
        "import json, sys; import benchmarks.overhead, benchmarks.workloads; from benchmarks.step_path import measure; "
        f"sys.path.insert(0, {str(root)!r}); print('RESULT' + json.dumps(measure({steps})))"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=here, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"the run under {root} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    result = json.loads(line[len("RESULT") :])
    if Path(result["package"]) != root.resolve():
        raise RuntimeError(f"the run under {root} imported lightning_autolrs from {result['package']}")
    return result


def _us(ns: float) -> str:
    return f"{ns / 1000:.1f}"


def report(rows: dict[str, list[dict[str, float]]], ratios: list[float], command: str, header: str) -> str:
    lines = ["# Per-step path (`python -m benchmarks.step_path`)", "", f"Command: `{command}`", "", header, ""]
    lines += [
        "| checkout | runs | quiet exploit steps per run | per-step path: median µs (min-max over runs) | start hook | "
        "end hook | controller `begin_step` | controller `end_step` |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in rows.items():
        cells = []
        for p in PARTS:
            values = [r[p] for r in runs]
            med = statistics.median(values)
            cells.append(f"{_us(med)} ({_us(min(values))}–{_us(max(values))})" if p == "path" else _us(med))
        lines.append(
            f"| {name} | {len(runs)} | {int(statistics.median(r['n'] for r in runs))} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "Paired ratio of the per-step path, this checkout ÷ baseline (per repeat): median "
        f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}; {len(ratios)} repeats).",
        "",
        "Each run's figure is the median over its quiet exploit steps (planned by the kept plan of an exploit phase: "
        "no search step, no step of the exploit warmup or of the final anneal; no GP decision, forecast or snapshot "
        "copy in the hooks); the table shows the median over runs. The hooks' times are "
        "those of the per-step path of `benchmarks.overhead`; `begin_step` and `end_step` are measured inside them "
        "(through wrappers, whose cost both checkouts carry alike).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_path", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="another checkout of the repository to compare against")
    parser.add_argument("--reps", type=int, default=8, help="runs per checkout (default 8; the order alternates)")
    parser.add_argument("--steps", type=int, default=800, help="training steps per run (default 800)")
    parser.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    here, baseline = Path(__file__).resolve().parent.parent, Path(args.baseline).resolve()
    if not (baseline / "lightning_autolrs" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline!r} is not a checkout of this repository (no lightning_autolrs/ in it)")
    start = time.perf_counter()
    names = {"this checkout": here, "baseline": baseline}
    rows: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    ratios = []
    for rep in range(args.reps):
        order = list(names) if rep % 2 == 0 else list(reversed(names))
        got = {}
        for name in order:
            times = _run(names[name], args.steps)["times"]
            got[name] = {p: statistics.median(times[p]) for p in PARTS} | {"n": len(times["path"])}
            rows[name].append(got[name])
        ratios.append(got["this checkout"]["path"] / got["baseline"]["path"])
        sys.stdout.write(f"[{time.perf_counter() - start:6.1f}s] repeat {rep + 1}: ratio {ratios[-1]:.3f}\n")
    revs = {}
    for name, root in names.items():
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lightning_autolrs"], cwd=root,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        revs[name] = (rev.stdout.strip() or "?") + (" with uncommitted changes" if dirty else "")
    from benchmarks.workloads import cpu_model

    command = "python -m benchmarks.step_path" + ("" if not argv else " " + shlex.join(argv))
    header = (
        f"Written by that command on {time.strftime('%Y-%m-%d %H:%M')}: {platform.machine()} ({cpu_model()}), "
        f"{os.cpu_count()} CPU cores (shared with other jobs), load average {os.getloadavg()[0]:.2f} at the end, "
        f"{(time.perf_counter() - start) / 60:.1f} min wall. This checkout: {revs['this checkout']}; baseline: "
        f"{revs['baseline']}. {args.steps} steps per run, one torch thread."
    )
    text = report(rows, ratios, command, header)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_path.md").write_text(text)
    sys.stdout.write("\n" + text + f"\nwrote {out / 'step_path.md'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
