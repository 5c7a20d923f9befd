"""StateSnapshot: bitwise capture/restore of model, optimizer (SGD, AdamW, schedule-free, Prodigy) and GradScaler."""

from __future__ import annotations

import copy
import doctest
import io

import pytest
import torch
from torch import nn

import lightning_autolrs.snapshot as snapshot_module
from lightning_autolrs.exceptions import AutoLRSError, InvalidArgumentError, InvalidArgumentTypeError
from lightning_autolrs.snapshot import StateSnapshot

OPTIMIZERS = ["sgd", "adamw", "adamw-amsgrad", "schedulefree", "prodigy"]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))


def make_optimizer(name: str, params) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-2)
    if name == "adamw-amsgrad":
        return torch.optim.AdamW(params, lr=1e-2, amsgrad=True)
    if name == "schedulefree":
        schedulefree = pytest.importorskip("schedulefree")
        opt = schedulefree.AdamWScheduleFree(params, lr=1e-2, warmup_steps=3)
        opt.train()
        return opt
    if name == "prodigy":
        prodigyopt = pytest.importorskip("prodigyopt")
        return prodigyopt.Prodigy(params, lr=1.0)
    raise ValueError(name)


def train(m: nn.Module, opt: torch.optim.Optimizer, n: int, seed: int, lr: float | None = None) -> None:
    """``n`` deterministic training steps (data from ``seed``); ``lr`` overrides every group's LR, like a trial."""
    g = torch.Generator().manual_seed(seed)
    m.train()
    for _ in range(n):
        if lr is not None:
            for group in opt.param_groups:
                group["lr"] = lr
        x, y = torch.randn(8, 6, generator=g), torch.randn(8, 2, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(m(x), y).backward()
        opt.step()


def full_state(m: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Deep copy of everything that must come back: parameters, buffers, optimizer state and group hyperparameters."""
    return copy.deepcopy({"model": m.state_dict(), "opt": opt.state_dict()})


def assert_equal(a, b, where: str = "") -> None:
    """Bitwise equality of nested dicts/lists of tensors and plain values (tensor dtypes must match too)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for n, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{n}]")
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def groups(opt: torch.optim.Optimizer) -> list[dict]:
    return copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_restore_is_bitwise_and_training_continues_identically(name: str) -> None:
    m = make_model()
    opt = make_optimizer(name, m.parameters())
    train(m, opt, 4, seed=1)
    snap = StateSnapshot(m, opt)
    snap.capture()
    saved = full_state(m, opt)
    saved_groups = groups(opt)
    reference_m, reference_opt = copy.deepcopy((m, opt))  # an untouched twin, continued without any trial
    params = list(m.parameters())

    train(m, opt, 5, seed=2, lr=0.5)  # a trial: params, buffers, optimizer state and group hyperparameters change
    assert all(not torch.equal(a, b) for a, b in zip(m.state_dict().values(), saved["model"].values()))
    assert groups(opt) != saved_groups
    if name in ("schedulefree", "prodigy"):
        assert opt.param_groups[0]["k"] != saved_groups[0]["k"]
    snap.restore()

    assert_equal(full_state(m, opt), saved)
    assert_equal(groups(opt), saved_groups)  # every hyperparameter, also the ones opt.state_dict() would not show
    assert list(m.parameters()) == params and all(a is b for a, b in zip(opt.param_groups[0]["params"], params))
    train(m, opt, 3, seed=3)
    train(reference_m, reference_opt, 3, seed=3)
    assert_equal(full_state(m, opt), full_state(reference_m, reference_opt))


@pytest.mark.parametrize("name", ["adamw", "schedulefree", "prodigy"])
def test_capture_before_the_first_step_restores_the_empty_state(name: str) -> None:
    m = make_model()
    opt = make_optimizer(name, m.parameters())
    fresh_m = copy.deepcopy(m)
    fresh_opt = make_optimizer(name, fresh_m.parameters())
    entries_at_capture = {id(p): dict(s) for p, s in opt.state.items()}  # schedule-free's train() leaves empty dicts
    snap = StateSnapshot(m, opt)
    snap.capture()
    train(m, opt, 3, seed=1, lr=0.3)
    assert any(len(s) > 0 for s in opt.state.values())  # the trial created state lazily
    snap.restore()
    assert {id(p): dict(s) for p, s in opt.state.items()} == entries_at_capture
    train(m, opt, 1, seed=5)
    train(fresh_m, fresh_opt, 1, seed=5)
    assert_equal(full_state(m, opt), full_state(fresh_m, fresh_opt))


def test_parameter_and_state_identity_kept_and_no_allocation_after_the_first_capture() -> None:
    m = make_model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    train(m, opt, 1, seed=0)
    params = list(m.parameters())
    param_ptrs = [p.data_ptr() for p in params]
    state_ptrs = [[t.data_ptr() for t in opt.state[p].values()] for p in params]
    snap = StateSnapshot(m, opt)
    snap.capture()
    buffer_ptrs = [t.data_ptr() for t in snap._model_buffers + snap._state_buffers]
    nbytes = snap.nbytes
    for seed in range(3):
        train(m, opt, 2, seed=seed, lr=0.1)
        snap.restore()
        train(m, opt, 1, seed=10 + seed)
        snap.capture()
    assert [t.data_ptr() for t in snap._model_buffers + snap._state_buffers] == buffer_ptrs  # same buffers reused
    assert snap.nbytes == nbytes
    assert list(m.parameters()) == params and [p.data_ptr() for p in params] == param_ptrs
    assert [[t.data_ptr() for t in opt.state[p].values()] for p in params] == state_ptrs  # restored in place
    assert all(a is b for a, b in zip(opt.param_groups[0]["params"], m.parameters()))


def test_changed_state_structure_is_recreated_from_the_buffers() -> None:
    m = make_model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    snap = StateSnapshot(m, opt)
    snap.capture()  # no optimizer state yet
    train(m, opt, 2, seed=1)
    model_ptrs = [t.data_ptr() for t in snap._model_buffers]
    snap.capture()  # now with state: the state buffers are allocated, the model buffers are kept
    assert [t.data_ptr() for t in snap._model_buffers] == model_ptrs and len(snap._state_buffers) == 3 * 6
    saved = full_state(m, opt)

    p0, p1, p2 = list(m.parameters())[:3]
    opt.state[p0]["exp_avg"] = opt.state[p0]["exp_avg"].double()  # dtype changed
    opt.state[p1]["exp_avg_sq"] = torch.zeros(3)  # shape changed
    del opt.state[p2]["step"]  # key removed
    opt.state[p2]["extra"] = torch.ones(2)  # key added
    opt.param_groups[0]["added_by_trial"] = 1
    opt.param_groups[0]["lr"] = 0.7
    snap.restore()
    assert_equal(full_state(m, opt), saved)
    assert list(opt.state[p2]) == ["step", "exp_avg", "exp_avg_sq"]  # captured keys, captured order
    assert "added_by_trial" not in opt.param_groups[0] and opt.param_groups[0]["lr"] == 1e-2
    train(m, opt, 2, seed=2, lr=0.5)  # the re-created tensors are the optimizer's own, not the snapshot's buffers
    snap.restore()
    assert_equal(full_state(m, opt), saved)


def test_frozen_parameters_and_optimizer_only_parameters_are_captured() -> None:
    m = make_model()
    m[0].weight.requires_grad_(False)
    outside = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([*filter(lambda p: p.requires_grad, m.parameters()), outside], lr=0.1, momentum=0.9)
    snap = StateSnapshot(m, opt)
    snap.capture()
    frozen, out = m[0].weight.detach().clone(), outside.detach().clone()
    with torch.no_grad():
        m[0].weight.add_(1.0)
        outside.mul_(3.0)
    snap.restore()
    assert torch.equal(m[0].weight, frozen) and torch.equal(outside, out)


def test_nbytes_and_cpu_device() -> None:
    m = nn.Linear(100, 10)  # 1010 parameters in two tensors
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    opt.zero_grad()
    m(torch.randn(4, 100, generator=torch.Generator().manual_seed(0))).sum().backward()
    opt.step()
    snap = StateSnapshot(m, opt, device="cpu")
    assert snap.nbytes == 0
    snap.capture()
    # fp32 params + exp_avg + exp_avg_sq, and one fp32 scalar `step` tensor per parameter tensor
    assert snap.nbytes == 1010 * 4 * 3 + 2 * 4
    assert all(t.device.type == "cpu" for t in snap._model_buffers + snap._state_buffers)
    before = full_state(m, opt)
    opt.param_groups[0]["lr"] = 0.5
    opt.zero_grad()
    m(torch.randn(4, 100, generator=torch.Generator().manual_seed(1))).sum().backward()
    opt.step()
    snap.restore()
    assert_equal(full_state(m, opt), before)
    snap.clear()
    assert not snap.captured and snap.nbytes == 0
    with pytest.raises(AutoLRSError, match="before capture"):
        snap.restore()


def test_grad_scaler_state_is_restored() -> None:
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=1)
    except (AttributeError, TypeError, RuntimeError) as err:  # pragma: no cover - older torch
        pytest.skip(f"torch.amp.GradScaler('cpu') is not available: {err}")
    m = make_model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    scaler.scale(torch.ones(()))  # the scale tensor is created lazily
    snap = StateSnapshot(m, opt, scaler=scaler)
    snap.capture()
    scaler.update(new_scale=8.0)
    assert scaler.get_scale() == 8.0
    snap.restore()
    assert scaler.get_scale() == 256.0 and scaler.state_dict()["_growth_tracker"] == 0
    disabled = StateSnapshot(m, opt, scaler=torch.amp.GradScaler("cpu", enabled=False))
    disabled.capture()
    disabled.restore()  # a disabled scaler has no state: nothing to do, no error


def test_state_dict_round_trip_through_torch_load_into_a_fresh_snapshot() -> None:
    m = make_model()
    opt = make_optimizer("schedulefree", m.parameters())
    train(m, opt, 3, seed=1)
    snap = StateSnapshot(m, opt)
    snap.capture()
    saved, saved_groups = full_state(m, opt), groups(opt)
    buf = io.BytesIO()
    torch.save(snap.state_dict(), buf)
    train(m, opt, 2, seed=9)
    snap.capture()  # the saved state dict holds copies: later captures do not change it
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert set(loaded) == {"tensors", "meta"}

    other_m = make_model(seed=123)  # different values, same structure, an optimizer without state
    other_opt = make_optimizer("schedulefree", other_m.parameters())
    assert not torch.equal(other_m[0].weight, saved["model"]["0.weight"])
    other = StateSnapshot(other_m, other_opt)
    other.load_state_dict(loaded)
    assert other.captured and other.nbytes == snap.nbytes
    other.restore()
    assert_equal(full_state(other_m, other_opt), saved)
    assert_equal(groups(other_opt), saved_groups)

    empty = StateSnapshot(other_m, other_opt)
    state = empty.state_dict()
    assert state["meta"]["captured"] is False
    other.load_state_dict(state)  # loading an empty snapshot clears
    assert not other.captured


def test_load_state_dict_rejects_mismatched_or_malformed_state() -> None:
    m = make_model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    snap = StateSnapshot(m, opt)
    snap.capture()
    state = snap.state_dict()
    small = nn.Linear(6, 2)
    with pytest.raises(AutoLRSError, match="changed compared with the snapshot"):
        StateSnapshot(small, torch.optim.SGD(small.parameters(), lr=0.1)).load_state_dict(state)
    with pytest.raises(InvalidArgumentError, match=r"not a StateSnapshot\.state_dict"):
        snap.load_state_dict({"model": []})
    with pytest.raises(InvalidArgumentTypeError):
        snap.load_state_dict([1, 2])  # type: ignore[arg-type]


def test_module_swap_copies_the_module_in_place_and_leaves_the_optimizer_alone() -> None:
    """capture_module()/restore_module(): weights and BatchNorm buffers swapped in place (same tensors, same buffers
    the next time), the optimizer untouched; such a snapshot refuses a full restore() and state_dict()."""
    m = make_model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    train(m, opt, 2, seed=0)
    committed = StateSnapshot(m, opt)
    committed.capture()
    committed_model = copy.deepcopy(m.state_dict())
    train(m, opt, 3, seed=1, lr=0.1)  # a trial
    trial_model, trial_opt = copy.deepcopy(m.state_dict()), full_state(m, opt)["opt"]
    swap = StateSnapshot(m, opt)
    tensors = list(m.parameters()) + list(m.buffers())
    ptrs = [t.data_ptr() for t in tensors]
    for round_ in range(2):
        swap.capture_module()
        if round_ == 0:
            buffer_ptrs = [t.data_ptr() for t in swap._model_buffers]
        committed.restore_module()
        assert_equal(m.state_dict(), committed_model)  # weights and BatchNorm statistics
        assert not torch.equal(m[0].weight, trial_model["0.weight"])
        assert_equal(full_state(m, opt)["opt"], trial_opt)  # the optimizer keeps the trial's state
        swap.restore_module()
        assert_equal(m.state_dict(), trial_model)
        assert [t.data_ptr() for t in swap._model_buffers] == buffer_ptrs  # no allocation the second time
    assert [t.data_ptr() for t in tensors] == ptrs and list(m.parameters()) + list(m.buffers()) == tensors
    with pytest.raises(AutoLRSError, match=r"after capture_module\(\)"):
        swap.restore()
    with pytest.raises(AutoLRSError, match=r"after capture_module\(\)"):
        swap.state_dict()
    swap.capture()
    swap.restore()  # a full capture makes it whole again
    assert_equal(full_state(m, opt), {"model": trial_model, "opt": trial_opt})
    with pytest.raises(AutoLRSError, match="before capture"):
        StateSnapshot(m, opt).restore_module()


def test_restore_errors() -> None:
    m = make_model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    snap = StateSnapshot(m, opt)
    with pytest.raises(AutoLRSError, match=r"restore\(\) was called before capture\(\)"):
        snap.restore()
    snap.capture()
    m.add_module("extra", nn.Linear(2, 2))
    with pytest.raises(AutoLRSError, match="do not add or remove parameters"):
        snap.restore()


def test_invalid_arguments() -> None:
    m = make_model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(InvalidArgumentTypeError, match="`module`"):
        StateSnapshot(object(), opt)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentTypeError, match="`optimizer`"):
        StateSnapshot(m, object())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentTypeError, match="`scaler`"):
        StateSnapshot(m, opt, scaler=object())
    with pytest.raises(InvalidArgumentError, match="`device`"):
        StateSnapshot(m, opt, device="no-such-device")


def test_module_doctest() -> None:
    result = doctest.testmod(snapshot_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
