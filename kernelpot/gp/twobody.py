"""Two-body kernel term beside SOAP: a Gaussian process over the pair energy of each species pair.

Model (GAP's ``distance_2b`` descriptor with a squared-exponential kernel and
uniformly placed sparse points; Bartók et al., Phys. Rev. X 8, 041048 (2018),
the GAP-18 silicon model; Deringer & Csányi, Phys. Rev. B 95, 094203 (2017))::

    E_2b = sum over pairs i < j with r_ij < r_cut of  phi_t(r_ij),   t = {Z_i, Z_j}
    phi_t(r) = f_c(r) g_t(r),   g_t ~ GP(0, (s delta)^2 exp(-(r - r')^2 / (2 l^2)))

``f_c`` is the cosine cutoff of SOAP (1 below ``r_cut - cutoff_width``, 0 at
``r_cut``), ``l`` the ``length_scale`` (Å) and ``s`` the ``scale`` of the term
relative to SOAP's ``delta``, learned from the evidence with the other
hyperparameters (:func:`kernelpot.gp.hyperparameters.search`).  The sparse
(inducing) points are the values of ``g_t`` on a uniform grid with spacing
``l / 2`` from ``l`` below the shortest distance in the training data
(``r_min``; at least half of it) to ``r_cut``, one block of columns per
species pair.  The points below the data let ``g`` bend steeply at their
edge (the first-neighbour repulsion: with the grid starting at the edge,
mlearn Si's evidence dropped the term).

Below the data the pair energy is the GP's own extrapolation: it follows the
trend at the edge for about ``l`` and returns to zero below the grid.  Three
continuations were measured on acetylacetone fitted at 300 K and tested at
600 K, where bonds compress beyond anything in the training set: this one
(force RMSE 51 meV/Å; SOAP alone 76), the tangent at the shortest training
distance (89) and a flat continuation (distance clamped there: 72); on
mlearn Si all three fit alike.  The return to zero is an attractive hole
*far* below the data; with a repulsion baseline (:mod:`kernelpot.baselines`,
e.g. ``ZBL``) a compressed dimer stays monotonically repulsive
(tests/test_gp_baselines.py), and for high-temperature MD or compression
such a baseline is what we recommend, as for GAP.  Below the data every
predictive variance also carries the repulsion prior of
:mod:`kernelpot.gp.wall`, which grows as the screened nuclear repulsion
steepens.  On the grid the Nyström
approximation of a one-dimensional SE kernel is exact to ~1e-4, so the term is
used as the finite (degenerate) model it spans: its prior variance is that of
its columns and it adds nothing to the Nyström residual of
:mod:`kernelpot.gp.posterior`.

The term's design rows (total energy, local energies, forces ``-dE/dR``,
stress ``(1/V) dE/deps`` in ASE's Voigt order) are the exact derivatives of
``E_2b``; they are appended to SOAP's columns (:mod:`kernelpot.gp.design`),
so the whitened statistics, the likelihood, leave-one-out, calibration and
posterior samples treat both terms as one sparse GP.  Each unordered pair is
counted once: every ordered pair of the neighbour list carries half of it, and
a local energy is half the sum of its pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from kernelpot.descriptors.neighbors import SpeciesPairs

__all__ = ["TwoBody", "PairTerm", "PairGeometry"]

_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


@dataclass
class TwoBody:
    """Settings of the two-body term of :class:`kernelpot.SparseGP` (``two_body=``).

    Parameters
    ----------
    r_cut : float, optional
        Cutoff of the pair energy, Å (default: the SOAP descriptor's ``r_cut``).
    length_scale : float
        Length scale ``l`` of the squared-exponential kernel over distances,
        Å.  Default 0.5 Å, half GAP-18's ``theta_uniform`` of 1 Å, so that the
        pair term can follow a first-neighbour shell.  0.25 Å fitted mlearn Si
        as well but let the pair energy swing between the bond lengths of a
        molecule, where a 300 K data set has no distances (acetylacetone at
        600 K, with the distance clamped below the data: force RMSE 800
        meV/Å); how much the term is used is learned (its scale relative to
        SOAP's ``delta``).
    cutoff_width : float
        Width of the cosine transition of the cutoff, Å.
    """

    r_cut: float | None = None
    length_scale: float = 0.5
    cutoff_width: float = 1.0

    def check(self) -> None:
        """Raise ``ValueError`` for a setting out of range."""
        for name in ("length_scale", "cutoff_width"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"TwoBody.{name} must be a positive number (Å), got {v!r}")
        if self.r_cut is not None and not (np.isfinite(self.r_cut) and self.r_cut > self.cutoff_width):
            raise ValueError(f"TwoBody.r_cut must exceed cutoff_width ({self.cutoff_width} Å), got {self.r_cut!r}")


@dataclass
class PairGeometry:
    """Ordered pairs of one structure within the pair cutoff.

    Attributes
    ----------
    center, neighbor : (p,) int arrays
        Atoms ``i`` and ``j`` of each ordered pair (periodic images keep their atom's index).
    vectors : (p, 3) array
        ``r_j + shift - r_i``, Å.
    r : (p,) array
        Distances, Å.
    kind : (p,) int array
        Index of the species pair in :attr:`PairTerm.pairs`.
    n_atoms : int
    """

    center: np.ndarray
    neighbor: np.ndarray
    vectors: np.ndarray
    r: np.ndarray
    kind: np.ndarray
    n_atoms: int


@dataclass
class PairTerm:
    """A fitted two-body term: species pairs, grid of sparse distances and the settings.

    Attributes
    ----------
    pairs : (T, 2) int array
        Species pairs ``(Z_a, Z_b)``, ``Z_a <= Z_b``; column block ``t`` of size ``len(grid)`` each.
    grid : (G,) array
        Sparse distances, Å.
    r_min : (T,) array
        Shortest distance of each species pair in the training data (``r_cut``
        for a pair never seen within the cutoff); the grid starts ``l`` below
        the smallest.
    r_cut, length_scale, cutoff_width : float
        Å.
    scale : float
        Prior std of ``g_t`` in units of SOAP's ``delta``; multiplies the rows.
    """

    pairs: np.ndarray
    grid: np.ndarray
    r_min: np.ndarray
    r_cut: float
    length_scale: float
    cutoff_width: float
    scale: float = 1.0

    def __post_init__(self):
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        self.grid = np.asarray(self.grid, dtype=float)
        self.r_min = np.asarray(self.r_min, dtype=float).reshape(len(self.pairs))
        self._index = SpeciesPairs(self.pairs)

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, settings: TwoBody, frames, species, r_cut_default: float) -> "PairTerm":
        """The term for training ``frames``: every pair of ``species``, a grid from the shortest distance.

        ``r_min`` per species pair from the training frames; the grid runs
        from ``length_scale`` below the smallest of them (at least half of it)
        to ``r_cut`` in steps of ``length_scale / 2``.
        """
        settings.check()
        r_cut = float(settings.r_cut if settings.r_cut is not None else r_cut_default)
        ell = float(settings.length_scale)
        index = SpeciesPairs.of(species)
        term = cls(index.pairs, np.array([r_cut]), index.shortest(frames, r_cut), r_cut, ell,
                   float(settings.cutoff_width))
        # sparse points also below the shortest distance (never evaluated there): their kernels'
        # tails let g bend steeply at the edge of the data (the first-neighbour repulsion); with
        # the grid starting at the edge, mlearn Si's evidence dropped the term
        r0 = float(term.r_min.min())
        lo = max(r0 - ell, 0.5 * r0)
        n = max(int(np.ceil((r_cut - lo) / (0.5 * ell))) + 1, 2)
        term.grid = np.linspace(lo, r_cut, n)
        return term

    @property
    def size(self) -> int:
        """Number of columns: species pairs times grid points."""
        return len(self.pairs) * len(self.grid)

    def kernel(self) -> np.ndarray:
        """Sparse covariance of the term divided by ``(scale delta)^2``: SE between grid points, block-diagonal in species pairs, (P, P)."""
        g = self.grid
        k = np.exp(-0.5 * ((g[:, None] - g[None, :]) / self.length_scale) ** 2)
        return np.kron(np.eye(len(self.pairs)), k)

    # --------------------------------------------------------------- geometry
    def geometry(self, atoms) -> PairGeometry:
        """Ordered pairs of ``atoms`` within ``r_cut`` (species pairs the term does not know get no columns)."""
        c, j, v, r, kind = self._index.pair_list(atoms, self.r_cut)
        return PairGeometry(c, j, v, r, kind, len(atoms))

    # ------------------------------------------------------------------ rows
    def _basis(self, r: np.ndarray):
        """``h_m(r) = f_c(r) k(r, g_m)`` and ``dh_m/dr``, each (p, G)."""
        rc, w, ell = self.r_cut, self.cutoff_width, self.length_scale
        x = np.clip((r - (rc - w)) / w, 0.0, 1.0)
        fc = 0.5 * (1.0 + np.cos(np.pi * x))
        dfc = np.where((x > 0) & (x < 1), -0.5 * np.pi / w * np.sin(np.pi * x), 0.0)
        diff = r[:, None] - self.grid[None, :]
        k = np.exp(-0.5 * (diff / ell) ** 2)
        h = fc[:, None] * k
        dh = dfc[:, None] * k - h * diff / ell ** 2
        return h, dh

    def design(self, geom: PairGeometry, volume: float | None, forces: bool = True, stress: bool = False) -> dict:
        """Reduced design rows of one structure (already multiplied by :attr:`scale`).

        Returns
        -------
        dict
            ``"local"`` (n_atoms, P), ``"energy"`` (P,), with ``forces``
            ``"forces"`` (3 n_atoms, P) atom-major, with ``stress`` ``"stress"``
            (6, P) in ASE's Voigt order (``volume`` in Å^3 required).
        """
        n, T, G = geom.n_atoms, len(self.pairs), len(self.grid)
        p = len(geom.r)
        h, dh = self._basis(geom.r)
        half = 0.5 * self.scale
        # row of (atom, species pair) for each ordered pair
        key_c = geom.center * T + geom.kind
        S_c = sp.csr_matrix((np.full(p, half), (key_c, np.arange(p))), shape=(n * T, p))
        out = {}
        local = (S_c @ h).reshape(n, T * G)
        out["local"] = local
        out["energy"] = local.sum(axis=0)
        if forces or stress:
            u = geom.vectors / geom.r[:, None]  # dr/dr_j = u, dr/dr_i = -u
        if forces:
            key_j = geom.neighbor * T + geom.kind
            S_j = sp.csr_matrix((np.full(p, half), (key_j, np.arange(p))), shape=(n * T, p))
            C = (dh[:, None, :] * u[:, :, None]).reshape(p, 3 * G)  # d h / d r_j per component
            dE = (S_j @ C - S_c @ C).reshape(n, T, 3, G)  # dE/dr of each atom, per species pair
            out["forces"] = -dE.transpose(0, 2, 1, 3).reshape(3 * n, T * G)
        if stress:
            if volume is None:
                raise ValueError("the stress rows of the two-body term need the cell volume")
            outer = np.stack([geom.vectors[:, a] * u[:, b] for a, b in _VOIGT], axis=1)  # d_a d_b / r, (p, 6)
            S_t = sp.csr_matrix((np.full(p, half / volume), (geom.kind, np.arange(p))), shape=(T, p))
            rows = np.stack([(S_t @ (outer[:, v:v + 1] * dh)) for v in range(6)])  # (6, T, G)
            out["stress"] = rows.reshape(6, T * G)
        return out

    def local_prior(self, atoms, L: np.ndarray) -> np.ndarray:
        """Reduced prior variance of each atom's pair energy (half its pairs), ``|L^-1 local|^2``, (n_atoms,).

        ``L`` is the Cholesky factor of :meth:`kernel` (as used by the fit);
        the rows carry :attr:`scale`.
        """
        import scipy.linalg as sla
        local = self.design(self.geometry(atoms), None, forces=False)["local"]
        return np.sum(sla.solve_triangular(L, local.T, lower=True, check_finite=False) ** 2, axis=0)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        """JSON-able state (see :meth:`from_dict`)."""
        return {"pairs": self.pairs.tolist(), "grid": self.grid.tolist(), "r_min": self.r_min.tolist(),
                "r_cut": float(self.r_cut),
                "length_scale": float(self.length_scale), "cutoff_width": float(self.cutoff_width),
                "scale": float(self.scale)}

    @classmethod
    def from_dict(cls, d: dict) -> "PairTerm":
        """Inverse of :meth:`to_dict`; raises ``ValueError`` for a malformed entry."""
        try:
            term = cls(np.array(d["pairs"], dtype=np.int64), np.array(d["grid"], dtype=float),
                       np.array(d["r_min"], dtype=float), float(d["r_cut"]),
                       float(d["length_scale"]), float(d["cutoff_width"]), float(d["scale"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed two-body term in the model file: {exc}") from None
        vals = [term.r_cut, term.length_scale, term.cutoff_width, term.scale]
        if not (np.all(np.isfinite(term.grid)) and np.all(np.isfinite(term.r_min)) and all(np.isfinite(vals))
                and min(vals) > 0
                and term.pairs.ndim == 2 and np.all(term.pairs > 0) and np.all(term.pairs <= 118)
                and len(term.grid) >= 1):
            raise ValueError("malformed two-body term in the model file: values out of range")
        return term
