"""Tests of kernelpot.baselines: shared contract (E/F/S consistency, serialisation, Sum), e0.

Physics specific to one baseline lives in test_repulsion.py, test_zbl.py and test_ewald.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list
from sklearn.base import clone

from kernelpot.baselines import ZBL, Ewald, IsolatedAtomEnergies, Repulsion, Sum, from_dict

CHARGES = {"Na": 1.0, "Cl": -1.0, "Mg": 2.0, "O": -2.0}


# ---------------------------------------------------------------------------- structures
def _random_structure(cell, pbc, symbols, seed, d_min=1.3):
    """Atoms at random positions with no two (images) closer than d_min Å."""
    rng = np.random.default_rng(seed)
    cell = np.asarray(cell, float)
    for _ in range(10_000):
        atoms = Atoms(symbols, cell=cell, pbc=pbc)
        if np.any(pbc):
            atoms.set_scaled_positions(rng.random((len(symbols), 3)))
        else:
            atoms.positions = rng.random((len(symbols), 3)) * np.diag(cell)
        d = neighbor_list("d", atoms, d_min)
        if len(d) == 0:
            if not np.any(pbc):
                atoms.cell = np.zeros((3, 3))
            return atoms
    raise RuntimeError("could not place atoms")


def rattled_rocksalt():
    """8-atom cubic NaCl, strongly compressed (a = 3.4 Å) and rattled: Na-Cl near 1.7 Å."""
    atoms = bulk("NaCl", "rocksalt", a=3.4, cubic=True)
    atoms.rattle(0.15, seed=3)
    return atoms


def triclinic_cell():
    """6 atoms, 4 species, neutral with CHARGES, strongly skewed cell."""
    cell = [[3.6, 0.0, 0.0], [1.3, 3.3, 0.0], [-0.9, 0.8, 3.4]]
    return _random_structure(cell, True, ["Na", "Na", "Mg", "Cl", "Cl", "O"], seed=7)


def cluster():
    """Same composition as triclinic_cell, in vacuum."""
    return _random_structure(np.eye(3) * 3.0, False, ["Na", "Na", "Mg", "Cl", "Cl", "O"], seed=12)


STRUCTURES = {"rocksalt": rattled_rocksalt, "triclinic": triclinic_cell, "cluster": cluster}


def baseline_factories():
    return {
        "repulsion_covalent": lambda: Repulsion(),
        "repulsion_dict": lambda: Repulsion(
            A={("Na", "Na"): 50.0, (11, 17): 80.0, "Cl-Cl": 30.0, "Mg-Na": 5.0, "O-Na": 7.0, "Mg-Mg": 3.0,
               "Cl-Mg": 9.0, "Mg-O": 11.0, "Cl-O": 13.0, "O-O": 2.0},
            n=6, r_cut=3.5, cutoff_width=1.5),
        "zbl_default": lambda: ZBL(),
        "zbl_fixed": lambda: ZBL(r_inner=1.3, r_outer=2.6),
        "ewald": lambda: Ewald(CHARGES, accuracy=1e-12),
        "e0": lambda: IsolatedAtomEnergies({"Na": -1.3, "Cl": -0.4, "Mg": -0.05, "O": -1.9}),
        "sum": lambda: Sum([Repulsion(), Sum([ZBL(r_inner=1.3, r_outer=2.6), Ewald(CHARGES, accuracy=1e-12)])]),
    }


BASELINES = baseline_factories()


# ---------------------------------------------------------------------------- finite differences
def fd_forces(baseline, atoms, h=1e-5):
    forces = np.zeros((len(atoms), 3))
    for a in range(len(atoms)):
        for c in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[a, c] += sign * h
                energies.append(baseline.compute(moved)[0])
            forces[a, c] = -(energies[0] - energies[1]) / (2 * h)
    return forces


def fd_stress(baseline, atoms, h=1e-6):
    """Central differences with cell -> cell @ (I + eps), scaled positions fixed (as ASE)."""
    cell = np.array(atoms.cell)
    volume = atoms.get_volume()
    stress = np.zeros(6)
    for v, (a, b) in enumerate([(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]):
        energies = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[a, b] = eps[b, a] = sign * h
            strained = atoms.copy()
            strained.set_cell(cell @ (np.eye(3) + eps), scale_atoms=True)
            energies.append(baseline.compute(strained)[0])
        stress[v] = (energies[0] - energies[1]) / (2 * h * volume) / (1 if a == b else 2)
    return stress


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_forces_and_stress_match_finite_differences(name, structure):
    baseline = BASELINES[name]()
    atoms = STRUCTURES[structure]()
    energy, forces, stress = baseline.compute(atoms)
    assert np.isfinite(energy)
    assert forces.shape == (len(atoms), 3) and stress.shape == (6,)
    num_f = fd_forces(baseline, atoms)
    scale = max(1.0, np.abs(num_f).max())
    np.testing.assert_allclose(forces, num_f, rtol=0, atol=2e-6 * scale)
    if structure == "cluster":
        np.testing.assert_array_equal(stress, 0.0)
        # no external field: forces sum to zero
        np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-9 * scale)
    else:
        num_s = fd_stress(baseline, atoms)
        s_scale = max(1e-3, np.abs(num_s).max())
        np.testing.assert_allclose(stress, num_s, rtol=0, atol=2e-6 * s_scale)


def test_structures_exercise_the_switching_regions():
    """Guard: the FD structures contain pairs inside the ZBL and repulsion switching zones."""
    for make in STRUCTURES.values():
        atoms = make()
        d = neighbor_list("d", atoms, 3.0)
        assert np.any((d > 1.3) & (d < 2.6)), "no pair in the ZBL switching region"
        assert np.any((d > 2.0) & (d < 3.0)), "no pair in the repulsion switching region"
    for name in ("zbl_default", "zbl_fixed", "repulsion_covalent", "ewald"):
        for make in STRUCTURES.values():
            energy, forces, _ = BASELINES[name]().compute(make())
            assert abs(energy) > 1e-6 and np.abs(forces).max() > 1e-6, (name, make.__name__)


def _equivalent_cell(atoms):
    """The same crystal in a different, more skewed cell (unimodular integer transform)."""
    M = np.array([[1, 1, 0], [0, 1, -1], [1, 0, 2]])  # det 1: same lattice
    assert round(abs(np.linalg.det(M))) == 1
    other = atoms.copy()
    other.set_cell(M @ np.array(atoms.cell), scale_atoms=False)
    other.wrap()
    return other


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("structure", ["rocksalt", "triclinic"])
def test_same_crystal_in_another_cell_gives_same_results(name, structure):
    baseline = BASELINES[name]()
    atoms = STRUCTURES[structure]()
    other = _equivalent_cell(atoms)
    assert not np.allclose(np.array(other.cell), np.array(atoms.cell))
    e1, f1, s1 = baseline.compute(atoms)
    e2, f2, s2 = baseline.compute(other)
    assert e2 == pytest.approx(e1, rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(f2, f1, rtol=0, atol=1e-8 * max(1.0, np.abs(f1).max()))
    np.testing.assert_allclose(s2, s1, rtol=0, atol=1e-8 * max(1e-2, np.abs(s1).max()))


def test_compressed_repulsive_cell_has_negative_stress():
    atoms = bulk("Si", "diamond", a=3.0)  # Si-Si 1.30 Å, far inside the repulsion
    stress = Repulsion().compute(atoms)[2]
    assert np.all(stress[:3] < 0)
    np.testing.assert_allclose(stress[3:], 0.0, atol=1e-12)


# ---------------------------------------------------------------------------- serialisation
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_to_dict_json_round_trip_gives_identical_results(name):
    baseline = BASELINES[name]()
    d = baseline.to_dict()
    assert "kind" in d
    text = json.dumps(d)
    rebuilt = from_dict(json.loads(text))
    assert type(rebuilt) is type(baseline)
    assert json.dumps(rebuilt.to_dict()) == text
    for make in STRUCTURES.values():
        atoms = make()
        e1, f1, s1 = baseline.compute(atoms)
        e2, f2, s2 = rebuilt.compute(atoms)
        assert e1 == e2
        np.testing.assert_array_equal(f1, f2)
        np.testing.assert_array_equal(s1, s2)


def test_per_atom_ewald_charges_round_trip():
    atoms = triclinic_cell()
    q = np.array([CHARGES[s] for s in atoms.get_chemical_symbols()])
    b = Ewald(q, accuracy=1e-10)
    rebuilt = from_dict(json.loads(json.dumps(b.to_dict())))
    assert b.compute(atoms)[0] == rebuilt.compute(atoms)[0]


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_sklearn_clone_keeps_settings(name):
    baseline = BASELINES[name]()
    assert json.dumps(clone(baseline).to_dict()) == json.dumps(baseline.to_dict())


def test_from_dict_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown baseline kind 'lj'.*ewald"):
        from_dict({"kind": "lj"})
    with pytest.raises(ValueError, match="'kind' key"):
        from_dict({"r_cut": 3.0})


# ---------------------------------------------------------------------------- Sum
def test_sum_adds_energy_forces_and_stress():
    atoms = triclinic_cell()
    parts = [Repulsion(), ZBL(r_inner=1.3, r_outer=2.6), Ewald(CHARGES)]
    total = Sum(parts).compute(atoms)
    each = [p.compute(atoms) for p in parts]
    assert total[0] == pytest.approx(sum(e[0] for e in each), rel=1e-14)
    np.testing.assert_allclose(total[1], sum(e[1] for e in each), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(total[2], sum(e[2] for e in each), rtol=1e-13, atol=1e-15)
    assert all(abs(e[0]) > 1e-3 for e in each)


def test_sum_to_dict_nests():
    s = Sum([IsolatedAtomEnergies({"Si": -1.0}), Sum([ZBL(r_inner=0.5, r_outer=1.0)])])
    d = s.to_dict()
    assert d == {
        "kind": "sum",
        "baselines": [
            {"kind": "isolated_atom_energies", "energies": {"Si": -1.0}},
            {"kind": "sum", "baselines": [{"kind": "zbl", "r_inner": 0.5, "r_outer": 1.0}]},
        ],
    }


def test_sum_rejects_non_baselines():
    with pytest.raises(TypeError, match=r"baselines\[1\] \(str\) is not a baseline"):
        Sum([ZBL(), "zbl"]).compute(molecule("H2O"))


# ---------------------------------------------------------------------------- e0
def test_isolated_atom_energies_sum_per_element():
    atoms = molecule("CH3CH2OH")  # C2 H6 O
    e0 = IsolatedAtomEnergies({"C": -1.5, 1: -0.25, "O": -2.0, "Si": 7.0})
    energy, forces, stress = e0.compute(atoms)
    assert energy == pytest.approx(2 * -1.5 + 6 * -0.25 + -2.0, abs=1e-14)
    np.testing.assert_array_equal(forces, np.zeros((9, 3)))
    np.testing.assert_array_equal(stress, np.zeros(6))
    assert e0.to_dict()["energies"] == {"H": -0.25, "C": -1.5, "O": -2.0, "Si": 7.0}


def test_isolated_atom_energies_names_missing_element():
    with pytest.raises(ValueError, match=r"no energy for element O \(Z=8\).*given for: H, C"):
        IsolatedAtomEnergies({"H": -0.5, "C": -1.0}).compute(molecule("CH3OH"))


@pytest.mark.parametrize(
    "energies, match",
    [
        ({"Xx": 1.0}, "unknown element 'Xx'"),
        ({"Si": 1.0, 14: 2.0}, "Si .Z=14. is given twice"),
        ({"Si": "a lot"}, r"energies\['Si'\]: expected a number"),
        ([("Si", 1.0)], "expected a dict"),
        ({0: 1.0}, "atomic number 0 is out of range"),
    ],
)
def test_isolated_atom_energies_validation(energies, match):
    with pytest.raises(ValueError, match=match):
        IsolatedAtomEnergies(energies).compute(bulk("Si"))


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_empty_structure_gives_zeros(name):
    for atoms in (Atoms(), Atoms(cell=np.eye(3) * 3.0, pbc=True)):
        energy, forces, stress = BASELINES[name]().compute(atoms)
        assert energy == 0.0 and forces.shape == (0, 3)
        np.testing.assert_array_equal(stress, np.zeros(6))
