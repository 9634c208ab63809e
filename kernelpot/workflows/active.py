"""On-the-fly active learning: molecular dynamics that asks for reference labels when unsure.

:class:`ActiveLearner` runs molecular dynamics with a fitted
:class:`kernelpot.SparseGP`.  Every ``check_interval`` steps it reads the
model's epistemic uncertainty on the current configuration; when that crosses
``threshold`` the configuration is computed with the reference calculator
(DFT, an empirical potential ...), added to the training set, and the model
is updated before the dynamics continue from the same configuration.

Uncertainty measures
--------------------
``forces``
    ``max`` over atoms and Cartesian components of ``forces_std_epistemic``
    (eV/Å): the posterior standard deviation of the latent GP force, without
    the learned label noise.  This is compared with ``threshold`` (eV/Å), the
    unit users think in: a threshold of 0.1 eV/Å asks for a label as soon as
    any force component is uncertain by more than 0.1 eV/Å.
``energy`` (optional)
    ``energy_std_epistemic / n_atoms`` (eV/atom), compared with
    ``energy_threshold``.

Model updates
-------------
A new frame is added with :meth:`SparseGP.update` (its descriptors and design
rows only; the sparse set is unchanged and the hyperparameters are
re-optimised on the accumulated statistics).  A full :meth:`SparseGP.fit` on
all frames, which lets new sparse environments in, is done

* after every ``refit_every`` frames added since the last full fit, or
* when a new frame has an environment far from the sparse set: its
  ``novelty``, the largest relative Nyström residual
  ``r(x) = 1 - k^T K_mm^{-1} k / k(x, x)`` over its environments (0 for an
  environment the sparse set spans, 1 for one orthogonal to it) divided by
  the largest ``r`` over the training environments of the last full fit (the
  radius the sparse set covers), exceeds ``novelty_threshold``, or
* when the frame's ``config_type`` has no noise group in a model fitted with
  ``noise_per_config_type=True``.

Continuing after a label
------------------------
The step that reached the labelled configuration applied its last half kick
with the model's forces; that half kick is redone with the reference forces,
and the next step starts from them, so the trajectory continues on the
reference surface at that point.

Guards
------
If the model blows up (any atomic force above ``max_force`` eV/Å, or two
atoms closer than ``min_distance`` Å) the dynamics restart from the last safe
configuration (the last labelled one or the last one that passed a check)
with fresh Maxwell-Boltzmann velocities; each restart is recorded in
``restarts_``.

Stopping rules
--------------
``max_reference_calls`` (over the learner's life), ``max_steps`` MD steps per
:meth:`ActiveLearner.run`, ``patience`` consecutive MD steps without a
trigger, ``max_time`` seconds of wall time per run, and ``max_restarts``
guard restarts per run.  The rule that stopped a run is ``stop_reason_``.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla
from ase import Atoms, units
from ase.data import chemical_symbols
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import neighbor_list
from sklearn.base import clone

from kernelpot.io.labels import config_type as _config_type, frame_labels
from kernelpot.gp.kernels import dot_kernel
from kernelpot.workflows.sampling import label

try:
    from ase.md.velocitydistribution import thermalize_momenta as _thermalize
except ImportError:  # ASE < 3.29

    def _thermalize(atoms, temperature_K, rng=None):
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)


__all__ = ["ActiveLearner", "SelectionResult", "random_selection_baseline", "run_active_md"]

STOP_REASONS = ("max_reference_calls", "max_steps", "patience", "max_time", "max_restarts")
DYNAMICS = ("langevin", "verlet")
# Distances below this fraction of the closest pair seen in training count as
# a collapse when min_distance="auto".
_AUTO_MIN_DISTANCE_FRACTION = 0.75


def _is_fitted(model) -> bool:
    return hasattr(model, "alpha_")


def _min_pair_distance(atoms: Atoms, cutoff: float = 4.0) -> float:
    """Smallest interatomic distance (Å), periodic images included; inf if none below ``cutoff``."""
    if len(atoms) < 2 and not np.any(atoms.pbc):
        return np.inf
    d = neighbor_list("d", atoms, cutoff)
    return float(d.min()) if d.size else np.inf


class _Trainer:
    """Training set and model of an active-learning run; decides update vs full fit."""

    def __init__(self, model, frames, refit_every, novelty_threshold):
        self.model = model
        self.frames = list(frames)
        self.refit_every = refit_every
        self.novelty_threshold = novelty_threshold
        self.since_fit = 0
        self._new_fit()

    def _new_fit(self):
        self._chol = None
        self._coverage = None

    def _sparse_factor(self):
        if self._chol is None:
            S, Z = self.model.sparse_.X, self.model.sparse_.numbers
            Kmm = dot_kernel(S, S, self.model.zeta) * (Z[:, None] == Z[None, :])
            jitter = 1e-10 * float(np.mean(np.diag(Kmm)))
            self._chol = sla.cholesky(Kmm + jitter * np.eye(len(Kmm)), lower=True)
        return self._chol

    def residual(self, atoms: Atoms) -> np.ndarray:
        """Relative Nyström residual of each environment of ``atoms``, shape (n_atoms,).

        ``1 - k^T K_mm^-1 k / k(x, x)``: 0 for an environment the sparse set
        spans, 1 for one the sparse set cannot represent at all.
        """
        feat = self.model.descriptor_.compute(atoms)
        X, Z = feat.features, feat.numbers
        S, Zs = self.model.sparse_.X, self.model.sparse_.numbers
        K = dot_kernel(X, S, self.model.zeta) * (Z[:, None] == Zs[None, :])
        kxx = np.sum(X * X, axis=1) ** self.model.zeta
        v = sla.solve_triangular(self._sparse_factor(), K.T, lower=True, check_finite=False)
        return np.clip(1.0 - np.sum(v * v, axis=0) / np.maximum(kxx, 1e-300), 0.0, 1.0)

    def coverage(self) -> float:
        """Largest relative Nyström residual over the frames of the last full fit.

        The radius of the region the sparse set covers; floored at 1e-8 so that
        a sparse set holding every training environment makes any new
        environment novel.
        """
        if self._coverage is None:
            r = max((float(self.residual(a).max()) for a in self.frames), default=0.0)
            self._coverage = max(r, 1e-8)
        return self._coverage

    def _needs_group(self, atoms: Atoms) -> bool:
        if not getattr(self.model, "noise_per_config_type", False):
            return False
        ct = _config_type(atoms)
        return not any(g.split(":", 1)[-1] == ct for g in self.model.noise_groups_)

    def add(self, atoms: Atoms) -> dict:
        """Add one labelled frame; returns how the model was changed."""
        novelty = None
        if self.novelty_threshold is not None:
            novelty = float(self.residual(atoms).max()) / self.coverage()
        self.frames.append(atoms)
        self.since_fit += 1
        reason = None
        if self.refit_every is not None and self.since_fit >= self.refit_every:
            reason = "refit_every"
        elif novelty is not None and novelty > self.novelty_threshold:
            reason = "novelty"
        elif self._needs_group(atoms):
            reason = "config_type"
        if reason is None:
            self.model.update([atoms])
            kind = "update"
        else:
            from kernelpot.gp.sparse import same_model_class
            self.model = same_model_class(self.model).fit(self.frames)
            self._new_fit()
            self.since_fit = 0
            kind = "fit"
        return {"model_update": kind, "refit_reason": reason, "novelty": novelty,
                "n_train": len(self.frames), "n_sparse": int(self.model.sparse_.n_env)}


class ActiveLearner:
    """On-the-fly active learning with molecular dynamics driven by a SparseGP.

    Parameters
    ----------
    reference : ase Calculator
        Reference calculator that labels the selected configurations.
    model : SparseGP, optional
        A fitted model to start from (copied, never modified), or an unfitted
        one whose settings :meth:`fit` uses.  Default ``SparseGP()``.
    threshold : float
        Trigger (eV/Å) on the max epistemic force standard deviation over
        atoms and components.
    energy_threshold : float, optional
        Extra trigger (eV/atom) on ``energy_std_epistemic / n_atoms``.
    check_interval : int
        MD steps between uncertainty checks.
    refit_every : int or None
        Full fit (new sparse set) after this many added frames; ``None``:
        only when ``novelty_threshold`` is crossed.
    novelty_threshold : float or None
        Full fit when a new frame's novelty (its largest relative Nyström
        residual over that of the training environments at the last full
        fit; dimensionless, see the module notes) exceeds this.  ``None``:
        never on novelty.
    temperature : float
        Thermostat temperature (K); also used for initial and restart velocities.
    timestep : float
        MD time step in ASE units (``ase.units.fs``).
    friction : float
        Langevin friction in ASE inverse-time units.
    dynamics : {"langevin", "verlet"}
        Langevin (NVT) or velocity Verlet (NVE).
    max_reference_calls : int
        Stop when this many reference calls have been made (over all runs).
    max_steps : int
        MD steps per :meth:`run`.
    patience : int, optional
        Stop a run after this many consecutive MD steps without a trigger.
    max_time : float, optional
        Wall-time limit per run (s).
    max_force : float
        Guard: restart if any atomic force exceeds this (eV/Å).
    min_distance : float, "auto" or None
        Guard: restart if two atoms come closer than this (Å).  ``"auto"``:
        0.75 times the closest pair in the training frames.
    max_restarts : int
        Stop a run after this many guard restarts.
    config_type : str
        ``info["config_type"]`` of the labelled frames.
    log_path : str or path, optional
        Also write every reference call as one JSON line to this file
        (overwritten by the first call of this learner).
    callback : callable, optional
        ``callback(model, n_reference_calls)`` after every model change and
        once after the initial fit (``n_reference_calls = 0``).
    random_state : int
        Seed for velocities and the Langevin noise.
    verbose : bool
        tqdm progress bar over MD steps.

    Attributes
    ----------
    model_ : SparseGP
        The current model.
    frames_ : list of ase.Atoms
        Training frames (initial plus labelled).
    log_ : list of dict
        One entry per reference call: ``call``, ``run``, ``step`` (MD step in
        that run), ``time_fs``, ``wall_s``, ``temperature_K``, ``trigger``
        ("forces" or "energy"), ``forces_std_max`` (eV/Å),
        ``energy_std_per_atom`` (eV/atom), ``threshold``, errors of the model
        before the update against the new label (``force_rmse``,
        ``force_max_error`` eV/Å, ``energy_error_per_atom`` eV/atom),
        ``model_update`` ("update" or "fit"), ``refit_reason``, ``novelty``,
        ``n_train``, ``n_sparse``.
    restarts_ : list of dict
        Guard events: ``run``, ``step``, ``reason`` ("max_force" or
        "min_distance"), ``value`` (eV/Å or Å) and ``restored_step``, the step
        of the safe configuration the run restarted from (0: the start;
        ``None`` when the event stopped the run instead).
    stop_reason_ : str
        Rule that ended the last run (one of :data:`STOP_REASONS`).
    n_steps_ : int
        MD steps over all runs.
    last_run_steps_ : int
        MD steps of the last run.
    atoms_ : ase.Atoms
        Final configuration of the last run (with momenta).

    Examples
    --------
    >>> from ase.calculators.emt import EMT                          # doctest: +SKIP
    >>> al = ActiveLearner(EMT(), SparseGP(), threshold=0.1).fit(frames)  # doctest: +SKIP
    >>> al.run(frames[0], steps=2000)                               # doctest: +SKIP
    >>> al.log_[0]["forces_std_max"], al.stop_reason_               # doctest: +SKIP
    """

    def __init__(self, reference, model=None, threshold: float = 0.1,
                 energy_threshold: float | None = None, check_interval: int = 1,
                 refit_every: int | None = 10, novelty_threshold: float | None = 2.0,
                 temperature: float = 300.0, timestep: float = 2.0 * units.fs,
                 friction: float = 0.01 / units.fs, dynamics: str = "langevin",
                 max_reference_calls: int = 50, max_steps: int = 10000,
                 patience: int | None = None, max_time: float | None = None,
                 max_force: float = 20.0, min_distance="auto", max_restarts: int = 10,
                 config_type: str = "active_learning", log_path=None,
                 callback: Callable | None = None, random_state=0, verbose: bool = False):
        self.reference = reference
        self.model = model
        self.threshold = threshold
        self.energy_threshold = energy_threshold
        self.check_interval = check_interval
        self.refit_every = refit_every
        self.novelty_threshold = novelty_threshold
        self.temperature = temperature
        self.timestep = timestep
        self.friction = friction
        self.dynamics = dynamics
        self.max_reference_calls = max_reference_calls
        self.max_steps = max_steps
        self.patience = patience
        self.max_time = max_time
        self.max_force = max_force
        self.min_distance = min_distance
        self.max_restarts = max_restarts
        self.config_type = config_type
        self.log_path = log_path
        self.callback = callback
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------ checks
    def _check_params(self):
        def positive(name, integer=False, optional=False):
            v = getattr(self, name)
            if v is None and optional:
                return
            ok = isinstance(v, (int, np.integer)) if integer else isinstance(v, (int, float, np.number))
            if not (ok and np.isfinite(v) and v > 0):
                kind = "a positive integer" if integer else "a positive number"
                raise ValueError(f"{name} must be {kind}{' or None' if optional else ''}, got {v!r}")

        positive("threshold")
        positive("energy_threshold", optional=True)
        positive("check_interval", integer=True)
        positive("refit_every", integer=True, optional=True)
        positive("temperature")
        positive("timestep")
        positive("max_reference_calls", integer=True)
        positive("max_steps", integer=True)
        positive("patience", integer=True, optional=True)
        positive("max_time", optional=True)
        positive("max_force")
        positive("max_restarts", integer=True)
        positive("novelty_threshold", optional=True)
        if self.dynamics not in DYNAMICS:
            raise ValueError(f"dynamics must be one of {DYNAMICS}, got {self.dynamics!r}")
        if not (self.min_distance is None or self.min_distance == "auto"
                or (isinstance(self.min_distance, (int, float)) and self.min_distance > 0)):
            raise ValueError(f"min_distance must be a positive distance in Å, 'auto' or None, "
                             f"got {self.min_distance!r}")

    # --------------------------------------------------------------- fit
    def fit(self, frames: Sequence[Atoms]) -> "ActiveLearner":
        """Fit the first model on labelled ``frames`` (settings from ``model``).

        Returns
        -------
        self
        """
        self._check_params()
        frames = list(frames)
        if not frames:
            raise ValueError("fit needs at least one labelled frame, got an empty list")
        if self.model is None:
            from kernelpot.gp import SparseGP
            template = SparseGP()
        else:
            template = self.model
        self._start(clone(template).fit(frames), frames)
        return self

    def _start(self, model, frames):
        self._trainer = _Trainer(model, frames, self.refit_every, self.novelty_threshold)
        self.log_ = []
        self.restarts_ = []
        self.n_steps_ = 0
        self.stop_reason_ = None
        self._rng = np.random.default_rng(self.random_state)
        self._t0 = time.perf_counter()
        self._log_started = False
        self._n_runs = 0
        if self.callback is not None:
            self.callback(self._trainer.model, 0)

    @property
    def model_(self):
        self._require_started()
        return self._trainer.model

    @property
    def frames_(self) -> list:
        self._require_started()
        return self._trainer.frames

    def _require_started(self):
        if not hasattr(self, "_trainer"):
            raise AttributeError("this ActiveLearner has no model yet; call fit(frames) or run() "
                                 "with a fitted model")

    def _ensure_model(self):
        if hasattr(self, "_trainer"):
            return
        if self.model is None or not _is_fitted(self.model):
            raise RuntimeError("no fitted model: call fit(frames) first or pass a fitted SparseGP as model")
        model = copy.deepcopy(self.model)
        self._start(model, list(getattr(model, "_train_frames", [])))

    # --------------------------------------------------------------- run
    def _resolved_min_distance(self) -> float | None:
        if self.min_distance is None:
            return None
        if self.min_distance != "auto":
            return float(self.min_distance)
        d = min((_min_pair_distance(a) for a in self.frames_ if len(a) > 1), default=np.inf)
        return _AUTO_MIN_DISTANCE_FRACTION * d if np.isfinite(d) else None

    def _write_log(self, entry):
        if self.log_path is None:
            return
        with open(self.log_path, "a" if self._log_started else "w") as fh:
            fh.write(json.dumps(entry) + "\n")
        self._log_started = True

    def run(self, atoms: Atoms, steps: int | None = None,
            temperature: float | None = None) -> "ActiveLearner":
        """Run active-learning MD from ``atoms`` until a stopping rule fires.

        Parameters
        ----------
        atoms : ase.Atoms
            Starting configuration (copied).  Its momenta are used if any are
            non-zero, otherwise drawn at ``temperature``.
        steps : int, optional
            MD steps for this run (default ``max_steps``).
        temperature : float, optional
            Temperature (K) for this run (default ``temperature``).

        Returns
        -------
        self
        """
        self._check_params()
        self._ensure_model()
        steps = self.max_steps if steps is None else steps
        if not (isinstance(steps, (int, np.integer)) and steps > 0):
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        T = float(self.temperature if temperature is None else temperature)
        if not T > 0:
            raise ValueError(f"temperature must be > 0 K, got {temperature!r}")
        trained = getattr(self.model_, "species_", None)
        new = [] if trained is None else sorted(set(atoms.get_chemical_symbols())
                                                - {chemical_symbols[z] for z in trained})
        if new:  # the learner grows the data of the elements it has, and cannot add one from MD alone
            raise ValueError(f"ActiveLearner.run: the starting structure holds {new}, which the model was not "
                             f"trained on (trained: {sorted(chemical_symbols[z] for z in trained)}); "
                             f"seed the learner with labelled structures that contain {', '.join(new)}")
        run_id = self._n_runs
        self._n_runs += 1
        min_dist = self._resolved_min_distance()
        rng = self._rng

        work = atoms.copy()
        work.calc = self.model_.calculator(uncertainty=False)
        if not np.any(work.get_momenta()):
            _thermalize(work, T, rng=rng)
            Stationary(work)
        if self.dynamics == "langevin":
            dyn = Langevin(work, self.timestep, temperature_K=T, friction=self.friction, fixcm=False, rng=rng)
            # Langevin's velocity half kicks are v += c1 F / m (plus friction and noise)
            kick = dyn.c1
        else:
            dyn = VelocityVerlet(work, self.timestep)
            kick = 0.5 * self.timestep
        safe = (work.get_positions(), 0)
        t_start = time.perf_counter()
        since_trigger = 0
        n_restarts = 0
        forces = None
        self.stop_reason_ = "max_steps"
        if len(self.log_) >= self.max_reference_calls:
            self.stop_reason_ = "max_reference_calls"
            steps = 0
        bar = None
        if self.verbose and steps:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, desc=f"active MD {T:g} K", leave=False)
        step = 0
        while step < steps:
            forces = dyn.step(forces)
            step += 1
            self.n_steps_ += 1
            since_trigger += 1
            if bar is not None:
                bar.update(1)
            guard = None
            fnorm = float(np.sqrt(np.max(np.sum(forces ** 2, axis=1))))
            if not np.isfinite(fnorm) or fnorm > self.max_force:
                guard = ("max_force", fnorm)
            elif step % self.check_interval == 0 and min_dist is not None:
                dmin = _min_pair_distance(work, cutoff=max(min_dist * 1.01, 1e-3))
                if dmin < min_dist:
                    guard = ("min_distance", dmin)
            if guard is not None:
                n_restarts += 1
                entry = {"run": run_id, "step": step, "reason": guard[0], "value": guard[1],
                         "restored_step": None}
                self.restarts_.append(entry)
                if n_restarts > self.max_restarts:
                    self.stop_reason_ = "max_restarts"
                    break
                entry["restored_step"] = safe[1]
                work.set_positions(safe[0])
                _thermalize(work, T, rng=rng)
                Stationary(work)
                forces = None
                continue
            if step % self.check_interval == 0:
                pred = self.model_.predict_frame(work, return_std=True, stress=False)
                u_f = float(np.max(pred["forces_std_epistemic"]))
                u_e = float(pred["energy_std_epistemic"]) / len(work)
                trigger = None
                if u_f > self.threshold:
                    trigger = "forces"
                elif self.energy_threshold is not None and u_e > self.energy_threshold:
                    trigger = "energy"
                if trigger is None:
                    safe = (work.get_positions(), step)
                else:
                    since_trigger = 0
                    forces = self._label_and_learn(work, pred, forces, kick, trigger, u_f, u_e,
                                                   run_id, step, T)
                    safe = (work.get_positions(), step)
                    if bar is not None:
                        bar.set_postfix(calls=len(self.log_), std=f"{u_f:.3f}")
                    if len(self.log_) >= self.max_reference_calls:
                        self.stop_reason_ = "max_reference_calls"
                        break
            if self.patience is not None and since_trigger >= self.patience:
                self.stop_reason_ = "patience"
                break
            if self.max_time is not None and time.perf_counter() - t_start > self.max_time:
                self.stop_reason_ = "max_time"
                break
        if bar is not None:
            bar.close()
        self.atoms_ = work.copy()
        self.atoms_.calc = None
        self.last_run_steps_ = step
        return self

    def _label_and_learn(self, work, pred, model_forces, kick, trigger, u_f, u_e, run_id, step, T):
        """Label ``work`` with the reference, update the model, and return the forces for the next step."""
        snap = work.copy()
        snap.info["config_type"] = self.config_type
        snap.info["temperature_K"] = T
        frame = label([snap], self.reference)[0]
        lab = frame_labels(frame)
        err = pred["forces"] - lab["forces"]
        entry = {
            "call": len(self.log_) + 1, "run": run_id, "step": step,
            "time_fs": step * self.timestep / units.fs,
            "wall_s": time.perf_counter() - self._t0, "temperature_K": T,
            "trigger": trigger, "forces_std_max": u_f, "energy_std_per_atom": u_e,
            "threshold": self.threshold if trigger == "forces" else self.energy_threshold,
            "force_rmse": float(np.sqrt(np.mean(err ** 2))),
            "force_max_error": float(np.max(np.abs(err))),
            "energy_error_per_atom": (pred["energy"] - lab["energy"]) / len(work),
        }
        entry.update(self._trainer.add(frame))
        entry = {k: (float(v) if isinstance(v, np.floating) else v) for k, v in entry.items()}
        self.log_.append(entry)
        self._write_log(entry)
        work.calc = self.model_.calculator(uncertainty=False)
        # Redo the last half kick with the reference forces, then start the next step from them.
        work.set_momenta(work.get_momenta() + kick * (lab["forces"] - model_forces))
        if self.callback is not None:
            self.callback(self.model_, len(self.log_))
        return lab["forces"].copy()


def run_active_md(atoms: Atoms, reference, frames: Sequence[Atoms] | None = None, model=None,
                  steps: int | None = None, **kwargs) -> ActiveLearner:
    """Fit on ``frames`` (or start from a fitted ``model``) and run one active-learning MD.

    Parameters
    ----------
    atoms : ase.Atoms
        Starting configuration.
    reference : ase Calculator
        Reference calculator.
    frames : list of ase.Atoms, optional
        Labelled frames for the first model (settings from ``model``).
    model : SparseGP, optional
        Fitted model to start from, or settings for the fit on ``frames``.
    steps : int, optional
        MD steps (default ``max_steps``).
    **kwargs
        Other :class:`ActiveLearner` parameters.

    Returns
    -------
    ActiveLearner
        With ``model_``, ``frames_``, ``log_`` and ``stop_reason_``.

    Examples
    --------
    >>> al = run_active_md(frames[0], EMT(), frames, threshold=0.1, max_steps=500)  # doctest: +SKIP
    """
    learner = ActiveLearner(reference, model=model, **kwargs)
    if frames is not None:
        learner.fit(frames)
    return learner.run(atoms, steps=steps)


@dataclass
class SelectionResult:
    """Result of :func:`random_selection_baseline`.

    Attributes
    ----------
    model : SparseGP
        Model after all selected frames were added.
    frames : list of ase.Atoms
        Training frames (initial plus selected).
    indices : ndarray of int
        Pool indices of the selected frames, in the order added.
    log : list of dict
        Per added frame: ``call``, ``index``, ``model_update``,
        ``refit_reason``, ``novelty``, ``n_train``, ``n_sparse``.
    """

    model: object
    frames: list
    indices: np.ndarray
    log: list = field(default_factory=list)


def random_selection_baseline(pool: Sequence[Atoms], n_calls: int, model=None,
                              initial_frames: Sequence[Atoms] | None = None, reference=None,
                              refit_every: int | None = 10, novelty_threshold: float | None = 2.0,
                              random_state=0, callback: Callable | None = None) -> SelectionResult:
    """Baseline for active learning: add frames chosen at random from a pool.

    The model is grown with the same rule as :class:`ActiveLearner`
    (``update`` between full fits every ``refit_every`` frames or on novelty),
    so learning curves at equal numbers of reference calls compare selection
    alone.

    Parameters
    ----------
    pool : sequence of ase.Atoms
        Candidate configurations, typically reference-MD snapshots.  Labelled
        frames are used as they are; unlabelled ones need ``reference``.
    n_calls : int
        Frames to add (the reference-call budget).
    model : SparseGP, optional
        Fitted model to start from (copied), or settings for a fit on
        ``initial_frames``.  Default ``SparseGP()``.
    initial_frames : sequence of ase.Atoms, optional
        Labelled frames for the first model.
    reference : ase Calculator, optional
        Labels unlabelled pool frames as they are selected.
    refit_every, novelty_threshold
        As in :class:`ActiveLearner`.
    random_state : int
        Seed of the random choice.
    callback : callable, optional
        ``callback(model, n_calls)`` after the first model and after each frame.

    Returns
    -------
    SelectionResult

    Examples
    --------
    >>> res = random_selection_baseline(pool, 20, SparseGP(), initial_frames=frames)  # doctest: +SKIP
    """
    pool = list(pool)
    if not (isinstance(n_calls, (int, np.integer)) and 0 <= n_calls <= len(pool)):
        raise ValueError(f"n_calls must be an integer between 0 and the pool size {len(pool)}, got {n_calls!r}")
    if initial_frames is not None:
        from kernelpot.gp import SparseGP
        start = clone(model if model is not None else SparseGP()).fit(list(initial_frames))
        frames = list(initial_frames)
    elif model is not None and _is_fitted(model):
        start = copy.deepcopy(model)
        frames = list(getattr(start, "_train_frames", []))
    else:
        raise ValueError("random_selection_baseline needs initial_frames or a fitted model")
    trainer = _Trainer(start, frames, refit_every, novelty_threshold)
    if callback is not None:
        callback(trainer.model, 0)
    rng = np.random.default_rng(random_state)
    indices = rng.choice(len(pool), size=int(n_calls), replace=False)
    log = []
    for k, i in enumerate(indices):
        frame = pool[i]
        if not frame_labels(frame):
            if reference is None:
                raise ValueError(f"pool frame {i} ({_config_type(frame)!r}) has no labels; "
                                 "pass reference= to label it")
            frame = label([frame], reference)[0]
        entry = {"call": k + 1, "index": int(i)}
        entry.update(trainer.add(frame))
        log.append(entry)
        if callback is not None:
            callback(trainer.model, k + 1)
    return SelectionResult(model=trainer.model, frames=trainer.frames, indices=np.asarray(indices), log=log)
