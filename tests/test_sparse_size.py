"""n_sparse="auto": nested sparse sets, exact sub-block statistics, the evidence ladder and its budget."""

import numpy as np
import pytest
import scipy.linalg as sla

from kernelpot.gp import sparse_size
from kernelpot.gp.assembly import RowCache
from kernelpot.gp.kernels import dot_kernel
from kernelpot.gp.likelihood import GroupStats, neg_log_marginal_likelihood
from kernelpot.gp.select import prune_dependent, prune_ordered, select_sparse, sparse_order


def _unit_rows(n, F, seed):
    X = np.random.default_rng(seed).normal(size=(n, F))
    return X / np.linalg.norm(X, axis=1)[:, None]


@pytest.mark.parametrize("method", ["cur", "fps", "random"])
def test_sparse_order_is_nested_and_distinct(method):
    X = _unit_rows(60, 8, 0)
    order = sparse_order(X, 40, method, random_state=3)
    assert len(order) == 40 and len(set(order.tolist())) == 40
    assert sparse_order(X, 500, method).shape == (60,)  # all rows, ordered
    if method == "fps":  # every prefix is FPS's own selection of that many points
        for m in (5, 17, 40):
            assert set(order[:m].tolist()) == set(select_sparse(X, m, "fps", random_state=3).tolist())


def test_prune_ordered_keeps_order_prefixes_and_drops_duplicates():
    X = _unit_rows(30, 5, 2)
    X = np.vstack([X[:12], X[3:5], X[12:]])  # rows 12, 13 repeat rows 3, 4: dependent on earlier points
    K = dot_kernel(X, X, 2.0)
    kept = prune_ordered(K, 1e-10)
    assert 12 not in kept and 13 not in kept
    assert np.all(np.diff(kept) > 0)
    for k in (5, 14, 20):  # the pruned prefix is the prefix of the pruned set
        np.testing.assert_array_equal(prune_ordered(K[:k, :k], 1e-10), kept[kept < k])
    # same rank as the pivoted pruning
    assert len(kept) == len(prune_dependent(K, 1e-10))
    # what is kept is well conditioned: its kernel factors
    np.linalg.cholesky(K[np.ix_(kept, kept)])


def _whitened_stats(Kmn_blocks, Kmm, prior, y_groups, extra):
    """Statistics accumulated from rows whitened by chol(Kmm), plus exact extra columns."""
    L = np.linalg.cholesky(Kmm)
    names = list(y_groups)
    W = Kmm.shape[0] + extra[0].shape[1]
    stats = GroupStats.empty(names, W)
    for g, (K, y) in enumerate(zip(Kmn_blocks, y_groups.values())):
        A = np.hstack([sla.solve_triangular(L, K.T, lower=True).T, extra[g]])
        ny = np.maximum(prior[g] - np.sum(A[:, :Kmm.shape[0]] ** 2, axis=1), 0.0)
        stats.add(g, A, y, scale=np.full(len(y), 1.5), nystrom=ny if g == 0 else None)
    return stats


def test_sub_statistics_equal_a_fit_on_the_prefix():
    # two species blocks of sparse points, in order of choice; a superset and its prefix per species
    rng = np.random.default_rng(4)
    Xa, Xb = _unit_rows(10, 6, 5), _unit_rows(8, 6, 6)
    Ta, Tb = _unit_rows(40, 6, 7), _unit_rows(40, 6, 8)
    zeta = 2.0

    def kernels(na, nb):
        Kmm = sla.block_diag(dot_kernel(Xa[:na], Xa[:na], zeta), dot_kernel(Xb[:nb], Xb[:nb], zeta))
        rows = [np.hstack([dot_kernel(T1, Xa[:na], zeta), dot_kernel(T2, Xb[:nb], zeta)])
                for T1, T2 in ((Ta[:20], Tb[:20]), (Ta[20:], Tb[20:]))]
        return Kmm + 1e-10 * np.eye(na + nb), rows

    prior = [np.full(20, 2.0), np.full(20, 2.0)]
    y = {"energy": rng.normal(size=20), "forces": rng.normal(size=20)}
    extra = [rng.normal(size=(20, 2)), rng.normal(size=(20, 2))]  # exact columns (two-body, offsets)
    Kfull, rows_full = kernels(10, 8)
    full = _whitened_stats(rows_full, Kfull, prior, y, extra)
    Ksub, rows_sub = kernels(4, 5)
    direct = _whitened_stats(rows_sub, Ksub, prior, y, extra)

    blocks = {14: (0, 10), 29: (10, 18)}
    ix = sparse_size.columns(blocks, {14: 4, 29: 5}, full.D.shape[1])
    np.testing.assert_array_equal(ix, [0, 1, 2, 3, 10, 11, 12, 13, 14, 18, 19])
    sub = sparse_size.sub_statistics(full, ix, n_soap=18)
    np.testing.assert_allclose(sub.D, direct.D, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(sub.e, direct.e, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(sub.loo_rows[0], direct.loo_rows[0], rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(sub.loo_nystrom[0], direct.loo_nystrom[0], rtol=1e-9, atol=1e-11)
    theta = np.log([1.3, 0.2, 0.4])
    assert neg_log_marginal_likelihood(theta, sub, grad=False) == pytest.approx(
        neg_log_marginal_likelihood(theta, direct, grad=False), rel=1e-10)
    # the row cache reads the same cut, residual included
    cache = RowCache(full.D.shape[1])
    A = full.loo_rows[0] * 1.5  # the unscaled rows
    cache.put(0, {"energy": (A, y["energy"], None, 1.5 ** 2 * full.loo_nystrom[0])})
    cache.select_columns(ix, 18)
    A_sub, _, _, ny_sub = cache.get(0)["energy"]
    np.testing.assert_allclose(A_sub, direct.loo_rows[0] * 1.5, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(ny_sub, 1.5 ** 2 * direct.loo_nystrom[0], rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="already cut"):
        cache.select_columns(ix, 18)


def test_rungs_follow_the_ladder_the_data_and_the_budget():
    big = 10 * 2**30
    assert sparse_size.rungs({14: 3000}, 50, 3, big) == [{14: r} for r in (250, 500, 1000, 2000, 3000)]
    # a species with few environments stops growing; repeats are dropped
    assert sparse_size.rungs({1: 300, 8: 900}, 0, 3, big) == [{1: 250, 8: 250}, {1: 300, 8: 500},
                                                               {1: 300, 8: 900}]
    # the budget: the largest rung whose estimated peak fits; the first rung always stays
    budget = sparse_size.fit_memory(1000 + 50, 3)
    assert sparse_size.rungs({14: 10**5}, 50, 3, budget)[-1] == {14: 1000}
    assert sparse_size.rungs({14: 10**5}, 50, 3, 1.0) == [{14: 250}]
    # the estimate is the measured peaks' size: acetylacetone at W = 3100 peaked at 0.92 GiB
    assert 0.85 < sparse_size.fit_memory(3100, 3) / 2**30 < 1.0


def test_grow_stops_when_the_evidence_stops_rising():
    sizes = [{1: 10}, {1: 20}, {1: 40}, {1: 80}]
    blocks = {1: (0, 80)}
    stats = GroupStats.empty(["forces"], 81)
    values = iter([100.0, 150.0, 150.0 + 0.9 * sparse_size.MIN_GAIN, 1e6])

    def search(sub, ix):
        assert sub.D.shape[1] == len(ix)
        return np.zeros(2), 7, 1.0, next(values), None

    chosen, steps, reason = sparse_size.grow(stats, blocks, sizes, search)
    assert chosen == 1 and len(steps) == 3  # the 80-point size is never tried
    assert steps[1].result is not None and steps[0].result is None and steps[2].result is None
    assert steps[1].result[0].tolist() == list(range(20)) + [80]
    assert "Bayes factor of 100" in reason
    # a size with a lower evidence is never kept
    values = iter([100.0, 90.0])
    chosen, steps, _ = sparse_size.grow(stats, blocks, sizes[:2], search)
    assert chosen == 0
    values = iter([100.0, 200.0, 300.0, 400.0])
    chosen, steps, reason = sparse_size.grow(stats, blocks, sizes, search)
    assert chosen == 3 and reason is None and sum(s.n_evaluations for s in steps) == 28


def test_auto_fit_equals_a_fit_on_the_chosen_points(cuau_frames, small_soap, monkeypatch):
    import kernelpot
    monkeypatch.setattr(sparse_size, "LADDER", (10, 20, 40))
    auto = kernelpot.SparseGP(descriptor=small_soap, n_sparse="auto", verbose=False).fit(cuau_frames)
    growth = auto.sparse_growth_
    steps = growth["steps"]
    assert [s["counts"] for s in steps][:2] == [{"Cu": 10, "Au": 10}, {"Cu": 20, "Au": 20}]
    kept = steps[growth["chosen"]]["counts"]
    assert auto.sparse_.size == sum(kept.values())
    lmls = [s["log_likelihood"] for s in steps[:growth["chosen"] + 1]]
    assert np.all(np.diff(lmls) > sparse_size.MIN_GAIN)
    # the same sparse points given by hand: the same model, up to the optimiser's tolerance
    starts = np.cumsum([0] + [len(a) for a in cuau_frames])
    frame = np.searchsorted(starts, auto.sparse_index_, side="right") - 1
    points = list(zip(frame.tolist(), (auto.sparse_index_ - starts[frame]).tolist()))
    ref = kernelpot.SparseGP(descriptor=small_soap, sparse_points=points, verbose=False).fit(cuau_frames)
    assert auto.log_marginal_likelihood_ == pytest.approx(ref.log_marginal_likelihood_, rel=1e-6)
    np.testing.assert_allclose(auto.theta_, ref.theta_, atol=2e-3)
    new = [a.copy() for a in cuau_frames[:3]]  # the training frames perturbed: new structures
    for k, a in enumerate(new):
        a.positions += np.random.default_rng(k).normal(scale=0.05, size=a.positions.shape)
    pa, pr = auto.predict(new, return_std=True), ref.predict(new, return_std=True)
    for key in ("energy", "forces", "stress", "forces_std", "energy_std"):
        np.testing.assert_allclose(pa[key], pr[key], rtol=5e-3, atol=1e-4 * np.abs(pr[key]).max(), err_msg=key)
    # the calibration read the cut rows: its leave-one-out equals the reference's
    da, dr = auto.training_diagnostics_, ref.training_diagnostics_
    np.testing.assert_allclose(da.loo_residual, dr.loo_residual, rtol=5e-3, atol=1e-4)


def test_auto_respects_the_memory_budget(cuau_frames, small_soap, monkeypatch, tmp_path):
    import kernelpot
    monkeypatch.setattr(sparse_size, "LADDER", (10, 20, 40))
    m = kernelpot.SparseGP(descriptor=small_soap, n_sparse="auto", max_memory=1e-9, verbose=False)
    m.fit(cuau_frames)
    assert m.sparse_.size == 20 and len(m.sparse_growth_["steps"]) == 1
    assert "max_memory" in m.sparse_growth_["reason"]
    path = tmp_path / "auto.npz"
    m.save(path)
    back = kernelpot.SparseGP.load(path)
    assert back.n_sparse == "auto"
    np.testing.assert_allclose(back.predict(cuau_frames[:2])["forces"], m.predict(cuau_frames[:2])["forces"],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", ["Auto", "1000", True, 0, 2.5])
def test_n_sparse_must_be_a_count_or_auto(bad, cu_frames):
    import kernelpot
    with pytest.raises(ValueError, match="n_sparse must be a positive integer or 'auto'"):
        kernelpot.SparseGP(n_sparse=bad, verbose=False).fit(cu_frames[:2])


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "1"])
def test_max_memory_must_be_positive(bad, cu_frames):
    import kernelpot
    with pytest.raises(ValueError, match="max_memory"):
        kernelpot.SparseGP(max_memory=bad, verbose=False).fit(cu_frames[:2])
