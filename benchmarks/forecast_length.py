"""How long a trial's series must be before the forecaster ranks two trials right: the measurement behind the
search's shortest trial (``MIN_TRIAL_STEPS``) and its number of validation probes.

A search compares trials by their forecasts of the stage-end loss. This script draws pairs of noisy exponential
curves ``L(t) = a·exp(−b·t) + c + noise`` whose true stage-end losses differ by a known margin (5 % of the drop the
trials see), forecasts both from their first ``n`` points with :class:`~lightning_autolrs.ExponentialForecaster`, and
counts how often the forecast ranks the pair as the truth does, for series of ``n`` points. Two noise levels: the
training loss of single batches (noise σ = 30 % of the drop a trial observes) and validation probes on fixed batches
(σ = 5 %). The curves are drawn so that the better pair member is not simply the one that is lower during the trial
(half of the pairs cross: the slower one ends lower), which is what makes a forecast necessary.

Run: ``python -m benchmarks.forecast_length`` (about a minute on one thread); writes ``results/forecast_length.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from lightning_autolrs.forecast import ExponentialForecaster

LENGTHS = (3, 4, 5, 6, 8, 12, 16, 20, 30, 40)
NOISES = (("training loss of single batches", 0.30), ("validation probes on fixed batches", 0.05))
HORIZON_FACTOR = 10  # the stage is 10× the trial (the default search_ratio 0.1)


def _pair(gen: torch.Generator, n: int, sigma: float) -> tuple[list[float], list[float], bool]:
    """Two trials' first ``n`` noisy points and whether the first one truly ends lower at the horizon."""
    horizon = HORIZON_FACTOR * n
    drop = 1.0
    out = []
    ends = []
    for _ in range(2):
        b = float(torch.empty(1).uniform_(0.5, 4.0, generator=gen)) / n  # decays over 0.5-4 trial lengths
        a = drop / (1 - math.exp(-b * n))  # every trial sees about the same drop during its n points
        c = float(torch.empty(1).uniform_(0.0, 0.3, generator=gen))
        t = torch.arange(1, n + 1, dtype=torch.float64)
        clean = a * torch.exp(-b * t) + c
        noisy = clean + sigma * drop * torch.randn(n, generator=gen, dtype=torch.float64)
        out.append(noisy.tolist())
        ends.append(a * math.exp(-b * horizon) + c)
    return out[0], out[1], ends[0] < ends[1]


def _tail(series: list[float]) -> float:
    return statistics.fmean(series[-max(1, len(series) // 4) :])


def measure(pairs: int, seed: int = 0) -> dict[tuple[str, str, int], float]:
    """Share of pairs ranked right, per (noise name, judge, series length); judges: the exponential forecast and,
    for comparison, the mean of the series' last quarter (no extrapolation)."""
    forecaster = ExponentialForecaster()
    result: dict[tuple[str, str, int], float] = {}
    for name, sigma in NOISES:
        for n in LENGTHS:
            gen = torch.Generator().manual_seed(seed)
            right = {"forecast": 0, "last quarter": 0}
            counted = {"forecast": 0, "last quarter": 0}
            for _ in range(pairs):
                first, second, truth = _pair(gen, n, sigma)
                judged = {
                    "forecast": (
                        forecaster.predict(first, HORIZON_FACTOR * n).value,
                        forecaster.predict(second, HORIZON_FACTOR * n).value,
                    ),
                    "last quarter": (_tail(first), _tail(second)),
                }
                for judge, (f1, f2) in judged.items():
                    if math.isclose(f1, f2):
                        continue  # a tie ranks nothing
                    counted[judge] += 1
                    right[judge] += (f1 < f2) == truth
            for judge in right:
                result[(name, judge, n)] = right[judge] / max(1, counted[judge])
    return result


def markdown(result: dict[tuple[str, str, int], float], pairs: int, command: str, wall: float) -> str:
    lines = [
        "# Forecast ranking accuracy vs series length",
        "",
        f"Command: `{command}` ({pairs} pairs per cell, {wall:.0f} s). Share of trial pairs whose forecasts of the "
        f"stage-end loss ({HORIZON_FACTOR}× the trial) rank them as the true curves do; 0.5 is a coin toss.",
        "",
        "| series | judged by | " + " | ".join(f"n={n}" for n in LENGTHS) + " |",
        "| --- | --- |" + " ---: |" * len(LENGTHS),
    ]
    for name, sigma in NOISES:
        for judge in ("forecast", "last quarter"):
            cells = " | ".join(f"{result[(name, judge, n)]:.2f}" for n in LENGTHS)
            lines.append(f"| {name} (σ = {sigma:g} × drop) | {judge} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.forecast_length", description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=400)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    result = measure(args.pairs)
    wall = time.perf_counter() - start
    command = "python -m benchmarks.forecast_length" + ("" if not argv else " " + " ".join(argv))
    text = markdown(result, args.pairs, command, wall)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "forecast_length.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
