"""AutoLRS under DDP on 2 CPU processes (gloo): rank 0 decides, every rank applies the same LR at the same step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import without_probe_times

SCRIPT = Path(__file__).parent / "scripts" / "ddp_fit.py"
ROOT = Path(__file__).resolve().parent.parent


def launch(tmp_path: Path, strategy: str, *extra: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    # the ranks import the package from this checkout, not from wherever it is installed
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), strategy, str(tmp_path), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_ranks_agree_on_every_decision(tmp_path, strategy) -> None:
    r0, r1 = launch(tmp_path, strategy)
    assert r0["world_size"] == r1["world_size"] == 2
    assert len(r0["lrs"]) == r0["global_step"] == 70
    assert r0["lrs"] == r1["lrs"] and r0["history"] == r1["history"] and r0["losses"] == r1["losses"]
    assert len(r0["history"][0]["trials"]) == 3
    assert r0["params"] == r1["params"]  # restores happened identically on both ranks


def test_ranks_agree_through_the_first_stages_exploit_warmup(tmp_path) -> None:
    """Adam: the first stage's exploit phase restarts from the stage start and ramps up; both ranks apply the same ramp
    (losses read one step late, as on an accelerator) and end with the same weights."""
    r0, r1 = launch(tmp_path, "ddp", "adam", "late")
    first = r0["history"][0]
    assert first["exploit_warmup"] == 5 and "reused_trial" not in first
    start = first["exploit_start"]
    assert r0["lrs"][start] < r0["lrs"][start + 4] == first["best_lr"]
    assert r0["lrs"] == r1["lrs"] and r0["history"] == r1["history"] and r0["params"] == r1["params"]


@pytest.mark.parametrize("late", [(), ("late",)])
def test_nan_on_one_rank_aborts_the_trial_on_all(tmp_path, late) -> None:
    """``late``: losses read one step late, as on an accelerator (LateLoss's collective), trial steps but a trial's
    last included: the trial ends one step later, after the step that was in flight when the NaN was read."""
    r0, r1 = launch(tmp_path, "ddp", "1", "7", *late)  # rank 1 sees NaN at step 7, inside trial 2 of stage 0
    assert r0["late_reads"] == r1["late_reads"] == bool(late)
    trials = r0["history"][0]["trials"]
    assert trials[1]["diverged"] and trials[1]["steps"] == (4 if late else 3)  # steps 5, 6, 7 (and 8)
    assert trials[2]["start_step"] == (9 if late else 8)
    assert r0["history"] == r1["history"] and r0["lrs"] == r1["lrs"]
    assert r0["params"] == r1["params"]
    assert all(v == v for p in r0["params"] for v in p)  # finite (no NaN) weights on both ranks


def test_ranks_agree_through_an_early_anneal_and_the_restore_at_its_holds_end(tmp_path) -> None:
    """``AutoLRS()`` at its defaults on a model that overfits: the final anneal begins early, from the exploit phase's
    best-probed state; the hold after it probes on (each probe rides in its step's all-reduce) and the budget's last
    step goes back to the hold's best-probed state, on both ranks alike."""
    r0, r1 = launch(tmp_path, "ddp", "overfit")
    (stage,) = r0["history"]
    assert stage["overfitting"] and stage["rolled_back_to"] < stage["anneal_start"] < stage["restored_at_end"] < 1000
    assert r0["global_step"] == 1000 and r0["lrs"] == r1["lrs"] and r0["params"] == r1["params"]
    assert without_probe_times(r0["history"]) == without_probe_times(r1["history"])


def test_ranks_agree_on_the_range_test(tmp_path) -> None:
    r0, r1 = launch(tmp_path, "ddp", "range")
    assert r0["range_test"] is not None and r0["range_test"] == r1["range_test"]
    assert r0["range_test"]["steps"] <= 20 and r0["history"][0]["start_step"] == r0["range_test"]["steps"]
    assert len(r0["lrs"]) == r0["global_step"] == 90
    assert r0["lrs"] == r1["lrs"] and r0["history"] == r1["history"] and r0["params"] == r1["params"]


@pytest.mark.parametrize("late", [(), ("late",)])
def test_one_all_reduce_per_step_and_only_the_decision_is_broadcast(tmp_path, late) -> None:
    """With validation probes (a stage-start probe and probes inside trials), AutoLRS's per-step hooks make at most
    one collective per step, an all-reduce carrying the loss and the probes together; after an event they also
    broadcast rank 0's decision, a few hundred bytes, not the controller's whole (growing) state. ``late``: losses
    read one step late, as on an accelerator (their all-reduce is LateLoss's), trial steps between probes included."""
    r0, r1 = launch(tmp_path, "ddp", "count", *late)
    assert r0["late_reads"] == r1["late_reads"] == bool(late)
    assert r0["lrs"] == r1["lrs"] and r0["params"] == r1["params"]

    assert without_probe_times(r0["history"]) == without_probe_times(r1["history"])  # each rank times its own probes
    stage = r0["history"][0]
    assert stage["signal"] == "val_loss" and len(stage["trials"]) == 3  # the probes ran, in every trial
    steps = r0["collectives"]
    assert len(steps) == r0["global_step"] == 70
    events = sum(len(h["trials"]) + 1 for h in r0["history"] if h["trials"])  # trial ends and search ends, at most
    broadcasts = [s for s in steps if "broadcast_object_list" in s]
    assert all(s.count("all_reduce") == 1 for s in steps)  # the probe values ride in the loss's all-reduce
    assert all(sorted(s) in (["all_reduce"], ["all_reduce", "broadcast_object_list"]) for s in steps)
    assert 0 < len(broadcasts) <= events
    assert max(r0["broadcast_bytes"]) < 1024 < r0["state_bytes"]
