"""Prior (reduced) variances of energy, force and stress observations.

The epistemic variance of a prediction under the DTC sparse GP is

    var = delta^2 (p - k^T Kmm^-1 k) + k^T C^-1 k

where ``k`` is the reduced design row of the observation (see
:mod:`kernelpot.gp.design`) and ``p`` its reduced prior variance computed here
exactly through the second derivatives of the kernel, summed over all pairs of
environments that the observation touches.  Far from the data ``k -> 0`` and the
variance returns to the prior ``delta^2 p``.
"""

from __future__ import annotations

import numpy as np

from kernelpot.gp.kernels import _power, pair_covariance_factors, pair_covariance_sum

__all__ = ["prior_energy_var", "prior_force_var", "prior_stress_var", "prior_parts", "prior_of"]


def prior_parts(fn, feat, sparse, *args) -> list:
    """``[r_d^2 fn(feat_d, *args)]`` over the SOAP terms of ``sparse``
    (:class:`kernelpot.gp.design.SparseSet`): each term's share of the reduced prior variance."""
    from kernelpot.gp.design import feature_parts
    return [r * r * np.asarray(fn(f, *args), float)
            for f, r in zip(feature_parts(feat, sparse), sparse.part_scales)]


def prior_of(fn, feat, sparse, *args):
    """Reduced prior variance under the kernel of ``sparse``: ``fn`` (one of the ``prior_*_var``) summed
    over its SOAP terms with weights ``r_d^2``; ``fn(feat, *args)`` for one descriptor."""
    if not sparse.extra:
        return fn(feat, *args)
    return sum(prior_parts(fn, feat, sparse, *args))


def _same_species(Za, Zb):
    return Za[:, None] == Zb[None, :]


def prior_energy_var(feat, zeta: float) -> float:
    """Reduced prior variance of the total energy: ``sum_{i,i'} (x_i.x_i')**zeta``."""
    X, Z = feat.features, feat.numbers
    D = _power(X @ X.T, zeta)
    return float(np.sum(D[_same_species(Z, Z)]))


def prior_local_var(feat, zeta: float) -> np.ndarray:
    """Reduced prior variance of each local energy (1 for unit descriptors)."""
    X = feat.features
    return _power(np.einsum("ij,ij->i", X, X), zeta)


def prior_force_var(feat, zeta: float) -> np.ndarray:
    """Reduced prior variance of every force component, shape (n_atoms, 3)."""
    X, Z = feat.features, feat.numbers
    n = len(Z)
    pc, pn, pg = feat.pair_center, feat.pair_neighbor, feat.pair_grad
    order = np.argsort(pn, kind="stable")
    bounds = np.searchsorted(pn[order], np.arange(n + 1))
    out = np.zeros((n, 3))
    for j in range(n):
        sel = order[bounds[j]:bounds[j + 1]]
        if len(sel) == 0:
            continue
        ci = pc[sel]
        Xc = X[ci]
        P1, P2 = pair_covariance_factors(Xc, Xc, _same_species(Z[ci], Z[ci]), zeta)
        # pair_covariance_sum for the three components at once: sum P1 (g.g') + P2 (g.x')(x.g')
        G = np.ascontiguousarray(pg[sel].transpose(1, 0, 2))      # (3, pairs, F)
        GX = G @ Xc.T                                              # g_p . x_q
        out[j] = np.einsum("pq,apq->a", P1, G @ G.transpose(0, 2, 1)) + np.einsum("pq,apq,aqp->a", P2, GX, GX)
    return out


def prior_stress_var(feat, zeta: float, volume: float) -> np.ndarray:
    """Reduced prior variance of each stress component (Voigt), shape (6,)."""
    X, Z = feat.features, feat.numbers
    fac = pair_covariance_factors(X, X, _same_species(Z, Z), zeta)
    out = np.empty(6)
    for v in range(6):
        H = feat.strain_grad[:, v, :]
        out[v] = pair_covariance_sum(H, X, H, X, None, zeta, fac) / volume ** 2
    return out
