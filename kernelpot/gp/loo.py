"""Leverage and closed-form leave-one-out of a fitted SparseGP.

The posterior mean of the sparse GP at the training observations is a linear
smoother ``yhat = H y`` with hat matrix

    H = K C^-1 K^T Lambda^-1,     C = delta^-2 Kmm + K^T Lambda^-1 K,

(``K`` reduced design rows, ``Lambda`` the learned noise).  For fixed
hyperparameters and sparse set this is ridge regression, so leave-one-out is
exact in closed form:

* one observation:  ``r_i / (1 - H_ii)`` with LOO predictive std
  ``sigma_i / sqrt(1 - H_ii)``;
* one structure G (all its energy, force and stress observations at once):
  ``(I - H_GG)^-1 r_G`` with LOO predictive covariance ``(I - H_GG)^-1 Lambda_G``.

Everything is computed in the whitened basis of :mod:`kernelpot.gp.likelihood`
(``S = Lambda^-1/2 H Lambda^1/2`` is symmetric there), one structure at a time,
in O(N M^2) time and O(M^2 + n_G M) memory.  ``H_ii`` is the leverage of an
observation: how much its own label decides its fitted value.

The calibration of the predictive variance (:mod:`kernelpot.gp.calibration`)
and screening (:mod:`kernelpot.uq.screening`) are built on these residuals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from kernelpot import _threads
from kernelpot.io.labels import frame_labels
from kernelpot.gp.assembly import chunks, progress, whitened_rows, worker_view
from kernelpot.gp.group_loo import GroupAccumulator, group_labels, nystrom_growth, removed_directions
from kernelpot.gp.solve import cho_solve

__all__ = ["TrainingDiagnostics", "leave_one_out"]


@dataclass
class TrainingDiagnostics:
    """Per-observation leverage and leave-one-out results on the training set.

    All arrays have one entry per observation.  Energies are per atom (eV/atom),
    forces eV/Å, stresses eV/Å^3; z-scores are dimensionless.

    Attributes
    ----------
    kind : str array                 ``"energy"``, ``"forces"`` or ``"stress"``
    frame : int array                training frame index
    atom, component : int arrays     atom index and x/y/z (forces); Voigt index (stress); -1 otherwise
    residual : label - fitted value
    leverage : ``H_ii``
    sigma : noise std of the observation (learned)
    loo_residual_obs, z_obs : single-observation LOO residual and its z-score
    loo_residual, loo_std, z : structure-LOO (whole frame left out) residual, predictive std, z-score
        under the fitted (DTC) model itself: what the hat matrix says
    loo_std_predictive, z_predictive : the same with the Nystrom residual
        ``delta^2 (p - k Kmm^-1 k)`` added to the variance, exactly as
        :meth:`SparseGP.predict` adds it for new structures; these are the
        z-scores to calibrate predictive sigmas against
    frame_chi2, frame_dof : per frame (length n_frames) Mahalanobis norm of the
        structure-LOO residual and the number of observations
    frame_leverage : per frame, trace of ``H_GG``
    nystrom_held_out : the Nystrom residual of each observation (its variance
        units, as ``loo_std_predictive ** 2``) with its own structure's
        environments also left out of the sparse set: what a new structure
        like it sees.  With a structure's environments among the sparse
        points its residual is near zero (every energy of a set whose atoms
        are all sparse points), while a new structure's is not; the
        calibration measures how far its Nystrom weight reaches by this one
        (:mod:`kernelpot.gp.calibration`).  None for diagnostics made without it.
    held_out_residual, held_out_std : the structure-LOO residual and std (noise and
        posterior part, as ``loo_residual`` and ``loo_std``) of a model fitted
        without the structure *and* without its own sparse environments: a new
        structure's.  With ``nystrom_held_out`` they are what the calibration is
        fitted to.  None for diagnostics made without them.
    """

    kind: np.ndarray
    frame: np.ndarray
    atom: np.ndarray
    component: np.ndarray
    residual: np.ndarray
    leverage: np.ndarray
    sigma: np.ndarray
    loo_residual_obs: np.ndarray
    z_obs: np.ndarray
    loo_residual: np.ndarray
    loo_std: np.ndarray
    z: np.ndarray
    loo_std_predictive: np.ndarray
    z_predictive: np.ndarray
    frame_chi2: np.ndarray
    frame_dof: np.ndarray
    frame_leverage: np.ndarray
    # leave-one-group-out residuals (see kernelpot.gp.group_loo), when groups were given
    group_loo: dict | None = None
    nystrom_held_out: np.ndarray | None = None
    held_out_residual: np.ndarray | None = None
    held_out_std: np.ndarray | None = None


def leave_one_out(model, frames=None, groups=None) -> TrainingDiagnostics:
    """Leverage and closed-form LOO for every training observation.

    Parameters
    ----------
    model : SparseGP
        Fitted model.
    frames : list of ase.Atoms, optional
        The training frames (default: those the model was fitted on; a model
        read from a file does not hold them, and needs them here).  They are
        checked against the fit's fingerprint: the hat matrix is that of the
        training set.
    groups : (n_frames,) array, optional
        Also leave out each group of frames in turn, in the same pass; the
        residuals are in ``group_loo`` (:mod:`kernelpot.gp.group_loo`).  Any
        labels (integers, strings, ...), numbered ``0 .. K-1`` in
        ``group_loo["group"]`` by their sorted values
        (:func:`kernelpot.gp.group_loo.group_labels`); a negative number,
        NaN or ``None``: in no group.

    Raises
    ------
    ValueError
        If the model holds no training frames and none are given, if
        ``frames`` are not its training frames, or if ``groups`` is not one
        label per frame.

    With a Dask client on the model (``SparseGP(client=...)``) the frames
    are processed on the workers in chunks of ``chunk_size``; each frame is
    independent, so the result is the same.

    Returns
    -------
    TrainingDiagnostics

    Examples
    --------
    >>> d = kernelpot.uq.leave_one_out(model)           # doctest: +SKIP
    >>> d.z[d.kind == "energy"]                          # doctest: +SKIP
    """
    model._check_fitted()
    held = getattr(model, "_train_frames", None)
    if frames is not None and held is not None and len(frames) == len(held) and all(
            a is b for a, b in zip(frames, held)):
        frames = None  # the frames the model holds: no fingerprint check, and its row cache serves
    # rows kept from the fit's assembly pass (SparseGP.fit), valid for its own training frames only
    cache = getattr(model, "_row_cache", None) if frames is None else None
    frames = model.training_frames(frames)
    groups = None if groups is None else group_labels(groups, len(frames))
    client = getattr(model, "client", None)
    rows_of = None
    if cache is not None and all(fi in cache for fi in range(len(frames))):
        # each group's sums from the kept rows, one group at a time (see GroupAccumulator)
        def rows_of(fi):
            return np.vstack([e[0] for e in cache.get(fi).values()])
    acc = None if groups is None else GroupAccumulator(groups, len(model.posterior_.a),
                                                       rows_of=rows_of if client is None else None)
    owner = sparse_owners(model, frames)
    if client is None:
        # per-frame solves against the M x M factors: one BLAS thread below a few thousand columns
        with _threads.limit(blas_threads=_threads.threads_for_matrix(len(model.posterior_.a))):
            parts = [_frame_loo(model, a, fi, acc, cache, owner) for fi, a in
                     progress(list(enumerate(frames)), getattr(model, "verbose", False), "leave-one-out")]
            group_res = None if acc is None else acc.residuals(model.posterior_, _group_columns(groups, owner))
    else:
        cs = chunks(len(frames), model.chunk_size)
        futs = client.map(_chunk_loo, [worker_view(model)] * len(cs), [frames[c] for c in cs],
                          [c.start for c in cs], [groups] * len(cs), [owner] * len(cs), pure=False)
        parts = []
        for chunk_parts, chunk_acc in client.gather(futs):
            parts += chunk_parts
            if acc is not None:
                acc.merge(chunk_acc)
    out = {k: (np.array([x for p in parts for x in p[k]]) if k == "kind" else np.concatenate([p[k] for p in parts]))
           for k in TrainingDiagnostics.__dataclass_fields__ if k not in _FRAME_FIELDS + ("group_loo",)}
    if client is not None:
        group_res = None if acc is None else acc.residuals(model.posterior_, _group_columns(groups, owner))
    return TrainingDiagnostics(**out, **{k: np.array([p[k] for p in parts]) for k in _FRAME_FIELDS},
                               group_loo=group_res)


_FRAME_FIELDS = ("frame_chi2", "frame_dof", "frame_leverage")


def _chunk_loo(model, frames, start, groups=None, owner=None):
    """:func:`_frame_loo` of consecutive training frames ``start, start + 1, ...`` (a Dask task)."""
    acc = None if groups is None else GroupAccumulator(groups, len(model.posterior_.a))
    return [_frame_loo(model, a, start + i, acc, owner=owner) for i, a in enumerate(frames)], acc


def _group_columns(groups, owner) -> dict | None:
    """{group: the SOAP columns owned by its frames} (see :func:`sparse_owners`)."""
    if groups is None:
        return None
    groups = np.asarray(groups)
    g_of = np.where(owner >= 0, groups[np.clip(owner, 0, None)], -1)
    return {int(g): np.flatnonzero(g_of == g) for g in np.unique(groups) if g >= 0}


def sparse_owners(model, frames) -> np.ndarray:
    """The training frame each SOAP column of the model comes from, ``(sparse_.size,)`` int (-1: none).

    Columns of a kernel sum's further terms (:meth:`kernelpot.gp.design.SparseSet.part_slices`)
    are environments of the first term's set (``extra_index``), so they belong to the same frames.
    """
    starts = np.cumsum([0] + [len(a) for a in frames])
    env = np.asarray(model.sparse_index_, int)
    idx = np.concatenate([env] + [env[np.asarray(i, int)] for i in getattr(model.sparse_, "extra_index", ()) or ()])
    fi = np.searchsorted(starts, idx, side="right") - 1
    return np.where((idx >= 0) & (idx < starts[-1]), fi, -1)


def own_sparse_residual(Lmm: np.ndarray, A: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """How much the Nystrom residual of whitened rows ``A`` (n, >= M) grows without the sparse ``columns``.

    With ``Kmm = L L^T`` and ``w = L^-1 k`` the whitened row of an
    observation, the sparse points ``S`` account for ``u_S^T (Kmm^-1)_SS^-1 u_S``
    of ``|w|^2`` (``u = Kmm^-1 k``: the block-inverse update of the Nystrom
    approximation), which is ``|Q^T w|^2`` with ``Q`` an orthonormal basis of
    ``L^-1 E_S``: the residual without them is the residual with them plus
    this.  Reduced units, like :func:`kernelpot.gp.assembly.nystrom_residual`;
    ``M = Lmm.shape[0]`` SOAP columns come first in ``A``.
    """
    if not len(columns):
        return np.zeros(len(A))
    return nystrom_growth(A, removed_directions(Lmm, columns))


def _without_own_columns(post, A, sig, S, Lf, rt, r_loo, loo_std, own, M):
    """Structure-LOO residual, std (noise + posterior part) and Nystrom-residual growth without the
    structure's own sparse columns (one basis of the removed directions for all three).

    With ``C`` the posterior precision of the whitened weights (``Lc Lc^T``), the
    structure's scaled rows ``At = A / sigma``, ``S = u At C^-1 At^T`` and ``P`` an
    orthonormal basis of the removed whitened directions (see
    :func:`kernelpot.gp.group_loo.reduced_basis`): the precision without the
    structure is ``C_ = C - u At^T At``, and by the push-through identity
    ``C_^-1 P = X + u C^-1 At^T (I - S)^-1 Y`` with ``X = C^-1 P``, ``Y = At X``;
    its weights are ``a_ = a - C^-1 At^T (I - S)^-1 r~`` (``r~`` the scaled
    residual).  Restricting ``a_`` and ``C_^-1`` to the complement of ``P``
    (``a_ - Z H^-1 P^T a_``, ``C_^-1 - Z H^-1 Z^T``, ``Z = C_^-1 P``,
    ``H = P^T Z``) gives the model without the structure's environments.
    """
    if not len(own):
        return r_loo, loo_std, np.zeros(len(A))
    u = post.delta ** 2
    P = removed_directions(post.Lmm[:M, :M], own, len(post.a))
    X = cho_solve(post.Lc, P)
    Y = (A / sig[:, None]) @ X
    T = sla.cho_solve(Lf, Y, check_finite=False)            # (I - S)^-1 Y
    AZ = A @ X + sig[:, None] * (S @ T)
    H = P.T @ X + u * (Y.T @ T)
    Lh = np.linalg.cholesky(0.5 * (H + H.T))
    pa = P.T @ post.a - T.T @ rt                             # P^T a_, with Y^T (I - S)^-1 r~ = T^T r~
    W = sla.solve_triangular(Lh, AZ.T, lower=True, check_finite=False)
    r_new = r_loo + u * (AZ @ sla.cho_solve((Lh, True), pa, check_finite=False))
    var = loo_std ** 2 - u * np.sum(W ** 2, axis=0)
    # and the growth of the Nystrom residual (:func:`own_sparse_residual`, from the same basis)
    return r_new, np.sqrt(np.maximum(var, sig ** 2)), nystrom_growth(A, P[:M])


def _frame_loo(model, a, fi: int, acc=None, cache=None, owner=None) -> dict:
    """Per-observation LOO columns of training frame ``fi`` and its per-frame statistics.

    ``cache``: the fit's :class:`kernelpot.gp.assembly.RowCache`, whose rows of
    frame ``fi`` are used instead of computing them again.  ``owner``: the
    frame of each SOAP column (:func:`sparse_owners`), for ``nystrom_held_out``.
    """
    post = model.posterior_
    u = post.delta ** 2
    # rows kept from the fit's assembly pass, else computed again
    entry = cache.get(fi) if cache is not None and fi in cache else whitened_rows(model, a, frame_labels(a, fi))
    n = len(a)
    A, y, sig, kind, atom, comp, unit, nys = [], [], [], [], [], [], [], []
    for k, (Ak, yk, scale_k, ny_k) in entry.items():
        m = len(yk)
        A.append(Ak)
        y.append(yk)
        # Nystrom residual of each observation (reduced units, before the noise scale)
        nys.append(u * ny_k)
        sc = np.ones(m) if scale_k is None else scale_k
        sig.append(model._noise_for(k, a) * sc)
        kind += [k] * m
        if k == "forces":
            from kernelpot.gp.assembly import force_atoms
            fitted = force_atoms(a)  # atoms masked in the data have no force rows
            atom.append(np.repeat(fitted, 3))
            comp.append(np.tile(np.arange(3), len(fitted)))
        elif k == "stress":
            atom.append(np.full(6, -1))
            comp.append(np.arange(6))
        else:
            atom.append(np.full(m, -1))
            comp.append(np.full(m, -1))
        unit.append(np.full(m, 1.0 / n) if k == "energy" else np.ones(m))
    A = np.vstack(A)
    y = np.concatenate(y)
    sig = np.concatenate(sig)
    unit = np.concatenate(unit)
    r = y - u * (A @ post.a)
    V = sla.solve_triangular(post.Lc, A.T, lower=True, check_finite=False) / sig
    S = u * (V.T @ V)
    h = np.diag(S).copy()
    ImS = np.eye(len(y)) - S
    rt = r / sig
    Lf = sla.cho_factor(ImS, lower=True, check_finite=False)
    rt_loo = sla.cho_solve(Lf, rt, check_finite=False)
    cov_diag = np.diag(sla.cho_solve(Lf, np.eye(len(y)), check_finite=False))
    r_loo = sig * rt_loo
    loo_std = sig * np.sqrt(cov_diag)
    if acc is not None:
        acc.add(fi, A, y, sig, np.concatenate(nys), kind, unit, np.concatenate(atom), np.concatenate(comp))
    nys = np.concatenate(nys)
    loo_std_pred = np.sqrt(loo_std ** 2 + nys)
    own = np.zeros(0, int) if owner is None else np.flatnonzero(owner == fi)
    M = model.sparse_.size
    r_new, std_new, grow = _without_own_columns(post, A, sig, S, Lf, rt, r_loo, loo_std, own, M)
    held = (nys + u * grow) * unit ** 2
    return {"kind": kind, "frame": np.full(len(y), fi), "atom": np.concatenate(atom),
            "component": np.concatenate(comp), "residual": r * unit, "leverage": h, "sigma": sig * unit,
            "loo_residual_obs": r / (1 - h) * unit, "z_obs": r / (sig * np.sqrt(1 - h)),
            "loo_residual": r_loo * unit, "loo_std": loo_std * unit, "z": r_loo / loo_std,
            "loo_std_predictive": loo_std_pred * unit, "z_predictive": r_loo / loo_std_pred,
            "nystrom_held_out": held, "held_out_residual": r_new * unit, "held_out_std": std_new * unit,
            "frame_chi2": float(rt @ rt_loo), "frame_dof": len(y), "frame_leverage": float(h.sum())}
