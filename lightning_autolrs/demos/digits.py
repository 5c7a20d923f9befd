"""Digits demo: a small CNN classifying the 8×8 handwritten digits bundled with scikit-learn.

The data (1797 grey-scale images of the digits 0-9, from :func:`sklearn.datasets.load_digits`) ship inside
scikit-learn, so nothing is downloaded. :class:`DigitsDataModule` makes a deterministic stratified train/val split and
:class:`DigitsCNN` is a two-block convolutional network trained with SGD + momentum and a constant learning rate (no
scheduler: AutoLRS drives the learning rate). At the defaults an epoch is 22 optimizer steps and a few hundred steps
reach well over 90 % validation accuracy on a laptop CPU.

Example::

    import lightning.pytorch as pl
    from lightning_autolrs.demos import DigitsCNN, DigitsDataModule

    trainer = pl.Trainer(max_steps=300, accelerator="cpu")
    trainer.fit(DigitsCNN(), datamodule=DigitsDataModule())
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_autolrs.exceptions import InvalidArgumentError

__all__ = ["NUM_CLASSES", "DigitsCNN", "DigitsDataModule"]

NUM_CLASSES = 10
"""Number of digit classes (0-9)."""


class DigitsDataModule(pl.LightningDataModule):
    """The scikit-learn 8×8 digits as tensors of shape ``(N, 1, 8, 8)``, pixels scaled to ``[0, 1]``.

    The split is stratified by class and fixed by ``seed`` (after :meth:`setup`, ``train_indices`` / ``val_indices``
    hold the sorted sample indices into :func:`sklearn.datasets.load_digits`); the training loader reshuffles every
    epoch with a generator seeded by ``seed`` and drops the last incomplete batch, so every step sees a full batch.

    Args:
        batch_size: Samples per batch, for training and validation.
        val_fraction: Fraction of the 1797 samples held out for validation, in ``(0, 1)``.
        seed: Seed of the train/val split and of the training-loader shuffling.
        num_workers: ``DataLoader`` worker processes (0 loads in the main process, best for this tiny dataset).
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise InvalidArgumentError(f"`batch_size` must be >= 1, got {batch_size!r}.")
        if not 0.0 < val_fraction < 1.0:
            raise InvalidArgumentError(f"`val_fraction` must be in (0, 1), got {val_fraction!r}.")
        if num_workers < 0:
            raise InvalidArgumentError(f"`num_workers` must be >= 0, got {num_workers!r}.")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load the digits from scikit-learn's bundled data and split them (idempotent)."""
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        data = load_digits()
        x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values 0..16 -> [0, 1]
        y = torch.tensor(data.target, dtype=torch.long)
        idx_train, idx_val = train_test_split(
            torch.arange(len(y)).numpy(),
            test_size=self.val_fraction,
            random_state=self.seed,
            stratify=y.numpy(),
        )
        idx_train = torch.as_tensor(sorted(idx_train.tolist()), dtype=torch.long)
        idx_val = torch.as_tensor(sorted(idx_val.tolist()), dtype=torch.long)
        self.train_indices, self.val_indices = idx_train, idx_val
        self.train_set = TensorDataset(x[idx_train], y[idx_train])
        self.val_set = TensorDataset(x[idx_val], y[idx_val])

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded) training batches, the last incomplete batch dropped."""
        self.setup()
        generator = torch.Generator().manual_seed(self.seed)
        assert self.train_set is not None
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        self.setup()
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DigitsCNN(pl.LightningModule):
    """A small CNN for the 8×8 digits: conv-BN-ReLU ×2, max-pool, conv-BN-ReLU, global average pool, linear head.

    Trained with SGD + momentum at a constant learning rate; ``configure_optimizers`` returns the optimizer only.
    Logs ``train_loss`` (cross-entropy, every step) and ``val_loss`` / ``val_acc`` (per validation epoch).

    Args:
        lr: Learning rate of SGD.
        momentum: SGD momentum.
        weight_decay: L2 weight decay of SGD.
        channels: Width of the first convolutional layers; the last one has twice as many channels.
    """

    def __init__(self, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4, channels: int = 32) -> None:
        super().__init__()
        if lr <= 0:
            raise InvalidArgumentError(f"`lr` must be > 0, got {lr!r}.")
        if channels < 1:
            raise InvalidArgumentError(f"`channels` must be >= 1, got {channels!r}.")
        self.save_hyperparameters()
        self.features = nn.Sequential(
            _conv_block(1, channels),
            _conv_block(channels, channels),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            _conv_block(channels, 2 * channels),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * channels, NUM_CLASSES)
        self.val_acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of shape ``(N, 10)`` for images of shape ``(N, 1, 8, 8)``."""
        return self.head(self.features(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.val_acc(logits, y)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("val_acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            self.parameters(),
            lr=self.hparams["lr"],
            momentum=self.hparams["momentum"],
            weight_decay=self.hparams["weight_decay"],
        )
