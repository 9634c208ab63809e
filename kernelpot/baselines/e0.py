"""Isolated-atom reference energies: a constant energy per atom of each element."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from ._pair_kernels import parse_species_mapping, symbol

__all__ = ["IsolatedAtomEnergies"]


class IsolatedAtomEnergies(BaseEstimator):
    """Sum of per-element constant energies, ``E = sum_i e0[Z_i]``.

    Usually the DFT energy of each isolated atom, so that the model learns
    binding energies. Forces and stress are exactly zero.

    Parameters
    ----------
    energies : dict
        Element (symbol ``"Si"`` or atomic number ``14``) -> energy per atom (eV).

    Examples
    --------
    >>> from ase.build import molecule
    >>> e0 = IsolatedAtomEnergies({"H": -13.6, "O": -432.0})
    >>> energy, forces, stress = e0.compute(molecule("H2O"))
    >>> round(energy, 6)
    -459.2
    """

    kind = "isolated_atom_energies"

    def __init__(self, energies: dict):
        self.energies = energies

    def _table(self) -> dict[int, float]:
        return parse_species_mapping(self.energies, "IsolatedAtomEnergies energies")

    def compute(self, atoms) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy (eV), forces ``(n_atoms, 3)`` (eV/Å, zero) and stress ``(6,)`` (eV/Å^3, zero).

        Raises
        ------
        ValueError
            If an element of ``atoms`` has no energy.
        """
        table = self._table()
        numbers = np.asarray(atoms.numbers)
        energy = 0.0
        for z, count in zip(*np.unique(numbers, return_counts=True)):
            if int(z) not in table:
                given = ", ".join(symbol(k) for k in sorted(table)) or "none"
                raise ValueError(
                    f"IsolatedAtomEnergies: no energy for element {symbol(z)} (Z={int(z)}) found in "
                    f"{atoms.get_chemical_formula()}; energies are given for: {given}. "
                    f"Add {symbol(z)!r} to `energies`."
                )
            energy += table[int(z)] * int(count)
        return float(energy), np.zeros((len(atoms), 3)), np.zeros(6)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings; element keys become symbols."""
        table = self._table()
        return {"kind": self.kind, "energies": {symbol(z): table[z] for z in sorted(table)}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IsolatedAtomEnergies":
        """Rebuild from :meth:`to_dict` output."""
        return cls(energies=dict(d["energies"]))
