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

The whitened weights have ``S`` more entries than sparse environments: the
Bayesian per-species offsets (:mod:`kernelpot.gp.offsets`), whose design
column in an energy observation is ``kappa`` times the number of atoms of
that species and zero elsewhere.  ``alpha`` holds the ``M`` kernel weights
followed by the ``S`` fitted offset corrections (eV per atom).

One :class:`Posterior` object answers these for every consumer (the
estimator's ``predict``, the leave-one-out, posterior calculators), in the
spirit of GPflow's ``posteriors.py``: they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla

from kernelpot import _threads
from kernelpot.gp.design import SparseSet, design_rows, frame_mean
from kernelpot.gp.likelihood import GroupStats, posterior_factor
from kernelpot.gp.offsets import offset_column
from kernelpot.gp.variance import prior_energy_var, prior_force_var, prior_local_var, prior_of, prior_stress_var

__all__ = ["Posterior", "tri_solve", "variance", "invariant_amplitude", "predictive_std", "extrapolation"]


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
    Kmm : (M, M) array or None
        Sparse covariance divided by ``delta^2``; None when not kept (a fit
        frees it once ``Lmm`` is known: :meth:`sparse_kernel` recomputes it).
    Lmm : (M, M) array
        Lower Cholesky factor of ``Kmm``.
    Lc : (M, M) array
        Lower Cholesky factor of the whitened posterior precision.
    a : (M,) array
        Whitened posterior mean.
    alpha : (M + S,) array
        Weights of the sparse kernels in the mean (eV), then the posterior
        mean of the per-species offset corrections (eV/atom).
    offset_species : (S,) int array
        Species of the offset parameters (empty: no offset parameters).
    kappa : float
        Prior std of an offset parameter in units of ``delta`` (per atom).
    pair : kernelpot.gp.twobody.PairTerm or None
        The two-body term, whose ``P`` columns follow SOAP's ``M`` (``Kmm``,
        ``Lmm`` and the weights then have ``M + P`` kernel entries).
    """

    sparse: SparseSet
    zeta: float
    delta: float
    Kmm: np.ndarray | None
    Lmm: np.ndarray
    Lc: np.ndarray
    a: np.ndarray
    alpha: np.ndarray
    offset_species: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    kappa: float = 0.0
    pair: object = None

    @classmethod
    def from_statistics(cls, theta: np.ndarray, stats: GroupStats, sparse: SparseSet, zeta: float,
                        Kmm: np.ndarray | None, Lmm: np.ndarray, offset_species=(), kappa: float = 0.0,
                        pair=None) -> "Posterior":
        """Solve for the posterior given log hyperparameters and whitened statistics."""
        with _threads.limit(blas_threads=_threads.threads_for_matrix(stats.D.shape[1])):
            Lc, a, u, _ = posterior_factor(theta, stats)
        post = cls(sparse, float(zeta), float(np.exp(theta[0])), Kmm, Lmm, Lc, a, None,
                   np.asarray(offset_species, dtype=int), float(kappa), pair)
        post.alpha = post._weights(a)
        return post

    def sparse_kernel(self) -> np.ndarray:
        """``Kmm``: the kept matrix, or recomputed exactly as the fit computed it (``model_kernel``)."""
        if self.Kmm is not None:
            return self.Kmm
        from kernelpot.gp.design import model_kernel
        return model_kernel(self.sparse, self.zeta, self.pair)

    @property
    def n_offsets(self) -> int:
        return len(self.offset_species)

    @property
    def n_kernel(self) -> int:
        """Kernel columns: ``M`` sparse environments plus the two-body term's ``P``."""
        return self.sparse.size + (0 if self.pair is None else self.pair.size)

    def _weights(self, a):
        """Kernel weights and offset corrections from whitened weights ``a`` (M + S,) or (M + S, k)."""
        M = self.n_kernel
        u = self.delta ** 2
        return np.concatenate([u * tri_solve(self.Lmm.T, a[:M], lower=False), u * self.kappa * a[M:]])

    def _offset_columns(self, numbers) -> np.ndarray:
        """``kappa`` times the atom count of each offset species, (S,)."""
        return offset_column(numbers, self.offset_species, self.kappa)

    # -------------------------------------------------------------- mean
    def mean(self, feat, volume, forces=True, stress=False, alpha=None) -> dict:
        """Latent local energies (n,), forces (n, 3) and stress (6,) of one structure's features.

        The local energies include the fitted offset corrections.
        """
        w = self.alpha if alpha is None else alpha
        M, K = self.sparse.size, self.n_kernel
        out = frame_mean(feat, self.sparse, w[:M], self.zeta, volume, forces=forces, stress=stress)
        if self.pair is not None:
            d = self.pair.design(feat.pairs, volume, forces=forces, stress=stress)
            out["energies"] = out["energies"] + d["local"] @ w[M:K]
            if forces:
                out["forces"] = out["forces"] + (d["forces"] @ w[M:K]).reshape(-1, 3)
            if stress:
                out["stress"] = out["stress"] + d["stress"] @ w[M:K]
        return self._add_offsets(out, feat.numbers, w)

    def mean_from_design(self, d: dict, numbers, alpha=None) -> dict:
        """:meth:`mean` from design rows already computed (:meth:`design`): one product per kind.

        With uncertainties the rows are needed anyway, so the mean costs no
        second pass over the descriptor gradients.
        """
        w = self.alpha if alpha is None else alpha
        K = self.n_kernel
        out = {"energies": d["local"] @ w[:K]}
        if "forces" in d:
            out["forces"] = (d["forces"] @ w[:K]).reshape(-1, 3)
        if "stress" in d:
            out["stress"] = d["stress"] @ w[:K]
        return self._add_offsets(out, numbers, w)

    def _add_offsets(self, out: dict, numbers, w) -> dict:
        """``out["energies"]`` plus each atom's fitted offset correction ``w[K + s]`` (``out``, updated)."""
        if self.n_offsets:
            shift = dict(zip(self.offset_species.tolist(), w[self.n_kernel:]))
            out["energies"] = out["energies"] + np.array([shift.get(int(z), 0.0) for z in numbers])
        return out

    def design(self, feat, volume, forces=True, stress=False) -> dict:
        """Reduced design rows of all kernel terms (see :func:`kernelpot.gp.design.design_rows`)."""
        return design_rows(feat, self.sparse, self.zeta, self.pair, volume, forces=forces, stress=stress)

    # ---------------------------------------------------------- variance
    def latent_variance(self, rows: np.ndarray, prior: np.ndarray, offsets: np.ndarray | None = None,
                        parts: bool = False):
        """Epistemic variance (squared units of the observation) of observations with design ``rows`` (n, M).

        ``offsets`` (S, n): their offset columns (:meth:`_offset_columns` for a
        total energy; zeros, the default, for forces and stresses).  The
        offsets are represented exactly, so they add nothing to the Nystrom
        residual; their posterior variance enters through ``Lc``.  With
        ``parts``, returns ``(total, nystrom)``: the Nystrom residual is the
        part the calibration weights separately (:mod:`kernelpot.gp.calibration`).
        """
        v1 = tri_solve(self.Lmm, rows.T)
        # the two-body columns are exact (kernelpot.gp.twobody): only SOAP's leave a Nystrom residual
        nystrom = prior - np.sum(v1[:self.sparse.size] ** 2, axis=0)
        if self.n_offsets:
            extra = np.zeros((self.n_offsets, v1.shape[1])) if offsets is None else offsets
            v1 = np.vstack([v1, extra])
        v2 = tri_solve(self.Lc, v1)
        nystrom = self.delta ** 2 * np.maximum(nystrom, 0.0)
        var = nystrom + self.delta ** 2 * np.sum(v2 ** 2, axis=0)
        return (var, nystrom) if parts else var

    def latent_variances(self, feat, volume, forces=True, stress=False, design=None) -> dict:
        """Epistemic variances and their Nystrom parts, ``{kind: (total, nystrom)}``.

        Kinds: ``energy`` (total energy, shape (1,)), ``energies`` (local
        energies, (n,)), ``forces`` ((n, 3)) and ``stress`` ((6,)).
        """
        d = self.design(feat, volume, forces, stress) if design is None else design
        n = len(feat.numbers)
        E = d["energy"][None, :]
        prior_e = np.atleast_1d(prior_of(prior_energy_var, feat, self.sparse, self.zeta))
        out = {"energy": self.latent_variance(E, prior_e,
                                              self._offset_columns(feat.numbers)[:, None], parts=True)}
        # local energies: each atom's kernel rows (SOAP's and its half of the pair terms, from the
        # design above), and its own offset column
        K = d["local"]
        onehot = self.kappa * (self.offset_species[:, None] == np.asarray(feat.numbers)[None, :]).astype(float)
        out["energies"] = self.latent_variance(K, prior_of(prior_local_var, feat, self.sparse, self.zeta), onehot,
                                               parts=True)
        if forces:
            F = d["forces"]
            v, ny = self.latent_variance(F, prior_of(prior_force_var, feat, self.sparse, self.zeta).ravel(), parts=True)
            out["forces"] = (v.reshape(n, 3), ny.reshape(n, 3))
        if stress:
            S = d["stress"]
            out["stress"] = self.latent_variance(S, prior_of(prior_stress_var, feat, self.sparse, self.zeta, volume),
                                                 parts=True)
        return out

    # ----------------------------------------------------------- samples
    def sample_weights(self, n_samples: int, random_state=0) -> np.ndarray:
        """Samples of the weights (kernel weights and offset corrections) from the posterior, (n_samples, M + S).

        Whitened weights ``a + Lc^-T z / delta`` (``z ~ N(0, I)``) mapped as ``alpha``:
        for the kernel weights ``Cov = delta^2 L^-T Chat^-1 L^-1``.
        """
        rng = np.random.default_rng(random_state)
        z = rng.standard_normal((len(self.a), n_samples))
        a_s = self.a[:, None] + tri_solve(self.Lc.T, z, lower=False) / self.delta
        return self._weights(a_s).T


def invariant_amplitude(kind: str, var: np.ndarray) -> np.ndarray:
    """A rotation-invariant size of the latent variance, per observation, shaped like ``var``.

    forces (n, 3): the mean over an atom's three components (a third of the
    trace of its force covariance); stress (6,) in Voigt order:
    ``(sum of the diagonal + 2 sum of the off-diagonal variances) / 9`` (the
    Frobenius norm of the stress variance over its nine entries); energy: itself.
    """
    var = np.asarray(var, float)
    if kind == "forces":
        return np.repeat(var.reshape(-1, 3).mean(axis=1, keepdims=True), 3, axis=1).reshape(var.shape)
    if kind == "stress":
        v = var.reshape(-1, 6)
        amp = (v[:, :3].sum(axis=1) + 2.0 * v[:, 3:].sum(axis=1)) / 9.0
        return np.repeat(amp[:, None], 6, axis=1).reshape(var.shape)
    return var


def _full_weights(weights) -> tuple:
    """``(w_a, w_p, w_n, gamma, v_ref, a_max, v_fade, n_max, x_max)`` from any stored form.

    Files before 0.2 hold ``(w_a, w_e)``; 0.2 files hold six entries, whose
    weights faded from ``v_ref`` on (``v_fade = v_ref``); seven entries are
    weights from before the Nystrom reach ``n_max`` (read as infinite: the
    Nystrom weight fades only with the whole amplitude, as it did); eight
    are from before ``x_max``, the reference of :func:`extrapolation` (read
    as ``a_max``, as it was).
    """
    w = tuple(float(x) for x in weights)
    if len(w) == 2:
        return (w[0], w[1], w[1], 1.0, np.inf, np.inf, np.inf, np.inf, np.inf)
    if len(w) == 6:
        return w + (w[4], np.inf, w[5])
    if len(w) == 7:
        return w + (np.inf, w[5])
    if len(w) == 8:
        return w + (w[5],)
    if len(w) != 9:
        raise ValueError(f"calibration weights must have 2, 6, 7, 8 or 9 entries, got {w}")
    return w


def _fade(onset, amplitude):
    """``clip(1 - onset / amplitude, 0, 1)``: 0 up to ``onset``, towards 1 far beyond it (0 for a zero amplitude)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(np.nan_to_num(1.0 - onset / amplitude, nan=0.0, neginf=0.0), 0.0, 1.0)


def variance(weights, noise, var_epistemic, amplitude=None, nystrom=None, nystrom_amplitude=None):
    """Calibrated epistemic and total variance.

    With weights ``(w_a, w_p, w_n, gamma, v_ref, a_max, v_fade, n_max, x_max)`` (the
    calibration model of :mod:`kernelpot.gp.calibration`; ``x_max`` is only
    :func:`extrapolation`'s; ``(w_a, w_e)``
    means ``w_p = w_n = w_e, gamma = 1`` and no fading)::

        epistemic = (W_p (v - v_nys) + W_n v_nys) (clip(a, v_ref, a_max) / v_ref)^(gamma - 1)
        W_p       = w_p + max(0, 1 - w_p) fade(v_fade, a)
        W_n       = w_n + max(0, 1 - w_n) max(fade(v_fade, a), fade(n_max, a_nys))
        fade(o, x) = clip(1 - o / x, 0, 1)
        total     = epistemic + w_a noise^2

    ``a_nys`` is the amplitude of the Nystrom residual alone and ``n_max``
    the largest one among the calibration's observations (each measured
    without its own structure's sparse points): ``w_n`` was fitted
    where the sparse set represents the data, and the residual is data-free
    (the same in every held-out set), so beyond ``n_max`` nothing measured
    it.  A Ni2 dimer asked of a model of Ni3Al cells had a residual 100x
    ``n_max`` but a total amplitude far below ``a_max`` (set by a held-out
    composition, whose variance is the weights'): ``w_n = 0.004`` made its
    force sigma 8x narrower than the GP's own, 46 sigma from the error.

    A weight below one (the calibration data say the GP variance is too
    wide there) applies in full up to ``v_fade`` and fades back to one beyond
    it: held-out residuals vouch for the variance only where they were
    measured, and far from the data the GP's own variance stands.
    ``v_fade`` lies between ``v_ref`` and ``a_max`` and is chosen by the
    leave-one-group-out likelihood.

    ``v`` is the latent variance, ``v_nys`` its Nystrom residual (default 0)
    and ``a`` its rotation-invariant amplitude (:func:`invariant_amplitude`;
    default ``v``), so the calibrated variances of a force or stress still
    transform as a tensor's do.  ``gamma`` says how much faster than the
    latent variance the error grows beyond ``v_ref`` (the 90th percentile of
    the training set's held-out observations); below ``v_ref`` and beyond
    ``a_max`` (the largest amplitude the calibration data covered) the
    variance is linear in ``v``: the fitted growth is neither applied in
    distribution nor extrapolated.

    Returns
    -------
    epistemic, total : arrays shaped like ``var_epistemic``
    """
    wa, wp, wn, gamma, vref, amax, vfade, nmax, _ = _full_weights(weights)
    v = np.maximum(np.asarray(var_epistemic, float), 0.0)
    ny = np.zeros_like(v) if nystrom is None else np.clip(np.asarray(nystrom, float), 0.0, v)
    amp = v if amplitude is None else np.maximum(np.asarray(amplitude, float), 0.0)
    namp = ny if nystrom_amplitude is None else np.maximum(np.asarray(nystrom_amplitude, float), 0.0)
    fade = _fade(vfade, amp)
    # a weight that shrinks the variance holds where the calibration data were; it fades back to
    # the GP's own variance (weight 1) where the latent variance exceeds them, and the Nystrom
    # weight also where the residual alone exceeds every residual it was fitted on
    fade_n = np.maximum(fade, _fade(nmax, namp))
    epi = (wp + max(0.0, 1.0 - wp) * fade) * (v - ny) + (wn + max(0.0, 1.0 - wn) * fade_n) * ny
    if gamma != 1.0:
        epi = epi * (np.clip(amp, vref, max(amax, vref)) / vref) ** (gamma - 1.0)
    return epi, epi + wa * np.square(noise)


def extrapolation(var_epistemic, weights, kind="energy", n_atoms=1, nystrom=None) -> float:
    """How far a prediction lies beyond what the calibration's held-out structures reached.

    The larger of two ratios, each the largest over the prediction's
    observations: the rotation-invariant amplitude of the latent variance
    (:func:`invariant_amplitude`; per-atom energy units for ``kind="energy"``,
    as in :func:`predictive_std`) over ``x_max``, and the amplitude of the
    Nystrom residual ``nystrom`` over ``n_max``
    (:mod:`kernelpot.gp.calibration`).  Both references are the largest
    among the training structures held out one at a time, each measured as a
    new structure's would be, with its own environments also left out of the
    sparse set (``x_max``: its posterior part plus that residual, and at
    least ``a_max``, the largest amplitude the calibration was fitted on).
    With its own environments kept as sparse points a held-out structure's
    variance is what no new structure sees: six 4-atom EMT Al cells, every
    atom a sparse point, made new cells drawn alike read up to 104.

    At most 1: the calibration's held-out structures reached this variance.
    Above 1: beyond them; past ``a_max`` and ``n_max`` the calibration's
    weights fade back to the GP's own and its growth is not extrapolated, so
    the sigma there is checked by no held-out error: read it as a lower
    bound.  NaN when the weights carry no ``a_max`` (uncalibrated, or a file
    before 0.2).  The energy's amplitude is per atom: a cell smaller than or
    more symmetric than every training cell (its atoms' local energies more
    alike) reads more than the training cells for the same environments.
    """
    w = _full_weights(weights)
    amax, nmax, xmax = w[5], w[7], max(w[8], w[5])
    if not (np.isfinite(amax) and amax > 0.0):
        return float("nan")
    out = float(np.max(_amplitude(kind, var_epistemic, n_atoms), initial=0.0) / xmax)
    if nystrom is not None and np.isfinite(nmax) and nmax > 0.0:
        out = max(out, float(np.max(_amplitude(kind, nystrom, n_atoms), initial=0.0) / nmax))
    return out


def predictive_std(var_epistemic, noise, weights=(1.0, 1.0), kind="energy", nystrom=None, n_atoms=1):
    """Epistemic and total std of observations of ``kind`` from their latent variance and noise std.

    ``weights`` and ``nystrom`` as in :func:`variance`.  ``n_atoms``: the
    number of atoms of the structure when ``var_epistemic`` is the variance
    of its total energy (eV^2).  The calibration's thresholds ``v_ref`` and
    ``a_max`` are amplitudes of per-atom energies ((eV/atom)^2, the unit the
    training energies are calibrated in), so the amplitude compared with them
    is ``var / n_atoms^2``; the variances themselves stay total.  With this,
    the calibrated energy std per atom of a crystal is the same for any
    supercell of it.
    """
    amp = _amplitude(kind, var_epistemic, n_atoms)
    namp = None if nystrom is None else _amplitude(kind, nystrom, n_atoms)
    epi, total = variance(weights, noise, var_epistemic, amp, nystrom, namp)
    return np.sqrt(epi), np.sqrt(total)


def _amplitude(kind, var, n_atoms=1):
    """:func:`invariant_amplitude`, in per-atom energy units for a total energy (see :func:`predictive_std`)."""
    amp = invariant_amplitude(kind, np.asarray(var, float))
    return amp / float(n_atoms) ** 2 if kind == "energy" else amp
