"""Checkpoints written by earlier versions of the package still load and resume as those versions' runs went on.

The references were recorded on one CPU; float32 training rounds differently on another (other kernels), so they
are compared as :func:`same_run` says: the same decisions and the same LR at every step (to 1e-9), and losses and
weights equal to the rounding that CPUs differ by. On the CPU that recorded them they are equal bitwise.

``tests/data/v1_*`` were written by main 79ae66d (state version 1) with ``tests/data/make_v1_fixtures.py``: a
checkpoint taken at step 12 of a 120-step run and the uninterrupted run's LRs, history and final weights.
``tests/data/v2_*`` were written by main b288f95 (state version 2, the last with the search options ``early_stop``,
``min_trials``, ``abort_trials``, ``warm_start`` and ``average_trials``) with ``tests/data/make_v2_fixtures.py``: a
checkpoint taken at step 48, inside the second stage's search, and the same references.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from .helpers import FULL_BATCH_STEPS as STEPS
from .helpers import autolrs, without_probe_times
from .helpers import fit_full_batch as run

DATA = Path(__file__).parent / "data"
V1_DEFAULTS = dict(reuse_best_trial=False, val_batches=10, anneal_ratio=0.0)
#: What the removed search options wrote: keys of the controller state, its proposer's, the history's, the checkpoint's.
REMOVED_KEYS = {
    "controller": ("stage_level", "abort_checked", "warm_prior"),
    "proposer": ("prior_lrs", "prior_losses"),
    "stage": ("warm_start", "stopped_early"),
    "trial": ("aborted",),
    "checkpoint": ("autolrs_trial_average",),
}


def same_run(actual: Any, expected: Any, rel: float, path: str = "") -> None:
    """``actual`` equals ``expected`` (JSON-like): the same structure, keys, ints, strings and flags, and floats within
    ``rel`` (relative; 1e-6 absolute near zero)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), (path, set(actual) ^ set(expected))
        for key in expected:
            same_run(actual[key], expected[key], rel, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected)):
            same_run(a, e, rel, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert isinstance(actual, float) and math.isclose(actual, expected, rel_tol=rel, abs_tol=1e-6), (path, actual)
    else:
        assert actual == expected, (path, actual, expected)


def assert_resumes_as(lrs: list, history: list, params: list, ref: dict) -> None:
    """The same LR at every step, the same history (its losses and forecasts to float32 rounding across CPUs: 1e-5;
    measured: 7e-6 at most) and the same final weights (1e-3 relative, 1e-6 absolute; measured: 2.3e-4 at most)."""
    same_run(lrs, ref["lrs"], 1e-9, "lrs")
    same_run(history, ref["history"], 1e-5, "history")
    same_run(params, ref["params"], 1e-3, "params")


@pytest.mark.parametrize("name", ["v1_search", "v1_range_test"])
def test_version_1_checkpoint_resumes_bitwise(lpl, tmp_path, name) -> None:
    ref = json.loads((DATA / f"{name}_reference.json").read_text())
    ckpt = DATA / f"{name}_step12.ckpt"
    (state,) = [v for k, v in torch.load(ckpt, weights_only=True)["callbacks"].items() if k.startswith("AutoLRS")]
    assert state["version"] == 1 and state["controller"]["version"] == 1
    # the settings the run began with: the defaults of 79ae66d where they changed since (issue #12)
    cb = autolrs(**{**V1_DEFAULTS, **ref["kwargs"]})
    trainer, model = run(lpl, tmp_path, cb, ckpt_path=str(ckpt))
    assert trainer.global_step == STEPS
    assert_resumes_as(cb.lrs, cb.history, [p.detach().flatten().tolist() for p in model.parameters()], ref)
    same_run(cb.range_test_result, ref["range_test_result"], 1e-5, "range_test_result")
    assert (cb.min_lr, cb.max_lr) == (ref["min_lr"], ref["max_lr"])


def _autolrs_state(checkpoint: dict) -> dict:
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("AutoLRS")]
    return state


def _outcome(trainer) -> tuple[list[float], list[dict], list[list[float]]]:
    """The AutoLRS callback's LRs and history, and the model's final weights, of a finished fit."""
    (cb,) = [c for c in trainer.callbacks if type(c).__name__ == "AutoLRS"]
    params = [p.detach().flatten().tolist() for p in trainer.lightning_module.parameters()]
    return cb.lrs, cb.history, params


def test_version_2_checkpoint_at_the_defaults_resumes_bitwise(lpl, tmp_path) -> None:
    """A checkpoint written inside a search by the last version with the removed options, at the defaults (all of
    them off), resumes exactly as that version's uninterrupted run went on (the keys they wrote are ignored)."""
    ref = json.loads((DATA / "v2_defaults_reference.json").read_text())
    ckpt = DATA / "v2_defaults_step48.ckpt"
    controller = _autolrs_state(torch.load(ckpt, weights_only=True))["controller"]
    assert controller["version"] == 2 and controller["phase"] == "search" and "warm_prior" in controller
    trainer, _ = run(lpl, tmp_path, autolrs(), ckpt_path=str(ckpt))
    assert trainer.global_step == STEPS
    assert_resumes_as(*_outcome(trainer), ref)


def test_version_2_checkpoint_with_the_removed_options_on_resumes_at_the_defaults(lpl, tmp_path) -> None:
    """A checkpoint of a run that had every removed option on (written inside a warm-started stage whose proposer
    holds prior points, with the trial weight average in flight) loads; the run continues with the defaults'
    behaviour: what those options wrote is ignored, exactly as if the checkpoint did not hold it."""
    ref = json.loads((DATA / "v2_options_reference.json").read_text())
    assert set(ref["kwargs"]) == {"early_stop", "min_trials", "abort_trials", "warm_start", "average_trials"}
    ckpt_path = DATA / "v2_options_step48.ckpt"
    checkpoint = torch.load(ckpt_path, weights_only=True)
    controller = _autolrs_state(checkpoint)["controller"]
    assert controller["phase"] == "search" and controller["stage"] == 1 and controller["history"][1]["warm_start"]
    assert controller["proposer"]["prior_lrs"] and "autolrs_trial_average" in checkpoint

    trainer, _ = run(lpl, tmp_path / "a", autolrs(), ckpt_path=str(ckpt_path), validation=True)
    assert trainer.global_step == STEPS
    lrs, history, params = _outcome(trainer)
    assert lrs[:48] == ref["lrs"][:48] and history[0] == ref["history"][0]  # what the old run did before the checkpoint
    assert history[1]["trials"][0] == ref["history"][1]["trials"][0] and history[1]["signal"] == "val_loss"
    for stage in history:
        assert not set(REMOVED_KEYS["stage"]) & set(stage)
        assert not any(set(REMOVED_KEYS["trial"]) & set(t) for t in stage["trials"])

    # the same checkpoint without what the removed options wrote resumes the same way
    for key in REMOVED_KEYS["checkpoint"]:
        del checkpoint[key]
    for key in REMOVED_KEYS["controller"]:
        del controller[key]
    for key in REMOVED_KEYS["proposer"]:
        del controller["proposer"][key]
    for stage in controller["history"]:
        for key in REMOVED_KEYS["stage"]:
            stage.pop(key, None)
    stripped = tmp_path / "stripped.ckpt"
    torch.save(checkpoint, stripped)
    trainer, _ = run(lpl, tmp_path / "b", autolrs(), ckpt_path=str(stripped), validation=True)
    again = _outcome(trainer)
    assert (again[0], without_probe_times(again[1]), again[2]) == (lrs, without_probe_times(history), params)
