r"""Forecast the training loss of a learning-rate candidate from a short, noisy loss series.

In AutoLRS each candidate learning rate is trained for only :math:`\tau'` steps. The per-step minibatch training
losses ``y[0..n-1]`` (``y[i]`` is the loss observed at step :math:`t = i + 1`) are then extrapolated to the step
:math:`t = h` (the ``horizon``, :math:`\tau`, typically :math:`10\,\tau'`) with the model

.. math::

    L(t) = a\,e^{-b t} + c, \qquad b > 0,

and the predicted :math:`L(h)` is the value Bayesian optimisation sees for that learning rate.

Fitting (all in ``float64`` torch, under ``torch.inference_mode()``, deterministic)
------------------------------------------------------------------------------------
1. **Cleaning.** Non-finite entries (NaN, +inf, -inf) are dropped; the remaining points keep their original step
   index :math:`t_j = i_j + 1`. Below, :math:`m` is the number of finite points and :math:`T` the largest kept step.
2. **Normalisation.** Values are divided by :math:`\max_j |y_j|` (so magnitudes from 1e-30 to 1e30 behave the same),
   then centred on their median and divided by :math:`1.4826\cdot\mathrm{MAD}` (by the range when the MAD is 0),
   giving :math:`z_j`. Time is normalised to :math:`s_j = t_j / T`, so :math:`e^{-b t} = e^{-\beta s}` with
   :math:`\beta = b T`.
3. **Smoothing.** :math:`S` is the centred running median of the finite values over a window of :math:`w` points
   (``smooth_window``; by default :math:`w = 2\lfloor m/20\rfloor + 1` clipped to :math:`[3, 101]`), the window being
   truncated at both ends (so :math:`S_m` is the median of the last :math:`\lfloor w/2\rfloor + 1` points; medians of
   an even count are lower medians, so every :math:`S_j` is one of the data values). Gross outliers are then
   winsorised for the fit only: each :math:`z_j` is clipped to :math:`S^z_j \pm 10\,(\max S^z - \min S^z +
   \hat\sigma_0)`, where :math:`S^z` is :math:`S` in normalised units and :math:`\hat\sigma_0 = 1.4826\,
   \mathrm{MAD}(z - S^z)`; this only touches points far outside the range of the series and keeps the residual sums
   well conditioned (a 1e30 spike in a series of order 1).
4. **Robust fit.** For a fixed :math:`\beta` the model is linear in :math:`(a, c)`, so the weighted least-squares
   problem :math:`\min_{a,c} \sum_j w_j (z_j - a e^{-\beta s_j} - c)^2` has a closed-form :math:`2\times 2` solution.
   It is solved for a log-spaced grid of ``grid_size`` values :math:`\beta \in [10^{-2}, \max(100, 10T)]` in one
   batched tensor operation, and the :math:`\beta` with the smallest weighted residual sum of squares wins. Weights
   start as Huber weights of the residuals against :math:`S`, and are then updated ``irls_iters`` times from the
   residuals of the current fit (iteratively reweighted least squares with the Huber loss,
   :math:`w_j = \min(1, k\hat\sigma / |r_j|)`, :math:`k` = ``huber_k``, :math:`\hat\sigma = 1.4826\,\mathrm{MAD}(r)`).
   The best :math:`\beta` is then refined twice on a 33-point log grid spanning its two grid neighbours and once by
   parabolic interpolation of the RSS in :math:`\log\beta`, giving the minimal weighted RSS :math:`R_{\min}`.
5. **Conservative choice.** The extrapolation is ill-conditioned when the series has barely started to bend (slow
   decays look linear and fit almost as well). Among all :math:`\beta` whose weighted RSS is at most
   :math:`R_{\min} + \delta\,\hat\sigma^2` (:math:`\hat\sigma = 1.4826\,\mathrm{MAD}` of the best fit's
   residuals, :math:`\delta` = ``beta_slack``; with :math:`\delta = 1` this is a 68 % profile-likelihood interval
   for :math:`\beta`), the *largest* one is used -- the fastest decay the data cannot reject, which predicts the
   smallest further drop. ``beta_slack=0`` keeps the best fit.

Decision rules (checked in this order, the head/tail tests before any fitting; ``Forecast.method`` names the rule)
------------------------------------------------------------------------------------------------------------------
Let :math:`k = \max(1, \lceil f m\rceil)` with :math:`f` = ``tail_fraction``; the *head* is the first :math:`k`
finite points, the *tail* the last :math:`k`, and the *tail level* is the median of the tail (lower median for even
:math:`k`). :math:`\hat\sigma_\Delta = 1.4826\,\mathrm{MAD}(\mathrm{diff}(y)) / \sqrt2` is a model-free noise estimate.

* ``"empty"`` -- no finite value at all: ``value = math.inf`` (the sentinel), ``a = b = 0``, ``c = inf``,
  ``bound = (-inf, inf)``. This is the only case where ``value`` is not finite.
* ``"short"`` -- :math:`m <` ``min_points``: the mean of the last :math:`\lceil m/2\rceil` finite points.
* ``"flat"`` -- no significant trend: :math:`|\mathrm{med(head)} - \mathrm{med(tail)}| \le z \cdot 1.2533\,
  \hat\sigma_\Delta \sqrt{2/k}` with :math:`z` = ``flat_z`` (the right-hand side is the standard error of a difference
  of two medians of :math:`k` points); value = tail level. A constant series is always flat.
* ``"rising"`` -- the tail median is (significantly) above the head median, or the fitted :math:`a \le 0`;
  value = tail level (and the bound below caps it at the highest smoothed level, so it never extrapolates upward).
* ``"noisy"`` -- the fit explains too little variance: the robust
  :math:`R^2 = V / (V + \hat\sigma^2) <` ``min_r2``, where :math:`V` is the variance of the fitted curve
  :math:`a e^{-\beta s_j}` over the observed points and :math:`\hat\sigma = 1.4826\,\mathrm{MAD}` of the fit's
  residuals (for Gaussian noise this is the classical :math:`R^2`, but outliers cannot drive it down); also when the
  fit is numerically unusable. Value = tail level.
* ``"exp"`` -- otherwise: value = :math:`a e^{-b h} + c` from the fit.

Bound (applied to every method except ``"empty"``; stored in ``Forecast.bound``)
-------------------------------------------------------------------------------
With :math:`S_{\max} = \max_j S_j`, the last smoothed level :math:`S_m` and the observed drop
:math:`D = S_{\max} - S_m \ge 0`, the value is clipped to

.. math::

    [\,S_m - K D,\; S_{\max}\,], \qquad K = \texttt{max\_drop\_ratio},

i.e. the forecast may not fall below the last smoothed level by more than :math:`K` times the drop already observed,
and may never exceed the highest smoothed level. When every finite value is positive (cross-entropy, MSE, ...), the
lower end is raised to :math:`\max(S_m - K D,\; S_m (S_m / S_{\max})^{K_{\log}})` with
:math:`K_{\log}` = ``max_log_drop_ratio`` (default 1.5): the further drop in log space is at most :math:`K_{\log}`
times the log drop already observed, so a positive loss is never forecast at or below zero. Since :math:`S`
consists of medians of the data,
:math:`\min y \le S_m \le S_{\max} \le \max y` and :math:`D \le \max y - \min y`, so the bound always lies within
:math:`[\min y - K (\max y - \min y),\; \max y]` (over the finite values). When the series is so extreme that
:math:`S_m - K D` overflows, the lower end is ``-sys.float_info.max``.

Example:
    >>> import math
    >>> forecaster = ExponentialForecaster()
    >>> losses = [2.0 * math.exp(-0.05 * t) + 0.5 for t in range(1, 101)]
    >>> fc = forecaster.predict(losses, horizon=1000)
    >>> fc.method, round(fc.value, 4), round(fc.b, 4)
    ('exp', 0.5, 0.05)
    >>> forecaster.predict([], horizon=10).value
    inf
"""

from __future__ import annotations

import itertools
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_autolrs._threads import on_one_thread
from lightning_autolrs._validation import check_float, check_int
from lightning_autolrs.exceptions import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["ExponentialForecaster", "Forecast"]

_MAD_TO_SIGMA = 1.4826
_MEDIAN_SE = 1.2533  # standard error of a median = 1.2533 * sigma / sqrt(n) for Gaussian noise
_DTYPE = torch.float64
_REFINE_POINTS = 33
_WINSOR = 10.0  # gross-outlier clipping distance, in (smoothed range + robust residual scale)
_GRID_CACHE_SIZE = 8
# (grid_size, number of points) of a series without non-finite values -> (s, coarse beta grid, exp(-beta * s)): the
# same tensors every fit of that length computes (a stage's trials share their length); at most _GRID_CACHE_SIZE.
_grid_cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _robust_sigma(values: Sequence[float]) -> float:
    """``1.4826 · MAD`` of plain floats around their median: the standard deviation of Gaussian noise, which a few
    outliers do not move (the range test's, the overfitting watch's and the tie's noise estimates)."""
    centre = statistics.median(values)
    return _MAD_TO_SIGMA * statistics.median([abs(v - centre) for v in values])


def _difference_sigma(values: Sequence[float]) -> float:
    """The noise of one point of a series from its successive differences: :func:`_robust_sigma` of them ÷ √2 (a
    difference of two points carries √2 times one point's noise), so that a trend does not count as noise (the range
    test's batch-noise spread on log losses; the tie's noise of a series without an exponential fit)."""
    return _robust_sigma([b - a for a, b in itertools.pairwise(values)]) / math.sqrt(2.0)


@dataclass(frozen=True)
class Forecast:
    """The predicted loss at the horizon and how it was obtained.

    Attributes:
        value: Predicted loss at ``t = horizon``, already clipped to ``bound``. Finite, except ``math.inf`` when the
            series had no finite value (``method == "empty"``).
        a: Fitted amplitude of ``a * exp(-b * t) + c`` in the units of the losses (0 for fallbacks).
        b: Fitted decay rate per step, ``> 0`` for ``"exp"`` (0 for fallbacks).
        c: Fitted asymptote (for fallbacks: the value itself; ``inf`` for ``"empty"``).
        method: ``"exp"`` (fit accepted) or the fallback used: ``"empty"``, ``"short"``, ``"flat"``, ``"rising"``,
            ``"noisy"``. The module docstring states each rule.
        bound: ``(low, high)`` interval the value was clipped to: ``low = S_last - max_drop_ratio * (S_max - S_last)``,
            ``high = S_max`` where ``S`` is the running-median-smoothed series; ``(-inf, inf)`` for ``"empty"``.
    """

    value: float
    a: float
    b: float
    c: float
    method: str
    bound: tuple[float, float]


def _to_series(losses: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Convert ``losses`` to a 1-D float64 CPU tensor; entries that cannot be read as a float become NaN."""
    if isinstance(losses, torch.Tensor):
        x = losses.detach()
        if x.is_complex():
            x = x.real
        return x.to(device="cpu", dtype=_DTYPE).reshape(-1)
    if isinstance(losses, (str, bytes)) or not isinstance(losses, Iterable):
        raise InvalidArgumentTypeError(
            f"`losses` must be a sequence of floats or a torch.Tensor, got {type(losses).__name__}."
        )
    if not isinstance(losses, Sequence) and not hasattr(losses, "__array__"):
        losses = list(losses)  # e.g. a generator: read it once
    try:
        return torch.as_tensor(losses, dtype=_DTYPE).reshape(-1)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        return torch.tensor([_safe_float(v) for v in losses], dtype=_DTYPE)


def _safe_float(value: Any) -> float:
    """``float(value)``, or NaN when it cannot be converted."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def _lower_median(x: torch.Tensor) -> float:
    """Median of a non-empty 1-D tensor (lower median for an even count, so always one of the entries)."""
    return float(x.median().item())


def _running_median(y: torch.Tensor, window: int) -> torch.Tensor:
    """Centred running median of ``y`` over ``window`` points, windows truncated at both ends (NaN padding)."""
    half = window // 2
    if half == 0 or y.numel() == 1:
        return y.clone()
    pad = torch.full((half,), math.nan, dtype=y.dtype)
    padded = torch.cat([pad, y, pad])
    return padded.unfold(0, 2 * half + 1, 1).nanmedian(dim=1).values


def _huber_weights(r: torch.Tensor, k: float) -> torch.Tensor:
    """Huber IRLS weights ``min(1, k * sigma / |r|)`` with ``sigma = 1.4826 * MAD(r)`` (floored at 1e-9)."""
    sigma = max(_MAD_TO_SIGMA * float((r - r.median()).abs().median().item()), 1e-9)
    # (`scalar / tensor` is `tensor.reciprocal() * scalar` in torch: written out, it skips a Python-level wrapper)
    return (r.abs().clamp_min(1e-300).reciprocal() * (k * sigma)).clamp_max(1.0)


def _solve_grid(
    e: torch.Tensor, z: torch.Tensor, w: torch.Tensor, sums: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted LS of ``z ~ a * e[g] + c`` for every row ``g`` of ``e``; returns ``(a, c, rss)`` per row. ``sums``:
    ``(w.sum(), (w * z).sum())`` when the caller already has them (the same values)."""
    sw, sy = (w.sum(), (w * z).sum()) if sums is None else sums
    we = e * w
    se = we.sum(dim=1)
    see = (we * e).sum(dim=1)
    sey = we @ z
    det = sw * see - se * se
    ok = det > 1e-13 * sw * see
    safe_det = torch.where(ok, det, 1.0)
    a = (sw * sey - se * sy) / safe_det
    c = (see * sy - se * sey) / safe_det
    resid = z - a.unsqueeze(1) * e - c.unsqueeze(1)  # (unsqueeze: the view `a[:, None]` is, without index parsing)
    rss = (resid * resid * w).sum(dim=1)
    rss = torch.where(ok & torch.isfinite(rss), rss, math.inf)
    return a, c, rss


class ExponentialForecaster:
    """Robust fit of ``a * exp(-b * t) + c`` to a loss series and prediction at a horizon, with documented fallbacks.

    See the module docstring for the maths, the fallback rules and the bound the prediction is clipped to.

    Args:
        min_points: Fewer finite points than this gives the ``"short"`` fallback. At least 3.
        max_drop_ratio: ``K`` in the bound: the forecast may fall below the last smoothed level by at most ``K``
            times the drop observed in the smoothed series. ``>= 0``.
        max_log_drop_ratio: ``K_log`` in the bound for positive losses: the further drop in log space is at most
            ``K_log`` times the log drop already observed, so a positive loss is never forecast at or below zero.
            ``>= 0``.
        flat_z: Significance threshold (in standard errors) of the head-vs-tail median difference; below it the
            series is ``"flat"``. ``>= 0``.
        min_r2: Robust ``R^2`` (module docstring) below which the fit is rejected as ``"noisy"``. In ``[0, 1)``.
        tail_fraction: Fraction ``f`` of the finite points forming the head and the tail. In ``(0, 0.5]``.
        huber_k: Huber threshold in robust standard deviations of the residuals. ``> 0``.
        irls_iters: Number of Huber re-weighting rounds after the initial fit. ``>= 0``.
        grid_size: Number of log-spaced decay rates in the coarse grid. ``>= 8``.
        smooth_window: Running-median window in points; ``None`` picks ``2 * (m // 20) + 1`` clipped to
            ``[3, 101]``. ``>= 1``.
        beta_slack: ``delta`` of the conservative choice of the decay rate (module docstring, step 5); 0 takes the
            least-squares optimum. ``>= 0``.

    Raises:
        InvalidArgumentError: An argument is out of range (the message names it in backticks).
        InvalidArgumentTypeError: An argument has the wrong type.

    Example:
        >>> forecaster = ExponentialForecaster(min_points=5)
        >>> forecaster.predict([3.0, 2.0], horizon=20).method
        'short'
        >>> fc = forecaster.predict([1.0] * 50, horizon=500)
        >>> fc.method, fc.value, fc.bound
        ('flat', 1.0, (1.0, 1.0))
    """

    def __init__(
        self,
        *,
        min_points: int = 5,
        max_drop_ratio: float = 3.0,
        max_log_drop_ratio: float = 1.5,
        flat_z: float = 3.0,
        min_r2: float = 0.1,
        tail_fraction: float = 0.25,
        huber_k: float = 1.345,
        irls_iters: int = 3,
        grid_size: int = 64,
        smooth_window: int | None = None,
        beta_slack: float = 1.0,
    ) -> None:
        self.min_points: int = check_int("min_points", min_points, minimum=3)  # type: ignore[assignment]
        self.max_drop_ratio: float = check_float("max_drop_ratio", max_drop_ratio, nonnegative=True)  # type: ignore[assignment]
        self.max_log_drop_ratio: float = check_float(  # type: ignore[assignment]
            "max_log_drop_ratio", max_log_drop_ratio, nonnegative=True
        )
        self.flat_z: float = check_float("flat_z", flat_z, nonnegative=True)  # type: ignore[assignment]
        self.min_r2: float = check_float("min_r2", min_r2, nonnegative=True)  # type: ignore[assignment]
        if self.min_r2 >= 1.0:
            raise InvalidArgumentError(f"`min_r2` must be < 1, got {self.min_r2}.")
        self.tail_fraction: float = check_float("tail_fraction", tail_fraction, positive=True)  # type: ignore[assignment]
        if self.tail_fraction > 0.5:
            raise InvalidArgumentError(f"`tail_fraction` must lie in (0, 0.5], got {self.tail_fraction}.")
        self.huber_k: float = check_float("huber_k", huber_k, positive=True)  # type: ignore[assignment]
        self.irls_iters: int = check_int("irls_iters", irls_iters, minimum=0)  # type: ignore[assignment]
        self.grid_size: int = check_int("grid_size", grid_size, minimum=8)  # type: ignore[assignment]
        self.smooth_window: int | None = check_int("smooth_window", smooth_window, minimum=1, allow_none=True)
        self.beta_slack: float = check_float("beta_slack", beta_slack, nonnegative=True)  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(min_points={self.min_points}, max_drop_ratio={self.max_drop_ratio}, "
            f"max_log_drop_ratio={self.max_log_drop_ratio}, flat_z={self.flat_z}, min_r2={self.min_r2}, "
            f"tail_fraction={self.tail_fraction}, "
            f"huber_k={self.huber_k}, irls_iters={self.irls_iters}, grid_size={self.grid_size}, "
            f"smooth_window={self.smooth_window}, beta_slack={self.beta_slack})"
        )

    @on_one_thread
    def predict(self, losses: Sequence[float] | torch.Tensor, horizon: int) -> Forecast:
        """Predict the loss at step ``t = horizon`` from the per-step losses ``y[i]`` observed at ``t = i + 1``.

        Computed on one torch thread (the caller's thread count is put back afterwards): the series are short.

        Args:
            losses: Per-step training losses (any length; NaN/inf entries are dropped, the rest keep their step).
                A tensor of any shape is flattened.
            horizon: Step at which to predict, ``>= 1``.

        Returns:
            The :class:`Forecast`. Never raises because of the content of ``losses``.

        Raises:
            InvalidArgumentError: ``horizon < 1``.
            InvalidArgumentTypeError: ``horizon`` is not an integer, or ``losses`` is not a sequence/tensor.

        Example:
            >>> fc = ExponentialForecaster().predict([5.0, 4.0, 3.5, float("nan"), 3.1, 3.0, 2.95, 2.9], horizon=80)
            >>> fc.method in {"exp", "flat", "noisy"} and fc.bound[0] <= fc.value <= fc.bound[1]
            True
        """
        horizon = check_int("horizon", horizon, minimum=1)  # type: ignore[assignment]
        with torch.inference_mode():  # (no autograd bookkeeping: a fifth less time than `no_grad` on short series)
            return self._predict(_to_series(losses), horizon)

    def _window(self, m: int) -> int:
        if self.smooth_window is not None:
            return self.smooth_window
        return min(max(2 * (m // 20) + 1, 3), 101)

    def _predict(self, y_all: torch.Tensor, horizon: int) -> Forecast:
        idx = torch.isfinite(y_all).nonzero().squeeze(1)
        m = int(idx.numel())
        if m == 0:
            return Forecast(math.inf, 0.0, 0.0, math.inf, "empty", (-math.inf, math.inf))
        y = y_all if m == y_all.numel() else y_all[idx]

        # Bound from the running median, in the original units (medians are entries of y, so no rounding).
        smooth = _running_median(y, self._window(m))
        s_max = float(smooth.max().item())
        s_last = float(smooth[-1].item())
        low = s_last - self.max_drop_ratio * (s_max - s_last)
        if not math.isfinite(low):
            low = -sys.float_info.max
        if s_last > 0 and bool((y > 0).all()):  # positive series: limit the further drop in log space too
            low = max(low, s_last * (s_last / s_max) ** self.max_log_drop_ratio)
        bound = (low, s_max)

        def done(value: float, method: str, a: float = 0.0, b: float = 0.0, c: float | None = None) -> Forecast:
            if math.isnan(value):
                value = s_last
            value = min(max(value, low), s_max)
            return Forecast(value, a, b, value if c is None else c, method, bound)

        scale0 = float(y.abs().max().item())
        if scale0 == 0.0:
            scale0 = 1.0
        u = y / scale0  # entries in [-1, 1]: no overflow below

        if m < self.min_points:
            return done(float(u[m // 2 :].mean().item()) * scale0, "short")

        k = max(1, math.ceil(self.tail_fraction * m))
        tail_level = _lower_median(y[-k:])
        head_u = _lower_median(u[:k])
        tail_u = _lower_median(u[-k:])
        d = u[1:] - u[:-1]
        sigma_d = _MAD_TO_SIGMA * float((d - d.median()).abs().median().item()) / math.sqrt(2.0)
        if abs(head_u - tail_u) <= self.flat_z * _MEDIAN_SE * sigma_d * math.sqrt(2.0 / k):
            return done(tail_level, "flat")
        if tail_u > head_u:
            return done(tail_level, "rising")

        center = _lower_median(u)
        spread = _MAD_TO_SIGMA * float((u - center).abs().median().item())
        if spread <= 0.0:
            spread = float((u.max() - u.min()).item())
        if spread <= 0.0:  # unreachable in practice: a constant series is flat
            return done(tail_level, "flat")
        z = (u - center) / spread
        big_t = float(idx[-1].item()) + 1.0

        z_smooth = (smooth / scale0 - center) / spread
        # Winsorise gross outliers (far beyond the smoothed range) so the residual sums stay well conditioned.
        dev = z - z_smooth
        sigma0 = _MAD_TO_SIGMA * float((dev - dev.median()).abs().median().item())
        reach = _WINSOR * (float((z_smooth.max() - z_smooth.min()).item()) + sigma0)
        if reach > 0.0:
            z = torch.minimum(torch.maximum(z, z_smooth - reach), z_smooth + reach)

        fit = self._fit(idx, z, z_smooth, big_t)
        if fit is None:
            return done(tail_level, "noisy")
        a_n, beta, c_n, r2 = fit
        if a_n <= 0.0:
            return done(tail_level, "rising")
        if r2 < self.min_r2:
            return done(tail_level, "noisy")
        value_n = a_n * math.exp(-beta * horizon / big_t) + c_n
        value = (value_n * spread + center) * scale0
        a = a_n * spread * scale0
        c = (c_n * spread + center) * scale0
        return done(value, "exp", a, beta / big_t, c)

    def _coarse_grid(self, idx: torch.Tensor, big_t: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(s, coarse, e_coarse)``: the normalised times ``s = t / T`` of the kept points, the coarse grid of
        ``beta`` and ``exp(-beta * s)`` on it; cached for series without non-finite values (``idx = 0..T-1``)."""
        key = (self.grid_size, idx.numel())
        dense = idx.numel() == big_t  # no point was dropped: the values depend on the length only
        if dense and key in _grid_cache:
            return _grid_cache[key]
        s = (idx.to(_DTYPE) + 1.0) / big_t
        beta_max = max(100.0, 10.0 * big_t)
        coarse = torch.logspace(-2.0, math.log10(beta_max), self.grid_size, dtype=_DTYPE)
        grids = s, coarse, torch.exp(-coarse[:, None] * s[None, :])
        if dense:
            if len(_grid_cache) >= _GRID_CACHE_SIZE:
                del _grid_cache[next(iter(_grid_cache))]  # the oldest entry
            _grid_cache[key] = grids
        return grids

    def _fit(
        self, idx: torch.Tensor, z: torch.Tensor, z_smooth: torch.Tensor, big_t: float
    ) -> tuple[float, float, float, float] | None:
        """Huber-IRLS grid fit in normalised units; returns ``(a, beta, c, robust R^2)`` or ``None`` if unusable."""
        s, coarse, e_coarse = self._coarse_grid(idx, big_t)
        w = _huber_weights(z - z_smooth, self.huber_k)
        for it in range(self.irls_iters + 1):
            sums = (w.sum(), (w * z).sum())  # (the last round's: the final weights', shared by every solve below)
            a, c, rss_coarse = _solve_grid(e_coarse, z, w, sums)
            a_coarse, c_coarse = a, c
            best = int(rss_coarse.argmin().item())
            if not math.isfinite(float(rss_coarse[best].item())):
                return None
            if it < self.irls_iters:
                w = _huber_weights(z - a[best] * e_coarse[best] - c[best], self.huber_k)
        # Local refinement of beta between the grid neighbours of the best value, twice.
        grid, e, rss = coarse, e_coarse, rss_coarse
        for _ in range(2):
            lo = float(grid[max(best - 1, 0)].item())
            hi = float(grid[min(best + 1, grid.numel() - 1)].item())
            fine = torch.logspace(math.log10(lo), math.log10(hi), _REFINE_POINTS, dtype=_DTYPE)
            e_fine = torch.exp(-fine.unsqueeze(1) * s.unsqueeze(0))
            a_f, c_f, rss_f = _solve_grid(e_fine, z, w, sums)
            i = int(rss_f.argmin().item())
            if not math.isfinite(float(rss_f[i].item())):
                break
            grid, e, a, c, rss, best = fine, e_fine, a_f, c_f, rss_f, i
        if 0 < best < grid.numel() - 1:  # parabolic interpolation of the RSS in log(beta)
            r_lo, r_mid, r_hi = (float(v) for v in rss[best - 1 : best + 2].tolist())
            curvature = r_lo - 2.0 * r_mid + r_hi
            if curvature > 0.0:
                step = math.log(float(grid[best + 1].item()) / float(grid[best].item()))
                offset = min(max(0.5 * (r_lo - r_hi) / curvature, -1.0), 1.0)
                beta_p = torch.tensor([float(grid[best].item()) * math.exp(offset * step)], dtype=_DTYPE)
                e_p = torch.exp(-beta_p.unsqueeze(1) * s.unsqueeze(0))
                a_p, c_p, rss_p = _solve_grid(e_p, z, w, sums)
                if float(rss_p[0].item()) < r_mid:
                    grid, e, a, c, rss, best = beta_p, e_p, a_p, c_p, rss_p, 0
        if self.beta_slack > 0.0:
            # Most conservative (largest) beta whose weighted RSS is within `beta_slack` noise variances of the best.
            r_best = z - a[best] * e[best] - c[best]
            sigma = _MAD_TO_SIGMA * float((r_best - r_best.median()).abs().median().item())
            threshold = float(rss[best].item()) + self.beta_slack * sigma * sigma
            ok = (rss_coarse <= threshold).nonzero().squeeze(1)
            j = int(ok[-1].item()) if ok.numel() else -1
            if j >= 0 and float(coarse[j].item()) > float(grid[best].item()):
                # Locate the edge of the accepted set between coarse[j] (accepted) and coarse[j + 1] (rejected).
                upper = float(coarse[min(j + 1, coarse.numel() - 1)].item())
                fine = torch.logspace(
                    math.log10(float(coarse[j].item())), math.log10(upper), _REFINE_POINTS, dtype=_DTYPE
                )
                e_fine = torch.exp(-fine.unsqueeze(1) * s.unsqueeze(0))
                a_f, c_f, rss_f = _solve_grid(e_fine, z, w, sums)
                accepted = (rss_f <= threshold).nonzero().squeeze(1)
                if accepted.numel():
                    grid, e, a, c, best = fine, e_fine, a_f, c_f, int(accepted[-1].item())
                else:  # only possible through rounding at coarse[j]
                    grid, e, a, c, best = coarse, e_coarse, a_coarse, c_coarse, j
        a_b, c_b, beta = float(a[best].item()), float(c[best].item()), float(grid[best].item())
        fitted = a_b * e[best]
        resid = z - fitted - c_b
        sigma = _MAD_TO_SIGMA * float((resid - resid.median()).abs().median().item())
        signal_var = float(fitted.var(correction=0).item())
        total = signal_var + sigma * sigma
        r2 = signal_var / total if total > 0.0 else 0.0
        if not all(math.isfinite(v) for v in (a_b, c_b, beta, r2)):
            return None
        return a_b, beta, c_b, r2
