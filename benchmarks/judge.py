"""Does a trial judge rank the last stage's LRs the way the stage and the final anneal do?

AutoLRS picks the LR of its last stage from short trials, and a final anneal follows that stage. What the pick should
minimise is the loss after both. This benchmark measures how well each way of judging a trial ranks candidate LRs
against that loss, without whole AutoLRS runs. For each workload and seed:

1. **Start state.** The model trains at the module's configured LR (× ``--start-factor``, default 1: where the earlier
   stages would have moved it) for the steps earlier stages would have exploited (the sum of their τ in the layout
   ``AutoLRS()`` derives for the workload's budget; no search).
2. **Candidates.** That LR (the anchor) × ÷3, ÷√3, 1, ×√3, ×3: the last stage's trust region around its anchor.
3. **Oracle.** From the start state, each candidate trains the stage's steps (its τ, plus the few up to the anneal
   that a real run's last stage also trains), then the final anneal: a half cosine
   to the configured LR ÷ 100 over the anneal's steps. Its final loss is on the whole validation set.
4. **Judges.** From the same state, each candidate runs a trial per judge (the ``last`` and ``average`` judges share
   one), probed like a stage's trials: the validation loss on ``val_batches`` = 4 fixed batches, at the start and
   every τ'/5 steps. The judges:

   * ``last``: the package's default. The forecast of the last iterates' probes, extrapolated to τ.
   * ``average``: the same, probed on an exponential moving average of the trial's weights (:class:`TrialAverage`;
     the package's ``average_trials=True`` until it was removed, ``benchmarks/results/seeds_options.md``).
   * ``annealed``: no forecast. The trial's last quarter decays its LR along a half cosine to the anneal's end LR;
     the judge is its last probe.
   * ``last_x4``: the default judge on a trial four times as long (4 τ', capped at τ), probed at the same 5 points
     per trial: does a longer trial see what the short one misses?
   * ``jump``: the ``last`` forecast less the step from the stage-start probe to the trial's first probe (no
     training of its own). The idea: what a new LR changes at once is the loss's noise level, which the final anneal
     takes away from every LR; this judge credits a trial only with what it gains after its first probe. (A scratch
     copy of the package judging every stage's trials so, ten seeds of ``python -m benchmarks.seeds``, ended higher
     than the default in 30 of 50 runs: stage 0 begins from the initial weights, where that first step is mostly the
     model's own progress; judging only the later stages so, 17 of 50 higher and 9 lower; `benchmarks/HISTORY.md`.)

   Each judge's pick follows the package's rule: the lowest value, unless the anchor (×1) is within 3 % of it.

Every branch starts from the same weights, optimizer state and RNG stream and sees the same batches in the same order
(paired), so the differences are the LRs'. Not covered: an earlier search (the start state trains at one LR), and the
anneal's end at the range test's ``min_lr`` (here the configured LR ÷ 100, the range without a range test).

Reported per workload: the oracle's final loss per candidate, and per judge its picks, the regret of its pick (the
oracle's loss at the pick ÷ the oracle's best − 1) and Kendall's τ between its values and the oracle's losses.

Run: ``python -m benchmarks.judge`` (seeds 0–2, all workloads; ``--quick`` checks the harness on tiny sizes). Writes
``judge.md`` into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import copy
import math
import multiprocessing
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from benchmarks.workloads import WORKLOADS, Workload, mean_loss

__all__ = [
    "CANDIDATES",
    "JUDGES",
    "Layout",
    "TrialAverage",
    "judge_one",
    "kendall_tau",
    "layout_for",
    "main",
    "pick",
    "report",
]

#: Candidate LRs as factors of the configured LR: the last stage's trust region (÷/× 3) around its anchor.
CANDIDATES = (1 / 3, 3**-0.5, 1.0, 3**0.5, 3.0)
JUDGES = ("last", "average", "annealed", "last_x4", "jump")
LONG = 4  # the `last_x4` judge's trial is this many times τ'
PROBE_BATCHES = 4
PROBES_PER_TRIAL = 5
END_LR_FACTOR = 0.01  # the anneal's end: the configured LR ÷ 100 (AutoLRS's min_lr without a range test)
#: The ``average`` judge's moving average spans about τ' / AVERAGE_SPAN steps.
AVERAGE_SPAN = 4.0


@dataclass(frozen=True)
class Layout:
    """Where the last stage begins (``before``: steps exploited by earlier stages), the steps it trains at its LR
    (``tau``: its τ, plus the few steps up to the anneal), its τ', and the anneal."""

    before: int
    tau: int
    tau_prime: int
    anneal: int


class TrialAverage:
    r"""Exponential moving average of a module's trainable parameters over one trial (the ``average`` judge).

    .. math::  \bar w_0 = w_0,\qquad \bar w_t = \bar w_{t-1} + \alpha\,(w_t - \bar w_{t-1}),
               \qquad \alpha = 1 / \max(2, \tau' / 4),

    so the average spans about the last quarter of the trial; :meth:`probe` evaluates a function of the model with
    the averaged weights swapped in place and back (buffers such as BatchNorm statistics are the model's own). The
    package's ``lightning_autolrs.averaging.TrialAverage`` (``average_trials=True``) until that option was removed.

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> avg = TrialAverage(net)
        >>> avg.start(tau_prime=8)
        >>> with torch.no_grad():
        ...     _ = net.weight.add_(1.0)
        >>> avg.update()
        >>> w = net.weight.detach().clone()
        >>> avg.probe(lambda m: float((m.weight - w).abs().max()))  # the average is half way: alpha = 1/2
        0.5
        >>> bool(torch.equal(net.weight, w))  # the model's own weights are back
        True
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.module = module
        with torch.no_grad():
            self.average = [p.detach().clone() for p in self.params]
            self.spare = [p.detach().clone() for p in self.params]
        self.alpha = 0.5

    @torch.no_grad()
    def start(self, tau_prime: int) -> None:
        """A trial begins from the model's current weights."""
        torch._foreach_copy_(self.average, [p.detach() for p in self.params])
        self.alpha = 1.0 / max(2.0, tau_prime / AVERAGE_SPAN)

    @torch.no_grad()
    def update(self) -> None:
        """Fold the weights after a trial step into the average."""
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], self.alpha)

    @torch.no_grad()
    def probe(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(module)`` evaluated with the averaged weights in the model; the model's weights are restored after."""
        torch._foreach_copy_(self.spare, [p.detach() for p in self.params])
        torch._foreach_copy_([p.detach() for p in self.params], self.average)
        try:
            return fn(self.module)
        finally:
            torch._foreach_copy_([p.detach() for p in self.params], self.spare)


def layout_for(workload: Workload, quick: bool) -> Layout:
    """The last searching stage of ``AutoLRS()`` at its defaults on ``workload``'s budget (a dry run of the controller
    with a constant loss); quick: a tiny fixed layout."""
    if quick:
        return Layout(before=20, tau=40, tau_prime=10, anneal=10)
    from lightning_autolrs.controller import StageController
    from lightning_autolrs.settings import Settings, derive

    settings = Settings()
    derived = derive(settings, workload.lr, workload.budget)
    controller = StageController.from_settings(settings, derived, monitor="train_loss")
    for _ in range(workload.budget):
        controller.begin_step()
        controller.end_step(1.0)
    stages = [s for s in controller.stages if s.trials]
    last = stages[-1]
    anneal_start = workload.budget - derived.anneal_steps
    # the last stage trains at its LR from its winning trial's start up to the anneal (a little more than its τ)
    assert last.exploit_start is not None
    length = anneal_start - last.exploit_start + last.tau_prime
    return Layout(sum(s.tau for s in stages[:-1]), length, last.tau_prime, derived.anneal_steps)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-a between two equally long sequences (1: same order, −1: reversed)."""
    n = len(a)
    s = sum(
        (1 if (a[i] - a[j]) * (b[i] - b[j]) > 0 else -1 if (a[i] - a[j]) * (b[i] - b[j]) < 0 else 0)
        for i in range(n)
        for j in range(i + 1, n)
    )
    return s / (n * (n - 1) / 2)


def pick(values: Sequence[float], anchor: int) -> int:
    """The package's choice among trials (:meth:`~lightning_autolrs.search.StageSearch.preferred`, given trials in
    ascending LR order): the lowest value, unless the anchor's is within the tie tolerance of it; a non-finite value
    is a diverged trial, which never wins; the lowest LR when every trial diverged (the package's ``min_lr``)."""
    from lightning_autolrs.forecast import ExponentialForecaster
    from lightning_autolrs.proposer import LRProposer
    from lightning_autolrs.records import TrialRecord
    from lightning_autolrs.search import SearchOptions, StageSearch

    search = StageSearch(SearchOptions(), LRProposer(1e-3, 1.0), ExponentialForecaster())
    search.anchor_index = anchor
    trials = [
        TrialRecord(lr=float(i), start_step=0, predicted_loss=v if math.isfinite(v) else None, steps=1,
                    diverged=not math.isfinite(v))
        for i, v in enumerate(values)
    ]  # fmt: skip
    chosen = search.preferred(trials)
    return 0 if chosen is None else chosen


# ------------------------------------------------------------------------------------------------ one (workload, seed)
def _optimizer(module: Any) -> torch.optim.Optimizer:
    opt = module.configure_optimizers()
    if isinstance(opt, dict):
        opt = opt["optimizer"]
    if isinstance(opt, list | tuple):
        opt = opt[0]
    assert isinstance(opt, torch.optim.Optimizer)
    return opt


def _stream(dm: Any) -> Iterator[Any]:
    loader = dm.train_dataloader()  # one loader: its generator moves on from epoch to epoch, as under a Trainer
    while True:
        yield from loader


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _train(module: Any, opt: torch.optim.Optimizer, batches: Sequence[Any], lrs: Sequence[float], probe=None):
    """Train one step per LR in ``lrs`` on ``batches``; ``probe(i)`` is called after step ``i`` (0-based)."""
    module.train()
    for i, (batch, lr) in enumerate(zip(batches, lrs)):
        _set_lr(opt, lr)
        opt.zero_grad(set_to_none=True)
        loss = module.training_step(batch, i)
        loss.backward()
        opt.step()
        if probe is not None:
            probe(i)


@torch.no_grad()
def _mean_loss(workload: Workload, module: Any, batches: list[Any]) -> float:
    was = module.training
    module.eval()
    loss = mean_loss(workload.loss_sum, module, batches)
    module.train(was)
    return loss


def _half_cosine(start: float, end: float, n: int) -> list[float]:
    """The LRs of ``n`` steps of a half-cosine anneal (:class:`~lightning_autolrs.exploit.FinalAnneal` with
    ``shape="cosine"``, the package's final anneal when ``benchmarks/results/judge.md`` was written; it decays along
    ``1 - sqrt(t)`` since) from ``start`` down to ``end``."""
    from lightning_autolrs.exploit import FinalAnneal

    anneal = FinalAnneal(n, total_steps=n, shape="cosine")
    anneal.begin(0, start)
    return [anneal.lr_at(i, end) for i in range(n)]


def judge_one(workload_name: str, seed: int, quick: bool, start_factor: float = 1.0) -> dict[str, Any]:
    """The oracle's final loss and every judge's value for each candidate LR, for one workload and seed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (self.log outside a Trainer; PossibleUserWarning of the data modules)
        return _judge_one(workload_name, seed, quick, start_factor)


def _judge_one(workload_name: str, seed: int, quick: bool, start_factor: float) -> dict[str, Any]:
    from lightning_autolrs.forecast import ExponentialForecaster

    torch.set_num_threads(1)
    workload = WORKLOADS[workload_name]
    layout = layout_for(workload, quick)
    started = time.perf_counter()
    pl.seed_everything(seed, verbose=False)  # as the quality benchmark's runs: the same initial weights
    cls, kwargs, dm = workload.build(seed, quick)
    module = cls(**kwargs)
    dm.setup()
    opt = _optimizer(module)
    configured = opt.param_groups[0]["lr"]
    end_lr = configured * END_LR_FACTOR
    lr0 = configured * start_factor  # the LR the earlier stages exploited: the last stage's anchor
    stream = _stream(dm)
    _train(module, opt, [next(stream) for _ in range(layout.before)], [lr0] * layout.before)
    start_state = (copy.deepcopy(module.state_dict()), copy.deepcopy(opt.state_dict()))
    branch = [next(stream) for _ in range(layout.tau + layout.anneal)]  # the same batches for every branch
    val_all = workload.val_batches(dm)
    probe_set = list(dm.val_dataloader())[:PROBE_BATCHES]
    stride = max(1, layout.tau_prime // PROBES_PER_TRIAL)
    horizon = max(1, layout.tau // stride)
    n_long = min(LONG * layout.tau_prime, layout.tau)
    stride_long = max(1, n_long // PROBES_PER_TRIAL)
    forecaster = ExponentialForecaster()

    def restore() -> None:  # every branch: the same weights, optimizer state and RNG stream
        module.load_state_dict(start_state[0])
        opt.load_state_dict(copy.deepcopy(start_state[1]))  # (load_state_dict keeps the tensors it is given)
        torch.manual_seed(seed + 1)

    level = None
    rows = []
    for factor in CANDIDATES:
        lr = lr0 * factor
        row: dict[str, Any] = {"factor": factor, "lr": lr}
        # the oracle: the stage, then the final anneal
        restore()
        _train(module, opt, branch, [lr] * layout.tau + _half_cosine(lr, end_lr, layout.anneal))
        row["oracle"] = _mean_loss(workload, module, val_all)
        # judges `last` and `average`: one constant-LR trial, probed on the last iterate and on the average
        restore()
        if level is None:
            level = _mean_loss(workload, module, probe_set)
        average = TrialAverage(module)
        average.start(layout.tau_prime)
        last, avg = [level], [level]

        def probe(i: int, average: TrialAverage = average, last: list = last, avg: list = avg) -> None:
            average.update()
            if (i + 1) % stride == 0:
                last.append(_mean_loss(workload, module, probe_set))
                avg.append(average.probe(lambda m: _mean_loss(workload, m, probe_set)))

        _train(module, opt, branch[: layout.tau_prime], [lr] * layout.tau_prime, probe)
        row["last"] = forecaster.predict(last, horizon).value
        row["average"] = forecaster.predict(avg, horizon).value
        row["jump"] = row["last"] - (last[1] - last[0])  # (`last` holds the start's probe and at least one more)
        row["last_probes"] = list(last)  # the series the `last` judge forecast (the start's probe first)
        # judge `annealed`: the trial's last quarter decays to the anneal's end LR; its last probe
        restore()
        flat = layout.tau_prime - max(1, layout.tau_prime // 4)
        lrs = [lr] * flat + _half_cosine(lr, end_lr, layout.tau_prime - flat)
        _train(module, opt, branch[: layout.tau_prime], lrs)
        row["annealed"] = _mean_loss(workload, module, probe_set)
        # judge `last_x4`: the default judge on a trial LONG times as long (probes as far apart, in proportion)
        restore()
        long_series = [level]

        def probe_long(i: int, series: list = long_series) -> None:
            if (i + 1) % stride_long == 0:
                series.append(_mean_loss(workload, module, probe_set))

        _train(module, opt, branch[:n_long], [lr] * n_long, probe_long)
        row["last_x4"] = forecaster.predict(long_series, max(1, layout.tau // stride_long)).value
        rows.append(row)
    return {
        "workload": workload_name,
        "seed": seed,
        "layout": layout.__dict__,
        "configured_lr": configured,
        "anchor_lr": lr0,
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }


def _job(args: tuple[str, int, bool, float]) -> dict[str, Any]:
    return judge_one(*args)


# ---------------------------------------------------------------------------------------------------------- report
def _fmt(x: float) -> str:
    return f"{x:.4g}"


def report(results: Sequence[dict[str, Any]], command: str, header: str) -> str:
    """The markdown report of :func:`judge_one` results."""
    anchor = CANDIDATES.index(1.0)
    names = ["÷3", "÷√3", "×1", "×√3", "×3"]  # (CANDIDATES)
    lines = [
        "# Which trial judge ranks the last stage's LRs as the stage plus the final anneal does",
        "",
        f"Command: `{command}`",
        "",
        header,
        "",
    ]
    workloads = list(dict.fromkeys(r["workload"] for r in results))
    summary = []
    for w in workloads:
        runs = [r for r in results if r["workload"] == w]
        lay = runs[0]["layout"]
        seeds = [r["seed"] for r in runs]
        lines += [
            f"## {w}",
            "",
            f"Start state: {lay['before']} steps at LR {runs[0]['anchor_lr']:.4g} (the configured LR "
            f"{runs[0]['configured_lr']:.4g} × {runs[0]['anchor_lr'] / runs[0]['configured_lr']:.3g}), the candidates' "
            "anchor (×1); the stage: "
            f"τ = {lay['tau']}, trials of τ' = {lay['tau_prime']} steps; anneal {lay['anneal']} steps. "
            f"Seeds {', '.join(map(str, seeds))}.",
            "",
            "| seed | "
            + " | ".join(f"oracle {n}" for n in names)
            + " | oracle's best | "
            + " | ".join(f"{j}: pick (regret)" for j in JUDGES)
            + " |",
            "| ---: | "
            + " | ".join("---:" for _ in names)
            + " | :---: | "
            + " | ".join(":---:" for _ in JUDGES)
            + " |",
        ]
        regrets: dict[str, list[float]] = {j: [] for j in JUDGES}
        taus: dict[str, list[float]] = {j: [] for j in JUDGES}
        for r in runs:
            oracle = [row["oracle"] for row in r["rows"]]
            best = min(range(len(oracle)), key=lambda i: oracle[i])
            cells = []
            for j in JUDGES:
                values = [row[j] for row in r["rows"]]
                p = pick(values, anchor)
                regret = oracle[p] / oracle[best] - 1
                regrets[j].append(regret)
                taus[j].append(kendall_tau(values, oracle))
                cells.append(f"{names[p]} ({100 * regret:+.1f} %)")
            lines.append(
                f"| {r['seed']} | "
                + " | ".join(_fmt(x) for x in oracle)
                + f" | {names[best]} | "
                + " | ".join(cells)
                + " |"
            )
        fixed = []
        for label, index in (("keep ×1", anchor), ("always ÷3", 0), ("always ×3", len(CANDIDATES) - 1)):
            regret = [r["rows"][index]["oracle"] / min(row["oracle"] for row in r["rows"]) - 1 for r in runs]
            fixed.append(f"| {w} | {label} | {100 * statistics.mean(regret):+.1f} % | {100 * max(regret):+.1f} % | |")
        lines.append("")
        for j in JUDGES:
            summary.append(
                f"| {w} | `{j}` | {100 * statistics.mean(regrets[j]):+.1f} % | {100 * max(regrets[j]):+.1f} % | "
                f"{statistics.mean(taus[j]):+.2f} |"
            )
        summary += fixed
    lines += [
        "## Summary",
        "",
        "| workload | judge | mean regret of its pick | worst | Kendall's τ with the oracle, mean |",
        "| --- | --- | ---: | ---: | ---: |",
        *summary,
        "",
        "Regret: the oracle's final loss at the judge's pick ÷ the oracle's best candidate − 1 (0 % = it picked the "
        "best). Kendall's τ: +1 when the judge orders all five candidates as the oracle does. The fixed rules (keep "
        "the anchor, always the lowest or the highest candidate) need no trial; they frame the judges' regrets.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.judge", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one seed: checks the harness runs")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2 (quick: 0)")
    parser.add_argument(
        "--start-factor",
        type=float,
        default=1.0,
        help="the earlier stages train at the configured LR times this (default 1); the candidates surround it",
    )
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results; quick: a temp dir)")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    if args.out is None:
        out = Path(tempfile.mkdtemp(prefix="autolrs-judge-quick-")) if args.quick else Path("benchmarks/results")
    else:
        out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs = [(w, s, args.quick, args.start_factor) for w in args.workloads for s in seeds]
    if args.jobs > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.map(_job, jobs)
    else:
        results = [_job(j) for j in jobs]
    command = "python -m benchmarks.judge" + ("" if not argv else " " + shlex.join(argv))
    header = (
        f"Written by that command on {time.strftime('%Y-%m-%d %H:%M')}: {len(jobs)} (workload, seed) cases, "
        f"{args.jobs} worker processes with one torch thread each, {(time.perf_counter() - start) / 60:.1f} min wall."
    )
    text = report(results, command, header)
    (out / "judge.md").write_text(text)
    sys.stdout.write(text + f"\nwrote {out / 'judge.md'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
