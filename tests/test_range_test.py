"""Tests of the LR range test (:mod:`lightning_autolrs.range_test`), alone and driven by the controller."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from lightning_autolrs.controller import StageController
from lightning_autolrs.exceptions import InvalidArgumentError

from .helpers import Quadratic
from .helpers import clone_gen as _clone_gen


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


def test_the_first_stage_judges_divergence_against_the_untrained_losses_of_the_sweep_not_one_batch() -> None:
    """Stage 0's reference loss is the largest loss of the sweep's first quarter (the untrained model on as many
    batches), as a later stage's is the largest of its last losses. With batch noise 5-10x above the stage's first loss
    a reference of that one loss read every trial as diverged and fell back to ``min_lr``; a real blow-up is still
    cut."""
    c = make_range_test(total=400, steps=40, num_trials=2, tau=100, tau_max=100, search_ratio=0.1)
    noisy = [1.0, 3.0, 2.0, 2.5] * 3  # the untrained model's batches: 1-3
    while c.range_test_running:
        plan = c.begin_step()
        i = c.range_test_position
        c.end_step(noisy[i] if i < len(noisy) else (0.5 if plan.lr < 0.2 else math.nan))
    start = c.step
    assert c.range_test["steps"] < 40 and max(noisy) == 3.0
    for k in range(100):  # stage 0: its first loss 1.0, then batches at 5.5-10x that (below 5x the sweep's 3.0)
        c.begin_step()
        c.end_step(1.0 if k == 0 else 5.5 + 4.5 * ((7 * k) % 11) / 10)
    stage = c.history[0]
    assert stage["start_step"] == start and stage["search_steps"] == 20 and stage["exploit_steps"] == 80
    assert not any(t["diverged"] for t in stage["trials"]) and stage["fallbacks"] == []
    assert all(t["steps"] == 10 for t in stage["trials"])
    c.begin_step()
    events = c.end_step(16.0)  # above 5x the reference 3.0 (and half the fit's first loss): a blow-up
    assert [e["event"] for e in events] == ["fallback"]


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


def test_range_test_keeps_a_given_bound_and_precedes_the_warmup() -> None:
    """The sweep runs first, on the untrained model (on a warmed-up one its loss is flat until it blows up, and the
    lowest point is noise); the warmup then ramps from the restored start state, and the first stage follows it."""
    c = StageController(
        None, 0.05, num_trials=4, tau=40, search_ratio=0.25, total_steps=600, warmup_steps=5, warmup_lr=0.01,
        range_test_steps=30, range_test_lrs=(1e-5, 10.0),
    )  # fmt: skip
    sim = Quadratic()
    sim.run(c, 1)
    assert c.range_test_running and c.phase == "warmup" and c.lrs == [pytest.approx(1e-5)]
    sim.run(c, 599)
    rt = c.range_test
    assert rt["start_step"] == 0 and c.max_lr == 0.05 and c.min_lr == pytest.approx(5e-5)
    n = rt["steps"]
    assert c.lrs[:n] == rt["lrs"]
    assert c.lrs[n : n + 5] == pytest.approx([0.002 * (i + 1) for i in range(5)])  # then the warmup
    assert c.history[0]["start_step"] == n + 5


def test_the_warmup_after_the_range_test_starts_from_the_restored_state_and_survives_a_checkpoint() -> None:
    """The first warmup step restores the state the sweep began from (the warmup trains the untrained model, not the
    one the sweep left, and its steps count); a checkpoint in the warmup resumes it at the same LRs (review)."""
    kwargs = dict(num_trials=4, tau=40, search_ratio=0.25, total_steps=600, warmup_steps=10, warmup_lr=0.01,
                  range_test_steps=30, range_test_lrs=(1e-5, 10.0))  # fmt: skip
    c = StageController(None, None, **kwargs)
    sim = Quadratic()
    while c.range_test is None:
        sim.run(c, 1)
    n = c.range_test["steps"]
    assert not torch.equal(sim.outputs[n - 1], sim.inputs[0])  # the sweep moved the weights
    sim.run(c, 3)
    assert sim.restores == 1 and torch.equal(sim.inputs[n], sim.inputs[0]) and c.phase == "warmup"
    assert c.lrs[n : n + 3] == pytest.approx([0.001, 0.002, 0.003])
    assert not c.needs_snapshot  # nothing pending in the warmup: checkpoints and validation see the model as it is
    state = json.loads(json.dumps(c.state_dict()))
    twin = StageController(None, None, **kwargs)
    twin.load_state_dict(state)
    assert twin.begin_step().lr == c.begin_step().lr == pytest.approx(0.004)  # the 4th of 10 warmup steps
    old = {k: v for k, v in state.items() if k != "warmup_from"}  # a state written when the warmup came first
    twin.load_state_dict(old)
    assert twin._warmup_end == 10


def test_range_test_without_any_finite_loss_raises_instead_of_setting_a_range() -> None:
    from lightning_autolrs.exceptions import NonFiniteLossError

    c = make_range_test(steps=10)
    c.begin_step()
    with pytest.raises(NonFiniteLossError, match=r"no finite training loss: its step 1's loss was NaN/inf at lr="):
        c.end_step(math.nan)  # (it used to set the range to the lowest swept LR after this one step)
    assert c.range_test is None and c.needs_snapshot  # the caller restores the sweep's snapshot
    # steps without a loss before the NaN are named as such (they used to be counted as non-finite losses)
    late = make_range_test(steps=10)
    for _ in range(2):
        late.begin_step()
        late.end_step(None)
    late.begin_step()
    with pytest.raises(NonFiniteLossError, match=r"its first 2 step\(s\) gave no finite loss and its step 3's loss"):
        late.end_step(math.inf)


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


# ---------------------------------------------------------------------------------------------- RangeTest alone
def test_sweep_is_geometric_and_ends_at_its_length() -> None:
    from lightning_autolrs.range_test import RangeTest

    rt = RangeTest(5, (1e-4, 1.0), given=(None, None))
    lrs = [rt.lr(i) for i in range(5)]
    assert lrs[0] == 1e-4 and lrs[-1] == 1.0 and [b / a for a, b in itertools.pairwise(lrs)] == pytest.approx([10] * 4)
    assert [rt.record(lr, 1.0 - 0.1 * i, step=i + 1) for i, lr in enumerate(lrs[:4])] == [None] * 4
    result = rt.record(lrs[4], 0.5, step=5)
    assert result is not None and not result.stopped_early and result.steps == 5 and result.start_step == 0
    assert not rt.pending and result.max_lr == lrs[4 - 3] and result.min_lr == pytest.approx(result.max_lr / 1000)


def test_given_bounds_win_and_state_round_trips() -> None:
    from lightning_autolrs.range_test import RangeTest

    rt = RangeTest(4, (1e-4, 1.0), given=(2e-4, None))
    for i, loss in enumerate([1.0, 0.9, 0.8]):
        rt.record(rt.lr(i), loss, step=i + 1)
    twin = RangeTest(4, (1e-4, 1.0), given=(2e-4, None))
    twin.load_state_dict(json.loads(json.dumps(rt.state_dict())))
    assert twin.position == 3 and twin.pending
    a, b = rt.record(rt.lr(3), math.inf, step=4), twin.record(twin.lr(3), math.inf, step=4)
    assert a == b and a is not None and a.stopped_early and a.min_lr == 2e-4 and a.max_lr > 2e-4


def test_a_given_min_lr_above_the_range_found_keeps_the_sweeps_evidence() -> None:
    """A given ``min_lr`` at or above the ``max_lr`` the sweep points to used to make ``max_lr = min_lr x 1000``
    silently (trials three decades above where the loss blew up). Now ``max_lr`` is the highest LR the sweep took
    without blowing up, at least ``GIVEN_MIN_SPAN x min_lr``, and the sweep's own answer is kept for the warning."""
    from lightning_autolrs.range_test import GIVEN_MIN_SPAN, RangeTest

    def sweep(given_lo: float, losses: list[float]) -> RangeTest:
        rt = RangeTest(len(losses), (1e-4, 10.0), given=(given_lo, None))
        for i, loss in enumerate(losses):
            if rt.record(rt.lr(i), loss, step=i + 1) is not None:
                break
        return rt

    falls = [1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45]  # lowest at 10^-1.6, no blow-up to 10
    wide = sweep(0.5, falls)
    assert wide.result is not None and not wide.result.stopped_early
    assert wide.found_max_lr is not None and wide.found_max_lr < 0.5
    assert wide.result.min_lr == 0.5 and wide.result.max_lr == pytest.approx(10.0)  # the sweep ran clean up to 10
    blew = sweep(0.5, [1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 50.0, 1.0, 1.0, 1.0, 1.0])  # blew up at 10^-1.6, below min_lr
    assert blew.result is not None and blew.result.stopped_early and blew.result.lrs[-1] < 0.5
    assert blew.result.max_lr == pytest.approx(0.5 * GIVEN_MIN_SPAN)  # (was 500)
    # blew up at the sweep's last LR: what it found is a tenth of the LR before it (its lowest smoothed loss, three
    # steps back, points to 1e-4), and a given min_lr less than a decade below that gets a decade at least: max_lr is
    # the LR before the blow-up (the blow-up's is not taken)
    for given_lo in (0.005, 0.0316):
        steep = RangeTest(9, (1e-4, 1.0), given=(given_lo, None))
        for i, loss in enumerate([1.0, 0.5, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 50.0]):
            steep.record(steep.lr(i), loss, step=i + 1)
        assert steep.result is not None and steep.result.stopped_early
        assert steep.found_max_lr == pytest.approx(10**-1.5)
        assert (steep.result.min_lr, steep.result.max_lr) == (given_lo, pytest.approx(10**-0.5))
    below = sweep(1e-4, falls)  # a given min_lr below what was found: the found max_lr, as before
    assert below.result is not None and below.result.max_lr == below.found_max_lr and below.found_max_lr > 1e-4
    hi_given = RangeTest(4, (1e-4, 1.0), given=(None, 0.3))
    for i, loss in enumerate([1.0, 0.5, 0.4, 0.3]):
        hi_given.record(hi_given.lr(i), loss, step=i + 1)
    assert hi_given.result is not None and hi_given.result.max_lr == 0.3 and hi_given.found_max_lr is None


def test_batch_noise_does_not_stop_the_sweep_and_a_quiet_sweep_stops_as_before() -> None:
    """With small batches, or a model already trained, one batch's loss lies many times another's on the same model.
    The sweep used to stop at the first loss 4x above the lowest so far (a regression MLP with batches of 8: after
    12-18 steps, at max_lr=1e-7); past its first quarter, where the noise measured there spreads losses more than 2x,
    a loss must exceed the squared spread times the lowest running median. A quiet sweep stops at the first loss above
    4x the lowest, as before."""
    from lightning_autolrs.range_test import STOP, RangeTest

    def sweep(noise: list[float]) -> RangeTest:
        rt = RangeTest(60, (1e-5, 10.0), given=(None, None))
        for i in range(60):
            lr = rt.lr(i)
            level = 1.0 / (1.0 + 50 * lr) if lr < 0.2 else 1.0 + 1000 * (lr - 0.2)  # falls, then blows up above 0.2
            if rt.record(lr, level * noise[i % len(noise)], step=i + 1) is not None:
                return rt
        return rt

    quiet, noisy = sweep([1.0]), sweep([1.0, 0.3, 2.4, 0.8, 1.6, 0.5])  # batch noise spreading losses 8x
    assert quiet.spread() < 1.02 and noisy.spread() > 2.0
    assert quiet.result is not None and noisy.result is not None and quiet.result.stopped_early
    losses = quiet.result.losses
    first = next(i for i in range(3, 60) if losses[i] > STOP * min(losses[:i]))  # the rule before, on a quiet sweep
    assert quiet.result.steps == first + 1 and 0.05 < quiet.result.max_lr <= 0.2
    # the noisy sweep: losses 8x apart from its first steps on (2.4 / 0.3), yet it runs to the blow-up above 0.2
    assert noisy.result.stopped_early and noisy.result.lrs[-1] > 0.2 and noisy.result.steps > 40
    assert 0.01 < noisy.result.max_lr <= 0.2
    assert quiet.start_losses() == losses[:15] and len(noisy.start_losses()) == 15  # the first quarter's losses


def test_a_blow_up_within_the_first_quarter_stops_the_sweep() -> None:
    """The first quarter's spread is not known before it ends: there a loss above 4x the largest so far stops the
    sweep (a configured LR far too large blows up early), and it stays out of the first stage's reference."""
    from lightning_autolrs.range_test import RangeTest

    rt = RangeTest(40, (1e-7, 10.0), given=(None, None), configured_lr=1.0)
    losses = [1.0, 0.9, 0.8, 0.7, 0.6, 5.0, 12.0, 20.0] + [20.0] * 32
    result = next(r for i, v in enumerate(losses) if (r := rt.record(rt.lr(i), v, step=i + 1)) is not None)
    assert result.steps == 6 and result.stopped_early and result.max_lr < 1.0  # blew up below the configured LR
    assert rt.start_losses() == [1.0, 0.9, 0.8, 0.7, 0.6]
    noisy = RangeTest(40, (1e-7, 10.0), given=(None, None))  # a noisy batch within the quarter: 3.5x the lowest
    assert [noisy.record(noisy.lr(i), v) for i, v in enumerate([1.0, 0.4, 0.9, 3.5, 0.6])] == [None] * 5


@pytest.mark.parametrize(
    ("steps", "losses", "stop_by"),
    [
        (40, [1.0] * 4 + [2.0, 4.0, 8.0, 16.0, 30.0, 30.0] + [30.0] * 30, 11),  # a steady rise within the quarter
        (40, [2.3 * 0.8**i for i in range(10)] + [2.3] * 30, 11),  # trains within the quarter, then collapses
        (8, [1.0, 2.5, 1.5, 1e6, 1e7, 1e8, 1e9, 1e9], 4),  # a short sweep: too few losses to measure the noise
    ],
)
def test_a_trend_within_the_first_quarter_is_not_taken_for_noise(steps, losses, stop_by) -> None:
    """The spread is measured on successive ratios, so a loss that rises or falls steadily within the first quarter
    does not count as batch noise (as max/min over the quarter, it turned the stop rule off: a 30x rise at 1e-3 x the
    configured LR ran the sweep to its end, and the configured-LR floor then kept the LR that blew up)."""
    from lightning_autolrs.range_test import RangeTest

    rt = RangeTest(steps, (1e-7, 10.0), given=(None, None), configured_lr=1.0)
    result = next((r for i, v in enumerate(losses) if (r := rt.record(rt.lr(i), v)) is not None), None)
    assert result is not None and result.stopped_early and result.steps <= stop_by
    assert result.lrs[-1] < 1.0 and result.max_lr < 1.0  # it blew up below the configured LR: no floor


def test_the_floor_and_the_earlier_rule_with_the_keyword_constructor_and_zero_losses() -> None:
    """The keyword constructor's ``anchor_lr`` (the configured LR) floors ``max_lr`` as ``from_settings`` does; a
    state of an earlier version keeps its rule even for losses that are not positive (it stopped at 0.5 > 4 x 0)."""
    from lightning_autolrs.range_test import RangeTest

    c = StageController(
        None, None, anchor_lr=1.0, num_trials=2, tau=100, search_ratio=0.1, total_steps=2000,
        range_test_steps=20, range_test_lrs=(1e-4, 100.0),
    )  # fmt: skip
    while c.range_test_running:  # flat noise: no blow-up
        c.begin_step()
        c.end_step(1.0 + 0.1 * (c.range_test_position % 3))
    assert c.max_lr == 1.0 and not c.range_test["stopped_early"]
    old = RangeTest(20, (1e-4, 1.0), given=(None, None))
    old.load_state_dict({"range_test": None, "rt_lrs": [], "rt_losses": []})
    assert [old.record(old.lr(i), v) for i, v in enumerate([0.0, 0.0, 0.0])] == [None] * 3
    assert old.record(old.lr(3), 0.5) is not None and old.result.stopped_early


def test_the_noisy_rule_squares_the_spread_uses_short_medians_and_forgets_them_on_restart() -> None:
    """A loss between s and s^2 times the lowest running median does not stop a noisy sweep; a median of 3 losses
    counts while fewer were seen; ``restart()`` forgets the noise measured, and a quiet sweep then stops at 4x the
    lowest; losses at the ends of the float range give an infinite spread, not an exception."""
    from lightning_autolrs.range_test import RangeTest

    quarter = [1.0, 3.0, 1.0, 3.0, 1.0]  # successive ratios of 3 and 1/3: noise spread exp(4 x 1.4826 x ln 3 / sqrt 2)
    rt = RangeTest(20, (1e-4, 1.0), given=(None, None))
    assert [rt.record(rt.lr(i), v) for i, v in enumerate(quarter)] == [None] * 5
    s = rt.spread()
    assert s == pytest.approx(math.exp(4 * 1.4826 * math.log(3) / math.sqrt(2)))
    low_median = 1.0  # (of the windows of 3-5 losses so far)
    assert rt.record(rt.lr(5), 0.9 * s * s * low_median) is None  # above s x, below s^2 x the lowest median
    assert rt.record(rt.lr(6), 1.1 * s * s * low_median) is not None
    rt.restart()
    quiet = [1.0, 1.01, 1.02, 1.0, 0.99, 0.5, 4.1]
    assert [rt.record(rt.lr(i), v) for i, v in enumerate(quiet)][-1] is not None and rt.result.steps == 7
    short = RangeTest(8, (1e-4, 1.0), given=(None, None))  # a quarter of 2 steps: no noise to measure
    assert [short.record(short.lr(i), v) for i, v in enumerate([1.0, 2.5, 1.5])] == [None] * 3
    assert short.record(short.lr(3), 6.1) is not None  # above 4x the lowest: the quiet rule
    extreme = RangeTest(20, (1e-4, 1.0), given=(None, None))
    values = [1e-19, 1e19, 1e-19, 1e19, 1e-19, 1.0, 1e30]
    assert [extreme.record(extreme.lr(i), v) for i, v in enumerate(values)] == [None] * 7
    assert extreme.spread() * extreme.spread() == math.inf  # (squared with ** this raised OverflowError)
    assert extreme.record(extreme.lr(7), math.nan) is not None  # only a non-finite loss stops such a sweep


def test_a_lucky_batch_does_not_set_the_level_a_noisy_sweep_is_compared_with() -> None:
    """With batches of 2 one batch's loss can lie 20x below the rest (a regression MLP's sweep: 0.036 among losses of
    0.3-1.5); compared with that lowest loss, an ordinary large batch passes even the squared spread. The reference of
    a noisy sweep is the lowest running median of 3-5 losses."""
    from lightning_autolrs.range_test import RangeTest

    losses = [0.722, 0.717, 0.278, 0.901, 0.710, 1.135, 0.669, 0.870, 0.767, 1.236, 0.632, 0.711, 0.901, 0.105]
    losses += [0.405, 1.226, 1.148, 1.553, 0.940, 0.490, 1.184, 1.026, 0.599, 0.036, 0.775]
    losses.append(2.5)  # an ordinary large batch of 2 after the lucky one
    rt = RangeTest(50, (1e-6, 1.0), given=(None, None))
    assert [rt.record(rt.lr(i), v) for i, v in enumerate(losses)] == [None] * len(losses)
    assert rt.spread() ** 2 * 0.036 < 2.5  # (the lowest loss times the squared spread would have stopped here)


def test_a_sweep_that_blew_up_puts_max_lr_no_more_than_a_decade_below_where_it_did() -> None:
    """Batch noise can put the lowest smoothed loss far below where the sweep blows up: on the held-out tanh MLP
    regression (SGD + momentum, batches of 32) the sweeps blew up at 0.33-0.66 and gave ``max_lr`` = the configured
    0.01 (its floor) in four of ten seeds, while tuned cosine's LR there is 0.1. ``max_lr`` is now at least a tenth of
    the highest LR the sweep took without blowing up; a sweep begun under rule 2 (a resumed state) ends by that rule,
    and a given ``max_lr`` or a sweep that never blew up are as before."""
    from lightning_autolrs.range_test import BELOW_BLOWUP, RULE, RangeTest

    # lowest at the start, then level with noise, then a blow-up at the 38th step
    losses = [0.5, 0.3, 0.3, 0.3, 0.4] + [0.9, 0.6, 1.2, 0.7, 1.0, 0.8] * 5 + [0.9, 0.7, 40.0, 90.0]

    def sweep(rule: int | None = None, given_hi: float | None = None, n: int = len(losses)) -> RangeTest:
        rt = RangeTest(40, (1e-6, 1.0), given=(None, given_hi), configured_lr=0.01)
        if rule is not None:
            rt.load_state_dict({**rt.state_dict(), "rt_rule": rule})
        for i, loss in enumerate(losses[:n]):
            if rt.record(rt.lr(i), loss, step=i + 1) is not None:
                break
        return rt

    now, before = sweep(), sweep(rule=2)
    assert now.result is not None and now.result.stopped_early and len(now.result.lrs) == 38
    reached = now.lr(36)  # the last LR before the step that blew up
    assert 0.3 < reached < 0.5
    assert now.result.max_lr == pytest.approx(reached / BELOW_BLOWUP) and now.found_max_lr == now.result.max_lr
    assert now.result.min_lr == pytest.approx(now.result.max_lr / 1000)
    assert before.result is not None and before.result.max_lr == 0.01  # rule 2: the configured LR's floor only
    given = sweep(given_hi=0.005)
    assert given.result is not None and given.result.max_lr == 0.005 and given.found_max_lr is None
    # a checkpoint of a rule-2 sweep resumed without its start snapshot sweeps again, by this version's rule
    resumed = sweep(rule=2, n=10)
    assert resumed.result is None and resumed.rule == 2
    resumed.restart()
    assert resumed.rule == RULE == 3 and resumed.position == 0
    clean = RangeTest(40, (1e-6, 1.0), given=(None, None), configured_lr=0.01)  # no blow-up: no such floor
    for i, loss in enumerate([*losses[:37], 0.8, 0.9, 0.7]):
        clean.record(clean.lr(i), loss, step=i + 1)
    assert clean.result is not None and not clean.result.stopped_early and clean.result.max_lr == 0.01


def test_a_sweep_begun_by_an_earlier_version_ends_by_its_rule() -> None:
    """A state without ``rt_rule`` (written up to 73ba20c) stops at a loss above 4x the lowest so far, gets no
    configured-LR floor and leaves the first stage its own first loss as the reference."""
    from lightning_autolrs.range_test import RULE, RangeTest

    losses = [1.0, 0.4, 0.9, 0.5, 0.6, 1.7, 0.5, 0.6] + [0.5] * 12
    new = RangeTest(20, (1e-7, 0.1), given=(None, None), configured_lr=1e-3)
    state = new.state_dict()
    assert state["rt_rule"] == RULE == 3
    old = RangeTest(20, (1e-7, 0.1), given=(None, None), configured_lr=1e-3)
    old.load_state_dict({k: v for k, v in state.items() if k != "rt_rule"})
    assert old.rule == 1
    ends = [next((i for i, v in enumerate(losses) if rt.record(rt.lr(i), v) is not None), None) for rt in (old, new)]
    assert ends == [5, 19]  # 1.7 > 4 x 0.4 ended the old sweep; the new one ran its length (noise spread 10)
    assert old.result.max_lr < 1e-3 and old.start_losses() == []
    assert new.result.max_lr == 1e-3 and new.start_losses() == [1.0, 0.4, 0.9, 0.5, 0.6]


@pytest.mark.parametrize("losses", [[1.0, 0.0, 0.9, 0.8] + [0.7] * 6 + [1e6], [-0.3, -0.4, -0.5] + [-0.29] * 8])
def test_a_sweep_with_losses_that_are_not_positive_stops_only_on_a_non_finite_loss(losses) -> None:
    """A ratio of such losses means nothing (a Gaussian negative log-likelihood goes below 0): the rule before stopped
    at -0.29 > 4 x -0.3."""
    from lightning_autolrs.range_test import RangeTest

    rt = RangeTest(20, (1e-4, 1.0), given=(None, None))
    assert [rt.record(rt.lr(i), v) for i, v in enumerate(losses)] == [None] * len(losses)
    assert rt.record(rt.lr(len(losses)), math.nan) is not None and rt.result.stopped_early


def test_the_first_stage_reference_is_the_largest_loss_of_a_long_first_quarter() -> None:
    """A 100-step sweep's first quarter has 25 losses; the untrained model's largest tend to come first."""
    c = make_range_test(total=3000, steps=100, num_trials=2, tau=200, tau_max=200, search_ratio=0.1)
    start = [3.0, 2.9, 2.8, 2.7, 2.6] + [1.0, 1.5] * 10
    while c.range_test_running:
        plan = c.begin_step()
        i = c.range_test_position
        c.end_step(start[i] if i < len(start) else (0.5 if plan.lr < 0.2 else 50.0))
    c.begin_step()
    c.end_step(1.0)
    assert c._ref_loss == 3.0


def test_max_lr_is_not_below_the_configured_lr_unless_the_sweep_blew_up_at_or_below_it() -> None:
    """Unless the sweep blew up at or below it, nothing showed the configured LR too large, and where the loss does not
    fall its lowest smoothed point can lie anywhere below it (a regression MLP with batches of 2: 0.00016 against a
    configured 0.001; fine-tuning a trained digits MLP: 1.3e-5-5e-4 against 0.05, with a blow-up at 0.44-0.64)."""
    from lightning_autolrs.range_test import BELOW_BLOWUP, RangeTest
    from lightning_autolrs.settings import Settings, derive

    def sweep(losses: list[float], **kw) -> RangeTest:
        rt = RangeTest(len(losses), (1e-7, 0.1), given=kw.pop("given", (None, None)), **kw)
        for i, loss in enumerate(losses):
            if rt.record(rt.lr(i), loss, step=i + 1) is not None:
                break
        return rt

    flat = [1.0, 0.9, 0.2, 0.9, 1.0, 0.95] + [1.0] * 14  # noise: the lowest smoothed loss near 1e-6
    assert sweep(flat).result.max_lr < 1e-5  # (the range it found alone)
    kept = sweep(flat, configured_lr=1e-3).result
    assert not kept.stopped_early and kept.max_lr == 1e-3 and kept.min_lr == pytest.approx(1e-6)
    blew_up = sweep([1.0, 0.9, 0.8, 0.7] + [0.6] * 6 + [9.0] + [1.0] * 9, configured_lr=1e-3)
    assert blew_up.result.stopped_early and blew_up.result.max_lr < 1e-3  # a blow-up below it: that range stands
    above = sweep([1.0, 0.9, 0.8, 0.7] + [0.6] * 14 + [9.0, 1.0], configured_lr=1e-3)  # blew up above it, at 0.05
    assert above.result.stopped_early and above.result.lrs[-1] > 1e-3
    # (and no more than a decade below the LR before the blow-up: 0.0234 / 10 is above the configured LR here)
    assert above.lr(17) / BELOW_BLOWUP > 1e-3 and above.result.max_lr == pytest.approx(above.lr(17) / BELOW_BLOWUP)
    low = sweep([1.0, 0.9, 0.8, 0.7] + [0.6] * 11 + [9.0] + [1.0] * 4, configured_lr=1e-3)  # blew up at 0.0055
    assert low.result.stopped_early and low.lr(14) / BELOW_BLOWUP < 1e-3 and low.result.max_lr == 1e-3
    assert sweep(flat, configured_lr=1e-3, given=(None, 1e-4)).result.max_lr == 1e-4  # a max_lr you give wins
    s = Settings()
    c = StageController.from_settings(s, derive(s, configured_lr=0.02, total_steps=2000))
    assert c._range_test.configured_lr == 0.02 and c.range_test_lrs == (0.02 * 1e-4, 0.02 * 1e2)


def test_a_sweep_that_saw_only_non_finite_losses_raises_instead_of_deriving_a_range() -> None:
    from lightning_autolrs.exceptions import NonFiniteLossError
    from lightning_autolrs.range_test import RangeTest

    rt = RangeTest(10, (1e-4, 1.0), given=(None, None))
    with pytest.raises(NonFiniteLossError, match=r"training loss: its step 1's loss was NaN/inf at lr=0.0001"):
        rt.record(1e-4, math.nan)
    assert rt.result is None
    skipped = RangeTest(10, (1e-4, 1.0), given=(None, None))  # steps without a loss, then NaN: still nothing finite
    assert skipped.record(1e-4, None) is None
    with pytest.raises(NonFiniteLossError, match=r"its first 1 step\(s\) gave no finite loss and its step 2's loss"):
        skipped.record(2e-4, math.inf)
    late = RangeTest(10, (1e-4, 1.0), given=(None, None))  # one finite loss is enough to derive a range
    late.record(1e-4, 1.0)
    assert late.record(2e-4, math.nan) is not None and late.result is not None


def test_a_state_written_when_the_warmup_came_first_continues_in_that_order() -> None:
    """A checkpoint written before the range test moved in front of the warmup (no ``warmup_from`` key) resumes as it
    was written: warmup, then the sweep, then the first stage; no second warmup after the sweep (review)."""
    kwargs = dict(num_trials=4, tau=40, search_ratio=0.25, total_steps=600, warmup_steps=10, warmup_lr=0.01,
                  range_test_steps=30, range_test_lrs=(1e-5, 10.0))  # fmt: skip
    state = StageController(None, None, **kwargs).state_dict()
    old = {k: v for k, v in state.items() if k not in ("warmup_from", "warmup_first")}
    c = StageController(None, None, **kwargs)
    c.load_state_dict(json.loads(json.dumps(old)))
    Quadratic().run(c, 600)
    rt = c.range_test
    assert c.lrs[:10] == pytest.approx([0.001 * (i + 1) for i in range(10)])  # the warmup first
    assert rt["start_step"] == 10 and c.history[0]["start_step"] == 10 + rt["steps"]  # then the sweep, then stage 0
    twin = StageController(None, None, **kwargs)
    twin.load_state_dict(json.loads(json.dumps(c.state_dict())))  # and it stays in that order once saved again
    assert twin._warmup_first and twin._warmup_end == 10


@pytest.mark.parametrize("warmup_steps", [0, 10])
def test_a_stop_right_after_the_sweep_returns_to_where_the_sweep_began(warmup_steps: int) -> None:
    """Between the sweep's last step and the next step's start the sweep's restore is still due and no stage exists:
    a stop, checkpoint or validation there keeps the state the sweep began from (it raised IndexError; review)."""
    c = StageController(
        None, None, num_trials=4, tau=40, search_ratio=0.25, total_steps=600, warmup_steps=warmup_steps,
        warmup_lr=0.01 if warmup_steps else None, range_test_steps=30, range_test_lrs=(1e-5, 10.0),
    )  # fmt: skip
    sim = Quadratic()
    while c.range_test is None:
        sim.run(c, 1)
    assert c.needs_snapshot and not c.stages
    assert c.committed_on_stop() == ("stage", None, 0, c.range_test["steps"])
