"""Per-step path benchmark: AutoLRS's two per-step hooks on quiet steps, this checkout against another, paired.

The per-step path (the callback's ``on_train_batch_start`` and ``on_train_batch_end`` on the steps without a GP
decision, a forecast or a snapshot copy; issue 14's target ≤ 20 µs median) runs between training steps, on caches the
training step has just filled with other things, so its time depends on the machine and its day more than on small
code changes (README, "Overhead": 17–19 µs on one machine, 28–43 µs on another). What a change to that path is worth
is therefore measured here against a baseline checkout in the same session, in alternating runs:

* Each run trains one of :mod:`benchmarks.overhead`'s cases for ``--steps`` steps with one torch thread, in a fresh
  process whose ``lightning_autolrs`` is imported from the checkout under test (the process checks where it came
  from): ``--case mlp`` (default), issue 14's MLP case (MLP 256-512-512-10 with Adam, τ = 400, k = 10, τ' = 40, no
  validation, a CSV logger; 800 steps by default), or ``--case charlm``, the char LM with AutoLRS's defaults on the
  quality benchmark's LR range (no validation, a CSV logger; 600 steps by default), where the per-step path is slowest
  (the hooks run on caches a larger model's step has just filled).
* Per step it times the two hooks (their sum is the per-step path, as in :mod:`benchmarks.overhead`) and, inside them,
  the controller's ``begin_step`` and ``end_step`` (wrapped: the wrappers' own cost is in both checkouts' figures
  alike), and labels the step by its kind: ``quiet exploit`` (planned by the plan the controller keeps for the steps of
  an exploit phase that ask for nothing, :meth:`~lightning_autolrs.controller.StageController.begin_step`), ``exploit
  warmup`` (an exploit step without the kept plan, or of the ramp of the first stage's exploit warmup with an
  Adam-family optimizer, whose LR changes every step), ``anneal`` (the final anneal), ``search`` and ``range
  test/warmup``. From stop 50 on the callback takes most of these steps in quiet runs (on CPU:
  :meth:`~lightning_autolrs.controller.StageController.quiet_run`): they call neither controller method, and the run's
  last step hands all their losses to the controller at once, one ``begin_step`` and ``end_step`` per step inside its
  end hook; the two parts are summed over their calls in the step, and a column of each run's mean per-step path
  carries that last step's work, which the medians do not reflect. A step is labelled by the LR its plan set (the
  controller's open plan is the run's first). Steps with a GP decision, a forecast or a snapshot copy in the hooks (a
  trial's end) are left out. The per-step path reported is, with ``--select quiet`` (default), that of the quiet
  exploit steps, what most steps of a long run are (in the MLP case at 800 steps about 140 per run, 499-639); with
  ``--select all``, that of every step left, which is :mod:`benchmarks.overhead`'s per-step figure. Each kind's median
  is reported besides.
* ``--reps`` runs per checkout, the checkouts' order alternating from repeat to repeat; reported per checkout: the
  median over its runs of each run's median, and the paired ratio (this checkout ÷ baseline, per repeat) as median
  and min-max.
* ``--floor`` adds a third process per repeat, timed the same way: the same case with, instead of AutoLRS, a callback
  whose hooks do only what any callback that sets the LR from the step's loss must do (set every param group's LR,
  read the step's loss to the host), over all its steps. It is the per-step path's floor on that machine that day
  (how much of the figure is the hooks' own work, and how much the place they run in: right after a training step,
  on caches it has just filled); reported as a row, and this checkout's per-step path ÷ the floor per repeat.
  ``--baseline .`` (this checkout against itself) measures the method's own spread.

Run: ``python -m benchmarks.step_path --baseline DIR`` (DIR: another checkout, e.g. ``git worktree add DIR <commit>``;
about 20 s per run in the MLP case, 15 s in the char LM's). Writes ``step_path.md`` (``step_path_<case>_<select>.md``
for another case or selection) into ``--out`` (default ``benchmarks/results``).
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
KINDS = ("quiet exploit", "exploit warmup", "anneal", "search", "range test/warmup")
CASES = {"mlp": 800, "charlm": 600}  # the case and its default number of steps


def _kind(controller: Any, kept: bool, lr: float) -> str:
    """The kind of the step just planned at ``lr`` (see the module docstring)."""
    if controller._anneal.active:
        return "anneal"
    if controller.phase == "exploit":  # (the exploit warmup's ramp: a plan below the LR in use)
        return "quiet exploit" if kept and lr == controller._lr else "exploit warmup"
    return "search" if controller.phase == "search" else "range test/warmup"


def measure(steps: int, case: str = "mlp", floor: bool = False) -> dict[str, Any]:
    """One run in this process (whose ``lightning_autolrs`` is the checkout under test): the per-step times, in
    nanoseconds, of the steps without a GP decision, a forecast or a snapshot copy, and each step's kind (see the
    module docstring); with ``floor``, of every step of the floor callback instead of AutoLRS."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import CSVLogger

    import lightning_autolrs
    from benchmarks.overhead import _Instrument, build_case, wrap_event_sources
    from benchmarks.workloads import quiet
    from lightning_autolrs import AutoLRS

    quiet()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    module, fit_kwargs, autolrs_kwargs = build_case(case, 0)
    clock = time.perf_counter_ns
    times: dict[str, list[int]] = {p: [] for p in (PARTS[:3] if floor else PARTS)}
    kinds: list[str] = []

    if floor:

        class Floor(pl.Callback):
            """Sets the LR and reads the step's loss: the least a per-step LR callback does (timed by itself)."""

            def on_train_start(self, trainer: Any, pl_module: Any) -> None:
                self.groups = trainer.optimizers[0].param_groups
                self.lr = self.groups[0]["lr"]

            def on_train_batch_start(self, *args: Any) -> None:
                t = clock()
                for group in self.groups:
                    group["lr"] = self.lr
                self.start = clock() - t

            def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any) -> None:
                t = clock()
                loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
                self.loss = float(loss.item())
                end = clock() - t
                for part, value in zip(PARTS, (self.start + end, self.start, end)):
                    times[part].append(value)
                kinds.append("floor")

        callbacks: list[pl.Callback] = [Floor()]
    else:
        cb = AutoLRS(**autolrs_kwargs, seed=0, verbose=False, save_files=False)
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
                finally:  # (summed: the steps of a quiet run reach the controller together at its last step)
                    now[name] = now.get(name, 0) + clock() - t

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
            # the controller as the hooks left it (`cb.controller` would hand it a quiet run's losses first)
            c = cb.__dict__.get("_controller", cb.__dict__.get("controller"))
            kept = c is not None and c._plan is not None and c._plan is c._quiet  # the plan of the step before
            applied = cb._applied  # (the step's plan: in a quiet run the controller's is the run's first)
            now["kind"] = _kind(c, kept, applied.lr) if c is not None and applied is not None else ""

        def on_end(*args: Any, **kwargs: Any) -> None:
            t = clock()
            end_hook(*args, **kwargs)
            now["end_hook"] = clock() - t
            if now["kind"] and events() == now["events"]:
                now["path"] = now["start_hook"] + now["end_hook"]
                for p in PARTS:
                    times[p].append(now.get(p, 0))  # (a step of a quiet run calls neither)
                kinds.append(now["kind"])

        cb.on_train_start, cb.on_train_batch_start, cb.on_train_batch_end = train_start, on_start, on_end
        callbacks = [cb]
    with tempfile.TemporaryDirectory(prefix="autolrs-step-path-") as tmp:
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=CSVLogger(tmp),
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            num_sanity_val_steps=0, callbacks=callbacks,
        )  # fmt: skip
        trainer.fit(module, **fit_kwargs)
    return {"package": str(Path(lightning_autolrs.__file__).resolve().parent.parent), "times": times, "kinds": kinds}


def _summary(result: dict[str, Any], select: str) -> dict[str, float]:
    """One run's medians: each part over the selected steps, and the per-step path of each kind of step."""
    times, kinds = result["times"], result["kinds"]
    keep = [i for i, k in enumerate(kinds) if select == "all" or k in ("quiet exploit", "floor")]
    got = {p: statistics.median(times[p][i] for i in keep) for p in PARTS if p in times} | {"n": len(keep)}
    got["mean"] = statistics.fmean(times["path"][i] for i in keep)
    for kind in KINDS:
        path = [times["path"][i] for i, k in enumerate(kinds) if k == kind]
        if path:
            got[kind] = statistics.median(path)
            got[kind + " n"] = len(path)
    return got


def _run(root: Path, steps: int, case: str, floor: bool = False) -> dict[str, Any]:
    """One run in a fresh process whose ``lightning_autolrs`` comes from ``root``."""
    here = Path(__file__).resolve().parent.parent
    # this checkout's benchmark modules first (they import the package lazily), then the package from `root`
    code = (
        "import json, sys; import benchmarks.overhead, benchmarks.workloads; from benchmarks.step_path import measure; "
        f"sys.path.insert(0, {str(root)!r}); print('RESULT' + json.dumps(measure({steps}, {case!r}, {floor!r})))"
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


def report(
    rows: dict[str, list[dict[str, float]]],
    ratios: list[float],
    command: str,
    header: str,
    select: str = "quiet",
    floor_ratios: Sequence[float] = (),
) -> str:
    lines = ["# Per-step path (`python -m benchmarks.step_path`)", "", f"Command: `{command}`", "", header, ""]
    steps = "quiet exploit steps" if select == "quiet" else "steps without an event"
    if "floor" in rows:
        steps += " (the floor: every step)"
    lines += [
        f"| checkout | runs | {steps} per run | per-step path: median µs (min-max over runs) | start hook | "
        "end hook | controller `begin_step` | controller `end_step` | per-step path: mean µs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in rows.items():
        cells = []
        for p in PARTS:
            values = [r[p] for r in runs if p in r]
            if not values:  # (the floor has no controller)
                cells.append("—")
                continue
            med = statistics.median(values)
            cells.append(f"{_us(med)} ({_us(min(values))}–{_us(max(values))})" if p == "path" else _us(med))
        means = [r["mean"] for r in runs if "mean" in r]
        cells.append(_us(statistics.median(means)) if means else "—")
        lines.append(
            f"| {name} | {len(runs)} | {int(statistics.median(r['n'] for r in runs))} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "Paired ratio of the per-step path, this checkout ÷ baseline (per repeat): median "
        f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}; {len(ratios)} repeats).",
    ]
    if floor_ratios:
        lines += [
            "",
            "This checkout's per-step path ÷ the floor's (per repeat): median "
            f"{statistics.median(floor_ratios):.2f} (min {min(floor_ratios):.2f}, max {max(floor_ratios):.2f}). The "
            "floor: the same case with a callback that only sets the LR of every param group and reads the step's "
            "loss (`float(loss.item())`), over all its steps.",
        ]
    lines += [
        "",
        "Per-step path by kind of step: median µs over runs of each run's median (steps per run).",
        "",
        "| checkout | " + " | ".join(KINDS) + " |",
        "| --- |" + " ---: |" * len(KINDS),
    ]
    for name, runs in rows.items():
        if name == "floor":
            continue
        cells = []
        for kind in KINDS:
            values = [r[kind] for r in runs if kind in r]
            n = [r[kind + " n"] for r in runs if kind in r]
            cells.append(f"{_us(statistics.median(values))} ({int(statistics.median(n))})" if values else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    which = (
        "its quiet exploit steps (planned by the kept plan of an exploit phase: no search step, no step of the exploit "
        "warmup or of the final anneal"
        if select == "quiet"
        else "all its steps (the per-step path of `benchmarks.overhead`"
    )
    lines += [
        "",
        f"Each run's figure is the median over {which}; no GP decision, forecast or snapshot copy in the hooks); the "
        "tables show the median over runs. The hooks' times are those of the per-step path of `benchmarks.overhead`; "
        "`begin_step` and `end_step` are measured inside them (through wrappers), summed over their calls in the step: "
        "the steps of a quiet run (a package from stop 50 on) call neither, and the run's last step hands all their "
        "losses to the controller, one `begin_step` and `end_step` per step, inside its end hook. The mean column "
        "(median over runs of each run's mean over the same steps) carries that last step's work, which the medians "
        "do not reflect.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_path", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="another checkout of the repository to compare against")
    parser.add_argument("--reps", type=int, default=8, help="runs per checkout (default 8; the order alternates)")
    parser.add_argument("--case", choices=sorted(CASES), default="mlp", help="the training case (default mlp)")
    parser.add_argument(
        "--select", choices=("quiet", "all"), default="quiet", help="steps the per-step path is taken over"
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: mlp 800, charlm 600)")
    parser.add_argument(
        "--floor", action="store_true", help="add the floor: a callback that only sets the LR and reads the loss"
    )
    parser.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    here, baseline = Path(__file__).resolve().parent.parent, Path(args.baseline).resolve()
    if not (baseline / "lightning_autolrs" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline!r} is not a checkout of this repository (no lightning_autolrs/ in it)")
    steps = CASES[args.case] if args.steps is None else args.steps
    start = time.perf_counter()
    names = {"this checkout": here, "baseline": baseline} | ({"floor": here} if args.floor else {})
    rows: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    ratios, floor_ratios = [], []
    for rep in range(args.reps):
        order = list(names) if rep % 2 == 0 else list(reversed(names))
        got = {}
        for name in order:
            got[name] = _summary(_run(names[name], steps, args.case, name == "floor"), args.select)
            rows[name].append(got[name])
        ratios.append(got["this checkout"]["path"] / got["baseline"]["path"])
        if args.floor:
            floor_ratios.append(got["this checkout"]["path"] / got["floor"]["path"])
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
        f"{revs['baseline']}. Case {args.case}, {steps} steps per run, one torch thread."
    )
    text = report(rows, ratios, command, header, args.select, floor_ratios)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    default = args.case == "mlp" and args.select == "quiet"
    path = out / ("step_path.md" if default else f"step_path_{args.case}_{args.select}.md")
    path.write_text(text)
    sys.stdout.write("\n" + text + f"\nwrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
