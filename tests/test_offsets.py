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
