"""Material-property workflows with error bars from posterior samples.

Every workflow takes ``calc``: one ASE calculator, or a list of calculators
(typically ``model.posterior_calculators(n, reference=atoms)``, one per GP
posterior sample, scaled at the structure the property is computed at to the
calculator's calibrated sigma; ``kinds="stress"`` for an EOS or elastic
constants, ``kinds="energy"`` for a formation or surface energy makes the error
bar follow the kind that sets the property).
Results are :class:`Estimate` objects holding the mean over calculators, the
standard deviation over calculators (``ddof=1``; the error bar), the units
and the per-calculator values. For a single calculator (not a list) ``std``
is ``None``: one calculator carries no spread to report.

Units follow the package convention (Å, eV, eV/Å^3 internally); moduli are
reported in GPa, surface energies in J/m^2 and eV/Å^2, frequencies in THz.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms, units
from ase.eos import EquationOfState
from ase.md.velocitydistribution import Stationary

from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from ase.phonons import Phonons

from kernelpot.workflows.sampling import _thermalize  # one ASE-version shim for thermalising momenta

__all__ = [
    "CubicConstants",
    "ElasticResult",
    "EOSResult",
    "Estimate",
    "NVEResult",
    "PhononDOS",
    "PhononResult",
    "SurfaceResult",
    "cubic",
    "elastic_constants",
    "equation_of_state",
    "nve_drift",
    "phonon_dos",
    "phonons_gamma",
    "surface_energy",
    "surface_slab",
    "vacancy_formation_energy",
    "with_error_bars",
]

_VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
# 1 eV/Å^2 in J/m^2
_EV_PER_A2_TO_J_PER_M2 = units._e * 1e20
# ASE time unit -> s is 1 / units.s; frequencies from sqrt(eV / (Å^2 amu)).
_THZ_PER_ASE_FREQ = units.s / (2.0 * np.pi) / 1e12
# phonon energy (eV) -> frequency (THz): f = E / h
_THZ_PER_EV = units._e / units._hplanck / 1e12


@dataclass(frozen=True)
class Estimate:
    """A property value with its spread over calculators.

    Attributes
    ----------
    value : float or ndarray
        Mean over calculators.
    std : float, ndarray or None
        Standard deviation over calculators (``ddof=1``); ``None`` when a
        single calculator was given.
    units : str
        Units of ``value``, ``std`` and ``samples``.
    samples : ndarray, shape (n_calculators, ...)
        Per-calculator values.
    """

    value: float | np.ndarray
    std: float | np.ndarray | None
    units: str
    samples: np.ndarray

    def __str__(self) -> str:
        if np.ndim(self.value) == 0:
            if self.std is None:
                return f"{self.value:.6g} {self.units}"
            return f"{self.value:.6g} ± {self.std:.2g} {self.units}"
        return f"{np.array2string(np.asarray(self.value), precision=4)} {self.units}"


def _calc_list(calc) -> tuple[list, bool]:
    if isinstance(calc, (list, tuple)):
        if len(calc) == 0:
            raise ValueError("calc is an empty list; pass a calculator or a non-empty list")
        return list(calc), True
    return [calc], False


def _estimate(samples, unit: str, is_list: bool) -> Estimate:
    arr = np.asarray(samples, dtype=float)
    value = arr.mean(axis=0)
    std = arr.std(axis=0, ddof=1) if is_list and len(arr) > 1 else None
    if arr.ndim == 1:
        value = float(value)
        std = None if std is None else float(std)
    return Estimate(value=value, std=std, units=unit, samples=arr)


def with_error_bars(
    property_fn: Callable, calcs, *args, units: str = "", **kwargs
) -> Estimate:
    """Evaluate ``property_fn(*args, calc=c, **kwargs)`` for each calculator.

    Parameters
    ----------
    property_fn : callable
        Function taking a single calculator through the keyword ``calc`` and
        returning a number, an array, or an :class:`Estimate` (its ``value``
        is used).
    calcs : ase Calculator or list of Calculators
        Calculators, e.g. ``model.posterior_calculators(n)``.
    *args, **kwargs
        Passed on to ``property_fn``.
    units : str, default ""
        Units to record on the result.

    Returns
    -------
    Estimate
        Mean, std (``None`` for a single calculator) and per-calculator values.

    Examples
    --------
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> def energy(atoms, calc):
    ...     atoms = atoms.copy(); atoms.calc = calc
    ...     return atoms.get_potential_energy()
    >>> est = with_error_bars(energy, [EMT(), EMT()], bulk("Cu"), units="eV")
    >>> est.std
    0.0
    """
    calc_list, is_list = _calc_list(calcs)
    values = []
    for c in calc_list:
        v = property_fn(*args, calc=c, **kwargs)
        values.append(v.value if isinstance(v, Estimate) else v)
    return _estimate(values, units, is_list)


def _require_periodic(atoms: Atoms, what: str) -> None:
    if not (np.all(atoms.pbc) and atoms.cell.rank == 3):
        raise ValueError(
            f"{what} needs a cell periodic in all three directions, got pbc={atoms.pbc}"
        )


def _with_calc(atoms: Atoms, calc) -> Atoms:
    work = atoms.copy()
    work.calc = calc
    return work


def _relax_positions(atoms: Atoms, fmax: float, steps: int) -> None:
    opt = BFGS(atoms, logfile=None)
    converged = opt.run(fmax=fmax, steps=steps)
    if not converged:
        fm = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
        raise RuntimeError(
            f"ionic relaxation did not reach fmax={fmax} eV/Å in {steps} steps "
            f"(max force {fm:.3g} eV/Å); raise steps or fmax"
        )


# --------------------------------------------------------------------------- EOS


@dataclass(frozen=True)
class EOSResult:
    """Birch-Murnaghan equation of state.

    Attributes
    ----------
    V0 : Estimate
        Equilibrium volume of the given cell (Å^3).
    E0 : Estimate
        Minimum energy of the given cell (eV).
    B : Estimate
        Bulk modulus (GPa).
    a0 : Estimate or None
        Conventional cubic lattice constant (Å) for cubic, fcc and bcc
        lattices, else ``None``.
    volumes : ndarray, shape (n_strains,)
        Volumes scanned (Å^3).
    energies : ndarray, shape (n_calculators, n_strains)
        Energies (eV) per calculator.
    """

    V0: Estimate
    E0: Estimate
    B: Estimate
    a0: Estimate | None
    volumes: np.ndarray
    energies: np.ndarray


def _conventional_a(atoms: Atoms) -> float | None:
    lat = atoms.cell.get_bravais_lattice()
    if lat.name in ("CUB", "FCC", "BCC"):
        return float(lat.a)
    return None


def equation_of_state(
    atoms: Atoms,
    calc,
    strains: Sequence[float] = np.linspace(-0.03, 0.03, 7),
) -> EOSResult:
    """Energy-volume curve fitted with the Birch-Murnaghan equation of state.

    Parameters
    ----------
    atoms : ase.Atoms
        Periodic cell; atoms scale with the cell (no ionic relaxation).
    calc : ase Calculator or list of Calculators
        Calculator(s); a list gives error bars.
    strains : sequence of float, default ``np.linspace(-0.03, 0.03, 7)``
        Linear strains ``s``: cells ``(1 + s) * cell``.

    Returns
    -------
    EOSResult
        ``V0`` (Å^3), ``E0`` (eV), ``B`` (GPa) and, for cubic/fcc/bcc
        lattices, ``a0`` (Å) = conventional lattice constant ``* (V0/V)^(1/3)``.

    Examples
    --------
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> eos = equation_of_state(bulk("Cu", "fcc", a=3.6), EMT())
    >>> round(eos.a0.value, 2)
    3.59
    """
    _require_periodic(atoms, "equation_of_state")
    strains = np.asarray(strains, dtype=float)
    if strains.ndim != 1 or len(strains) < 5:
        raise ValueError(f"strains must be a 1-D sequence of >= 5 values, got {strains!r}")
    calcs, is_list = _calc_list(calc)
    cell = np.asarray(atoms.cell)
    volumes = atoms.get_volume() * (1.0 + strains) ** 3
    a_ref = _conventional_a(atoms)
    energies = np.empty((len(calcs), len(strains)))
    fits = []
    for c_i, c in enumerate(calcs):
        work = _with_calc(atoms, c)
        for s_i, s in enumerate(strains):
            work.set_cell(cell * (1.0 + s), scale_atoms=True)
            energies[c_i, s_i] = work.get_potential_energy()
        v0, e0, b = EquationOfState(volumes, energies[c_i], eos="birchmurnaghan").fit()
        fits.append((v0, e0, b / units.GPa))
    fits = np.array(fits)
    a0 = None
    if a_ref is not None:
        a0 = _estimate(a_ref * (fits[:, 0] / atoms.get_volume()) ** (1.0 / 3.0), "Å", is_list)
    return EOSResult(
        V0=_estimate(fits[:, 0], "Å^3", is_list),
        E0=_estimate(fits[:, 1], "eV", is_list),
        B=_estimate(fits[:, 2], "GPa", is_list),
        a0=a0,
        volumes=volumes,
        energies=energies,
    )


# --------------------------------------------------------------------- elastic


@dataclass(frozen=True)
class ElasticResult:
    """Elastic stiffness tensor in Voigt notation.

    Attributes
    ----------
    C : Estimate
        Symmetrised stiffness (GPa), value shape (6, 6), Voigt order
        xx yy zz yz xz xy with engineering shear strains.
    """

    C: Estimate


@dataclass(frozen=True)
class CubicConstants:
    """Cubic elastic constants (GPa) and the bulk modulus ``(C11 + 2 C12) / 3``."""

    C11: Estimate
    C12: Estimate
    C44: Estimate
    B: Estimate


def elastic_constants(
    atoms: Atoms,
    calc,
    delta: float = 0.005,
    relax_ions: bool = True,
    fmax: float = 1e-4,
    steps: int = 200,
) -> ElasticResult:
    """Elastic constants from central stress-strain finite differences.

    For each Voigt component ``j`` the cell is strained by ``+delta`` and
    ``-delta`` (engineering strain; for shears ``eps_ij = eps_ji = delta/2``),
    internal coordinates are optionally relaxed at fixed cell, and
    ``C_ij = (sigma_i(+) - sigma_i(-)) / (2 delta)``. The result is
    symmetrised. The reference cell should be stress-free (residual stress
    adds terms of order the stress to ``C``).

    Parameters
    ----------
    atoms : ase.Atoms
        Periodic cell at equilibrium. Not modified.
    calc : ase Calculator or list of Calculators
        Calculator(s) providing ``stress``; a list gives error bars.
    delta : float, default 0.005
        Strain magnitude (dimensionless).
    relax_ions : bool, default True
        Relax internal coordinates with BFGS in each strained cell (relaxed-ion
        constants); ``False`` gives clamped-ion constants.
    fmax : float, default 1e-4
        Force convergence (eV/Å) of the ionic relaxation.
    steps : int, default 200
        Maximum BFGS steps per relaxation.

    Returns
    -------
    ElasticResult
        ``C`` (GPa), value shape (6, 6).

    Examples
    --------
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> res = elastic_constants(bulk("Cu", "fcc", a=3.59), EMT())
    >>> res.C.value.shape
    (6, 6)
    """
    _require_periodic(atoms, "elastic_constants")
    if not 0 < delta < 0.1:
        raise ValueError(f"delta must be a small positive strain (0 < delta < 0.1), got {delta!r}")
    calcs, is_list = _calc_list(calc)
    cell = np.asarray(atoms.cell)
    samples = []
    for c in calcs:
        C = np.empty((6, 6))
        for j, (p, q) in enumerate(_VOIGT_PAIRS):
            stresses = []
            for sign in (1.0, -1.0):
                eps = np.zeros((3, 3))
                if p == q:
                    eps[p, p] = sign * delta
                else:
                    eps[p, q] = eps[q, p] = sign * delta / 2.0
                work = _with_calc(atoms, c)
                work.set_cell(cell @ (np.eye(3) + eps), scale_atoms=True)
                if relax_ions and len(work) > 1:
                    _relax_positions(work, fmax, steps)
                stresses.append(work.get_stress(voigt=True))
            C[:, j] = (stresses[0] - stresses[1]) / (2.0 * delta)
        samples.append(0.5 * (C + C.T) / units.GPa)
    return ElasticResult(C=_estimate(samples, "GPa", is_list))


def cubic(C) -> CubicConstants:
    """Cubic constants averaged over symmetry-equivalent Voigt entries.

    ``C11 = mean(C[0,0], C[1,1], C[2,2])``, ``C12`` the mean of the six
    off-diagonal normal entries, ``C44 = mean(C[3,3], C[4,4], C[5,5])``.

    Parameters
    ----------
    C : ElasticResult, Estimate, or array of shape (6, 6) or (n_samples, 6, 6)
        Stiffness in GPa. Per-sample matrices propagate to error bars.

    Returns
    -------
    CubicConstants
        ``C11``, ``C12``, ``C44`` and ``B = (C11 + 2 C12) / 3`` (GPa).

    Examples
    --------
    >>> import numpy as np
    >>> C = np.diag([170.0, 170, 170, 75, 75, 75]); C[:3, :3] += 120 * (1 - np.eye(3))
    >>> round(cubic(C).B.value, 1)
    136.7
    """
    is_list = False
    if isinstance(C, ElasticResult):
        C = C.C
    if isinstance(C, Estimate):
        is_list = C.std is not None
        C = C.samples
    C = np.asarray(C, dtype=float)
    if C.shape == (6, 6):
        C = C[None]
    if C.ndim != 3 or C.shape[1:] != (6, 6):
        raise ValueError(f"C must have shape (6, 6) or (n, 6, 6), got {C.shape}")
    c11 = (C[:, 0, 0] + C[:, 1, 1] + C[:, 2, 2]) / 3.0
    off = C[:, :3, :3][:, ~np.eye(3, dtype=bool)]
    c12 = off.mean(axis=1)
    c44 = (C[:, 3, 3] + C[:, 4, 4] + C[:, 5, 5]) / 3.0
    return CubicConstants(
        C11=_estimate(c11, "GPa", is_list),
        C12=_estimate(c12, "GPa", is_list),
        C44=_estimate(c44, "GPa", is_list),
        B=_estimate((c11 + 2.0 * c12) / 3.0, "GPa", is_list),
    )


# ---------------------------------------------------------------------- defects


def vacancy_formation_energy(
    atoms_bulk: Atoms,
    calc,
    supercell: tuple[int, int, int] = (3, 3, 3),
    relax: bool = True,
    index: int = 0,
    fmax: float = 1e-3,
    steps: int = 500,
    mu: float | None = None,
) -> Estimate:
    """Vacancy formation energy ``E(N-1) - (N-1)/N E(N)`` at fixed cell.

    For an elemental crystal.  In a compound the energy of the removed atom
    depends on where it goes (a chemical potential): give ``mu`` and the
    result is ``E(N-1) + mu - E(N)``.

    Parameters
    ----------
    atoms_bulk : ase.Atoms
        Periodic bulk cell, repeated by ``supercell``.
    calc : ase Calculator or list of Calculators
        Calculator(s); a list gives error bars.
    supercell : (int, int, int), default (3, 3, 3)
        Repetitions of ``atoms_bulk``.
    relax : bool, default True
        Relax ionic positions (BFGS, fixed cell) of the perfect and defective
        supercells.
    index : int, default 0
        Atom removed.
    fmax : float, default 1e-3
        Force convergence (eV/Å).
    steps : int, default 500
        Maximum BFGS steps.
    mu : float, optional
        Chemical potential of the removed atom's element (eV per atom), e.g.
        the energy per atom of its elemental crystal for a metal-rich limit.
        Required when the cell holds more than one element; with ``mu`` the
        same formula applies to an elemental crystal with any reference.

    Returns
    -------
    Estimate
        Formation energy (eV).

    Raises
    ------
    ValueError
        If the cell holds more than one element and ``mu`` is not given (the
        elemental formula would give a number that is no formation energy).

    Examples
    --------
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> e = vacancy_formation_energy(bulk("Cu", "fcc", a=3.59), EMT(), (2, 2, 2))
    >>> e.value > 0
    True
    """
    _require_periodic(atoms_bulk, "vacancy_formation_energy")
    perfect = atoms_bulk.repeat(supercell)
    n = len(perfect)
    if n < 2:
        raise ValueError(f"supercell {supercell} has {n} atom(s); need at least 2")
    if not -n <= index < n:
        raise ValueError(f"index {index} out of range for a supercell of {n} atoms")
    symbol = perfect[index].symbol
    if mu is None and len(set(perfect.get_chemical_symbols())) > 1:
        raise ValueError(f"vacancy_formation_energy: the cell holds {perfect.get_chemical_formula()}: removing a "
                         f"{symbol} atom needs its chemical potential; give mu (eV per {symbol} atom, e.g. the "
                         f"energy per atom of {symbol}'s elemental crystal)")
    if mu is not None and not np.isfinite(mu):
        raise ValueError(f"mu must be a finite energy in eV, got {mu!r}")
    defect = perfect.copy()
    del defect[index]
    calcs, is_list = _calc_list(calc)
    values = []
    for c in calcs:
        energies = []
        for structure in (perfect, defect):
            work = _with_calc(structure, c)
            if relax:
                _relax_positions(work, fmax, steps)
            energies.append(work.get_potential_energy())
        values.append(energies[1] - (n - 1) / n * energies[0] if mu is None else energies[1] + mu - energies[0])
    return _estimate(values, "eV", is_list)


@dataclass(frozen=True)
class SurfaceResult:
    """Surface energy of a symmetric slab.

    Attributes
    ----------
    gamma : Estimate
        Surface energy (J/m^2).
    gamma_eV_per_A2 : Estimate
        Surface energy (eV/Å^2).
    area : float
        Area of one slab face (Å^2).
    n_atoms : int
        Atoms in the slab.
    """

    gamma: Estimate
    gamma_eV_per_A2: Estimate
    area: float
    n_atoms: int


def surface_slab(atoms_bulk: Atoms, miller: tuple[int, int, int] = (1, 1, 1), layers: int = 5,
                 vacuum: float = 8.0) -> Atoms:
    """The slab :func:`surface_energy` evaluates: :func:`ase.build.surface` of ``atoms_bulk``.

    Two equivalent faces, ``layers`` layers, ``vacuum`` Å on each side along
    the surface normal.  For the ``reference`` of posterior samples.

    Raises
    ------
    ValueError
        If ``layers`` is not a positive integer.
    """
    from ase.build import surface
    if int(layers) != layers or layers < 1:
        raise ValueError(f"layers must be a positive integer, got {layers!r}")
    return surface(atoms_bulk, tuple(miller), int(layers), vacuum=vacuum)


def surface_energy(
    atoms_bulk: Atoms,
    calc,
    miller: tuple[int, int, int] = (1, 1, 1),
    layers: int = 5,
    vacuum: float = 8.0,
    relax: bool = False,
    fmax: float = 1e-3,
    steps: int = 500,
) -> SurfaceResult:
    """Surface energy ``(E_slab - N E_bulk/atom) / (2 A)``.

    The slab is built with :func:`ase.build.surface` (two equivalent faces,
    vacuum along the surface normal); the bulk energy per atom comes from
    ``atoms_bulk`` with the same calculator.

    Parameters
    ----------
    atoms_bulk : ase.Atoms
        Periodic bulk cell. Miller indices refer to its cell vectors, so pass
        the conventional cell (``bulk(..., cubic=True)``) for the usual
        cubic indices.
    calc : ase Calculator or list of Calculators
        Calculator(s); a list gives error bars.
    miller : (int, int, int), default (1, 1, 1)
        Surface Miller indices.
    layers : int, default 5
        Number of layers in the slab.
    vacuum : float, default 8.0
        Vacuum on each side (Å).
    relax : bool, default False
        Relax slab positions (BFGS) before evaluating its energy.
    fmax : float, default 1e-3
        Force convergence (eV/Å) when relaxing.
    steps : int, default 500
        Maximum BFGS steps.

    Returns
    -------
    SurfaceResult
        ``gamma`` (J/m^2) and ``gamma_eV_per_A2``.

    Notes
    -----
    With posterior samples (``model.posterior_calculators(n, reference=...)``)
    scale them at the slab, ``reference=surface_slab(atoms_bulk, miller,
    layers, vacuum)``: the error is the slab's, a structure usually further
    from the training data than the bulk.  Scaled at the bulk cell the band
    says how uncertain the bulk is (EMT Ni3Al (111): 7.5 error bars from
    EMT scaled at the bulk, 2.4 at the slab).

    Examples
    --------
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> res = surface_energy(bulk("Cu", "fcc", a=3.59, cubic=True), EMT(), layers=4)
    >>> res.gamma.value > 0
    True
    """
    _require_periodic(atoms_bulk, "surface_energy")
    slab = surface_slab(atoms_bulk, miller, layers, vacuum)
    area = float(np.linalg.norm(np.cross(slab.cell[0], slab.cell[1])))
    calcs, is_list = _calc_list(calc)
    values = []
    for c in calcs:
        e_bulk = _with_calc(atoms_bulk, c).get_potential_energy() / len(atoms_bulk)
        work = _with_calc(slab, c)
        if relax:
            _relax_positions(work, fmax, steps)
        values.append((work.get_potential_energy() - len(slab) * e_bulk) / (2.0 * area))
    values = np.asarray(values)
    return SurfaceResult(
        gamma=_estimate(values * _EV_PER_A2_TO_J_PER_M2, "J/m^2", is_list),
        gamma_eV_per_A2=_estimate(values, "eV/Å^2", is_list),
        area=area,
        n_atoms=len(slab),
    )


# ---------------------------------------------------------------------- phonons


@dataclass(frozen=True)
class PhononResult:
    """Gamma-point phonons of the given cell.

    Attributes
    ----------
    frequencies : Estimate
        Frequencies (THz), value shape (3 n_atoms,), ascending; imaginary
        modes are returned as negative numbers.
    """

    frequencies: Estimate


def _force_constant_matrix(atoms: Atoms, calc, delta: float) -> np.ndarray:
    work = _with_calc(atoms, calc)
    ref = work.get_positions()
    n = len(work)
    phi = np.empty((3 * n, 3 * n))
    for i in range(n):
        for a in range(3):
            forces = []
            for sign in (1.0, -1.0):
                pos = ref.copy()
                pos[i, a] += sign * delta
                work.set_positions(pos)
                forces.append(work.get_forces().ravel())
            phi[3 * i + a] = -(forces[0] - forces[1]) / (2.0 * delta)
    return 0.5 * (phi + phi.T)


def phonons_gamma(atoms: Atoms, calc, delta: float = 0.01) -> PhononResult:
    """Gamma-point frequencies from the finite-displacement dynamical matrix.

    The force-constant matrix (central differences, symmetrised) is mass
    weighted, ``D = Phi / sqrt(m_i m_j)``, and diagonalised. In a supercell
    these are the exact harmonic frequencies at all wave vectors commensurate
    with it.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure at a minimum (cell or supercell). Not modified.
    calc : ase Calculator or list of Calculators
        Calculator(s); a list gives error bars.
    delta : float, default 0.01
        Displacement (Å).

    Returns
    -------
    PhononResult
        Frequencies (THz), ascending; negative values flag imaginary modes.

    Examples
    --------
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> res = phonons_gamma(bulk("Cu", "fcc", a=3.59, cubic=True), EMT())
    >>> res.frequencies.value.shape
    (12,)
    """
    if not delta > 0:
        raise ValueError(f"delta must be a positive displacement in Å, got {delta!r}")
    calcs, is_list = _calc_list(calc)
    m = np.repeat(atoms.get_masses(), 3)
    inv_sqrt_m = 1.0 / np.sqrt(m)
    samples = []
    for c in calcs:
        dyn = _force_constant_matrix(atoms, c, delta) * np.outer(inv_sqrt_m, inv_sqrt_m)
        w2 = np.linalg.eigvalsh(dyn)
        samples.append(np.sign(w2) * np.sqrt(np.abs(w2)) * _THZ_PER_ASE_FREQ)
    return PhononResult(frequencies=_estimate(samples, "THz", is_list))


@dataclass(frozen=True)
class PhononDOS:
    """Phonon density of states on a common frequency grid.

    Attributes
    ----------
    frequencies : ndarray, shape (npts,)
        Grid (THz).
    dos : Estimate
        States per THz per unit cell, value shape (npts,); integrates to
        3 n_atoms.
    imaginary_fraction : ndarray, shape (n_calculators,)
        Fraction of sampled modes with imaginary frequency (shown as negative
        frequencies in the DOS): a sign of an unstable structure or of a
        supercell too small for the range of the force constants.
    """

    frequencies: np.ndarray
    dos: Estimate
    imaginary_fraction: np.ndarray


def phonon_dos(
    atoms: Atoms,
    calc,
    supercell: tuple[int, int, int] = (3, 3, 3),
    kpts: tuple[int, int, int] = (10, 10, 10),
    delta: float = 0.01,
    npts: int = 400,
    width: float = 0.1,
) -> PhononDOS:
    """Phonon DOS with :class:`ase.phonons.Phonons` (acoustic sum rule applied).

    Displacement forces are cached in a temporary directory that is removed
    afterwards. Imaginary modes enter the DOS at negative frequencies and are
    counted in ``imaginary_fraction``.

    Parameters
    ----------
    atoms : ase.Atoms
        Primitive (or unit) cell at a minimum.
    calc : ase Calculator or list of Calculators
        Calculator(s); a list gives error bars.
    supercell : (int, int, int), default (3, 3, 3)
        Supercell for the finite displacements.
    kpts : (int, int, int), default (10, 10, 10)
        Monkhorst-Pack mesh for the DOS.
    delta : float, default 0.01
        Displacement (Å).
    npts : int, default 400
        Grid points.
    width : float, default 0.1
        Gaussian broadening (THz).

    Returns
    -------
    PhononDOS
        Frequency grid (THz) and the DOS per THz per cell.

    Examples
    --------
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> res = phonon_dos(bulk("Cu", "fcc", a=3.59), EMT(), (3, 3, 3), (4, 4, 4))
    >>> res.dos.value.shape, res.imaginary_fraction
    ((400,), array([0.]))
    """
    _require_periodic(atoms, "phonon_dos")
    calcs, is_list = _calc_list(calc)
    raw = []
    for c in calcs:
        with tempfile.TemporaryDirectory(prefix="kernelpot-phonons-") as tmp:
            ph = Phonons(
                atoms, c, supercell=tuple(supercell), delta=delta, name=os.path.join(tmp, "ph")
            )
            ph.run()
            ph.read(acoustic=True)
            dos = ph.get_dos(kpts=tuple(kpts))
        raw.append((dos.get_energies() * _THZ_PER_EV, dos.get_weights()))
    fmin = min(e.min() for e, _ in raw)
    fmax = max(e.max() for e, _ in raw)
    grid = np.linspace(min(fmin, 0.0) - 5 * width, fmax + 5 * width, int(npts))
    values = []
    for e, w in raw:
        gauss = np.exp(-0.5 * ((grid[:, None] - e[None, :]) / width) ** 2)
        values.append(gauss @ w / (width * np.sqrt(2.0 * np.pi)))
    imaginary = np.array([w[e < 0].sum() / w.sum() for e, w in raw])
    return PhononDOS(
        frequencies=grid, dos=_estimate(values, "1/THz", is_list), imaginary_fraction=imaginary
    )


# --------------------------------------------------------------------------- MD


@dataclass(frozen=True)
class NVEResult:
    """Energy conservation in NVE molecular dynamics.

    Attributes
    ----------
    drift : Estimate
        Slope of a linear fit of total energy per atom against time (eV/atom/ps).
    fluctuation : Estimate
        Standard deviation of the total energy per atom about that fit (eV/atom).
    times : ndarray, shape (n_steps + 1,)
        Times (ps).
    total_energy : ndarray, shape (n_calculators, n_steps + 1)
        Total energy per atom (eV/atom) along each trajectory.
    """

    drift: Estimate
    fluctuation: Estimate
    times: np.ndarray
    total_energy: np.ndarray


def nve_drift(
    atoms: Atoms,
    calc,
    temperature: float = 300.0,
    n_steps: int = 500,
    timestep: float = 1.0 * units.fs,
    random_state: int | np.random.Generator | None = 0,
) -> NVEResult:
    """Total-energy drift and fluctuation of velocity-Verlet NVE dynamics.

    Velocities are drawn from a Maxwell-Boltzmann distribution at
    ``temperature`` (same seed for every calculator), centre-of-mass motion is
    removed, and the total energy is recorded every step.

    Parameters
    ----------
    atoms : ase.Atoms
        Starting structure. Not modified.
    calc : ase Calculator or list of Calculators
        Calculator(s); a list gives error bars.
    temperature : float, default 300.0
        Initial temperature (K).
    n_steps : int, default 500
        Number of MD steps.
    timestep : float, default 1 fs
        Time step in ASE units (``ase.units.fs``).
    random_state : int, numpy Generator or None, default 0
        Seed for the initial velocities.

    Returns
    -------
    NVEResult
        ``drift`` (eV/atom/ps) and ``fluctuation`` (eV/atom).

    Examples
    --------
    >>> from ase.build import bulk
    >>> from ase.calculators.emt import EMT
    >>> res = nve_drift(bulk("Cu", "fcc", a=3.59, cubic=True), EMT(), 300.0, 50)
    >>> abs(res.drift.value) < 1e-2
    True
    """
    if int(n_steps) != n_steps or n_steps < 2:
        raise ValueError(f"n_steps must be an integer >= 2, got {n_steps!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 K, got {temperature!r}")
    calcs, is_list = _calc_list(calc)
    seed = np.random.default_rng(random_state).integers(2**63)
    n_atoms = len(atoms)
    times = np.arange(int(n_steps) + 1) * timestep / (1000.0 * units.fs)
    totals = []
    for c in calcs:
        work = _with_calc(atoms, c)
        _thermalize(work, temperature, rng=np.random.default_rng(seed))
        Stationary(work)
        energies: list[float] = []
        dyn = VelocityVerlet(work, timestep)
        # ASE calls observers before the first step too, so this records n_steps + 1 points
        dyn.attach(lambda w=work: energies.append(w.get_total_energy() / n_atoms), interval=1)
        dyn.run(int(n_steps))
        if len(energies) != len(times):
            raise RuntimeError(f"recorded {len(energies)} energies for {len(times)} MD points")
        totals.append(energies)
    totals = np.asarray(totals)
    drifts, flucts = [], []
    for e in totals:
        slope, intercept = np.polyfit(times, e, 1)
        drifts.append(slope)
        flucts.append(np.std(e - (slope * times + intercept)))
    return NVEResult(
        drift=_estimate(drifts, "eV/atom/ps", is_list),
        fluctuation=_estimate(flucts, "eV/atom", is_list),
        times=times,
        total_energy=totals,
    )
