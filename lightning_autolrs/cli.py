"""The ``autolrs`` console script: a LightningCLI over the bundled demos (or any LightningModule by class path).

Examples::

    autolrs fit --config configs/digits.yaml             # AutoLRS on the digits CNN
    autolrs fit --config configs/digits_cosine.yaml      # the same budget with a plain cosine schedule
    autolrs fit --demo charlm --trainer.max_steps 600 --trainer.callbacks+=lightning_autolrs.AutoLRS

``--demo NAME`` is a shortcut for ``--model`` / ``--data`` set to the demo's classes. After ``fit`` the CLI prints a
per-stage table of every AutoLRS callback (trials: LR and forecast loss; the chosen LR). Input errors (unknown keys, a
missing config file, a wrong ``class_path``, an unknown demo, an unwritable output directory) end with a one-line
message on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from lightning_autolrs.callback import AutoLRS
from lightning_autolrs.demos import get_demo
from lightning_autolrs.exceptions import AutoLRSError
from lightning_autolrs.schedule import summary_table

__all__ = ["AutoLRSCLI", "main"]


def _expand_demo(argv: list[str]) -> list[str]:
    """Replace ``--demo NAME`` / ``--demo=NAME`` by the demo's ``--model`` and ``--data`` class paths."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--demo" or arg.startswith("--demo="):
            if "=" in arg:
                name = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                name = argv[i + 1]
                i += 1
            else:
                raise AutoLRSError("`--demo` needs a name, e.g. `--demo digits`.")
            model_cls, data_cls = get_demo(name)
            out += [
                f"--model={model_cls.__module__}.{model_cls.__name__}",
                f"--data={data_cls.__module__}.{data_cls.__name__}",
            ]
        else:
            out.append(arg)
        i += 1
    return out


class AutoLRSCLI(LightningCLI):
    """LightningCLI that checks the output directories before ``fit`` and prints each AutoLRS stage table after it."""

    def before_instantiate_classes(self) -> None:
        """Check the output directories named in the config before anything (the Trainer included) is built."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        trainer = config.get("trainer") if config is not None else None
        if trainer is None:
            return
        dirs = [trainer.get("default_root_dir")]
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = getattr(logger, "init_args", None) or (
                logger.get("init_args") if isinstance(logger, dict) else None
            )
            if init_args is not None:
                dirs.append(init_args.get("save_dir"))
        for directory in dirs:
            if isinstance(directory, str | Path) and directory:
                _check_writable(Path(directory))

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        for cb in self.trainer.callbacks:
            if isinstance(cb, AutoLRS):
                print(summary_table(cb.schedule))


def _check_writable(directory: Path) -> None:
    """Raise a clear error when ``directory`` cannot be created or written, without leaving anything behind."""
    created: list[Path] = []
    probe = directory
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        test = directory / ".autolrs_write_test"
        test.write_text("")
        test.unlink()
    except OSError as err:
        raise AutoLRSError(f"cannot write to output directory {str(directory)!r}: {err.strerror or err}.") from None
    finally:
        for path in created:  # leave no empty directories behind; the run creates what it needs
            try:
                path.rmdir()
            except OSError:
                pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``autolrs`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    saved_argv = sys.argv
    try:
        args = _expand_demo(args)
        sys.argv = [saved_argv[0] if saved_argv else "autolrs", *args]  # LightningCLI reads sys.argv
        AutoLRSCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=None,
            parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False}},
            save_config_kwargs={"overwrite": True},
        )
    except ArgumentError as err:
        print(f"autolrs: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except (AutoLRSError, FileNotFoundError, PermissionError) as err:
        print(f"autolrs: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except ValueError as err:  # jsonargparse wraps errors raised while instantiating classes (bad init_args)
        cause = _autolrs_cause(err)
        if cause is None:
            raise
        print(f"autolrs: error: {_one_line(str(cause))}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
    return 0


def _autolrs_cause(err: BaseException) -> AutoLRSError | None:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, AutoLRSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _one_line(message: str) -> str:
    """Squeeze jsonargparse's multi-line report into one line: the key, plus its most specific cause."""
    lines = [line.strip().lstrip("- ").strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "invalid arguments"
    head = lines[0]
    if not head.endswith(":") or len(lines) == 1:
        return head
    for i, line in enumerate(lines):
        if "class_path" in line and i + 1 < len(lines):
            return f"{head} {line.rstrip(':')}: {lines[i + 1]}"
    return f"{head} {lines[1]}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
