"""Dot-product kernel on unit-normalised descriptors and its derivatives.

The model kernel between two atomic environments with unit descriptor vectors
``x`` and ``y`` (same central species) is

    k(x, y) = delta**2 * (x . y)**zeta

``delta`` (eV) is a hyperparameter of the model; the functions here work with the
*reduced* kernel ``(x . y)**zeta`` and leave the scale to :mod:`kernelpot.gp`.
Descriptors arrive already normalised (``SOAP(normalize=True)``), and their
position/strain derivatives already carry the chain rule of the normalisation,
so the kernel never needs the raw norms.

Derivatives used by the GP:

* ``dk/dx = zeta (x.y)**(zeta-1) y``   (energy -> force/virial observations)
* ``d2k/dx dy = zeta (x.y)**(zeta-1) I + zeta (zeta-1) (x.y)**(zeta-2) y x^T``
  (prior covariance of two derivative observations)
"""

from __future__ import annotations

import numpy as np

__all__ = ["dot_kernel", "dot_kernel_coeff", "pair_covariance_factors", "pair_covariance_sum"]


def _check_zeta(zeta: float) -> None:
    if not (np.isfinite(zeta) and zeta >= 1):
        raise ValueError(f"zeta must be a finite number >= 1, got {zeta!r}")


def dot_kernel(X: np.ndarray, Y: np.ndarray, zeta: float) -> np.ndarray:
    """Reduced kernel matrix ``(X Y^T)**zeta``.

    Parameters
    ----------
    X : (n, F) array
        Unit descriptor vectors.
    Y : (m, F) array
        Unit descriptor vectors.
    zeta : float
        Kernel exponent (>= 1).

    Returns
    -------
    (n, m) array

    Examples
    --------
    >>> x = np.array([[1.0, 0.0]])
    >>> float(dot_kernel(x, x, 4)[0, 0])
    1.0
    """
    _check_zeta(zeta)
    D = X @ Y.T
    # Power spectra are non-negative for a*a channels but cross terms can make
    # tiny negative dot products; a real power of a negative number is nan.
    return _power(D, zeta)


def dot_kernel_coeff(D: np.ndarray, zeta: float) -> np.ndarray:
    """``zeta * D**(zeta-1)``: the scalar factor of ``dk/dx = coeff * y``."""
    _check_zeta(zeta)
    return zeta * _power(D, zeta - 1.0)


def _power(D: np.ndarray, p: float) -> np.ndarray:
    if p == 0:
        return np.ones_like(D)
    if float(p).is_integer():
        return D ** int(p)
    return np.sign(D) * np.abs(D) ** p


def pair_covariance_factors(XA: np.ndarray, XB: np.ndarray, same: np.ndarray, zeta: float):
    """Pair factors of ``d2k/dx dy`` for environments ``XA`` x ``XB``.

    Returns ``(P1, P2)`` with ``P1 = zeta D**(zeta-1)`` and
    ``P2 = zeta (zeta-1) D**(zeta-2)`` (``D = XA XB^T``), zeroed between
    different central species, so that
    ``gA^T (d2k/dx dy) gB = P1 (gA.gB) + P2 (gA.xB)(xA.gB)``.
    """
    D = XA @ XB.T
    P1 = np.where(same, zeta * _power(D, zeta - 1), 0.0)
    P2 = np.where(same, zeta * (zeta - 1) * _power(D, zeta - 2), 0.0) if zeta != 1 else np.zeros_like(D)
    return P1, P2


def pair_covariance_sum(
    GA: np.ndarray, XA: np.ndarray, GB: np.ndarray, XB: np.ndarray, same: np.ndarray, zeta: float,
    factors: tuple | None = None,
) -> float:
    """Sum over environment pairs of ``gA^T (d2k/dx dy) gB`` (reduced kernel).

    This is the prior covariance of two derivative observations, each a sum over
    environments of ``g . dk/dx`` (force component or virial component).

    Parameters
    ----------
    GA, GB : (a, F), (b, F) arrays
        Descriptor derivatives of the environments entering each observation.
    XA, XB : (a, F), (b, F) arrays
        Unit descriptors of those environments.
    same : (a, b) bool array
        True where the two environments have the same central species.
    zeta : float
    factors : tuple, optional
        ``pair_covariance_factors(XA, XB, same, zeta)``, when reused across calls.

    Returns
    -------
    float
    """
    P1, P2 = pair_covariance_factors(XA, XB, same, zeta) if factors is None else factors
    GX = GA @ XB.T  # gA . xB
    XG = XA @ GB.T  # xA . gB
    return float(np.sum(P1 * (GA @ GB.T)) + np.sum(P2 * GX * XG))
