"""SparseGP: a sparse Gaussian-process potential fitted to energies, forces and stresses.

Model
-----
The total energy of a structure is a sum of fixed physics and local terms,

    E = E_baseline + sum_i (e0[Z_i] + mu[Z_i]) + sum_i e(x_i) + sum_{i<j} phi_{Z_i Z_j}(r_ij),

where ``e0`` are isolated-atom energies (taken from isolated-atom frames when the
training data contain them, otherwise fitted by least squares on composition),
``mu`` a per-species mean offset fitted by least squares on what remains, and
``e`` a Gaussian process over unit SOAP vectors ``x_i`` with kernel
``delta^2 (x.x')^zeta`` between environments of the same central species, and
``phi`` a two-body term (:mod:`kernelpot.gp.twobody`; ``two_body=False`` leaves
it out): a Gaussian process over the pair energy of each species pair, whose
scale relative to ``delta`` is learned with the other hyperparameters.
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

import math
import os
import time
import warnings
from typing import NamedTuple

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from sklearn.base import BaseEstimator, clone

from kernelpot import _threads, modelfile
from kernelpot.calculator import Calculator
from kernelpot.descriptors import SOAP
from kernelpot.io.labels import (LABEL_UNITS, DataWarning, _list, check_structure, frame_labels, frame_name,
                                 frame_noise,
                                 is_isolated_atom, is_periodic, same_fingerprint, structure_errors,
                                 training_fingerprint)
from kernelpot.io.validation import validate, warn_report
from kernelpot.gp import assembly, hyperparameters, sparse_size
from kernelpot.gp.calibration import SIGMA_FLOOR, recalibrate
from kernelpot.gp.hyperparameters import NOISE_FLOOR
from kernelpot.gp.design import SparseSet, model_kernel
from kernelpot.gp.likelihood import neg_log_marginal_likelihood
from kernelpot.gp.group_loo import calibration_groups
from kernelpot.gp.loo import leave_one_out
from kernelpot.gp.offsets import OFFSET_KAPPA, composition_matrix, composition_null_space, fit_offsets
from kernelpot.gp.posterior import Posterior, extrapolation, predictive_std
from kernelpot.gp.select import check_sparse_points, choose_sparse_set
from kernelpot.gp.solve import safe_cholesky
from kernelpot.gp.twobody import PairTerm, TwoBody
from kernelpot.gp.wall import WallPrior, no_variances

__all__ = ["SparseGP"]

# Sparse points whose kernel function has conditional variance below this
# (relative) given the others are dropped (see gp.select.choose_sparse_set).
_SPARSE_TOL = 1e-10
_KMM_JITTER = 1e-10
#: SOAP radial scalings (r0 as a fraction of r_cut) that ``descriptor=None`` compares with unscaled SOAP by the
#: evidence: r0 = r_cut / 2 down-weights the outer shell, whose many neighbours otherwise dominate the density
#: overlap (Willatt, Musil, Ceriotti, PCCP 20, 29661 (2018)).
DEFAULT_RADIAL_SCALING = (0.5,)


def same_model_class(model):
    """An unfitted clone of ``model`` that fits the descriptor ``model``'s fit used.

    With ``descriptor=None`` a fit chooses the SOAP by the evidence
    (:meth:`SparseGP.fit`); refits on other frames (screening rounds,
    committee members, active-learning refits) keep that choice instead of
    making it again on each subset, so they all fit one model class.  Any
    other model (or one not yet fitted) is simply cloned.
    """
    est = clone(model)
    if hasattr(model, "descriptor_choice_") and getattr(model, "descriptor", "given") is None:
        est.set_params(descriptor=SOAP(radial_scaling=model.descriptor_.radial_scaling))
    return est


def scaling_label(r0) -> str:
    """How notes and the CLI name a SOAP radial scaling: ``"unscaled"`` or ``"r0 = 2.5 Å"``."""
    return "unscaled" if r0 is None else f"r0 = {r0:g} Å"


def _warn_at_caller(message, category) -> None:
    """``warnings.warn`` at the first frame outside the kernelpot package: the user's call of ``fit``,
    however deep inside kernelpot the warning arises."""
    import sys
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(0), 1  # stacklevel 1 is this function
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class _FitWarnings(list):
    """The warnings of a fit that depend on the fitted model, as ``(message, category)``: emitted at once
    (``hold=False``: an explicit descriptor, as they arise) or held until the default descriptor's choice
    is made (:meth:`emit` then emits the kept candidate's)."""

    def __init__(self, hold: bool):
        super().__init__()
        self.hold = hold

    def append(self, item):
        if self.hold:
            super().append(item)
        else:
            _warn_at_caller(*item)

    def extend(self, items):
        for item in items:
            self.append(item)

    def emit(self):
        for item in self:
            _warn_at_caller(*item)
        self.clear()


class _FitData(NamedTuple):
    """What :meth:`SparseGP.fit` learns from the data alone, before any descriptor: the labels of each
    frame, how many frames have usable forces (:func:`_force_frames`), the checked sparse points, the
    species and the offsets (isolated-atom ``e0`` and mean ``mu``)."""
    labels: list
    n_force_frames: int
    sparse_points: list | None
    species: np.ndarray
    e0: dict
    mean: dict


class SparseGP(BaseEstimator):
    """Sparse GP interatomic potential with derivative observations.

    Parameters
    ----------
    descriptor : SOAP or list of SOAP, optional
        Descriptor settings; species are taken from the training data at fit
        time.  Default (None): ``SOAP(r_cut=5.0, n_max=8, l_max=6,
        atom_sigma=0.5)`` unscaled or with radial scaling ``r0 = r_cut / 2``
        (Willatt, Musil, Ceriotti, PCCP 20, 29661 (2018)), whichever the
        evidence prefers by more than ``ln 100`` nats, provided its fit
        explains every kind of label the unscaled fit explains (unscaled on
        ties; what was compared is in ``descriptor_choice_``).  The fit then
        takes 1.3-1.7x as long (measured on mlearn Si, Li and acac), up to
        3x with ``calibrate=False`` when the unscaled SOAP wins (it is fitted
        again).  Refits by :func:`kernelpot.screen`, :class:`kernelpot.Committee`
        members after the first and :mod:`kernelpot.workflows.active` keep
        the choice (:func:`same_model_class`).  Give a descriptor to keep it
        as given.
        A list sums their kernels (e.g. ``[SOAP(r_cut=5.0), SOAP(r_cut=4.0)]``,
        as in multi-cutoff GAP models): ``k = sum_d (r_d delta)^2 (x_d.x_d')^zeta``
        over the same sparse environments (chosen with the first descriptor),
        ``r_0 = 1`` and each further ``r_d`` learned from the evidence with
        ``delta`` (``sparse_.scales``).  The first descriptor's ``r_cut`` is
        the two-body term's default cutoff and the repulsion prior's.  Not
        with ``n_sparse="auto"``.
    n_sparse : int or "auto"
        Sparse environments per species (fewer if the data have fewer).
        ``"auto"``: grown per species through 250, 500, 1000, ... while the
        optimised log marginal likelihood rises by more than ``ln 100`` nats
        a step and the fit's estimated peak memory stays within
        ``max_memory`` (:mod:`kernelpot.gp.sparse_size`: one assembly pass,
        one hyperparameter search per size); what was tried and why it
        stopped is in ``sparse_growth_``.
    max_memory : float
        Budget of ``n_sparse="auto"`` (GiB): the largest size tried is the
        last whose estimated peak memory
        (:func:`kernelpot.gp.sparse_size.fit_memory`) is within it.
    sparse_method : {"cur", "fps", "random"}
        How sparse environments are chosen (see :mod:`kernelpot.gp.select`).
    sparse_points : list of (int, int), optional
        User-chosen sparse environments as ``(frame_index, atom_index)``
        pairs (each once, within range); overrides ``n_sparse``/``sparse_method``.
    zeta : float
        Kernel exponent.
    sigma_energy, sigma_force, sigma_stress : float, optional
        Fixed noise (eV/atom, eV/Å, eV/Å^3).  ``None``: learned.
    delta : float, optional
        Fixed kernel scale (eV).  ``None``: learned.
    noise_per_config_type : bool
        Separate noise per ``atoms.info["config_type"]``; the calibration
        (``calibrate``) then also gives each group its own aleatoric weight
        (:func:`kernelpot.gp.calibration.group_aleatoric_weights`), used for
        structures of that config_type.
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
        structure (:func:`kernelpot.gp.loo.leave_one_out`, about the cost of
        assembling the fit once more) and weight the aleatoric and epistemic
        variance of each kind so that those held-out residuals are best
        predicted (:func:`kernelpot.gp.calibration.recalibrate`).  The likelihood does not
        make the raw variances calibrated: on a molecule the raw force sigma
        were 9x too wide, on Si 1.2x.  The diagnostics are kept in
        ``training_diagnostics_`` (reused by :func:`kernelpot.screen`); the
        weights in ``std_weights_``.  ``refit``/``update`` keep the weights
        and drop the diagnostics.  ``False``: raw GP variances.
    random_state : int
        Seed for sparse selection; the fit is deterministic given it.
    verbose : bool, default True
        One line per phase of ``fit`` with its elapsed time (descriptors,
        sparse selection, assembly, hyperparameters, leave-one-out
        calibration), a memory estimate, a note when numba compiles the
        kernels (first run only), and progress bars: tqdm's notebook bars in
        Jupyter, terminal bars on a terminal, none when output is redirected.
        ``False`` prints nothing.
    client : dask.distributed.Client, optional
        Compute descriptors, the design statistics and the calibration's
        leave-one-out on Dask workers (same result as in memory, to
        round-off); the solve stays local since it is O(M^3) on M x M matrices.
    chunk_size : int
        Frames per chunk of assembly (and per Dask task).
    two_body : bool or TwoBody
        Add a two-body kernel term beside SOAP (:mod:`kernelpot.gp.twobody`:
        a GP over the pair energy of each species pair, GAP's ``distance_2b``),
        its scale relative to ``delta`` learned from the evidence.  ``True``
        uses ``TwoBody()``'s settings; ``False``: SOAP only.

    Attributes
    ----------
    delta_ : float
        Kernel scale (eV).
    noise_ : dict {group: float}
        Noise of each group (``"energy"`` per atom in eV, ``"forces"`` eV/Å,
        ``"stress"`` eV/Å^3; ``"forces:<config_type>"`` with
        ``noise_per_config_type``): learned, or as given.  A label with a sigma
        of its own in the data is fitted with ``noise_ * sigma / reference``
        (:func:`kernelpot.gp.assembly.noise_reference`); what that comes to is
        :func:`kernelpot.gp.assembly.noise_as_used`.
    sparse_ : kernelpot.gp.design.SparseSet
        The sparse environments (``n_env``), under every descriptor of a
        kernel sum (``extra``) with the learned relative scales (``scales``).
    extra_descriptors_ : list of SOAP
        The second and further descriptors of a kernel sum (empty for one).
    pair_ : kernelpot.gp.twobody.PairTerm or None
        The fitted two-body term (its ``scale`` is the learned relative scale).
    wall_ : kernelpot.gp.wall.WallPrior or None
        The shortest distance of each species pair in the training data,
        below which every predictive variance gains the repulsion prior of
        :mod:`kernelpot.gp.wall` (None for a model file written before it:
        no such term).
    sparse_growth_ : dict or None
        With ``n_sparse="auto"``: ``"steps"``, one dict per size tried
        (``counts`` {symbol: environments}, ``log_likelihood`` in nats,
        ``energy_loo``, the leave-one-out log density of the training
        energies in nats, ``seconds`` of its hyperparameter search), ``"chosen"`` (index into
        the steps) and ``"reason"`` (why the growth stopped).  None otherwise;
        not saved with the model.
    descriptor_choice_ : dict
        With ``descriptor=None`` only: ``"candidates"``, one dict per SOAP
        compared (``radial_scaling`` r0 in Å or None, ``log_likelihood`` the
        optimised log marginal likelihood in nats, ``unexplained`` the kinds
        of label whose learned noise is comparable to the labels, ``seconds``
        of its fit), and ``"chosen"`` (index into them; ``descriptor_`` is
        that SOAP).
        Not saved with the model.
    conventions_ : list of kernelpot.gp.conventions.ConventionFinding or None
        Whole config_types whose energy or stress labels follow another
        convention than their physics (warned about at fit; reused by
        :func:`kernelpot.screen`); None when the fit checked nothing.  Not
        saved with the model; ``update`` and ``refit`` drop it.

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
                 fit_stress=True, energy_noise="loo", calibrate=True, random_state=0, verbose=True,
                 client=None, chunk_size=16, two_body=True, max_memory=1.0):
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
        self.two_body = two_body
        self.max_memory = max_memory

    # ------------------------------------------------------------------ fit
    def _check_params(self):
        if not ((isinstance(self.n_sparse, (int, np.integer)) and not isinstance(self.n_sparse, bool)
                 and self.n_sparse >= 1) or (isinstance(self.n_sparse, str) and self.n_sparse == "auto")):
            raise ValueError(f"n_sparse must be a positive integer or 'auto', got {self.n_sparse!r}")
        mem = self.max_memory
        if not (_finite_real(mem) and mem > 0):
            raise ValueError(f"max_memory must be a positive number of GiB, got {self.max_memory!r}")
        if self.energy_noise not in ("loo", "evidence"):
            raise ValueError(f"energy_noise must be 'loo' or 'evidence', got {self.energy_noise!r}")
        if not (_finite_real(self.zeta) and self.zeta >= 1):
            raise ValueError(f"zeta must be a finite number >= 1, got {self.zeta!r}")
        for name in ("sigma_energy", "sigma_force", "sigma_stress", "delta"):
            v = getattr(self, name)
            if v is not None and not (_finite_real(v) and v > 0):
                raise ValueError(f"{name} must be a positive number or None (learned), got {v!r}")
        descs = self._descriptor_list()
        if not descs or not all(d is None or isinstance(d, SOAP) for d in descs) or (len(descs) > 1 and None in descs):
            raise ValueError(f"descriptor must be a SOAP, a non-empty list of SOAP, or None, got {self.descriptor!r}")
        if len(descs) > 1 and isinstance(self.n_sparse, str):
            raise ValueError("n_sparse='auto' grows one SOAP kernel's sparse set; with a list of descriptors give "
                             "n_sparse as an integer")
        if not isinstance(self.two_body, (bool, np.bool_, TwoBody)):
            raise ValueError(f"two_body must be True, False or a TwoBody(...), got {self.two_body!r}")
        if isinstance(self.two_body, TwoBody):
            self.two_body.check()

    def _descriptor_list(self) -> list:
        """The descriptor setting as a list (``[None]`` for the default, which :meth:`fit` resolves)."""
        d = self.descriptor
        return list(d) if isinstance(d, (list, tuple)) else [d]

    def _make_descriptor(self, species, which: int = 0):
        desc = clone(self._descriptor_list()[which])  # never None here: fit chose the default's SOAP
        if desc.species is None:
            desc.set_params(species=[int(z) for z in species])
        return desc

    def _sum_sparse_set(self, frames, single):
        """The sparse set of a kernel sum: the environments chosen with the first descriptor, and in each
        further descriptor's block those of them whose kernel function is not (numerically) a combination
        of the others' under it (:func:`kernelpot.gp.select.prune_dependent`: a short cut-off sees many
        environments alike, and pruning the first block by it dropped most of its points)."""
        from kernelpot.gp.select import prune_dependent
        extra = self._extra_sparse(frames, self.sparse_index_)
        keep = [prune_dependent(SparseSet(x, single.numbers).kernel(self.zeta), _SPARSE_TOL) for x in extra]
        return SparseSet(single.X, single.numbers, tuple(x[k] for x, k in zip(extra, keep)), extra_index=tuple(keep))

    def _extra_sparse(self, frames, index):
        """The sparse environments ``index`` (into the concatenated atoms of ``frames``) under the further
        descriptors of a kernel sum: a tuple of (M, F_d) arrays (empty for one descriptor)."""
        if not self.extra_descriptors_:
            return ()
        starts = np.cumsum([0] + [len(a) for a in frames])
        fi = np.searchsorted(starts, index, side="right") - 1
        out = [np.empty((len(index), d.get_number_of_features())) for d in self.extra_descriptors_]
        for f in np.unique(fi):
            rows = np.flatnonzero(fi == f)
            for x, d in zip(out, self.extra_descriptors_):
                x[rows] = d.compute(frames[f]).features[index[rows] - starts[f]]
        return tuple(out)

    def fit(self, frames, y=None):
        """Fit to labelled frames.

        The steps: per-species offsets (:mod:`~kernelpot.gp.offsets`), sparse
        environments (:mod:`~kernelpot.gp.select`), whitened statistics of all
        observations (:mod:`~kernelpot.gp.assembly`), hyperparameters
        (:mod:`~kernelpot.gp.hyperparameters`), the posterior
        (:mod:`~kernelpot.gp.posterior`) and, with ``calibrate``, the variance
        weights (:mod:`~kernelpot.gp.calibration`).

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

        Raises
        ------
        ValueError
            If ``frames`` is empty, a parameter is out of range, a frame has
            no labels, or :func:`kernelpot.validate` finds an error in any frame
            (all listed, with its messages: empty structures, non-finite
            positions or labels, bad cells, label shapes, atoms on top of each
            other).

        Warns
        -----
        kernelpot.io.validation.DataWarning
            One warning listing :func:`kernelpot.validate`'s warnings (a
            stress of 500 GPa, energy and free_energy that differ, ...); and
            one per config_type whose energies match what its forces imply,
            or whose stress matches what its energies and forces imply, only
            in another convention (unit, sign, shear order:
            :mod:`kernelpot.gp.conventions`).
        RuntimeWarning
            A learned noise comparable to its labels (the fit explains little
            of them), hyperparameters at their bounds.

        Notes
        -----
        Labels follow :mod:`kernelpot.io.labels` (``free_energy`` when given).
        Noise given in the data (GAP's ``energy_sigma``, ``force_sigma``,
        ``force_atom_sigma``, ``virial_sigma``/``stress_sigma``, ``force_mask``)
        is honoured; see :func:`kernelpot.gp.assembly.training_rows`.
        """
        self._check_params()
        frames = list(frames)
        if len(frames) == 0:
            raise ValueError("fit needs at least one labelled frame, got an empty list")
        # the steps that depend on the data only, once: their errors and warnings are the same for any
        # descriptor.  The checks of kernelpot.validate, with its messages: errors raise, warnings reach the user
        report = validate(frames, require=(), raise_on_error=False)
        if report.errors:
            raise ValueError(f"fit: {len(report.errors)} problem(s) in the training frames:\n  "
                             + "\n  ".join(report.errors))
        warn_report(report, "fit")
        labels = [frame_labels(a, i) for i, a in enumerate(frames)]
        for i, (a, lab) in enumerate(zip(frames, labels)):
            if not lab:
                raise ValueError(f"{frame_name(i, a)}: no reference labels "
                                 "(attach energy/forces with a SinglePointCalculator or use kernelpot.read)")
        n_force_frames = _force_frames(frames, labels)
        _check_observations(self, frames, labels, n_force_frames)
        # before the descriptors: a bad pair is named at once (and a generator is read only once)
        sparse_points = None if self.sparse_points is None else check_sparse_points(self.sparse_points, frames)
        species = np.unique(np.concatenate([a.numbers for a in frames])).astype(int)
        e0, mean = fit_offsets(frames, labels, species, self.e0, lambda a: self._baseline_compute(a)[0])
        _warn_unseparable(composition_matrix(frames, labels, species), species)
        _warn_rare_species(frames, species)
        data = _FitData(labels, n_force_frames, sparse_points, species, e0, mean)
        # warnings that depend on the fitted model (hyperparameters at bounds, labels it cannot explain): as they
        # arise for a given descriptor; for the default one, those of the model kept
        if self.descriptor is None:
            self._fit_default_descriptor(frames, data)
        else:
            self._fit(frames, data, _FitWarnings(hold=False))
        return self

    def _fit_default_descriptor(self, frames, data):
        """``descriptor=None``: SOAP unscaled and with radial scaling, chosen by the evidence.

        Each candidate of :data:`DEFAULT_RADIAL_SCALING` is fitted up to its
        optimised log marginal likelihood (no calibration); a scaled SOAP
        replaces the unscaled one only when its evidence is higher by more
        than ``ln 100`` nats (a Bayes factor of 100, "decisive" on Jeffreys'
        scale, the step of ``n_sparse="auto"``) and its fit explains every
        kind of label the unscaled fit explains (no learned noise comparable
        to the labels, :func:`_unlearned`, that the unscaled fit does not
        have: with few sparse points a scaled fit on EMT copper once bought
        its forces by giving up the energies).  The last candidate keeps its
        rows for the calibration; when an earlier one wins it is fitted again
        (one model's memory at a time).  The label-convention check and the
        calibration (:meth:`_finish`) run on the chosen model only, and only
        its model-dependent warnings reach the caller (numerical ones, such
        as an ill-conditioned matrix, are raised where they arise, by any
        candidate).  If a scaled candidate's fit raises an ``Exception``, the
        unscaled SOAP is kept with a ``RuntimeWarning`` naming the error.
        """
        r_cut = SOAP().r_cut
        scalings = [None] + [f * r_cut for f in DEFAULT_RADIAL_SCALING]
        params = self.get_params(deep=False)

        def candidate(r0):
            # the caller's own setting objects (a Dask client is not copied), only the descriptor differs
            return type(self)(**{**params, "descriptor": SOAP(radial_scaling=r0)})

        rows, est = [], None
        for k, r0 in enumerate(scalings):
            last = k == len(scalings) - 1
            est = None  # the previous candidate's memory is released before the next fit
            est = candidate(r0)
            assembly.note(self.verbose, f"default descriptor, candidate {k + 1} of {len(scalings)}: SOAP, "
                                        f"{scaling_label(r0)}")
            t = time.perf_counter()
            held = _FitWarnings(hold=True)
            try:
                est._fit(frames, data, held, calibrate=self.calibrate and last, defer=True)
            except Exception as exc:
                if k == 0:  # the unscaled SOAP's fit fails as an explicit one would, its warnings shown first
                    held.emit()
                    raise
                _warn_at_caller(f"fit: the default descriptor's candidate SOAP(radial_scaling={r0:g}) failed "
                                f"({type(exc).__name__}: {exc}); unscaled SOAP is kept", RuntimeWarning)
                est = None
                rows.append({"radial_scaling": r0, "log_likelihood": -math.inf, "unexplained": [],
                             "seconds": time.perf_counter() - t, "error": f"{type(exc).__name__}: {exc}"})
                continue
            rows.append({"radial_scaling": r0, "log_likelihood": float(est.log_marginal_likelihood_),
                         "unexplained": sorted(est._unexplained), "seconds": time.perf_counter() - t})
        chosen = 0
        for k, row in enumerate(rows[1:], start=1):
            if (row["log_likelihood"] > rows[chosen]["log_likelihood"] + sparse_size.MIN_GAIN
                    and set(row["unexplained"]) <= set(rows[0]["unexplained"])):
                chosen = k
        if est is None or chosen < len(rows) - 1:
            est = None
            est = candidate(scalings[chosen])
            held = _FitWarnings(hold=True)
            try:
                est._fit(frames, data, held, calibrate=self.calibrate, defer=True)
            finally:
                held.emit()
        else:
            held.emit()
        assembly.note(self.verbose, "default descriptor: " + ", ".join(
            f"{scaling_label(r['radial_scaling'])} log L {r['log_likelihood']:.1f}"
            + (f" (explains little of the {', '.join(r['unexplained'])} labels)" if r["unexplained"] else "")
            for r in rows) + f"; chose {scaling_label(rows[chosen]['radial_scaling'])}")
        est._finish(frames, self.calibrate, _FitWarnings(hold=False))
        for key in [k for k in self.__dict__ if k not in params]:  # nothing of an earlier fit survives
            del self.__dict__[key]
        self.__dict__.update({k: v for k, v in est.__dict__.items() if k not in params})
        self.descriptor_choice_ = {"candidates": rows, "chosen": chosen}

    def _finish(self, frames, calibrate: bool, sink):
        """The steps that judge the fitted model: the whole-group label-convention check and, with
        ``calibrate``, the variance weights from leave-one-group-out residuals
        (:mod:`kernelpot.gp.calibration`), reading the rows the assembly kept; the row cache is closed
        after."""
        t = time.perf_counter()
        self.conventions_ = _warn_conventions(self, frames, sink)
        if self.conventions_ is not None:
            t = assembly.phase(self.verbose, "label conventions", t)
        if calibrate:
            mean_features = self.__dict__.pop("_mean_features", None)
            groups, self.calibration_groups_ = calibration_groups(self, frames, random_state=self.random_state,
                                                                  mean_features=mean_features)
            self.training_diagnostics_ = leave_one_out(self, groups=groups)
            recalibrate(self, self.training_diagnostics_)
            assembly.phase(self.verbose, "calibration (LOO)", t)
        if self._row_cache is not None:
            self._row_cache.close()
            self._row_cache = None

    def _fit(self, frames, data, sink, calibrate=None, defer=False):
        """The fit with the descriptor as set, after :meth:`fit`'s checks of the data (``data``).
        ``calibrate`` (default the setting) keeps rows for the calibration; ``defer`` stops after
        the hyperparameters and leaves :meth:`_finish` to the caller.  Warnings that depend on the
        model go to ``sink`` (:class:`_FitWarnings`) as ``(message, category)``."""
        calibrate = self.calibrate if calibrate is None else calibrate
        labels, sparse_points = data.labels, data.sparse_points
        self.species_ = data.species.copy()
        self.descriptor_ = self._make_descriptor(self.species_)
        self.extra_descriptors_ = [self._make_descriptor(self.species_, d)
                                   for d in range(1, len(self._descriptor_list()))]
        self.e0_, self.mean_ = dict(data.e0), dict(data.mean)
        self._offset = {z: self.e0_[z] + self.mean_[z] for z in self.e0_}
        self.offset_species_ = np.array(self.species_, dtype=int)
        self.offset_kappa_ = OFFSET_KAPPA
        assembly.announce_compilation(self.verbose, self.descriptor_)
        t = time.perf_counter()
        feats = assembly.compute_features(self, frames)
        t = assembly.phase(self.verbose, "descriptors", t, f"{len(frames)} frames")
        self.pair_ = None
        if self.two_body is not False:
            settings = self.two_body if isinstance(self.two_body, TwoBody) else TwoBody()
            self.pair_ = PairTerm.build(settings, frames, self.species_, float(self.descriptor_.r_cut))
        self.noise_groups_ = assembly.group_names(self, frames, labels)
        self.sparse_growth_ = None
        auto = self.sparse_points is None and isinstance(self.n_sparse, str)
        n_pick, available = self._largest_auto_size(frames) if auto else (int(self.n_sparse), None)
        with _threads.limit(blas_threads=_threads.threads_for_matrix(n_pick * len(self.species_))):
            self.sparse_index_, self.sparse_ = choose_sparse_set(
                feats, frames, self.species_, n_pick, self.sparse_method, self.zeta, self.random_state,
                sparse_points, _SPARSE_TOL, ordered=auto)
            if self.extra_descriptors_:
                self.sparse_ = self._sum_sparse_set(frames, self.sparse_)
        # later only the calibration's clusters read the descriptors, through each frame's mean: the
        # per-atom features are freed here (126 MB on acetylacetone's 500 frames)
        mean_features = np.array([f.features.mean(axis=0) for f in feats])
        del feats
        self.wall_ = WallPrior.build(frames, self.species_, float(self.descriptor_.r_cut))
        # Kmm itself is not kept (77 MB at M = 3100): a model file recomputes it (Posterior.sparse_kernel)
        self._Lmm, _ = safe_cholesky(model_kernel(self.sparse_, self.zeta, self.pair_), "sparse kernel Kmm",
                                     jitter=_KMM_JITTER)
        t = assembly.phase(self.verbose, "sparse selection", t, f"{self.sparse_.n_env} sparse points"
                           + ("" if self.sparse_.n_parts == 1 else f" x {self.sparse_.n_parts} SOAP terms")
                           + ("" if self.pair_ is None else f" + {self.pair_.size} two-body"))
        if self.verbose:
            n_obs = sum(sum(np.size(v) for v in lab.values()) for lab in labels)
            assembly.note(True, f"assembling {n_obs} observations of {len(frames)} frames; "
                                f"peak memory ~{assembly.memory_estimate(self, frames) / 2**20:.0f} MiB")
        # rows kept for the calibration's leave-one-out: one sweep over the structures per fit
        self._row_cache = (assembly.RowCache(assembly.n_columns(self)) if calibrate and self.client is None
                           else None)
        self._stats = assembly.accumulate(self, frames, labels, cache=self._row_cache)
        t = assembly.phase(self.verbose, "assembly", t)
        theta0, bounds, fixed = self._initial_theta()
        if auto:
            theta, self.n_likelihood_evaluations_, scale = self._grow_sparse_set(theta0, bounds, fixed, n_pick,
                                                                                 available, sink)
            t = assembly.phase(self.verbose, "sparse set size", t, f"{self.sparse_.size} sparse points")
        else:
            theta, self.n_likelihood_evaluations_, scale = hyperparameters.search(
                self._stats, theta0, bounds, fixed, self.energy_noise, verbose=self.verbose, warn=sink,
                **self._scale_search())
        self._apply_scales(scale)
        self._offset_prior(frames)
        self._train_frames = frames
        self._solve(theta)
        unlearned = _unlearned(self, frames, labels)
        self._unexplained = {kind for kind, _ in unlearned}
        sink.extend((message, RuntimeWarning) for _, message in unlearned)
        _warn_no_forces(self, frames, labels, data.n_force_frames, sink)
        assembly.phase(self.verbose, "hyperparameters", t)
        self.std_weights_ = {}
        for name in ("training_diagnostics_", "descriptor_choice_", "conventions_", "calibration_groups_"):
            self.__dict__.pop(name, None)
        if calibrate:
            self._mean_features = mean_features
        elif self._row_cache is not None:
            self._row_cache.close()
            self._row_cache = None
        if not defer:
            self._finish(frames, calibrate, sink)
        return self

    def _n_extra_columns(self):
        """Whitened columns besides the sparse environments: the two-body grid and the offsets."""
        pair = getattr(self, "pair_", None)
        return (0 if pair is None else pair.size) + len(getattr(self, "offset_species_", ()))

    def _largest_auto_size(self, frames):
        """Environments per species of the largest size ``n_sparse="auto"`` may try (memory budget),
        and the environments of each species in ``frames`` ({Z: count})."""
        Z = np.concatenate([a.numbers for a in frames])
        available = {int(z): int(np.sum(Z == z)) for z in self.species_}
        sizes = sparse_size.rungs(available, self._n_extra_columns(), len(self.noise_groups_),
                                  self.max_memory * 2**30)
        return max(max(c.values()) for c in sizes), available

    def _grow_sparse_set(self, theta0, bounds, fixed, n_pick, available, sink=None):
        """``n_sparse="auto"``: compare nested sparse sets by the evidence (:mod:`kernelpot.gp.sparse_size`).

        The statistics were accumulated for the largest set; the chosen one's
        sub-block replaces them, with the sparse set, its Cholesky factor and
        the cached rows cut to match.  Returns the chosen set's hyperparameter
        search result ``(theta, n_evaluations, scale)``; the evaluations are
        those of every size tried.
        """
        M = self.sparse_.size
        P = 0 if self.pair_ is None else self.pair_.size
        blocks = {z: (a, b) for z, a, b in self.sparse_.blocks()}
        sizes = sparse_size.rungs({z: b - a for z, (a, b) in blocks.items()}, self._n_extra_columns(),
                                  len(self.noise_groups_), self.max_memory * 2**30)


        def search(sub, ix):
            mask = None if P == 0 else (ix >= M) & (ix < M + P)
            theta, n_eval, scale = hyperparameters.search(sub, theta0, bounds, fixed, self.energy_noise,
                                                          verbose=self.verbose, warn=False, scale_mask=mask)
            return (theta, n_eval, scale, -float(neg_log_marginal_likelihood(theta, sub, grad=False)),
                    hyperparameters.energy_loo_log_density(theta, sub))

        chosen, steps, reason = sparse_size.grow(self._stats, blocks, sizes, search,
                                                 note=lambda text: assembly.note(self.verbose, text))
        ix, sub, theta, _, scale = steps[chosen].result
        hyperparameters.warn_at_bounds(theta, bounds, fixed, sub.names, stacklevel=4, sink=sink)
        if reason is None:
            more = any(n > n_pick for n in available.values())
            reason = ("the next size would exceed max_memory" if more and n_pick < sparse_size.LADDER[-1]
                      else "the largest size of the ladder" if more else "every environment of the data is used")
        self.sparse_growth_ = {
            "steps": [{"counts": {chemical_symbols[z]: n for z, n in st.counts.items()},
                       "log_likelihood": st.log_likelihood, "energy_loo": st.energy_loo, "seconds": st.seconds}
                      for st in steps],
            "chosen": chosen, "reason": reason}
        keep = ix[ix < M]
        assembly.note(self.verbose, f"kept {len(keep)} sparse points: {reason}")
        kernel_cols = ix[ix < M + P]
        self.sparse_index_ = self.sparse_index_[keep]
        self.sparse_ = SparseSet(self.sparse_.X[keep], self.sparse_.numbers[keep])
        self._Lmm = np.asfortranarray(self._Lmm[np.ix_(kernel_cols, kernel_cols)])
        self._stats = sub
        if self._row_cache is not None:
            self._row_cache.select_columns(ix, M)
        return theta, sum(st.n_evaluations for st in steps), scale

    def _scale_terms(self):
        """Kernel terms whose prior std relative to ``delta`` is learned: ``(labels, nystrom_parts)``.

        ``labels`` (W,) int: 1 on the two-body term's columns, then ``1 + t``
        (or ``t`` without one) on those of further SOAP term ``t`` of a kernel
        sum, 0 elsewhere; ``nystrom_parts[t - 1]``: the term's column in the kept
        (n, D) Nystrom residuals (None for the exact two-body term).  ``(None,
        [])`` when there is no such term.  :meth:`_scale_search` adds each
        term's current scale and name.
        """
        labels = np.zeros(assembly.n_columns(self), np.int64)
        parts = []
        M = self.sparse_.size
        if getattr(self, "pair_", None) is not None:
            labels[M:M + self.pair_.size] = 1
            parts.append(None)
        for d, cols in enumerate(self.sparse_.part_slices()[1:], start=1):
            labels[cols] = len(parts) + 1
            parts.append(d)
        return (labels, parts) if parts else (None, [])

    def _scale_search(self) -> dict:
        """Keyword arguments of :func:`kernelpot.gp.hyperparameters.search` for the learned kernel scales."""
        terms, parts = self._scale_terms()
        current = [self.pair_.scale if p is None else self.sparse_.scales[p - 1] for p in parts]
        names = ["two-body scale" if p is None else f"scale of SOAP {p + 1}" for p in parts]
        return dict(scale_mask=terms, nystrom_parts=parts, scale_current=current, scale_names=names)

    def _apply_scales(self, scales):
        """The search rescaled each learned term's columns of the statistics (:meth:`_scale_terms`): so do
        its rows from now on (the two-body term's ``scale``, the kernel sum's ``sparse_.scales``)."""
        labels, parts = self._scale_terms()
        for t, (r, part) in enumerate(zip(np.atleast_1d(scales), parts)):
            if part is None:
                self.pair_.scale *= float(r)
            else:
                self.sparse_.scales[part - 1] *= float(r)
            if getattr(self, "_row_cache", None) is not None:
                self._row_cache.scale_columns(labels == t + 1, float(r), part)

    def _offset_prior(self, frames, n_sample: int = 64):
        """Widen the offsets' prior to the prior std of a whole local energy, SOAP's and the two-body term's.

        An offset is a priori as uncertain as one local energy
        (:mod:`kernelpot.gp.offsets`); with the two-body term a local energy
        is SOAP's (reduced prior variance 1, or ``sum_d r_d^2`` for a kernel
        sum) plus half the pair energies of its neighbours, whose prior
        variance grows with the learned scale.  Left at ``delta``, the offsets
        would be the only cheap way to move energy, and a composition the data
        never separate (Cu3Au) would be reported as known.  ``kappa =
        OFFSET_KAPPA sqrt(sum_d r_d^2 + median pair prior)`` over the atoms of
        up to ``n_sample`` training frames; the statistics' offset columns are
        rescaled to it.
        """
        soap = float(np.sum(self.sparse_.part_scales ** 2))
        if (self.pair_ is None and self.sparse_.n_parts == 1) or not len(getattr(self, "offset_species_", ())):
            return
        K = self.sparse_.size + (0 if self.pair_ is None else self.pair_.size)
        q = [0.0]
        if self.pair_ is not None:
            Lp = self._Lmm[self.sparse_.size:K, self.sparse_.size:K]
            step = max(1, len(frames) // n_sample)
            q = np.concatenate([self.pair_.local_prior(a, Lp) for a in frames[::step]])
        kappa = OFFSET_KAPPA * float(np.sqrt(soap + np.median(q)))
        mask = np.zeros(assembly.n_columns(self), bool)
        mask[K:] = True
        self._stats.scale_columns(mask, kappa / self.offset_kappa_)
        if getattr(self, "_row_cache", None) is not None:
            self._row_cache.scale_columns(mask, kappa / self.offset_kappa_)
        self.offset_kappa_ = kappa

    def _initial_theta(self):
        return hyperparameters.initial_theta(self._stats, self.delta, self.sigma_energy, self.sigma_force,
                                             self.sigma_stress)

    def _solve(self, theta=None):
        """Set the hyperparameters (default: keep ``theta_``) and the posterior they give."""
        self.theta_ = np.asarray(self.theta_ if theta is None else theta, float)
        self.delta_ = float(np.exp(self.theta_[0]))
        self.noise_ = {g: float(np.exp(t)) for g, t in zip(self.noise_groups_, self.theta_[1:])}
        self.log_marginal_likelihood_ = -float(neg_log_marginal_likelihood(self.theta_, self._stats, grad=False))
        self.posterior_ = Posterior.from_statistics(self.theta_, self._stats, self.sparse_, self.zeta, None,
                                                    self._Lmm, getattr(self, "offset_species_", ()),
                                                    getattr(self, "offset_kappa_", 0.0), getattr(self, "pair_", None))
        self.alpha_ = self.posterior_.alpha

    def _optimize_or_keep(self, optimize):
        theta = self.theta_
        if optimize:
            theta0, bounds, fixed = self._initial_theta()
            theta0[~fixed] = self.theta_[~fixed]
            theta, self.n_likelihood_evaluations_, scale = hyperparameters.search(
                self._stats, theta0, bounds, fixed, self.energy_noise, scan_delta=False, warn=False,
                **self._scale_search())
            self._apply_scales(scale)
            self._offset_prior(self._train_frames)  # the offsets' prior follows the learned scales, as in fit
        self._solve(theta)

    def refit(self, frames, optimize: bool = False):
        """Refit the weights on ``frames`` keeping sparse set, descriptor, offsets and the repulsion prior.

        Hyperparameters are kept too unless ``optimize``.  This is the
        brute-force counterpart of the closed-form leave-one-out in
        :mod:`kernelpot.gp.loo`, and the cheap path for active learning.
        The repulsion prior (``wall_``) keeps the fit's shortest distances,
        as the two-body term keeps its grid: a structure left out is judged
        by the model's own variance, as the leave-one-out judges it.

        Returns
        -------
        self
        """
        self._check_fitted()
        frames = list(frames)
        # the fit's own assembly (on the Dask client when there is one)
        self._stats = assembly.accumulate(self, frames, assembly.labels_in_groups(self, frames))
        self._train_frames = frames
        self.__dict__.pop("training_diagnostics_", None)
        self.__dict__.pop("conventions_", None)
        self._optimize_or_keep(optimize)
        return self

    def update(self, frames, optimize: bool = True):
        """Add labelled ``frames`` to the training set without recomputing the old ones.

        The sparse set is unchanged, so the cost is that of the new frames'
        descriptors and rows plus O(M^3); hyperparameters are re-optimised
        (cheap: the likelihood only needs the accumulated statistics) unless
        ``optimize=False``.  New config_types fall into existing noise groups
        by kind when ``noise_per_config_type`` is off; with it on, frames of an
        unseen config_type raise ``ValueError`` (refit instead).  The
        repulsion prior's shortest distances (``wall_``) are lowered to the
        new frames' pairs.

        Returns
        -------
        self

        Raises
        ------
        RuntimeError
            On a model read from a file, which does not keep the training
            statistics: ``refit`` on all the frames instead.
        """
        self._check_fitted()
        if getattr(self, "_stats", None) is None:
            raise RuntimeError("update() adds to the statistics of the training set, which a model file does not "
                               "keep; on a loaded model call refit(training_frames + new_frames) instead")
        frames = list(frames)
        # the new frames' statistics by the fit's own assembly (on the Dask client when there is one)
        self._stats.merge(assembly.accumulate(self, frames, assembly.labels_in_groups(self, frames)))
        self._train_frames = list(self._train_frames) + frames
        if getattr(self, "wall_", None) is not None:
            self.wall_ = self.wall_.including(frames)
        self.__dict__.pop("training_diagnostics_", None)
        self.__dict__.pop("conventions_", None)
        self._optimize_or_keep(optimize)
        return self

    def _baseline_compute(self, atoms):
        if self.baseline is None:
            n = len(atoms)
            return 0.0, np.zeros((n, 3)), np.zeros(6)
        return self.baseline.compute(atoms)

    # ------------------------------------------------------------- predict
    def _check_fitted(self):
        if not hasattr(self, "posterior_"):
            raise RuntimeError("this SparseGP is not fitted yet; call fit(frames) first")

    def _noise_for(self, kind, atoms):
        g = assembly.group_of(self, kind, atoms)
        if g in self.noise_:
            return self.noise_[g]
        vals = [v for k, v in self.noise_.items() if k.split(":")[0] == kind]
        return float(np.sqrt(np.mean(np.square(vals)))) if vals else 0.0

    @_threads.for_atoms  # numba and BLAS threads fitted to the cell size (KERNELPOT_NUM_THREADS caps them)
    def predict_frame(self, atoms, return_std=True, forces=True, stress=None, alpha=None, calibrated=True):
        """Predictions and uncertainties for one structure.

        Parameters
        ----------
        atoms : ase.Atoms
        return_std : bool
            Also the predictive standard deviations.
        forces : bool
            Also forces.
        stress : bool, optional
            Also stress (default: when the cell is periodic; ``True`` for a
            structure that is not raises).
        alpha : (M,) array, optional
            Replaces the posterior-mean weights (used for posterior samples).
        calibrated : bool
            Apply the calibration weights ``std_weights_`` (``False``: raw GP variances).

        Returns
        -------
        dict
            ``energy`` (eV), ``energies`` (n,), ``forces`` (n, 3), ``stress``
            (6,) (NaN when not periodic) and, with ``return_std``,
            ``energy_std``, ``forces_std``, ``stress_std`` (total),
            ``*_std_epistemic`` (posterior of the latent GP only) and
            ``energies_std`` (n,) (posterior std of each local energy, eV: a
            latent quantity, so epistemic only; labels fix only sums of local
            energies, so it is mostly how the energy may be split among atoms,
            not how unusual an environment is), all with the
            weights of :func:`kernelpot.gp.calibration.recalibrate` when it was
            run (``std_weights_``) unless ``calibrated=False``; and
            ``extrapolation`` (float: the structure's largest latent variance
            over the largest the calibration's held-out data reached, over the
            kinds predicted, :func:`kernelpot.gp.posterior.extrapolation`;
            above 1 the sigma is checked by no held-out error and is a lower
            bound; NaN uncalibrated).  Where two
            atoms are closer than any pair of their species in the training
            data, every std (epistemic and total, calibrated or not) also
            carries the repulsion prior of :mod:`kernelpot.gp.wall`.
            ``energies`` includes e0 and mean offsets; a baseline's energy is
            shared equally among atoms.

        Raises
        ------
        ValueError
            If the structure has no atoms, non-finite positions, a periodic
            direction without a usable lattice vector, or an element the model
            was not trained on (the messages of :func:`kernelpot.validate`).
            An empty structure has no defined prediction: every entry point
            (``validate``, ``fit``, ``predict``, the calculator) rejects it.
            Also if ``stress=True`` for a structure without a periodic cell
            (all ``pbc`` True, non-zero volume): its stress is undefined.
        """
        self._check_fitted()
        _one_atoms(atoms, "predict_frame")
        check_structure(atoms, species=self.species_)
        post = self.posterior_
        per = is_periodic(atoms)
        if stress and not per:
            raise ValueError(f"{frame_name(None, atoms)}: stress=True, but the structure has no periodic cell "
                             f"(pbc={atoms.pbc.tolist()}, volume {atoms.cell.volume:.3g} Å^3), so no stress; "
                             "leave stress=None to get it only where it is defined")
        stress = per if stress is None else bool(stress)
        feat = assembly.describe(self, atoms, gradients=forces, strain=stress)
        vol = atoms.cell.volume if stress else None
        if return_std:  # the variances need the design rows: the mean comes from them too
            design = post.design(feat, vol, forces, stress)
            m = post.mean_from_design(design, atoms.numbers, alpha)
        else:
            m = post.mean(feat, vol, forces=forces, stress=stress, alpha=alpha)
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
        var = post.latent_variances(feat, vol, forces=forces, stress=stress, design=design)
        cal = getattr(self, "std_weights_", {}) if calibrated else {}
        noise = {"energy": n * self._noise_for("energy", atoms)}
        for kind in ("forces", "stress"):
            if kind in var:
                noise[kind] = self._noise_for(kind, atoms)
        wall = self._wall_variances(atoms, forces, stress)
        # local energies are latent, never observed: no noise; the energy kind's calibration
        v_local, ny_local = var.pop("energies")
        out["energies_std"] = np.sqrt(predictive_std(v_local, 0.0, cal.get("energy", (1.0, 1.0)), "energy",
                                                     ny_local)[0] ** 2 + wall["energies"])
        out["extrapolation"] = float("nan")
        for kind, (v, ny) in var.items():
            # a noise group's own weights (noise_per_config_type), else the kind's
            w = cal.get(assembly.group_of(self, kind, atoms), cal.get(kind, (1.0, 1.0)))
            out["extrapolation"] = float(np.fmax(out["extrapolation"], extrapolation(v, w, kind, n, ny)))
            se, st = predictive_std(v, noise[kind], w, kind, ny, n_atoms=n)
            # the repulsion prior below the data (kernelpot.gp.wall): zero on the calibration's data
            se, st = np.sqrt(se ** 2 + wall[kind]), np.sqrt(st ** 2 + wall[kind])
            # never below the floor, also for a kind the model was not trained or calibrated on
            # (a stress component of a crystal fixed by symmetry has zero latent variance)
            st = np.maximum(st, SIGMA_FLOOR[kind] * (n if kind == "energy" else 1.0))
            out[f"{kind}_std_epistemic"], out[f"{kind}_std"] = se, st
        out["energy_std_epistemic"] = float(out["energy_std_epistemic"][0])
        out["energy_std"] = float(out["energy_std"][0])
        if not stress:
            out["stress_std_epistemic"] = np.full(6, np.nan)
            out["stress_std"] = np.full(6, np.nan)
        return out

    def _wall_variances(self, atoms, forces, stress) -> dict:
        """Variances of the repulsion prior below the data (:class:`kernelpot.gp.wall.WallPrior`), zeros without it."""
        wall = getattr(self, "wall_", None)
        if wall is None:
            return no_variances(len(atoms), forces, stress)
        return wall.variances(atoms, forces=forces, stress=stress)

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
        if isinstance(frames, (str, bytes, os.PathLike)):
            raise ValueError(f"predict takes ase.Atoms, got the path {str(frames)!r}: read it first "
                             "(kernelpot.read(path))")
        frames = _atoms_list(frames, "predict", "frame")
        if not frames:
            raise ValueError("predict needs at least one frame, got an empty list")
        # every frame is checked before any work, so a bad frame is named at once, not after the batch
        found: dict = {}   # one line per problem, naming every frame that has it (not one line per frame)
        for i, a in enumerate(frames):
            name = frame_name(i, a)
            for m in structure_errors(a, name, self.species_):
                found.setdefault(m[len(name) + 2:] if m.startswith(name + ": ") else m, []).append((i, name))
        if found:
            errors = [f"{hits[0][1]}: {what}" if len(hits) == 1 else
                      f"{len(hits)} frames {_list([i for i, _ in hits])}: {what}" for what, hits in found.items()]
            n = sum(len(h) for h in found.values())
            raise ValueError(f"predict: {n} problem(s) in the frames:\n  " + "\n  ".join(errors))
        res = [self.predict_frame(a, return_std=return_std)
               for a in assembly.progress(frames, self.verbose, "predict")]
        out = {"n_atoms": np.array([len(a) for a in frames]),
               "frame_index": np.concatenate([np.full(len(a), i) for i, a in enumerate(frames)])}
        for key in res[0]:
            vals = [r[key] for r in res]
            out[key] = np.concatenate(vals) if np.ndim(vals[0]) >= 1 and key in (
                "forces", "forces_std", "forces_std_epistemic", "energies", "energies_std") else np.array(vals)
        return out

    def score(self, frames, y=None):
        """Negative force-component RMSE (eV/Å) on labelled frames (energy per atom if no forces).

        Higher is better, as scikit-learn expects from ``score``.
        """
        return score(self, frames)

    # ---------------------------------------------------------- posterior
    def sample_weights(self, n_samples: int, random_state=0) -> np.ndarray:
        """Samples of the sparse weights from their posterior ``N(alpha_, C^-1)``.

        Returns
        -------
        (n_samples, M) array
        """
        self._check_fitted()
        return self.posterior_.sample_weights(n_samples, random_state)

    def posterior_calculators(self, n_samples: int = 10, random_state=0, reference=None,
                              kinds=("energy", "forces", "stress")):
        """ASE calculators, one per posterior sample of the model, for properties with error bars.

        Each calculator is one smooth potential (forces and stress are exact
        derivatives of its energy), so a property computed with each --
        relaxed lattice constant, elastic constants, phonons -- gives its
        posterior spread (:func:`kernelpot.workflows.properties.with_error_bars`).
        Each also draws the amplitudes of the repulsion prior below the data
        (:mod:`kernelpot.gp.wall`) and adds their pair term, unscaled: where
        atoms come closer than in any training structure (a compressed EOS
        point) the samples spread by that prior's exact variance, as the
        calculator's sigma does.

        Parameters
        ----------
        n_samples : int
        random_state : int
        reference : ase.Atoms or list of ase.Atoms, optional
            The structures the property is computed at (the cell of an EOS or
            elastic constants, the supercell of a vacancy).  Weight samples
            carry only the DTC posterior of the weights, neither the Nyström
            residual nor the calibration of :mod:`kernelpot.gp.calibration`.
            With ``reference`` their deviations from the mean are scaled by
            one factor ``f``, the largest over the reference structures and
            over the ``kinds`` they have (stress only for a periodic cell) of
            ``sigma_calibrated / sigma_weights``, with ``sigma`` the
            root-mean-square epistemic std of that kind's components (see
            :meth:`sample_scales`).  So at the reference that sets ``f`` the
            binding kind spreads exactly as the calculator's calibrated
            ``*_std_epistemic`` says (in root-mean-square over its
            components), and every other kind and reference at least as much:
            a linearised propagation of the calibrated predictive distribution
            that stays one potential, conservative for the kinds that do not
            bind.  The binding kind matters: a lattice constant or an elastic
            constant is set by the stress (the derivative of the energy),
            whose calibration can be wider than the energy's; sampled at the
            stress's scale, energies may spread several times wider than their
            own calibrated sigma.  Without ``reference`` (``f = 1``) the spread
            is the raw weight posterior's.
        kinds : str or sequence of str, default ("energy", "forces", "stress")
            The kinds whose calibrated sigma the samples must reach at the
            reference.  For a property set by one kind, that kind alone makes
            its error bar match the calculator's sigma rather than exceed it:
            ``"stress"`` for an EOS or elastic constants, ``"energy"`` for a
            formation or surface energy.  Use as references only the
            structures the property is computed at: one far from the training
            data (a molecule for a bulk model) can need a large factor, which
            then widens every sample everywhere.

        Returns
        -------
        list of :class:`kernelpot.Calculator`
            With ``calc.scale`` the factor ``f`` used and ``calc.scales`` the
            ratio of each kind at each reference (``sample_scales``).

        Raises
        ------
        ValueError
            If a reference is not an ``ase.Atoms``, is empty or has an element
            the model was not trained on, or ``kinds`` is empty or names an
            unknown kind.

        Warns
        -----
        RuntimeWarning
            When a reference is given but none of its kinds has a ratio (the
            samples then stay unscaled, ``f = 1``).
        """
        self._check_fitted()
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        unknown = set(kinds) - {"energy", "forces", "stress"}
        if unknown or not kinds:
            raise ValueError(f"kinds: {sorted(unknown) or 'none given'}; choose one or more of energy, forces, stress")
        refs = [] if reference is None else _atoms_list(reference, "reference", "entry")
        scales = [self.sample_scales(a, kinds) for a in refs]
        ratios = [r for s in scales for r in s.values()]
        if reference is not None and not ratios:
            warnings.warn(f"posterior_calculators: no reference structure has a calibrated {'/'.join(kinds)} sigma to "
                          "match (an empty list, a molecule's stress, a perfect crystal's forces); the samples are "
                          "the raw weight posterior's (f = 1), not scaled to the calculator's sigma", RuntimeWarning,
                          stacklevel=2)
        f = max(ratios, default=1.0)
        samples = self.sample_weights(n_samples, random_state)
        alpha = self.posterior_.alpha
        wall = getattr(self, "wall_", None)
        # the repulsion prior's amplitudes, drawn beside the weights and not scaled: its variance is exact
        # (a stream of its own: the weight samples draw from default_rng(random_state))
        seed = None if random_state is None else [int(random_state), 1]
        xis = (np.random.default_rng(seed).standard_normal((n_samples, len(wall.pairs)))
               if wall is not None else [None] * n_samples)
        out = []
        for w, xi in zip(samples, xis):
            calc = Calculator(_WeightView(self, alpha + f * (w - alpha), xi), uncertainty=False)
            calc.scale = f
            calc.scales = scales
            out.append(calc)
        return out

    def sample_scales(self, atoms, kinds=("energy", "forces", "stress")) -> dict:
        """Calibrated over weight-sample epistemic std of each kind at ``atoms``.

        For each kind (``energy``; ``forces``; ``stress`` when ``atoms`` is a
        periodic cell): ``sqrt(sum_c s_c^2 / sum_c w_c^2)`` over the kind's
        components ``c``, with ``s_c`` the calibrated ``*_std_epistemic`` of
        :meth:`predict_frame` (the GP's own std for a kind the model has no
        calibration of) and ``w_c^2`` the part of the latent variance the
        weight samples of :meth:`sample_weights` carry (the latent variance
        without its Nyström residual): a ratio of root-mean-square stds over
        the components.  A kind whose weight variance vanishes (the forces of
        a perfect crystal, fixed by symmetry) is left out.

        Parameters
        ----------
        atoms : ase.Atoms
        kinds : sequence of str, default ("energy", "forces", "stress")
            The kinds to compute (forces and stress need the descriptor
            gradients: leave them out when they are not wanted).

        Returns
        -------
        dict
            ``{kind: ratio}``, dimensionless.

        Raises
        ------
        ValueError
            If ``atoms`` is not one ``ase.Atoms``, is empty or has an element
            the model was not trained on.
        """
        self._check_fitted()
        _one_atoms(atoms, "sample_scales")
        check_structure(atoms, species=self.species_)
        per = is_periodic(atoms)
        forces, stress = "forces" in kinds, "stress" in kinds and per
        feat = assembly.describe(self, atoms, gradients=forces, strain=stress)
        var = self.posterior_.latent_variances(feat, atoms.cell.volume if stress else None, forces=forces,
                                               stress=stress)
        var.pop("energies")
        cal = getattr(self, "std_weights_", {})
        out = {}
        for kind, (v, ny) in var.items():
            if kind not in kinds:
                continue
            target = predictive_std(v, 0.0, cal.get(kind, (1.0, 1.0)), kind, ny, n_atoms=len(atoms))[0] ** 2
            raw = np.ravel(v - ny)
            # components fixed by symmetry (forces of a perfect crystal) have a variance at rounding level
            keep = raw > (1e-3 * SIGMA_FLOOR[kind] * (len(atoms) if kind == "energy" else 1.0)) ** 2
            if np.any(keep):
                out[kind] = float(np.sqrt(np.sum(np.ravel(target)[keep]) / np.sum(raw[keep])))
        return out

    def train_fingerprint(self):
        """:func:`kernelpot.io.labels.training_fingerprint` of the frames the model was fitted on (None: unknown)."""
        frames = getattr(self, "_train_frames", None)
        if frames is not None:
            return training_fingerprint(frames)
        return getattr(self, "train_fingerprint_", None)

    def training_frames(self, frames=None, where: str = "frames") -> list:
        """The frames the model was fitted on: ``frames`` checked against the fit, or the ones it kept.

        Parameters
        ----------
        frames : list of ase.Atoms, optional
            The training frames, in training order (None: those the model holds).
        where : str
            How the caller's argument is named in messages.

        Returns
        -------
        list of ase.Atoms

        Raises
        ------
        ValueError
            If ``frames`` is None and the model does not hold its training
            frames (a model read by :func:`kernelpot.load` keeps only their
            fingerprint), or if ``frames`` are not its training frames
            (:meth:`check_training_frames`).
        """
        if frames is None:
            frames = getattr(self, "_train_frames", None)
            if frames is None:
                n = getattr(self, "n_train_frames_", None)
                raise ValueError("this model does not hold its training frames (a saved model keeps only their "
                                 f"fingerprint); pass {where}= the {'' if n is None else f'{n} '}structures it "
                                 "was fitted on, in training order")
            return list(frames)
        frames = list(frames)
        self.check_training_frames(frames, where)
        return frames

    def check_training_frames(self, frames, where: str = "frames") -> None:
        """Raise ``ValueError`` unless ``frames`` are the frames the model was fitted on, in order.

        Screening and auditing recompute the fit's leave-one-out from them; other frames (another
        file of as many structures) give the leave-one-out of the wrong data.  Models saved before the
        fingerprint was kept are checked by their count only.
        """
        n = getattr(self, "n_train_frames_", None)
        if getattr(self, "_train_frames", None) is not None:
            n = len(self._train_frames)
        if n is not None and n != len(frames):
            raise ValueError(f"{where} has {len(frames)} structures but the model was fitted on {n}; "
                             "pass its training frames in training order")
        want = self.train_fingerprint()
        if want is not None and not same_fingerprint(training_fingerprint(frames), want):
            raise ValueError(f"{where} are not the frames this model was fitted on (same count, but other "
                             "structures, labels or order); pass its own training frames in training order")

    def calculator(self, uncertainty: bool = True):
        """An ASE calculator over this model (see :class:`kernelpot.Calculator`)."""
        return Calculator(self, uncertainty=uncertainty)

    # --------------------------------------------------------------- files
    def save(self, path, compact: bool = False):
        """Write the fitted model to one ``.npz`` file (no pickle); see :mod:`kernelpot.modelfile`.

        The file holds the settings, the learned scalars (noise, delta,
        offsets, calibration weights) and the arrays of the posterior: the
        sparse environments (M, n_features), the weights (M,) and three
        (M, M) matrices (``Kmm``, its Cholesky factor ``Lmm`` and ``Lc``).  It
        holds no training structures or training statistics, so a loaded
        model predicts (values and standard deviations) and can be screened
        against its training frames (``kernelpot.screen(model, frames)``),
        but ``refit``/``update`` need the frames again.

        Parameters
        ----------
        path : str or Path
            ``.npz`` is appended when missing.
        compact : bool, default False
            Leave out ``Kmm`` and ``Lmm``, which :meth:`load` recomputes from the
            sparse environments exactly as ``fit`` did (two of the three
            (M, M) matrices: about half the file; loading costs one kernel
            matrix and one Cholesky factorisation, O(M^2 n_features + M^3)).
            Predictions of the loaded model are the same.
        """
        self._check_fitted()
        header, arrays = self._state()
        if compact:
            header["fitted"]["compact"] = True
            arrays = {k: v for k, v in arrays.items() if k not in _RECOMPUTED}
        modelfile.write_model_file(path, header, arrays)

    def _state(self):
        """The fitted state as a JSON-able header and a dict of arrays (see :mod:`kernelpot.modelfile`)."""
        params = self.get_params(deep=False)
        params.pop("descriptor")
        params.pop("baseline")
        params.pop("client")  # a live connection, not a setting of the model
        fingerprint = self.train_fingerprint()
        if isinstance(params["two_body"], TwoBody):
            params["two_body"] = {"TwoBody": dict(vars(params["two_body"]))}
        else:
            params["two_body"] = bool(params["two_body"])
        if params["sparse_points"] is not None:
            params["sparse_points"] = [list(map(int, p)) for p in params["sparse_points"]]
        if isinstance(params["e0"], dict):
            params["e0"] = {str(k): float(v) for k, v in params["e0"].items()}
        header = {
            "params": modelfile.jsonable(params),
            "descriptor": modelfile.jsonable(self.descriptor_.saved_params()),
            "extra_descriptors": [modelfile.jsonable(d.saved_params()) for d in getattr(self, "extra_descriptors_", ())],
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "fitted": {
                "delta_": self.delta_,
                "noise_": self.noise_,
                "noise_groups_": list(self.noise_groups_),
                "e0_": {str(k): v for k, v in self.e0_.items()},
                "mean_": {str(k): v for k, v in self.mean_.items()},
                "species_": [int(z) for z in self.species_],
                "log_marginal_likelihood_": self.log_marginal_likelihood_,
                # how many structures the model was fitted on: lets a loaded model's leave-one-out be
                # recomputed from the same training file (kernelpot audit --model)
                "n_train_frames_": (len(self._train_frames) if getattr(self, "_train_frames", None) is not None
                                    else getattr(self, "n_train_frames_", None)),
                # which file it was: screen / audit against "the training file" check it (labels.training_fingerprint)
                "train_fingerprint_": None if fingerprint is None else np.asarray(fingerprint).tolist(),
                "std_weights_": {k: list(v) for k, v in getattr(self, "std_weights_", {}).items()},
                "offset_species_": [int(z) for z in getattr(self, "offset_species_", ())],
                "offset_kappa_": float(getattr(self, "offset_kappa_", 0.0)),
                "pair_": None if getattr(self, "pair_", None) is None else self.pair_.to_dict(),
                "sparse_scales_": [float(r) for r in self.sparse_.scales],
                "sparse_extra_index_": [[int(i) for i in ix] for ix in self.sparse_.extra_index],
                "wall_": None if getattr(self, "wall_", None) is None else self.wall_.to_dict(),
            },
        }
        post = self.posterior_
        arrays = {"alpha_": self.alpha_, "theta_": self.theta_, "sparse_index_": self.sparse_index_,
                  "sparse_X": self.sparse_.X, "sparse_numbers": self.sparse_.numbers,
                  "Lmm": post.Lmm, "Lc": post.Lc, "Kmm": post.sparse_kernel(), "a": post.a}
        if self.sparse_.extra:  # each further block's features, flattened one after the other
            arrays["sparse_X_extra"] = np.concatenate([x.ravel() for x in self.sparse_.extra])
        return header, arrays

    @classmethod
    def load(cls, path) -> "SparseGP":
        """Read a model written by :meth:`save` (see :func:`kernelpot.modelfile.read_model_file`)."""
        header, data = modelfile.read_model_file(path, [n for n in _ARRAY_NAMES if n not in _RECOMPUTED])
        if not header["fitted"].get("compact"):
            data.update(modelfile.read_model_file(path, ("sparse_numbers",) + _RECOMPUTED)[1])
        baseline = None
        if header.get("baseline") is not None:
            from kernelpot.baselines import from_dict
            baseline = from_dict(header["baseline"])
        params = dict(header["params"])
        if params.get("sparse_points") is not None:
            params["sparse_points"] = [tuple(p) for p in params["sparse_points"]]
        if isinstance(params.get("two_body"), dict):
            params["two_body"] = TwoBody(**params["two_body"]["TwoBody"])
        # files written before the two-body term (0.2.0 and older) have none
        params.setdefault("two_body", False)
        try:
            extra = [SOAP(**d) for d in header.get("extra_descriptors", [])]
            descriptor = SOAP(**header["descriptor"])
            for d in [descriptor, *extra]:
                d._validate_params()  # a bad value is named here, with the file, not at the first prediction
        except TypeError as exc:  # a setting SOAP does not have (an edited header)
            raise ValueError(f"{path}: descriptor settings in the header are not SOAP's ({exc})") from None
        except ValueError as exc:
            raise ValueError(f"{path}: descriptor settings in the header: {exc}") from None
        model = cls(descriptor=[descriptor, *extra] if extra else descriptor, baseline=baseline, **params)
        fit = header["fitted"]
        model.descriptor_ = clone(descriptor)
        model.extra_descriptors_ = [clone(d) for d in extra]
        model.noise_groups_ = list(fit["noise_groups_"])
        model.e0_ = {int(k): float(v) for k, v in fit["e0_"].items()}
        model.mean_ = {int(k): float(v) for k, v in fit["mean_"].items()}
        model._offset = {z: model.e0_[z] + model.mean_[z] for z in model.e0_}
        model.species_ = np.array(fit["species_"], dtype=int)
        if fit.get("std_weights_"):
            model.std_weights_ = {k: tuple(float(x) for x in v) for k, v in fit["std_weights_"].items()}
        elif fit.get("std_scale_"):  # files written by 0.1.0 before the two-weight recalibration: one scale
            model.std_weights_ = {k: (float(v) ** 2, float(v) ** 2) for k, v in fit["std_scale_"].items()}
        else:  # saved uncalibrated (calibrate=False or std_weights_ = {}): raw variances, as before saving
            model.std_weights_ = {}
        model.theta_ = data["theta_"]
        model.delta_ = float(fit["delta_"])
        model.noise_ = {k: float(v) for k, v in fit["noise_"].items()}
        model.log_marginal_likelihood_ = float(fit["log_marginal_likelihood_"])
        if fit.get("n_train_frames_") is not None:
            model.n_train_frames_ = int(fit["n_train_frames_"])
        if fit.get("train_fingerprint_") is not None:
            # (n_frames, 8); 7 columns in files written before the noise column (same_fingerprint reads both)
            model.train_fingerprint_ = np.atleast_2d(np.asarray(fit["train_fingerprint_"], float))
        # a header edited by hand (n_max, l_max, species) no longer describes the stored sparse environments:
        # say so here, not as a matrix-shape error blamed on the first structure predicted
        try:
            want = model.descriptor_.get_number_of_features()
        except ValueError:  # no species in the header: nothing to compare with
            want = None
        if want is not None and (np.ndim(data["sparse_X"]) != 2 or data["sparse_X"].shape[1] != want):
            raise ValueError(f"{path}: the descriptor settings in the file give {want} features per environment "
                             f"but its sparse environments have shape {np.shape(data['sparse_X'])}: the header "
                             "and the arrays do not belong together (edited or mixed files?)")
        model.sparse_index_ = data["sparse_index_"]
        extra_x, extra_ix = (), ()
        if model.extra_descriptors_:
            try:
                widths = [d.get_number_of_features() for d in model.extra_descriptors_]
                extra_ix = tuple(np.asarray(ix, dtype=np.int64) for ix in fit["sparse_extra_index_"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}: the further descriptors or their sparse environments in the header "
                                 f"are unusable ({exc})") from None
            X2 = data["sparse_X_extra"]
            counts = [len(ix) for ix in extra_ix]
            if len(extra_ix) != len(widths) or np.ndim(X2) != 1 or len(X2) != int(np.dot(counts, widths)):
                raise ValueError(f"{path}: the further descriptors in the file give {int(np.dot(counts, widths))} "
                                 f"values for their sparse environments but 'sparse_X_extra' has shape "
                                 f"{np.shape(X2)}")
            ends = np.cumsum(np.multiply(counts, widths))
            extra_x = tuple(X2[e - c * w:e].reshape(c, w) for e, c, w in zip(ends, counts, widths))
        try:
            model.sparse_ = SparseSet(data["sparse_X"], data["sparse_numbers"], extra_x, fit.get("sparse_scales_", []),
                                      extra_ix)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        model.pair_ = None if fit.get("pair_") is None else PairTerm.from_dict(fit["pair_"])
        model.wall_ = None
        if fit.get("wall_") is not None:
            try:
                model.wall_ = WallPrior.from_dict(fit["wall_"], model.species_, float(model.descriptor_.r_cut))
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
        if "Kmm" not in data:  # compact file: recompute Lmm as fit did (Kmm itself is recomputed when saved)
            data["Lmm"], _ = safe_cholesky(model_kernel(model.sparse_, model.zeta, model.pair_), "sparse kernel Kmm",
                                           jitter=_KMM_JITTER)
        model._Lmm = data["Lmm"]
        model.alpha_ = data["alpha_"]
        # files written before the Bayesian offsets have none (S = 0)
        model.offset_species_ = np.array(fit.get("offset_species_", []), dtype=int)
        model.offset_kappa_ = float(fit.get("offset_kappa_", 0.0))
        model.posterior_ = Posterior(model.sparse_, float(model.zeta), model.delta_, data.get("Kmm"), data["Lmm"],
                                     data["Lc"], data["a"], data["alpha_"], model.offset_species_, model.offset_kappa_,
                                     model.pair_)
        return model


def _finite_real(v) -> bool:
    """A finite int, float or numpy scalar; not a bool, string or array (numpy's isfinite raised TypeError on them)."""
    return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            and math.isfinite(v))


def _path_hint(obj) -> str:
    return " (a path? read it with kernelpot.read)" if isinstance(obj, (str, os.PathLike)) else ""


def _one_atoms(obj, what: str) -> None:
    """Raise ``ValueError`` unless ``obj`` is one ``ase.Atoms`` (a path or list is named as such)."""
    if not isinstance(obj, Atoms):
        raise ValueError(f"{what} takes one ase.Atoms, got a {type(obj).__name__}{_path_hint(obj)}")


def _atoms_list(obj, what: str, entry: str) -> list:
    """One ``ase.Atoms`` or a sequence of them as a list; ``ValueError`` naming the first entry that is not one."""
    items = [obj] if isinstance(obj, Atoms) else list(obj)
    for i, a in enumerate(items):
        if not isinstance(a, Atoms):
            raise ValueError(f"{what} takes ase.Atoms: {entry} {i} is a {type(a).__name__}{_path_hint(a)}")
    return items


#: Learned noise above this fraction of the labels' RMS: the fit explains little of them.
UNLEARNED_FRACTION = 0.5


#: Fewer structures of a group than this: the "explains little" warning names too little data as a cause.
FEW_STRUCTURES = 10


def _unlearned(model, frames, labels) -> list:
    """``(kind, warning)`` for each noise group whose learned noise is comparable to its labels (energies
    per atom: their spread).

    Such a fit treats the labels as noise: forces given as gradients (the opposite sign), a unit or
    convention slip, or a descriptor that cannot tell the structures apart.  (A collapsed fit of a
    molecule without isolated atoms once returned every force as 0 with only a bounds warning.)
    """
    used = assembly.noise_as_used(model, frames)
    out = []
    for kind in ("energy", "forces", "stress"):
        per_group: dict = {}  # group -> [(frame, labels)]
        for i, (a, lab) in enumerate(zip(frames, labels)):
            if kind in lab and not is_isolated_atom(a):
                value = lab[kind] / len(a) if kind == "energy" else lab[kind]
                per_group.setdefault(assembly.group_of(model, kind, a), []).append((i, np.ravel(value)))
        for group, vals in per_group.items():
            if group not in model.noise_ or (kind == "energy" and len(vals) < 3):
                continue
            x = np.concatenate([v for _, v in vals])
            # energies per atom: their spread (the offsets take the mean); forces, stress: their RMS
            rms = float(np.std(x) if kind == "energy" else np.sqrt(np.mean(x ** 2)))
            noise, what = model.noise_[group], f"learned {group} noise"
            if group in used and np.isin([i for i, _ in vals], used[group][1]).all():
                # every label gives its own sigma: model.noise_ is a relative scale
                noise, what = used[group][0], f"{group} noise the labels are fitted with (their own sigmas)"
            if rms > 10 * NOISE_FLOOR[kind] and noise >= UNLEARNED_FRACTION * rms:
                unit = LABEL_UNITS[kind]
                hint = {"energy": "forces given as energy gradients? Hartree? energies of another reference?",
                        "forces": "forces given as energy gradients? eV/Bohr?", "stress": "kBar? virial?"}[kind]
                size = "spread" if kind == "energy" else "RMS"
                ratio = f"{noise / rms:.0%} of" if noise < 10 * rms else f"{noise / rms:.3g} times"
                # a handful of structures: the fit may simply have too little to learn from (a tester's 4-frame
                # fit was sent to check the units of clean labels)
                few = (f"With {len(vals)} structures, too few to learn from may be all it is; else check"
                       if len(vals) < FEW_STRUCTURES else "Check")
                out.append((kind, f"fit: the {what} {noise:.3g} {unit} is {ratio} the "
                                  f"{size} of the {kind} labels ({rms:.3g} {unit}): the model explains little of "
                                  f"them. {few} their sign and units ({hint}) and that the labels belong to their "
                                  "structures; labels that are all near zero (relaxed structures) carry little to "
                                  "learn"))
    return out


def _force_frames(frames, labels) -> int:
    """Frames whose forces a fit can use: a force label on a structure (not an isolated atom) with at least one
    atom neither masked (``force_mask``) nor fixed (``FixAtoms``)."""
    n = 0
    for i, (a, lab) in enumerate(zip(frames, labels)):
        if "forces" in lab and not is_isolated_atom(a):
            mask = frame_noise(a, i).get("force_mask")
            n += mask is None or bool(np.any(mask))
    return n


#: An element in fewer training structures than this (isolated atoms not counted) is named at fit time.
RARE_SPECIES_FRAMES = 3


def _warn_rare_species(frames, species) -> None:
    """Name the elements that only a structure or two of the training set hold (isolated atoms aside).

    Their environments, energy offset and weights rest on those few structures: the posterior precision
    is near singular (a fit with Cu in one of 35 Ni-Al cells warned only of an ill-conditioned matrix),
    and every prediction with that element extrapolates.
    """
    counts = {}
    for i, a in enumerate(frames):
        if is_isolated_atom(a):
            continue
        for z in np.unique(a.numbers):
            counts.setdefault(int(z), []).append(i)
    rare = {z: f for z, f in counts.items() if len(f) < RARE_SPECIES_FRAMES}
    if rare and len(frames) >= RARE_SPECIES_FRAMES:
        what = "; ".join(f"{chemical_symbols[z]} in {len(f)} (frames {_list(f)}, "
                         f"{sum(int(np.sum(frames[i].numbers == z)) for i in f)} atoms)" for z, f in rare.items())
        warnings.warn(f"fit: elements held by fewer than {RARE_SPECIES_FRAMES} of the {len(frames)} training "
                      f"structures: {what}; their environments and energy rest on these alone, so every prediction "
                      "with them extrapolates (see extrapolation in the predictions): add structures that hold them",
                      DataWarning, stacklevel=3)


def _warn_no_forces(model, frames, labels, usable, sink):
    """Warn (to ``sink``) when no force was fitted: force and stress sigma then rest on delta learned from energies.

    The energies of a few structures say little about the size of the energy's derivatives, and no held-out
    force can calibrate their sigma: fitted on 8 EMT copper energies, the predicted force sigma were ~4x
    smaller than the errors (53 % beyond 4 sigma), on 1-3 energies 40-370x.  ``usable``:
    :func:`_force_frames`.
    """
    if model.fit_forces and usable:
        return
    why = ("fit_forces=False" if usable else "no structure has force labels on an atom that is neither masked nor "
           "fixed" if any("forces" in lab for lab in labels) else "no frame has force labels")
    sink.append((f"fit: no forces were fitted ({why}): force and stress predictions and their sigma rest on the "
                 f"energy scale delta = {model.delta_:.3g} eV learned from {len(frames)} energies alone, and no "
                 "held-out force calibrates them (fitted on a few energies they were 4-370x too small). Add "
                 "structures with forces before trusting force or stress error bars", RuntimeWarning))


def _warn_conventions(model, frames, sink) -> list | None:
    """Warn for each group whose energy or stress labels follow another convention than their physics.

    :func:`kernelpot.gp.conventions.check`: energies against what the forces
    imply, stress against what energies and forces imply; a unit, sign or
    shear order shared by a whole config_type is invisible in any
    per-structure residual.  Returns the findings (``model.conventions_``,
    which :func:`kernelpot.screen` reuses), or None when nothing was checked.
    """
    from kernelpot.gp.conventions import check
    if not (model.fit_forces or model.fit_stress):
        return None
    found = check(model, frames)
    sink.extend((f"fit: {f.message} (frames {_list(f.frames)}; kernelpot.screen lists it too)", DataWarning)
                for f in found)
    return found


def _check_observations(model, frames, labels, n_force_frames):
    """Raise when no label is left to fit: energies of structures (isolated atoms only fix ``e0``), forces
    with ``fit_forces`` (``n_force_frames``: :func:`_force_frames`), stress with ``fit_stress``."""
    have = {k: sum(k in lab and not is_isolated_atom(a) for a, lab in zip(frames, labels))
            for k in ("energy", "stress")}
    have["forces"] = n_force_frames   # isolated atoms' and masked or fixed atoms' forces say nothing
    used = {"energy": True, "forces": bool(model.fit_forces), "stress": bool(model.fit_stress)}
    if any(n and used[k] for k, n in have.items()):
        return
    found = ", ".join(f"{k} in {n}" for k, n in have.items() if n) or "none on a structure that a fit can use"
    off = [f"fit_{k}=False" for k in ("forces", "stress") if have[k] and not used[k]]
    raise ValueError(f"fit: no observations to fit in {len(frames)} frames: labels found: {found}"
                     + (f", but {' and '.join(off)} leaves them out" if off else "")
                     + " (a structure's energy, or forces / stress with fit_forces / fit_stress on)")


def _warn_unseparable(A, species):
    """Warn when the training energies cannot separate some species' offsets (see gp.offsets)."""
    null = composition_null_space(A, species)
    if not null:
        return
    dirs = "; ".join(" ".join(f"{c:+.3g}*{sym}" for sym, c in d.items()) for d in null)
    names = sorted({sym for d in null for sym in d})
    warnings.warn(f"the training energies cannot separate the energy offsets of {', '.join(names)}: "
                  f"every structure has them in fixed proportions (undetermined combinations: {dirs}). "
                  f"Energies of other compositions get the prior uncertainty of these offsets (that of one local "
                  f"energy, per atom); "
                  f"add structures of other compositions (e.g. the pure elements) to pin them down.",
                  RuntimeWarning, stacklevel=3)


def score(model, frames) -> float:
    """Negative force-component RMSE (eV/Å) of ``model.predict`` on labelled frames (energy per atom if
    any frame has no forces): the ``score`` of every kernelpot estimator."""
    labels = [frame_labels(a, i) for i, a in enumerate(frames)]
    pred = model.predict(frames, return_std=False)
    if all("forces" in lab for lab in labels):
        ref = np.concatenate([lab["forces"] for lab in labels])
        return -float(np.sqrt(np.mean((pred["forces"] - ref) ** 2)))
    ref = np.array([lab["energy"] for lab in labels]) / pred["n_atoms"]
    return -float(np.sqrt(np.mean((pred["energy"] / pred["n_atoms"] - ref) ** 2)))


_ARRAY_NAMES = ("alpha_", "theta_", "sparse_index_", "sparse_X", "sparse_numbers", "Lmm", "Lc", "Kmm", "a")
_RECOMPUTED = ("Kmm", "Lmm")  # left out of compact files: functions of sparse_X


class _WeightView:
    """A fitted model with its weights replaced by a posterior sample.

    ``xi`` (T,): a sample of the repulsion prior's amplitudes (:mod:`kernelpot.gp.wall`),
    whose term is added to the energy, local energies, forces and stress.
    """

    def __init__(self, model, alpha, xi=None):
        self._model = model
        self._alpha = alpha
        self._xi = xi

    def predict_frame(self, atoms, return_std=False, **kw):
        out = self._model.predict_frame(atoms, return_std=False, alpha=self._alpha, **kw)
        wall = getattr(self._model, "wall_", None)
        if self._xi is None or wall is None:
            return out
        stress = bool(np.all(np.isfinite(out["stress"])))
        rows = wall.rows(atoms, forces="forces" in out, stress=stress)
        if rows is not None:
            out["energies"] = out["energies"] + rows["local"] @ self._xi
            out["energy"] = float(out["energy"] + rows["energy"] @ self._xi)
            if "forces" in out:
                out["forces"] = out["forces"] + rows["forces"] @ self._xi
            if stress:
                out["stress"] = out["stress"] + rows["stress"] @ self._xi
        return out
