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

__all__ = ["safe_cholesky", "cho_solve", "cho_logdet", "cho_inverse", "symmetrize_lower", "fortran_in_place"]

#: condition number above which results lose more than ~3 significant digits
COND_WARN = 1e13


def safe_cholesky(A: np.ndarray, name: str = "matrix", jitter: float = 0.0,
                  max_tries: int = 8, overwrite: bool = False) -> tuple[np.ndarray, float]:
    """Lower Cholesky factor of a symmetric positive (semi-)definite matrix.

    Parameters
    ----------
    A : (M, M) array
        Only its lower triangle is read.
    name : str
        Used in warnings and errors.
    jitter : float
        Initial diagonal jitter, relative to the mean diagonal.
    max_tries : int
        Jitter is multiplied by 10 (starting at 1e-10 if 0) up to this many times.
    overwrite : bool
        Factor ``A`` in place when it is a writeable Fortran-ordered float64
        array (``A`` then holds the factor): no ``M x M`` copy.  An attempt
        that fails is undone from the upper triangle, which LAPACK never
        touches, before the next jitter.  Other arrays are copied.

    Returns
    -------
    L : (M, M) array
        Lower-triangular factor (Fortran-ordered) of
        ``A + jitter_used * mean(diag(A)) * I``.
    jitter_used : float

    Raises
    ------
    ValueError
        Non-finite entries, or a mean diagonal that is not positive.
    numpy.linalg.LinAlgError
        Not positive definite even with the largest jitter.
    """
    in_place = (overwrite and isinstance(A, np.ndarray) and A.dtype == np.float64 and A.ndim == 2
                and A.flags.f_contiguous and A.flags.writeable)
    A = np.asarray(A, dtype=float)
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} contains non-finite entries; check the training labels and descriptors")
    scale = float(np.mean(np.diag(A))) if A.size else 1.0
    if scale <= 0:
        raise ValueError(f"{name} has a non-positive mean diagonal ({scale:g}); it cannot be a covariance")
    diag = np.diag(A).copy()
    j = jitter
    for _ in range(max_tries + 1):
        # LAPACK's dpotrf on one Fortran-ordered buffer: A itself, or one copy (no identity matrix, no second copy)
        W = A if in_place else np.array(A, order="F", copy=True)
        if j or in_place:
            W.flat[::len(W) + 1] = diag + j * scale
        L, info = sla.lapack.dpotrf(W, lower=1, clean=0, overwrite_a=1)
        if info != 0:
            if in_place:
                symmetrize_lower(A.T)  # the lower triangle again from the untouched upper one
            del W, L
            j = 1e-10 if j == 0 else j * 10
            continue
        _zero_upper(L)
        d = np.diag(L)
        cond = float((d.max() / d.min()) ** 2) if d.min() > 0 else np.inf
        if cond > COND_WARN:
            warnings.warn(f"{name} is ill-conditioned (condition estimate {cond:.2e}); "
                          "fewer or more distinct sparse points would help", RuntimeWarning, stacklevel=2)
        return L, j
    raise np.linalg.LinAlgError(
        f"{name} is not positive definite even with jitter {j:g} x mean diagonal; "
        "this usually means duplicated sparse environments or NaN descriptors")


def _zero_upper(A: np.ndarray, block: int = 512) -> None:
    """Zero the strictly upper triangle of square ``A`` in place, in blocks."""
    M = len(A)
    for i0 in range(0, M, block):
        i1 = min(M, i0 + block)
        A[i0:i1, i1:] = 0.0
        D = A[i0:i1, i0:i1]
        D[...] = np.tril(D)


def cho_solve(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``(L L^T) x = b`` for a lower factor ``L`` (as :func:`safe_cholesky` returns it).

    A C-ordered ``L`` (the transposed view of a Fortran-ordered upper factor)
    is solved as that upper factor: LAPACK would otherwise copy it.
    """
    if not L.flags.f_contiguous and L.T.flags.f_contiguous:
        return sla.cho_solve((L.T, False), b, check_finite=False)
    return sla.cho_solve((L, True), b, check_finite=False)


def cho_logdet(L: np.ndarray) -> float:
    """``log det(L L^T)``."""
    return 2.0 * float(np.sum(np.log(np.diag(L))))


def cho_inverse(L: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """``(L L^T)^-1`` as a dense symmetric matrix (LAPACK ``dpotri``).

    With ``overwrite`` the inverse is written over ``L`` when ``L`` is a
    writeable Fortran-ordered float array (as :func:`safe_cholesky` returns
    it), so no second ``M x M`` array is allocated; otherwise ``L`` is left
    as it is.
    """
    L = np.asarray(L, dtype=float)
    if L.size == 0:
        return np.zeros_like(L)
    # never write over a read-only factor (LAPACK would)
    overwrite = overwrite and L.flags.writeable and L.flags.f_contiguous
    Ci, info = sla.lapack.dpotri(L, lower=1, overwrite_c=1 if overwrite else 0)
    if info != 0:
        raise np.linalg.LinAlgError(f"dpotri failed (info {info}): the factor is singular")
    return symmetrize_lower(Ci)


def symmetrize_lower(A: np.ndarray, block: int = 512) -> np.ndarray:
    """Copy the lower triangle of square ``A`` onto its upper triangle, in place, in blocks (no ``M x M`` temporary)."""
    M = len(A)
    for i0 in range(0, M, block):
        i1 = min(M, i0 + block)
        D = A[i0:i1, i0:i1]
        D[...] = np.tril(D) + np.tril(D, -1).T
        A[i0:i1, i1:] = A[i1:, i0:i1].T
    return A


def fortran_in_place(A: np.ndarray, block: int = 512) -> np.ndarray:
    """The values of square C-ordered ``A`` as a Fortran-ordered array in ``A``'s own memory.

    ``A`` is transposed in place block by block (one ``block x block``
    temporary) and its transpose, a Fortran-ordered view, is returned: the
    same numbers bitwise, without the ``M x M`` copy ``np.asfortranarray``
    makes.  ``A`` itself then holds its transpose.
    """
    if not (A.ndim == 2 and A.shape[0] == A.shape[1] and A.flags.c_contiguous and A.flags.writeable):
        raise ValueError("fortran_in_place needs a square, writeable, C-ordered array")
    M = len(A)
    for i0 in range(0, M, block):
        i1 = min(M, i0 + block)
        A[i0:i1, i0:i1] = A[i0:i1, i0:i1].T.copy()
        for j0 in range(i1, M, block):
            j1 = min(M, j0 + block)
            upper = A[i0:i1, j0:j1].copy()
            A[i0:i1, j0:j1] = A[j0:j1, i0:i1].T
            A[j0:j1, i0:i1] = upper.T
    return A.T
