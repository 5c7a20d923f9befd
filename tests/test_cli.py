"""The `autolrs` console script and AutoLRS inside a user's own LightningCLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as lpl
import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningCLI
from torch.utils.data import DataLoader, TensorDataset

from lightning_autolrs import AutoLRS, load_schedule
from lightning_autolrs.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def autolrs_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    code = "import sys; from lightning_autolrs.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def test_main_job_prints_the_table_and_writes_the_schedule(tmp_path) -> None:
    proc = autolrs_cli(
        tmp_path,
        "fit",
        "--config",
        str(CONFIGS / "digits.yaml"),
        "--trainer.max_steps=120",
        "--trainer.val_check_interval=60",
        "--trainer.enable_progress_bar=false",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stage  steps" in proc.stdout and "<- chosen" in proc.stdout
    run_dir = tmp_path / "runs" / "digits_autolrs" / "version_0"
    schedule = load_schedule(run_dir / "autolrs_schedule.json")
    assert len(schedule.lrs) == 120 and schedule.stages[0]["trials"]
    assert (run_dir / "autolrs_schedule.png").read_bytes()[:4] == b"\x89PNG"


def test_cosine_baseline_config_runs_without_autolrs_files(tmp_path) -> None:
    proc = autolrs_cli(
        tmp_path,
        "fit",
        "--config",
        str(CONFIGS / "digits_cosine.yaml"),
        "--trainer.max_steps=40",
        "--lr_scheduler.init_args.T_max=40",
        "--trainer.enable_progress_bar=false",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = tmp_path / "runs" / "digits_cosine" / "version_0"
    assert (run_dir / "metrics.csv").exists() and not (run_dir / "autolrs_schedule.json").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["fit", "--config", "missing.yaml"], ["missing.yaml", "does not exist"]),
        (["fit", "--config", str(CONFIGS / "digits.yaml"), "--trainer.bogus=1"], ["unrecognized", "--trainer.bogus"]),
        (["fit", "--model", "nowhere.Model", "--demo", "digits"], ["nowhere.Model"]),
        (["fit", "--demo", "imagenet"], ["unknown demo 'imagenet'", "digits"]),
        (
            ["fit", "--config", str(CONFIGS / "digits.yaml"), "--trainer.default_root_dir=/proc/autolrs"],
            ["cannot write"],
        ),
        (
            [
                "fit",
                "--demo",
                "digits",
                "--trainer.callbacks+=lightning_autolrs.AutoLRS",
                "--trainer.callbacks.min_lr=-1",
            ],
            ["min_lr"],
        ),
    ],
)
def test_bad_input_gives_one_line_and_leaves_nothing(tmp_path, args, words) -> None:
    proc = autolrs_cli(tmp_path, *args)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("autolrs: error:")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no runs/, lightning_logs/ or config files


def test_unknown_demo_in_process(capsys) -> None:
    assert main(["fit", "--demo", "nope"]) == 2
    assert capsys.readouterr().err.strip() == (
        "autolrs: error: `name` must be one of 'charlm', 'digits', got unknown demo 'nope'."
    )


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

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 4, generator=g)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)


def user_cli(tmp_path: Path, *extra: str) -> LightningCLI:
    common = [
        "fit",
        "--trainer.max_steps=60",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    return LightningCLI(UserModel, args=[*common, *extra], save_config_callback=None)


def test_flag_in_a_users_own_lightningcli(tmp_path) -> None:
    cli = user_cli(
        tmp_path,
        "--trainer.callbacks+=lightning_autolrs.AutoLRS",
        "--trainer.callbacks.min_lr=1e-3",
        "--trainer.callbacks.max_lr=0.5",
        "--trainer.callbacks.num_trials=3",
        "--trainer.callbacks.tau=10",
    )
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, AutoLRS)]
    assert (cb.min_lr, cb.max_lr) == (1e-3, 0.5)
    assert cb.history and len(cb.history[0]["trials"]) == 3 and len(cb.lrs) == 60


def test_yaml_class_path_in_a_users_own_lightningcli(tmp_path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "callbacks": [
                        {
                            "class_path": "lightning_autolrs.AutoLRS",
                            "init_args": {"min_lr": 0.002, "max_lr": 0.2, "num_trials": 2},
                        },
                    ]
                }
            }
        )
    )
    cli = user_cli(tmp_path, f"--config={config}")
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, AutoLRS)]
    assert (cb.min_lr, cb.max_lr) == (0.002, 0.2) and cb.history


def test_help_documents_every_constructor_argument(tmp_path) -> None:
    import inspect

    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from lightning_autolrs.cli import main; sys.exit(main())",
            "fit",
            "--trainer.callbacks.help",
            "lightning_autolrs.AutoLRS",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    names = [n for n in inspect.signature(AutoLRS).parameters]
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in names:
        assert f"--trainer.callbacks.{name}" in proc.stdout, name
    assert "lower end of the LR search range" in proc.stdout  # docstrings become help text
