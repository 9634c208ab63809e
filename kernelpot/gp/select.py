"""Choice of sparse (inducing) environments from a descriptor matrix.

Three methods, all reproducible with a fixed ``random_state``:

* ``"cur"``: CUR row selection, rows sampled without replacement with
  probability proportional to their statistical leverage in the top singular
  subspace of the descriptor matrix (Mahoney & Drineas 2009; GAP's default).
* ``"fps"``: greedy farthest-point sampling in descriptor space (covers rare
  environments such as surfaces and vacancies first).
* ``"random"``: uniform without replacement.
"""

from __future__ import annotations

import numpy as np

from kernelpot.gp.design import SparseSet
from kernelpot.gp.kernels import dot_kernel

__all__ = ["select_sparse", "sparse_order", "check_sparse_points", "prune_dependent", "prune_ordered",
           "choose_sparse_set", "SPARSE_METHODS"]

SPARSE_METHODS = ("cur", "fps", "random")


def select_sparse(X: np.ndarray, n: int, method: str = "cur", random_state=0) -> np.ndarray:
    """Indices of ``n`` rows of ``X`` to use as sparse environments.

    Parameters
    ----------
    X : (n_env, F) array
        Unit descriptors of candidate environments (one species).
    n : int
        Number to select; all rows are returned (sorted) if ``n >= n_env``.
    method : {"cur", "fps", "random"}
    random_state : int or numpy Generator

    Returns
    -------
    (min(n, n_env),) int array of distinct row indices, sorted ascending.

    Examples
    --------
    >>> X = np.eye(3)
    >>> select_sparse(X, 2, "fps").shape
    (2,)
    """
    if method not in SPARSE_METHODS:
        raise ValueError(f"sparse_method must be one of {SPARSE_METHODS}, got {method!r}")
    n_env = len(X)
    if n >= n_env:
        return np.arange(n_env)
    rng = np.random.default_rng(random_state)
    if method == "random":
        idx = rng.choice(n_env, n, replace=False)
    elif method == "fps":
        idx = _fps(X, n, rng)
    else:
        idx = _cur(X, n, rng)
    return np.sort(idx)


def sparse_order(X: np.ndarray, n: int, method: str = "cur", random_state=0) -> np.ndarray:
    """``min(n, n_env)`` rows of ``X`` in the order the method picks them: every prefix is a selection.

    The nested counterpart of :func:`select_sparse` for growing the sparse set
    (``SparseGP(n_sparse="auto")``): ``sparse_order(X, n)[:m]`` is the
    selection the method makes of ``m`` points given ``n`` (for CUR, the
    leverage scores of the rank-``min(rank, n)`` subspace; for FPS, its first
    ``m`` steps; for random, a uniform sample).  Unlike
    :func:`select_sparse` the indices are not sorted, and all rows are
    ordered when ``n >= n_env``.

    Returns
    -------
    (min(n, n_env),) int array of distinct row indices, in order of choice.
    """
    if method not in SPARSE_METHODS:
        raise ValueError(f"sparse_method must be one of {SPARSE_METHODS}, got {method!r}")
    n = min(int(n), len(X))
    rng = np.random.default_rng(random_state)
    if method == "random":
        return rng.permutation(len(X))[:n]
    if method == "fps":
        return _fps(X, n, rng)
    return _cur(X, n, rng)


def _cur(X, n, rng):
    U, s, _ = np.linalg.svd(X, full_matrices=False)
    # rank k subspace: singular values above round-off
    k = int(np.sum(s > s[0] * 1e-8))
    k = min(k, n)
    lev = np.sum(U[:, :k] ** 2, axis=1)
    p = lev / lev.sum()
    # sampling without replacement weighted by leverage: Efraimidis-Spirakis keys
    keys = np.log(rng.random(len(X))) / np.maximum(p, 1e-300)
    return np.argsort(-keys)[:n]


def _fps(X, n, rng):
    sq = np.einsum("ij,ij->i", X, X)
    first = int(rng.integers(len(X)))
    idx = [first]
    d = sq + sq[first] - 2 * X @ X[first]
    for _ in range(1, n):
        nxt = int(np.argmax(d))
        idx.append(nxt)
        d = np.minimum(d, sq + sq[nxt] - 2 * X @ X[nxt])
    return np.array(idx)


def prune_dependent(K: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """Drop sparse points whose kernel function is (numerically) a combination of the others.

    Greedy pivoted Cholesky on the reduced sparse kernel ``K`` (unit diagonal for
    unit descriptors): a point is kept while its conditional variance given the
    points kept so far exceeds ``tol``.  Points below that are nearly duplicates in
    the kernel's function space, so dropping them changes neither the fitted
    energies nor their derivatives (both are controlled by the RKHS norm), but
    keeps the sparse kernel well conditioned.

    Parameters
    ----------
    K : (M, M) array
    tol : float
        Conditional-variance threshold, relative to the largest diagonal entry.

    Returns
    -------
    Sorted indices of the points kept.
    """
    M = len(K)
    d = np.diag(K).astype(float).copy()
    thresh = tol * d.max()
    L = np.zeros((M, M))
    kept = []
    for k in range(M):
        p = int(np.argmax(d))
        if d[p] <= thresh:
            break
        kept.append(p)
        row = (K[p] - L[:, :k] @ L[p, :k]) / np.sqrt(d[p])
        L[:, k] = row
        d -= row ** 2
        d[kept] = -np.inf
    return np.sort(np.array(kept, dtype=int))


def prune_ordered(K: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """Points of an ordered sparse set whose kernel function is not a combination of the points before them.

    :func:`prune_dependent` without pivoting: point ``k`` is kept when its
    conditional variance given the points kept before it exceeds ``tol``
    times the largest diagonal entry, so every prefix of the result is the
    pruned prefix of the input (what :func:`sparse_order` needs).

    Returns
    -------
    Indices of the points kept, in their given order.
    """
    import scipy.linalg as sla
    M = len(K)
    d = np.diag(K).astype(float)
    thresh = tol * d.max(initial=0.0)
    L = np.zeros((M, M))  # rows of the Cholesky factor of the kept points' kernel
    kept = []
    for p in range(M):
        k = len(kept)
        # conditional variance of point p given the kept ones: K_pp - |L^-1 K_kept,p|^2
        c = sla.solve_triangular(L[:k, :k], K[kept, p], lower=True, check_finite=False) if k else np.zeros(0)
        v = d[p] - float(c @ c)
        if v > thresh:
            L[k, :k] = c
            L[k, k] = np.sqrt(v)
            kept.append(p)
    return np.array(kept, dtype=int)


def check_sparse_points(sparse_points, frames) -> list:
    """``sparse_points`` as ``[(frame, atom), ...]`` ints, each naming an atom of ``frames`` once; else ValueError."""
    out = []
    for p in sparse_points:
        try:
            fi, ai = p
            ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (fi, ai))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"sparse_points: {p!r} is not a pair (frame_index, atom_index) of integers")
        if not 0 <= fi < len(frames):
            raise ValueError(f"sparse_points: {p!r} names frame {fi}, but there are {len(frames)} frames "
                             f"(0 to {len(frames) - 1}; negative indices are not taken)")
        if not 0 <= ai < len(frames[fi]):
            raise ValueError(f"sparse_points: {p!r} names atom {ai} of frame {fi}, which has {len(frames[fi])} atoms "
                             "(negative indices are not taken)")
        out.append((int(fi), int(ai)))
    if not out:
        raise ValueError("sparse_points is empty: give at least one (frame_index, atom_index) pair, or None")
    dup = len(out) - len(set(out))
    if dup:
        raise ValueError(f"sparse_points names {dup} environment(s) twice (e.g. "
                         f"{next(p for p in out if out.count(p) > 1)}): each must appear once")
    return out


def choose_sparse_set(feats, frames, species, n_sparse: int, method: str, zeta: float, random_state=0,
                      sparse_points=None, tol: float = 1e-10, ordered: bool = False):
    """Sparse environments of a fit, per species, without linearly dependent points.

    Parameters
    ----------
    feats : list of SOAPFeatures
        Descriptors of the training frames.
    frames : list of ase.Atoms
    species : sequence of int
    n_sparse : int
        Environments per species (fewer if the data have fewer).
    method : {"cur", "fps", "random"}
    zeta : float
        Kernel exponent (for the dependence check).
    sparse_points : list of (frame_index, atom_index), optional
        The user's own choice; overrides ``n_sparse`` and ``method``.
    tol : float
        Points whose kernel function has a relative conditional variance below
        ``tol`` given the others are dropped: they make ``Kmm`` singular to
        working precision and add nothing the model can resolve.
    ordered : bool
        Keep each species' points in the order the method picks them
        (:func:`sparse_order`, pruned by :func:`prune_ordered`), so that the
        first ``m`` of a species are its selection of ``m``: what
        ``SparseGP(n_sparse="auto")`` grows through.  Default: sorted by
        index within each species.

    Returns
    -------
    index : (M,) int array
        Indices into the concatenated atoms of ``frames``, species blocks
        contiguous (ascending), each sorted by index or, with ``ordered``, in
        order of choice.
    sparse : SparseSet
    """
    X = np.concatenate([f.features for f in feats])
    Z = np.concatenate([f.numbers for f in feats])
    if sparse_points is not None:
        starts = np.cumsum([0] + [len(a) for a in frames])
        idx = np.array([starts[fi] + ai for fi, ai in check_sparse_points(sparse_points, frames)], dtype=int)
    else:
        idx = []
        for z in species:
            cand = np.flatnonzero(Z == z)
            pick, prune = (sparse_order, prune_ordered) if ordered else (select_sparse, prune_dependent)
            sel = cand[pick(X[cand], int(n_sparse), method, random_state)]
            keep = prune(dot_kernel(X[sel], X[sel], zeta), tol)
            idx.append(sel[keep])
        idx = np.concatenate(idx)
        if ordered:
            return idx, SparseSet(X[idx], Z[idx])
    idx = idx[np.lexsort((idx, Z[idx]))]
    return idx, SparseSet(X[idx], Z[idx])
