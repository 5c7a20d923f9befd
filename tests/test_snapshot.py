"""Bitwise snapshot/restore of model and optimizer state (SGD, AdamW, schedule-free AdamW, Prodigy, GradScaler)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from lightning_autolrs.exceptions import AutoLRSError
from lightning_autolrs.snapshot import StateSnapshot


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))


def optimizer(name: str, params) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-2)
    if name == "adamw-amsgrad":
        return torch.optim.AdamW(params, lr=1e-2, amsgrad=True)
    if name == "schedulefree":
        import schedulefree

        opt = schedulefree.AdamWScheduleFree(params, lr=1e-2, warmup_steps=3)
        opt.train()
        return opt
    if name == "prodigy":
        import prodigyopt

        return prodigyopt.Prodigy(params, lr=1.0)
    raise ValueError(name)


def steps(m: nn.Module, opt: torch.optim.Optimizer, n: int, seed: int, lr: float | None = None) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        if lr is not None:
            for group in opt.param_groups:
                group["lr"] = lr
        x, y = torch.randn(8, 6, generator=g), torch.randn(8, 2, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(m(x), y).backward()
        opt.step()


def full_state(m: nn.Module, opt: torch.optim.Optimizer) -> dict:
    return copy.deepcopy({"model": m.state_dict(), "opt": opt.state_dict()})


def assert_equal(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_equal(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_equal(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("name", ["sgd", "adamw", "adamw-amsgrad", "schedulefree", "prodigy"])
def test_restore_is_bitwise_and_training_continues_identically(name) -> None:
    m = model()
    opt = optimizer(name, m.parameters())
    steps(m, opt, 4, seed=1)
    snap = StateSnapshot(m, opt)
    snap.capture()
    saved = full_state(m, opt)
    reference_m, reference_opt = copy.deepcopy(m), None
    reference_opt = optimizer(name, reference_m.parameters())
    reference_opt.load_state_dict(copy.deepcopy(opt.state_dict()))

    steps(m, opt, 5, seed=2, lr=0.5)  # a trial: params, buffers, moments and group hyperparameters all change
    assert any(not torch.equal(a, b) for a, b in zip(m.state_dict().values(), saved["model"].values()))
    snap.restore()
    assert_equal(full_state(m, opt), saved)

    steps(m, opt, 3, seed=3)
    steps(reference_m, reference_opt, 3, seed=3)
    for a, b in zip(m.state_dict().values(), reference_m.state_dict().values()):
        assert torch.equal(a, b)


def test_capture_before_the_first_step_restores_an_empty_state() -> None:
    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    fresh_m = copy.deepcopy(m)
    fresh_opt = torch.optim.AdamW(fresh_m.parameters(), lr=1e-2)
    snap = StateSnapshot(m, opt)
    snap.capture()
    steps(m, opt, 3, seed=1)
    assert len(opt.state) > 0
    snap.restore()
    assert len(opt.state) == 0
    steps(m, opt, 1, seed=5)
    steps(fresh_m, fresh_opt, 1, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), fresh_m.parameters()))


def test_identity_kept_and_no_new_allocations() -> None:
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    steps(m, opt, 1, seed=0)
    params = list(m.parameters())
    ptrs = [p.data_ptr() for p in params]
    momentum_ptrs = [opt.state[p]["momentum_buffer"].data_ptr() for p in params]
    snap = StateSnapshot(m, opt)
    snap.capture()
    buffers = [t.data_ptr() for t in snap._model_buffers + snap._state_buffers]
    for seed in range(3):
        steps(m, opt, 2, seed=seed)
        snap.restore()
        snap.capture()
    assert [t.data_ptr() for t in snap._model_buffers + snap._state_buffers] == buffers  # buffers reused
    assert list(m.parameters()) == params and [p.data_ptr() for p in params] == ptrs
    assert [opt.state[p]["momentum_buffer"].data_ptr() for p in params] == momentum_ptrs
    assert all(a is b for a, b in zip(opt.param_groups[0]["params"], params))


def test_nbytes_and_cpu_device() -> None:
    m = nn.Linear(100, 10)  # 1010 parameters
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    steps_model = nn.Sequential(m)
    g = torch.Generator().manual_seed(0)
    opt.zero_grad()
    steps_model(torch.randn(4, 100, generator=g)).sum().backward()
    opt.step()
    snap = StateSnapshot(m, opt, device="cpu")
    snap.capture()
    # params + exp_avg + exp_avg_sq (fp32) + one scalar `step` tensor per parameter tensor
    assert snap.nbytes == 1010 * 4 * 3 + 2 * 4
    assert all(t.device.type == "cpu" for t in snap._model_buffers)


def test_grad_scaler_state_is_restored() -> None:
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    scaler.scale(torch.ones(()))  # the scaler creates its scale lazily
    snap = StateSnapshot(m, opt, scaler=scaler)
    snap.capture()
    scaler.update(new_scale=8.0)
    assert scaler.get_scale() == 8.0
    snap.restore()
    assert scaler.get_scale() == 256.0


def test_state_dict_round_trip_through_torch_load() -> None:
    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    steps(m, opt, 3, seed=1)
    snap = StateSnapshot(m, opt)
    snap.capture()
    saved = full_state(m, opt)
    buf = io.BytesIO()
    torch.save(snap.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)

    steps(m, opt, 4, seed=2, lr=0.3)  # the live model moves on; a fresh snapshot object reads the checkpoint
    other = StateSnapshot(m, opt)
    other.load_state_dict(loaded)
    other.restore()
    assert_equal(full_state(m, opt), saved)


def test_restore_before_capture_is_an_error() -> None:
    m = model()
    snap = StateSnapshot(m, torch.optim.SGD(m.parameters(), lr=0.1))
    with pytest.raises(AutoLRSError, match="before capture"):
        snap.restore()
