"""Character-level language-model demo: a small causal Transformer trained on Python standard-library source code.

The corpus is the concatenation of a fixed, sorted list of pure-Python modules that every CPython 3.10+
installation ships (``argparse.py``, ``collections/``, ``json/``, ``email/`` ...), read from the running interpreter's
standard-library directory, so nothing is downloaded. Text is handled as raw bytes (a 256-symbol vocabulary; the
sources are nearly all ASCII, so one byte is one character) and the loss is the mean cross-entropy in nats per
character (``ln 256 ≈ 5.55`` for a uniform guess).

:class:`CharDataModule` splits the text contiguously into train/val; a training epoch is a fixed number of randomly
placed (seeded) windows, validation uses non-overlapping fixed windows. :class:`CharTransformerLM` is a pre-norm
Transformer (``torch.nn.TransformerEncoderLayer`` with a causal mask, learned positional embeddings) trained with AdamW
at a constant learning rate (no scheduler: AutoLRS drives the learning rate).

Example::

    import lightning.pytorch as pl
    from lightning_autolrs.demos import CharDataModule, CharTransformerLM

    trainer = pl.Trainer(max_steps=300, accelerator="cpu", val_check_interval=100)
    trainer.fit(CharTransformerLM(block_size=64), datamodule=CharDataModule(block_size=64))
"""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from lightning_autolrs.exceptions import InvalidArgumentError

__all__ = [
    "STDLIB_FILES",
    "UNIFORM_LOSS",
    "VOCAB_SIZE",
    "CharDataModule",
    "CharTransformerLM",
    "load_stdlib_text",
    "stdlib_paths",
]

VOCAB_SIZE = 256
"""Byte-level vocabulary size."""

UNIFORM_LOSS = math.log(VOCAB_SIZE)
"""Cross-entropy (nats/char) of a uniform guess over the byte vocabulary, ``ln 256 ≈ 5.545``."""

STDLIB_FILES: tuple[str, ...] = (
    "argparse.py",
    "bisect.py",
    "calendar.py",
    "collections/__init__.py",
    "collections/abc.py",
    "contextlib.py",
    "dataclasses.py",
    "difflib.py",
    "email/__init__.py",
    "email/_encoded_words.py",
    "email/_header_value_parser.py",
    "email/_parseaddr.py",
    "email/_policybase.py",
    "email/base64mime.py",
    "email/charset.py",
    "email/contentmanager.py",
    "email/encoders.py",
    "email/errors.py",
    "email/feedparser.py",
    "email/generator.py",
    "email/header.py",
    "email/headerregistry.py",
    "email/iterators.py",
    "email/message.py",
    "email/parser.py",
    "email/policy.py",
    "email/quoprimime.py",
    "email/utils.py",
    "enum.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "json/scanner.py",
    "json/tool.py",
    "shlex.py",
    "string.py",
    "textwrap.py",
)
"""Standard-library files forming the corpus, relative to the stdlib directory, in the order they are concatenated.

All exist in every CPython 3.10+ installation; together they are roughly 1 MB, so ``max_chars`` up to that size
gets distinct text.
"""

_SEPARATOR = b"\n\n"


def stdlib_paths() -> list[Path]:
    """Absolute paths of the :data:`STDLIB_FILES` present in this interpreter's standard library, in corpus order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [root / rel for rel in STDLIB_FILES if (root / rel).is_file()]


def load_stdlib_text(max_chars: int = 400_000) -> bytes:
    """The corpus: :data:`STDLIB_FILES` concatenated (separated by a blank line), truncated to ``max_chars`` bytes.

    Line endings are normalised to ``\\n`` so the text is the same on every platform. Files missing from a stripped
    installation are skipped; if none is found a ``FileNotFoundError`` says where they were looked for.

    Args:
        max_chars: Maximum length of the returned text, in bytes.
    """
    if max_chars < 1:
        raise InvalidArgumentError(f"`max_chars` must be >= 1, got {max_chars!r}.")
    paths = stdlib_paths()
    if not paths:
        raise FileNotFoundError(
            f"None of the standard-library source files of the charlm demo were found under "
            f"{sysconfig.get_paths()['stdlib']!r} (looked for {', '.join(STDLIB_FILES[:3])}, ...). "
            "This Python installation ships no .py sources; the charlm demo cannot run on it."
        )
    chunks: list[bytes] = []
    total = 0
    for path in paths:
        chunk = path.read_bytes().replace(b"\r\n", b"\n")
        if chunks:
            chunk = _SEPARATOR + chunk
        chunks.append(chunk)
        total += len(chunk)
        if total >= max_chars:
            break
    return b"".join(chunks)[:max_chars]


class _RandomWindows(Dataset):
    """Every window of ``block_size + 1`` bytes; item ``i`` is ``(data[i:i+T], data[i+1:i+T+1])``."""

    def __init__(self, data: torch.Tensor, block_size: int) -> None:
        self.data = data
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.data) - self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.data[i : i + self.block_size + 1].long()
        return chunk[:-1], chunk[1:]


class _FixedWindows(_RandomWindows):
    """Non-overlapping windows: item ``i`` starts at ``i * block_size``, so each target byte is scored exactly once."""

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return super().__getitem__(i * self.block_size)


class CharDataModule(pl.LightningDataModule):
    """Byte-level windows of Python standard-library source code for next-character prediction.

    Batches are ``(x, y)`` of ``int64`` tensors of shape ``(batch_size, block_size)`` with ``y`` the bytes following
    ``x``. The first ``1 - val_fraction`` of the text is for training, the rest for validation (a contiguous split, so
    no window straddles both). A training epoch is ``len(train_text) // block_size`` windows at random offsets drawn
    by a generator seeded with ``seed`` (the last incomplete batch is dropped); validation uses the non-overlapping
    windows of the validation text in order.

    Args:
        block_size: Context length (number of input characters per window); must not exceed the model's.
        batch_size: Windows per batch, for training and validation.
        max_chars: Length of the corpus in characters (bytes); the corpus is roughly 1 MB at most.
        val_fraction: Fraction of the corpus (its tail) held out for validation, in ``(0, 1)``.
        seed: Seed of the random training windows.
        num_workers: ``DataLoader`` worker processes.
    """

    def __init__(
        self,
        block_size: int = 64,
        batch_size: int = 32,
        max_chars: int = 400_000,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if block_size < 1:
            raise InvalidArgumentError(f"`block_size` must be >= 1, got {block_size!r}.")
        if batch_size < 1:
            raise InvalidArgumentError(f"`batch_size` must be >= 1, got {batch_size!r}.")
        if max_chars < 1:
            raise InvalidArgumentError(f"`max_chars` must be >= 1, got {max_chars!r}.")
        if not 0.0 < val_fraction < 1.0:
            raise InvalidArgumentError(f"`val_fraction` must be in (0, 1), got {val_fraction!r}.")
        if num_workers < 0:
            raise InvalidArgumentError(f"`num_workers` must be >= 0, got {num_workers!r}.")
        self.save_hyperparameters()
        self.block_size = block_size
        self.batch_size = batch_size
        self.max_chars = max_chars
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.vocab_size = VOCAB_SIZE
        self.text: bytes | None = None
        self.train_data: torch.Tensor | None = None
        self.val_data: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read the corpus from the standard library and split it (idempotent)."""
        if self.text is not None:
            return
        text = load_stdlib_text(self.max_chars)
        data = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        n_train = round(len(data) * (1.0 - self.val_fraction))
        train, val = data[:n_train].clone(), data[n_train:].clone()
        for name, part in (("training", train), ("validation", val)):
            if len(part) < self.block_size + 1:
                raise InvalidArgumentError(
                    f"The {name} text has {len(part)} characters, fewer than `block_size` + 1 = {self.block_size + 1}"
                    f" (`max_chars`={self.max_chars!r}, `val_fraction`={self.val_fraction!r}): raise `max_chars` or"
                    " lower `block_size`."
                )
        self.text, self.train_data, self.val_data = text, train, val

    @property
    def samples_per_epoch(self) -> int:
        """Training windows per epoch: ``len(train_text) // block_size``."""
        self.setup()
        assert self.train_data is not None
        return max(1, len(self.train_data) // self.block_size)

    def train_dataloader(self) -> DataLoader:
        """Random (seeded) windows, ``samples_per_epoch`` of them per epoch, the last incomplete batch dropped."""
        self.setup()
        assert self.train_data is not None
        dataset = _RandomWindows(self.train_data, self.block_size)
        generator = torch.Generator().manual_seed(self.seed)
        num_samples = max(self.samples_per_epoch, self.batch_size)
        sampler = RandomSampler(dataset, replacement=True, num_samples=num_samples, generator=generator)
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        """The non-overlapping windows of the validation text, in order."""
        self.setup()
        assert self.val_data is not None
        dataset = _FixedWindows(self.val_data, self.block_size)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


class CharTransformerLM(pl.LightningModule):
    """A small causal (decoder-only) Transformer language model over bytes.

    Token + learned positional embeddings, ``n_layers`` pre-norm ``nn.TransformerEncoderLayer`` blocks (GELU, 4×
    feed-forward) under a causal mask, a final LayerNorm and a linear head. Trained with AdamW at a constant learning
    rate (weight decay on weight matrices only; ``configure_optimizers`` returns the optimizer only). Logs
    ``train_loss`` (every step) and ``val_loss`` (per validation epoch), both mean cross-entropy in nats per character.

    Args:
        vocab_size: Number of symbols (256 for the byte-level :class:`CharDataModule`).
        d_model: Width of the embeddings and of the residual stream.
        n_heads: Attention heads per layer; must divide ``d_model``.
        n_layers: Number of Transformer blocks.
        block_size: Maximum context length (size of the positional embedding); at least the datamodule's.
        dropout: Dropout probability in the blocks and after the embeddings.
        lr: Learning rate of AdamW.
        weight_decay: AdamW weight decay, applied to the weight matrices (not to biases, norms or embeddings).
    """

    def __init__(
        self,
        vocab_size: int = VOCAB_SIZE,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 2,
        block_size: int = 64,
        dropout: float = 0.0,
        lr: float = 3e-3,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__()
        if d_model < 1 or n_heads < 1 or d_model % n_heads:
            raise InvalidArgumentError(
                f"`n_heads` must be >= 1 and divide `d_model`, got d_model={d_model!r}, n_heads={n_heads!r}."
            )
        if lr <= 0:
            raise InvalidArgumentError(f"`lr` must be > 0, got {lr!r}.")
        if not 0.0 <= dropout < 1.0:
            raise InvalidArgumentError(f"`dropout` must be in [0, 1), got {dropout!r}.")
        self.save_hyperparameters()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model,
            n_heads,
            dim_feedforward=4 * d_model,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Next-symbol logits of shape ``(B, T, vocab_size)`` for symbol indices of shape ``(B, T)``."""
        t = idx.shape[1]
        if t > self.block_size:
            raise InvalidArgumentError(
                f"Input length {t} exceeds the model's `block_size` {self.block_size}: raise the model's `block_size`"
                " or lower the datamodule's."
            )
        pos = torch.arange(t, device=idx.device)
        h = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=idx.device, dtype=h.dtype)
        h = self.blocks(h, mask=mask, is_causal=True)
        return self.head(self.norm(h))

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss = self._loss(batch)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch[0].shape[0])

    @torch.no_grad()
    def generate(self, prompt: str | bytes, max_new_chars: int = 200, temperature: float = 1.0, seed: int = 0) -> str:
        """Sample a continuation of ``prompt`` (byte-level vocabulary only); returns prompt + continuation.

        Args:
            prompt: Start of the text (at least one character).
            max_new_chars: Number of characters (bytes) to sample.
            temperature: Softmax temperature; lower is more conservative.
            seed: Seed of the sampling generator.
        """
        data = prompt.encode() if isinstance(prompt, str) else bytes(prompt)
        if not data:
            raise InvalidArgumentError("`prompt` must not be empty.")
        if temperature <= 0:
            raise InvalidArgumentError(f"`temperature` must be > 0, got {temperature!r}.")
        was_training = self.training
        self.eval()
        g = torch.Generator(device=self.device).manual_seed(seed)
        idx = torch.tensor([list(data)], dtype=torch.long, device=self.device)
        for _ in range(max_new_chars):
            logits = self(idx[:, -self.block_size :])[:, -1] / temperature
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=g)
            idx = torch.cat([idx, nxt], dim=1)
        self.train(was_training)
        return bytes(idx[0].tolist()).decode("utf-8", errors="replace")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay = [p for n, p in self.named_parameters() if p.ndim >= 2 and "emb" not in n]
        no_decay = [p for n, p in self.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
        groups = [
            {"params": decay, "weight_decay": self.hparams["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.hparams["lr"], betas=(0.9, 0.99))
