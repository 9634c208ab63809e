"""Per-species energy offsets: isolated-atom energies ``e0`` and mean offsets ``mu``.

The local GP models energies relative to ``sum_i (e0[Z_i] + mu[Z_i])``.
``e0`` comes from isolated-atom frames (or the user); ``mu`` is the
minimum-norm least-squares fit, on composition, of what ``e0`` and the
baseline leave of the other frames' energies (for species without an
isolated-atom frame this is their e0).

``mu`` is only the prior mean of the offsets.  The fit treats a correction
``b[Z]`` per species and atom as Bayesian parameters with prior
``N(0, (kappa delta)^2)``, estimated jointly with the GP weights (extra
columns of the energy observations: the number of atoms of each species;
:mod:`kernelpot.gp.assembly`, :mod:`kernelpot.gp.posterior`).  Directions of
composition space that the training energies determine are then fitted as
before, and the ones they do not -- every structure of Cu3Au has three Cu per
Au, so Cu and Au offsets cannot be told apart -- keep their prior variance,
which enters every energy sigma of a structure with another composition.
``kappa = 1``: a species' offset is a priori as uncertain as one local
energy (``delta``).  :func:`composition_null_space` names the species that
cannot be separated; ``SparseGP.fit`` warns with it.
"""

from __future__ import annotations

import numpy as np

from kernelpot.io.labels import is_isolated_atom

__all__ = ["fit_offsets", "composition_matrix", "composition_null_space", "offset_column", "OFFSET_KAPPA"]

OFFSET_KAPPA = 1.0
#: Isolated-atom energies of one element that differ by more than this (eV) are reported.
ISOLATED_ATOL = 1e-3


def offset_column(numbers, species, kappa: float) -> np.ndarray:
    """Design column of the offset parameters in a total energy: ``kappa`` times the atom count of each species, (S,)."""
    numbers = np.asarray(numbers)
    return kappa * np.array([np.sum(numbers == z) for z in species], float)


def _e0_table(e0) -> dict:
    """``{Z: eV}`` from ``{symbol or Z: eV}``; a key that is no element or a value that is no finite number raises."""
    from ase.data import atomic_numbers, chemical_symbols
    out = {}
    for k, v in e0.items():
        z = int(k) if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else atomic_numbers.get(k)
        if z is None or not 0 < z < len(chemical_symbols):
            raise ValueError(f"e0: {k!r} is not an element (keys are element symbols such as 'Cu' or atomic "
                             "numbers)")
        if z in out:
            raise ValueError(f"e0: {chemical_symbols[z]} is given twice (as {chemical_symbols[z]!r} and {z})")
        number = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        out[z] = float(v) if number else float("nan")
        if not np.isfinite(out[z]):
            raise ValueError(f"e0: the energy of {chemical_symbols[z]} must be a finite number of eV, got {v!r}")
    return out


def _isolated_energies(frames, labels, baseline_energy) -> dict:
    """``{Z: eV}`` from the isolated-atom frames; the first of each element, with a warning where they disagree."""
    import warnings
    from ase.data import chemical_symbols
    from kernelpot.io.labels import DataWarning
    found = {}
    for i, (a, lab) in enumerate(zip(frames, labels)):
        if is_isolated_atom(a) and "energy" in lab:
            found.setdefault(int(a.numbers[0]), []).append((i, lab["energy"] - baseline_energy(a)))
    for z, refs in found.items():
        e = np.array([x for _, x in refs])
        if np.ptp(e) > ISOLATED_ATOL:
            warnings.warn(f"fit: the isolated-atom frames of {chemical_symbols[z]} disagree: frames "
                          f"{[i for i, _ in refs][:10]} have energies {np.round(e[:10], 4).tolist()} eV (spread "
                          f"{np.ptp(e):.3g} eV, e.g. another DFT setting or spin state); e0 uses the first, frame "
                          f"{refs[0][0]}. Keep one reference per element or pass e0={{...}}.", DataWarning,
                          stacklevel=4)
    return {z: refs[0][1] for z, refs in found.items()}


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
        missing, extra = [z for z in Zs if z not in table], [z for z in table if z not in Zs]
        if missing or extra:
            import warnings
            from ase.data import chemical_symbols
            from kernelpot.io.labels import DataWarning
            sym = lambda zs: [chemical_symbols[z] for z in zs]  # noqa: E731
            warnings.warn("fit: e0 " + "; ".join(
                ([f"gives no energy for {sym(missing)}, which the training frames contain: taken as 0 (their "
                  "offsets are fitted on composition)"] if missing else [])
                + ([f"names {sym(extra)}, which no training frame contains (a typo?)"] if extra else [])),
                DataWarning, stacklevel=3)
    elif e0 == "auto":
        table = _isolated_energies(frames, labels, baseline_energy)
    elif e0 is not None:
        raise ValueError(f"e0 must be 'auto', None or a dict {{element: eV}}, got {e0!r}")
    e0_ = {z: table.get(z, 0.0) for z in Zs}
    A = composition_matrix(frames, labels, Zs)
    ys = [lab["energy"] - baseline_energy(a) - sum(e0_[z] * np.sum(a.numbers == z) for z in Zs)
          for a, lab in zip(frames, labels) if "energy" in lab and not is_isolated_atom(a)]
    mu = np.zeros(len(Zs))
    if len(ys):
        mu = np.linalg.lstsq(A, np.array(ys), rcond=None)[0]
    return e0_, {z: float(m) for z, m in zip(Zs, mu)}


def composition_matrix(frames, labels, species) -> np.ndarray:
    """Atoms of each species (columns, in ``species`` order) in every frame with an energy, isolated atoms excluded.

    Returns
    -------
    (n_frames_with_energy, n_species) float array
    """
    Zs = [int(z) for z in species]
    rows = [[np.sum(a.numbers == z) for z in Zs] for a, lab in zip(frames, labels)
            if "energy" in lab and not is_isolated_atom(a)]
    return np.array(rows, float).reshape(len(rows), len(Zs))


def composition_null_space(A: np.ndarray, species, tol: float = 1e-8) -> list:
    """Combinations of per-species offsets that the energies with composition matrix ``A`` do not determine.

    Parameters
    ----------
    A : (n_frames, n_species) array
        From :func:`composition_matrix`.
    species : sequence of int

    Returns
    -------
    list of dict
        One ``{symbol: coefficient}`` per undetermined direction (unit norm,
        coefficients below 1e-6 dropped); empty when the offsets are all determined.
    """
    from ase.data import chemical_symbols
    S = len(species)
    if A.size == 0:
        vs = np.eye(S)
    else:
        _, sv, vt = np.linalg.svd(A, full_matrices=True)
        rank = int(np.sum(sv > tol * max(sv.max(initial=0.0), 1.0)))
        vs = vt[rank:]
    return [{chemical_symbols[int(z)]: float(round(c, 6)) for z, c in zip(species, v) if abs(c) > 1e-6}
            for v in vs]
