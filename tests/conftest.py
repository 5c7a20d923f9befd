"""Fixtures only: the Lightning flavour (``lightning.pytorch``, ``pytorch_lightning``) and a fixed seed per test.

Shared builders live in ``tests/helpers.py``.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import pytest
import torch

torch.set_num_threads(1)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*number of training batches.*")


FLAVOURS = ["lightning.pytorch", "pytorch_lightning"]


@pytest.fixture(params=FLAVOURS)
def pl(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


@pytest.fixture
def lpl() -> ModuleType:
    return importlib.import_module("lightning.pytorch")


@pytest.fixture(autouse=True)
def _fixed_seed() -> None:
    """Every test starts from the same global RNG state, whatever ran before it."""
    import random

    random.seed(0)
    torch.manual_seed(0)
