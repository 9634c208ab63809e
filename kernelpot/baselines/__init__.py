"""Fixed physics baselines subtracted from the labels before the GP is fitted.

Every baseline has

``compute(atoms) -> (energy, forces, stress)``
    energy (eV), forces ``(n_atoms, 3)`` (eV/Å), stress ``(6,)`` in ASE Voigt order
    ``xx yy zz yz xz xy`` (eV/Å^3, ``(1/V) dE/d strain``, negative under compression; zeros
    when no direction is periodic). All three are exact analytic derivatives of one energy.
``to_dict() -> dict``
    JSON-serialisable settings with a ``"kind"`` key; :func:`from_dict` rebuilds the baseline.

=========================  =======================  ==============================================
kind                       class                    energy
=========================  =======================  ==============================================
``isolated_atom_energies``  :class:`IsolatedAtomEnergies`  per-element constants
``repulsion``              :class:`Repulsion`       ``A_ab / r^n`` with a smooth cutoff
``zbl``                    :class:`ZBL`             ZBL screened nuclear repulsion, switched off
``ewald``                  :class:`Ewald`           fixed point charges (Ewald / direct Coulomb)
``sum``                    :class:`Sum`             sum of other baselines
=========================  =======================  ==============================================
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from .e0 import IsolatedAtomEnergies
from .ewald import Ewald
from .repulsion import Repulsion, covalent_prefactor
from .zbl import ZBL

__all__ = [
    "IsolatedAtomEnergies",
    "Repulsion",
    "ZBL",
    "Ewald",
    "Sum",
    "from_dict",
    "covalent_prefactor",
]


class Sum(BaseEstimator):
    """Sum of baselines: energies, forces and stresses add.

    Parameters
    ----------
    baselines : list
        Baseline objects (anything with ``compute`` and ``to_dict``), possibly nested sums.

    Examples
    --------
    >>> from ase.build import molecule
    >>> total = Sum([IsolatedAtomEnergies({"H": -13.6, "O": -432.0}), ZBL()])
    >>> energy, forces, stress = total.compute(molecule("H2O"))
    >>> round(energy, 6)
    -459.2
    """

    kind = "sum"

    def __init__(self, baselines: list):
        self.baselines = baselines

    def _check_params(self) -> list:
        if not isinstance(self.baselines, (list, tuple)):
            raise ValueError(
                f"Sum: baselines must be a list of baseline objects, got {type(self.baselines).__name__}"
            )
        for k, b in enumerate(self.baselines):
            if not (callable(getattr(b, "compute", None)) and callable(getattr(b, "to_dict", None))):
                raise TypeError(
                    f"Sum: baselines[{k}] ({type(b).__name__}) is not a baseline; it needs "
                    "compute(atoms) and to_dict() methods"
                )
        return list(self.baselines)

    def compute(self, atoms) -> tuple[float, np.ndarray, np.ndarray]:
        """Summed energy (eV), forces ``(n_atoms, 3)`` (eV/Å) and stress ``(6,)`` (eV/Å^3)."""
        energy = 0.0
        forces = np.zeros((len(atoms), 3))
        stress = np.zeros(6)
        for b in self._check_params():
            e, f, s = b.compute(atoms)
            energy += float(e)
            forces += f
            stress += s
        return energy, forces, stress

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": "sum", "baselines": [child.to_dict(), ...]}``."""
        return {"kind": self.kind, "baselines": [b.to_dict() for b in self._check_params()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sum":
        """Rebuild from :meth:`to_dict` output, children included."""
        return cls([from_dict(child) for child in d["baselines"]])


_KINDS = {cls.kind: cls for cls in (IsolatedAtomEnergies, Repulsion, ZBL, Ewald, Sum)}


def from_dict(d: dict[str, Any]):
    """Rebuild any baseline from the output of its ``to_dict``.

    Parameters
    ----------
    d : dict
        With a ``"kind"`` key naming the baseline.

    Returns
    -------
    IsolatedAtomEnergies, Repulsion, ZBL, Ewald or Sum

    Examples
    --------
    >>> zbl = from_dict({"kind": "zbl", "r_inner": 0.5, "r_outer": 1.0})
    >>> zbl.r_outer
    1.0
    """
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"from_dict: expected a dict with a 'kind' key, got {d!r:.200}")
    kind = d["kind"]
    if kind not in _KINDS:
        raise ValueError(f"from_dict: unknown baseline kind {kind!r}; known kinds: {', '.join(sorted(_KINDS))}")
    return _KINDS[kind].from_dict(d)
