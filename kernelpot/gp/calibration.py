"""Calibration of the predictive variance from held-out residuals of the training set.

The predicted variance of an observation of kind ``k`` (energy, forces,
stress) with noise std ``n``, latent (epistemic) variance ``v`` and its
Nystrom residual ``v_nys`` is (:func:`variance`)::

    sigma^2 = w_a n^2 + (w_p (v - v_nys) + w_n v_nys) (clip(a, v_ref, a_max) / v_ref)^(gamma - 1)

with ``a`` the rotation-invariant amplitude of ``v`` (per atom for forces,
per cell for stress, so calibrated variances still transform as a tensor's),
``v_ref`` its 90th percentile over the structure-LOO observations and
``a_max`` its largest held-out value.  Fitted in two stages: ``(w_a, w_p,
w_n)`` on the structure leave-one-out residuals (:mod:`kernelpot.gp.loo`:
each structure predicted from all others, in distribution, and without the
sparse environments taken from it -- as a new structure is predicted; with
them in the basis its variance sits in the posterior part where a new
structure's sits in the Nystrom residual), by maximum
Gaussian likelihood (from three starting ratios w_p / w_n: the likelihood is
not convex in them) and then one common scale that makes their coverage at
1 and 2 sigma the Gaussian's (:func:`coverage_scale`); then ``gamma`` by
maximum likelihood on the leave-one-group-out residuals
(:mod:`kernelpot.gp.group_loo`: each config_type or descriptor cluster
predicted from the others and without its own sparse environments, under a
shift).  Fitting the weights on both sets
at once made in-distribution sigma too wide (mlearn Si forces: 77 % within
1 sigma, area 0.074; in two stages 73 %, 0.044).  Why this form:

* Two epistemic weights.  The DTC variance has two parts: the posterior
  uncertainty of the sparse weights (``v - v_nys``) and the Nystrom residual
  ``v_nys``, the prior variance of what the sparse environments cannot
  represent.  The residual's amplitude is set by an isotropic prior over the
  whole descriptor space and is often wrong by orders of magnitude (70x the
  squared error on acetylacetone; on the shipped EMT copper data the
  likelihood gives it weight ~1e-7 and the posterior part ~10), so one
  weight for both cannot be right in and out of distribution.
* ``gamma``: errors of an extrapolating model can grow faster than the
  latent variance (on acetylacetone 300 K -> 600 K the error grew 3x while
  the variance grew 1.4x).  The growth applies only above ``v_ref`` (nine in
  ten in-distribution observations stay linear) and is not extrapolated
  beyond ``a_max``; ``gamma = 1`` is linear.  The group held-out likelihood
  decides, per kind.
* ``v_fade``: a weight below one (the GP variance too wide where the data
  are) holds up to ``v_fade`` and fades back to one beyond it
  (:func:`kernelpot.gp.posterior.variance`).  Where the fade starts, between
  ``v_ref`` and ``a_max``, is chosen by the group held-out likelihood
  (with linear growth; ``gamma`` is fitted after it).  A fixed start at
  ``v_ref`` let the Nystrom residual (weight ~1e-6 on acetylacetone, whose
  raw residual is 70x too wide) come back within a factor two of the
  training amplitudes: acac 300 K test energies were 82 % within 1 sigma
  (area 0.14) and 600 K forces 80 % (area 0.12); with the fitted onset
  67 % (0.018) and 68 % (0.025).
* ``n_max``: the Nystrom weight also fades back to one where the residual
  alone exceeds the largest residual of the calibration data.  The residual
  is data-free, the same in every held-out set, so no held-out error vouches
  for ``w_n`` beyond it; ``v_fade`` cannot see this when ``a_max`` was set by
  a held-out composition whose variance lies in the weights (Ni3Al cells:
  a Ni2 dimer's residual was 100x ``n_max``, its amplitude 1/80 of
  ``a_max``, and ``w_n = 0.004`` put its force sigma 8x below the GP's own).
  Each structure's residual for ``n_max`` is measured with its own
  environments left out of the sparse set (``nystrom_held_out`` of
  :class:`kernelpot.gp.loo.TrainingDiagnostics`), as a new structure's
  would be: with them in, a set whose atoms are mostly sparse points has
  energy residuals of zero to round-off, and in-distribution EMT Al test
  cells read ``extrapolation`` 300.  ``x_max``, the reference of the
  prediction's ``extrapolation`` and of nothing else, is measured alike: the
  largest posterior part plus that residual of a held-out structure.
* ``w_a`` is free above a floor: no total sigma is below :data:`SIGMA_FLOOR`
  (a tenth of the fit's noise floor) and none is ever zero.  It is not bounded
  by the learned noise itself: on noise-free reference data (EMT) the
  learned force noise sits at its floor, most errors are far smaller, and a
  sigma floor at the learned noise put 90 % of the copper test errors
  within 1 sigma.
* Group residuals: the structure LOO never leaves the model far from its
  data, so alone it cannot say how sigma should grow there.

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

__all__ = ["SIGMA_FLOOR", "informative", "amplitudes", "variance", "coverage_scale", "recalibration_weights",
           "group_aleatoric_weights", "recalibrate"]

#: The smallest total std a calibrated prediction may have: a tenth of the fit's noise floor
#: (0.01 meV/atom, 0.1 meV/Å, 1e-6 eV/Å^3).  Never zero; below anything DFT reproduces.
SIGMA_FLOOR = {kind: 0.1 * value for kind, value in NOISE_FLOOR.items()}
#: Percentile of the in-distribution latent-variance amplitudes above which sigma may grow faster.
GROWTH_QUANTILE = 90.0
#: Candidate fade onsets between v_ref and a_max (log-spaced), chosen by the group held-out likelihood.
FADE_GRID = 13
#: Starts of the stage-1 weight fit from w_p = w_n: w_p raised and w_n lowered by these many decades each.
STAGE1_TILTS = (0.0, 3.0, -3.0)
#: Mean NLL (nats per observation) by which a tilted start must beat the others to be kept.
STAGE1_GAIN = 1e-6
#: Fewer training structures than this with residuals of a kind: one scale, each structure one observation.
MIN_FRAMES = 3


def informative(diag: TrainingDiagnostics, exclude_frames=()) -> np.ndarray:
    """Observations that can inform a calibration: finite LOO residual and stds, non-zero epistemic variance.

    Components fixed by symmetry (e.g. forces in a perfect strained crystal)
    have zero epistemic variance and zero error in every model; they are
    left out.  "Zero" is below 1e-6 of the largest epistemic variance of the
    same kind among the frames not in ``exclude_frames`` (an isolated atom
    left out has an epistemic variance 1e7 times a bulk cell's).
    """
    epi = np.maximum(diag.loo_std_predictive ** 2 - diag.sigma ** 2, 0.0)
    # a non-finite std leaves out its atom's forces or its cell's stress (the unit whose amplitude the
    # variance model reads: a NaN amplitude made v_ref NaN), not (through a NaN mean) the whole kind
    finite = np.isfinite(diag.loo_std) & np.isfinite(diag.loo_std_predictive) & np.isfinite(diag.sigma)
    unit_ok = np.isfinite(amplitudes(diag.kind, diag.frame, diag.atom, diag.component, np.where(finite, 0.0, np.nan)))
    out = np.isfinite(diag.loo_residual) & unit_ok & ~np.isin(diag.frame, list(exclude_frames))
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


def _variance_parts(diag: TrainingDiagnostics):
    """Per structure-LOO observation: residual, noise variance, posterior part and Nystrom residual of the
    latent variance, and the latter's rotation-invariant amplitude (what :func:`variance` takes).

    Each structure as a new one would be predicted (``held_out_*`` of the
    diagnostics: without its observations and its own sparse environments)
    when the diagnostics hold it, else the plain structure LOO.
    """
    noise2 = diag.sigma ** 2
    if diag.held_out_residual is not None:
        post = np.maximum(diag.held_out_std ** 2 - noise2, 0.0)
        nys = np.maximum(diag.nystrom_held_out, 0.0)
        r = diag.held_out_residual
    else:
        post = np.maximum(diag.loo_std ** 2 - noise2, 0.0)
        nys = np.maximum(diag.loo_std_predictive ** 2 - diag.loo_std ** 2, 0.0)
        r = diag.loo_residual
    return r, noise2, post, nys, amplitudes(diag.kind, diag.frame, diag.atom, diag.component, post + nys)


def _informative_mask(kind, epi, residual, keep=None):
    out = np.isfinite(residual) if keep is None else np.isfinite(residual) & keep
    for k in np.unique(kind):
        sel = kind == k
        out[sel] &= epi[sel] > 1e-6 * epi[sel & out].max(initial=0.0)
    return out


#: Central coverages of a standard normal at 1 and 2 sigma, matched by :func:`coverage_scale`.
_COVERAGE_1_2 = (0.6826894921370859, 0.9544997361036416)


def coverage_scale(z_of, log_range: float = 1.5, n_grid: int = 121) -> float:
    """The scale ``c`` whose z-scores are covered at 1 and 2 sigma as a standard normal's are.

    Minimises ``(cov_1 - 0.683)^2 + (cov_2 - 0.954)^2`` of ``z_of(c)`` over
    ``log c`` on a grid in ``[-log_range, log_range]`` (ties: the ``c``
    closest to 1), where ``cov_k`` is the fraction of ``|z| <= k``.  Why:
    the Gaussian likelihood that fits the calibration weights sets
    ``mean(z^2) = 1``, which for held-out z-scores that are a mixture of
    scales (on the shipped EMT copper data, z^2 averages 1.3 on rattled bulk
    frames and 0.05 on surfaces) covers far more than 68 % within 1 sigma:
    there the calibrated force sigma covered 82 % / 98 % of the test errors
    within 1 / 2 sigma (miscalibration area 0.106).  Matching the coverage
    of the structure leave-one-out directly (quantile recalibration,
    Kuleshov et al., ICML 2018, with one parameter, so the variance keeps its
    Gaussian form) fixes the mixture, not the shape.

    Parameters
    ----------
    z_of : callable or (n,) array
        ``z_of(c)``: held-out z-scores (residual / std) when the variance
        weights are scaled by ``c^2``; an array ``z`` means ``z / c``.

    Returns
    -------
    float
        ``c`` (> 0); 1 when there are no finite z-scores.
    """
    if not callable(z_of):
        z0 = np.asarray(z_of, float)
        z_of = lambda c: z0 / c  # noqa: E731
    logc = np.linspace(-log_range, log_range, n_grid)
    loss = np.full(n_grid, np.inf)
    for i, lc in enumerate(logc):
        z = np.abs(np.asarray(z_of(float(np.exp(lc))), float))
        z = z[np.isfinite(z)]
        if z.size:
            loss[i] = (np.mean(z <= 1.0) - _COVERAGE_1_2[0]) ** 2 + (np.mean(z <= 2.0) - _COVERAGE_1_2[1]) ** 2
    if not np.isfinite(loss.min()):
        return 1.0
    best = np.flatnonzero(loss <= loss.min() + 1e-15)
    return float(np.exp(logc[best[np.argmin(np.abs(logc[best]))]]))


def recalibration_weights(diag: TrainingDiagnostics, min_obs: int = 20, exclude_frames=(),
                          floors: dict | None = None) -> dict:
    """Calibration parameters of each kind from the training set's held-out residuals.

    See the module docstring for the variance model.  Observations whose
    latent variance is zero to round-off (components fixed by symmetry, e.g.
    the forces in a perfect strained crystal: zero error in every model)
    carry no information and are left out.  With fewer than ``min_obs``
    informative observations of a kind, one scale is used:
    ``(max(w_floor, s^2), s^2, s^2, 1, v_ref, a_max, v_ref, n_max, x_max)``, with
    ``s^2 = max(mean(z^2), (sum(z^2) + min_obs) / (n + min_obs))`` over the
    ``n`` structure-LOO z-scores: a scale below one (narrower than the GP's
    sigma) is shrunk towards 1 (the posterior mean of a variance scale under a
    conjugate prior at 1 worth ``min_obs`` observations), because a mean of a
    few z^2 is far from its expectation by chance; a scale above one is taken
    as measured.  The same holds with residuals from fewer than
    :data:`MIN_FRAMES` structures, each structure counting as one observation
    (the residuals of one structure move together).

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
        The smallest total std (default :data:`SIGMA_FLOOR`).

    Returns
    -------
    dict {kind: (w_aleatoric, w_posterior, w_nystrom, gamma, v_ref, a_max, v_fade, n_max, x_max)}
        ``x_max`` is not part of the variance: it is the reference of
        :func:`kernelpot.gp.posterior.extrapolation`.
    """
    import scipy.optimize as so
    out = {}
    floors = SIGMA_FLOOR if floors is None else floors
    useful = informative(diag, exclude_frames)
    r_all, noise_all, post_all, nys_all, amp_all = _variance_parts(diag)
    grp = diag.group_loo
    if grp is not None and len(grp["residual"]):
        g_useful = _informative_mask(grp["kind"], grp["epistemic"], grp["residual"])
        g_amp = amplitudes(grp["kind"], grp["frame"], grp["atom"], grp["component"], grp["epistemic"])
        g_nys = grp.get("nystrom", np.zeros_like(grp["epistemic"]))
    for k in np.unique(diag.kind):
        sel = (diag.kind == k) & useful
        r = r_all[sel]
        noise = noise_all[sel]
        if r.size == 0:
            continue
        s2 = float(np.mean(r ** 2 / (noise + post_all[sel] + nys_all[sel])))
        if not (np.isfinite(s2) and s2 > 0):  # residuals all zero: nothing to calibrate against
            continue
        vref = float(np.percentile(amp_all[sel], GROWTH_QUANTILE))
        vref = vref if vref > 0 else (float(np.mean(amp_all[sel])) or 1.0)
        # sqrt(w_a) * noise >= floor for every observation (energies per atom)
        lo = float(floors.get(str(k), 0.0) ** 2 / noise[noise > 0].min()) if np.any(noise > 0) else 0.0
        # the largest Nystrom residual among the kind's calibration data: beyond it w_n was never measured
        # (the residual is data-free, so the group LOO holds the same residuals). Each structure's residual
        # with its own environments out of the sparse set: with them in, it is what no new structure sees
        # (EMT Al whose 240 atoms were all sparse points: energy residuals ~0, and in-distribution test
        # cells read extrapolation 300)
        held = nys_all if diag.nystrom_held_out is None else np.maximum(diag.nystrom_held_out, nys_all)
        where = (diag.kind[sel], diag.frame[sel], diag.atom[sel], diag.component[sel])
        nmax = float(amplitudes(*where, held[sel]).max())
        nmax = nmax if nmax > 0 else np.inf
        # extrapolation's reference (x_max): the largest amplitude a held-out structure reaches measured the
        # same way, its posterior part plus that residual (at least a_max, below)
        xmax = float(amplitudes(*where, post_all[sel] + held[sel]).max())
        n_frames = len(np.unique(diag.frame[sel]))
        if r.size < min_obs or n_frames < MIN_FRAMES or not np.any(noise > 0):
            # few residuals: their mean z^2 is a chi^2 estimate with r.size degrees of freedom (three
            # energies of three cells can say 0.2 by chance). Narrowing the GP's sigma on it is shrunk
            # towards the GP's own variance (scale 1) as a conjugate prior worth min_obs observations
            # would; widening is taken as measured (never less honest than the evidence). The residuals
            # of one or two structures move together (a 1-frame fit's 24 force components set sigma 2x
            # too narrow): there each structure counts as one observation. s2 is their mean z^2 (above)
            n_eff = min(r.size, n_frames) if n_frames < MIN_FRAMES else r.size
            s2 = max(s2, (n_eff * s2 + min_obs) / (n_eff + min_obs))
            amax = float(amp_all[sel].max())
            out[str(k)] = (max(lo, s2), s2, s2, 1.0, vref, amax, vref, nmax, max(xmax, amax))
            continue
        S = (r, noise, post_all[sel], nys_all[sel], amp_all[sel])
        G = None
        if grp is not None and len(grp["residual"]):
            gs = (grp["kind"] == k) & g_useful
            if gs.sum() >= min_obs:
                G = (grp["residual"][gs], grp["sigma"][gs] ** 2, grp["epistemic"][gs] - g_nys[gs], g_nys[gs], g_amp[gs])
        # growth above the 90th percentile of the in-distribution amplitudes (vref, above), up to the
        # largest held-out one
        amax = float(max(S[4].max(), 0.0 if G is None else G[4].max()))

        # the group likelihood reads the Nystrom reach (n_max) as predictions do
        def nll(w, data, gamma=1.0, vfade=vref, nreach=np.inf):
            rr, nn, pp, ny, aa = data
            _, v = variance((*w, gamma, vref, amax, vfade, nreach), np.sqrt(nn), pp + ny, aa, ny)
            return 0.5 * np.mean(np.log(v) + rr ** 2 / v)

        # stage 1: the weights from the structure LOO (in distribution). In log weights the likelihood
        # is not convex: where the two epistemic parts are nearly proportional (log-correlation 0.92 on
        # mlearn Si forces) it is a shallow valley along w_p / w_n whose ends are plateaus (a weight
        # whose term is negligible has no gradient), and L-BFGS-B from one start stopped at either end
        # (Si forces, the same data with and without stress: w_p / w_n = 4e-4 or 2e6, the first the
        # worse likelihood). Starts at w_p = w_n and with w_p / w_n moved 6 decades either way; the best
        # is kept, but a start away from w_p = w_n only for a real gain (STAGE1_GAIN): a
        # weight whose part is zero in the data has no gradient, keeps its start, and round-off must not
        # choose that start. The bounds are 1e6 around the scale the residuals ask for (s2), not around
        # one, and the floor of w_a moves the upper bound if it must (noise std far below the floor)
        hi_x = np.log(1e6 * max(1.0, s2))
        lo_x = np.log(max(lo, 1e-10))
        x0 = np.array([max(np.log(s2), lo_x), np.log(s2), np.log(s2)])
        f1 = lambda x: nll(np.exp(x), S)  # noqa: E731
        bounds = [(lo_x, max(hi_x, lo_x)), (np.log(1e-10), hi_x), (np.log(1e-10), hi_x)]
        x, fx = x0, f1(x0)
        lower, upper = np.array(bounds).T
        for tilt in STAGE1_TILTS:
            start = np.clip(x0 + np.log(10.0) * tilt * np.array([0.0, 1.0, -1.0]), lower, upper)
            res = so.minimize(f1, start, method="L-BFGS-B", bounds=bounds)
            if res.fun <= fx - (STAGE1_GAIN if tilt else 0.0):
                x, fx = res.x, float(res.fun)
        # stage 1b: one scale on the three weights so that the held-out coverage at 1 and 2 sigma is
        # the Gaussian's (see coverage_scale); the aleatoric weight keeps its floor
        def scaled(c2):
            return np.maximum(np.exp(x) * c2, [lo, 0.0, 0.0])

        c = coverage_scale(lambda c: r / np.sqrt(variance((*scaled(c * c), 1.0, vref, amax), np.sqrt(noise),
                                                          S[2] + S[3], S[4], S[3])[1]))
        w = scaled(c * c)
        # stage 2, from the group LOO (under a shift): where a weight below one starts to fade back to
        # the GP's own variance (v_fade, on a log grid from v_ref to a_max, with linear growth; ties
        # keep the earliest, the most cautious), then how much faster sigma grows away from the data
        # (gamma).  One after the other: fitted jointly on a few groups they trade off, and a late
        # fade with gamma at its bound put sigma of an isolated atom at 60x the GP's own
        gamma, vfade = 1.0, vref
        if G is not None:
            grid = vref * (max(amax, vref) / vref) ** np.linspace(0.0, 1.0, FADE_GRID)
            f = np.array([nll(w, G, 1.0, vf, nmax) for vf in grid])
            vfade = float(grid[np.flatnonzero(f <= f.min() + 1e-12 * abs(f.min()))[0]])
            gamma = float(so.minimize_scalar(lambda g: nll(w, G, g, vfade, nmax), bounds=(1.0, 3.0),
                                             method="bounded", options={"xatol": 1e-4}).x)
        out[str(k)] = (float(w[0]), float(w[1]), float(w[2]), gamma, vref, amax, vfade, nmax, max(xmax, amax))
    return out


def recalibrate(model, diag: TrainingDiagnostics | None = None, frames=None) -> dict:
    """Set ``model.std_weights_`` from the training set's held-out residuals; returns them.

    After this, every predicted variance of kind ``k`` is
    :func:`variance` of the kind's parameters (:func:`recalibration_weights`):
    ``*_std_epistemic`` is the calibrated epistemic part and ``*_std`` the
    total.  No test data are used.  ``model.std_weights_ = {}`` undoes it.
    Without ``diag``, the leave-one-out and leave-one-group-out are computed
    (groups from :func:`kernelpot.gp.group_loo.calibration_groups`).
    ``frames``: the training frames, needed when the model does not hold
    them (one read from a file).

    Raises
    ------
    ValueError
        If the model holds no training frames and none are given, or
        ``frames`` are not the ones it was fitted on.
    """
    frames = model.training_frames(frames)
    if diag is None:
        from kernelpot.gp.group_loo import calibration_groups
        groups, _ = calibration_groups(model, frames)
        diag = leave_one_out(model, frames, groups=groups)
    iso = [i for i, a in enumerate(frames) if is_isolated_atom(a)]
    weights = recalibration_weights(diag, exclude_frames=iso)
    if getattr(model, "noise_per_config_type", False):
        from kernelpot.gp.assembly import group_of
        group = np.array([group_of(model, k, frames[f]) for k, f in zip(diag.kind, diag.frame)])
        weights.update(group_aleatoric_weights(diag, weights, group, exclude_frames=iso))
    model.std_weights_ = weights
    return weights


def group_aleatoric_weights(diag: TrainingDiagnostics, weights: dict, group, min_obs: int = 20, exclude_frames=(),
                            floors: dict | None = None) -> dict:
    """With noise per config_type: each noise group's own aleatoric weight, the kind's other parameters kept.

    One aleatoric weight per kind scales every group's learned noise alike, so
    where the groups' noise levels differ the noisiest group's sigma is too
    narrow and the quietest's too wide (EMT copper with 0.05 eV/Å noise on
    one config_type: 61 % of that group's held-out force errors within 1
    sigma, 82 % of the quiet group's).  Here ``w_a`` of group ``g`` maximises
    the Gaussian likelihood of the group's structure leave-one-out residuals
    with the kind's calibrated epistemic variance held fixed (a 1-D search in
    ``log w_a`` from the kind's floor to 1e6 times the residuals' scale).
    Groups with fewer than ``min_obs`` informative observations or fewer than
    :data:`MIN_FRAMES` structures keep the kind's weights.

    Parameters
    ----------
    diag : TrainingDiagnostics
    weights : dict {kind: parameters}
        From :func:`recalibration_weights`.
    group : (n_obs,) str array
        Noise group of each observation (``"forces:hot"``).

    Returns
    -------
    dict {group: parameters}
        The kind's parameters with the group's ``w_a``; predictions of a
        structure whose config_type is a training group use them
        (:meth:`kernelpot.SparseGP.predict_frame`).
    """
    import scipy.optimize as so
    floors = SIGMA_FLOOR if floors is None else floors
    useful = informative(diag, exclude_frames)
    group = np.asarray(group)
    r_all, noise2, post, nys, amp = _variance_parts(diag)
    out = {}
    for g in np.unique(group):
        sel = (group == g) & useful
        kind = str(diag.kind[sel][0]) if sel.any() else None
        if kind not in weights or sel.sum() < min_obs or len(np.unique(diag.frame[sel])) < MIN_FRAMES:
            continue
        n2 = noise2[sel]
        if not np.all(n2 > 0):
            continue
        w = weights[kind]
        epi, _ = variance(w, 0.0, post[sel] + nys[sel], amp[sel], nys[sel])
        r2 = r_all[sel] ** 2
        lo = np.log(max(floors.get(kind, 0.0) ** 2 / n2.min(), 1e-10))
        hi = max(np.log(1e6 * max(1.0, float(np.mean(r2 / n2)))), lo)
        f = lambda x: float(np.mean(np.log(np.exp(x) * n2 + epi) + r2 / (np.exp(x) * n2 + epi)))  # noqa: E731
        x = so.minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4}).x
        out[str(g)] = (float(np.exp(x)), *w[1:])
    return out
