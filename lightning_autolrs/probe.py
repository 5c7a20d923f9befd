"""The validation-loss probe: the loss of a fixed set of validation batches, measured during a search trial.

AutoLRS judges a trial by a loss series. With ``monitor="val_loss"`` that series is the mean loss on ``val_batches``
batches taken once from the Trainer's validation dataloader, evaluated in eval mode under ``torch.no_grad()`` at
evenly spaced steps of each trial (the model's train/eval mode is restored afterwards).

How the loss of a batch is computed:

- ``val_loss_fn(module, batch)`` when given (returns a scalar tensor or float);
- otherwise the module's ``validation_step(batch, batch_idx)`` (``dataloader_idx=0`` too with several validation
  dataloaders, as Lightning passes it, or when the step requires it): its
  return value when it is a tensor (or a dict with ``"loss"``/``"val_loss"``), else the value it logs as
  ``val_loss``, else under a name ending in ``val_loss``, then ``val/loss``, then ``loss``. The probe catches those
  ``self.log`` calls, so nothing the probe logs reaches the Trainer's logged metrics; state the step keeps itself (a
  torchmetrics metric it updates, a list it appends to) does see the probe's batches: give ``val_loss_fn`` to keep
  the probe apart from it.

The batches pass through the precision plugin as Lightning's validation loop passes them (``convert_input``, then
its validation-step context), so ``precision="64-true"`` or ``"bf16-true"`` probes in the model's dtype.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from lightning_autolrs.exceptions import UnsupportedSetupError

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["ValidationProbe", "implements_validation_step"]


def implements_validation_step(module: Any) -> bool:
    """Whether ``module``'s class overrides ``LightningModule.validation_step`` (Lightning's own does nothing)."""
    fn = getattr(type(module), "validation_step", None)
    return fn is not None and getattr(fn, "__qualname__", "") != "LightningModule.validation_step"


class ValidationProbe:
    """Mean loss of a fixed set of validation batches.

    Args:
        batches: the batches (already on the model's device).
        loss_fn: ``loss_fn(module, batch)``; ``None`` uses the module's ``validation_step`` (see module docstring).
    """

    def __init__(
        self,
        batches: list[Any],
        loss_fn: Callable[[Any, Any], Any] | None = None,
        context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        several_loaders: bool = False,
    ) -> None:
        self.batches = batches
        self.loss_fn = loss_fn
        self._context = context  # the precision plugin's validation-step context (None: no context)
        self.several_loaders = several_loaders  # the Trainer has several validation dataloaders
        self._with_dataloader_idx: bool | None = None  # whether validation_step gets a third, dataloader_idx

    @classmethod
    def from_trainer(
        cls, trainer: pl.Trainer, num_batches: int, loss_fn: Callable[[Any, Any], Any] | None = None
    ) -> ValidationProbe | None:
        """Take the first ``num_batches`` batches of the Trainer's (first) validation dataloader.

        Returns ``None`` when there is no validation data: no ``val_dataloader`` on the datamodule or the module, or
        ``limit_val_batches=0``.
        """
        if trainer.limit_val_batches == 0:
            return None
        loaders = trainer.val_dataloaders
        if loaders is None:  # the fit loop only builds them when validation runs in the first epoch
            loaders = _user_val_dataloader(trainer)
        if isinstance(loaders, Mapping):  # a dict of loaders: Lightning runs them in order, indices 0, 1, ...
            loaders = list(loaders.values())
        several = isinstance(loaders, list | tuple) and len(loaders) > 1  # Lightning then passes dataloader_idx
        if isinstance(loaders, list | tuple):
            loaders = loaders[0] if loaders else None
        if loaders is None:
            return None
        precision = trainer.precision_plugin  # as Lightning's validation loop: the input's dtype, then autocast
        batches = []
        for i, batch in enumerate(loaders):
            if i >= num_batches:
                break
            batches.append(precision.convert_input(trainer.strategy.batch_to_device(batch)))
        return cls(batches, loss_fn, precision.val_step_context, several) if batches else None

    @torch.no_grad()
    def __call__(self, module: pl.LightningModule) -> float:
        """The mean probe loss of ``module`` (``nan`` if any batch loss is not finite)."""
        was_training = module.training
        module.eval()
        try:
            with contextlib.nullcontext() if self._context is None else self._context():
                losses = [self._batch_loss(module, batch, i) for i, batch in enumerate(self.batches)]
        finally:
            module.train(was_training)
        return math.fsum(losses) / len(losses)

    def _batch_loss(self, module: Any, batch: Any, index: int) -> float:
        if self.loss_fn is not None:
            return _to_float(self.loss_fn(module, batch), "`val_loss_fn`")
        logged: dict[str, Any] = {}

        def capture_log(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
            logged[name] = value

        def capture_log_dict(values: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            logged.update(values)

        module.log, module.log_dict = capture_log, capture_log_dict  # instance attributes shadow the methods
        if self._with_dataloader_idx is None:
            self._with_dataloader_idx = self.several_loaders or _needs_dataloader_idx(module.validation_step)
        try:  # (the first validation dataloader's batches: dataloader_idx 0, when the step takes one)
            args = (batch, index, 0) if self._with_dataloader_idx else (batch, index)
            out = module.validation_step(*args)
        finally:
            del module.log, module.log_dict
        if isinstance(out, dict):
            out = out.get("loss", out.get("val_loss"))
        if out is None:
            out = _logged_loss(logged)
        if out is None:
            raise UnsupportedSetupError(
                "AutoLRS judges trials on the validation loss (`monitor='val_loss'`, or the default `monitor='auto'` "
                "when the Trainer has validation data), but `validation_step` neither returned a loss nor logged one "
                "named '*val_loss' / '*loss'. Return or log it, pass `val_loss_fn=lambda module, batch: ...`, or "
                "judge trials on the training loss with `monitor='train_loss'`."
            )
        return _to_float(out, "`validation_step`")


def _needs_dataloader_idx(step: Callable[..., Any]) -> bool:
    """Whether a (bound) ``validation_step`` requires a third positional argument, Lightning's ``dataloader_idx``
    (which Lightning itself passes only with several validation dataloaders)."""
    try:
        params = list(inspect.signature(step).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 and positional[2].default is inspect.Parameter.empty


def _logged_loss(logged: dict[str, Any]) -> Any:
    """The loss a ``validation_step`` logged: ``val_loss``, else a name ending in ``val_loss``, else ``val/loss`` (or
    one ending in it), else the first name ending in ``loss``; ``None`` when it logged none."""
    for pick in (
        lambda k: k == "val_loss",
        lambda k: k.endswith("val_loss"),
        lambda k: k.endswith("val/loss"),
        lambda k: k.endswith("loss"),
    ):
        names = [k for k in logged if pick(k)]
        if names:
            return logged[names[0]]
    return None


def _user_val_dataloader(trainer: pl.Trainer) -> Any:
    for source in (getattr(trainer, "datamodule", None), trainer.lightning_module):
        hook = getattr(source, "val_dataloader", None)
        if hook is None:
            continue
        try:
            return hook()
        except Exception:  # Lightning's default hook raises when the user did not implement it
            continue
    return None


def _to_float(value: Any, source: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise UnsupportedSetupError(
                f"{source} must give a scalar loss, got a tensor of shape {tuple(value.shape)}."
            )
        return float(value.detach())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UnsupportedSetupError(f"{source} must give a scalar loss, got {type(value).__name__}.") from None
