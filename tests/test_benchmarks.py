"""The benchmark harnesses run end to end in ``--quick`` mode and write the expected tables (not a speed check)."""

from __future__ import annotations

import json
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
    from benchmarks.workloads import METHODS, QUICK_RANGE_TEST_STEPS, WORKLOADS
    from lightning_autolrs.schedule import Schedule

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

    # the before/after section of the search-cost options (issue #5)
    assert "## Before/after: search-cost options, range test, replay (issue #5)" in readme
    header, rows = _table(readme, "| workload | row |")
    assert header == [
        "workload",
        "row",
        "final val loss",
        "search share",
        "trials per run",
        "steps to T1 (speedup vs tuned cosine)",
        "LR range",
        "compute (steps)",
    ]
    assert len(rows) == len(WORKLOADS) * len(quality.BEFORE_AFTER)
    for row, (name, _) in zip(rows, quality.BEFORE_AFTER * len(WORKLOADS)):
        assert row[1].startswith(f"`{name}`")
        assert row[3].endswith(" %")
        if name.startswith("replay"):
            assert row[3] == "0 %" and row[4] == "0" and row[6].startswith("—")
        elif name.endswith("_range"):
            assert row[6].startswith("range test: max_lr ") and f"; {QUICK_RANGE_TEST_STEPS} steps" in row[6]
        else:
            assert row[6].startswith("given ")
    for target in (
        "- search share ≤ 30 % with final val loss no worse than paper settings (median ≤ median) on every "
        "workload, `autolrs_fast`: **",
        "- search share ≤ 30 % with final val loss no worse than paper settings (median ≤ median) on every "
        "workload, `replay`: **",
        "- range test within 5 % of the hand-given range's final val loss (median, `autolrs_fast_range` vs "
        "`autolrs_fast`, lower is fine) on every workload: **",
        "- range test within 5 % of the hand-given range's final val loss (median, `autolrs_paper_range` vs "
        "`autolrs_paper`, lower is fine) on every workload: **",
        "- `replay` ≥ 1.3× speedup vs tuned cosine (median steps to T1) on every workload: **",
        "- `replay_paper` ≥ 1.3× speedup vs tuned cosine (median steps to T1) on every workload: **",
        "- trials saved by warm start (`autolrs_warm` vs `autolrs_reuse`, total trials over the seeds): **",
    ):
        line = next(line for line in readme.splitlines() if line.startswith(target))
        assert line[len(target) :].startswith(("yes**", "no**"))

    # the runs behind the new rows
    runs = tmp_path / "runs" / "diabetes"
    fast = json.loads((runs / "autolrs_fast_s0.json").read_text())
    assert fast["autolrs"]["settings"]["abort_trials"] and fast["autolrs"]["settings"]["warm_start"]
    assert fast["autolrs"]["range_test"] is None and fast["autolrs"]["settings"]["min_lr"] == 1e-5
    assert Schedule.from_dict(fast["autolrs"]["schedule"]).exploit_lrs()
    ranged = json.loads((runs / "autolrs_fast_range_s0.json").read_text())
    assert ranged["autolrs"]["settings"]["min_lr"] is None and ranged["autolrs"]["settings"]["max_lr"] is None
    assert ranged["autolrs"]["range_test"]["steps"] == QUICK_RANGE_TEST_STEPS
    assert ranged["curve"][0][2] == "start" and ranged["lrs"]
    assert quality.search_cost(ranged) == ranged["autolrs"]["search_steps"] + QUICK_RANGE_TEST_STEPS
    for name, source in (("replay", "autolrs_fast"), ("replay_paper", "autolrs_paper")):
        replay = json.loads((runs / f"{name}_s0.json").read_text())
        assert replay["replay_of"] == f"{source}_s0"  # a single seed: its own schedule
        src = json.loads((runs / f"{source}_s0.json").read_text())
        assert replay["schedule_sha256"] == quality.schedule_digest(src["autolrs"]["schedule"])
        assert replay["steps"] == WORKLOADS["diabetes"].quick_budget and "autolrs" not in replay
        assert len(replay["lrs"]) == replay["steps"]
        assert set(replay["lrs"]) <= {float(f"{v:.5g}") for v in src["lrs"]}  # only LRs of the found schedule
    assert "range test included" in (tmp_path / "diabetes.md").read_text()


def test_quality_replay_uses_next_seed_and_runs_after_its_source(tmp_path: Path) -> None:
    from benchmarks import quality

    tasks = quality.plan_tasks(["diabetes"], ["replay"], [0, 1, 2], quick=True, evals=5)
    assert tasks[("diabetes", "replay_s0")]["replay_of"] == "autolrs_fast_s1"
    assert tasks[("diabetes", "replay_s2")]["replay_of"] == "autolrs_fast_s0"
    assert ("diabetes", "autolrs_fast_s1") in tasks  # the source runs are planned though their row is not selected

    # two worker processes: each replay is queued only once its source run has finished
    args = ["--quick", "--out", str(tmp_path), "--workloads", "diabetes", "--methods", "replay", "--seeds", "0", "1"]
    assert quality.main([*args, "--jobs", "2"]) == 0
    runs = tmp_path / "runs" / "diabetes"
    for seed, source_seed in ((0, 1), (1, 0)):
        replay = json.loads((runs / f"replay_s{seed}.json").read_text())
        src = json.loads((runs / f"autolrs_fast_s{source_seed}.json").read_text())
        assert replay["replay_of"] == f"autolrs_fast_s{source_seed}"
        assert replay["schedule_sha256"] == quality.schedule_digest(src["autolrs"]["schedule"])
    _, rows = _table((tmp_path / "diabetes.md").read_text(), "| method |")
    assert [r[0].split(" (")[0] for r in rows] == [
        "cosine + 5% warmup, tuned",
        "ReplaySchedule of `autolrs_fast`'s schedule",
    ]


def test_quality_resume_key_has_the_autolrs_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import quality, workloads

    args = ["--quick", "--out", str(tmp_path), "--workloads", "diabetes", "--methods", "autolrs_abort", "replay"]
    assert quality.main(args) == 0
    runs = tmp_path / "runs" / "diabetes"
    before = {p.name: p.read_text() for p in runs.glob("*.json")}
    assert len(before) == 6  # cosine ×3, autolrs_abort, autolrs_fast (replay's source), replay

    # one variant's settings change: only its run is trained again
    monkeypatch.setitem(
        workloads.AUTOLRS_VARIANTS, "autolrs_abort", {**workloads.AUTOLRS_VARIANTS["autolrs_abort"], "min_trials": 4}
    )
    assert quality.main([*args, "--resume"]) == 0
    after = {p.name: p.read_text() for p in runs.glob("*.json")}
    assert [name for name in before if before[name] != after[name]] == ["autolrs_abort_s0.json"]
    assert json.loads(after["autolrs_abort_s0.json"])["autolrs"]["settings"]["min_trials"] == 4
    assert "1 runs trained in this invocation, 5 reused" in (tmp_path / "diabetes.md").read_text()


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
