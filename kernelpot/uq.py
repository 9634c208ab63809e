"""Leverage, closed-form leave-one-out and recalibration for a fitted SparseGP.

The posterior mean of the sparse GP at the training observations is a linear
smoother ``yhat = H y`` with hat matrix

    H = K C^-1 K^T Lambda^-1,     C = delta^-2 Kmm + K^T Lambda^-1 K,

(``K`` reduced design rows, ``Lambda`` the learned noise).  For fixed
hyperparameters and sparse set this is ridge regression, so leave-one-out is
exact in closed form:

* one observation:  ``r_i / (1 - H_ii)`` with LOO predictive std
  ``sigma_i / sqrt(1 - H_ii)``;
* one structure G (all its energy, force and stress observations at once):
  ``(I - H_GG)^-1 r_G`` with LOO predictive covariance ``(I - H_GG)^-1 Lambda_G``.

Everything is computed in the whitened basis of :mod:`kernelpot.gp.likelihood`
(``S = Lambda^-1/2 H Lambda^1/2`` is symmetric there), one structure at a time,
in O(N M^2) time and O(M^2 + n_G M) memory.  ``H_ii`` is the leverage of an
observation: how much its own label decides its fitted value.

Recalibration (:func:`recalibrate`, run by ``SparseGP.fit`` unless
``calibrate=False``) weights the aleatoric and the epistemic variance of each
kind so that the structure-LOO residuals are best predicted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from kernelpot.gp.labels import frame_labels
from kernelpot.gp.likelihood import whiten

__all__ = ["TrainingDiagnostics", "leave_one_out", "informative", "recalibration_weights", "recalibrate"]


@dataclass
class TrainingDiagnostics:
    """Per-observation leverage and leave-one-out results on the training set.

    All arrays have one entry per observation.  Energies are per atom (eV/atom),
    forces eV/Å, stresses eV/Å^3; z-scores are dimensionless.

    Attributes
    ----------
    kind : str array                 ``"energy"``, ``"forces"`` or ``"stress"``
    frame : int array                training frame index
    atom, component : int arrays     atom index and x/y/z (forces); Voigt index (stress); -1 otherwise
    residual : label - fitted value
    leverage : ``H_ii``
    sigma : noise std of the observation (learned)
    loo_residual_obs, z_obs : single-observation LOO residual and its z-score
    loo_residual, loo_std, z : structure-LOO (whole frame left out) residual, predictive std, z-score
        under the fitted (DTC) model itself: what the hat matrix says
    loo_std_predictive, z_predictive : the same with the Nystrom residual
        ``delta^2 (p - k Kmm^-1 k)`` added to the variance, exactly as
        :meth:`SparseGP.predict` adds it for new structures; these are the
        z-scores to calibrate predictive sigmas against
    frame_chi2, frame_dof : per frame (length n_frames) Mahalanobis norm of the
        structure-LOO residual and the number of observations
    frame_leverage : per frame, trace of ``H_GG``
    """

    kind: np.ndarray
    frame: np.ndarray
    atom: np.ndarray
    component: np.ndarray
    residual: np.ndarray
    leverage: np.ndarray
    sigma: np.ndarray
    loo_residual_obs: np.ndarray
    z_obs: np.ndarray
    loo_residual: np.ndarray
    loo_std: np.ndarray
    z: np.ndarray
    loo_std_predictive: np.ndarray
    z_predictive: np.ndarray
    frame_chi2: np.ndarray
    frame_dof: np.ndarray
    frame_leverage: np.ndarray


def leave_one_out(model, frames=None) -> TrainingDiagnostics:
    """Leverage and closed-form LOO for every training observation.

    Parameters
    ----------
    model : SparseGP
        Fitted model.
    frames : list of ase.Atoms, optional
        The training frames (default: those the model was fitted on).  Passing
        other frames is an error in meaning, not detected: the hat matrix is
        that of the training set.

    With a Dask client on the model (``SparseGP(client=...)``) the frames
    are processed on the workers in chunks of ``chunk_size``; each frame is
    independent, so the result is the same.

    Returns
    -------
    TrainingDiagnostics

    Examples
    --------
    >>> d = kernelpot.uq.leave_one_out(model)           # doctest: +SKIP
    >>> d.z[d.kind == "energy"]                          # doctest: +SKIP
    """
    model._check_fitted()
    frames = model._train_frames if frames is None else list(frames)
    client = getattr(model, "client", None)
    if client is None:
        parts = [_frame_loo(model, a, fi) for fi, a in enumerate(frames)]
    else:
        from kernelpot.gp.sparse import _worker_view
        chunks = model._chunks(len(frames))
        futs = client.map(_chunk_loo, [_worker_view(model)] * len(chunks), [frames[c] for c in chunks],
                          [c.start for c in chunks], pure=False)
        parts = [p for part in client.gather(futs) for p in part]
    out = {k: (np.array([x for p in parts for x in p[k]]) if k == "kind" else np.concatenate([p[k] for p in parts]))
           for k in TrainingDiagnostics.__dataclass_fields__ if k not in _FRAME_FIELDS}
    return TrainingDiagnostics(**out, **{k: np.array([p[k] for p in parts]) for k in _FRAME_FIELDS})


_FRAME_FIELDS = ("frame_chi2", "frame_dof", "frame_leverage")


def _chunk_loo(model, frames, start):
    """:func:`_frame_loo` of consecutive training frames ``start, start + 1, ...`` (a Dask task)."""
    return [_frame_loo(model, a, start + i) for i, a in enumerate(frames)]


def _frame_loo(model, a, fi: int) -> dict:
    """Per-observation LOO columns of training frame ``fi`` and its per-frame statistics."""
    u = model.delta_ ** 2
    lab = frame_labels(a, fi)
    rows, ys, scales, priors = model._training_rows(a, lab, priors=True)
    n = len(a)
    A, y, sig, kind, atom, comp, unit, nys = [], [], [], [], [], [], [], []
    for k in rows:
        m = len(ys[k])
        A.append(whiten(model._Lmm, rows[k]))
        y.append(ys[k])
        # Nystrom residual of each observation (reduced units, before the noise scale)
        nys.append(u * np.maximum(priors[k] - np.sum(A[-1] ** 2, axis=1), 0.0))
        sc = np.ones(m) if scales[k] is None else scales[k]
        sig.append(model._noise_for(k, a) * sc)
        kind += [k] * m
        if k == "forces":
            atom.append(np.repeat(np.arange(n), 3))
            comp.append(np.tile(np.arange(3), n))
        elif k == "stress":
            atom.append(np.full(6, -1))
            comp.append(np.arange(6))
        else:
            atom.append(np.full(m, -1))
            comp.append(np.full(m, -1))
        unit.append(np.full(m, 1.0 / n) if k == "energy" else np.ones(m))
    A = np.vstack(A)
    y = np.concatenate(y)
    sig = np.concatenate(sig)
    unit = np.concatenate(unit)
    r = y - u * (A @ model._a)
    V = sla.solve_triangular(model._Lc, A.T, lower=True, check_finite=False) / sig
    S = u * (V.T @ V)
    h = np.diag(S).copy()
    ImS = np.eye(len(y)) - S
    rt = r / sig
    Lf = sla.cho_factor(ImS, lower=True, check_finite=False)
    rt_loo = sla.cho_solve(Lf, rt, check_finite=False)
    cov_diag = np.diag(sla.cho_solve(Lf, np.eye(len(y)), check_finite=False))
    r_loo = sig * rt_loo
    loo_std = sig * np.sqrt(cov_diag)
    loo_std_pred = np.sqrt(loo_std ** 2 + np.concatenate(nys))
    return {"kind": kind, "frame": np.full(len(y), fi), "atom": np.concatenate(atom),
            "component": np.concatenate(comp), "residual": r * unit, "leverage": h, "sigma": sig * unit,
            "loo_residual_obs": r / (1 - h) * unit, "z_obs": r / (sig * np.sqrt(1 - h)),
            "loo_residual": r_loo * unit, "loo_std": loo_std * unit, "z": r_loo / loo_std,
            "loo_std_predictive": loo_std_pred * unit, "z_predictive": r_loo / loo_std_pred,
            "frame_chi2": float(rt @ rt_loo), "frame_dof": len(y), "frame_leverage": float(h.sum())}


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
