"""Neighbour list against brute force over periodic images, and against ASE."""

import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from kernelpot.descriptors.neighbors import neighbor_list


def brute_force(atoms, cutoff):
    """Set of (i, j, S) with |r_j + S @ cell - r_i| < cutoff over all relevant images."""
    pos = atoms.get_positions()
    cell = atoms.cell[:]
    pbc = atoms.pbc
    if pbc.any():
        recip = np.linalg.norm(np.linalg.inv(cell), axis=0)
        # positions are not wrapped here, so allow for their spread in fractional units
        frac = pos @ np.linalg.inv(cell)
        spread = np.ceil(np.ptp(frac, axis=0)).astype(int)
        reach = [int(np.ceil(cutoff * recip[k])) + spread[k] + 1 if pbc[k] else 0 for k in range(3)]
    else:
        reach = [0, 0, 0]
    out = set()
    for s in itertools.product(*[range(-r, r + 1) for r in reach]):
        shift = np.array(s) @ cell
        d = pos[None, :, :] + shift - pos[:, None, :]
        dist = np.linalg.norm(d, axis=-1)
        for i, j in zip(*np.nonzero(dist < cutoff)):
            if i == j and s == (0, 0, 0):
                continue
            out.add((int(i), int(j), s))
    return out


def as_set(nl):
    return {
        (int(i), int(j), tuple(int(x) for x in s))
        for i, j, s in zip(nl.centers, nl.neighbors, nl.shifts)
    }


def triclinic(pbc=True, seed=0, n=5):
    rng = np.random.default_rng(seed)
    cell = np.array([[3.1, 0.0, 0.0], [1.2, 2.9, 0.0], [-0.7, 0.9, 3.4]])
    # Unwrapped positions (some outside the cell) to test wrapping.
    frac = rng.uniform(-0.3, 1.3, (n, 3))
    return Atoms(["H", "O", "C", "H", "N"][:n], scaled_positions=frac, cell=cell, pbc=pbc)


@pytest.mark.parametrize("cutoff", [1.5, 4.0, 7.5])
def test_triclinic_matches_brute_force(cutoff):
    atoms = triclinic()
    nl = neighbor_list(atoms, cutoff)
    assert as_set(nl) == brute_force(atoms, cutoff)
    # the cell is smaller than the larger cutoffs: atoms see many of their own images
    if cutoff > 4.0:
        assert np.sum(nl.neighbors == nl.centers) > 10


def test_vectors_are_image_displacements_and_sorted():
    atoms = triclinic()
    nl = neighbor_list(atoms, 4.0)
    pos = atoms.get_positions()
    expected = pos[nl.neighbors] + nl.shifts @ atoms.cell[:] - pos[nl.centers]
    np.testing.assert_allclose(nl.vectors, expected, atol=1e-12)
    assert np.all(np.linalg.norm(nl.vectors, axis=1) < 4.0)
    assert np.all(np.diff(nl.centers) >= 0)
    for i in range(len(atoms)):
        js = nl.neighbors[nl.offsets[i] : nl.offsets[i + 1]]
        assert np.all(np.diff(js) >= 0)
    assert nl.offsets[0] == 0 and nl.offsets[-1] == len(nl.neighbors)


def test_mixed_pbc_matches_brute_force():
    atoms = triclinic(pbc=[True, False, True])
    assert as_set(neighbor_list(atoms, 5.0)) == brute_force(atoms, 5.0)


@pytest.mark.parametrize("cell", [np.zeros((3, 3)), 50.0 * np.eye(3)])
def test_molecule_without_pbc(cell):
    atoms = molecule("CH3CH2OH")
    atoms.cell = cell
    atoms.pbc = False
    nl = neighbor_list(atoms, 2.5)
    assert as_set(nl) == brute_force(atoms, 2.5)
    assert np.all(nl.shifts == 0)


def test_agrees_with_ase_on_rattled_supercell():
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (2, 2, 2)
    atoms.rattle(0.1, seed=0)
    nl = neighbor_list(atoms, 5.0)
    i, j, s = ase_neighbor_list("ijS", atoms, 5.0)
    ref = {(int(a), int(b), tuple(int(x) for x in c)) for a, b, c in zip(i, j, s)}
    assert as_set(nl) == ref
    assert len(nl.neighbors) == len(i)


def test_single_atom_cell_sees_only_its_images():
    atoms = bulk("Cu", "fcc", a=3.6)
    nl = neighbor_list(atoms, 3.0)
    assert np.all(nl.neighbors == 0)
    assert len(nl.neighbors) == 12  # fcc first shell at a / sqrt(2) = 2.55 Å


def test_errors():
    atoms = molecule("H2O")
    with pytest.raises(ValueError, match="cutoff"):
        neighbor_list(atoms, -1.0)
    atoms.pbc = True
    atoms.cell = np.zeros((3, 3))
    with pytest.raises(ValueError, match="cell vector 0 is zero"):
        neighbor_list(atoms, 2.0)


def test_slab_with_oblique_in_plane_cell():
    """fcc(111) slab, pbc (T, T, F), 60 degree in-plane cell: neighbours equal ASE's."""
    from ase.build import fcc111
    from ase.neighborlist import neighbor_list as ase_nl
    from kernelpot.descriptors.neighbors import neighbor_list as kp_nl
    slab = fcc111("Cu", size=(3, 3, 4), vacuum=6.0)
    slab.pbc = (True, True, False)
    slab.rattle(0.05, seed=1)
    i_ref, d_ref = ase_nl("id", slab, 4.0)
    res = kp_nl(slab, 4.0)
    counts = np.bincount(i_ref, minlength=len(slab))
    np.testing.assert_array_equal(np.diff(res.offsets), counts)
    d_kp = np.sort(np.linalg.norm(res.vectors, axis=1))
    np.testing.assert_allclose(d_kp, np.sort(d_ref), atol=1e-12)
