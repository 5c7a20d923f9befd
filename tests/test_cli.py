"""The `autolrs` console script (main job, baselines, `--demo`, bad input) and AutoLRS inside a user's own LightningCLI.

Runs that train use tiny step budgets; the bad-input cases run in forked children of one Python process (one import of
Lightning for all of them), each in its own empty working directory with its stdout/stderr captured at the file
descriptor, so a stray warning or log line would be seen.
"""

from __future__ import annotations

import csv
import importlib.metadata
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import docstring_parser
import lightning.pytorch as lpl
import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningCLI
from torch.utils.data import DataLoader, TensorDataset

from lightning_autolrs import AutoLRS, load_schedule
from lightning_autolrs.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MAIN = "import sys; from lightning_autolrs.cli import main; sys.exit(main())"
QUIET = ["--trainer.enable_progress_bar=false"]


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # warnings would be extra stderr lines
    return {**env, "OMP_NUM_THREADS": "1"}


def start_cli(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", MAIN, *args], cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def run_cli(cwd: Path, *args: str) -> tuple[int, str, str]:
    return finish(start_cli(cwd, *args))


def test_console_script_is_declared() -> None:
    (script,) = [ep for ep in importlib.metadata.entry_points(group="console_scripts") if ep.name == "autolrs"]
    assert script.value == "lightning_autolrs.cli:main"


# ------------------------------------------------------------------------------------------------------ main job


def test_main_job_prints_the_table_and_writes_the_schedule(tmp_path) -> None:
    logs = tmp_path / "logs"
    rc, out, err = run_cli(
        tmp_path,
        "fit",
        "--config",
        str(CONFIGS / "digits.yaml"),
        "--trainer.max_steps=120",
        "--trainer.val_check_interval=60",
        "--trainer.callbacks.tau=20",  # 120 steps are too few for the derived tau's 20-step trials: no search
        f"--trainer.logger.init_args.save_dir={logs}",
        *QUIET,
    )
    assert rc == 0, err[-3000:]
    run_dir = logs / "digits_autolrs" / "version_0"
    schedule = load_schedule(run_dir / "autolrs_schedule.json")
    assert len(schedule.lrs) == 120 and len(schedule.stages) >= 2 and schedule.stages[0]["trials"]
    png = (run_dir / "autolrs_schedule.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert (run_dir / "config.yaml").exists() and (run_dir / "metrics.csv").exists()

    # the table: a header, one row per trial, the chosen LR of every stage that searched
    assert re.search(r"stage\s+steps\s+tau\s+tau'\s+trial\s+lr\s+forecast\s+train loss", out), out
    searched = [s for s in schedule.stages if s["trials"]]
    assert out.count("<- chosen") == len(searched)
    for stage in searched:
        assert re.search(rf"^\s+{stage['stage']}\s+{stage['start_step']}-\d+", out, re.M), out
        assert f"{stage['best_lr']:.2e}  " in out
    trial_row = re.compile(r"^\s+(\d+\s+\d+-\d+\s+\d+\s+\d+\s+)?\d+\s+\d\.\d\de[-+]\d\d\s")
    rows = [line for line in out.splitlines() if trial_row.match(line)]
    assert len(rows) == sum(len(s["trials"]) for s in searched)
    assert "final (120 steps):" in out and "val_loss=" in out and f"log dir: {run_dir}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]  # nothing in the working directory


def lr_column(metrics: Path, column: str) -> list[float]:
    with metrics.open() as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


def test_cosine_baseline_decays_every_step_and_writes_no_schedule(tmp_path) -> None:
    rc, out, err = run_cli(
        tmp_path,
        "fit",
        "--config",
        str(CONFIGS / "digits_cosine.yaml"),
        "--trainer.max_steps=60",
        "--lr_scheduler.init_args.T_max=60",
        "--trainer.log_every_n_steps=5",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        *QUIET,
    )
    assert rc == 0, err[-3000:]
    run_dir = tmp_path / "logs" / "digits_cosine" / "version_0"
    assert not (run_dir / "autolrs_schedule.json").exists() and not (run_dir / "autolrs_schedule.png").exists()
    lrs = lr_column(run_dir / "metrics.csv", "lr-SGD")
    # the module's own SGD (lr 0.05) under a per-step cosine: decays over the run, not per epoch
    assert lrs[0] == pytest.approx(0.05, rel=0.05) and lrs[-1] < 0.002 and lrs == sorted(lrs, reverse=True)
    assert "stage  steps" not in out and "final (60 steps):" in out


def test_charlm_configs_run(tmp_path) -> None:
    small = [
        "--torch_num_threads=1",
        "--trainer.max_steps=40",
        "--trainer.val_check_interval=40",
        "--trainer.limit_val_batches=2",
        "--data.init_args.max_chars=60000",
        "--trainer.log_every_n_steps=1",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        *QUIET,
    ]
    autolrs = start_cli(tmp_path, "fit", "--config", str(CONFIGS / "charlm.yaml"), *small, "--trainer.callbacks.tau=10")
    cosine = start_cli(
        tmp_path, "fit", "--config", str(CONFIGS / "charlm_cosine.yaml"), *small, "--lr_scheduler.init_args.T_max=40"
    )
    (rc_a, out_a, err_a), (rc_c, out_c, err_c) = finish(autolrs), finish(cosine)
    assert rc_a == 0, err_a[-3000:]
    assert rc_c == 0, err_c[-3000:]
    assert "<- chosen" in out_a and "final (40 steps):" in out_c
    assert load_schedule(tmp_path / "logs" / "charlm_autolrs" / "version_0" / "autolrs_schedule.json").stages
    lrs = lr_column(tmp_path / "logs" / "charlm_cosine" / "version_0" / "metrics.csv", "lr-AdamW/pg1")
    # lr_scheduler without optimizer: the module's own AdamW (two weight-decay groups, lr 3e-3), decayed by cosine
    assert len(lrs) == 40 and lrs[0] == pytest.approx(3e-3, rel=0.01) and lrs[-1] < 1e-5
    assert lrs == lr_column(tmp_path / "logs" / "charlm_cosine" / "version_0" / "metrics.csv", "lr-AdamW/pg2")


def test_demo_shortcut_in_process(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "fit",
            "--demo",
            "digits",
            "--trainer.max_steps=40",
            "--trainer.limit_val_batches=1",
            "--trainer.callbacks+=lightning_autolrs.AutoLRS",
            "--trainer.callbacks.num_trials=2",
            "--trainer.callbacks.tau=10",
            "--trainer.callbacks.verbose=false",
            f"--trainer.default_root_dir={tmp_path / 'root'}",
            *QUIET,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "<- chosen" in out and "final (40 steps):" in out
    run_dir = tmp_path / "root" / "lightning_logs" / "version_0"
    assert (run_dir / "autolrs_schedule.json").exists() and (run_dir / "autolrs_schedule.png").exists()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["class_path"] == "lightning_autolrs.demos.digits.DigitsCNN"
    assert config["data"]["class_path"] == "lightning_autolrs.demos.digits.DigitsDataModule"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


# ----------------------------------------------------------------------------------------------------- bad input

DRIVER = r"""
import contextlib, io, json, os, sys
import lightning.pytorch  # noqa: F401  (imported once; every case runs in a fork of this process)
from lightning_autolrs.cli import main

cases, root = json.loads(sys.argv[1]), sys.argv[2]
results = {}
for name, args in cases.items():
    cwd = os.path.join(root, name)
    os.makedirs(cwd)
    pid = os.fork()
    if pid == 0:
        os.chdir(cwd)
        out = os.open(os.path.join(root, name + ".out"), os.O_WRONLY | os.O_CREAT)
        err = os.open(os.path.join(root, name + ".err"), os.O_WRONLY | os.O_CREAT)
        os.dup2(out, 1)
        os.dup2(err, 2)
        code = 1
        try:
            code = main(args)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    read = lambda ext: open(os.path.join(root, name + ext)).read()
    left = sorted(os.path.relpath(os.path.join(d, f), cwd) for d, ds, fs in os.walk(cwd) for f in ds + fs)
    results[name] = {"rc": os.waitstatus_to_exitcode(status), "out": read(".out"), "err": read(".err"), "left": left}
print(json.dumps(results))
"""


def bad_input_cases(files: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (argv, words the one error line must contain)."""
    digits = str(CONFIGS / "digits.yaml")
    (files / "malformed.yaml").write_text("trainer:\n  max_steps: [10\n")
    (files / "unknown_top.yaml").write_text(
        "foo: 1\nmodel:\n  class_path: lightning_autolrs.demos.DigitsCNN\n"
        "data:\n  class_path: lightning_autolrs.demos.DigitsDataModule\n"
    )
    (files / "unknown_init_arg.yaml").write_text(
        "model:\n  class_path: lightning_autolrs.demos.DigitsCNN\n  init_args:\n    lrr: 0.1\n"
        "data:\n  class_path: lightning_autolrs.demos.DigitsDataModule\n"
    )
    (files / "bad_class.yaml").write_text(
        "model:\n  class_path: nowhere.Model\ndata:\n  class_path: lightning_autolrs.demos.DigitsDataModule\n"
    )
    (files / "a_file").write_text("")
    callback = ["--trainer.callbacks+=lightning_autolrs.AutoLRS"]
    return {
        "missing_config": (["fit", "--config", "missing.yaml"], ["config file 'missing.yaml' does not exist"]),
        "config_is_a_directory": (["fit", "--config", str(files)], ["is not a file"]),
        "malformed_config": (
            ["fit", "--config", str(files / "malformed.yaml")],
            ["malformed.yaml", "not valid YAML", "line 3"],
        ),
        "unknown_flag": (
            ["fit", "--config", digits, "--trainer.bogus=1"],
            ["unrecognized arguments", "--trainer.bogus"],
        ),
        "unknown_top_level_key": (["fit", "--config", str(files / "unknown_top.yaml")], ["does not accept", "'foo'"]),
        "unknown_init_arg": (
            ["fit", "--config", str(files / "unknown_init_arg.yaml")],
            ["model:", "'lrr'", "not accepted"],
        ),
        "unknown_callback_arg": (
            ["fit", "--config", digits, "--trainer.callbacks.bogus=1"],
            ["lightning_autolrs.AutoLRS", "'bogus'", "not accepted"],
        ),
        "wrong_model_class_path": (
            ["fit", "--config", str(files / "bad_class.yaml")],
            ["model:", "'nowhere.Model'", "No module named 'nowhere'"],
        ),
        "wrong_model_flag": (["fit", "--model", "nowhere.Model", "--demo", "digits"], ["'nowhere.Model'"]),
        "wrong_callback_class_path": (
            ["fit", "--demo", "digits", "--trainer.callbacks+=lightning_autolrs.AutoLRZ"],
            ["trainer.callbacks:", "'lightning_autolrs.AutoLRZ'", "no attribute 'AutoLRZ'"],
        ),
        "unknown_demo": (["fit", "--demo", "imagenet"], ["unknown demo 'imagenet'", "charlm, digits"]),
        "demo_without_name": (["fit", "--demo"], ["`--demo` needs a name"]),
        "unwritable_root_dir": (
            ["fit", "--config", digits, f"--trainer.default_root_dir={files / 'a_file' / 'out'}"],
            ["cannot write to output directory", "a_file", "trainer.default_root_dir"],
        ),
        "unwritable_log_dir": (
            ["fit", "--config", digits, f"--trainer.logger.init_args.save_dir={files / 'a_file'}"],
            ["cannot write to output directory", "a_file", "trainer.logger.init_args.save_dir"],
        ),
        "invalid_callback_value": (
            ["fit", "--demo", "digits", *callback, "--trainer.callbacks.min_lr=-1"],
            ["`min_lr`"],
        ),
        "wrongly_typed_value": (
            ["fit", "--demo", "digits", *callback, "--trainer.callbacks.num_trials=many"],
            ["num_trials", "many"],
        ),
        "invalid_demo_value": (["fit", "--demo", "digits", "--data.init_args.batch_size=0"], ["`batch_size`"]),
        "unknown_subcommand": (["train", "--demo", "digits"], ["invalid choice: 'train'"]),
        "autolrs_with_a_scheduler": (
            ["fit", "--config", str(CONFIGS / "digits_cosine.yaml"), *callback, "--trainer.max_steps=5", *QUIET],
            ["LR scheduler", "CosineAnnealingLR", "`lr_scheduler:`"],
        ),
    }


# refused when `fit` starts, after Lightning's usual start-up lines; every other case is refused before any output
FIT_TIME = {"autolrs_with_a_scheduler"}


HELP_CASES = {
    "class_help": ["fit", "--trainer.callbacks.help", "lightning_autolrs.AutoLRS"],
    "fit_help": ["fit", "--help"],
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory) -> dict[str, dict]:
    files = tmp_path_factory.mktemp("inputs")
    runs = tmp_path_factory.mktemp("runs")
    cases = {name: argv for name, (argv, _) in bad_input_cases(files).items()}
    cases.update(HELP_CASES)
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cases), str(runs)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


BAD_INPUT_NAMES = [
    "missing_config",
    "config_is_a_directory",
    "malformed_config",
    "unknown_flag",
    "unknown_top_level_key",
    "unknown_init_arg",
    "unknown_callback_arg",
    "wrong_model_class_path",
    "wrong_model_flag",
    "wrong_callback_class_path",
    "unknown_demo",
    "demo_without_name",
    "unwritable_root_dir",
    "unwritable_log_dir",
    "invalid_callback_value",
    "wrongly_typed_value",
    "invalid_demo_value",
    "unknown_subcommand",
    "autolrs_with_a_scheduler",
]


@pytest.mark.parametrize("name", BAD_INPUT_NAMES)
def test_bad_input_gives_one_line_and_leaves_nothing(name, cli_results, tmp_path) -> None:
    words = bad_input_cases(tmp_path)[name][1]
    result = cli_results[name]
    assert result["rc"] == 2, result["err"][-3000:]
    lines = result["err"].splitlines()
    errors = [line for line in lines if line.startswith("autolrs: error: ")]
    assert len(errors) == 1, result["err"][-3000:]
    if name not in FIT_TIME:
        assert lines == errors, result["err"][-3000:]  # the error is the only line on stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert result["out"] == ""
    assert result["left"] == []  # no runs/, lightning_logs/, config.yaml or probe files left behind


def test_every_bad_input_case_is_checked(tmp_path) -> None:
    assert sorted(BAD_INPUT_NAMES) == sorted(bad_input_cases(tmp_path))


# -------------------------------------------------------------------------------------------------------- --help


def help_text(result: dict) -> str:
    assert result["rc"] == 0 and result["err"] == "" and result["left"] == [], result["err"][-3000:]
    return " ".join(result["out"].split())  # argparse wraps the help text


def test_class_help_lists_every_argument_with_type_and_doc(cli_results) -> None:
    autolrs_help = help_text(cli_results["class_help"])
    docs = {p.arg_name: p.description for p in docstring_parser.parse(AutoLRS.__doc__).params}
    for name, param in inspect.signature(AutoLRS).parameters.items():
        assert param.annotation is not inspect.Parameter.empty, f"{name} has no type"
        assert docs.get(name), f"{name} is not documented"
        assert f"--trainer.callbacks.{name} " in autolrs_help, name
        first_words = " ".join(docs[name].split()[:6])
        assert first_words in autolrs_help, (name, first_words)
    assert "lower end of the LR search range" in autolrs_help


def test_fit_help_mentions_the_cli_additions(cli_results) -> None:
    text = help_text(cli_results["fit_help"])
    assert "--demo NAME" in text and "--torch_num_threads" in text and "--trainer.callbacks" in text
    options = [line.split()[0] for line in cli_results["fit_help"]["out"].splitlines() if line.startswith("  -")]
    assert "--demo" in options  # in the option list, not only in the description


def test_demo_runs_autolrs_with_the_demo_configs_arguments(tmp_path, monkeypatch) -> None:
    from lightning_autolrs.demos import DEMO_AUTOLRS, DEMO_THREADS

    root = Path(__file__).resolve().parents[1]
    for name, args in DEMO_AUTOLRS.items():  # the shortcut's AutoLRS is the one of configs/NAME.yaml
        config = yaml.safe_load((root / "configs" / f"{name}.yaml").read_text())
        (callback,) = config["trainer"]["callbacks"]
        assert callback == {"class_path": "lightning_autolrs.AutoLRS", "init_args": args}
        assert config["torch_num_threads"] == DEMO_THREADS[name]  # and its thread count
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "--demo", "digits", "--trainer.max_steps=30", "--trainer.limit_val_batches=1", *QUIET]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        root = f"--trainer.default_root_dir={tmp_path / 'root'}"
        assert main([*argv, root, "--trainer.callbacks.verbose=false"]) == 0
        assert torch.get_num_threads() == 1  # the digits config's one thread, as `--config configs/digits.yaml` sets
        torch.set_num_threads(2)
        two = ["fit", "--torch_num_threads", "2", *argv[1:], f"--trainer.default_root_dir={tmp_path / 'two'}"]
        assert main(two) == 0  # (given before `--demo`, which would otherwise come later and win)
        assert torch.get_num_threads() == 2  # the command line's own wins
    finally:
        torch.set_num_threads(threads)
    run_dir = tmp_path / "root" / "lightning_logs" / "version_0"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    (callback,) = config["trainer"]["callbacks"]
    assert callback["class_path"] == "lightning_autolrs.AutoLRS"
    assert {k: callback["init_args"][k] for k in DEMO_AUTOLRS["digits"]} == DEMO_AUTOLRS["digits"]
    schedule = json.loads((run_dir / "autolrs_schedule.json").read_text())
    assert len(schedule["lrs"]) == 30  # AutoLRS drove every step


# ------------------------------------------------------------------------------------- a user's own LightningCLI


class UserModel(lpl.LightningModule):
    """A module of the user's own, unknown to the package."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class UserData(lpl.LightningDataModule):
    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 4, generator=g)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=self.batch_size)


def user_cli(tmp_path: Path, monkeypatch, *extra: str) -> LightningCLI:
    monkeypatch.setattr(sys, "argv", ["train.py"])  # only `args=` is parsed
    common = [
        "fit",
        "--trainer.max_steps=60",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    return LightningCLI(UserModel, UserData, args=[*common, *extra], run=True, save_config_callback=None)


def the_autolrs(cli: LightningCLI) -> AutoLRS:
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, AutoLRS)]
    return cb


def test_flag_in_a_users_own_lightningcli(tmp_path, monkeypatch) -> None:
    cli = user_cli(
        tmp_path,
        monkeypatch,
        "--trainer.callbacks+=lightning_autolrs.AutoLRS",
        "--trainer.callbacks.min_lr=1e-3",
        "--trainer.callbacks.max_lr=0.5",
        "--trainer.callbacks.num_trials=3",
        "--trainer.callbacks.tau=10",
        "--trainer.callbacks.verbose=false",
    )
    cb = the_autolrs(cli)
    assert (cb.min_lr, cb.max_lr) == (1e-3, 0.5)
    assert cb.history and len(cb.history[0]["trials"]) == 3 and len(cb.lrs) == cli.trainer.global_step == 60
    assert all(1e-3 <= t["lr"] <= 0.5 for stage in cb.history for t in stage["trials"])


def test_yaml_class_path_in_a_users_own_lightningcli(tmp_path, monkeypatch) -> None:
    config = tmp_path / "config.yaml"
    init_args = {"min_lr": 0.002, "max_lr": 0.2, "num_trials": 2, "tau": 10, "verbose": False}
    callbacks = [{"class_path": "lightning_autolrs.AutoLRS", "init_args": init_args}]
    config.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    cli = user_cli(tmp_path, monkeypatch, f"--config={config}")
    cb = the_autolrs(cli)
    assert (cb.min_lr, cb.max_lr) == (0.002, 0.2) and cb.history and len(cb.history[0]["trials"]) == 2
