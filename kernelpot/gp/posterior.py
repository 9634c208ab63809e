"""The fitted posterior of the sparse GP: mean, variance and samples of the latent energy.

After the fit (DTC, see :mod:`kernelpot.gp.likelihood`), everything a
prediction needs is the sparse set, the Cholesky factor ``L`` of the sparse
covariance ``Kmm = L L^T``, the Cholesky factor ``Lc`` of the whitened
posterior precision ``Chat = I + delta^2 sum_g sigma_g^-2 D_g`` and the
whitened solution ``a``.  With reduced design rows ``k`` of an observation
(energy, a force or a stress component; :mod:`kernelpot.gp.design`):

* mean: ``k . alpha`` with ``alpha = delta^2 L^-T a``;
* latent (epistemic) variance: ``delta^2 (p - |L^-1 k|^2 + |Lc^-1 L^-1 k|^2)``,
  where ``p`` is the prior variance of the observation
  (:mod:`kernelpot.gp.variance`).  The middle term removes what the sparse
  set represents, the last adds back the posterior uncertainty of the
  weights; ``delta^2 (p - |L^-1 k|^2)`` is the Nystrom residual, the part
  of the prior the sparse set cannot represent;
* weight samples: ``alpha + delta L^-T Lc^-T z``, ``z ~ N(0, I)``.

One :class:`Posterior` object answers these for every consumer (the
estimator's ``predict``, the leave-one-out, posterior calculators), in the
spirit of GPflow's ``posteriors.py``: they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from kernelpot.gp.design import SparseSet, frame_design, frame_mean
from kernelpot.gp.likelihood import GroupStats, posterior_factor
from kernelpot.gp.variance import prior_energy_var, prior_force_var, prior_stress_var

__all__ = ["Posterior", "tri_solve"]


def tri_solve(L, B, lower=True):
    """``L^-1 B`` for a triangular ``L``."""
    return sla.solve_triangular(L, B, lower=lower, check_finite=False)


@dataclass
class Posterior:
    """DTC posterior over the weights of the sparse environments.

    Attributes
    ----------
    sparse : SparseSet
        Sparse environments (``M`` of them).
    zeta : float
        Dot-product kernel exponent.
    delta : float
        Kernel scale (eV).
    Kmm : (M, M) array
        Sparse covariance divided by ``delta^2``.
    Lmm : (M, M) array
        Lower Cholesky factor of ``Kmm``.
    Lc : (M, M) array
        Lower Cholesky factor of the whitened posterior precision.
    a : (M,) array
        Whitened posterior mean.
    alpha : (M,) array
        Weights of the sparse kernels in the mean (eV).
    """

    sparse: SparseSet
    zeta: float
    delta: float
    Kmm: np.ndarray
    Lmm: np.ndarray
    Lc: np.ndarray
    a: np.ndarray
    alpha: np.ndarray

    @classmethod
    def from_statistics(cls, theta: np.ndarray, stats: GroupStats, sparse: SparseSet, zeta: float,
                        Kmm: np.ndarray, Lmm: np.ndarray) -> "Posterior":
        """Solve for the posterior given log hyperparameters and whitened statistics."""
        Lc, a, u, _ = posterior_factor(theta, stats)
        alpha = u * tri_solve(Lmm.T, a, lower=False)
        return cls(sparse, float(zeta), float(np.exp(theta[0])), Kmm, Lmm, Lc, a, alpha)

    # -------------------------------------------------------------- mean
    def mean(self, feat, volume, forces=True, stress=False, alpha=None) -> dict:
        """Latent local energies (n,), forces (n, 3) and stress (6,) of one structure's features."""
        return frame_mean(feat, self.sparse, self.alpha if alpha is None else alpha, self.zeta, volume,
                          forces=forces, stress=stress)

    def design(self, feat, volume, forces=True, stress=False) -> dict:
        """Reduced design rows (see :func:`kernelpot.gp.design.frame_design`)."""
        return frame_design(feat, self.sparse, self.zeta, volume, forces=forces, stress=stress)

    # ---------------------------------------------------------- variance
    def latent_variance(self, rows: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """Epistemic variance (eV^2 units of the observation) of observations with design ``rows`` (n, M)."""
        v1 = tri_solve(self.Lmm, rows.T)
        v2 = tri_solve(self.Lc, v1)
        var = self.delta ** 2 * (prior - np.sum(v1 ** 2, axis=0) + np.sum(v2 ** 2, axis=0))
        return np.maximum(var, 0.0)

    def latent_variances(self, feat, volume, forces=True, stress=False, design=None) -> dict:
        """Epistemic variances of the total energy (scalar), forces (n, 3) and stress (6,)."""
        d = self.design(feat, volume, forces, stress) if design is None else design
        n = len(feat.numbers)
        out = {"energy": float(self.latent_variance(d["energy"][None, :],
                                                    np.atleast_1d(prior_energy_var(feat, self.zeta)))[0])}
        if forces:
            out["forces"] = self.latent_variance(d["forces"], prior_force_var(feat, self.zeta).ravel()).reshape(n, 3)
        if stress:
            out["stress"] = self.latent_variance(d["stress"], prior_stress_var(feat, self.zeta, volume))
        return out

    # ----------------------------------------------------------- samples
    def sample_weights(self, n_samples: int, random_state=0) -> np.ndarray:
        """Samples of the sparse weights from ``N(alpha, C^-1)``, shape (n_samples, M)."""
        rng = np.random.default_rng(random_state)
        z = rng.standard_normal((self.sparse.size, n_samples))
        # Cov(alpha) = C^-1 = delta^2 L^-T Chat^-1 L^-1 = (delta L^-T Lc^-T)(...)^T
        eps = self.delta * tri_solve(self.Lmm.T, tri_solve(self.Lc.T, z, lower=False), lower=False)
        return (self.alpha[:, None] + eps).T


def predictive_std(var_epistemic, noise, weights=(1.0, 1.0)):
    """Epistemic and total std from a latent variance and a noise std, with calibration weights.

    ``sigma^2 = w_a noise^2 + w_e var_epistemic`` (see :mod:`kernelpot.gp.calibration`).
    """
    wa, we = weights
    return np.sqrt(we * var_epistemic), np.sqrt(we * var_epistemic + wa * np.square(noise))
