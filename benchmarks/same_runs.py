"""Whether two benchmark folders' runs end the same: the check behind "bitwise as before" claims.

A change meant to leave every run as it was (a faster path through the same arithmetic) is checked by training its
runs again into a new folder (``python -m benchmarks.quality --resume --methods autolrs ...``, the baselines copied
over so only the AutoLRS runs train) and comparing each run with the one of the same name in the folder of the code
before: its final validation loss, the LR of every step and every point of its validation curve, compared as the
floats the runs recorded (so "the same" is bitwise). Runs on another CPU need not match: a run ends bitwise the same
only on the CPU that trained it (each run names it).

Run: ``python -m benchmarks.same_runs BEFORE AFTER [--match 'autolrs*'] [--out DIR]``; BEFORE and AFTER are output
folders of :mod:`benchmarks.quality` (their ``runs/<workload>/<run>.json``). Writes ``same_runs.md`` into ``--out``
(default ``benchmarks/results``) and exits 1 when a run differs or is missing from BEFORE.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["compare", "count_same", "main"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
CHECKS = ("final_loss", "lrs", "curve")  # the run's recorded values compared (each exactly)


def compare(before: Path, after: Path, match: str = "autolrs*") -> list[dict[str, Any]]:
    """One row per run of AFTER whose file name matches ``match``: its workload and name, the final loss in both
    folders, and for each of :data:`CHECKS` whether it is the same (``None`` for every check: missing from BEFORE)."""
    rows = []
    for path in sorted((after / "runs").glob("*/*.json")):
        if not fnmatch.fnmatch(path.stem, match):
            continue
        new = json.loads(path.read_text())
        old_path = before / "runs" / path.parent.name / path.name
        old = json.loads(old_path.read_text()) if old_path.exists() else None
        row: dict[str, Any] = {"workload": path.parent.name, "run": path.stem, "after": new.get("final_loss")}
        row["before"] = None if old is None else old.get("final_loss")
        for key in CHECKS:
            row[key] = None if old is None else old.get(key) == new.get(key)
        row["cpu"] = (new.get("versions") or {}).get("cpu", "?")
        row["packages"] = (None if old is None else old.get("package"), new.get("package"))
        rows.append(row)
    return rows


def count_same(rows: Sequence[dict[str, Any]]) -> int:
    """How many runs are the same in every one of :data:`CHECKS` (a run missing from BEFORE is not)."""
    return sum(all(r[k] for k in CHECKS) for r in rows)


def _packages(rows: Sequence[dict[str, Any]], side: int) -> str:
    """The packages (``tree:<hash>`` of the code that trained them) the runs of one side name."""
    return ", ".join(sorted({str(r["packages"][side]) for r in rows if r["packages"][side] is not None})) or "—"


def _cell(value: bool | None) -> str:
    return "missing" if value is None else "same" if value else "**differs**"


def report(rows: Sequence[dict[str, Any]], command: str, before: Path, after: Path) -> str:
    same = count_same(rows)
    lines = [
        "# Same runs (`python -m benchmarks.same_runs`)",
        "",
        f"Command: `{command}`",
        "",
        f"Written by that command on {dt.datetime.now():%Y-%m-%d %H:%M}. Before: `{before}` (packages "
        f"{_packages(rows, 0)}); after: `{after}` (packages {_packages(rows, 1)}). Each run of the after folder "
        "against the run of the same name in the before folder: its final validation loss, the LR of every step and "
        "every point of its validation curve, each compared exactly.",
        "",
        f"**{same} of {len(rows)} runs the same** in all three.",
        "",
        "| workload | run | final loss before | final loss after | final loss | every step's LR | validation curve "
        "| CPU |",
        "| --- | --- | ---: | ---: | --- | --- | --- | --- |",
    ]
    for r in rows:
        before_loss = "—" if r["before"] is None else f"{r['before']:.6g}"
        after_loss = "—" if r["after"] is None else f"{r['after']:.6g}"
        checks = " | ".join(_cell(r[k]) for k in CHECKS)
        lines.append(f"| {r['workload']} | {r['run']} | {before_loss} | {after_loss} | {checks} | {r['cpu']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="output folder of the code before")
    parser.add_argument("after", type=Path, help="output folder of the code after")
    parser.add_argument("--match", default="autolrs*", help="which runs (file name pattern, default autolrs*)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where same_runs.md goes")
    args = parser.parse_args(argv)
    rows = compare(args.before, args.after, args.match)
    command = "python -m benchmarks.same_runs " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "same_runs.md").write_text(report(rows, command, args.before, args.after))
    same = count_same(rows)
    sys.stdout.write(f"{same} of {len(rows)} runs the same; wrote {args.out / 'same_runs.md'}\n")
    return 0 if rows and same == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
