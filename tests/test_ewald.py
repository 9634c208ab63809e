"""Tests of kernelpot.baselines.ewald (finite-difference and serialisation checks: test_baselines.py)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from kernelpot.baselines import Ewald

K = 14.399645  # e^2 / (4 pi eps0), eV Å
CHARGES = {"Na": 1.0, "Cl": -1.0, "Mg": 2.0, "O": -2.0}


def _skewed_ionic_cell():
    cell = np.array([[4.1, 0.0, 0.0], [1.7, 3.8, 0.0], [-1.1, 0.9, 4.3]])
    scaled = np.array(
        [[0.05, 0.10, 0.00], [0.52, 0.47, 0.11], [0.31, 0.83, 0.62], [0.77, 0.21, 0.48], [0.12, 0.55, 0.71], [0.66, 0.69, 0.29]]
    )
    return Atoms("NaClMgONaCl", scaled_positions=scaled, cell=cell, pbc=True)


# Published Madelung constants (nearest-neighbour convention), e.g. Glasser & Zucker (1980).
@pytest.mark.parametrize(
    "formula, structure, r_nn_over_a, madelung",
    [
        ("NaCl", "rocksalt", 0.5, 1.747564594633),
        ("CsCl", "cesiumchloride", np.sqrt(3) / 2, 1.762674773070),
        ("ZnS", "zincblende", np.sqrt(3) / 4, 1.638055053388),
    ],
)
@pytest.mark.parametrize("cubic", [False, True])
def test_madelung_constants(formula, structure, r_nn_over_a, madelung, cubic):
    a = 5.3
    atoms = bulk(formula, structure, a=a, cubic=cubic)
    cation, anion = sorted(set(atoms.get_chemical_symbols()), key=atoms.get_chemical_symbols().index)
    energy, forces, stress = Ewald({cation: 1, anion: -1}).compute(atoms)
    measured = -energy / (len(atoms) / 2) * (r_nn_over_a * a) / K
    assert measured == pytest.approx(madelung, abs=1e-6)
    # symmetric sites: no force; E ~ 1/a so dE/d(ln a) = -E and stress_ii = -E / (3 V)
    np.testing.assert_allclose(forces, 0.0, atol=1e-9)
    # (truncation error of the stress is ~10x that of the energy at the default accuracy 1e-8)
    np.testing.assert_allclose(stress[:3], -energy / (3 * atoms.get_volume()), rtol=1e-6)
    np.testing.assert_allclose(stress[3:], 0.0, atol=1e-10)


def test_primitive_triclinic_cell_matches_cubic_cell_per_ion():
    a = 5.64
    primitive = bulk("NaCl", "rocksalt", a=a)  # 2 atoms, fcc primitive (60 degree) cell
    cubic = bulk("NaCl", "rocksalt", a=a, cubic=True)  # 8 atoms
    ewald = Ewald({"Na": 1, "Cl": -1}, accuracy=1e-10)
    e_prim = ewald.compute(primitive)[0]
    e_cubic = ewald.compute(cubic)[0]
    assert e_prim / len(primitive) == pytest.approx(e_cubic / len(cubic), rel=1e-9)
    np.testing.assert_allclose(ewald.compute(primitive)[2], ewald.compute(cubic)[2], rtol=1e-8, atol=1e-14)
    big = primitive.repeat((2, 2, 2))  # 16 atoms, still triclinic
    assert ewald.compute(big)[0] == pytest.approx(8 * e_prim, rel=1e-9)


@pytest.mark.parametrize("alpha", [0.22, 0.35, 0.6, 0.9])
def test_result_does_not_depend_on_splitting_parameter(alpha):
    atoms = _skewed_ionic_cell()
    reference = Ewald(CHARGES, accuracy=1e-12).compute(atoms)
    result = Ewald(CHARGES, accuracy=1e-12, alpha=alpha).compute(atoms)
    assert Ewald(CHARGES, alpha=alpha).split_parameters(atoms)[0] == alpha
    assert result[0] == pytest.approx(reference[0], rel=1e-8)
    np.testing.assert_allclose(result[1], reference[1], rtol=0, atol=1e-7 * np.abs(reference[1]).max())
    np.testing.assert_allclose(result[2], reference[2], rtol=0, atol=1e-7 * np.abs(reference[2]).max())


def test_default_accuracy_reaches_its_target():
    atoms = _skewed_ionic_cell()
    converged = Ewald(CHARGES, accuracy=1e-14).compute(atoms)[0]
    for acc in (1e-6, 1e-8):
        assert Ewald(CHARGES, accuracy=acc).compute(atoms)[0] == pytest.approx(converged, rel=10 * acc)


def test_split_parameters_follow_the_documented_rule():
    atoms = _skewed_ionic_cell()
    alpha, r_cut, k_cut = Ewald(CHARGES, accuracy=1e-8).split_parameters(atoms)
    assert alpha == pytest.approx(np.sqrt(np.pi) * (250 * 6 / atoms.get_volume() ** 2) ** (1 / 6), rel=1e-14)
    assert r_cut == pytest.approx(np.sqrt(-np.log(1e-8)) / alpha, rel=1e-14)
    assert k_cut == pytest.approx(2 * alpha * np.sqrt(-np.log(1e-8)), rel=1e-14)


def test_per_atom_charges_equal_per_species_charges():
    atoms = _skewed_ionic_cell()
    q = np.array([CHARGES[s] for s in atoms.get_chemical_symbols()])
    by_species = Ewald(CHARGES).compute(atoms)
    by_atom = Ewald(q).compute(atoms)
    assert by_atom[0] == by_species[0]
    np.testing.assert_array_equal(by_atom[1], by_species[1])
    # symbols and atomic numbers are interchangeable keys
    by_number = Ewald({11: 1.0, 17: -1.0, 12: 2.0, 8: -2.0}).compute(atoms)
    assert by_number[0] == by_species[0]


def test_charge_scaling_is_quadratic():
    atoms = _skewed_ionic_cell()
    e1 = Ewald(CHARGES).compute(atoms)[0]
    e3 = Ewald({k: 3 * v for k, v in CHARGES.items()}).compute(atoms)[0]
    assert e3 == pytest.approx(9 * e1, rel=1e-12)


def test_molecule_uses_direct_coulomb_sum():
    positions = np.array([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.3, 1.7, -0.4]])
    atoms = Atoms("NaClMg", positions=positions)
    q = np.array([1.0, -2.5, 0.7])
    energy, forces, stress = Ewald(q).compute(atoms)
    expected = 0.0
    expected_f = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            if a != b:
                d = positions[a] - positions[b]
                r = np.linalg.norm(d)
                if a < b:
                    expected += K * q[a] * q[b] / r
                expected_f[a] += K * q[a] * q[b] * d / r**3
    assert energy == pytest.approx(expected, rel=1e-14)
    np.testing.assert_allclose(forces, expected_f, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(stress, 0.0)
    # a charged molecule is fine without periodicity
    Ewald({"Na": 1.0, "Cl": 1.0, "Mg": 1.0}).compute(atoms)


def test_non_neutral_periodic_cell_names_total_charge():
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    with pytest.raises(ValueError, match=r"total charge \+0.5 e.*neutral"):
        Ewald({"Na": 1.0, "Cl": -0.5}).compute(atoms)


def test_mixed_pbc_is_rejected_with_what_is_supported():
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.pbc = [True, True, False]
    with pytest.raises(ValueError, match=r"mixed periodicity pbc=\[True, True, False\].*pbc all True.*pbc all False"):
        Ewald({"Na": 1, "Cl": -1}).compute(atoms)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(charges={"Na": 1}), r"no charge for element Cl \(Z=17\).*given for: Na"),
        (dict(charges=[1.0, -1.0, 0.0]), "3 per-atom charges given but the structure .* has 2 atoms"),
        (dict(charges=[[1.0, -1.0]]), r"shape \(1, 2\), expected \(n_atoms,\)"),
        (dict(charges={"Na": 1, "Cl": -1}, accuracy=0.0), "accuracy=0.0 is not allowed"),
        (dict(charges={"Na": 1, "Cl": -1}, accuracy=2), "accuracy=2 is not allowed"),
        (dict(charges={"Na": 1, "Cl": -1}, alpha=-0.3), "alpha=-0.3 is not allowed"),
        (dict(charges={"Na": 1, "Cl": float("nan")}), "expected a finite number"),
    ],
)
def test_invalid_settings_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Ewald(**kwargs).compute(bulk("NaCl", "rocksalt", a=5.64))
