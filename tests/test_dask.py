"""Dask scale-out: a fit on a LocalCluster equals the in-memory fit."""

import numpy as np
import pytest

from kernelpot import SparseGP
from kernelpot.gp.loo import leave_one_out
from conftest import emt_frames

distributed = pytest.importorskip("dask.distributed", reason="dask[distributed] is in the test extra")


def _as_assembled(model):
    """The model's statistics with the columns' post-assembly scales (two-body scale, offset prior) undone."""
    from kernelpot.gp.offsets import OFFSET_KAPPA
    rho = np.ones(model._stats.D.shape[1])
    M = model.sparse_.size
    if model.pair_ is not None:
        rho[M:M + model.pair_.size] = model.pair_.scale
        M += model.pair_.size
    rho[M:] = model.offset_kappa_ / OFFSET_KAPPA
    return model._stats.D / np.outer(rho, rho)[None], model._stats.e / rho[None]


def test_local_cluster_fit_equals_in_memory(small_soap):
    # labels with DFT-like noise: with noise-free EMT energies the energy noise sits at its
    # floor and the likelihood is flat to round-off, so any two summation orders stop apart
    frames = emt_frames(10, symbols=("Cu", "Au"), size=(1, 1, 2), seed=21,
                        noise={"energy": 0.002, "forces": 0.03, "stress": 0.001})
    ref = SparseGP(descriptor=small_soap, n_sparse=40).fit(frames)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        dist = SparseGP(descriptor=small_soap, n_sparse=40, client=client, chunk_size=3).fit(frames)
    assert np.array_equal(ref.sparse_index_, dist.sparse_index_)
    # the statistics as assembled (before the learned two-body scale and offset prior, which are
    # hyperparameters located to ~1e-6, rescaled their columns) agree to round-off
    D1, e1 = _as_assembled(ref)
    D2, e2 = _as_assembled(dist)
    np.testing.assert_allclose(D2, D1, rtol=1e-12, atol=1e-12 * np.abs(D1).max())
    np.testing.assert_allclose(e2, e1, rtol=1e-12, atol=1e-12 * np.abs(e1).max())
    # The minimum is located only to ~1e-6 in its log parameters: the gradient of the likelihood is a
    # sum of terms as large as the number of observations, with a round-off floor ~1e-5 here, and
    # perturbing the statistics by 1e-13 moves theta by ~3e-6 and predictions by <1e-6 even with
    # every stopping tolerance at zero (measured). The search now stops at that floor instead of
    # replaying line searches there, so the two summation orders no longer follow identical paths.
    # With the two-body scale as one more parameter, located to ~1e-5 (measured 3e-5 in log delta).
    np.testing.assert_allclose(dist.theta_, ref.theta_, rtol=1e-4, atol=1e-6)
    test = emt_frames(2, symbols=("Cu", "Au"), size=(1, 1, 2), seed=22)
    p1, p2 = ref.predict(test), dist.predict(test)
    for k in ("energy", "forces", "stress"):
        scale = np.abs(p1[k]).max()
        np.testing.assert_allclose(p2[k], p1[k], rtol=5e-6, atol=5e-6 * scale)
    # standard deviations carry the calibration weights, fitted to leave-one-out residuals that
    # move with the hyperparameters (~1e-5 of their scale): they agree as those weights do (below)
    for k in ("energy_std", "forces_std", "stress_std"):
        scale = np.abs(p1[k]).max()
        np.testing.assert_allclose(p2[k], p1[k], rtol=1e-4, atol=1e-4 * scale)
    # the calibration's leave-one-out ran on the workers, chunk by chunk, and agrees frame by frame
    # with the same model's leave-one-out in memory (to round-off) ...
    d1, d2 = ref.training_diagnostics_, dist.training_diagnostics_
    dist.client = None
    d_here = leave_one_out(dist)
    assert np.array_equal(d1.kind, d2.kind) and np.array_equal(d1.frame, d2.frame)
    for k in ("loo_residual", "loo_std_predictive", "leverage", "frame_chi2"):
        np.testing.assert_allclose(getattr(d2, k), getattr(d_here, k), rtol=1e-10, atol=1e-14)
        # ... and with the in-memory fit's, whose hyperparameters agree to ~1e-6 only: a LOO
        # residual moves by up to ~1e-5 of the largest one with them
        v = getattr(d1, k)
        # (with the two-body scale, ~3e-5 of the largest one)
        np.testing.assert_allclose(getattr(d2, k), v, rtol=1e-6, atol=1e-4 * np.abs(v).max())
    # the calibration is fitted to those residuals, which agree to ~1e-5 of their scale (the
    # hyperparameters to 1e-5: the search stops at convergence), so variances agree to ~1e-4; weights in
    # flat directions (a noise weight of 5e-6, say) may differ more, so compare what they give: the
    # calibrated variance of every training observation
    from kernelpot.gp.calibration import amplitudes
    from kernelpot.uq import variance
    v = np.maximum(d1.loo_std_predictive ** 2 - d1.sigma ** 2, 0.0)
    ny = np.maximum(d1.loo_std_predictive ** 2 - d1.loo_std ** 2, 0.0)
    amp = amplitudes(d1.kind, d1.frame, d1.atom, d1.component, v)
    assert set(dist.std_weights_) == set(ref.std_weights_)
    for kind, w in ref.std_weights_.items():
        sel = d1.kind == kind
        args = (d1.sigma[sel], v[sel], amp[sel], ny[sel])
        np.testing.assert_allclose(variance(dist.std_weights_[kind], *args)[1], variance(w, *args)[1], rtol=1e-3)


def test_default_descriptor_fit_on_a_client_uses_that_client():
    """descriptor=None fits each candidate SOAP with the caller's own client (a copy of a Client cannot be
    pickled): the same choice and energies as in memory."""
    frames = emt_frames(8, seed=23, noise={"energy": 0.002, "forces": 0.03, "stress": 0.001})
    ref = SparseGP(n_sparse=30, verbose=False).fit(frames)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        dist = SparseGP(n_sparse=30, verbose=False, client=client).fit(frames)
        assert dist.client is client
    assert dist.descriptor_.radial_scaling == ref.descriptor_.radial_scaling
    test = emt_frames(2, seed=24)
    np.testing.assert_allclose(dist.predict(test, return_std=False)["energy"],
                               ref.predict(test, return_std=False)["energy"], rtol=1e-6)
