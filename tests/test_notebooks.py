"""The notebooks are stored without outputs and run top to bottom (with a small step budget), drawing their plots.

Both notebooks execute concurrently (one kernel each, one torch thread each) with ``AUTOLRS_NOTEBOOK_STEPS`` set,
which their first code cell reads (the full-size default is for people running them by hand).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["quickstart", "compare_schedules"]
STEPS = "575"  # the smallest budget (min_lr/max_lr given) whose derived tau allows a search


def test_both_notebooks_exist() -> None:
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.get("outputs") == [] and cell.get("execution_count") is None, cell.source[:80]
    assert "AUTOLRS_NOTEBOOK_STEPS" in code[0].source  # the small-step parameter, read in the first code cell


def ensure_python3_kernel() -> None:
    """Register ipykernel as ``python3`` for this user, only if no such kernel can be found."""
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        subprocess.run(
            [sys.executable, "-m", "ipykernel", "install", "--user", "--name", "python3"], check=True, timeout=120
        )


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, tuple[nbformat.NotebookNode, Path]]:
    ensure_python3_kernel()
    runs = {
        name: (nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4), tmp_path_factory.mktemp(name))
        for name in NAMES
    }
    clients = [
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
        for nb, cwd in runs.values()
    ]

    async def run_all() -> None:
        await asyncio.gather(*(client.async_execute() for client in clients))

    with pytest.MonkeyPatch.context() as mp:  # the kernels inherit this environment
        mp.setenv("AUTOLRS_NOTEBOOK_STEPS", STEPS)
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("PYTHONWARNINGS", "ignore")
        asyncio.run(run_all())
    return runs


def outputs_of(nb: nbformat.NotebookNode, needle: str) -> list:
    cells = [cell for cell in nb.cells if cell.cell_type == "code" and needle in cell.source]
    assert cells, needle
    return [out for cell in cells for out in cell.outputs]


def text_of(outputs: list) -> str:
    return "".join(out.get("text", "") + out.get("data", {}).get("text/plain", "") for out in outputs)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_without_errors_and_leaves_nothing(name: str, executed) -> None:
    nb, cwd = executed[name]
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert all(cell.execution_count for cell in nb.cells if cell.cell_type == "code")
    assert sorted(p.name for p in cwd.iterdir()) == []  # no logs, checkpoints or schedule files left behind


def test_quickstart_prints_the_table_and_shows_the_schedule_plot(executed) -> None:
    nb, _ = executed["quickstart"]
    assert "steps: 575" in text_of(outputs_of(nb, "trainer.fit("))
    assert "<- chosen" in text_of(outputs_of(nb, "summary_table("))
    assert any("image/png" in out.get("data", {}) for out in outputs_of(nb, "plot_schedule("))


def test_compare_schedules_reports_three_methods_and_plots_their_curves(executed) -> None:
    nb, _ = executed["compare_schedules"]
    report = text_of(outputs_of(nb, "curves = {"))
    assert report.count("final val loss") == 3
    assert "constant" in report and "cosine, tuned" in report and "AutoLRS" in report
    assert any("image/png" in out.get("data", {}) for out in outputs_of(nb, "ax.legend("))
