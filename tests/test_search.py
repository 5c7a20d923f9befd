"""Tests of one stage's search (:mod:`lightning_autolrs.search`): best-trial reuse, ranking, ties and state, alone and
driven by the controller."""

from __future__ import annotations

import json
import math

import pytest
import torch

from .helpers import Quadratic, make


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
    lr, step, outcomes = search.start((1e-3, 1.0), step=0), 0, []
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
    lr = search.start((1e-3, 1.0), step=0)
    out = search.record_step(record, lr, math.nan, True, 1)
    assert out is not None and record.trials[0].diverged and record.trials[0].steps == 1
    for t in range(5):
        out = search.record_step(record, out.next_lr or 0.0, 1.0 - 0.1 * t, False, 2 + t) or out
    assert out.best_lr == record.trials[1].lr and out.ranking == [record.trials[1].lr]


def test_a_trial_that_diverges_on_a_finite_loss_records_no_final_loss() -> None:
    """A loss above the divergence threshold is finite; the record keeps no training loss for the trial (the
    schedule's documented ``null``; it used to keep the mean of its finite losses, which the table printed)."""
    search, record = _search(num_trials=2)
    lr = search.start((1e-3, 1.0), step=0)
    search.record_step(record, lr, 1.0, False, 1)
    search.record_step(record, lr, 50.0, True, 2)
    trial = record.trials[0]
    assert trial.diverged and trial.steps == 2 and trial.final_loss is None and trial.predicted_loss is None


def test_search_state_round_trips() -> None:
    search, record = _search(num_trials=3)
    lr = search.start((1e-3, 1.0), step=0, anchor=0.02)
    for t in range(3):
        search.record_step(record, lr, 1.0 - 0.1 * t, False, t + 1)
    state = json.loads(json.dumps(search.state_dict()))
    twin, _ = _search(num_trials=3)
    twin.load_state_dict(state)
    assert twin.state_dict() == state and state["trial_losses"] == [1.0, 0.9, 0.8] and state["anchor_lr"] == 0.02
    # a state written while trial abort and warm start existed: their keys are ignored
    old, _ = _search(num_trials=3)
    old.load_state_dict(state | {"stage_level": 1.0, "abort_checked": True, "warm_prior": [[0.01, 0.5], [0.1, 0.7]]})
    assert old.state_dict() == state


@pytest.mark.parametrize(("other", "anchor_kept"), [(0.99, True), (0.9709, True), (0.97, False), (0.9, False)])
def test_a_tie_keeps_the_anchor(other: float, anchor_kept: bool) -> None:
    """In stage 0, forecasts within TIE_TOLERANCE (3 %) of the best do not separate, however clean the series (here
    constant): the stage keeps its anchor (the LR it started from); a clearly lower forecast wins."""
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


def _preferred(stage: int, other: float, noise: tuple[float | None, float | None]) -> int | None:
    """Which of two trials (the anchor's forecast 1.0, the other's ``other``, with these series noises) stage
    ``stage`` prefers."""
    from lightning_autolrs.records import TrialRecord

    search, _ = _search(num_trials=3)
    search.set_stage(stage, 50, 10)
    search.anchor_index = 0
    trials = [
        TrialRecord(lr=0.01, start_step=0, predicted_loss=1.0, steps=10, diverged=False, noise=noise[0]),
        TrialRecord(lr=0.02, start_step=10, predicted_loss=other, steps=10, diverged=False, noise=noise[1]),
    ]
    return search.preferred(trials)


@pytest.mark.parametrize(
    ("other", "noise", "anchor_kept"),
    [
        (0.99, (0.0, 0.0), False),  # constant series: any difference separates
        (0.99, (0.003, 0.003), False),  # 2·√2·0.003 = 0.0085 < 0.01
        (0.99, (0.004, 0.004), True),  # 0.0113 > 0.01: within the noise
        (0.99, (0.002, 0.006), True),  # the median of the two: 0.004
        (0.99, (None, 0.003), False),  # a trial without a noise does not count
        (0.99, (None, None), True),  # none has one (recorded before it existed): the 3 % tie
        (0.97, (0.05, 0.05), False),  # noisy series: the tie is still at most 3 %
        (0.9709, (0.05, 0.05), True),
    ],
)
def test_after_stage_0_clean_series_narrow_the_tie(
    other: float, noise: tuple[float | None, float | None], anchor_kept: bool
) -> None:
    """After stage 0 the tie is at most TIE_NOISE_Z (2) standard errors of a difference of two series points,
    2·√2·σ (σ: the median of the trials' noises), and at most 3 %; stage 0 keeps the 3 % whatever the noise."""
    from lightning_autolrs.search import TIE_NOISE_Z

    assert TIE_NOISE_Z == 2.0
    assert _preferred(1, other, noise) == (0 if anchor_kept else 1)
    assert _preferred(0, other, noise) == (0 if other > 0.9709 - 1e-12 else 1)


def test_a_later_stage_leaves_its_anchor_for_a_clean_one_percent() -> None:
    """Through the controller: constant series, the other trial 1 % below the anchor's. Stage 0 keeps its anchor (a
    tie within 3 %); stage 1, whose anchor is that LR, leaves it (its series have no noise)."""
    from lightning_autolrs.controller import StageController

    c = StageController(
        1e-3, 1.0, num_trials=2, tau=50, tau_max=50, search_ratio=0.2, total_steps=400, seed=0, anchor_lr=0.02
    )
    while c.stage < 2 and not (c.stage == 1 and c.phase == "exploit"):
        plan = c.begin_step()
        c.end_step(1.0 if plan.lr == 0.02 else 0.99)
    first, second = c.history[0], c.history[1]
    assert first["best_lr"] == 0.02 and [t["noise"] for t in first["trials"]] == [0.0, 0.0]
    assert second["trials"][0]["lr"] == 0.02 and second["best_lr"] == second["trials"][1]["lr"] != 0.02


def test_series_noise_is_the_scale_around_the_fit_or_of_the_differences() -> None:
    """An exponential series with noise: the residuals' robust scale (not the trend's); a series without a fit: the
    robust scale of its successive differences over √2; too few points: None."""
    import random

    from lightning_autolrs.forecast import ExponentialForecaster
    from lightning_autolrs.search import series_noise

    rng = random.Random(0)
    series = [0.5 + 2.0 * math.exp(-0.05 * (i + 1)) + 0.01 * rng.gauss(0.0, 1.0) for i in range(200)]
    fc = ExponentialForecaster().predict(series, 2000)
    assert fc.method == "exp"
    assert 0.008 < series_noise(series, fc) < 0.012  # the noise, 0.01; the trend spans 1.6
    assert series_noise(series, None) > 0.012  # differences of a steep series also carry its curvature's spread
    flat = [1.0 + 0.01 * rng.gauss(0.0, 1.0) for _ in range(200)]
    assert 0.008 < series_noise(flat, ExponentialForecaster().predict(flat, 2000)) < 0.012
    assert series_noise([1.0, float("nan"), 0.9], None) is None and series_noise([1.0, 0.9, 0.8], None) == 0.0


def test_a_state_written_before_the_noise_tie_keeps_the_three_percent_tie() -> None:
    """A run resumed from a state without ``noise_ties`` (written before the rule) goes on as it would have: its later
    stages tie within 3 % whatever the noise, and its trials record no noise (their dicts are as before)."""
    from lightning_autolrs.records import TrialRecord

    search, record = _search(num_trials=2)
    state = search.state_dict()
    assert state["noise_ties"] is True
    del state["noise_ties"]
    search.load_state_dict(state)
    assert search.noise_ties is False
    search.set_stage(1, 50, 10)
    search.anchor_index = 0
    trials = [
        TrialRecord(lr=0.01, start_step=0, predicted_loss=1.0, steps=10, diverged=False, noise=0.0),
        TrialRecord(lr=0.02, start_step=10, predicted_loss=0.99, steps=10, diverged=False, noise=0.0),
    ]
    assert search.preferred(trials) == 0  # with the rule: 1 (test_after_stage_0_clean_series_narrow_the_tie)
    lr = search.start((1e-3, 1.0), step=0, anchor=0.02)
    for t in range(10):
        search.record_step(record, lr, 1.0 - 0.01 * t, False, t + 1)
    assert record.trials[0].noise is None and "noise" not in record.trials[0].to_dict()


@pytest.mark.parametrize(
    ("forecasts", "diverged", "high", "default"),
    [
        ((1.0, 1.5, 2.5), (False, False, False), 1, 0),  # 2.5 > 2 × 1.0: the highest within it is 0.02
        ((1.0, 1.5, 2.0), (False, False, False), 2, 0),  # 2.0 is within 2 × the lowest
        ((1.2, 1.0, 1.9), (False, False, False), 2, 1),  # within 2 × the lowest (1.0), not the anchor's
        ((1.0, 1.5, None), (False, False, True), 1, 0),  # a diverged trial is never picked
        ((-1.0, -0.5, 0.5), (False, False, False), 1, 0),  # a negative lowest: within it plus its magnitude, 0
    ],
)
def test_a_high_pick_stage_takes_the_highest_lr_within_twice_the_lowest_forecast(
    forecasts: tuple, diverged: tuple, high: int, default: int
) -> None:
    """``start(..., high_pick=True)`` (the stage before the final anneal, without a generalization gap): the highest LR
    among the trials whose forecast is at most HIGH_PICK_FACTOR (2) times the lowest, with no tie rule; otherwise the
    lowest forecast (or the anchor, within the tie)."""
    from lightning_autolrs.records import TrialRecord
    from lightning_autolrs.search import HIGH_PICK_FACTOR

    assert HIGH_PICK_FACTOR == 2.0
    trials = [
        TrialRecord(lr=lr, start_step=10 * i, predicted_loss=f, steps=10, diverged=d, noise=0.01)
        for i, (lr, f, d) in enumerate(zip((0.01, 0.02, 0.03), forecasts, diverged))
    ]
    for high_pick, expected in ((True, high), (False, default)):
        search, _ = _search(num_trials=3)
        search.start((1e-3, 1.0), step=0, anchor=0.01, high_pick=high_pick)
        search.set_stage(1, 50, 10)
        assert search.preferred(trials) == expected


def test_the_high_pick_is_kept_in_the_state_and_absent_from_an_older_one() -> None:
    """A run resumed mid-search keeps the stage's rule; a state written before the rule (no ``high_pick`` key) goes on
    with the default judge, as it began."""
    search, _ = _search(num_trials=3)
    search.start((1e-3, 1.0), step=0, anchor=0.02, high_pick=True)
    state = json.loads(json.dumps(search.state_dict()))
    twin, _ = _search(num_trials=3)
    twin.load_state_dict(state)
    assert state["high_pick"] is True and twin.high_pick is True
    del state["high_pick"]
    twin.load_state_dict(state)
    assert twin.high_pick is False


def test_a_high_pick_takes_the_earliest_trial_of_its_lr_and_survives_a_restart() -> None:
    """Two trials at the highest LR within the window: the earlier one (the one whose end state reuse would have kept).
    A search restarted from resumed weights keeps its stage's rule."""
    from lightning_autolrs.records import TrialRecord

    search, record = _search(num_trials=3)
    search.start((1e-3, 1.0), step=0, anchor=0.01, high_pick=True)
    trials = [
        TrialRecord(lr=lr, start_step=10 * i, predicted_loss=f, steps=10, diverged=False)
        for i, (lr, f) in enumerate([(0.01, 1.0), (0.02, 1.5), (0.02, 1.2)])
    ]
    assert search.preferred(trials) == 1
    search.restart(record, step=30)
    assert search.high_pick is True and search.preferred(trials) == 1
