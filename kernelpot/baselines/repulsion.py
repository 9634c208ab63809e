"""Short-range inverse-power repulsion ``A_ab / r^n`` with a smooth cutoff."""

from __future__ import annotations

from numbers import Real
from typing import Any

import numpy as np
from ase.data import covalent_radii
from sklearn.base import BaseEstimator

from ._pair_kernels import (
    accumulate_pairs,
    atomic_number,
    check_cell,
    has_stress,
    neighbor_pairs,
    pair_key_string,
    parse_pair_key,
    smooth_switch,
    virial_to_stress,
)

__all__ = ["Repulsion", "covalent_prefactor"]


def covalent_prefactor(a: str | int, b: str | int, n: float = 12.0, energy: float = 1.0, scale: float = 0.6) -> float:
    """Prefactor ``A_ab`` (eV Å^n) so that ``A_ab / r0^n = energy`` at ``r0 = scale (R_a + R_b)``.

    ``R`` are the covalent radii of Cordero et al. (``ase.data.covalent_radii``). With the
    defaults (1 eV at 0.6 of the covalent bond length, ``n = 12``) the repulsion is
    ``0.6^12 = 2e-3`` eV at the bond length itself, i.e. negligible where data exist,
    and rises steeply where atoms overlap.

    Parameters
    ----------
    a, b : str or int
        Elements (symbol or atomic number).
    n : float
        Power.
    energy : float
        Pair energy at the contact distance (eV).
    scale : float
        Contact distance as a fraction of ``R_a + R_b``.

    Returns
    -------
    float
        ``A_ab`` in eV Å^n.

    Examples
    --------
    >>> round(covalent_prefactor("Si", "Si") / (0.6 * 2.22) ** 12, 12)
    1.0
    """
    za = atomic_number(a, "covalent_prefactor a")
    zb = atomic_number(b, "covalent_prefactor b")
    r0 = scale * (covalent_radii[za] + covalent_radii[zb])
    return float(energy * r0**n)


class Repulsion(BaseEstimator):
    """Pair repulsion ``E = 1/2 sum_{i != j} A_ab r^-n s(r)`` over all neighbour images.

    The cutoff function ``s`` is the quintic switch ``1 - 10 t^3 + 15 t^4 - 6 t^5``,
    ``t = (r - r_on) / cutoff_width``, ``r_on = r_cut - cutoff_width``: ``s = 1`` below
    ``r_on`` and ``0`` beyond ``r_cut``; energy, force and force derivative are continuous
    at both ends.

    Parameters
    ----------
    A : None, float or dict, default None
        Prefactor (eV Å^n). ``None``: every pair from the covalent-radius rule of
        :func:`covalent_prefactor` (``A_ab = contact_energy (contact_scale (R_a + R_b))^n``).
        A float: the same value for every pair. A dict: species pair (``("Si", "O")``,
        ``(14, 8)`` or ``"Si-O"``) -> value; every pair of the elements of a structure
        must be given.
    n : float, default 12
        Power (> 0).
    r_cut : float, default 3.0
        Cutoff (Å). Keep ``r_cut - cutoff_width`` above the contact distance of the
        heaviest pair, or its repulsion is switched off where it should act.
    cutoff_width : float, default 1.0
        Width of the switching region below ``r_cut`` (Å), ``0 < cutoff_width <= r_cut``.
    contact_energy : float, default 1.0
        Pair energy at the contact distance for the covalent rule (eV, > 0); used only when
        ``A`` is None.
    contact_scale : float, default 0.6
        Contact distance as a fraction of ``R_a + R_b`` (> 0); used only when ``A`` is None.

    Examples
    --------
    >>> from ase import Atoms
    >>> rep = Repulsion(A=1.0, n=12, r_cut=3.0, cutoff_width=1.0)
    >>> energy, forces, stress = rep.compute(Atoms("H2", positions=[[0, 0, 0], [0, 0, 1.0]]))
    >>> round(energy, 12)
    1.0
    """

    kind = "repulsion"

    def __init__(
        self,
        A: None | float | dict = None,
        n: float = 12.0,
        r_cut: float = 3.0,
        cutoff_width: float = 1.0,
        contact_energy: float = 1.0,
        contact_scale: float = 0.6,
    ):
        self.A = A
        self.n = n
        self.r_cut = r_cut
        self.cutoff_width = cutoff_width
        self.contact_energy = contact_energy
        self.contact_scale = contact_scale

    # ------------------------------------------------------------------ validation
    def _check_params(self) -> dict[tuple[int, int], float] | float | None:
        for name in ("n", "r_cut", "cutoff_width", "contact_energy", "contact_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"Repulsion: {name}={value!r} is not allowed; expected a finite number > 0")
        if self.cutoff_width > self.r_cut:
            raise ValueError(
                f"Repulsion: cutoff_width={self.cutoff_width!r} exceeds r_cut={self.r_cut!r}; "
                "the switching region must lie within [0, r_cut]"
            )
        A = self.A
        if A is None:
            return None
        if isinstance(A, dict):
            table: dict[tuple[int, int], float] = {}
            for key, value in A.items():
                pair = parse_pair_key(key, "Repulsion A")
                if pair in table:
                    raise ValueError(f"Repulsion: A gives pair {pair_key_string(*pair)} twice (key {key!r})")
                if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value) or value < 0:
                    raise ValueError(f"Repulsion: A[{key!r}]={value!r} is not allowed; expected a finite number >= 0")
                table[pair] = float(value)
            return table
        if isinstance(A, bool) or not isinstance(A, Real) or not np.isfinite(A) or A < 0:
            raise ValueError(
                f"Repulsion: A={A!r} is not allowed; expected None (covalent-radius rule), "
                "a number >= 0 (eV Å^n) or a dict of species pair -> number"
            )
        return float(A)

    def _prefactor_matrix(self, species: np.ndarray, table, formula: str) -> np.ndarray:
        """``A`` for every pair of the elements present (eV Å^n), shape ``(n_species, n_species)``.

        With a dict, every pair of elements present must be given, whether or not such a pair
        falls within ``r_cut`` in this structure, so that a setting works on all structures
        of a composition or on none.
        """
        zs = [int(z) for z in species]
        shape = (len(zs), len(zs))
        if table is None:
            values = [covalent_prefactor(a, b, self.n, self.contact_energy, self.contact_scale) for a in zs for b in zs]
            return np.array(values, dtype=float).reshape(shape)
        if isinstance(table, float):
            return np.full(shape, table)
        missing = [(a, b) for k, a in enumerate(zs) for b in zs[k:] if (a, b) not in table]
        if missing:
            given = ", ".join(pair_key_string(*p) for p in sorted(table)) or "none"
            names = ", ".join(pair_key_string(*p) for p in missing)
            raise ValueError(
                f"Repulsion: no prefactor A for pair {names} (elements of {formula}); A gives: {given}. "
                "Add the pairs to A, or use A=None for the covalent-radius rule."
            )
        return np.array([table[(min(a, b), max(a, b))] for a in zs for b in zs], dtype=float).reshape(shape)

    # ------------------------------------------------------------------ compute
    def compute(self, atoms) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy (eV), forces ``(n_atoms, 3)`` (eV/Å) and ASE Voigt stress ``(6,)`` (eV/Å^3).

        The stress is zero when no direction is periodic or the cell has no volume.
        """
        table = self._check_params()
        check_cell(atoms, "Repulsion")
        n_atoms = len(atoms)
        i, j, r, D = neighbor_pairs(atoms, float(self.r_cut))
        numbers = np.asarray(atoms.numbers)
        species, index = np.unique(numbers, return_inverse=True)
        A = self._prefactor_matrix(species, table, atoms.get_chemical_formula())
        a_pair = A[index[i], index[j]]
        r_cut = float(self.r_cut)
        s, ds = smooth_switch(r, r_cut - float(self.cutoff_width), r_cut)
        n = float(self.n)
        rn = r ** (-n)
        u = a_pair * rn * s
        dudr = a_pair * rn * (ds - n * s / r)
        energy, forces, virial = accumulate_pairs(n_atoms, i, u, dudr, r, D)
        stress = virial_to_stress(virial, atoms.get_volume()) if has_stress(atoms) else np.zeros(6)
        return energy, forces, stress

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings; pair keys become strings such as ``"O-Si"``."""
        table = self._check_params()
        if isinstance(table, dict):
            A: Any = {pair_key_string(*p): table[p] for p in sorted(table)}
        else:
            A = table
        return {
            "kind": self.kind,
            "A": A,
            "n": float(self.n),
            "r_cut": float(self.r_cut),
            "cutoff_width": float(self.cutoff_width),
            "contact_energy": float(self.contact_energy),
            "contact_scale": float(self.contact_scale),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Repulsion":
        """Rebuild from :meth:`to_dict` output."""
        params = {k: v for k, v in d.items() if k != "kind"}
        if isinstance(params.get("A"), dict):
            params["A"] = dict(params["A"])
        return cls(**params)
