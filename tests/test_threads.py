"""Tests of :mod:`lightning_autolrs._threads`: AutoLRS's GP decisions and forecasts run on one intra-op thread."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

import lightning_autolrs._threads as threads_module
import lightning_autolrs.forecast as forecast_module
import lightning_autolrs.proposer as proposer_module
from lightning_autolrs._threads import on_one_thread
from lightning_autolrs.forecast import ExponentialForecaster
from lightning_autolrs.proposer import LRProposer

# (torch's native thread pool cannot switch: there nothing is, which the last test checks)
switching = pytest.mark.skipif(not threads_module._SWITCHABLE, reason="torch's parallel backend cannot switch")


@pytest.fixture
def two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _thread_counts_seen(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    """Replace ``module.name`` with a wrapper that records torch's thread count at each call; the list it fills."""
    seen: list[int] = []
    inner = getattr(module, name)

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return inner(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


@switching
def test_a_gp_decision_and_a_forecast_run_on_one_thread_and_give_the_count_back(
    two_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fits = _thread_counts_seen(monkeypatch, proposer_module, "fit_map")
    solves = _thread_counts_seen(monkeypatch, forecast_module, "_solve_grid")
    p = LRProposer(1e-4, 1.0, seed=3)
    for lr in (1e-3, 1e-2, 1e-1):
        p.observe(lr, (math.log10(lr) + 2.0) ** 2)
    lr = p.propose()
    assert fits == [1] and torch.get_num_threads() == 2  # the GP was fitted, on one thread
    assert 1e-4 <= lr <= 1.0
    series = [2.0 * math.exp(-t / 40.0) + 1.0 for t in range(1, 101)]
    out = ExponentialForecaster().predict(series, horizon=1000)
    assert solves and set(solves) == {1} and torch.get_num_threads() == 2
    assert out.method == "exp" and out.value == pytest.approx(1.0, abs=1e-3)


def test_the_same_values_on_one_thread_as_on_two() -> None:
    """Nothing in a decision or a forecast depends on the thread count: the wrapped functions (`__wrapped__`) on two
    threads give what the shipped ones give."""
    series = [2.0 * math.exp(-t / 300.0) + 1.0 + 0.05 * math.sin(7.0 * t) for t in range(1, 801)]
    fc = ExponentialForecaster()
    p = LRProposer(1e-4, 1.0, seed=0)
    for i, lr in enumerate((3e-4, 2e-3, 1e-2, 5e-2, 2e-1, 7e-1, 1e-3, 4e-2, 9e-3, 1.5e-2)):
        p.observe(lr, (math.log10(lr) + 2.0) ** 2 + 0.01 * math.sin(i))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        many = (LRProposer.propose.__wrapped__(p), ExponentialForecaster.predict.__wrapped__(fc, series, 8000))  # type: ignore[attr-defined]
        proposer_module._MAP_GP.__dict__.clear()  # (no reuse of the fit above)
        one = (p.propose(), fc.predict(series, 8000))
    finally:
        torch.set_num_threads(before)
    assert one == many


@switching
def test_the_thread_count_comes_back_when_the_call_raises(two_threads: None) -> None:
    @on_one_thread
    def fails() -> None:
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fails()
    assert torch.get_num_threads() == 2


def test_nothing_is_switched_where_the_parallel_backend_cannot_switch(
    two_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's native thread pool keeps the count it started with and warns at every change: there the decision runs
    on the caller's threads, without a call to ``torch.set_num_threads``."""
    monkeypatch.setattr(threads_module, "_SWITCHABLE", False)
    switched: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", switched.append)

    @on_one_thread
    def count() -> int:
        return torch.get_num_threads()

    assert count() == 2 and switched == []
