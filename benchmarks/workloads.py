"""Workloads and LR-schedule methods of the quality benchmark, and the function that trains one run.

A *workload* is a LightningModule + LightningDataModule pair that needs no download (the two bundled demos, MLPs on
scikit-learn's bundled digits and on its generated regression and classification data, a GRU language model on
standard-library sources, the bundled char-level Transformer trained in one pass over a larger corpus), a step budget,
and the LR grid the tuned baselines search. Three of them (:data:`HELD_OUT`) were added after ``AutoLRS()``'s defaults
were chosen, to test those defaults out of sample, with models no default was measured on; the one-pass Transformer
(``charlm_stream``, stop 53) came later still, with the char LM's model in another regime: no window seen twice, so
its validation loss follows its training loss, as in language-model pretraining. A
*method* says how the learning rate is set: a fixed schedule around a given peak LR (constant, cosine with linear
warmup, OneCycle), a different optimizer (schedule-free, Prodigy), or the :class:`~lightning_autolrs.AutoLRS` callback.

:func:`run_one` trains one (workload, method, LR, seed) run with a plain Lightning ``Trainer`` and returns a
JSON-serialisable dict: the validation loss on the *full* validation set every ``eval_every`` optimizer steps (model in
eval mode, under ``no_grad``, RNG state untouched), the LR applied at each step, and the wall time of the training
(evaluation excluded). It is what the worker processes of :mod:`benchmarks.quality` execute.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "AUTOLRS_VARIANTS",
    "BEFORE_COMMIT",
    "BUDGET_SCALES",
    "DEFAULT_METHODS",
    "GIVEN_RANGE_VARIANTS",
    "GRU_FILES",
    "HELD_OUT",
    "METHODS",
    "PINNED_COMMITS",
    "QUICK_RANGE_TEST_STEPS",
    "QUICK_TAU",
    "REPLAY_VARIANTS",
    "REWORK1_COMMIT",
    "SPEEDUP_TARGET",
    "WORKLOADS",
    "CharGRU",
    "ClassificationDataModule",
    "ClassificationMLP",
    "DiabetesDataModule",
    "DiabetesMLP",
    "DigitsMLP",
    "Friedman3DataModule",
    "FriedmanDataModule",
    "GRUTextDataModule",
    "Method",
    "TanhRegressor",
    "Workload",
    "autolrs_kwargs",
    "autolrs_settings",
    "mean_loss",
    "run_budget",
    "run_one",
]

Batch = tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------------------------------- workloads
class DiabetesDataModule(pl.LightningDataModule):
    """scikit-learn's bundled diabetes regression data (442 patients, 10 features), standardised with train statistics.

    The train/val split is fixed (``split_seed``) so that every seed evaluates on the same 89 patients; ``seed`` only
    reshuffles the training batches. Targets are standardised, so a constant prediction has a validation MSE near 1.
    """

    def __init__(self, batch_size: int = 32, val_fraction: float = 0.2, seed: int = 0, split_seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.val_fraction, self.seed, self.split_seed = batch_size, val_fraction, seed, split_seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_diabetes

        data = load_diabetes()
        x = torch.tensor(data.data, dtype=torch.float32)
        y = torch.tensor(data.target, dtype=torch.float32)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        n_val = round(len(y) * self.val_fraction)
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        mu, sd = x[train_idx].mean(0), x[train_idx].std(0)
        y_mu, y_sd = y[train_idx].mean(), y[train_idx].std()
        x, y = (x - mu) / sd, (y - y_mu) / y_sd
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])

    def train_dataloader(self) -> DataLoader:
        self.setup()
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False)


class _Supervised(pl.LightningModule):
    """Shared steps: ``loss(self(x), y)`` logged as ``train_loss`` / ``val_loss`` (``loss`` set by the subclass)."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = type(self).loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", type(self).loss(self(x), y), batch_size=len(y))


class DiabetesMLP(_Supervised):
    """A ReLU MLP regressor (``depth`` hidden layers of ``hidden`` units) trained with Adam on the MSE."""

    def __init__(self, lr: float = 1e-3, hidden: int = 128, depth: int = 2, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = 10
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    loss = staticmethod(nn.functional.mse_loss)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


class DigitsMLP(_Supervised):
    """A ReLU MLP on the flattened 8×8 digits (64 → ``hidden`` → ``hidden`` → 10), SGD + momentum 0.9, wd 5e-4
    (``optimizer="adam"``: Adam with its default betas and no weight decay)."""

    def __init__(
        self,
        lr: float = 0.05,
        hidden: int = 256,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        optimizer: str = "sgd",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    loss = staticmethod(nn.functional.cross_entropy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr)
        return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)


class _GeneratedDataModule(DiabetesDataModule):
    """Data that scikit-learn generates with a fixed seed (:meth:`generate`): the first ``val_fraction`` of the
    ``n_samples`` samples validates, the rest trains; features (and regression targets) standardised with train
    statistics; ``seed`` only reshuffles the training batches."""

    classification = False  # integer class labels, not standardised

    def __init__(self, batch_size: int, n_samples: int, seed: int, val_fraction: float) -> None:
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, seed=seed, split_seed=0)
        self.n_samples = n_samples

    def generate(self) -> tuple[Any, Any]:
        """``(x, y)`` as NumPy arrays."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x_np, y_np = self.generate()
        x = torch.tensor(x_np, dtype=torch.float32)
        n_val = round(len(x) * self.val_fraction)
        mu, sd = x[n_val:].mean(0), x[n_val:].std(0)
        if self.classification:
            x, y = (x - mu) / sd, torch.tensor(y_np, dtype=torch.long)
        else:
            y = torch.tensor(y_np, dtype=torch.float32)
            y_mu, y_sd = y[n_val:].mean(), y[n_val:].std()
            x, y = (x - mu) / sd, (y - y_mu) / y_sd
        self.train_set = TensorDataset(x[n_val:], y[n_val:])
        self.val_set = TensorDataset(x[:n_val], y[:n_val])


class FriedmanDataModule(_GeneratedDataModule):
    """scikit-learn's generated Friedman #1 regression (``make_friedman1``: 10 features, 5 informative, noise 1.0),
    6000 samples generated with a fixed seed, standardised with train statistics; ``seed`` reshuffles the batches.

    The noise floor of the standardised validation MSE is about 0.04 (noise variance 1 over a target variance near 24).
    """

    def __init__(self, batch_size: int = 64, n_samples: int = 6000, seed: int = 0) -> None:
        super().__init__(batch_size, n_samples, seed, val_fraction=1 / 6)

    def generate(self) -> tuple[Any, Any]:
        from sklearn.datasets import make_friedman1

        return make_friedman1(n_samples=self.n_samples, n_features=10, noise=1.0, random_state=0)


class ClassificationDataModule(_GeneratedDataModule):
    """scikit-learn's generated classification data (``make_classification``: 6 classes, 32 features of which 16
    informative and 8 redundant, 2 clusters per class, 2 % of the labels flipped), ``n_samples`` samples generated with
    a fixed seed, the first 1/6 held out for validation, features standardised with train statistics; ``seed``
    reshuffles the batches. A held-out workload (see :data:`HELD_OUT`)."""

    classification = True

    def __init__(self, batch_size: int = 128, n_samples: int = 12000, seed: int = 0) -> None:
        super().__init__(batch_size, n_samples, seed, val_fraction=1 / 6)

    def generate(self) -> tuple[Any, Any]:
        from sklearn.datasets import make_classification

        return make_classification(
            n_samples=self.n_samples,
            n_features=32,
            n_informative=16,
            n_redundant=8,
            n_classes=6,
            n_clusters_per_class=2,
            flip_y=0.02,
            random_state=0,
        )


class _TwoHiddenMLP(_Supervised):
    """``width_in`` → ``hidden`` → ``hidden`` → ``width_out`` with ``activation`` between (the held-out workloads'
    MLPs; a single output is squeezed to the batch's shape)."""

    width_in: int
    width_out: int
    activation: type[nn.Module]

    def __init__(self, lr: float = 0.01, hidden: int = 128) -> None:
        super().__init__()
        self.save_hyperparameters()
        act = type(self).activation
        self.net = nn.Sequential(
            nn.Linear(self.width_in, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, self.width_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.squeeze(-1) if self.width_out == 1 else out


class ClassificationMLP(_TwoHiddenMLP):
    """A GELU MLP classifier (32 → ``hidden`` → ``hidden`` → 6), SGD with Nesterov momentum 0.9 and weight decay
    1e-4. A held-out workload's module (see :data:`HELD_OUT`)."""

    width_in, width_out, activation = 32, 6, nn.GELU
    loss = staticmethod(nn.functional.cross_entropy)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, nesterov=True, weight_decay=1e-4)


class Friedman3DataModule(_GeneratedDataModule):
    """scikit-learn's generated Friedman #3 regression (``make_friedman3``: 4 features, an arctan of their products,
    noise 0.1), ``n_samples`` samples generated with a fixed seed, the first 1/5 held out, features and targets
    standardised with train statistics; ``seed`` reshuffles the batches. A held-out workload (see :data:`HELD_OUT`)."""

    def __init__(self, batch_size: int = 32, n_samples: int = 5000, seed: int = 0) -> None:
        super().__init__(batch_size, n_samples, seed, val_fraction=0.2)

    def generate(self) -> tuple[Any, Any]:
        from sklearn.datasets import make_friedman3

        return make_friedman3(n_samples=self.n_samples, noise=0.1, random_state=0)


class TanhRegressor(_TwoHiddenMLP):
    """A tanh MLP regressor (4 → ``hidden`` → ``hidden`` → 1) on the MSE, SGD with momentum 0.9. A held-out
    workload's module (see :data:`HELD_OUT`)."""

    width_in, width_out, activation = 4, 1, nn.Tanh
    loss = staticmethod(nn.functional.mse_loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


#: The standard-library sources of the GRU language model, none of them in the char-level Transformer's corpus
#: (:data:`lightning_autolrs.demos.charlm.STDLIB_FILES`): Python 3.11's, concatenated and cut at ``max_chars`` (300 000
#: bytes: the first three files and 7.1 KB of the fourth; the last 5 % validates: the end of ``pathlib.py`` and that
#: part of ``logging/__init__.py``).
GRU_FILES: tuple[str, ...] = ("typing.py", "inspect.py", "pathlib.py", "logging/__init__.py")


def _join_sources(paths: Sequence[Path], max_chars: int) -> bytes:
    """The files at ``paths`` in order, line endings normalised to ``\\n``, separated by a blank line, cut at
    ``max_chars`` bytes (no file after the cut is read)."""
    sep = b"\n\n"
    parts: list[bytes] = []
    joined = -len(sep)  # the length of ``sep.join(parts)``
    for path in paths:
        if joined >= max_chars:
            break
        parts.append(path.read_bytes().replace(b"\r\n", b"\n"))
        joined += len(sep) + len(parts[-1])
    return sep.join(parts)[:max_chars]


class GRUTextDataModule(pl.LightningDataModule):
    """Byte-level windows of other standard-library sources (:data:`GRU_FILES`) than the char-level Transformer's:
    the first ``1 - val_fraction`` of the text trains (random windows, seeded by ``seed``), the rest validates
    (non-overlapping windows). A held-out workload (see :data:`HELD_OUT`)."""

    def __init__(
        self,
        block_size: int = 32,
        batch_size: int = 32,
        max_chars: int = 300_000,
        val_fraction: float = 0.05,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.block_size, self.batch_size, self.max_chars = block_size, batch_size, max_chars
        self.val_fraction, self.seed = val_fraction, seed
        self.train_data: torch.Tensor | None = None
        self.val_data: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        import sysconfig

        root = Path(sysconfig.get_paths()["stdlib"])
        paths = [root / rel for rel in GRU_FILES]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:  # (another corpus would be another workload: no file is skipped)
            raise FileNotFoundError(f"the GRU workload reads {GRU_FILES} of Python 3.11's sources; missing: {missing}")
        text = _join_sources(paths, self.max_chars)
        data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
        n_train = round(len(data) * (1.0 - self.val_fraction))
        self.train_data, self.val_data = data[:n_train].clone(), data[n_train:].clone()

    def _windows(self, data: torch.Tensor, starts: torch.Tensor) -> TensorDataset:
        idx = starts.unsqueeze(1) + torch.arange(self.block_size + 1)
        chunks = data[idx]
        return TensorDataset(chunks[:, :-1], chunks[:, 1:])

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.train_data is not None
        generator = torch.Generator().manual_seed(self.seed)
        n = len(self.train_data) // self.block_size
        starts = torch.randint(0, len(self.train_data) - self.block_size, (n,), generator=generator)
        return DataLoader(
            self._windows(self.train_data, starts),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
        )

    def val_dataloader(self) -> DataLoader:
        self.setup()
        assert self.val_data is not None
        n = (len(self.val_data) - 1) // self.block_size
        starts = torch.arange(n) * self.block_size
        return DataLoader(self._windows(self.val_data, starts), batch_size=128, shuffle=False)


class StreamTextDataModule(GRUTextDataModule):
    """One pass over a large byte corpus: the standard library's top-level ``*.py`` sources (Python 3.11's, sorted by
    name) but for the char LM's and the GRU's files, concatenated and cut at ``max_chars``. The text is cut into
    ``chunk``-byte pieces; every ``val_every``-th piece validates (so validation and training text come from the same
    files), the rest trains. Training batches are the training text's non-overlapping windows in a seeded random
    order, each window once per epoch: a run shorter than an epoch never sees a window twice, as in language-model
    pretraining, where the validation loss follows the training loss. Validation: as the GRU's (its windows and
    loader are :class:`GRUTextDataModule`'s)."""

    def __init__(
        self,
        block_size: int = 32,
        batch_size: int = 32,
        max_chars: int = 4_000_000,
        chunk: int = 8192,
        val_every: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__(block_size=block_size, batch_size=batch_size, max_chars=max_chars, seed=seed)
        self.chunk, self.val_every = chunk, val_every

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        import sysconfig

        from lightning_autolrs.demos.charlm import STDLIB_FILES

        root = Path(sysconfig.get_paths()["stdlib"])
        skip = {Path(rel).name for rel in (*STDLIB_FILES, *GRU_FILES)}
        paths = sorted(p for p in root.glob("*.py") if p.name not in skip)
        text = _join_sources(paths, self.max_chars)
        pieces = [text[i : i + self.chunk] for i in range(0, len(text), self.chunk)]
        val = b"".join(x for i, x in enumerate(pieces) if i % self.val_every == self.val_every - 1)
        train = b"".join(x for i, x in enumerate(pieces) if i % self.val_every != self.val_every - 1)
        self.train_data = torch.frombuffer(bytearray(train), dtype=torch.uint8).long()
        self.val_data = torch.frombuffer(bytearray(val), dtype=torch.uint8).long()

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.train_data is not None
        n = (len(self.train_data) - 1) // self.block_size
        generator = torch.Generator().manual_seed(self.seed)
        starts = torch.randperm(n, generator=generator) * self.block_size
        return DataLoader(self._windows(self.train_data, starts), batch_size=self.batch_size, drop_last=True)


def _sequence_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of next-byte logits ``(batch, time, vocab)`` against targets ``(batch, time)``."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


class CharGRU(_Supervised):
    """A byte-level GRU language model (embedding ``embed``, one GRU layer of ``hidden`` units, a linear read-out),
    Adam with its default betas. A held-out workload's module (see :data:`HELD_OUT`)."""

    loss = staticmethod(_sequence_ce)

    def __init__(self, lr: float = 1e-3, embed: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.emb = nn.Embedding(256, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.emb(x))
        return self.head(out)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


@dataclass(frozen=True)
class Workload:
    """One benchmark task.

    Attributes:
        name: short id (``--workloads``).
        title: one-line description for the reports.
        budget: optimizer steps of every run (full mode); ``quick_budget`` in ``--quick`` mode.
        lr: the module's configured LR (its ``lr`` default: what a user runs without tuning); the middle of the
            tuned baselines' grid (:meth:`lr_grid`, ends in :attr:`grid`).
        sf_scale: the schedule-free grid is ``grid × sf_scale`` (schedule-free SGD's ``lr`` is the step of its
            momentum-free ``z`` sequence, about ``1/(1 − momentum)`` = 10× the LR of SGD with momentum 0.9).
        family: the base optimizer, ``"sgd"`` (SGD + momentum) or ``"adam"`` (Adam/AdamW).
        build: ``build(seed, quick) -> (module class, module kwargs, datamodule)``.
        val_batches: ``val_batches(datamodule) -> list of batches`` covering the whole validation set.
        loss_sum: ``loss_sum(module, batch) -> (summed loss, number of items)``.
        bn_batches: batches used to recompute BatchNorm statistics for schedule-free evaluation (empty: no BN).
    """

    name: str
    title: str
    budget: int
    quick_budget: int
    lr: float
    sf_scale: float
    family: str
    build: Callable[[int, bool], tuple[type[pl.LightningModule], dict[str, Any], pl.LightningDataModule]]
    val_batches: Callable[[Any], list[Batch]]
    loss_sum: Callable[[nn.Module, Batch], tuple[float, int]]
    bn_batches: Callable[[Any], list[Batch]] = field(default=lambda dm: [])

    def steps(self, quick: bool) -> int:
        return self.quick_budget if quick else self.budget

    @property
    def grid(self) -> tuple[float, float]:
        """(lowest, highest) LR of the full grid, ``lr`` × 10^±1.5; also ``min_lr``/``max_lr`` of AutoLRS rows given
        a range."""
        grid = self.lr_grid(False)
        return grid[0], grid[-1]

    def lr_grid(self, quick: bool) -> list[float]:
        """7 LRs half a decade apart with the configured ``lr`` in the middle (quick: ``lr`` × 10^(-1.5, 0, 1.5))."""
        exponents = (-1.5, 0.0, 1.5) if quick else (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
        return [float(f"{self.lr * 10**e:.4g}") for e in exponents]


def _ce_sum(model: nn.Module, batch: Batch) -> tuple[float, int]:
    x, y = batch
    logits = model(x)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
    return float(loss), y.numel()


def _mse_sum(model: nn.Module, batch: Batch) -> tuple[float, int]:
    x, y = batch
    return float(nn.functional.mse_loss(model(x), y, reduction="sum")), y.numel()


def mean_loss(
    loss_sum: Callable[[nn.Module, Batch], tuple[float, int]], model: nn.Module, batches: list[Batch]
) -> float:
    """The mean loss per item over ``batches`` (``loss_sum`` of each batch, summed, ÷ the items); the caller sets the
    model's mode and the grad mode."""
    total, count = 0.0, 0
    for batch in batches:
        s, n = loss_sum(model, batch)
        total, count = total + s, count + n
    return total / count


def _chunks(x: torch.Tensor, y: torch.Tensor, size: int) -> list[Batch]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _build_digits(seed: int, quick: bool) -> tuple[type[pl.LightningModule], dict[str, Any], pl.LightningDataModule]:
    from lightning_autolrs.demos import DigitsCNN, DigitsDataModule

    kwargs: dict[str, Any] = {"channels": 16} if quick else {}
    return DigitsCNN, kwargs, DigitsDataModule(batch_size=64, seed=seed)


def _digits_val(dm: Any) -> list[Batch]:
    dm.setup()
    return _chunks(*dm.val_set.tensors, 512)


def _digits_bn(dm: Any) -> list[Batch]:
    dm.setup()
    x, y = dm.train_set.tensors
    return _chunks(x, y, dm.batch_size)[:8]


# charlm at a size that trains at ~20 ms/step on one CPU thread (the demo's defaults take ~110 ms/step)
_CHARLM_MODEL = {"d_model": 64, "n_heads": 4, "n_layers": 2, "block_size": 32}
_CHARLM_DATA = {"block_size": 32, "batch_size": 32, "max_chars": 400_000, "val_fraction": 0.04}
_CHARLM_QUICK_MODEL = {"d_model": 32, "n_heads": 2, "n_layers": 1, "block_size": 16}
_CHARLM_QUICK_DATA = {"block_size": 16, "batch_size": 16, "max_chars": 20_000, "val_fraction": 0.1}


def _build_charlm(seed: int, quick: bool) -> tuple[type[pl.LightningModule], dict[str, Any], pl.LightningDataModule]:
    from lightning_autolrs.demos import CharDataModule, CharTransformerLM

    model, data = (_CHARLM_QUICK_MODEL, _CHARLM_QUICK_DATA) if quick else (_CHARLM_MODEL, _CHARLM_DATA)
    return CharTransformerLM, dict(model), CharDataModule(seed=seed, **data)


def _charlm_val(dm: Any) -> list[Batch]:
    dm.setup()
    data, t = dm.val_data.long(), dm.block_size
    n = (len(data) - 1) // t
    return _chunks(data[: n * t].view(n, t), data[1 : n * t + 1].view(n, t), 128)


def _build_digits_mlp(
    seed: int, quick: bool, **module_kwargs: Any
) -> tuple[type[pl.LightningModule], dict[str, Any], pl.LightningDataModule]:
    from lightning_autolrs.demos import DigitsDataModule

    kwargs = {"hidden": 64 if quick else 256, **module_kwargs}
    return DigitsMLP, kwargs, DigitsDataModule(batch_size=64, seed=seed)


def _build_friedman(seed: int, quick: bool) -> tuple[type[pl.LightningModule], dict[str, Any], pl.LightningDataModule]:
    return (
        DiabetesMLP,
        {"hidden": 32 if quick else 128},
        FriedmanDataModule(seed=seed, n_samples=600 if quick else 6000),
    )


def _tensor_val(dm: Any) -> list[Batch]:
    dm.setup()
    return _chunks(*dm.val_set.tensors, 512)


def _build_classification(
    seed: int, quick: bool
) -> tuple[type[pl.LightningModule], dict[str, Any], pl.LightningDataModule]:
    return (
        ClassificationMLP,
        {"hidden": 32 if quick else 128},
        ClassificationDataModule(seed=seed, n_samples=1200 if quick else 12000),
    )


def _build_friedman3(seed: int, quick: bool) -> tuple[type[pl.LightningModule], dict[str, Any], pl.LightningDataModule]:
    return (
        TanhRegressor,
        {"hidden": 16 if quick else 64},
        Friedman3DataModule(seed=seed, n_samples=600 if quick else 5000),
    )


def _build_gru(seed: int, quick: bool) -> tuple[type[pl.LightningModule], dict[str, Any], pl.LightningDataModule]:
    if quick:
        return (
            CharGRU,
            {"embed": 8, "hidden": 16},
            GRUTextDataModule(block_size=16, batch_size=8, max_chars=20_000, val_fraction=0.1, seed=seed),
        )
    return CharGRU, {}, GRUTextDataModule(seed=seed)


def _build_charlm_stream(
    seed: int, quick: bool
) -> tuple[type[pl.LightningModule], dict[str, Any], pl.LightningDataModule]:
    from lightning_autolrs.demos import CharTransformerLM

    if quick:
        data = StreamTextDataModule(block_size=16, batch_size=16, max_chars=60_000, chunk=2048, val_every=10, seed=seed)
        return CharTransformerLM, dict(_CHARLM_QUICK_MODEL), data
    return CharTransformerLM, dict(_CHARLM_MODEL), StreamTextDataModule(seed=seed)


def _gru_val(dm: Any) -> list[Batch]:
    dm.setup()
    return list(dm.val_dataloader())


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            name="digits",
            title="digits CNN (scikit-learn 8x8 digits, SGD + momentum 0.9, wd 5e-4, batch 64, lr 0.05)",
            budget=3000,
            quick_budget=30,
            lr=0.05,
            sf_scale=10.0,
            family="sgd",
            build=_build_digits,
            val_batches=_digits_val,
            loss_sum=_ce_sum,
            bn_batches=_digits_bn,
        ),
        Workload(
            name="digits_mlp",
            title="digits MLP (64-256-256-10 ReLU, SGD + momentum 0.9, wd 5e-4, batch 64, lr 0.05)",
            budget=3000,
            quick_budget=30,
            lr=0.05,
            sf_scale=10.0,
            family="sgd",
            build=_build_digits_mlp,
            val_batches=_digits_val,
            loss_sum=_ce_sum,
        ),
        Workload(
            name="digits_mlp_adam",
            title="digits MLP with Adam (64-256-256-10 ReLU, Adam, batch 64, lr 1e-3)",
            budget=3000,
            quick_budget=30,
            lr=1e-3,
            sf_scale=1.0,
            family="adam",
            build=functools.partial(_build_digits_mlp, optimizer="adam", lr=1e-3),
            val_batches=_digits_val,
            loss_sum=_ce_sum,
        ),
        Workload(
            name="charlm",
            title="char-level Transformer LM (stdlib source, d=64, 2 layers, context 32, AdamW wd 0.01, batch 32, "
            "lr 3e-3)",
            budget=3000,
            quick_budget=20,
            lr=3e-3,
            sf_scale=1.0,
            family="adam",
            build=_build_charlm,
            val_batches=_charlm_val,
            loss_sum=_ce_sum,
        ),
        Workload(
            name="friedman",
            title="MLP regression (scikit-learn make_friedman1, noise 1, 5000 train, 2x128 ReLU, Adam, batch 64, "
            "lr 1e-3, standardised MSE)",
            budget=10000,
            quick_budget=30,
            lr=1e-3,
            sf_scale=1.0,
            family="adam",
            build=_build_friedman,
            val_batches=_tensor_val,
            loss_sum=_mse_sum,
        ),
        Workload(
            name="classif_mlp",
            title="held out: MLP classifier (scikit-learn make_classification, 6 classes, 10000 train, 32-128-128-6 "
            "GELU, SGD + Nesterov momentum 0.9, wd 1e-4, batch 128, lr 0.01)",
            budget=3000,
            quick_budget=30,
            lr=0.01,
            sf_scale=10.0,
            family="sgd",
            build=_build_classification,
            val_batches=_tensor_val,
            loss_sum=_ce_sum,
        ),
        Workload(
            name="friedman3_sgd",
            title="held out: tanh MLP regression (scikit-learn make_friedman3, noise 0.1, 4000 train, 4-64-64-1, "
            "SGD + momentum 0.9, batch 32, lr 0.01, standardised MSE)",
            budget=4000,
            quick_budget=30,
            lr=0.01,
            sf_scale=10.0,
            family="sgd",
            build=_build_friedman3,
            val_batches=_tensor_val,
            loss_sum=_mse_sum,
        ),
        Workload(
            name="gru_lm",
            title="held out: char-level GRU LM (other stdlib sources, embedding 32, 1x128 GRU, context 32, Adam, "
            "batch 32, lr 1e-3)",
            budget=3000,
            quick_budget=20,
            lr=1e-3,
            sf_scale=1.0,
            family="adam",
            build=_build_gru,
            val_batches=_gru_val,
            loss_sum=_ce_sum,
        ),
        Workload(
            name="charlm_stream",
            title="char-level Transformer LM trained in one pass (3.9 MB of other stdlib sources, no window "
            "seen twice; d=64, 2 layers, context 32, AdamW wd 0.01, batch 32, lr 3e-3)",
            budget=3000,
            quick_budget=20,
            lr=3e-3,
            sf_scale=1.0,
            family="adam",
            build=_build_charlm_stream,
            val_batches=_gru_val,
            loss_sum=_ce_sum,
        ),
    )
}


HELD_OUT = frozenset({"classif_mlp", "friedman3_sgd", "gru_lm"})
"""Workloads added after ``AutoLRS()``'s defaults were chosen (package tree 3caaebf, 2026-12-06), to test them out of
sample: a model, an optimizer set-up and data that no default was measured on (the GRU reads other standard-library
sources than the char-level Transformer, :data:`GRU_FILES`). Their first results say how the defaults carry over to
workloads nobody tuned them on; from then on they are benchmark workloads like the others."""


# ------------------------------------------------------------------------------------------------------------ methods
@dataclass(frozen=True)
class Method:
    """A row of the quality tables.

    Attributes:
        name: id (``--methods``).
        label: the row label.
        kind: what :func:`run_one` trains: ``constant``, ``cosine``, ``wsd`` / ``wsd_sqrt`` (warmup-stable-decay
            with a half-cosine / ``1 - sqrt(t)`` decay), ``onecycle``,
            ``sf``, ``prodigy``, an AutoLRS variant (a key of :data:`AUTOLRS_VARIANTS`) or a replay (a key of
            :data:`REPLAY_VARIANTS`).
        tuned: the row is the best of the LR grid (7 runs per seed); otherwise one run per seed.
        lr: how a single run's LR is chosen: ``"configured"`` (the module's own ``lr``: what one gets without tuning),
            ``"sf_default"`` (the schedule-free optimizer's default), ``"free"`` (Prodigy, lr=1) or ``None``
            (AutoLRS: a range test or the grid's range; replay: the found schedule).
        default: the row is part of a plain ``python -m benchmarks.quality`` (others are chosen with ``--methods``).
    """

    name: str
    label: str
    kind: str
    tuned: bool = False
    lr: str | None = None
    default: bool = True


BEFORE_COMMIT = "79ae66d"
"""The package version whose ``AutoLRS()`` defaults the ``autolrs_before`` row ran (before the search rework)."""

REWORK1_COMMIT = "97d88c3"
"""The package version of the first search rework (issue #12: anchor trials, final anneal): row ``autolrs_rework1``."""

PINNED_COMMITS: dict[str, str] = {"autolrs_before": BEFORE_COMMIT, "autolrs_rework1": REWORK1_COMMIT}
"""AutoLRS rows pinned to an earlier package version: ``AutoLRS()`` at that version's defaults. Only a checkout whose
``lightning_autolrs/`` equals that commit's can train them (``git checkout COMMIT -- lightning_autolrs`` in a worktree);
any other reloads them from ``--resume``."""

AUTOLRS_VARIANTS: dict[str, dict[str, Any]] = {
    "autolrs": {},
    "autolrs_before": {},
    "autolrs_rework1": {},
    "autolrs_given_range": {},
    "autolrs_k3_no_range_test": {"num_trials": 3, "range_test": False},
    "autolrs_anneal30": {"anneal_ratio": 0.3},
    "autolrs_ratio07": {"search_ratio": 0.07},
    "autolrs_no_range_test": {"range_test": False},
    "autolrs_k3": {"num_trials": 3},
    "autolrs_anneal10": {"anneal_ratio": 0.1},
    "autolrs_warmup150": {"warmup_steps": 150},
    "autolrs_beta2": {"beta": 2.0},
    "autolrs_beta32": {"beta": 32.0},
    "autolrs_ratio05": {"search_ratio": 0.05},
    "autolrs_r05_k3": {"search_ratio": 0.05, "num_trials": 3},
    "autolrs_ratio03": {"search_ratio": 0.03},
    "autolrs_ratio10": {"search_ratio": 0.1},
    "autolrs_k3_r075": {"num_trials": 3, "search_ratio": 0.075},
    "autolrs_k5_r0375": {"num_trials": 5, "search_ratio": 0.0375},
    "autolrs_k5": {"num_trials": 5},
    "autolrs_short": {},
}
"""Constructor arguments of each AutoLRS row besides ``min_lr``/``max_lr`` and ``seed``. ``autolrs`` is ``AutoLRS()``
at the package defaults; ``autolrs_before`` is ``AutoLRS()`` at the defaults of :data:`BEFORE_COMMIT` (its runs were
trained with that version and are only reloaded, see :func:`run_one`)."""

SPEEDUP_TARGET = 1.3
"""Issue #12's speedup goal: tuned cosine's final val loss in at most 1/1.3 of the steps tuned cosine needs."""

BUDGET_SCALES: dict[str, float] = {"autolrs_short": 1 / SPEEDUP_TARGET}
"""AutoLRS rows trained on a share of the workload's budget (``max_steps`` = the budget × the share, rounded): issue
#12's speedup goal as a user meets it. One AutoLRS run anneals to its budget's end, so within a run of the full budget
it reaches a loss near its final one only near the end, whatever its schedule; the question is whether a run given
1/1.3 of the steps ends at or below what tuned cosine reaches with all of them."""

GIVEN_RANGE_VARIANTS = frozenset({"autolrs_given_range"})
"""AutoLRS rows given ``min_lr``/``max_lr`` = the tuned grid's ends; every other AutoLRS row gives no range (the
callback derives it)."""

QUICK_RANGE_TEST_STEPS = 4
"""``range_test_steps`` of the AutoLRS rows in ``--quick`` mode when the callback has that argument (its 20-step
minimum does not fit budgets of 20–30 steps)."""

QUICK_TAU = 4
"""``tau`` of the AutoLRS rows in ``--quick`` mode: the derived τ needs trials of at least 20 steps, which budgets of
20–30 steps cannot hold, and the harness check wants runs that search (1-step trials)."""

REPLAY_VARIANTS: dict[str, str] = {"replay": "autolrs"}
"""Replay rows: the AutoLRS row whose schedule (found by the run of the *next* seed) is replayed."""

_NOT_SETTINGS = {"min_lr", "max_lr", "seed", "verbose", "save_files"}


def autolrs_settings(kind: str) -> dict[str, Any]:
    """The full settings of an AutoLRS variant (constructor defaults filled in, ``range`` = where ``min_lr``/``max_lr``
    come from), to detect identical variants."""
    from lightning_autolrs import AutoLRS

    if kind in PINNED_COMMITS:
        return {"commit": PINNED_COMMITS[kind], "range_test_steps": None, "range": "derived"}
    defaults = {
        k: p.default
        for k, p in inspect.signature(AutoLRS.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty and k not in _NOT_SETTINGS
    }
    source = "grid" if kind in GIVEN_RANGE_VARIANTS else "derived"
    budget = {"budget_scale": BUDGET_SCALES[kind]} if kind in BUDGET_SCALES else {}
    return {**defaults, **AUTOLRS_VARIANTS[kind], "range": source, **budget}


def run_budget(workload: Workload, kind: str, quick: bool) -> int:
    """The optimizer steps a run of ``kind`` trains: the workload's budget, times :data:`BUDGET_SCALES`'s share for
    the rows there."""
    return max(1, round(workload.steps(quick) * BUDGET_SCALES.get(kind, 1.0)))


def autolrs_kwargs(kind: str, workload: Workload, seed: int, quick: bool) -> dict[str, Any]:
    """Every constructor argument of the AutoLRS callback of a run (defaults filled in): part of the run's cache key."""
    settings = autolrs_settings(kind)
    del settings["range"]
    settings.pop("budget_scale", None)  # (the run's, not the callback's: see run_budget)
    if kind in GIVEN_RANGE_VARIANTS:
        lo, hi = workload.grid
    else:
        lo, hi = None, None
        if quick and "range_test_steps" in settings and settings.get("range_test_steps") is None:
            settings["range_test_steps"] = QUICK_RANGE_TEST_STEPS
    if quick and "tau" in settings and settings.get("tau") is None and "commit" not in settings:
        settings["tau"] = QUICK_TAU
    return {"min_lr": lo, "max_lr": hi, "seed": seed, "verbose": False, "save_files": False, **settings}


def _variant(name: str, label: str, default: bool = False) -> Method:
    """The row of the AutoLRS variant ``name`` of :data:`AUTOLRS_VARIANTS` (its own kind); off by default."""
    return Method(name, label, name, default=default)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("cosine", "cosine + 5% warmup, tuned", "cosine", tuned=True),
        Method("cosine_configured", "cosine + 5% warmup at the module's LR (untuned)", "cosine", lr="configured"),
        Method("constant_configured", "constant LR at the module's LR (untuned)", "constant", lr="configured"),
        Method(
            "wsd_configured",
            "warmup-stable-decay (5% warmup, 20% half-cosine decay) at the module's LR (untuned)",
            "wsd",
            lr="configured",
        ),
        Method(
            "wsd_sqrt_configured",
            "warmup-stable-decay (5% warmup, 20% 1 - sqrt(t) decay: AutoLRS's anneal) at the module's LR (untuned)",
            "wsd_sqrt",
            lr="configured",
        ),
        Method("sf_default", "schedule-free, default LR", "sf", lr="sf_default"),
        Method("prodigy", "Prodigy (lr=1, LR-free; warmup + cosine)", "prodigy", lr="free"),
        Method(
            "autolrs_before",
            f"AutoLRS() before the rework (defaults of {BEFORE_COMMIT})",
            "autolrs_before",
            default=False,
        ),
        Method(
            "autolrs_rework1",
            f"AutoLRS() after the first search rework (defaults of {REWORK1_COMMIT})",
            "autolrs_rework1",
        ),
        Method("autolrs", "AutoLRS() at its defaults, no LR range given", "autolrs"),
        Method("constant", "constant LR, tuned", "constant", tuned=True, default=False),
        Method("onecycle", "OneCycle, tuned", "onecycle", tuned=True, default=False),
        Method("sf", "schedule-free, tuned", "sf", tuned=True, default=False),
        _variant("autolrs_given_range", "AutoLRS, defaults, range = the grid's ends"),
        _variant("autolrs_k3_no_range_test", "AutoLRS, defaults but 3 trials per stage and no range test"),
        _variant("autolrs_anneal30", "AutoLRS, defaults but a 30 % final anneal"),
        _variant("autolrs_ratio07", "AutoLRS, defaults but search_ratio=0.07"),
        _variant(
            "autolrs_no_range_test",
            "AutoLRS, defaults but no range test (range_test=False: configured LR ÷ 100 … × 10)",
        ),
        _variant("autolrs_k3", "AutoLRS, defaults but num_trials=3"),
        _variant("autolrs_anneal10", "AutoLRS, defaults but anneal_ratio=0.1"),
        _variant(
            "autolrs_warmup150",
            "AutoLRS, defaults but warmup_steps=150 (5 % of the 3000-step budgets)",
        ),
        _variant("autolrs_beta2", "AutoLRS, defaults but beta=2"),
        _variant("autolrs_beta32", "AutoLRS, defaults but beta=32"),
        _variant("autolrs_ratio05", "AutoLRS, defaults but search_ratio=0.05"),
        _variant("autolrs_r05_k3", "AutoLRS, defaults but search_ratio=0.05, num_trials=3"),
        _variant("autolrs_ratio03", "AutoLRS, defaults but search_ratio=0.03"),
        _variant("autolrs_k3_r075", "AutoLRS, defaults but num_trials=3, search_ratio=0.075"),
        _variant("autolrs_k5_r0375", "AutoLRS, defaults but num_trials=5, search_ratio=0.0375"),
        _variant("autolrs_k5", "AutoLRS, defaults but num_trials=5"),
        _variant(
            "autolrs_short", f"AutoLRS() at its defaults on 1/{SPEEDUP_TARGET:g} of the budget, no LR range given", True
        ),
        _variant(
            "autolrs_ratio10",
            "AutoLRS, defaults but search_ratio=0.1 (the default before issue 12's second round)",
            default=True,
        ),
        Method(
            "replay", "ReplaySchedule of `autolrs`'s schedule (another seed's run), stretched", "replay", default=False
        ),
    )
}
DEFAULT_METHODS = [name for name, m in METHODS.items() if m.default]

WARMUP_FRACTION = 0.05


def sf_default_lr(workload: Workload) -> float:
    """The schedule-free optimizer's default ``lr`` (its constructor default)."""
    import schedulefree

    cls = schedulefree.SGDScheduleFree if workload.family == "sgd" else schedulefree.AdamWScheduleFree
    return float(inspect.signature(cls.__init__).parameters["lr"].default)


def _warmup_cosine(budget: int) -> Callable[[int], float]:
    warm = max(1, round(WARMUP_FRACTION * budget))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, budget - warm))))

    return factor


def wsd_decay_fraction() -> float:
    """Share of the budget the WSD baseline decays over: AutoLRS's default ``anneal_ratio`` (its final anneal)."""
    from lightning_autolrs import AutoLRS

    return float(inspect.signature(AutoLRS.__init__).parameters["anneal_ratio"].default)


def _warmup_stable_decay(budget: int, decay: str = "cosine") -> Callable[[int], float]:
    """Warmup-stable-decay: the 5 % linear warmup, the LR held, then a decay to 0 over the budget's last
    :func:`wsd_decay_fraction`: a half cosine (``wsd``, AutoLRS's final anneal before it decayed along
    ``1 - sqrt(t)``) or ``1 - sqrt(t)`` (``decay="sqrt"``, ``wsd_sqrt``: after the warmup, the shape of an AutoLRS
    run whose stages keep the module's LR, without its search)."""
    warm = max(1, round(WARMUP_FRACTION * budget))
    decay_start = max(warm, budget - round(wsd_decay_fraction() * budget))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if step < decay_start:
            return 1.0
        t = min(1.0, (step - decay_start) / max(1, budget - decay_start))
        return 1.0 - math.sqrt(t) if decay == "sqrt" else 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def _groups(base: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{"params": g["params"], "weight_decay": g.get("weight_decay", 0.0)} for g in base.param_groups]


def configure(kind: str, lr: float, budget: int, workload: Workload, base: torch.optim.Optimizer) -> Any:
    """The ``configure_optimizers`` return value of a baseline run, built from the module's own optimizer ``base``."""
    if kind in ("constant", "cosine", "wsd", "wsd_sqrt", "onecycle"):
        for g in base.param_groups:
            g["lr"] = lr
        if kind == "constant":
            return base
        if kind in ("cosine", "wsd", "wsd_sqrt"):
            if kind == "cosine":
                shape = _warmup_cosine(budget)
            else:
                shape = _warmup_stable_decay(budget, "sqrt" if kind == "wsd_sqrt" else "cosine")
            sched: Any = torch.optim.lr_scheduler.LambdaLR(base, shape)
        else:
            sched = torch.optim.lr_scheduler.OneCycleLR(base, max_lr=lr, total_steps=budget)
        return {"optimizer": base, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    g0 = base.param_groups[0]
    if kind == "sf":
        import schedulefree

        warm = round(WARMUP_FRACTION * budget)
        if workload.family == "sgd":
            return schedulefree.SGDScheduleFree(
                _groups(base), lr=lr, momentum=g0.get("momentum", 0.9), warmup_steps=warm
            )
        return schedulefree.AdamWScheduleFree(
            _groups(base), lr=lr, betas=g0.get("betas", (0.9, 0.999)), warmup_steps=warm
        )
    if kind == "prodigy":
        from prodigyopt import Prodigy

        opt = Prodigy(_groups(base), lr=lr, betas=g0.get("betas", (0.9, 0.999)), safeguard_warmup=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(budget))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    raise ValueError(f"unknown baseline kind {kind!r}")


_SUBCLASSES: dict[type, type] = {}


def _with_optimizer(module_cls: type[pl.LightningModule]) -> type[pl.LightningModule]:
    """Subclass of ``module_cls`` whose ``configure_optimizers`` hands the parent's optimizer to ``bench_configure``."""
    if module_cls not in _SUBCLASSES:

        def configure_optimizers(self: Any) -> Any:
            return self.bench_configure(super(sub, self).configure_optimizers())

        sub = type(f"{module_cls.__name__}Bench", (module_cls,), {"configure_optimizers": configure_optimizers})
        _SUBCLASSES[module_cls] = sub
    return _SUBCLASSES[module_cls]


# ---------------------------------------------------------------------------------------------------------- recording
class Recorder(pl.Callback):
    """Full-validation-set loss every ``every`` steps (and at step 0), the LR and phase of every step, timing.

    Evaluation runs in eval mode under ``no_grad`` and ``torch.random.fork_rng`` (the training RNG stream is untouched).
    Schedule-free optimizers are switched with ``optimizer.eval()`` / ``.train()`` around it, and BatchNorm statistics
    are recomputed for their evaluation weights on a few training batches (as the schedulefree README prescribes).
    With ``stop_on_nan`` a non-finite training loss stops the run (nothing recovers a baseline from NaN weights).
    """

    def __init__(
        self,
        val_batches: list[Batch],
        loss_sum: Callable[[nn.Module, Batch], tuple[float, int]],
        every: int,
        bn_batches: list[Batch],
        stop_on_nan: bool,
    ) -> None:
        self.val_batches, self.loss_sum, self.every = val_batches, loss_sum, every
        self.bn_batches, self.stop_on_nan = bn_batches, stop_on_nan
        self.curve: list[list[Any]] = []
        self.lrs: list[float] = []
        self.phases: list[str] = []
        self.eval_seconds = 0.0
        self.diverged_step: int | None = None
        self.autolrs: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning_autolrs import AutoLRS

        self.autolrs = next((c for c in trainer.callbacks if isinstance(c, AutoLRS)), None)
        opt = trainer.optimizers[0]
        if hasattr(opt, "train") and callable(opt.train):
            opt.train()
        self._evaluate(trainer, pl_module, 0, "start")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        g = optimizer.param_groups[0]
        self.lrs.append(float(g["lr"]) * float(g.get("d", 1.0)))  # Prodigy: the effective step size is d·lr
        self.phases.append(self.autolrs.phase if self.autolrs is not None else "fixed")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self.stop_on_nan and isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            self.diverged_step = step
            trainer.should_stop = True
        if step % self.every == 0 or step == trainer.max_steps:
            self._evaluate(trainer, pl_module, step, self.phases[-1] if self.phases else "start")

    @torch.no_grad()
    def _evaluate(self, trainer: pl.Trainer, module: pl.LightningModule, step: int, phase: str) -> None:
        if self.curve and self.curve[-1][0] == step:
            return
        start = time.perf_counter()
        opt = trainer.optimizers[0]
        sf = hasattr(opt, "eval") and callable(opt.eval)
        with torch.random.fork_rng(devices=[]):
            if sf:
                opt.eval()
                self._recompute_bn(module)
            module.eval()
            loss = mean_loss(self.loss_sum, module, self.val_batches)
            module.train()
            if sf:
                opt.train()
        self.curve.append([step, loss if math.isfinite(loss) else None, phase])
        self.eval_seconds += time.perf_counter() - start

    def _recompute_bn(self, module: nn.Module) -> None:
        bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns or not self.bn_batches:
            return
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
        module.train()
        for x, _ in self.bn_batches:
            module(x)
        for m, mom in zip(bns, momenta):
            m.momentum = mom


# ------------------------------------------------------------------------------------------------------------- a run
def quiet() -> None:
    """Silence Lightning's info logs and the usual warnings (worker initialiser)."""
    import lightning_autolrs  # noqa: F401  (imports pytorch_lightning too, which configures its loggers)

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what :mod:`platform` knows). Runs are bitwise reproducible on one
    machine, not across CPUs: convolution and matrix kernels round differently, and a chaotic run (the digits CNN)
    then ends elsewhere, so every run records the CPU it was trained on."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def runs_by_cpu(runs: Iterable[dict[str, Any]]) -> str:
    """Which CPUs trained ``runs``, e.g. ``"AMD EPYC (40), unrecorded (10)"`` (runs written before the CPU was
    recorded: ``unrecorded``)."""
    counts = Counter(str(r.get("versions", {}).get("cpu", "unrecorded")) for r in runs)
    return ", ".join(f"{cpu} ({n})" for cpu, n in counts.most_common())


def package_commit() -> str:
    """An id of the package code that trains a run: the git tree id of ``lightning_autolrs/`` at HEAD (short), with
    ``+`` and a digest of the uncommitted changes to it when it differs from HEAD (``"unknown"`` outside a git
    checkout). It names the code, not the commit: a commit that leaves the package alone keeps the runs' cache keys."""
    import hashlib
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        tree = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD:lightning_autolrs"], cwd=root, capture_output=True, text=True
        )
        diff = subprocess.run(
            ["git", "diff", "--no-ext-diff", "HEAD", "--", "lightning_autolrs"], cwd=root, capture_output=True
        )
        untracked = subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard", "--", "lightning_autolrs"],
            cwd=root,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    if tree.returncode != 0:
        return "unknown"
    changes = diff.stdout
    for name in sorted(untracked.stdout.split()):
        changes += name.encode() + (root / name).read_bytes()
    return "tree:" + tree.stdout.strip() + ("+" + hashlib.sha256(changes).hexdigest()[:10] if changes else "")


def _require_package_at(commit: str) -> None:
    """Refuse to train a row of another package version: the package must equal ``commit``'s."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    same = subprocess.run(["git", "diff", "--quiet", commit, "--", "lightning_autolrs"], cwd=root)
    if same.returncode != 0:
        raise RuntimeError(
            f"this row runs AutoLRS as of commit {commit}; the package differs from it. Reuse its saved runs with "
            f"--resume, or run it from a checkout of {commit} (git worktree add /tmp/before {commit})."
        )


def run_one(task: dict[str, Any], schedule: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one run. ``task``: ``workload``, ``kind``, ``lr`` (None for AutoLRS and replay), ``seed``, ``quick``,
    ``evals``; for AutoLRS ``autolrs_args`` (every constructor argument, see :func:`autolrs_kwargs`). A replay run gets
    the schedule document to replay as ``schedule`` (``Schedule.to_dict()`` of the run that found it).

    Returns the task plus ``steps``, ``curve`` (``[step, val_loss or None, phase]``), ``final_loss``, ``lrs`` (LR per
    step), ``wall_train_s`` (fit time minus evaluation time), ``wall_eval_s``, ``diverged_step``; for AutoLRS a
    per-stage summary, the range test's result and the schedule document in ``autolrs``; for a replay the number of
    exploit LRs replayed in ``replay``.
    """
    quiet()
    torch.set_num_threads(1)
    workload = WORKLOADS[task["workload"]]
    kind, lr, seed, quick = task["kind"], task["lr"], int(task["seed"]), bool(task["quick"])
    budget = run_budget(workload, kind, quick)
    pl.seed_everything(seed, verbose=False)
    module_cls, kwargs, dm = workload.build(seed, quick)
    callbacks: list[pl.Callback] = []
    autolrs_cb = None
    replay_cb = None
    if kind in AUTOLRS_VARIANTS:
        from lightning_autolrs import AutoLRS

        module = module_cls(**kwargs)
        args = dict(task["autolrs_args"])
        if "commit" in args:  # a row of an earlier version: only that version's package may train it
            _require_package_at(args.pop("commit"))
        autolrs_cb = AutoLRS(**args)
        callbacks.append(autolrs_cb)
    elif kind in REPLAY_VARIANTS:
        from lightning_autolrs import ReplaySchedule
        from lightning_autolrs.schedule import Schedule

        if schedule is None:
            raise ValueError(f"replay run {kind!r} needs the schedule document to replay")
        module = module_cls(**kwargs)
        try:
            replay_cb = ReplaySchedule(Schedule.from_dict(schedule), stretch=True)
        except ValueError as err:  # e.g. the source run finished no stage: nothing to replay, recorded as failed
            return {
                **task,
                "budget": budget,
                "steps": 0,
                "curve": [[0, None, "start"]],
                "final_loss": None,
                "lrs": [],
                "wall_train_s": 0.0,
                "wall_eval_s": 0.0,
                "diverged_step": None,
                "error": f"{type(err).__name__}: {err}",
            }
        callbacks.append(replay_cb)
    else:
        module = _with_optimizer(module_cls)(**kwargs)
        module.bench_configure = lambda base: configure(kind, float(lr), budget, workload, base)
    probing = autolrs_cb is not None  # AutoLRS gets the validation data, as in a user's Trainer
    every = max(1, budget // int(task["evals"]))
    recorder = Recorder(
        workload.val_batches(dm),
        workload.loss_sum,
        every,
        workload.bn_batches(dm) if kind == "sf" else [],
        stop_on_nan=autolrs_cb is None,
    )
    callbacks.append(recorder)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=budget,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        # no Lightning validation loop (the Recorder evaluates); AutoLRS's validation probe still gets the dataloader
        limit_val_batches=1.0 if probing else 0,
        check_val_every_n_epoch=None,
        val_check_interval=budget + 1,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    wall = time.perf_counter() - start
    last = recorder.curve[-1]
    finished = last[0] == budget and recorder.diverged_step is None
    result = {
        **task,
        "budget": budget,
        "steps": int(trainer.global_step),
        "curve": recorder.curve,
        "final_loss": last[1] if finished else None,
        "lrs": [float(f"{v:.5g}") for v in recorder.lrs],
        "wall_train_s": wall - recorder.eval_seconds,
        "wall_eval_s": recorder.eval_seconds,
        "diverged_step": recorder.diverged_step,
        "versions": {
            "torch": torch.__version__,
            "lightning": pl.__version__,
            "package": package_commit(),
            "cpu": cpu_model(),
        },
    }
    if replay_cb is not None:
        result["replay"] = {"exploit_lrs": len(replay_cb.exploit_lrs), "stretch": True}
    if autolrs_cb is not None:
        rt = autolrs_cb.range_test_result
        result["autolrs"] = {
            "settings": {**task["autolrs_args"], "tau": autolrs_cb.tau},
            "search_steps": sum(h["search_steps"] for h in autolrs_cb.history),
            "range_test": None
            if rt is None
            else {k: rt[k] for k in ("steps", "min_lr", "max_lr", "stopped_early") if k in rt},
            "found_range": [autolrs_cb.min_lr, autolrs_cb.max_lr],
            "stages": [
                {
                    "stage": h["stage"],
                    "start_step": h["start_step"],
                    "tau": h["tau"],
                    "tau_prime": h["tau_prime"],
                    "best_lr": h["best_lr"],
                    "trials": len(h["trials"]),
                    "diverged_trials": sum(bool(t["diverged"]) for t in h["trials"]),
                    "forecasts": [t["forecast"] for t in h["trials"]],
                    "trial_lrs": [float(f"{t['lr']:.5g}") for t in h["trials"]],
                    "trial_predictions": [
                        None if t["predicted_loss"] is None else float(f"{t['predicted_loss']:.5g}")
                        for t in h["trials"]
                    ],
                    "search_steps": h["search_steps"],
                    "exploit_steps": h["exploit_steps"],
                    "fallbacks": len(h["fallbacks"]),
                }
                for h in autolrs_cb.history
            ],
            "schedule": autolrs_cb.schedule.to_dict(),
        }
    return result
