"""Held-out accuracy on real DFT data (mlearn Si and Li test sets): slow, still run in CI.

A reduced fit (every third training structure, 300 sparse points per species) must stay
within sight of the published GAP numbers for the full data (Si: E 2.77 meV/atom, F 0.0726 eV/Å,
S 0.45 GPa without stress training). Measured here with the defaults (the two-body term; the
descriptor chosen by the evidence: SOAP radially scaled at 2.5 Å on Si, unscaled on Li):
Si E 3.79, F 0.079, S 0.44; Li E 0.62, F 0.0094, S 0.036 (unscaled SOAP on Si: E 3.42,
F 0.082; SOAP alone, no two-body term: Si E 5.1, F 0.095, S 0.40; Li E 0.50, F 0.0104,
S 0.038). The limits sit 13-25 % above the measured values (fits are deterministic): a unit
or sign slip in stress or energy, broken derivative observations, or losing the two-body
term's gain on Si forces fails them.
"""

import pytest

import kernelpot
from kernelpot.uq.evaluation import evaluate, error_table
from conftest import SHARED, needs_shared

pytestmark = [pytest.mark.slow, needs_shared("mlearn")]

LIMITS = {"Si": {"energy": 4.3, "forces": 0.090, "stress": 0.55},
          "Li": {"energy": 0.78, "forces": 0.0118, "stress": 0.045}}


@pytest.mark.parametrize("element", ["Si", "Li"])
def test_mlearn_heldout_accuracy(element):
    train = kernelpot.read(SHARED / "mlearn" / element / "training.json")[::3]
    test = kernelpot.read(SHARED / "mlearn" / element / "test.json")
    model = kernelpot.SparseGP(n_sparse=300).fit(train)
    err = error_table(evaluate(model, test, return_std=False))
    for kind, limit in LIMITS[element].items():
        assert err[kind]["MAE"] < limit, (kind, err[kind])
