"""lightning-autolrs: automatic learning-rate schedules by Bayesian optimisation on the fly, as a Lightning callback.

>>> from lightning_autolrs import AutoLRS
>>> AutoLRS(min_lr=1e-4, max_lr=1e-1).phase
'warmup'
"""

from lightning_autolrs.callback import AutoLRS
from lightning_autolrs.exceptions import (
    AutoLRSError,
    AutoLRSWarning,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    NonFiniteLossError,
    ScheduleFormatError,
    UnsupportedSetupError,
)
from lightning_autolrs.replay import ReplaySchedule
from lightning_autolrs.schedule import Schedule, load_schedule, save_schedule

__version__ = "0.1.0"

__all__ = [
    "AutoLRS",
    "AutoLRSError",
    "AutoLRSWarning",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "NonFiniteLossError",
    "ReplaySchedule",
    "Schedule",
    "ScheduleFormatError",
    "UnsupportedSetupError",
    "__version__",
    "load_schedule",
    "save_schedule",
]
