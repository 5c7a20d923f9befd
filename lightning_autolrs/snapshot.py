"""In-memory snapshot of a model and its optimizer, restored by in-place copy.

:class:`StateSnapshot` copies, into buffers allocated once, everything a training step can change:

- every parameter and buffer of the module (BatchNorm running statistics included);
- every per-parameter optimizer state entry (tensors such as ``exp_avg`` or ``momentum_buffer``, tensor or Python
  ``step`` counters, schedule-free's ``z``, Prodigy's state, ...);
- every param-group hyperparameter except ``params`` (``lr``, ``betas``, schedule-free's ``k``/``weight_sum``/
  ``train_mode``, Prodigy's ``d``, ...), deep-copied;
- the AMP ``GradScaler`` state when one is given.

:meth:`StateSnapshot.restore` copies the buffers back into the live tensors with ``Tensor.copy_``, so parameters keep
their identity (same objects, same storage): the optimizer, DDP and any other wrapper stay valid. Optimizer state that
appeared after the capture is removed again. The first capture allocates; later captures of the same structure reuse
the buffers. Peak extra memory is one copy of parameters, buffers and optimizer state (:attr:`StateSnapshot.nbytes`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from lightning_autolrs.exceptions import AutoLRSError, InvalidArgumentError

__all__ = ["StateSnapshot"]

_foreach_copy = getattr(torch, "_foreach_copy_", None)


def _copy_all(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if not dst:
        return
    if _foreach_copy is not None:
        try:
            _foreach_copy(dst, src)
            return
        except (RuntimeError, TypeError):  # mixed devices or dtypes the fused kernel refuses
            pass
    for d, s in zip(dst, src):
        d.copy_(s)


class StateSnapshot:
    """Preallocated in-memory copy of a module's and an optimizer's state.

    Args:
        module: the model; its ``parameters()`` and ``buffers()`` are captured.
        optimizer: the optimizer; its whole ``state`` and param-group hyperparameters are captured.
        scaler: an AMP ``GradScaler`` (or anything with ``state_dict``/``load_state_dict``) whose state is captured.
        device: ``None`` keeps each copy on its tensor's device; ``"cpu"`` keeps the copies in host memory (pinned
            when CUDA is available, so copies can overlap).

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> snap = StateSnapshot(model, opt)
        >>> snap.capture()
        >>> before = model.weight.detach().clone()
        >>> model(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> snap.restore()
        >>> torch.equal(model.weight, before), len(opt.state)
        (True, 0)
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
            raise InvalidArgumentError(f"`module` must be a torch.nn.Module, got {type(module).__name__}.")
        if not isinstance(optimizer, torch.optim.Optimizer) and not hasattr(optimizer, "param_groups"):
            raise InvalidArgumentError(f"`optimizer` must be a torch optimizer, got {type(optimizer).__name__}.")
        self.module = module
        self.optimizer = optimizer
        self.scaler = scaler
        self.device = None if device is None else torch.device(device)
        self._model_tensors: list[torch.Tensor] = []
        self._model_buffers: list[torch.Tensor] = []
        self._state_keys: list[tuple[int, str]] = []  # (param index, key) of tensor state entries, in buffer order
        self._state_buffers: list[torch.Tensor] = []
        self._state_plain: dict[tuple[int, str], Any] = {}
        self._state_params: set[int] = set()
        self._groups: list[dict[str, Any]] = []
        self._scaler_state: dict[str, Any] | None = None
        self._captured = False

    # ------------------------------------------------------------------ helpers
    def _params(self) -> list[torch.Tensor]:
        """Optimizer parameters in a fixed order (group order, then position in the group)."""
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _model_live(self) -> list[torch.Tensor]:
        seen: set[int] = set()
        out = []
        for t in [*self.module.parameters(), *self.module.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
        return out

    def _state_live(self) -> tuple[list[tuple[int, str]], list[torch.Tensor], dict[tuple[int, str], Any]]:
        keys, tensors, plain = [], [], {}
        for i, p in enumerate(self._params()):
            for k, v in self.optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor):
                    keys.append((i, k))
                    tensors.append(v)
                else:
                    plain[(i, k)] = copy.deepcopy(v)
        return keys, tensors, plain

    def _alloc_like(self, t: torch.Tensor) -> torch.Tensor:
        if self.device is None:
            return torch.empty_like(t, memory_format=torch.preserve_format)
        pin = self.device.type == "cpu" and torch.cuda.is_available() and t.device.type == "cuda"
        return torch.empty(t.shape, dtype=t.dtype, device=self.device, pin_memory=pin)

    @staticmethod
    def _same_layout(buffers: list[torch.Tensor], live: list[torch.Tensor]) -> bool:
        return len(buffers) == len(live) and all(
            b.shape == t.shape and b.dtype == t.dtype for b, t in zip(buffers, live)
        )

    # ------------------------------------------------------------------ public API
    @property
    def captured(self) -> bool:
        """Whether :meth:`capture` (or :meth:`load_state_dict`) has filled the buffers."""
        return self._captured

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensor buffers (parameters, buffers and optimizer state)."""
        return sum(t.numel() * t.element_size() for t in [*self._model_buffers, *self._state_buffers])

    @torch.no_grad()
    def capture(self) -> None:
        """Copy the current state into the buffers (allocating them on the first call or when the layout changed)."""
        live = self._model_live()
        if not self._same_layout(self._model_buffers, live):
            self._model_buffers = [self._alloc_like(t) for t in live]
        keys, tensors, plain = self._state_live()
        if keys != self._state_keys or not self._same_layout(self._state_buffers, tensors):
            self._state_buffers = [self._alloc_like(t) for t in tensors]
            self._state_keys = keys
        _copy_all(self._model_buffers, live)
        _copy_all(self._state_buffers, tensors)
        self._state_plain = plain
        params = self._params()
        self._state_params = {i for i, p in enumerate(params) if p in self.optimizer.state}
        self._groups = [
            copy.deepcopy({k: v for k, v in g.items() if k != "params"}) for g in self.optimizer.param_groups
        ]
        self._scaler_state = copy.deepcopy(self.scaler.state_dict()) if self._scaler_enabled() else None
        self._sync()
        self._captured = True

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the buffers back into the live tensors in place and reset optimizer state and hyperparameters."""
        if not self._captured:
            raise AutoLRSError("StateSnapshot.restore() called before capture(); capture the state first.")
        live = self._model_live()
        if not self._same_layout(self._model_buffers, live):
            raise AutoLRSError(
                "the model's parameters or buffers changed shape or number since the snapshot was captured; "
                "AutoLRS cannot restore it. Do not add or resize parameters during training."
            )
        _copy_all(live, self._model_buffers)
        params = self._params()
        state = self.optimizer.state
        for i, p in enumerate(params):  # drop state created after the capture
            if i not in self._state_params and p in state:
                del state[p]
        wanted: dict[int, dict[str, Any]] = {i: {} for i in self._state_params}
        for (i, k), v in self._state_plain.items():
            wanted.setdefault(i, {})[k] = copy.deepcopy(v)
        dst, src = [], []
        for (i, k), buf in zip(self._state_keys, self._state_buffers):
            p = params[i]
            cur = state.get(p, {}).get(k)
            if isinstance(cur, torch.Tensor) and cur.shape == buf.shape and cur.dtype == buf.dtype:
                dst.append(cur)
                src.append(buf)
                wanted.setdefault(i, {})[k] = cur
            else:
                wanted.setdefault(i, {})[k] = buf.to(p.device if buf.dim() > 0 else buf.device, copy=True)
        _copy_all(dst, src)
        for i, entries in wanted.items():
            p = params[i]
            live_state = state[p] if p in state else {}
            for k in [k for k in live_state if k not in entries]:
                del live_state[k]
            live_state.update(entries)
            state[p] = live_state
        for group, saved in zip(self.optimizer.param_groups, self._groups):
            for k in [k for k in group if k != "params" and k not in saved]:
                del group[k]
            group.update(copy.deepcopy(saved))
        if self._scaler_state is not None and self.scaler is not None:
            self.scaler.load_state_dict(copy.deepcopy(self._scaler_state))
        self._sync()

    def clear(self) -> None:
        """Forget the captured state and free the buffers."""
        self._model_buffers, self._state_buffers, self._state_keys = [], [], []
        self._state_plain, self._state_params, self._groups = {}, set(), []
        self._scaler_state = None
        self._captured = False

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The captured state as tensors and plain values (loadable with ``torch.load(weights_only=True)``)."""
        if not self._captured:
            return {}
        return {
            "model": [t.clone() for t in self._model_buffers],
            "state_keys": [[i, k] for i, k in self._state_keys],
            "state": [t.clone() for t in self._state_buffers],
            "state_plain": [[i, k, v] for (i, k), v in self._state_plain.items()],
            "state_params": sorted(self._state_params),
            "groups": copy.deepcopy(self._groups),
            "scaler": copy.deepcopy(self._scaler_state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Fill the buffers from :meth:`state_dict` so that a later :meth:`restore` brings that state back."""
        if not state:
            self.clear()
            return
        live = self._model_live()
        saved = list(state["model"])
        if not self._same_layout(saved, live):
            raise AutoLRSError("the snapshot in the checkpoint does not match the model's parameters and buffers.")
        self._model_buffers = [self._alloc_like(t) for t in live]
        _copy_all(self._model_buffers, [s.to(b.device) for s, b in zip(saved, self._model_buffers)])
        params = self._params()
        self._state_keys = [(int(i), str(k)) for i, k in state.get("state_keys", [])]
        self._state_buffers = []
        for (i, _), t in zip(self._state_keys, state.get("state", [])):
            target = params[i].device if self.device is None and t.dim() > 0 else (self.device or t.device)
            self._state_buffers.append(t.to(target, copy=True))
        self._state_plain = {(int(i), str(k)): v for i, k, v in state.get("state_plain", [])}
        self._state_params = {int(i) for i in state.get("state_params", [])}
        self._groups = copy.deepcopy(list(state.get("groups", [])))
        self._scaler_state = copy.deepcopy(state.get("scaler"))
        self._captured = True

    # ------------------------------------------------------------------ misc
    def _scaler_enabled(self) -> bool:
        if self.scaler is None:
            return False
        enabled = getattr(self.scaler, "is_enabled", None)
        return bool(enabled()) if callable(enabled) else True

    def _sync(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
