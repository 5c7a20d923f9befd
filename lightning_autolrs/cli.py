"""The ``autolrs`` console script: a LightningCLI over the bundled demos (or any LightningModule by class path).

Examples::

    autolrs fit --config configs/digits.yaml             # AutoLRS on the digits CNN (the README's main job)
    autolrs fit --config configs/digits_cosine.yaml      # the same budget with a plain cosine schedule
    autolrs fit --demo charlm --trainer.max_steps 600 --trainer.callbacks+=lightning_autolrs.AutoLRS

What it adds to a plain ``LightningCLI``:

- ``--demo NAME`` (``digits``, ``charlm``) is a shortcut for ``--model`` / ``--data`` set to the demo's classes and,
  unless the command line already adds ``lightning_autolrs.AutoLRS`` or a ``--config`` is given, for an AutoLRS
  callback with the demo config's arguments (``configs/NAME.yaml``), and the thread count of that config.
- ``--torch_num_threads N`` (also a config key) calls ``torch.set_num_threads(N)`` before anything is built; the
  digits demo's config (and ``--demo digits``) uses 1 thread, the fastest setting for a model that small.
- ``lr_scheduler`` given without ``optimizer`` wraps the LR scheduler around the optimizer the module's own
  ``configure_optimizers`` returns (its param groups kept). An LR scheduler from the config steps every optimizer
  step (``interval: step``), so a ``CosineAnnealingLR`` with ``T_max`` = ``max_steps`` decays over the whole run.
- After ``fit`` it prints one table per AutoLRS callback (each stage's trials: LR, forecast loss, the mean training
  loss of the trial's last quarter, and the chosen LR), then the final logged metrics and the log dir.
- Input errors (unknown keys, a missing or malformed config file, a wrong ``class_path``, an unknown demo, an
  unwritable output directory, an invalid argument value, a set-up AutoLRS refuses) end with one line on stderr,
  ``autolrs: error: ...``, and exit status 2; a run that fails before its first optimizer step leaves no files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import MethodType
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, instantiate_class
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lightning_autolrs.callback import AutoLRS
from lightning_autolrs.demos import DEMO_AUTOLRS, DEMO_THREADS, DEMOS, get_demo
from lightning_autolrs.exceptions import AutoLRSError
from lightning_autolrs.schedule import summary_table

__all__ = ["AutoLRSCLI", "CLIInputError", "main"]

_PROG = "autolrs"
_SUBCOMMANDS = ("fit", "validate", "test", "predict")
_DESCRIPTION = (
    "AutoLRS (automatic LR schedule by Bayesian optimisation) over the bundled demos or any LightningModule. "
    f"`--demo NAME` ({', '.join(sorted(DEMOS))}) is a shortcut for --model/--data set to the demo's classes and an "
    "AutoLRS callback with the demo config's arguments (unless the command adds AutoLRS or gives --config); "
    "`--trainer.callbacks+=lightning_autolrs.AutoLRS` adds the callback; "
    "`--trainer.callbacks.help lightning_autolrs.AutoLRS` lists its arguments."
)


class CLIInputError(AutoLRSError, ValueError):
    """A command line or config file the ``autolrs`` CLI cannot run (reported as one line, exit status 2)."""


# --------------------------------------------------------------------------------------------------------- argv


def _expand_demo(argv: list[str]) -> list[str]:
    """Replace ``--demo NAME`` / ``--demo=NAME`` by the demo's ``--model`` and ``--data`` class paths and, unless the
    command line adds AutoLRS itself or gives a ``--config`` (which holds its own callbacks), an AutoLRS callback with
    the arguments of the demo's config; also its config's ``torch_num_threads``, unless the command line sets it or
    gives a ``--config``."""
    configured = any(arg in ("--config", "-c") or arg.startswith("--config=") for arg in argv)
    own = configured or any("lightning_autolrs.AutoLRS" in arg for arg in argv)
    threads_given = any(arg == "--torch_num_threads" or arg.startswith("--torch_num_threads=") for arg in argv)
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--demo" or arg.startswith("--demo="):
            if "=" in arg:
                name = arg.split("=", 1)[1]
            elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                name = argv[i + 1]
                i += 1
            else:
                raise CLIInputError(f"`--demo` needs a name, one of {', '.join(sorted(DEMOS))}, e.g. `--demo digits`.")
            if name not in DEMOS:
                raise CLIInputError(f"unknown demo {name!r} (`--demo`); the demos are: {', '.join(sorted(DEMOS))}.")
            model_cls, data_cls = get_demo(name)
            out += [
                f"--model={model_cls.__module__}.{model_cls.__name__}",
                f"--data={data_cls.__module__}.{data_cls.__name__}",
            ]
            if not own:
                out.append("--trainer.callbacks+=lightning_autolrs.AutoLRS")
                out += [f"--trainer.callbacks.{k}={v}" for k, v in DEMO_AUTOLRS[name].items()]
            if not configured and not threads_given and DEMO_THREADS[name] is not None:
                out.append(f"--torch_num_threads={DEMO_THREADS[name]}")
        else:
            out.append(arg)
        i += 1
    return out


def _check_config_files(argv: list[str]) -> None:
    """Check every ``--config``/``-c`` file before parsing: it exists, is a file and is valid YAML (named in errors)."""
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c"):
            value = argv[i + 1] if i + 1 < len(argv) else None
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        else:
            continue
        if value is None or value == "":
            raise CLIInputError("`--config` needs a path to a YAML file.")
        if any(c in value for c in "{}\n") or ": " in value:
            continue  # an inline YAML document: jsonargparse parses it
        path = Path(value)
        if not path.exists():
            raise CLIInputError(f"config file {value!r} does not exist.")
        if not path.is_file():
            raise CLIInputError(f"config file {value!r} is not a file.")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise CLIInputError(f"config file {value!r} is not valid YAML: {problem}{where}.") from None
        except (OSError, UnicodeDecodeError) as err:
            raise CLIInputError(f"cannot read config file {value!r}: {err}.") from None


# ---------------------------------------------------------------------------------------------------- output dirs


def _output_dirs(config: Any) -> list[tuple[str, str]]:
    """``(config key, directory)`` of every output directory named in a subcommand's config."""
    trainer = config.get("trainer") if config is not None else None
    if trainer is None:
        return []
    found: list[tuple[str, str]] = []
    root = trainer.get("default_root_dir")
    if root:
        found.append(("trainer.default_root_dir", root))

    def init_args(obj: Any) -> Any:
        return getattr(obj, "init_args", None) or (obj.get("init_args") if isinstance(obj, dict) else None)

    for key, arg in (("logger", "save_dir"), ("callbacks", "dirpath")):
        value = trainer.get(key)
        for item in value if isinstance(value, list) else [value]:
            args = init_args(item)
            directory = args.get(arg) if args is not None else None
            if directory:
                found.append((f"trainer.{key}.init_args.{arg}", directory))
    return [(key, str(d)) for key, d in found if isinstance(d, str | os.PathLike)]


def _missing_ancestors(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, deepest first."""
    missing = []
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    return missing


def _check_writable(directory: Path, key: str) -> None:
    """Raise a clear error when ``directory`` cannot be created or written, without leaving anything behind."""
    if "://" in str(directory):  # a remote file system (s3://, ...): Lightning's fsspec handles it
        return
    created = _missing_ancestors(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        test = directory / ".autolrs_write_test"
        test.write_text("")
        test.unlink()
    except OSError as err:
        why = err.strerror or str(err)
        raise CLIInputError(f"cannot write to output directory {str(directory)!r} (`{key}`): {why}.") from None
    finally:
        for path in created:  # leave no empty directories behind; the run creates what it needs
            with contextlib.suppress(OSError):
                path.rmdir()


# -------------------------------------------------------------------------------------------------------- the CLI


class _HoldBack(logging.Filter):
    """Holds back warnings and Lightning's "Seed set to N" log line until the classes are built, then replays them;
    on an input error they are dropped, so the error is the only line on stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self._warnings: Any = None
        self._caught: list[warnings.WarningMessage] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def start(self) -> None:
        logging.getLogger(_SEED_LOGGER).addFilter(self)
        self._warnings = warnings.catch_warnings(record=True)
        self._caught = self._warnings.__enter__()
        warnings.simplefilter("always")  # record everything; the user's filters apply on replay

    def stop(self, replay: bool) -> None:
        if self._warnings is None:
            return
        self._warnings.__exit__(None, None, None)
        self._warnings = None
        logger = logging.getLogger(_SEED_LOGGER)
        logger.removeFilter(self)
        if replay:
            for w in self._caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
            for record in self.records:
                logger.handle(record)
        self.records.clear()
        self._caught = []


_SEED_LOGGER = "lightning.fabric.utilities.seed"


class AutoLRSCLI(LightningCLI):
    """The ``autolrs`` LightningCLI: checks inputs before anything runs and prints each AutoLRS stage table after fit.

    Usable from Python as ``AutoLRSCLI(args=[...])``; :func:`main` is the console script around it, turning input
    errors into one line and exit status 2.
    """

    def __init__(self, *positional: Any, **kwargs: Any) -> None:
        if not positional and "model_class" not in kwargs:
            kwargs.setdefault("model_class", LightningModule)
            kwargs.setdefault("datamodule_class", LightningDataModule)
            kwargs.setdefault("subclass_mode_model", True)
            kwargs.setdefault("subclass_mode_data", True)
        parser_kwargs = kwargs.setdefault("parser_kwargs", {})
        parser_kwargs.setdefault("prog", _PROG)
        parser_kwargs.setdefault("description", _DESCRIPTION)
        parser_kwargs.setdefault("exit_on_error", False)
        for sub in _SUBCOMMANDS:
            parser_kwargs.setdefault(sub, {}).setdefault("exit_on_error", False)
            parser_kwargs[sub].setdefault("description", _DESCRIPTION)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        self._created: list[Path] = []
        kwargs.setdefault("seed_everything_default", 0)  # reproducible by default; `--seed_everything=true`: random
        self._held = _HoldBack()
        self._held.start()
        try:
            super().__init__(*positional, **kwargs)
        finally:
            self._held.stop(replay=False)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--demo",
            type=str | None,
            default=None,
            metavar="NAME",
            help=f"a bundled demo ({', '.join(sorted(DEMOS))}): its model and data classes and, unless the command "
            "adds lightning_autolrs.AutoLRS or gives --config, an AutoLRS callback with the demo config's arguments. "
            "Command line only.",
        )
        parser.add_argument(
            "--torch_num_threads",
            type=int | None,
            default=None,
            help="torch.set_num_threads(N) before the classes are built (null: torch's default, one per core). "
            "Tiny models train fastest on 1 thread.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check the output directories and set the thread count before the seed or any class."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else self.config
        if config is None:
            return
        if config.get("demo") is not None:  # (the command line's `--demo` is expanded before parsing)
            raise CLIInputError(
                "`demo` is a command-line shortcut (`--demo NAME`); in a config file set `model` and `data` instead."
            )
        for key, directory in _output_dirs(config):
            _check_writable(Path(directory), key)
        threads = config.get("torch_num_threads")
        if threads is not None:
            if threads < 1:
                raise CLIInputError(f"`torch_num_threads` must be >= 1 or null, got {threads}.")
            torch.set_num_threads(threads)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self._held.stop(replay=True)
        optimizer_init = self._get(self.config_init, "optimizer")
        scheduler_init = self._get(self.config_init, "lr_scheduler")
        if scheduler_init and not optimizer_init and self.model is not None:
            _attach_scheduler(self.model, scheduler_init, self.configure_optimizers)

    @staticmethod
    def configure_optimizers(
        lightning_module: LightningModule, optimizer: torch.optim.Optimizer, lr_scheduler: Any = None
    ) -> Any:
        """The optimizer, with the config's LR scheduler stepped every optimizer step (per epoch for plateau ones)."""
        if lr_scheduler is None:
            return optimizer
        if isinstance(lr_scheduler, ReduceLROnPlateau):
            monitor = getattr(lr_scheduler, "monitor", "val_loss")
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "monitor": monitor}}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}

    def before_fit(self) -> None:
        """Note which files and directories this run creates, so a run failing before its first step can remove them."""
        self._created = []
        if self.trainer.is_global_zero and self.trainer.log_dir:
            log_dir = Path(self.trainer.log_dir)
            self._created = _missing_ancestors(log_dir)
            config = log_dir / "config.yaml"  # SaveConfigCallback's file, also written into an existing directory
            if not self._created and not config.exists():
                self._created = [config]

    def fit(self, model: LightningModule, **kwargs: Any) -> None:
        try:
            self.trainer.fit(model, **kwargs)
        except BaseException:
            if self.trainer.global_step == 0:
                self._remove_created()
            raise

    def _remove_created(self) -> None:
        """Remove what this run created: its log dir (and the parents it created, if empty), or its config file."""
        if not self._created:
            return
        first = self._created[0]
        if first.is_dir():
            shutil.rmtree(first, ignore_errors=True)
        else:
            first.unlink(missing_ok=True)
        for path in self._created[1:]:
            with contextlib.suppress(OSError):
                path.rmdir()
        self._created = []

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        for cb in getattr(self.trainer, "callbacks", []):
            if isinstance(cb, AutoLRS):
                print(summary_table(cb.schedule))
        metrics = {
            k: float(v)
            for k, v in sorted(self.trainer.callback_metrics.items())
            if "/" not in k and torch.is_tensor(v) and v.numel() == 1
        }
        if metrics:
            shown = "  ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            print(f"final ({self.trainer.global_step} steps): {shown}")
        if self.trainer.log_dir and self.trainer.logger is not None:
            print(f"log dir: {self.trainer.log_dir}")


def _attach_scheduler(model: LightningModule, scheduler_init: Any, wrap: Any) -> None:
    """Make ``model.configure_optimizers`` return its own optimizer with the configured LR scheduler around it."""
    own = model.configure_optimizers

    def configure_optimizers(self: LightningModule) -> Any:
        optimizer = own()
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise CLIInputError(
                f"`lr_scheduler` without `optimizer` needs {type(self).__name__}.configure_optimizers to return a "
                f"single optimizer, got {type(optimizer).__name__}; give `optimizer:` in the config as well."
            )
        return wrap(self, optimizer, instantiate_class(optimizer, scheduler_init))

    model.configure_optimizers = MethodType(configure_optimizers, model)  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------------------- main


@contextlib.contextmanager
def _argv(args: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = [_PROG, *args]  # LightningCLI reads sys.argv; `args=` would warn under pytest
    try:
        yield
    finally:
        sys.argv = saved


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``autolrs`` console script; returns the exit status (0, or 2 for an input error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _expand_demo(args)
        _check_config_files(args)
        with _argv(args):
            AutoLRSCLI(args=None)
    except SystemExit as exit_:  # --help, --print_config
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except ArgumentError as err:
        return _fail(_one_line(str(err)))
    except (AutoLRSError, MisconfigurationException) as err:
        return _fail(_one_line(str(err)))
    except Exception as err:  # jsonargparse wraps errors raised while instantiating classes (bad init_args)
        cause = _input_error_cause(err)
        if cause is None:
            raise
        return _fail(_one_line(str(cause)))
    return 0


def _fail(message: str) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return 2


def _input_error_cause(err: BaseException) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, AutoLRSError | MisconfigurationException | ArgumentError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Expected a <class 'NoneType'>",
    "Expected a path but",
)


def _one_line(message: str) -> str:
    """Squeeze jsonargparse's multi-line report into one line: the key, plus its most specific cause.

    >>> _one_line('Parser key "model":\\n  Does not validate against any of the Union subtypes\\n  Subtypes: [...]\\n'
    ...           "  Errors:\\n    - Problem with given class_path 'a.B':\\n        Option 'x' is not accepted\\n"
    ...           "    - Expected a <class 'NoneType'>\\n  Given value type: <class 'dict'>\\n  Given value: {}")
    "model: class_path 'a.B': Option 'x' is not accepted"
    >>> _one_line('Parser key "trainer.max_steps":\\n  Expected an int. Got value: abc')
    'trainer.max_steps: Expected an int. Got value: abc'
    """
    lines = [line.rstrip() for line in message.strip("\n").splitlines() if line.strip()]
    if not lines:
        return "invalid arguments"

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip(" "))

    def text(line: str) -> str:
        line = line.strip().lstrip("-").strip()
        if line.startswith('Parser key "') and line.endswith('":'):
            return line[len('Parser key "') : -2] + ":"
        if line.startswith("Problem with given class_path "):
            return line[len("Problem with given ") :]
        return line

    anchor = next((i for i, line in enumerate(lines) if "Problem with given class_path" in line), 0)
    picked = [lines[0]] if anchor else []
    picked.append(lines[anchor])
    for line in lines[anchor + 1 :]:
        if indent(line) <= indent(lines[anchor]):
            break
        picked.append(line)
    parts: list[str] = []
    for line in picked:
        part = text(line)
        if part and not part.startswith(_NOISE) and part not in parts:
            parts.append(part)
    out = ""
    for part in parts:
        out += part if not out else (" " if out.endswith(":") else "; ") + part
    out = out or text(lines[0])
    return out if len(out) <= 400 else out[:397] + "..."


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
