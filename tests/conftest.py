"""Shared fixtures: small, fast, deterministic labelled data.

Tests on real DFT data read it from ``$KERNELPOT_DATA`` (default: ``../shared/data``
beside the repository) and skip with a reason naming the variable when it is absent.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

SHARED = Path(os.environ.get("KERNELPOT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared_missing(*parts) -> str | None:
    """Why a test on ``SHARED / parts`` cannot run (``None`` when the data are there)."""
    path = SHARED.joinpath(*parts)
    if path.exists():
        return None
    return (f"real DFT data {path} not found; set KERNELPOT_DATA to the data folder "
            f"(default ../shared/data beside the repository)")


def needs_shared(*parts):
    """``skipif`` marker for tests that read ``SHARED / parts``."""
    reason = shared_missing(*parts)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def pair_test_structure(system, compressed=False):
    """Structures for derivative tests of pair terms: a sheared, rattled Cu-Au ``"alloy"`` cell (non-orthogonal),
    a rattled ethanol ``"molecule"`` (no cell) or a ``"small cell"`` (2-atom Si, smaller than any cutoff: atoms
    see their own images); ``compressed`` shrinks and shakes them so that pairs come closer."""
    from ase.build import molecule
    if system == "alloy":
        a = bulk("Cu", "fcc", a=3.6 if compressed else 3.7, cubic=True).repeat((2, 1, 1))
        a.numbers[[1, 4, 6]] = 79
        a.set_cell(a.cell @ np.array([[1.0, 0.03, 0.0], [0.0, 0.98, 0.02], [0.01, 0.0, 1.02]]), scale_atoms=True)
        a.rattle(0.15 if compressed else 0.1, seed=3)
    elif system == "molecule":
        a = molecule("CH3CH2OH")
        a.rattle(0.05, seed=1)
    else:
        a = bulk("Si", "diamond", a=5.2 if compressed else 5.43)
        a.rattle(0.05, seed=2)
    return a


def finite_difference_forces_stress(energy, atoms, h=1e-5, stress=True):
    """Central differences of ``energy(atoms)``: forces ``-dE/dR`` (n, 3) and, for a cell, stress ``(1/V) dE/deps``.

    The stress is in ASE's Voigt order (xx, yy, zz, yz, xz, xy), from symmetric strains applied with
    ``scale_atoms=True``; None when ``stress`` is False.
    """
    from ase.stress import full_3x3_to_voigt_6_stress
    fd = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for c in range(3):
            p, m = atoms.copy(), atoms.copy()
            p.positions[i, c] += h
            m.positions[i, c] -= h
            fd[i, c] = -(energy(p) - energy(m)) / (2 * h)
    if not stress:
        return fd, None
    s = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            e = np.zeros((3, 3))
            e[a, b] += h / 2
            e[b, a] += h / 2
            p, m = atoms.copy(), atoms.copy()
            p.set_cell(atoms.cell @ (np.eye(3) + e), scale_atoms=True)
            m.set_cell(atoms.cell @ (np.eye(3) - e), scale_atoms=True)
            s[a, b] = (energy(p) - energy(m)) / (2 * h) / atoms.get_volume()
    return fd, full_3x3_to_voigt_6_stress(s)


def label(atoms, calc, noise=None, rng=None):
    """Attach reference labels from ``calc`` (plus optional Gaussian noise) as a SinglePointCalculator."""
    a = atoms.copy()
    a.calc = calc
    e = a.get_potential_energy()
    f = a.get_forces()
    s = a.get_stress() if all(a.pbc) else None
    if noise:
        e = e + noise.get("energy", 0.0) * len(a) * rng.standard_normal()
        f = f + noise.get("forces", 0.0) * rng.standard_normal(f.shape)
        if s is not None:
            s = s + noise.get("stress", 0.0) * rng.standard_normal(6)
    a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
    return a


def emt_frames(n, symbols=("Cu",), size=(2, 2, 2), rattle=0.08, strain=0.03, seed=0, noise=None):
    """Rattled and strained fcc cells labelled with EMT."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = bulk(symbols[0], "fcc", a=3.61, cubic=True).repeat(size)
        if len(symbols) > 1:
            a.numbers[rng.permutation(len(a))[: len(a) // 2]] = bulk(symbols[1]).numbers[0]
        eps = rng.uniform(-strain, strain, (3, 3))
        a.set_cell(a.cell @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
        a.positions += rng.normal(scale=rattle, size=a.positions.shape)
        a.info["config_type"] = "rattle"
        out.append(label(a, EMT(), noise, rng))
    return out


@pytest.fixture(scope="session")
def small_soap():
    from kernelpot import SOAP
    return SOAP(r_cut=4.0, n_max=4, l_max=3, atom_sigma=0.5)


@pytest.fixture(scope="session")
def cu_frames():
    return emt_frames(12, seed=1)


@pytest.fixture(scope="session")
def cuau_frames():
    return emt_frames(10, symbols=("Cu", "Au"), size=(1, 1, 2), seed=2)


@pytest.fixture(scope="session")
def cuau_model(cuau_frames, small_soap):
    from kernelpot import SparseGP
    return SparseGP(descriptor=small_soap, n_sparse=40).fit(cuau_frames)
