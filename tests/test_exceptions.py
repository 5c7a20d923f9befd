"""The package's warnings are :class:`AutoLRSWarning` (a ``UserWarning``), so users can filter them as one family."""

from __future__ import annotations

import pytest

from lightning_autolrs import AutoLRSWarning

from .helpers import autolrs, make_module_class, trainer_kwargs


def test_a_run_stopped_inside_a_search_warns_with_the_package_category(lpl, tmp_path) -> None:
    class Stop(lpl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 8:  # inside the first stage's search
                trainer.should_stop = True

    model = make_module_class(lpl)()
    trainer = lpl.Trainer(callbacks=[autolrs(), Stop()], **trainer_kwargs(tmp_path, max_steps=100))
    with pytest.warns(AutoLRSWarning, match="the run ended"):
        trainer.fit(model)
    assert issubclass(AutoLRSWarning, UserWarning)  # filters on UserWarning still catch it
