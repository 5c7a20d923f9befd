"""Tests of one stage's search (:mod:`lightning_autolrs.search`): best-trial reuse, early stop, trial abort and warm
start, alone and driven by the controller."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from .helpers import Quadratic, feed, make


def test_reuse_best_trial_continues_from_its_end_state() -> None:
    c, sim = make(total=1000, reuse_best_trial=True), Quadratic()
    sim.run(c, 1000)
    full = [h for h in c.history if len(h["trials"]) == 4]
    assert full and all("reused_trial" in h for h in full)
    for h in full:
        best = h["trials"][h["reused_trial"]]
        assert best["lr"] == h["best_lr"]
        if h is not c.history[-1]:
            assert h["exploit_steps"] == h["tau"] - h["tau_prime"]  # the trial's tau' steps count for the stage
        # the exploit phase starts from exactly the weights the best trial ended with
        assert torch.equal(sim.inputs[h["exploit_start"]], sim.outputs[best["start_step"] + best["steps"] - 1])
    assert sum(h["search_steps"] + h["exploit_steps"] for h in c.history) == 1000
    assert sim.best_restores == sum(1 for h in full if h["reused_trial"] != 3)  # no restore when the last trial won


def test_early_stop_ends_confident_searches_sooner() -> None:
    plain, sim_plain = make(total=2000, num_trials=8, tau=40, search_ratio=0.25), Quadratic()
    early = make(total=2000, num_trials=8, tau=40, search_ratio=0.25, early_stop=True, min_trials=3)
    sim_early = Quadratic()
    sim_plain.run(plain, 2000)
    sim_early.run(early, 2000)
    stopped = [h for h in early.history if h.get("stopped_early")]
    assert stopped and all(3 <= len(h["trials"]) < 8 for h in stopped)
    trials = lambda c: [len(h["trials"]) for h in c.history if h["trials"]]  # noqa: E731
    assert sum(trials(early)) / len(trials(early)) < sum(trials(plain)) / len(trials(plain)) == 8
    assert sum(h["search_steps"] + h["exploit_steps"] for h in early.history) == 2000


def test_min_trials_bounds_early_stopping() -> None:
    runs = {}
    for m in (2, 7):  # 3000 steps: with the grid MAP fit the first early stop below 7 trials comes in stage 6
        c = make(total=3000, num_trials=8, early_stop=True, min_trials=m)
        Quadratic().run(c, 3000)
        runs[m] = [len(h["trials"]) for h in c.history if h["trials"]]
    assert min(runs[7]) >= 7 and min(runs[2]) < 7


# ---------------------------------------------------------------------------------------------- trial abort
def test_abort_ends_a_clearly_worse_trial_at_half_its_length() -> None:
    c = make(total=None, num_trials=3, tau=160, tau_max=160, search_ratio=0.1, abort_trials=True)
    assert c.stage_steps == (0, 0) or True
    good = [2.0 * math.exp(-0.1 * t) + 1.0 for t in range(16)]
    feed(c, good)  # trial 0: a real decay, forecast ~1.0
    flat = [2.9 + 0.01 * (t % 2) for t in range(16)]
    feed(c, flat[:8])  # trial 1: flat far above: aborted after 8 of 16 steps
    trials = c.history[0]["trials"]
    assert len(trials) == 2 and trials[1]["aborted"] and trials[1]["steps"] == 8
    assert trials[1]["predicted_loss"] > trials[0]["predicted_loss"]
    assert c.trial == 2 and c.phase == "search"
    close = [2.0 * math.exp(-0.09 * t) + 1.05 for t in range(16)]
    feed(c, close)  # trial 2: nearly as good: runs to the end
    trials = c.history[0]["trials"]
    assert trials[2]["steps"] == 16 and not trials[2].get("aborted")
    assert c.history[0]["search_steps"] == 40 and c.phase == "exploit" and c.history[0]["best_lr"] == trials[0]["lr"]


def test_abort_needs_trials_of_eight_points() -> None:
    c = make(total=None, num_trials=2, tau=60, tau_max=60, search_ratio=0.1, abort_trials=True)
    feed(c, [2.0 * math.exp(-0.3 * t) + 1.0 for t in range(6)])
    feed(c, [3.0] * 6)  # τ' = 6: too short to judge from half a series, so it runs to the end
    assert [t["steps"] for t in c.history[0]["trials"]] == [6, 6]


def test_abort_saves_search_steps_on_the_quadratic() -> None:
    runs = {}
    for abort in (False, True):
        c = make(total=3000, num_trials=6, tau=80, tau_max=320, search_ratio=0.2, abort_trials=abort)
        Quadratic().run(c, 3000)
        runs[abort] = c
    aborted = [t for h in runs[True].history for t in h["trials"] if t.get("aborted")]
    assert aborted and all(t["steps"] < h["tau_prime"] for h in runs[True].history for t in h["trials"] if t in aborted)
    per_trial = lambda c: sum(h["search_steps"] for h in c.history) / sum(len(h["trials"]) for h in c.history)  # noqa: E731
    assert per_trial(runs[True]) < per_trial(runs[False])


# ---------------------------------------------------------------------------------------------- warm start
def test_warm_start_anchors_on_the_previous_choice_and_feeds_the_gp() -> None:
    c, sim = make(total=2000, num_trials=5, warm_start=True), Quadratic()
    sim.run(c, 2000)
    searched = [h for h in c.history if h["trials"]]
    assert len(searched) >= 2 and "warm_start" not in searched[0]
    for prev, h in itertools.pairwise(searched):
        assert h["warm_start"] and h["trials"][0]["lr"] == min(max(prev["best_lr"], c.min_lr), h["lr_range"][1])
    # mid-stage the proposer holds the previous stage's other forecasts as prior points
    c2, sim2 = make(total=2000, num_trials=5, warm_start=True), Quadratic()
    sim2.run(c2, searched[1]["start_step"] + 2 * searched[1]["tau_prime"])
    prev = c2.history[-2]
    others = [t for t in prev["trials"] if not t["diverged"] and t["lr"] != prev["best_lr"]]
    others = [t for t in others if c2.min_lr <= t["lr"] <= c2.history[-1]["lr_range"][1]]
    assert c2.proposer.num_observations == 2 and c2.proposer.num_prior == len(others) >= 2


def test_warm_start_saves_trials_with_early_stop() -> None:
    trials = {}
    for warm in (False, True):
        c = make(total=4000, num_trials=8, tau=40, search_ratio=0.25, early_stop=True, warm_start=warm)
        Quadratic().run(c, 4000)
        trials[warm] = [len(h["trials"]) for h in c.history[1:] if h["trials"]]
    assert sum(trials[True]) < sum(trials[False])


# ---------------------------------------------------------------------------------------------- StageSearch alone
def _search(**options):
    from lightning_autolrs.forecast import ExponentialForecaster
    from lightning_autolrs.proposer import LRProposer
    from lightning_autolrs.records import StageRecord
    from lightning_autolrs.search import SearchOptions, StageSearch

    search = StageSearch(SearchOptions(**options), LRProposer(1e-3, 1.0, seed=0), ExponentialForecaster())
    record = StageRecord(stage=0, start_step=0, tau=20, tau_prime=5, lr_range=[1e-3, 1.0])
    record.signal = search.configure(0, 20, 5)
    return search, record


def test_a_stage_search_ranks_its_trials_and_ends() -> None:
    search, record = _search(num_trials=3)
    lr, step, outcomes = search.start(record, (1e-3, 1.0), [], step=0), 0, []
    for trial in range(3):
        for t in range(5):
            step += 1
            out = search.record_step(record, lr, 2.0 * math.exp(-0.2 * t) + trial, False, step)
            if out is not None:
                outcomes.append(out)
                lr = out.next_lr if out.best_lr is None else lr
    assert [o.best_lr is None for o in outcomes] == [True, True, False]
    last = outcomes[-1]
    assert [e.kind for e in last.events] == ["trial", "search"] and last.restore and not last.restore_best
    assert last.ranking == [t.lr for t in record.trials] and last.best_lr == record.best_lr == record.trials[0].lr
    assert [t.start_step for t in record.trials] == [0, 5, 10] and record.signal == "train_loss"


def test_a_diverged_trial_ends_at_once_and_ranks_last() -> None:
    search, record = _search(num_trials=2)
    lr = search.start(record, (1e-3, 1.0), [], step=0)
    out = search.record_step(record, lr, math.nan, True, 1)
    assert out is not None and record.trials[0].diverged and record.trials[0].steps == 1
    for t in range(5):
        out = search.record_step(record, out.next_lr or 0.0, 1.0 - 0.1 * t, False, 2 + t) or out
    assert out.best_lr == record.trials[1].lr and out.ranking == [record.trials[1].lr]


def test_search_state_round_trips() -> None:
    search, record = _search(num_trials=3, abort_trials=True, warm_start=True)
    lr = search.start(record, (1e-3, 1.0), [], step=0)
    for t in range(3):
        search.record_step(record, lr, 1.0 - 0.1 * t, False, t + 1)
    twin, _ = _search(num_trials=3, abort_trials=True, warm_start=True)
    twin.load_state_dict(json.loads(json.dumps(search.state_dict())))
    assert twin.state_dict() == json.loads(json.dumps(search.state_dict()))


@pytest.mark.parametrize(("other", "anchor_kept"), [(0.99, True), (0.9709, True), (0.97, False), (0.9, False)])
def test_a_tie_keeps_the_anchor(other: float, anchor_kept: bool) -> None:
    """Forecasts within TIE_TOLERANCE (3 %) of the best do not separate: the stage keeps its anchor (the LR it
    started from); a clearly lower forecast wins."""
    from lightning_autolrs.controller import StageController
    from lightning_autolrs.search import TIE_TOLERANCE

    assert TIE_TOLERANCE == 0.03
    c = StageController(
        1e-3, 1.0, num_trials=2, tau=50, tau_max=50, search_ratio=0.2, total_steps=100, seed=0, anchor_lr=0.02
    )
    while c.phase != "exploit" or c.stage < 0:
        plan = c.begin_step()
        c.end_step(1.0 if plan.lr == 0.02 else other)  # flat series: each forecast is its level
    trials = c.history[0]["trials"]
    assert trials[0]["lr"] == 0.02 and trials[1]["lr"] != 0.02
    assert c.history[0]["best_lr"] == (0.02 if anchor_kept else trials[1]["lr"])
