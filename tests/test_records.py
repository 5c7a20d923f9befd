"""Tests of :mod:`lightning_autolrs.records`: every field of every record survives ``to_dict``/``from_dict``, and the
history, the schedule JSON and the events are made of them."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lightning_autolrs.controller import StageController
from lightning_autolrs.records import (
    AnnealEvent,
    FallbackEvent,
    FallbackRecord,
    RangeTestEvent,
    RangeTestResult,
    SearchEvent,
    StageRecord,
    TrialEvent,
    TrialRecord,
    event_from_dict,
)
from lightning_autolrs.schedule import Schedule

TRIAL = TrialRecord(
    lr=0.1, start_step=5, predicted_loss=0.4, steps=7, diverged=False, final_loss=0.45, forecast="exp", noise=0.01
)
FALLBACK = FallbackRecord(step=40, failed_lr=0.3, new_lr=0.03)
STAGE = StageRecord(
    stage=2,
    start_step=5,
    tau=20,
    tau_prime=5,
    lr_range=[1e-3, 0.5],
    trials=[TRIAL, dataclasses.replace(TRIAL, lr=0.2, predicted_loss=None, diverged=True)],
    best_lr=0.1,
    search_steps=12,
    exploit_start=17,
    exploit_steps=20,
    fallbacks=[FALLBACK],
    signal="val_loss",
    probe_seconds=1.5,
    reused_trial=0,
    restarted=True,
    anneal_start=30,
    anneal_lr=0.05,
    exploit_warmup=4,
    overfitting={"val_loss": [0.5, 0.55], "train_loss": [0.3, 0.2]},
    rolled_back_to=40,
    high_pick=True,
    restored_at_end=90,
)
RANGE = RangeTestResult(start_step=3, steps=4, lrs=[1e-3, 1e-2], losses=[1.0, None], stopped_early=True, min_lr=1e-4,
                        max_lr=0.1)  # fmt: skip


def _non_default(record) -> None:
    """Every field of the sample differs from its default, so a dropped field cannot round-trip by luck."""
    for f in dataclasses.fields(record):
        if f.default is not dataclasses.MISSING:
            assert getattr(record, f.name) != f.default, f.name


@pytest.mark.parametrize("record", [TRIAL, FALLBACK, STAGE, RANGE], ids=lambda r: type(r).__name__)
def test_every_field_round_trips(record) -> None:
    _non_default(record)
    d = record.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(record)]
    again = type(record).from_dict(json.loads(json.dumps(d)))
    assert again == record and again.to_dict() == d


def test_optional_fields_appear_only_once_set() -> None:
    plain = StageRecord(stage=0, start_step=0, tau=4, tau_prime=1, lr_range=[0.1, 1.0])
    assert not set(StageRecord.OPTIONAL) & set(plain.to_dict())
    assert StageRecord.from_dict(plain.to_dict()) == plain
    assert dataclasses.replace(STAGE, reused_trial=0).to_dict()["reused_trial"] == 0  # index 0 is a value


def test_keys_of_removed_options_are_ignored_on_load() -> None:
    """A history written before `abort_trials`, `warm_start` and `early_stop` were removed still loads; their keys
    are dropped."""
    old = STAGE.to_dict() | {"warm_start": True, "stopped_early": True}
    old["trials"] = [t | {"aborted": True} for t in old["trials"]]
    loaded = StageRecord.from_dict(json.loads(json.dumps(old)))
    assert loaded == STAGE and loaded.to_dict() == STAGE.to_dict()
    assert TrialRecord.from_dict(TRIAL.to_dict() | {"aborted": True}) == TRIAL


@pytest.mark.parametrize(
    "event",
    [
        TrialEvent(1, 2, TRIAL),
        SearchEvent(1, 0.1, 3),
        RangeTestEvent(1e-5, RANGE),
        FallbackEvent(1, FALLBACK),
        AnnealEvent(2, 30, 0.05, {"val_loss": [0.5, 0.55], "train_loss": [0.3, 0.2]}),
    ],
    ids=lambda e: type(e).__name__,
)
def test_events_read_as_dicts_and_round_trip(event) -> None:
    d = event.to_dict()
    assert d["event"] == event.kind and event["event"] == event.kind
    assert event_from_dict(d).to_dict() == d


def test_controller_history_is_made_of_records() -> None:
    c = StageController(1e-3, 1.0, num_trials=3, tau=8, tau_max=8, search_ratio=0.25, total_steps=60, seed=0,
                        monitor="val_loss")  # fmt: skip
    for i in range(60):
        plan = c.begin_step()
        c.end_step(1.0 / (i + 1), probe=0.5 if plan.probe else None, probe_seconds=0.25)
    assert c.history == [s.to_dict() for s in c.stages]
    assert [StageRecord.from_dict(h) for h in c.history] == c.stages
    assert c.history[0]["signal"] == "val_loss" and c.history[0]["probe_seconds"] > 0


def test_schedule_json_keeps_every_stage_and_trial_field() -> None:
    doc = json.loads(json.dumps(Schedule(lrs=[0.1], stages=[STAGE.to_dict()]).to_dict()))
    assert StageRecord.from_dict(doc["stages"][0]) == STAGE  # signal, probe_seconds, restarted are no longer dropped
