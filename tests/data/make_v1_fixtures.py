"""Regenerate the version-1 checkpoint fixtures (``v1_*``): run from the repository root at main 79ae66d.

``python tests/data/make_v1_fixtures.py`` writes, for each case, a Lightning checkpoint taken at step 12 and a JSON
reference of the uninterrupted run (LRs, history, range test, final weights). They pin the state format of the code
that wrote them: a later version must still load and resume them (``tests/test_checkpoint_compat.py``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

CASES = {
    "v1_search": {},  # step 12: inside the first stage's search, the stage snapshot travels along
    "v1_range_test": dict(min_lr=None, max_lr=None, range_test_steps=30, reuse_best_trial=True),  # inside the sweep
}


def main() -> None:
    import lightning.pytorch as lpl

    sys.path.insert(0, ".")
    from tests.test_callback_resume import autolrs, run

    out, tmp = Path("tests/data"), Path("/tmp/autolrs_v1_fixtures")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, kw in CASES.items():
        cb = autolrs(**kw)
        _, model = run(lpl, tmp / name, cb, save_every_epoch=True)
        shutil.copy(tmp / name / "ckpt" / "step=12.ckpt", out / f"{name}_step12.ckpt")
        ref = {
            "kwargs": kw,
            "lrs": cb.lrs,
            "history": cb.history,
            "range_test_result": cb.range_test_result,
            "min_lr": cb.min_lr,
            "max_lr": cb.max_lr,
            "params": [p.detach().flatten().tolist() for p in model.parameters()],
            "state_dict": cb.state_dict(),
        }
        (out / f"{name}_reference.json").write_text(json.dumps(ref))


if __name__ == "__main__":
    main()
