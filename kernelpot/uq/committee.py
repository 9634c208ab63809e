"""Committee (ensemble) of sparse GP models: the baseline for the GP's own uncertainty.

A committee estimates uncertainty from the disagreement of models fitted to
perturbed versions of the problem, with no use of the GP posterior.  It is the
standard point of comparison for a Bayesian model's error bars (e.g. Musil et
al., J. Chem. Theory Comput. 15, 906 (2019); Imbalzano et al., J. Chem. Phys.
154, 074102 (2021)).  Three ways to perturb:

``"bootstrap"``
    Each member is fitted on ``n`` structures drawn with replacement from the
    ``n`` training structures.
``"subsample"``
    Each member is fitted on a random half of the structures (without
    replacement).
``"sparse"``
    Each member is fitted on all structures with a different random sparse
    set (the template's ``random_state`` is replaced by a per-member seed).

Isolated-atom frames (the energy references ``e0``) are given to every member
in the data-resampling methods: they define the energy zero, not a sample.
The committee spread is the sample standard deviation over members
(``ddof=1``); it is an epistemic uncertainty only, so ``*_std`` and
``*_std_epistemic`` are the same arrays.  Committees of few members are
usually over- or under-dispersed by a constant factor; calibrate it on
held-out data (or see :mod:`kernelpot.uq` for the GP's closed-form route).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, clone

from kernelpot.io.labels import frame_labels, is_isolated_atom
from kernelpot.gp.sparse import SparseGP, same_model_class, score

__all__ = ["Committee", "COMMITTEE_METHODS"]

COMMITTEE_METHODS = ("bootstrap", "subsample", "sparse")
_MEAN_KEYS = ("energy", "energies", "forces", "stress")
_STD_KEYS = ("energy", "forces", "stress")


class Committee(BaseEstimator):
    """A committee of :class:`SparseGP` models; its spread is the uncertainty.

    Parameters
    ----------
    model : SparseGP, optional
        Template, cloned (unfitted) for every member.  Default ``SparseGP()``.
    n_members : int, default 5
        Number of members (at least 2, for a spread).
    method : {"bootstrap", "subsample", "sparse"}, default "bootstrap"
        How members differ (see the module docstring).
    random_state : int, default 0
        Seed for the resampling and the per-member seeds; the fit is
        deterministic given it.

    Attributes
    ----------
    members_ : list of SparseGP
        The fitted members.
    member_frames_ : list of ndarray of int
        Training-frame indices each member was fitted on (with repeats for
        ``"bootstrap"``).

    Examples
    --------
    >>> com = kernelpot.Committee(kernelpot.SparseGP(n_sparse=200), n_members=5,
    ...                           method="subsample").fit(frames)       # doctest: +SKIP
    >>> pred = com.predict(test_frames)                                  # doctest: +SKIP
    >>> pred["forces_std"]          # spread over members, eV/Å          # doctest: +SKIP
    """

    def __init__(self, model=None, n_members: int = 5, method: str = "bootstrap", random_state=0):
        self.model = model
        self.n_members = n_members
        self.method = method
        self.random_state = random_state

    def _check_params(self):
        if isinstance(self.n_members, bool) or not isinstance(self.n_members, (int, np.integer)) \
                or self.n_members < 2:
            raise ValueError(f"n_members must be an integer >= 2 (a spread needs two members), "
                             f"got {self.n_members!r}")
        if self.method not in COMMITTEE_METHODS:
            raise ValueError(f"method must be one of {COMMITTEE_METHODS}, got {self.method!r}")
        if self.model is not None and not hasattr(self.model, "fit"):
            raise TypeError(f"model must be an unfitted estimator such as SparseGP(...), got {self.model!r}")

    def fit(self, frames, y=None):
        """Fit every member.

        Parameters
        ----------
        frames : list of ase.Atoms
            Labelled training frames.
        y : ignored
            Present for scikit-learn compatibility.

        Returns
        -------
        self
        """
        self._check_params()
        frames = list(frames)
        if len(frames) == 0:
            raise ValueError("fit needs at least one labelled frame, got an empty list")
        template = SparseGP() if self.model is None else self.model
        rng = np.random.default_rng(self.random_state)
        ref = np.array([is_isolated_atom(a) and "energy" in frame_labels(a, i) for i, a in enumerate(frames)])
        refs, pool = np.flatnonzero(ref), np.flatnonzero(~ref)
        if self.method == "subsample" and len(pool) < 2:
            raise ValueError(f"method='subsample' needs at least 2 structures besides isolated atoms, "
                             f"got {len(pool)}")
        seeds = rng.integers(0, 2**31 - 1, size=self.n_members)
        members, used = [], []
        for m in range(self.n_members):
            # after the first member, the descriptor it chose (descriptor=None: by the evidence) for all
            est = clone(template) if m == 0 else same_model_class(members[0])
            if "calibrate" in est.get_params():
                est.set_params(calibrate=False)  # the committee sigma is the spread: skip the LOO pass
            if self.method == "bootstrap":
                idx = np.concatenate([refs, rng.choice(pool, size=len(pool), replace=True)])
            elif self.method == "subsample":
                idx = np.concatenate([refs, np.sort(rng.choice(pool, size=(len(pool) + 1) // 2,
                                                               replace=False))])
            else:
                idx = np.arange(len(frames))
                est.set_params(random_state=int(seeds[m]))
            est.fit([frames[i] for i in idx])
            members.append(est)
            used.append(idx)
        self.members_ = members
        self.member_frames_ = used
        return self

    def _check_fitted(self):
        if not hasattr(self, "members_"):
            raise RuntimeError("this Committee is not fitted yet; call fit(frames) first")

    @staticmethod
    def _combine(preds: list[dict], return_std: bool) -> dict:
        out = {}
        for k in _MEAN_KEYS:
            if k in preds[0]:
                stack = np.stack([np.asarray(p[k], dtype=float) for p in preds])
                out[k] = stack.mean(axis=0)
                if return_std and k in _STD_KEYS:
                    std = stack.std(axis=0, ddof=1)
                    out[f"{k}_std"] = std
                    out[f"{k}_std_epistemic"] = std.copy()
                elif return_std and k == "energies":  # local energies: latent, one std (as SparseGP)
                    out["energies_std"] = stack.std(axis=0, ddof=1)
        for k in ("n_atoms", "frame_index"):
            if k in preds[0]:
                out[k] = preds[0][k]
        if return_std and "energy" in out:  # no calibration, so no held-out range to be beyond (as SparseGP)
            out["extrapolation"] = np.full(np.shape(out["energy"]), np.nan)
        if "energy" in out and np.ndim(out["energy"]) == 0:
            out["energy"] = float(out["energy"])
            if return_std:
                out["energy_std"] = float(out["energy_std"])
                out["energy_std_epistemic"] = float(out["energy_std_epistemic"])
                out["extrapolation"] = float("nan")
        return out

    def predict(self, frames, return_std: bool = True, return_members: bool = False) -> dict:
        """Committee mean and spread.

        Parameters
        ----------
        frames : list of ase.Atoms (or one Atoms)
        return_std : bool
            Add ``*_std`` and ``*_std_epistemic``: the standard deviation over
            members (``ddof=1``), identical arrays.
        return_members : bool
            Add ``"members"``: the list of each member's own prediction dict.

        Returns
        -------
        dict of arrays
            The keys of :meth:`SparseGP.predict`: ``energy`` (n_frames,) eV,
            ``forces`` (n_atoms_total, 3) eV/Å, ``stress`` (n_frames, 6)
            eV/Å^3 (NaN for non-periodic frames), ``energies``
            (n_atoms_total,), ``frame_index``, ``n_atoms``; all means over
            members.
        """
        self._check_fitted()
        preds = [m.predict(frames, return_std=False) for m in self.members_]
        out = self._combine(preds, return_std)
        if return_members:
            out["members"] = preds
        return out

    def predict_frame(self, atoms, return_std: bool = True, forces: bool = True, stress=None) -> dict:
        """Committee mean and spread for one structure (the :class:`kernelpot.Calculator` protocol)."""
        self._check_fitted()
        preds = [m.predict_frame(atoms, return_std=False, forces=forces, stress=stress) for m in self.members_]
        return self._combine(preds, return_std)

    def calculator(self, uncertainty: bool = True):
        """An ASE calculator over the committee (mean; ``*_std`` = committee spread)."""
        from kernelpot.calculator import Calculator
        return Calculator(self, uncertainty=uncertainty)

    def score(self, frames, y=None) -> float:
        """Negative force-component RMSE (eV/Å) of the committee mean (energy per atom if no forces)."""
        return score(self, frames)
