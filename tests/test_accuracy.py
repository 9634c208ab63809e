"""Held-out accuracy on real DFT data (mlearn Si and Li test sets): slow, still run in CI.

A reduced fit (every third training structure, 300 sparse points per species) must stay
within sight of the published GAP numbers for the full data (Si: E 2.77 meV/atom, F 0.0726 eV/Å,
S 0.45 GPa without stress training). Measured here: Si E 5.1, F 0.095, S 0.40; Li E 0.49,
F 0.0104, S 0.038. A unit or sign slip in stress or energy, or broken derivative
observations, moves these by an order of magnitude.
"""

import pytest

import kernelpot
from kernelpot.uq.evaluation import evaluate, error_table
from conftest import SHARED, needs_shared

pytestmark = [pytest.mark.slow, needs_shared("mlearn")]

LIMITS = {"Si": {"energy": 8.0, "forces": 0.12, "stress": 0.6},
          "Li": {"energy": 1.0, "forces": 0.015, "stress": 0.06}}


@pytest.mark.parametrize("element", ["Si", "Li"])
def test_mlearn_heldout_accuracy(element):
    train = kernelpot.read(SHARED / "mlearn" / element / "training.json")[::3]
    test = kernelpot.read(SHARED / "mlearn" / element / "test.json")
    model = kernelpot.SparseGP(n_sparse=300).fit(train)
    err = error_table(evaluate(model, test, return_std=False))
    for kind, limit in LIMITS[element].items():
        assert err[kind]["MAE"] < limit, (kind, err[kind])
