"""Unit ratios of DFT labels, and which slip a factor between a label and its prediction names.

Shared by the per-structure diagnosis (:mod:`kernelpot.uq.diagnosis`) and the
whole-group convention check (:mod:`kernelpot.gp.conventions`).  Factors are
label over true value: energies in Hartree read as eV are ``1/27.2`` of the
truth.  Constants: CODATA 2018 (as in ``ase.units``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["UNIT_FACTORS", "GPA", "BOHR", "unit_slip"]

_HARTREE, _RYDBERG, _KCAL, _KJ = 27.211386, 13.605693, 23.060548, 96.485332  # per eV
BOHR = 0.52917721  # Å
GPA = 0.006241509125883258  # eV/Å^3 (ase.units.GPa)
#: label -> {factor label/true: description}; the nearest factor counts when within half the
#: smallest log-gap between the label's factors (8 % for energies, 20 % for forces and stress).
UNIT_FACTORS = {
    "energy": {1 / _HARTREE: "Hartree read as eV", _HARTREE: "eV read as Hartree",
               1 / _RYDBERG: "Rydberg read as eV", _RYDBERG: "eV read as Rydberg",
               _KCAL: "kcal/mol read as eV", 1 / _KCAL: "eV read as kcal/mol",
               _KJ: "kJ/mol read as eV", 1 / _KJ: "eV read as kJ/mol"},
    "forces": {1 / (_HARTREE / BOHR): "Hartree/Bohr read as eV/Å", _HARTREE / BOHR: "eV/Å read as Hartree/Bohr",
               BOHR: "eV/Bohr read as eV/Å", 1 / BOHR: "eV/Å read as eV/Bohr",
               _KCAL: "kcal/mol/Å read as eV/Å", 1 / _KCAL: "eV/Å read as kcal/mol/Å"},
    "stress": {10.0: "kBar read as GPa", 0.1: "GPa read as kBar", 160.21766: "eV/Å^3 read as GPa",
               1 / 160.21766: "GPa read as eV/Å^3", 1602.1766: "kBar read as eV/Å^3",
               1 / 1602.1766: "eV/Å^3 read as kBar", 1e4: "bar read as GPa", 1e3: "bar read as kBar"},
}


def _unit_tolerance(kind: str) -> float:
    """Half the smallest log-ratio between the kind's unit factors, at most 0.2 (~20 %)."""
    f = np.sort(np.log(np.array(list(UNIT_FACTORS[kind]))))
    return float(min(0.2, 0.5 * np.min(np.diff(f))))


def unit_slip(kind: str, c: float, cos: float) -> str | None:
    """The unit slip nearest to the factor ``c = label / true`` (in log ratio), if within the kind's tolerance.

    Parameters
    ----------
    kind : {"energy", "forces", "stress"}
    c : float
        Least-squares factor of the labels on the predictions.
    cos : float
        Cosine between labels and predictions: below 0.9 the labels are not
        a rescaled prediction (energies exempt: one number per structure).

    Returns
    -------
    str or None
        ``"unit slip (kBar read as GPa, x10)"``, or None.
    """
    if not np.isfinite(c) or c <= 0 or (cos < 0.9 and kind != "energy"):
        return None
    facs = list(UNIT_FACTORS[kind].items())
    dist = [abs(np.log(c / f)) for f, _ in facs]
    k = int(np.argmin(dist))
    if dist[k] < _unit_tolerance(kind):
        f, what = facs[k]
        return f"unit slip ({what}, x{f:.3g})"
    return None
