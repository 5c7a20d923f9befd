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


def test_resume_inside_a_trial_with_losses_read_late_is_bitwise_exact(lpl, tmp_path, monkeypatch) -> None:
    """On an accelerator a trial step's loss is read one step late; a checkpoint written inside a trial holds it (the
    callback hands the controller the waiting loss first), so the run resumed from it ends bitwise as the uninterrupted
    one, which ends as the reference (every loss read at once, as on CPU). Seed 1: a run without an exploit fallback,
    whose restore comes a step later when losses are read late, by design (README, "Failure behaviour you can rely
    on"); the shared reference (seed 0) has one since stop 51's anchored design."""
    from lightning_autolrs import AutoLRS

    ref_cb = autolrs(seed=1)
    _, ref_model = run(lpl, tmp_path / "ref", ref_cb)  # every loss read at once
    ref_params = [p.detach().clone() for p in ref_model.parameters()]
    assert not any(h["fallbacks"] for h in ref_cb.history)
    monkeypatch.setattr(AutoLRS, "_reads_late", staticmethod(lambda trainer: True))
    trial = next(t for t in ref_cb.history[0]["trials"] if t["start_step"] < 12 < t["start_step"] + t["steps"] - 1)
    assert trial  # step 11, the last before the checkpoint, is a trial step before its trial's last: read late
    late_cb = autolrs(seed=1)
    _, late_model = run(lpl, tmp_path / "a", late_cb, save_every_epoch=True)
    assert late_cb.lrs == ref_cb.lrs and late_cb.history == ref_cb.history
    assert all(torch.equal(a, b) for a, b in zip(late_model.parameters(), ref_params))
    cb = autolrs(seed=1)
    trainer, model = run(lpl, tmp_path / "b", cb, ckpt_path=str(tmp_path / "a" / "ckpt" / "step=12.ckpt"))
    assert trainer.global_step == STEPS and cb.lrs == ref_cb.lrs and cb.history == ref_cb.history
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


def test_checkpoint_carries_the_trial_only_during_a_search_and_the_stage_snapshot_from_the_first_stage_on(
    lpl, tmp_path, reference
) -> None:
    root, _, _ = reference
    search, exploit = torch.load(root / "ckpt" / "step=12.ckpt"), torch.load(root / "ckpt" / "step=24.ckpt")
    assert "autolrs_stage_snapshot" in search and "autolrs_stage_snapshot" in exploit  # what a fallback goes back to
    assert "autolrs_trial_state" in search and "autolrs_trial_state" not in exploit
    assert "autolrs_best_trial_snapshot" not in exploit
    model = sum(t.numel() for k, t in exploit["autolrs_stage_snapshot"]["tensors"].items() if k.startswith("model."))
    assert model == sum(t.numel() for t in exploit["state_dict"].values())  # one extra copy of the model
    params = sum(t.numel() for t in search["state_dict"].values())
    tensors = search["autolrs_stage_snapshot"]["tensors"]
    snap_model = sum(t.numel() for k, t in tensors.items() if k.startswith("model."))
    assert snap_model == params  # one extra copy of the model (plus the optimizer state)


def _poison_at(lpl, step: int):
    """A callback that turns the first parameter NaN before the training step ``step``: that step's loss is NaN, an
    exploit fallback."""

    class Poison(lpl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == step:
                with torch.no_grad():
                    next(pl_module.parameters()).fill_(float("nan"))

    return Poison()


def test_resume_in_an_exploit_phase_that_falls_back_later_is_bitwise_exact(lpl, tmp_path) -> None:
    """The fallback restores the stage start: a run resumed inside the exploit phase goes back to the same one (it
    used to capture the resumed weights as its snapshot, so its fallback rewound to the checkpoint's step)."""
    ref_cb = autolrs()
    _, ref_model = run(lpl, tmp_path / "a", ref_cb, save_every_epoch=True, callbacks=(_poison_at(lpl, 27),))
    assert [f["step"] for h in ref_cb.history for f in h["fallbacks"]] == [27]
    ckpt = tmp_path / "a" / "ckpt" / "step=24.ckpt"
    assert phase_at(ckpt) == "exploit"
    cb = autolrs()
    _, model = run(lpl, tmp_path / "b", cb, ckpt_path=str(ckpt), callbacks=(_poison_at(lpl, 27),))
    assert cb.lrs == ref_cb.lrs and cb.history == ref_cb.history
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))


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
        "late_diverged",
        "probe_dropped",
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


def test_resume_inside_the_range_test_without_its_snapshot_sweeps_again(lpl, tmp_path) -> None:
    """``checkpoint_snapshot=False``: the checkpoint holds the sweep's start state but not the snapshot, so the resumed
    run sweeps again from it (it failed with "restore() before capture()" where the sweep ended; review)."""
    kw = dict(min_lr=None, max_lr=None, range_test_steps=30, checkpoint_snapshot=False)
    ref_cb = autolrs(**kw)
    run(lpl, tmp_path / "a", ref_cb, save_every_epoch=True)
    ckpt = tmp_path / "a" / "ckpt" / "step=12.ckpt"
    assert phase_at(ckpt) == "warmup" and ref_cb.range_test_result["steps"] > 12
    assert "autolrs_stage_snapshot" not in torch.load(ckpt, weights_only=True)
    cb = autolrs(**kw)
    trainer, model = run(lpl, tmp_path / "b", cb, ckpt_path=str(ckpt))
    assert trainer.global_step == STEPS and len(cb.lrs) == STEPS
    assert cb.range_test_result["start_step"] == 12 and cb.lrs[12] == cb.lrs[0]  # the sweep began again at step 12
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_inside_the_warmup_after_the_range_test_is_bitwise_exact(lpl, tmp_path) -> None:
    """The range test runs first, then the warmup from the restored start state: a checkpoint in that warmup holds a
    real training state (no restore is pending; it once raised IndexError there) and resumes it bitwise (review)."""
    kw = dict(min_lr=None, max_lr=None, range_test_steps=10, warmup_steps=30, warmup_lr=0.05)
    ref_cb = autolrs(**kw)
    _, ref_model = run(lpl, tmp_path / "a", ref_cb, save_every_epoch=True)
    n = ref_cb.range_test_result["steps"]
    assert ref_cb.range_test_result["start_step"] == 0 and n < 12 < n + 30
    assert ref_cb.lrs[n] == pytest.approx(0.05 / 30) and ref_cb.history[0]["start_step"] == n + 30
    ckpt = tmp_path / "a" / "ckpt" / "step=12.ckpt"
    assert phase_at(ckpt) == "warmup"
    cb = autolrs(**kw)
    _, model = run(lpl, tmp_path / "b", cb, ckpt_path=str(ckpt))
    assert cb.lrs == ref_cb.lrs and cb.history == ref_cb.history and cb.range_test_result == ref_cb.range_test_result
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))


def test_resume_on_the_step_a_search_ends_is_bitwise_exact(lpl, tmp_path) -> None:
    """A checkpoint written on the step a search ends (the winner is a trial before the last, so the next step restores
    the best-trial snapshot) carries both snapshots and resumes exactly."""
    ref_cb = autolrs(seed=0)
    _, ref_model = run(lpl, tmp_path / "a", ref_cb, save_every_epoch=True, every=1)
    pending = []
    for ckpt in sorted((tmp_path / "a" / "ckpt").glob("*.ckpt"), key=lambda p: int(p.stem.split("=")[1])):
        state = torch.load(ckpt, weights_only=True)
        (cb_state,) = [v for k, v in state["callbacks"].items() if k.startswith("AutoLRS")]
        if cb_state["controller"]["pending_restore_best"]:
            assert "autolrs_stage_snapshot" in state and "autolrs_best_trial_snapshot" in state
            pending.append(ckpt)
    assert pending, "seed 0 ends a search on a losing trial"
    cb = autolrs(seed=0)
    _, model = run(lpl, tmp_path / "b", cb, ckpt_path=str(pending[0]))
    assert cb.lrs == ref_cb.lrs and cb.history == ref_cb.history
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))


def trajectory(lpl):
    class Trajectory(lpl.Callback):
        """Weights and SGD momentum buffers at the start of the fit and after every step (keyed by the global step)."""

        def __init__(self) -> None:
            self.params: dict[int, list[torch.Tensor]] = {}
            self.momenta: dict[int, list[torch.Tensor]] = {}

        def on_train_start(self, trainer, pl_module) -> None:
            self.on_train_batch_end(trainer, pl_module, None, None, 0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            opt = trainer.optimizers[0]
            self.params[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]
            self.momenta[trainer.global_step] = [
                opt.state[p]["momentum_buffer"].clone() for p in pl_module.parameters() if p in opt.state
            ]

    return Trajectory()


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_checkpoint_mid_search_holds_the_committed_state_and_resumes_bitwise(lpl, tmp_path) -> None:
    """ModelCheckpoint(every_n_train_steps=4) inside stage 0's search (trials of 5 steps from step 0): the checkpoint's
    weights and optimizer state are the stage start at step 4 (no trial completed), trial 0's end at step 8 and the end
    of trial 0 or 1 at step 12, never the trial in flight, which travels in the callback's own key; resuming from any of
    them ends bitwise where the uninterrupted run ends."""
    ref_cb, traj = autolrs(), trajectory(lpl)
    every4 = lpl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "a" / "ckpt", filename="{step}", every_n_train_steps=4, save_top_k=-1
    )
    _, ref_model = run(lpl, tmp_path / "a", ref_cb, callbacks=(traj, every4))
    trials = ref_cb.history[0]["trials"]
    assert [(t["start_step"], t["steps"], t["diverged"]) for t in trials] == [(s, 5, False) for s in (0, 5, 10)]
    ckpts = {step: torch.load(tmp_path / "a" / "ckpt" / f"step={step}.ckpt", weights_only=True) for step in (4, 8, 12)}
    for step, ckpt in ckpts.items():
        (cb_state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("AutoLRS")]
        assert cb_state["controller"]["phase"] == "search"
        in_flight = [ckpt["autolrs_trial_state"]["tensors"][f"model.{j}"] for j in range(len(traj.params[step]))]
        assert same(in_flight, traj.params[step])  # the trial in flight, for the resume
        assert not same(ckpt["state_dict"].values(), traj.params[step])
    assert same(ckpts[4]["state_dict"].values(), traj.params[0])  # the stage start: before the first step,
    assert ckpts[4]["optimizer_states"][0]["state"] == {}  # without momentum
    assert same(ckpts[8]["state_dict"].values(), traj.params[5])  # the end of trial 0, the only one completed
    momenta = [s["momentum_buffer"] for s in ckpts[8]["optimizer_states"][0]["state"].values()]
    assert same(momenta, traj.momenta[5])
    kept = [end for end in (5, 10) if same(ckpts[12]["state_dict"].values(), traj.params[end])]
    assert len(kept) == 1
    momenta = [s["momentum_buffer"] for s in ckpts[12]["optimizer_states"][0]["state"].values()]
    assert same(momenta, traj.momenta[kept[0]])

    for step in (4, 8, 12):
        cb = autolrs()
        ckpt_path = str(tmp_path / "a" / "ckpt" / f"step={step}.ckpt")
        trainer, model = run(lpl, tmp_path / f"b{step}", cb, ckpt_path=ckpt_path)
        assert trainer.global_step == STEPS
        assert cb.lrs == ref_cb.lrs and cb.history == ref_cb.history
        assert same(model.parameters(), ref_model.parameters())


def test_checkpoint_on_exception_mid_search_holds_the_kept_trial_and_resumes_bitwise(lpl, tmp_path) -> None:
    """An exception at step 8 (trial 1 in flight): the model is left at trial 0's end and OnExceptionCheckpoint writes
    that; the trial in flight travels in the callback's key, so a resume continues it exactly."""

    class Fail(lpl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 8:
                raise RuntimeError("boom")

    ref_cb, traj = autolrs(), trajectory(lpl)
    _, ref_model = run(lpl, tmp_path / "ref", ref_cb, callbacks=(traj,))
    cb = autolrs()
    on_exception = lpl.callbacks.OnExceptionCheckpoint(tmp_path / "a")
    with pytest.raises(RuntimeError, match="boom"), pytest.warns(UserWarning, match="kept that trial's 5 steps"):
        run(lpl, tmp_path / "a", cb, callbacks=(Fail(), on_exception))
    ckpt = torch.load(tmp_path / "a" / "on_exception.ckpt", weights_only=True)
    assert same(ckpt["state_dict"].values(), traj.params[5])
    in_flight = [ckpt["autolrs_trial_state"]["tensors"][f"model.{j}"] for j in range(len(traj.params[8]))]
    assert same(in_flight, traj.params[8])
    cb = autolrs()
    trainer, model = run(lpl, tmp_path / "b", cb, ckpt_path=str(tmp_path / "a" / "on_exception.ckpt"))
    assert trainer.global_step == STEPS
    assert cb.lrs == ref_cb.lrs and cb.history == ref_cb.history
    assert same(model.parameters(), ref_model.parameters())


@pytest.mark.parametrize("step", [15, 17])  # the step the first search ends (its restore due), inside the warmup
def test_resume_at_the_first_stages_exploit_warmup_is_bitwise_exact(lpl, tmp_path, step: int) -> None:
    """AdamW: the first stage's exploit phase restarts from the stage start with a warmup (steps 15-19 here); a
    checkpoint on the step its search ends, or inside the warmup, resumes it exactly."""
    ref_cb = autolrs()
    _, ref_model = run(lpl, tmp_path / "a", ref_cb, save_every_epoch=True, every=1, optimizer="adamw")
    first = ref_cb.history[0]
    assert first["exploit_start"] == 15 and first["exploit_warmup"] == 5 and ref_cb.lrs[16] < first["best_lr"]
    ckpt = tmp_path / "a" / "ckpt" / f"step={step}.ckpt"
    (state,) = [v for k, v in torch.load(ckpt, weights_only=True)["callbacks"].items() if k.startswith("AutoLRS")]
    assert state["controller"]["pending_restore"] == (step == 15) and phase_at(ckpt) == "exploit"
    cb = autolrs()
    _, model = run(lpl, tmp_path / "b", cb, ckpt_path=str(ckpt), optimizer="adamw")
    assert cb.lrs == ref_cb.lrs and cb.history == ref_cb.history
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))
