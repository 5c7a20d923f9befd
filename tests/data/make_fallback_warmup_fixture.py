"""Regenerate ``fallback_warmup_reference.json``: run from the repository root of a worktree whose
``lightning_autolrs/`` is main 827b953's (``git checkout 827b953 -- lightning_autolrs``), the last version whose
schedule without a search (a budget too small for one) began with a 5 % linear warmup and decayed over the final
anneal's usual length.

``python tests/data/make_fallback_warmup_fixture.py`` drives that schedule's controller (the configured LR 0.05, a
200-step budget, losses that fall slowly) to the end and writes every step's LR, and its state after steps 5 (in the
warmup), 100 (the LR held) and 170 (the decay), with and without a given ``anneal_ratio``: a later version resumes
each state into the LRs that version trained (``tests/test_controller.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STEPS = (5, 100, 170)
CASES = {"defaults": {}, "anneal_ratio_0.3": {"anneal_ratio": 0.3}}


def main() -> None:
    sys.path.insert(0, ".")
    from lightning_autolrs.controller import StageController
    from lightning_autolrs.settings import Settings, derive

    out = {}
    for name, kwargs in CASES.items():
        settings = Settings(verbose=False, **kwargs)
        c = StageController.from_settings(settings, derive(settings, configured_lr=0.05, total_steps=200))
        states = {}
        for i in range(200):
            c.begin_step()
            c.end_step(1.0 - 0.001 * i)
            if c.step in STEPS:
                states[str(c.step)] = c.state_dict()
        out[name] = {"settings": kwargs, "lrs": c.lrs, "states": states}
    path = Path(__file__).with_name("fallback_warmup_reference.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
