"""Tests of kernelpot.baselines.zbl (finite-difference and serialisation checks: test_baselines.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from kernelpot.baselines import ZBL


def zbl_published(r: float, z1: int, z2: int) -> float:
    """ZBL universal potential written out from Ziegler, Biersack & Littmark (1985), eV."""
    a = 0.46850 / (z1**0.23 + z2**0.23)
    x = r / a
    phi = (
        0.18175 * math.exp(-3.19980 * x)
        + 0.50986 * math.exp(-0.94229 * x)
        + 0.28022 * math.exp(-0.40290 * x)
        + 0.02817 * math.exp(-0.20162 * x)
    )
    return 14.399645 * z1 * z2 / r * phi


def dimer(z1, z2, r):
    return Atoms(numbers=[z1, z2], positions=[[0.1, -0.2, 0.3], [0.1 + r, -0.2, 0.3]])


@pytest.mark.parametrize("z1, z2", [(1, 1), (6, 8), (14, 14), (26, 79), (74, 2)])
@pytest.mark.parametrize("r", [0.05, 0.3, 0.8, 1.5, 2.9])
def test_unswitched_zbl_matches_published_formula(z1, z2, r):
    zbl = ZBL(r_inner=3.0, r_outer=4.0)  # all r below r_inner: switch = 1
    energy, forces, _ = zbl.compute(dimer(z1, z2, r))
    assert energy == pytest.approx(zbl_published(r, z1, z2), rel=1e-10)
    h = 1e-6 * r
    dudr = (zbl_published(r + h, z1, z2) - zbl_published(r - h, z1, z2)) / (2 * h)
    # force on atom 0 points along -x for a repulsive pair: F_0 = u'(r) x_hat
    np.testing.assert_allclose(forces[0], [dudr, 0, 0], rtol=1e-7, atol=1e-9 * abs(dudr))
    np.testing.assert_allclose(forces[1], -forces[0], rtol=1e-14)
    assert forces[0, 0] < 0


@pytest.mark.parametrize("r", [1.05, 1.3, 1.5, 1.77, 1.95])
def test_switch_is_the_documented_quintic(r):
    r_in, r_out = 1.0, 2.0
    t = (r - r_in) / (r_out - r_in)
    s = 1 - 10 * t**3 + 15 * t**4 - 6 * t**5
    energy = ZBL(r_inner=r_in, r_outer=r_out).compute(dimer(14, 8, r))[0]
    assert energy == pytest.approx(zbl_published(r, 14, 8) * s, rel=1e-12)


@pytest.mark.parametrize("r_edge", [1.0, 2.0])
def test_energy_and_force_continuous_at_switch_ends(r_edge):
    zbl = ZBL(r_inner=1.0, r_outer=2.0)
    below = zbl.compute(dimer(14, 14, r_edge - 1e-7))
    above = zbl.compute(dimer(14, 14, r_edge + 1e-7))
    assert below[0] == pytest.approx(above[0], rel=1e-6, abs=1e-12)
    np.testing.assert_allclose(below[1], above[1], rtol=1e-5, atol=1e-9)
    if r_edge == 2.0:
        assert above[0] == 0.0 and np.all(above[1] == 0.0)
        assert abs(below[0]) < 1e-15 and np.abs(below[1]).max() < 1e-9


def test_default_switch_radii_come_from_covalent_radii():
    zbl = ZBL()
    r_in, r_out = zbl.switch_radii(14, 14)
    assert r_out == pytest.approx(0.6 * 2 * 1.11)
    assert r_in == pytest.approx(0.5 * r_out)
    # beyond r_outer there is nothing, just inside there is something
    assert zbl.compute(dimer(14, 14, r_out + 1e-6))[0] == 0.0
    assert zbl.compute(dimer(14, 14, r_in))[0] == pytest.approx(zbl_published(r_in, 14, 14), rel=1e-12)
    # r_outer given, r_inner default
    assert ZBL(r_outer=1.2).switch_radii(1, 8) == (pytest.approx(0.6), 1.2)
    # equilibrium silicon is untouched by the default
    energy, forces, stress = zbl.compute(bulk("Si", "diamond", a=5.43))
    assert energy == 0.0 and not forces.any() and not stress.any()


def test_periodic_images_of_the_same_atom_interact():
    # one atom per cell, cell 1.0 Å: six images at 1.0 Å, twelve at sqrt(2)
    atoms = Atoms("H", cell=np.eye(3) * 1.0, pbc=True)
    zbl = ZBL(r_inner=2.0, r_outer=3.0)
    energy = zbl.compute(atoms)[0]
    r_in, r_out = 2.0, 3.0
    expected = 0.0
    n = 3
    for i in range(-n, n + 1):
        for j in range(-n, n + 1):
            for k in range(-n, n + 1):
                r = math.sqrt(i * i + j * j + k * k)
                if 0 < r < r_out:
                    t = min(max((r - r_in) / (r_out - r_in), 0.0), 1.0)
                    expected += 0.5 * zbl_published(r, 1, 1) * (1 - 10 * t**3 + 15 * t**4 - 6 * t**5)
    assert energy == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(r_inner=2.0, r_outer=1.0), "r_inner=2.0 must be smaller than r_outer=1.0"),
        (dict(r_outer=-1.0), "r_outer=-1.0 is not allowed"),
        (dict(r_inner="1"), "r_inner='1' is not allowed"),
        (dict(r_inner=1.5), r"pair Si-Si r_inner=1.5 Å is not below the default r_outer=1.3320"),
    ],
)
def test_invalid_settings_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ZBL(**kwargs).compute(bulk("Si"))


def test_from_frames_switches_off_just_beyond_the_closest_training_pair():
    from kernelpot.descriptors.neighbors import smallest_distance
    rng = np.random.default_rng(4)
    frames = []
    for k in range(3):
        a = bulk("Si", "diamond", a=5.43, cubic=True)
        a.positions += rng.normal(scale=0.1, size=a.positions.shape)
        frames.append(a)
    # brute force over the 27 nearest images (the cell is larger than any distance checked)
    shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)]) @ frames[0].cell
    brute = min(np.linalg.norm(a.positions[None, :, None] + shifts[None, None] - a.positions[:, None, None],
                               axis=-1)[~np.eye(len(a), dtype=bool)].min() for a in frames)
    assert smallest_distance(frames) == pytest.approx(brute, rel=1e-12)
    zbl = ZBL.from_frames(frames, margin=0.25)
    assert zbl.r_outer == pytest.approx(brute + 0.25, rel=1e-12)
    assert zbl.switch_radii(14, 14) == pytest.approx((zbl.r_outer / 2, zbl.r_outer))
    # the prior acts on the closest training pair and on nothing beyond r_outer
    d = Atoms("Si2", positions=[[0, 0, 0], [0, 0, brute]])
    assert zbl.compute(d)[0] > 0
    d.positions[1, 2] = zbl.r_outer + 1e-6
    assert zbl.compute(d)[0] == 0.0
    with pytest.raises(ValueError, match="no two atoms within 4"):
        ZBL.from_frames([Atoms("Si")])
    with pytest.raises(ValueError, match="margin"):
        ZBL.from_frames(frames, margin=-1.0)


@pytest.mark.parametrize("z1, z2", [(1, 1), (6, 8), (29, 79)])
def test_higher_derivatives_are_derivatives_of_the_lower(z1, z2):
    from kernelpot.baselines.zbl import zbl_derivatives, zbl_pair
    r = np.linspace(0.3, 4.0, 9)
    za, zb = np.full(9, z1), np.full(9, z2)
    h = 1e-5
    d = zbl_derivatives(r, za, zb, 3)
    np.testing.assert_allclose(d[:2], zbl_pair(r, za, zb), rtol=1e-13)
    up, um = zbl_derivatives(r + h, za, zb, 2), zbl_derivatives(r - h, za, zb, 2)
    for k in (1, 2, 3):
        np.testing.assert_allclose(d[k], (up[k - 1] - um[k - 1]) / (2 * h), rtol=1e-6)
    # a positive sum of screened Coulomb terms, each e^{-c r} / r: completely monotone
    assert np.all(d[0] > 0) and np.all(d[1] < 0) and np.all(d[2] > 0) and np.all(d[3] < 0)
