"""scikit-learn estimator contract for SOAP and SparseGP (with sklearn's own checks where they apply)."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import KFold, cross_validate
from sklearn.utils import estimator_checks as ec

from kernelpot import SOAP, SparseGP

# checks that only inspect the constructor / parameters (the data-driven ones assume X is a 2-D array,
# while kernelpot estimators take lists of ase.Atoms)
PARAM_CHECKS = [
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimator_cloneable",
    "check_do_not_raise_errors_in_init_or_set_params",
]


@pytest.mark.parametrize("est", [SOAP(), SparseGP(), SparseGP(descriptor=SOAP(r_cut=4.0), n_sparse=10)],
                         ids=["SOAP", "SparseGP", "SparseGP-nested"])
@pytest.mark.parametrize("check", PARAM_CHECKS)
def test_sklearn_parameter_checks(est, check):
    getattr(ec, check)(type(est).__name__, est)


def test_clone_and_nested_params(small_soap):
    m = SparseGP(descriptor=small_soap, n_sparse=7, zeta=2.0)
    c = clone(m)
    assert c is not m and c.descriptor is not m.descriptor
    assert c.get_params()["descriptor__n_max"] == small_soap.n_max
    c.set_params(descriptor__l_max=2, n_sparse=9)
    assert c.descriptor.l_max == 2 and c.n_sparse == 9 and small_soap.l_max == 3


def test_fit_returns_self_and_fitted_attributes_end_in_underscore(small_soap, cu_frames):
    m = SparseGP(descriptor=small_soap, n_sparse=20)
    params_before = {k: v for k, v in m.get_params(deep=False).items() if k != "descriptor"}
    assert m.fit(cu_frames[:4]) is m
    for attr in ("alpha_", "sparse_", "noise_", "delta_", "species_", "descriptor_"):
        assert hasattr(m, attr)
    # fit must not change constructor parameters (the descriptor is cloned, not mutated)
    assert {k: v for k, v in m.get_params(deep=False).items() if k != "descriptor"} == params_before
    assert m.descriptor.species is None


def test_cross_validate_on_list_of_atoms(small_soap, cu_frames):
    res = cross_validate(SparseGP(descriptor=small_soap, n_sparse=30), cu_frames, cv=KFold(3),
                         return_estimator=True)
    scores = res["test_score"]
    assert len(scores) == 3 and np.all(np.isfinite(scores))
    # score is the negative force RMSE (eV/Å): EMT Cu rattles are learned to well under 0.2 eV/Å
    assert np.all(scores < 0) and np.all(scores > -0.2)
    assert all(e is not res["estimator"][0] for e in res["estimator"][1:])
