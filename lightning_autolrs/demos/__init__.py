"""Bundled demo workloads: small, real training tasks that need no download, for the CLI, notebooks and benchmarks.

- ``"digits"``: :class:`DigitsCNN` on :class:`DigitsDataModule`, a small CNN classifying scikit-learn's 8×8
  handwritten digits (SGD + momentum; logs ``train_loss``, ``val_loss``, ``val_acc``).
- ``"charlm"``: :class:`CharTransformerLM` on :class:`CharDataModule`, a small causal Transformer predicting the next
  character of Python standard-library source code (AdamW; logs ``train_loss``, ``val_loss`` in nats/char).

Each LightningModule's ``configure_optimizers`` returns a single optimizer and no scheduler, so AutoLRS can drive it.

>>> sorted(DEMOS)
['charlm', 'digits']
>>> model_cls, datamodule_cls = get_demo("digits")
>>> model_cls.__name__, datamodule_cls.__name__
('DigitsCNN', 'DigitsDataModule')
"""

from __future__ import annotations

import lightning.pytorch as pl

from lightning_autolrs.demos.charlm import CharDataModule, CharTransformerLM
from lightning_autolrs.demos.digits import DigitsCNN, DigitsDataModule
from lightning_autolrs.exceptions import InvalidArgumentError

__all__ = [
    "DEMOS",
    "DEMO_AUTOLRS",
    "DEMO_THREADS",
    "CharDataModule",
    "CharTransformerLM",
    "DigitsCNN",
    "DigitsDataModule",
    "get_demo",
]

DEMOS: dict[str, tuple[type[pl.LightningModule], type[pl.LightningDataModule]]] = {
    "digits": (DigitsCNN, DigitsDataModule),
    "charlm": (CharTransformerLM, CharDataModule),
}
"""Demo name -> ``(LightningModule class, LightningDataModule class)``."""

DEMO_AUTOLRS: dict[str, dict[str, float | int]] = {
    "digits": {"min_lr": 0.001, "max_lr": 1.0, "seed": 0},
    "charlm": {"min_lr": 0.0001, "max_lr": 0.03, "seed": 0},
}
"""Demo name -> the AutoLRS arguments of its config (``configs/NAME.yaml``; a test keeps both equal), which
``autolrs fit --demo NAME`` uses."""

DEMO_THREADS: dict[str, int | None] = {"digits": 1, "charlm": None}
"""Demo name -> the ``torch_num_threads`` of its config (``None``: torch's default), which ``autolrs fit --demo NAME``
uses unless the command line sets it (a model as small as the digits CNN trains fastest on one thread)."""


def get_demo(name: str) -> tuple[type[pl.LightningModule], type[pl.LightningDataModule]]:
    """The ``(LightningModule class, LightningDataModule class)`` of the demo called ``name``.

    Args:
        name: One of the keys of :data:`DEMOS` (``"charlm"``, ``"digits"``).

    Raises:
        InvalidArgumentError: ``name`` is not a known demo.
    """
    try:
        return DEMOS[name]
    except (KeyError, TypeError):
        valid = ", ".join(repr(k) for k in sorted(DEMOS))
        raise InvalidArgumentError(f"`name` must be one of {valid}, got unknown demo {name!r}.") from None
