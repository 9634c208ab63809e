"""Design rows of derivative observations against a sparse set.

For one structure with per-atom unit descriptors ``x_i`` (and their sparse
position / strain derivatives) and sparse environments ``s_m``, the reduced
kernel between each observation and each sparse point is

* total energy   ``K_E[m]      = sum_i k(x_i, s_m)``
* force (j, a)   ``K_F[ja, m]  = -sum_i dk(x_i, s_m)/dx_i . dx_i/dr_ja``
* stress v       ``K_S[v, m]   = (1/V) sum_i dk(x_i, s_m)/dx_i . dx_i/deps_v``

with ``k = (x.s)**zeta`` restricted to equal central species.  These rows are
the exact derivatives of the energy model, so forces and stresses enter the fit
as derivative observations, never through finite differences.

Derivative arrays are consumed in chunks of neighbour pairs so that a large
cell never materialises an ``(n_pairs, 3, M)`` block at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernelpot.gp.kernels import dot_kernel, dot_kernel_coeff, _power

__all__ = ["SparseSet", "feature_parts", "frame_design", "frame_mean", "design_rows", "model_kernel"]

_PAIR_CHUNK = 64


@dataclass
class SparseSet:
    """Sparse (inducing) environments, grouped by central species.

    With ``extra`` the kernel is a sum over several SOAP descriptors,
    ``k = sum_d (r_d delta)^2 (x_d . x_d')^zeta`` with ``r_0 = 1`` (Bartók et
    al., Sci. Adv. 3, e1701816 (2017), sums of SOAP kernels of several
    cut-offs): one block of columns per descriptor, the first descriptor's
    first; each block's design rows carry its ``r_d``.  Every block's
    environments are among the first's (``extra_index``): those whose kernel
    function is not (numerically) a combination of the others' under that
    descriptor, so a short cut-off that cannot tell two environments apart
    keeps one of them in its own block and both in the first.

    Attributes
    ----------
    X : (n_env, F) array
        Unit descriptors of the sparse environments, species blocks contiguous.
    numbers : (n_env,) int array
        Central atomic number of each sparse environment (sorted ascending).
    extra : tuple of (n_d, F_d) arrays
        Further descriptors of some of those environments (empty: one SOAP).
    scales : (len(extra),) array
        Prior std of each further term relative to ``delta`` (``r_d``, d >= 1).
    extra_index : tuple of (n_d,) int arrays
        Which environments (rows of ``X``, ascending) each further block holds
        (default: all of them).
    """

    X: np.ndarray
    numbers: np.ndarray
    extra: tuple = ()
    scales: np.ndarray | None = None
    extra_index: tuple | None = None

    def __post_init__(self):
        self.X = np.ascontiguousarray(self.X, dtype=float)
        self.numbers = np.asarray(self.numbers, dtype=np.int64)
        if np.any(np.diff(self.numbers) < 0):
            raise ValueError("SparseSet.numbers must be sorted so species blocks are contiguous")
        self.extra = tuple(np.ascontiguousarray(x, dtype=float) for x in self.extra)
        if self.extra_index is None:
            self.extra_index = tuple(np.arange(len(self.numbers)) for _ in self.extra)
        self.extra_index = tuple(np.asarray(i, dtype=np.int64) for i in self.extra_index)
        if (len(self.extra_index) != len(self.extra)
                or any(len(i) != len(x) or np.any(np.diff(i) <= 0) or np.any(i < 0) or np.any(i >= len(self.numbers))
                       for i, x in zip(self.extra_index, self.extra))):
            raise ValueError("SparseSet.extra: one row per environment of its extra_index (ascending rows of X)")
        self.scales = (np.ones(len(self.extra)) if self.scales is None
                       else np.asarray(self.scales, dtype=float).reshape(len(self.extra)))

    @property
    def n_env(self) -> int:
        """Number of sparse environments."""
        return len(self.numbers)

    @property
    def n_parts(self) -> int:
        """Number of SOAP terms (descriptors) of the kernel."""
        return 1 + len(self.extra)

    @property
    def size(self) -> int:
        """Number of SOAP columns: the environments of every SOAP term's block."""
        return self.n_env + sum(len(i) for i in self.extra_index)

    @property
    def part_scales(self) -> np.ndarray:
        """``r_d`` of every SOAP term, ``(n_parts,)``, ``r_0 = 1``."""
        return np.concatenate([[1.0], self.scales])

    def part_slices(self) -> list:
        """The columns of each SOAP term's block, ``[slice, ...]``."""
        ends = np.cumsum([self.n_env] + [len(i) for i in self.extra_index])
        return [slice(int(a), int(b)) for a, b in zip(np.concatenate([[0], ends[:-1]]), ends)]

    def part(self, d: int) -> "SparseSet":
        """The one-descriptor sparse set of term ``d`` (unscaled)."""
        if d == 0:
            return self if not self.extra else SparseSet(self.X, self.numbers)
        return SparseSet(self.extra[d - 1], self.numbers[self.extra_index[d - 1]])

    def kernel(self, zeta: float) -> np.ndarray:
        """``Kmm / delta^2`` without the scales ``r_d`` (the rows carry them): the dot-product kernel
        between sparse environments of the same species, block-diagonal over the SOAP terms, (size, size)."""
        if not self.extra:
            return dot_kernel(self.X, self.X, zeta) * (self.numbers[:, None] == self.numbers[None, :])
        import scipy.linalg as sla
        return sla.block_diag(*(self.part(d).kernel(zeta) for d in range(self.n_parts)))

    def blocks(self):
        """Yield ``(Z, start, stop)`` for each species block."""
        Zs, starts = np.unique(self.numbers, return_index=True)
        stops = np.append(starts[1:], len(self.numbers))
        for Z, a, b in zip(Zs, starts, stops):
            yield int(Z), int(a), int(b)


def feature_parts(feat, sparse: SparseSet) -> list:
    """The descriptors of one structure for each SOAP term of ``sparse``: ``feat`` and ``feat.extra``.

    Raises
    ------
    ValueError
        The structure was described for fewer SOAP terms than the kernel has.
    """
    extra = list(getattr(feat, "extra", ()))
    if len(extra) < len(sparse.extra):
        raise ValueError(f"this kernel sums {sparse.n_parts} SOAP descriptors: describe the structure with "
                         "kernelpot.gp.assembly.describe")
    return [feat] + extra[:len(sparse.extra)]


def _force_rows(out: np.ndarray, pg, pc, pn, mask, S: np.ndarray, coeff: np.ndarray) -> None:
    """Subtract from ``out`` (n, 3, m) each pair's ``coeff[centre] * (dx_centre/dr_neighbour . S^T)``.

    Summed per neighbour (the atom whose force the row is).

    Pairs are taken grouped by neighbour, a few neighbours at a time, so each
    block of rows (``_PAIR_CHUNK`` pairs, ~1.5 MB at m = 1000) is written by one
    GEMM, scaled and summed while it is still in cache (``np.add.reduceat``).
    The GEMM ``n_pairs * 3 * F * m`` is the floor of this function; an earlier
    version that scattered one large block through a sparse matrix spent ~20 %
    over it.
    """
    n = out.shape[0]
    sel = np.flatnonzero(mask)
    sel = sel[np.argsort(pn[sel], kind="stable")]
    bounds = np.searchsorted(pn[sel], np.arange(n + 1))
    St = np.ascontiguousarray(S.T)
    m = S.shape[0]
    j0 = 0
    while j0 < n:
        # whole neighbours only, at least one, up to _PAIR_CHUNK pairs
        j1 = max(int(np.searchsorted(bounds, bounds[j0] + _PAIR_CHUNK, side="right")) - 1, j0 + 1)
        j1 = min(j1, n)
        p0, p1 = bounds[j0], bounds[j1]
        if p1 > p0:
            ch = sel[p0:p1]
            T = (pg[ch].reshape(-1, pg.shape[2]) @ St).reshape(len(ch), 3, m)
            T *= coeff[pc[ch]][:, None, :]
            js = np.arange(j0, j1)
            has = bounds[j0 + 1:j1 + 1] > bounds[j0:j1]
            out[js[has]] -= np.add.reduceat(T, bounds[j0:j1][has] - p0, axis=0)
        j0 = j1


def _species_blocks(X: np.ndarray, Z: np.ndarray, sparse: SparseSet):
    """Per species block of the sparse set that has atoms in the structure:
    ``(Z, a, b, idx, S, D)`` with sparse rows ``a:b``, ``S = sparse.X[a:b]``, the
    structure's atoms ``idx`` of that species and their dot products ``D = X[idx] S^T``."""
    for z, a, b in sparse.blocks():
        idx = np.flatnonzero(Z == z)
        if len(idx):
            S = sparse.X[a:b]
            yield z, a, b, idx, S, X[idx] @ S.T


def frame_design(feat, sparse: SparseSet, zeta: float, volume: float | None,
                 forces: bool = True, stress: bool = True) -> dict:
    """Reduced design rows of one structure.

    Parameters
    ----------
    feat : SOAPFeatures
        Descriptors of the structure, with gradients when ``forces`` and with
        ``strain_grad`` when ``stress``.
    sparse : SparseSet
    zeta : float
    volume : float or None
        Cell volume (Å^3); required when ``stress``.
    forces, stress : bool
        Which derivative rows to build.

    Returns
    -------
    dict
        ``"energy"`` (M,), ``"local"`` (n_atoms, M) per-atom kernel rows,
        ``"forces"`` (3 n_atoms, M) rows ordered atom-major (x, y, z),
        ``"stress"`` (6, M) in ASE Voigt order.
    """
    if sparse.extra:
        parts = [frame_design(f, sparse.part(d), zeta, volume, forces=forces, stress=stress)
                 for d, f in enumerate(feature_parts(feat, sparse))]
        r = sparse.part_scales
        return {k: np.concatenate([r[d] * p[k] for d, p in enumerate(parts)], axis=-1) for k in parts[0]}
    X = feat.features
    Z = feat.numbers
    n = len(Z)
    M = sparse.size
    local = np.zeros((n, M))
    out = {}
    f_rows = np.zeros((n, 3, M)) if forces else None
    s_rows = np.zeros((6, M)) if stress else None
    if forces:
        pc, pn, pg = feat.pair_center, feat.pair_neighbor, feat.pair_grad
    for z, a, b, idx, S, D in _species_blocks(X, Z, sparse):
        local[idx, a:b] = _power(D, zeta)
        if not (forces or stress):
            continue
        coeff = np.zeros((n, b - a))
        coeff[idx] = dot_kernel_coeff(D, zeta)
        if forces:
            _force_rows(f_rows[:, :, a:b], pg, pc, pn, Z[pc] == z, S, coeff)
        if stress:
            # one 2-D GEMM: numpy's batched 3-D matmul does not use BLAS and was 20x slower
            sg = feat.strain_grad[idx]
            H = (sg.reshape(-1, sg.shape[2]) @ S.T).reshape(len(idx), 6, b - a)
            s_rows[:, a:b] = np.einsum("ivm,im->vm", H, coeff[idx]) / volume
    out["local"] = local
    out["energy"] = local.sum(axis=0)
    if forces:
        out["forces"] = f_rows.reshape(3 * n, M)
    if stress:
        out["stress"] = s_rows
    return out


def frame_mean(feat, sparse: SparseSet, alpha: np.ndarray, zeta: float, volume: float | None,
               forces: bool = True, stress: bool = True) -> dict:
    """Posterior-mean local energies, forces and stress of one structure.

    Contracts with the weights ``alpha`` before touching derivatives, so the cost
    is O(n_atoms M F + n_pairs F) instead of O(n_pairs M F).

    Returns
    -------
    dict
        ``"energies"`` (n_atoms,), ``"forces"`` (n_atoms, 3), ``"stress"`` (6,)
        (reduced: GP part only, no baseline or mean offset).
    """
    if sparse.extra:
        out = None
        for d, (f, r, cols) in enumerate(zip(feature_parts(feat, sparse), sparse.part_scales, sparse.part_slices())):
            p = frame_mean(f, sparse.part(d), r * alpha[cols], zeta, volume, forces=forces, stress=stress)
            out = p if out is None else {k: out[k] + p[k] for k in out}
        return out
    X = feat.features
    Z = feat.numbers
    n, F = X.shape
    energies = np.zeros(n)
    dEdx = np.zeros((n, F))
    for _, a, b, idx, S, D in _species_blocks(X, Z, sparse):
        energies[idx] = _power(D, zeta) @ alpha[a:b]
        if forces or stress:
            dEdx[idx] = (dot_kernel_coeff(D, zeta) * alpha[a:b]) @ S
    out = {"energies": energies}
    if forces:
        pc, pn, pg = feat.pair_center, feat.pair_neighbor, feat.pair_grad
        contrib = np.einsum("pcf,pf->pc", pg, dEdx[pc])
        out["forces"] = -np.stack(
            [np.bincount(pn, weights=contrib[:, c], minlength=n) for c in range(3)], axis=1)
    if stress:
        out["stress"] = np.einsum("ivf,if->v", feat.strain_grad, dEdx) / volume
    return out


def design_rows(feat, sparse: SparseSet, zeta: float, pair, volume: float | None,
                forces: bool = True, stress: bool = True) -> dict:
    """Reduced design rows of every kernel term: SOAP's ``M`` columns, then the two-body term's.

    ``pair`` is a :class:`kernelpot.gp.twobody.PairTerm` or None (SOAP only);
    with a term, ``feat.pairs`` holds the structure's
    :class:`~kernelpot.gp.twobody.PairGeometry` (see
    :func:`kernelpot.gp.assembly.describe`).  Keys and row shapes as
    :func:`frame_design`, with ``M + P`` columns.
    """
    d = frame_design(feat, sparse, zeta, volume, forces=forces, stress=stress)
    if pair is None:
        return d
    geom = getattr(feat, "pairs", None)
    if geom is None:
        raise ValueError("this model has a two-body term: describe the structure with kernelpot.gp.assembly.describe")
    p = pair.design(geom, volume, forces=forces, stress=stress)
    return {k: np.concatenate([d[k], p[k]], axis=-1) for k in d}


def model_kernel(sparse: SparseSet, zeta: float, pair=None) -> np.ndarray:
    """Reduced sparse covariance of all kernel terms, (M + P, M + P).

    Block-diagonal: SOAP's ``Kmm``, then the two-body term's.
    """
    K = sparse.kernel(zeta)
    if pair is None:
        return K
    import scipy.linalg as sla
    return sla.block_diag(K, pair.kernel())
