"""Calibration of the predictive variance from held-out residuals of the training set.

The predicted variance of an observation of kind ``k`` (energy, forces,
stress) with noise std ``n`` and latent (epistemic) variance ``v`` is

    sigma^2 = w_a n^2 + w_e v (clip(a, v_ref, a_max) / v_ref)^(gamma - 1),     1 <= gamma <= 3,

(:func:`variance`), with ``a`` the rotation-invariant amplitude of the
latent variance (per atom for forces, per cell for stress; so calibrated
variances still transform as a tensor's) and ``v_ref`` the median latent
variance of the kind's held-out observations.  ``a_max`` is the largest
amplitude among them: the faster growth is fitted where held-out residuals
show it, and not extrapolated beyond (there the variance grows linearly with
``v``, as the GP's own posterior does).  The parameters maximise the Gaussian likelihood of
two sets of held-out residuals, weighted equally: the structure
leave-one-out (:mod:`kernelpot.gp.loo`: each structure predicted from all
others, i.e. in distribution) and the leave-one-group-out
(:mod:`kernelpot.gp.group_loo`: each config_type or descriptor cluster
predicted from the others, i.e. under a shift).  Why this form:

* ``w_a`` is free above a floor: ``sqrt(w_a) n`` is never below the noise
  floor of the fit (:data:`kernelpot.gp.hyperparameters.NOISE_FLOOR`: 0.1
  meV/atom, 1 meV/Å, 1e-5 eV/Å^3, the smallest noise the likelihood may
  learn), so no sigma is ever zero or below what DFT labels can reproduce.
  It is not bounded by the learned noise itself: the learned force noise
  averages the misfit over the whole training set, and on the shipped EMT
  copper data it is 3x the test RMSE (surfaces and vacancies in training,
  bulk in test); a floor there put 97 % of the test errors within 1 sigma.
* ``gamma``: the DTC latent variance grows towards the prior away from the
  data, but the error of an extrapolating model can grow faster than the
  variance says (on acetylacetone 300 K -> 600 K the error grew 3x while the
  variance grew 1.4x); ``gamma > 1`` lets sigma grow faster where the latent
  variance is large, and ``gamma = 1`` is the linear form of the previous
  version.  Which one the data prefer is decided by the held-out
  likelihood, per kind.
* group residuals: structure LOO never leaves the model far from its data, so
  alone it cannot say how sigma should grow there.

``SparseGP.fit`` runs this unless ``calibrate=False``; the weights are part
of the fitted predictive distribution, so every consumer (calculator,
properties, screening) uses them.
"""

from __future__ import annotations

import numpy as np

from kernelpot.io.labels import is_isolated_atom
from kernelpot.gp.hyperparameters import NOISE_FLOOR
from kernelpot.gp.loo import TrainingDiagnostics, leave_one_out
from kernelpot.gp.posterior import variance

__all__ = ["informative", "amplitudes", "variance", "recalibration_weights", "recalibrate"]


def informative(diag: TrainingDiagnostics, exclude_frames=()) -> np.ndarray:
    """Observations that can inform a calibration: finite LOO residual and non-zero epistemic variance.

    Components fixed by symmetry (e.g. forces in a perfect strained crystal)
    have zero epistemic variance and zero error in every model; they are
    left out.  "Zero" is below 1e-6 of the largest epistemic variance of the
    same kind among the frames not in ``exclude_frames`` (an isolated atom
    left out has an epistemic variance 1e7 times a bulk cell's).
    """
    epi = np.maximum(diag.loo_std_predictive ** 2 - diag.sigma ** 2, 0.0)
    out = np.isfinite(diag.loo_residual) & ~np.isin(diag.frame, list(exclude_frames))
    return _informative_mask(diag.kind, epi, diag.loo_residual, out)


def amplitudes(kind, frame, atom, component, epi) -> np.ndarray:
    """Rotation-invariant amplitude of each observation's latent variance (see
    :func:`kernelpot.gp.posterior.invariant_amplitude`), for flat per-observation arrays."""
    kind = np.asarray(kind)
    amp = np.asarray(epi, float).copy()
    f = np.flatnonzero(kind == "forces")
    if len(f):
        keys = frame[f].astype(np.int64) * (int(atom.max(initial=0)) + 1) + atom[f]
        _, inv = np.unique(keys, return_inverse=True)
        amp[f] = (np.bincount(inv, epi[f]) / np.bincount(inv))[inv]
    s = np.flatnonzero(kind == "stress")
    if len(s):
        w = np.where(component[s] < 3, 1.0, 2.0) / 9.0
        _, inv = np.unique(frame[s], return_inverse=True)
        amp[s] = np.bincount(inv, w * epi[s])[inv]
    return amp


def _informative_mask(kind, epi, residual, keep=None):
    out = np.isfinite(residual) if keep is None else np.isfinite(residual) & keep
    for k in np.unique(kind):
        sel = kind == k
        out[sel] &= epi[sel] > 1e-6 * epi[sel & out].max(initial=0.0)
    return out


def recalibration_weights(diag: TrainingDiagnostics, min_obs: int = 20, exclude_frames=(),
                          floors: dict | None = None) -> dict:
    """Calibration parameters of each kind from the training set's held-out residuals.

    See the module docstring for the variance model.  Observations whose
    latent variance is zero to round-off (components fixed by symmetry, e.g.
    the forces in a perfect strained crystal: zero error in every model)
    carry no information and are left out.  With fewer than ``min_obs``
    informative observations of a kind, one scale is used:
    ``(max(w_floor, s^2), s^2, 1, v_ref, a_max)``, ``s^2 = mean(z^2)`` of the structure LOO.

    Parameters
    ----------
    diag : TrainingDiagnostics
        From :func:`kernelpot.gp.loo.leave_one_out` (with ``groups`` for the
        leave-one-group-out set).
    min_obs : int
    exclude_frames : sequence of int
        Training frames left out of the calibration data (isolated atoms:
        their energies define ``e0``; left out, they are not predicted at all).
    floors : dict {kind: std}, optional
        The smallest total std (default ``NOISE_FLOOR``).

    Returns
    -------
    dict {kind: (w_aleatoric, w_epistemic, gamma, v_ref, a_max)}
    """
    import scipy.optimize as so
    out = {}
    floors = NOISE_FLOOR if floors is None else floors
    useful = informative(diag, exclude_frames)
    epi_all = np.maximum(diag.loo_std_predictive ** 2 - diag.sigma ** 2, 0.0)
    amp_all = amplitudes(diag.kind, diag.frame, diag.atom, diag.component, epi_all)
    grp = diag.group_loo
    if grp is not None and len(grp["residual"]):
        g_useful = _informative_mask(grp["kind"], grp["epistemic"], grp["residual"])
        g_amp = amplitudes(grp["kind"], grp["frame"], grp["atom"], grp["component"], grp["epistemic"])
    for k in np.unique(diag.kind):
        sel = (diag.kind == k) & useful
        r = diag.loo_residual[sel]
        noise = diag.sigma[sel] ** 2
        epi = epi_all[sel]
        if r.size == 0:
            continue
        s2 = float(np.mean(r ** 2 / (noise + epi)))
        if not (np.isfinite(s2) and s2 > 0):  # residuals all zero: nothing to calibrate against
            continue
        vref = float(np.median(epi)) if np.median(epi) > 0 else float(np.mean(epi))
        # sqrt(w_a) * noise >= floor for every observation (energies per atom)
        lo = float(floors.get(str(k), 0.0) ** 2 / noise[noise > 0].min()) if np.any(noise > 0) else 0.0
        if r.size < min_obs or not np.any(noise > 0):
            out[str(k)] = (max(lo, s2), s2, 1.0, vref, float(amp_all[sel].max()))
            continue
        sets = [(r, noise, epi, amp_all[sel])]
        if grp is not None and len(grp["residual"]):
            gs = (grp["kind"] == k) & g_useful
            if gs.sum() >= min_obs:
                sets.append((grp["residual"][gs], grp["sigma"][gs] ** 2, grp["epistemic"][gs], g_amp[gs]))

        amax = float(max(s[3].max() for s in sets))

        def nll(x):
            wa, we, gamma = np.exp(x[0]), np.exp(x[1]), x[2]
            total = 0.0
            for rr, nn, ee, aa in sets:
                v = wa * nn + we * ee * (np.clip(aa, vref, amax) / vref) ** (gamma - 1.0)
                total += 0.5 * np.mean(np.log(v) + rr ** 2 / v)
            return total / len(sets)

        lo_x = np.log(max(lo, 1e-8))
        x0 = np.array([max(np.log(s2), lo_x), np.log(s2), 1.0])
        res = so.minimize(nll, x0, method="L-BFGS-B",
                          bounds=[(lo_x, np.log(1e6)), (np.log(1e-8), np.log(1e6)), (1.0, 3.0)])
        x = res.x if res.fun <= nll(x0) else x0
        out[str(k)] = (float(np.exp(x[0])), float(np.exp(x[1])), float(x[2]), vref, amax)
    return out


def recalibrate(model, diag: TrainingDiagnostics | None = None) -> dict:
    """Set ``model.std_weights_`` from the training set's held-out residuals; returns them.

    After this, every predicted variance of kind ``k`` is
    :func:`variance` of the kind's parameters (:func:`recalibration_weights`):
    ``*_std_epistemic`` is the calibrated epistemic part and ``*_std`` the
    total.  No test data are used.  ``model.std_weights_ = {}`` undoes it.
    Without ``diag``, the leave-one-out and leave-one-group-out are computed
    (groups from :func:`kernelpot.gp.group_loo.calibration_groups`).
    """
    if diag is None:
        from kernelpot.gp.group_loo import calibration_groups
        groups, _ = calibration_groups(model, model._train_frames)
        diag = leave_one_out(model, groups=groups)
    iso = [i for i, a in enumerate(model._train_frames) if is_isolated_atom(a)]
    weights = recalibration_weights(diag, exclude_frames=iso)
    model.std_weights_ = weights
    return weights
