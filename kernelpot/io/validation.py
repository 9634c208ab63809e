"""Checks on frames and their labels before anything is fitted.

:func:`validate` looks at every frame and collects *all* problems instead of
stopping at the first; each message names the frame index (with its
``config_type`` and ``description`` when known) and the field. Frames are
never modified or dropped.

Errors (make the data unusable as it stands):

- a structure without atoms;
- non-finite positions, energy, forces or stress;
- forces not of shape ``(n_atoms, 3)``, stress not of shape ``(6,)`` or ``(3, 3)``, energy not
  a number; a 3x3 stress that is not symmetric (9 values in another order);
- two atoms (or an atom and a periodic image) closer than 0.35 x the sum of their covalent
  radii (or a fixed ``min_distance``);
- overlapping atoms: any pair closer than 0.1 Å (``kernelpot.io.labels.OVERLAP_DISTANCE``),
  whatever ``min_distance``; fit and predict refuse such structures too;
- a noise (``energy_sigma``, ``force_sigma``, ...) that is not positive, or of the wrong shape;
- periodic directions without lattice vectors (zero cell volume);
- a required label (``require``) that is missing;
- labels attached to a structure that has since moved (stale calculator).

Warnings (plausible but suspicious, usually a unit mistake):

- ``|F| > 100 eV/Å`` on some atom;
- ``|stress| > 100 GPa`` in some component;
- ``|E/atom| > 1e4 eV``;
- ``E/atom > 0`` (reported once for the data set, listing the frames);
- ``energy`` and ``free_energy`` both given and different (once, listing the frames): the fit
  uses ``free_energy`` (see :mod:`kernelpot.io.labels`);
- two atoms closer than 0.6 x the sum of their covalent radii (short but possible);
- a frame whose ``config_type`` says isolated atom but that is not one (several atoms, or a periodic
  image closer than ``ISOLATION_DISTANCE``): it is fitted as a structure, not used as ``e0``; an
  isolated atom with a force above ``ISOLATED_FORCE`` (zero by symmetry);
- a noise given in the data below :data:`kernelpot.io.labels.NOISE_FLOOR` (it is fitted at the floor);
- a ``config_type`` holding ``key=value`` text (an unbalanced quote in an extxyz comment line);
- the data set's median structure without a bonded neighbour (nearest neighbours beyond 1.6 x
  their covalent radii sum): positions in Bohr or another length unit (once for the data set);
- frames whose labels are a model's predictions (``kernelpot predict`` output read back).

The label rules (keys, shapes, which energy) are those of :mod:`kernelpot.io.labels`, the same
that ``SparseGP.fit`` uses; ``SparseGP.fit`` runs :func:`validate` and issues its warnings as one
:class:`DataWarning`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import covalent_radii
from scipy.spatial import cKDTree

from kernelpot.io.labels import _list  # one way to list atom/frame indices in messages
from kernelpot.io.labels import (ISOLATION_DISTANCE, LABEL_UNITS, OVERLAP_DISTANCE, DataWarning, _thin_cell,
                                 energy_conflict, floor_noise, frame_name, frame_noise, is_isolated_atom,
                                 neighbour_ratio, overlap_message, parse_labels, prediction_source,
                                 says_isolated_atom, shortest_image_distance, structure_errors)

__all__ = ["validate", "ValidationReport", "DataWarning", "warn_report"]

#: eV/Å.  An isolated atom's force above this is reported (its force is zero by symmetry; DFT's
#: egg-box effect leaves ~1e-3).
ISOLATED_FORCE = 0.01
#: Labels that ``require`` may name.
LABELS = ("energy", "forces", "stress")

#: Warning thresholds.
MAX_FORCE = 100.0            # eV/Å
MAX_STRESS_GPA = 100.0       # GPa
MAX_ENERGY_PER_ATOM = 1.0e4  # eV

#: Distance thresholds as fractions of the sum of the pair's covalent radii: H-H (0.62 Å) errors
#: below 0.22 Å and warns below 0.37 Å; Cu-Cu (2.64 Å) errors below 0.92 Å, warns below 1.58 Å.
DISTANCE_ERROR_FACTOR = 0.35
DISTANCE_WARN_FACTOR = 0.6
_DISTANCE_TOL = 1e-6         # Å: a pair written at the threshold is not flagged by round-off

_MAX_PAIRS_LISTED = 5
_MAX_INDICES_LISTED = 20


@dataclass
class ValidationReport:
    """Outcome of :func:`validate`.

    Attributes
    ----------
    n_frames : int
        Number of frames checked.
    errors : list of str
        One message per problem that makes a frame unusable.
    warnings : list of str
        Suspicious but possibly intended values (often a unit mistake).
    """

    n_frames: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there are no errors (warnings allowed)."""
        return not self.errors

    def __str__(self) -> str:
        lines = [f"validated {self.n_frames} frames: {len(self.errors)} error(s), "
                 f"{len(self.warnings)} warning(s)"]
        lines += [f"  error: {msg}" for msg in self.errors]
        lines += [f"  warning: {msg}" for msg in self.warnings]
        return "\n".join(lines)


def validate(
    frames: Atoms | Sequence[Atoms],
    require: Iterable[str] = ("energy",),
    min_distance: float | None = None,
    raise_on_error: bool = True,
) -> ValidationReport:
    """Check frames and labels; report every problem with frame index and field.

    Labels are taken from ``atoms.calc.results`` (the stored values; nothing is
    calculated), as attached by :func:`kernelpot.io.read`.

    Parameters
    ----------
    frames : ase.Atoms or sequence of ase.Atoms
        Frames to check. Not modified.
    require : iterable of {"energy", "forces", "stress"}, default ("energy",)
        Labels every frame must have. ``"stress"`` is only required of frames
        periodic in all three directions.
    min_distance : float, optional
        Å. ``None`` (default): thresholds scaled by each pair's covalent radii,
        an error below ``0.35 (r_a + r_b)`` and a warning below ``0.6 (r_a + r_b)``
        (H-H: 0.22 and 0.37 Å; Si-Si: 0.78 and 1.33 Å). A number: pairs closer
        than this many Å (periodic images included) are errors, whatever the
        elements; 0 switches the check off, except for overlapping atoms
        (closer than ``OVERLAP_DISTANCE`` = 0.1 Å), which are always an
        error because fit and predict refuse them.
    raise_on_error : bool, default True
        Raise ``ValueError`` listing all errors (and warnings) if there are any.
        Otherwise return the report.

    Returns
    -------
    ValidationReport
        ``errors`` and ``warnings`` (lists of str) and ``ok``.

    Raises
    ------
    ValueError
        If ``raise_on_error`` and any frame has an error; also for an unknown
        label in ``require`` or a negative ``min_distance``.

    Examples
    --------
    >>> from kernelpot import read, validate
    >>> report = validate(read("data/emt_cu_train.xyz"))  # doctest: +SKIP
    >>> report.ok                                         # doctest: +SKIP
    True
    """
    if isinstance(frames, Atoms):
        frames = [frames]
    require = tuple(require)
    unknown = [r for r in require if r not in LABELS]
    if unknown:
        raise ValueError(f"require: unknown label(s) {unknown}; allowed are {list(LABELS)}")
    if min_distance is not None and not min_distance >= 0.0:
        raise ValueError(f"min_distance must be None (covalent radii) or >= 0 Å, got {min_distance}")

    report = ValidationReport(n_frames=len(frames))
    positive_energy: list[int] = []
    free_energy: list[int] = []
    for i, atoms in enumerate(frames):
        _check_frame(i, atoms, require, min_distance, report, positive_energy, free_energy)

    if positive_energy:
        shown = ", ".join(str(i) for i in positive_energy[:_MAX_INDICES_LISTED])
        more = (f", ... ({len(positive_energy) - _MAX_INDICES_LISTED} more)"
                if len(positive_energy) > _MAX_INDICES_LISTED else "")
        report.warnings.append(
            f"energy: energy per atom > 0 eV in {len(positive_energy)} of {len(frames)} frames "
            f"(frames {shown}{more}); total DFT energies are negative, so check the sign or "
            f"reference (expected for EMT or reference-subtracted energies)")

    _check_duplicates(frames, report)
    _check_length_unit(frames, report)

    predicted = {}
    for i, atoms in enumerate(frames):
        source = prediction_source(atoms)
        if source is not None:
            predicted.setdefault(source, []).append(i)
    for source, idx in predicted.items():
        report.warnings.append(
            f"labels: {len(idx)} of {len(frames)} frames hold predictions of {source}, not reference data "
            f"(frames {_list(np.array(idx))}): fitting them teaches a model its own output, and evaluating "
            f"the model that wrote them measures nothing")

    if free_energy:
        report.warnings.append(
            f"energy: energy and free_energy differ in {len(free_energy)} of {len(frames)} frames "
            f"(frames {_list(np.array(free_energy))}); kernelpot fits free_energy, the energy the "
            f"forces are derivatives of with electronic smearing (VASP's 'free energy TOTEN', "
            f"ASE's free_energy)")

    if raise_on_error and report.errors:
        raise ValueError(str(report))
    return report


#: A data set whose median structure has its nearest neighbours this many covalent-radii sums apart
#: has no bonded neighbours at all: positions in Bohr (x1.89) or another length unit.  Bonded
#: structures sit at 0.9-1.3 (an EOS cell expanded by 20 % at ~1.45); frames with noble-gas atoms
#: (van der Waals contacts at 1.8-2.7) are left out of the median.
LENGTH_RATIO_LIMIT = 1.6
#: Frames sampled (evenly) for that median: a whole-set check needs no more.
_LENGTH_SAMPLE = 200
_NOBLE_GASES = (2, 10, 18, 36, 54, 86)


def _check_length_unit(frames, report: ValidationReport) -> None:
    """Warn when the data set's typical structure has no bonded neighbour (:func:`neighbour_ratio`).

    One structure far from the rest is :func:`kernelpot.screen`'s job; this catches a whole file in
    Bohr, which looks self-consistent to every relative check.
    """
    usable = [i for i, a in enumerate(frames)
              if isinstance(a, Atoms) and len(a) > 1 and np.all(np.isfinite(a.positions))
              and not np.isin(a.numbers, _NOBLE_GASES).any()]
    if not usable:
        return
    ratios = []
    for i in np.asarray(usable)[np.unique(np.linspace(0, len(usable) - 1, min(len(usable), _LENGTH_SAMPLE))
                                          .round().astype(int))]:
        try:
            r = neighbour_ratio(frames[i])
        except Exception:  # a broken cell: reported by the structure checks
            continue
        if np.isfinite(r):
            ratios.append(r)
    if ratios and np.median(ratios) > LENGTH_RATIO_LIMIT:
        report.warnings.append(
            f"positions: in the median structure the nearest neighbours are {np.median(ratios):.2f} times the sum "
            f"of their covalent radii apart ({len(ratios)} structures checked; bonded structures: 0.9-1.3): "
            f"positions (and cell) in Bohr (x1.89) or another length unit?")


#: Same structure when positions and cell agree to this (Å); labels conflict above these differences.
_DUPLICATE_TOL = 1e-6
_CONFLICT = {"energy": 1e-3, "forces": 1e-3, "stress": 1e-5}  # eV/atom, eV/Å, eV/Å^3


def _check_duplicates(frames, report: ValidationReport) -> None:
    """Warn about identical structures whose labels disagree (a copy relabelled, a merge of two runs).

    Identical means same atomic numbers, positions and cell to 1e-6 Å (rounded to 1e-5 Å as a key),
    so the check is one pass; near-duplicates are :func:`kernelpot.screen`'s job.
    """
    seen: dict = {}
    conflicts = []
    for i, atoms in enumerate(frames):
        if not isinstance(atoms, Atoms) or len(atoms) == 0:
            continue
        pos, cell = np.asarray(atoms.positions, float), np.asarray(atoms.cell.array, float)
        if not (np.all(np.abs(pos) < 1e9) and np.all(np.abs(cell) < 1e9)):  # NaN/inf: an error reported elsewhere
            continue
        pos, cell = np.round(pos / 1e-5).astype(np.int64), np.round(cell / 1e-5).astype(np.int64)
        key = (atoms.numbers.tobytes(), pos.tobytes(), cell.tobytes(), tuple(bool(p) for p in atoms.pbc))
        if key not in seen:
            seen[key] = i
            continue
        j = seen[key]
        res_i = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
        res_j = getattr(frames[j].calc, "results", {}) if frames[j].calc is not None else {}
        for kind, tol in _CONFLICT.items():
            a, b = res_i.get(kind), res_j.get(kind)
            if a is None or b is None:
                continue
            try:
                diff = float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))))
            except (TypeError, ValueError):
                continue
            if kind == "energy":
                diff /= len(atoms)
            if np.isfinite(diff) and diff > tol:
                conflicts.append(f"frames {j} and {i} ({kind}: {diff:.3g} {LABEL_UNITS[kind]})")
                break
    if conflicts:
        shown = "; ".join(conflicts[:_MAX_INDICES_LISTED])
        more = f"; ... ({len(conflicts) - _MAX_INDICES_LISTED} more)" if len(conflicts) > _MAX_INDICES_LISTED else ""
        report.warnings.append(f"duplicates: {len(conflicts)} pair(s) of identical structures with different "
                               f"labels: {shown}{more}; one of each pair is mislabelled or they come from different "
                               "DFT settings (no fit can say which of a pair: each is the other's best prediction; "
                               "recompute one, or drop both)")


def warn_report(report: ValidationReport, where: str = "data", stacklevel: int = 3,
                max_lines: int = 10) -> None:
    """Issue a report's warnings as **one** :class:`DataWarning` (first ``max_lines`` listed).

    Parameters
    ----------
    report : ValidationReport
    where : str
        What was checked, for the first line (``"fit"``, a file name).
    """
    if not report.warnings:
        return
    import warnings
    lines = report.warnings[:max_lines]
    more = len(report.warnings) - len(lines)
    text = (f"{where}: {len(report.warnings)} validation warning(s) in {report.n_frames} frames:\n  "
            + "\n  ".join(lines)
            + (f"\n  ... and {more} more; run kernelpot.validate(frames) for the full list" if more else ""))
    warnings.warn(text, DataWarning, stacklevel=stacklevel)


def _check_frame(i: int, atoms: object, require: tuple[str, ...], min_distance: float | None,
                 report: ValidationReport, positive_energy: list[int], free_energy: list[int]) -> None:
    if not isinstance(atoms, Atoms):
        report.errors.append(f"frame {i}: expected ase.Atoms, got {type(atoms).__name__}")
        return
    name = frame_name(i, atoms)
    err = report.errors.append
    warn = report.warnings.append
    n = len(atoms)

    # overlapping atoms: found by the distance search below (one search, not two), same message
    structural = structure_errors(atoms, name, overlaps=False)
    report.errors.extend(structural)
    if n == 0:
        return
    positions_ok = bool(np.all(np.isfinite(atoms.positions)))
    cell_ok = not any(": cell:" in m for m in structural)
    if positions_ok and cell_ok:
        thin = _thin_cell(atoms)
        if thin is not None:
            err(f"{name}: cell: {thin}")
            cell_ok = False
        else:
            _check_distances(name, atoms, min_distance, report)

    _results(name, atoms, report, check_state=positions_ok)
    stray = _stray_cell(atoms)
    if stray is not None:
        err(f"{name}: info[{stray!r}] holds a cell but the frame has none (pbc={atoms.pbc.tolist()}): extxyz "
            f"reads the cell only from Lattice= (capital L), so it was read as a cluster; rename the key")
    results, label_errors = parse_labels(atoms, name)
    report.errors.extend(label_errors)
    present = {("energy" if k in ("energy", "free_energy") else k)
               for k, v in (atoms.calc.results.items() if atoms.calc is not None else ()) if v is not None}
    periodic3 = bool(atoms.pbc.all()) and cell_ok

    for label in require:
        if label == "stress" and not periodic3:
            continue
        if label not in present:
            err(f"{name}: {label} is missing (required; no value in atoms.calc.results — "
                f"read the file with kernelpot.io.read to attach labels)")

    if energy_conflict(atoms) is not None:
        free_energy.append(i)
    if "energy" in results:
        e_atom = results["energy"] / n
        if abs(e_atom) > MAX_ENERGY_PER_ATOM:
            warn(f"{name}: energy per atom is {e_atom:.6g} eV, |E/atom| > "
                 f"{MAX_ENERGY_PER_ATOM:g} eV; wrong units (meV? kJ/mol?) or an all-electron "
                 f"total energy?")
        if e_atom > 0.0:
            positive_energy.append(i)

    if "forces" in results:
        norms = np.linalg.norm(results["forces"], axis=1)
        k = int(np.argmax(norms))
        if norms[k] > MAX_FORCE:
            warn(f"{name}: forces: |F| = {norms[k]:.4g} eV/Å on atom {k} exceeds "
                 f"{MAX_FORCE:g} eV/Å; wrong units (Hartree/Bohr = 51.42 eV/Å, kcal/mol/Å)?")

    _check_isolated_atom(name, atoms, results, warn)
    ct = atoms.info.get("config_type")
    if isinstance(ct, str) and re.search(r"(^|\s)[A-Za-z_][\w-]*=", ct):
        warn(f"config_type of frame {i} is {ct[:60]!r}: key=value text inside a label (an unbalanced quote in "
             "the extxyz comment line swallows the keys after it, which are then not read)")

    if "stress" in results:
        s_max = float(np.max(np.abs(results["stress"]))) / units.GPa
        if s_max > MAX_STRESS_GPA:
            warn(f"{name}: stress: max |component| = {s_max:.4g} GPa exceeds "
                 f"{MAX_STRESS_GPA:g} GPa; wrong units (kBar or GPa stored as eV/Å^3)?")
    elif atoms.calc is not None and atoms.calc.results.get("stress") is not None and not periodic3:
        warn(f"{name}: stress is given but the frame is not periodic in all directions "
             f"(pbc={atoms.pbc.tolist()}); it is not a bulk stress and is not fitted")

    try:
        given = frame_noise(atoms, i, floored=False)
        used = floor_noise(given, n)
    except ValueError as exc:
        err(str(exc))
    else:
        for key, unit in (("energy_sigma", "eV"), ("forces_sigma", "eV/Å"), ("stress_sigma", "eV/Å^3")):
            if key in given and np.any(np.asarray(given[key]) < np.asarray(used[key])):
                field_name = {"forces_sigma": "force sigma", "stress_sigma": "stress sigma"}.get(key, key)
                if key == "stress_sigma" and atoms.info.get("stress_sigma") is None:
                    field_name = "virial_sigma / volume"
                if key == "forces_sigma" and "force_atom_sigma" in atoms.arrays:
                    field_name = f"force_atom_sigma of atom {int(np.argmin(given[key]))}"
                warn(f"{name}: {field_name} = {np.min(given[key]):.3g} {unit} is below the noise floor; it is "
                     f"fitted with {np.min(used[key]):.3g} {unit} (kernelpot.io.labels.NOISE_FLOOR)")


def _stray_cell(atoms: Atoms) -> str | None:
    """The info key that holds a cell ASE did not read (``lattice=``, ``cell=``: 3 lengths or 9 numbers, as
    numbers or as text such as ``[[7.2, 0, 0], ...]``), when the frame has none."""
    if atoms.pbc.any() and atoms.cell.rank == 3:
        return None
    for key, value in atoms.info.items():
        if str(key).lower() in ("lattice", "cell", "lattice_vectors", "cell_vectors", "box"):
            if isinstance(value, str):
                value = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eEdD][-+]?\d+)?", value)
            try:
                if np.asarray(value, float).size in (3, 9):
                    return str(key)
            except (TypeError, ValueError):
                continue
    return None


def _check_isolated_atom(name: str, atoms: Atoms, results: dict, warn) -> None:
    """Warn when a frame named an isolated atom is not used as one, and when an isolated atom has forces."""
    if is_isolated_atom(atoms):
        if "forces" in results and np.abs(results["forces"]).max() > ISOLATED_FORCE:
            warn(f"{name}: forces: an isolated atom has |F| = {np.abs(results['forces']).max():.3g} eV/Å; "
                 "by symmetry it is 0 (labels of another structure?)")
        return
    if not says_isolated_atom(atoms):
        return
    why = (f"it has {len(atoms)} atoms" if len(atoms) != 1 else
           f"its nearest periodic image is {shortest_image_distance(atoms):.3g} Å away (an isolated atom needs "
           f">= {ISOLATION_DISTANCE:g} Å)")
    warn(f"{name}: config_type says isolated atom, but {why}: it is fitted as a structure and does not set "
         "the element's isolated-atom energy e0")


def _results(name: str, atoms: Atoms, report: ValidationReport, check_state: bool) -> dict:
    calc = atoms.calc
    if calc is None:
        return {}
    # NaN positions never compare equal; they are reported already.
    if check_state and isinstance(calc, SinglePointCalculator):
        changed = calc.check_state(atoms)
        if changed:
            report.errors.append(
                f"{name}: calculator: labels belong to a different structure "
                f"({', '.join(changed)} changed after they were attached)")
    return dict(calc.results)


def _close_pairs(atoms: Atoms, cutoff: float):
    """Pairs (i, j, d, shift) closer than ``cutoff`` Å, each once (periodic images included)."""
    if atoms.pbc.any():
        # kernelpot's own (numba, cell-list over the atoms) neighbour list: ASE's bins the whole cell,
        # and a 1000 Å vacuum box took 160 s
        from kernelpot.descriptors.neighbors import neighbor_list
        nl = neighbor_list(atoms, cutoff)
        i = nl.centers
        j, shift = nl.neighbors, nl.shifts
        d = np.linalg.norm(nl.vectors, axis=1)
        # the list holds each pair twice ((i, j, S) and (j, i, -S)); keep one: for an atom
        # and its own image, the S whose first nonzero component is positive (exact for any |S|)
        first = np.where(shift[:, 0] != 0, shift[:, 0], np.where(shift[:, 1] != 0, shift[:, 1], shift[:, 2]))
        keep = (i < j) | ((i == j) & (first > 0))
        return i[keep], j[keep], d[keep], shift[keep]
    # ASE bins the whole (often 50 Å vacuum) box; a k-d tree does not care about the box.
    pairs = cKDTree(atoms.positions).query_pairs(cutoff, output_type="ndarray")
    i, j = pairs[:, 0], pairs[:, 1]
    d = np.linalg.norm(atoms.positions[j] - atoms.positions[i], axis=1)
    return i, j, d, np.zeros((len(d), 3), dtype=int)


def _check_distances(name: str, atoms: Atoms, min_distance: float | None,
                     report: ValidationReport) -> None:
    """Too-close pairs: errors below the hard threshold, warnings below the soft one.

    With ``min_distance=None`` the thresholds scale with the pair's covalent
    radii (``ase.data.covalent_radii``, Cordero et al. 2008): an error below
    ``DISTANCE_ERROR_FACTOR * (r_a + r_b)``, a warning below
    ``DISTANCE_WARN_FACTOR * (r_a + r_b)``.  A fixed ``min_distance`` (Å) is an
    error threshold for every pair, without warnings.  A pair at the threshold
    to within ``_DISTANCE_TOL`` Å (round-off of a value written as the
    threshold) is not flagged.

    Pairs closer than ``OVERLAP_DISTANCE`` are always an error, whatever
    ``min_distance``, with the message of
    :func:`kernelpot.io.labels.structure_errors` (the check fit and predict
    run), and are not listed again under the thresholds above.
    """
    radii = covalent_radii[atoms.numbers]
    if min_distance is None:
        cutoff = DISTANCE_WARN_FACTOR * 2.0 * float(radii.max())
    else:
        cutoff = float(min_distance)
    i, j, d, shift = _close_pairs(atoms, max(cutoff, OVERLAP_DISTANCE))
    overlap = d < OVERLAP_DISTANCE
    if overlap.any():
        o = np.flatnonzero(overlap)
        o = o[np.argsort(d[o], kind="stable")]
        report.errors.append(overlap_message(name, atoms, i[o], j[o], d[o], shift[o]))
        i, j, d, shift = i[~overlap], j[~overlap], d[~overlap], shift[~overlap]
    if len(d) == 0 or (min_distance is not None and min_distance <= 0.0):
        return
    if min_distance is None:
        rsum = radii[i] + radii[j]
        hard = d < DISTANCE_ERROR_FACTOR * rsum - _DISTANCE_TOL
        soft = ~hard & (d < DISTANCE_WARN_FACTOR * rsum - _DISTANCE_TOL)
        rule_err = f"{DISTANCE_ERROR_FACTOR:g} x the sum of covalent radii"
        rule_warn = (f"{DISTANCE_WARN_FACTOR:g} x the sum of covalent radii (short but possible: a "
                     f"dimer curve or a high-temperature snapshot?)")
    else:
        hard = d < min_distance - _DISTANCE_TOL
        soft = np.zeros_like(hard)
        rule_err = rule_warn = f"min_distance={min_distance} Å"
    symbols = atoms.get_chemical_symbols()
    for sel, out, rule in ((hard, report.errors, rule_err), (soft, report.warnings, rule_warn)):
        if not sel.any():
            continue
        idx = np.flatnonzero(sel)
        idx = idx[np.argsort(d[idx], kind="stable")]
        pairs = []
        for k in idx[:_MAX_PAIRS_LISTED]:
            image = " (periodic image)" if np.any(shift[k]) else ""
            pairs.append(f"atoms {i[k]} ({symbols[i[k]]}) and {j[k]} ({symbols[j[k]]}){image} "
                         f"at {d[k]:.4f} Å")
        more = f"; and {len(idx) - _MAX_PAIRS_LISTED} more pairs" if len(idx) > _MAX_PAIRS_LISTED else ""
        out.append(f"{name}: distances: {len(idx)} pair(s) closer than {rule}: {'; '.join(pairs)}{more}")
