"""Prior variance of the pair repulsion below the shortest distances of the training data.

A Gaussian process with a stationary kernel (SOAP's dot product, the
two-body squared exponential of :mod:`kernelpot.gp.twobody`) knows the
energy of a compressed pair only through its smooth continuation of the
data; its variance there has the amplitude it learned where data are.  The
true repulsion does not follow: it steepens like the screened Coulomb
repulsion of the nuclei.  Measured with EMT copper fitted on cells rattled
by 0.03 Å and tested on cells rattled by 0.15 Å (``benchmarks/calibration.py``,
``Cu cold -> hot``): where the shortest distance stayed within the training
range the error was 0.018 eV/Å against a sigma of 0.017, while for pairs
below 1.9 Å (0.4 Å below the data) it was 17.5 eV/Å against 0.2: 27 % of the
force components within one sigma, 45 % within two.  No calibration of the
training set's residuals can see this (there is no such pair in it), and
the pair kernels tried in its place (Matérn 5/2 and 3/2) were worse.

The model here adds, for each species pair ``t``, a term the training data
cannot inform::

    E_wall = sum_t xi_t sum over pairs of kind t with r < r_min,t of  w_t(r),   xi_t ~ N(0, 1)
    w_t(r) = u(r) - sum_{k=0..3} u^(k)(r0) (r - r0)^k / k!,   r0 = r_min,t

``u`` is the ZBL universal screened nuclear repulsion of the pair
(:func:`kernelpot.baselines.zbl.zbl_derivatives`; Ziegler, Biersack &
Littmark, *The Stopping and Range of Ions in Solids*, 1985) and ``r_min,t``
the shortest distance of the pair in the training data.  ``w_t`` is ZBL's
departure from its third-order Taylor polynomial at the edge of the data:
the prior says the pair energy may depart from the GP's smooth continuation
of the data by as much as the screened repulsion departs from its own local
expansion over the same distance.  ``w_t`` and its first three derivatives
vanish at ``r_min,t`` (the variance is smooth, and zero on every training
structure), so the posterior of ``xi`` is its prior: the mean of the model
is unchanged and the variance of any prediction gains the exact term
``sum_t (d obs / d xi_t)^2``.  One amplitude per species pair makes the
pairs of a structure move together, as the errors of one unknown pair curve
do.  A species pair never seen within the cutoff has ``r_min`` at the
cutoff: below it, nearly all of ZBL is unknown.

Why the third order.  Just below the data the GP's own variance covers its
errors: mlearn Si and Li fitted on the 80 % of structures with the longest
shortest distance and tested on the 10 % with the shortest (pairs up to
0.27 Å below the data; ``benchmarks/calibration.py``) have 97.5 % and 94 %
of force errors within 2 sigma without any prior.  Measured on the copper
cold -> hot case, with forces within 1 / 2 sigma and miscalibration area:

=====================================  ===========  ===========  ======
prior                                  within 1 σ   within 2 σ    area
=====================================  ===========  ===========  ======
none                                   28 %         45 %         0.29
ZBL beyond its 1st-order polynomial    98 %         99.6 %       0.41
ZBL beyond its 2nd-order polynomial    95 %         99.6 %       0.28
ZBL beyond its 3rd-order polynomial    77 %         98 %         0.11
=====================================  ===========  ===========  ======

The second order was 5-17 times wider than the errors of hot and compressed
EMT copper cells, and where the pairs were a few hundredths of an Å below
the data it grew as ``Δr^2`` to several times the GP's own sigma: an active
learner on EMT copper MD (``benchmarks/active_learning.py``) then called the
reference 42 times instead of 25 for the same final error.  The third order
grows as ``Δr^3`` there and still covers the far compressions.

The variance is added after the calibration (:mod:`kernelpot.gp.calibration`),
which is fitted on training structures where it is zero and so cannot
speak for it.  Posterior calculators
(:meth:`kernelpot.SparseGP.posterior_calculators`) draw ``xi`` beside the
weights and add its term, so property error bars carry it exactly; it is
not part of the factor that scales the weight samples
(:meth:`kernelpot.SparseGP.sample_scales`), which would spread a variance
that lives only below the data over every structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernelpot.baselines.zbl import zbl_derivatives, zbl_pair
from kernelpot.descriptors.neighbors import SpeciesPairs

__all__ = ["WallPrior", "wall_shape", "no_variances"]

_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def wall_shape(r, za, zb, r0):
    """ZBL's departure from its third-order Taylor polynomial at ``r0``, below ``r0``; zero above.

    Parameters
    ----------
    r, za, zb, r0 : (p,) arrays
        Distances (Å), atomic numbers of the two atoms, edge of the data (Å).

    Returns
    -------
    w, dw : (p,) arrays
        ``w(r)`` (eV) and ``dw/dr`` (eV/Å); both zero for ``r >= r0``.
    """
    r = np.asarray(r, float)
    r0 = np.asarray(r0, float)
    below = r < r0
    w = np.zeros_like(r)
    dw = np.zeros_like(r)
    if np.any(below):
        rb, a, b, c = r[below], np.asarray(za)[below], np.asarray(zb)[below], r0[below]
        u, du = zbl_pair(rb, a, b)
        u0, du0, d2u0, d3u0 = zbl_derivatives(c, a, b, 3)
        x = rb - c
        w[below] = u - u0 - du0 * x - d2u0 * x ** 2 / 2 - d3u0 * x ** 3 / 6
        dw[below] = du - du0 - d2u0 * x - d3u0 * x ** 2 / 2
    return w, dw


def no_variances(n_atoms: int, forces: bool = True, stress: bool = False) -> dict:
    """The zero variances of :meth:`WallPrior.variances`: a structure with no pair below the data, or no prior."""
    out = {"energy": np.zeros(1), "energies": np.zeros(n_atoms)}
    if forces:
        out["forces"] = np.zeros((n_atoms, 3))
    if stress:
        out["stress"] = np.zeros(6)
    return out


@dataclass
class WallPrior:
    """The repulsion prior below the data of a fitted model (see the module docstring).

    Attributes
    ----------
    pairs : (T, 2) int array
        Species pairs ``(Z_a, Z_b)``, ``Z_a <= Z_b``: every pair of the model's species.
    r_min : (T,) array
        Shortest distance of each species pair in the training data, Å (the
        cutoff for a pair never seen within it).
    """

    pairs: np.ndarray
    r_min: np.ndarray

    def __post_init__(self):
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        self.r_min = np.asarray(self.r_min, dtype=float).reshape(len(self.pairs))
        self._index = SpeciesPairs(self.pairs)

    @classmethod
    def build(cls, frames, species, r_cut: float) -> "WallPrior":
        """Shortest distance of every species pair in ``frames`` (``r_cut`` where none is within it).

        Parameters
        ----------
        frames : list of ase.Atoms
            The training structures.
        species : sequence of int
            The model's atomic numbers.
        r_cut : float
            Cutoff of the model, Å.
        """
        index = SpeciesPairs.of(species)
        return cls(index.pairs, index.shortest(frames, float(r_cut)))

    def including(self, frames) -> "WallPrior":
        """The prior of a training set extended by ``frames``: each ``r_min`` lowered to their shortest pair."""
        cutoff = float(self.r_min.max()) if len(self.r_min) else 1.0
        return WallPrior(self.pairs, np.minimum(self.r_min, self._index.shortest(frames, cutoff)))

    def rows(self, atoms, forces: bool = True, stress: bool = False) -> dict | None:
        """Derivatives of the observations of ``atoms`` by the amplitudes ``xi``, one column per species pair.

        Parameters
        ----------
        atoms : ase.Atoms
        forces, stress : bool
            Also the rows of the forces (``-dE/dR``) and of the stress
            (``(1/V) dE/d eps``, ASE's Voigt order; needs a periodic cell).

        Returns
        -------
        dict or None
            None when no pair of ``atoms`` is below the data.  Otherwise
            ``"energy"`` (T,) eV, ``"local"`` (n_atoms, T) eV (each atom's
            half of its pairs), with ``forces`` ``"forces"`` (n_atoms, 3, T)
            eV/Å and with ``stress`` ``"stress"`` (6, T) eV/Å^3.
        """
        if len(self.pairs) == 0:
            return None
        c, j, v, r, kind = self._index.pair_list(atoms, float(self.r_min.max()))
        below = r < self.r_min[kind]
        if not np.any(below):
            return None
        c, j, v, r, kind = c[below], j[below], v[below], r[below], kind[below]
        w, dw = wall_shape(r, atoms.numbers[c], atoms.numbers[j], self.r_min[kind])
        n, T = len(atoms), len(self.pairs)
        local = np.zeros((n, T))
        np.add.at(local, (c, kind), 0.5 * w)  # each ordered pair carries half of its unordered pair
        out = {"local": local, "energy": local.sum(axis=0)}
        g = 0.5 * dw[:, None] * v / r[:, None]  # half of dE/dr_j of each ordered pair; dE/dr_i = -that
        if forces:
            F = np.zeros((n, 3, T))
            for a in range(3):
                np.add.at(F[:, a, :], (j, kind), -g[:, a])
                np.add.at(F[:, a, :], (c, kind), g[:, a])
            out["forces"] = F
        if stress:
            S = np.zeros((6, T))
            vol = atoms.cell.volume
            for k, (a, b) in enumerate(_VOIGT):
                np.add.at(S[k], kind, v[:, a] * g[:, b] / vol)
            out["stress"] = S
        return out

    def variances(self, atoms, forces: bool = True, stress: bool = False) -> dict:
        """Variance the prior adds to each observation of ``atoms``.

        Returns
        -------
        dict
            ``"energy"`` (1,) eV^2, ``"energies"`` (n_atoms,) eV^2, with
            ``forces`` ``"forces"`` (n_atoms, 3) (eV/Å)^2, with ``stress``
            ``"stress"`` (6,) (eV/Å^3)^2; all zero when no pair is below the data.
        """
        rows = self.rows(atoms, forces, stress)
        if rows is None:
            return no_variances(len(atoms), forces, stress)
        out = {"energy": np.atleast_1d(np.sum(rows["energy"] ** 2)), "energies": np.sum(rows["local"] ** 2, axis=1)}
        if forces:
            out["forces"] = np.sum(rows["forces"] ** 2, axis=2)
        if stress:
            out["stress"] = np.sum(rows["stress"] ** 2, axis=1)
        return out

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        """JSON-able state (see :meth:`from_dict`)."""
        return {"pairs": self.pairs.tolist(), "r_min": self.r_min.tolist()}

    @classmethod
    def from_dict(cls, d, species=None, r_cut: float | None = None) -> "WallPrior":
        """Inverse of :meth:`to_dict`, checked against the model it belongs to.

        Parameters
        ----------
        d : dict
            ``{"pairs": [[Z_a, Z_b], ...], "r_min": [...]}``.
        species : sequence of int, optional
            The model's atomic numbers: ``pairs`` must be exactly their
            species pairs, in :meth:`build`'s order.
        r_cut : float, optional
            The model's cutoff (Å): every ``r_min`` must lie in ``(0, r_cut]``.

        Raises
        ------
        ValueError
            For anything else (a file edited by hand or written by another
            program): a prior that does not describe the model would change
            every std it gives, or make a prediction scan pairs out to an
            arbitrary distance.
        """
        bad = "malformed wall prior ('wall_') in the model file: "
        if not isinstance(d, dict) or set(d) != {"pairs", "r_min"}:
            raise ValueError(bad + "expected an object with exactly the keys 'pairs' and 'r_min', got "
                             f"{sorted(d) if isinstance(d, dict) else type(d).__name__}")
        pairs, r_min = d["pairs"], d["r_min"]
        if not (isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 for p in pairs)
                and all(isinstance(z, int) and not isinstance(z, bool) and 1 <= z <= 118 for p in pairs for z in p)):
            raise ValueError(bad + "'pairs' must be a list of [Z_a, Z_b] pairs of atomic numbers 1-118")
        if not (isinstance(r_min, list) and len(r_min) == len(pairs)
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in r_min)):
            raise ValueError(bad + f"'r_min' must be a list of {len(pairs)} distances (Å), one per pair")
        prior = cls(np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(r_min, dtype=float))
        if species is not None:
            want = SpeciesPairs.of(species).pairs
            if prior.pairs.shape != want.shape or np.any(prior.pairs != want):
                raise ValueError(bad + f"its pairs {prior.pairs.tolist()} are not the species pairs of the model's "
                                 f"elements {sorted(int(z) for z in species)} ({want.tolist()})")
        hi = np.inf if r_cut is None else float(r_cut) * (1 + 1e-12)
        if not np.all(np.isfinite(prior.r_min) & (prior.r_min > 0) & (prior.r_min <= hi)):
            raise ValueError(bad + f"every 'r_min' must be a distance in (0, {hi:.6g}] Å (the model's cutoff), got "
                             f"{prior.r_min.tolist()}")
        return prior
