"""Choice of the kernel scale ``delta`` and the noise of each group.

Log parameters ``theta = (log delta, log sigma_g ...)`` within bounds:
``delta`` in ``DELTA_BOUNDS``; each learned noise between its floor
(``NOISE_FLOOR``: below it DFT labels are not reproducible anyway, and the
floor keeps the posterior precision well conditioned) and the RMS of the
group's targets.  ``delta`` and the force/stress noise maximise the marginal
likelihood (:func:`kernelpot.gp.likelihood.optimize_hyperparameters`); the
energy noise, by default, the closed-form leave-one-out predictive density of
the training energies (:func:`kernelpot.gp.likelihood.select_noise_by_loo`).
"""

from __future__ import annotations

import warnings

import numpy as np

from kernelpot import _threads
from kernelpot.gp.assembly import interactive
from kernelpot.io.labels import NOISE_FLOOR
from kernelpot.gp.likelihood import (GroupStats, loo_neg_log_predictive, optimize_hyperparameters, scale_labels,
                                     select_noise_by_loo)

__all__ = ["NOISE_FLOOR", "DELTA_BOUNDS", "SCALE_BOUNDS", "initial_theta", "search", "warn_at_bounds"]

_NOISE_INIT = {"energy": 0.005, "forces": 0.1, "stress": 0.002}
DELTA_BOUNDS = (1e-3, 1e2)
# fewer energies than this: leave-one-out is too noisy a criterion, keep the evidence
_MIN_LOO_ENERGIES = 10


def initial_theta(stats: GroupStats, delta=None, sigma_energy=None, sigma_force=None, sigma_stress=None):
    """Starting log parameters, their bounds and which are fixed (given by the user).

    Returns
    -------
    theta0 : (1 + G,) array
    bounds : list of (low, high)
    fixed : (1 + G,) bool array
    """
    theta0 = [np.log(delta if delta is not None else 1.0)]
    bounds = [tuple(np.log(DELTA_BOUNDS))]
    fixed = [delta is not None]
    given = {"energy": sigma_energy, "forces": sigma_force, "stress": sigma_stress}
    for k, name in enumerate(stats.names):
        kind = name.split(":")[0]
        n = max(stats.n[k], 1)
        rms = np.sqrt(stats.c[k] / n)
        lo = NOISE_FLOOR[kind]
        hi = max(rms, 10 * lo)
        if given[kind] is not None:
            theta0.append(np.log(given[kind]))
            bounds.append((np.log(given[kind]) - 1, np.log(given[kind]) + 1))
            fixed.append(True)
        else:
            theta0.append(np.log(np.clip(_NOISE_INIT[kind], lo, hi)))
            bounds.append((np.log(lo), np.log(hi)))
            fixed.append(False)
    return np.array(theta0), bounds, np.array(fixed)


def energy_loo_groups(stats: GroupStats) -> list:
    """Noise groups of the energies whose leave-one-out density is a criterion, or ``[]``.

    ``[]`` when there are no energy groups or fewer than ``_MIN_LOO_ENERGIES``
    energies with leave-one-out rows: the criterion would be too noisy.
    """
    groups = [k for k, g in enumerate(stats.names) if g.split(":")[0] == "energy"]
    if not groups or sum(len(y) for y in stats.loo_y) < _MIN_LOO_ENERGIES:
        return []
    return groups


def energy_loo_log_density(theta, stats: GroupStats):
    """Leave-one-out log predictive density of the training energies, or None (see :func:`energy_loo_groups`)."""
    groups = energy_loo_groups(stats)
    return -float(loo_neg_log_predictive(theta, stats, groups)) if groups else None


def _energy_noise_by_loo(stats, theta, bounds, fixed, progress=None):
    groups = energy_loo_groups(stats)
    if not groups:
        return theta
    return select_noise_by_loo(stats, theta, groups, bounds, fixed, progress=progress)


#: Bounds of a kernel term's scale relative to ``delta`` (the two-body term, :mod:`kernelpot.gp.twobody`).
SCALE_BOUNDS = (1e-3, 1e2)


def search(stats: GroupStats, theta0, bounds, fixed, energy_noise="loo", scan_delta=True, verbose=False,
           warn=True, scale_mask=None, nystrom_parts=None, scale_current=None, scale_names=None):
    """Hyperparameters from the statistics of a fit.

    Parameters
    ----------
    stats : GroupStats
    theta0, bounds, fixed
        From :func:`initial_theta` (``theta0`` may hold a previous optimum).
    energy_noise : {"loo", "evidence"}
        How the learned energy noise is chosen (see :class:`kernelpot.SparseGP`).
    scan_delta : bool
        Start ``delta`` from a coarse scan (off when refining a previous optimum).
    verbose : bool
        A progress bar over likelihood evaluations.
    warn : bool or list
        Warn (``RuntimeWarning``) when a free parameter ends at a bound; a
        list collects ``(message, category)`` instead (the caller emits them).
    scale_mask : (M,) bool or int array, optional
        Columns of further kernel terms (the two-body term, the further SOAP
        terms of a kernel sum; a bool mask is one term, integers ``t = 1 ..
        T`` label term ``t``'s columns) whose prior std relative to ``delta``,
        ``r_t``, is learned jointly with ``delta`` and the force/stress noise
        by the evidence.  ``stats`` is then rescaled in place
        (:meth:`GroupStats.scale_columns`; with ``nystrom_parts``) before the
        energy noise is chosen, so on return it holds the statistics of the
        scaled terms.
    nystrom_parts : sequence, optional
        For each term ``t``, its column in the kept (n, D) Nystrom residuals
        of the statistics, or None (an exact term).
    scale_current : sequence of float, optional
        Each term's scale already in the statistics (default 1): the search
        keeps ``current * r_t`` within :data:`SCALE_BOUNDS`, so repeated
        searches (``update``, ``refit``) cannot compound past them.
    scale_names : sequence of str, optional
        Names of the terms in the at-bounds warning.

    Returns
    -------
    theta : (1 + G,) array
    n_evaluations : int
        Evaluations of the marginal likelihood (the ``delta`` scan, L-BFGS-B,
        and the re-optimisations around the leave-one-out energy noise).
    scales : (T,) array
        The factor ``r_t`` applied to each term's columns (empty without ``scale_mask``).
    """
    sink = warn if isinstance(warn, list) else None
    bar = None
    if verbose and interactive():  # redirected output: only the phase line of the caller
        from tqdm.auto import tqdm
        bar = tqdm(desc="hyperparameters (-log L)", leave=False, unit=" eval")
    count = [0]

    def progress(v):
        count[0] += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{v:.6g}")

    # M x M factorisations on every evaluation: one BLAS thread below a few thousand columns (see _threads)
    with _threads.limit(blas_threads=_threads.threads_for_matrix(stats.D.shape[1])):
        labels, n_terms = scale_labels(scale_mask) if scale_mask is not None else (None, 0)
        scales = np.ones(n_terms)
        if n_terms:
            cur = np.log(np.ones(n_terms) if scale_current is None else np.asarray(scale_current, float))
            scale_bounds = [tuple(np.log(SCALE_BOUNDS) - c) for c in cur]
            ext, _ = optimize_hyperparameters(stats, np.append(theta0, np.clip(0.0, *np.array(scale_bounds).T)),
                                              list(bounds) + scale_bounds,
                                              np.append(fixed, np.zeros(n_terms, bool)), scan_delta=scan_delta,
                                              progress=progress, scale_mask=labels)
            theta, scales = ext[:-n_terms], np.exp(ext[-n_terms:])
            if warn is not False:
                names = scale_names or [f"scale of kernel term {t + 1}" for t in range(n_terms)]
                warn_at_bounds(ext[-n_terms:], scale_bounds, np.zeros(n_terms, bool), names, stacklevel=4,
                               first=None, sink=sink)
            parts = [None] * n_terms if nystrom_parts is None else list(nystrom_parts)
            for t in range(n_terms):
                stats.scale_columns(labels == t + 1, float(scales[t]), parts[t])
        else:
            theta, _ = optimize_hyperparameters(stats, theta0, bounds, fixed, scan_delta=scan_delta, progress=progress)
        if bar is not None:
            bar.close()
        if energy_noise == "loo":
            theta = _energy_noise_by_loo(stats, theta, bounds, fixed, progress)
    if warn is not False:
        warn_at_bounds(theta, bounds, fixed, stats.names, stacklevel=4, sink=sink)
    return theta, count[0], scales


def warn_at_bounds(theta, bounds, fixed, names, stacklevel: int = 3, first="delta", sink=None) -> None:
    """``RuntimeWarning`` naming the free parameters (``first``, then ``names``) within 1e-3 of a bound;
    appended to the list ``sink`` as ``(message, category)`` instead, when given."""
    at_bound = [name for name, t, (lo, hi), f in zip(([first] if first else []) + list(names), theta, bounds, fixed)
                if not f and (t - lo < 1e-3 or hi - t < 1e-3)]
    if at_bound:
        message = (f"hyperparameters at their bounds after optimisation: {at_bound}; "
                   "the data may not constrain them (see model.noise_)")
        if sink is not None:
            sink.append((message, RuntimeWarning))
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)
