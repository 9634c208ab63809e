"""Array helpers shared by the pair baselines (repulsion, ZBL, Ewald real space).

Everything here takes and returns plain arrays; no ASE objects beyond what the
neighbour-list wrapper needs. The sums are vectorised numpy (``np.bincount``):
a numba version was not worth its compile time (accumulating 10^5 pairs takes
about 1 ms; the ASE neighbour list itself costs far more).

Pair conventions
----------------
Neighbour lists are *full*: every ordered pair ``(i, j, shift)`` with
``r_ij < cutoff`` appears, including periodic images of ``i`` itself. ``D`` is the
vector from atom ``i`` to the image of atom ``j`` (Å). For a pair energy ``u(r)``
the total energy is ``E = 1/2 sum u(r)`` over the full list.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

#: e^2 / (4 pi eps0) in eV Å, the value fixed by the kernelpot spec. ``ase.units.Hartree *
#: ase.units.Bohr`` gives 14.3996454784 (CODATA 2014), 3e-8 relative away.
COULOMB_CONSTANT = 14.399645

__all__ = [
    "COULOMB_CONSTANT",
    "atomic_number",
    "symbol",
    "parse_species_mapping",
    "parse_pair_key",
    "pair_key_string",
    "neighbor_pairs",
    "accumulate_pairs",
    "virial_to_stress",
    "has_stress",
    "smooth_switch",
]


def atomic_number(value: object, parameter: str) -> int:
    """Atomic number of an element given by symbol (``"Si"``) or number (``14``).

    Strings of digits (``"14"``, as JSON object keys come back) are accepted too.

    Raises
    ------
    ValueError
        Naming ``parameter`` and the offending value.
    """
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{parameter}: {value!r} is not an element; give a symbol such as 'Si' or an atomic number such as 14")
    if isinstance(value, (Integral, np.integer)):
        z = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            z = int(text)
        elif text in atomic_numbers and atomic_numbers[text] > 0:
            z = atomic_numbers[text]
        else:
            raise ValueError(
                f"{parameter}: unknown element {value!r}; give a chemical symbol such as 'Si' "
                "(case-sensitive) or an atomic number such as 14"
            )
    else:
        raise ValueError(
            f"{parameter}: {value!r} (type {type(value).__name__}) is not an element; "
            "give a chemical symbol such as 'Si' or an atomic number such as 14"
        )
    if not 1 <= z < len(chemical_symbols):
        raise ValueError(f"{parameter}: atomic number {z} is out of range; allowed 1..{len(chemical_symbols) - 1}")
    return z


def symbol(z: int) -> str:
    """Chemical symbol of atomic number ``z``."""
    return chemical_symbols[int(z)]


def parse_species_mapping(mapping: object, parameter: str) -> dict[int, float]:
    """Validate ``{element: float}`` and return it keyed by atomic number.

    Raises
    ------
    ValueError
        If ``mapping`` is not a dict, a key is not an element, a key is given twice
        (``"Si"`` and ``14``) or a value is not a finite number.
    """
    if not isinstance(mapping, dict):
        raise ValueError(
            f"{parameter}: expected a dict mapping element (symbol or atomic number) to a number, "
            f"got {type(mapping).__name__}"
        )
    out: dict[int, float] = {}
    for key, value in mapping.items():
        z = atomic_number(key, f"{parameter} key")
        if z in out:
            raise ValueError(f"{parameter}: element {symbol(z)} (Z={z}) is given twice (key {key!r})")
        out[z] = _finite_float(value, f"{parameter}[{key!r}]")
    return out


def _finite_float(value: object, parameter: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{parameter}: expected a number, got {value!r}") from None
    if not np.isfinite(x):
        raise ValueError(f"{parameter}: expected a finite number, got {value!r}")
    return x


def parse_pair_key(key: object, parameter: str) -> tuple[int, int]:
    """Species pair from ``("Si", "O")``, ``(14, 8)`` or ``"Si-O"``; sorted by atomic number."""
    if isinstance(key, str):
        parts = key.split("-")
    elif isinstance(key, (tuple, list)):
        parts = list(key)
    else:
        parts = []
    if len(parts) != 2:
        raise ValueError(
            f"{parameter}: pair key {key!r} is not a species pair; use a tuple such as ('Si', 'O') "
            "or (14, 8), or a string such as 'Si-O'"
        )
    za = atomic_number(parts[0], f"{parameter} key {key!r}")
    zb = atomic_number(parts[1], f"{parameter} key {key!r}")
    return (za, zb) if za <= zb else (zb, za)


def pair_key_string(za: int, zb: int) -> str:
    """Canonical JSON key of a species pair, lighter element first: ``"O-Si"``."""
    za, zb = sorted((int(za), int(zb)))
    return f"{symbol(za)}-{symbol(zb)}"


def has_stress(atoms) -> bool:
    """Whether a stress is defined: some periodic direction and a 3-D cell (volume > 0)."""
    return bool(np.any(atoms.pbc)) and atoms.cell.rank == 3


def check_cell(atoms, owner: str) -> None:
    """Every periodic direction needs a non-zero cell vector."""
    lengths = atoms.cell.lengths()
    for axis in range(3):
        if atoms.pbc[axis] and lengths[axis] == 0.0:
            raise ValueError(
                f"{owner}: atoms are periodic along axis {axis} but cell vector {axis} is zero; "
                "set a cell or make that direction non-periodic"
            )


def neighbor_pairs(atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list within ``cutoff`` (Å), any cell shape and periodicity.

    Returns
    -------
    i, j : (n_pairs,) int64
        Atom indices; ``j`` is folded into the cell.
    r : (n_pairs,) float64
        Distances (Å).
    D : (n_pairs, 3) float64
        Vectors from ``i`` to the image of ``j`` (Å).
    """
    from ase.neighborlist import neighbor_list

    if len(atoms) == 0 or cutoff <= 0.0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0), np.zeros((0, 3))
    i, j, r, D = neighbor_list("ijdD", atoms, float(cutoff))
    return i.astype(np.int64), j.astype(np.int64), np.asarray(r, float), np.asarray(D, float)


def accumulate_pairs(
    n_atoms: int, i: np.ndarray, u: np.ndarray, dudr: np.ndarray, r: np.ndarray, D: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy, forces and virial of a pair potential over a full neighbour list.

    Parameters
    ----------
    n_atoms : int
    i : (n_pairs,) int
        Centre index of each ordered pair.
    u, dudr : (n_pairs,) float
        Pair energy (eV) and its radial derivative (eV/Å) at each pair.
    r : (n_pairs,) float
        Pair distance (Å), > 0.
    D : (n_pairs, 3) float
        Vector from ``i`` to the neighbour image (Å).

    Returns
    -------
    energy : float
        ``1/2 sum u`` (eV).
    forces : (n_atoms, 3) float
        ``F_i = sum_j u'(r_ij) D_ij / r_ij`` (eV/Å). Each unordered pair appears twice in
        a full list, once per end, so the force on ``j`` comes from its own entry.
    virial : (3, 3) float
        ``dE/d eps = 1/2 sum u'(r) D D^T / r`` (eV), symmetric.
    """
    energy = 0.5 * float(np.sum(u))
    g = dudr / r
    gD = g[:, None] * D
    forces = np.empty((n_atoms, 3))
    for a in range(3):
        forces[:, a] = np.bincount(i, weights=gD[:, a], minlength=n_atoms)
    virial = 0.5 * (gD.T @ D)
    return energy, forces, virial


def virial_to_stress(virial: np.ndarray, volume: float) -> np.ndarray:
    """ASE Voigt stress ``(xx, yy, zz, yz, xz, xy) = dE/d eps / V`` (eV/Å^3) from a 3x3 ``dE/d eps``."""
    s = 0.5 * (virial + virial.T) / volume
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def smooth_switch(r: np.ndarray, r_on: np.ndarray, r_off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quintic switch ``S(r)`` from 1 (``r <= r_on``) to 0 (``r >= r_off``) and ``dS/dr``.

    ``S = 1 - 10 t^3 + 15 t^4 - 6 t^5`` with ``t = (r - r_on) / (r_off - r_on)`` clipped to
    [0, 1]. Value, first and second derivatives are continuous at both ends (C2), so
    energies and forces are continuous and the force has no kink.

    Parameters
    ----------
    r, r_on, r_off : arrays broadcastable to one shape (Å); ``r_off > r_on``.

    Returns
    -------
    S : array, dimensionless
    dSdr : array (1/Å)
    """
    width = r_off - r_on
    t = np.clip((r - r_on) / width, 0.0, 1.0)
    t2 = t * t
    u = 1.0 - t
    # (1-t)^3 (1 + 3t + 6t^2) is the same polynomial, without cancellation near t = 1
    s = u * u * u * (1.0 + 3.0 * t + 6.0 * t2)
    ds = -30.0 * t2 * u * u / width
    return s, ds
