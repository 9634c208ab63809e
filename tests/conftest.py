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
