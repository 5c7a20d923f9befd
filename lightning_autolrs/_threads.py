"""Run AutoLRS's own small computations (a GP decision, a loss forecast) on one intra-op thread.

Their tensors are tiny (a GP over about ten points, a forecast over a few hundred), yet some of them exceed torch's
parallel grain, and splitting them across threads costs more than it saves: on a machine whose other cores are busy
(DataLoader workers, other jobs) every parallel region waits for a descheduled thread. ``python -m benchmarks.overhead``
(section 2b, 2026-12-06, a 2-core Intel Xeon with one core kept busy) measured a decision at 10 observations in
93.3 ms median (27 repeats; 7.5 ms, worst 111 ms, in a quick run of 3) on torch's 2 threads against 4.1 ms (3.8) on
one, and a forecast of 800 points in 6.0 against 2.7 ms. Results are the same either way: each output element of these
computations is produced by one thread.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import torch

__all__ = ["on_one_thread"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _switchable() -> bool:
    """Whether torch's intra-op thread count can be changed back and forth: with the OpenMP or TBB backend. torch's own
    ("native") pool keeps the count it started with and warns at every change, so there nothing is switched."""
    backend = next(
        (line for line in torch.__config__.parallel_info().splitlines() if "ATen parallel backend" in line), ""
    )
    return "OpenMP" in backend or "TBB" in backend


_SWITCHABLE = _switchable()


def on_one_thread(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Wrap ``fn`` to run with ``torch.set_num_threads(1)`` and put the caller's thread count back afterwards (also
    when ``fn`` raises); nothing changes when the count is 1 already, or where torch's parallel backend cannot change
    it (see :func:`_switchable`)."""

    @wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        threads = torch.get_num_threads()
        if threads == 1 or not _SWITCHABLE:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper
