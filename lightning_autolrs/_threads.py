"""Run AutoLRS's own small computations (a GP decision, a loss forecast) on one intra-op thread.

Their tensors are tiny (a GP over about ten points, a forecast over a few hundred), yet some of them exceed torch's
parallel grain, and splitting them across threads costs more than it saves: on a machine whose other cores are busy
(DataLoader workers, other jobs) every parallel region waits for a descheduled thread. ``benchmarks.overhead``
measured, on a 2-core machine with one core busy, decisions at 10 observations of 7.2 ms median (82 ms worst of 15)
with torch's 2 threads against 3.8 ms (7.9 ms) on one. Results are the same either way: each output element of these
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


def on_one_thread(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Wrap ``fn`` to run with ``torch.set_num_threads(1)`` and put the caller's thread count back afterwards (also
    when ``fn`` raises); nothing changes when the count is 1 already."""

    @wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        threads = torch.get_num_threads()
        if threads == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper
