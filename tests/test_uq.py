"""Closed-form leverage and leave-one-out agree with brute-force refits."""

import copy

import numpy as np
import pytest

from kernelpot import SparseGP, uq
from kernelpot.io.labels import frame_labels
from kernelpot.gp.assembly import describe, offset_columns, training_rows
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
    m2._stats.add(m2.noise_groups_.index("forces"),
                  offset_columns(m2, frames[2], "forces", whiten(m2._Lmm, rows["forces"][k:k + 1])),
                  ys["forces"][k:k + 1], None, sign=-1.0)
    m2._solve()
    p = m2.predict_frame(frames[2], return_std=False)
    assert d.loo_residual_obs[i] == pytest.approx(frame_labels(frames[2])["forces"][atom, comp]
                                                  - p["forces"][atom, comp], rel=1e-6)


def test_leverage_properties(fitted):
    model, _ = fitted
    d = uq.leave_one_out(model)
    assert np.all(d.leverage > 0) and np.all(d.leverage < 1)
    # trace of the hat matrix = effective number of parameters <= number of weights
    # (sparse environments, two-body columns, offset parameters)
    from kernelpot.gp.assembly import n_columns
    assert d.leverage.sum() <= n_columns(model) + 1e-8
    assert np.all(d.loo_std >= d.sigma - 1e-15)


def _synthetic_diag(w_a, w_p, w_n=None, gamma=1.0, n=4000, seed=0):
    """LOO diagnostics whose residuals follow the calibration model with known parameters.

    Latent variance ``v`` heteroscedastic, 10 % of it sparse-posterior and 90 % Nystrom
    residual in half of the observations, the reverse in the other half;
    ``r ~ N(0, w_a noise^2 + (w_p v_post + w_n v_nys) (max(v, v_ref) / v_ref)^(gamma - 1))``.
    Each observation is its own atom, so its invariant amplitude is ``v``.
    """
    w_n = w_p if w_n is None else w_n
    rng = np.random.default_rng(seed)
    sigma = np.full(n, 0.1)
    epi = 0.2 * rng.lognormal(sigma=1.0, size=n) ** 2      # raw epistemic variance, from 0.003 to 3
    share = np.where(np.arange(n) % 2 == 0, 0.1, 0.9)      # sparse-posterior share of it
    vref = np.median(epi)
    loo_std = np.sqrt(sigma ** 2 + share * epi)
    loo_pred = np.sqrt(sigma ** 2 + epi)
    growth = (np.maximum(epi, vref) / vref) ** (gamma - 1)
    r = rng.normal(size=n) * np.sqrt(w_a * sigma ** 2 + (w_p * share + w_n * (1 - share)) * epi * growth)
    # components fixed by symmetry: zero epistemic variance and zero residual; must be ignored
    sigma, loo_std, loo_pred, r = (np.r_[x, v] for x, v in
                                   zip((sigma, loo_std, loo_pred, r), (np.full(500, 0.1),) * 3 + (np.zeros(500),)))
    return _forces_diag(r, sigma, loo_std, loo_pred)


def _forces_diag(r, sigma, loo_std, loo_pred):
    """LOO diagnostics of force components, each its own atom, from residuals and the three stds."""
    z = np.zeros(r.size)
    zero = np.zeros(r.size, dtype=int)
    return uq.TrainingDiagnostics(kind=np.array(["forces"] * r.size), frame=np.arange(r.size), atom=zero,
                                  component=zero, residual=r, leverage=z, sigma=sigma, loo_residual_obs=r, z_obs=z,
                                  loo_residual=r, loo_std=loo_std, z=z, loo_std_predictive=loo_pred,
                                  z_predictive=r / loo_pred, frame_chi2=z, frame_dof=z, frame_leverage=z)


@pytest.mark.parametrize("w_a, w_p, w_n", [(0.05, 0.3, 0.3), (2.0, 3.0, 3.0), (1.0, 4.0, 0.5), (3.0, 0.5, 0.2),
                                           (1e7, 4e7, 5e6)])   # residuals 1e7x the GP's variance
def test_recalibration_weights_recover_known_parameters(w_a, w_p, w_n):
    wa, wp, wn, g, vref, amax, vfade, nmax, xmax = uq.recalibration_weights(_synthetic_diag(w_a, w_p, w_n),
                                                                floors={"forces": 1e-4})["forces"]
    assert wa == pytest.approx(w_a, rel=0.2)
    assert wp == pytest.approx(w_p, rel=0.2)
    assert wn == pytest.approx(w_n, rel=0.2)
    assert g == 1.0                     # no group leave-one-out: no evidence of faster growth
    assert vfade == vref                # nor of where the held-out data stop vouching for a weight
    assert xmax == pytest.approx(amax)  # no residual measured without own sparse points: extrapolation as before


def _two_basin_diag(seed, n=3000):
    """Structure-LOO residuals whose two epistemic parts are nearly proportional (as on mlearn Si forces)
    and whose variance is almost all sparse-posterior (w_p = 11, w_n = 5e-4), drawn with a growth
    (gamma 1.9) and a fade onset (2.1 v_ref) that stage 1 does not model: the likelihood in log
    weights is a shallow valley with a plateau at each end, and from w_p = w_n the single L-BFGS-B
    start of earlier versions stopped at the wrong end (w_n ~ 1-3, 9 of 12 seeds)."""
    rng = np.random.default_rng(seed)
    sigma = np.full(n, 0.1)
    epi = 0.02 * np.exp(1.4 * rng.normal(size=n))
    big = epi > np.percentile(epi, 65)
    share = 1 / (1 + np.exp(-(0.45 - 0.87 * big + rng.normal(scale=0.46, size=n))))
    vref = np.percentile(epi, 90)
    _, v = uq.variance((0.57, 11.0, 5e-4, 1.9, vref, epi.max(), 2.1 * vref), sigma, epi, epi, (1 - share) * epi)
    r = rng.normal(size=n) * np.sqrt(v)
    return _forces_diag(r, sigma, np.sqrt(sigma ** 2 + share * epi), np.sqrt(sigma ** 2 + epi))


@pytest.mark.parametrize("empty", ["posterior", "nystrom"])
def test_weight_of_an_absent_variance_part_stays_at_the_common_scale(empty):
    # one epistemic part is zero in every observation: its weight has no gradient and the data cannot
    # set it; it keeps the common starting scale s^2 (times the coverage scale), whichever start wins
    d = _synthetic_diag(1.0, 2.0, 0.5, seed=7)
    epi = d.loo_std_predictive ** 2 - d.sigma ** 2
    if empty == "posterior":
        d.loo_std = d.sigma.copy()
    else:
        d.loo_std = d.loo_std_predictive.copy()
    ok = epi > 0
    s2 = np.mean(d.loo_residual[ok] ** 2 / d.loo_std_predictive[ok] ** 2)
    w = uq.recalibration_weights(d, floors={"forces": 1e-4})["forces"]
    absent = w[1] if empty == "posterior" else w[2]
    assert 0.2 < absent / s2 < 5.0


def test_a_non_finite_std_leaves_out_its_atom_not_the_kind():
    # three force components per atom: one non-finite std leaves out the atom whose amplitude it
    # belongs to, exactly as residuals left out the documented way (NaN) do
    d = _synthetic_diag(1.0, 2.0, 0.5)
    d.frame = np.arange(d.frame.size) // 3
    ref = copy.deepcopy(d)
    ref.loo_residual[[3, 4, 5, 15, 16, 17]] = np.nan
    w_ref = uq.recalibration_weights(ref, floors={"forces": 1e-4})["forces"]
    d.loo_std[5] = np.nan
    d.loo_std_predictive[16] = np.inf
    w = uq.recalibration_weights(d, floors={"forces": 1e-4})
    assert "forces" in w and np.all(np.isfinite(w["forces"]))
    assert w["forces"] == pytest.approx(w_ref, rel=1e-12)


def test_noise_far_below_the_sigma_floor_is_lifted_to_it():
    # a learned (or given) noise std 1e-9 against a floor of 1e-4: the aleatoric weight must be
    # >= 1e10, beyond the weights' usual range; the fit still runs and every sigma meets the floor
    d = _synthetic_diag(1.0, 2.0, 0.5)
    d.sigma = np.full(d.sigma.size, 1e-9)
    w = uq.recalibration_weights(d, floors={"forces": 1e-4})["forces"]
    assert np.all(np.isfinite(w)) and w[0] * 1e-18 >= 1e-8 * (1 - 1e-9)
    _, total = uq.variance(w, 1e-9, np.array([0.0, 1e-12, 1.0]))
    assert np.all(total >= 1e-8 * (1 - 1e-9))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stage1_weights_reach_the_best_likelihood_of_many_starts(seed):
    # the weights' likelihood (at their own common scale: stage 1b rescales all three) is the best a
    # brute-force search from a 5 x 5 grid of starting ratios finds, and the Nystrom weight is small
    import scipy.optimize as so
    d = _two_basin_diag(seed)
    w = uq.recalibration_weights(d, floors={"forces": 1e-4})["forces"]
    vref, amax = w[4], w[5]
    f = lambda x: _calibration_nll(d, "forces", (*np.exp(x), 1.0, vref, amax))  # noqa: E731
    bounds = [(np.log(1e-6), np.log(1e6)), (np.log(1e-10), np.log(1e6)), (np.log(1e-10), np.log(1e6))]
    brute = min(so.minimize(f, [0.0, a, b], method="L-BFGS-B", bounds=bounds).fun
                for a in np.linspace(-9, 9, 5) for b in np.linspace(-9, 9, 5))
    own = so.minimize_scalar(lambda ls: f(np.log(w[:3]) + ls), bounds=(-10, 10), method="bounded",
                             options={"xatol": 1e-7}).fun
    assert own <= brute + 2e-4 * 2          # _calibration_nll is twice the mean NLL
    assert w[2] < 0.05 < 5.0 < w[1]


@pytest.mark.parametrize("gamma", [1.0, 1.5, 2.2])
def test_growth_exponent_recovered_from_group_residuals(gamma):
    # structure LOO fixes the weights; held-out groups, with latent variances up to 100x the
    # in-distribution ones, follow the model with a known exponent above the 90th percentile
    d = _synthetic_diag(1.0, 2.0, 0.5)
    w = uq.recalibration_weights(d, floors={"forces": 1e-4})["forces"]
    rng = np.random.default_rng(7)
    n = 3000
    epi = w[4] * rng.uniform(0.2, 100.0, n)
    nys = 0.5 * epi
    _, total = uq.variance((w[0], w[1], w[2], gamma, w[4], np.inf), 0.1, epi, epi, nys)
    d.group_loo = {"kind": np.array(["forces"] * n), "frame": np.arange(n), "group": np.zeros(n, int),
                   "atom": np.zeros(n, int), "component": np.zeros(n, int),
                   "residual": rng.normal(size=n) * np.sqrt(total), "sigma": np.full(n, 0.1),
                   "epistemic": epi, "nystrom": nys}
    w2 = uq.recalibration_weights(d, floors={"forces": 1e-4})["forces"]
    assert w2[:3] == pytest.approx(w[:3], rel=1e-9)          # stage 1 is untouched by the groups
    assert w2[3] == pytest.approx(gamma, abs=0.05)
    assert w2[4] <= w2[6] <= w2[5]


def test_fade_onset_recovered_from_group_residuals():
    # a Nystrom weight far below one (the raw residual far too wide, as on molecules): where the
    # held-out groups stop vouching for it decides sigma, and the group likelihood finds it
    from kernelpot.gp.calibration import FADE_GRID
    d = _synthetic_diag(1.0, 2.0, 0.001)
    w = uq.recalibration_weights(d, floors={"forces": 1e-4})["forces"]
    assert w[2] < 0.05
    rng = np.random.default_rng(3)
    n = 4000
    epi = w[4] * np.exp(rng.uniform(np.log(0.2), np.log(100.0), n))
    amax = max(w[5], epi.max())
    onset = w[4] * (amax / w[4]) ** (6 / (FADE_GRID - 1))          # a point of the grid
    _, total = uq.variance((w[0], w[1], w[2], 1.0, w[4], amax, onset), 0.1, epi, epi, 0.9 * epi)
    d.group_loo = {"kind": np.array(["forces"] * n), "frame": np.arange(n), "group": np.zeros(n, int),
                   "atom": np.zeros(n, int), "component": np.zeros(n, int),
                   "residual": rng.normal(size=n) * np.sqrt(total), "sigma": np.full(n, 0.1),
                   "epistemic": epi, "nystrom": 0.9 * epi}
    w2 = uq.recalibration_weights(d, floors={"forces": 1e-4})["forces"]
    step = (amax / w[4]) ** (1 / (FADE_GRID - 1))
    assert w2[6] == pytest.approx(onset, rel=step - 1 + 1e-9)        # within one grid step
    assert w2[3] == pytest.approx(1.0, abs=0.1)


def test_total_sigma_never_below_the_floor():
    # residuals much smaller than the learned noise: the noise weight follows them down, but
    # never so far that a total sigma falls below the floor (here 0.05 with a learned noise of 0.1)
    d = _synthetic_diag(0.01, 0.3)
    w = uq.recalibration_weights(d, floors={"forces": 0.05})["forces"]
    assert w[0] == pytest.approx(0.25, rel=1e-6)
    epi, total = uq.variance(w, 0.1, np.array([0.0, 1e-8, 1.0]))
    assert np.all(total >= 0.05 ** 2 * (1 - 1e-9))
    w_free = uq.recalibration_weights(d, floors={"forces": 1e-4})["forces"]
    assert w_free[0] == pytest.approx(0.01, rel=0.3)   # the bound is what held it: the data ask for less
    # the default floor is a tenth of the fit's noise floor, never zero
    from kernelpot.gp.calibration import SIGMA_FLOOR
    assert all(v > 0 for v in SIGMA_FLOOR.values())


@pytest.mark.parametrize("seed", [0, 1])
def test_coverage_scale_matches_one_and_two_sigma(seed):
    from kernelpot.gp.calibration import coverage_scale
    rng = np.random.default_rng(seed)
    # a Gaussian with the wrong scale: c is that scale
    assert coverage_scale(3.0 * rng.normal(size=20000)) == pytest.approx(3.0, rel=0.03)
    # a mixture of scales (half at 0.5, half at 1.3): mean z^2 = 0.96, yet 1 sigma covers 76 %.
    # c minimises the squared misses at 1 and 2 sigma (brute force on a 25x finer grid)
    z = rng.normal(size=30000) * np.where(rng.uniform(size=30000) < 0.5, 0.5, 1.3)
    c = coverage_scale(z)

    def loss(cc):
        return (np.mean(np.abs(z / cc) <= 1) - 0.6827) ** 2 + (np.mean(np.abs(z / cc) <= 2) - 0.9545) ** 2

    assert abs(np.mean(z ** 2) - 1) < 0.06 and np.mean(np.abs(z) <= 1) > 0.74   # the likelihood's scale misses
    assert loss(c) <= min(loss(cc) for cc in np.exp(np.linspace(-1.5, 1.5, 3001))) + 2e-4
    assert abs(np.mean(np.abs(z / c) <= 1) - 0.683) < 0.04
    # the callable form: scaling variance weights by c^2 is scaling z by 1/c
    assert coverage_scale(lambda cc: z / cc) == c
    assert coverage_scale(np.array([np.nan])) == 1.0


def test_calibrated_energy_sigma_per_atom_is_the_same_for_a_supercell(fitted):
    """The calibration's thresholds are per-atom energy variances: a crystal and its supercell
    (identical environments, total energy exactly doubled) get the same calibrated sigma per atom.
    Comparing the total energy's variance with them gave a supercell of n atoms n^2 times the growth."""
    model, _ = fitted
    m = copy.deepcopy(model)
    a = emt_frames(1, symbols=("Cu", "Au"), size=(1, 1, 2), seed=5)[0]
    b = a.repeat((2, 1, 1))
    feat = describe(m, a)
    v = m.posterior_.latent_variances(feat, None, forces=False)["energy"][0][0] / len(a) ** 2
    # growth above half the cell's per-atom variance, and a posterior weight below one that fades
    m.std_weights_ = {"energy": (1.0, 0.3, 0.5, 2.0, 0.5 * v, 100 * v)}
    ra, rb = m.predict_frame(a), m.predict_frame(b)
    assert rb["energy"] / len(b) == pytest.approx(ra["energy"] / len(a), rel=1e-9)
    assert rb["energy_std_epistemic"] / len(b) == pytest.approx(ra["energy_std_epistemic"] / len(a), rel=1e-6)
    assert rb["energy_std"] / len(b) == pytest.approx(ra["energy_std"] / len(a), rel=1e-6)
    # the growth applied at the per-atom amplitude v = 2 v_ref: twice the linear (gamma = 1) variance
    m.std_weights_ = {"energy": (1.0, 0.3, 0.5, 1.0, 0.5 * v, 100 * v)}
    lin = m.predict_frame(a)["energy_std_epistemic"]
    assert ra["energy_std_epistemic"] == pytest.approx(np.sqrt(2.0) * lin, rel=1e-9)


def test_recalibration_weights_edge_cases():
    # too few informative observations: one scale for every part. Narrowing (mean z^2 < 1) is shrunk
    # towards 1 as an inverse-gamma prior worth min_obs observations would, (sum z^2 + min_obs) / (n + min_obs);
    # widening is taken as measured
    d = _synthetic_diag(0.05, 0.3, n=10)
    wa, wp, wn, gamma, *_ = uq.recalibration_weights(d)["forces"]
    ok = d.loo_std_predictive > d.sigma * (1 + 1e-12)
    z2 = d.z_predictive[ok] ** 2
    assert z2.mean() < 0.9  # the case: residuals narrower than the GP says
    assert wp == pytest.approx((z2.sum() + 20) / (z2.size + 20))
    assert z2.mean() < wp < 1.0 and wn == pytest.approx(wp) and wa == pytest.approx(wp) and gamma == 1.0
    d = _synthetic_diag(9.0, 9.0, n=10)
    z2 = d.z_predictive[d.loo_std_predictive > d.sigma * (1 + 1e-12)] ** 2
    assert z2.mean() > 2.0
    assert uq.recalibration_weights(d)["forces"][1] == pytest.approx(z2.mean())
    # many residuals from one structure move together: each structure counts as one observation (a 1-frame
    # fit's 24 force components set the force sigma 2x too narrow)
    d = _synthetic_diag(0.05, 0.3, n=200)
    d.frame[:] = 0
    ok = d.loo_std_predictive > d.sigma * (1 + 1e-12)
    m = (d.z_predictive[ok] ** 2).mean()
    assert m < 0.9
    assert uq.recalibration_weights(d)["forces"][1] == pytest.approx((m + 20) / 21)
    # at min_obs residuals and more, the full fit: neither formula
    d = _synthetic_diag(0.05, 0.3, n=60)
    assert uq.recalibration_weights(d)["forces"][1] != pytest.approx((d.z_predictive ** 2).mean(), rel=1e-3)
    # all residuals zero: nothing to calibrate against, the kind is left raw
    d = _synthetic_diag(1.0, 1.0)
    d.loo_residual[:] = 0.0
    assert uq.recalibration_weights(d) == {}


def _calibration_nll(d, kind, w, group=False):
    """The two objectives of recalibration_weights, written out independently (mean NLL of one set)."""
    from kernelpot.gp.calibration import amplitudes
    if not group:
        # each structure as a new one (without its observations and its own sparse environments) when
        # the diagnostics hold it; hand-made diagnostics have the plain structure LOO only
        noise = d.sigma
        if d.held_out_residual is not None:
            res, post, nys = d.held_out_residual, np.maximum(d.held_out_std ** 2 - noise ** 2, 0.0), d.nystrom_held_out
        else:
            res, post = d.loo_residual, np.maximum(d.loo_std ** 2 - noise ** 2, 0.0)
            nys = np.maximum(d.loo_std_predictive ** 2 - d.loo_std ** 2, 0.0)
        amp = amplitudes(d.kind, d.frame, d.atom, d.component, post + nys)
        ok = uq.informative(d) & (d.kind == kind)
        r, s, e, ny, a = res[ok], noise[ok], post[ok] + nys[ok], nys[ok], amp[ok]
    else:
        g = d.group_loo
        gamp = amplitudes(g["kind"], g["frame"], g["atom"], g["component"], g["epistemic"])
        sel = (g["kind"] == kind) & (g["epistemic"] > 1e-6 * g["epistemic"][g["kind"] == kind].max())
        r, s, e, ny, a = g["residual"][sel], g["sigma"][sel], g["epistemic"][sel], g["nystrom"][sel], gamp[sel]
    _, v = uq.variance(w, s, e, a, ny)
    return np.mean(np.log(v) + r ** 2 / v)


def test_recalibration_applies_weights_to_predictions(fitted, tmp_path):
    model, _ = fitted
    m = copy.deepcopy(model)
    weights = uq.recalibrate(m)
    assert set(weights) == {"energy", "forces", "stress"}
    assert all(np.all(np.isfinite(v)) and min(v) > 0 for v in weights.values())
    # the parameters are the maximum of the held-out likelihood: no nearby point does better
    from kernelpot.gp.group_loo import calibration_groups
    groups, _ = calibration_groups(model, model._train_frames)
    d = uq.leave_one_out(model, groups=groups)
    assert d.group_loo is not None and len(d.group_loo["residual"]) > 0
    wa, wp, wn, gamma, vref, amax, vfade, nmax, xmax = weights["forces"]
    # stage 1, the weights: structure LOO with linear growth, their ratios from the likelihood
    # (perturbing one weight at a time and rescaling all three to the likelihood's own scale
    # never does better) and their common scale from the coverage at 1 and 2 sigma
    import scipy.optimize as so

    def nll_at_own_scale(w3):
        f = lambda ls: _calibration_nll(d, "forces", (*(np.exp(ls) * np.asarray(w3)), 1.0, vref, amax))  # noqa: E731
        return so.minimize_scalar(f, bounds=(-5, 5), method="bounded", options={"xatol": 1e-6}).fun

    best = nll_at_own_scale((wa, wp, wn))
    for fa, fp, fn in [(1.2, 1, 1), (1, 1.2, 1), (1, 1 / 1.2, 1), (1, 1, 1.2), (1, 1, 1 / 1.2), (1 / 1.2, 1, 1)]:
        if wp * fp < 2e-10 or wn * fn < 2e-10 or (fa < 1 and wa / 1.2 < 1e-4 ** 2 / 0.1 ** 2):
            continue                                          # at a bound
        assert best <= nll_at_own_scale((wa * fa, wp * fp, wn * fn)) + 1e-6 * abs(best)
    ok = uq.informative(d) & (d.kind == "forces")
    noise = d.sigma[ok]
    post = np.maximum(d.held_out_std[ok] ** 2 - noise ** 2, 0.0)
    nys = d.nystrom_held_out[ok]
    from kernelpot.gp.calibration import amplitudes
    amp = amplitudes(d.kind, d.frame, d.atom, d.component,
                     np.maximum(d.held_out_std ** 2 - d.sigma ** 2, 0.0) + d.nystrom_held_out)[ok]
    z = d.held_out_residual[ok] / np.sqrt(uq.variance((wa, wp, wn, 1.0, vref, amax), noise, post + nys, amp,
                                                      nys)[1])
    assert abs(np.mean(np.abs(z) <= 1) - 0.683) < 0.05 and abs(np.mean(np.abs(z) <= 2) - 0.954) < 0.03
    # stage 2, the growth: group LOO
    best = _calibration_nll(d, "forces", weights["forces"], group=True)
    for dg in (0.1, -0.1):
        if 1.0 <= gamma + dg <= 3.0:
            assert best <= _calibration_nll(d, "forces", (wa, wp, wn, gamma + dg, vref, amax, vfade, nmax),
                                            group=True) + 1e-9
    a = emt_frames(1, symbols=("Cu", "Au"), size=(1, 1, 2), seed=99)[0]
    r0, r1 = model.predict_frame(a), m.predict_frame(a)
    noise2 = r0["forces_std"] ** 2 - r0["forces_std_epistemic"] ** 2
    # the raw latent variance and its Nystrom part, from the posterior directly
    feat = describe(model, a, gradients=True, strain=True)
    v, ny = model.posterior_.latent_variances(feat, a.cell.volume, True, True)["forces"]
    np.testing.assert_allclose(r0["forces_std_epistemic"] ** 2, v, rtol=1e-10)
    amp = v.mean(axis=1, keepdims=True)                        # rotation-invariant: a third of the trace per atom
    fade = np.clip(1 - vfade / amp, 0, 1)
    Wp, Wn = wp + max(0, 1 - wp) * fade, wn + max(0, 1 - wn) * fade
    epi = (Wp * (v - ny) + Wn * ny) * (np.clip(amp, vref, amax) / vref) ** (gamma - 1)
    np.testing.assert_allclose(r1["forces_std_epistemic"] ** 2, epi, rtol=1e-10)
    np.testing.assert_allclose(r1["forces_std"] ** 2, wa * noise2 + epi, rtol=1e-10)
    assert np.all(r1["forces_std"] >= 1e-4 * (1 - 1e-12))   # never below the floor
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


def _without_sparse_points(model, keep):
    """A copy of ``model`` whose sparse set is ``keep`` (indices of SOAP columns), with the same kernel."""
    from kernelpot.gp.design import SparseSet
    ref = copy.deepcopy(model)
    ref.sparse_ = SparseSet(model.sparse_.X[keep], model.sparse_.numbers[keep])
    ref.sparse_index_ = model.sparse_index_[keep]
    K = model._Lmm @ model._Lmm.T              # the fit's own (jittered) Kmm, two-body block after SOAP's
    cols = np.concatenate([keep, np.arange(model.sparse_.size, len(K))])
    ref._Lmm = np.linalg.cholesky(K[np.ix_(cols, cols)])
    return ref


@pytest.mark.parametrize("g", [0, 6])
def test_held_out_loo_matches_refit_without_the_structure_and_its_sparse_points(fitted, g):
    """``held_out_residual`` / ``held_out_std`` (+ ``nystrom_held_out``) are what a refit without the
    structure and without the sparse environments taken from it predicts: a new structure's view."""
    from kernelpot.gp.loo import sparse_owners
    model, frames = fitted
    d = uq.leave_one_out(model)
    keep = np.flatnonzero(sparse_owners(model, frames) != g)
    assert len(keep) < model.sparse_.size                # the structure owns sparse points
    ref = _without_sparse_points(model, keep).refit([a for i, a in enumerate(frames) if i != g])
    p = ref.predict_frame(frames[g], calibrated=False)
    lab = frame_labels(frames[g])
    n = len(frames[g])
    sel = d.frame == g
    e, f, s = (sel & (d.kind == k) for k in ("energy", "forces", "stress"))
    assert d.held_out_residual[e][0] == pytest.approx((lab["energy"] - p["energy"]) / n, rel=1e-6)
    assert d.held_out_std[e][0] ** 2 + d.nystrom_held_out[e][0] == pytest.approx((p["energy_std"] / n) ** 2,
                                                                                  rel=1e-6)
    np.testing.assert_allclose(d.held_out_residual[f], (lab["forces"] - p["forces"]).ravel(), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(d.held_out_std[f] ** 2 + d.nystrom_held_out[f], p["forces_std"].ravel() ** 2,
                               rtol=1e-6)
    np.testing.assert_allclose(d.held_out_residual[s], lab["stress"] - p["stress"], rtol=1e-6, atol=1e-11)
    # and it is not the plain structure LOO, which keeps the structure's environments in the basis
    assert np.max(np.abs(d.held_out_residual[f] - d.loo_residual[f])) > 1e-5


def test_group_loo_matches_refit_without_the_group(fitted):
    """Leave-one-group-out residuals and variances equal a brute-force refit without the group's frames
    and without the sparse environments taken from them: the group is predicted as new structures are."""
    from kernelpot.gp.loo import sparse_owners
    model, frames = fitted
    groups = np.array([0, 0, 1, 1, 1, 2, 2, -1])          # the last frame is in no group
    d = uq.leave_one_out(model, groups=groups)
    g = d.group_loo
    assert set(np.unique(g["group"])) == {0, 1, 2}
    owner = sparse_owners(model, frames)
    for k in (1, 2):
        keep = np.flatnonzero(groups[owner] != k)
        assert 0 < len(keep) < model.sparse_.size      # the group owns sparse points: the reduction is tested
        ref = _without_sparse_points(model, keep).refit([a for i, a in enumerate(frames) if groups[i] != k])
        for fi in np.flatnonzero(groups == k):
            p = ref.predict_frame(frames[fi], calibrated=False)
            lab = frame_labels(frames[fi])
            n = len(frames[fi])
            sel = g["frame"] == fi
            e = sel & (g["kind"] == "energy")
            assert g["residual"][e][0] == pytest.approx((lab["energy"] - p["energy"]) / n, rel=1e-6)
            total = g["sigma"][e][0] ** 2 + g["epistemic"][e][0]
            assert total == pytest.approx((p["energy_std"] / n) ** 2, rel=1e-6)
            f = sel & (g["kind"] == "forces")
            assert f.sum() == 12                      # all three components of 4 atoms
            atom, comp = g["atom"][f], g["component"][f]
            np.testing.assert_allclose(g["residual"][f], lab["forces"][atom, comp] - p["forces"][atom, comp],
                                       rtol=1e-6, atol=1e-7)  # refit vs closed form: round-off ~1e-8 eV/Å
            np.testing.assert_allclose(g["sigma"][f] ** 2 + g["epistemic"][f], p["forces_std"][atom, comp] ** 2,
                                       rtol=1e-6)
            s = sel & (g["kind"] == "stress")
            np.testing.assert_allclose(g["residual"][s], lab["stress"] - p["stress"], rtol=1e-6, atol=1e-11)


def test_offsets_are_bayesian_parameters_equal_to_brute_force_regression(small_soap):
    """Per-species offsets and GP weights have the joint posterior of one Bayesian linear regression.

    Built independently from the design rows: prior N(0, I) on whitened weights
    [v (GP), b (offsets)], observations y = delta (A v + kappa c . b) + noise.  A
    composition direction that the data do not determine keeps its prior variance
    (kappa delta)^2 per atom, and a structure of another composition shows it in its sigma.
    """
    import warnings
    from kernelpot.gp.likelihood import whiten
    frames = emt_frames(6, symbols=("Cu", "Au"), size=(1, 1, 2), seed=5, noise={"energy": 0.003})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        model = SparseGP(descriptor=small_soap, n_sparse=30, fit_forces=False, fit_stress=False,
                         calibrate=False, verbose=False).fit(frames)
    assert any("cannot separate the energy offsets of Au, Cu" in str(x.message) for x in w)
    post, delta = model.posterior_, model.delta_
    Phi, y, sig = [], [], []
    for a in frames:
        rows, ys, scales = training_rows(model, a, frame_labels(a))
        Phi.append(delta * offset_columns(model, a, "energy", whiten(model._Lmm, rows["energy"])))
        y.append(ys["energy"])
        sig.append(model.noise_["energy"] * scales["energy"])
    Phi, y, sig = np.vstack(Phi), np.concatenate(y), np.concatenate(sig)
    prec = np.eye(Phi.shape[1]) + Phi.T @ (Phi / sig[:, None] ** 2)
    cov = np.linalg.inv(prec)
    mean = cov @ Phi.T @ (y / sig ** 2)
    M = model.posterior_.n_kernel  # SOAP and two-body weights come first
    kappa = model.offset_kappa_
    # offsets per atom: delta * kappa * b
    np.testing.assert_allclose(post.alpha[M:], delta * kappa * mean[M:], rtol=1e-6, atol=1e-9)
    cov_off = (delta * kappa) ** 2 * cov[M:, M:]
    # every frame has Cu:Au 1:1, so Cu - Au is undetermined: its posterior variance is the prior's
    d = np.array([1.0, -1.0]) / np.sqrt(2) if model.offset_species_[0] == 29 else np.array([-1.0, 1.0]) / np.sqrt(2)
    assert d @ cov_off @ d == pytest.approx((delta * kappa) ** 2, rel=1e-6)
    # weight samples reproduce that covariance (sampling error ~ sqrt(2 / 4000))
    samples = model.sample_weights(4000, random_state=1)[:, M:]
    np.testing.assert_allclose(np.cov(samples.T), cov_off, rtol=0.1, atol=0.1 * np.abs(cov_off).max())
    # a pure-Cu cell (another composition): its energy sigma includes that direction
    pure = emt_frames(1, symbols=("Cu",), size=(1, 1, 2), seed=6)[0]
    c = np.array([np.sum(pure.numbers == z) for z in model.offset_species_], float)
    p = model.predict_frame(pure, forces=False, stress=False)
    assert p["energy_std_epistemic"] ** 2 >= c @ cov_off @ c * (1 - 1e-6)


def test_posterior_calculators_spread_like_the_calibrated_sigma(fitted):
    """Sampled energies of the reference structure spread as the calculator's calibrated sigma says."""
    model, frames = fitted
    m = copy.deepcopy(model)
    uq.recalibrate(m)
    a = emt_frames(1, symbols=("Cu", "Au"), size=(1, 1, 2), seed=42)[0]
    calcs = m.posterior_calculators(400, random_state=0, reference=a, kinds=("energy",))
    e = []
    for c in calcs:
        b = a.copy()
        b.calc = c
        e.append(b.get_potential_energy())
    want = m.predict_frame(a)["energy_std_epistemic"]
    # sample std of 400 Gaussian draws: relative error ~ 1 / sqrt(800) = 3.5 %
    assert np.std(e, ddof=1) == pytest.approx(want, rel=0.12)
    assert np.mean(e) == pytest.approx(m.predict_frame(a)["energy"], abs=3 * want / np.sqrt(400))
    # forces of each sample are the derivative of its own energy
    b = a.copy()
    b.calc = calcs[0]
    f = b.get_forces()
    h = 1e-4
    b.positions[0, 1] += h
    ep = b.get_potential_energy()
    b.positions[0, 1] -= 2 * h
    em = b.get_potential_energy()
    assert f[0, 1] == pytest.approx(-(ep - em) / (2 * h), rel=1e-5, abs=1e-7)
    # without a reference the spread is the raw weight posterior's, which misses the Nystrom part
    raw = m.posterior_calculators(400, random_state=0)
    assert raw[0].scale == 1.0 and calcs[0].scale > 1.0


def test_posterior_calculators_reach_every_kinds_calibrated_sigma(fitted):
    """By default one factor for all samples, the largest calibrated/sampled ratio over the kinds
    (energy, forces, stress) at the reference: every kind's sampled spread there is at least the
    calculator's calibrated sigma and the binding kind's equals it (a lattice constant follows the
    stress, whose calibration may be wider than the energy's)."""
    model, _ = fitted
    m = copy.deepcopy(model)
    uq.recalibrate(m)
    a = emt_frames(1, symbols=("Cu", "Au"), size=(1, 1, 2), seed=42)[0]
    ratios = m.sample_scales(a)
    assert set(ratios) == {"energy", "forces", "stress"}
    calcs = m.posterior_calculators(400, random_state=0, reference=a)
    f = calcs[0].scale
    assert f == pytest.approx(max(ratios.values()))
    got = {"energy": [], "forces": [], "stress": []}
    for c in calcs:
        b = a.copy()
        b.calc = c
        got["energy"].append(b.get_potential_energy())
        got["forces"].append(b.get_forces().ravel())
        got["stress"].append(b.get_stress())
    p = m.predict_frame(a)
    for kind, x in got.items():
        spread = np.sqrt(np.mean(np.var(np.asarray(x), axis=0, ddof=1)))   # rms over components
        cal = np.sqrt(np.mean(np.ravel(p[f"{kind}_std_epistemic"]) ** 2))
        assert spread == pytest.approx(f / ratios[kind] * cal, rel=0.12), kind
        assert spread >= 0.88 * cal, kind
    # a list of references: the largest ratio over all of them
    other = emt_frames(1, symbols=("Cu", "Au"), size=(1, 1, 2), seed=43)[0]
    both = m.posterior_calculators(2, reference=[a, other])
    assert both[0].scale == pytest.approx(max(max(ratios.values()), max(m.sample_scales(other).values())))
    with pytest.raises(ValueError, match="kinds"):
        m.posterior_calculators(2, reference=a, kinds=("energies",))
    with pytest.raises(ValueError, match="kinds"):
        m.posterior_calculators(2, reference=a, kinds=())
    assert m.posterior_calculators(2, reference=a, kinds="stress")[0].scale == pytest.approx(ratios["stress"])
    with pytest.raises(ValueError, match="entry 0 is a str"):
        m.posterior_calculators(2, reference="CuAu")
    with pytest.raises(ValueError, match="one ase.Atoms"):
        m.sample_scales([a, other])
    # nothing to match: said, not silently unscaled
    with pytest.warns(RuntimeWarning, match="no reference structure"):
        assert m.posterior_calculators(2, reference=[])[0].scale == 1.0


@pytest.mark.parametrize("budget", [128 * 2**20, 0])  # rows in memory; every row on disk
def test_calibration_loo_from_the_fits_rows_equals_recomputed(budget, small_soap, monkeypatch):
    """The fit keeps its assembly rows for the calibration's leave-one-out (one sweep per fit): same result
    as computing every frame's descriptors and rows again, including the columns rescaled after assembly."""
    from kernelpot.gp import assembly
    monkeypatch.setattr(assembly.RowCache.__init__, "__defaults__", (budget,))
    frames = emt_frames(10, symbols=("Cu", "Au"), size=(1, 1, 2), seed=3, noise={"energy": 0.002, "forces": 0.03})
    model = SparseGP(descriptor=small_soap, n_sparse=30, verbose=False).fit(frames)
    assert model._row_cache is None  # dropped (and its folder removed) at the end of fit
    from kernelpot.gp.group_loo import calibration_groups
    groups, _ = calibration_groups(model, frames, random_state=model.random_state)
    assert len(set(groups)) >= 2
    # recomputed: rows again, and every group's sums held at once during the pass
    cached, again = model.training_diagnostics_, uq.leave_one_out(model, groups=groups)
    # to round-off: rescaling whitened columns and whitening rescaled rows round differently (~1e-9 of the scale)
    for k in ("loo_residual", "loo_std_predictive", "leverage", "z_predictive", "frame_chi2"):
        v = getattr(again, k)
        np.testing.assert_allclose(getattr(cached, k), v, rtol=1e-6, atol=1e-8 * np.abs(v).max())
    # leave-one-group-out: in the fit, each group's sums were built from the kept rows one group at a time
    assert len(cached.group_loo["residual"]) == len(again.group_loo["residual"]) > 0
    for k in ("residual", "epistemic", "nystrom", "sigma"):
        v = again.group_loo[k]
        np.testing.assert_allclose(cached.group_loo[k], v, rtol=1e-6, atol=1e-8 * np.abs(v).max())


def test_calibrated_sigma_far_from_the_data_stays_near_the_gps_own(small_soap):
    """Beyond the calibration data the weights fade back to one and the growth is capped: an isolated
    atom and a dimer, far from 20 rattled Cu cells, get the GP's own sigma to within a small factor.
    Fitting the fade onset and gamma jointly on the two clusters of these cells put gamma at its
    bound and their energy sigma at 64x the GP's (42 eV/atom)."""
    from ase import Atoms
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from conftest import label
    frames = []
    for i in range(20):
        rng = np.random.default_rng(i)
        a = bulk("Cu", "fcc", a=3.6 * (1 + 0.01 * rng.normal()), cubic=True).repeat((2, 2, 2))
        a.rattle(0.05, seed=i)
        frames.append(label(a, EMT(), None, rng))
    model = SparseGP(descriptor=small_soap, n_sparse=50, verbose=False).fit(frames)
    for far in (Atoms("Cu", positions=[[0, 0, 0]]), Atoms("Cu2", positions=[[0, 0, 0], [2.3, 0, 0]])):
        cal, raw = model.predict_frame(far), model.predict_frame(far, calibrated=False)
        assert raw["energy_std"] / 3 < cal["energy_std"] < 3 * raw["energy_std"]


def test_total_sigma_never_below_the_floor_for_a_kind_never_trained_on(small_soap):
    """A model fitted on clusters (no stress labels, no stress calibration) asked for a crystal's stress:
    the shear components are zero by symmetry, latent variance 0; the total std is still the floor."""
    from ase import Atoms
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from kernelpot.gp.calibration import SIGMA_FLOOR
    from conftest import label
    base = np.array([[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5], [2.5, 2.5, 0], [2.5, 0, 2.5]], float)
    frames = []
    for i in range(12):
        rng = np.random.default_rng(i)
        frames.append(label(Atoms("Cu6", positions=base + rng.normal(scale=0.25, size=(6, 3))), EMT(), None, rng))
    model = SparseGP(descriptor=small_soap, n_sparse=50, verbose=False).fit(frames)
    assert "stress" not in model.std_weights_
    p = model.predict_frame(bulk("Cu", "fcc", a=3.3, cubic=True).repeat((2, 2, 2)))
    assert np.all(p["stress_std"] >= SIGMA_FLOOR["stress"])
    assert np.all(p["forces_std"] >= SIGMA_FLOOR["forces"])
    assert p["energy_std"] >= 32 * SIGMA_FLOOR["energy"]


def test_uncalibrated_model_loads_uncalibrated(fitted, tmp_path):
    model, frames = fitted
    assert model.std_weights_ == {}
    model.save(tmp_path / "raw.npz")
    m2 = load_model(tmp_path / "raw.npz")
    assert m2.std_weights_ == {}
    np.testing.assert_allclose(m2.predict_frame(frames[0])["forces_std"], model.predict_frame(frames[0])["forces_std"],
                               rtol=1e-12)


def test_noise_per_config_type_calibrates_each_groups_noise(small_soap, tmp_path):
    """Two config_types, one with 0.05 eV/Å force noise, one without: with one aleatoric weight per kind the
    noisy group's sigma fell to 0.83 of its learned noise (61 % of its held-out errors within 1 sigma)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    rng = np.random.default_rng(0)

    def make(n, seed, ct, noise):
        out = []
        for a in emt_frames(n, seed=seed, rattle=0.03, strain=0.02):
            b = a.copy()
            b.info["config_type"] = ct
            b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(), stress=a.get_stress(),
                                           forces=a.get_forces() + noise * rng.normal(size=(len(a), 3)))
            out.append(b)
        return out
    train = make(10, 60, "cold", 0.0) + make(10, 61, "hot", 0.05)
    model = SparseGP(descriptor=small_soap, n_sparse=60, noise_per_config_type=True, verbose=False).fit(train)
    assert {"forces:hot", "forces:cold"} <= set(model.std_weights_)
    hot_test = make(6, 71, "hot", 0.05)
    pred = model.predict(hot_test)
    err = pred["forces"] - np.concatenate([a.get_forces() for a in hot_test])
    noise = model.noise_["forces:hot"]
    assert noise == pytest.approx(0.05, rel=0.1)
    rms_sigma = np.sqrt(np.mean(pred["forces_std"] ** 2))
    assert 0.95 < rms_sigma / noise < 1.2            # its own noise, plus a little model variance
    assert 0.63 < np.mean(np.abs(err) < pred["forces_std"]) < 0.75
    model.save(tmp_path / "m.npz")
    again = load_model(tmp_path / "m.npz").predict(hot_test)
    np.testing.assert_allclose(again["forces_std"], pred["forces_std"], rtol=1e-10)


def test_groups_may_be_any_labels_one_per_frame(fitted):
    """Group labels as strings or sparse integers give the groups of their sorted distinct values;
    anything but one label per frame is refused before any work."""
    model, frames = fitted
    ints = uq.leave_one_out(model, groups=[0, 0, 1, 1, 1, 2, 2, -1]).group_loo
    for other in (["a", "a", "b", "b", "b", "c", "c", None], [7, 7, 30, 30, 30, 100, 100, -5],
                  np.array([0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0, np.nan])):
        g = uq.leave_one_out(model, groups=other).group_loo
        np.testing.assert_array_equal(g["group"], ints["group"])
        np.testing.assert_allclose(g["residual"], ints["residual"], rtol=1e-12, atol=1e-15)
    for bad in ([0, 1, 2], np.zeros((8, 2))):
        with pytest.raises(ValueError, match="one label per training frame"):
            uq.leave_one_out(model, groups=bad)


def test_loo_of_a_loaded_model_asks_for_its_training_frames(fitted, tmp_path):
    """A saved model keeps its frames' fingerprint, not the frames: its leave-one-out needs them
    and refuses others; given them, it equals the fitted model's."""
    model, frames = fitted
    model.save(tmp_path / "m.kp")
    loaded = load_model(tmp_path / "m.kp")
    with pytest.raises(ValueError, match="pass frames= the 8 structures"):
        uq.leave_one_out(loaded)
    with pytest.raises(ValueError, match="not the frames this model was fitted on"):
        uq.leave_one_out(loaded, frames=frames[::-1])
    # the same structures and labels with a sigma the fit did not have: another leave-one-out
    from kernelpot.io.labels import relabelled
    other = [relabelled(a, energy=a.get_potential_energy()) for a in frames]
    other[3].info["energy_sigma"] = 0.05
    with pytest.raises(ValueError, match="not the frames this model was fitted on"):
        uq.leave_one_out(loaded, frames=other)
    # a fingerprint saved before the noise column (7 columns) still accepts the training frames
    loaded.train_fingerprint_ = loaded.train_fingerprint_[:, :7]
    uq.leave_one_out(loaded, frames=frames)
    np.testing.assert_allclose(uq.leave_one_out(loaded, frames=frames).loo_residual,
                               uq.leave_one_out(model).loo_residual, rtol=1e-9, atol=1e-12)
