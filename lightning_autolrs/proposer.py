r"""Bayesian-optimisation proposer of the trial learning rates of one AutoLRS stage.

Within a stage AutoLRS tries ``k`` candidate learning rates; each trial yields a *predicted loss* (lower is better).
:class:`LRProposer` models the predicted loss as a function of the normalised log learning rate

.. math::

    x = \frac{\ln \mathrm{lr} - \ln \mathrm{min\_lr}}{\ln \mathrm{max\_lr} - \ln \mathrm{min\_lr}} \in [0, 1],

with a BoTorch ``SingleTaskGP`` (RBF kernel with BoTorch's default priors, inferred noise, zero prior mean on the
``Standardize(m=1)``-transformed targets, i.e. unexplored regions revert to the average observation). Its two
hyper-parameters, the lengthscale ``l`` and the noise variance ``s2``, are set to the maximum a posteriori of the exact
marginal likelihood (what ``fit_gpytorch_mll`` maximises with the ``ExactMarginalLogLikelihood``, priors included),
found by a batched grid search instead of L-BFGS:

.. math::

    \log p(y \mid l, s^2) + \log p(l) + \log p(s^2), \qquad
    \log p(y \mid l, s^2) = -\tfrac12 \sum_i \frac{(Q_l^\top y)_i^2}{\lambda_{l,i} + s^2}
        - \tfrac12 \sum_i \log(\lambda_{l,i} + s^2) + \text{const},

where ``K_l = Q_l diag(lambda_l) Q_l^T`` is the eigendecomposition of the noiseless RBF kernel matrix: one batched
``eigh`` over the lengthscales gives the likelihood at every noise level at once. 48 log-spaced lengthscales in
``[lower bound, 100]`` are each tried against 129 log-spaced noise levels in ``[lower bound, 10]`` (the standardised
targets have unit variance), so no ridge between the two is missed; the vertex of a parabola through the profile
(best over the noise) at the best lengthscale and its neighbours refines ``log l``, and 33 noise levels around the best
one refine ``s2`` there (the refined point is kept if it is no worse than the grid's best). It finds the global maximum
where L-BFGS may stop at a local one, needs no random restarts, and takes about 1 ms instead of the 20-50 ms of
``fit_gpytorch_mll`` (``python -m benchmarks.proposer_fit`` compares the two fits' proposals).

The GP is fitted to ``y = -loss`` so that the problem becomes a maximisation, and the next ``x`` maximises the analytic
upper confidence bound

.. math::

    \mathrm{UCB}(x) = \mu(x) + \sqrt{\beta}\,\sigma(x),

where ``mu`` and ``sigma`` are the posterior mean and standard deviation of ``-loss`` at ``x`` (latent function, no
observation noise). Shapes: training inputs ``n x 1`` and targets ``n x 1`` (``torch.float64``); the acquisition is
evaluated once, batched, on a dense grid of ``grid_size`` points of ``[0, 1]`` shaped ``grid_size x 1 x 1`` (the
``b x q x d`` layout with ``q = d = 1``) and returns ``grid_size`` values. In one dimension this grid search is an
exact-enough maximiser: its resolution is ``1 / (grid_size - 1)`` in ``x``, i.e. about 0.004 decades of LR for the
default 1025 points over four decades.

Rules:

* **Initial design.** While fewer than ``num_initial`` observations can enter the GP, proposals come from a randomly
  shifted golden-ratio (Kronecker) sequence ``u_i = frac(u_0 + i (sqrt(5) - 1) / 2)``, ``u_0`` drawn from a
  ``torch.Generator`` seeded with ``seed`` (``seed=None`` means seed ``0``), ``i`` = number of observations so far. Any
  prefix of this sequence is evenly spread (three-gap theorem), so even two points are far apart, and the sequence is
  fully determined by the seed. A stage whose first trial runs at a given LR (``reset(anchor=lr)``, the stage's anchor)
  starts the sequence there instead: ``u_0`` is the anchor's ``x`` and the sequence steps by ``+(sqrt(5) - 1) / 2`` or
  by its negative (the direction drawn from ``seed``), so the anchor is the design's first point and the next one lies
  at least 0.38 away from it. With a random ``u_0`` the second point could land next to the anchor (within 0.15 of
  it in 64 of the 128 first stages of the benchmarks' runs of seeds 0-2 and 40-49: ``benchmarks/HISTORY.md``, stop
  51), where two trials of almost the same LR differ by noise alone and the GP, fitted to them, proposes small steps
  away from both.
* **Duplicates.** No proposal lies within ``dedup_tol`` (in ``x`` units, default ``1e-3``, i.e. 0.1 % of the log
  range) of an ``x`` already tried: such grid points / design points are skipped. If every grid point is excluded the
  grid point farthest from all tried points is returned.
* **Divergence.** A trial marked ``diverged`` (or whose loss is NaN/inf) enters the GP with the penalty
  ``worst + max(range, 0.1 |worst|, 1e-8)``, where ``worst`` and ``range`` are the largest value and the spread of the
  finite, non-diverged losses: it ranks below every real observation by at least the observed spread (or 10 % of
  ``|worst|``), without the unbounded values that would wreck the standardisation. Without any finite observation the
  diverged trials are left out of the GP. Divergence is assumed monotone in the LR, so whenever a trial diverged,
  proposals (initial design and GP alike) are taken below the lowest diverged ``x`` while that interval has a free
  point; the design is then scaled into ``[0, x_div)``.
* **Fallback.** If the GP cannot be fitted or used (all targets equal, non-finite values, a ``NotPSDError`` /
  ``LinAlgError`` / BoTorch fitting error, NaN acquisition values) the proposal falls back to the initial design among
  untried points. Warnings raised by BoTorch / GPyTorch during the fit (e.g. the ``InputDataWarning`` about
  standardisation for near-constant targets) are caught locally and logged at ``DEBUG`` level, never shown globally.

The fit is deterministic (no random restarts), so proposals depend only on the observations and ``seed``, and the
caller's global RNG stream is left untouched.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from numbers import Real
from typing import Any

import botorch
import gpytorch
import torch
from botorch.acquisition.analytic import UpperConfidenceBound
from botorch.exceptions.errors import BotorchError, ModelFittingError
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from gpytorch.means import ZeroMean
from gpytorch.mlls import ExactMarginalLogLikelihood
from linear_operator.utils.errors import NanError, NotPSDError

from lightning_autolrs._threads import on_one_thread
from lightning_autolrs._validation import check_float, check_int
from lightning_autolrs.exceptions import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["DEFAULT_BETA", "LRProposer"]

log = logging.getLogger(__name__)

#: Default UCB exploration weight (see :class:`LRProposer`); callers that expose ``beta`` should default to it.
DEFAULT_BETA: float = 8.0
_DEFAULT_SEED = 0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_NUM_DESIGN_CANDIDATES = 2048
_STATE_VERSION = 1
# The hyper-parameter grid of the MAP fit (module docstring): upper ends and sizes of the coarse and the refining grid.
_LENGTHSCALE_MAX = 100.0
_NOISE_MAX = 10.0
_LENGTHSCALE_POINTS = 48
_NOISE_POINTS = 129
_NOISE_REFINE = 33
_FITS = ("map", "lbfgs")
# The fit of version-1 states (`fit="lbfgs"`): L-BFGS-B stops once the negative marginal log likelihood improves by
# less than 1e-4 relative per iteration.
_LBFGS_OPTIONS: dict[str, Any] = {"options": {"ftol": 1e-4}}
# The GP the MAP fits of this thread reuse (`model`), its hyper-parameter grid (`grid`) and the data key it was last
# fitted to (`key`; None: unusable).
_MAP_GP = threading.local()
# Exceptions a degenerate GP fit / prediction can raise; anything else is a bug and propagates.
_GP_ERRORS: tuple[type[BaseException], ...] = (
    BotorchError,
    ModelFittingError,
    NotPSDError,
    NanError,
    torch.linalg.LinAlgError,
    ValueError,
    FloatingPointError,
    OverflowError,
)


class LRProposer:
    """Propose the next trial learning rate of a stage by GP-UCB on the normalised log LR.

    Args:
        min_lr: lower end of the LR range (``> 0``).
        max_lr: upper end of the LR range (``> min_lr``).
        beta: UCB exploration weight; the bound is ``mean + sqrt(beta) * std``. The default ``8.0``
            (``sqrt(beta)`` about 2.8) leans towards exploration because a stage has only about ten trials and
            ``best()`` keeps the best *observed* trial, so a trial spent checking an unexplored region costs little,
            while missing the better basin costs the whole stage (``tests/test_proposer.py`` checks that it finds
            the global basin of two-basin functions).
        seed: seed of the initial design (``None`` means ``0``, so results are reproducible either way).
        num_initial: number of observations the GP needs before it is used; earlier proposals come from the design.
        dedup_tol: minimal distance, in normalised ``x`` units (``[0, 1]`` spans the log range), between a proposal
            and any tried point; ``1e-3`` is 0.1 % of the log range. Must lie in ``(0, 0.5)``.
        grid_size: number of points of the grid of ``[0, 1]`` on which the acquisition is maximised (``>= 16``).
        fit: how the GP's hyper-parameters are fitted: ``"map"`` (default), the grid search of the module docstring;
            ``"lbfgs"``, BoTorch's ``fit_gpytorch_mll`` (20-50 ms a fit), which runs resumed from version-1 states
            continue with, so they propose what they would have.

    Raises:
        InvalidArgumentError: an argument is out of range (the message names it and the value).
        InvalidArgumentTypeError: an argument has the wrong type.

    Example:
        >>> import math
        >>> proposer = LRProposer(1e-4, 1.0, seed=0)
        >>> proposer.to_unit(1e-2)
        0.5
        >>> for _ in range(6):
        ...     lr = proposer.propose()
        ...     proposer.observe(lr, (math.log10(lr) + 2.0) ** 2)
        >>> proposer.num_observations
        6
        >>> lr, loss = proposer.best()
        >>> 1e-4 <= lr <= 1.0 and loss == (math.log10(lr) + 2.0) ** 2
        True
        >>> proposer.reset(max_lr=0.1)
        >>> proposer.num_observations, proposer.best()
        (0, None)
    """

    def __init__(
        self,
        min_lr: float,
        max_lr: float,
        *,
        beta: float = DEFAULT_BETA,
        seed: int | None = None,
        num_initial: int = 2,
        dedup_tol: float = 1e-3,
        grid_size: int = 1025,
        fit: str = "map",
    ) -> None:
        self.min_lr, self.max_lr = _check_bounds(min_lr, max_lr)
        self.beta = check_float("beta", beta, positive=True)
        self.seed = check_int("seed", seed, minimum=0, allow_none=True)
        self.num_initial = check_int("num_initial", num_initial, minimum=1)
        self.dedup_tol = _check_dedup_tol(dedup_tol)
        self.grid_size = check_int("grid_size", grid_size, minimum=16)
        self.fit = _check_fit(fit)
        self._lrs: list[float] = []
        self._losses: list[float] = []
        self._diverged: list[bool] = []
        self.anchor: float | None = None  # the LR the stage's design starts at (reset(anchor=...)), else None
        # (data key, fitted GP) of the last fit (benchmarks/proposer_fit.py reads the GP); with fit="map" the GP is the
        # thread's shared one (`_MAP_GP`), which another proposer's fit may since have given other data: only
        # `_MAP_GP.key` says what it holds, and only the L-BFGS path reuses a fit from here (the key names the fit)
        self._fitted: tuple[Any, SingleTaskGP] | None = None
        self._rebuild()

    # ------------------------------------------------------------------ coordinates
    def to_unit(self, lr: float) -> float:
        """Map a learning rate to ``x = (ln lr - ln min_lr) / (ln max_lr - ln min_lr)`` (not clipped)."""
        lr = check_float("lr", lr, positive=True)
        return (math.log(lr) - self._log_min) / self._log_span

    def from_unit(self, x: float) -> float:
        """Map ``x`` (clipped to ``[0, 1]``) back to a learning rate in ``[min_lr, max_lr]``."""
        x = check_float("x", x)
        if x <= 0.0:
            return self.min_lr
        if x >= 1.0:
            return self.max_lr
        return min(max(math.exp(self._log_min + x * self._log_span), self.min_lr), self.max_lr)

    # ------------------------------------------------------------------ state
    @property
    def num_observations(self) -> int:
        """Number of observations of the current stage, diverged ones included."""
        return len(self._lrs)

    def reset(
        self,
        min_lr: float | None = None,
        max_lr: float | None = None,
        seed: int | None = None,
        *,
        anchor: float | None = None,
    ) -> None:
        """Start a new stage: forget every observation; ``None`` bounds / seed keep the current ones. ``anchor``: the LR
        of the stage's first trial, when the caller gives it (the initial design then starts at it: module docstring);
        ``None``, the design's random start."""
        new_min = self.min_lr if min_lr is None else min_lr
        new_max = self.max_lr if max_lr is None else max_lr
        new_min, new_max = _check_bounds(new_min, new_max)
        new_seed = self.seed if seed is None else check_int("seed", seed, minimum=0)
        self.anchor = None if anchor is None else check_float("anchor", anchor, positive=True)
        self.min_lr, self.max_lr, self.seed = new_min, new_max, new_seed
        self._lrs, self._losses, self._diverged = [], [], []
        self._rebuild()

    def observe(self, lr: float, loss: float | None, *, diverged: bool = False) -> None:
        """Record the predicted ``loss`` of a trial at ``lr``.

        Args:
            lr: the trial's learning rate (``> 0``; values outside the range are clipped to it in ``x``).
            loss: the trial's predicted loss. ``None``, NaN or inf count as a diverged trial.
            diverged: the trial diverged; its loss is then replaced by the penalty described in the module docstring.
        """
        lr = check_float("lr", lr, positive=True)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            loss = loss.item()
        if loss is None:
            loss = math.nan
        elif isinstance(loss, bool) or not isinstance(loss, Real):
            raise InvalidArgumentTypeError(f"`loss` must be a number, got {loss!r} of type {type(loss).__name__}.")
        loss = float(loss)
        self._lrs.append(lr)
        self._losses.append(loss)
        self._diverged.append(bool(diverged) or not math.isfinite(loss))

    def best(self) -> tuple[float, float] | None:
        """``(lr, loss)`` of the lowest loss among non-diverged observations (ties: smaller LR), or ``None``."""
        ok = [(loss, lr) for lr, loss, d in zip(self._lrs, self._losses, self._diverged) if not d]
        if not ok:
            return None
        loss, lr = min(ok)
        return lr, loss

    def training_data(self) -> tuple[list[float], list[float]]:
        """The ``(x, loss)`` pairs the GP is fitted to: ``x`` clipped to ``[0, 1]``, diverged losses replaced by the
        penalty. Both lists are empty while no finite, non-diverged loss exists (diverged trials are then left out)."""
        data = self._gp_data(self._tried_x())
        return ([], []) if data is None else data

    def state_dict(self) -> dict[str, Any]:
        """Configuration and observations as plain Python values (safe for ``torch.load(weights_only=True)``)."""
        return {
            "version": _STATE_VERSION,
            "min_lr": self.min_lr,
            "max_lr": self.max_lr,
            "beta": self.beta,
            "seed": self.seed,
            "num_initial": self.num_initial,
            "dedup_tol": self.dedup_tol,
            "grid_size": self.grid_size,
            "fit": self.fit,
            "lrs": list(self._lrs),
            "losses": [loss if math.isfinite(loss) else None for loss in self._losses],
            "diverged": list(self._diverged),
            "anchor": self.anchor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; missing keys keep the current values (the prior points of the
        removed warm start, ``prior_lrs`` / ``prior_losses`` in older states, are ignored), except ``anchor``: a state
        without it was written before the design started at the anchor, and its stage goes on with the random start
        it began with."""
        min_lr, max_lr = _check_bounds(state.get("min_lr", self.min_lr), state.get("max_lr", self.max_lr))
        beta = check_float("beta", state.get("beta", self.beta), positive=True)
        seed = check_int("seed", state.get("seed", self.seed), minimum=0, allow_none=True)
        num_initial = check_int("num_initial", state.get("num_initial", self.num_initial), minimum=1)
        dedup_tol = _check_dedup_tol(state.get("dedup_tol", self.dedup_tol))
        grid_size = check_int("grid_size", state.get("grid_size", self.grid_size), minimum=16)
        fit = _check_fit(state.get("fit", self.fit))
        lrs = [check_float("lrs", v, positive=True) for v in state.get("lrs", [])]
        losses = [math.nan if v is None else float(v) for v in state.get("losses", [])]
        flags = [bool(v) for v in state.get("diverged", [False] * len(lrs))]
        if not len(lrs) == len(losses) == len(flags):
            raise InvalidArgumentError(
                f"`state` has {len(lrs)} `lrs`, {len(losses)} `losses` and {len(flags)} `diverged` entries; "
                "they must have the same length."
            )
        anchor = state.get("anchor")
        self.anchor = None if anchor is None else check_float("anchor", anchor, positive=True)
        self.min_lr, self.max_lr, self.beta, self.seed = min_lr, max_lr, beta, seed
        self.num_initial, self.dedup_tol, self.grid_size, self.fit = num_initial, dedup_tol, grid_size, fit
        self._lrs, self._losses = lrs, losses
        self._diverged = [d or not math.isfinite(v) for d, v in zip(flags, losses)]
        self._rebuild()

    # ------------------------------------------------------------------ proposing
    @on_one_thread
    def propose(self) -> float:
        """Return the next trial learning rate, in ``[min_lr, max_lr]`` (computed on one torch thread: the caller's
        thread count is put back afterwards)."""
        return self.from_unit(self._propose_unit())

    def _propose_unit(self) -> float:
        tried = self._tried_x()
        upper = self._diverged_upper(tried)
        data = self._gp_data(tried)
        if data is not None and len(data[0]) >= self.num_initial:
            x = self._propose_gp(*data, tried=tried, upper=upper)
            if x is not None:
                return x
        return self._propose_design(tried, upper)

    def _tried_x(self) -> torch.Tensor:
        xs = [min(max(self.to_unit(lr), 0.0), 1.0) for lr in self._lrs]
        return torch.tensor(xs, dtype=torch.float64)

    def _diverged_upper(self, tried: torch.Tensor) -> float | None:
        div = [x for x, d in zip(tried.tolist(), self._diverged) if d]
        return min(div) if div else None

    def _gp_data(self, tried: torch.Tensor) -> tuple[list[float], list[float]] | None:
        """GP training points ``(x, loss)`` with penalties for diverged trials; ``None`` without finite losses."""
        finite = [loss for loss, d in zip(self._losses, self._diverged) if not d]
        if not finite:
            return None
        xs, ys = tried.tolist(), list(self._losses)
        worst = max(finite)
        penalty = worst + max(worst - min(finite), 0.1 * abs(worst), 1e-8)
        ys = [penalty if d else y for d, y in zip(self._diverged, ys)]
        return xs, ys

    def _free_mask(self, points: torch.Tensor, tried: torch.Tensor) -> torch.Tensor:
        """``True`` where a point is at least ``dedup_tol`` (plus rounding slack) away from every tried point."""
        if tried.numel() == 0:
            return torch.ones_like(points, dtype=torch.bool)
        dist = (points.unsqueeze(-1) - tried).abs().min(dim=-1).values
        return dist >= self.dedup_tol * (1.0 + 1e-6) + 1e-12

    def _propose_design(self, tried: torch.Tensor, upper: float | None) -> float:
        """The next point of the shifted golden-ratio sequence (scaled into ``[0, upper)``; from an anchor, its points
        below ``upper``) that is not tried yet."""
        hi = 1.0 if upper is None else upper
        idx = torch.arange(len(self._lrs), len(self._lrs) + _NUM_DESIGN_CANDIDATES, dtype=torch.float64)
        if self.anchor is None:
            cands = torch.frac(self._shift + idx * _GOLDEN) * hi
            free = self._free_mask(cands, tried)
        else:
            origin = min(max(self.to_unit(self.anchor), 0.0), 1.0)
            cands = torch.remainder(origin + self._direction * idx * _GOLDEN, 1.0)
            free = self._free_mask(cands, tried) & (cands < hi)
        if bool(free.any()):
            return float(cands[int(free.nonzero()[0])])
        return self._grid_fallback(tried, upper)

    def _grid_fallback(self, tried: torch.Tensor, upper: float | None) -> float:
        """The free grid point farthest from the tried points (below ``upper`` if possible); if none is free, the
        grid point farthest from all tried points."""
        grid = self._grid
        dist = (grid.unsqueeze(-1) - tried).abs().min(dim=-1).values if tried.numel() else torch.ones_like(grid)
        free = self._free_mask(grid, tried)
        for ok in ((free & (grid < upper)) if upper is not None else free, free):
            if bool(ok.any()):
                return float(grid[int(torch.where(ok, dist, -math.inf).argmax())])
        return float(grid[int(dist.argmax())])

    def _propose_gp(
        self, xs: list[float], ys: list[float], *, tried: torch.Tensor, upper: float | None
    ) -> float | None:
        """Maximise UCB of ``-loss`` on the grid; ``None`` when the GP is degenerate or fails."""
        values = self._fit_ucb(xs, ys)
        if values is None:
            return None
        ok = self._free_mask(self._grid, tried) & torch.isfinite(values)
        if upper is not None and bool((ok & (self._grid < upper)).any()):
            ok &= self._grid < upper
        if not bool(ok.any()):
            if bool(torch.isfinite(values).any()):
                return self._grid_fallback(tried, upper)  # every grid point is taken
            log.debug("LRProposer: non-finite acquisition values, using the initial design.")
            return None
        return float(self._grid[int(torch.where(ok, values, -math.inf).argmax())])

    def _fit_ucb(self, xs: list[float], ys: list[float]) -> torch.Tensor | None:
        """Fit the GP to ``(x, -rescaled loss)`` and evaluate UCB on the grid.

        Returns the values shaped ``(grid_size,)``, or ``None`` when the targets are degenerate or the GP fails (both
        logged at ``DEBUG``; warnings of the fit are caught and logged, never shown).
        """
        y = _rescale(ys)
        if y is None:
            log.debug("LRProposer: degenerate targets %s, using the initial design.", ys)
            return None
        train_x = torch.tensor(xs, dtype=torch.float64).unsqueeze(-1)
        train_y = (-y).unsqueeze(-1)
        values: torch.Tensor | None = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                values = self._ucb_on_grid(train_x, train_y)
            except _GP_ERRORS as err:
                log.debug("LRProposer: GP failed (%s: %s), using the initial design.", type(err).__name__, err)
        for w in caught:
            log.debug("LRProposer: %s during the GP fit: %s", w.category.__name__, w.message)
        if values is None:
            return None
        return values.detach().reshape(-1)

    def _ucb_on_grid(self, train_x: torch.Tensor, train_y: torch.Tensor) -> torch.Tensor:
        """Fit the GP to ``(n x 1, n x 1)`` float64 data and return UCB on the ``grid_size x 1 x 1`` grid.

        The MAP fit runs under ``torch.inference_mode`` (no autograd bookkeeping, the same values) on one GP per
        thread, given each decision's data (:func:`_set_train_data`: bitwise the GP a new ``SingleTaskGP`` would be, at
        a fraction of its construction time); since that fit depends on the data only, the GP is reused as it stands
        whenever it was last fitted to the same data. The L-BFGS fit starts from a new GP each time, as it always
        did."""
        key = (self.fit, self._effective_seed, tuple(train_x.reshape(-1).tolist()), tuple(train_y.reshape(-1).tolist()))
        if self.fit != "map":
            with torch.no_grad(), gpytorch.settings.debug(False):
                if self._fitted is not None and self._fitted[0] == key:
                    model = self._fitted[1]  # same data: the fit is reused
                else:
                    model = _make_model(train_x, train_y)
                    self._fit_model(model)
                    self._fitted = (key, model)
                return UpperConfidenceBound(model, beta=self.beta)(self._grid.view(-1, 1, 1))
        shared = _MAP_GP.__dict__
        if "model" not in shared:
            with torch.no_grad():
                shared["model"] = _make_model(train_x, train_y)  # (its parameters stay ordinary tensors)
                shared["grid"] = _MapGrid(shared["model"])
        model = shared["model"]
        with torch.inference_mode(), gpytorch.settings.debug(False):
            if shared.get("key") != key:
                shared["key"] = None  # (until the fit below has succeeded)
                fit_map(_set_train_data(model, train_x, train_y), shared["grid"])
                shared["key"] = key
            self._fitted = (key, model)
            return UpperConfidenceBound(model, beta=self.beta)(self._grid.view(-1, 1, 1))

    def _fit_model(self, model: SingleTaskGP) -> None:
        """``fit="lbfgs"``: set the GP's hyper-parameters with BoTorch's ``fit_gpytorch_mll`` as the package did before
        issue 14 (L-BFGS-B to ``ftol=1e-4``, its random restarts seeded from ``seed`` and the number of points) and put
        it in eval mode. (``fit="map"``: :func:`fit_map`, in :meth:`_ucb_on_grid`.)"""
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(self._effective_seed * 1_000_003 + model.train_inputs[0].shape[0])
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model), optimizer_kwargs=_LBFGS_OPTIONS)
        model.eval()

    # ------------------------------------------------------------------ helpers
    @property
    def _effective_seed(self) -> int:
        return _DEFAULT_SEED if self.seed is None else self.seed

    def _rebuild(self) -> None:
        self._log_min = math.log(self.min_lr)
        self._log_span = math.log(self.max_lr) - self._log_min
        self._grid = torch.linspace(0.0, 1.0, self.grid_size, dtype=torch.float64)
        gen = torch.Generator().manual_seed(self._effective_seed)
        self._shift = float(torch.rand((), generator=gen, dtype=torch.float64))
        # the direction of a design that starts at the anchor (the next draw: the shift above stays what it was)
        self._direction = 1.0 if float(torch.rand((), generator=gen, dtype=torch.float64)) < 0.5 else -1.0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(min_lr={self.min_lr!r}, max_lr={self.max_lr!r}, beta={self.beta!r}, "
            f"seed={self.seed!r}, num_initial={self.num_initial!r}, dedup_tol={self.dedup_tol!r}, "
            f"grid_size={self.grid_size!r}, fit={self.fit!r}, num_observations={self.num_observations})"
        )


def _make_model(train_x: torch.Tensor, train_y: torch.Tensor) -> SingleTaskGP:
    # The inputs lie in [0, 1] and `_rescale` has checked the targets (finite, not constant): BoTorch's scaling checks
    # would only repeat that, at a sixth of the model's construction time.
    with botorch.settings.validate_input_scaling(False):
        return SingleTaskGP(train_x, train_y, mean_module=ZeroMean(), outcome_transform=Standardize(m=1))


def _set_train_data(model: SingleTaskGP, train_x: torch.Tensor, train_y: torch.Tensor) -> SingleTaskGP:
    """Give a GP of :func:`_make_model` new training data, as its constructor would have: the outcome transform
    (``Standardize``) refitted to ``train_y`` and the standardised targets set (which also drops the prediction
    caches). The hyper-parameters are left as they are: the MAP fit sets both from the grid, whatever they were."""
    model.train()
    targets, _ = model.outcome_transform(Y=train_y, Yvar=None, X=train_x)
    model.set_train_data(inputs=train_x, targets=targets.squeeze(-1), strict=False)  # type: ignore[operator]
    return model


class _MapGrid:
    """The hyper-parameter grid of :func:`fit_map` for a model's bounds and priors, with the priors' log densities on
    it: what every fit of that model computes again, whatever its data (a model's priors and bounds do not change)."""

    def __init__(self, model: SingleTaskGP) -> None:
        kernel, noise_covar = model.covar_module, model.likelihood.noise_covar
        self.dtype = dtype = model.train_inputs[0].dtype
        self.lengthscale_prior = kernel.lengthscale_prior
        self.noise_prior = noise_covar.noise_prior
        ls_lo = float(kernel.raw_lengthscale_constraint.lower_bound) * (1.0 + 1e-6)
        nz_lo = float(noise_covar.raw_noise_constraint.lower_bound) * (1.0 + 1e-6)
        self.noises = torch.logspace(math.log10(nz_lo), math.log10(_NOISE_MAX), _NOISE_POINTS, dtype=dtype)
        self.noises_log_prior = self.noise_prior.log_prob(self.noises)
        self.log_ls = torch.linspace(math.log(ls_lo), math.log(_LENGTHSCALE_MAX), _LENGTHSCALE_POINTS, dtype=dtype)
        self.ls = self.log_ls.exp()
        self.ls_log_prior = self.lengthscale_prior.log_prob(self.ls)
        self._refine: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def refine(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise levels between the neighbours of ``noises[j]`` and their log prior (cached per ``j``)."""
        if j not in self._refine:
            noises = self.noises
            nz = torch.logspace(
                math.log10(float(noises[max(j - 2, 0)])),
                math.log10(float(noises[min(j + 2, noises.numel() - 1)])),
                _NOISE_REFINE,
                dtype=self.dtype,
            )
            self._refine[j] = nz, self.noise_prior.log_prob(nz)
        return self._refine[j]


def fit_map(model: SingleTaskGP, grid: _MapGrid | None = None) -> None:
    """Set a one-dimensional RBF ``SingleTaskGP``'s lengthscale and noise to the MAP of its exact marginal likelihood.

    The priors and lower bounds are read from the model (BoTorch's defaults: ``LogNormal`` priors, ``l >= 0.025``,
    ``s2 >= 1e-4``); the search is the grid of the module docstring, on the model's (standardised)
    ``train_targets``. ``grid``: the model's :class:`_MapGrid` when the caller keeps it between fits (the same values).
    Leaves the model in eval mode.

    Raises:
        FloatingPointError: no grid point has a finite objective (non-finite data).
    """
    kernel, noise_covar = model.covar_module, model.likelihood.noise_covar
    g = _MapGrid(model) if grid is None else grid
    x = model.train_inputs[0].reshape(-1)
    y = model.train_targets.reshape(-1)
    d2 = (x[:, None] - x[None, :]).square()
    noises = g.noises

    def objective(ls: torch.Tensor, ls_prior: torch.Tensor, nz: torch.Tensor, nz_prior: torch.Tensor) -> torch.Tensor:
        """Log MAP objective (up to a constant) on the ``len(ls) x len(nz)`` grid; non-finite values read -inf."""
        lam, q = torch.linalg.eigh(torch.exp(-0.5 * d2 / ls.view(-1, 1, 1).square()))
        proj = (q.transpose(-1, -2) @ y).square()  # (len(ls), n)
        den = lam.clamp_min(0.0)[:, None, :] + nz[None, :, None]
        out = (proj[:, None, :] / den + den.log()).sum(-1).mul(-0.5)
        out += ls_prior[:, None] + nz_prior[None, :]
        return out.nan_to_num(nan=-math.inf, posinf=-math.inf)

    # 1. every lengthscale against every noise level (no ridge between the two is missed)
    log_ls = g.log_ls
    obj = objective(g.ls, g.ls_log_prior, noises, g.noises_log_prior)
    i, j = divmod(int(obj.argmax()), noises.numel())
    best = float(obj[i, j])
    if not math.isfinite(best):
        raise FloatingPointError("no finite marginal likelihood on the hyper-parameter grid")
    # 2. the profile (best over the noise) of the lengthscale's neighbours: the parabola's vertex in log l ...
    log_l = float(log_ls[i])
    if 0 < i < log_ls.numel() - 1:
        lo, mid, hi = (float(v) for v in obj[i - 1 : i + 2].max(dim=1).values)
        curvature = lo - 2.0 * mid + hi
        if curvature < 0.0:
            step = float(log_ls[1] - log_ls[0])
            log_l += step * min(max(0.5 * (lo - hi) / curvature, -0.5), 0.5)
    # ... where the noise is refined between its grid neighbours at the best lengthscale (kept if it is no worse)
    nz, nz_prior = g.refine(j)
    ls = torch.tensor([math.exp(log_l)], dtype=x.dtype)
    fine = objective(ls, g.lengthscale_prior.log_prob(ls), nz, nz_prior)[0]
    k = int(fine.argmax())
    if float(fine[k]) >= best:
        lengthscale, noise = ls[0], nz[k]
    else:
        lengthscale, noise = log_ls[i].exp(), noises[j]
    kernel.lengthscale = lengthscale.reshape(kernel.lengthscale.shape)
    noise_covar.noise = noise.reshape(noise_covar.noise.shape)
    model.eval()


def _check_bounds(min_lr: Any, max_lr: Any) -> tuple[float, float]:
    min_lr = check_float("min_lr", min_lr, positive=True)
    max_lr = check_float("max_lr", max_lr, positive=True)
    if not max_lr > min_lr:
        raise InvalidArgumentError(f"`max_lr` must be > `min_lr` ({min_lr}), got {max_lr}.")
    if not math.log(max_lr) - math.log(min_lr) > 0:
        raise InvalidArgumentError(f"`max_lr` ({max_lr}) and `min_lr` ({min_lr}) are too close to span a log range.")
    return min_lr, max_lr


def _check_fit(value: Any) -> str:
    if value not in _FITS:
        raise InvalidArgumentError(f"`fit` must be one of {', '.join(map(repr, _FITS))}, got {value!r}.")
    return str(value)


def _check_dedup_tol(value: Any) -> float:
    value = check_float("dedup_tol", value, positive=True)
    if not value < 0.5:
        raise InvalidArgumentError(f"`dedup_tol` must lie in (0, 0.5), got {value}.")
    return value


def _rescale(ys: list[float]) -> torch.Tensor | None:
    """Affinely map the targets to ``[0, 1]`` (UCB's argmax is invariant to it; it avoids overflow in the
    standardisation); ``None`` if they are non-finite or all equal."""
    y = torch.tensor(ys, dtype=torch.float64)
    if not bool(torch.isfinite(y).all()):
        return None
    scale = float(y.abs().max())
    if scale == 0.0:
        return None
    y = y / scale
    lo, hi = float(y.min()), float(y.max())
    if not hi - lo > 1e-12:
        return None
    return (y - lo) / (hi - lo)
