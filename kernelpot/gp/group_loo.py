"""Closed-form leave-one-group-out: held-out residuals that look like extrapolation.

Leaving one structure out (:mod:`kernelpot.gp.loo`) never leaves the model
far from its data: the structure's neighbours in time or composition stay in.
Leaving out a whole group -- a ``config_type``, or a cluster of structures in
descriptor space when the data have no config_types -- does, and its
residuals show how fast errors grow where the model knows less.  They are what
the variance calibration (:mod:`kernelpot.gp.calibration`) is fitted to,
beside the structure-LOO residuals.

For fixed hyperparameters the fit is ridge regression in the whitened basis,
so removing a group is exact in closed form: with whitened rows ``A_i`` (GP
columns and offset columns), labels ``y_i`` and noise ``sigma_i``,

    Chat_-G = Chat - delta^2 sum_{i in G} A_i A_i^T / sigma_i^2,
    b_-G    = Chat a - sum_{i in G} A_i y_i / sigma_i^2,      a_-G = Chat_-G^-1 b_-G,

and an observation ``i`` of the group is predicted with mean
``delta^2 A_i . a_-G`` and latent variance ``delta^2 |chol(Chat_-G)^-1 A_i|^2``
plus its Nystrom residual, exactly as :meth:`SparseGP.predict` would after a
refit without the group.  The sparse environments taken from the group's own
structures are left out too (:func:`reduced_basis`, a rank-``k`` restriction
of the same factor): a model that never saw the group would not have them,
and with them in the basis the group's novelty appears as posterior variance
of their weights instead of as the Nystrom residual a new structure shows
(both tested against brute-force refits on the smaller sparse set).  The group sums
are accumulated in the same pass over the training structures as the
structure LOO, or, when the fit's row cache
(:class:`kernelpot.gp.assembly.RowCache`) holds the rows, built from it one
group at a time when the groups are predicted, so memory holds one
``W x W`` group sum instead of one per group (8 x 77 MB on acetylacetone,
``W = 3100``); per-observation predictions are made for a fixed subsample of
each structure's observations (its energy, its stress and the force
components of up to ``max_force_atoms`` atoms), enough to fit a few calibration
weights without keeping every design row.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from kernelpot.gp.solve import cho_solve
from kernelpot.io.labels import config_type, is_isolated_atom

__all__ = ["calibration_groups", "group_labels", "GroupAccumulator", "reduced_basis", "removed_directions",
           "nystrom_growth"]

MAX_FORCE_ATOMS = 4


def calibration_groups(model, frames, max_groups: int = 8, random_state=0,
                       mean_features=None) -> tuple[np.ndarray, str]:
    """Group of each training frame for leave-one-group-out (-1: in no group).

    ``config_type`` when the data have between 2 and 20 of them; otherwise
    k-means clusters (scikit-learn, fixed seed) of the structures' mean
    descriptors, ``K = clip(round(sqrt(N / 4)), 2, max_groups)``.  Isolated
    atoms are in no group: their energies define ``e0`` and are never
    predicted from other structures.  With fewer than 8 frames there are no
    groups.  ``mean_features`` (n_frames, n_features): each frame's mean
    descriptor when already computed (the fit has them), else computed here.

    Returns
    -------
    groups : (n_frames,) int array
    how : str
        ``"config_type"``, ``"clusters"`` or ``"none"``.
    """
    n = len(frames)
    groups = np.full(n, -1)
    use = np.array([not is_isolated_atom(a) for a in frames])
    if use.sum() < 8:
        return groups, "none"
    cts = [config_type(a) for a in frames]
    names = sorted({c for c, u in zip(cts, use) if u})
    if 2 <= len(names) <= 20:
        index = {c: k for k, c in enumerate(names)}
        for i in np.flatnonzero(use):
            groups[i] = index[cts[i]]
        return groups, "config_type"
    from sklearn.cluster import KMeans
    idx = np.flatnonzero(use)
    X = (np.array([model.descriptor_.compute(frames[i]).features.mean(axis=0) for i in idx])
         if mean_features is None else np.asarray(mean_features)[idx])
    k = int(np.clip(round(np.sqrt(len(idx) / 4)), 2, max_groups))
    labels = KMeans(n_clusters=k, n_init=4, random_state=random_state).fit_predict(X)
    groups[idx] = labels
    return groups, "clusters"


def group_labels(groups, n_frames: int) -> np.ndarray:
    """Groups given as any labels, one per frame, numbered ``0 .. K-1`` in sorted order (``-1``: in no group).

    A negative number, NaN or ``None`` means "in no group"; other labels
    (integers, strings, any hashable) are numbered in the order of their sorted
    values (integers numerically, others by their text), so ``group_loo["group"]``
    indexes the sorted distinct labels, and ``[7, 7, 3, 100]`` holds three groups,
    not 101.

    Parameters
    ----------
    groups : (n_frames,) sequence
    n_frames : int

    Returns
    -------
    (n_frames,) int array

    Raises
    ------
    ValueError
        If ``groups`` is not one label per frame.
    """
    if np.ndim(groups) != 1 or len(groups) != n_frames:
        raise ValueError(f"groups must give one label per training frame: got shape {np.shape(groups)} "
                         f"for {n_frames} frames")
    arr = np.asarray(groups)
    if arr.dtype.kind in "iubf":
        none = ~np.isfinite(arr.astype(float)) | (arr < 0)
        _, index = np.unique(arr[~none], return_inverse=True)
        out = np.full(n_frames, -1, dtype=np.int64)
        out[~none] = index
        return out
    labels = [None if g is None or (isinstance(g, float) and np.isnan(g)) else str(g) for g in groups]
    index = {c: k for k, c in enumerate(sorted({g for g in labels if g is not None}))}
    return np.array([-1 if g is None else index[g] for g in labels], dtype=np.int64)


class GroupAccumulator:
    """Sums over each group's observations, and a subsample of rows to predict, from one pass.

    Parameters
    ----------
    groups : (n_frames,) int array
        From :func:`calibration_groups`.
    n_columns : int
        Columns of the whitened design (sparse environments + offsets).
    random_state : int
        Seed of the force-component subsample.
    rows_of : callable, optional
        ``rows_of(fi)``: training frame ``fi``'s whitened rows ``A`` (n, W), in
        the order :meth:`add` receives them (the fit's row cache).  With it,
        :meth:`add` keeps only each frame's scaled labels and noise and the
        indices of its rows to predict, and each group's sums and rows are
        read from ``rows_of`` when that group is predicted.
    """

    def __init__(self, groups, n_columns: int, random_state=0, max_force_atoms: int = MAX_FORCE_ATOMS,
                 rows_of=None):
        self.groups = np.asarray(groups)
        self.n_groups = int(self.groups.max(initial=-1)) + 1
        self.n_columns = int(n_columns)
        self.rows_of = rows_of
        if rows_of is None:
            self.P = np.zeros((self.n_groups, n_columns, n_columns))
            self.q = np.zeros((self.n_groups, n_columns))
        self.frame_sigma = {}
        self.rows = []
        self.random_state = random_state
        self.max_force_atoms = max_force_atoms

    def add(self, fi: int, A, y, sig, nys, kind, unit, atom, component) -> None:
        """Add training frame ``fi``'s whitened rows ``A`` (n, W) with labels, noise std, Nystrom residual.

        ``kind``, ``unit`` (1/n_atoms for the energy), ``atom`` and ``component``
        label the rows as in :class:`kernelpot.gp.loo.TrainingDiagnostics`.
        """
        g = self.groups[fi]
        if g < 0:
            return
        if self.rows_of is None:
            As = A / sig[:, None]
            self.P[g] += As.T @ As
            self.q[g] += As.T @ (y / sig)
        else:
            self.frame_sigma[fi] = (y / sig, 1.0 / sig)
        kind = np.asarray(kind)
        rng = np.random.default_rng([self.random_state, fi])
        f = np.flatnonzero(kind == "forces")
        atoms = np.unique(atom[f])
        chosen = rng.choice(atoms, min(len(atoms), self.max_force_atoms), replace=False)
        keep = np.concatenate([np.flatnonzero(kind != "forces"), f[np.isin(atom[f], chosen)]])
        # with rows_of, the row indices (read back when the group is predicted), not a copy of the rows:
        # 13 rows of 3100 columns per structure are 160 MB on acetylacetone's 500 structures
        kept = A[keep] if self.rows_of is None else keep
        self.rows.append((fi, g, kept, y[keep], sig[keep], nys[keep], kind[keep], unit[keep], atom[keep],
                          component[keep]))

    def merge(self, other: "GroupAccumulator") -> None:
        if self.rows_of is not None or other.rows_of is not None:
            raise ValueError("only accumulators that hold their own sums (no rows_of) can be merged")
        self.P += other.P
        self.q += other.q
        self.rows += other.rows

    def held_out_factor(self, g: int, Lc: np.ndarray, u: float) -> tuple:
        """Lower Cholesky factor of ``Chat - u P_g`` (``Chat = Lc Lc^T``) and ``q_g``.

        ``P_g = sum A^T A / sigma^2`` and ``q_g = sum A^T y / sigma^2`` over
        group ``g``'s observations.  One ``W x W`` buffer holds ``P_g``, then
        ``Chat - u P_g``, then its factor: the sums are accumulated and
        combined with ``Lc`` by BLAS's symmetric rank-k update (``dsyrk``, one
        triangle) and factored in place by LAPACK's ``dpotrf``.  The sums this
        accumulator holds (no ``rows_of``) are copied, not overwritten.

        Returns
        -------
        Lg : (W, W) array, lower triangular
        q : (W,) array

        Raises
        ------
        numpy.linalg.LinAlgError
            If ``Chat - u P_g`` is not positive definite.
        """
        from scipy.linalg.blas import dsyrk
        if self.rows_of is None:
            Pt = np.array(self.P[g].T, order="F")
            q = self.q[g]
        else:
            # the upper triangle of Pt (Fortran order) accumulates sum As^T As
            Pt = np.zeros((self.n_columns, self.n_columns), order="F")
            q = np.zeros(self.n_columns)
            for fi in np.flatnonzero(self.groups == g):
                if fi not in self.frame_sigma:
                    continue
                ys, inv = self.frame_sigma[fi]
                As = self.rows_of(int(fi)) * inv[:, None]
                Pt = dsyrk(1.0, As.T, beta=1.0, c=Pt, trans=0, lower=0, overwrite_c=1)
                q += As.T @ ys
        # Lc Lc^T - u P (upper triangle), with Lc passed in the order it is stored: no copy of it
        if Lc.flags.f_contiguous:
            Pt = dsyrk(1.0, Lc, beta=-u, c=Pt, trans=0, lower=0, overwrite_c=1)
        else:
            Pt = dsyrk(1.0, Lc.T, beta=-u, c=Pt, trans=1, lower=0, overwrite_c=1)
        potrf = sla.get_lapack_funcs("potrf", (Pt,))
        U, info = potrf(Pt, lower=0, overwrite_a=1, clean=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"{info}-th leading minor of Chat - u P_g not positive definite")
        return U.T, q

    def residuals(self, posterior, own_columns=None) -> dict:
        """Leave-one-group-out residuals of the kept rows under ``posterior``.

        Parameters
        ----------
        posterior : kernelpot.gp.posterior.Posterior
        own_columns : dict {group: (k,) int array}, optional
            The SOAP columns (sparse environments) taken from each group's own
            structures.  Given, each group is predicted as a new set of
            structures would be: without its observations *and* without its
            sparse environments (:func:`reduced_basis`), so its residuals,
            posterior variance and Nystrom residual are those of a model that
            never saw it.  Without, only its observations are left out; its
            environments stay in the basis, where a model fitted without the
            group would not have them.

        Returns
        -------
        dict of arrays (one entry per kept observation)
            ``kind``, ``frame``, ``group``, ``atom``, ``component``, ``residual`` (label minus the
            prediction without the group; energies per atom), ``sigma`` (noise
            std), ``epistemic`` (latent variance with the Nystrom residual,
            squared units of the residual), ``nystrom`` (the Nystrom residual alone).
        """
        u = posterior.delta ** 2
        Lc = posterior.Lc
        b = Lc @ (Lc.T @ posterior.a)  # Chat a
        out = {k: [] for k in ("kind", "frame", "group", "atom", "component", "residual", "sigma", "epistemic",
                               "nystrom")}
        for g in range(self.n_groups):
            mine = [r for r in self.rows if r[1] == g]
            if not mine:
                continue
            Lg, q = self.held_out_factor(g, Lc, u)
            ag = cho_solve(Lg, b - q)
            cols = np.zeros(0, int) if own_columns is None else np.asarray(own_columns.get(g, ()), int)
            red = reduced_basis(posterior.Lmm, Lg, ag, cols) if len(cols) else None
            for fi, _, A, y, sig, nys, kind, unit, atom, comp in mine:
                if A.ndim == 1:  # row indices into the row cache
                    A = self.rows_of(int(fi))[A]
                V = sla.solve_triangular(Lg, A.T, lower=True, check_finite=False)
                post = np.sum(V ** 2, axis=0)
                mean = A @ ag
                if red is not None:
                    Q, Z, Lh, a_red = red
                    mean = A @ a_red
                    post = post - np.sum(sla.solve_triangular(Lh, Z.T @ A.T, lower=True, check_finite=False) ** 2,
                                         axis=0)
                    nys = nys + u * nystrom_growth(A, Q)
                out["residual"].append((y - u * mean) * unit)
                out["epistemic"].append((u * np.maximum(post, 0.0) + nys) * unit ** 2)
                out["nystrom"].append(nys * unit ** 2)
                out["sigma"].append(sig * unit)
                out["kind"].append(kind)
                out["frame"].append(np.full(len(y), fi))
                out["group"].append(np.full(len(y), g))
                out["atom"].append(atom)
                out["component"].append(comp)
            # one W x W factor at a time: this group's is released before the next group's sums are built
            del Lg
        return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()}


def removed_directions(Lmm: np.ndarray, columns, width: int | None = None) -> np.ndarray:
    """Orthonormal basis of the whitened directions that only the sparse ``columns`` span.

    With ``Kmm = L L^T`` (``L = Lmm``) and whitened features ``w = L^-1 k``, the
    sparse set without ``columns`` spans exactly the directions orthogonal to
    ``L^-1 E_columns``; returns its orthonormal basis, ``(width, k)`` with zero
    rows below ``Lmm``'s (the columns that are not sparse points: offsets).
    """
    M = Lmm.shape[0]
    E = np.zeros((M, len(columns)))
    E[np.asarray(columns, int), np.arange(len(columns))] = 1.0
    Q = np.linalg.qr(sla.solve_triangular(Lmm, E, lower=True, check_finite=False))[0]
    P = np.zeros((M if width is None else width, Q.shape[1]))
    P[:M] = Q
    return P


def nystrom_growth(A: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Growth of each whitened row's Nystrom residual (reduced units) when the directions ``P`` leave the basis.

    ``|P^T a|^2`` per row ``a`` of ``A`` (n, W), ``P`` (M, k) an orthonormal basis of
    the removed whitened directions (:func:`removed_directions`, SOAP block).
    """
    return np.sum((A[:, :len(P)] @ P) ** 2, axis=1)


def reduced_basis(Lmm: np.ndarray, Lg: np.ndarray, ag: np.ndarray, columns: np.ndarray) -> tuple:
    """The posterior of ridge weights ``a`` (precision ``Lg Lg^T``) restricted to a basis without ``columns``.

    With ``Kmm = L L^T`` (``L = Lmm``, SOAP block first) and whitened
    features ``w = L^-1 k``, the sparse set without the environments ``S``
    spans exactly the whitened directions orthogonal to ``P``, an orthonormal
    basis of ``L^-1 E_S`` (see :func:`kernelpot.gp.loo.own_sparse_residual`);
    the GP on the smaller set is the same ridge regression restricted to that
    subspace (its whitened prior is still the identity there).  Restricting a
    Gaussian with precision ``C`` and mean ``C^-1 b`` to the complement of
    ``P`` is the limit of adding ``lambda P P^T`` to ``C``:
    ``C^-1 -> C^-1 - Z H^-1 Z^T`` with ``Z = C^-1 P``, ``H = P^T Z``, and the
    mean ``a -> a - Z H^-1 P^T a``.  A row's posterior variance falls by
    ``|Lh^-1 Z^T A|^2`` (``H = Lh Lh^T``) and its Nystrom residual grows by
    ``|P^T A|^2``.

    Returns
    -------
    P : (M, k) array
        Orthonormal basis of the removed directions (SOAP block only).
    Z : (W, k) array
    Lh : (k, k) lower Cholesky factor of ``H``
    a : (W,) array
        Restricted posterior mean.
    """
    Pw = removed_directions(Lmm, columns, len(ag))
    P = Pw[:Lmm.shape[0]]
    Z = cho_solve(Lg, Pw)
    H = Pw.T @ Z
    Lh = np.linalg.cholesky(0.5 * (H + H.T))
    a = ag - Z @ sla.cho_solve((Lh, True), Pw.T @ ag, check_finite=False)
    return P, Z, Lh, a
