"""Replay a found schedule at zero search cost.

:class:`ReplaySchedule` is a callback that applies, step by step, the exploit LRs of a schedule that an earlier
:class:`~lightning_autolrs.AutoLRS` run found (its warmup, then each stage's chosen LR for the stage's exploit steps;
the search steps are left out). The next run of the same recipe (another seed, more data, a longer budget) gets the
schedule without paying for the search.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from lightning_autolrs._edge import apply_lr, callback_bases, check_single_optimizer
from lightning_autolrs.exceptions import InvalidArgumentError
from lightning_autolrs.schedule import Schedule, load_schedule

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["ReplaySchedule"]


class ReplaySchedule(*callback_bases()):  # type: ignore[misc]
    """Apply a saved AutoLRS schedule's exploit LRs, one per optimizer step.

    Args:
        schedule: a :class:`~lightning_autolrs.schedule.Schedule` or the path of a saved schedule JSON.
        stretch: ``False`` (default): step ``i`` gets the ``i``-th exploit LR and steps past the end keep the last
            one. ``True``: the exploit LRs are stretched (or compressed) over the Trainer's whole step budget, so a
            schedule found with a budget of N steps can drive a run of M steps.

    Attributes:
        lrs: the base LR applied at each optimizer step of this run.

    Example:
        >>> from lightning_autolrs.schedule import Schedule
        >>> replay = ReplaySchedule(Schedule(lrs=[0.5, 0.1, 0.1], stages=[{"exploit_start": 1, "exploit_steps": 2}]))
        >>> replay.exploit_lrs
        [0.1, 0.1]
    """

    def __init__(self, schedule: Schedule | str | os.PathLike[str], *, stretch: bool = False) -> None:
        super().__init__()
        if not isinstance(schedule, Schedule):
            if not isinstance(schedule, str | os.PathLike):
                raise InvalidArgumentError(
                    f"`schedule` must be a Schedule or the path of a saved schedule, got {type(schedule).__name__}."
                )
            schedule = load_schedule(schedule)
        self.exploit_lrs = schedule.exploit_lrs()
        if not self.exploit_lrs or not all(math.isfinite(x) and x > 0 for x in self.exploit_lrs):
            raise InvalidArgumentError(
                "`schedule` has no exploit steps with positive, finite LRs to replay; save it after an AutoLRS run "
                "that finished at least one stage."
            )
        self._stretch = bool(stretch)
        self._ratios: list[float] = []
        self._total: int | None = None
        self.lrs: list[float] = []

    def lr_at(self, step: int) -> float:
        """The base LR for optimizer step ``step``."""
        n = len(self.exploit_lrs)
        if self._stretch and self._total:
            index = min(n - 1, int(step * n / self._total))
        else:
            index = min(step, n - 1)
        return self.exploit_lrs[index]

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        base = check_single_optimizer(trainer, "ReplaySchedule")
        self._ratios = [float(g["lr"]) / base for g in trainer.optimizers[0].param_groups]
        total = trainer.estimated_stepping_batches
        self._total = None if math.isinf(total) else int(total)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if len(self.lrs) > step:
            return  # a later micro-batch of the same optimizer step (gradient accumulation)
        lr = self.lr_at(step)
        apply_lr(trainer.optimizers[0], lr, self._ratios)
        self.lrs.append(lr)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"lrs": list(self.lrs), "ratios": list(self._ratios)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.lrs = [float(x) for x in state_dict.get("lrs", [])]
