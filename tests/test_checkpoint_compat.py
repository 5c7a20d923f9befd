"""Checkpoints written by earlier versions of the package still load and resume bitwise.

``tests/data/v1_*`` were written by main 79ae66d (state version 1) with ``tests/data/make_v1_fixtures.py``: a
checkpoint taken at step 12 of a 120-step run and the uninterrupted run's LRs, history and final weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .helpers import FULL_BATCH_STEPS as STEPS
from .helpers import autolrs
from .helpers import fit_full_batch as run

DATA = Path(__file__).parent / "data"
V1_DEFAULTS = dict(reuse_best_trial=False, val_batches=10, anneal_ratio=0.0, average_trials=False)


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
    assert cb.lrs == ref["lrs"]
    assert cb.history == ref["history"]
    assert cb.range_test_result == ref["range_test_result"]
    assert (cb.min_lr, cb.max_lr) == (ref["min_lr"], ref["max_lr"])
    assert [p.detach().flatten().tolist() for p in model.parameters()] == ref["params"]
