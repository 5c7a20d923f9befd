"""The proposer's GP hyper-parameter fit: the grid MAP of :func:`~lightning_autolrs.proposer.fit_map` against BoTorch's
``fit_gpytorch_mll`` (L-BFGS-B through scipy, what :class:`~lightning_autolrs.proposer.LRProposer` used before), on
the scenarios of ``tests/test_proposer.py``.

Each case is one seeded 10-round search (propose, observe) over ``[1e-4, 1]`` on a synthetic loss of ``log10(lr)``:

* ``quadratic``: ``(d - t)^2`` plus noise of 0.01, minimiser ``t`` in {-3.6, -2.0, -0.4};
* ``two basins``: a narrow global basin (value 0) and a wide local one (value 0.3) two decades apart;
* ``noisy``: the quadratic with noise of 0.3 (a third of the loss range a trial sees near the optimum);
* ``flat``: a plateau at 1 with a shallow dip of 0.05 around 1e-2 and noise of 0.005;
* ``divergence``: loss falls towards 10^-1.3 and the run diverges (inf) above 10^-1.

Both fits see the same noise sequence and the same seed. Reported per scenario: the mean regret (true, noiseless loss
at the best *observed* trial minus the true minimum), the share of cases whose best trial lies within 0.15 decades of
the minimiser (the acceptance tolerance of the tests), the cases where the grid fit ends better / equal / worse
(regret differing by more than 1e-3), and, replaying the scipy fit's own observations round by round, how often the
grid fit proposes the same LR (within 0.01 of the log range) and how often its MAP objective (exact marginal log
likelihood plus log priors, per datum, as ``ExactMarginalLogLikelihood`` computes it) is at least the scipy fit's, up to
1e-3 (the grid's resolution costs up to about 2e-4).
Decision times (fit + UCB on the grid, one torch thread, medians) of both fits on the same data close the report.

Run: ``python -m benchmarks.proposer_fit`` (about two minutes on one thread; ``--quick``: seconds). Writes
``proposer_fit.md`` into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import math
import random
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from botorch.models import SingleTaskGP
from gpytorch.mlls import ExactMarginalLogLikelihood

from lightning_autolrs.proposer import LRProposer

__all__ = ["SCENARIOS", "ScipyFitProposer", "compare", "main", "map_objective"]

MIN_LR, MAX_LR = 1e-4, 1.0
ROUNDS = 10
TOL_DECADES = 0.15
SAME_PICK = 0.01  # in x units (a hundredth of the log range)
OBJECTIVE_TOL = 1e-3  # per datum: the grid's resolution costs up to ~2e-4


class ScipyFitProposer(LRProposer):
    """:class:`LRProposer` with the hyper-parameter fit it had before (``fit="lbfgs"``: ``fit_gpytorch_mll``,
    L-BFGS-B to ``ftol=1e-4``, BoTorch's random restarts seeded from the proposer's seed and the number of points)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, fit="lbfgs", **kwargs)


def map_objective(model: SingleTaskGP) -> float:
    """The fitted model's exact marginal log likelihood plus log priors, per datum (what both fits maximise)."""
    model.train()
    try:
        with torch.no_grad():
            mll = ExactMarginalLogLikelihood(model.likelihood, model)
            x = model.train_inputs[0]
            return float(mll(model(x), model.train_targets))
    finally:
        model.eval()


def _quadratic(target: float, sigma: float) -> Callable[[float, random.Random], float]:
    return lambda d, rng: (d - target) ** 2 + sigma * rng.gauss(0.0, 1.0)


def _two_basins(global_min: float, local_min: float) -> Callable[[float, random.Random], float]:
    return lambda d, rng: min((d - global_min) ** 2, 0.5 * (d - local_min) ** 2 + 0.3)


def _flat(d: float, rng: random.Random) -> float:
    return 1.0 - 0.05 * math.exp(-((d + 2.0) ** 2) / 0.5) + 0.005 * rng.gauss(0.0, 1.0)


def _divergence(d: float, rng: random.Random) -> float:
    return math.inf if d > -1.0 else (d + 1.3) ** 2 + 0.01 * rng.gauss(0.0, 1.0)


class _Scenario:
    def __init__(self, name: str, f: Callable[[float, random.Random], float], clean: Callable[[float], float]) -> None:
        self.name, self.f, self.clean = name, f, clean
        ds = [-4.0 + 4.0 * i / 4000 for i in range(4001)]
        values = [clean(d) for d in ds]
        i = min(range(len(ds)), key=lambda k: values[k])
        self.argmin, self.min = ds[i], values[i]


def _clean(f: Callable[[float, random.Random], float]) -> Callable[[float], float]:
    class _Zero(random.Random):
        def gauss(self, mu: float = 0.0, sigma: float = 1.0) -> float:
            return 0.0

    zero = _Zero()
    return lambda d: f(d, zero)


SCENARIOS: list[_Scenario] = [
    *(_Scenario(f"quadratic {t}", f, _clean(f)) for t in (-3.6, -2.0, -0.4) for f in [_quadratic(t, 0.01)]),
    *(
        _Scenario(f"two basins {g}/{lo}", f, _clean(f))
        for g, lo in ((-3.0, -1.0), (-1.0, -3.0))
        for f in [_two_basins(g, lo)]
    ),
    *(_Scenario(f"noisy {t}", f, _clean(f)) for t in (-3.0, -1.5) for f in [_quadratic(t, 0.3)]),
    _Scenario("flat", _flat, _clean(_flat)),
    _Scenario("divergence", _divergence, _clean(_divergence)),
]


def _search(cls: type[LRProposer], scenario: _Scenario, seed: int) -> tuple[LRProposer, list[tuple[float, float]]]:
    rng = random.Random(10_007 * seed + 17)
    p = cls(MIN_LR, MAX_LR, seed=seed)
    seen: list[tuple[float, float]] = []
    for _ in range(ROUNDS):
        lr = p.propose()
        loss = scenario.f(math.log10(lr), rng)
        p.observe(lr, loss)
        seen.append((lr, loss))
    return p, seen


def _regret(p: LRProposer, scenario: _Scenario) -> tuple[float, float]:
    best = p.best()
    if best is None:
        return math.inf, math.inf
    d = math.log10(best[0])
    return scenario.clean(d) - scenario.min, abs(d - scenario.argmin)


def _fitted_model(p: LRProposer) -> SingleTaskGP | None:
    return None if p._fitted is None else p._fitted[1]


def _replay(seen: list[tuple[float, float]], seed: int) -> tuple[int, int, int, int]:
    """Round by round on the scipy run's observations: (rounds compared, same pick, grid objective >= scipy's,
    rounds where the scipy fit's objective is higher by more than ``OBJECTIVE_TOL``)."""
    compared = same = at_least = worse = 0
    for r in range(2, ROUNDS):  # the GP is used from 2 observations on
        grid, scipy = LRProposer(MIN_LR, MAX_LR, seed=seed), ScipyFitProposer(MIN_LR, MAX_LR, seed=seed)
        for lr, loss in seen[:r]:
            grid.observe(lr, loss)
            scipy.observe(lr, loss)
        a, b = grid.propose(), scipy.propose()
        ma, mb = _fitted_model(grid), _fitted_model(scipy)
        if ma is None or mb is None:
            continue  # no GP this round (design fallback): nothing to compare
        compared += 1
        same += abs(grid.to_unit(a) - grid.to_unit(b)) <= SAME_PICK
        oa, ob = map_objective(ma), map_objective(mb)
        at_least += oa >= ob - OBJECTIVE_TOL
        worse += ob > oa + 1e-3
    return compared, same, at_least, worse


def compare(seeds: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for scenario in SCENARIOS:
        row: dict[str, Any] = {"scenario": scenario.name, "cases": len(seeds)}
        regrets: dict[str, list[float]] = {"grid": [], "scipy": []}
        hits = {"grid": 0, "scipy": 0}
        better = equal = worse = 0
        replay = [0, 0, 0, 0]
        for seed in seeds:
            for name, cls in (("grid", LRProposer), ("scipy", ScipyFitProposer)):
                p, seen = _search(cls, scenario, seed)
                regret, dist = _regret(p, scenario)
                regrets[name].append(regret)
                hits[name] += dist < TOL_DECADES
                if name == "scipy":
                    replay = [a + b for a, b in zip(replay, _replay(seen, seed))]
            g, s = regrets["grid"][-1], regrets["scipy"][-1]
            better += g < s - 1e-3
            worse += g > s + 1e-3
            equal += abs(g - s) <= 1e-3
        row.update(
            grid_regret=statistics.fmean(regrets["grid"]),
            scipy_regret=statistics.fmean(regrets["scipy"]),
            grid_hits=hits["grid"],
            scipy_hits=hits["scipy"],
            better=better,
            equal=equal,
            worse=worse,
            compared=replay[0],
            same_pick=replay[1],
            objective_at_least=replay[2],
            objective_worse=replay[3],
        )
        rows.append(row)
    return rows


def decision_times(ns: Sequence[int], reps: int) -> list[dict[str, Any]]:
    """Median decision time (fresh fit + UCB on the grid) of both fits on the same noisy-bowl data, one thread."""
    rows = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for n in ns:
            times: dict[str, list[float]] = {"grid": [], "scipy": []}
            for rep in range(reps):
                g = torch.Generator().manual_seed(1000 * rep + n)
                logs = (torch.rand(n, generator=g, dtype=torch.float64) * 4 - 4).tolist()
                noise = (torch.randn(n, generator=g, dtype=torch.float64) * 0.02).tolist()
                for name, cls in (("grid", LRProposer), ("scipy", ScipyFitProposer)):
                    p = cls(MIN_LR, MAX_LR, seed=rep)
                    for v, e in zip(logs, noise):
                        p.observe(10**v, 1.0 + 0.1 * (v + 2) ** 2 + e)
                    start = time.perf_counter()
                    p.propose()
                    times[name].append(time.perf_counter() - start)
            rows.append({"n": n, **{k: sorted(v) for k, v in times.items()}})
    finally:
        torch.set_num_threads(before)
    return rows


def report(rows: list[dict[str, Any]], times: list[dict[str, Any]], command: str, seeds: int) -> str:
    total = sum(r["cases"] for r in rows)
    lines = [
        "# Proposer fit: grid MAP vs scipy L-BFGS-B (`python -m benchmarks.proposer_fit`)",
        "",
        f"Command: `{command}`",
        "",
        f"Written on {time.strftime('%Y-%m-%d %H:%M')}: {len(rows)} scenarios x {seeds} seeds = {total} seeded "
        f"{ROUNDS}-round searches per fit. Regret: true loss at the best observed trial minus the true minimum; hits: "
        f"best trial within {TOL_DECADES} decades of the minimiser; better/equal/worse: the grid fit's regret against "
        "the scipy fit's on the same case (1e-3 tolerance). Replay: on the scipy run's observations, rounds where both "
        f"fitted a GP, the grid fit proposing the same LR (within {SAME_PICK} of the log range), and its MAP objective "
        f"being at least the scipy fit's (or lower than it) by more than {OBJECTIVE_TOL} per datum (the grid's "
        "resolution costs up to about 2e-4).",
        "",
        "| scenario | cases | mean regret grid | mean regret scipy | hits grid | hits scipy | grid better / equal / "
        "worse | replayed rounds | same pick | objective >= scipy | objective < scipy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['cases']} | {r['grid_regret']:.4f} | {r['scipy_regret']:.4f} | {r['grid_hits']} | "
            f"{r['scipy_hits']} | {r['better']} / {r['equal']} / {r['worse']} | {r['compared']} | {r['same_pick']} | "
            f"{r['objective_at_least']} | {r['objective_worse']} |"
        )
    g_regret = statistics.fmean(r["grid_regret"] for r in rows)
    s_regret = statistics.fmean(r["scipy_regret"] for r in rows)
    sums = {k: sum(r[k] for r in rows) for k in ("grid_hits", "scipy_hits", "better", "equal", "worse", "compared",
                                                  "same_pick", "objective_at_least", "objective_worse")}  # fmt: skip
    lines += [
        f"| **all** | {total} | {g_regret:.4f} | {s_regret:.4f} | {sums['grid_hits']} | {sums['scipy_hits']} | "
        f"{sums['better']} / {sums['equal']} / {sums['worse']} | {sums['compared']} | {sums['same_pick']} | "
        f"{sums['objective_at_least']} | {sums['objective_worse']} |",
        "",
        "## Decision time (fit + UCB on the 1025-point grid), one torch thread",
        "",
        "| observations | grid MAP ms: median (min-max) | scipy L-BFGS-B ms: median (min-max) | ratio |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for t in times:
        g, s = t["grid"], t["scipy"]
        lines.append(
            f"| {t['n']} | {1e3 * statistics.median(g):.2f} ({1e3 * g[0]:.2f}-{1e3 * g[-1]:.2f}) | "
            f"{1e3 * statistics.median(s):.1f} ({1e3 * s[0]:.1f}-{1e3 * s[-1]:.1f}) | "
            f"{statistics.median(g) / statistics.median(s):.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proposer_fit", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 2 repeats: checks the harness runs")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per scenario (default 8; quick: 1)")
    parser.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 8)
    command = "python -m benchmarks.proposer_fit" + ("" if not argv else " " + shlex.join(argv))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.set_num_threads(1)
        rows = compare(range(seeds))
        times = decision_times([2, 5, 10] if args.quick else [2, 4, 6, 8, 10], 2 if args.quick else 11)
    text = report(rows, times, command, seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "proposer_fit.md").write_text(text)
    sys.stdout.write(text + f"\nwrote {out / 'proposer_fit.md'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
