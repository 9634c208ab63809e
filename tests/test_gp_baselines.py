"""SparseGP with physics baselines: derivative consistency, model files, repulsion, long range.

Uses the rigid-ion NaCl reference of ``data/make_nacl.py`` (Tosi-Fumi short range plus the
Coulomb energy of charges +1/-1), its shipped data files, and EMT copper from conftest.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

import kernelpot
from kernelpot import SOAP, SparseGP
from kernelpot.baselines import ZBL, Ewald, Sum
from kernelpot.uq.evaluation import error_table, evaluate

from conftest import emt_frames, label

DATA = Path(__file__).resolve().parents[1] / "data"
CHARGES = {"Na": 1.0, "Cl": -1.0}
H = 1e-4


def _load_make_nacl():
    spec = importlib.util.spec_from_file_location("make_nacl", DATA / "make_nacl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_nacl = _load_make_nacl()


@pytest.fixture(scope="module")
def tiny_soap():
    """Smaller than conftest's small_soap: enough for derivative and file checks."""
    return SOAP(r_cut=4.0, n_max=3, l_max=2, atom_sigma=0.5)


@pytest.fixture(scope="module")
def nacl_small_frames():
    """Six rattled 8-atom NaCl cells at several densities, labelled in-test by the reference."""
    rng = np.random.default_rng(7)
    out = []
    for k in range(6):
        a = bulk("NaCl", "rocksalt", a=5.62 * rng.uniform(0.97, 1.03), cubic=True)
        a.positions += rng.normal(0.0, 0.08, a.positions.shape)
        a.info["config_type"] = "rattle"
        out.append(label(a, make_nacl.TosiFumiNaCl()))
    return out


@pytest.fixture(scope="module")
def sum_model(nacl_small_frames, tiny_soap):
    baseline = Sum([Ewald(CHARGES), ZBL()])
    # fixed energy noise: six near-perfectly fitted frames do not constrain it (it would sit at its floor)
    return SparseGP(descriptor=tiny_soap, n_sparse=30, sigma_energy=1e-3, baseline=baseline).fit(nacl_small_frames)


def _probe_structure():
    """Strained, rattled 8-atom NaCl with one Na-Cl pair pushed to 1.3 Å, inside ZBL's switch (0.80-1.61 Å)."""
    rng = np.random.default_rng(3)
    a = bulk("NaCl", "rocksalt", a=5.62, cubic=True)
    eps = np.array([[0.02, 0.015, -0.01], [0.015, -0.01, 0.02], [-0.01, 0.02, 0.01]])
    a.set_cell(a.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    a.positions += rng.normal(0.0, 0.05, a.positions.shape)
    na, cl = 0, int(np.argmin(np.where(a.numbers == 17, a.get_distances(0, range(len(a)), mic=True), np.inf)))
    d = a.get_distance(na, cl, mic=True, vector=True)
    a.positions[na] += d * (1.0 - 1.3 / np.linalg.norm(d))
    assert a.get_distance(na, cl, mic=True) == pytest.approx(1.3)
    return a


# ------------------------------------------------------------------------------ the reference
def test_reference_forces_and_stress_match_finite_differences():
    a = bulk("NaCl", "rocksalt", a=5.5).repeat((2, 1, 1))  # 4 atoms, a non-cubic (fcc primitive) cell
    a.positions += np.random.default_rng(1).normal(0.0, 0.1, a.positions.shape)
    df, ds = make_nacl.finite_difference_errors(a, h=H)
    assert df < 1e-6  # eV/Å; forces are of order 1 eV/Å
    assert ds < 1e-7  # eV/Å^3


def test_reference_lattice_constant_and_dimer_are_physical():
    # Tosi-Fumi NaCl: static a0 5.6 Å and lattice energy near -8 eV per ion pair (exp. -8.2)
    a0 = make_nacl.lattice_constant()
    assert 5.55 < a0 < 5.70
    crystal = bulk("NaCl", "rocksalt", a=a0, cubic=True)
    crystal.calc = make_nacl.TosiFumiNaCl()
    assert -8.3 < crystal.get_potential_energy() / 4 < -7.8
    assert np.abs(crystal.get_stress()[:3]).max() < 1e-4  # eV/Å^3: a0 is the zero-pressure point
    # the NaCl molecule (Coulomb + short range) binds near 2.4 Å (exp. 2.36 Å)
    r = np.linspace(1.8, 3.2, 57)
    e = []
    for x in r:
        dimer = Atoms("NaCl", positions=[[0, 0, 0], [0, 0, x]])
        dimer.calc = make_nacl.TosiFumiNaCl()
        e.append(dimer.get_potential_energy())
    assert 2.2 < r[int(np.argmin(e))] < 2.5


@pytest.mark.parametrize("split", ["train", "test"])
def test_shipped_data_labels_equal_reference(split):
    frames = kernelpot.read(DATA / f"nacl_{split}.xyz")
    assert len(frames) == {"train": 100, "test": 30}[split]
    seen = {}
    for a in frames:  # first frame of every config_type
        seen.setdefault(a.info["config_type"], a)
    assert set(seen) == {"rattle", "strain", "hydrostatic", "md_300K", "md_700K", "md_1000K", "schottky"}
    for ct, a in seen.items():
        b = a.copy()
        b.calc = make_nacl.TosiFumiNaCl()
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), abs=1e-6), ct
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-6, err_msg=ct)
        np.testing.assert_allclose(b.get_stress(), a.get_stress(), atol=1e-9, err_msg=ct)
        assert sorted(set(a.get_chemical_symbols())) == ["Cl", "Na"]
        assert (a.numbers == 11).sum() == (a.numbers == 17).sum()  # neutral with charges +-1


def test_make_nacl_reproduces_first_frames_byte_for_byte(tmp_path):
    a0 = make_nacl.lattice_constant()
    first = list(itertools.islice(make_nacl.iter_frames("train", a0), 3))
    kernelpot.write(tmp_path / "head.xyz", first)
    assert (DATA / "nacl_train.xyz").read_bytes().startswith((tmp_path / "head.xyz").read_bytes())


# ------------------------------------------------------------------------------ GP + baseline
def test_forces_are_negative_energy_gradient(sum_model):
    atoms = _probe_structure()
    atoms.calc = sum_model.calculator(uncertainty=False)
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1.0  # the compressed pair is strongly pushed apart
    numeric = np.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            e = []
            for sign in (1.0, -1.0):
                b = atoms.copy()
                b.positions[i, k] += sign * H
                b.calc = sum_model.calculator(uncertainty=False)
                e.append(b.get_potential_energy())
            numeric[i, k] = -(e[0] - e[1]) / (2 * H)
    np.testing.assert_allclose(forces, numeric, atol=2e-5 * max(1.0, np.abs(forces).max()))


def test_stress_is_strain_derivative(sum_model):
    atoms = _probe_structure()
    atoms.calc = sum_model.calculator(uncertainty=False)
    stress = atoms.get_stress()
    volume = atoms.get_volume()
    numeric = np.zeros(6)
    for v, (p, q) in enumerate([(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]):
        e = []
        for sign in (1.0, -1.0):
            eps = np.zeros((3, 3))
            eps[p, q] = eps[q, p] = sign * H
            b = atoms.copy()
            b.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            b.calc = sum_model.calculator(uncertainty=False)
            e.append(b.get_potential_energy())
        numeric[v] = (e[0] - e[1]) / (2 * H) / volume / (1.0 if p == q else 2.0)
    np.testing.assert_allclose(stress, numeric, atol=1e-6)  # eV/Å^3 (1e-6 eV/Å^3 = 0.16 MPa)
    assert np.abs(stress).max() > 1e-3


def test_ewald_baseline_beats_local_gp_on_rigid_ion_data(small_soap):
    """Same descriptor, same 12 small training cells: the GP on top of the exact Coulomb term wins.

    The test set includes 62- and 64-atom cells (vacancy pairs, MD), where the Coulomb energy
    beyond the 4 Å descriptor cutoff differs most from that of the 8/16-atom training cells.
    """
    small = [a for a in kernelpot.read(DATA / "nacl_train.xyz") if len(a) <= 16]
    train = small[1::7]
    assert len(train) == 12 and len({a.info["config_type"] for a in train}) >= 4
    test = kernelpot.read(DATA / "nacl_test.xyz")
    errors = {}
    for name, baseline in (("local", None), ("ewald", Ewald(CHARGES))):
        model = SparseGP(descriptor=small_soap, n_sparse=40, baseline=baseline).fit(train)
        rows = error_table(evaluate(model, test, return_std=False))
        errors[name] = (rows["energy"]["MAE"], rows["forces"]["MAE"])  # meV/atom, eV/Å
    (e_local, f_local), (e_ewald, f_ewald) = errors["local"], errors["ewald"]
    # measured: local 7.8 meV/atom, 0.12 eV/Å; with Ewald 1.1 meV/atom, 0.024 eV/Å
    assert e_ewald < e_local / 3.0, errors
    assert f_ewald < f_local / 2.0, errors
    assert e_ewald < 3.0, errors  # meV/atom: the residual (Tosi-Fumi short range) is easy to learn


def test_baseline_stored_in_model_file_and_reload_predicts_identically(sum_model, tmp_path):
    path = tmp_path / "nacl_model.npz"
    sum_model.save(path)
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(str(z["header"]))
    stored = header["baseline"]
    assert stored == sum_model.baseline.to_dict()
    assert stored["kind"] == "sum" and [b["kind"] for b in stored["baselines"]] == ["ewald", "zbl"]
    assert stored["baselines"][0]["charges"] == {"Na": 1.0, "Cl": -1.0}

    loaded = kernelpot.load(path)
    assert isinstance(loaded.baseline, Sum)
    frames = [_probe_structure(), make_nacl._prim16(5.7)]
    p0 = sum_model.predict(frames)
    p1 = loaded.predict(frames)
    for key in ("energy", "forces", "stress", "energy_std", "forces_std", "stress_std"):
        np.testing.assert_allclose(p1[key], p0[key], rtol=1e-12, atol=1e-12, err_msg=key)


# ------------------------------------------------------------------------------ short distances
def _dimer_energies(model, r):
    """Isolated Cu2 at distances ``r`` (Å)."""
    dimers = [Atoms("Cu2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, x]], pbc=False) for x in r]
    return np.array([model.predict_frame(a, return_std=False, forces=False)["energy"] for a in dimers])


def _pushed_energies(model, r):
    """32-atom fcc Cu with atom 0 moved along the bond towards its neighbour 1, to distances ``r`` (Å)."""
    out = []
    for x in r:
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        bond = a.positions[1] - a.positions[0]
        a.positions[0] = a.positions[1] - bond / np.linalg.norm(bond) * x
        out.append(model.predict_frame(a, return_std=False, forces=False)["energy"])
    return np.array(out)


def test_zbl_prior_makes_compressed_dimer_monotonically_repulsive(small_soap):
    frames = emt_frames(8, size=(2, 2, 2), rattle=0.05, seed=11)
    d_min = min(float(np.min(a.get_all_distances(mic=True)[np.triu_indices(len(a), 1)])) for a in frames)
    assert d_min > 2.2  # Å: the data never sample compressed pairs
    r = np.linspace(d_min, 0.5, 40)  # decreasing distances, from the edge of the data down

    # ZBL must still be switching off where the data end (r_outer above d_min): with
    # r_outer <= d_min its slope vanishes at d_min and the GP's own extrapolation decides
    # there (benchmarks/repulsion.py measures that case).
    prior = SparseGP(descriptor=small_soap, n_sparse=40, baseline=ZBL(r_outer=d_min + 0.3)).fit(frames)
    for name, e in (("isolated dimer", _dimer_energies(prior, r)), ("pushed in crystal", _pushed_energies(prior, r))):
        assert np.all(np.diff(e) > 0.0), f"{name}: energy falls at r = {r[1:][np.diff(e) <= 0.0]} Å"
        assert e[-1] - e[0] > 100.0, name  # eV: a hard wall, not a plateau

    # control: the same GP without the prior has no wall (its local energies are bounded)
    plain = SparseGP(descriptor=small_soap, n_sparse=40).fit(frames)
    e = _dimer_energies(plain, r)
    assert e[-1] - e[0] < 100.0
