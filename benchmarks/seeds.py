"""More seeds for a default choice: AutoLRS rows against cosine at the module's LR, paired by seed.

The quality benchmark (:mod:`benchmarks.quality`) judges a row on the median of three seeds; with differences between
search settings of a few percent and seed-to-seed spreads of 10-30 %, three seeds cannot separate two candidates.
This harness trains the selected AutoLRS rows and the untuned cosine row (``cosine_configured``) on more seeds,
without the tuned grid (which it does not need), and reports per workload:

* the median final validation loss of each row over the seeds, and whether it is at or below the cosine row's median;
* the paired comparison: each seed's final loss against the cosine run of the *same* seed (same initial weights and
  data order), as the mean of the relative differences, the worst one, and the number of seeds at or below it;
* every run on its own line: its final loss, the same seed's cosine run's, the LR each stage exploited, and how many
  of its trials diverged and how many times its exploit phases fell back (a run's whole search, trial by trial, is in
  its record in ``OUT/runs``: ``trial_lrs``, ``trial_predictions``).

With ``--against ROW ...`` it also trains the quality benchmark's untuned rows named (:data:`UNTUNED`: a constant or
warmup-stable-decay schedule at the module's LR, schedule-free at its default LR, Prodigy) on the same seeds and pairs
each AutoLRS run with each of them seed by seed, as above: the first and third goals of issue #12 (at or below a
constant LR at the module's LR; ahead of schedule-free and Prodigy at their defaults) on more than three seeds. An
AutoLRS row named there (``--against autolrs``) is paired with the other AutoLRS rows instead: a candidate setting
against the defaults, run by run, from the same runs.

With ``--held-out-tuned`` it also answers the quality benchmark's second goal on seeds that did not choose the
tuned LR: the quality benchmark's tuned cosine is the grid point whose median final loss over its seeds (0, 1, 2) is
lowest, so on those seeds it is graded on the runs that selected it, the lowest of seven noisy medians. This option
trains the grid on seeds 0, 1 and 2 (the quality benchmark's own runs, reused with ``--resume``), picks the LR the same
way, trains cosine at that LR on the other seeds asked for, and reports each AutoLRS row against it on those held-out
seeds only (paired by seed, as above).

Runs are cached in ``OUT/runs`` under the same keys as :mod:`benchmarks.quality`'s, so the two share runs.

Run: ``python -m benchmarks.seeds --resume --out DIR`` (defaults: seeds 0-4, rows ``autolrs autolrs_ratio10``).
Writes ``seeds.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks.quality import _task, execute, final_of, method_lrs, plan_tasks, run_key, tuned_lr_of
from benchmarks.workloads import AUTOLRS_VARIANTS, BUDGET_SCALES, METHODS, WORKLOADS, cpu_model, runs_by_cpu

__all__ = ["against_lines", "held_out_lines", "main", "paired_lines", "per_seed_lines", "tuned_lr"]

REFERENCE = "cosine_configured"
#: The rows ``--against`` may pair the AutoLRS rows with besides cosine at the module's LR: the quality benchmark's
#: other rows that a user gets without tuning (one run per seed: the module's LR, an optimizer's default).
UNTUNED = tuple(m.name for m in METHODS.values() if m.lr is not None and not m.tuned and m.name != REFERENCE)
#: The seeds the quality benchmark tunes its cosine row on (``--held-out-tuned`` picks the LR from them).
TUNING_SEEDS = (0, 1, 2)


def _runs(results: dict, workload: str, method: str, seeds: Sequence[int]) -> list[dict]:
    """The row's run records of ``seeds``, in that order."""
    m = METHODS[method]
    (lr,) = method_lrs(m, WORKLOADS[workload], False)  # (the runs' own key: an untuned row has one LR)
    return [results[(workload, run_key(m.kind, lr, s))] for s in seeds]


def _finals(results: dict, workload: str, method: str, seeds: Sequence[int]) -> list[float]:
    return [final_of(run) for run in _runs(results, workload, method, seeds)]


def _paired_cells(v: Sequence[float], ref: Sequence[float]) -> tuple[list[float], str]:
    """One row's runs ``v`` against the reference runs of the same seeds ``ref``: the relative differences (%) and the
    row's last cells (median at or below, paired mean and worst difference, runs at or below)."""
    diff = [100.0 * (a / b - 1.0) for a, b in zip(v, ref)]
    at_or_below = "yes" if statistics.median(v) <= statistics.median(ref) else "no"
    wins = f"{sum(d <= 0 for d in diff)}/{len(diff)}"
    cells = f"{at_or_below} | {statistics.mean(diff):+.1f} % | {max(diff):+.1f} % | {wins} |"
    return diff, cells


def _totals_lines(totals: dict[str, list[float]], reference: str) -> list[str]:
    """One line per row: its runs at or below the same seed's ``reference`` run over all workloads, mean and median."""
    lines = [""]
    for m, d in totals.items():
        wins = f"{sum(x <= 0 for x in d)}/{len(d)}"
        lines.append(
            f"- `{m}`, all workloads: at or below the same seed's {reference} run in {wins} runs; "
            f"mean difference {statistics.mean(d):+.1f} %, median {statistics.median(d):+.1f} %."
        )
    return lines


#: The paired columns every table of this module ends with.
PAIRED_COLUMNS = "median at or below | paired: mean difference | paired: worst seed | seeds at or below |"


def _paired_table(
    first_columns: Sequence[str],
    rows: Sequence[tuple[str, str, list[float], list[float]]],
    reference: str,
    left: int = 2,
) -> list[str]:
    """A markdown table of ``rows`` (each: its row's name, its first cells, its final losses and the reference runs'
    of the same seeds, in order; the first ``left`` columns left-aligned), then one line per row's name over all
    workloads."""
    lines = [
        "| " + " | ".join(first_columns) + " | " + PAIRED_COLUMNS,
        "|" + " --- |" * left + " ---: |" * (len(first_columns) - left) + " :---: | ---: | ---: | ---: |",
    ]
    totals: dict[str, list[float]] = {}
    for name, first_cells, v, ref in rows:
        diff, cells = _paired_cells(v, ref)
        totals.setdefault(name, []).extend(diff)
        lines.append(f"{first_cells} | {cells}")
    return lines + _totals_lines(totals, reference)


def _spread(v: Sequence[float]) -> str:
    return f"{statistics.median(v):.4g} [{min(v):.4g}–{max(v):.4g}]"


def paired_lines(results: dict, workloads: Sequence[str], methods: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """The markdown table of every (workload, row): median, paired mean / worst difference, seeds at or below."""
    columns = ("workload", "row", "final val loss, median [min–max]", "cosine at the module's LR, median")
    rows = _rows_against(results, workloads, methods, seeds, REFERENCE, lambda ref: f"{statistics.median(ref):.4g}")
    return _paired_table(columns, rows, "cosine")


def _rows_against(
    results: dict,
    workloads: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    reference: str,
    ref_cell: Callable[[list[float]], str],
) -> list[tuple[str, str, list[float], list[float]]]:
    """:func:`_paired_table`'s rows: each (workload, row) with its final losses and those of the ``reference`` row's
    runs of the same seeds (first cells: workload, row, the row's spread, ``ref_cell`` of the reference's losses)."""
    rows = []
    for w in workloads:
        ref = _finals(results, w, reference, seeds)
        for m in methods:
            v = _finals(results, w, m, seeds)
            rows.append((m, f"| {w} | `{m}` | {_spread(v)} | {ref_cell(ref)}", v, ref))
    return rows


def against_lines(
    results: dict, workloads: Sequence[str], methods: Sequence[str], seeds: Sequence[int], against: str
) -> list[str]:
    """The markdown table of every (workload, AutoLRS row) against the row ``against`` (one of :data:`UNTUNED`, or
    another AutoLRS row), each run paired with that row's run of the same seed: medians, paired mean / worst difference,
    seeds at or below."""
    label = METHODS[against].label
    columns = ("workload", "row", "final val loss, median [min–max]", f"{label}, median [min–max]")
    return _paired_table(columns, _rows_against(results, workloads, methods, seeds, against, _spread), f"`{against}`")


def tuned_lr(results: dict, workload: str) -> float:
    """The quality benchmark's tuned cosine LR: the grid point with the lowest median final loss over
    :data:`TUNING_SEEDS`, chosen as the quality benchmark chooses it (:func:`benchmarks.quality.tuned_lr_of`)."""
    grid = method_lrs(METHODS["cosine"], WORKLOADS[workload], False)
    medians = {
        lr: statistics.median(final_of(results[(workload, run_key("cosine", lr, s))]) for s in TUNING_SEEDS)
        for lr in grid
    }
    return float(tuned_lr_of(medians))


def held_out_lines(results: dict, workloads: Sequence[str], methods: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """The markdown table of every (workload, row) against cosine at the LR tuned on :data:`TUNING_SEEDS`, on the
    seeds of ``seeds`` outside them: medians, paired mean / worst difference, seeds at or below."""
    held = [s for s in seeds if s not in TUNING_SEEDS]
    columns = ("workload", "tuned LR (module's)", "row", "final val loss, median [min–max]")
    rows = []
    for w in workloads:
        lr = tuned_lr(results, w)
        ref = [final_of(results[(w, run_key("cosine", lr, s))]) for s in held]
        for m in methods:
            v = _finals(results, w, m, held)
            first = f"| {w} | {lr:.4g} ({WORKLOADS[w].lr:g}) | `{m}` | {_spread(v)} | {_spread(ref)}"
            rows.append((m, first, v, ref))
    return _paired_table((*columns, "tuned cosine, median [min–max]"), rows, "tuned cosine", left=3)


def per_seed_lines(results: dict, workloads: Sequence[str], methods: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """The markdown table of every run: its final loss against the same seed's cosine run, its stage LRs, and its
    diverged trials and exploit fallbacks (summed over its stages)."""
    lines = [
        "| workload | row | seed | final val loss | cosine, same seed | difference | LR exploited by each stage "
        "| diverged trials | exploit fallbacks |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for w in workloads:
        ref = _finals(results, w, REFERENCE, seeds)
        for m in methods:
            for seed, cos, run in zip(seeds, ref, _runs(results, w, m, seeds)):
                final = final_of(run)
                stages = run.get("autolrs", {}).get("stages", [])
                lrs = " → ".join(f"{st['best_lr']:.3g}" for st in stages if st.get("best_lr") is not None)
                diverged = sum(int(st.get("diverged_trials", 0)) for st in stages)
                fallbacks = sum(int(st.get("fallbacks", 0)) for st in stages)
                lines.append(
                    f"| {w} | `{m}` | {seed} | {final:.4g} | {cos:.4g} | {100.0 * (final / cos - 1.0):+.1f} % | "
                    f"{lrs or '—'} | {diverged} | {fallbacks} |"
                )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.seeds", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    rows = [m for m, meth in METHODS.items() if meth.kind in AUTOLRS_VARIANTS]
    p.add_argument("--methods", nargs="+", default=["autolrs", "autolrs_ratio10"], choices=rows)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--against",
        nargs="+",
        default=[],
        choices=[*UNTUNED, *rows],
        help="also pair the rows with these untuned rows of the quality benchmark (or AutoLRS rows), seed by seed",
    )
    p.add_argument("--out", default="benchmarks/results", help="output folder (runs cached in OUT/runs)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes")
    p.add_argument("--resume", action="store_true", help="reuse finished runs found in OUT/runs")
    p.add_argument(
        "--held-out-tuned",
        action="store_true",
        help="also compare with cosine at the LR tuned on seeds 0-2 (the quality benchmark's), on the other seeds",
    )
    args = p.parse_args(argv)
    held = [s for s in args.seeds if s not in TUNING_SEEDS]
    if args.held_out_tuned and not held:
        p.error(f"--held-out-tuned needs seeds outside {', '.join(map(str, TUNING_SEEDS))} (they choose the tuned LR)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tasks = plan_tasks(args.workloads, [REFERENCE, *args.against, *args.methods], args.seeds, False, 40)
    ran = reused = 0
    if args.held_out_tuned:  # first the grid on the tuning seeds, which picks the LR the held-out seeds then train
        grid, ran, reused = execute(plan_tasks(args.workloads, ["cosine"], TUNING_SEEDS, False, 40), out, args.jobs,
                                    args.resume)  # fmt: skip
        for w in args.workloads:
            lr = tuned_lr(grid, w)
            tasks |= {(w, run_key("cosine", lr, s)): _task(w, "cosine", lr, s, False, 40) for s in held}
        tasks = {key: task for key, task in tasks.items() if key not in grid}  # (cosine at the module's LR, seeds 0-2)
    results, ran2, reused2 = execute(tasks, out, args.jobs, args.resume)
    ran, reused = ran + ran2, reused + reused2
    if args.held_out_tuned:
        results |= grid
    command = "python -m benchmarks.seeds" + ("" if not argv else " " + shlex.join(argv))
    text = [
        "# AutoLRS rows on more seeds, paired with cosine at the module's LR",
        "",
        f"Command: `{command}` ({ran} runs trained, {reused} reused, {(time.perf_counter() - start) / 60:.1f} min "
        f"wall). Seeds {', '.join(map(str, args.seeds))}; final validation loss on the full validation set. Written "
        f"on {cpu_model()}, torch {torch.__version__}; the runs were trained on {runs_by_cpu(results.values())} "
        "(a run ends bitwise the same only on the CPU that trained it: the digits CNN's runs differ across CPUs)."
        + "".join(
            f" `{m}` trains {BUDGET_SCALES[m]:.3g} of the budget that the rows it is paired with train."
            for m in args.methods
            if m in BUDGET_SCALES
        ),
        "",
        *paired_lines(results, args.workloads, args.methods, args.seeds),
        "",
        "Every run (the module's configured LR: "
        + ", ".join(f"{w} {WORKLOADS[w].lr:g}" for w in args.workloads)
        + "):",
        "",
        *per_seed_lines(results, args.workloads, args.methods, args.seeds),
    ]
    for against in args.against:
        text += [
            "",
            f"## Against {METHODS[against].label} (`{against}`)",
            "",
            f"Each AutoLRS run paired with the `{against}` run of the same seed.",
            "",
            *against_lines(results, args.workloads, [m for m in args.methods if m != against], args.seeds, against),
        ]
    if args.held_out_tuned:
        text += [
            "",
            f"## Against tuned cosine on held-out seeds ({', '.join(map(str, held))})",
            "",
            "Cosine + 5 % warmup at the grid LR whose median final loss over seeds "
            f"{', '.join(map(str, TUNING_SEEDS))} is lowest (the quality benchmark's tuned cosine, 7 runs per seed to "
            "choose), trained on the seeds that did not choose it; each AutoLRS run paired with the same seed's run.",
            "",
            *held_out_lines(results, args.workloads, args.methods, args.seeds),
        ]
    (out / "seeds.md").write_text("\n".join(text) + "\n")
    sys.stdout.write("\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
