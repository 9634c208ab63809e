"""Tests of kernelpot.baselines.repulsion (finite-difference and serialisation checks: test_baselines.py)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.data import covalent_radii

from kernelpot.baselines import Repulsion, covalent_prefactor


def dimer(s1, s2, r):
    return Atoms([s1, s2], positions=[[0.0, 0.0, 0.0], [0.0, r, 0.0]])


@pytest.mark.parametrize("n", [6, 9, 12])
@pytest.mark.parametrize("r", [0.4, 1.1, 1.99])
def test_value_below_switch_is_inverse_power(n, r):
    rep = Repulsion(A={("Si", "O"): 3.7, "O-O": 0.0, "Si-Si": 0.0}, n=n, r_cut=3.0, cutoff_width=1.0)
    energy, forces, _ = rep.compute(dimer("Si", "O", r))
    assert energy == pytest.approx(3.7 / r**n, rel=1e-13)
    # F_0 = u'(r) along +y: pushed away from atom 1
    np.testing.assert_allclose(forces[0], [0, -n * 3.7 / r ** (n + 1), 0], rtol=1e-12)


@pytest.mark.parametrize("pair", [("Si", "Si"), ("O", "Si"), ("H", "H"), ("C", "Fe")])
def test_covalent_rule_gives_contact_energy(pair):
    a, b = pair
    r0 = 0.6 * (covalent_radii[Atoms(a).numbers[0]] + covalent_radii[Atoms(b).numbers[0]])
    rep = Repulsion(r_cut=r0 + 2.0, cutoff_width=1.0)  # r0 below the switch
    assert rep.compute(dimer(a, b, r0))[0] == pytest.approx(1.0, rel=1e-12)
    assert Repulsion(contact_energy=0.2, r_cut=r0 + 2.0).compute(dimer(a, b, r0))[0] == pytest.approx(0.2, rel=1e-12)
    # negligible at the covalent bond length
    assert rep.compute(dimer(a, b, r0 / 0.6))[0] == pytest.approx(0.6**12, rel=1e-12)
    assert covalent_prefactor(a, b) == pytest.approx(r0**12, rel=1e-14)


def test_value_and_derivative_continuous_at_r_cut():
    rep = Repulsion(A=5.0, n=12, r_cut=2.5, cutoff_width=0.8)

    def e_and_f(r):
        energy, forces, _ = rep.compute(dimer("C", "C", r))
        return energy, forces[1, 1]

    # vanishes beyond r_cut
    assert e_and_f(2.5 + 1e-9) == (0.0, 0.0)
    # continuous: value and force go to 0 as r -> r_cut from below (as (r_cut - r)^3 and ^2)
    for d in (1e-2, 1e-3, 1e-4):
        e, f = e_and_f(2.5 - d)
        assert 0 < e < 20 * 5.0 / 1.7**12 * (d / 0.8) ** 3
        assert 0 < f < 60 * 5.0 / 1.7**12 * (d / 0.8) ** 2 / 0.8 + 12 * 5.0 / 1.7**13
    e1, f1 = e_and_f(2.5 - 1e-4)
    e2, f2 = e_and_f(2.5 - 1e-5)
    assert e2 < e1 / 500 and f2 < f1 / 50
    # no jump at the inner edge of the switch either
    below, above = e_and_f(1.7 - 1e-8), e_and_f(1.7 + 1e-8)
    assert below[0] == pytest.approx(above[0], rel=1e-6)
    assert below[1] == pytest.approx(above[1], rel=1e-6)


def test_float_prefactor_applies_to_every_pair():
    atoms = Atoms("SiOC", positions=[[0, 0, 0], [1.0, 0, 0], [0, 1.5, 0]])
    energy = Repulsion(A=2.0, n=8, r_cut=5.0, cutoff_width=1.0).compute(atoms)[0]
    expected = 2.0 * (1.0**-8 + 1.5**-8 + np.sqrt(1 + 1.5**2) ** -8)
    assert energy == pytest.approx(expected, rel=1e-13)


def test_dict_prefactor_missing_pair_is_named():
    rep = Repulsion(A={("Si", "Si"): 1.0})
    with pytest.raises(ValueError, match=r"no prefactor A for pair O-O, O-Si \(elements of OSi\); A gives: Si-Si"):
        rep.compute(bulk("SiO", "rocksalt", a=4.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0), "n=0 is not allowed"),
        (dict(r_cut=-1.0), "r_cut=-1.0 is not allowed"),
        (dict(r_cut=2.0, cutoff_width=2.5), "cutoff_width=2.5 exceeds r_cut=2.0"),
        (dict(A=-1.0), "A=-1.0 is not allowed"),
        (dict(A="big"), "A='big' is not allowed"),
        (dict(A={"Si-Si-Si": 1.0}), "pair key 'Si-Si-Si' is not a species pair"),
        (dict(A={("Si", "Q"): 1.0}), "unknown element 'Q'"),
        (dict(A={("Si", "O"): 1.0, (8, 14): 2.0}), "gives pair O-Si twice"),
        (dict(contact_scale=float("inf")), "contact_scale=inf is not allowed"),
    ],
)
def test_invalid_settings_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Repulsion(**kwargs).compute(bulk("Si"))
