"""Tests for kernelpot.sampling with EMT as the reference calculator."""

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT

from kernelpot.workflows.sampling import (
    PairDistanceFingerprint,
    deduplicate,
    force_constants,
    label,
    md_sample,
    strain_set,
    thermal_rattle,
)

A_CU = 3.59  # close to the EMT minimum; the tests below do not rely on it being exact


@pytest.fixture(scope="module")
def cu4():
    return bulk("Cu", "fcc", a=A_CU, cubic=True)


@pytest.fixture(scope="module")
def cu4_k(cu4):
    return force_constants(cu4, EMT())


def test_force_constants_symmetric_and_converged(cu4, cu4_k):
    assert cu4_k.shape == (4, 3)
    assert np.all(cu4_k > 0)
    # all atoms and directions are equivalent in fcc
    np.testing.assert_allclose(cu4_k, cu4_k.mean(), rtol=1e-6)
    # central differences: halving delta changes k by O(delta^2)
    np.testing.assert_allclose(force_constants(cu4, EMT(), delta=0.005), cu4_k, rtol=2e-3)


def test_force_constants_match_energy_curvature(cu4, cu4_k):
    # -dF/dx from forces equals d2E/dx2 from energies
    a = cu4.copy()
    a.calc = EMT()
    h = 0.01
    e = []
    for s in (-1, 0, 1):
        b = cu4.copy()
        b.positions[1, 2] += s * h
        b.calc = EMT()
        e.append(b.get_potential_energy())
    k_energy = (e[0] - 2 * e[1] + e[2]) / h**2
    assert k_energy == pytest.approx(cu4_k[1, 2], rel=2e-3)


def test_thermal_rattle_equipartition(cu4, cu4_k):
    temperature, n = 20.0, 300
    frames = thermal_rattle(cu4, EMT(), temperature, n, force_constants=cu4_k, random_state=3)
    assert len(frames) == n
    assert frames[0].info["config_type"] == "rattle_20K"
    kT = units.kB * temperature
    u = np.array([f.positions - cu4.positions for f in frames])  # (n, 4, 3)
    # <k u^2> / kT = 1 per degree of freedom (pooled over 3600 draws, se ~ 0.024)
    ratio = (u**2 * cu4_k).mean() / kT
    assert ratio == pytest.approx(1.0, abs=0.1)
    assert np.abs(u.mean(axis=0)).max() < 4 * np.sqrt(kT / cu4_k.min() / n)
    # potential-energy rise ~ 1/2 kT per degree of freedom for a harmonic solid
    ref = cu4.copy()
    ref.calc = EMT()
    e0 = ref.get_potential_energy()
    rise = np.mean([f.get_potential_energy() for f in frames]) - e0
    assert rise / (0.5 * kT * 3 * len(cu4)) == pytest.approx(1.0, abs=0.1)


def test_thermal_rattle_amplitude_scales_with_temperature(cu4, cu4_k):
    cold = thermal_rattle(cu4, EMT(), 10.0, 50, force_constants=cu4_k, random_state=1)
    hot = thermal_rattle(cu4, EMT(), 40.0, 50, force_constants=cu4_k, random_state=1)
    # same random numbers, amplitude ~ sqrt(T)
    u_cold = np.array([f.positions for f in cold]) - cu4.positions
    u_hot = np.array([f.positions for f in hot]) - cu4.positions
    np.testing.assert_allclose(u_hot, 2.0 * u_cold, rtol=1e-10, atol=1e-12)


def test_thermal_rattle_estimates_force_constants_and_labels(cu4):
    frames = thermal_rattle(cu4, EMT(), 100.0, 3, random_state=0)
    again = thermal_rattle(cu4, EMT(), 100.0, 3, random_state=0)
    for f, g in zip(frames, again):
        np.testing.assert_array_equal(f.positions, g.positions)
        check = f.copy()
        check.calc = EMT()
        assert f.get_potential_energy() == pytest.approx(check.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(f.get_forces(), check.get_forces(), atol=1e-10)
        np.testing.assert_allclose(f.get_stress(), check.get_stress(), atol=1e-12)


def test_thermal_rattle_rejects_unstable_force_constants(cu4):
    k = np.ones((4, 3))
    k[2, 1] = -0.5
    with pytest.raises(ValueError, match="atom 2 direction y"):
        thermal_rattle(cu4, EMT(), 300.0, 2, force_constants=k)
    with pytest.raises(ValueError, match="expected \\(4, 3\\)"):
        thermal_rattle(cu4, EMT(), 300.0, 2, force_constants=np.ones((3, 3)))


def test_strain_set_volumes_and_stress_sign(cu4):
    frames = strain_set(cu4, EMT(), hydrostatic=(-0.02, 0.02, 5), shear=(0.02, 3))
    hydro = [f for f in frames if f.info["config_type"] == "strain_hydrostatic"]
    shear = [f for f in frames if f.info["config_type"] == "strain_shear"]
    assert len(hydro) == 5 and len(shear) == 6  # 3 components x {-0.02, +0.02}
    v0 = cu4.get_volume()
    s = np.linspace(-0.02, 0.02, 5)
    np.testing.assert_allclose([f.get_volume() for f in hydro], v0 * (1 + s) ** 3, rtol=1e-12)
    for f in shear:
        g = f.info["strain"][3:][np.flatnonzero(f.info["strain"][3:])[0]]
        # det(I + eps) with one symmetric off-diagonal pair = 1 - g^2
        assert f.get_volume() == pytest.approx(v0 * (1 - g**2), rel=1e-12)
    # near the EMT minimum: compressed cell has negative (ASE) stress, expanded positive
    assert np.all(hydro[0].get_stress()[:3] < 0)
    assert np.all(hydro[-1].get_stress()[:3] > 0)
    # a shear strain gives a shear stress of the same sign in the same component
    for f in shear:
        v = 3 + np.flatnonzero(f.info["strain"][3:])[0]
        assert np.sign(f.get_stress()[v]) == np.sign(f.info["strain"][v])


def test_label_copies_info_and_skips_stress_for_molecules():
    mol = molecule("H2O")
    mol.info["config_type"] = "water"
    out = label([mol], EMT())
    assert out[0] is not mol and mol.calc is None
    assert out[0].info["config_type"] == "water"
    assert out[0].get_forces().shape == (3, 3)
    with pytest.raises(PropertyNotImplementedError):
        out[0].get_stress()


def test_pair_fingerprint_invariances():
    fp = PairDistanceFingerprint(n_neighbors=12)
    a = bulk("Cu", "fcc", a=A_CU)
    x = fp.create(a)
    assert x.shape == (1, 13)
    assert x[0, 0] == 29
    np.testing.assert_allclose(x[0, 1:], A_CU / np.sqrt(2), rtol=1e-10)  # 12 nearest neighbours
    # the same crystal in a bigger cell gives the same mean fingerprint
    big = bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(2)
    np.testing.assert_allclose(fp.create(big).mean(0), x[0], rtol=1e-10)
    # a molecule with fewer atoms than n_neighbors is padded with zeros
    w = fp.create(molecule("H2O"))
    assert w.shape == (3, 13) and np.all(w[:, 3:] == 0)


def test_deduplicate_removes_near_copies_and_reports(cu4):
    rng = np.random.default_rng(0)
    distinct = []
    for _ in range(4):
        b = cu4.copy()
        b.positions += rng.normal(scale=0.05, size=b.positions.shape)
        distinct.append(b)
    near = distinct[1].copy()
    near.positions += 1e-6
    frames = [distinct[0], distinct[1], distinct[0].copy(), distinct[2], near, distinct[3]]
    kept, removed = deduplicate(frames)
    assert removed == [(2, 0), (4, 1)]
    assert [id(f) for f in kept] == [id(frames[i]) for i in (0, 1, 3, 5)]
    # a threshold larger than the thermal spread merges everything into one frame
    kept, removed = deduplicate(frames, threshold=10.0)
    assert len(kept) == 1 and len(removed) == 5


def test_deduplicate_accepts_create_and_compute_descriptors(cu4):
    class Create:
        def create(self, atoms):
            return atoms.positions.copy()

    class Features:
        def __init__(self, f):
            self.features = f

    class Compute:
        def compute(self, atoms):
            return Features(atoms.positions.copy())

    b = cu4.copy()
    b.positions[0] += 0.1
    for desc in (Create(), Compute()):
        kept, removed = deduplicate([cu4, b, cu4.copy()], desc, threshold=1e-8)
        assert len(kept) == 2 and removed == [(2, 0)]

    class Bad:
        def create(self, atoms):
            return np.zeros(3)

    with pytest.raises(ValueError, match="descriptor returned shape"):
        deduplicate([cu4], Bad())


def test_deduplicate_with_soap(small_soap, cu4):
    b = cu4.repeat(2)
    c = b.copy()
    c.rattle(0.05, seed=1)
    kept, removed = deduplicate([b, b.copy(), c], small_soap)
    assert len(kept) == 2 and removed == [(1, 0)]


def test_md_sample_equipartition_and_reporting():
    atoms = bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(2)  # 32 atoms
    ref = atoms.copy()
    ref.calc = EMT()
    e0 = ref.get_potential_energy()
    t = 300.0
    res = md_sample(
        atoms, EMT(), [t], n_per_temperature=12, interval=10, equilibration=100,
        random_state=0, friction=0.02 / units.fs,
    )
    assert res.n_candidates == 12 and res.n_removed == 0 and len(res.frames) == 12
    assert all(f.info["config_type"] == "md_300K" for f in res.frames)
    # potential energy ~ 1/2 kB T per vibrational mode (3N - 3 of them); loose: 12 correlated
    # snapshots of 32 atoms. Without the thermostat (NVE from Maxwell-Boltzmann) it would be 1/2.
    rise = np.mean([f.get_potential_energy() for f in res.frames]) - e0
    assert rise / (0.5 * units.kB * t * (3 * len(atoms) - 3)) == pytest.approx(1.0, abs=0.25)
    # labels are the reference calculator's
    check = res.frames[-1].copy()
    check.calc = EMT()
    np.testing.assert_allclose(res.frames[-1].get_forces(), check.get_forces(), atol=1e-10)
    assert res.frames[-1].get_stress().shape == (6,)


def test_md_sample_counts_removed_frames(caplog):
    atoms = bulk("Cu", "fcc", a=A_CU, cubic=True)

    class Constant:
        def create(self, atoms):
            return np.ones((len(atoms), 2))

    with caplog.at_level("INFO", logger="kernelpot.workflows.sampling"):
        res = md_sample(atoms, EMT(), [100.0, 200.0], 3, interval=2, descriptor=Constant())
    assert res.n_candidates == 6 and len(res.frames) == 1 and res.n_duplicates == 5
    assert [i for i, _ in res.removed] == [1, 2, 3, 4, 5]
    assert "5 removed" in caplog.text
    # min_distance above the nearest-neighbour distance (2.54 Å) drops every snapshot
    res = md_sample(atoms, EMT(), [100.0], 3, interval=2, min_distance=3.0)
    assert res.n_too_close == 3 and len(res.frames) == 0 and res.n_removed == 3


def test_md_sample_rejects_bad_arguments():
    atoms = bulk("Cu", "fcc", a=A_CU, cubic=True)
    with pytest.raises(ValueError, match="interval"):
        md_sample(atoms, EMT(), [300.0], 2, interval=0)
    with pytest.raises(ValueError, match="temperatures"):
        md_sample(atoms, EMT(), [-5.0], 2, interval=1)
    with pytest.raises(TypeError, match="frame 1"):
        label([atoms, "not atoms"], EMT())
    with pytest.raises(ValueError, match="periodic"):
        strain_set(Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]]), EMT())
