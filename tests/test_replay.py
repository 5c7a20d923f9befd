"""Replaying a found schedule: exploit LRs only, per step, with param-group ratios, from a file."""

from __future__ import annotations

import pytest

from lightning_autolrs import AutoLRS, ReplaySchedule, load_schedule
from lightning_autolrs.exceptions import InvalidArgumentError
from lightning_autolrs.schedule import Schedule

from .helpers import make_module_class, trainer_kwargs


def test_replays_the_exploit_lrs_of_a_real_run(lpl, tmp_path) -> None:
    cb = AutoLRS(min_lr=1e-3, max_lr=0.5, num_trials=3, tau=20, tau_max=40, search_ratio=0.25, seed=0, verbose=False)
    lpl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=120)).fit(make_module_class(lpl)())
    path = cb.save_schedule(tmp_path / "s.json")
    schedule = load_schedule(path)
    expected = schedule.exploit_lrs()
    search_steps = sum(h["search_steps"] for h in cb.history)
    assert len(expected) == 120 - search_steps  # no search steps are replayed

    replay = ReplaySchedule(path)
    model = make_module_class(lpl)(two_groups=True)
    lpl.Trainer(callbacks=[replay], **trainer_kwargs(tmp_path, max_steps=len(expected) + 5)).fit(model)
    assert replay.lrs[: len(expected)] == expected
    assert replay.lrs[len(expected) :] == [expected[-1]] * 5  # past the end: the last LR
    for (g0, g1), lr in zip(model.group_lrs, replay.lrs):
        assert g0 == pytest.approx(lr) and g1 == pytest.approx(lr / 10)


def test_stretch_maps_the_schedule_onto_the_budget(lpl, tmp_path) -> None:
    schedule = Schedule(lrs=[0.3, 0.2, 0.1, 0.01], stages=[{"exploit_start": 0, "exploit_steps": 4}])
    replay = ReplaySchedule(schedule, stretch=True)
    lpl.Trainer(callbacks=[replay], **trainer_kwargs(tmp_path, max_steps=8)).fit(make_module_class(lpl)())
    assert replay.lrs == [0.3, 0.3, 0.2, 0.2, 0.1, 0.1, 0.01, 0.01]


def test_bad_schedules_are_rejected(tmp_path) -> None:
    with pytest.raises(InvalidArgumentError, match="no exploit steps"):
        ReplaySchedule(Schedule(lrs=[0.1], stages=[]))
    with pytest.raises(InvalidArgumentError, match="`schedule` must be"):
        ReplaySchedule(42)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        ReplaySchedule(tmp_path / "missing.json")
