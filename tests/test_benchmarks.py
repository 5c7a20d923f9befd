"""The benchmark harnesses run end to end in ``--quick`` mode and write the expected tables (not a speed check)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning")


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    """The harnesses run in this process: give back the thread count, logger levels and RNG state they change."""
    threads = torch.get_num_threads()
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_num_threads(threads)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _quick_outputs_in_results() -> list[str]:
    """Files under benchmarks/results that a ``--quick`` run wrote (a full run may be writing there meanwhile)."""
    if not RESULTS.is_dir():
        return []
    found = []
    for path in RESULTS.rglob("*"):
        if path.suffix == ".md" and "--quick" in path.read_text():
            found.append(str(path))
        elif path.suffix == ".json" and '"quick": true' in path.read_text():
            found.append(str(path))
    return found


def _table(text: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the first markdown table whose header row starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return header, rows


def test_quality_quick(tmp_path: Path) -> None:
    from benchmarks import quality
    from benchmarks.workloads import METHODS, WORKLOADS

    assert quality.main(["--quick", "--out", str(tmp_path)]) == 0
    assert not _quick_outputs_in_results(), "--quick must not write into benchmarks/results"

    for name in WORKLOADS:
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
        text = (tmp_path / f"{name}.md").read_text()
        assert text.startswith(f"# Quality: {WORKLOADS[name].title}")
        assert "Command: `python -m benchmarks.quality --quick --out " in text
        header, rows = _table(text, "| method |")
        assert header == [
            "method",
            "LR",
            "final val loss",
            "best val loss",
            "steps to T1",
            "speedup T1",
            "steps to T2",
            "speedup T2",
            "compute: runs, optimizer steps",
            "train wall s",
        ]
        assert len(rows) == len(METHODS)
        for row, method in zip(rows, METHODS.values()):
            assert row[0].startswith(method.label)
            assert all(cells for cells in row)
        cosine = rows[list(METHODS).index("cosine")]
        assert 0 < int(cosine[4]) <= WORKLOADS[name].quick_budget  # the reference reaches its own final loss
        assert cosine[5] == "1.00×"
        assert cosine[8].startswith("3, ")  # quick grid: 3 LRs
        assert re.search(r"\bseed 0: stage LRs ", text)
        runs = list((tmp_path / "runs" / name).glob("*.json"))
        assert len(runs) >= 15

    readme = (tmp_path / "README_table.md").read_text()
    header, rows = _table(readme, "| workload |")
    assert header[:3] == ["workload", "method", "final val loss"]
    assert len(rows) == len(WORKLOADS) * len(METHODS)
    assert {r[0] for r in rows} == set(WORKLOADS)


def test_quality_resume_reuses_runs(tmp_path: Path) -> None:
    from benchmarks import quality

    args = ["--quick", "--out", str(tmp_path), "--workloads", "diabetes", "--methods", "cosine", "prodigy"]
    assert quality.main(args) == 0
    first = {p.name: p.read_text() for p in (tmp_path / "runs" / "diabetes").glob("*.json")}
    assert quality.main([*args, "--resume"]) == 0
    assert {p.name: p.read_text() for p in (tmp_path / "runs" / "diabetes").glob("*.json")} == first
    assert "0 runs trained in this invocation, 4 reused" in (tmp_path / "diabetes.md").read_text()


def test_overhead_quick(tmp_path: Path) -> None:
    from benchmarks import overhead

    assert overhead.main(["--quick", "--out", str(tmp_path)]) == 0
    assert not _quick_outputs_in_results(), "--quick must not write into benchmarks/results"
    text = (tmp_path / "overhead.md").read_text()
    assert "Command: `python -m benchmarks.overhead --quick --out " in text
    for section in ("## 1. Per-trial decision time", "## 2. Forecast fit time", "## 3. Snapshot", "## 4. Whole-run"):
        assert section in text

    header, rows = _table(text, "| observations |")
    assert header[2].startswith("scikit-optimize")
    assert [r[0] for r in rows] == ["1", "2", "5"]
    header, rows = _table(text, "| points |")
    assert [r[0] for r in rows] == ["100", "800"]
    header, rows = _table(text, "| model |")
    assert "(a) torch.save + load ms" in header and "ratio vs (b)" in header
    assert rows[0][0] == "1.0M params" and rows[0][-1] == "none (same data_ptr)"
    header, rows = _table(text, "| workload |")
    assert rows[0][0] == "digits" and rows[0][1] == "40"
    assert "No GPU in this session" in text or "CUDA device" in text
