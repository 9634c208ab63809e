"""Calibration of the predictive variance from leave-one-out residuals of the training set.

The predicted variance of an observation of kind ``k`` (energy, forces,
stress) is ``w_a,k noise^2 + w_e,k var_epistemic``; the weights are chosen
so that held-out residuals of the training set are best predicted
(:func:`recalibration_weights`).  ``SparseGP.fit`` runs this unless
``calibrate=False``; the weights are part of the fitted predictive
distribution, so every consumer (calculator, properties, screening) uses them.
"""

from __future__ import annotations

import numpy as np

from kernelpot.gp.loo import TrainingDiagnostics, leave_one_out

__all__ = ["informative", "recalibration_weights", "recalibrate"]


def informative(diag: TrainingDiagnostics) -> np.ndarray:
    """Observations that can inform a calibration: finite LOO residual and non-zero epistemic variance.

    Components fixed by symmetry (e.g. forces in a perfect strained crystal)
    have zero epistemic variance and zero error in every model; they are
    left out.  "Zero" is below 1e-6 of the largest epistemic variance of the
    same kind.
    """
    epi = np.maximum(diag.loo_std_predictive ** 2 - diag.sigma ** 2, 0.0)
    out = np.isfinite(diag.loo_residual)
    for k in np.unique(diag.kind):
        sel = diag.kind == k
        out[sel] &= epi[sel] > 1e-6 * epi[sel].max(initial=0.0)
    return out


def recalibration_weights(diag: TrainingDiagnostics, min_obs: int = 20) -> dict:
    """Weights of the aleatoric and epistemic variance of each kind, from training LOO.

    The recalibrated predictive variance of an observation of kind ``k`` is

        sigma^2 = w_a,k * sigma_noise^2 + w_e,k * var_epistemic

    with ``var_epistemic`` the latent-GP posterior variance (sparse posterior
    plus Nystrom residual, so it still grows to the prior far from the data).
    ``(w_a, w_e)`` maximise the Gaussian log-likelihood of the structure-LOO
    residuals of the training set under that variance (the same split of the
    LOO predictive variance: noise ``sigma^2``, DTC posterior
    ``loo_std^2 - sigma^2``, Nystrom residual ``loo_std_predictive^2 -
    loo_std^2``).  One scale cannot do this: the learned force noise also
    absorbs model error, and how much of the misfit is noise and how much
    depends on the structure is exactly what the LOO residuals tell.

    The epistemic weight is bounded below by the single scale ``s^2 = mean(z^2)``
    (``z`` the LOO z-scores under the raw variance): the training LOO contains
    no structure far from all the others, so it cannot say how fast sigma
    should grow away from the data, and on mlearn Si the stress residuals are
    ranked so poorly by the epistemic variance (Spearman 0.14) that the free
    optimum drops it entirely -- the stress sigma of a strained or melted cell
    would then be the noise alone.  With the bound the calibrated sigma is
    never less cautious far from the data than one global scale would make it.

    Observations whose epistemic variance is zero to round-off (components
    fixed by symmetry, e.g. the forces in a perfect strained crystal: zero
    error in every model) carry no information on calibration and are left
    out.  With fewer than ``min_obs`` informative observations of a kind the
    two weights are tied to one scale, ``w_a = w_e = mean(z^2)``.

    Returns
    -------
    dict {kind: (w_aleatoric, w_epistemic)}
    """
    import scipy.optimize as so
    out = {}
    useful = informative(diag)
    for k in np.unique(diag.kind):
        sel = (diag.kind == k) & useful
        r = diag.loo_residual[sel]
        noise = diag.sigma[sel] ** 2
        epi = np.maximum(diag.loo_std_predictive[sel] ** 2 - noise, 0.0)
        if r.size == 0:
            continue
        s2 = float(np.mean(r ** 2 / (noise + epi)))
        if not (np.isfinite(s2) and s2 > 0):  # residuals all zero: nothing to calibrate against
            continue
        if r.size < min_obs or not np.any(noise > 0):
            out[str(k)] = (s2, s2)
            continue
        parts = np.stack([noise, epi])

        def nll(lw):
            w = np.exp(lw)
            v = w @ parts
            q = r ** 2 / v
            f = 0.5 * np.mean(np.log(v) + q)
            g = 0.5 * np.mean(parts * w[:, None] * (1.0 - q) / v, axis=1)
            return f, g

        x0 = np.full(2, np.log(s2))
        res = so.minimize(nll, x0, jac=True, method="L-BFGS-B",
                          bounds=[(np.log(1e-6), np.log(1e6)), (np.log(s2), np.log(1e6))])
        w = np.exp(res.x) if res.fun <= nll(x0)[0] else np.exp(x0)
        out[str(k)] = (float(w[0]), float(w[1]))
    return out


def recalibrate(model, diag: TrainingDiagnostics | None = None) -> dict:
    """Set ``model.std_weights_`` from training LOO residuals; returns the weights.

    After this, every predicted variance of kind ``k`` is
    ``w_a * noise^2 + w_e * epistemic variance`` with the weights of
    :func:`recalibration_weights`: ``*_std_epistemic`` is the epistemic part
    ``sqrt(w_e) * (raw epistemic std)`` and ``*_std`` the total.
    No test data are used.  ``model.std_weights_ = {}`` undoes it.
    """
    diag = leave_one_out(model) if diag is None else diag
    weights = recalibration_weights(diag)
    model.std_weights_ = weights
    return weights
