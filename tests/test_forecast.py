"""Tests of :mod:`lightning_autolrs.forecast`: accuracy, robustness, fallbacks, bound and argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_autolrs.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from lightning_autolrs.forecast import ExponentialForecaster, Forecast

K_DEFAULT = 3.0  # default max_drop_ratio, the documented k of the bound


def exp_series(n: int, a: float, b: float, c: float, noise: float, seed: int) -> torch.Tensor:
    """``a * exp(-b t) + c`` at ``t = 1..n`` plus Gaussian noise of standard deviation ``noise``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(1, n + 1, dtype=torch.float64)
    return a * torch.exp(-b * t) + c + noise * torch.randn(n, generator=g, dtype=torch.float64)


def cramer_rao_se(n: int, a: float, b: float, horizon: int) -> float:
    """Standard error, per unit noise sigma, of the best unbiased estimate of L(horizon) from n noisy points."""
    t = torch.arange(1, n + 1, dtype=torch.float64)
    e = torch.exp(-b * t)
    jac = torch.stack([e, -a * t * e, torch.ones(n, dtype=torch.float64)], dim=1)
    cov = torch.linalg.inv(jac.T @ jac)
    grad = torch.tensor([math.exp(-b * horizon), -a * horizon * math.exp(-b * horizon), 1.0], dtype=torch.float64)
    return math.sqrt(float(grad @ cov @ grad))


ACCURACY_CASES = [
    (n, a, bn, c, rel_noise)
    for n in (20, 50, 100, 400)
    for a, bn, c in ((1.0, 1.0, 0.5), (2.0, 1.5, 1.0), (5.0, 2.0, 0.1), (0.5, 3.0, 2.0))
    for rel_noise in (0.0, 0.01, 0.05)
]


@pytest.mark.parametrize(("n", "a", "bn", "c", "rel_noise"), ACCURACY_CASES)
def test_accuracy_on_synthetic_exponential(n: int, a: float, bn: float, c: float, rel_noise: float) -> None:
    """Prediction at horizon 10 n within ``0.02 a + 5 SE`` of the truth.

    ``SE`` is the Cramér-Rao standard error of L(horizon) for this design and noise level (it grows like
    noise/sqrt(n) times a conditioning factor that explodes when the series has barely bent, b n small); the 0.02 a
    term covers the grid resolution and the conservative choice of b. In the low-noise cases with b n <= 2, the naive
    "last observed value" predictor misses this tolerance, so the test checks that extrapolation happens.
    """
    b = bn / n
    horizon = 10 * n
    noise = rel_noise * a
    y = exp_series(n, a, b, c, noise, seed=n + int(100 * bn))
    truth = a * math.exp(-b * horizon) + c
    tol = 0.02 * a + 5.0 * cramer_rao_se(n, a, b, horizon) * noise
    fc = ExponentialForecaster().predict(y, horizon)
    assert fc.method == "exp"
    assert abs(fc.value - truth) <= tol, (fc, truth, tol)
    assert fc.b > 0 and fc.a > 0
    if rel_noise <= 0.01 and bn <= 2.0:
        assert abs(float(y[-1]) - truth) > tol  # the naive predictor would fail here


def test_noise_free_fit_recovers_parameters() -> None:
    y = exp_series(100, 2.0, 0.03, 0.7, 0.0, seed=0)
    fc = ExponentialForecaster().predict(y.tolist(), horizon=1000)
    assert fc.method == "exp"
    assert fc.a == pytest.approx(2.0, rel=1e-3)
    assert fc.b == pytest.approx(0.03, rel=1e-3)
    assert fc.c == pytest.approx(0.7, rel=1e-3)
    assert fc.value == pytest.approx(2.0 * math.exp(-30.0) + 0.7, rel=1e-4)


@pytest.mark.parametrize("spike", [50.0, 1e6, 1e30])
def test_outlier_spikes_barely_move_the_prediction(spike: float) -> None:
    n, a = 200, 2.0
    y = exp_series(n, a, 2.0 / n, 0.5, 0.02 * a, seed=7)
    clean = ExponentialForecaster().predict(y, 10 * n)
    spiky = y.clone()
    spiky[[13, 60, 61, 120, 190]] = spike
    fc = ExponentialForecaster().predict(spiky, 10 * n)
    assert clean.method == fc.method == "exp"
    assert abs(fc.value - clean.value) <= 0.02 * a
    assert fc.bound[1] < 3.0  # the smoothed maximum ignores the spikes


def test_short_fallback_is_mean_of_last_half() -> None:
    fc = ExponentialForecaster(min_points=5).predict([3.0, 2.0, 1.5, 1.0], horizon=40)
    assert fc.method == "short"
    assert fc.value == pytest.approx(1.25)
    assert (fc.a, fc.b, fc.c) == (0.0, 0.0, fc.value)
    single = ExponentialForecaster().predict([0.42], horizon=10)
    assert single.method == "short" and single.value == 0.42 and single.bound == (0.42, 0.42)


def test_flat_fallback_on_pure_noise() -> None:
    g = torch.Generator().manual_seed(3)
    y = 1.0 + 0.1 * torch.randn(300, generator=g, dtype=torch.float64)
    fc = ExponentialForecaster().predict(y, horizon=3000)
    assert fc.method == "flat"
    assert fc.value == pytest.approx(1.0, abs=0.05)
    constant = ExponentialForecaster().predict([2.5] * 40, horizon=400)
    assert constant.method == "flat" and constant.value == 2.5 and constant.bound == (2.5, 2.5)


def test_rising_fallback_never_extrapolates_upward() -> None:
    g = torch.Generator().manual_seed(4)
    t = torch.arange(1, 201, dtype=torch.float64)
    y = 0.5 + 0.01 * t + 0.05 * torch.randn(200, generator=g, dtype=torch.float64)
    fc = ExponentialForecaster().predict(y, horizon=2000)
    assert fc.method == "rising"
    assert fc.value <= float(y.max())
    assert fc.value >= float(y[-50:].median()) - 1e-12  # tail level, possibly raised to the last smoothed level


def test_noisy_fallback_when_fit_explains_little_variance() -> None:
    n = 1000
    y = exp_series(n, 1.5, 1.0 / n, 1.0, 1.0, seed=5)  # significant trend, but noise dominates the variance
    fc = ExponentialForecaster().predict(y, horizon=10 * n)
    assert fc.method == "noisy"
    assert fc.value == pytest.approx(float(y[-250:].median()), abs=1e-12)
    assert ExponentialForecaster(min_r2=0.0).predict(y, horizon=10 * n).method == "exp"


@pytest.mark.parametrize("factor", [1e6, 1e-6, 1e30, 1e-30])
def test_scale_invariance(factor: float) -> None:
    n = 150
    y = exp_series(n, 2.0, 1.5 / n, 0.8, 0.03, seed=11)
    base = ExponentialForecaster().predict(y, 10 * n)
    scaled = ExponentialForecaster().predict(y * factor, 10 * n)
    assert scaled.method == base.method == "exp"
    assert scaled.value == pytest.approx(base.value * factor, rel=1e-6)
    assert scaled.bound[0] == pytest.approx(base.bound[0] * factor, rel=1e-9)
    assert scaled.bound[1] == pytest.approx(base.bound[1] * factor, rel=1e-9)
    assert scaled.b == pytest.approx(base.b, rel=1e-6)


def test_non_finite_entries_are_dropped() -> None:
    n = 120
    y = exp_series(n, 2.0, 2.0 / n, 0.5, 0.02, seed=2)
    base = ExponentialForecaster().predict(y, 10 * n)
    trailing = torch.cat([y, torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)])
    assert ExponentialForecaster().predict(trailing, 10 * n) == base  # steps after the last finite one are ignored
    holes = y.clone()
    holes[[5, 30, 31, 77]] = torch.tensor([math.nan, math.inf, -math.inf, math.nan], dtype=torch.float64)
    fc = ExponentialForecaster().predict(holes.tolist(), 10 * n)
    assert fc.method == "exp" and math.isfinite(fc.value)
    assert abs(fc.value - base.value) <= 0.02


@pytest.mark.parametrize("series", [[], [math.nan], [math.inf, -math.inf, math.nan], torch.empty(0)])
def test_empty_series_gives_inf_sentinel(series: list[float] | torch.Tensor) -> None:
    fc = ExponentialForecaster().predict(series, horizon=10)
    assert fc == Forecast(math.inf, 0.0, 0.0, math.inf, "empty", (-math.inf, math.inf))


def test_clipping_to_the_documented_bound() -> None:
    n = 100
    y = exp_series(n, 10.0, 0.2 / n, 0.0, 0.0, seed=0)  # nearly linear: the fit wants a large further drop
    # Default window for n = 100 is 11: the first and last smoothed values are lower medians of 6 points.
    s_first = float(torch.sort(y[:6]).values[2])
    s_last = float(torch.sort(y[-6:]).values[2])
    for k in (0.0, 1.0, 3.0):
        fc = ExponentialForecaster(max_drop_ratio=k, max_log_drop_ratio=1e6).predict(y, horizon=100 * n)
        assert fc.method == "exp"
        assert fc.bound == pytest.approx((s_last - k * (s_first - s_last), s_first), rel=1e-12)
        assert fc.value == fc.bound[0]  # the fit (about 0 at t = 10^4) wants more than k times the observed drop


def test_positive_series_never_forecast_below_the_log_drop_bound() -> None:
    n = 20
    y = exp_series(n, 2.0, 0.02, 0.0, 0.0, seed=0) + 0.3  # steep, still-linear start of a positive loss curve
    s_first, s_last = float(torch.sort(y[:2]).values[0]), float(torch.sort(y[-2:]).values[0])
    additive = ExponentialForecaster(max_log_drop_ratio=1e6).predict(y, horizon=10 * n)
    fc = ExponentialForecaster().predict(y, horizon=10 * n)
    assert additive.value < fc.value  # the additive rule alone lets the forecast fall far lower
    assert fc.bound[0] == pytest.approx(s_last * (s_last / s_first) ** 1.5, rel=1e-9)
    assert fc.value >= fc.bound[0] > 0


def test_deterministic() -> None:
    y = exp_series(300, 1.0, 0.01, 0.3, 0.05, seed=9)
    f = ExponentialForecaster()
    assert f.predict(y, 3000) == f.predict(y.clone(), 3000) == f.predict(y.tolist(), 3000)


def test_float32_and_multidim_tensor_input() -> None:
    y = exp_series(64, 1.0, 0.05, 0.2, 0.0, seed=0)
    fc = ExponentialForecaster().predict(y.float().reshape(8, 8), horizon=640)
    assert fc.method == "exp"
    assert fc.value == pytest.approx(0.2 + math.exp(-32.0), abs=1e-4)


@pytest.mark.parametrize("horizon", [0, -3])
def test_bad_horizon_raises(horizon: int) -> None:
    with pytest.raises(InvalidArgumentError, match="`horizon`"):
        ExponentialForecaster().predict([1.0, 0.5], horizon)


def test_non_integer_horizon_raises_type_error() -> None:
    with pytest.raises(InvalidArgumentTypeError, match="`horizon`"):
        ExponentialForecaster().predict([1.0, 0.5], 2.5)  # type: ignore[arg-type]


def test_non_sequence_losses_raise_type_error() -> None:
    with pytest.raises(InvalidArgumentTypeError, match="`losses`"):
        ExponentialForecaster().predict(3.0, 10)  # type: ignore[arg-type]


def test_unconvertible_entries_are_treated_as_non_finite() -> None:
    fc = ExponentialForecaster().predict([1.0, None, "x", 0.5, 10**400], horizon=10)  # type: ignore[list-item]
    assert fc.method == "short" and fc.value == 0.5


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"min_points": 2}, InvalidArgumentError),
        ({"min_points": 5.0}, InvalidArgumentTypeError),
        ({"max_drop_ratio": -1.0}, InvalidArgumentError),
        ({"max_drop_ratio": math.nan}, InvalidArgumentError),
        ({"max_log_drop_ratio": -0.5}, InvalidArgumentError),
        ({"flat_z": -0.1}, InvalidArgumentError),
        ({"min_r2": 1.0}, InvalidArgumentError),
        ({"min_r2": -0.5}, InvalidArgumentError),
        ({"tail_fraction": 0.0}, InvalidArgumentError),
        ({"tail_fraction": 0.75}, InvalidArgumentError),
        ({"huber_k": 0.0}, InvalidArgumentError),
        ({"irls_iters": -1}, InvalidArgumentError),
        ({"grid_size": 4}, InvalidArgumentError),
        ({"smooth_window": 0}, InvalidArgumentError),
        ({"smooth_window": "3"}, InvalidArgumentTypeError),
        ({"beta_slack": -1.0}, InvalidArgumentError),
        ({"beta_slack": True}, InvalidArgumentTypeError),
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict[str, object], error: type[Exception]) -> None:
    (name,) = kwargs
    with pytest.raises(error, match=f"`{name}`"):
        ExponentialForecaster(**kwargs)  # type: ignore[arg-type]


def test_every_tuning_argument_has_an_effect() -> None:
    n = 200
    bending = exp_series(n, 1.0, 0.5 / n, 0.5, 0.05, seed=1)  # slowly bending: sensitive to the fitting knobs
    flat = exp_series(n, 0.0, 1.0, 1.0, 0.1, seed=1)  # pure noise: sensitive to the tail definition
    variants = [
        ({"min_points": n + 1}, bending),
        ({"max_drop_ratio": 0.0}, bending),
        ({"max_log_drop_ratio": 0.0}, bending),
        ({"flat_z": 1e6}, bending),
        ({"min_r2": 0.99}, bending),
        ({"tail_fraction": 0.1}, flat),
        ({"huber_k": 0.01}, bending),
        ({"irls_iters": 0}, bending),
        ({"grid_size": 8}, bending),
        ({"smooth_window": 1}, bending),
        ({"beta_slack": 0.0}, bending),
    ]
    for kwargs, y in variants:
        base = ExponentialForecaster().predict(y, 10 * n)
        assert ExponentialForecaster(**kwargs).predict(y, 10 * n) != base, kwargs  # type: ignore[arg-type]


@st.composite
def loss_series(draw: st.DrawFn) -> list[float]:
    """Series of length 1..2000: exponential/constant/rising/random shapes, magnitudes 1e-30..1e30, nan/inf holes."""
    if draw(st.booleans()) and draw(st.booleans()):  # a quarter: raw adversarial floats, short
        return draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=40))
    n = draw(st.integers(1, 2000))
    kind = draw(st.sampled_from(["exp", "constant", "rising", "random", "steps"]))
    scale = 10.0 ** draw(st.integers(-30, 30))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(1, n + 1, dtype=torch.float64)
    noise = draw(st.sampled_from([0.0, 0.01, 0.3, 3.0])) * torch.randn(n, generator=g, dtype=torch.float64)
    if kind == "exp":
        y = torch.exp(-draw(st.floats(1e-4, 10.0)) * t) + draw(st.floats(-2.0, 2.0)) + noise
    elif kind == "constant":
        y = torch.full((n,), draw(st.floats(-5.0, 5.0)), dtype=torch.float64)
    elif kind == "rising":
        y = draw(st.floats(1e-4, 1.0)) * t + noise
    elif kind == "steps":
        y = torch.floor(5 * torch.rand(n, generator=g, dtype=torch.float64)) - t.gt(n / 2).double()
    else:
        y = torch.randn(n, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-3, 4, (n,), generator=g)
    values = (y * scale).tolist()
    for pos, special in draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from([math.nan, math.inf, -math.inf])), max_size=5)
    ):
        values[pos] = special
    return values


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(series=loss_series(), horizon=st.integers(1, 20000))
def test_property_never_raises_and_respects_bound(series: list[float], horizon: int) -> None:
    fc = ExponentialForecaster().predict(series, horizon)
    finite = [v for v in series if math.isfinite(v)]
    if not finite:
        assert fc.method == "empty" and fc.value == math.inf
        return
    assert math.isfinite(fc.value)
    low, high = fc.bound
    assert low <= fc.value <= high
    lo_data, hi_data = min(finite), max(finite)
    assert high <= hi_data
    assert low >= lo_data - K_DEFAULT * (hi_data - lo_data)
    assert fc.method in {"exp", "flat", "rising", "noisy", "short"}


def test_the_grid_cache_changes_no_forecast() -> None:
    """The coarse grid of a series without non-finite values is cached by (grid size, length): a forecast read from
    the cache is bitwise the one computed afresh, series of the same length with dropped points and other grid sizes
    do not read it, and the cache stays bounded."""
    from lightning_autolrs import forecast as module

    series = exp_series(60, 2.0, 0.05, 0.5, 0.01, seed=1)
    holed = series.clone()
    holed[[3, 40]] = math.nan  # the same length, two points dropped: other times s = t / T
    shifted = series.clone()
    shifted[-1] = math.nan  # the last point dropped: another T
    forecasters = [ExponentialForecaster(), ExponentialForecaster(grid_size=16)]
    module._grid_cache.clear()
    fresh = [f.predict(x, horizon=600) for f in forecasters for x in (series, holed, shifted)]
    for _ in range(2):
        module._grid_cache.clear()
        for f in forecasters:
            f.predict(series, horizon=600)  # prime the cache with the dense series
        again = [f.predict(x, horizon=600) for f in forecasters for x in (series, holed, shifted)]
        assert again == fresh
    for n in range(10, 30):
        ExponentialForecaster().predict(exp_series(n, 2.0, 0.1, 0.5, 0.01, seed=n), horizon=10 * n)
    assert len(module._grid_cache) <= module._GRID_CACHE_SIZE
