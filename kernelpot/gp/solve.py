"""Numerically careful dense linear algebra for the sparse GP.

All systems solved here are symmetric positive definite M x M matrices
(M = number of sparse points), so Cholesky is the right tool; what needs care is
near-singularity from nearly duplicate sparse environments.  ``safe_cholesky``
adds the smallest jitter that makes the factorisation succeed and reports the
condition estimate, instead of silently returning garbage.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg as sla

__all__ = ["safe_cholesky", "cho_solve", "cho_logdet", "cho_inverse"]

#: condition number above which results lose more than ~3 significant digits
COND_WARN = 1e13


def safe_cholesky(A: np.ndarray, name: str = "matrix", jitter: float = 0.0,
                  max_tries: int = 8) -> tuple[np.ndarray, float]:
    """Lower Cholesky factor of a symmetric positive (semi-)definite matrix.

    Parameters
    ----------
    A : (M, M) array
    name : str
        Used in warnings and errors.
    jitter : float
        Initial diagonal jitter, relative to the mean diagonal.
    max_tries : int
        Jitter is multiplied by 10 (starting at 1e-10 if 0) up to this many times.

    Returns
    -------
    L : (M, M) array
        Lower-triangular factor of ``A + jitter_used * mean(diag(A)) * I``.
    jitter_used : float
    """
    A = np.asarray(A, dtype=float)
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} contains non-finite entries; check the training labels and descriptors")
    scale = float(np.mean(np.diag(A))) if A.size else 1.0
    if scale <= 0:
        raise ValueError(f"{name} has a non-positive mean diagonal ({scale:g}); it cannot be a covariance")
    j = jitter
    for _ in range(max_tries + 1):
        try:
            L = sla.cholesky(A + (j * scale) * np.eye(len(A)), lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            j = 1e-10 if j == 0 else j * 10
            continue
        d = np.diag(L)
        cond = float((d.max() / d.min()) ** 2) if d.min() > 0 else np.inf
        if cond > COND_WARN:
            warnings.warn(f"{name} is ill-conditioned (condition estimate {cond:.2e}); "
                          "fewer or more distinct sparse points would help", RuntimeWarning, stacklevel=2)
        return L, j
    raise np.linalg.LinAlgError(
        f"{name} is not positive definite even with jitter {j:g} x mean diagonal; "
        "this usually means duplicated sparse environments or NaN descriptors")


def cho_solve(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``(L L^T) x = b``."""
    return sla.cho_solve((L, True), b, check_finite=False)


def cho_logdet(L: np.ndarray) -> float:
    """``log det(L L^T)``."""
    return 2.0 * float(np.sum(np.log(np.diag(L))))


def cho_inverse(L: np.ndarray) -> np.ndarray:
    """``(L L^T)^-1`` as a dense symmetric matrix."""
    Li = sla.solve_triangular(L, np.eye(len(L)), lower=True, check_finite=False)
    return Li.T @ Li
