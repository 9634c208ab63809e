"""Closed-form leverage and leave-one-out agree with brute-force refits."""

import copy

import numpy as np
import pytest

from kernelpot import SparseGP, uq
from kernelpot.io.labels import frame_labels
from kernelpot.gp.assembly import training_rows
from kernelpot import load as load_model
from conftest import emt_frames


@pytest.fixture(scope="module")
def fitted(small_soap):
    frames = emt_frames(8, symbols=("Cu", "Au"), size=(1, 1, 2), seed=11, noise={"forces": 0.02})
    model = SparseGP(descriptor=small_soap, n_sparse=40, calibrate=False).fit(frames)  # raw GP variances
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
    rows, ys, _ = training_rows(m2, frames[2], frame_labels(frames[2]))
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


def _synthetic_diag(w_a, w_e, n=4000, seed=0):
    """LOO diagnostics whose residuals follow N(0, w_a noise^2 + w_e epistemic), heteroscedastic parts."""
    rng = np.random.default_rng(seed)
    sigma = np.full(n, 0.1)
    epi = 0.2 * rng.lognormal(sigma=1.0, size=n) ** 2      # raw epistemic variance, from 0.003 to 3
    loo_std = np.sqrt(sigma ** 2 + 0.3 * epi)              # split between DTC posterior and Nystrom
    loo_pred = np.sqrt(sigma ** 2 + epi)
    r = rng.normal(size=n) * np.sqrt(w_a * sigma ** 2 + w_e * epi)
    # components fixed by symmetry: zero epistemic variance and zero residual; must be ignored
    sigma, loo_std, loo_pred, r = (np.r_[x, v] for x, v in
                                   zip((sigma, loo_std, loo_pred, r), (np.full(500, 0.1),) * 3 + (np.zeros(500),)))
    z = np.zeros(r.size)
    i = np.full(r.size, -1)
    return uq.TrainingDiagnostics(kind=np.array(["forces"] * r.size), frame=i, atom=i, component=i, residual=r,
                                  leverage=z, sigma=sigma, loo_residual_obs=r, z_obs=z, loo_residual=r,
                                  loo_std=loo_std, z=z, loo_std_predictive=loo_pred, z_predictive=r / loo_pred,
                                  frame_chi2=z, frame_dof=z, frame_leverage=z)


@pytest.mark.parametrize("w_a, w_e", [(0.05, 0.3), (2.0, 3.0), (1.0, 1.0)])
def test_recalibration_weights_recover_known_split(w_a, w_e):
    w = uq.recalibration_weights(_synthetic_diag(w_a, w_e))["forces"]
    assert w[0] == pytest.approx(w_a, rel=0.15)
    assert w[1] == pytest.approx(w_e, rel=0.1)


def test_epistemic_weight_never_below_one_scale():
    # the epistemic variance is over-estimated 20x: the free optimum would shrink it to 0.05,
    # leaving sigma far from the data to the noise; the bound keeps it at the single scale
    d = _synthetic_diag(2.0, 0.05)
    epi = d.loo_std_predictive ** 2 - d.sigma ** 2
    ok = epi > 1e-6 * epi.max()                 # the informative observations, as in the function
    s2 = np.mean(d.z_predictive[ok] ** 2)
    wa, we = uq.recalibration_weights(d)["forces"]
    assert we == pytest.approx(s2, rel=1e-6)
    assert wa > s2                      # the rest of the misfit goes to the noise


def test_recalibration_weights_edge_cases():
    # too few informative observations: one scale, sqrt(mean z^2), for both parts
    d = _synthetic_diag(0.05, 0.3, n=10)
    wa, we = uq.recalibration_weights(d)["forces"]
    ok = d.loo_std_predictive > d.sigma * (1 + 1e-12)
    assert wa == we == pytest.approx(np.mean(d.z_predictive[ok] ** 2))
    # all residuals zero: nothing to calibrate against, the kind is left raw
    d = _synthetic_diag(1.0, 1.0)
    d.loo_residual[:] = 0.0
    assert uq.recalibration_weights(d) == {}


def test_recalibration_applies_weights_to_predictions(fitted, tmp_path):
    model, _ = fitted
    m = copy.deepcopy(model)
    weights = uq.recalibrate(m)
    assert set(weights) == {"energy", "forces", "stress"}
    assert all(np.all(np.isfinite(v)) and min(v) > 0 for v in weights.values())
    # the weights are the maximum of the training LOO likelihood: no nearby pair does better
    d = uq.leave_one_out(model)
    sel = d.kind == "forces"
    r, s2 = d.loo_residual[sel], d.sigma[sel] ** 2
    epi = d.loo_std_predictive[sel] ** 2 - s2
    ok = epi > 1e-6 * epi.max()

    def nll(wa, we):
        v = wa * s2[ok] + we * epi[ok]
        return np.mean(np.log(v) + r[ok] ** 2 / v)

    wa, we = weights["forces"]
    for fa, fe in [(1.2, 1), (1 / 1.2, 1), (1, 1.2), (1, 1 / 1.2)]:
        assert nll(wa, we) < nll(fa * wa, fe * we)
    a = emt_frames(1, symbols=("Cu", "Au"), size=(1, 1, 2), seed=99)[0]
    r0, r1 = model.predict_frame(a), m.predict_frame(a)
    noise2 = r0["forces_std"] ** 2 - r0["forces_std_epistemic"] ** 2
    np.testing.assert_allclose(r1["forces_std_epistemic"], np.sqrt(we) * r0["forces_std_epistemic"], rtol=1e-12)
    np.testing.assert_allclose(r1["forces_std"] ** 2, wa * noise2 + we * r0["forces_std_epistemic"] ** 2,
                               rtol=1e-10)
    np.testing.assert_allclose(r1["forces"], r0["forces"], rtol=0, atol=0)
    raw = m.predict_frame(a, calibrated=False)
    for k in ("energy_std", "forces_std", "stress_std", "forces_std_epistemic"):
        np.testing.assert_allclose(raw[k], r0[k], rtol=1e-12)
    m.save(tmp_path / "m.npz")
    r2 = load_model(tmp_path / "m.npz").predict_frame(a)
    np.testing.assert_allclose(r2["forces_std"], r1["forces_std"], rtol=1e-12)


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
