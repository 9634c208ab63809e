"""Ziegler-Biersack-Littmark (ZBL) universal screened nuclear repulsion."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
from ase.data import covalent_radii
from sklearn.base import BaseEstimator

from ._pair_kernels import (
    COULOMB_CONSTANT,
    accumulate_pairs,
    check_cell,
    has_stress,
    neighbor_pairs,
    pair_key_string,
    smooth_switch,
    virial_to_stress,
)

__all__ = ["ZBL", "COULOMB_CONSTANT", "zbl_pair", "zbl_derivatives"]

# Universal screening function phi(x) = sum_k c_k exp(-d_k x) (ZBL 1985).
_ZBL_C = np.array([0.18175, 0.50986, 0.28022, 0.02817])
_ZBL_D = np.array([3.19980, 0.94229, 0.40290, 0.20162])
_ZBL_A0 = 0.46850  # Å, screening length prefactor

#: Default outer switch radius as a fraction of the covalent bond length R_a + R_b.
OUTER_FRACTION = 0.6
#: Default inner switch radius as a fraction of the outer one.
INNER_FRACTION = 0.5


def zbl_pair(r: np.ndarray, za: np.ndarray, zb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unswitched ZBL pair energy and its radial derivative.

    ``u(r) = k Z_a Z_b / r * phi(r / a)``, ``a = 0.46850 / (Z_a^0.23 + Z_b^0.23)`` Å,
    ``k = 14.399645`` eV Å.

    Parameters
    ----------
    r : (n,) float
        Distances (Å), > 0.
    za, zb : (n,) int or float
        Atomic numbers.

    Returns
    -------
    u : (n,) float
        Energy (eV).
    dudr : (n,) float
        Derivative (eV/Å).
    """
    u, dudr = zbl_derivatives(r, za, zb, 1)
    return u, dudr


def zbl_derivatives(r: np.ndarray, za: np.ndarray, zb: np.ndarray, order: int) -> list:
    """Unswitched ZBL pair energy and its radial derivatives up to ``order``.

    Leibniz's rule on ``u = k Z_a Z_b (1/r) phi(r/a)``:
    ``u^(n) = k Z_a Z_b sum_m C(n, m) phi^(m)(r/a) a^-m (-1)^(n-m) (n-m)! / r^(n-m+1)``.

    Parameters
    ----------
    r, za, zb : (n,) arrays
        Distances (Å, > 0) and atomic numbers.
    order : int
        Highest derivative (>= 0).

    Returns
    -------
    list of (n,) arrays
        ``[u, du/dr, ..., d^order u/dr^order]`` in eV/Å^k.
    """
    r = np.asarray(r, float)
    za = np.asarray(za, float)
    zb = np.asarray(zb, float)
    a = _ZBL_A0 / (za**0.23 + zb**0.23)
    terms = _ZBL_C[:, None] * np.exp(-_ZBL_D[:, None] * (r / a)[None, :])
    # phi^(m)(x) / a^m: each derivative of exp(-d r / a) brings -d / a
    dphi = [((-_ZBL_D[:, None]) ** m * terms).sum(axis=0) / a**m for m in range(order + 1)]
    pref = COULOMB_CONSTANT * za * zb
    out = []
    for n in range(order + 1):
        s = sum(math.comb(n, m) * dphi[m] * (-1) ** (n - m) * math.factorial(n - m) / r ** (n - m + 1)
                for m in range(n + 1))
        out.append(pref * s)
    return out


class ZBL(BaseEstimator):
    """ZBL repulsion, switched off smoothly between ``r_inner`` and ``r_outer``.

    ``E = 1/2 sum_{i != j} u_ZBL(r_ij) S(r_ij)`` over all neighbour images, with the
    quintic switch ``S = 1 - 10 t^3 + 15 t^4 - 6 t^5``, ``t = (r - r_inner) / (r_outer - r_inner)``
    clipped to [0, 1]: ``S = 1`` below ``r_inner``, ``0`` above ``r_outer``, and value, first
    and second derivatives continuous at both ends.

    Parameters
    ----------
    r_inner : float or None, default None
        Where the switch starts (Å). ``None``: ``0.5 * r_outer`` of each pair.
    r_outer : float or None, default None
        Where ZBL reaches zero (Å). ``None``: per species pair ``0.6 (R_a + R_b)``, with ``R``
        the covalent radii of ``ase.data.covalent_radii`` (Si-Si: 1.332 Å), i.e. ZBL acts
        only well inside the bonding range.

    Examples
    --------
    >>> from ase import Atoms
    >>> zbl = ZBL(r_inner=1.0, r_outer=2.0)
    >>> energy, forces, stress = zbl.compute(Atoms("Si2", positions=[[0, 0, 0], [0, 0, 0.5]]))
    >>> round(energy, 3)
    470.493
    """

    kind = "zbl"

    def __init__(self, r_inner: float | None = None, r_outer: float | None = None):
        self.r_inner = r_inner
        self.r_outer = r_outer

    @classmethod
    def from_frames(cls, frames, margin: float = 0.3) -> "ZBL":
        """ZBL switched off ``margin`` Å beyond the closest pair in the training data.

        The default switch-off (``0.6 (R_a + R_b)``, 1.33 Å for Si) can lie well
        below the shortest distance in a training set (1.83 Å in mlearn Si), and
        in that gap neither the prior nor the data say anything: the fitted model
        can turn over there (measured in ``benchmarks/repulsion.py``).  With
        ``r_outer = d_min + margin`` (``r_inner = r_outer / 2``) the prior acts
        up to the data; the GP fits the rest of the labels around it.

        Parameters
        ----------
        frames : list of ase.Atoms
            The training structures.
        margin : float, default 0.3
            Å beyond the smallest interatomic distance ``d_min`` of ``frames``.

        Raises
        ------
        ValueError
            When no frame has two atoms within 4 Å of each other.
        """
        from kernelpot.descriptors.neighbors import smallest_distance
        d_min = smallest_distance(frames)
        if not np.isfinite(d_min):
            raise ValueError("ZBL.from_frames: no two atoms within 4 Å in any frame; set r_outer explicitly")
        if not (isinstance(margin, Real) and margin >= 0):
            raise ValueError(f"ZBL.from_frames: margin must be a non-negative number of Å, got {margin!r}")
        return cls(r_outer=d_min + float(margin))

    def _check_params(self) -> None:
        for name in ("r_inner", "r_outer"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"ZBL: {name}={value!r} is not allowed; expected None or a finite number > 0 (Å)")
        if self.r_inner is not None and self.r_outer is not None and not self.r_inner < self.r_outer:
            raise ValueError(
                f"ZBL: r_inner={self.r_inner!r} must be smaller than r_outer={self.r_outer!r}"
            )

    def switch_radii(self, za: int, zb: int) -> tuple[float, float]:
        """``(r_inner, r_outer)`` in Å used for the species pair ``(za, zb)``.

        Raises
        ------
        ValueError
            If a fixed ``r_inner`` is not below the default ``r_outer`` of this pair.
        """
        if self.r_outer is None:
            r_outer = OUTER_FRACTION * float(covalent_radii[za] + covalent_radii[zb])
        else:
            r_outer = float(self.r_outer)
        r_inner = INNER_FRACTION * r_outer if self.r_inner is None else float(self.r_inner)
        if not r_inner < r_outer:
            raise ValueError(
                f"ZBL: for pair {pair_key_string(za, zb)} r_inner={r_inner!r} Å is not below the default "
                f"r_outer={r_outer:.4f} Å ({OUTER_FRACTION} x sum of covalent radii); "
                "set r_outer explicitly or lower r_inner"
            )
        return r_inner, r_outer

    def compute(self, atoms) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy (eV), forces ``(n_atoms, 3)`` (eV/Å) and ASE Voigt stress ``(6,)`` (eV/Å^3).

        The stress is zero when no direction is periodic or the cell has no volume.
        """
        self._check_params()
        check_cell(atoms, "ZBL")
        n_atoms = len(atoms)
        numbers = np.asarray(atoms.numbers)
        species, index = np.unique(numbers, return_inverse=True)
        ns = len(species)
        r_in = np.zeros((ns, ns))
        r_out = np.zeros((ns, ns))
        for p in range(ns):
            for q in range(ns):
                r_in[p, q], r_out[p, q] = self.switch_radii(int(species[p]), int(species[q]))
        cutoff = float(r_out.max()) if ns else 0.0
        i, j, r, D = neighbor_pairs(atoms, cutoff)
        pi, pj = index[i], index[j]
        keep = r < r_out[pi, pj]
        i, j, r, D, pi, pj = i[keep], j[keep], r[keep], D[keep], pi[keep], pj[keep]
        u0, du0 = zbl_pair(r, numbers[i], numbers[j])
        s, ds = smooth_switch(r, r_in[pi, pj], r_out[pi, pj])
        energy, forces, virial = accumulate_pairs(n_atoms, i, u0 * s, du0 * s + u0 * ds, r, D)
        stress = virial_to_stress(virial, atoms.get_volume()) if has_stress(atoms) else np.zeros(6)
        return energy, forces, stress

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings."""
        self._check_params()
        return {
            "kind": self.kind,
            "r_inner": None if self.r_inner is None else float(self.r_inner),
            "r_outer": None if self.r_outer is None else float(self.r_outer),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ZBL":
        """Rebuild from :meth:`to_dict` output."""
        return cls(r_inner=d.get("r_inner"), r_outer=d.get("r_outer"))
