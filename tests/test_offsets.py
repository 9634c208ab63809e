"""Per-species energy offsets: how the energy is split among species never changes the forces."""

import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.emt import EMT

from kernelpot import SparseGP
from conftest import label


@pytest.fixture(scope="module")
def methanol_frames():
    rng = np.random.default_rng(3)
    base = molecule("CH3OH")
    base.center(vacuum=6.0)
    frames = []
    for _ in range(30):
        a = base.copy()
        a.positions += rng.normal(scale=0.06, size=a.positions.shape)
        frames.append(label(a, EMT()))
    isolated = []
    for s in ("H", "C", "O"):
        iso = Atoms(s, positions=[[6.0, 6.0, 6.0]], cell=base.cell, pbc=False)
        isolated.append(label(iso, EMT()))
    return frames, isolated


def test_single_composition_molecule_forces_do_not_depend_on_offsets(methanol_frames, small_soap):
    """One composition only: the energies fix the sum of the offsets and nothing else.

    Fitted with or without isolated-atom frames (which move the offsets by eV per atom),
    the model must learn the same forces, and must learn them (no collapse to zero forces).
    """
    frames, isolated = methanol_frames
    test = frames[25:]
    kw = dict(descriptor=small_soap, n_sparse=60, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m1 = SparseGP(**kw).fit(frames[:25])
    assert any("cannot separate the energy offsets of C, H, O" in str(w.message) for w in caught)
    m2 = SparseGP(**kw).fit(frames[:25] + isolated)
    ref = np.concatenate([a.get_forces() for a in test])
    f1 = np.concatenate([m1.predict_frame(a, return_std=False)["forces"] for a in test])
    f2 = np.concatenate([m2.predict_frame(a, return_std=False)["forces"] for a in test])
    rms = np.sqrt(np.mean(ref ** 2))
    err1 = np.sqrt(np.mean((f1 - ref) ** 2))
    assert err1 < 0.3 * rms                       # it learned the forces
    # the isolated atoms add three environments and energies, so the fits are not identical;
    # what must not happen is a difference on the scale of the model's own force noise (here
    # ~0.01 eV/Å, 0.3 % of the RMS force; the collapse this guards against differed by the RMS force)
    noise = min(m1.noise_["forces"], m2.noise_["forces"])
    assert np.sqrt(np.mean((f1 - f2) ** 2)) < 0.5 * noise
    assert m1.delta_ > 10 * 1e-3                  # delta not at its lower bound


def test_one_atom_cells_with_close_images_are_structures_not_isolated_atoms(cu_frames, small_soap):
    """A (111) monolayer or a chain of one atom per cell has neighbours: its energy (0.76 eV in EMT) is no
    isolated-atom reference (3.51 eV); counted as one, it set e0 of copper whatever else the data held."""
    from ase.build import fcc111
    from kernelpot.io.labels import is_isolated_atom, shortest_image_distance
    mono = label(fcc111("Cu", (1, 1, 1), vacuum=6.0), EMT())
    chain = label(Atoms("Cu", positions=[[0, 0, 0]], cell=[10, 10, 2.5], pbc=[False, False, True]), EMT())
    free = label(Atoms("Cu", positions=[[5, 5, 5]], cell=[10, 10, 10], pbc=False), EMT())
    box = Atoms("Cu", positions=[[0, 0, 0]], cell=[12, 12, 12], pbc=True, info={"config_type": "IsolatedAtom"})
    small_box = Atoms("Cu", positions=[[0, 0, 0]], cell=[3, 12, 12], pbc=True, info={"config_type": "IsolatedAtom"})
    assert shortest_image_distance(chain) == pytest.approx(2.5)
    assert shortest_image_distance(mono) == pytest.approx(2.5527, abs=1e-3)   # in-plane neighbour, 3.61/sqrt(2)
    # a skewed cell: its shortest translation, not its longest edge
    skew = Atoms("Cu", positions=[[0, 0, 0]], cell=[[3, 0, 0], [30, 3, 0], [0, 0, 20]], pbc=[True, True, False])
    assert shortest_image_distance(skew) == pytest.approx(3.0)
    assert [is_isolated_atom(a) for a in (mono, chain, skew, free, box, small_box)] == [
        False, False, False, True, True, False]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SparseGP(descriptor=small_soap, n_sparse=40, verbose=False).fit([mono, chain] + cu_frames[:4] + [free])
    assert model.e0_[29] == pytest.approx(free.get_potential_energy())


def test_isolated_atoms_that_disagree_are_reported(cu_frames, small_soap):
    from kernelpot.io.labels import DataWarning
    free = label(Atoms("Cu", positions=[[5, 5, 5]], cell=[10, 10, 10], pbc=False), EMT())
    other = free.copy()
    from ase.calculators.singlepoint import SinglePointCalculator
    other.calc = SinglePointCalculator(other, energy=free.get_potential_energy() - 0.3)
    with pytest.warns(DataWarning, match="isolated-atom frames of Cu disagree.*frames \\[4, 5\\]"):
        model = SparseGP(descriptor=small_soap, n_sparse=40, verbose=False).fit(cu_frames[:4] + [free, other])
    assert model.e0_[29] == pytest.approx(free.get_potential_energy())   # the first, as the warning says


@pytest.mark.parametrize("e0, match", [({"Xx": -1.0}, "'Xx' is not an element"), ({0: -1.0}, "0 is not an element"),
                                        ({"Cu": float("nan")}, "energy of Cu must be a finite"),
                                        ({"Cu": "a lot"}, "energy of Cu must be a finite"),
                                        ({"Cu": True}, "energy of Cu must be a finite"),
                                        ({"Cu": -1.0, 29: -2.0}, "Cu is given twice")])
def test_bad_e0_tables_are_named(cu_frames, small_soap, e0, match):
    with pytest.raises(ValueError, match=match):
        SparseGP(descriptor=small_soap, n_sparse=40, e0=e0, verbose=False).fit(cu_frames[:3])


def test_e0_without_a_training_element_or_with_a_foreign_one_warns(cu_frames, small_soap):
    from kernelpot.io.labels import DataWarning
    with pytest.warns(DataWarning, match=r"e0 gives no energy for \['Cu'\].*names \['Au'\], which no training frame"):
        SparseGP(descriptor=small_soap, n_sparse=40, e0={"Au": 1.0}, verbose=False).fit(cu_frames[:3])
