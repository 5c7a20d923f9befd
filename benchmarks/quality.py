"""Quality benchmark: how many optimizer steps each LR-schedule method needs to reach a target validation loss.

What it measures, per workload (:data:`benchmarks.workloads.WORKLOADS`: a digits CNN and a digits MLP with SGD at 3000
steps, the same MLP with Adam at 3000 steps, a char-level Transformer with AdamW at 3000 steps, a Friedman MLP
regression with Adam at 10 000 steps; every module has validation data and a configured LR, the middle of its grid) and
seed (default 0, 1, 2), every run with the same step budget (but ``autolrs_short``'s):

- **tuned cosine**: cosine with a 5 % linear warmup on a 7-point log grid of peak LRs half a decade apart (the grid
  point with the lowest median final validation loss over the seeds is the "tuned" run: one LR for all seeds); constant,
  OneCycle and schedule-free grids are available with ``--methods``;
- **untuned single runs**: cosine, a constant LR and warmup-stable-decay (the 5 % warmup, the LR held, a decay over
  the last 20 %: ``wsd_configured`` a half cosine, ``wsd_sqrt_configured`` ``1 - sqrt(t)``, AutoLRS's final anneal:
  after its warmup, the shape of an AutoLRS run that keeps the module's LR, without its search) at the module's
  configured LR, schedule-free at its default LR, Prodigy (lr=1, LR-free);
- **AutoLRS**: ``AutoLRS()`` at the package defaults with no LR range given (``autolrs``), the same at the defaults of
  the version before the search rework (``autolrs_before``: pinned to that version's code, only reloaded, see
  :func:`benchmarks.workloads.run_one`), variants of single settings (``--methods``), and ``autolrs_short``, the
  defaults on 1/1.3 of the budget (:data:`benchmarks.workloads.BUDGET_SCALES`; ``max_steps`` 2 308 of 3 000, 7 692 of
  10 000): issue #12's speedup goal as a user meets it, an AutoLRS run given fewer steps ending at or below tuned
  cosine's final loss;
- **replay** (``--methods replay``): ``ReplaySchedule(schedule, stretch=True)`` with the schedule the ``autolrs`` run of
  the next seed found on the same workload (seed s gets seed s+1 mod the number of seeds).

Each run's JSON (``runs/<workload>/<key>.json``) holds its full definition (the AutoLRS constructor arguments and the
package commit; for a replay the source run and a digest of its schedule); ``--resume`` reuses a saved run only when
that definition is unchanged, so changing one variant's settings, or the package, retrains only the runs it touches.

The validation loss is evaluated on the full validation set every ``budget / --evals`` steps and at step 0. For AutoLRS
it is evaluated at every such step whatever the phase, so a point inside a search shows a *trial* model (it counts: a
trial that reaches the target has reached it; the model the user keeps at the end is the last exploit's). Search
steps are real optimizer steps and are counted.

Metrics (median and min–max over the seeds): the final validation loss; **steps to target**, the first evaluated step
whose validation loss is ≤ the target, with target T1 = the final validation loss of the tuned cosine run of that seed
and T2 = the best final loss of any tuned family (constant, cosine, OneCycle, schedule-free) of that seed; **speedup**
= the steps the reference run (tuned cosine for T1, the family that set T2 for T2) itself needs to first reach the
target / the steps of the method; the **compute** of each method including its grid (a tuned baseline costs 7 runs).

Run: ``python -m benchmarks.quality`` (full, ~45 min on 2 cores; ``--resume`` reuses finished runs) or
``python -m benchmarks.quality --quick --out DIR`` (seconds; checks that the harness runs, not speed). Writes
``<workload>.md``, ``<workload>.png``, ``README_table.md`` and the per-run JSON files (``runs/``) into ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import operator
import os
import platform
import queue
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.workloads import (
    AUTOLRS_VARIANTS,
    BEFORE_COMMIT,
    BUDGET_SCALES,
    DEFAULT_METHODS,
    METHODS,
    REPLAY_VARIANTS,
    REWORK1_COMMIT,
    SPEEDUP_TARGET,
    WORKLOADS,
    Method,
    Workload,
    autolrs_kwargs,
    autolrs_settings,
    cpu_model,
    package_commit,
    run_budget,
    run_one,
    runs_by_cpu,
    sf_default_lr,
)

__all__ = ["analyse", "main"]

TUNED_FAMILIES = ("constant", "cosine", "onecycle", "sf")
INF = math.inf


# ------------------------------------------------------------------------------------------------------------ planning
def autolrs_settings_or_empty(kind: str) -> dict[str, Any]:
    """The settings of an AutoLRS row (``{}`` for other rows)."""
    return autolrs_settings(kind) if kind in AUTOLRS_VARIANTS else {}


def canonical_kind(kind: str) -> str:
    """AutoLRS variants with identical settings share their runs: the first such variant's name."""
    if kind not in AUTOLRS_VARIANTS:
        return kind
    settings = autolrs_settings(kind)
    return next(k for k in AUTOLRS_VARIANTS if autolrs_settings(k) == settings)


def method_lrs(method: Method, workload: Workload, quick: bool) -> list[float | None]:
    """The LR(s) whose runs a method needs (the grid for tuned rows)."""
    if method.tuned:
        scale = workload.sf_scale if method.kind == "sf" else 1.0
        return [float(f"{lr * scale:.4g}") for lr in workload.lr_grid(quick)]
    if method.lr == "sf_default":
        return [sf_default_lr(workload)]
    if method.lr == "configured":  # the grid's middle point (quick: of the 3-point grid)
        return [workload.lr_grid(quick)[len(workload.lr_grid(quick)) // 2]]
    if method.lr == "free":
        return [1.0]
    return [None]


def run_key(kind: str, lr: float | None, seed: int) -> str:
    kind = canonical_kind(kind)
    return f"{kind}_s{seed}" if lr is None else f"{kind}_lr{lr:.4g}_s{seed}"


def replay_source_seed(seed: int, seeds: Sequence[int]) -> int:
    """The seed whose AutoLRS run found the schedule that the replay run of ``seed`` replays: the next one in
    ``seeds`` (cyclically; with a single seed, the same one)."""
    seeds = list(seeds)
    return seeds[(seeds.index(seed) + 1) % len(seeds)]


def _task(wname: str, kind: str, lr: float | None, seed: int, quick: bool, evals: int) -> dict[str, Any]:
    """The definition of one run, everything that defines it included: it is also the run's ``--resume`` cache key."""
    task: dict[str, Any] = {"workload": wname, "kind": kind, "lr": lr, "seed": seed, "quick": quick, "evals": evals}
    if kind in AUTOLRS_VARIANTS:
        task["autolrs_args"] = autolrs_kwargs(kind, WORKLOADS[wname], seed, quick)
        if "commit" not in task["autolrs_args"]:  # a changed package is a changed AutoLRS run (pinned rows excepted)
            task["package"] = package_commit()
    return task


def plan_tasks(
    workloads: Sequence[str], methods: Sequence[str], seeds: Sequence[int], quick: bool, evals: int
) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(workload, run key): task}`` for every run the selected rows need (shared runs appear once).

    A replay task names the AutoLRS run whose schedule it replays in ``replay_of`` (that run is planned too, even when
    its row is not selected); :func:`execute` adds the schedule's digest to the task once that run has finished.
    """
    tasks: dict[tuple[str, str], dict[str, Any]] = {}
    for wname in workloads:
        workload = WORKLOADS[wname]
        for mname in methods:
            method = METHODS[mname]
            for lr in method_lrs(method, workload, quick):
                for seed in seeds:
                    kind = canonical_kind(method.kind)
                    task = _task(wname, kind, lr, seed, quick, evals)
                    if kind in REPLAY_VARIANTS:
                        source = canonical_kind(REPLAY_VARIANTS[kind])
                        source_seed = replay_source_seed(seed, seeds)
                        task.update(replay_of=run_key(source, None, source_seed), stretch=True)
                        source_key = (wname, run_key(source, None, source_seed))
                        tasks.setdefault(source_key, _task(wname, source, None, source_seed, quick, evals))
                    tasks[(wname, run_key(method.kind, lr, seed))] = task
    return tasks


def _run_path(out: Path, workload: str, key: str) -> Path:
    return out / "runs" / workload / f"{key}.json"


def _matches(saved: dict[str, Any], task: dict[str, Any]) -> bool:
    budget = run_budget(WORKLOADS[task["workload"]], task["kind"], task["quick"])
    return all(saved.get(k) == v for k, v in task.items()) and saved.get("budget") == budget


def schedule_digest(doc: dict[str, Any] | None) -> str | None:
    """A short digest of a schedule document (part of a replay run's cache key)."""
    if doc is None:
        return None
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


Ident = tuple[str, str]
Job = tuple[Ident, dict[str, Any], dict[str, Any] | None]


def execute(
    tasks: dict[Ident, dict[str, Any]], out: Path, jobs: int, resume: bool
) -> tuple[dict[Ident, dict[str, Any]], int, int]:
    """Train (or, with ``resume``, reload) every task; returns the results and the numbers run / reused.

    Replay tasks wait for the AutoLRS run whose schedule they replay: they are resolved (the schedule's digest added to
    the task, so a changed schedule is a changed task) and queued as soon as that run has finished or been reloaded.
    """
    results: dict[Ident, dict[str, Any]] = {}
    waiting = {ident: task for ident, task in tasks.items() if "replay_of" in task}
    start = time.perf_counter()
    trained = 0

    def cached(ident: Ident, task: dict[str, Any]) -> bool:
        path = _run_path(out, *ident)
        if resume and path.is_file():
            saved = json.loads(path.read_text())
            if _matches(saved, task):
                results[ident] = saved
                return True
        return False

    def release() -> list[Job]:
        """Waiting tasks whose source run is done, resolved; reloaded ones go straight into ``results``."""
        jobs_ready: list[Job] = []
        for ident, task in list(waiting.items()):
            source = results.get((ident[0], task["replay_of"]))
            if source is None:
                continue
            del waiting[ident]
            doc = source.get("autolrs", {}).get("schedule")
            resolved = {**task, "schedule_sha256": schedule_digest(doc)}
            if not cached(ident, resolved):
                jobs_ready.append((ident, resolved, doc))
        return jobs_ready

    todo: list[Job] = [
        (ident, task, None) for ident, task in tasks.items() if ident not in waiting and not cached(ident, task)
    ]
    # longest first: the workers finish together
    cost = {"charlm": 4, "digits": 3, "friedman": 2, "digits_mlp": 1, "digits_mlp_adam": 1}
    todo.sort(key=lambda it: (-cost.get(it[0][0], 0), it[0]))
    todo += release()

    def store(ident: Ident, result: dict[str, Any]) -> None:
        nonlocal trained
        trained += 1
        path = _run_path(out, *ident)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
        results[ident] = result
        final = result["final_loss"]
        sys.stdout.write(
            f"[{len(results)}/{len(tasks)} {time.perf_counter() - start:6.0f}s] {ident[0]} {ident[1]}: "
            f"final val loss {'diverged' if final is None else f'{final:.4g}'}, {result['wall_train_s']:.1f}s\n"
        )
        sys.stdout.flush()

    if jobs <= 1:
        while todo:
            ident, task, doc = todo.pop(0)
            store(ident, run_one(task, doc))
            todo += release()
    else:
        ctx = multiprocessing.get_context("spawn")
        done: queue.Queue[tuple[Ident, dict[str, Any] | None, BaseException | None]] = queue.Queue()
        with ctx.Pool(jobs, maxtasksperchild=20) as pool:

            def submit(items: list[Job]) -> int:
                for ident, task, doc in items:  # the pool runs them in submission order
                    pool.apply_async(
                        run_one,
                        (task, doc),
                        callback=lambda r, i=ident: done.put((i, r, None)),
                        error_callback=lambda e, i=ident: done.put((i, None, e)),
                    )
                return len(items)

            outstanding = submit(todo)
            while outstanding:
                ident, result, error = done.get()
                outstanding -= 1
                if error is not None:
                    raise RuntimeError(f"run {ident[0]} {ident[1]} failed: {error!r}") from error
                assert result is not None
                store(ident, result)
                outstanding += submit(release())
    if waiting:
        raise RuntimeError(f"replay runs whose source run never finished: {sorted(waiting)}")
    return results, trained, len(tasks) - trained


# ------------------------------------------------------------------------------------------------------------ analysis
def final_of(run: dict[str, Any]) -> float:
    v = run.get("final_loss")
    return INF if v is None else float(v)


def range_test_steps(run: dict[str, Any]) -> int:
    """Steps the AutoLRS run's LR range test took (0 when it had none)."""
    rt = run.get("autolrs", {}).get("range_test")
    return int(rt["steps"]) if rt else 0


def search_cost(run: dict[str, Any]) -> int | None:
    """Optimizer steps an AutoLRS run spent searching, its range test included (a replay run: 0; others: None)."""
    if "autolrs" in run:
        return int(run["autolrs"]["search_steps"]) + range_test_steps(run)
    if "replay_of" in run:
        return 0
    return None


def trial_count(run: dict[str, Any]) -> int:
    """Trials of an AutoLRS run; 0 for other runs."""
    return sum(int(s.get("trials", 0)) for s in run.get("autolrs", {}).get("stages", []))


def steps_to(run: dict[str, Any], target: float) -> float:
    """First evaluated step (> 0) whose validation loss is ≤ ``target``; ``inf`` if never."""
    if not math.isfinite(target):
        return INF
    for step, loss, _ in run["curve"]:
        if step > 0 and loss is not None and loss <= target:
            return float(step)
    return INF


def tuned_lr_of(medians: dict[Any, float]) -> Any:
    """A tuned row's LR: the grid point with the lowest median final loss over the seeds (the smaller LR on a tie)."""
    return min(medians, key=lambda lr: (medians[lr], lr))


def analyse(
    results: dict[tuple[str, str], dict[str, Any]],
    workload: Workload,
    methods: Sequence[str],
    seeds: Sequence[int],
    quick: bool,
) -> dict[str, Any]:
    """Per-method metrics of one workload (every value a list over ``seeds``)."""
    runs = {key: r for (w, key), r in results.items() if w == workload.name}
    rows: dict[str, dict[str, Any]] = {}
    grid_table: dict[str, dict[float, float]] = {}
    for mname in methods:
        method = METHODS[mname]
        lrs = method_lrs(method, workload, quick)
        per_lr = {lr: [runs[run_key(method.kind, lr, s)] for s in seeds] for lr in lrs}
        if method.tuned:
            medians = {lr: statistics.median(final_of(r) for r in rs) for lr, rs in per_lr.items()}
            grid_table[mname] = medians
            chosen = tuned_lr_of(medians)
        else:
            chosen = lrs[0]
        selected = per_lr[chosen]
        rows[mname] = {
            "method": method,
            "lr": chosen,
            "runs": selected,
            "final": [final_of(r) for r in selected],
            "best": [min((c[1] for c in r["curve"] if c[1] is not None), default=INF) for r in selected],
            "compute_steps": [sum(per_lr[lr][i]["steps"] for lr in lrs) for i in range(len(seeds))],
            "compute_runs": len(lrs),
            "wall": [sum(per_lr[lr][i]["wall_train_s"] for lr in lrs) for i in range(len(seeds))],
            "search_share": [
                None if search_cost(r) is None else search_cost(r) / max(1, r["steps"])  # type: ignore[operator]
                for r in selected
            ],
            "trials": [trial_count(r) for r in selected],
        }
    t1 = rows["cosine"]["final"] if "cosine" in rows else [INF] * len(seeds)
    ref1 = [steps_to(r, t) for r, t in zip(rows["cosine"]["runs"], t1)] if "cosine" in rows else [INF] * len(seeds)
    families = [f for f in TUNED_FAMILIES if f in rows]
    t2, ref2, t2_family = [], [], []
    for i in range(len(seeds)):
        if not families:
            t2.append(INF), ref2.append(INF), t2_family.append("-")
            continue
        fam = min(families, key=lambda f: rows[f]["final"][i])
        t2.append(rows[fam]["final"][i])
        ref2.append(steps_to(rows[fam]["runs"][i], t2[-1]))
        t2_family.append(fam)
    for row in rows.values():
        row["steps_t1"] = [steps_to(r, t) for r, t in zip(row["runs"], t1)]
        row["steps_t2"] = [steps_to(r, t) for r, t in zip(row["runs"], t2)]
        row["speedup_t1"] = [
            ref / s if math.isfinite(s) and math.isfinite(ref) else 0.0 for ref, s in zip(ref1, row["steps_t1"])
        ]
        row["speedup_t2"] = [
            ref / s if math.isfinite(s) and math.isfinite(ref) else 0.0 for ref, s in zip(ref2, row["steps_t2"])
        ]
    return {"rows": rows, "t1": t1, "t2": t2, "t2_family": t2_family, "ref1": ref1, "ref2": ref2, "grid": grid_table}


# ------------------------------------------------------------------------------------------------------------ reports
def _num(v: float, digits: int = 4) -> str:
    if math.isinf(v):
        return "div." if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def fmt_spread(values: Sequence[float], digits: int = 4, unreached: str = "div.") -> str:
    """``median [min–max]``; infinities print as ``unreached``."""

    def one(v: float) -> str:
        return unreached if math.isinf(v) else f"{v:.{digits}g}"

    med = statistics.median(values)
    if len(values) == 1:
        return one(med)
    return f"{one(med)} [{one(min(values))}–{one(max(values))}]"


def fmt_steps(values: Sequence[float]) -> str:
    reached = sum(math.isfinite(v) for v in values)
    if reached == 0:
        return f"n/r (0/{len(values)})"
    text = fmt_spread(list(values), digits=6, unreached="n/r")
    return text if reached == len(values) else f"{text} ({reached}/{len(values)})"


def fmt_speedup(values: Sequence[float]) -> str:
    med = statistics.median(values)
    if len(values) == 1 or max(values) == 0:
        return f"{med:.2f}×" if med > 0 else "—"
    lo, hi = min(values), max(values)
    return f"{med:.2f}× [{lo:.2f}–{hi:.2f}]" if med > 0 else f"— [{lo:.2f}–{hi:.2f}]"


def is_alias(row: dict[str, Any]) -> bool:
    """The row reuses another AutoLRS row's runs (identical settings)."""
    return canonical_kind(row["method"].kind) != row["method"].kind


def row_label(row: dict[str, Any]) -> str:
    """The method's label; tuned rows say over how many grid points."""
    method = row["method"]
    if method.tuned:
        return f"{method.label} (best of {row['compute_runs']})"
    canonical = canonical_kind(method.kind)
    if canonical != method.kind:
        twin = next((m.name for m in METHODS.values() if m.kind == canonical), canonical)
        return f"{method.label} (≡ `{twin}`: same settings, same runs)"
    return method.label


def found_range_text(row: dict[str, Any]) -> str:
    """The range test's result over the seeds: found ``max_lr`` median [min–max], the span, the test's steps."""
    tests = [r["autolrs"]["range_test"] for r in row["runs"] if r.get("autolrs", {}).get("range_test")]
    if not tests:
        return ""
    his = [t["max_lr"] for t in tests]
    span = statistics.median(t["max_lr"] / t["min_lr"] for t in tests)
    steps = statistics.median(t["steps"] for t in tests)
    early = sum(bool(t["stopped_early"]) for t in tests)
    return f"max_lr {fmt_spread(his, 3)}, min_lr = max_lr/{span:.0f}; {steps:.0f} steps" + (
        f" (stopped early {early}/{len(tests)})" if early else ""
    )


def _range_text(row: dict[str, Any]) -> str:
    if row["lr"] is not None:
        return f"{row['lr']:.3g}"
    run = row["runs"][0]
    if "replay_of" in run:
        return f"schedule of `{REPLAY_VARIANTS[run['kind']]}`, next seed"
    if run["autolrs"].get("range_test"):
        return "range test: " + found_range_text(row)
    s = run["autolrs"]["settings"]
    if s.get("min_lr") is None or s.get("max_lr") is None:  # derived from the configured LR (no range test)
        lo, hi = run["autolrs"]["found_range"]
        return f"derived {lo:.3g}…{hi:.3g}"
    return f"{s['min_lr']:g}…{s['max_lr']:g}"


TABLE_HEADER = (
    "| method | LR | final val loss | best val loss | steps to T1 | speedup T1 | steps to T2 | speedup T2 | "
    "compute: runs, optimizer steps | train wall s |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def table_rows(analysis: dict[str, Any]) -> list[str]:
    lines = []
    for row in analysis["rows"].values():
        compute = f"{row['compute_runs']}, {statistics.median(row['compute_steps']):.0f}"
        lines.append(
            f"| {row_label(row)} | {_range_text(row)} | {fmt_spread(row['final'])} | {fmt_spread(row['best'])} | "
            f"{fmt_steps(row['steps_t1'])} | {fmt_speedup(row['speedup_t1'])} | {fmt_steps(row['steps_t2'])} | "
            f"{fmt_speedup(row['speedup_t2'])} | {compute} | {statistics.median(row['wall']):.0f} |"
        )
    return lines


def _first_reach(run: dict[str, Any], target: float) -> str:
    step = steps_to(run, target)
    if math.isinf(step):
        return "never reaches T1"
    phase = next(c[2] for c in run["curve"] if c[0] == step)
    return f"first reaches T1 at step {step:.0f} ({phase} phase)"


def autolrs_lines(analysis: dict[str, Any], seeds: Sequence[int]) -> list[str]:
    lines = [
        "Validation points are taken at every evaluation step whatever the phase: one inside a search shows the "
        "model of the trial running then, not the model the run keeps.",
        "",
    ]
    for name, row in analysis["rows"].items():
        if row["lr"] is not None or "autolrs" not in row["runs"][0]:
            continue
        if is_alias(row):
            lines.append(f"- **{row_label(row)}**: see that row.")
            continue
        first = row["runs"][0]["autolrs"]
        stages = ", ".join(f"τ={s['tau']}/τ'={s['tau_prime']}" for s in first["stages"])
        lines.append(f"- **{row_label(row)}** (`{name}`; stages {stages}):")
        for seed, run, t1 in zip(seeds, row["runs"], analysis["t1"]):
            info = run["autolrs"]
            chosen = " → ".join("-" if s["best_lr"] is None else f"{s['best_lr']:.3g}" for s in info["stages"])
            methods: dict[str, int] = {}
            for s in info["stages"]:
                for f in s["forecasts"]:
                    fname = "diverged" if f is None else str(f)
                    methods[fname] = methods.get(fname, 0) + 1
            div = sum(s["diverged_trials"] for s in info["stages"])
            fb = sum(s["fallbacks"] for s in info["stages"])
            trials = trial_count(run)
            extra = []
            rt = info.get("range_test")
            if rt:
                extra.append(
                    f"range test {rt['steps']} steps → {rt['min_lr']:.3g}…{rt['max_lr']:.3g}"
                    + (" (stopped early)" if rt["stopped_early"] else "")
                )
            cost = search_cost(run) or 0
            lines.append(
                f"  seed {seed}: stage LRs {chosen}; search {cost}/{run['steps']} steps "
                f"({100 * cost / max(1, run['steps']):.0f} %{', range test included' if rt else ''}), "
                f"{trials} trials{''.join(', ' + e for e in extra)}, {div} diverged, {fb} exploit fallbacks; "
                f"forecasts {', '.join(f'{k}×{v}' for k, v in sorted(methods.items()))}; {_first_reach(run, t1)}"
            )
    for name, row in analysis["rows"].items():
        run = row["runs"][0]
        if "replay_of" not in run:
            continue
        srcs = ", ".join(f"seed {r['seed']} ← `{r['replay_of']}`" for r in row["runs"])
        lines.append(
            f"- **{row_label(row)}** (`{name}`): `ReplaySchedule(schedule, stretch=True)` of the schedule found by "
            f"another seed's AutoLRS run ({srcs}): its exploit LRs ({run.get('replay', {}).get('exploit_lrs', 0)} "
            "for seed 0), search steps removed, stretched over the budget. No search of its own."
        )
    return lines if len(lines) > 2 else []


def _shorter_budgets(workload: Workload, analysis: dict[str, Any], quick: bool, evals: int) -> str:
    """The rows of :data:`~benchmarks.workloads.BUDGET_SCALES` present, with their budgets and evaluation steps."""
    parts = []
    for name in analysis["rows"]:
        if name in BUDGET_SCALES:
            steps = run_budget(workload, name, quick)
            parts.append(f"`{name}`: {steps} steps, evaluated every {max(1, steps // evals)} and at its last")
        # (the other rows train the workload's budget)
    return f" ({'; '.join(parts)})" if parts else ""


def workload_markdown(
    workload: Workload, analysis: dict[str, Any], seeds: Sequence[int], quick: bool, command: str, provenance: str
) -> str:
    budget = workload.steps(quick)
    evals = analysis["rows"][next(iter(analysis["rows"]))]["runs"][0]["evals"]
    grid = workload.lr_grid(quick)
    lines = [
        f"# Quality: {workload.title}",
        "",
        f"Command: `{command}`",
        "",
        provenance,
        "",
        f"Budget {budget} optimizer steps per run{_shorter_budgets(workload, analysis, quick, evals)}; validation loss "
        f"on the full validation set every {max(1, budget // evals)} steps; seeds {', '.join(map(str, seeds))}; "
        f"LR grid {', '.join(f'{v:g}' for v in grid)} (schedule-free: × {workload.sf_scale:g}); AutoLRS searches "
        f"{workload.grid[0]:g}…{workload.grid[1]:g} (rows marked range test: no `min_lr`/`max_lr` given, the "
        "callback's LR range test finds the range; its steps count as search). Replay rows replay the schedule another "
        "seed's AutoLRS run found (seed s gets the schedule of seed s+1 mod the number of seeds).",
        "",
        "T1 = final val loss of the tuned cosine run of each seed: "
        + ", ".join(_num(v) for v in analysis["t1"])
        + f"; the tuned cosine run first reaches it at step {', '.join(_num(v, 6) for v in analysis['ref1'])}.",
        "T2 = best final val loss of any tuned family per seed: "
        + ", ".join(f"{_num(v)} ({f})" for v, f in zip(analysis["t2"], analysis["t2_family"]))
        + f"; that run first reaches it at step {', '.join(_num(v, 6) for v in analysis['ref2'])}.",
        "",
        "Cells: median [min–max] over the seeds. `n/r` = not reached within the budget, `(k/n)` = reached in k of n "
        "seeds; a speedup of an unreached seed counts as 0, `—` when the median is 0. `div.` = diverged (non-finite). "
        "Compute = runs × steps needed to produce the row, the grid included (replay: the replay run only, not the "
        "AutoLRS run that found its schedule); train wall s = their training time "
        "(evaluation excluded) on one CPU thread.",
        "",
        TABLE_HEADER,
        *table_rows(analysis),
        "",
        "## Final val loss over the grid (median over seeds; the tuned row takes the lowest)",
        "",
        "| family | " + " | ".join(f"lr×{i}" for i in range(len(grid))) + " |",
        "| --- |" + " ---: |" * len(grid),
    ]
    for name, medians in analysis["grid"].items():
        cells = " | ".join(f"{_num(v)} @ {lr:g}" for lr, v in medians.items())
        lines.append(f"| {name} | {cells} |")
    auto = autolrs_lines(analysis, seeds)
    if auto:
        lines += ["", "## AutoLRS runs", "", *auto]
    return "\n".join(lines) + "\n"


def summary_lines(workload: Workload, analysis: dict[str, Any]) -> list[str]:
    """Plain-language comparison of each AutoLRS row with the tuned cosine and the best tuned family."""
    rows = analysis["rows"]
    out = []
    for row in rows.values():
        if row["lr"] is not None or "cosine" not in rows or is_alias(row):
            continue
        cos = rows["cosine"]
        fin, cfin = statistics.median(row["final"]), statistics.median(cos["final"])
        reached = sum(math.isfinite(v) for v in row["steps_t1"])
        verdict = "lower" if fin < cfin else "higher"
        out.append(
            f"- {workload.name}, {row_label(row)}: final val loss {_num(fin)} vs tuned cosine {_num(cfin)} "
            f"({verdict}); reaches T1 in {reached}/{len(row['final'])} seeds, median speedup "
            f"{statistics.median(row['speedup_t1']):.2f}×; compute {statistics.median(row['compute_steps']):.0f} vs "
            f"{statistics.median(cos['compute_steps']):.0f} steps for the tuned cosine (its grid included)"
            + (
                "; the replayed schedule came from one earlier AutoLRS run (another seed), not counted."
                if "replay_of" in row["runs"][0]
                else "."
            )
        )
    return out


def readme_markdown(
    analyses: dict[str, dict[str, Any]], seeds: Sequence[int], quick: bool, command: str, provenance: str
) -> str:
    lines = [
        f"Command: `{command}` ({provenance})",
        "",
        "| workload | method | final val loss | steps to T1 (speedup) | steps to T2 (speedup) | compute (steps) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for wname, analysis in analyses.items():
        for row in analysis["rows"].values():
            lines.append(
                f"| {wname} | {row_label(row)} | {fmt_spread(row['final'])} | {fmt_steps(row['steps_t1'])} "
                f"({fmt_speedup(row['speedup_t1'])}) | {fmt_steps(row['steps_t2'])} "
                f"({fmt_speedup(row['speedup_t2'])}) | {statistics.median(row['compute_steps']):.0f} |"
            )
    lines += [
        "",
        f"Median [min–max] over seeds {', '.join(map(str, seeds))}. T1 = final val loss of the tuned cosine run; "
        "T2 = best final val loss of any tuned family (constant / cosine / OneCycle / schedule-free); speedup = steps "
        "the run that set the target needs to first reach it ÷ the method's steps. Compute counts every optimizer step "
        "(AutoLRS's search trials, the tuned rows' 7-point grid).",
        "",
    ]
    for wname, analysis in analyses.items():
        lines += summary_lines(WORKLOADS[wname], analysis)
    before_after = before_after_lines(analyses, seeds)
    if before_after:
        lines += ["", *before_after]
    return "\n".join(lines) + "\n"


# AutoLRS rows of the before/after comparison (issue #12): (row, what it is)
BEFORE_AFTER = (
    ("autolrs_before", "before: `AutoLRS()` defaults of " + BEFORE_COMMIT),
    ("autolrs_rework1", "first rework: `AutoLRS()` defaults of " + REWORK1_COMMIT),
    ("autolrs_ratio10", "second round's start: `AutoLRS(search_ratio=0.1)`, the default before it"),
    ("autolrs", "after: `AutoLRS()` defaults"),
)
SEARCH_SHARE_TARGET = 0.30
# untuned rows an AutoLRS run must end at or below (median final val loss), with their names in the goal lines
NEVER_WORSE_THAN = (("cosine_configured", "cosine at the module's LR"), ("constant_configured", "constant module LR"))
AHEAD_OF = (("sf_default", "schedule-free"), ("prodigy", "Prodigy"))


def _yes(ok: bool) -> str:
    return "**yes**" if ok else "**no**"


def collapsed(run: dict[str, Any]) -> str | None:
    """Why an AutoLRS run counts as collapsed, or ``None``: it ends at or above its step-0 validation loss (chance
    level), or above its own validation loss at the end of stage 0 (the last evaluation before stage 1 starts)."""
    curve = [(c[0], c[1]) for c in run["curve"] if c[1] is not None]
    final = run.get("final_loss")
    if final is None or not curve:
        return "diverged"
    if final >= curve[0][1]:
        return f"ends at {final:.4g} ≥ step-0 loss {curve[0][1]:.4g}"
    stages = run.get("autolrs", {}).get("stages", [])
    if len(stages) > 1:
        before = [loss for step, loss in curve if 0 < step <= stages[1]["start_step"]]
        if before and final > before[-1]:
            return f"ends at {final:.4g} > {before[-1]:.4g} at the end of stage 0"
    return None


def before_after_lines(analyses: dict[str, dict[str, Any]], seeds: Sequence[int]) -> list[str]:
    """The before/after table of the AutoLRS defaults and the issue's goals as yes/no lines."""
    present = [(name, what) for name, what in BEFORE_AFTER if all(name in a["rows"] for a in analyses.values())]
    if not present:
        return []
    refs = [(n, t) for n, t in (*NEVER_WORSE_THAN, *AHEAD_OF) if all(n in a["rows"] for a in analyses.values())]
    lines = [
        "## Before/after: `AutoLRS()` at its defaults, no LR range given (issue #12)",
        "",
        "| workload | row | final val loss | "
        + " | ".join(f"vs {t}" for _, t in refs)
        + " | steps to T1 (speedup vs tuned cosine) | search share | collapsed runs |",
        "| --- | --- | ---: | " + " | ".join(":---:" for _ in refs) + " | ---: | ---: | ---: |",
    ]
    for wname, analysis in analyses.items():
        rows = analysis["rows"]
        for name, what in present:
            row = rows[name]
            fin = statistics.median(row["final"])
            cells = []
            for ref, _ in refs:
                rfin = statistics.median(rows[ref]["final"])
                cells.append(f"{'≤' if fin <= rfin else '>'} {_num(rfin)}")
            shares = [100 * v for v in row["search_share"] if v is not None]
            bad = [c for c in (collapsed(r) for r in row["runs"]) if c]
            lines.append(
                f"| {wname} | `{name}` ({what}) | {fmt_spread(row['final'])} | {' | '.join(cells)} | "
                f"{fmt_steps(row['steps_t1'])} ({fmt_speedup(row['speedup_t1'])}) | {fmt_spread(shares, 2)} % | "
                f"{len(bad)}/{len(row['runs'])}{': ' + '; '.join(bad) if bad else ''} |"
            )
    lines += [
        "",
        f"Median [min–max] over seeds {', '.join(map(str, seeds))}. `≤ x` / `> x`: the row's median final val loss is "
        "at or below / above that reference row's median x. Search share = steps of search trials and of the LR range "
        "test ÷ all optimizer steps (the winning trial's steps, which training continues from, included). A run "
        "counts as collapsed when it ends at or above its step-0 val loss or above its val loss at the end of stage 0.",
        "",
        "Goals (row `autolrs`, and row `autolrs_short` where the line names it):",
        "",
    ]
    if "autolrs" not in dict(present):
        return lines
    checks: list[tuple[str, list[tuple[str, bool, str]]]] = []

    def against(ref: str, goal: str, better: Callable[[float, float], bool]) -> None:
        """A goal line comparing the median final val loss of `autolrs` with row ``ref``'s, on every workload."""
        if not all(ref in a["rows"] for a in analyses.values()):
            return
        checks.append((goal, []))
        for wname, analysis in analyses.items():
            fin = statistics.median(analysis["rows"]["autolrs"]["final"])
            rfin = statistics.median(analysis["rows"][ref]["final"])
            checks[-1][1].append((wname, better(fin, rfin), f"{_num(fin)} vs {_num(rfin)}"))

    for ref, text in NEVER_WORSE_THAN:
        against(ref, f"final val loss at or below {text}, every workload", operator.le)
    checks.append(("reaches tuned cosine's final val loss (T1), every workload (median of the seeds)", []))
    for wname, analysis in analyses.items():
        steps = analysis["rows"]["autolrs"]["steps_t1"]
        checks[-1][1].append((wname, math.isfinite(statistics.median(steps)), fmt_steps(steps)))
    checks.append((f"reaches T1 in ≤ 1/{SPEEDUP_TARGET} of tuned cosine's steps (search counted)", []))
    for wname, analysis in analyses.items():
        speed = statistics.median(analysis["rows"]["autolrs"]["speedup_t1"])
        checks[-1][1].append((wname, speed >= SPEEDUP_TARGET, f"{speed:.2f}×"))
    if all("autolrs_short" in a["rows"] for a in analyses.values()):
        goal = f"on 1/{SPEEDUP_TARGET:g} of the budget (`autolrs_short`), ends at or below T1, every workload (medians)"
        checks.append((goal, []))
        for wname, analysis in analyses.items():
            short = analysis["rows"]["autolrs_short"]
            fin, t1 = statistics.median(short["final"]), statistics.median(analysis["t1"])
            steps = statistics.median(r["budget"] for r in short["runs"])
            checks[-1][1].append((wname, fin <= t1, f"{_num(fin)} vs {_num(t1)} in {steps:.0f} steps"))
    for ref, text in AHEAD_OF:
        against(ref, f"ahead of {text} at its defaults (median final val loss)", operator.lt)
    checks.append(("no collapsed run", []))
    for wname, analysis in analyses.items():
        bad = sum(collapsed(r) is not None for r in analysis["rows"]["autolrs"]["runs"])
        checks[-1][1].append((wname, bad == 0, f"{bad} collapsed"))
    checks.append((f"search share ≤ {100 * SEARCH_SHARE_TARGET:.0f} % (every run)", []))
    for wname, analysis in analyses.items():
        shares = [v for v in analysis["rows"]["autolrs"]["search_share"] if v is not None]
        worst = max(shares) if shares else 0.0
        checks[-1][1].append((wname, worst <= SEARCH_SHARE_TARGET, f"max {100 * worst:.0f} %"))
    for goal, parts in checks:
        ok = all(good for _, good, _ in parts)
        detail = "; ".join(f"{w} {text} {'✓' if good else '✗'}" for w, good, text in parts)
        lines.append(f"- {goal}: {_yes(ok)} ({detail})")
    return lines


def plot_workload(workload: Workload, analysis: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(13, 7.4))
    colors = list(plt.get_cmap("tab20").colors)  # ~20 rows: 20 distinct colours
    ax.set_prop_cycle(color=colors)
    for name, row in analysis["rows"].items():
        if name == "cosine_demo" or is_alias(row):
            continue
        steps = [c[0] for c in row["runs"][0]["curve"]]
        series = []
        for run in row["runs"]:
            by_step = {c[0]: (INF if c[1] is None else c[1]) for c in run["curve"]}
            series.append([by_step.get(s, INF) for s in steps])
        med = [statistics.median(col) for col in zip(*series)]
        lo = [min(col) for col in zip(*series)]
        hi = [max(col) for col in zip(*series)]
        style = "-" if row["lr"] is not None else "--"
        label = row_label(row) + (f" @ {row['lr']:.3g}" if row["method"].tuned else "")
        keep = [i for i, v in enumerate(med) if math.isfinite(v)]
        (line,) = ax.plot([steps[i] for i in keep], [med[i] for i in keep], style, label=label, lw=1.4)
        band = [i for i in keep if math.isfinite(hi[i])]
        ax.fill_between(
            [steps[i] for i in band], [lo[i] for i in band], [hi[i] for i in band], color=line.get_color(), alpha=0.12
        )
        lrs = row["runs"][0]["lrs"]
        if lrs and row["method"].kind != "sf":  # schedule-free's lr is not a per-step rate
            ax_lr.plot(range(len(lrs)), lrs, style, color=line.get_color(), lw=1.0)
    t1 = statistics.median(analysis["t1"])
    t2 = statistics.median(analysis["t2"])
    if math.isfinite(t1):
        ax.axhline(t1, color="k", ls=":", lw=0.8, label=f"T1 (median) {t1:.4g}")
    if math.isfinite(t2):
        ax.axhline(t2, color="grey", ls="-.", lw=0.8, label=f"T2 (median) {t2:.4g}")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step (AutoLRS: search trials included)")
    ax.set_ylabel("validation loss (full val set)")
    ax.set_title("val loss, median over seeds (band: min–max)")
    finite = [
        v
        for row in analysis["rows"].values()
        for r in row["runs"]
        for c in r["curve"]
        if c[1] is not None
        for v in [c[1]]
    ]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 10 * statistics.median(finite)) * 1.1)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=6.5, frameon=False)
    ax_lr.set_yscale("log")
    ax_lr.set_ylim(workload.grid[0] / 30, workload.grid[1] * 3)
    ax_lr.set_xlabel("optimizer step")
    ax_lr.set_ylabel("learning rate (Prodigy: d·lr)")
    ax_lr.set_title(f"LR per step, seed {analysis['rows'][next(iter(analysis['rows']))]['runs'][0]['seed']}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.22, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------------ main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument(
        "--methods",
        nargs="+",
        default=DEFAULT_METHODS,
        choices=list(METHODS),
        help="rows (cosine is always added; default: the rows marked default in benchmarks.workloads.METHODS)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2 (quick: 0)")
    p.add_argument("--quick", action="store_true", help="tiny budgets and a 3-point grid: checks the harness runs")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results; quick: a new temp dir)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default 2; quick: 1)")
    p.add_argument(
        "--evals", type=int, default=None, help="validation evaluations per run besides step 0 (40; quick: 5)"
    )
    p.add_argument("--resume", action="store_true", help="reuse finished runs found in OUT/runs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    seeds: list[int] = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    jobs: int = args.jobs if args.jobs is not None else (1 if args.quick else 2)
    evals: int = args.evals if args.evals is not None else (5 if args.quick else 40)
    if args.out is None:
        out = Path(tempfile.mkdtemp(prefix="autolrs-quality-quick-")) if args.quick else Path("benchmarks/results")
    else:
        out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(dict.fromkeys(args.methods))
    if args.quick and args.methods is DEFAULT_METHODS:  # a row of another package version cannot be trained here
        methods = [m for m in methods if "commit" not in autolrs_settings_or_empty(METHODS[m].kind)]
    if "cosine" not in methods:  # the tuned cosine run defines target T1
        methods.insert(0, "cosine")
    command = "python -m benchmarks.quality" + ("" if not argv else " " + shlex.join(argv))
    start = time.perf_counter()
    tasks = plan_tasks(args.workloads, methods, seeds, args.quick, evals)
    sys.stdout.write(f"{len(tasks)} runs planned into {out} ({jobs} worker processes)\n")
    started = time.strftime("%Y-%m-%d %H:%M")
    results, ran, reused = execute(tasks, out, jobs, args.resume)
    wall = time.perf_counter() - start
    log_path = out / "runs" / "invocations.jsonl"
    earlier = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else []
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        entry = {"command": command, "started": started, "wall_min": round(wall / 60, 1), "trained": ran}
        log.write(json.dumps({**entry, "reused": reused}) + "\n")
    provenance = (
        f"Written by that command, started {started} on {platform.machine()} ({cpu_model()}) with {os.cpu_count()} "
        f"CPU cores shared with other jobs ({jobs} worker processes, one thread each): {ran} runs trained in this "
        f"invocation, {reused} reused from earlier ones (`--resume`), {wall / 60:.1f} min wall. The runs were "
        f"trained on {runs_by_cpu(results.values())} (a run ends bitwise the same only on the CPU that trained it)."
    )
    if reused:
        provenance += (
            " Earlier invocations in this folder: "
            + "; ".join(
                f"`{e['command']}` started {e['started']} trained {e['trained']} runs in {e['wall_min']} min"
                for e in earlier
            )
            + "."
        )
    analyses = {}
    for wname in args.workloads:
        workload = WORKLOADS[wname]
        analysis = analyse(results, workload, methods, seeds, args.quick)
        analyses[wname] = analysis
        (out / f"{wname}.md").write_text(workload_markdown(workload, analysis, seeds, args.quick, command, provenance))
        title = f"{workload.title} — budget {workload.steps(args.quick)}"
        plot_workload(workload, analysis, out / f"{wname}.png", title)
    readme = readme_markdown(analyses, seeds, args.quick, command, provenance)
    (out / "README_table.md").write_text(readme)
    sys.stdout.write("\n" + readme + f"\nwrote {', '.join(sorted(p.name for p in out.glob('*.*')))} into {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
