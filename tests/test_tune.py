"""Settings selection by marginal likelihood and k-fold validation."""

import numpy as np
import pytest

from kernelpot import SOAP, SparseGP
from kernelpot.gp.tune import select_settings


def test_likelihood_prefers_a_cutoff_that_sees_the_neighbours(cu_frames):
    # fcc Cu: nearest neighbours at 2.55 Å. A 2.2 Å cutoff sees no neighbour at all (every
    # environment looks isolated), so its evidence must be far below that of 4 Å.
    template = SparseGP(descriptor=SOAP(n_max=4, l_max=3, r_cut=4.0, cutoff_width=0.5), n_sparse=40)
    best, table = select_settings(cu_frames[:6], template, grid={"descriptor__r_cut": [2.2, 4.0]})
    assert best["descriptor__r_cut"] == 4.0
    assert table[0]["score"] > table[1]["score"] + 100
    assert [r["score"] for r in table] == sorted((r["score"] for r in table), reverse=True)


def test_kfold_scores_and_errors(cu_frames):
    template = SparseGP(descriptor=SOAP(n_max=4, l_max=3, r_cut=4.0), n_sparse=30)
    best, table = select_settings(cu_frames[:6], template, grid={"zeta": [2.0, 4.0]}, method="kfold", cv=2)
    assert len(table) == 2 and all(np.isfinite(r["score"]) and r["score"] < 0 for r in table)
    with pytest.raises(ValueError, match="unknown settings"):
        select_settings(cu_frames[:3], template, grid={"descriptor__rcut": [4.0]})
    with pytest.raises(ValueError, match="method"):
        select_settings(cu_frames[:3], template, grid={"zeta": [2.0]}, method="bic")
