"""The benchmark harnesses run end to end in ``--quick`` mode and write the expected tables (not a speed check)."""

from __future__ import annotations

import json
import logging
import math
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
    from benchmarks.workloads import (
        DEFAULT_METHODS,
        METHODS,
        PINNED_COMMITS,
        QUICK_RANGE_TEST_STEPS,
        WORKLOADS,
        cpu_model,
    )

    assert quality.main(["--quick", "--out", str(tmp_path)]) == 0
    assert not _quick_outputs_in_results(), "--quick must not write into benchmarks/results"
    rows_run = [m for m in DEFAULT_METHODS if m not in PINNED_COMMITS]  # other versions' rows are not trained here

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
        assert len(rows) == len(rows_run)
        for row, method in zip(rows, (METHODS[m] for m in rows_run)):
            assert row[0].startswith(method.label)
            assert all(cells for cells in row)
        cosine = rows[rows_run.index("cosine")]
        assert 0 < int(cosine[4]) <= WORKLOADS[name].quick_budget  # the reference reaches its own final loss
        assert cosine[5] == "1.00×"
        assert cosine[8].startswith("3, ")  # quick grid: 3 LRs
        configured = rows[rows_run.index("cosine_configured")]
        assert float(configured[1]) == WORKLOADS[name].lr_grid(True)[1]  # the module's LR: the grid's middle
        assert re.search(r"\bseed 0: stage LRs ", text)
        run = json.loads(next((tmp_path / "runs" / name).glob("cosine_*.json")).read_text())
        assert run["versions"]["cpu"] == cpu_model() and f"trained on {cpu_model()} (" in text

    readme = (tmp_path / "README_table.md").read_text()
    header, rows = _table(readme, "| workload |")
    assert header[:3] == ["workload", "method", "final val loss"]
    assert len(rows) == len(WORKLOADS) * len(rows_run)
    assert {r[0] for r in rows} == set(WORKLOADS)

    # the before/after section and the goals of issue #12
    assert "## Before/after: `AutoLRS()` at its defaults, no LR range given (issue #12)" in readme
    header, rows = _table(readme, "| workload | row |")
    assert header[:3] == ["workload", "row", "final val loss"] and header[-3:] == [
        "steps to T1 (speedup vs tuned cosine)",
        "search share",
        "collapsed runs",
    ]
    assert "vs cosine at the module's LR" in header and "vs Prodigy" in header
    # the pinned rows are not trained here
    compared = [f"`{name}`" for name, _ in quality.BEFORE_AFTER if name in rows_run]
    assert compared[-1] == "`autolrs`" and [r[1].split(" ")[0] for r in rows] == compared * len(WORKLOADS)
    assert all(r[-2].endswith(" %") and re.match(r"\d+/1", r[-1]) for r in rows)
    for goal in (
        "- final val loss at or below cosine at the module's LR, every workload: **",
        "- final val loss at or below constant module LR, every workload: **",
        "- reaches tuned cosine's final val loss (T1), every workload (median of the seeds): **",
        "- reaches T1 in ≤ 1/1.3 of tuned cosine's steps (search counted): **",
        "- on 1/1.3 of the budget (`autolrs_short`), ends at or below T1, every workload (medians): **",
        "- ahead of schedule-free at its defaults (median final val loss): **",
        "- ahead of Prodigy at its defaults (median final val loss): **",
        "- no collapsed run: **",
        "- search share ≤ 30 % (every run): **",
    ):
        line = next(line for line in readme.splitlines() if line.startswith(goal))
        assert line[len(goal) :].startswith(("yes**", "no**"))

    # the speedup row: AutoLRS's defaults on 1/1.3 of the budget, evaluated at its own last step
    short = json.loads((tmp_path / "runs" / "friedman" / "autolrs_short_s0.json").read_text())
    assert short["budget"] == short["steps"] == round(WORKLOADS["friedman"].quick_budget / 1.3) == 23
    assert short["curve"][-1][0] == 23 and short["final_loss"] == short["curve"][-1][1]
    assert (
        short["autolrs_args"]
        == json.loads((tmp_path / "runs" / "friedman" / "autolrs_s0.json").read_text())["autolrs_args"]
    )  # the same callback: only the Trainer's max_steps differs
    assert short["autolrs"]["schedule"]["settings"]["total_steps"] == 23  # ... which it planned its stages for
    cosine_finals = [json.loads(p.read_text())["final_loss"] for p in (tmp_path / "runs" / "friedman").glob("cosine_*")]
    line = next(line for line in readme.splitlines() if "(`autolrs_short`), ends at or below T1" in line)
    found = re.search(r"friedman (\S+) vs (\S+) in 23 steps ([✓✗])", line)
    assert found, line
    t1 = min(cosine_finals)  # one seed: tuned cosine's final loss is the grid's lowest
    assert float(found[1]) == pytest.approx(short["final_loss"], rel=1e-3)
    assert float(found[2]) == pytest.approx(t1, rel=1e-3)
    assert found[3] == ("✓" if short["final_loss"] <= t1 else "✗")
    # the AutoLRS runs: no LR range given (the range test finds it), the validation data given, a search
    run = json.loads((tmp_path / "runs" / "friedman" / "autolrs_s0.json").read_text())
    info = run["autolrs"]
    assert info["settings"]["min_lr"] is None and info["settings"]["max_lr"] is None
    assert info["range_test"]["steps"] == QUICK_RANGE_TEST_STEPS
    assert info["stages"] and info["stages"][0]["trials"] >= 2
    assert quality.search_cost(run) == info["search_steps"] + QUICK_RANGE_TEST_STEPS
    assert run["versions"]["package"]


def test_held_out_workloads_train_on_data_and_set_ups_the_tuned_workloads_do_not_have() -> None:
    from benchmarks.workloads import GRU_FILES, HELD_OUT, WORKLOADS, mean_loss
    from lightning_autolrs.demos.charlm import STDLIB_FILES

    assert HELD_OUT <= set(WORKLOADS) and len(HELD_OUT) == 3
    assert not set(GRU_FILES) & set(STDLIB_FILES)  # the GRU reads other sources than the char-level Transformer
    tuned = [w for name, w in WORKLOADS.items() if name not in HELD_OUT]
    for name in sorted(HELD_OUT):
        w = WORKLOADS[name]
        assert w.title.startswith("held out: ") and w.budget >= 3000
        module_cls, kwargs, dm = w.build(0, False)
        assert module_cls not in {t.build(0, True)[0] for t in tuned}  # a model no default was measured on
        module = module_cls(**kwargs)
        opt = module.configure_optimizers()
        assert opt.param_groups[0]["lr"] == w.lr  # the module's own LR is the grid's middle
        dm.setup()
        val = w.val_batches(dm)
        train = next(iter(dm.train_dataloader()))
        with torch.no_grad():
            loss = mean_loss(w.loss_sum, module, val)
        count = sum(b[1].numel() for b in val)
        assert math.isfinite(loss)
        assert count == sum(b[1].numel() for b in dm.val_dataloader())  # the whole validation set is evaluated
        assert train[0].shape[0] == dm.batch_size
        # the training batches are reshuffled by the seed, the validation set is not
        assert not torch.equal(next(iter(w.build(1, False)[2].train_dataloader()))[1], train[1])
        assert torch.equal(w.val_batches(w.build(1, False)[2])[0][1], val[0][1])


def test_the_one_pass_language_model_sees_no_training_window_twice_within_its_budget() -> None:
    """``charlm_stream``: an epoch is every non-overlapping window of the training text once, in an order the seed
    reshuffles, and longer than the run's budget; validation text from the same files, disjoint from training, the
    same for every seed; the char LM's model."""
    from benchmarks.workloads import WORKLOADS

    w = WORKLOADS["charlm_stream"]
    module_cls, kwargs, dm = w.build(0, False)
    loader = dm.train_dataloader()
    assert len(loader) >= w.budget  # one pass is longer than the run
    x, y = loader.dataset.tensors
    t = dm.block_size
    n = (len(dm.train_data) - 1) // t
    windows = dm.train_data[: n * t].view(n, t)
    assert sorted(bytes(r) for r in x.to(torch.uint8).numpy()) == sorted(
        bytes(r) for r in windows.to(torch.uint8).numpy()
    )
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert len(dm.val_data) == 32 * 1024 and 3.8e6 < len(dm.train_data) + len(dm.val_data) <= dm.max_chars
    other = w.build(1, False)[2]
    assert not torch.equal(other.train_dataloader().dataset.tensors[0][:32], x[:32])
    assert torch.equal(w.val_batches(other)[0][1], w.val_batches(dm)[0][1])
    assert module_cls is WORKLOADS["charlm"].build(0, False)[0] and kwargs == WORKLOADS["charlm"].build(0, False)[1]


def test_the_wsd_baselines_hold_the_lr_then_decay_over_autolrs_s_anneal_share() -> None:
    """The warmup-stable-decay rows: the quality benchmark's 5 % warmup, the LR held, then a decay to 0 over the share
    of AutoLRS's default final anneal: a half cosine (``wsd``), or AutoLRS's own anneal (``wsd_sqrt``: the shape of an
    AutoLRS run that keeps the module's LR, without its search; the same LRs as its controller's anneal)."""
    from benchmarks.workloads import _warmup_stable_decay, wsd_decay_fraction
    from lightning_autolrs import AutoLRS
    from lightning_autolrs.exploit import FinalAnneal

    assert wsd_decay_fraction() == AutoLRS()._settings.anneal_ratio == 0.2
    f, g = _warmup_stable_decay(1000), _warmup_stable_decay(1000, "sqrt")
    for h in (f, g):
        assert [h(0), h(49)] == [pytest.approx(1 / 50), 1.0]  # 5 % warmup
        assert h(50) == h(799) == 1.0  # held up to the decay
        assert h(800) == 1.0 and all(h(s) > h(s + 1) for s in range(800, 999))
    assert f(900) == pytest.approx(0.5) and f(999) == pytest.approx(0.0, abs=1e-3)
    anneal = FinalAnneal(200, total_steps=1000)
    anneal.begin(800, lr=1.0)
    assert [g(s) for s in range(800, 1000)] == pytest.approx([anneal.lr_at(s, min_lr=0.0) for s in range(800, 1000)])
    assert g(850) == pytest.approx(0.5)


def test_runs_name_the_cpus_that_trained_them() -> None:
    from benchmarks.workloads import runs_by_cpu

    runs = [{"versions": {"cpu": "AMD EPYC"}}, {"versions": {"cpu": "AMD EPYC"}}, {"versions": {"torch": "2"}}]
    assert runs_by_cpu(runs) == "AMD EPYC (2), unrecorded (1)"


def test_collapse_rule() -> None:
    from benchmarks.quality import collapsed

    def run(curve: list[float], stage1: int) -> dict:
        points = [[10 * i, v, "x"] for i, v in enumerate(curve)]
        return {"curve": points, "final_loss": curve[-1], "autolrs": {"stages": [{}, {"start_step": stage1}]}}

    assert collapsed(run([2.3, 1.0, 0.5, 0.4], stage1=15)) is None
    assert "step-0 loss" in (collapsed(run([2.3, 1.0, 0.5, 2.31], stage1=15)) or "")
    assert "end of stage 0" in (collapsed(run([2.3, 1.0, 0.5, 1.2], stage1=15)) or "")  # above 1.0 at step 10
    assert collapsed({"curve": [[0, 1.0, "x"]], "final_loss": None}) == "diverged"


def test_the_before_row_is_only_reloaded(tmp_path: Path) -> None:
    from benchmarks import workloads

    task = {
        "workload": "friedman",
        "kind": "autolrs_before",
        "lr": None,
        "seed": 0,
        "quick": True,
        "evals": 5,
        "autolrs_args": workloads.autolrs_kwargs("autolrs_before", workloads.WORKLOADS["friedman"], 0, True),
    }
    assert task["autolrs_args"]["commit"] == workloads.BEFORE_COMMIT
    with pytest.raises(RuntimeError, match=f"commit {workloads.BEFORE_COMMIT}; the package differs"):
        workloads.run_one(task)


def test_quality_replay_uses_next_seed_and_runs_after_its_source(tmp_path: Path) -> None:
    from benchmarks import quality

    tasks = quality.plan_tasks(["friedman"], ["replay"], [0, 1, 2], quick=True, evals=5)
    assert tasks[("friedman", "replay_s0")]["replay_of"] == "autolrs_s1"
    assert tasks[("friedman", "replay_s2")]["replay_of"] == "autolrs_s0"
    assert ("friedman", "autolrs_s1") in tasks  # the source runs are planned though their row is not selected

    # two worker processes: each replay is queued only once its source run has finished
    args = ["--quick", "--out", str(tmp_path), "--workloads", "friedman", "--methods", "replay", "--seeds", "0", "1"]
    assert quality.main([*args, "--jobs", "2"]) == 0
    runs = tmp_path / "runs" / "friedman"
    for seed, source_seed in ((0, 1), (1, 0)):
        replay = json.loads((runs / f"replay_s{seed}.json").read_text())
        src = json.loads((runs / f"autolrs_s{source_seed}.json").read_text())
        assert replay["replay_of"] == f"autolrs_s{source_seed}"
        assert replay["schedule_sha256"] == quality.schedule_digest(src["autolrs"]["schedule"])
    _, rows = _table((tmp_path / "friedman.md").read_text(), "| method |")
    assert [r[0].split(" (")[0] for r in rows] == [
        "cosine + 5% warmup, tuned",
        "ReplaySchedule of `autolrs`'s schedule",
    ]


def test_quality_resume_key_has_the_autolrs_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import quality, workloads

    args = ["--quick", "--out", str(tmp_path), "--workloads", "friedman", "--methods", "autolrs_beta2"]
    assert quality.main(args) == 0
    runs = tmp_path / "runs" / "friedman"
    before = {p.name: p.read_text() for p in runs.glob("*.json")}
    assert len(before) == 4  # cosine ×3, autolrs_beta2

    # one variant's settings change: only its run is trained again
    monkeypatch.setitem(
        workloads.AUTOLRS_VARIANTS,
        "autolrs_beta2",
        {**workloads.AUTOLRS_VARIANTS["autolrs_beta2"], "num_trials": 3},
    )
    assert quality.main([*args, "--resume"]) == 0
    after = {p.name: p.read_text() for p in runs.glob("*.json")}
    assert [name for name in before if before[name] != after[name]] == ["autolrs_beta2_s0.json"]
    assert json.loads(after["autolrs_beta2_s0.json"])["autolrs"]["settings"]["num_trials"] == 3
    assert "1 runs trained in this invocation, 3 reused" in (tmp_path / "friedman.md").read_text()


def test_quality_resume_reuses_runs(tmp_path: Path) -> None:
    from benchmarks import quality

    args = ["--quick", "--out", str(tmp_path), "--workloads", "friedman", "--methods", "cosine", "prodigy"]
    assert quality.main([*args, "autolrs_short"]) == 0
    first = {p.name: p.read_text() for p in (tmp_path / "runs" / "friedman").glob("*.json")}
    assert quality.main([*args, "autolrs_short", "--resume"]) == 0  # (the shorter budget's run matches its record)
    assert {p.name: p.read_text() for p in (tmp_path / "runs" / "friedman").glob("*.json")} == first
    text = (tmp_path / "friedman.md").read_text()
    assert "0 runs trained in this invocation, 5 reused" in text
    assert "Budget 30 optimizer steps per run (`autolrs_short`: 23 steps, evaluated every 4 and at its last);" in text


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
    assert [(r[0], r[1]) for r in rows] == [("digits", "40"), ("mlp", "600")]  # mlp: issue 14's case, searching
    assert "per-step path outside trial ends" in header[11] and int(rows[1][11].split("; ")[1].split()[0]) > 0
    assert header[5].startswith("in AutoLRS's hooks")  # every trial end and quiet step of the run, timed in it
    share = float(rows[1][5].split(" %")[0])
    assert 0.0 < share < 100.0
    assert header[6].startswith("an empty callback") and rows[1][6].endswith("%)")  # Lightning's dispatch alone
    assert "mlp: overhead ≤ 3 % of CPU time — by the paired ratios" in text and "by the time in AutoLRS's hooks" in text
    assert "No GPU in this session" in text or "CUDA device" in text


def test_small_batches_quick(tmp_path: Path) -> None:
    from benchmarks import small_batches

    assert small_batches.main(["--quick", "--workers", "1", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "small_batches.md").read_text()
    assert "Command: `python -m benchmarks.small_batches --quick --workers 1 --out " in text
    assert "package: " in text and "lightning_autolrs at " in text
    header, rows = _table(text, "| batch size | seed |")
    assert [r[:2] for r in rows] == [["8", "0"]] and header[2] == "AutoLRS()"
    ratio = float(rows[0][4])
    assert ratio == pytest.approx(float(rows[0][2]) / float(rows[0][3]), rel=0.01)
    steps, stopped = rows[0][5].split(", ")
    assert 20 <= int(steps) <= 35 and stopped in ("yes", "no")
    assert float(rows[0][6]) >= 1e-3  # not below the configured LR: the sweep of 73ba20c stopped on noise at 7.6e-4
    header, rows = _table(text, "| batch size | AutoLRS at or below cosine |")
    assert rows[0][0] == "8" and rows[0][1] in ("0 of 1", "1 of 1")


def test_short_budget_quick_trains_autolrs_without_a_search_against_the_baselines(tmp_path: Path) -> None:
    from benchmarks import short_budget

    assert short_budget.main(["--quick", "--workers", "1", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "short_budget.md").read_text()
    assert "Command: `python -m benchmarks.short_budget --quick --workers 1 --out " in text
    assert "AutoLRS() runs that searched: 0 of 1 (below 614 steps none does)." in text
    runs = json.loads((tmp_path / "short_budget.json").read_text())
    by = {r["kind"]: r for r in runs}
    assert sorted(by) == ["autolrs", "constant", "cosine", "wsd_sqrt"] and all(r["steps"] == 100 for r in runs)
    assert by["autolrs"]["stages"] == 0 and by["autolrs"]["search_steps"] == 0
    # without a search AutoLRS() trains the configured LR from the first step, held, then half its final anneal: neither
    # the WSD row (a 5 % warmup, a decay over the last 20 %) nor the cosine
    assert by["autolrs"]["val_loss"] != pytest.approx(by["wsd_sqrt"]["val_loss"], rel=1e-3)
    assert by["autolrs"]["val_loss"] != pytest.approx(by["cosine"]["val_loss"], rel=1e-3)
    assert by["autolrs"]["autolrs"]["stages"] == [] and len(by["autolrs"]["autolrs"]["found_range"]) == 2
    row = next(line for line in text.splitlines() if line.startswith("| friedman3_sgd | 100 |"))
    assert row.count("|") == 11  # workload, budget, four medians, AutoLRS() against each of three, and both
    assert "at or below cosine in 1 of 1, constant in " in text and "cosine and constant both in " in text


def test_short_budget_table_pairs_autolrs_only_with_the_kinds_it_ran() -> None:
    from benchmarks import short_budget

    runs = [
        {"workload": "gru_lm", "kind": k, "seed": s, "steps": 1500, "val_loss": v, "cpu": "x", "stages": 1}
        for k, s, v in [("autolrs", 0, 2.0), ("autolrs", 1, 2.4), ("wsd_sqrt", 0, 2.1), ("wsd_sqrt", 1, 2.2)]
    ]
    alone = short_budget.table([r for r in runs if r["kind"] == "autolrs"], ["autolrs"], "c", "now", 1.0)
    assert "| gru_lm | 1500 | 2.2 |" in alone and "at or below" not in alone
    text = short_budget.table(runs, ["autolrs", "wsd_sqrt"], "c", "now", 1.0)
    assert "| gru_lm | 1500 | 2.2 | 2.15 | 1 of 2 |" in text and "both" not in text
    assert "All rows: AutoLRS() at or below WSD in 1 of 2." in text


def test_finetune_quick(tmp_path: Path) -> None:
    from benchmarks import finetune

    assert finetune.main(["--quick", "--workers", "1", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "finetune.md").read_text()
    assert "Command: `python -m benchmarks.finetune --quick --workers 1 --out " in text
    assert "600 steps of cosine at the module's LR, then 700 steps from those weights" in text
    header, rows = _table(text, "| workload | seed |")
    assert [r[:2] for r in rows] == [["friedman", "0"]] and header[3] == "AutoLRS()"
    assert float(rows[0][5]) == pytest.approx(float(rows[0][3]) / float(rows[0][4]), rel=0.01)
    steps, stopped = rows[0][6].split(", ")
    assert 20 <= int(steps) <= 35 and stopped in ("yes", "no")
    assert float(rows[0][7]) >= 1e-3  # the configured LR: the flat sweep of a trained model put 73ba20c's at 7.6e-7
    runs = json.loads((tmp_path / "finetune.json").read_text())
    assert {r["kind"] for r in runs} == {"autolrs", "cosine"} and len({r["pretrained_loss"] for r in runs}) == 1


def test_proposer_fit_quick(tmp_path: Path) -> None:
    from benchmarks import proposer_fit

    assert proposer_fit.main(["--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "proposer_fit.md").read_text()
    header, rows = _table(text, "| scenario |")
    assert [r[0] for r in rows[:-1]] == [s.name for s in proposer_fit.SCENARIOS] and rows[-1][0] == "**all**"
    assert int(rows[-1][header.index("replayed rounds")]) > 0
    header, rows = _table(text, "| observations |")
    assert [r[0] for r in rows] == ["2", "5", "10"]


def test_seeds_table_pairs_each_run_with_the_cosine_run_of_its_seed() -> None:
    from benchmarks.quality import run_key
    from benchmarks.seeds import paired_lines, per_seed_lines
    from benchmarks.workloads import WORKLOADS

    lr = WORKLOADS["digits"].lr
    cosine = [1.0, 2.0, 4.0]
    autolrs = [0.9, 2.2, 3.0]  # -10 %, +10 %, -25 % against the same seed's cosine run
    results = {("digits", run_key("cosine", lr, s)): {"final_loss": v} for s, v in enumerate(cosine)}
    results |= {("digits", run_key("autolrs", None, s)): {"final_loss": v} for s, v in enumerate(autolrs)}
    lines = paired_lines(results, ["digits"], ["autolrs"], [0, 1, 2])
    row = [c.strip() for c in lines[2].strip("|").split("|")]
    assert row == ["digits", "`autolrs`", "2.2 [0.9–3]", "2", "no", "-8.3 %", "+10.0 %", "2/3"]
    assert lines[-1] == (
        "- `autolrs`, all workloads: at or below the same seed's cosine run in 2/3 runs; mean difference -8.3 %, "
        "median -10.0 %."
    )
    stages = [
        {"best_lr": 0.15, "diverged_trials": 1, "fallbacks": 0},
        {"best_lr": 0.0123, "diverged_trials": 2, "fallbacks": 3},
    ]
    results[("digits", run_key("autolrs", None, 1))]["autolrs"] = {"stages": stages}
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in per_seed_lines(results, ["digits"], ["autolrs"], [0, 1, 2])[2:]
    ]
    assert rows[1] == [
        "digits",
        "`autolrs`",
        "1",
        "2.2",
        "2",
        "+10.0 %",
        "0.15 → 0.0123",
        "3",
        "3",
    ]  # each run with its own seed's, its diverged trials and exploit fallbacks summed over its stages
    assert [r[5] for r in rows] == ["-10.0 %", "+10.0 %", "-25.0 %"] and rows[0][6:] == ["—", "0", "0"]


def test_seeds_held_out_tuned_cosine_is_chosen_on_seeds_0_to_2_and_judged_on_the_others() -> None:
    """``--held-out-tuned``: the tuned LR is the grid point with the lowest median over seeds 0-2 (as the quality
    benchmark's tuned cosine), and AutoLRS is compared with cosine at that LR on the other seeds only."""
    from benchmarks import seeds
    from benchmarks.quality import method_lrs, run_key
    from benchmarks.workloads import METHODS, WORKLOADS

    grid = method_lrs(METHODS["cosine"], WORKLOADS["friedman"], False)
    results = {}
    for i, lr in enumerate(grid):  # grid point 2 has the lowest median (1.0) though point 4 holds the lowest run
        for s, v in enumerate({2: [1.0, 0.9, 1.5], 4: [0.5, 1.2, 1.3]}.get(i, [2.0, 2.0, 2.0])):
            results[("friedman", run_key("cosine", lr, s))] = {"final_loss": v}
    assert seeds.tuned_lr(results, "friedman") == grid[2]
    tuned = [1.0, 2.0, 4.0, 8.0]  # seeds 3, 4, 5, 6 at the tuned LR (seeds 0-2 are not compared)
    autolrs = [0.5, 2.0, 5.0, 7.2, 100.0, 100.0, 100.0]  # seeds 3-6: -50 %, 0 %, +25 %, -10 %; 0-2 left out
    for s, v in zip((3, 4, 5, 6), tuned):
        results[("friedman", run_key("cosine", grid[2], s))] = {"final_loss": v}
    for s, v in zip((3, 4, 5, 6, 0, 1, 2), autolrs):
        results[("friedman", run_key("autolrs", None, s))] = {"final_loss": v}
    lines = seeds.held_out_lines(results, ["friedman"], ["autolrs"], [0, 1, 2, 3, 4, 5, 6])
    row = [c.strip() for c in lines[2].strip("|").split("|")]
    assert row == [
        "friedman",
        f"{grid[2]:.4g} ({WORKLOADS['friedman'].lr:g})",
        "`autolrs`",
        "3.5 [0.5–7.2]",
        "3 [1–8]",
        "no",
        "-8.8 %",
        "+25.0 %",
        "3/4",
    ]
    assert lines[-1] == (
        "- `autolrs`, all workloads: at or below the same seed's tuned cosine run in 3/4 runs; mean difference -8.8 %, "
        "median -5.0 %."
    )
    results[("friedman", run_key("cosine", grid[2], 5))] = {"final_loss": 5.0}  # medians equal (3.5): "at or below"
    assert seeds.held_out_lines(results, ["friedman"], ["autolrs"], [3, 4, 5, 6])[2].split(" | ")[5] == "yes"
    for i, lr in enumerate(grid):  # a tie between grid points 2 and 3: the earlier one, as the quality benchmark
        for s in (0, 1, 2):
            results[("friedman", run_key("cosine", lr, s))] = {"final_loss": 1.0 if i in (2, 3) else 2.0}
    assert seeds.tuned_lr(results, "friedman") == grid[2]


def test_seeds_held_out_tuned_trains_the_grid_first_then_the_tuned_lr_on_the_other_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``main`` with ``--held-out-tuned``: the grid on seeds 0-2 first, then the rows and cosine at the LR it picks on
    the requested seeds outside 0-2 only; no run is handed to both calls (cosine at the module's LR is a grid point)."""
    from benchmarks import seeds
    from benchmarks.quality import method_lrs, run_key
    from benchmarks.workloads import METHODS, WORKLOADS

    grid = method_lrs(METHODS["cosine"], WORKLOADS["friedman"], False)
    calls: list[dict] = []

    def fake_execute(tasks: dict, out: Path, jobs: int, resume: bool) -> tuple[dict, int, int]:
        calls.append(tasks)
        finals = {}
        for (w, key), task in tasks.items():  # grid point 1 is best on seeds 0-2; the module's LR (3) is not
            best = task["kind"] == "cosine" and task["lr"] == grid[1]
            finals[(w, key)] = {"final_loss": 1.0 if best else 2.0 + task["seed"]}
        return finals, len(tasks), 0

    monkeypatch.setattr(seeds, "execute", fake_execute)
    argv = ["--held-out-tuned", "--workloads", "friedman", "--methods", "autolrs", "--seeds", "1", "4", "5"]
    assert seeds.main([*argv, "--out", str(tmp_path)]) == 0
    first, second = calls
    assert set(first) == {("friedman", run_key("cosine", lr, s)) for lr in grid for s in (0, 1, 2)}
    assert not set(first) & set(second)
    tuned = {key for key in second if key[1].startswith(f"cosine_lr{grid[1]:.4g}_")}
    assert tuned == {("friedman", run_key("cosine", grid[1], s)) for s in (4, 5)}  # not seed 1, which tuned it
    assert ("friedman", run_key("autolrs", None, 1)) in second and len(second) == 2 + 3 + 2  # (module LR s1: grid)
    text = (tmp_path / "seeds.md").read_text()
    assert "## Against tuned cosine on held-out seeds (4, 5)" in text and "(28 runs trained, 0 reused" in text
    _, rows = _table(text, "| workload | tuned LR (module's) |")
    assert rows == [["friedman", f"{grid[1]:.4g} ({WORKLOADS['friedman'].lr:g})", "`autolrs`", "6.5 [6–7]", "1 [1–1]",
                     "no", "+550.0 %", "+600.0 %", "0/2"]]  # fmt: skip
    calls.clear()
    with pytest.raises(SystemExit):  # no seed outside 0-2: nothing to judge on, refused before any run
        seeds.main(["--held-out-tuned", "--seeds", "0", "1", "--out", str(tmp_path / "unused")])
    assert not calls and not (tmp_path / "unused").exists()


def test_seeds_against_pairs_each_autolrs_run_with_the_untuned_rows_run_of_its_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--against prodigy sf_default``: those rows' runs are trained on every seed asked for, and each AutoLRS run is
    compared with the same seed's run of each, in a section of its own."""
    from benchmarks import seeds
    from benchmarks.quality import method_lrs, run_key
    from benchmarks.workloads import METHODS, WORKLOADS

    finals = {"autolrs": [1.0, 2.0, 4.0], "prodigy": [2.0, 1.0, 5.0], "sf": [0.5, 0.5, 0.5], "cosine": [9.0] * 3}
    calls: list[dict] = []

    def fake_execute(tasks: dict, out: Path, jobs: int, resume: bool) -> tuple[dict, int, int]:
        calls.append(tasks)
        return {key: {"final_loss": finals[task["kind"]][task["seed"]]} for key, task in tasks.items()}, len(tasks), 0

    monkeypatch.setattr(seeds, "execute", fake_execute)
    argv = ["--workloads", "friedman", "--methods", "autolrs", "--seeds", "0", "1", "2", "--against", "prodigy"]
    assert seeds.main([*argv, "sf_default", "--out", str(tmp_path)]) == 0
    (tasks,) = calls
    for row in ("prodigy", "sf_default"):
        (lr,) = method_lrs(METHODS[row], WORKLOADS["friedman"], False)
        assert {("friedman", run_key(METHODS[row].kind, lr, s)) for s in (0, 1, 2)} <= set(tasks)
    assert len(tasks) == 4 * 3  # cosine at the module's LR, the two rows and AutoLRS
    text = (tmp_path / "seeds.md").read_text()
    assert f"## Against {METHODS['prodigy'].label} (`prodigy`)" in text
    _, rows = _table(text, f"| workload | row | final val loss, median [min–max] | {METHODS['prodigy'].label}")
    # -50 %, +100 %, -20 % against the same seed's Prodigy run; medians 2 against 2: at or below
    assert rows == [["friedman", "`autolrs`", "2 [1–4]", "2 [1–5]", "yes", "+10.0 %", "+100.0 %", "2/3"]]
    _, rows = _table(text, f"| workload | row | final val loss, median [min–max] | {METHODS['sf_default'].label}")
    assert rows[0][4:] == ["no", "+366.7 %", "+700.0 %", "0/3"]
    assert "at or below the same seed's `sf_default` run in 0/3 runs" in text
    with pytest.raises(SystemExit):  # a tuned row has no single run per seed to pair with
        seeds.main(["--against", "cosine", "--out", str(tmp_path / "unused")])


def test_seeds_against_an_autolrs_row_pairs_the_other_rows_with_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--against autolrs``: a candidate row against the defaults, seed by seed, from the runs the rows train anyway
    (no run is added); the reference row is not paired with itself."""
    from benchmarks import seeds

    finals = {"autolrs": [1.0, 2.0, 4.0], "autolrs_k3": [1.1, 2.0, 3.0], "cosine": [9.0] * 3}
    calls: list[dict] = []

    def fake_execute(tasks: dict, out: Path, jobs: int, resume: bool) -> tuple[dict, int, int]:
        calls.append(tasks)
        return {key: {"final_loss": finals[task["kind"]][task["seed"]]} for key, task in tasks.items()}, len(tasks), 0

    monkeypatch.setattr(seeds, "execute", fake_execute)
    argv = ["--workloads", "friedman", "--methods", "autolrs", "autolrs_k3", "--seeds", "0", "1", "2"]
    assert seeds.main([*argv, "--against", "autolrs", "--out", str(tmp_path)]) == 0
    (tasks,) = calls
    assert len(tasks) == 3 * 3  # cosine at the module's LR and the two rows: the reference adds none
    text = (tmp_path / "seeds.md").read_text()
    _, rows = _table(text, "| workload | row | final val loss, median [min–max] | AutoLRS() at its defaults")
    # +10 %, 0 %, -25 % against the same seed's run at the defaults; medians 2 against 2: at or below
    assert rows == [["friedman", "`autolrs_k3`", "2 [1.1–3]", "2 [1–4]", "yes", "-5.0 %", "+10.0 %", "2/3"]]
    assert "at or below the same seed's `autolrs` run in 2/3 runs" in text


def test_judge_quick(tmp_path: Path) -> None:
    from benchmarks import judge

    assert judge.main(["--quick", "--jobs", "1", "--workloads", "friedman", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "judge.md").read_text()
    header, rows = _table(text, "| seed |")
    assert len(rows) == 1 and len(header) == 1 + len(judge.CANDIDATES) + 1 + len(judge.JUDGES)
    oracle = [float(c) for c in rows[0][1 : 1 + len(judge.CANDIDATES)]]
    assert all(math.isfinite(x) and x > 0 for x in oracle)
    _, summary = _table(text, "| workload | judge |")
    assert [r[1] for r in summary] == [f"`{j}`" for j in judge.JUDGES] + ["keep ×1", "always ÷3", "always ×3"]


def test_judge_one_is_deterministic() -> None:
    """Seeded start state and batches: a rerun reproduces every oracle loss and every judge's value."""
    from benchmarks import judge

    a = judge.judge_one("digits_mlp", 0, True)
    b = judge.judge_one("digits_mlp", 0, True)
    assert a["rows"] == b["rows"]
    assert [r["factor"] for r in a["rows"]] == list(judge.CANDIDATES)
    assert all(math.isfinite(r[k]) for r in a["rows"] for k in ("oracle", *judge.JUDGES))


def test_the_jump_judge_is_the_forecast_less_the_first_probes_step() -> None:
    """`jump`: the `last` judge's forecast less the step from the start's probe (every candidate's first point, the
    same model) to the trial's first probe."""
    from benchmarks import judge

    rows = judge.judge_one("digits_mlp", 0, True)["rows"]
    assert len({r["last_probes"][0] for r in rows}) == 1 and all(len(r["last_probes"]) >= 2 for r in rows)
    for r in rows:
        assert r["jump"] == r["last"] - (r["last_probes"][1] - r["last_probes"][0])
    assert len({r["last_probes"][1] for r in rows}) == len(rows)  # each LR's first probe of its own


def test_judge_branches_are_paired(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every candidate starts from the same weights and optimizer state: its row does not depend on which candidates
    ran before it (the optimizer's saved state must not be trained in place by an earlier branch)."""
    from benchmarks import judge

    forward = judge.judge_one("digits_mlp", 0, True)["rows"]
    monkeypatch.setattr(judge, "CANDIDATES", tuple(reversed(judge.CANDIDATES)))
    backward = judge.judge_one("digits_mlp", 0, True)["rows"]
    assert forward == list(reversed(backward))


def test_judge_layout_is_the_last_searching_stage_of_the_defaults() -> None:
    """The layout comes from a dry run of the controller: the char LM's stages are τ=666/τ'=33 then τ=1332/τ'=67
    (as the quality benchmark reports them), with a 600-step anneal on its 3000-step budget; the last stage trains
    from its winning trial's start to the anneal: 1334 steps."""
    from benchmarks.judge import Layout, layout_for
    from benchmarks.workloads import WORKLOADS

    assert layout_for(WORKLOADS["charlm"], False) == Layout(before=666, tau=1334, tau_prime=67, anneal=600)
    friedman = layout_for(WORKLOADS["friedman"], False)
    assert (friedman.before, friedman.tau, friedman.anneal) == (981 + 1962, 3928, 2000)


def test_judge_pick_and_rank_agreement() -> None:
    from benchmarks.judge import kendall_tau, pick

    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert pick([1.0, 0.98, 1.0], anchor=2) == 2  # within 3 % of the best: the anchor keeps the stage
    assert pick([1.0, 0.90, 1.0], anchor=2) == 1
    assert pick([float("nan"), 0.90, 1.0], anchor=2) == 1  # a diverged trial never wins


def test_judge_start_factor_moves_the_anchor() -> None:
    """``start_factor`` trains the start state at the configured LR times it, and the candidates surround that LR."""
    from benchmarks import judge

    result = judge.judge_one("friedman", 0, True, start_factor=2.0)
    assert result["anchor_lr"] == pytest.approx(2.0 * result["configured_lr"])
    assert [r["lr"] for r in result["rows"]] == pytest.approx([result["anchor_lr"] * f for f in judge.CANDIDATES])


def test_judge_trial_average_follows_the_weights_and_the_probe_restores_them() -> None:
    """The `average` judge's exponential moving average: alpha = 1 / max(2, τ'/4), probed in place and put back."""
    from benchmarks.judge import TrialAverage

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    avg = TrialAverage(net)
    start = [p.detach().clone() for p in net.parameters()]
    avg.start(tau_prime=40)  # alpha = 1/10
    assert avg.alpha == pytest.approx(0.1)
    expected = [s.clone() for s in start]
    for step in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * (step + 1))
        avg.update()
        expected = [e + 0.1 * (p.detach() - e) for e, p in zip(expected, net.parameters())]
    current = [p.detach().clone() for p in net.parameters()]
    seen = avg.probe(lambda m: [p.detach().clone() for p in m.parameters()])
    assert all(torch.allclose(a, b) for a, b in zip(seen, expected))
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), current))  # bitwise back
    avg.start(tau_prime=40)  # a new trial starts from the current weights
    assert all(torch.equal(a, b) for a, b in zip(avg.average, current))
    avg.start(tau_prime=4)
    assert avg.alpha == 0.5  # short trials: never more than half way


def test_judge_trial_average_probes_in_eval_mode() -> None:
    from benchmarks.judge import TrialAverage
    from lightning_autolrs.probe import ValidationProbe

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    probe = ValidationProbe(
        [(torch.ones(4, 2), torch.zeros(4, 2))], loss_fn=lambda m, b: (m(b[0]) - b[1]).pow(2).mean()
    )
    avg = TrialAverage(net)
    avg.start(tau_prime=4)
    first, second = avg.probe(probe), avg.probe(probe)
    assert first == second  # eval mode: dropout off, deterministic
    assert net.training


def test_step_path_against_a_baseline_checkout(tmp_path: Path) -> None:
    """The per-step path benchmark runs each checkout's package in its own process (here this checkout twice) and
    reports both, their hooks' parts and the paired ratio, and with ``--floor`` a third process whose callback only
    sets the LR and reads the loss; a folder that is not a checkout is refused up front."""
    from benchmarks import step_path

    root = Path(step_path.__file__).resolve().parent.parent
    assert step_path.main(["--baseline", str(root), "--reps", "1", "--floor", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "step_path.md").read_text()
    header, rows = _table(text, "| checkout |")
    assert [r[0] for r in rows] == ["this checkout", "baseline", "floor"] and header[4] == "start hook"
    for row in rows[:2]:  # the kept plan's steps: after the first stage's exploit warmup (400-498), before the anneal
        assert int(row[2]) == 141
        assert all(float(cell.split()[0]) > 0 for cell in row[3:6] + row[8:])
    # the controller's parts: this checkout (twice) takes the kept plan's steps in quiet runs, which call neither
    assert rows[0][6:8] == rows[1][6:8] == ["0.0", "0.0"]
    floor = rows[2]  # every step, timed in the same two hooks; no controller to time inside them
    assert int(floor[2]) == 800 and all(float(c.split()[0]) > 0 for c in floor[3:6])
    assert floor[6:8] == ["—", "—"] and float(floor[8]) > 0
    assert re.search(r"Paired ratio .*: median \d+\.\d{3} \(min", text)
    ratio = float(re.search(r"per-step path ÷ the floor's \(per repeat\): median (\d+\.\d{2}) \(min", text)[1])
    assert ratio == pytest.approx(float(rows[0][3].split()[0]) / float(floor[3].split()[0]), rel=0.05)
    header, rows = _table(text, "| checkout | quiet exploit |")
    assert header[1:] == list(step_path.KINDS) and [r[0] for r in rows] == ["this checkout", "baseline"]  # no floor
    for row in rows:  # every step but the 21 with a GP decision, a forecast or a snapshot copy: 141 + 98 + 160 + 380
        counts = [cell.split()[1] if cell != "—" else cell for cell in row[1:]]
        assert counts == ["(141)", "(98)", "(160)", "(380)", "—"]
        assert all(float(cell.split()[0]) > 0 for cell in row[1:5])
    with pytest.raises(SystemExit):
        step_path.main(["--baseline", str(tmp_path), "--out", str(tmp_path)])


def test_step_path_times_every_step_of_the_char_lm_case(tmp_path: Path) -> None:
    """``--case charlm --select all``: the char LM with AutoLRS's defaults on its LR range; at 60 steps (too few for a
    search) 60 steps of the fallback's anneal (the configured LR held, then its decay; no warmup), all of them in the
    figure; the file is named after the case and the selection."""
    from benchmarks import step_path

    root = Path(step_path.__file__).resolve().parent.parent
    argv = ["--baseline", str(root), "--case", "charlm", "--select", "all", "--steps", "60", "--reps", "1", "--floor"]
    assert step_path.main([*argv, "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "step_path.md").exists()
    text = (tmp_path / "step_path_charlm_all.md").read_text()
    assert "Case charlm, 60 steps per run" in text
    header, rows = _table(text, "| checkout |")
    assert header[2] == "steps without an event (the floor: every step) per run"
    assert [int(r[2]) for r in rows] == [60, 60, 60]
    _, kinds = _table(text, "| checkout | quiet exploit |")
    for row, kind_row in zip(rows, kinds):
        assert kind_row[1:] == ["—", "—", kind_row[3], "—", "—"] and kind_row[3].endswith("(60)")
        assert float(row[3].split()[0]) == float(kind_row[3].split()[0])  # (the median over the anneal's steps)


def test_step_path_selects_the_steps_its_figure_is_taken_over() -> None:
    """``--select quiet`` takes the per-step path over the quiet exploit steps only, ``--select all`` over every step
    without an event (the overhead benchmark's figure); each kind's median is kept either way."""
    from benchmarks.step_path import PARTS, _summary

    kinds = ["search", "quiet exploit", "quiet exploit", "anneal", "quiet exploit", "exploit warmup"]
    path = [50, 10, 12, 40, 11, 30]
    result = {"times": {p: [v * (i + 1) for v in path] for i, p in enumerate(PARTS)}, "kinds": kinds}
    quiet, every = _summary(result, "quiet"), _summary(result, "all")
    assert quiet["path"] == 11 and quiet["n"] == 3 and quiet["end_hook"] == 33  # the median of 10, 12, 11 (x 3)
    assert every["path"] == 21 and every["n"] == 6  # the median of all six: (12 + 30) / 2
    for got in (quiet, every):
        assert got["search"] == 50 and got["anneal"] == 40 and got["exploit warmup"] == 30
        assert got["quiet exploit"] == 11 and got["quiet exploit n"] == 3 and "range test/warmup" not in got


def test_same_runs_finds_a_run_that_differs_in_one_step_s_lr(tmp_path: Path) -> None:
    """`benchmarks.same_runs` compares each run's final loss, every step's LR and validation curve exactly: a run that
    differs in one LR's last bit, or is missing from the folder before, fails the check."""
    from benchmarks.same_runs import compare, count_same, main

    run = {"final_loss": 1.5, "lrs": [0.1, 0.2, 0.3], "curve": [[0, 2.0, "start"], [3, 1.5, "exploit"]]}
    for folder, lrs in (("before", [0.1, 0.2, 0.3]), ("after", [0.1, 0.2, 0.3])):
        (tmp_path / folder / "runs" / "w").mkdir(parents=True)
        for name in ("autolrs_s0", "autolrs_s1", "cosine_lr0.1_s0"):
            (tmp_path / folder / "runs" / "w" / f"{name}.json").write_text(json.dumps({**run, "lrs": lrs}))
    out = tmp_path / "out"
    assert main([str(tmp_path / "before"), str(tmp_path / "after"), "--out", str(out)]) == 0
    assert "**2 of 2 runs the same**" in (out / "same_runs.md").read_text()  # (autolrs* only)
    changed = {**run, "lrs": [0.1, math.nextafter(0.2, 1.0), 0.3]}
    (tmp_path / "after" / "runs" / "w" / "autolrs_s1.json").write_text(json.dumps(changed))
    (tmp_path / "after" / "runs" / "w" / "autolrs_s2.json").write_text(json.dumps(run))
    rows = {r["run"]: r for r in compare(tmp_path / "before", tmp_path / "after")}
    assert (rows["autolrs_s1"]["final_loss"], rows["autolrs_s1"]["lrs"], rows["autolrs_s1"]["curve"]) == (
        True, False, True
    )  # fmt: skip
    assert rows["autolrs_s2"]["lrs"] is None and rows["autolrs_s0"]["lrs"] is True
    assert count_same(list(rows.values())) == 1  # (a missing run is not the same)
    assert main([str(tmp_path / "before"), str(tmp_path / "after"), "--out", str(out)]) == 1
    assert "**1 of 3 runs the same**" in (out / "same_runs.md").read_text()
