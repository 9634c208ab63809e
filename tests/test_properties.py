"""Tests for kernelpot.properties with EMT (and a scaled EMT) as calculators."""

import os
import tempfile

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.phonons import Phonons
from scipy.integrate import trapezoid
from scipy.optimize import minimize_scalar

from kernelpot.workflows.properties import (
    Estimate,
    cubic,
    elastic_constants,
    equation_of_state,
    nve_drift,
    phonon_dos,
    phonons_gamma,
    surface_energy,
    surface_slab,
    vacancy_formation_energy,
    with_error_bars,
)

THZ_PER_EV = units._e / units._hplanck / 1e12


class ScaledEMT(Calculator):
    """EMT with energy, forces and stress multiplied by a constant."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self._emt = EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.calc = self._emt
        self.results = {
            "energy": self.scale * a.get_potential_energy(),
            "forces": self.scale * a.get_forces(),
            "stress": self.scale * a.get_stress(),
        }


def _emt_energy(a):
    c = bulk("Cu", "fcc", a=a)
    c.calc = EMT()
    return c.get_potential_energy()


@pytest.fixture(scope="module")
def a_emt():
    """EMT lattice constant of Cu by direct minimisation of E(a)."""
    return minimize_scalar(_emt_energy, bracket=(3.5, 3.6, 3.7), tol=1e-10).x


@pytest.fixture(scope="module")
def cu(a_emt):
    return bulk("Cu", "fcc", a=a_emt)


@pytest.fixture(scope="module")
def eos(a_emt):
    # start off the minimum so the fit has to find it
    return equation_of_state(bulk("Cu", "fcc", a=1.01 * a_emt), EMT())


def test_eos_lattice_constant_and_bulk_modulus(eos, a_emt):
    assert eos.a0.value == pytest.approx(a_emt, rel=1e-3)
    assert eos.a0.std is None and eos.a0.units == "Å"
    # B = V d2E/dV2 at the minimum, by central differences in volume
    v0 = a_emt**3 / 4
    h = 1e-3 * v0

    def e_of_v(v):
        return _emt_energy((4 * v) ** (1 / 3))

    d2 = (e_of_v(v0 + h) - 2 * e_of_v(v0) + e_of_v(v0 - h)) / h**2
    b_fd = v0 * d2 / units.GPa
    assert eos.B.value == pytest.approx(b_fd, rel=0.02)
    assert eos.V0.value == pytest.approx(v0, rel=3e-3)
    assert eos.energies.shape == (1, 7)


def test_eos_conventional_cell_gives_same_lattice_constant(eos, a_emt):
    conv = equation_of_state(bulk("Cu", "fcc", a=1.01 * a_emt, cubic=True), EMT())
    assert conv.a0.value == pytest.approx(eos.a0.value, rel=1e-6)
    assert conv.V0.value == pytest.approx(4 * eos.V0.value, rel=1e-6)


def test_elastic_constants_consistent_with_eos(cu, eos):
    res = elastic_constants(cu, EMT())
    C = res.C.value
    assert C.shape == (6, 6) and res.C.units == "GPa"
    cc = cubic(res)
    assert cc.B.value == pytest.approx(eos.B.value, rel=0.03)
    # cubic symmetry: no normal-shear coupling, equal diagonal blocks
    assert np.abs(C[:3, 3:]).max() < 1e-3 * cc.C11.value
    np.testing.assert_allclose(np.diag(C)[:3], cc.C11.value, rtol=1e-6)
    # Born stability of a cubic crystal
    assert cc.C11.value > abs(cc.C12.value) and cc.C44.value > 0
    assert cc.C11.value + 2 * cc.C12.value > 0


def test_elastic_ion_relaxation_softens_non_bravais_cell(a_emt):
    cell = bulk("Cu", "fcc", a=a_emt, cubic=True)
    clamped = cubic(elastic_constants(cell, EMT(), relax_ions=False))
    relaxed = cubic(elastic_constants(cell, EMT(), relax_ions=True))
    # the fcc conventional cell has no internal strain by symmetry
    assert relaxed.C44.value == pytest.approx(clamped.C44.value, rel=1e-4)
    hcp = bulk("Cu", "hcp", a=a_emt / np.sqrt(2), c=a_emt / np.sqrt(2) * np.sqrt(8 / 3))
    c_clamped = elastic_constants(hcp, EMT(), relax_ions=False).C.value
    c_relaxed = elastic_constants(hcp, EMT(), relax_ions=True).C.value
    # hcp has internal strain under in-plane strains only: relaxation lowers C11 and C66,
    # leaves C33 and C44, and both tensors keep hexagonal symmetry C66 = (C11 - C12) / 2
    assert c_relaxed[5, 5] < c_clamped[5, 5] - 5.0
    assert c_relaxed[0, 0] < c_clamped[0, 0] - 5.0
    assert c_relaxed[2, 2] == pytest.approx(c_clamped[2, 2], rel=1e-3)
    assert c_relaxed[3, 3] == pytest.approx(c_clamped[3, 3], rel=1e-3)
    for c in (c_clamped, c_relaxed):
        assert c[5, 5] == pytest.approx((c[0, 0] - c[0, 1]) / 2, rel=0.01)


def test_cubic_averages_equivalent_entries():
    C = np.zeros((6, 6))
    C[0, 0], C[1, 1], C[2, 2] = 170.0, 171.0, 172.0
    C[:3, :3] += np.where(np.eye(3) == 1, 0.0, 120.0)
    C[0, 1] = C[1, 0] = 123.0
    C[3, 3], C[4, 4], C[5, 5] = 74.0, 75.0, 76.0
    cc = cubic(C)
    assert cc.C11.value == pytest.approx(171.0)
    assert cc.C12.value == pytest.approx(121.0)
    assert cc.C44.value == pytest.approx(75.0)
    assert cc.B.value == pytest.approx((171.0 + 2 * 121.0) / 3)
    with pytest.raises(ValueError, match="shape"):
        cubic(np.zeros((3, 3)))


def test_error_bars_from_calculator_lists(cu, a_emt):
    same = equation_of_state(cu, [EMT(), EMT()])
    assert same.B.std == 0.0 and same.V0.std == 0.0
    assert same.B.samples.shape == (2,)
    diff = equation_of_state(cu, [EMT(), ScaledEMT(1.01)])
    # scaling E by 1.01 leaves V0 and scales B by exactly 1.01
    b0, b1 = diff.B.samples
    assert b1 / b0 == pytest.approx(1.01, rel=1e-8)
    assert diff.B.std == pytest.approx(abs(b1 - b0) / np.sqrt(2), rel=1e-10)
    assert diff.B.std > 0
    assert diff.V0.std == pytest.approx(0.0, abs=1e-8 * diff.V0.value)
    # frequencies scale with sqrt(1.01)
    ph = phonons_gamma(bulk("Cu", "fcc", a=a_emt, cubic=True), [EMT(), ScaledEMT(1.01)])
    f0, f1 = ph.frequencies.samples
    np.testing.assert_allclose(f1[3:], np.sqrt(1.01) * f0[3:], rtol=1e-6)
    assert np.all(ph.frequencies.std[3:] > 0)


def test_with_error_bars_generic():
    def energy(atoms, calc):
        a = atoms.copy()
        a.calc = calc
        return a.get_potential_energy()

    cu = bulk("Cu", "fcc", a=3.6)
    single = with_error_bars(energy, EMT(), cu, units="eV")
    assert single.std is None and single.samples.shape == (1,)
    pair = with_error_bars(energy, [EMT(), ScaledEMT(2.0)], cu, units="eV")
    assert pair.value == pytest.approx(1.5 * single.value)
    assert pair.std == pytest.approx(abs(single.value) / np.sqrt(2))
    # Estimates returned by property functions are unwrapped
    wrapped = with_error_bars(
        lambda atoms, calc: vacancy_formation_energy(atoms, calc, (2, 2, 2), relax=False),
        [EMT(), EMT()],
        cu,
    )
    assert isinstance(wrapped, Estimate) and wrapped.std == 0.0
    with pytest.raises(ValueError, match="empty"):
        with_error_bars(energy, [], cu)


def test_vacancy_formation_energy_of_a_compound_needs_mu():
    """In Ni3Al the elemental formula E(N-1) - (N-1)/N E(N) is no formation energy (the removed atom's energy
    depends on its reservoir): without mu it is an error, with mu it is E(N-1) + mu - E(N), by hand."""
    from ase import Atoms
    l12 = Atoms("Ni3Al", scaled_positions=[[.5, .5, 0], [.5, 0, .5], [0, .5, .5], [0, 0, 0]],
                cell=np.eye(3) * 3.56, pbc=True)
    with pytest.raises(ValueError, match=r"holds Al\d*Ni\d*: removing a Al atom needs its chemical potential"):
        vacancy_formation_energy(l12, EMT(), (2, 2, 2), relax=False, index=3)
    ni = bulk("Ni", "fcc", a=3.52)
    ni.calc = EMT()
    mu = ni.get_potential_energy() / len(ni)
    got = vacancy_formation_energy(l12, EMT(), (2, 2, 2), relax=False, index=0, mu=mu).value
    perfect = l12.repeat(2)
    defect = perfect.copy()
    del defect[0]
    perfect.calc, defect.calc = EMT(), EMT()
    assert got == pytest.approx(defect.get_potential_energy() + mu - perfect.get_potential_energy(), abs=1e-10)


def test_vacancy_formation_energy(cu):
    relaxed = vacancy_formation_energy(cu, EMT(), (3, 3, 3), relax=True)
    unrelaxed = vacancy_formation_energy(cu, EMT(), (3, 3, 3), relax=False)
    again = vacancy_formation_energy(cu, EMT(), (3, 3, 3), relax=True)
    assert relaxed.units == "eV"
    assert 0.5 < relaxed.value < 2.0
    assert relaxed.value == pytest.approx(again.value, abs=1e-9)
    # relaxation can only lower the defect energy (the perfect crystal is already relaxed)
    assert relaxed.value < unrelaxed.value
    # which atom is removed does not matter in a monatomic crystal
    other = vacancy_formation_energy(cu, EMT(), (3, 3, 3), relax=False, index=13)
    assert other.value == pytest.approx(unrelaxed.value, abs=1e-8)


def _with(atoms, calc):
    a = atoms.copy()
    a.calc = calc
    return a


def test_surface_energies_ordered(a_emt):
    conv = bulk("Cu", "fcc", a=a_emt, cubic=True)
    s111 = surface_energy(conv, EMT(), (1, 1, 1), layers=5)
    s100 = surface_energy(conv, EMT(), (1, 0, 0), layers=5)
    assert s111.gamma.value > 0 and s111.gamma.units == "J/m^2"
    # the close-packed face has the lowest energy in fcc metals
    assert s111.gamma.value < s100.gamma.value
    assert s111.gamma.value == pytest.approx(16.021766 * s111.gamma_eV_per_A2.value, rel=1e-6)
    # converged in slab thickness: an extra layer changes gamma by < 1 %
    s111_6 = surface_energy(conv, EMT(), (1, 1, 1), layers=6)
    assert s111_6.gamma.value == pytest.approx(s111.gamma.value, rel=0.01)
    # each (111) layer holds one atom per sqrt(3)/4 a^2 of area
    assert s111.area / (s111.n_atoms / 5) == pytest.approx(np.sqrt(3) / 4 * a_emt**2, rel=1e-8)
    # surface_slab is the slab surface_energy evaluates (the reference for posterior samples): by hand
    slab = surface_slab(conv, (1, 1, 1), 5)
    slab.calc = EMT()
    e_bulk = _with(conv, EMT()).get_potential_energy() / len(conv)
    area = np.linalg.norm(np.cross(slab.cell[0], slab.cell[1]))
    assert (slab.get_potential_energy() - len(slab) * e_bulk) / (2 * area) == pytest.approx(
        s111.gamma_eV_per_A2.value, rel=1e-12)
    with pytest.raises(ValueError, match="layers must be a positive integer"):
        surface_slab(conv, (1, 1, 1), 0)


def test_phonons_gamma_acoustic_zero_and_matches_ase_at_x(cu, a_emt):
    freqs = phonons_gamma(bulk("Cu", "fcc", a=a_emt, cubic=True), EMT()).frequencies.value
    assert freqs.shape == (12,)
    assert np.all(np.abs(freqs[:3]) < 0.05)
    assert np.all(freqs[3:] > 1.0)
    # Gamma of the conventional cell folds the three X points of the primitive cell;
    # ASE's Phonons in a 2x2x2 supercell (commensurate with X) must agree
    with tempfile.TemporaryDirectory() as tmp:
        ph = Phonons(cu, EMT(), supercell=(2, 2, 2), name=os.path.join(tmp, "ph"))
        ph.run()
        ph.read(acoustic=False)
        x = cu.cell.bandpath("GX", npoints=0).special_points["X"]
        at_x = np.sort(ph.band_structure([x])[0]) * THZ_PER_EV
    np.testing.assert_allclose(freqs[3:], np.sort(np.tile(at_x, 3)), rtol=1e-3)


def test_phonon_dos_normalised_and_cleans_up(cu, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    res = phonon_dos(cu, [EMT(), EMT()], supercell=(3, 3, 3), kpts=(6, 6, 6), width=0.1)
    assert list(tmp_path.iterdir()) == []
    np.testing.assert_array_equal(res.imaginary_fraction, 0.0)
    integral = trapezoid(res.dos.value, res.frequencies)
    assert integral == pytest.approx(3.0, rel=0.01)
    assert np.all(res.dos.std == 0.0)
    # a 2x2x2 supercell is shorter than the EMT force-constant range: aliasing shows up
    small = phonon_dos(cu, EMT(), supercell=(2, 2, 2), kpts=(6, 6, 6))
    assert small.imaginary_fraction[0] > 0
    # highest frequency is the LA mode at X (about 8.1 THz for EMT Cu)
    top = res.frequencies[np.flatnonzero(res.dos.value > 1e-3).max()]
    assert top == pytest.approx(8.2, abs=0.6)


def test_nve_drift_small_and_error_scales_with_timestep(a_emt):
    atoms = bulk("Cu", "fcc", a=a_emt, cubic=True).repeat(2)
    fine = nve_drift(atoms, EMT(), temperature=300.0, n_steps=300, timestep=1.0 * units.fs)
    coarse = nve_drift(atoms, EMT(), temperature=300.0, n_steps=75, timestep=4.0 * units.fs)
    assert fine.drift.units == "eV/atom/ps"
    assert abs(fine.drift.value) < 1e-4
    assert fine.fluctuation.value < 2e-5
    # velocity Verlet energy error ~ dt^2: 16x at 4x the step (allow a wide margin)
    assert coarse.fluctuation.value > 5 * fine.fluctuation.value
    assert fine.times[-1] == pytest.approx(0.3)
    assert fine.total_energy.shape == (1, 301)
