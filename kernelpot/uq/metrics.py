"""Accuracy and uncertainty-calibration metrics for predictions with error bars.

Every function works on plain arrays. ``errors`` are residuals
``y_pred - y_true`` (use :func:`residuals` to form them) and ``sigma`` are the
predicted standard deviations in the same units and of the same shape; a
scalar ``sigma`` is broadcast. Arrays of any shape are flattened, so force
components ``(n_atoms, 3)`` can be scored directly.

Entries where the error or sigma is NaN (for example the stress of a
non-periodic frame) are skipped and a :class:`RuntimeWarning` reports how many.
Zero, negative or infinite sigma, infinite errors and mismatched shapes raise
:class:`ValueError`.

The coverage and miscalibration metrics assume a Gaussian predictive
distribution with standard deviation ``sigma``: the standardised error
(z-score) ``z = error / sigma`` is then standard normal when the model is
calibrated.

References
----------
D. Levi, L. Gispan, N. Giladi, E. Fetaya, "Evaluating and calibrating
uncertainty prediction in regression tasks", Sensors 22, 5540 (2022).

K. Tran et al., "Methods for comparing uncertainty quantifications for
material property predictions", Mach. Learn.: Sci. Technol. 1, 025006 (2020).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import special, stats

__all__ = [
    "CalibrationCurve",
    "calibration_curve",
    "coverage",
    "force_per_atom",
    "format_table",
    "informative",
    "mae",
    "mean_squared_z",
    "miscalibration_area",
    "nll",
    "recalibrate",
    "recalibration_scale",
    "residuals",
    "rmse",
    "spearman",
    "spearman_calibrated",
    "summary",
]

_LOG_2PI = float(np.log(2.0 * np.pi))


# --------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------
def _warn_skipped(n_skipped: int, n_total: int, what: str) -> None:
    if n_skipped:
        warnings.warn(
            f"skipped {n_skipped} of {n_total} entries with NaN {what}",
            RuntimeWarning,
            stacklevel=4,
        )


def _clean_one(values, name: str, warn: bool = True) -> np.ndarray:
    """Flatten ``values`` to float64, drop NaN, reject infinities and emptiness."""
    v = np.asarray(values, dtype=float).ravel()
    nan = np.isnan(v)
    n_nan = int(nan.sum())
    if n_nan == v.size:
        raise ValueError(
            f"{name} has no usable entries: {v.size} given, {n_nan} of them NaN"
        )
    if warn:
        _warn_skipped(n_nan, v.size, name)
    v = v[~nan]
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains infinite values; only finite or NaN are allowed")
    return v


def _clean_pair(
    errors,
    sigma,
    names: tuple[str, str] = ("errors", "sigma"),
    warn: bool = True,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate an (errors, sigma) pair and drop entries where either is NaN.

    Returns the flattened finite ``errors`` and ``sigma`` and the number of
    skipped entries.
    """
    e = np.asarray(errors, dtype=float)
    s = np.asarray(sigma, dtype=float)
    if s.ndim == 0:
        s = np.full(e.shape, float(s))
    if e.shape != s.shape:
        raise ValueError(
            f"{names[0]} has shape {e.shape} but {names[1]} has shape {s.shape}; "
            f"they must have the same shape (or {names[1]} must be a scalar)"
        )
    e = e.ravel()
    s = s.ravel()
    n_total = e.size
    if n_total == 0:
        raise ValueError(f"{names[0]} and {names[1]} are empty")
    nan = np.isnan(e) | np.isnan(s)
    n_skipped = int(nan.sum())
    if n_skipped == n_total:
        raise ValueError(
            f"no usable entries: all {n_total} entries of {names[0]} or {names[1]} are NaN"
        )
    if warn:
        _warn_skipped(n_skipped, n_total, f"{names[0]} or {names[1]}")
    e = e[~nan]
    s = s[~nan]
    if not np.all(np.isfinite(e)):
        raise ValueError(f"{names[0]} contains infinite values; only finite or NaN are allowed")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{names[1]} contains infinite values; only finite or NaN are allowed")
    nonpos = s <= 0.0
    if np.any(nonpos):
        first = int(np.flatnonzero(nonpos)[0])
        raise ValueError(
            f"{names[1]} must be strictly positive: {int(nonpos.sum())} of {s.size} "
            f"non-NaN entries are <= 0 (first: {s[first]!r}). A zero predicted standard "
            f"deviation cannot be scored; fix the noise model or drop those entries"
        )
    return e, s, n_skipped


def residuals(y_true, y_pred) -> np.ndarray:
    """Prediction errors ``y_pred - y_true`` with a shape check.

    Parameters
    ----------
    y_true, y_pred : array_like, same shape
        Reference and predicted values, same units.

    Returns
    -------
    ndarray, same shape
        Signed errors (NaN propagated).

    Examples
    --------
    >>> residuals([1.0, 2.0], [1.5, 1.0]).tolist()
    [0.5, -1.0]
    """
    t = np.asarray(y_true, dtype=float)
    p = np.asarray(y_pred, dtype=float)
    if t.shape != p.shape:
        raise ValueError(
            f"y_true has shape {t.shape} but y_pred has shape {p.shape}; they must match"
        )
    return p - t


# --------------------------------------------------------------------------
# accuracy
# --------------------------------------------------------------------------
def mae(errors) -> float:
    """Mean absolute error.

    Parameters
    ----------
    errors : array_like, any shape
        Signed errors; NaN entries are skipped.

    Returns
    -------
    float
        ``mean(|errors|)``, units of ``errors``.

    Examples
    --------
    >>> mae([1.0, -3.0])
    2.0
    """
    return float(np.mean(np.abs(_clean_one(errors, "errors"))))


def rmse(errors) -> float:
    """Root-mean-square error.

    Parameters
    ----------
    errors : array_like, any shape
        Signed errors; NaN entries are skipped.

    Returns
    -------
    float
        ``sqrt(mean(errors**2))``, units of ``errors``.

    Examples
    --------
    >>> rmse([1.0, -1.0, 1.0, -1.0])
    1.0
    """
    e = _clean_one(errors, "errors")
    return float(np.sqrt(np.mean(e * e)))


# --------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------
def _coverage(z: np.ndarray, k) -> np.ndarray | float:
    k_arr = np.asarray(k, dtype=float)
    if np.any(~np.isfinite(k_arr)) or np.any(k_arr <= 0):
        raise ValueError(f"k must be positive finite multiples of sigma, got {k!r}")
    az = np.abs(z)
    frac = np.mean(az[:, None] <= k_arr.ravel()[None, :], axis=0)
    if k_arr.ndim == 0:
        return float(frac[0])
    return frac.reshape(k_arr.shape)


def coverage(errors, sigma, k: float | Sequence[float] = (1, 2, 3)) -> np.ndarray | float:
    """Fraction of errors inside ``k`` predicted standard deviations.

    Parameters
    ----------
    errors, sigma : array_like, same shape (``sigma`` may be a scalar)
        Signed errors and predicted standard deviations, same units.
    k : float or sequence of float, default (1, 2, 3)
        Interval half-widths in units of ``sigma``.

    Returns
    -------
    float or ndarray of shape ``(len(k),)``
        Observed fraction with ``|error| <= k * sigma``. For a calibrated
        Gaussian predictive these are 0.683, 0.954, 0.997 for k = 1, 2, 3.

    Examples
    --------
    >>> coverage([0.5, 1.5, -2.5, 0.1], 1.0).tolist()
    [0.5, 0.75, 1.0]
    """
    e, s, _ = _clean_pair(errors, sigma)
    return _coverage(e / s, k)


def _check_n_bins(n_bins, n_max: int | None = None) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if n_max is not None and n_bins > n_max:
        raise ValueError(
            f"n_bins={n_bins} is larger than the number of usable entries ({n_max}); "
            f"use n_bins <= {n_max}"
        )
    return int(n_bins)


def _observed_coverage_curve(z: np.ndarray, p: np.ndarray) -> np.ndarray:
    # Each |z_i| is the boundary of the central interval of level
    # u_i = 2 Phi(|z_i|) - 1 = erf(|z_i| / sqrt 2); the point lies inside the
    # level-p interval iff u_i <= p, so the observed curve is the ECDF of u.
    u = np.sort(special.erf(np.abs(z) / np.sqrt(2.0)))
    return np.searchsorted(u, p, side="right") / u.size


def _miscalibration_area(z: np.ndarray, n_bins: int) -> float:
    # Midpoint rule on p in (0, 1); exact in expectation for a calibrated model.
    p = (np.arange(n_bins) + 0.5) / n_bins
    return float(np.mean(np.abs(_observed_coverage_curve(z, p) - p)))


def miscalibration_area(errors, sigma, n_bins: int = 200) -> float:
    """Area between the observed and the ideal coverage curve.

    For confidence level ``p`` the Gaussian central interval is
    ``|z| <= Phi^-1((1 + p) / 2)``; the observed coverage is the fraction of
    points inside it. The area ``int_0^1 |observed(p) - p| dp`` is 0 for a
    calibrated model and at most 0.5.

    Parameters
    ----------
    errors, sigma : array_like, same shape (``sigma`` may be a scalar)
        Signed errors and predicted standard deviations, same units.
    n_bins : int, default 200
        Number of confidence levels (midpoint rule on ``(0, 1)``).

    Returns
    -------
    float
        Miscalibration area in ``[0, 0.5]``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> miscalibration_area(rng.normal(size=10000), 1.0) < 0.01
    True
    """
    e, s, _ = _clean_pair(errors, sigma)
    return _miscalibration_area(e / s, _check_n_bins(n_bins))


def _nll(e: np.ndarray, s: np.ndarray) -> float:
    return float(np.mean(0.5 * _LOG_2PI + np.log(s) + 0.5 * (e / s) ** 2))


def nll(errors, sigma) -> float:
    """Mean Gaussian negative log-likelihood of the errors.

    ``mean(0.5 log(2 pi sigma^2) + error^2 / (2 sigma^2))``. Depends on the
    unit of ``errors``/``sigma`` (an additive ``log`` of the scale), so only
    compare values computed in the same units.

    Parameters
    ----------
    errors, sigma : array_like, same shape (``sigma`` may be a scalar)
        Signed errors and predicted standard deviations, same units.

    Returns
    -------
    float
        Mean NLL per entry (nats).

    Examples
    --------
    >>> round(nll([0.0], [1.0]), 6)  # 0.5 log(2 pi)
    0.918939
    """
    e, s, _ = _clean_pair(errors, sigma)
    return _nll(e, s)


def _spearman(abs_e: np.ndarray, s: np.ndarray) -> float:
    if abs_e.size < 2:
        raise ValueError(f"spearman needs at least 2 usable entries, got {abs_e.size}")
    if np.ptp(abs_e) == 0 or np.ptp(s) == 0:  # undefined (NaN, as documented), without scipy's warning
        return float("nan")
    return float(stats.spearmanr(abs_e, s).statistic)


def spearman(abs_error, sigma) -> float:
    """Spearman rank correlation between absolute error and predicted sigma.

    Parameters
    ----------
    abs_error, sigma : array_like, same shape
        Absolute errors (signed errors are converted with ``abs``) and
        predicted standard deviations.

    Returns
    -------
    float
        Rank correlation in ``[-1, 1]``; NaN when either input is constant.
        Note that even a perfectly calibrated Gaussian model has a
        correlation well below 1, because ``|error|`` is random given sigma.

    Examples
    --------
    >>> spearman([0.1, 0.2, 0.4], [1.0, 2.0, 3.0])
    1.0
    """
    e, s, _ = _clean_pair(abs_error, sigma, names=("abs_error", "sigma"))
    return _spearman(np.abs(e), s)


def spearman_calibrated(sigma, n_draws: int = 200, random_state=0) -> float:
    """Expected Spearman(|error|, sigma) of a perfectly calibrated model with these sigma.

    The yardstick for :func:`spearman`: errors drawn as ``N(0, sigma^2)``
    exactly, ``n_draws`` times, and the mean rank correlation returned.  How
    high it can be depends only on how much sigma varies: with nearly equal
    sigma it is near 0 however honest they are, so a target on the Spearman
    correlation alone can be out of reach of any calibrated model.

    Parameters
    ----------
    sigma : array_like
        Predicted standard deviations (> 0; NaN entries are skipped).
    n_draws : int, default 200
        Monte Carlo draws; the standard error is about ``1 / sqrt(n n_draws)``.
    random_state : int, default 0

    Returns
    -------
    float
        NaN when sigma is constant (as :func:`spearman`).

    Raises
    ------
    ValueError
        If a sigma is not finite and positive, or fewer than 2 remain.

    Examples
    --------
    Two sigma levels, 1 and 3, in equal numbers: the large-n value is
    ``(sqrt(3) / 2) (4 arctan(3) / pi - 1) = 0.511``.

    >>> s = np.repeat([1.0, 3.0], 5000)
    >>> round(spearman_calibrated(s, n_draws=20), 2)
    0.51
    """
    s = np.asarray(sigma, float).ravel()
    s = s[~np.isnan(s)]
    if np.any(~(s > 0)) or np.any(np.isinf(s)):
        raise ValueError("sigma must be finite and > 0")
    if s.size < 2:
        raise ValueError(f"spearman_calibrated needs at least 2 usable entries, got {s.size}")
    if np.all(s == s[0]):
        return float("nan")
    rng = np.random.default_rng(random_state)
    rs = stats.rankdata(s)
    vals = [np.corrcoef(rs, stats.rankdata(np.abs(rng.standard_normal(s.size)) * s))[0, 1] for _ in range(n_draws)]
    return float(np.mean(vals))


def mean_squared_z(errors, sigma) -> float:
    """Mean squared standardised error, ``mean((error / sigma)^2)``.

    Parameters
    ----------
    errors, sigma : array_like, same shape (``sigma`` may be a scalar)
        Signed errors and predicted standard deviations, same units.

    Returns
    -------
    float
        About 1 when calibrated; above 1 means overconfident (sigma too small),
        below 1 underconfident.

    Examples
    --------
    >>> mean_squared_z([2.0, -2.0], [1.0, 2.0])
    2.5
    """
    e, s, _ = _clean_pair(errors, sigma)
    return float(np.mean((e / s) ** 2))


class CalibrationCurve(NamedTuple):
    """Error-based calibration curve (Levi et al. 2022).

    Attributes
    ----------
    rmv : ndarray, shape (n_bins,)
        Root mean variance ``sqrt(mean(sigma^2))`` per bin, ascending.
    rmse : ndarray, shape (n_bins,)
        Root-mean-square error per bin.
    ence : float
        Expected normalised calibration error ``mean(|rmv - rmse| / rmv)``.
    counts : ndarray of int, shape (n_bins,)
        Number of entries per bin.
    """

    rmv: np.ndarray
    rmse: np.ndarray
    ence: float
    counts: np.ndarray


def _calibration_curve(e: np.ndarray, s: np.ndarray, n_bins: int) -> CalibrationCurve:
    order = np.argsort(s, kind="stable")
    groups = np.array_split(order, n_bins)
    rmv = np.array([np.sqrt(np.mean(s[g] ** 2)) for g in groups])
    rms = np.array([np.sqrt(np.mean(e[g] ** 2)) for g in groups])
    counts = np.array([g.size for g in groups], dtype=np.int64)
    ence = float(np.mean(np.abs(rmv - rms) / rmv))
    return CalibrationCurve(rmv=rmv, rmse=rms, ence=ence, counts=counts)


def calibration_curve(errors, sigma, n_bins: int = 10) -> CalibrationCurve:
    """Error-based calibration: RMSE against root mean variance in sigma bins.

    Entries are sorted by ``sigma`` and split into ``n_bins`` bins of equal
    count (sizes differ by at most one). For a calibrated model
    ``rmse == rmv`` in every bin, up to sampling noise.

    Parameters
    ----------
    errors, sigma : array_like, same shape (``sigma`` may be a scalar)
        Signed errors and predicted standard deviations, same units.
    n_bins : int, default 10
        Number of bins, at most the number of usable entries.

    Returns
    -------
    CalibrationCurve
        Named tuple ``(rmv, rmse, ence, counts)``; see :class:`CalibrationCurve`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> s = rng.uniform(0.1, 1.0, 20000)
    >>> curve = calibration_curve(rng.normal(size=s.size) * s, s, n_bins=5)
    >>> bool(np.allclose(curve.rmse, curve.rmv, rtol=0.05))
    True
    """
    e, s, _ = _clean_pair(errors, sigma)
    return _calibration_curve(e, s, _check_n_bins(n_bins, e.size))


def recalibration_scale(z_scores) -> float:
    """Scale factor ``s`` such that ``sigma * s`` gives mean squared z of 1.

    Typically fitted on leave-one-out z-scores of the training set and then
    applied to test predictions with :func:`recalibrate`.

    Parameters
    ----------
    z_scores : array_like, any shape
        Standardised errors ``error / sigma``; NaN entries are skipped.

    Returns
    -------
    float
        ``s = sqrt(mean(z^2))``; then ``mean((z / s)^2) == 1``.

    Examples
    --------
    >>> recalibration_scale([2.0, -2.0])
    2.0
    """
    z = _clean_one(z_scores, "z_scores")
    s = float(np.sqrt(np.mean(z * z)))
    if s == 0.0:
        raise ValueError(
            "z_scores are all zero, so no finite scale makes mean z^2 = 1; "
            "check that errors were computed against the reference values"
        )
    return s


def recalibrate(sigma, s: float) -> np.ndarray:
    """Apply a recalibration scale: ``sigma * s``.

    Parameters
    ----------
    sigma : array_like, any shape
        Predicted standard deviations.
    s : float
        Scale from :func:`recalibration_scale`, positive and finite.

    Returns
    -------
    ndarray, shape of ``sigma``
        Recalibrated standard deviations (NaN propagated).

    Examples
    --------
    >>> recalibrate([0.1, 0.2], 2.0).tolist()
    [0.2, 0.4]
    """
    s = float(s)
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"recalibration scale s must be positive and finite, got {s!r}")
    return np.asarray(sigma, dtype=float) * s


def force_per_atom(errors, sigma) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom force error norm and per-atom sigma.

    Parameters
    ----------
    errors : array_like, shape (n_atoms, 3)
        Force component errors, eV/Å.
    sigma : array_like, shape (n_atoms, 3)
        Predicted standard deviation of each component, eV/Å.

    Returns
    -------
    error_norm : ndarray, shape (n_atoms,)
        ``|F_pred - F_ref|`` per atom, eV/Å.
    sigma_atom : ndarray, shape (n_atoms,)
        ``sqrt(sum_alpha sigma_alpha^2)`` per atom, eV/Å (the root of the
        expected squared error norm). NaN propagates to both outputs.

    Examples
    --------
    >>> norm, sig = force_per_atom([[3.0, 4.0, 0.0]], [[1.0, 2.0, 2.0]])
    >>> norm.tolist(), sig.tolist()
    ([5.0], [3.0])
    """
    e = np.asarray(errors, dtype=float)
    s = np.asarray(sigma, dtype=float)
    for name, a in (("errors", e), ("sigma", s)):
        if a.ndim != 2 or a.shape[1] != 3:
            raise ValueError(f"{name} has shape {a.shape}, expected (n_atoms, 3)")
    if e.shape != s.shape:
        raise ValueError(f"errors has shape {e.shape} but sigma has shape {s.shape}; they must match")
    return np.sqrt(np.sum(e * e, axis=1)), np.sqrt(np.sum(s * s, axis=1))


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------
#: Latent std below this fraction of a kind's sigma floor (:data:`kernelpot.gp.calibration.SIGMA_FLOOR`):
#: a component fixed by symmetry.
FIXED_FRACTION = 1e-2


def informative(std_epistemic, kind: str) -> np.ndarray:
    """Components whose prediction the model could get wrong: latent std above round-off.

    A component fixed by symmetry (a force in a perfect, strained crystal, a
    shear stress of a cubic cell under uniaxial strain) has zero latent
    variance and zero error in every model, so it is always "covered" and
    inflates a coverage or lowers a miscalibration area for free: on the
    mlearn Si test set 960 of 4575 force components are such, and counting
    them raised the force coverage from 70 / 95 % to 76 / 96 % within 1 / 2
    sigma.  Coverage and calibration metrics are taken over the others;
    errors (MAE, RMSE) over all.  "Zero" is an absolute threshold,
    :data:`FIXED_FRACTION` of the kind's sigma floor (1e-6 eV/Å for forces,
    1e-9 eV/Å^3 for stress), not a fraction of the largest std in the set,
    so one far-off structure cannot hide the others and a set of symmetric
    crystals alone is still recognised.  On mlearn Si the fixed components'
    latent std is below 1e-10 eV/Å (forces) and 5e-11 eV/Å^3 (stress), the
    others' above 1.5e-2 eV/Å and 1.9e-7 eV/Å^3.  The calibration fit leaves the same kind of
    component out of its training residuals
    (:func:`kernelpot.gp.calibration.informative`).

    Parameters
    ----------
    std_epistemic : array_like
        Latent (epistemic) standard deviations of one quantity, any shape,
        in kernelpot's units (energy per atom eV/atom, forces eV/Å, stress eV/Å^3).
    kind : {"energy", "forces", "stress"}

    Returns
    -------
    ndarray of bool, the shape of ``std_epistemic``
        True where the std is finite and above the threshold.

    Examples
    --------
    >>> informative([0.2, 1e-12, 0.05], "forces").tolist()
    [True, False, True]
    >>> informative([1e-12], "energy").tolist()
    [True]
    """
    from kernelpot.gp.calibration import SIGMA_FLOOR
    s = np.asarray(std_epistemic, float)
    if kind == "energy":   # no symmetry fixes an energy: a tiny std is a precise model (EMT copper: 2e-8 eV/atom)
        return np.isfinite(s)
    return np.isfinite(s) & (s > FIXED_FRACTION * SIGMA_FLOOR[kind])


def summary(errors, sigma, n_bins: int = 200) -> dict[str, float]:
    """All accuracy and calibration metrics in one dictionary.

    Parameters
    ----------
    errors, sigma : array_like, same shape (``sigma`` may be a scalar)
        Signed errors and predicted standard deviations, same units.
    n_bins : int, default 200
        Confidence levels for the miscalibration area.

    Returns
    -------
    dict
        ``n`` (usable entries), ``n_skipped`` (NaN entries skipped), ``mae``,
        ``rmse``, ``coverage_1``, ``coverage_2``, ``coverage_3``,
        ``miscal_area``, ``nll``, ``spearman`` (``|error|`` vs sigma), ``msz``
        (mean squared z).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> s = rng.uniform(0.5, 2.0, 5000)
    >>> row = summary(rng.normal(size=s.size) * s, s)
    >>> abs(row["coverage_1"] - 0.683) < 0.02
    True
    """
    e, s, n_skipped = _clean_pair(errors, sigma)
    z = e / s
    cov = _coverage(z, (1.0, 2.0, 3.0))
    return {
        "n": int(e.size),
        "n_skipped": n_skipped,
        "mae": float(np.mean(np.abs(e))),
        "rmse": float(np.sqrt(np.mean(e * e))),
        "coverage_1": float(cov[0]),
        "coverage_2": float(cov[1]),
        "coverage_3": float(cov[2]),
        "miscal_area": _miscalibration_area(z, _check_n_bins(n_bins)),
        "nll": _nll(e, s),
        "spearman": _spearman(np.abs(e), s) if e.size >= 2 else float("nan"),
        "msz": float(np.mean(z * z)),
    }


def _format_cell(value, floatfmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format(float(value), floatfmt)
    return str(value)


def format_table(
    rows: Mapping[str, Mapping[str, object]],
    columns: Sequence[str] | None = None,
    floatfmt: str = ".4g",
    name: str = "model",
) -> str:
    """Plain-text table with aligned columns, one row per entry of ``rows``.

    Parameters
    ----------
    rows : mapping of str to mapping
        Row label -> ``{column: value}``, e.g. model name -> :func:`summary`.
    columns : sequence of str, optional
        Columns to show, in order. Default: union of the rows' keys in order
        of first appearance. Missing values are shown as ``-``.
    floatfmt : str, default ".4g"
        Format spec for floats.
    name : str, default "model"
        Header of the row-label column.

    Returns
    -------
    str
        Header, a dashed rule and one line per row; labels left-aligned,
        values right-aligned. No trailing newline.

    Examples
    --------
    >>> print(format_table({"gp": {"mae": 0.0123, "n": 10}}))
    model     mae   n
    -----  ------  --
    gp     0.0123  10
    """
    if columns is None:
        columns = []
        for row in rows.values():
            for key in row:
                if key not in columns:
                    columns.append(key)
    columns = list(columns)
    header = [name] + [str(c) for c in columns]
    body = [
        [str(label)] + [_format_cell(row.get(c), floatfmt) for c in columns]
        for label, row in rows.items()
    ]
    widths = [max(len(r[j]) for r in [header] + body) for j in range(len(header))]

    def line(cells: list[str]) -> str:
        out = [cells[0].ljust(widths[0])]
        out += [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(out).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)]
    lines += [line(r) for r in body]
    return "\n".join(lines)
