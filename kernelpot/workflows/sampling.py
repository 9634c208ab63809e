"""Generate and label training structures with any ASE calculator.

Every function here takes a reference calculator (DFT, an empirical potential,
or a fitted kernelpot model) and returns labelled frames: copies of the input
``ase.Atoms`` carrying a :class:`~ase.calculators.singlepoint.SinglePointCalculator`
with ``energy`` (eV), ``forces`` (eV/Å) and, for periodic cells, ``stress``
(eV/Å^3, ASE Voigt order xx yy zz yz xz xy), plus ``atoms.info["config_type"]``.

Strains follow the package convention ``cell -> cell @ (I + eps)`` with a
symmetric ``eps`` and atoms scaled with the cell.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary

try:
    from ase.md.velocitydistribution import thermalize_momenta as _thermalize
except ImportError:  # ASE < 3.29

    def _thermalize(atoms, temperature_K, rng=None):
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
from ase.neighborlist import neighbor_list

__all__ = [
    "MDSample",
    "PairDistanceFingerprint",
    "deduplicate",
    "force_constants",
    "label",
    "md_sample",
    "strain_set",
    "thermal_rattle",
]

logger = logging.getLogger(__name__)

_VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def _is_periodic(atoms: Atoms) -> bool:
    return bool(np.all(atoms.pbc)) and atoms.cell.rank == 3


def _single_point(atoms: Atoms, stress: bool | None = None) -> Atoms:
    """Evaluate the calculator attached to ``atoms`` and return a labelled copy."""
    want_stress = _is_periodic(atoms) if stress is None else stress
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    results = {"energy": float(energy), "forces": np.array(forces, dtype=float)}
    if want_stress:
        results["stress"] = np.array(atoms.get_stress(voigt=True), dtype=float)
    out = atoms.copy()  # Atoms.copy drops the calculator and copies info
    out.calc = SinglePointCalculator(out, **results)
    return out


def label(
    frames: Atoms | Iterable[Atoms],
    calc: Calculator,
    stress: bool | None = None,
) -> list[Atoms]:
    """Label frames with a reference calculator.

    Parameters
    ----------
    frames : ase.Atoms or iterable of ase.Atoms
        Structures to label. They are copied; the inputs are not modified.
    calc : ase Calculator
        Reference calculator (must provide ``energy`` and ``forces``).
    stress : bool or None, default None
        Whether to compute the stress (eV/Å^3). ``None`` computes it exactly
        for frames periodic in all three directions.

    Returns
    -------
    list of ase.Atoms
        Copies carrying a ``SinglePointCalculator`` with ``energy`` (eV),
        ``forces`` (n_atoms, 3) eV/Å and ``stress`` (6,) eV/Å^3 where computed.
        ``info`` (including ``config_type``) is kept.

    Examples
    --------
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> frames = label([bulk("Cu", cubic=True)], EMT())
    >>> frames[0].get_stress().shape
    (6,)
    """
    if isinstance(frames, Atoms):
        frames = [frames]
    labelled = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, Atoms):
            raise TypeError(f"frame {i}: expected ase.Atoms, got {type(frame).__name__}")
        work = frame.copy()
        work.calc = calc
        labelled.append(_single_point(work, stress=stress))
    return labelled


def force_constants(atoms: Atoms, calc: Calculator, delta: float = 0.01) -> np.ndarray:
    """Diagonal of the Hessian per atom and Cartesian direction.

    Central finite differences of the forces, ``k_ia = -dF_ia / dx_ia``.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure, ideally at a local minimum. Not modified.
    calc : ase Calculator
        Reference calculator.
    delta : float, default 0.01
        Displacement (Å).

    Returns
    -------
    k : ndarray, shape (n_atoms, 3)
        Force constants (eV/Å^2).

    Examples
    --------
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> k = force_constants(bulk("Cu", cubic=True), EMT())
    >>> k.shape
    (4, 3)
    """
    if not delta > 0:
        raise ValueError(f"delta must be a positive displacement in Å, got {delta!r}")
    work = atoms.copy()
    work.calc = calc
    ref = work.get_positions()
    k = np.empty((len(work), 3))
    for i in range(len(work)):
        for a in range(3):
            f = []
            for sign in (1.0, -1.0):
                pos = ref.copy()
                pos[i, a] += sign * delta
                work.set_positions(pos)
                f.append(work.get_forces()[i, a])
            k[i, a] = -(f[0] - f[1]) / (2.0 * delta)
    return k


# thermal_rattle has a parameter named force_constants; keep a handle on the function.
_estimate_force_constants = force_constants


def thermal_rattle(
    atoms: Atoms,
    calc: Calculator,
    temperature: float,
    n: int,
    force_constants: np.ndarray | None = None,
    random_state: int | np.random.Generator | None = 0,
    delta: float = 0.01,
) -> list[Atoms]:
    """Displace atoms with harmonic thermal amplitudes and label the copies.

    Each Cartesian degree of freedom gets an independent Gaussian displacement
    with standard deviation ``sqrt(kB T / k_ia)`` (equipartition,
    ``1/2 k <u^2> = 1/2 kB T``). For a harmonic reference the mean potential
    energy rise is then ``1/2 kB T`` per degree of freedom.

    Parameters
    ----------
    atoms : ase.Atoms
        Reference structure at a local minimum. Not modified.
    calc : ase Calculator
        Reference calculator used for the force constants and the labels.
    temperature : float
        Temperature (K), > 0.
    n : int
        Number of rattled copies.
    force_constants : ndarray, shape (n_atoms, 3), optional
        Diagonal force constants (eV/Å^2); estimated with
        :func:`force_constants` when not given.
    random_state : int, numpy Generator or None, default 0
        Seed for reproducible displacements.
    delta : float, default 0.01
        Finite-difference displacement (Å) used when estimating force constants.

    Returns
    -------
    list of ase.Atoms
        ``n`` labelled frames with ``info["config_type"] = f"rattle_{T:g}K"``
        and ``info["temperature_K"]``.

    Examples
    --------
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> frames = thermal_rattle(bulk("Cu", cubic=True), EMT(), 300.0, 2)
    >>> frames[0].info["config_type"]
    'rattle_300K'
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 K, got {temperature!r}")
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if force_constants is None:
        k = _estimate_force_constants(atoms, calc, delta=delta)
    else:
        k = np.asarray(force_constants, dtype=float)
    if k.shape != (len(atoms), 3):
        raise ValueError(
            f"force_constants has shape {k.shape}, expected ({len(atoms)}, 3) for this structure"
        )
    bad = np.argwhere(~(k > 0))
    if bad.size:
        i, a = bad[0]
        raise ValueError(
            f"atom {i} direction {'xyz'[a]}: force constant {k[i, a]:.4g} eV/Å^2 is not "
            "positive; relax the structure to a minimum (or reduce delta) before rattling"
        )
    rng = np.random.default_rng(random_state)
    sigma = np.sqrt(units.kB * temperature / k)
    ref = atoms.get_positions()
    frames = []
    for _ in range(int(n)):
        new = atoms.copy()
        new.set_positions(ref + sigma * rng.standard_normal(ref.shape))
        new.info["config_type"] = f"rattle_{temperature:g}K"
        new.info["temperature_K"] = float(temperature)
        frames.append(new)
    return label(frames, calc)


def _voigt_to_tensor(voigt: np.ndarray) -> np.ndarray:
    """Symmetric tensor from tensor-component Voigt vector (xx yy zz yz xz xy)."""
    eps = np.zeros((3, 3))
    for v, (i, j) in enumerate(_VOIGT_PAIRS):
        eps[i, j] = eps[j, i] = voigt[v]
    return eps


def _strained(atoms: Atoms, eps: np.ndarray) -> Atoms:
    new = atoms.copy()
    new.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + eps), scale_atoms=True)
    return new


def strain_set(
    atoms: Atoms,
    calc: Calculator,
    hydrostatic: tuple[float, float, int] = (-0.02, 0.02, 5),
    shear: tuple[float, int] = (0.02, 3),
) -> list[Atoms]:
    """Homogeneously strained copies of a periodic cell, labelled.

    Parameters
    ----------
    atoms : ase.Atoms
        Periodic reference cell. Not modified.
    calc : ase Calculator
        Reference calculator.
    hydrostatic : (min, max, n), default (-0.02, 0.02, 5)
        Linear strains ``s`` in ``numpy.linspace(min, max, n)``; each gives
        ``eps = s I`` and volume ``V0 (1 + s)^3``. ``n = 0`` skips them.
    shear : (max, n), default (0.02, 3)
        For each shear component (yz, xz, xy), tensor strains
        ``eps_ij = eps_ji`` in ``numpy.linspace(-max, max, n)`` with zero
        dropped (it is the unstrained cell). ``n = 0`` skips them.

    Returns
    -------
    list of ase.Atoms
        Labelled frames, hydrostatic first, ``config_type`` ``"strain_hydrostatic"``
        or ``"strain_shear"``, and ``info["strain"]`` the applied tensor strain
        as a Voigt vector (xx yy zz yz xz xy, tensor components, dimensionless).

    Examples
    --------
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> len(strain_set(bulk("Cu", cubic=True), EMT()))
    11
    """
    if not _is_periodic(atoms):
        raise ValueError("strain_set needs a cell periodic in all three directions")
    if len(hydrostatic) != 3:
        raise ValueError(f"hydrostatic must be (min, max, n), got {hydrostatic!r}")
    if len(shear) != 2:
        raise ValueError(f"shear must be (max, n), got {shear!r}")
    frames = []
    lo, hi, n_h = hydrostatic
    for s in np.linspace(lo, hi, int(n_h)):
        if not s > -1:
            raise ValueError(f"hydrostatic strain {s} would invert the cell; use values > -1")
        voigt = np.array([s, s, s, 0.0, 0.0, 0.0])
        new = _strained(atoms, _voigt_to_tensor(voigt))
        new.info["config_type"] = "strain_hydrostatic"
        new.info["strain"] = voigt
        frames.append(new)
    smax, n_s = shear
    values = [g for g in np.linspace(-smax, smax, int(n_s)) if g != 0.0]
    for v in (3, 4, 5):
        for g in values:
            voigt = np.zeros(6)
            voigt[v] = g
            new = _strained(atoms, _voigt_to_tensor(voigt))
            new.info["config_type"] = "strain_shear"
            new.info["strain"] = voigt
            frames.append(new)
    return label(frames, calc)


class PairDistanceFingerprint:
    """Per-atom sorted neighbour distances, a descriptor-free fingerprint.

    Row ``i`` holds the atomic number of atom ``i`` followed by the distances
    (Å, minimum image / periodic images included) to its ``n_neighbors``
    nearest neighbours in increasing order, padded with zeros when a finite
    system has fewer atoms. Blind to which species sits at which distance.

    Parameters
    ----------
    n_neighbors : int, default 12
        Number of neighbour distances per atom.
    """

    def __init__(self, n_neighbors: int = 12):
        self.n_neighbors = n_neighbors

    def create(self, atoms: Atoms) -> np.ndarray:
        """Fingerprint of one structure, shape (n_atoms, 1 + n_neighbors)."""
        n_nb = int(self.n_neighbors)
        if n_nb < 1:
            raise ValueError(f"n_neighbors must be >= 1, got {self.n_neighbors!r}")
        n_atoms = len(atoms)
        out = np.zeros((n_atoms, 1 + n_nb))
        out[:, 0] = atoms.numbers
        if n_atoms == 0:
            return out
        periodic = bool(np.any(atoms.pbc))
        max_available = np.inf if periodic else n_atoms - 1
        need = int(min(n_nb, max_available))
        if need == 0:
            return out
        volume_per_atom = abs(atoms.cell.volume) / n_atoms if atoms.cell.rank == 3 else 10.0
        cutoff = 1.5 * (3.0 * volume_per_atom * need / (4.0 * np.pi)) ** (1.0 / 3.0) + 1.0
        if not periodic:
            cutoff = max(cutoff, float(np.ptp(atoms.positions, axis=0).max()) * 1.01 + 1e-3)
        while True:
            i, d = neighbor_list("id", atoms, cutoff)
            counts = np.bincount(i, minlength=n_atoms)
            if counts.min() >= need:
                break
            cutoff *= 1.5
        order = np.lexsort((d, i))
        i, d = i[order], d[order]
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        for a in range(n_atoms):
            out[a, 1 : 1 + need] = d[starts[a] : starts[a] + need]
        return out


def _mean_descriptor(descriptor, atoms: Atoms) -> np.ndarray:
    """Structure-level descriptor: the mean over atoms of a per-atom descriptor."""
    if hasattr(descriptor, "create"):
        feats = descriptor.create(atoms)
    elif hasattr(descriptor, "compute"):
        feats = descriptor.compute(atoms).features
    else:
        raise TypeError(
            f"descriptor {type(descriptor).__name__} has neither .create(atoms) nor "
            ".compute(atoms).features"
        )
    feats = np.asarray(feats, dtype=float)
    if feats.ndim != 2 or feats.shape[0] != len(atoms):
        raise ValueError(
            f"descriptor returned shape {feats.shape}, expected ({len(atoms)}, n_features)"
        )
    return feats.mean(axis=0)


def deduplicate(
    frames: Sequence[Atoms],
    descriptor=None,
    threshold: float = 1e-3,
) -> tuple[list[Atoms], list[tuple[int, int]]]:
    """Drop frames whose mean descriptor is within ``threshold`` of an earlier kept frame.

    Frames are visited in order; a frame is kept when the Euclidean distance
    between its per-structure descriptor (mean over atoms) and that of every
    frame kept so far exceeds ``threshold``.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Candidate structures.
    descriptor : object, optional
        Anything with ``.create(atoms) -> (n_atoms, F)`` array (or
        ``.compute(atoms).features``, as :class:`kernelpot.SOAP`). Defaults to
        :class:`PairDistanceFingerprint` (distances in Å).
    threshold : float, default 1e-3
        Distance below which two frames count as duplicates, in the units of
        the descriptor (Å for the default fingerprint).

    Returns
    -------
    kept : list of ase.Atoms
        The frames kept, in their original order.
    removed : list of (int, int)
        ``(index, duplicate_of)`` for every dropped frame, both indices into
        ``frames``. The count is also logged at INFO level.

    Examples
    --------
    >>> from ase.build import bulk
    >>> a = bulk("Cu", cubic=True)
    >>> kept, removed = deduplicate([a, a.copy()])
    >>> len(kept), removed
    (1, [(1, 0)])
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    if descriptor is None:
        descriptor = PairDistanceFingerprint()
    frames = list(frames)
    kept_idx: list[int] = []
    kept_desc: list[np.ndarray] = []
    removed: list[tuple[int, int]] = []
    width = None
    for i, frame in enumerate(frames):
        x = _mean_descriptor(descriptor, frame)
        if width is None:
            width = x.shape
        elif x.shape != width:
            raise ValueError(
                f"frame {i}: descriptor has {x.shape[0]} features, earlier frames {width[0]}"
            )
        if kept_desc:
            dist = np.linalg.norm(np.asarray(kept_desc) - x, axis=1)
            j = int(np.argmin(dist))
            if dist[j] <= threshold:
                removed.append((i, kept_idx[j]))
                continue
        kept_idx.append(i)
        kept_desc.append(x)
    logger.info(
        "deduplicate: removed %d of %d frames (threshold %g)", len(removed), len(frames), threshold
    )
    return [frames[i] for i in kept_idx], removed


@dataclass
class MDSample:
    """Result of :func:`md_sample`.

    Attributes
    ----------
    frames : list of ase.Atoms
        Labelled, de-duplicated snapshots.
    n_candidates : int
        Snapshots taken before any filtering.
    n_too_close : int
        Snapshots dropped because two atoms were closer than ``min_distance``.
    n_duplicates : int
        Snapshots dropped as descriptor duplicates.
    removed : list of (int, str)
        ``(candidate index, reason)`` for every dropped snapshot.
    """

    frames: list[Atoms]
    n_candidates: int
    n_too_close: int
    n_duplicates: int
    removed: list[tuple[int, str]] = field(default_factory=list)

    @property
    def n_removed(self) -> int:
        """Total number of dropped snapshots."""
        return self.n_too_close + self.n_duplicates

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self):
        return iter(self.frames)


def _min_distance(atoms: Atoms) -> float:
    if len(atoms) < 2:
        return np.inf
    d = atoms.get_all_distances(mic=bool(np.any(atoms.pbc)))
    d = d[np.triu_indices(len(atoms), 1)]
    return float(d.min())


def md_sample(
    atoms: Atoms,
    calc: Calculator,
    temperatures: Sequence[float],
    n_per_temperature: int,
    interval: int,
    timestep: float = 2.0 * units.fs,
    friction: float = 0.01 / units.fs,
    random_state: int | np.random.Generator | None = 0,
    min_distance: float | None = None,
    descriptor=None,
    equilibration: int = 0,
    dedup_threshold: float = 1e-3,
) -> MDSample:
    """Langevin molecular dynamics snapshots at several temperatures, labelled.

    For each temperature a fresh copy of ``atoms`` is given Maxwell-Boltzmann
    velocities and run with :class:`ase.md.langevin.Langevin`; after
    ``equilibration`` steps a snapshot is taken every ``interval`` steps so
    that consecutive snapshots are decorrelated. Snapshots with atoms closer
    than ``min_distance`` and descriptor duplicates (:func:`deduplicate`) are
    dropped and counted in the result (and logged).

    Parameters
    ----------
    atoms : ase.Atoms
        Starting structure. Not modified.
    calc : ase Calculator
        Reference calculator driving the dynamics and labelling the snapshots.
    temperatures : sequence of float
        Thermostat temperatures (K).
    n_per_temperature : int
        Snapshots per temperature.
    interval : int
        MD steps between snapshots.
    timestep : float, default 2 fs
        Time step in ASE units (``ase.units.fs``).
    friction : float, default 0.01 / fs
        Langevin friction in ASE units of inverse time.
    random_state : int, numpy Generator or None, default 0
        Seed for velocities and the thermostat noise.
    min_distance : float, optional
        Drop snapshots with any interatomic distance below this (Å).
    descriptor : object, optional
        Descriptor for de-duplication (see :func:`deduplicate`).
    equilibration : int, default 0
        Steps run at each temperature before the first snapshot interval.
    dedup_threshold : float, default 1e-3
        Descriptor distance for duplicates (see :func:`deduplicate`).

    Returns
    -------
    MDSample
        Frames with ``config_type`` ``f"md_{T:g}K"`` and ``info["temperature_K"]``,
        plus counts of removed snapshots.

    Examples
    --------
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> res = md_sample(bulk("Cu", cubic=True), EMT(), [300.0], 2, interval=5)
    >>> len(res.frames), res.n_removed
    (2, 0)
    """
    if int(interval) != interval or interval < 1:
        raise ValueError(f"interval must be a positive integer number of steps, got {interval!r}")
    if int(n_per_temperature) != n_per_temperature or n_per_temperature < 1:
        raise ValueError(f"n_per_temperature must be a positive integer, got {n_per_temperature!r}")
    temperatures = [float(t) for t in np.atleast_1d(temperatures)]
    for t in temperatures:
        if not t > 0:
            raise ValueError(f"temperatures must be > 0 K, got {t!r}")
    rng = np.random.default_rng(random_state)
    candidates: list[Atoms] = []
    for t in temperatures:
        work = atoms.copy()
        work.calc = calc
        _thermalize(work, t, rng=rng)
        Stationary(work)
        # fixcm=False: ASE's fixcm=True does not sample NVT exactly; a slow
        # centre-of-mass random walk is harmless for snapshots
        dyn = Langevin(work, timestep, temperature_K=t, friction=friction, fixcm=False, rng=rng)
        if equilibration:
            dyn.run(int(equilibration))
        for _ in range(int(n_per_temperature)):
            dyn.run(int(interval))
            snap = _single_point(work)
            snap.info["config_type"] = f"md_{t:g}K"
            snap.info["temperature_K"] = t
            candidates.append(snap)

    removed: list[tuple[int, str]] = []
    keep_idx = list(range(len(candidates)))
    if min_distance is not None:
        keep_idx = []
        for i, snap in enumerate(candidates):
            dmin = _min_distance(snap)
            if dmin < min_distance:
                removed.append((i, f"min distance {dmin:.3f} Å < {min_distance:g} Å"))
            else:
                keep_idx.append(i)
    n_too_close = len(removed)
    kept, dups = deduplicate([candidates[i] for i in keep_idx], descriptor, dedup_threshold)
    for j, of in dups:
        removed.append((keep_idx[j], f"duplicate of candidate {keep_idx[of]}"))
    removed.sort()
    logger.info(
        "md_sample: %d candidates, %d removed (%d too close, %d duplicates), %d kept",
        len(candidates),
        len(removed),
        n_too_close,
        len(dups),
        len(kept),
    )
    return MDSample(
        frames=kept,
        n_candidates=len(candidates),
        n_too_close=n_too_close,
        n_duplicates=len(dups),
        removed=removed,
    )
