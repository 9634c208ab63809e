"""SparseGP: a sparse Gaussian-process potential fitted to energies, forces and stresses.

Model
-----
The total energy of a structure is a sum of fixed physics and local terms,

    E = E_baseline + sum_i (e0[Z_i] + mu[Z_i]) + sum_i e(x_i),

where ``e0`` are isolated-atom energies (taken from isolated-atom frames when the
training data contain them, otherwise fitted by least squares on composition),
``mu`` a per-species mean offset fitted by least squares on what remains, and
``e`` a Gaussian process over unit SOAP vectors ``x_i`` with kernel
``delta^2 (x.x')^zeta`` between environments of the same central species.
Forces ``-dE/dR`` and stresses ``(1/V) dE/deps`` enter through exact kernel
derivatives.  The sparse approximation is DTC (deterministic training
conditional) on ``M`` sparse environments per species.

Noise (aleatoric uncertainty)
-----------------------------
``sigma_energy`` is **per atom**: the noise of the total energy of a structure of
``n`` atoms is ``n * sigma_energy`` (equivalently, ``sigma_energy`` is the noise of
``E/n``, the quantity people quote in meV/atom).  ``sigma_force`` is per force
component (eV/Å), ``sigma_stress`` per stress component (eV/Å^3).  With
``noise_per_config_type=True`` each config_type gets its own three sigmas.
Noise and ``delta`` are set by maximising the marginal likelihood unless given,
except the energy noise, which by default maximises the leave-one-out
predictive density of the training energies (see ``energy_noise``).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg as sla
from sklearn.base import BaseEstimator, clone

from kernelpot.gp.design import SparseSet, frame_design, frame_mean
from kernelpot.gp.labels import frame_labels, is_periodic, is_isolated_atom, config_type
from kernelpot.gp.likelihood import (GroupStats, optimize_hyperparameters, whiten, select_noise_by_loo,
                                     neg_log_marginal_likelihood, posterior_factor)
from kernelpot.gp.select import select_sparse, prune_dependent
from kernelpot.gp.solve import safe_cholesky
from kernelpot.gp.variance import prior_energy_var, prior_force_var, prior_stress_var
from kernelpot.kernels import dot_kernel

__all__ = ["SparseGP"]

KINDS = ("energy", "forces", "stress")
# Noise floors: below these, DFT labels are not reproducible anyway, and a
# floor keeps the posterior precision well conditioned.
_NOISE_FLOOR = {"energy": 1e-4, "forces": 1e-3, "stress": 1e-5}
_NOISE_INIT = {"energy": 0.005, "forces": 0.1, "stress": 0.002}
_DELTA_BOUNDS = (1e-3, 1e2)
# Sparse points whose kernel function has conditional variance below this
# (relative) given the others are dropped: they add nothing the model can
# resolve and make Kmm singular to working precision.
_SPARSE_TOL = 1e-10
_KMM_JITTER = 1e-10
# fewer energies than this: leave-one-out is too noisy a criterion, keep the evidence
_MIN_LOO_ENERGIES = 10


def _progress(it, verbose, desc, total=None):
    if not verbose:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, desc=desc, total=total, leave=False)


class SparseGP(BaseEstimator):
    """Sparse GP interatomic potential with derivative observations.

    Parameters
    ----------
    descriptor : SOAP, optional
        Descriptor settings; species are taken from the training data at fit
        time.  Default ``SOAP(r_cut=5.0, n_max=8, l_max=6, atom_sigma=0.5)``.
    n_sparse : int
        Sparse environments per species (fewer if the data have fewer).
    sparse_method : {"cur", "fps", "random"}
        How sparse environments are chosen (see :mod:`kernelpot.gp.select`).
    sparse_points : dict, optional
        User-chosen sparse environments: ``{(frame_index, atom_index), ...}``
        given as a list of pairs; overrides ``n_sparse``/``sparse_method``.
    zeta : float
        Kernel exponent.
    sigma_energy, sigma_force, sigma_stress : float, optional
        Fixed noise (eV/atom, eV/Å, eV/Å^3).  ``None``: learned.
    delta : float, optional
        Fixed kernel scale (eV).  ``None``: learned.
    noise_per_config_type : bool
        Separate noise per ``atoms.info["config_type"]``.
    e0 : "auto" or dict
        Isolated-atom energies {symbol or Z: eV}; "auto" takes them from
        isolated-atom frames when present, else fits them on composition.
    baseline : baseline object, optional
        Fixed physics (see :mod:`kernelpot.baselines`) subtracted before the fit
        and added back in predictions.
    fit_forces, fit_stress : bool
        Use force / stress labels when present.
    energy_noise : {"loo", "evidence"}
        How the (learned) energy noise is chosen.  ``"loo"`` (default):
        maximise the closed-form leave-one-out predictive density of the
        training energies, with ``delta`` and the force/stress noise from the
        evidence.  A few hundred energies sit beside tens of thousands of force
        components, and the evidence then lets the energy noise absorb misfit
        (FLARE's runaway energy noise is the extreme case); leave-one-out asks
        directly how well unseen energies are predicted.  ``"evidence"``:
        maximise the marginal likelihood for every hyperparameter.
    calibrate : bool
        After the fit, compute the closed-form leave-one-out of every training
        structure (:func:`kernelpot.uq.leave_one_out`, about the cost of
        assembling the fit once more) and weight the aleatoric and epistemic
        variance of each kind so that those held-out residuals are best
        predicted (:func:`kernelpot.uq.recalibrate`).  The likelihood does not
        make the raw variances calibrated: on a molecule the raw force sigma
        were 9x too wide, on Si 1.2x.  The diagnostics are kept in
        ``training_diagnostics_`` (reused by :func:`kernelpot.screen`); the
        weights in ``std_weights_``.  ``refit``/``update`` keep the weights
        and drop the diagnostics.  ``False``: raw GP variances.
    random_state : int
        Seed for sparse selection; the fit is deterministic given it.
    verbose : bool
        Progress bars and a memory estimate.
    client : dask.distributed.Client, optional
        Compute descriptors, the design statistics and the calibration's
        leave-one-out on Dask workers (same result as in memory, to
        round-off); the solve stays local since it is O(M^3) on M x M matrices.
    chunk_size : int
        Frames per chunk of assembly (and per Dask task).

    Examples
    --------
    >>> import kernelpot
    >>> frames = kernelpot.read("data/emt_cu_train.xyz")      # doctest: +SKIP
    >>> model = kernelpot.SparseGP().fit(frames)               # doctest: +SKIP
    >>> atoms.calc = model.calculator()                        # doctest: +SKIP
    """

    def __init__(self, descriptor=None, n_sparse=1000, sparse_method="cur", sparse_points=None,
                 zeta=4.0, sigma_energy=None, sigma_force=None, sigma_stress=None, delta=None,
                 noise_per_config_type=False, e0="auto", baseline=None, fit_forces=True,
                 fit_stress=True, energy_noise="loo", calibrate=True, random_state=0, verbose=False,
                 client=None, chunk_size=16):
        self.descriptor = descriptor
        self.n_sparse = n_sparse
        self.sparse_method = sparse_method
        self.sparse_points = sparse_points
        self.zeta = zeta
        self.sigma_energy = sigma_energy
        self.sigma_force = sigma_force
        self.sigma_stress = sigma_stress
        self.delta = delta
        self.noise_per_config_type = noise_per_config_type
        self.e0 = e0
        self.baseline = baseline
        self.fit_forces = fit_forces
        self.fit_stress = fit_stress
        self.energy_noise = energy_noise
        self.calibrate = calibrate
        self.random_state = random_state
        self.verbose = verbose
        self.client = client
        self.chunk_size = chunk_size

    # ------------------------------------------------------------------ fit
    def _check_params(self):
        if not (isinstance(self.n_sparse, (int, np.integer)) and self.n_sparse >= 1):
            raise ValueError(f"n_sparse must be a positive integer, got {self.n_sparse!r}")
        if self.energy_noise not in ("loo", "evidence"):
            raise ValueError(f"energy_noise must be 'loo' or 'evidence', got {self.energy_noise!r}")
        if not (np.isfinite(self.zeta) and self.zeta >= 1):
            raise ValueError(f"zeta must be >= 1, got {self.zeta!r}")
        for name in ("sigma_energy", "sigma_force", "sigma_stress", "delta"):
            v = getattr(self, name)
            if v is not None and not (np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number or None (learned), got {v!r}")

    def _make_descriptor(self, species):
        from kernelpot.descriptors import SOAP
        desc = SOAP() if self.descriptor is None else clone(self.descriptor)
        if desc.species is None:
            desc.set_params(species=[int(z) for z in species])
        return desc

    def fit(self, frames, y=None):
        """Fit to labelled frames.

        Parameters
        ----------
        frames : list of ase.Atoms
            Each with a calculator holding reference ``energy`` and, where
            available, ``forces`` and ``stress``.
        y : ignored
            Present for scikit-learn compatibility; labels live on the frames.

        Returns
        -------
        self
        """
        self._check_params()
        frames = list(frames)
        if len(frames) == 0:
            raise ValueError("fit needs at least one labelled frame, got an empty list")
        labels = [frame_labels(a, i) for i, a in enumerate(frames)]
        for i, (a, lab) in enumerate(zip(frames, labels)):
            if not lab:
                raise ValueError(f"frame {i} ({config_type(a)!r}): no reference labels "
                                 "(attach energy/forces with a SinglePointCalculator or use kernelpot.read)")
            for k, v in lab.items():
                if not np.all(np.isfinite(v)):
                    raise ValueError(f"frame {i} ({config_type(a)!r}): {k} contains NaN or inf")
        self.species_ = np.unique(np.concatenate([a.numbers for a in frames])).astype(int)
        self.descriptor_ = self._make_descriptor(self.species_)
        self._fit_offsets(frames, labels)
        feats0 = self._features(frames)
        self.sparse_ = self._select_sparse(frames, feats0)
        M = self.sparse_.size
        self._Kmm = self._sparse_kernel()
        self._Lmm, _ = safe_cholesky(self._Kmm, "sparse kernel Kmm", jitter=_KMM_JITTER)
        group_names = self._group_names(frames, labels)
        self.noise_groups_ = group_names
        if self.verbose:
            n_obs = sum(sum(np.size(v) for v in lab.values()) for lab in labels)
            print(f"kernelpot: {len(frames)} frames, {n_obs} observations, {M} sparse points; "
                  f"peak memory of assembly ~{self._memory_estimate(frames) / 2**20:.0f} MiB")
        stats = self._accumulate(frames, labels)
        self._stats = stats
        theta0, bounds, fixed = self._theta_init(stats)
        bar = None
        if self.verbose:
            from tqdm.auto import tqdm
            bar = tqdm(desc="hyperparameters (-log L)", leave=False, unit=" eval")
        theta, res = optimize_hyperparameters(
            stats, theta0, bounds, fixed,
            progress=None if bar is None else (lambda v: (bar.update(1), bar.set_postfix_str(f"{v:.6g}"))))
        if bar is not None:
            bar.close()
        theta = self._select_energy_noise(stats, theta, bounds, fixed)
        self._set_theta(theta)
        self.log_marginal_likelihood_ = -float(neg_log_marginal_likelihood(theta, stats, grad=False))
        at_bound = [name for name, t, (lo, hi), f in zip(["delta"] + group_names, theta, bounds, fixed)
                    if not f and (t - lo < 1e-3 or hi - t < 1e-3)]
        if at_bound:
            warnings.warn(f"hyperparameters at their bounds after optimisation: {at_bound}; "
                          "the data may not constrain them (see model.noise_)", RuntimeWarning, stacklevel=2)
        self._solve()
        self._train_frames = frames
        self.std_weights_ = {}
        self.__dict__.pop("training_diagnostics_", None)
        if self.calibrate:
            from kernelpot.uq import leave_one_out, recalibrate
            self.training_diagnostics_ = leave_one_out(self)
            recalibrate(self, self.training_diagnostics_)
        return self

    def _select_energy_noise(self, stats, theta, bounds, fixed):
        """Energy noise by leave-one-out predictive density (see ``energy_noise``)."""
        if self.energy_noise == "evidence":
            return theta
        groups = [k for k, g in enumerate(stats.names) if g.split(":")[0] == "energy"]
        n_rows = sum(len(y) for y in stats.loo_y)
        if not groups or n_rows < _MIN_LOO_ENERGIES:
            return theta
        return select_noise_by_loo(stats, theta, groups, bounds, fixed)

    def _optimize_or_keep(self, optimize):
        if optimize:
            theta0, bounds, fixed = self._theta_init(self._stats)
            theta0[~fixed] = self.theta_[~fixed]
            theta, _ = optimize_hyperparameters(self._stats, theta0, bounds, fixed, scan_delta=False)
            theta = self._select_energy_noise(self._stats, theta, bounds, fixed)
            self._set_theta(theta)
        self.log_marginal_likelihood_ = -float(neg_log_marginal_likelihood(self.theta_, self._stats, grad=False))
        self._solve()

    def refit(self, frames, optimize: bool = False):
        """Refit the weights on ``frames`` keeping sparse set, descriptor and offsets.

        Hyperparameters are kept too unless ``optimize``.  This is the
        brute-force counterpart of the closed-form leave-one-out in
        :mod:`kernelpot.uq`, and the cheap path for active learning.

        Returns
        -------
        self
        """
        self._check_fitted()
        frames = list(frames)
        labels = self._labels_in_groups(frames)
        stats = GroupStats.empty(self.noise_groups_, self.sparse_.size)
        for a, lab in zip(frames, labels):
            self._add_frame(stats, a, lab)
        self._stats = stats
        self._train_frames = frames
        self.__dict__.pop("training_diagnostics_", None)
        self._optimize_or_keep(optimize)
        return self

    def update(self, frames, optimize: bool = True):
        """Add labelled ``frames`` to the training set without recomputing the old ones.

        The sparse set is unchanged, so the cost is that of the new frames'
        descriptors and rows plus O(M^3); hyperparameters are re-optimised
        (cheap: the likelihood only needs the accumulated statistics) unless
        ``optimize=False``.  New config_types fall into existing noise groups
        by kind when ``noise_per_config_type`` is off; with it on, frames of an
        unseen config_type raise ``ValueError`` (refit instead).

        Returns
        -------
        self
        """
        self._check_fitted()
        frames = list(frames)
        for a, lab in zip(frames, self._labels_in_groups(frames)):
            self._add_frame(self._stats, a, lab)
        self._train_frames = list(self._train_frames) + frames
        self.__dict__.pop("training_diagnostics_", None)
        self._optimize_or_keep(optimize)
        return self

    def _fit_offsets(self, frames, labels):
        """Isolated-atom energies e0_ and per-species mean offsets mu_."""
        Zs = list(self.species_)
        e0 = {}
        if isinstance(self.e0, dict):
            from ase.data import atomic_numbers
            e0 = {int(atomic_numbers.get(k, k)) if not isinstance(k, (int, np.integer)) else int(k): float(v)
                  for k, v in self.e0.items()}
        elif self.e0 == "auto":
            for a, lab in zip(frames, labels):
                if is_isolated_atom(a) and "energy" in lab:
                    e0.setdefault(int(a.numbers[0]), lab["energy"] - self._baseline_compute(a)[0])
        elif self.e0 is not None:
            raise ValueError(f"e0 must be 'auto', None or a dict {{element: eV}}, got {self.e0!r}")
        self.e0_ = {z: e0.get(z, 0.0) for z in Zs}
        # Least squares of what e0 leaves over, on composition: for species with no
        # isolated-atom reference this is their e0; for the others a mean offset.
        rows, ys = [], []
        for a, lab in zip(frames, labels):
            if "energy" in lab and not is_isolated_atom(a):
                comp = np.array([np.sum(a.numbers == z) for z in Zs], float)
                rows.append(comp)
                ys.append(lab["energy"] - self._baseline_compute(a)[0] - sum(self.e0_[z] * c for z, c in zip(Zs, comp)))
        mu = np.zeros(len(Zs))
        if rows:
            A, yv = np.array(rows), np.array(ys)
            mu = np.linalg.lstsq(A, yv, rcond=None)[0]
        self.mean_ = {z: float(m) for z, m in zip(Zs, mu)}
        self._offset = {z: self.e0_[z] + self.mean_[z] for z in Zs}

    def _baseline_compute(self, atoms):
        if self.baseline is None:
            n = len(atoms)
            return 0.0, np.zeros((n, 3)), np.zeros(6)
        return self.baseline.compute(atoms)

    def _select_sparse(self, frames, feats):
        X = np.concatenate([f.features for f in feats])
        Z = np.concatenate([f.numbers for f in feats])
        if self.sparse_points is not None:
            starts = np.cumsum([0] + [len(a) for a in frames])
            idx = np.array([starts[fi] + ai for fi, ai in self.sparse_points], dtype=int)
        else:
            idx = []
            for z in self.species_:
                cand = np.flatnonzero(Z == z)
                sel = cand[select_sparse(X[cand], int(self.n_sparse), self.sparse_method, self.random_state)]
                keep = prune_dependent(dot_kernel(X[sel], X[sel], self.zeta), _SPARSE_TOL)
                idx.append(sel[keep])
            idx = np.concatenate(idx)
        order = np.lexsort((idx, Z[idx]))
        idx = idx[order]
        self.sparse_index_ = idx
        return SparseSet(X[idx], Z[idx])

    def _sparse_kernel(self):
        S, Z = self.sparse_.X, self.sparse_.numbers
        return dot_kernel(S, S, self.zeta) * (Z[:, None] == Z[None, :])

    def _group_names(self, frames, labels):
        kinds = [k for k in KINDS if any(k in lab for lab in labels)
                 and (k != "forces" or self.fit_forces) and (k != "stress" or self.fit_stress)]
        if not self.noise_per_config_type:
            return kinds
        cts = sorted({config_type(a) for a in frames})
        return [f"{k}:{ct}" for k in kinds for ct in cts
                if any(k in lab and config_type(a) == ct for a, lab in zip(frames, labels))]

    def _group_of(self, kind, atoms):
        return f"{kind}:{config_type(atoms)}" if self.noise_per_config_type else kind

    def _chunks(self, n):
        step = max(int(self.chunk_size), 1)
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def _features(self, frames):
        """Descriptors without gradients (for sparse selection), on Dask workers when ``client``."""
        if self.client is None:
            return [self.descriptor_.compute(a) for a in _progress(frames, self.verbose, "descriptors")]
        futs = self.client.map(_compute_features, [self.descriptor_] * len(self._chunks(len(frames))),
                               [frames[c] for c in self._chunks(len(frames))], pure=False)
        return [f for part in self.client.gather(futs) for f in part]

    def _accumulate(self, frames, labels):
        """Whitened statistics of all observations, in chunks of ``chunk_size`` frames.

        With a Dask ``client`` each chunk's statistics (M x M per noise group)
        are computed on a worker and summed here: the reduced normal equations
        of the whitened design, so memory per worker is O(M^2 + rows of one chunk).
        """
        M = self.sparse_.size
        chunks = self._chunks(len(frames))
        if self.client is None:
            stats = GroupStats.empty(self.noise_groups_, M)
            for i, a in _progress(list(enumerate(frames)), self.verbose, "design"):
                self._add_frame(stats, a, labels[i])
            return stats
        light = _worker_view(self)
        futs = self.client.map(_chunk_stats, [light] * len(chunks), [frames[c] for c in chunks],
                               [labels[c] for c in chunks], pure=False)
        stats = GroupStats.empty(self.noise_groups_, M)
        for part in _progress(self.client.gather(futs, asynchronous=False), self.verbose, "design", len(chunks)):
            stats.merge(part)
        return stats

    def _labels_in_groups(self, frames):
        """Labels of ``frames``, checking that each has a noise group in this model."""
        out = []
        for i, a in enumerate(frames):
            lab = frame_labels(a, i)
            for kind in lab:
                used = (kind != "stress" or self.fit_stress) and (kind != "forces" or self.fit_forces)
                g = self._group_of(kind, a)
                if used and g not in self.noise_groups_:
                    raise ValueError(f"frame {i} ({config_type(a)!r}): noise group {g!r} is not in this model "
                                     f"({self.noise_groups_}); use fit() to start again")
            out.append(lab)
        return out

    def _add_frame(self, stats, atoms, lab, sign=1.0):
        """Accumulate one frame's whitened observations into ``stats``."""
        gidx = {g: k for k, g in enumerate(stats.names)}
        rows, ys, scales, priors = self._training_rows(atoms, lab, priors=("energy",))
        for kind in rows:
            stats.add(gidx[self._group_of(kind, atoms)], whiten(self._Lmm, rows[kind]), ys[kind], scales[kind], sign,
                      prior=priors.get(kind))

    def _training_rows(self, atoms, lab, priors=False):
        """Reduced design rows, targets and noise scales of one frame's labels.

        With ``priors`` (True, or a tuple of kinds), also the reduced prior
        variance of those observations (same keys), as a fourth return value.
        """
        want_f = self.fit_forces and "forces" in lab
        want_s = self.fit_stress and "stress" in lab
        feat = self.descriptor_.compute(atoms, gradients=want_f, strain=want_s)
        vol = atoms.cell.volume if want_s else None
        d = frame_design(feat, self.sparse_, self.zeta, vol, forces=want_f, stress=want_s)
        eb, fb, sb = self._baseline_compute(atoms)
        rows, ys, scales = {}, {}, {}
        n = len(atoms)
        if "energy" in lab:
            rows["energy"] = d["energy"][None, :]
            ys["energy"] = np.array([lab["energy"] - eb - sum(self._offset[int(z)] for z in atoms.numbers)])
            scales["energy"] = np.array([float(n)])
        if want_f:
            rows["forces"] = d["forces"]
            ys["forces"] = (lab["forces"] - fb).ravel()
            scales["forces"] = None
        if want_s:
            rows["stress"] = d["stress"]
            ys["stress"] = lab["stress"] - sb
            scales["stress"] = None
        if not priors:
            return rows, ys, scales
        kinds = KINDS if priors is True else priors
        pv = {}
        if "energy" in rows and "energy" in kinds:
            pv["energy"] = np.array([prior_energy_var(feat, self.zeta)])
        if want_f and "forces" in kinds:
            pv["forces"] = prior_force_var(feat, self.zeta).ravel()
        if want_s and "stress" in kinds:
            pv["stress"] = prior_stress_var(feat, self.zeta, vol)
        return rows, ys, scales, pv

    def _theta_init(self, stats):
        names = stats.names
        theta0 = [np.log(self.delta if self.delta is not None else 1.0)]
        bounds = [tuple(np.log(_DELTA_BOUNDS))]
        fixed = [self.delta is not None]
        given = {"energy": self.sigma_energy, "forces": self.sigma_force, "stress": self.sigma_stress}
        for k, name in enumerate(names):
            kind = name.split(":")[0]
            n = max(stats.n[k], 1)
            rms = np.sqrt(stats.c[k] / n)
            lo = _NOISE_FLOOR[kind]
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

    def _set_theta(self, theta):
        self.theta_ = np.asarray(theta, float)
        self.delta_ = float(np.exp(theta[0]))
        self.noise_ = {g: float(np.exp(t)) for g, t in zip(self.noise_groups_, theta[1:])}

    def _solve(self):
        """Posterior-mean weights ``alpha_ = C^-1 beta = delta^2 L^-T a`` (see likelihood.WhitenedStats)."""
        self._Lc, a, u, _ = posterior_factor(self.theta_, self._stats)
        self._a = a
        self.alpha_ = u * _tri(self._Lmm.T, a, lower=False)

    def _memory_estimate(self, frames):
        """Bytes at the peak of assembly: the M x M group statistics plus one frame's rows."""
        M = self.sparse_.size
        G = max(len(getattr(self, "noise_groups_", KINDS)), 1)
        F = self.descriptor_.get_number_of_features()
        nmax = max(len(a) for a in frames)
        pairs = nmax * 60
        return 8 * (G * M * M + 3 * M * M + 3 * nmax * M + pairs * 3 * F + min(pairs, 4096) * 3 * M)

    # ------------------------------------------------------------- predict
    def _check_fitted(self):
        if not hasattr(self, "alpha_"):
            raise RuntimeError("this SparseGP is not fitted yet; call fit(frames) first")

    def _noise_for(self, kind, atoms):
        g = self._group_of(kind, atoms)
        if g in self.noise_:
            return self.noise_[g]
        vals = [v for k, v in self.noise_.items() if k.split(":")[0] == kind]
        return float(np.sqrt(np.mean(np.square(vals)))) if vals else 0.0

    def predict_frame(self, atoms, return_std=True, forces=True, stress=None, alpha=None, calibrated=True):
        """Predictions and uncertainties for one structure.

        Returns
        -------
        dict
            ``energy`` (eV), ``energies`` (n,), ``forces`` (n, 3), ``stress``
            (6,) (NaN when not periodic) and, with ``return_std``,
            ``energy_std``, ``forces_std``, ``stress_std`` (total) and
            ``*_std_epistemic`` (posterior of the latent GP only), both with the
            weights of :func:`kernelpot.uq.recalibrate` when it was run
            (``std_weights_``) unless ``calibrated=False`` (raw GP variances).
            ``energies`` includes e0 and mean offsets; a baseline's energy is
            shared equally among atoms.  ``alpha`` replaces the posterior-mean
            weights (used for posterior samples).
        """
        self._check_fitted()
        missing = set(np.unique(atoms.numbers)) - set(self.species_.tolist())
        if missing:
            from ase.data import chemical_symbols
            raise ValueError(f"structure contains elements {[chemical_symbols[z] for z in sorted(missing)]} "
                             f"that the model was not trained on (trained: "
                             f"{[chemical_symbols[z] for z in self.species_]})")
        per = is_periodic(atoms)
        stress = per if stress is None else (stress and per)
        feat = self.descriptor_.compute(atoms, gradients=forces, strain=stress)
        vol = atoms.cell.volume if stress else None
        m = frame_mean(feat, self.sparse_, self.alpha_ if alpha is None else alpha, self.zeta, vol, forces=forces, stress=stress)
        eb, fb, sb = self._baseline_compute(atoms)
        n = len(atoms)
        offs = np.array([self._offset[int(z)] for z in atoms.numbers])
        out = {"energies": m["energies"] + offs + eb / n}
        out["energy"] = float(out["energies"].sum())
        if forces:
            out["forces"] = m["forces"] + fb
        out["stress"] = m["stress"] + sb if stress else np.full(6, np.nan)
        if not return_std:
            return out
        d = frame_design(feat, self.sparse_, self.zeta, vol, forces=forces, stress=stress)
        d2 = self.delta_ ** 2

        def epi(rows, prior):
            # delta^2 (prior - k Kmm^-1 k) + k C^-1 k, with C^-1 = delta^2 L^-T Chat^-1 L^-1
            v1 = _tri(self._Lmm, rows.T)
            v2 = _tri(self._Lc, v1)
            var = d2 * (prior - np.sum(v1 ** 2, axis=0) + np.sum(v2 ** 2, axis=0))
            return np.maximum(var, 0.0)

        cal = getattr(self, "std_weights_", {}) if calibrated else {}

        def stds(kind, var_epi, noise):
            wa, we = cal.get(kind, (1.0, 1.0))
            return np.sqrt(we * var_epi), np.sqrt(we * var_epi + wa * noise ** 2)

        ve = epi(d["energy"][None, :], prior_energy_var(feat, self.zeta))[0]
        se, st = stds("energy", ve, n * self._noise_for("energy", atoms))
        out["energy_std_epistemic"], out["energy_std"] = float(se), float(st)
        if forces:
            vf = epi(d["forces"], prior_force_var(feat, self.zeta).ravel()).reshape(n, 3)
            out["forces_std_epistemic"], out["forces_std"] = stds("forces", vf, self._noise_for("forces", atoms))
        if stress:
            vs = epi(d["stress"], prior_stress_var(feat, self.zeta, vol))
            out["stress_std_epistemic"], out["stress_std"] = stds("stress", vs, self._noise_for("stress", atoms))
        else:
            out["stress_std_epistemic"] = np.full(6, np.nan)
            out["stress_std"] = np.full(6, np.nan)
        return out

    def predict(self, frames, return_std=True):
        """Batch predictions as arrays.

        Parameters
        ----------
        frames : list of ase.Atoms (or one Atoms)
        return_std : bool

        Returns
        -------
        dict of arrays
            ``energy`` (n_frames,), ``stress`` (n_frames, 6), ``forces``
            (n_atoms_total, 3), ``energies`` (n_atoms_total,), ``frame_index``
            (n_atoms_total,), ``n_atoms`` (n_frames,), plus ``*_std`` and
            ``*_std_epistemic`` for energy, forces and stress.
        """
        if hasattr(frames, "positions"):
            frames = [frames]
        res = [self.predict_frame(a, return_std=return_std)
               for a in _progress(frames, self.verbose, "predict")]
        out = {"n_atoms": np.array([len(a) for a in frames]),
               "frame_index": np.concatenate([np.full(len(a), i) for i, a in enumerate(frames)])}
        for key in res[0]:
            vals = [r[key] for r in res]
            out[key] = np.concatenate(vals) if np.ndim(vals[0]) >= 1 and key in (
                "forces", "forces_std", "forces_std_epistemic", "energies") else np.array(vals)
        return out

    def score(self, frames, y=None):
        """Negative force-component RMSE (eV/Å) on labelled frames (energy per atom if no forces).

        Higher is better, as scikit-learn expects from ``score``.
        """
        labels = [frame_labels(a, i) for i, a in enumerate(frames)]
        pred = self.predict(frames, return_std=False)
        if all("forces" in lab for lab in labels):
            ref = np.concatenate([lab["forces"] for lab in labels])
            return -float(np.sqrt(np.mean((pred["forces"] - ref) ** 2)))
        ref = np.array([lab["energy"] for lab in labels]) / pred["n_atoms"]
        return -float(np.sqrt(np.mean((pred["energy"] / pred["n_atoms"] - ref) ** 2)))

    # ---------------------------------------------------------- posterior
    def sample_weights(self, n_samples: int, random_state=0) -> np.ndarray:
        """Samples of the sparse weights from their posterior ``N(alpha_, C^-1)``.

        Returns
        -------
        (n_samples, M) array
        """
        self._check_fitted()
        rng = np.random.default_rng(random_state)
        z = rng.standard_normal((self.sparse_.size, n_samples))
        # Cov(alpha) = C^-1 = delta^2 L^-T Chat^-1 L^-1 = (delta L^-T Lc^-T)(...)^T
        eps = self.delta_ * _tri(self._Lmm.T, _tri(self._Lc.T, z, lower=False), lower=False)
        return (self.alpha_[:, None] + eps).T

    def posterior_calculators(self, n_samples: int = 10, random_state=0):
        """ASE calculators, one per posterior sample of the GP weights.

        A property computed with each gives its posterior spread (the Nyström
        residual of the DTC variance is not represented by weight samples).
        """
        from kernelpot.calculator import Calculator
        out = []
        for w in self.sample_weights(n_samples, random_state):
            m = _WeightView(self, w)
            out.append(Calculator(m, uncertainty=False))
        return out

    def calculator(self, uncertainty: bool = True):
        """An ASE calculator over this model (see :class:`kernelpot.Calculator`)."""
        from kernelpot.calculator import Calculator
        return Calculator(self, uncertainty=uncertainty)

    # --------------------------------------------------------------- files
    def save(self, path):
        """Write the fitted model to one ``.npz`` file (no pickle); see :mod:`kernelpot.modelfile`."""
        from kernelpot.modelfile import save_model
        save_model(self, path)


def _compute_features(descriptor, frames):
    return [descriptor.compute(a) for a in frames]


def _worker_view(model):
    """A copy of the partly fitted model without the client or training frames, to ship to workers."""
    import copy
    light = copy.copy(model)
    light.client = None
    light._train_frames = None
    light._stats = None
    return light


def _chunk_stats(model, frames, labels):
    stats = GroupStats.empty(model.noise_groups_, model.sparse_.size)
    for a, lab in zip(frames, labels):
        model._add_frame(stats, a, lab)
    return stats


def _tri(L, B, lower=True):
    """``L^-1 B`` for a triangular ``L``."""
    return sla.solve_triangular(L, B, lower=lower, check_finite=False)


class _WeightView:
    """A fitted model with its weights replaced by a posterior sample."""

    def __init__(self, model, alpha):
        self._model = model
        self._alpha = alpha

    def predict_frame(self, atoms, return_std=False, **kw):
        return self._model.predict_frame(atoms, return_std=False, alpha=self._alpha, **kw)
