"""Closed-form leverage and leave-one-out agree with brute-force refits."""

import copy

import numpy as np
import pytest

from kernelpot import SparseGP, uq
from kernelpot.gp.labels import frame_labels
from conftest import emt_frames


@pytest.fixture(scope="module")
def fitted(small_soap):
    frames = emt_frames(8, symbols=("Cu", "Au"), size=(1, 1, 2), seed=11, noise={"forces": 0.02})
    model = SparseGP(descriptor=small_soap, n_sparse=40).fit(frames)
    return model, frames


@pytest.mark.parametrize("g", [0, 5])
def test_structure_loo_matches_refit(fitted, g):
    model, frames = fitted
    d = uq.leave_one_out(model)
    ref = copy.deepcopy(model).refit([a for i, a in enumerate(frames) if i != g])
    p = ref.predict_frame(frames[g], return_std=False)
    lab = frame_labels(frames[g])
    sel = d.frame == g
    n = len(frames[g])
    e_loo = d.loo_residual[sel & (d.kind == "energy")]
    assert e_loo[0] == pytest.approx((lab["energy"] - p["energy"]) / n, rel=1e-6)
    f_loo = d.loo_residual[sel & (d.kind == "forces")]
    np.testing.assert_allclose(f_loo, (lab["forces"] - p["forces"]).ravel(), rtol=1e-6, atol=1e-9)
    s_loo = d.loo_residual[sel & (d.kind == "stress")]
    np.testing.assert_allclose(s_loo, lab["stress"] - p["stress"], rtol=1e-6, atol=1e-11)


def test_single_observation_loo_matches_refit(fitted):
    """Leaving out one force component: refit by removing exactly that row from the statistics."""
    model, frames = fitted
    d = uq.leave_one_out(model)
    i = int(np.flatnonzero((d.kind == "forces") & (d.frame == 2))[7])
    atom, comp = d.atom[i], d.component[i]
    m2 = copy.deepcopy(model)
    rows, ys, _ = m2._training_rows(frames[2], frame_labels(frames[2]))
    from kernelpot.gp.likelihood import whiten
    k = 3 * atom + comp
    m2._stats.add(m2.noise_groups_.index("forces"), whiten(m2._Lmm, rows["forces"][k:k + 1]),
                  ys["forces"][k:k + 1], None, sign=-1.0)
    m2._solve()
    p = m2.predict_frame(frames[2], return_std=False)
    assert d.loo_residual_obs[i] == pytest.approx(frame_labels(frames[2])["forces"][atom, comp]
                                                  - p["forces"][atom, comp], rel=1e-6)


def test_leverage_properties(fitted):
    model, _ = fitted
    d = uq.leave_one_out(model)
    assert np.all(d.leverage > 0) and np.all(d.leverage < 1)
    # trace of the hat matrix = effective number of parameters <= number of sparse points
    assert d.leverage.sum() <= model.sparse_.size + 1e-8
    assert np.all(d.loo_std >= d.sigma - 1e-15)


def test_recalibration_scale_makes_loo_z_unit(fitted):
    model, _ = fitted
    m = copy.deepcopy(model)
    scales = uq.recalibrate(m)
    d = uq.leave_one_out(m)
    for k, s in scales.items():
        assert np.sqrt(np.mean(d.z_predictive[d.kind == k] ** 2)) == pytest.approx(s, rel=1e-12)
    a = emt_frames(1, symbols=("Cu", "Au"), size=(1, 1, 2), seed=99)[0]
    r0, r1 = model.predict_frame(a), m.predict_frame(a)
    np.testing.assert_allclose(r1["forces_std"], scales["forces"] * r0["forces_std"], rtol=1e-12)
    np.testing.assert_allclose(r1["forces_std_epistemic"], r0["forces_std_epistemic"], rtol=1e-12)


def test_predictive_loo_std_matches_refit_prediction_std(fitted):
    """The predictive LOO std of a left-out structure equals the total std a refit without it predicts."""
    model, frames = fitted
    d = uq.leave_one_out(model)
    g = 3
    ref = copy.deepcopy(model).refit([a for i, a in enumerate(frames) if i != g])
    p = ref.predict_frame(frames[g])
    sel = (d.frame == g) & (d.kind == "forces")
    # marginal std of one held-out component: structure-LOO covariance diagonal + Nystrom residual
    np.testing.assert_allclose(d.loo_std_predictive[sel], p["forces_std"].ravel(), rtol=1e-6)
    e = (d.frame == g) & (d.kind == "energy")
    assert d.loo_std_predictive[e][0] == pytest.approx(p["energy_std"] / len(frames[g]), rel=1e-6)
