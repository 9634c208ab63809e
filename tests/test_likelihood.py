"""The sparse marginal likelihood equals the dense DTC Gaussian, and its gradient is exact."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from kernelpot.gp.likelihood import GroupStats, whiten, neg_log_marginal_likelihood, optimize_hyperparameters
from kernelpot.gp.solve import safe_cholesky, cho_inverse, cho_solve, symmetrize_lower, fortran_in_place


def _problem(seed=0, M=6, sizes=(5, 12, 4)):
    rng = np.random.default_rng(seed)
    S = rng.normal(size=(M, 3))
    Kmm = S @ S.T + 0.5 * np.eye(M)
    Ks = [rng.normal(size=(n, M)) for n in sizes]
    scales = [rng.uniform(1, 5, size=sizes[0]), None, None]
    ys = [rng.normal(size=n) for n in sizes]
    Lmm, _ = safe_cholesky(Kmm)
    stats = GroupStats.empty(["energy", "forces", "stress"], M)
    for g, (K, y, sc) in enumerate(zip(Ks, ys, scales)):
        stats.add(g, whiten(Lmm, K), y, sc)
    return Kmm, Ks, ys, scales, stats


def test_nll_matches_dense_gaussian():
    Kmm, Ks, ys, scales, stats = _problem()
    theta = np.log([0.7, 0.3, 0.2, 0.05])
    delta, sig = np.exp(theta[0]), np.exp(theta[1:])
    K = np.vstack(Ks)
    noise = np.concatenate([(sig[0] * scales[0]) ** 2, np.full(len(ys[1]), sig[1] ** 2),
                            np.full(len(ys[2]), sig[2] ** 2)])
    cov = delta ** 2 * K @ np.linalg.solve(Kmm, K.T) + np.diag(noise)
    expected = -multivariate_normal(mean=np.zeros(len(noise)), cov=cov).logpdf(np.concatenate(ys))
    got = neg_log_marginal_likelihood(theta, stats, grad=False)
    assert got == pytest.approx(expected, rel=1e-10)


def test_gradient_matches_finite_differences():
    Kmm, _, _, _, stats = _problem(seed=1)
    theta = np.log([1.3, 0.4, 0.1, 0.02])
    ws = stats
    _, g = neg_log_marginal_likelihood(theta, ws)
    h = 1e-5  # the nll is O(1e4) here, so smaller steps are round-off limited
    for k in range(len(theta)):
        tp, tm = theta.copy(), theta.copy()
        tp[k] += h
        tm[k] -= h
        fd = (neg_log_marginal_likelihood(tp, ws, grad=False)
              - neg_log_marginal_likelihood(tm, ws, grad=False)) / (2 * h)
        assert g[k] == pytest.approx(fd, rel=1e-6, abs=1e-6)


def test_optimiser_stays_in_bounds_and_finite():
    # labels that are pure noise: the likelihood wants delta -> 0 and noise -> data scale;
    # the result must be finite and inside the box (FLARE's runaway noise is the failure mode).
    Kmm, _, _, _, stats = _problem(seed=2)
    bounds = [(np.log(1e-3), np.log(1e2))] + [(np.log(1e-4), np.log(10.0))] * 3
    ws = stats
    theta, res = optimize_hyperparameters(ws, np.zeros(4), bounds)
    assert np.all(np.isfinite(theta))
    for t, (lo, hi) in zip(theta, bounds):
        assert lo - 1e-12 <= t <= hi + 1e-12
    start = neg_log_marginal_likelihood(np.zeros(4), ws, grad=False)
    assert res.fun <= start


def test_loo_predictive_density_matches_brute_force():
    """LOO density of the kept rows equals refitting without each row (Nystrom term set to zero)."""
    from kernelpot.gp.likelihood import loo_neg_log_predictive, posterior_factor
    Kmm, Ks, ys, scales, _ = _problem(seed=3)
    Lmm, _ = safe_cholesky(Kmm)
    A0 = whiten(Lmm, Ks[0])
    stats = GroupStats.empty(["energy", "forces", "stress"], Kmm.shape[0])
    stats.add(0, A0, ys[0], scales[0], nystrom=np.zeros(len(ys[0])))
    for g in (1, 2):
        stats.add(g, whiten(Lmm, Ks[g]), ys[g])
    theta = np.log([0.9, 0.2, 0.3, 0.1])
    got = loo_neg_log_predictive(theta, stats, [0])
    expected = 0.0
    u = np.exp(2 * theta[0])
    for i in range(len(ys[0])):
        st = GroupStats.empty(["energy", "forces", "stress"], Kmm.shape[0])
        keep = np.arange(len(ys[0])) != i
        st.add(0, A0[keep], ys[0][keep], scales[0][keep])
        for g in (1, 2):
            st.add(g, whiten(Lmm, Ks[g]), ys[g])
        Lc, a, _, _ = posterior_factor(theta, st)
        ai = A0[i]
        mean = u * ai @ a
        v = np.linalg.solve(Lc, ai)
        var = u * v @ v + (np.exp(theta[1]) * scales[0][i]) ** 2
        expected += 0.5 * (np.log(2 * np.pi * var / scales[0][i] ** 2) + (ys[0][i] - mean) ** 2 / var)
    assert got == pytest.approx(expected, rel=1e-9)


def _model_problem(seed=3, M=8, sizes=(40, 600, 30), theta=(0.4, -3.0, -2.0, -4.0)):
    """Labels drawn from the DTC model itself, so the optimum is interior and well defined."""
    rng = np.random.default_rng(seed)
    S = rng.normal(size=(M, M))
    Kmm = S @ S.T + 0.5 * np.eye(M)
    Lmm, _ = safe_cholesky(Kmm)
    w = rng.normal(size=M)
    stats = GroupStats.empty(["energy", "forces", "stress"], M)
    for g, n in enumerate(sizes):
        K = rng.normal(size=(n, M))
        A = whiten(Lmm, K)
        y = np.exp(theta[0]) * A @ w + np.exp(theta[1 + g]) * rng.normal(size=n)
        stats.add(g, A, y)
    return stats


def test_search_stops_at_the_optimum_when_converged():
    # the value/gradient tolerances end the search where a search with every tolerance at zero
    # ends, in fewer evaluations (the zero-tolerance run replays line searches at round-off level)
    ws = _model_problem()
    bounds = [(np.log(1e-3), np.log(1e2))] + [(np.log(1e-4), np.log(10.0))] * 3
    theta, res = optimize_hyperparameters(ws, np.zeros(4), bounds)
    ref, res_ref = optimize_hyperparameters(ws, np.zeros(4), bounds, ftol_abs=0.0, ftol_rel=0.0,
                                            gtol_abs=0.0, gtol_rel=0.0)
    assert res.n_evaluations < res_ref.n_evaluations
    assert res.n_evaluations >= 13 + 1  # the delta scan is counted
    np.testing.assert_allclose(theta, ref, atol=1e-5)
    f, g = neg_log_marginal_likelihood(theta, ws)
    f_ref = neg_log_marginal_likelihood(ref, ws, grad=False)
    assert f - f_ref <= 1e-8 * abs(f_ref)
    assert np.max(np.abs(g)) <= 1e-5 + 1e-8 * abs(f)  # interior optimum: the gradient itself is small


def test_search_from_an_optimum_stops_at_once():
    # refining a converged fit (e.g. after adding frames that change nothing) costs ~1 evaluation
    ws = _model_problem(seed=4)
    bounds = [(np.log(1e-3), np.log(1e2))] + [(np.log(1e-4), np.log(10.0))] * 3
    theta, _ = optimize_hyperparameters(ws, np.zeros(4), bounds)
    again, res = optimize_hyperparameters(ws, theta, bounds, scan_delta=False)
    assert res.n_evaluations <= 3
    np.testing.assert_allclose(again, theta, atol=1e-6)


def test_search_reports_its_likelihood_evaluations(monkeypatch):
    # the count stored on a fitted model (n_likelihood_evaluations_) is every evaluation made
    from kernelpot.gp import hyperparameters, likelihood

    ws = _model_problem(seed=5)
    calls = []
    real = likelihood.neg_log_marginal_likelihood
    monkeypatch.setattr(likelihood, "neg_log_marginal_likelihood",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    theta0, bounds, fixed = hyperparameters.initial_theta(ws)
    theta, n, _ = hyperparameters.search(ws, theta0, bounds, fixed, energy_noise="evidence", warn=False)
    assert n == len(calls) > 13


def test_cholesky_and_inverse_without_copies_are_exact():
    rng = np.random.default_rng(8)
    S = rng.normal(size=(700, 40))
    A = S.T @ S + np.eye(40)
    L, j = safe_cholesky(A)
    assert j == 0.0 and np.allclose(np.triu(L, 1), 0.0)
    np.testing.assert_allclose(L @ L.T, A, rtol=1e-12, atol=1e-9)
    inv = np.linalg.inv(A)
    np.testing.assert_allclose(cho_inverse(L), inv, rtol=1e-9, atol=1e-12)
    Ci = cho_inverse(L, overwrite=True)  # written over L
    np.testing.assert_allclose(Ci, inv, rtol=1e-9, atol=1e-12)
    assert np.array_equal(Ci, Ci.T)
    X = rng.normal(size=(23, 23))  # the lower triangle mirrored in blocks that do not divide M
    assert np.array_equal(symmetrize_lower(np.tril(X), block=7), np.tril(X) + np.tril(X, -1).T)
    # singular: the smallest jitter that factors it, relative to the mean diagonal
    B = S[:, :30].T @ S[:, :30]
    B = np.block([[B, B[:, :5]], [B[:5, :], B[:5, :5]]])  # 35 x 35 of rank 30
    L, j = safe_cholesky(B)
    assert j > 0
    np.testing.assert_allclose(L @ L.T, B + j * np.mean(np.diag(B)) * np.eye(35), rtol=1e-10, atol=1e-8)


def test_in_place_cholesky_equals_the_copy_and_survives_failed_attempts():
    rng = np.random.default_rng(9)
    S = rng.normal(size=(50, 30))
    B = S.T @ S
    B = np.block([[B, B[:, :4]], [B[:4, :], B[:4, :4]]])  # rank 30 of 34: the first attempts fail
    L_copy, j_copy = safe_cholesky(B)
    W = np.asfortranarray(B)
    L, j = safe_cholesky(W, overwrite=True)
    assert j == j_copy > 0 and np.shares_memory(L, W)
    np.testing.assert_array_equal(L, L_copy)
    C = np.array(B, order="C")  # not Fortran-ordered: copied, left as it was
    safe_cholesky(C, overwrite=True)
    np.testing.assert_array_equal(C, B)


def test_fortran_in_place_keeps_every_number():
    rng = np.random.default_rng(10)
    for M, block in ((23, 7), (16, 4), (5, 512)):
        X = rng.normal(size=(M, M))  # not symmetric: a transposed copy would show
        F = fortran_in_place(X.copy(), block=block)
        assert F.flags.f_contiguous and np.array_equal(F, X)
    with pytest.raises(ValueError, match="square"):
        fortran_in_place(np.zeros((3, 4)))


def test_cho_solve_reads_a_transposed_upper_factor_as_it_is_stored():
    rng = np.random.default_rng(11)
    S = rng.normal(size=(60, 25))
    A = S.T @ S + np.eye(25)
    b = rng.normal(size=25)
    L, _ = safe_cholesky(A)  # Fortran-ordered lower
    Lc = np.ascontiguousarray(L)  # C-ordered lower: the view of an upper factor group LOO returns
    for factor in (L, Lc):
        np.testing.assert_allclose(A @ cho_solve(factor, b), b, rtol=1e-10, atol=1e-10)
