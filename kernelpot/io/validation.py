"""Checks on frames and their labels before anything is fitted.

:func:`validate` looks at every frame and collects *all* problems instead of
stopping at the first; each message names the frame index (with its
``config_type`` and ``description`` when known) and the field. Frames are
never modified or dropped.

Errors (make the data unusable as it stands):

- non-finite positions, energy, forces or stress;
- forces not of shape ``(n_atoms, 3)``, stress not of shape ``(6,)``, energy not a scalar;
- two atoms (or an atom and a periodic image) closer than ``min_distance``;
- periodic directions without lattice vectors (zero cell volume);
- a required label (``require``) that is missing;
- labels attached to a structure that has since moved (stale calculator).

Warnings (plausible but suspicious, usually a unit mistake):

- ``|F| > 100 eV/Å`` on some atom;
- ``|stress| > 100 GPa`` in some component;
- ``|E/atom| > 1e4 eV``;
- ``E/atom > 0`` (reported once for the data set, listing the frames).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.neighborlist import neighbor_list
from scipy.spatial import cKDTree

__all__ = ["validate", "ValidationReport"]

#: Labels that ``require`` may name.
LABELS = ("energy", "forces", "stress")

#: Warning thresholds.
MAX_FORCE = 100.0            # eV/Å
MAX_STRESS_GPA = 100.0       # GPa
MAX_ENERGY_PER_ATOM = 1.0e4  # eV

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
    min_distance: float = 0.5,
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
    min_distance : float, default 0.5
        Å. Pairs of atoms closer than this (periodic images included) are errors.
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
    if not min_distance >= 0.0:
        raise ValueError(f"min_distance must be >= 0 Å, got {min_distance}")

    report = ValidationReport(n_frames=len(frames))
    positive_energy: list[int] = []
    for i, atoms in enumerate(frames):
        _check_frame(i, atoms, require, min_distance, report, positive_energy)

    if positive_energy:
        shown = ", ".join(str(i) for i in positive_energy[:_MAX_INDICES_LISTED])
        more = (f", ... ({len(positive_energy) - _MAX_INDICES_LISTED} more)"
                if len(positive_energy) > _MAX_INDICES_LISTED else "")
        report.warnings.append(
            f"energy: energy per atom > 0 eV in {len(positive_energy)} of {len(frames)} frames "
            f"(frames {shown}{more}); total DFT energies are negative, so check the sign or "
            f"reference (expected for EMT or reference-subtracted energies)")

    if raise_on_error and report.errors:
        raise ValueError(str(report))
    return report


def _frame_name(i: int, atoms: Atoms) -> str:
    tags = []
    if "config_type" in atoms.info:
        tags.append(repr(str(atoms.info["config_type"])))
    if "description" in atoms.info:
        tags.append(repr(str(atoms.info["description"])))
    return f"frame {i}" + (f" ({', '.join(tags)})" if tags else "")


def _check_frame(i: int, atoms: object, require: tuple[str, ...], min_distance: float,
                 report: ValidationReport, positive_energy: list[int]) -> None:
    if not isinstance(atoms, Atoms):
        report.errors.append(f"frame {i}: expected ase.Atoms, got {type(atoms).__name__}")
        return
    name = _frame_name(i, atoms)
    err = report.errors.append
    warn = report.warnings.append
    n = len(atoms)

    positions = atoms.positions
    positions_ok = bool(np.all(np.isfinite(positions)))
    if not positions_ok:
        bad = np.unique(np.nonzero(~np.isfinite(positions))[0])
        err(f"{name}: positions are not finite (NaN/inf) for atoms {_list(bad)}")

    cell_ok = True
    pbc = atoms.pbc
    if pbc.any():
        periodic = atoms.cell.array[pbc]
        lengths = np.linalg.norm(periodic, axis=1)
        measure = np.sqrt(max(float(np.linalg.det(periodic @ periodic.T)), 0.0))
        if not (np.all(np.isfinite(periodic)) and np.all(lengths > 0.0)
                and measure > 1e-8 * np.prod(lengths)):
            cell_ok = False
            err(f"{name}: cell: pbc={pbc.tolist()} but the periodic lattice vectors are missing, "
                f"non-finite or linearly dependent (cell volume {atoms.cell.volume:.4g} Å^3); "
                f"set atoms.cell or pbc=False")

    if positions_ok and cell_ok and n > 0:
        _check_distances(name, atoms, min_distance, report)

    results = _results(name, atoms, report, check_state=positions_ok)
    periodic3 = bool(pbc.all()) and cell_ok

    for label in require:
        if label == "stress" and not periodic3:
            continue
        if label not in results:
            err(f"{name}: {label} is missing (required; no value in atoms.calc.results — "
                f"read the file with kernelpot.io.read to attach labels)")

    if "energy" in results:
        energy = np.asarray(results["energy"], dtype=float)
        if energy.shape not in ((), (1,)):
            err(f"{name}: energy has shape {energy.shape}, expected a scalar (eV, total)")
        elif not np.isfinite(energy).all():
            err(f"{name}: energy is not finite ({float(energy.ravel()[0])})")
        elif n > 0:
            e_atom = float(energy.ravel()[0]) / n
            if abs(e_atom) > MAX_ENERGY_PER_ATOM:
                warn(f"{name}: energy per atom is {e_atom:.6g} eV, |E/atom| > "
                     f"{MAX_ENERGY_PER_ATOM:g} eV; wrong units (meV? kJ/mol?) or an all-electron "
                     f"total energy?")
            if e_atom > 0.0:
                positive_energy.append(i)

    if "forces" in results:
        forces = np.asarray(results["forces"], dtype=float)
        if forces.shape != (n, 3):
            err(f"{name}: forces have shape {forces.shape}, expected ({n}, 3)")
        elif not np.isfinite(forces).all():
            bad = np.unique(np.nonzero(~np.isfinite(forces))[0])
            err(f"{name}: forces are not finite (NaN/inf) for atoms {_list(bad)}")
        elif n > 0:
            norms = np.linalg.norm(forces, axis=1)
            k = int(np.argmax(norms))
            if norms[k] > MAX_FORCE:
                warn(f"{name}: forces: |F| = {norms[k]:.4g} eV/Å on atom {k} exceeds "
                     f"{MAX_FORCE:g} eV/Å; wrong units (Hartree/Bohr = 51.42 eV/Å, kcal/mol/Å)?")

    if "stress" in results:
        stress = np.asarray(results["stress"], dtype=float)
        if stress.shape != (6,):
            err(f"{name}: stress has shape {stress.shape}, expected (6,) "
                f"(eV/Å^3, Voigt xx yy zz yz xz xy)")
        elif not np.isfinite(stress).all():
            bad = [c for c, ok in zip(("xx", "yy", "zz", "yz", "xz", "xy"),
                                      np.isfinite(stress)) if not ok]
            err(f"{name}: stress is not finite (NaN/inf) in components {bad}")
        else:
            s_max = float(np.max(np.abs(stress))) / units.GPa
            if s_max > MAX_STRESS_GPA:
                warn(f"{name}: stress: max |component| = {s_max:.4g} GPa exceeds "
                     f"{MAX_STRESS_GPA:g} GPa; wrong units (kBar or GPa stored as eV/Å^3)?")
        if not periodic3:
            warn(f"{name}: stress is given but the frame is not periodic in all directions "
                 f"(pbc={pbc.tolist()}); it is not a bulk stress")


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


def _check_distances(name: str, atoms: Atoms, min_distance: float,
                     report: ValidationReport) -> None:
    if min_distance <= 0.0:
        return
    if atoms.pbc.any():
        i, j, d, shift = neighbor_list("ijdS", atoms, min_distance)
        # neighbor_list lists each pair twice ((i, j, S) and (j, i, -S)); keep one.
        shift_key = shift @ np.array([9, 3, 1])
        keep = (i < j) | ((i == j) & (shift_key > 0))
        i, j, d, shift = i[keep], j[keep], d[keep], shift[keep]
    else:
        # ASE bins the whole (often 50 Å vacuum) box; a k-d tree does not care about the box.
        pairs = cKDTree(atoms.positions).query_pairs(min_distance, output_type="ndarray")
        i, j = pairs[:, 0], pairs[:, 1]
        d = np.linalg.norm(atoms.positions[j] - atoms.positions[i], axis=1)
        shift = np.zeros((len(d), 3), dtype=int)
    if len(d) == 0:
        return
    order = np.argsort(d, kind="stable")
    symbols = atoms.get_chemical_symbols()
    pairs = []
    for k in order[:_MAX_PAIRS_LISTED]:
        image = " (periodic image)" if np.any(shift[k]) else ""
        pairs.append(f"atoms {i[k]} ({symbols[i[k]]}) and {j[k]} ({symbols[j[k]]}){image} "
                     f"at {d[k]:.4f} Å")
    more = f"; and {len(d) - _MAX_PAIRS_LISTED} more pairs" if len(d) > _MAX_PAIRS_LISTED else ""
    report.errors.append(f"{name}: distances: {len(d)} pair(s) closer than min_distance="
                         f"{min_distance} Å: {'; '.join(pairs)}{more}")


def _list(indices: np.ndarray) -> str:
    shown = ", ".join(str(int(k)) for k in indices[:_MAX_INDICES_LISTED])
    return f"[{shown}{', ...' if len(indices) > _MAX_INDICES_LISTED else ''}]"
