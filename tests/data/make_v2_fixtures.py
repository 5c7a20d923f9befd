"""Regenerate the version-2 checkpoint fixtures (``v2_*``): run from the repository root of a worktree whose
``lightning_autolrs/`` is main b288f95's (``git checkout b288f95 -- lightning_autolrs``), the last version with the
search options ``early_stop``, ``min_trials``, ``abort_trials``, ``warm_start`` and ``average_trials``.

``python tests/data/make_v2_fixtures.py`` writes, for each case, a Lightning checkpoint taken at step 48 (inside the
second stage's search) and a JSON reference of the uninterrupted run (LRs, history, final weights):

* ``v2_defaults``: the tests' usual settings, those options off (b288f95's defaults): a later version resumes it
  bitwise (step 48 is inside the last stage, so the later upward-only search of that stage does not enter).
* ``v2_options``: all five options on, with validation data, so the checkpoint holds what they wrote (a warm-started
  stage 1 with prior points in its proposer, the search's stage level, the trial weight average in flight): a later
  version that no longer has them loads it and continues with the defaults' behaviour
  (``tests/test_checkpoint_compat.py``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

STEP = 48
CASES: dict[str, tuple[dict, bool]] = {  # AutoLRS arguments over the tests' defaults, validation data
    "v2_defaults": ({}, False),
    "v2_options": (
        dict(early_stop=True, min_trials=2, abort_trials=True, warm_start=True, average_trials=True),
        True,
    ),
}


def main() -> None:
    import lightning.pytorch as lpl
    import torch

    torch.set_num_threads(1)  # as tests/conftest.py: the tests resume these runs with one thread (bitwise)
    sys.path.insert(0, ".")
    from tests.helpers import autolrs, fit_full_batch

    out, tmp = Path("tests/data"), Path("/tmp/autolrs_v2_fixtures")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, (kw, validation) in CASES.items():
        cb = autolrs(**kw)
        _, model = fit_full_batch(lpl, tmp / name, cb, save_every_epoch=True, validation=validation)
        shutil.copy(tmp / name / "ckpt" / f"step={STEP}.ckpt", out / f"{name}_step{STEP}.ckpt")
        ref = {
            "kwargs": kw,
            "validation": validation,
            "lrs": cb.lrs,
            "history": cb.history,
            "params": [p.detach().flatten().tolist() for p in model.parameters()],
        }
        (out / f"{name}_reference.json").write_text(json.dumps(ref))


if __name__ == "__main__":
    main()
