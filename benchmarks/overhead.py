"""Overhead benchmark: what AutoLRS's machinery costs, measured side by side in one process, medians of repeats.

1. **Decision time** per trial with 1..10 observations: :class:`~lightning_autolrs.proposer.LRProposer` (BoTorch GP
   refit + UCB on a grid) vs scikit-optimize configured as the reference implementation does
   (``Optimizer([Real(min, max, "log-uniform")], "GP", n_initial_points=1, acq_func="LCB",
   acq_func_kwargs={"kappa": 1e6})``; one ``tell`` of all points + ``ask``, i.e. one GP refit and one acquisition
   optimisation). Both see the same synthetic (LR, forecast loss) data. Measured with torch's default intra-op
   threads and with one thread (BLAS limited to one thread as well). Targets: not slower, ≤ 50 ms median; ≤ 5 ms at
   10 observations with one thread (issue 14).
2. **Forecast fit time** of :class:`~lightning_autolrs.forecast.ExponentialForecaster` on noisy exponential loss
   series of 100..800 points (with outliers), one thread. Targets ≤ 20 ms median; ≤ 1 ms at 100 points (issue 14).
3. **Snapshot** capture + restore (:class:`~lightning_autolrs.snapshot.StateSnapshot`) of MLPs of 1M, 10M and 100M
   parameters with AdamW state, vs (a) ``torch.save`` of the model and optimizer state dicts to a file + ``torch.load``
   + ``load_state_dict`` (what the reference implementation does) and (b) one raw ``Tensor.copy_`` of the same number
   of bytes there and back between two preallocated contiguous buffers (the memory-bandwidth limit). Also checks that
   captures after the first allocate nothing (the ``data_ptr()`` of every snapshot buffer stays the same). Targets:
   ≥ 5× faster than (a), within 1.5× of (b), no new allocations.
4. **Whole-run overhead**: process CPU time of an AutoLRS run over the same number of plain training steps (constant
   LR), as the median of paired ratios, on issue 14's MLP case and the quality benchmark's digits and charlm
   workloads (one torch thread, no evaluation, a CSV logger in both), with the AutoLRS time split into GP decisions,
   forecasts and snapshot copies, and the time of AutoLRS's per-step hooks on steps without any of them.

GPU measurements run only when CUDA is available (this benchmark was written on a machine without one).

Run: ``python -m benchmarks.overhead`` (a few minutes) or ``python -m benchmarks.overhead --quick --out DIR``
(seconds; checks that the harness runs). Writes ``overhead.md`` into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["main"]


# ------------------------------------------------------------------------------------------------------------ helpers
def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _load() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on Windows
        return "n/a"


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Limit torch's intra-op threads and the BLAS pools to ``n`` (``None``: leave the defaults)."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


# --------------------------------------------------------------------------------------------------- 1. GP
def _synthetic_observations(n: int, rep: int) -> tuple[list[float], list[float]]:
    """``n`` (LR, forecast loss) pairs: a noisy bowl in log LR over [1e-4, 1] (minimum near 1e-2), seeded by ``rep``."""
    g = torch.Generator().manual_seed(1000 * rep + n)
    logs = (torch.rand(n, generator=g, dtype=torch.float64) * 4 - 4).tolist()
    noise = (torch.randn(n, generator=g, dtype=torch.float64) * 0.02).tolist()
    return [10**v for v in logs], [1.0 + 0.1 * (v + 2) ** 2 + e for v, e in zip(logs, noise)]


_RANGE = (1e-4, 1.0)  # the LR range of the decisions' synthetic observations


def _observed_proposer(lrs: Sequence[float], ys: Sequence[float], seed: int) -> Any:
    """An :class:`~lightning_autolrs.proposer.LRProposer` over :data:`_RANGE` that has observed ``(lrs, ys)``."""
    from lightning_autolrs.proposer import LRProposer

    proposer = LRProposer(*_RANGE, seed=seed)
    for lr, y in zip(lrs, ys):
        proposer.observe(lr, y)
    return proposer


def bench_decisions(ns: Sequence[int], reps: int, threads: int | None) -> list[dict[str, Any]]:
    from skopt import Optimizer
    from skopt.space import Real

    lo, hi = _RANGE
    rows = []
    with _threads(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # warm-up: first calls pay for imports and lazy initialisation
        _observed_proposer(*_synthetic_observations(3, 99), 0).propose()
        Optimizer([Real(lo, hi, "log-uniform")], "GP", n_initial_points=1, acq_func="LCB", random_state=0).tell(
            [0.01], 1.0
        )
        for n in ns:
            ours, ref = [], []
            for rep in range(reps):
                lrs, ys = _synthetic_observations(n, rep)
                ours.append(_timed(_observed_proposer(lrs, ys, rep).propose))
                opt = Optimizer(
                    [Real(lo, hi, "log-uniform")],
                    "GP",
                    n_initial_points=1,
                    acq_func="LCB",
                    acq_func_kwargs={"kappa": 1e6},
                    random_state=rep,
                )

                def skopt_decision(opt: Any = opt, lrs: list[float] = lrs, ys: list[float] = ys) -> None:
                    opt.tell([[lr] for lr in lrs], ys)
                    opt.ask()

                ref.append(_timed(skopt_decision))
            rows.append({"n": n, "ours": statistics.median(ours), "ours_max": max(ours),
                         "ref": statistics.median(ref), "ref_max": max(ref)})  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------------- 2. forecast
def _loss_series(m: int, rep: int) -> list[float]:
    g = torch.Generator().manual_seed(7919 * rep + m)
    t = torch.arange(1, m + 1, dtype=torch.float64)
    y = 2.0 * torch.exp(-t / (0.4 * m)) + 1.0 + 0.05 * torch.randn(m, generator=g, dtype=torch.float64)
    spikes = torch.rand(m, generator=g) < 0.02
    y[spikes] += 1.0  # a few outlier batches
    return y.tolist()


def bench_forecast(ms: Sequence[int], reps: int) -> list[dict[str, Any]]:
    from lightning_autolrs.forecast import ExponentialForecaster

    fc = ExponentialForecaster()
    fc.predict(_loss_series(100, 0), horizon=1000)  # warm-up
    rows = []
    for m in ms:
        times, methods = [], set()
        for rep in range(reps):
            series = _loss_series(m, rep)
            start = time.perf_counter()
            out = fc.predict(series, horizon=10 * m)
            times.append(time.perf_counter() - start)
            methods.add(out.method)
        rows.append({"m": m, "median": statistics.median(times), "max": max(times), "methods": sorted(methods)})
    return rows


# ------------------------------------------------------------------------------------------- 2b. on a busy machine
@contextlib.contextmanager
def _busy_core() -> Iterator[None]:
    """Keep one core busy with another process (as DataLoader workers or other jobs do) while the block runs."""
    # (the spinner ends on its own once this process is gone, or after 10 minutes: a killed benchmark leaves none)
    spin = (
        "import os, time\n"
        "parent, end = os.getppid(), time.time() + 600\n"
        "while os.getppid() == parent and time.time() < end: pass"
    )
    proc = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.5)  # (let it start spinning)
        yield
    finally:
        proc.kill()
        proc.wait()


def bench_busy(reps: int) -> list[dict[str, Any]]:
    """A decision at 10 observations and forecasts of 100 / 800 points with torch's default threads while another
    process keeps one core busy: as shipped (``propose`` / ``predict`` run on one thread) against the same call on
    torch's threads (the undecorated function, ``__wrapped__``), interleaved, the order alternating."""
    from lightning_autolrs.forecast import ExponentialForecaster
    from lightning_autolrs.proposer import LRProposer

    def proposer(n: int, rep: int, seed: int) -> LRProposer:  # (the seeds differ: the two never share a GP fit)
        return _observed_proposer(*_synthetic_observations(n, rep), seed)

    fc = ExponentialForecaster()
    predict_on_torch_threads = ExponentialForecaster.predict.__wrapped__  # type: ignore[attr-defined]
    rows = []
    with warnings.catch_warnings(), _busy_core():
        warnings.simplefilter("ignore")
        proposer(10, 99, 0).propose()
        LRProposer.propose.__wrapped__(proposer(10, 98, 1))  # type: ignore[attr-defined]
        for label, size in (("decision, 10 observations", 10), ("forecast, 100 points", 100),
                            ("forecast, 800 points", 800)):  # fmt: skip
            one: list[float] = []
            many: list[float] = []
            for rep in range(reps):
                calls: list[tuple[list[float], Callable[[], Any]]]
                if size == 10:
                    a, b = proposer(size, rep, rep), proposer(size, rep, rep + 10_000)
                    calls = [(one, a.propose), (many, lambda b=b: LRProposer.propose.__wrapped__(b))]  # type: ignore[attr-defined]
                else:
                    series = _loss_series(size, rep)
                    calls = [
                        (one, lambda s=series, h=10 * size: fc.predict(s, horizon=h)),
                        (many, lambda s=series, h=10 * size: predict_on_torch_threads(fc, s, horizon=h)),
                    ]
                for bucket, call in calls if rep % 2 == 0 else calls[::-1]:
                    bucket.append(_timed(call))
            rows.append({"label": label, "one": statistics.median(one), "one_max": max(one),
                         "many": statistics.median(many), "many_max": max(many)})  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------------- 3. snapshot
SNAPSHOT_MODELS = {"1M": (1, 1000), "10M": (10, 1000), "100M": (4, 5000)}
"""Parameter count label -> (number of ``Linear(w, w)`` layers, width ``w``)."""


def _model_with_adamw(layers: int, width: int, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    opt.step()  # creates exp_avg, exp_avg_sq, step for every parameter
    opt.zero_grad(set_to_none=True)
    return model, opt


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _save_reference(model: nn.Module, opt: torch.optim.Optimizer, path: Path) -> None:
    """The reference implementation's backup: both state dicts to a file."""
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict()}, path)


def _load_reference(model: nn.Module, opt: torch.optim.Optimizer, path: Path, device: torch.device) -> None:
    """The reference implementation's restore: read the file and load both state dicts."""
    ckpt = torch.load(path, map_location=device)
    model.load_state_dict(ckpt["model_state_dict"])
    opt.load_state_dict(ckpt["optimizer_state_dict"])


def _buffer_ptrs(snap: Any) -> list[int]:
    return [t.data_ptr() for t in [*snap._model_buffers, *snap._state_buffers]]


def bench_snapshot_one(label: str, reps: int, device: torch.device, tmpdir: Path) -> dict[str, Any]:
    """Capture/restore, torch.save/load and raw-copy times of one model size (medians of ``reps``)."""
    from lightning_autolrs.snapshot import StateSnapshot

    layers, width = SNAPSHOT_MODELS[label]
    model, opt = _model_with_adamw(layers, width, device)
    params = sum(p.numel() for p in model.parameters())
    snap = StateSnapshot(model, opt)

    def timed(fn: Callable[[], Any]) -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    first = timed(snap.capture)
    nbytes = snap.nbytes
    ptrs = _buffer_ptrs(snap)
    same_ptrs = True
    src = torch.full((nbytes // 4,), 1.0, dtype=torch.float32, device=device)  # pages touched once, before timing
    dst = torch.zeros_like(src)
    path = tmpdir / f"autolrs-overhead-{label}-{os.getpid()}.pt"
    ours_c, ours_r, save_t, load_t, raw_t = [], [], [], [], []
    try:
        for _ in range(reps):
            ours_c.append(timed(snap.capture))
            ours_r.append(timed(snap.restore))
            same_ptrs = same_ptrs and _buffer_ptrs(snap) == ptrs
            save_t.append(timed(lambda: _save_reference(model, opt, path)))
            load_t.append(timed(lambda: _load_reference(model, opt, path, device)))
            raw_t.append(timed(lambda: dst.copy_(src)) + timed(lambda: src.copy_(dst)))
    finally:
        path.unlink(missing_ok=True)
    return {
        "label": label,
        "device": str(device),
        "params": params,
        "nbytes": nbytes,
        "first_capture": first,
        "capture": statistics.median(ours_c),
        "restore": statistics.median(ours_r),
        "ours": statistics.median(c + r for c, r in zip(ours_c, ours_r)),
        "save": statistics.median(save_t),
        "load": statistics.median(load_t),
        "ref": statistics.median(s + lo for s, lo in zip(save_t, load_t)),
        "raw": statistics.median(raw_t),
        "same_ptrs": same_ptrs,
    }


def bench_snapshot(sizes: Sequence[str], reps: int, device: torch.device, tmpdir: Path) -> list[dict[str, Any]]:
    return [bench_snapshot_one(label, reps, device, tmpdir) for label in sizes]


# --------------------------------------------------------------------------------------------------- 4. run
class _Instrument:
    """Wraps the AutoLRS callback's proposer, forecaster and snapshots (instance attributes only) with timers."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"decisions": 0.0, "forecasts": 0.0, "snapshot": 0.0}
        self.calls: dict[str, int] = dict.fromkeys(self.seconds, 0)
        self.quiet_steps: list[float] = []  # seconds in the AutoLRS hooks of steps without a decision/forecast/copy
        self.event_steps: list[float] = []

    def time_steps(self, cb: Any) -> None:
        """Time the callback's two per-step hooks (instance attributes: Lightning looks hooks up on the instance);
        a step whose hooks made a decision, a forecast or a snapshot copy is an event step (a trial's end)."""
        start_hook, end_hook = cb.on_train_batch_start, cb.on_train_batch_end
        state = {"seconds": 0.0, "calls": 0}

        def on_start(*args: Any, **kwargs: Any) -> None:
            state["calls"] = sum(self.calls.values())
            t = time.perf_counter()
            start_hook(*args, **kwargs)
            state["seconds"] = time.perf_counter() - t

        def on_end(*args: Any, **kwargs: Any) -> None:
            t = time.perf_counter()
            end_hook(*args, **kwargs)
            seconds = state["seconds"] + time.perf_counter() - t
            quiet = sum(self.calls.values()) == state["calls"]
            (self.quiet_steps if quiet else self.event_steps).append(seconds)

        cb.on_train_batch_start, cb.on_train_batch_end = on_start, on_end

    def wrap(self, obj: Any, name: str, bucket: str) -> None:
        original = getattr(obj, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[bucket] += time.perf_counter() - start
                self.calls[bucket] += 1

        setattr(obj, name, timed)


def wrap_event_sources(cb: Any, inst: _Instrument) -> None:
    """Time and count the started AutoLRS callback's GP decisions, forecasts and snapshot copies in ``inst`` (what
    makes a step an event step rather than a quiet one; also used by :mod:`benchmarks.step_path`)."""
    inst.wrap(cb.controller.proposer, "propose", "decisions")
    inst.wrap(cb.controller.forecaster, "predict", "forecasts")
    for snap in (cb._snapshot, cb._best_snapshot):
        if snap is not None:
            inst.wrap(snap, "capture", "snapshot")
            inst.wrap(snap, "restore", "snapshot")


def _instrument(cb: Any, inst: _Instrument) -> None:
    """Time an AutoLRS callback's proposer, forecaster, snapshots and per-step hooks from its ``on_train_start`` on
    (an instance attribute, which Lightning looks up on the instance): no second callback, whose hook dispatch on
    every step would be counted as AutoLRS's overhead."""
    on_train_start = cb.on_train_start

    def start(trainer: Any, pl_module: Any) -> None:
        on_train_start(trainer, pl_module)
        wrap_event_sources(cb, inst)
        inst.time_steps(cb)

    cb.on_train_start = start


class _IssueMLP:
    """The case of issue 14: an MLP 256-512-512-10 with Adam (lr 1e-3) on random data (8192 samples, 10 classes,
    batch 128)."""

    @staticmethod
    def build(seed: int) -> tuple[Any, Any]:
        import lightning.pytorch as pl
        from torch.utils.data import DataLoader, TensorDataset

        class MLP(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = nn.Sequential(
                    nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
                )

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                x, y = batch
                return nn.functional.cross_entropy(self.net(x), y)

            def configure_optimizers(self) -> torch.optim.Optimizer:
                return torch.optim.Adam(self.parameters(), lr=1e-3)

        g = torch.Generator().manual_seed(seed)
        x = torch.randn(8192, 256, generator=g)
        y = (x[:, :10] + 0.5 * torch.randn(8192, 10, generator=g)).argmax(dim=1)
        loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True, generator=g)
        return MLP(), loader


#: AutoLRS's settings in issue 14's case: tau=400, k=10, tau'=40.
ISSUE_CASE = {"tau": 400, "num_trials": 10, "search_ratio": 0.1}


def build_case(name: str, seed: int) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The module, ``fit``'s keyword arguments and AutoLRS's range arguments of one whole-run case: ``"mlp"``
    (issue 14's case, :data:`ISSUE_CASE`) or a quality workload with AutoLRS's defaults on the workload's LR range
    (also used by :mod:`benchmarks.step_path`)."""
    from benchmarks.workloads import WORKLOADS

    if name == "mlp":
        module, loader = _IssueMLP.build(seed)
        return module, {"train_dataloaders": loader}, {"min_lr": 1e-4, "max_lr": 1e-1, **ISSUE_CASE}
    workload = WORKLOADS[name]
    module_cls, kwargs, dm = workload.build(seed, False)
    return module_cls(**kwargs), {"datamodule": dm}, dict(zip(("min_lr", "max_lr"), workload.grid))


def _fit_seconds(
    workload_name: str, budget: int, kind: str, seed: int, root: Path
) -> tuple[float, float, _Instrument | None]:
    """(wall seconds, process CPU seconds, instrument) of one ``fit`` of ``kind``: ``"plain"``, ``"autolrs"``
    (instrumented) or ``"empty"`` (the plain run with one callback that overrides nothing: the cost of Lightning
    calling a callback's hooks at all); a CSV logger at the Trainer's default ``log_every_n_steps`` in every run, so
    AutoLRS's logging is measured as a user would see it."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from benchmarks.workloads import quiet
    from lightning_autolrs import AutoLRS

    quiet()
    pl.seed_everything(seed, verbose=False)
    module, fit_kwargs, autolrs_kwargs = build_case(workload_name, seed)
    callbacks: list[pl.Callback] = [pl.Callback()] if kind == "empty" else []
    inst = None
    if kind == "autolrs":
        inst = _Instrument()
        cb = AutoLRS(**autolrs_kwargs, seed=seed, verbose=False, save_files=False)
        _instrument(cb, inst)
        callbacks = [cb]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=budget,
        max_epochs=-1,
        logger=CSVLogger(root, name=f"{workload_name}-{kind}-{seed}"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit(module, **fit_kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, inst


def bench_whole_run(workloads: Sequence[tuple[str, int]], reps: int) -> list[dict[str, Any]]:
    """Plain, AutoLRS and empty-callback runs interleaved (their order rotates from repeat to repeat), ``reps`` of
    each; CPU-time medians, the median of the paired ratios and their spread (min-max), the share of each AutoLRS
    run's wall time spent inside the callback's per-step hooks (its decisions, forecasts, snapshot copies and
    bookkeeping; measured in the run itself, so free of the paired ratios' run-to-run noise, but a lower bound: fit
    start, Lightning's dispatch of the hooks and the caches the hooks evict are outside it), the per-step path of the
    callback outside trial ends."""
    rows = []
    with _threads(1), tempfile.TemporaryDirectory(prefix="autolrs-overhead-runs-") as tmp:
        _fit_seconds("digits", 40, "autolrs", 99, Path(tmp))  # warm-up: imports and lazy initialisation
        for name, budget in workloads:
            plain, auto, parts, ratios, shares, empty = [], [], [], [], [], []
            for rep in range(reps):
                timed: dict[str, tuple[float, float, _Instrument | None]] = {}
                kinds = ("plain", "autolrs", "empty")
                for kind in kinds[rep % 3 :] + kinds[: rep % 3]:  # no run always first or last
                    timed[kind] = _fit_seconds(name, budget, kind, rep, Path(tmp))
                _, p_cpu, _ = timed["plain"]
                a_wall, a_cpu, inst = timed["autolrs"]
                e_cpu = timed["empty"][1]
                empty.append(e_cpu / p_cpu - 1.0)
                plain.append(p_cpu)
                auto.append(a_cpu)
                parts.append(inst)
                ratios.append(a_cpu / p_cpu - 1.0)
                assert inst is not None
                shares.append((sum(inst.quiet_steps) + sum(inst.event_steps)) / a_wall)  # (wall over wall)
            i = sorted(range(reps), key=lambda k: auto[k])[reps // 2]  # the median AutoLRS run's breakdown
            p, a = statistics.median(plain), statistics.median(auto)
            inst = parts[i]
            assert inst is not None
            quiet = [s for part in parts if part is not None for s in part.quiet_steps]
            events = [s for part in parts if part is not None for s in part.event_steps]
            rows.append(
                {
                    "workload": name,
                    "steps": budget,
                    "plain": p,
                    "autolrs": a,
                    "fraction": statistics.median(ratios),
                    "ratios": sorted(ratios),
                    "hook_share": statistics.median(shares),
                    "empty_callback": statistics.median(empty),
                    "empty_callbacks": sorted(empty),
                    "hook_shares": sorted(shares),
                    "seconds": dict(inst.seconds),
                    "calls": dict(inst.calls),
                    "step_median": statistics.median(quiet) if quiet else math.nan,
                    "step_p90": sorted(quiet)[int(0.9 * (len(quiet) - 1))] if quiet else math.nan,
                    "quiet_steps": len(quiet),
                    "event_steps": len(events),
                    "event_median": statistics.median(events) if events else math.nan,
                }
            )
    return rows


# ------------------------------------------------------------------------------------------------------------ report
def _busy_report(rows: list[dict[str, Any]] | None, reps: int) -> list[str]:
    threads = torch.get_num_threads()
    if rows is None:
        return [
            f"(Section 2b, on a busy machine, needs more than one torch thread and a parallel backend that can switch "
            f"(OpenMP, TBB); this run had {threads} thread(s).)",
            "",
        ]
    lines = [
        f"## 2b. On a busy machine ({threads} torch threads, one core kept busy by another process)",
        "",
        f"| computation | as shipped (one thread) ms | on torch's {threads} threads ms | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {_ms(r['one'])} (max {_ms(r['one_max'])}) | {_ms(r['many'])} "
            f"(max {_ms(r['many_max'])}) | {r['one'] / r['many']:.2f} |"
        )
    return [
        *lines,
        "",
        f"Medians of {reps} repeats (max in brackets), the two interleaved. `LRProposer.propose` and "
        "`ExponentialForecaster.predict` run on one intra-op thread (`lightning_autolrs._threads`); the right column "
        "calls the same function without that (`__wrapped__`) on torch's threads.",
        "",
    ]


def report(sections: dict[str, Any], command: str, header: list[str]) -> str:
    lines = ["# Overhead (`python -m benchmarks.overhead`)", "", f"Command: `{command}`", "", *header, ""]
    lines += ["## 1. Per-trial decision time (GP refit + proposal)", ""]
    verdicts = []
    for threads, rows in sections["decisions"]:
        lines += [
            f"torch intra-op threads: {threads}.",
            "",
            "| observations | LRProposer (BoTorch GP + UCB) ms | scikit-optimize GP + LCB ms | ratio ours / skopt |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            ratio = r["ours"] / r["ref"]
            lines.append(
                f"| {r['n']} | {_ms(r['ours'])} (max {_ms(r['ours_max'])}) | {_ms(r['ref'])} "
                f"(max {_ms(r['ref_max'])}) | {ratio:.2f} |"
            )
        lines.append("")
        slower = [r["n"] for r in rows if r["ours"] > r["ref"]]
        worst = max(rows, key=lambda r: r["ours"])
        verdicts.append(
            f"- {threads} thread(s): not slower than scikit-optimize — {_verdict(not slower)}"
            + (f" (slower with {', '.join(map(str, slower))} observations)" if slower else "")
            + f"; ≤ 50 ms median — {_verdict(worst['ours'] <= 0.050)} (worst median {_ms(worst['ours'])} ms, "
            f"{worst['n']} observations)."
        )
    one = dict(sections["decisions"])[1] if any(t == 1 for t, _ in sections["decisions"]) else []
    at_ten = [r for r in one if r["n"] == max(x["n"] for x in one)]
    if at_ten:
        r = at_ten[0]
        verdicts.append(
            f"- 1 thread, {r['n']} observations: ≤ 5 ms median (issue 14) — {_verdict(r['ours'] <= 0.005)} "
            f"({_ms(r['ours'])} ms)."
        )
    lines += [
        f"Medians of {sections['decision_reps']} repeats per cell (max in brackets), same data for both, the two "
        "interleaved. With 1 observation LRProposer uses its space-filling initial design (no GP; it needs 2), "
        "scikit-optimize already fits a GP. Targets:",
        "",
        *verdicts,
        "",
        "## 2. Forecast fit time (ExponentialForecaster.predict)",
        "",
        "| points | median ms | max ms | fit outcome |",
        "| ---: | ---: | ---: | --- |",
    ]
    fc_rows = sections["forecast"]
    for r in fc_rows:
        lines.append(f"| {r['m']} | {_ms(r['median'])} | {_ms(r['max'])} | {', '.join(r['methods'])} |")
    fc_worst = max(r["median"] for r in fc_rows)
    lines += [
        "",
        f"{sections['forecast_reps']} noisy exponential series per length (2 % outlier steps). Target ≤ 20 ms median — "
        f"{_verdict(fc_worst <= 0.020)} (worst median {_ms(fc_worst)} ms); ≤ 1 ms median at 100 points (issue 14) — "
        f"{_verdict(fc_rows[0]['median'] <= 0.001)} ({fc_rows[0]['median'] * 1000:.2f} ms).",
        "",
        *_busy_report(sections.get("busy"), sections["forecast_reps"]),
        "## 3. Snapshot capture + restore (AdamW state)",
        "",
        "| model | device | bytes copied | first capture ms | capture ms | restore ms | capture + restore ms | "
        "(a) torch.save + load ms | (b) raw copy_ there and back ms | speed-up vs (a) | ratio vs (b) | "
        "allocations after first capture |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    ok_a = ok_b = ok_alloc = True
    for r in sections["snapshot"]:
        speed = r["ref"] / r["ours"]
        ratio = r["ours"] / r["raw"]
        ok_a &= speed >= 5.0
        ok_b &= ratio <= 1.5
        ok_alloc &= r["same_ptrs"]
        lines.append(
            f"| {r['params'] / 1e6:.1f}M params | {r['device']} | {r['nbytes'] / 2**20:.0f} MiB | "
            f"{_ms(r['first_capture'])} | {_ms(r['capture'])} | {_ms(r['restore'])} | {_ms(r['ours'])} | "
            f"{_ms(r['ref'])} ({_ms(r['save'])} + {_ms(r['load'])}) | {_ms(r['raw'])} | {speed:.1f}× | {ratio:.2f} | "
            f"{'none (same data_ptr)' if r['same_ptrs'] else 'NEW BUFFERS'} |"
        )
    lines += [
        "",
        f"Medians of {sections['snapshot_reps']} repeats; (a) writes to `{sections['tmpdir']}` (page cache: no disk "
        f"flush is forced). Targets: ≥ 5× faster than (a) — {_verdict(ok_a)}; within 1.5× of (b) — {_verdict(ok_b)}; "
        f"no new allocations after the first capture — {_verdict(ok_alloc)}.",
        "",
        "## 4. Whole-run overhead",
        "",
        "| workload | steps | plain CPU s | AutoLRS CPU s | overhead: median (min-max) | in AutoLRS's hooks: median "
        "(min-max) | an empty callback: median (min-max) | GP decisions | forecasts | snapshot copies | rest | "
        "per-step path outside trial ends: median (p90) | trial-end steps: median |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    targets = {"mlp": 0.03, "charlm": 0.01}
    run_verdicts = []
    for r in sections["whole_run"]:
        s, c = r["seconds"], r["calls"]
        extra = r["autolrs"] - r["plain"]
        rest = extra - sum(s.values())
        lo, hi = r["ratios"][0], r["ratios"][-1]
        lines.append(
            f"| {r['workload']} | {r['steps']} | {r['plain']:.2f} | {r['autolrs']:.2f} | "
            f"{100 * r['fraction']:+.1f} % ({100 * lo:+.1f} to {100 * hi:+.1f} %) | {100 * r['hook_share']:.2f} % "
            f"({100 * r['hook_shares'][0]:.2f}–{100 * r['hook_shares'][-1]:.2f} %) | "
            f"{100 * r['empty_callback']:+.1f} % ({100 * r['empty_callbacks'][0]:+.1f} to "
            f"{100 * r['empty_callbacks'][-1]:+.1f} %) | {s['decisions']:.3f} s "
            f"({c['decisions']}) | {s['forecasts']:.3f} s ({c['forecasts']}) | {s['snapshot']:.3f} s "
            f"({c['snapshot']}) | {rest:+.2f} s | {1e6 * r['step_median']:.0f} µs ({1e6 * r['step_p90']:.0f} µs; "
            f"{r['quiet_steps']} steps) | "
            f"{1e3 * r['event_median']:.1f} ms ({r['event_steps']}) |"
        )
        if r["workload"] in targets:
            target = targets[r["workload"]]
            run_verdicts.append(
                f"- {r['workload']}: overhead ≤ {100 * target:.0f} % of CPU time — by the paired ratios "
                f"{_verdict(r['fraction'] <= target)} ({100 * r['fraction']:+.1f} %, spread {100 * lo:+.1f} to "
                f"{100 * hi:+.1f} %); by the time in AutoLRS's hooks (its own compute, a lower bound) "
                f"{_verdict(r['hook_share'] <= target)} ({100 * r['hook_share']:.2f} %)."
            )
    worst_step = max(r["step_median"] for r in sections["whole_run"])
    lines += [
        "",
        f"{sections['run_reps']} plain, {sections['run_reps']} AutoLRS and {sections['run_reps']} empty-callback runs "
        "per workload, interleaved (the order rotates from repeat to repeat), one torch thread, no validation (so "
        "trials are judged on the training loss, without validation probes), a CSV logger at the default "
        "`log_every_n_steps` in all; process CPU time; the overhead is the median of the paired ratios AutoLRS / "
        "plain − 1 (min-max in brackets). `mlp` is issue 14's "
        "case (MLP 256-512-512-10, Adam, batch 128, tau=400, k=10, tau'=40); digits and charlm are the quality "
        "benchmark's models with AutoLRS's defaults on the quality benchmark's LR range. The breakdown (seconds, "
        "calls) is that of the median AutoLRS run; `rest` = callback bookkeeping and run-to-run noise. In AutoLRS's "
        "hooks: the time spent inside the callback's two per-step hooks (every step, trial ends included: that is "
        "where its decisions, forecasts, snapshot copies and bookkeeping run) ÷ the run's wall time, both measured in "
        "the same run, so the plain runs' noise does not enter it; a lower bound of AutoLRS's cost: setup at fit "
        "start, Lightning's dispatch of the hooks and the caches the hooks evict from the training step are not in "
        "it. An empty callback: the plain run with one `Callback()` that overrides nothing, as a paired ratio against "
        "the plain run: Lightning's dispatch of a callback's hooks plus this method's run-to-run noise. Per-step "
        "path: the time spent in AutoLRS's two per-step hooks, over all AutoLRS runs' steps without a GP decision, "
        "forecast or snapshot copy; trial-end steps are the others. Targets (issue 14):",
        "",
        *run_verdicts,
        f"- per-step path outside trial ends ≤ 20 µs median — {_verdict(worst_step <= 20e-6)} (worst "
        f"{1e6 * worst_step:.0f} µs).",
        "",
        "## 5. GPU",
        "",
        sections["gpu"],
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, small sizes: checks the harness runs")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results; quick: a temp dir)")
    parser.add_argument("--tmpdir", default=None, help="folder for the torch.save files (default: the system temp)")
    parser.add_argument("--reps", type=int, default=None, help="repeats per measurement (default 15; quick: 1)")
    parser.add_argument("--run-reps", type=int, default=None, help="runs per whole-run cell (default 3; quick: 1)")
    args = parser.parse_args(argv)
    if args.out is None:
        out = Path(tempfile.mkdtemp(prefix="autolrs-overhead-quick-")) if args.quick else Path("benchmarks/results")
    else:
        out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(args.tmpdir or tempfile.gettempdir())
    reps = args.reps or (1 if args.quick else 15)
    command = "python -m benchmarks.overhead" + ("" if not argv else " " + shlex.join(argv))
    start = time.perf_counter()
    load_before = _load()
    default_threads = torch.get_num_threads()
    sections: dict[str, Any] = {"decision_reps": reps, "forecast_reps": 3 * reps, "tmpdir": tmpdir}

    def say(msg: str) -> None:
        sys.stdout.write(f"[{time.perf_counter() - start:6.1f}s] {msg}\n")
        sys.stdout.flush()

    ns = [1, 2, 5] if args.quick else list(range(1, 11))
    sections["decisions"] = []
    for threads in (None, 1):
        say(f"decision time, threads={threads or default_threads}")
        sections["decisions"].append((threads or default_threads, bench_decisions(ns, reps, threads)))
    say("forecast fit time")
    with _threads(1):  # one thread, as issue 14 measures (two threads on a shared 2-core machine measure contention)
        sections["forecast"] = bench_forecast([100, 800] if args.quick else [100, 200, 400, 800], 3 * reps)
    from lightning_autolrs._threads import _SWITCHABLE

    if default_threads > 1 and _SWITCHABLE:
        say(f"decision and forecast with {default_threads} threads, one core kept busy")
        sections["busy"] = bench_busy(3 * reps)
    sizes = ["1M"] if args.quick else list(SNAPSHOT_MODELS)
    snap_reps = reps if args.quick else max(3, reps // 3)
    sections["snapshot_reps"] = snap_reps
    say(f"snapshot {sizes}")
    with _threads(1):
        sections["snapshot"] = bench_snapshot(sizes, snap_reps, torch.device("cpu"), tmpdir)
    if torch.cuda.is_available():  # pragma: no cover - no GPU on the machine this was written on
        sections["snapshot"] += bench_snapshot(sizes, snap_reps, torch.device("cuda"), tmpdir)
        sections["gpu"] = f"CUDA device {torch.cuda.get_device_name()}: snapshot rows with device `cuda` above."
    else:
        sections["gpu"] = "No GPU in this session (`torch.cuda.is_available()` is False): GPU measurements skipped."
    run_reps = args.run_reps or (1 if args.quick else 3)
    sections["run_reps"] = run_reps
    say("whole-run overhead")
    # charlm at 600 steps: the smallest budget at which the defaults search with a given range is 575 steps
    runs = [("digits", 40), ("mlp", 600)] if args.quick else [("mlp", 800), ("digits", 800), ("charlm", 600)]
    sections["whole_run"] = bench_whole_run(runs, run_reps)
    from benchmarks.workloads import cpu_model  # (lazily, as the runs import it: it imports Lightning)

    header = [
        f"Written by that command on {time.strftime('%Y-%m-%d %H:%M')}: {platform.machine()} ({cpu_model()}), "
        f"{os.cpu_count()} CPU "
        f"cores (shared with other jobs; load average 1/5/15 min {load_before} at start, {_load()} at the end), "
        f"torch {torch.__version__} with {default_threads} intra-op threads by default, "
        f"{(time.perf_counter() - start) / 60:.1f} min wall.",
    ]
    text = report(sections, command, header)
    (out / "overhead.md").write_text(text)
    sys.stdout.write("\n" + text + f"\nwrote {out / 'overhead.md'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
