"""Diagnosis of flagged structures: each kind of error on a small crafted case."""

import numpy as np
from ase.build import bulk

from kernelpot.uq.diagnosis import UNIT_FACTORS, diagnose, duplicates, force_concentration, moved_atom

rng = np.random.default_rng(0)
F = rng.normal(size=(16, 3))
S = rng.normal(size=6) * 0.01


def test_energy_kinds():
    assert diagnose("energy", {"energy": -80.0 + 0.32}, {"energy": -80.0}, 16) == "reference shift (+20 meV/atom)"
    assert "Hartree read as eV" in diagnose("energy", {"energy": -80.0 / 27.211386}, {"energy": -80.0}, 16)
    assert diagnose("energy", {"energy": 80.0}, {"energy": -80.0}, 16) == "sign error"
    assert diagnose("energy", {"energy": -79.0}, {"energy": -80.0}, 16, partner="swapped with #4") == "swapped with #4"


def test_force_kinds():
    big = F.copy()
    big[5] *= 3.0                      # atom 5 carries the largest force, so its error dominates
    g = big.copy()
    g[5] *= -1.0
    assert diagnose("forces", {"forces": g}, {"forces": big}, 16) == "sign error on atom 5"
    # the same atom off but not flipped (anti-parallel at a third of the size, or sideways): the atom
    # is misplaced or its force wrong, not a sign error
    for wrong in (-big[5] / 3.0, np.cross(big[5], [0.0, 0.0, 1.0])):
        g[5] = wrong
        assert diagnose("forces", {"forces": g}, {"forces": big}, 16) == "one atom wrong (atom 5)"
    assert diagnose("forces", {"forces": -F}, {"forces": F}, 16) == "sign error (all components)"
    assert "eV/Bohr read as eV/Å" in diagnose("forces", {"forces": 0.52917721 * F}, {"forces": F}, 16)
    stale = rng.normal(size=F.shape)
    assert diagnose("forces", {"forces": stale}, {"forces": F}, 16).startswith("stale forces")
    noisy = F + 0.3 * rng.normal(size=F.shape)
    assert diagnose("forces", {"forces": noisy}, {"forces": F}, 16).startswith("noisy forces")
    assert diagnose("forces", {"forces": noisy}, {"forces": F}, 16,
                    net_force_significant=True) == "not a gradient (net force)"


def test_moved_atom_against_a_reference_shift():
    """An atom moved after the calculation spoils its energy and the forces on it and a bonded neighbour;
    a reference shift leaves the forces as they are (EMT on a small molecule: labels of the geometry as
    computed, "prediction" of a perfect model at the moved one)."""
    from ase.build import molecule
    from ase.calculators.emt import EMT
    a = molecule("CH3CH2OH")
    a.rattle(0.05, seed=1)
    a.calc = EMT()
    lab = {"energy": a.get_potential_energy(), "forces": a.get_forces()}
    for d in (0.05, 0.1, 0.2):
        b = a.copy()
        b.positions[3] += d * np.array([0.6, 0.8, 0.0])
        b.calc = EMT()
        pred = {"energy": b.get_potential_energy(), "forces": b.get_forces()}
        j, k, share = force_concentration(lab["forces"], pred["forces"])
        assert j == 3 and share > 0.95 and a.get_distance(j, k) < 1.6      # the moved H and its carbon
        assert moved_atom(a, lab, pred) == 3
        # with the forces' uncertainty: off beyond it (z of 10 on the atom) or within it (z of 1)
        z = np.full((9, 3), 0.3)
        z[3] = 10.0
        assert moved_atom(a, lab, pred, z) == 3
        z[3] = 1.0
        assert moved_atom(a, lab, pred, z) is None
    # a reference shift: the forces differ by a model's spread-out error only
    pred = {"energy": lab["energy"] - 0.2, "forces": lab["forces"] + 0.05 * rng.normal(size=lab["forces"].shape)}
    assert moved_atom(a, lab, pred) is None
    assert diagnose("energy", lab, pred, len(a)).startswith("reference shift")
    # the residual on two atoms far apart is no displacement (ethanol's two H 3 Å apart)
    far = lab["forces"].copy()
    far[[5, 8]] += [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]
    assert a.get_distance(5, 8) > 2.5
    assert force_concentration(lab["forces"], far)[2] > 0.99 and moved_atom(a, lab, {"forces": far}) is None
    # evenly spread residuals: the two largest carry about 2 / n of the total; exact known value
    j, k, share = force_concentration(np.zeros((4, 3)), np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0],
                                                                   [1.0, 1.0, 1.0]]))
    assert (j, k) == (1, 3) and share == 7.0 / 9.0
    # too few atoms, or no forces: no reading
    assert moved_atom(a, lab, {"energy": 0.0}) is None
    small = molecule("CH4")
    small.calc = EMT()
    f = small.get_forces()
    off = f.copy()
    off[1] += [0.5, 0.0, 0.0]
    assert moved_atom(small, {"forces": f}, {"forces": off}) is None


def test_stress_and_geometry_kinds():
    assert "kBar read as GPa" in diagnose("stress", {"stress": 10 * S}, {"stress": S}, 16)
    assert "eV/Å^3 read as GPa" in diagnose("stress", {"stress": 160.21766 * S}, {"stress": S}, 16)
    assert diagnose("stress", {"stress": -S}, {"stress": S}, 16) == "sign error (all components)"
    assert diagnose("geometry", {}, {}, 16).startswith("geometry or species")


def test_unit_factors_are_distinct_and_tolerant():
    # the nearest factor decides, within half the smallest gap: unambiguous, and a factor a
    # contaminated prediction blurs (a kBar stress seen as 11x) is still recognised
    for kind, table in UNIT_FACTORS.items():
        f = np.sort(np.array(list(table)))
        assert np.all(f[1:] / f[:-1] > 1.15), kind
    assert "kBar read as GPa" in diagnose("stress", {"stress": 11.0 * S}, {"stress": S}, 16)
    assert "kcal/mol" not in diagnose("energy", {"energy": -80.0 / 27.9}, {"energy": -80.0}, 16)
    assert diagnose("stress", {"stress": 3.0 * S}, {"stress": S}, 16) == "stress off (label ~ 3 x prediction)"
    # not a scale: the size of the difference instead of "label ~ 1 x prediction"
    off = S + np.array([1, -1, 1, -1, 1, -1]) * 0.2 * 0.006241509125883258      # 0.2 GPa each
    assert diagnose("stress", {"stress": off}, {"stress": S}, 16) == "stress off by 0.2 GPa (RMS)"
    # labels never written: exactly zero where the model predicts something
    assert diagnose("forces", {"forces": np.zeros_like(F)}, {"forces": F}, 16).startswith(
        "every force component exactly zero")


def test_duplicates_by_composition_and_descriptor():
    a = bulk("Cu", cubic=True)
    frames = [a, a.repeat(2), bulk("Au", cubic=True), a.copy()]
    X = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0 + 1e-3]])
    out = duplicates(frames, X, tol=1e-4)
    assert out.tolist() == [-1, 0, -1, -1]   # a supercell is a duplicate; another element or descriptor not
    assert duplicates(frames, X, tol=1e-3).tolist() == [-1, 0, -1, 0]
