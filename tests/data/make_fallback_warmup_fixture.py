"""Regenerate ``fallback_warmup_reference.json``: run from the repository root of a worktree whose
``lightning_autolrs/`` is main 827b953's (``git checkout 827b953 -- lightning_autolrs``), the last version whose
schedule without a search (a budget too small for one) began with a 5 % linear warmup and decayed over the final
anneal's usual length.

``python tests/data/make_fallback_warmup_fixture.py`` drives that schedule's controller (the configured LR 0.05, a
200-step budget, losses that fall slowly) to the end and writes every step's LR, and its state after steps 3 and 5 (in
the warmup), 100 (the LR held) and 170 (the decay), in five cases: the defaults; ``anneal_ratio=0.3``; a warmup you
gave (``warmup_steps=30``); a NaN loss while the LR is held; and a range you gave (0.001-0.01) with the anchor of the
code before the range bounded it (0.05, as ``derive`` with ``max_lr=1.0`` gives it), whose warmup ramps to 0.05. A later
version resumes each state into the LRs that version trained (``tests/test_controller.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

STEPS = (3, 5, 100, 170)
CASES: dict[str, dict] = {  # Settings arguments; "max_lr": the derived range's top replaced; "nan_at": a NaN loss there
    "defaults": {},
    "anneal_ratio_0.3": {"settings": {"anneal_ratio": 0.3}},
    "warmup_steps_30": {"settings": {"warmup_steps": 30}},
    "nan_while_held": {"nan_at": 120},
    "range_before_clamp": {"settings": {"min_lr": 1e-3, "max_lr": 0.01}, "max_lr": 1.0},
}


def main() -> None:
    sys.path.insert(0, ".")
    from lightning_autolrs.controller import StageController
    from lightning_autolrs.settings import Settings, derive

    out = {}
    for name, case in CASES.items():
        settings = Settings(verbose=False, **case.get("settings", {}))
        derived = derive(settings, configured_lr=0.05, total_steps=200)
        if "max_lr" in case:
            derived = dataclasses.replace(derived, max_lr=case["max_lr"])
        c = StageController.from_settings(settings, derived)
        states = {}
        for i in range(200):
            c.begin_step()
            c.end_step(math.nan if i == case.get("nan_at") else 1.0 - 0.001 * i)
            if c.step in STEPS:
                states[str(c.step)] = c.state_dict()
        out[name] = {**case, "lrs": c.lrs, "states": states}
    path = Path(__file__).with_name("fallback_warmup_reference.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
