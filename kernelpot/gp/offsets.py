"""Per-species energy offsets: isolated-atom energies ``e0`` and mean offsets ``mu``.

The local GP models energies relative to ``sum_i (e0[Z_i] + mu[Z_i])``.
``e0`` comes from isolated-atom frames (or the user); ``mu`` is the least
squares fit, on composition, of what ``e0`` and the baseline leave of the
other frames' energies (for species without an isolated-atom frame this is
their e0).
"""

from __future__ import annotations

import numpy as np

from kernelpot.io.labels import is_isolated_atom

__all__ = ["fit_offsets"]


def _e0_table(e0) -> dict:
    from ase.data import atomic_numbers
    return {int(atomic_numbers.get(k, k)) if not isinstance(k, (int, np.integer)) else int(k): float(v)
            for k, v in e0.items()}


def fit_offsets(frames, labels, species, e0, baseline_energy):
    """Isolated-atom energies and per-species mean offsets.

    Parameters
    ----------
    frames : list of ase.Atoms
    labels : list of dict
        :func:`kernelpot.io.labels.frame_labels` of each frame.
    species : sequence of int
        Atomic numbers of the model.
    e0 : "auto", None or dict
        ``{symbol or Z: eV}``; "auto" takes them from isolated-atom frames.
    baseline_energy : callable
        ``atoms -> eV``, the fixed physics subtracted before the fit.

    Returns
    -------
    e0_ : dict {Z: eV}
    mean_ : dict {Z: eV}

    Raises
    ------
    ValueError
        If ``e0`` is none of the accepted forms.
    """
    Zs = [int(z) for z in species]
    table = {}
    if isinstance(e0, dict):
        table = _e0_table(e0)
    elif e0 == "auto":
        for a, lab in zip(frames, labels):
            if is_isolated_atom(a) and "energy" in lab:
                table.setdefault(int(a.numbers[0]), lab["energy"] - baseline_energy(a))
    elif e0 is not None:
        raise ValueError(f"e0 must be 'auto', None or a dict {{element: eV}}, got {e0!r}")
    e0_ = {z: table.get(z, 0.0) for z in Zs}
    rows, ys = [], []
    for a, lab in zip(frames, labels):
        if "energy" in lab and not is_isolated_atom(a):
            comp = np.array([np.sum(a.numbers == z) for z in Zs], float)
            rows.append(comp)
            ys.append(lab["energy"] - baseline_energy(a) - sum(e0_[z] * c for z, c in zip(Zs, comp)))
    mu = np.zeros(len(Zs))
    if rows:
        mu = np.linalg.lstsq(np.array(rows), np.array(ys), rcond=None)[0]
    return e0_, {z: float(m) for z, m in zip(Zs, mu)}
