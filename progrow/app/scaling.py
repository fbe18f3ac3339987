"""Loss as a function of parameters and tokens, fitted to short fixed-size runs.

Two models of the same data (the final validation loss of fixed-size runs of several
sizes at several budgets), used by ``progrow-plan``:

* :func:`fit_loss`: the parametric form of Hoffmann et al. (2022, "approach 3"),
  ``L(N, D) = E + A / N**alpha + B / D**beta``, fitted as they describe and as the 2024
  replication by Besiroglu et al. redoes it: the Huber loss (``delta = 1e-3``) of the
  residuals of ``log L``, with ``log L_hat = LSE(a - alpha log N, b - beta log D, e)``
  (``A = exp(a)``, ``B = exp(b)``, ``E = exp(e)``), minimised by L-BFGS from a grid of
  initialisations, the best result kept. One form for every size, five numbers: it
  predicts sizes and budgets no run measured, which is what a plan needs.
* :func:`curve_loss`: each size's own measured curve, final loss against ``log FLOPs``,
  interpolated linearly (and extrapolated along its end segments). No assumption about
  the form, but nothing to say about a size or a budget far from the runs.

:func:`loo_fit` and :func:`loo_curves` hold out one run at a time and predict it from the
others: the error a plan can expect from each model near the measured runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: Points as lists or NumPy arrays.
Values = Sequence[float] | np.ndarray

#: Huber threshold on the residuals of log-loss (Hoffmann et al.; Besiroglu et al.).
HUBER_DELTA = 1e-3
#: Initialisations of (e, a, b, alpha, beta): the grid of Hoffmann et al. as Besiroglu et
#: al. give it (4500 points).
GRID: dict[str, tuple[float, ...]] = {
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
#: Exponents are kept in this range (negative ones would make loss grow with scale).
EXPONENT_BOUNDS = (0.0, 5.0)
#: ``log E`` is kept within this much below the lowest measured log-loss (E >= 4.5e-5 x it).
E_FLOOR = 10.0


class LossForm(Protocol):
    """What the planner asks of a fitted loss form (:class:`LossFit`, or
    :class:`progrow.app.scaling_kaplan.KaplanFit`)."""

    @property
    def E(self) -> float: ...
    @property
    def form(self) -> str: ...
    def loss(self, n: Any, d: Any) -> Any: ...
    def tokens_for_loss(self, n: float, loss: float) -> float: ...
    def optimal_params(self, flops: float) -> float: ...
    def parameters_effect(self, n_lo: float, n_hi: float, d: float) -> float: ...
    def tokens_effect(self, d_lo: float, d_hi: float, n: float) -> float: ...
    def formula(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LossFit:
    """``L(N, D) = E + A / N**alpha + B / D**beta`` (``N`` parameters, ``D`` tokens)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = math.nan
    """The Huber objective at the optimum (sum over the points)."""
    points: int = 0
    """How many ``(N, D, L)`` points it was fitted to."""
    form: str = "chinchilla"

    def loss(self, n: Any, d: Any) -> Any:
        """Predicted loss at ``n`` parameters and ``d`` tokens (scalars or arrays)."""
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        out = self.E + self.A / n**self.alpha + self.B / d**self.beta
        return float(out) if out.ndim == 0 else out

    def tokens_for_loss(self, n: float, loss: float) -> float:
        """Tokens a model of ``n`` parameters needs to reach ``loss``; ``inf`` when the
        loss is at or below what that size reaches with endless data."""
        gap = loss - self.E - self.A / n**self.alpha
        return math.inf if gap <= 0 else (self.B / gap) ** (1.0 / self.beta)

    def limit(self, n: float) -> float:
        """The loss a model of ``n`` parameters reaches with endless data."""
        return self.E + self.A / n**self.alpha

    def parameters_effect(self, n_lo: float, n_hi: float, d: float) -> float:
        """How much going from ``n_lo`` to ``n_hi`` parameters lowers the loss (at any
        token count: the form is additive)."""
        return self.A / n_lo**self.alpha - self.A / n_hi**self.alpha

    def tokens_effect(self, d_lo: float, d_hi: float, n: float) -> float:
        """How much going from ``d_lo`` to ``d_hi`` tokens lowers the loss (any size)."""
        return self.B / d_lo**self.beta - self.B / d_hi**self.beta

    def optimal_params(self, flops: float) -> float:
        """The compute-optimal ``N`` for ``flops`` under ``C = 6 N D`` (Hoffmann et al.'s
        closed form, ``G (C / 6) ** (beta / (alpha + beta))``); ``nan`` if an exponent
        is zero (no trade-off to optimise)."""
        if self.alpha <= 0 or self.beta <= 0:
            return math.nan
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        return g * (flops / 6.0) ** (self.beta / (self.alpha + self.beta))

    def formula(self) -> str:
        """``L = E + A/N^alpha + B/D^beta`` with the fitted numbers."""
        return (
            f"L = {self.E:.4g} + {self.A:.4g}/N^{self.alpha:.3g} + {self.B:.4g}/D^{self.beta:.3g}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of ``r`` and its derivative."""
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    return value, np.where(small, r, delta * np.sign(r))


def _terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """The three log-terms, shape ``(..., 3, points)`` for ``theta`` of shape ``(..., 5)``."""
    e, a, b, alpha, beta = (theta[..., i, None] for i in range(5))
    return np.stack(
        [a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (a - alpha * log_n).shape)],
        axis=-2,
    )


def _objective(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Sum of Huber losses of the log-loss residuals, and its gradient in theta."""
    e, a, b, alpha, beta = theta
    t_n, t_d = a - alpha * log_n, b - beta * log_d
    top = np.maximum(np.maximum(t_n, t_d), e)
    w_n, w_d, w_e = np.exp(t_n - top), np.exp(t_d - top), np.exp(e - top)
    total = w_n + w_d + w_e
    value, slope = huber(top + np.log(total) - log_l, delta)
    slope = slope / total  # times d pred / d term = softmax weight
    s_n, s_d = slope * w_n, slope * w_d
    grad = np.array(
        [
            np.dot(slope, w_e),
            s_n.sum(),
            s_d.sum(),
            -np.dot(s_n, log_n),
            -np.dot(s_d, log_d),
        ]
    )
    return float(value.sum()), grad


def _grid_objective(
    log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Every grid initialisation and its objective (vectorised)."""
    theta = np.array(list(itertools.product(*GRID.values())), dtype=float)
    t = _terms(theta, log_n, log_d)
    top = t.max(axis=-2)
    pred = top + np.log(np.exp(t - top[..., None, :]).sum(axis=-2))
    value, _ = huber(pred - log_l, delta)
    return theta, value.sum(axis=-1)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """OpenBLAS (scipy's, which L-BFGS-B calls) on one thread for the duration.

    L-BFGS-B works on 5-vectors here, where BLAS threads only wait for each other: on a
    machine whose other cores are busy each call then takes ~10x longer (seconds per
    fit instead of a fraction of one). The libraries already loaded are found in
    ``/proc/self/maps`` (Linux; elsewhere nothing changes) and their thread count is
    restored afterwards.
    """
    changed = []
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    for path in sorted({line.split()[-1] for line in maps.splitlines() if "openblas" in line}):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            get = getattr(lib, f"{prefix}_get_num_threads", None)
            put = getattr(lib, f"{prefix}_set_num_threads", None)
            if get is not None and put is not None:
                changed.append((put, int(get())))
                put(1)
                break
    try:
        yield
    finally:
        for put, threads in changed:
            put(threads)


def check_points(n: Values, d: Values, loss: Values) -> None:
    """Refuse points a 5-parameter form cannot be fitted to (``ValueError``)."""
    if not (len(n) == len(d) == len(loss)):
        raise ValueError(f"n, d and loss differ in length ({len(n)}, {len(d)}, {len(loss)})")
    bad = [
        (x, y, z)
        for x, y, z in zip(n, d, loss, strict=True)
        if not all(math.isfinite(v) and v > 0 for v in (x, y, z))
    ]
    if bad:
        raise ValueError(f"points {bad}: parameters, tokens and losses must be positive")
    if len(n) < 5:
        raise ValueError(f"{len(n)} points: the fit has 5 parameters and needs at least 5")


def best_of_starts(
    objective: Callable[..., tuple[float, np.ndarray]],
    theta: np.ndarray,
    values: np.ndarray,
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    delta: float,
    *,
    starts: int,
    extra_starts: Sequence[Sequence[float]],
    exponent_bounds: tuple[float, float],
) -> Any:
    """L-BFGS-B (analytic gradient) of ``objective(params, log_n, log_d, log_l, delta)``
    on ``data = (log_n, log_d, log_l)``, from the ``starts`` grid points ``theta`` of
    lowest objective ``values`` and from ``extra_starts``; the lowest optimum (scipy's
    result).

    The parameters are ``(log E, free, free, exponent, exponent)``. ``log E`` lies below
    every measured log-loss (the other terms are positive) and, in log, not unboundedly
    below it (:data:`E_FLOOR`): data that cannot place E would otherwise send L-BFGS
    after E -> 0 for thousands of steps.
    """
    from scipy.optimize import minimize

    order = np.argsort(values, kind="stable")[:starts]
    inits = [theta[i] for i in order] + [np.asarray(x, dtype=float) for x in extra_starts]
    top = float(data[2].min())
    bounds = [(top - E_FLOOR, top), (None, None), (None, None), exponent_bounds, exponent_bounds]
    low = [-np.inf if b[0] is None else b[0] for b in bounds]
    high = [np.inf if b[1] is None else b[1] for b in bounds]
    best = None
    with one_blas_thread():
        for init in inits:
            result = minimize(
                objective,
                np.clip(init, low, high),
                args=(*data, delta),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12},
            )
            if best is None or result.fun < best.fun:
                best = result
    assert best is not None
    return best


def fit_loss(
    n: Values,
    d: Values,
    loss: Values,
    *,
    delta: float = HUBER_DELTA,
    starts: int = 24,
    extra_starts: Sequence[Sequence[float]] = (),
) -> LossFit:
    """Fit ``L = E + A/N^alpha + B/D^beta`` to ``(n, d, loss)`` points.

    The objective (Huber on log-loss residuals, log-sum-exp form) is evaluated at all
    4500 grid points of :data:`GRID` at once; L-BFGS-B (analytic gradient, exponents
    kept in :data:`EXPONENT_BOUNDS`, ``E`` at most the lowest loss and at least
    ``exp(-E_FLOOR)`` times it) then runs from the ``starts`` best of them and from
    ``extra_starts`` (``(e, a, b, alpha, beta)``), and the lowest optimum wins. Running
    L-BFGS from every grid point, as the papers do, gives the same optimum on the data
    tried here at ~100x the time; the tests check recovery of known parameters.

    Raises:
        ValueError: fewer than 5 points, or a non-positive or non-finite value.

    Example:
        >>> truth = LossFit(E=1.0, A=50.0, B=300.0, alpha=0.4, beta=0.3)
        >>> n, d = np.meshgrid(np.geomspace(1e4, 1e6, 4), np.geomspace(1e5, 1e8, 4))
        >>> fit = fit_loss(n.ravel(), d.ravel(), truth.loss(n.ravel(), d.ravel()))
        >>> round(fit.E, 3), round(fit.alpha, 3), round(fit.beta, 3)
        (1.0, 0.4, 0.3)
    """
    check_points(n, d, loss)
    log_n, log_d, log_l = (np.log(np.asarray(x, dtype=float)) for x in (n, d, loss))
    theta, values = _grid_objective(log_n, log_d, log_l, delta)
    best = best_of_starts(
        _objective,
        theta,
        values,
        (log_n, log_d, log_l),
        delta,
        starts=starts,
        extra_starts=extra_starts,
        exponent_bounds=EXPONENT_BOUNDS,
    )
    e, a, b, alpha, beta = (float(v) for v in best.x)
    return LossFit(
        E=math.exp(e),
        A=math.exp(a),
        B=math.exp(b),
        alpha=alpha,
        beta=beta,
        objective=float(best.fun),
        points=len(n),
    )


def warm_start(fit: LossFit) -> list[float]:
    """The fit as ``(e, a, b, alpha, beta)``: a warm start for a refit."""
    return [math.log(fit.E), math.log(fit.A), math.log(fit.B), fit.alpha, fit.beta]


@dataclass(frozen=True)
class HeldOut:
    """Leave-one-out errors of a model: ``predicted - measured`` per held-out run."""

    errors: tuple[float | None, ...]
    """Per point, in input order; ``None`` where the model could not predict it."""

    @property
    def predicted(self) -> list[float]:
        return [e for e in self.errors if e is not None]

    @property
    def rmse(self) -> float:
        got = self.predicted
        return math.sqrt(sum(e * e for e in got) / len(got)) if got else math.nan

    @property
    def max_abs(self) -> float:
        got = self.predicted
        return max(abs(e) for e in got) if got else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "rmse": self.rmse,
            "max_abs": self.max_abs,
            "predicted": len(self.predicted),
            "errors": list(self.errors),
        }


def loo_fit(
    n: Values,
    d: Values,
    loss: Values,
    full: Any = None,
    *,
    fit: Callable[..., Any] = fit_loss,
    warm: Callable[[Any], list[float]] = warm_start,
) -> HeldOut:
    """Leave-one-out over the points: refit without each (``fit``: :func:`fit_loss` or
    another form's fitter, from the grid's 4 best starts and ``warm(full)``, the full
    fit's optimum) and predict it. ``None`` where fewer than 5 points would remain."""
    if len(n) <= 5:
        return HeldOut(tuple(None for _ in n))
    starts = [warm(full)] if full is not None else []
    errors: list[float | None] = []
    for i in range(len(n)):
        keep = [j for j in range(len(n)) if j != i]
        refit = fit(
            [n[j] for j in keep],
            [d[j] for j in keep],
            [loss[j] for j in keep],
            starts=4,
            extra_starts=starts,
        )
        errors.append(float(refit.loss(n[i], d[i])) - loss[i])
    return HeldOut(tuple(errors))


def curve_loss(points: Sequence[tuple[float, float]], flops: float) -> float:
    """A size's loss at ``flops`` from its measured ``(flops, final loss)`` points:
    linear in ``log flops`` between the two around it, along the end segment outside
    them (a single point: its loss).

    Example:
        >>> round(curve_loss([(100.0, 2.0), (400.0, 1.0)], 200.0), 9)
        1.5
        >>> round(curve_loss([(100.0, 2.0), (400.0, 1.0)], 800.0), 9)
        0.5
    """
    ordered = sorted(points)
    if not ordered:
        raise ValueError("curve_loss: no points")
    if len(ordered) == 1:
        return ordered[0][1]
    x = [math.log(f) for f, _ in ordered]
    y = [v for _, v in ordered]
    t = math.log(flops)
    i = max([0, *(k for k in range(len(x) - 1) if x[k] <= t)])
    i = min(i, len(x) - 2)
    if x[i + 1] == x[i]:
        return y[i]
    return y[i] + (t - x[i]) * (y[i + 1] - y[i]) / (x[i + 1] - x[i])


def loo_curves(groups: Mapping[str, Sequence[tuple[float, float]]]) -> dict[str, HeldOut]:
    """Leave-one-out per size: each point predicted by :func:`curve_loss` from the
    size's other points (``None`` where fewer than 2 remain)."""
    out: dict[str, HeldOut] = {}
    for label, points in groups.items():
        errors: list[float | None] = []
        for i, (flops, value) in enumerate(points):
            rest = [p for j, p in enumerate(points) if j != i]
            errors.append(curve_loss(rest, flops) - value if len(rest) >= 2 else None)
        out[label] = HeldOut(tuple(errors))
    return out
