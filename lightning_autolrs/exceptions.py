"""Exceptions and warnings raised by ``lightning_autolrs``.

One base class, :class:`AutoLRSError`, with specific subclasses. Subclasses also derive from the built-in exception a
Python user would expect (``ValueError`` for a bad value, ``TypeError`` for a bad type), so ``except ValueError`` keeps
working. Every message names the offending argument in backticks, the value given and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "AutoLRSError",
    "AutoLRSWarning",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "NonFiniteLossError",
    "ScheduleFormatError",
    "UnsupportedSetupError",
]


class AutoLRSError(Exception):
    """Base class of every error raised by ``lightning_autolrs``."""


class InvalidArgumentError(AutoLRSError, ValueError):
    """An argument has a value outside its allowed range (e.g. ``min_lr <= 0``)."""


class InvalidArgumentTypeError(AutoLRSError, TypeError):
    """An argument has the wrong type (e.g. ``num_trials=2.5``)."""


class UnsupportedSetupError(AutoLRSError, RuntimeError):
    """The Trainer / LightningModule set-up cannot be driven by AutoLRS (e.g. two optimizers, manual optimization)."""


class NonFiniteLossError(AutoLRSError, FloatingPointError):
    """The training loss is NaN/inf at every learning rate AutoLRS tried, down to ``min_lr`` (or in a whole LR range
    test): no LR trains the model, so the fault is in the loss or the data, not in the schedule."""


class ScheduleFormatError(AutoLRSError, ValueError):
    """A saved schedule file is malformed or of an unknown format version."""


class AutoLRSWarning(UserWarning):
    """Base class of every warning emitted by ``lightning_autolrs``."""
