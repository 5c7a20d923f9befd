"""A trial's running average of weights, and the probe of the averaged model.

During a search, a trial at a large LR ends at noisy weights: its last iterate's validation loss carries the noise
that a later LR decay would remove, so a search judging last iterates drifts towards small LRs (the short-horizon
bias). :class:`TrialAverage` keeps an exponential moving average of the trainable parameters over each trial,

.. math::  \\bar w_0 = w_0,\\qquad \\bar w_t = \\bar w_{t-1} + \\alpha\\,(w_t - \\bar w_{t-1}),
           \\qquad \\alpha = 1 / \\max(2, \\tau' / 4),

so the average spans about the last quarter of the trial, and :meth:`TrialAverage.probe` evaluates the probe on the
averaged weights, swapped into the model in place and back (no reallocation; buffers such as BatchNorm statistics are
the model's own). It costs one ``lerp`` over the parameters per trial step and two copies per probe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["TrialAverage"]

#: The average spans about τ' / AVERAGE_SPAN steps.
AVERAGE_SPAN = 4.0


class TrialAverage:
    """Exponential moving average of a module's trainable parameters over one trial.

    Args:
        module: the model whose trainable parameters are averaged.

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> avg = TrialAverage(net)
        >>> avg.start(tau_prime=8)
        >>> with torch.no_grad():
        ...     _ = net.weight.add_(1.0)
        >>> avg.update()
        >>> w = net.weight.detach().clone()
        >>> avg.probe(lambda m: float((m.weight - w).abs().max()))  # the average is half way: alpha = 1/2
        0.5
        >>> bool(torch.equal(net.weight, w))  # the model's own weights are back
        True
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.module = module
        with torch.no_grad():
            self.average = [p.detach().clone() for p in self.params]
            self.spare = [p.detach().clone() for p in self.params]
        self.alpha = 0.5

    @torch.no_grad()
    def start(self, tau_prime: int) -> None:
        """A trial begins from the model's current weights (the stage start)."""
        torch._foreach_copy_(self.average, [p.detach() for p in self.params])
        self.alpha = 1.0 / max(2.0, tau_prime / AVERAGE_SPAN)

    @torch.no_grad()
    def update(self) -> None:
        """Fold the weights after a trial step into the average."""
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], self.alpha)

    @torch.no_grad()
    def probe(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(module)`` evaluated with the averaged weights in the model; the model's weights are restored after."""
        torch._foreach_copy_(self.spare, [p.detach() for p in self.params])
        torch._foreach_copy_([p.detach() for p in self.params], self.average)
        try:
            return fn(self.module)
        finally:
            torch._foreach_copy_([p.detach() for p in self.params], self.spare)

    def state_dict(self) -> dict[str, Any]:
        """The average and its weight (a checkpoint written inside a trial resumes it exactly)."""
        return {"average": [t.detach().cpu().clone() for t in self.average], "alpha": self.alpha}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("average", [])
        if len(saved) == len(self.average):
            torch._foreach_copy_(self.average, [t.to(a.device, a.dtype) for t, a in zip(saved, self.average)])
        self.alpha = float(state.get("alpha", self.alpha))
