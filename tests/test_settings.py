"""Tests of :mod:`lightning_autolrs.settings`: the one declaration of the AutoLRS arguments and the derived values."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from pathlib import Path

import docstring_parser
import pytest

from lightning_autolrs import AutoLRS
from lightning_autolrs.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from lightning_autolrs.settings import (
    MIN_TRIAL_STEPS,
    RANGE_SPAN,
    Settings,
    derive,
    exploit_warmup_steps,
    markdown_table,
    plan_tau,
    tau_prime_for,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def test_callback_signature_is_the_settings_fields() -> None:
    params = [p for p in inspect.signature(AutoLRS.__init__).parameters.values() if p.name != "self"]
    fields = dataclasses.fields(Settings)
    assert [p.name for p in params] == [f.name for f in fields]
    assert [p.default for p in params] == [f.default for f in fields]
    assert [p.annotation for p in params] == [f.type for f in fields]  # both are strings (postponed annotations)
    kinds = [p.kind for p in params]
    assert kinds[:2] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 2
    assert set(kinds[2:]) == {inspect.Parameter.KEYWORD_ONLY}


def test_callback_docs_are_the_settings_docs() -> None:
    params = [p for p in docstring_parser.parse(AutoLRS.__doc__).params if p.args[0] == "param"]
    docs = {p.arg_name: " ".join(p.description.split()) for p in params}
    assert docs == {f.name: f.metadata["doc"] for f in dataclasses.fields(Settings)}


def test_readme_table_is_generated_from_the_settings() -> None:
    text = README.read_text()
    found = re.search(r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", text, re.S)
    assert found, "README.md has no settings table"
    assert found.group(1) == markdown_table(), "README.md's table of arguments drifted: paste markdown_table() in"
    assert markdown_table().count("\n| `") == len(dataclasses.fields(Settings))


def test_every_argument_reaches_the_settings() -> None:
    changed = dict(
        min_lr=1e-4, max_lr=0.5, num_trials=6, tau=7, tau_max=70, search_ratio=0.2, beta=2.0, warmup_steps=3,
        warmup_lr=0.01, seed=3, divergence_factor=3.0, monitor="val_loss", reuse_best_trial=False, range_test=False,
        range_test_steps=9, val_batches=2, val_loss_fn=len, snapshot_device="cpu", checkpoint_snapshot=False,
        save_files=False, verbose=False, anneal_ratio=0.1,
    )  # fmt: skip
    assert set(changed) == {f.name for f in dataclasses.fields(Settings)}
    settings = AutoLRS(**changed)._settings
    assert all(getattr(settings, k) == v for k, v in changed.items())
    assert all(getattr(Settings(), k) != v for k, v in changed.items())  # every value above differs from the default


def test_settings_are_frozen_and_normalised() -> None:
    s = Settings(min_lr=1, max_lr=10, reuse_best_trial=True)
    assert s.min_lr == 1.0 and isinstance(s.min_lr, float) and s.reuse_best_trial is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.num_trials = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(min_lr=0.1, max_lr=0.1), InvalidArgumentError, "`max_lr` must be greater"),
        (dict(tau=10, tau_max=5), InvalidArgumentError, "`tau_max` must be >= `tau`"),
        (dict(num_trials=True), InvalidArgumentTypeError, "`num_trials`"),
        (dict(monitor="loss"), InvalidArgumentError, "`monitor`"),
        (dict(range_test=1), InvalidArgumentError, "`range_test`"),
        (dict(val_loss_fn=3), InvalidArgumentError, "`val_loss_fn`"),
        (dict(snapshot_device=0), InvalidArgumentError, "`snapshot_device`"),
        (dict(snapshot_device="gpu"), InvalidArgumentError, "`snapshot_device` must be .* got 'gpu'"),
        (dict(save_files="no"), InvalidArgumentTypeError, "`save_files` must be True or False, got 'no'"),
        (dict(reuse_best_trial=1), InvalidArgumentTypeError, "`reuse_best_trial` must be True or False"),
        (dict(verbose=None), InvalidArgumentTypeError, "`verbose` must be True or False"),
    ],
)
def test_invalid_settings(kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        Settings(**kwargs)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Settings) if f.type == "bool"])
def test_every_flag_takes_only_a_bool(name: str) -> None:
    for value in (True, False):
        assert getattr(Settings(**{name: value}), name) is value
    for value in ("no", "False", 0, 1, None):
        with pytest.raises(InvalidArgumentTypeError, match=f"`{name}` must be True or False"):
            AutoLRS(**{name: value})


@pytest.mark.parametrize("name", ["early_stop", "min_trials", "abort_trials", "warm_start", "average_trials"])
def test_removed_options_are_unexpected_keywords(name: str) -> None:
    """The options that never won (benchmarks/results/seeds_options.md) are gone, not kept as flags."""
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
        AutoLRS(**{name: False})
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
        Settings(**{name: False})


def test_validation_runs_once(monkeypatch) -> None:
    import lightning_autolrs.settings as settings_mod

    calls = []
    original = settings_mod.check_float
    monkeypatch.setattr(settings_mod, "check_float", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    AutoLRS(min_lr=1e-3, max_lr=1.0)
    assert calls.count("min_lr") == 1 and calls.count("max_lr") == 1


# ---------------------------------------------------------------------------------------------- derive
def test_derive_keeps_a_given_range() -> None:
    d = derive(Settings(min_lr=1e-3, max_lr=0.5), 0.1, 1000)
    assert (d.min_lr, d.max_lr, d.warmup_lr, d.range_test_steps) == (1e-3, 0.5, 0.1, 0)


def test_derive_fills_the_missing_bound_and_the_default_range() -> None:
    only_min = derive(Settings(min_lr=1e-3), 0.1, 1000)
    assert (only_min.min_lr, only_min.max_lr, only_min.range_test_steps) == (1e-3, 1e-3 * RANGE_SPAN, 0)
    only_max = derive(Settings(max_lr=0.5), 0.1, 1000)
    assert (only_max.min_lr, only_max.max_lr) == (0.5 / RANGE_SPAN, 0.5)
    none = derive(Settings(range_test=False), 0.1, 1000)
    assert (none.min_lr, none.max_lr) == (0.1 / 100, 0.1 * 10)
    assert derive(Settings(min_lr=0.2, max_lr=0.5), 0.1, 1000).warmup_lr == 0.2  # clamped into the range
    assert derive(Settings(min_lr=0.2, max_lr=0.5, warmup_lr=0.05), 0.1, 1000).warmup_lr == 0.05


def test_derive_range_test_length_and_lrs() -> None:
    d = derive(Settings(), 0.1, 1000)
    assert (d.min_lr, d.max_lr, d.warmup_lr) == (None, None, 0.1)
    assert d.range_test_steps == 50 and d.range_test_lrs == (0.1 * 1e-4, 0.1 * 1e2)
    assert derive(Settings(num_trials=2, search_ratio=0.5), 0.1, 200).range_test_steps == 20  # clipped below
    assert derive(Settings(), 0.1, 100_000).range_test_steps == 100  # clipped above
    assert derive(Settings(), 0.1, math.inf).range_test_steps == 100  # unbounded
    assert derive(Settings(range_test_steps=7), 0.1, 1000).range_test_steps == 7


def test_derive_tau_from_the_budget() -> None:
    d = derive(Settings(min_lr=1e-3, max_lr=1.0, warmup_steps=30), 0.1, 3000)
    assert (
        d.tau == plan_tau(3000 - 30 - 600, 4, Settings().search_ratio, True, 8000) == positive_int(d.tau)
        and d.total_steps == 3000
    )
    assert d.anneal_steps == 600 and not d.fallback
    # never trials shorter than the forecaster needs
    assert tau_prime_for(d.tau, Settings().search_ratio) >= MIN_TRIAL_STEPS
    assert derive(Settings(min_lr=1e-3, max_lr=1.0, tau_max=250), 0.1, 3000).tau == 250
    assert derive(Settings(min_lr=1e-3, max_lr=1.0), 0.1, None).tau == 1000
    assert derive(Settings(min_lr=1e-3, max_lr=1.0), 0.1, -1).total_steps is None
    assert derive(Settings(min_lr=1e-3, max_lr=1.0, anneal_ratio=0), 0.1, 3000).anneal_steps == 0
    with pytest.raises(InvalidArgumentError, match="`tau`=1000"):
        derive(Settings(min_lr=1e-3, max_lr=1.0, tau=1000), 0.1, 300)
    assert derive(Settings(min_lr=1e-3, max_lr=1.0, tau=1000), 0.1, 300, check_budget=False).tau == 1000


def positive_int(x: int) -> int:
    assert isinstance(x, int) and x > 0
    return x


@pytest.mark.parametrize("budget", [10, 100, 300])
def test_a_budget_too_small_for_a_search_falls_back_to_a_decay_from_the_configured_lr(budget: int) -> None:
    d = derive(Settings(), 0.1, budget)
    assert d.fallback and d.range_test_steps == 0 and d.anneal_steps == budget
    assert d.needed_steps > budget and (d.min_lr, d.max_lr) == (0.1 / RANGE_SPAN, 0.1)
    big = derive(Settings(), 0.1, d.needed_steps)
    # the named budget does search
    assert not big.fallback and tau_prime_for(big.tau, Settings().search_ratio) >= MIN_TRIAL_STEPS
    assert derive(Settings(), 0.1, d.needed_steps - 1).fallback  # and it is the smallest that does


@pytest.mark.parametrize(
    ("given", "expected_range", "start"),
    [
        (dict(min_lr=1e-3, max_lr=0.01), (1e-3, 0.01), 0.01),  # the configured 0.1 clamped into the range you gave
        (dict(min_lr=1e-3, range_test=True), (1e-3, 1.0), 0.1),  # the range test cannot run: the other end 1000x away
        (dict(max_lr=0.05, range_test=True), (5e-5, 0.05), 0.05),
        (dict(), (1e-4, 0.1), 0.1),
    ],
)
def test_a_budget_too_small_for_a_search_keeps_the_range_you_gave(given, expected_range, start) -> None:
    d = derive(Settings(**given), 0.1, 300)
    assert d.fallback and (d.min_lr, d.max_lr) == pytest.approx(expected_range)
    assert d.start_lr == pytest.approx(start) and d.warmup_lr == pytest.approx(start)
    assert derive(Settings(**given), 0.1, 3000).start_lr == 0.1  # with a search, stage 0's anchor is the configured LR


def test_a_warmup_that_fills_the_budget_is_refused_at_fit_start() -> None:
    with pytest.raises(InvalidArgumentError, match=r"`warmup_steps`=700 leaves no step .* budget is 700"):
        derive(Settings(warmup_steps=700), 0.1, 700)
    assert derive(Settings(warmup_steps=699), 0.1, 700).fallback  # one step after it: the decay
    assert derive(Settings(warmup_steps=700), 0.1, 700, check_budget=False).fallback  # (a resumed run is not checked)
    assert not derive(Settings(warmup_steps=700), 0.1, None).fallback  # an unbounded budget has room
    assert derive(Settings(), 0.1, 0).fallback  # `max_steps=0` without a warmup: nothing to refuse


def test_a_warmup_lr_without_warmup_steps_is_not_what_the_schedule_without_a_search_ramps_to() -> None:
    d = derive(Settings(min_lr=1e-3, max_lr=0.01, warmup_lr=0.05), 0.05, 300)
    assert d.fallback and d.warmup_lr == d.start_lr == 0.01  # (a resumed state's 5 % warmup ramps to the decay's start)
    assert derive(Settings(min_lr=1e-3, max_lr=0.01, warmup_lr=0.005, warmup_steps=30), 0.05, 300).warmup_lr == 0.005


def test_plan_tau_prefers_three_stages_then_fewer() -> None:
    assert plan_tau(2300, 4, 0.1, True, 8000) == 2300 // (7 * 1.3)
    assert plan_tau(800, 4, 0.1, True, 8000) == 800 // (3 * 1.3)  # three stages would need trials < 20 steps
    assert plan_tau(300, 4, 0.1, True, 8000) == 300 // 1.3
    assert plan_tau(250, 4, 0.1, True, 8000) is None
    assert plan_tau(2300, 4, 0.1, False, 8000) == 2300 // (7 * 1.4)  # without reuse every trial step is extra


def test_the_exploit_warmup_follows_the_optimizers_second_moment_decay() -> None:
    assert exploit_warmup_steps(0.99, tau=2000) == 200  # 2 / (1 - beta2): the untuned warmup rule
    assert exploit_warmup_steps(0.999, tau=666) == 166  # at most a quarter of the first stage's τ
    assert exploit_warmup_steps(None, tau=666) == 0  # SGD and the like: none
    assert exploit_warmup_steps(1.0, tau=100) == 25 and exploit_warmup_steps(1.5, tau=100) == 0
    assert derive(Settings(), 0.003, 3000, beta2=0.99).exploit_warmup == 166
    assert derive(Settings(), 0.003, 3000).exploit_warmup == 0
    # a warmup the user asked for already warms the model up; a budget too small to search has its own warmup
    assert derive(Settings(warmup_steps=50), 0.003, 3000, beta2=0.99).exploit_warmup == 0
    assert derive(Settings(), 0.003, 300, beta2=0.99).exploit_warmup == 0


def test_a_budget_of_one_stage_warms_an_adam_family_optimizer_up_before_its_search() -> None:
    """With one stage, the stage the final anneal follows, the warmup that begins the first stage's exploit phase
    comes before its search instead (of the same length): the search judges a warmed-up model and the exploit phase
    continues from the winning trial, whose steps the exploit warmup would have discarded."""
    one = derive(Settings(), 0.001, 1500)  # one stage: 1500 - 75 - 300 = 1125 < 3 x 1.15 x 400
    assert (one.tau, one.warmup_steps, one.exploit_warmup) == (978, 0, 0)  # no second-moment estimate: no warmup
    adam = derive(Settings(), 0.001, 1500, beta2=0.999)
    assert adam.warmup_steps == exploit_warmup_steps(0.999, 978) == 244 and adam.exploit_warmup == 0
    assert adam.tau == plan_tau(1500 - 75 - 244 - 300, 4, 0.05, True, 8000) == 766  # τ of the steps left
    assert adam.warmup_lr == 0.001  # the warmup ramps to the configured LR, stage 0's anchor
    assert derive(Settings(), 0.001, 1500, beta2=0.99).warmup_steps == 200  # 2 / (1 - beta2) steps, as before
    # two stages or more: the exploit warmup after stage 0's search, as before
    two = derive(Settings(), 0.001, 3000, beta2=0.999)
    assert (two.tau, two.warmup_steps, two.exploit_warmup) == (666, 0, 166)
    # a warmup you give stays the only one; where the warmup would leave no room for a search, the exploit warmup
    assert derive(Settings(warmup_steps=50), 0.001, 1500, beta2=0.999).warmup_steps == 50
    edge = derive(Settings(), 0.001, 614, beta2=0.999)
    assert (edge.tau, edge.warmup_steps, edge.exploit_warmup, edge.fallback) == (400, 0, 100, False)
