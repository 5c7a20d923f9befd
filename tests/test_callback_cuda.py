"""The CUDA path (issue 13, item 10): the snapshot on the device, ``snapshot_device="cpu"`` in pinned host memory, and
bf16/16-mixed autocast with the GradScaler. Skipped without CUDA; run them on a GPU machine with
``python -m pytest tests/test_callback_cuda.py``."""

from __future__ import annotations

import pytest
import torch

from .helpers import FULL_BATCH_STEPS, autolrs, fit_full_batch, make_module_class, trainer_kwargs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _gpu(**kw):
    return {**kw, "accelerator": "gpu", "devices": 1}  # (trainer_kwargs's defaults are the CPU)


def _fit(lpl, tmp_path, cb, **kw):
    model = make_module_class(lpl)()
    trainer = lpl.Trainer(callbacks=[cb], **_gpu(**trainer_kwargs(tmp_path, max_steps=80, **kw)))
    trainer.fit(model)
    return trainer, model


def test_snapshot_lives_on_the_device_and_the_run_ends_finite(lpl, tmp_path) -> None:
    cb = autolrs()
    trainer, model = _fit(lpl, tmp_path, cb)
    assert len(cb.lrs) == trainer.global_step == 80 and cb.history[0]["best_lr"] is not None
    buffers = cb._snapshot._model_buffers
    assert buffers and all(b.device.type == "cuda" for b in buffers)
    assert all(p.device.type == "cuda" and torch.isfinite(p).all() for p in model.parameters())


def test_cpu_snapshot_is_pinned_host_memory(lpl, tmp_path) -> None:
    cb = autolrs(snapshot_device="cpu")
    _, model = _fit(lpl, tmp_path, cb)
    buffers = cb._snapshot._model_buffers + cb._snapshot._state_buffers
    assert buffers and all(b.device.type == "cpu" and b.is_pinned() for b in buffers)
    assert all(p.device.type == "cuda" and torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_on_cuda(lpl, tmp_path, precision) -> None:
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    cb = autolrs()
    trainer, model = _fit(lpl, tmp_path, cb, precision=precision)
    assert len(cb.lrs) == trainer.global_step == 80
    assert all(len(h["trials"]) == 3 for h in cb.history[:-1])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_trial_restore_is_bitwise_on_the_device(lpl, tmp_path) -> None:
    """Each trial starts from the stage start, bitwise, with the snapshot on the device."""
    seen: dict[int, list[torch.Tensor]] = {}

    class Record(lpl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]

    cb = autolrs()
    model = make_module_class(lpl)()
    trainer = lpl.Trainer(callbacks=[cb, Record()], **_gpu(**trainer_kwargs(tmp_path, max_steps=40)))
    trainer.fit(model)
    first = cb.history[0]
    starts = [t["start_step"] for t in first["trials"]]
    assert len(starts) == 3
    assert all(torch.equal(a, b) for s in starts[1:] for a, b in zip(seen[starts[0]], seen[s]))


def test_resume_on_cuda_is_bitwise_exact(lpl, tmp_path) -> None:
    assert FULL_BATCH_STEPS > 12  # the checkpoint at step 12 lies inside stage 0's search
    ref = autolrs()
    _, ref_model = fit_full_batch(lpl, tmp_path / "a", ref, save_every_epoch=True, accelerator="gpu")
    cb = autolrs()
    _, model = fit_full_batch(
        lpl, tmp_path / "b", cb, ckpt_path=str(tmp_path / "a" / "ckpt" / "step=12.ckpt"), accelerator="gpu"
    )
    assert cb.lrs == ref.lrs and cb.history == ref.history
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))
