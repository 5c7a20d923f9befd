"""In-memory snapshot of a model and its optimizer, restored in place.

AutoLRS tries several learning rates from the same starting point. :class:`StateSnapshot` makes that possible: it
copies, into buffers allocated once, everything a training step can change, and copies it back between trials:

- every parameter of the module (frozen ones included) and every buffer (BatchNorm running statistics and
  ``num_batches_tracked`` included), plus any optimizer parameter that is not part of the module;
- the optimizer's per-parameter state: tensors (``exp_avg``, ``momentum_buffer``, schedule-free's ``z``, Prodigy's
  ``s``/``p0``, tensor ``step`` counters, ...) into preallocated buffers, other values (Python ``step`` counters, ...)
  deep-copied; which parameters have state at all is recorded too, so state that appears after the capture (the
  optimizer creates it lazily on its first step) is removed again by :meth:`StateSnapshot.restore`;
- every param-group hyperparameter except ``params`` (``lr``, ``betas``, ``weight_decay``, schedule-free's ``k``,
  ``weight_sum``, ``lr_max``, ``train_mode``, Prodigy's ``d``, ``d_numerator``, ...), deep-copied;
- the state of an AMP ``GradScaler`` when one is given (``state_dict`` / ``load_state_dict``).

:meth:`StateSnapshot.restore` copies the buffers back into the live tensors with ``Tensor.copy_``: parameters and
optimizer state tensors keep their identity and storage (same objects, same ``data_ptr()``), so the optimizer's
references, DDP's buckets and any other wrapper stay valid. The first :meth:`StateSnapshot.capture` allocates the
buffers; later captures of the same structure copy into the same buffers (no allocation). Copies use
``torch._foreach_copy_`` (one fused call per device/dtype group) where available. :meth:`StateSnapshot.capture_module`
and :meth:`StateSnapshot.restore_module` copy the module's tensors only, for a swap of weights that leaves the
optimizer alone (e.g. evaluating other weights and swapping back).

Memory: the snapshot holds one extra copy of the parameters, buffers and optimizer state (:attr:`StateSnapshot.nbytes`),
on each tensor's own device by default or in host memory with ``device="cpu"``. That is the peak extra memory of
capture and restore; :meth:`StateSnapshot.state_dict` additionally makes one temporary host-memory copy for saving.

Not captured: gradients (``.grad``), optimizer attributes other than ``state`` and ``param_groups``, optimizer state
keyed by anything other than the optimizer's parameters, and LR-scheduler state.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_autolrs.exceptions import AutoLRSError, InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["StateSnapshot"]

_FORMAT_VERSION = 1
_ON_PARAM_DEVICE = "param"  # location tag of an optimizer state tensor that lives on its parameter's device

_foreach_copy = getattr(torch, "_foreach_copy_", None)


def _copy_all(dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor], non_blocking: bool = False) -> None:
    """``d.copy_(s)`` for every pair, as one ``torch._foreach_copy_`` call per (device, dtype) group when possible."""
    if not dst:
        return
    if _foreach_copy is None:
        for d, s in zip(dst, src):
            d.copy_(s, non_blocking=non_blocking)
        return
    groups: dict[tuple[Any, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for d, s in zip(dst, src):
        ds, ss = groups.setdefault((d.device, s.device, d.dtype, s.dtype), ([], []))
        ds.append(d)
        ss.append(s)
    for ds, ss in groups.values():
        try:
            _foreach_copy(ds, ss, non_blocking=non_blocking)
        except (RuntimeError, TypeError):  # a kernel the fused path refuses: copy one by one (idempotent)
            for d, s in zip(ds, ss):
                d.copy_(s, non_blocking=non_blocking)


def _same_device(actual: torch.device, wanted: torch.device) -> bool:
    return actual.type == wanted.type and (wanted.index is None or actual.index == wanted.index)


def _fits(buffer: torch.Tensor | None, like: torch.Tensor) -> bool:
    return buffer is not None and buffer.shape == like.shape and buffer.dtype == like.dtype


class StateSnapshot:
    """Preallocated in-memory copy of a module's and an optimizer's state, restored in place.

    Args:
        module: the model; all its ``parameters()`` (frozen ones too) and ``buffers()`` are captured.
        optimizer: the optimizer; its per-parameter ``state`` and every param-group hyperparameter except ``params``
            are captured.
        scaler: an AMP ``GradScaler`` (anything with ``state_dict``/``load_state_dict``) whose state is captured too.
            ``None`` or a disabled scaler is ignored.
        device: where the copies live. ``None`` keeps each copy on its tensor's own device; ``"cpu"`` keeps them in
            host memory (pinned when the tensor is on a CUDA device, so copies are asynchronous; capture and restore
            synchronise before returning).

    Raises:
        InvalidArgumentTypeError: ``module`` is not an ``nn.Module``, ``optimizer`` has no ``param_groups``/``state``,
            or ``scaler`` has no ``state_dict``/``load_state_dict``.
        InvalidArgumentError: ``device`` is not a valid device.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> snap = StateSnapshot(model, opt)
        >>> snap.capture()  # before the first step: the optimizer has no state yet
        >>> weight, before = model[0].weight, model[0].weight.detach().clone()
        >>> model(torch.randn(4, 2)).sum().backward()
        >>> opt.param_groups[0]["lr"] = 1.0  # a trial LR
        >>> opt.step()
        >>> torch.equal(model[0].weight, before), len(opt.state)
        (False, 4)
        >>> snap.restore()
        >>> torch.equal(model[0].weight, before), len(opt.state), opt.param_groups[0]["lr"], model[0].weight is weight
        (True, 0, 0.1, True)
        >>> snap.nbytes  # parameters: 4 + 2 + 2 + 2 floats; BatchNorm buffers: 2 + 2 floats and one int64
        64
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        scaler: Any | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise InvalidArgumentTypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}.")
        if not hasattr(optimizer, "param_groups") or not hasattr(optimizer, "state"):
            raise InvalidArgumentTypeError(
                f"`optimizer` must be a torch.optim.Optimizer (with `param_groups` and `state`), "
                f"got {type(optimizer).__name__}."
            )
        if scaler is not None and not (hasattr(scaler, "state_dict") and hasattr(scaler, "load_state_dict")):
            raise InvalidArgumentTypeError(
                f"`scaler` must be None or a GradScaler with `state_dict`/`load_state_dict`, "
                f"got {type(scaler).__name__}."
            )
        if device is not None and not isinstance(device, str | torch.device):
            raise InvalidArgumentTypeError(
                f"`device` must be None, a string like 'cpu' or a torch.device, got {type(device).__name__}."
            )
        try:
            self.device: torch.device | None = None if device is None else torch.device(device)
        except RuntimeError as err:
            raise InvalidArgumentError(f"`device` must be a valid device such as 'cpu', got {device!r}.") from err
        self.module = module
        self.optimizer = optimizer
        self.scaler = scaler
        # module tensors (params, buffers, optimizer-only params), aligned with _model_live()
        self._model_buffers: list[torch.Tensor] = []
        # optimizer state: tensor entries as (param index, key, location) aligned with _state_buffers; key order
        # of each parameter that has state; deep-copied non-tensor entries
        self._state_entries: list[tuple[int, Hashable, str]] = []
        self._state_buffers: list[torch.Tensor] = []
        self._state_order: dict[int, list[Hashable]] = {}
        self._state_plain: dict[tuple[int, Hashable], Any] = {}
        self._group_sizes: list[int] = []
        self._groups: list[dict[str, Any]] = []
        self._scaler_state: dict[str, Any] | None = None
        self._captured = False
        self._module_only = False  # captured by capture_module(): the optimizer part is not valid

    # ------------------------------------------------------------------ public API
    @property
    def captured(self) -> bool:
        """Whether the buffers hold a state (after :meth:`capture` or :meth:`load_state_dict`, until :meth:`clear`)."""
        return self._captured

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensor buffers (parameters, module buffers and optimizer state tensors).

        This is the extra memory the snapshot costs; deep-copied plain values and the scaler state are not counted
        (they are a few bytes).
        """
        return sum(t.numel() * t.element_size() for t in (*self._model_buffers, *self._state_buffers))

    @torch.no_grad()
    def capture(self) -> None:
        """Copy the current model, optimizer and scaler state into the buffers.

        The first call allocates the buffers; later calls copy into the same buffers while the structure (number,
        shape and dtype of tensors, optimizer state keys) is unchanged, and allocate only for what changed.
        """
        self._captured = False  # a capture that fails half-way leaves no half-valid snapshot behind
        live = self._model_live()
        self._model_buffers = self._buffers_for(live)
        params = self._params()
        state = self.optimizer.state
        entries: list[tuple[int, Hashable, str]] = []
        tensors: list[torch.Tensor] = []
        order: dict[int, list[Hashable]] = {}
        plain: dict[tuple[int, Hashable], Any] = {}
        for i, p in enumerate(params):
            per_param = state.get(p)  # .get: do not create entries in the defaultdict
            if per_param is None:
                continue
            order[i] = list(per_param)
            for key, value in per_param.items():
                if isinstance(value, torch.Tensor):
                    entries.append((i, key, _ON_PARAM_DEVICE if value.device == p.device else str(value.device)))
                    tensors.append(value)
                else:
                    plain[(i, key)] = copy.deepcopy(value)
        old_state = {(i, key): b for (i, key, _), b in zip(self._state_entries, self._state_buffers)}
        self._state_buffers = [
            self._reuse_or_alloc(old_state.get((i, key)), t, t.device) for (i, key, _), t in zip(entries, tensors)
        ]
        self._state_entries, self._state_order, self._state_plain = entries, order, plain
        non_blocking = self.device is not None
        _copy_all(self._model_buffers, live, non_blocking)
        _copy_all(self._state_buffers, tensors, non_blocking)
        self._group_sizes = [len(g["params"]) for g in self.optimizer.param_groups]
        self._groups = [
            copy.deepcopy({k: v for k, v in g.items() if k != "params"}) for g in self.optimizer.param_groups
        ]
        self._scaler_state = self._scaler_state_now()
        self._sync()
        self._captured, self._module_only = True, False

    @torch.no_grad()
    def capture_module(self) -> None:
        """Copy the module's tensors only (parameters, buffers, optimizer parameters outside the module) into the
        buffers, reusing them like :meth:`capture` does.

        The optimizer and scaler state are not copied, so until the next :meth:`capture` (or :meth:`load_state_dict`)
        the snapshot can only be put back with :meth:`restore_module`.
        """
        self._captured = False
        live = self._model_live()
        self._model_buffers = self._buffers_for(live)
        _copy_all(self._model_buffers, live, self.device is not None)
        self._sync()
        self._captured, self._module_only = True, True

    @torch.no_grad()
    def restore_module(self) -> None:
        """Copy the captured module tensors back into the live module, in place (the optimizer and scaler are left
        alone).

        Raises:
            AutoLRSError: nothing was captured, or the model's tensors changed in number, shape or dtype since.
        """
        if not self._captured:
            raise AutoLRSError(
                "StateSnapshot.restore_module() was called before capture(): there is no state to restore. "
                "Call capture() or capture_module() first."
            )
        live = self._model_live()
        self._check_model(live, self._model_buffers, "since the snapshot was captured")
        _copy_all(live, self._model_buffers, self.device is not None)
        self._sync()

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the captured state back into the live model, optimizer and scaler, in place.

        Parameters, buffers and optimizer state tensors present at capture time are overwritten with
        ``Tensor.copy_`` (same objects, same storage). Optimizer state created after the capture is deleted; a state
        tensor whose shape or dtype changed (or that disappeared) is re-created from the buffer. Param-group
        hyperparameters are written back (keys added since the capture are removed), so a trial's ``lr`` is reset:
        set the LR you want after calling this.

        Raises:
            AutoLRSError: nothing was captured (or only the module, by :meth:`capture_module`), or the model's tensors
                or the optimizer's param groups changed in number, shape or dtype since the capture.
        """
        if not self._captured:
            raise AutoLRSError(
                "StateSnapshot.restore() was called before capture(): there is no state to restore. "
                "Call capture() (or load_state_dict()) first."
            )
        if self._module_only:
            raise AutoLRSError(
                "StateSnapshot.restore() was called after capture_module(): the snapshot holds no optimizer state. "
                "Call capture() first, or restore_module()."
            )
        live = self._model_live()
        self._check_model(live, self._model_buffers, "since the snapshot was captured")
        params = self._params()
        self._check_groups(self._group_sizes, "since the snapshot was captured")
        non_blocking = self.device is not None
        _copy_all(live, self._model_buffers, non_blocking)

        state = self.optimizer.state
        values: dict[tuple[int, Hashable], torch.Tensor] = {}
        dst: list[torch.Tensor] = []
        src: list[torch.Tensor] = []
        for (i, key, loc), buf in zip(self._state_entries, self._state_buffers):
            p = params[i]
            per_param = state.get(p)
            current = per_param.get(key) if per_param is not None else None
            if isinstance(current, torch.Tensor) and current.shape == buf.shape and current.dtype == buf.dtype:
                dst.append(current)
                src.append(buf)
                values[(i, key)] = current
            else:  # missing, replaced by a non-tensor, or reshaped/retyped: re-create it from the buffer
                values[(i, key)] = buf.to(self._location(loc, p), copy=True)
        _copy_all(dst, src, non_blocking)
        for i, p in enumerate(params):
            keys = self._state_order.get(i)
            per_param = state.get(p)
            if keys is None:
                if per_param is not None:
                    del state[p]  # state the optimizer created after the capture
                continue
            wanted = {k: values[(i, k)] if (i, k) in values else copy.deepcopy(self._state_plain[(i, k)]) for k in keys}
            if per_param is None:
                state[p] = wanted
            elif list(per_param) == keys:
                per_param.update(wanted)
            else:  # keys appeared or disappeared: same dict object, captured keys in captured order
                per_param.clear()
                per_param.update(wanted)

        for group, saved in zip(self.optimizer.param_groups, self._groups):
            for key in [k for k in group if k != "params" and k not in saved]:
                del group[key]
            for key, value in saved.items():
                current = group.get(key)
                if (
                    isinstance(value, torch.Tensor)
                    and isinstance(current, torch.Tensor)
                    and current.shape == value.shape
                    and current.dtype == value.dtype
                ):
                    current.copy_(value)  # e.g. a tensor LR: keep the tensor a fused/capturable optimizer holds
                else:
                    group[key] = copy.deepcopy(value)
        if self._scaler_state is not None and self.scaler is not None:
            self.scaler.load_state_dict(copy.deepcopy(self._scaler_state))
        self._sync()

    def clear(self) -> None:
        """Forget the captured state and free the buffers.

        The memory is released (as far as nothing else references the buffers); the next :meth:`capture` allocates
        again. :attr:`captured` is ``False`` afterwards and :meth:`restore` raises until the next capture.
        """
        self._model_buffers, self._state_buffers, self._state_entries = [], [], []
        self._state_order, self._state_plain = {}, {}
        self._group_sizes, self._groups = [], []
        self._scaler_state = None
        self._captured = self._module_only = False

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The captured state, for a checkpoint: ``{"tensors": {name: tensor}, "meta": {plain values}}``.

        The tensors are host-memory copies (one temporary extra copy while the checkpoint is written), so the result
        does not change when the snapshot is captured again. Everything in it loads with
        ``torch.load(weights_only=True)`` as long as the optimizer's hyperparameters and non-tensor state are plain
        Python values (numbers, strings, booleans, ``None``, tuples, lists, dicts, tensors). An empty snapshot gives
        ``{"tensors": {}, "meta": {"version": 1, "captured": False}}``.

        Returns:
            ``tensors`` holds ``"model.<j>"`` (parameters and buffers) and ``"state.<n>"`` (optimizer state tensors);
            ``meta`` holds the format version, the layout of the optimizer state, its non-tensor values, the
            param-group hyperparameters and the scaler state.

        Raises:
            AutoLRSError: the snapshot holds the module only (:meth:`capture_module`).
        """
        if self._module_only:
            raise AutoLRSError(
                "StateSnapshot.state_dict() was called after capture_module(): the snapshot holds no optimizer state. "
                "Call capture() first."
            )
        if not self._captured:
            return {"tensors": {}, "meta": {"version": _FORMAT_VERSION, "captured": False}}
        tensors = {f"model.{j}": t.detach().to("cpu", copy=True) for j, t in enumerate(self._model_buffers)}
        tensors.update({f"state.{n}": t.detach().to("cpu", copy=True) for n, t in enumerate(self._state_buffers)})
        meta = {
            "version": _FORMAT_VERSION,
            "captured": True,
            "num_model": len(self._model_buffers),
            "state_entries": [[i, key, loc] for i, key, loc in self._state_entries],
            "state_order": [[i, list(keys)] for i, keys in self._state_order.items()],
            "state_plain": [[i, key, copy.deepcopy(v)] for (i, key), v in self._state_plain.items()],
            "group_sizes": list(self._group_sizes),
            "groups": copy.deepcopy(self._groups),
            "scaler": copy.deepcopy(self._scaler_state),
        }
        return {"tensors": tensors, "meta": meta}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Fill the buffers from a :meth:`state_dict` so that a later :meth:`restore` brings that state back.

        The buffers are allocated (or reused) like :meth:`capture` would, on each live tensor's device or on
        ``device``. The live model and optimizer are not touched until :meth:`restore`. An empty dict, or the state
        of an empty snapshot, clears the snapshot.

        Args:
            state: what :meth:`state_dict` returned (possibly after ``torch.save``/``torch.load``).

        Raises:
            InvalidArgumentTypeError: ``state`` is not a mapping.
            InvalidArgumentError: ``state`` is not a snapshot state dict of a known format version.
            AutoLRSError: the saved snapshot does not match the live model's tensors or the optimizer's param groups.
        """
        if not isinstance(state, Mapping):
            raise InvalidArgumentTypeError(
                f"`state` must be a dict from StateSnapshot.state_dict(), got {type(state).__name__}."
            )
        if not state:
            self.clear()
            return
        tensors, meta = state.get("tensors"), state.get("meta")
        if not isinstance(tensors, Mapping) or not isinstance(meta, Mapping) or meta.get("version") != _FORMAT_VERSION:
            raise InvalidArgumentError(
                f"`state` is not a StateSnapshot.state_dict() of format version {_FORMAT_VERSION} (expected a dict "
                f"with 'tensors' and 'meta' keys), got keys {sorted(map(str, state))}."
            )
        if not meta.get("captured", False):
            self.clear()
            return
        try:
            saved_model = [tensors[f"model.{j}"] for j in range(int(meta["num_model"]))]
            entries = [(int(i), key, str(loc)) for i, key, loc in meta["state_entries"]]
            saved_state = [tensors[f"state.{n}"] for n in range(len(entries))]
            order = {int(i): list(keys) for i, keys in meta["state_order"]}
            plain = {(int(i), key): v for i, key, v in meta["state_plain"]}
            group_sizes = [int(n) for n in meta["group_sizes"]]
            groups = [dict(g) for g in meta["groups"]]
            scaler_state = meta.get("scaler")
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidArgumentError(f"`state` is a malformed StateSnapshot.state_dict(): {err!r}.") from err
        live = self._model_live()
        self._check_model(live, saved_model, "compared with the snapshot in the checkpoint")
        params = self._params()
        self._check_groups(group_sizes, "compared with the snapshot in the checkpoint")
        if len(groups) != len(group_sizes) or any(not 0 <= i < len(params) for i, _, _ in entries):
            raise InvalidArgumentError(
                "`state` is a malformed StateSnapshot.state_dict(): inconsistent optimizer layout."
            )

        self._captured = False
        self._model_buffers = self._buffers_for(live)
        old_state = {(i, key): b for (i, key, _), b in zip(self._state_entries, self._state_buffers)}
        buffers = []
        for (i, key, loc), saved in zip(entries, saved_state):
            where = self._location(loc, params[i])
            buffers.append(self._reuse_or_alloc(old_state.get((i, key)), saved, where))
        self._state_buffers, self._state_entries = buffers, entries
        self._state_order, self._state_plain = order, plain
        self._group_sizes, self._groups = group_sizes, groups
        self._scaler_state = copy.deepcopy(scaler_state) if scaler_state else None
        non_blocking = self.device is not None
        _copy_all(self._model_buffers, saved_model, non_blocking)
        _copy_all(self._state_buffers, saved_state, non_blocking)
        self._sync()
        self._captured, self._module_only = True, False

    def __repr__(self) -> str:
        n = len(self._model_buffers) + len(self._state_buffers)
        where = "each tensor's device" if self.device is None else str(self.device)
        return f"{type(self).__name__}(captured={self._captured}, tensors={n}, nbytes={self.nbytes}, device={where})"

    # ------------------------------------------------------------------ helpers
    def _params(self) -> list[torch.Tensor]:
        """The optimizer's parameters in a fixed order: group order, then position within the group."""
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _model_live(self) -> list[torch.Tensor]:
        """Module parameters, module buffers, then optimizer parameters outside the module; each tensor once."""
        seen: set[int] = set()
        out: list[torch.Tensor] = []
        for t in (*self.module.parameters(), *self.module.buffers(), *self._params()):
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
        return out

    def _buffers_for(self, live: list[torch.Tensor]) -> list[torch.Tensor]:
        """Buffers for the module tensors ``live``: the current ones where they still fit, new ones elsewhere."""
        old = self._model_buffers
        return [
            old[j] if j < len(old) and self._reusable(old[j], t, t.device) else self._alloc(t, t.device)
            for j, t in enumerate(live)
        ]

    def _alloc(self, like: torch.Tensor, live_device: torch.device) -> torch.Tensor:
        """An uninitialised buffer shaped like ``like`` for a live tensor on ``live_device``."""
        target = self.device if self.device is not None else live_device
        if like.device == target:
            return torch.empty_like(like, memory_format=torch.preserve_format)
        pin = target.type == "cpu" and live_device.type == "cuda" and torch.cuda.is_available()
        return torch.empty(like.shape, dtype=like.dtype, device=target, pin_memory=pin)

    def _reusable(self, buffer: torch.Tensor | None, like: torch.Tensor, live_device: torch.device) -> bool:
        target = self.device if self.device is not None else live_device
        return _fits(buffer, like) and _same_device(buffer.device, target)  # type: ignore[union-attr]

    def _reuse_or_alloc(
        self, buffer: torch.Tensor | None, like: torch.Tensor, live_device: torch.device
    ) -> torch.Tensor:
        """``buffer`` when it can hold a copy of ``like`` (same shape, dtype, target device), else a new buffer."""
        if buffer is not None and self._reusable(buffer, like, live_device):
            return buffer
        return self._alloc(like, live_device)

    @staticmethod
    def _location(loc: str, param: torch.Tensor) -> torch.device:
        """The device of an optimizer state tensor recorded as ``loc`` for parameter ``param``."""
        if loc == _ON_PARAM_DEVICE:
            return param.device
        try:
            where = torch.device(loc)
        except RuntimeError:
            return param.device
        if where.type == "cuda" and not torch.cuda.is_available():
            return param.device
        return where

    @staticmethod
    def _check_model(live: list[torch.Tensor], saved: list[torch.Tensor], when: str) -> None:
        if len(live) != len(saved):
            raise AutoLRSError(
                f"the model has {len(live)} parameters and buffers but the snapshot holds {len(saved)}: the module "
                f"changed {when}. AutoLRS cannot restore it; do not add or remove parameters or buffers while "
                "training."
            )
        for j, (t, s) in enumerate(zip(live, saved)):
            if t.shape != s.shape or t.dtype != s.dtype:
                raise AutoLRSError(
                    f"model tensor #{j} is {tuple(t.shape)} {t.dtype} but the snapshot holds {tuple(s.shape)} "
                    f"{s.dtype}: the module changed {when}. AutoLRS cannot restore it; do not resize or cast "
                    "parameters or buffers during training."
                )

    def _check_groups(self, sizes: list[int], when: str) -> None:
        live = [len(g["params"]) for g in self.optimizer.param_groups]
        if live != sizes:
            raise AutoLRSError(
                f"the optimizer's param groups hold {live} parameters but the snapshot holds {sizes}: the optimizer "
                f"changed {when}. AutoLRS cannot restore it; do not add param groups during training."
            )

    def _scaler_state_now(self) -> dict[str, Any] | None:
        if self.scaler is None:
            return None
        enabled = getattr(self.scaler, "is_enabled", None)
        if callable(enabled) and not enabled():
            return None
        return copy.deepcopy(self.scaler.state_dict()) or None

    def _sync(self) -> None:
        """Wait for asynchronous host<->device copies (only ``device`` snapshots use them)."""
        if self.device is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
