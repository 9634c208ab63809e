"""What a label is: the one definition used by ``read``, ``validate``, ``fit`` and ``predict``.

Labels live on each frame's calculator (normally a SinglePointCalculator made by
:func:`kernelpot.read`).  This module is the single place where every layer
looks them up, so the rules (which keys, which shapes and units, which energy,
which frames have a usable stress, what a structure must satisfy before a
model sees it) are written once.

=================  ==========================  ======================================================
label              shape, unit                 accepted as
=================  ==========================  ======================================================
``energy``         scalar, eV, total           ``free_energy`` if present, else ``energy`` (below)
``forces``         ``(n_atoms, 3)``, eV/Å      any float dtype (float32 is cast to float64)
``stress``         ``(6,)``, eV/Å^3, ASE sign  ``(6,)`` Voigt ``xx yy zz yz xz xy``, ``(3, 3)`` or ``(9,)``;
                                               only used for frames periodic in all three directions
=================  ==========================  ======================================================

Which energy
------------
With electronic smearing (Fermi-Dirac, Methfessel-Paxton, ...) DFT codes
report the force as the derivative of the *free* energy ``E - TS``, not of the
total energy: VASP's OUTCAR "free energy TOTEN" is the quantity consistent with
its forces, and ASE's VASP/Quantum ESPRESSO readers store it as ``free_energy``
beside ``energy`` (the ``sigma -> 0`` extrapolation).  A potential fitted to
energies and forces must fit one function and its derivatives, so kernelpot
fits ``free_energy`` whenever a frame has it.  :func:`kernelpot.validate` (and
so ``SparseGP.fit``) warns when both are present and differ.

Noise given in the data (GAP conventions)
-----------------------------------------
:func:`frame_noise` reads per-frame and per-atom noise the way GAP users write
it in extended XYZ files:

========================  =============  ==========================================================
key                       where, unit    meaning
========================  =============  ==========================================================
``energy_sigma``          info, eV       noise of the **total** energy of the frame (GAP: per
                                         structure); kernelpot's ``sigma_energy`` is per atom, so
                                         it corresponds to ``energy_sigma = n_atoms * sigma_energy``
``force_sigma``           info, eV/Å     noise of every force component of the frame
``force_atom_sigma``      arrays, eV/Å   per atom (overrides ``force_sigma``)
``stress_sigma``          info, eV/Å^3   noise of every stress component
``virial_sigma``          info, eV       GAP's virial noise; ``stress_sigma = virial_sigma / V``
``force_mask``            arrays, bool   GAP: nonzero = this atom's forces are **not** fitted
ASE ``FixAtoms``          constraints    (extxyz ``move_mask`` False) forces of fixed atoms are not
                                         fitted: writers often store the constrained (zeroed) forces
========================  =============  ==========================================================

How the fit uses them is documented in :func:`kernelpot.gp.assembly.training_rows`; a sigma
below :data:`NOISE_FLOOR` is fitted at the floor (validation warns).
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["DataWarning", "frame_labels", "training_fingerprint", "same_fingerprint", "parse_labels", "frame_noise", "floor_noise",
           "structure_errors", "check_structure", "frame_name", "is_periodic", "is_isolated_atom", "says_isolated_atom", "config_type",
           "energy_conflict", "OVERLAP_DISTANCE", "LABEL_UNITS", "overlapping_pairs", "overlap_message",
           "ENERGY_KEYS", "FORCES_KEYS", "STRESS_KEYS", "VIRIAL_KEYS", "NOISE_KEYS", "NOISE_FLOOR", "looks_like_label", "relabelled"]

VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")

#: Prefixes and suffixes codes write around a label's name (QUIP/GAP ``REF_energy``, GAP-18's
#: ``dft_force``, ``forces_dft``, ...).
_LABEL_PREFIXES = ("REF_", "DFT_", "dft_", "ref_", "QM_", "qm_")
_LABEL_SUFFIXES = ("_dft", "_ref", "_DFT", "_REF")


def _spellings(*stems) -> tuple:
    """``stems[0]``, then every prefixed, then every suffixed spelling of each stem, each once."""
    out = [stems[0]]
    out += [p + s for s in stems for p in _LABEL_PREFIXES]
    out += [s + x for s in stems for x in _LABEL_SUFFIXES]
    return tuple(dict.fromkeys(out + list(stems[1:])))


#: Keys recognised by :func:`kernelpot.read` when no ``energy_key``/... is given, in order of
#: preference (the first present is used; the standard ASE name always wins): the standard name, then
#: the same name (singular or plural) with a ``REF_``/``DFT_``/``QM_`` prefix or ``_dft``/``_ref`` suffix.
ENERGY_KEYS = _spellings("energy") + ("TotEnergy",)
FORCES_KEYS = _spellings("forces", "force")
STRESS_KEYS = _spellings("stress")
VIRIAL_KEYS = _spellings("virial")
#: Noise and mask keys of :func:`frame_noise` (never mistaken for labels).
NOISE_KEYS = ("energy_sigma", "force_sigma", "force_atom_sigma", "virial_sigma", "stress_sigma",
              "hessian_sigma", "force_mask")
#: Smallest noise a label is fitted with: energy per atom (eV; a frame's ``energy_sigma`` is floored at
#: ``n_atoms`` times it), forces (eV/Å), stress (eV/Å^3).  Below it DFT labels are not reproducible
#: anyway; a learned noise stops there (:mod:`kernelpot.gp.hyperparameters`) and so does a sigma given
#: in the data, where GAP's habit of ``energy_sigma = 1e-6`` on one structure would weigh its label
#: ~1e10 times the rest and leave the posterior and its leave-one-out singular to rounding.
NOISE_FLOOR = {"energy": 1e-4, "forces": 1e-3, "stress": 1e-5}
_LABEL_WORDS = ("energy", "force", "forces", "stress", "virial")
_NOT_LABEL_WORDS = ("sigma", "std", "mask", "weight", "weights", "epistemic", "pred", "predicted", "local",
                    "unused", "error", "err", "uncertainty", "var", "variance")

#: Å. Two atoms (or an atom and a periodic image of itself or of another atom) closer than this
#: overlap: the structure is certainly broken (duplicated atoms, a wrapping or unit error), not a
#: short contact. The shortest bond there is (H2) is 0.74 Å, and a DFT dimer scan of the repulsive
#: wall rarely goes below 0.3-0.5 Å; :func:`kernelpot.validate` can be told to accept H-H at
#: 0.2 Å (``min_distance``), so this stays well below that. Used by fit, predict and validate alike,
#: with no switch to turn it off.
OVERLAP_DISTANCE = 0.1
#: Å. A coordinate beyond this is no structure (vacuum boxes of 1000 Å are read; 1e300 was, as an isolated
#: atom with zero force): a unit or parsing slip. Checked by fit, predict and validate alike.
MAX_COORDINATE = 1e6
#: A one-atom frame whose nearest periodic image is closer than this (Å) is not an isolated atom:
#: beyond any bond and the default SOAP cut-off (5 Å); DFT isolated-atom boxes are 10 Å or more.
ISOLATION_DISTANCE = 6.0
#: Units of each kind in messages (energies per atom).
LABEL_UNITS = {"energy": "eV/atom", "forces": "eV/Å", "stress": "eV/Å^3"}

#: More periodic image shifts than this means a cell so thin (lattice planes ~1e-4 Å apart) that
#: the overlap search itself could exhaust memory; such a cell is reported instead of searched.
#: An ordinary cell needs 27.
_MAX_IMAGE_SHIFTS = 1000

#: relative difference below which energy and free_energy count as equal (no smearing)
_ENERGY_RTOL = 1e-9
_ENERGY_ATOL = 1e-6  # eV


class DataWarning(UserWarning):
    """A suspicious but possibly intended value or key in training data (see :func:`kernelpot.validate`)."""


def looks_like_label(name: str) -> bool:
    """True for a key that reads like a reference label (``REF_forces``, ``dft_energy``, ...)."""
    if name in NOISE_KEYS:
        return False
    parts = str(name).lower().replace("-", "_").split("_")
    # predictions, uncertainties, weights and per-atom energies are not reference labels
    if any(p in _NOT_LABEL_WORDS for p in parts):
        return False
    return any(p in _LABEL_WORDS for p in parts)


def is_periodic(atoms) -> bool:
    """True when all three directions are periodic with a non-degenerate cell."""
    return bool(np.all(atoms.pbc)) and abs(atoms.cell.volume) > 1e-8


def shortest_image_distance(atoms) -> float:
    """Distance (Å) from an atom to its nearest periodic image; ``inf`` without periodic directions.

    The lattice spanned by the periodic cell vectors is Minkowski-reduced
    (:func:`ase.geometry.minkowski_reduce`) first, so a skewed cell gives its
    true shortest translation.  A periodic direction with a zero cell vector
    gives 0 (a degenerate cell, reported by :func:`structure_errors`).
    """
    pbc = np.asarray(atoms.pbc, bool)
    if not pbc.any():
        return float("inf")
    cell = np.asarray(atoms.cell[:], float)
    if np.any(np.linalg.norm(cell[pbc], axis=1) < 1e-8):
        return 0.0
    try:
        from ase.geometry import minkowski_reduce
        cell = np.asarray(minkowski_reduce(atoms.cell.complete(), pbc=pbc)[0], float)
    except Exception:  # noqa: BLE001 -- a cell the reduction cannot take: search the given vectors
        pass
    P = cell[pbc]
    shifts = np.array([n for n in itertools.product((-1, 0, 1), repeat=len(P)) if any(n)], float)
    return float(np.linalg.norm(shifts @ P, axis=1).min())


def neighbour_ratio(atoms, reach: float = 3.0) -> float:
    """Median over the atoms of the nearest-neighbour distance over the pair's covalent radii sum.

    About 1 in any bonded structure (molecule, crystal, liquid, surface slab:
    1.0-1.2 for covalent solids and molecules, ~1.2 for metals), whatever the
    element, cell size or vacuum, so a structure whose value is far from the
    rest of its data set has positions in another length unit or fractional
    coordinates read as Cartesian.  Radii: ``ase.data.covalent_radii``
    (Cordero et al. 2008).

    Parameters
    ----------
    atoms : ase.Atoms
    reach : float, default 3.0
        Neighbours are searched up to ``reach`` times the largest radii sum of
        the structure; an atom with none is counted at ``reach``.

    Returns
    -------
    float
        The median ratio; NaN for a single atom without periodic neighbours
        within reach (an isolated-atom reference).

    Examples
    --------
    >>> from ase.build import bulk
    >>> round(neighbour_ratio(bulk("Si", "diamond", a=5.43)), 2)
    1.06
    """
    from ase.data import covalent_radii
    from kernelpot.descriptors.neighbors import neighbor_list
    z = atoms.numbers
    rc = covalent_radii[z]
    best = np.full(len(atoms), float(reach))
    # bonded neighbours lie within ~1.3 radii sums: search there first (cheap), and out to ``reach``
    # only when an atom has none (a scaled structure), where neighbour lists grow with the cube
    for factor in (1.5, reach):
        nl = neighbor_list(atoms, float(factor * 2.0 * rc.max()))
        i = nl.centers
        if i.size:
            r = np.linalg.norm(nl.vectors, axis=1) / (rc[i] + rc[nl.neighbors])
            np.minimum.at(best, i, r)
        if np.all(best < factor) or factor == reach:
            break
    if len(atoms) == 1 and best[0] >= reach:
        return np.nan
    return float(np.median(best))


def is_isolated_atom(atoms) -> bool:
    """A single atom with no neighbour: its energy is an isolated-atom reference (the energy offsets' ``e0``).

    One atom counts when no periodic image lies within :data:`ISOLATION_DISTANCE`
    and, for a cell periodic in all three directions (a DFT box), when its
    ``config_type`` says so (:func:`says_isolated_atom`: ``isolated_atom``, GAP's ``IsolatedAtom``, ...).  A
    one-atom cell periodic in one or two directions with close images (a
    monolayer, a chain) is a structure, not a reference: counted as one it set
    ``e0`` of copper to a (111) monolayer's energy, 0.76 eV instead of 3.51.
    """
    if len(atoms) != 1 or shortest_image_distance(atoms) < ISOLATION_DISTANCE:
        return False
    return not is_periodic(atoms) or says_isolated_atom(atoms)


def says_isolated_atom(atoms) -> bool:
    """Whether the frame's ``config_type`` names an isolated atom, in any of its spellings
    (``isolated_atom``, GAP's ``IsolatedAtom``, ``Isolated_Atoms``, ``isolated-atom``, ...)."""
    name = str(atoms.info.get("config_type", "")).lower().replace("_", "").replace("-", "").replace(" ", "")
    return name in ("isolatedatom", "isolatedatoms")


def config_type(atoms, default: str = "default") -> str:
    return str(atoms.info.get("config_type", default))


def frame_name(index: int | None, atoms) -> str:
    """``"frame 17 ('Vacancy', 'desc')"``: how every message names a frame (``"structure"`` without index)."""
    tags = []
    info = getattr(atoms, "info", {})
    if "config_type" in info:
        tags.append(repr(str(info["config_type"])))
    if "description" in info:
        tags.append(repr(str(info["description"])))
    base = "structure" if index is None else f"frame {index}"
    return base + (f" ({', '.join(tags)})" if tags else "")


def _list(indices, limit: int = 20) -> str:
    shown = ", ".join(str(int(k)) for k in indices[:limit])
    return f"[{shown}{', ...' if len(indices) > limit else ''}]"


# --------------------------------------------------------------------------- structure


def overlapping_pairs(atoms, cutoff: float = OVERLAP_DISTANCE):
    """Pairs ``(i, j, d, shift)`` closer than ``cutoff`` Å, each pair once, periodic images included.

    ``i <= j``; ``i == j`` is an atom and its own periodic image (``shift`` is the
    integer cell shift, never zero then). Sorted by distance. Uses the numba cell
    list :func:`kernelpot.descriptors.neighbors.neighbor_list`.
    """
    from kernelpot.descriptors.neighbors import neighbor_list
    nl = neighbor_list(atoms, cutoff)
    i, j, shift = nl.centers, nl.neighbors, nl.shifts
    # each pair is listed from both ends ((i, j, S) and (j, i, -S)): keep i < j, and for an
    # atom and its own image the shift whose first nonzero component is positive
    first = np.where(shift[:, 0] != 0, shift[:, 0], np.where(shift[:, 1] != 0, shift[:, 1], shift[:, 2]))
    keep = (i < j) | ((i == j) & (first > 0))
    d = np.sqrt(np.sum(nl.vectors[keep] ** 2, axis=1))
    order = np.argsort(d, kind="stable")
    return i[keep][order], j[keep][order], d[order], shift[keep][order]


def overlap_message(name: str, atoms, i, j, d, shift, limit: int = 5) -> str:
    """The one message for overlapping atoms (``structure_errors`` and ``validate`` both use it)."""
    symbols = atoms.get_chemical_symbols()
    pairs = []
    for a, b, dist, s in list(zip(i, j, d, shift))[:limit]:
        if a == b:
            pairs.append(f"atom {a} ({symbols[a]}) and its own periodic image {list(map(int, s))} "
                         f"at {dist:.4f} Å")
        else:
            image = f" (periodic image {list(map(int, s))})" if np.any(s) else ""
            pairs.append(f"atoms {a} ({symbols[a]}) and {b} ({symbols[b]}){image} at {dist:.4f} Å")
    more = f"; and {len(d) - limit} more pairs" if len(d) > limit else ""
    return (f"{name}: overlapping atoms: {len(d)} pair(s) closer than {OVERLAP_DISTANCE} Å "
            f"(duplicated atoms, or a wrapping/unit error?): {'; '.join(pairs)}{more}")


def _thin_cell(atoms) -> str | None:
    """Why the overlap search cannot run (a cell so thin that it would need more than
    ``_MAX_IMAGE_SHIFTS`` periodic image shifts), else None."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return None
    from kernelpot.descriptors.neighbors import _complete_cell
    inv = np.linalg.inv(_complete_cell(atoms.cell.array, pbc))
    spacing = 1.0 / np.linalg.norm(inv, axis=0)           # distance between lattice planes
    shifts = np.prod(np.where(pbc, 2.0 * np.ceil(OVERLAP_DISTANCE / spacing) + 1.0, 1.0))
    if shifts <= _MAX_IMAGE_SHIFTS:
        return None
    k = int(np.argmin(np.where(pbc, spacing, np.inf)))
    return (f"lattice planes only {spacing[k]:.3g} Å apart along cell vector {k}: too thin to search "
            f"for overlapping atoms (a broken cell, or a badly skewed one: reduce it, e.g. with "
            f"ase.build.niggli_reduce)")


def structure_errors(atoms, name: str, species=None, *, overlaps: bool = True) -> list[str]:
    """Cheap checks of a structure before a model sees it.

    Shared by :func:`kernelpot.validate`, ``SparseGP.fit`` and every prediction
    path so that they say the same thing.

    Parameters
    ----------
    atoms : ase.Atoms
    name : str
        How messages name the frame (see :func:`frame_name`).
    species : array of int, optional
        Atomic numbers a model knows; others are reported.
    overlaps : bool, default True
        Look for overlapping atoms (one neighbour search with the
        :data:`OVERLAP_DISTANCE` cutoff). :func:`kernelpot.validate` passes
        False because its own distance search reports them with the same
        message.

    Returns
    -------
    list of str
        One message per problem: no atoms; non-finite positions, or beyond
        :data:`MAX_COORDINATE` (naming the atoms); periodic directions
        without usable lattice vectors; atoms closer than
        :data:`OVERLAP_DISTANCE` (0.1 Å) to another atom or to a periodic
        image (naming the pairs and distances); elements outside ``species``.
    """
    errs = []
    n = len(atoms)
    if n == 0:
        errs.append(f"{name}: the structure has no atoms (an empty ase.Atoms); remove it: "
                    f"it has no energy to fit or predict")
        return errs
    positions = atoms.positions
    finite = np.isfinite(positions)
    if not finite.all():
        bad = np.unique(np.nonzero(~finite)[0])
        errs.append(f"{name}: positions are not finite (NaN/inf) for atoms {_list(bad)}")
    far = np.unique(np.nonzero(finite & (np.abs(positions) > MAX_COORDINATE))[0])
    if len(far):
        errs.append(f"{name}: positions of atoms {_list(far)} are beyond {MAX_COORDINATE:g} Å (up to "
                    f"{np.abs(positions[far]).max():.3g} Å): a unit or a parsing slip, not a structure")
    numbers = np.asarray(atoms.numbers)
    unreal = np.flatnonzero((numbers < 1) | (numbers > 118))
    if len(unreal):
        errs.append(f"{name}: atoms {_list(unreal)} have atomic number {int(numbers[unreal[0]])} (element "
                    f"'{atoms.get_chemical_symbols()[unreal[0]]}'), not a real element: a placeholder or an "
                    "unknown symbol ('X') in the file; give every atom its element")
    pbc = atoms.pbc
    cell_ok = True
    if pbc.any():
        periodic = atoms.cell.array[pbc]
        lengths = np.linalg.norm(periodic, axis=1)
        # length/area/volume spanned by the periodic vectors: the product of their singular values
        # (sqrt(det(P P^T)) loses it to round-off: ~1e-5 relative for an exactly dependent 7 Å cell)
        with np.errstate(all="ignore"):
            measure = (float(np.prod(np.linalg.svd(periodic, compute_uv=False)))
                       if np.all(np.isfinite(periodic)) else 0.0)
        if not (np.all(np.isfinite(periodic)) and np.all(lengths > 0.0)
                and measure > 1e-8 * np.prod(lengths)):
            with np.errstate(all="ignore"):
                volume = atoms.cell.volume
            cell_ok = False
            errs.append(f"{name}: cell: pbc={pbc.tolist()} but the periodic lattice vectors are missing, "
                        f"non-finite or linearly dependent (cell volume {volume:.4g} Å^3); "
                        f"set atoms.cell or pbc=False")
    if overlaps and cell_ok and finite.all():
        errs.extend(_overlap_errors(atoms, name))
    if species is not None:
        missing = sorted(set(np.unique(atoms.numbers).tolist()) - set(np.asarray(species).tolist()))
        if missing:
            from ase.data import chemical_symbols
            errs.append(f"{name}: species: structure contains elements "
                        f"{[chemical_symbols[z] for z in missing]} that the model was not trained on "
                        f"(trained: {[chemical_symbols[int(z)] for z in species]})")
    return errs


def _overlap_errors(atoms, name: str) -> list[str]:
    thin = _thin_cell(atoms)
    if thin is not None:
        return [f"{name}: cell: {thin}"]
    try:
        i, j, d, shift = overlapping_pairs(atoms)
    except ValueError as exc:      # a cell the neighbour search cannot invert
        return [f"{name}: cell: {exc}"]
    return [overlap_message(name, atoms, i, j, d, shift)] if len(d) else []


def check_structure(atoms, index: int | None = None, species=None) -> None:
    """Raise ``ValueError`` with the messages of :func:`structure_errors` if there are any."""
    errs = structure_errors(atoms, frame_name(index, atoms), species)
    if errs:
        raise ValueError("; ".join(errs))


# --------------------------------------------------------------------------- labels


def _energy_of(res) -> tuple[str | None, object]:
    """(key, value) of the energy to fit: free_energy when present (see module docstring)."""
    for key in ("free_energy", "energy"):
        if res.get(key) is not None:
            return key, res[key]
    return None, None


def energy_conflict(atoms) -> tuple[float, float] | None:
    """``(energy, free_energy)`` in eV when a frame has both and they differ, else None."""
    calc = atoms.calc
    res = getattr(calc, "results", {}) if calc is not None else {}
    e, fe = res.get("energy"), res.get("free_energy")
    if e is None or fe is None:
        return None
    try:
        e, fe = float(e), float(fe)
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(e) and np.isfinite(fe)) or np.isclose(e, fe, rtol=_ENERGY_RTOL, atol=_ENERGY_ATOL):
        return None
    return e, fe


#: Largest asymmetry |S - S^T| a 3x3 stress (or virial) may show, relative to its largest component:
#: printing precision and codes that do not symmetrise stay far below it, while 9 values written in
#: another order (or a deformation gradient stored as stress) are asymmetric at the size of the tensor.
STRESS_ASYMMETRY = 1e-2


def stress_asymmetry(tensor) -> str | None:
    """What is wrong with a 3x3 stress or virial that is not symmetric, or None.

    A Cauchy stress (and a virial) is symmetric; ASE keeps only one triangle of a 3x3
    (``full_3x3_to_voigt_6_stress``), so an asymmetric one would be read as a different, wrong stress.
    Asymmetry up to :data:`STRESS_ASYMMETRY` of the largest component passes (non-finite values are
    left to the finiteness checks).
    """
    try:
        s = np.asarray(tensor, dtype=float)
    except (TypeError, ValueError):
        return None
    if s.shape == (9,):
        s = s.reshape(3, 3)
    if s.shape != (3, 3) or not np.isfinite(s).all():
        return None
    d = np.abs(s - s.T)
    if d.max() <= STRESS_ASYMMETRY * np.abs(s).max():
        return None
    i, j = np.unravel_index(np.argmax(d), d.shape)
    xyz = "xyz"
    return (f"the 3x3 is not symmetric ({xyz[i]}{xyz[j]} = {s[i, j]:.6g}, {xyz[j]}{xyz[i]} = {s[j, i]:.6g}); "
            "a stress or virial tensor is: were its 9 values written in another order?")


#: ``info`` key that ``kernelpot predict`` writes on each frame: its labels are a model's output.
PREDICTED_KEY = "predicted_by"


def prediction_source(atoms) -> str | None:
    """Whose prediction a frame's labels are, or None for reference labels.

    A frame written by ``kernelpot predict`` carries ``info["predicted_by"]``
    (kernelpot's version and the model file); a file of an earlier version is
    recognised by its uncertainty fields (``forces_std`` per atom or
    ``energy_std`` per frame), which no reference data hold.  Fitting such
    labels teaches a model its own output, and evaluating the model that wrote
    them gives zero error.
    """
    info = getattr(atoms, "info", {}) or {}
    if info.get(PREDICTED_KEY) is not None:
        return str(info[PREDICTED_KEY])
    if "forces_std" in getattr(atoms, "arrays", {}) or "energy_std" in info:
        return "a model (its file has forces_std / energy_std fields)"
    return None


def parse_labels(atoms, name: str) -> tuple[dict, list[str]]:
    """Labels of one frame in kernelpot's units and shapes, and every problem with them.

    Parameters
    ----------
    atoms : ase.Atoms
    name : str
        How messages name the frame.

    Returns
    -------
    labels : dict
        The usable labels: ``"energy"`` (float, eV), ``"forces"`` ((n, 3) float64,
        eV/Å), ``"stress"`` ((6,) float64, eV/Å^3, Voigt; only for periodic frames).
        A label with a problem is left out.
    errors : list of str
        Messages naming the frame and the field (shape, non-finite values).
    """
    calc = atoms.calc
    out, errs = {}, []
    if calc is None:
        return out, errs
    res = getattr(calc, "results", {}) or {}
    n = len(atoms)
    key, value = _energy_of(res)
    if key is not None:
        try:
            energy = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            errs.append(f"{name}: {key} is {value!r}, expected a number (eV, total)")
            energy = None
        if energy is None:
            pass
        elif energy.shape not in ((), (1,)):
            errs.append(f"{name}: energy has shape {energy.shape}, expected a scalar (eV, total)")
        elif not np.isfinite(energy).all():
            errs.append(f"{name}: energy is not finite ({float(energy.ravel()[0])})")
        else:
            out["energy"] = float(energy.ravel()[0])
    if res.get("forces") is not None:
        f = np.asarray(res["forces"], dtype=float)
        if f.shape != (n, 3):
            errs.append(f"{name}: forces have shape {f.shape}, expected ({n}, 3)")
        elif not np.isfinite(f).all():
            bad = np.unique(np.nonzero(~np.isfinite(f))[0])
            errs.append(f"{name}: forces are not finite (NaN/inf) for atoms {_list(bad)}")
        else:
            out["forces"] = f
    if res.get("stress") is not None:
        s = np.asarray(res["stress"], dtype=float)
        if s.shape == (9,):
            s = s.reshape(3, 3)
        asym = stress_asymmetry(s)
        if s.shape == (3, 3):
            s = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        if asym is not None:
            errs.append(f"{name}: stress: {asym}")
        elif s.shape != (6,):
            errs.append(f"{name}: stress has shape {s.shape}, expected (6,) (eV/Å^3, Voigt xx yy zz yz xz xy) "
                        f"or (3, 3)")
        elif not np.isfinite(s).all():
            bad = [c for c, ok in zip(VOIGT, np.isfinite(s)) if not ok]
            errs.append(f"{name}: stress is not finite (NaN/inf) in components {bad}")
        elif is_periodic(atoms):
            out["stress"] = s
    return out, errs


def frame_labels(atoms, index: int | None = None) -> dict:
    """Available reference labels of one frame (see the module table).

    Returns
    -------
    dict with any of ``"energy"`` (float, eV; the free energy when the frame
    has one), ``"forces"`` ((n, 3), eV/Å), ``"stress"`` ((6,), eV/Å^3, ASE
    Voigt order; only for periodic frames).

    Raises
    ------
    ValueError
        If a label has the wrong shape or non-finite values (message naming
        the frame and field, as :func:`kernelpot.validate` words it).
    """
    out, errs = parse_labels(atoms, frame_name(index, atoms))
    if errs:
        raise ValueError("; ".join(errs))
    return out


def relabelled(atoms, **labels):
    """A copy of ``atoms`` with some of its labels replaced, the others kept.

    Parameters
    ----------
    atoms : ase.Atoms
        A labelled frame (labels on its calculator, as :func:`frame_labels` reads them).
    **labels
        ``energy`` (eV, total), ``forces`` ((n_atoms, 3), eV/Å) and/or ``stress`` ((6,), eV/Å^3, ASE Voigt).

    Returns
    -------
    ase.Atoms
        A new frame (``info`` copied) whose SinglePointCalculator holds the
        frame's energy, forces and stress with the given ones replaced.  A new
        energy replaces ``free_energy`` too (it is the energy the fit uses).
        ``atoms`` itself is not changed.

    Raises
    ------
    ValueError
        For a key that is not ``energy``, ``forces`` or ``stress``.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    unknown = sorted(set(labels) - {"energy", "forces", "stress"})
    if unknown:
        raise ValueError(f"relabelled: unknown label(s) {unknown}; give energy, forces or stress")
    res = {} if atoms.calc is None else {k: v for k, v in atoms.calc.results.items()
                                         if k in ("energy", "free_energy", "forces", "stress")}
    if "energy" in labels:
        res.pop("free_energy", None)
    res.update({k: (float(v) if k == "energy" else np.array(v, float)) for k, v in labels.items()})
    b = atoms.copy()
    b.info = dict(atoms.info)
    b.calc = SinglePointCalculator(b, **res)
    return b


def _positive(value, what: str, name: str, shape=()) -> np.ndarray:
    try:
        if np.asarray(value).dtype == bool:  # True is no sigma, though float(True) is 1.0
            raise TypeError
        v = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        v = np.full(shape, np.nan)  # not a number: reported below with the frame and the field
    if v.shape != shape or not np.all(np.isfinite(v)) or not np.all(v > 0):
        raise ValueError(f"{name}: {what} = {value!r} must be {'a positive number' if shape == () else f'positive numbers of shape {shape}'}")
    return v


def floor_noise(given: dict, n_atoms: int) -> dict:
    """The sigmas of :func:`frame_noise` (``floored=False``) raised to :data:`NOISE_FLOOR` (the energy's to
    ``n_atoms`` times the per-atom floor); ``force_mask`` passes unchanged."""
    floor = {"energy_sigma": n_atoms * NOISE_FLOOR["energy"], "forces_sigma": NOISE_FLOOR["forces"],
             "stress_sigma": NOISE_FLOOR["stress"]}
    return {k: v if k not in floor else np.maximum(v, floor[k]) if k == "forces_sigma" else max(v, floor[k])
            for k, v in given.items()}


def frame_noise(atoms, index: int | None = None, floored: bool = True) -> dict:
    """Noise and force mask given in the data of one frame (GAP conventions; module table).

    With ``floored`` (the default, what a fit uses) each sigma is raised to
    :data:`NOISE_FLOOR` (the energy's to ``n_atoms`` times the per-atom
    floor); :func:`kernelpot.io.validation.validate` warns about values below it.

    Returns
    -------
    dict with any of ``"energy_sigma"`` (float, eV, total energy),
    ``"forces_sigma"`` ((n_atoms,), eV/Å per component of each atom),
    ``"stress_sigma"`` (float, eV/Å^3 per component) and ``"force_mask"``
    ((n_atoms,) bool, True = the atom's forces are fitted).  Empty when the
    frame gives none.

    Raises
    ------
    ValueError
        If a sigma is not positive and finite, or a per-atom array has the
        wrong length (naming frame and field).
    """
    name = frame_name(index, atoms)
    info, arrays, n = atoms.info, atoms.arrays, len(atoms)
    out = {}
    if info.get("energy_sigma") is not None:
        out["energy_sigma"] = float(_positive(info["energy_sigma"], "energy_sigma (eV)", name))
    if info.get("force_sigma") is not None:
        out["forces_sigma"] = np.full(n, float(_positive(info["force_sigma"], "force_sigma (eV/Å)", name)))
    if "force_atom_sigma" in arrays:
        out["forces_sigma"] = _positive(np.ravel(arrays["force_atom_sigma"]), "force_atom_sigma (eV/Å)",
                                        name, (n,))
    if info.get("stress_sigma") is not None:
        out["stress_sigma"] = float(_positive(info["stress_sigma"], "stress_sigma (eV/Å^3)", name))
    elif info.get("virial_sigma") is not None:
        v = float(_positive(info["virial_sigma"], "virial_sigma (eV)", name))
        if is_periodic(atoms):
            out["stress_sigma"] = v / abs(atoms.cell.volume)
    if floored:
        out = floor_noise(out, n)
    mask = np.ones(n, dtype=bool)
    if "force_mask" in arrays:
        fm = np.asarray(arrays["force_mask"])
        if fm.shape[:1] != (n,):
            raise ValueError(f"{name}: force_mask has shape {fm.shape}, expected ({n},)")
        mask &= ~(fm.reshape(n, -1) != 0).any(axis=1)
    from ase.constraints import FixAtoms
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[c.get_indices()] = False
    if not mask.all():
        out["force_mask"] = mask
    return out


def training_fingerprint(frames) -> np.ndarray:
    """A few numbers per frame that tell one list of labelled frames from another, shape (n_frames, 8).

    Per frame: number of atoms, sum of atomic numbers, energy, sum of squared positions (weighted by
    atom index), sum of squared cell entries, sum of squared forces, sum of squared stress components,
    and the noise the frame gives (:func:`frame_noise`: the sum of its sigmas plus the number of atoms
    whose forces are masked; the same frames with other sigmas have another leave-one-out) (NaN where
    absent).  A model file keeps no training structures; it keeps these, so that screening
    or auditing a model against "its training file" can check that it is that file, also after a round
    trip through a text format (compare with :func:`same_fingerprint`, which allows its rounding).  The
    same count of structures is not enough: another file of as many structures gave a leave-one-out of
    the wrong data, or a linear-algebra error.

    Parameters
    ----------
    frames : sequence of ase.Atoms

    Returns
    -------
    ndarray, shape (n_frames, 8)
    """
    out = np.full((len(frames), 8), np.nan)
    for i, a in enumerate(frames):
        pos = np.asarray(a.positions, float)
        w = np.arange(1, len(a) + 1, dtype=float)[:, None]
        res = getattr(a.calc, "results", {}) if a.calc is not None else {}
        e = res.get("free_energy", res.get("energy"))
        out[i, :5] = (len(a), float(np.sum(a.numbers)), np.nan if e is None else float(e),
                      float(np.sum(w * pos ** 2)), float(np.sum(np.asarray(a.cell.array) ** 2)))
        for col, key in ((5, "forces"), (6, "stress")):
            if res.get(key) is not None:
                out[i, col] = float(np.sum(np.asarray(res[key], float) ** 2))
        given = frame_noise(a, i)
        if given:
            out[i, 7] = float(sum(np.sum(v) for k, v in given.items() if k != "force_mask")
                              + np.sum(~given.get("force_mask", np.ones(1, bool))))
    return out


def same_fingerprint(a, b) -> bool:
    """Whether two :func:`training_fingerprint` arrays describe the same frames (relative 1e-6, absolute 1e-5).

    A fingerprint of 7 columns (a model file written before the noise column) is compared on those.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.ndim == b.ndim == 2 and len(a) == len(b) and {a.shape[1], b.shape[1]} == {7, 8}:
        a, b = a[:, :7], b[:, :7]
    return a.shape == b.shape and bool(np.all(np.isclose(a, b, rtol=1e-6, atol=1e-5, equal_nan=True)))
