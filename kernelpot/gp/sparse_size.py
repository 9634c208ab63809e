"""How many sparse points a fit needs: ``SparseGP(n_sparse="auto")``.

The sparse set is grown through a ladder of sizes per species
(:data:`LADDER`: 250, 500, 1000, ... environments of each species, never more
than the data have) and stops when the next size does not raise the
optimised log marginal likelihood by a Bayes factor of 100 (:data:`MIN_GAIN`,
``ln 100`` nats, "decisive" on Jeffreys' scale), or at the largest size
whose fit fits in the memory budget (:func:`fit_memory`).

Why the evidence and why this way.  The number of sparse points is a model
choice like any kernel setting: a DTC model with ``M`` environments is a
Bayesian linear model with ``M`` basis functions, and its marginal
likelihood already weighs the better fit of a larger basis against its
complexity, on the training data alone (held-out data are not needed and
none are used).  Every size is evaluated exactly and cheaply because the
sets are nested (:func:`kernelpot.gp.select.sparse_order`) and the
statistics are whitened by the Cholesky factor of ``Kmm`` in that order:
the whitened column of a sparse point depends only on the points before it,
so the statistics of the first ``m`` points of each species are a
sub-block of those of the largest set (:func:`sub_statistics`).  One
assembly pass at the largest size serves every size; each size costs one
hyperparameter search, the same search a fit with that fixed size runs,
whose result the fit then keeps.

The memory budget is what makes the largest size finite: the fit's
``W x W`` arrays (``W`` = sparse points plus the two-body grid and the
offsets) grow as ``W^2``, its assembly time as ``W^2`` per observation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kernelpot.gp.likelihood import GroupStats

__all__ = ["LADDER", "MIN_GAIN", "BASE_MEMORY", "fit_memory", "rungs", "columns", "sub_statistics", "SizeStep",
           "grow"]

#: Sparse environments per species tried by ``n_sparse="auto"``, smallest first.
LADDER = (250, 500, 1000, 2000, 4000, 8000)
#: Smallest gain of the optimised log marginal likelihood (nats) for which the next size is taken: ln 100.
MIN_GAIN = float(np.log(100.0))
#: Memory of a fit that does not grow with the sparse set (interpreter, compiled kernels, data), bytes.
BASE_MEMORY = int(0.4 * 2**30)


def fit_memory(n_columns: int, n_groups: int) -> int:
    """Estimated peak memory of a fit with ``n_columns`` whitened columns and ``n_groups`` noise groups, bytes.

    ``BASE_MEMORY`` plus ``n_groups + 5`` arrays of ``W x W`` doubles: the
    per-group statistics, the posterior precision and its inverse, and the
    copies the hyperparameter search, the label-convention check and the
    calibration's leave-one-out hold at their peaks.  Measured peaks (resident
    set, this project's benchmarks, three groups): acetylacetone at W = 3100,
    0.92 GiB (estimate 0.97); mlearn Si at W ~ 1080 and 2080, 0.52 and 0.70 GiB
    (estimates 0.47 and 0.66).
    """
    return int(BASE_MEMORY + 8 * (n_groups + 5) * int(n_columns) ** 2)


def rungs(available: dict, n_extra: int, n_groups: int, budget: float) -> list:
    """The sizes ``n_sparse="auto"`` compares, smallest first: ``[{Z: count}, ...]``.

    Parameters
    ----------
    available : dict {Z: int}
        Environments of each species the data offer.
    n_extra : int
        Whitened columns that are not sparse environments (two-body grid, offsets).
    n_groups : int
        Noise groups of the fit.
    budget : float
        Bytes :func:`fit_memory` may reach.  The smallest rung is kept even above it.

    Returns
    -------
    list of dict
        One entry per rung of :data:`LADDER` (``min(rung, available)`` per
        species), without repeats; it ends at the first rung that takes every
        environment, or at the last within ``budget``.
    """
    out = []
    for r in LADDER:
        counts = {z: min(int(r), int(n)) for z, n in available.items()}
        if out and counts == out[-1]:
            break
        if out and fit_memory(sum(counts.values()) + n_extra, n_groups) > budget:
            break
        out.append(counts)
    return out


def columns(blocks: dict, counts: dict, n_total: int) -> np.ndarray:
    """Whitened columns of the first ``counts[Z]`` sparse points of each species.

    ``blocks`` is ``{Z: (start, stop)}`` of the species' columns in the largest
    set; the columns from the end of the sparse points to ``n_total`` (two-body
    grid, offsets) are always kept.
    """
    M = max((b for _, b in blocks.values()), default=0)
    parts = [np.arange(a, a + min(int(counts[z]), b - a)) for z, (a, b) in sorted(blocks.items())]
    parts.append(np.arange(M, n_total))
    return np.concatenate(parts).astype(np.int64)


def sub_statistics(stats: GroupStats, ix: np.ndarray, n_soap: int) -> GroupStats:
    """The statistics a fit on the sparse points ``ix`` would have accumulated, from those of a superset.

    Exact when ``ix`` keeps a prefix of each species' points in the order
    they were whitened (see the module docstring).  The energy rows kept for
    the leave-one-out noise choice are cut to ``ix`` too, and their Nystrom
    residual grows by what the dropped SOAP columns represented
    (``p - |a_kept|^2 = (p - |a|^2) + |a_dropped|^2``).

    Parameters
    ----------
    stats : GroupStats
        Of the superset, ``W`` columns.
    ix : (W',) int array
        Columns kept, ascending.
    n_soap : int
        SOAP columns of the superset (the first ``n_soap``): only they leave a residual.
    """
    ix = np.asarray(ix, np.int64)
    if len(ix) == stats.D.shape[1]:
        return stats
    dropped = np.setdiff1d(np.arange(n_soap), ix)
    return GroupStats(list(stats.names), stats.D[:, ix][:, :, ix], stats.e[:, ix].copy(), stats.c.copy(),
                      stats.n.copy(), stats.logdet_scale,
                      loo_rows=[A[:, ix] for A in stats.loo_rows], loo_y=list(stats.loo_y),
                      loo_g=list(stats.loo_g),
                      loo_nystrom=[ny + np.sum(A[:, dropped] ** 2, axis=1)
                                   for A, ny in zip(stats.loo_rows, stats.loo_nystrom)])


@dataclass
class SizeStep:
    """One size tried by ``n_sparse="auto"``.

    Attributes
    ----------
    counts : dict {Z: int}
        Sparse environments of each species.
    log_likelihood : float
        Optimised log marginal likelihood (nats) of the fit with them.
    seconds : float
        Wall time of its hyperparameter search.
    n_evaluations : int
        Marginal-likelihood evaluations of that search.
    energy_loo : float or None
        Closed-form leave-one-out log predictive density of the training
        energies (nats; :func:`kernelpot.gp.likelihood.loo_neg_log_predictive`),
        reported beside the evidence, which forces dominate; None with too
        few energies.
    """

    counts: dict
    log_likelihood: float
    seconds: float
    n_evaluations: int = 0
    energy_loo: float | None = None
    result: tuple = field(default=None, repr=False)


def grow(stats: GroupStats, blocks: dict, sizes: list, search, min_gain: float = MIN_GAIN, note=None):
    """Compare nested sparse sets by the evidence; the one to keep and every step taken.

    Parameters
    ----------
    stats : GroupStats
        Of the largest set.
    blocks : dict {Z: (start, stop)}
        Its species' columns.
    sizes : list of dict
        From :func:`rungs`, smallest first.
    search : callable
        ``search(sub_stats, ix) -> (theta, n_evaluations, scale, log_likelihood, energy_loo)``:
        the fit's hyperparameter search on the statistics of the columns ``ix``
        (``energy_loo``: see :class:`SizeStep`).
    min_gain : float
        The next size is taken when it raises the log likelihood by more than this.
    note : callable, optional
        Called with one line of text per size.

    Returns
    -------
    chosen : int
        Index into ``steps``.
    steps : list of SizeStep
        The sizes tried; ``steps[chosen].result`` is ``(ix, sub_stats, theta,
        n_evaluations, scale)``, the others' ``None``.
    reason : str or None
        Why the growth stopped early; None when every size was taken.
    """
    n_total = stats.D.shape[1]
    n_soap = max((b for _, b in blocks.values()), default=0)
    steps, chosen, reason = [], 0, None
    for k, counts in enumerate(sizes):
        ix = columns(blocks, counts, n_total)
        sub = sub_statistics(stats, ix, n_soap)
        t = time.perf_counter()
        theta, n_eval, scale, lml, e_loo = search(sub, ix)
        step = SizeStep(dict(counts), float(lml), time.perf_counter() - t, int(n_eval), e_loo,
                        (ix, sub, theta, n_eval, scale))
        steps.append(step)
        if note is not None:
            note(f"sparse points {sum(counts.values())} ({_counts_text(counts)}): log L {lml:.1f}"
                 + ("" if e_loo is None else f", energy LOO log density {e_loo:.1f}"))
        if k == 0:
            continue
        gain = step.log_likelihood - steps[chosen].log_likelihood
        if gain <= min_gain:
            reason = (f"{sum(counts.values())} points raise log L by {gain:.1f} nats, not more than "
                      f"{min_gain:.1f} (a Bayes factor of {np.exp(min_gain):.0f})")
            step.result = None
            break
        steps[chosen].result = None
        chosen = k
    return chosen, steps, reason


def _counts_text(counts: dict) -> str:
    from ase.data import chemical_symbols
    return ", ".join(f"{chemical_symbols[int(z)]} {n}" for z, n in sorted(counts.items()))
