"""Tests of the schedule format: save/load round trip, exploit-only LRs, errors, the summary table."""

from __future__ import annotations

import json

import pytest

from lightning_autolrs.exceptions import ScheduleFormatError
from lightning_autolrs.schedule import FORMAT, Schedule, load_schedule, save_schedule, summary_table

from .helpers import sample


def test_round_trip(tmp_path) -> None:
    path = save_schedule(sample(), tmp_path / "s.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT and doc["version"] == 1
    loaded = load_schedule(path)
    assert loaded == sample()
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temporary file left


def test_exploit_lrs_drop_search_steps() -> None:
    assert sample().exploit_lrs() == [0.05, 0.1, 0.1, 0.1, 0.1, 0.1]


def test_exploit_lrs_find_the_warmup_after_a_range_test_that_ran_first() -> None:
    """Since the range test runs before the warmup, the warmup's LRs follow the sweep's; a schedule saved when the
    sweep followed the warmup (its start step = warmup_steps) still has its warmup at the start."""
    sweep = {"start_step": 0, "steps": 3, "lrs": [1e-4, 1e-2, 1.0], "min_lr": 1e-4, "max_lr": 0.1}
    lrs = [1e-4, 1e-2, 1.0, 0.05, 0.1, 0.3, 0.1, 0.1]  # sweep, warmup (2), a trial, exploit (2)
    now = Schedule(
        lrs=lrs, stages=[{"exploit_start": 6, "exploit_steps": 2}], settings={"warmup_steps": 2, "range_test": sweep}
    )
    assert now.warmup_start == 3 and now.exploit_lrs() == [0.05, 0.1, 0.1, 0.1]
    before = {**sweep, "start_step": 2}
    old = [0.05, 0.1, 1e-4, 1e-2, 1.0, 0.3, 0.1, 0.1]  # warmup (2), sweep, a trial, exploit (2)
    then = Schedule(
        lrs=old, stages=[{"exploit_start": 6, "exploit_steps": 2}], settings={"warmup_steps": 2, "range_test": before}
    )
    assert then.warmup_start == 0 and then.exploit_lrs() == [0.05, 0.1, 0.1, 0.1]


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"format": "other"}, "not an AutoLRS schedule"),
        ({"format": FORMAT, "version": 99, "lrs": [], "stages": []}, "unsupported schedule `version` 99"),
        ({"format": FORMAT, "version": 1, "lrs": "x", "stages": []}, "`lrs`"),
        ({"format": FORMAT, "version": 1, "lrs": [], "stages": [1]}, "`stages`"),
    ],
)
def test_bad_documents(tmp_path, doc, match) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ScheduleFormatError, match=match):
        load_schedule(path)


def test_invalid_json(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{")
    with pytest.raises(ScheduleFormatError, match="not valid JSON"):
        load_schedule(path)


def test_non_finite_values_are_refused_not_written(tmp_path) -> None:
    bad = Schedule(lrs=[float("nan")], stages=[])
    with pytest.raises(ValueError):
        save_schedule(bad, tmp_path / "s.json")
    assert list(tmp_path.iterdir()) == []


def test_summary_table_lists_trials_and_choice() -> None:
    lines = summary_table(sample()).splitlines()
    assert len(lines) == 3  # header + one row per trial
    assert "5.00e-01" in lines[1] and "diverged" in lines[1] and "chosen" not in lines[1]
    assert "1.00e-01" in lines[2] and "0.2500" in lines[2] and "0.3000" in lines[2] and lines[2].endswith("<- chosen")


def _one_stage(trials: list[dict], best_lr: float | None, start: int, exploit: tuple[int | None, int]) -> dict:
    """A stage record for the table: ``exploit`` = (its start step or None, its steps)."""
    return {"stage": 0, "start_step": start, "tau": 100, "tau_prime": 5, "trials": trials, "best_lr": best_lr,
            "exploit_start": exploit[0], "exploit_steps": exploit[1]}  # fmt: skip


def test_summary_table_of_a_run_stopped_inside_a_search_without_stages_or_with_every_trial_diverged() -> None:
    trials = [
        {"lr": 0.1, "start_step": 10, "steps": 5, "predicted_loss": 0.5, "final_loss": 0.6, "diverged": False},
        {"lr": 0.3, "start_step": 15, "steps": 5, "predicted_loss": 0.4, "final_loss": 0.5, "diverged": False},
    ]
    lines = summary_table(Schedule(lrs=[0.1] * 20, stages=[_one_stage(trials, None, 10, (None, 0))])).splitlines()
    assert lines[1].split()[1] == "10-19"  # the steps its trials ran (it read "10-9" before)
    assert not any("chosen" in line for line in lines)
    assert "no stage" in summary_table(Schedule(lrs=[0.1] * 5, stages=[])).splitlines()[-1]
    diverged = [
        {"lr": lr, "start_step": 0, "steps": 1, "predicted_loss": None, "final_loss": None, "diverged": True}
        for lr in (5.0, 2.0)
    ]
    fell_back = Schedule(lrs=[0.5] * 10, stages=[_one_stage(diverged, 0.5, 0, (2, 8))])
    assert summary_table(fell_back).splitlines()[-1].split()[-4:] == ["5.00e-01", "(every", "trial", "diverged)"]


def test_summary_table_says_when_the_forecast_is_of_the_validation_loss() -> None:
    s = sample()
    assert "validation" not in summary_table(s)
    s.stages[0]["signal"] = "val_loss"
    assert summary_table(s).splitlines()[-1].startswith("forecast: of the validation loss")


def test_range_test_survives_a_round_trip_and_shows_in_the_table(tmp_path) -> None:
    s = sample()
    s.settings["range_test"] = {"start_step": 0, "steps": 2, "min_lr": 0.001, "max_lr": 1.0}
    back = load_schedule(save_schedule(s, tmp_path / "s.json"))
    assert back == s
    table = summary_table(back)
    assert table.splitlines()[0] == "LR range test: 2 steps from step 0 -> min_lr 1.00e-03, max_lr 1.00e+00"


def test_a_schedule_with_keys_of_removed_options_loads_and_drops_them(tmp_path) -> None:
    """A schedule written while `abort_trials`, `warm_start` and `early_stop` existed (with them on) still loads and
    tabulates; writing it again keeps its settings as they were and drops the removed options' stage and trial keys."""
    old = sample().to_dict()
    old["settings"].update(abort_trials=True, warm_start=True, early_stop=True, min_trials=2, average_trials=False)
    old["stages"][0]["trials"][1]["aborted"] = True
    old["stages"][0] |= {"warm_start": True, "stopped_early": True}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    loaded = load_schedule(path)
    assert loaded.lrs == sample().lrs and loaded.exploit_lrs() == sample().exploit_lrs()
    assert summary_table(loaded) == summary_table(sample())
    again = json.loads(save_schedule(loaded, tmp_path / "again.json").read_text())
    assert again["stages"] == sample().to_dict()["stages"]
    assert again["settings"] == old["settings"]
