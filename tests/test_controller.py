"""Tests of the pure AutoLRS state machine, driven by a small noisy quadratic problem (no Trainer)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lightning_autolrs.controller import StageController, default_tau
from lightning_autolrs.exceptions import InvalidArgumentError, InvalidArgumentTypeError


class Quadratic:
    """Noisy gradient descent on 0.5·Σ h_i w_i²; diverges for lr > 2 / max(h) = 0.2. Executes a controller's plans."""

    def __init__(self, seed: int = 0, nan_above: float | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.h = torch.logspace(-1, 1, 16, dtype=torch.float64)
        self.w = torch.randn(16, generator=g, dtype=torch.float64) * 3
        self.gen = g
        self.saved: torch.Tensor | None = None
        self.best: torch.Tensor | None = None
        self.best_restores = 0
        self.inputs: list[torch.Tensor] = []  # weights each step started from (after restores)
        self.outputs: list[torch.Tensor] = []  # weights after each step
        self.restores = 0
        self.captures = 0
        self.nan_above = nan_above

    def run(self, c: StageController, steps: int) -> None:
        for _ in range(steps):
            plan = c.begin_step()
            if plan.save_best:
                self.best = self.w.clone()
            if plan.restore_best:
                assert self.best is not None and not plan.restore
                self.w.copy_(self.best)
                self.best_restores += 1
            if plan.restore:
                assert self.saved is not None
                self.w.copy_(self.saved)
                self.restores += 1
            if plan.capture:
                self.saved = self.w.clone()
                self.captures += 1
            self.inputs.append(self.w.clone())
            noise = torch.randn(16, generator=self.gen, dtype=torch.float64) * 0.1
            loss = float(0.5 * (self.h * (self.w + noise) ** 2).sum())
            self.w -= plan.lr * self.h * (self.w + noise)
            if self.nan_above is not None and plan.lr > self.nan_above:
                loss = math.nan
                self.w.fill_(math.nan)
            self.outputs.append(self.w.clone())
            c.end_step(loss)


def make(total: int | None = 1000, min_lr: float = 1e-3, max_lr: float = 1.0, **kw) -> StageController:
    args = dict(num_trials=4, tau=40, tau_max=160, search_ratio=0.25, total_steps=total, seed=0)
    args.update(kw)
    return StageController(min_lr, max_lr, **args)


def test_default_tau_fits_three_stages() -> None:
    for total in (500, 2000, 12345):
        tau = default_tau(total, num_trials=10, search_ratio=0.1, warmup_steps=50)
        assert 7 * tau * 2 <= total - 50  # (1 + 2 + 4) stages, each costing tau·(1 + 10·0.1)
        assert 7 * (tau + 1) * 2 > total - 50
    assert default_tau(None, 10, 0.1, 0) == 1000


def test_phase_accounting_over_the_whole_budget() -> None:
    c, sim = make(total=1000), Quadratic()
    sim.run(c, 1000)
    assert len(c.lrs) == c.step == 1000
    accounted = sum(h["search_steps"] + h["exploit_steps"] for h in c.history)
    assert accounted == 1000
    for h in c.history[:-1]:  # full stages: k trials of tau' steps, then tau exploit steps (or more for the last)
        assert len(h["trials"]) == 4
        assert all(t["steps"] == h["tau_prime"] for t in h["trials"] if not t["diverged"])
        assert h["exploit_steps"] == h["tau"]
    assert [h["tau"] for h in c.history[:4]] == [40, 80, 160, 160]
    assert [h["tau_prime"] for h in c.history[:4]] == [10, 20, 40, 40]
    last = c.history[-1]
    assert last["exploit_start"] + last["exploit_steps"] == 1000
    json.dumps(c.history)  # JSON-serialisable


def test_restores_per_full_stage_equal_num_trials() -> None:
    c, sim = make(total=None, max_lr=0.15), Quadratic()  # all stable: no trial is cut short
    sim.run(c, 40 + 40)  # first stage: 4 trials × 10 steps + 40 exploit steps
    assert len(c.history) == 1 and c.phase == "exploit"
    assert sim.captures == 1 and sim.restores == 4
    sim.run(c, 1)  # next stage starts with a capture
    assert sim.captures == 2 and c.phase == "search"


def test_lrs_stay_in_range_and_best_is_the_lowest_forecast() -> None:
    c, sim = make(total=1000), Quadratic()
    sim.run(c, 1000)
    assert all(1e-3 <= lr <= 1.0 for lr in c.lrs)
    for h in c.history:
        ok = [t for t in h["trials"] if not t["diverged"]]
        if ok:
            assert h["best_lr"] == min(ok, key=lambda t: (t["predicted_loss"], t["lr"]))["lr"]
        start, n = h["exploit_start"], h["exploit_steps"]
        assert set(c.lrs[start : start + n]) <= {h["best_lr"]} | {f["new_lr"] for f in h["fallbacks"]}


def test_search_finds_a_stable_lr_and_beats_min_lr() -> None:
    c, sim = make(total=1000), Quadratic()
    sim.run(c, 1000)
    baseline, base_sim = make(total=1000), Quadratic()
    for h in c.history:
        assert h["best_lr"] < 0.2  # the stable region of the quadratic
    final = float(0.5 * (sim.h * sim.w**2).sum())
    w = base_sim.w.clone()
    for _ in range(1000):
        w -= 1e-3 * base_sim.h * w
    assert final < 0.1 * float(0.5 * (base_sim.h * w**2).sum())
    del baseline


def test_budget_never_starts_a_search_that_cannot_finish() -> None:
    for total in (130, 175, 333, 700):
        c, sim = make(total=total), Quadratic()
        sim.run(c, total)
        for h in c.history:
            if h["trials"]:
                assert h["start_step"] + h["search_steps"] + h["tau_prime"] <= total
        assert c.history[-1]["exploit_start"] + c.history[-1]["exploit_steps"] == total


def test_warmup_is_linear_and_searchless() -> None:
    c, sim = make(total=1000, warmup_steps=10, warmup_lr=0.05), Quadratic()
    sim.run(c, 10)
    assert c.lrs == pytest.approx([0.005 * (i + 1) for i in range(10)])
    assert c.history == [] and c.phase == "warmup"
    sim.run(c, 1)
    assert c.phase == "search" and c.history[0]["start_step"] == 10


def test_diverging_trials_are_cut_and_the_range_shrinks() -> None:
    c, sim = make(total=None, num_trials=6), Quadratic(nan_above=0.3)
    sim.run(c, 300)
    first = c.history[0]
    diverged = [t for t in first["trials"] if t["diverged"]]
    assert diverged, "the design should try an LR above 0.3"
    assert all(t["steps"] == 1 and t["lr"] > 0.3 and t["predicted_loss"] is None for t in diverged)
    assert first["best_lr"] <= 0.3
    assert c.history[1]["lr_range"][1] == min(t["lr"] for t in diverged)
    assert torch.isfinite(sim.w).all()


def test_exploit_divergence_falls_back_to_a_smaller_lr() -> None:
    c = make(total=None, num_trials=2, tau=20, tau_max=20, search_ratio=0.25)
    sim = Quadratic()
    sim.run(c, 10)  # two trials of 5 steps
    assert c.phase == "exploit"
    chosen = c.history[0]["best_lr"]
    plan = c.begin_step()
    events = c.end_step(math.nan)  # the exploit step blew up
    assert plan.lr == chosen and events[0]["event"] == "fallback"
    nxt = c.begin_step()
    assert nxt.restore and nxt.lr < chosen and c.history[0]["fallbacks"][0]["failed_lr"] == chosen


def test_first_proposal_is_deterministic_given_seed() -> None:
    a, b, other = make(seed=3), make(seed=3), make(seed=4)
    assert a.begin_step().lr == b.begin_step().lr != other.begin_step().lr


def test_state_dict_round_trip_mid_search_continues_identically() -> None:
    a, sim_a = make(total=600), Quadratic(seed=1)
    sim_a.run(a, 57)  # inside the first stage's search
    state = a.state_dict()
    torch.save(state, buf := __import__("io").BytesIO())
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    b = make(total=600)
    b.load_state_dict(loaded)
    sim_b = Quadratic(seed=1)
    sim_b.w, sim_b.saved, sim_b.gen = sim_a.w.clone(), sim_a.saved.clone(), sim_a.gen.clone_state()
    sim_a.run(a, 543)
    sim_b.run(b, 543)
    assert a.lrs == b.lrs and a.history == b.history
    assert torch.equal(sim_a.w, sim_b.w)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(min_lr=0.0), InvalidArgumentError, "`min_lr`"),
        (dict(max_lr=1e-4), InvalidArgumentError, "`max_lr`"),
        (dict(max_lr=math.inf), InvalidArgumentError, "`max_lr`"),
        (dict(num_trials=1), InvalidArgumentError, "`num_trials`"),
        (dict(num_trials=2.5), InvalidArgumentTypeError, "`num_trials`"),
        (dict(tau=0), InvalidArgumentError, "`tau`"),
        (dict(tau_max=10), InvalidArgumentError, "`tau_max`"),
        (dict(search_ratio=1.0), InvalidArgumentError, "`search_ratio`"),
        (dict(warmup_steps=-1), InvalidArgumentError, "`warmup_steps`"),
        (dict(warmup_steps=5), InvalidArgumentError, "`warmup_lr`"),
        (dict(divergence_factor=1.0), InvalidArgumentError, "`divergence_factor`"),
    ],
)
def test_invalid_arguments(kwargs, exc, match) -> None:
    args = dict(min_lr=1e-3, max_lr=1.0, tau=40)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        StageController(args.pop("min_lr"), args.pop("max_lr"), **args)


@settings(max_examples=15, deadline=None)
@given(
    total=st.integers(60, 400),
    k=st.integers(2, 4),
    tau=st.integers(4, 40),
    ratio=st.sampled_from([0.1, 0.25, 0.5]),
    warmup=st.integers(0, 10),
)
def test_property_budget_bounds_and_restores(total, k, tau, ratio, warmup) -> None:
    assume(total >= warmup + (k + 1) * max(1, round(ratio * tau)))  # the first search fits (the callback checks this)
    c = StageController(
        1e-3,
        1.0,
        num_trials=k,
        tau=tau,
        tau_max=4 * tau,
        search_ratio=ratio,
        warmup_steps=warmup,
        warmup_lr=0.01 if warmup else None,
        total_steps=total,
        seed=0,
    )
    sim = Quadratic()
    sim.run(c, total)
    assert len(c.lrs) == total
    assert warmup + sum(h["search_steps"] + h["exploit_steps"] for h in c.history) == total
    assert all(1e-3 <= lr <= 1.0 for lr in c.lrs[warmup:])
    full = [h for h in c.history if len(h["trials"]) == k]
    fallbacks = sum(len(h["fallbacks"]) for h in c.history)
    assert sim.restores + int(c.finalize()) == k * len(full) + fallbacks  # a fallback at the last step is pending


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


def test_exploit_fallback_never_leaves_the_range() -> None:
    c = make(total=None, num_trials=2, tau=20, tau_max=20, search_ratio=0.25)
    Quadratic().run(c, 10)
    for _ in range(6):  # the exploit LR keeps diverging: fall back, again and again
        c.begin_step()
        c.end_step(math.nan)
    assert all(1e-3 <= lr <= 1.0 for lr in c.lrs)
    assert c.history[0]["fallbacks"][-1]["new_lr"] == 1e-3


@pytest.mark.parametrize(
    "change",
    [dict(beta=0.5), dict(divergence_factor=1.5), dict(seed=7), dict(search_ratio=0.1), dict(tau_max=40)],
)
def test_every_setting_changes_the_schedule(change) -> None:
    base, other = make(total=600, num_trials=5), make(total=600, num_trials=5, **change)
    Quadratic().run(base, 600)
    Quadratic().run(other, 600)
    assert base.lrs != other.lrs or base.history != other.history


def test_min_trials_bounds_early_stopping() -> None:
    runs = {}
    for m in (2, 7):
        c = make(total=2000, num_trials=8, early_stop=True, min_trials=m)
        Quadratic().run(c, 2000)
        runs[m] = [len(h["trials"]) for h in c.history if h["trials"]]
    assert min(runs[7]) >= 7 and min(runs[2]) < 7


# ---------------------------------------------------------------------------------------------- range test
def make_range_test(total: int = 600, steps: int = 40, **kw) -> StageController:
    args = dict(num_trials=4, tau=40, tau_max=160, search_ratio=0.25, total_steps=total, seed=0)
    args.update(kw)
    return StageController(None, None, range_test_steps=steps, range_test_lrs=(1e-5, 10.0), **args)


def test_range_test_sweeps_stops_at_blow_up_and_sets_the_range() -> None:
    c, sim = make_range_test(), Quadratic()
    sim.run(c, 600)
    rt = c.range_test
    assert rt is not None and rt["start_step"] == 0 and rt["stopped_early"]
    n = rt["steps"]
    assert 10 < n < 40  # stopped once the loss blew up, well before the sweep's end at lr=10
    ratios = [b / a for a, b in itertools.pairwise(rt["lrs"])]
    assert ratios == pytest.approx([(1e6) ** (1 / 39)] * (n - 1))  # geometric from 1e-5 towards 10
    assert rt["lrs"][0] == pytest.approx(1e-5)
    # the quadratic diverges above lr = 0.2; the loss lags the sweep by a few steps, which the 3-step lag correction
    # undoes: the range ends within a quarter decade of that edge and spans three decades
    assert 0.1 <= c.max_lr <= 0.2 * 10**0.25 and c.min_lr == pytest.approx(c.max_lr / 1000)
    assert c.history[1]["lr_range"][1] <= 0.2 * 10**0.5
    assert c.history[0]["start_step"] == n and c.history[0]["lr_range"] == [c.min_lr, c.max_lr]
    # the sweep's steps are undone: the first stage starts from the weights the sweep started from
    assert torch.equal(sim.inputs[n], sim.inputs[0])
    assert all(c.min_lr <= lr <= c.max_lr for lr in c.lrs[n:])
    assert sum(h["search_steps"] + h["exploit_steps"] for h in c.history) + n == len(c.lrs) == 600


def test_range_test_is_warmup_phase_and_resumes_exactly() -> None:
    c, sim = make_range_test(), Quadratic()
    sim.run(c, 7)
    assert c.phase == "warmup" and c.range_test_running and c.range_test_position == 7
    assert c.finalize() and c.needs_snapshot  # an interrupted sweep must be undone
    state = json.loads(json.dumps(c.state_dict()))
    twin, sim_twin = make_range_test(), Quadratic()
    twin.load_state_dict(state)
    sim_twin.w, sim_twin.gen, sim_twin.saved = sim.w.clone(), _clone_gen(sim.gen), sim.saved.clone()
    sim.run(c, 300)
    sim_twin.run(twin, 300)
    assert c.lrs == twin.lrs and c.range_test == twin.range_test and c.history == twin.history


def _clone_gen(gen: torch.Generator) -> torch.Generator:
    out = torch.Generator()
    out.set_state(gen.get_state())
    return out


def test_range_test_keeps_a_given_bound_and_follows_warmup() -> None:
    c = StageController(
        None, 0.05, num_trials=4, tau=40, search_ratio=0.25, total_steps=600, warmup_steps=5, warmup_lr=0.01,
        range_test_steps=30, range_test_lrs=(1e-5, 10.0),
    )  # fmt: skip
    Quadratic().run(c, 600)
    assert c.range_test["start_step"] == 5 and c.max_lr == 0.05 and c.min_lr == pytest.approx(5e-5)
    assert c.lrs[:5] == pytest.approx([0.002 * (i + 1) for i in range(5)])


def test_range_test_without_any_finite_loss_falls_back_to_the_lowest_lr() -> None:
    c = make_range_test(steps=10)
    for _ in range(1):
        c.begin_step()
        c.end_step(math.nan)
    assert c.range_test is not None and c.range_test["stopped_early"] and c.max_lr == 1e-5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(range_test_steps=1, range_test_lrs=(1e-5, 1.0)), "range_test_steps"),
        (dict(range_test_steps=10), "range_test_lrs"),
        (dict(range_test_steps=10, range_test_lrs=(1.0, 1e-5)), "range_test_lrs"),
        (dict(range_test_steps=0), "min_lr"),
    ],
)
def test_range_test_arguments(kwargs, match) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        StageController(None, None, tau=10, **kwargs)


# ---------------------------------------------------------------------------------------------- trial abort
def feed(c: StageController, losses) -> None:
    for loss in losses:
        c.begin_step()
        c.end_step(loss)


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
