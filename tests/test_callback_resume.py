"""Exact resume: a run stopped at a checkpoint (in warmup, inside a search trial, inside an exploit phase) and resumed
in a fresh Trainer ends bitwise where the uninterrupted run ends.

The model trains full-batch (one batch per epoch), so the data each step sees does not depend on where Lightning's
non-resumable DataLoader restarts; what is under test is AutoLRS's own state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .helpers import FULL_BATCH_STEPS as STEPS
from .helpers import autolrs
from .helpers import fit_full_batch as run


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    import lightning.pytorch as lpl

    root = tmp_path_factory.mktemp("ref")
    cb = autolrs()
    _, model = run(lpl, root, cb, save_every_epoch=True)
    return root, cb, [p.detach().clone() for p in model.parameters()]


def phase_at(ckpt: Path) -> str:
    state = torch.load(ckpt, weights_only=True)  # the callback's state needs no pickled classes
    (cb_state,) = [v for k, v in state["callbacks"].items() if k.startswith("AutoLRS")]
    return cb_state["controller"]["phase"]


@pytest.mark.parametrize(("step", "phase"), [(12, "search"), (24, "exploit"), (48, "search")])
def test_resume_is_bitwise_exact(lpl, tmp_path, reference, step, phase) -> None:
    root, ref_cb, ref_params = reference
    ckpt = root / "ckpt" / f"step={step}.ckpt"
    assert phase_at(ckpt) == phase
    cb = autolrs()
    trainer, model = run(lpl, tmp_path, cb, ckpt_path=str(ckpt))
    assert trainer.global_step == STEPS
    assert cb.lrs == ref_cb.lrs
    assert cb.history == ref_cb.history
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_params))


def test_resume_in_warmup_is_bitwise_exact(lpl, tmp_path) -> None:
    ref_cb = autolrs(warmup_steps=15, warmup_lr=0.05)
    _, ref_model = run(lpl, tmp_path / "a", ref_cb, save_every_epoch=True)
    ckpt = tmp_path / "a" / "ckpt" / "step=12.ckpt"
    assert phase_at(ckpt) == "warmup"
    cb = autolrs(warmup_steps=15, warmup_lr=0.05)
    _, model = run(lpl, tmp_path / "b", cb, ckpt_path=str(ckpt))
    assert cb.lrs == ref_cb.lrs and cb.history == ref_cb.history
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))


def test_checkpoint_carries_the_snapshot_only_during_a_search(lpl, tmp_path, reference) -> None:
    root, _, _ = reference
    search, exploit = torch.load(root / "ckpt" / "step=12.ckpt"), torch.load(root / "ckpt" / "step=24.ckpt")
    assert "autolrs_stage_snapshot" in search and "autolrs_stage_snapshot" not in exploit
    params = sum(t.numel() for t in search["state_dict"].values())
    tensors = search["autolrs_stage_snapshot"]["tensors"]
    snap_model = sum(t.numel() for k, t in tensors.items() if k.startswith("model."))
    assert snap_model == params  # one extra copy of the model (plus the optimizer state)


def test_resume_without_snapshot_restarts_the_stage_search(lpl, tmp_path) -> None:
    ref = autolrs(checkpoint_snapshot=False)
    run(lpl, tmp_path / "a", ref, save_every_epoch=True)
    ckpt = tmp_path / "a" / "ckpt" / "step=12.ckpt"
    assert "autolrs_stage_snapshot" not in torch.load(ckpt)
    cb = autolrs(checkpoint_snapshot=False)
    trainer, model = run(lpl, tmp_path / "b", cb, ckpt_path=str(ckpt))
    first = cb.history[0]
    assert first.get("restarted") and first["start_step"] == 12
    assert first["trials"][0]["start_step"] == 12 and len(first["trials"]) == 3
    assert len(cb.lrs) == trainer.global_step == STEPS
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_with_reuse_best_trial_is_bitwise_exact(lpl, tmp_path) -> None:
    ref_cb = autolrs(reuse_best_trial=True)
    _, ref_model = run(lpl, tmp_path / "a", ref_cb, save_every_epoch=True)
    ckpt = tmp_path / "a" / "ckpt" / "step=12.ckpt"
    assert phase_at(ckpt) == "search" and "autolrs_best_trial_snapshot" in torch.load(ckpt)
    assert "reused_trial" in ref_cb.history[0]
    cb = autolrs(reuse_best_trial=True)
    _, model = run(lpl, tmp_path / "b", cb, ckpt_path=str(ckpt))
    assert cb.lrs == ref_cb.lrs and cb.history == ref_cb.history
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))


def test_checkpoint_without_keys_added_later_still_loads(lpl, tmp_path, reference) -> None:
    root, ref_cb, ref_params = reference
    ckpt = torch.load(root / "ckpt" / "step=24.ckpt", weights_only=True)  # in an exploit phase
    (key,) = [k for k in ckpt["callbacks"] if k.startswith("AutoLRS")]
    controller = ckpt["callbacks"][key]["controller"]
    for added_later in (
        "losses",
        "trial_start",
        "trial_probes",
        "probe_stride",
        "pending_save_best",
        "pending_restore_best",
        "best_trial",
    ):  # ("version" stays: a state without one reads as version 1, resumed under the version-1 search rules, which
        # tests/test_checkpoint_compat.py checks with checkpoints that version wrote)
        controller.pop(added_later)
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    cb = autolrs()
    trainer, model = run(lpl, tmp_path, cb, ckpt_path=str(old))
    assert trainer.global_step == STEPS and cb.lrs == ref_cb.lrs
    assert cb.controller.losses[:24] == [None] * 24  # unknown history of losses reads as missing
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_params))


def test_resume_inside_the_range_test_is_bitwise_exact(lpl, tmp_path) -> None:
    kw = dict(min_lr=None, max_lr=None, range_test_steps=30)
    ref_cb = autolrs(**kw)
    _, ref_model = run(lpl, tmp_path / "a", ref_cb, save_every_epoch=True)
    ckpt = tmp_path / "a" / "ckpt" / "step=12.ckpt"
    assert phase_at(ckpt) == "warmup" and ref_cb.range_test_result["steps"] > 12
    assert "autolrs_stage_snapshot" in torch.load(ckpt, weights_only=True)  # the sweep's start travels along
    cb = autolrs(**kw)
    _, model = run(lpl, tmp_path / "b", cb, ckpt_path=str(ckpt))
    assert cb.lrs == ref_cb.lrs and cb.history == ref_cb.history and cb.range_test_result == ref_cb.range_test_result
    assert (cb.min_lr, cb.max_lr) == (ref_cb.min_lr, ref_cb.max_lr)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))


def test_resume_on_the_step_a_search_ends_is_bitwise_exact(lpl, tmp_path) -> None:
    """A checkpoint written on the step a search ends (the winner is a trial before the last, so the next step restores
    the best-trial snapshot) carries both snapshots and resumes exactly."""
    ref_cb = autolrs(seed=1)
    _, ref_model = run(lpl, tmp_path / "a", ref_cb, save_every_epoch=True, every=1)
    pending = []
    for ckpt in sorted((tmp_path / "a" / "ckpt").glob("*.ckpt"), key=lambda p: int(p.stem.split("=")[1])):
        state = torch.load(ckpt, weights_only=True)
        (cb_state,) = [v for k, v in state["callbacks"].items() if k.startswith("AutoLRS")]
        if cb_state["controller"]["pending_restore_best"]:
            assert "autolrs_stage_snapshot" in state and "autolrs_best_trial_snapshot" in state
            pending.append(ckpt)
    assert pending, "seed 1 ends a search on a losing trial"
    cb = autolrs(seed=1)
    _, model = run(lpl, tmp_path / "b", cb, ckpt_path=str(pending[0]))
    assert cb.lrs == ref_cb.lrs and cb.history == ref_cb.history
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))
