"""Reference labels of training frames, read the ASE way.

Labels live on each frame's calculator (normally a SinglePointCalculator made by
:func:`kernelpot.read`).  This module is the single place where the GP looks
them up, so the rules (what counts as present, which frames have a usable
stress) are written once.
"""

from __future__ import annotations

import numpy as np

__all__ = ["frame_labels", "is_periodic", "is_isolated_atom", "config_type"]


def is_periodic(atoms) -> bool:
    """True when all three directions are periodic with a non-degenerate cell."""
    return bool(np.all(atoms.pbc)) and abs(atoms.cell.volume) > 1e-8


def is_isolated_atom(atoms) -> bool:
    """A single atom with no neighbours: its energy is an isolated-atom reference."""
    return len(atoms) == 1 and (not is_periodic(atoms)
                                or atoms.info.get("config_type", "") in ("isolated_atom", "IsolatedAtom"))


def config_type(atoms, default: str = "default") -> str:
    return str(atoms.info.get("config_type", default))


def frame_labels(atoms, index: int | None = None) -> dict:
    """Available reference labels of one frame.

    Returns
    -------
    dict with any of ``"energy"`` (float, eV), ``"forces"`` ((n, 3), eV/Å),
    ``"stress"`` ((6,), eV/Å^3, ASE Voigt order; only for periodic frames).
    """
    calc = atoms.calc
    out = {}
    if calc is None:
        return out
    res = getattr(calc, "results", {})
    if "energy" in res and res["energy"] is not None:
        out["energy"] = float(res["energy"])
    elif "free_energy" in res and res["free_energy"] is not None:
        out["energy"] = float(res["free_energy"])
    if res.get("forces") is not None:
        f = np.asarray(res["forces"], dtype=float)
        if f.shape != (len(atoms), 3):
            where = f"frame {index}" if index is not None else "frame"
            raise ValueError(f"{where} ({config_type(atoms)!r}): forces have shape {f.shape}, "
                             f"expected ({len(atoms)}, 3)")
        out["forces"] = f
    if res.get("stress") is not None and is_periodic(atoms):
        s = np.asarray(res["stress"], dtype=float)
        if s.shape == (3, 3):
            s = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        if s.shape != (6,):
            where = f"frame {index}" if index is not None else "frame"
            raise ValueError(f"{where} ({config_type(atoms)!r}): stress has shape {s.shape}, expected (6,) or (3, 3)")
        out["stress"] = s
    return out
