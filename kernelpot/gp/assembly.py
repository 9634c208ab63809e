"""Assembly of the training observations into the whitened M x M statistics of the fit.

Each training structure contributes reduced design rows (energy, force and
stress observations; :mod:`kernelpot.gp.design`), its labels minus the fixed
physics and the per-species offsets, and the noise scale of each row.  Rows
are whitened by ``chol(Kmm)`` and reduced at once to the per-noise-group
sufficient statistics of :class:`kernelpot.gp.likelihood.GroupStats`, so the
memory of a fit is O(M^2 + one chunk of rows) whatever the number of
structures.  With a Dask client, chunks of structures are assembled on the
workers and their statistics summed here.

The functions take the partly fitted estimator (descriptor, sparse set,
offsets and noise groups set) as their first argument.
"""

from __future__ import annotations

import copy

import numpy as np

from kernelpot import _threads
from kernelpot.io.labels import check_structure, config_type, frame_labels, frame_noise
from kernelpot.gp.design import design_rows
from kernelpot.gp.likelihood import GroupStats, whiten
from kernelpot.gp.offsets import offset_column
from kernelpot.gp.variance import prior_energy_var, prior_force_var, prior_of, prior_parts, prior_stress_var

__all__ = ["KINDS", "RowCache", "describe", "nystrom_residual", "whitened_rows", "training_rows", "offset_columns", "n_columns", "add_frame", "accumulate", "group_names", "group_of", "chunks",
           "labels_in_groups", "compute_features", "worker_view", "memory_estimate", "progress", "note", "phase",
           "interactive", "kernels_compiled", "announce_compilation"]

KINDS = ("energy", "forces", "stress")


def interactive() -> bool:
    """Whether progress bars can redraw in place: a terminal on stderr, or a notebook.

    Redirected output (a log file, a pipe, a batch job) gets no bar, so it
    does not fill with hundreds of carriage-return updates; the one-line
    phase summaries of :func:`phase` are printed instead.
    """
    import sys
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm_notebook
    if issubclass(tqdm, tqdm_notebook):  # tqdm.auto chose the notebook widget
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(it, verbose, desc, total=None):
    """``it`` wrapped in a tqdm bar when ``verbose`` and :func:`interactive` (notebook bars in notebooks)."""
    if not verbose or not interactive():
        return it
    from tqdm.auto import tqdm
    return tqdm(it, desc=desc, total=total, leave=False)


def note(verbose, text: str) -> None:
    """Print ``kernelpot: <text>`` on stderr when ``verbose``.

    Progress goes to stderr, like tqdm's bars and warnings, so that results
    printed on stdout (tables of the command line) can be redirected alone.
    """
    if verbose:
        import sys
        print(f"kernelpot: {text}", file=sys.stderr, flush=True)


def phase(verbose, name: str, start: float, detail: str = "") -> float:
    """Note ``kernelpot: <name> ... <elapsed> s`` (see :func:`note`); returns the current time.

    ``start`` is a :func:`time.perf_counter` value; the return value starts the next phase.
    """
    import time
    now = time.perf_counter()
    note(verbose, f"{name:<18}{now - start:7.1f} s" + (f"  ({detail})" if detail else ""))
    return now


_KERNEL_MODULES = ("_soap_kernels", "neighbors")


def kernels_compiled() -> bool:
    """Whether numba's on-disk cache holds the descriptor kernels (``False``: the first call compiles them).

    Looks for numba's index files (``*.nbi``) of the modules in
    ``kernelpot/descriptors`` where numba keeps them: under ``NUMBA_CACHE_DIR``
    when it is set, else beside the sources (``__pycache__``) or in numba's
    user-wide cache folder.  A cache built for another Python version does not count.
    """
    import os
    import sys
    from pathlib import Path
    import kernelpot.descriptors as d
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    if os.environ.get("NUMBA_CACHE_DIR"):  # numba then caches there only
        roots = [Path(os.environ["NUMBA_CACHE_DIR"])]
    else:  # beside the sources, or numba's user-wide folder when the package folder is read-only
        cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        roots = [Path(d.__file__).parent / "__pycache__", cache_home / "numba"]
    # the numba modules the descriptors use (imported with them), whatever they are called
    mods = set(_KERNEL_MODULES) | {name.rsplit(".", 1)[1] for name in list(sys.modules)
                                   if name.startswith(d.__name__ + "._") and "kernels" in name}
    for mod in sorted(mods):
        if not any(next(root.rglob(f"{mod}.*{tag}.nbi"), None) for root in roots if root.is_dir()):
            return False
    return True


class _Ticker:
    """Context: a line ``kernelpot:   ... <what> (<elapsed> s)`` on stderr every ``every`` seconds.

    The progress indication of work that reports nothing itself (numba
    compiling), so that a long first run does not look hung.
    """

    def __init__(self, verbose, what: str, every: float = 15.0):
        import threading
        self.verbose, self.what, self.every = verbose, what, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import time
        t0 = time.perf_counter()
        while not self._stop.wait(self.every):
            note(self.verbose, f"  ... {self.what} ({time.perf_counter() - t0:.0f} s)")

    def __enter__(self):
        if self.verbose:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return False


def announce_compilation(verbose, descriptor=None) -> None:
    """Say, before the first descriptor call, that numba compiles the kernels (minutes, once).

    With ``descriptor`` (a :class:`kernelpot.SOAP` with its species set), also
    compile them here, step by step on a two-atom cell, with a line every 15 s
    and one per finished step: the progress of the first run.
    """
    if not verbose or kernels_compiled():
        return
    note(True, "compiling kernels (first run only; a few minutes, cached for later runs)")
    if descriptor is None:
        return
    import time
    import numpy as np
    from ase import Atoms
    from kernelpot.descriptors.neighbors import neighbor_list
    z = int(np.asarray(descriptor.species)[0]) if getattr(descriptor, "species", None) is not None else 14
    cell = Atoms(numbers=[z, z], positions=[[0.0, 0.0, 0.0], [1.2, 1.3, 1.1]], cell=np.eye(3) * 2.6, pbc=True)
    steps = (("neighbour lists", lambda: neighbor_list(cell, descriptor.r_cut)),
             ("SOAP features and derivatives", lambda: descriptor.compute(cell, gradients=True, strain=True)))
    t_all = time.perf_counter()
    for i, (name, run) in enumerate(steps, 1):
        t = time.perf_counter()
        try:
            with _Ticker(True, f"compiling {name}"):
                run()
        except Exception as err:  # a warm-up only: the fit's own first call compiles (and reports) anyway
            note(True, f"compiling ahead stopped at {name} ({type(err).__name__}: {err}); the first call compiles")
            return
        note(True, f"compiled {i}/{len(steps)}: {name} ({time.perf_counter() - t:.0f} s)")
    note(True, f"kernels compiled in {time.perf_counter() - t_all:.0f} s")


def group_of(model, kind: str, atoms) -> str:
    """Noise group of an observation of ``kind`` in ``atoms``."""
    return f"{kind}:{config_type(atoms)}" if model.noise_per_config_type else kind


def group_names(model, frames, labels) -> list:
    """Noise groups present in the training data, in a fixed order."""
    kinds = [k for k in KINDS if any(k in lab for lab in labels)
             and (k != "forces" or model.fit_forces) and (k != "stress" or model.fit_stress)]
    if not model.noise_per_config_type:
        return kinds
    cts = sorted({config_type(a) for a in frames})
    return [f"{k}:{ct}" for k in kinds for ct in cts
            if any(k in lab and config_type(a) == ct for a, lab in zip(frames, labels))]


def labels_in_groups(model, frames) -> list:
    """Labels of ``frames`` (for ``refit``/``update``), checking each structure as ``fit`` and
    ``predict`` do (finite positions, a usable cell, known species) and that each label has a
    noise group in ``model``."""
    out = []
    for i, a in enumerate(frames):
        check_structure(a, i, species=model.species_)
        lab = frame_labels(a, i)
        for kind in lab:
            used = (kind != "stress" or model.fit_stress) and (kind != "forces" or model.fit_forces)
            g = group_of(model, kind, a)
            if used and g not in model.noise_groups_:
                raise ValueError(f"frame {i} ({config_type(a)!r}): noise group {g!r} is not in this model "
                                 f"({model.noise_groups_}); use fit() to start again")
        out.append(lab)
    return out


#: Reference noise of :func:`noise_reference` when the model's noise is learned
#: (eV/atom, eV/Å, eV/Å^3; typical DFT label noise).
NOISE_REFERENCE = {"energy": 0.005, "forces": 0.1, "stress": 0.002}


def noise_reference(model, kind: str) -> float:
    """The noise a sigma given in the data is measured against (eV/atom, eV/Å, eV/Å^3).

    The model's fixed ``sigma_energy``/``sigma_force``/``sigma_stress`` when
    given, else :data:`NOISE_REFERENCE`.  So with fixed noise a sigma given in
    the data is that observation's noise exactly (as in GAP); with learned
    noise it is a relative weight: the observation's noise is
    ``sigma_given * learned / NOISE_REFERENCE`` (a frame given ten times the
    reference is trusted ten times less than one without a sigma).
    """
    fixed = {"energy": model.sigma_energy, "forces": model.sigma_force, "stress": model.sigma_stress}[kind]
    return float(fixed) if fixed is not None else NOISE_REFERENCE[kind]


def noise_as_used(model, frames) -> dict:
    """Noise the labels that give their own sigma are fitted with, per noise group.

    With learned noise a sigma given in the data is a relative weight
    (:func:`noise_reference`), so ``model.noise_`` is the noise of a label
    *without* one.  For each group where some frames give a sigma: the noise
    their observations are fitted with, as one number (energy per atom, eV/Å,
    eV/Å^3): the precision-weighted mean ``(mean sigma^-2)^-1/2``, the level
    of the labels that weigh most in the fit (a median followed the many
    loosely weighted labels when config_types differ tenfold), and the
    frames that give one.

    Parameters
    ----------
    model : SparseGP
        Fitted model.
    frames : list of ase.Atoms
        Its training frames.

    Returns
    -------
    dict {group: (noise, frames)}, ``frames`` an int array of frame indices
    """
    used: dict = {}
    keys = {"energy": "energy_sigma", "forces": "forces_sigma", "stress": "stress_sigma"}
    for i, a in enumerate(frames):
        given = frame_noise(a, i)
        for kind, key in keys.items():
            if key not in given:
                continue
            group = group_of(model, kind, a)
            if group not in model.noise_:
                continue
            scale = np.atleast_1d(given[key]) / noise_reference(model, kind)
            if kind == "energy":
                scale = scale / len(a)
            used.setdefault(group, []).append((i, model.noise_[group] * scale))
    return {g: (float(np.mean(np.concatenate([x for _, x in v]) ** -2.0) ** -0.5), np.array([i for i, _ in v]))
            for g, v in used.items()}


def force_atoms(atoms, given=None) -> np.ndarray:
    """Indices of the atoms whose forces are fitted (all but those masked in the data)."""
    given = frame_noise(atoms) if given is None else given
    mask = given.get("force_mask")
    return np.arange(len(atoms)) if mask is None else np.flatnonzero(mask)


def force_rows(atoms, given=None) -> np.ndarray:
    """Indices into the flattened ``(n_atoms * 3,)`` force components of the fitted atoms."""
    return (3 * force_atoms(atoms, given)[:, None] + np.arange(3)).ravel()


def describe(model, atoms, gradients: bool = False, strain: bool = False):
    """The descriptors of ``atoms`` that the model's kernel terms need.

    SOAP features (with position / strain derivatives on request), those of
    the further SOAP descriptors of a kernel sum in ``feat.extra``, and, when
    the model has a two-body term (``model.pair_``), the structure's pairs in
    ``feat.pairs`` (:class:`kernelpot.gp.twobody.PairGeometry`).
    """
    feat = model.descriptor_.compute(atoms, gradients=gradients, strain=strain)
    extra = getattr(model, "extra_descriptors_", ())
    if extra:
        feat.extra = [d.compute(atoms, gradients=gradients, strain=strain) for d in extra]
    pair = getattr(model, "pair_", None)
    if pair is not None:
        feat.pairs = pair.geometry(atoms)
    return feat


def nystrom_residual(model, A: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Reduced Nystrom residual ``p - |L^-1 k|^2`` of whitened rows ``A`` (n, W) with SOAP prior variance ``prior``.

    Only SOAP's ``M`` columns leave a residual: the two-body term and the
    offset parameters are represented exactly, so they appear in neither
    term (and rescaling their columns leaves the residual unchanged).  With
    ``prior`` of shape (n, D), one column per SOAP term of a kernel sum (its
    ``r_d^2``-weighted share, :func:`kernelpot.gp.variance.prior_parts`), the
    residual of each term, (n, D): ``Kmm`` is block-diagonal over the terms,
    so each term's columns whiten on their own.
    """
    if np.ndim(prior) == 1:
        return np.maximum(prior - np.sum(A[:, :model.sparse_.size] ** 2, axis=1), 0.0)
    return np.stack([np.maximum(prior[:, d] - np.sum(A[:, cols] ** 2, axis=1), 0.0)
                     for d, cols in enumerate(model.sparse_.part_slices())], axis=1)


def training_rows(model, atoms, lab, priors=False, parts=False):
    """Reduced design rows, targets and noise scales of one frame's labels.

    Returns
    -------
    rows, ys, scales : dicts keyed by kind
        Design rows (n_obs, M), targets (labels minus fixed physics and
        offsets; eV, eV/Å, eV/Å^3) and noise scales (``n_atoms`` for the total
        energy, whose noise is per atom; ``None`` for unit scale).  Noise given
        in the data (:func:`kernelpot.io.labels.frame_noise`: GAP's
        ``energy_sigma`` per structure in eV, ``force_sigma``/``force_atom_sigma``
        in eV/Å, ``stress_sigma`` in eV/Å^3 or ``virial_sigma`` in eV) sets the
        scale to ``sigma_given / noise_reference(model, kind)``; force rows of
        masked atoms (``force_mask``, ASE ``FixAtoms``) are left out, so the
        force rows are those of :func:`force_atoms`.
    priors : dict, only with ``priors`` (True, or a tuple of kinds)
        Reduced prior variance of those observations under SOAP's kernel
        (the exact two-body and offset columns carry no Nystrom residual; see
        :func:`nystrom_residual`); with ``parts`` and a kernel sum, one column
        per SOAP term, (n, D).
    """
    want_f = model.fit_forces and "forces" in lab
    want_s = model.fit_stress and "stress" in lab
    feat = describe(model, atoms, gradients=want_f, strain=want_s)
    vol = atoms.cell.volume if want_s else None
    d = design_rows(feat, model.sparse_, model.zeta, getattr(model, "pair_", None), vol, forces=want_f, stress=want_s)
    eb, fb, sb = model._baseline_compute(atoms)
    rows, ys, scales = {}, {}, {}
    n = len(atoms)
    given = frame_noise(atoms)
    if "energy" in lab:
        rows["energy"] = d["energy"][None, :]
        ys["energy"] = np.array([lab["energy"] - eb - sum(model._offset[int(z)] for z in atoms.numbers)])
        # per-atom noise: the total energy's noise is n * sigma_energy; a given energy_sigma (eV, total)
        # replaces n * sigma_ref
        scales["energy"] = np.array([given["energy_sigma"] / noise_reference(model, "energy")
                                     if "energy_sigma" in given else float(n)])
    if want_f:
        keep = force_rows(atoms, given)
        rows["forces"] = d["forces"][keep]
        ys["forces"] = (lab["forces"] - fb).ravel()[keep]
        scales["forces"] = (np.repeat(given["forces_sigma"], 3)[keep] / noise_reference(model, "forces")
                            if "forces_sigma" in given else None)
    if want_s:
        rows["stress"] = d["stress"]
        ys["stress"] = lab["stress"] - sb
        scales["stress"] = (np.full(6, given["stress_sigma"] / noise_reference(model, "stress"))
                            if "stress_sigma" in given else None)
    if not priors:
        return rows, ys, scales
    kinds = KINDS if priors is True else priors
    sparse = model.sparse_
    split = parts and bool(sparse.extra)

    def prior(fn, *args):  # (n,) summed over the SOAP terms, or (n, D) with parts
        if not split:
            return np.ravel(prior_of(fn, feat, sparse, *args))
        return np.stack([np.ravel(p) for p in prior_parts(fn, feat, sparse, *args)], axis=1)

    pv = {}
    if "energy" in rows and "energy" in kinds:
        pv["energy"] = prior(prior_energy_var, model.zeta)
    if want_f and "forces" in kinds:
        pv["forces"] = prior(prior_force_var, model.zeta)[force_rows(atoms, given)]
    if want_s and "stress" in kinds:
        pv["stress"] = prior(prior_stress_var, model.zeta, vol)
    return rows, ys, scales, pv


def offset_columns(model, atoms, kind: str, A: np.ndarray) -> np.ndarray:
    """Whitened GP rows ``A`` (n, M) with the Bayesian offset columns appended, (n, M + S).

    An energy observation gets ``kappa * (number of atoms of species Z)`` in
    the column of species ``Z`` (its offset's prior std is ``kappa delta`` per
    atom, see :mod:`kernelpot.gp.offsets`); forces and stresses do not depend
    on the offsets (zeros).  Models without offset parameters (files written
    before them) have ``S = 0``.
    """
    Z = getattr(model, "offset_species_", None)
    if Z is None or len(Z) == 0:
        return A
    extra = np.zeros((A.shape[0], len(Z)))
    if kind == "energy":
        extra[:] = offset_column(atoms.numbers, Z, model.offset_kappa_)
    return np.hstack([A, extra])


def n_columns(model) -> int:
    """Columns of the whitened design: M sparse environments, P two-body columns, S offset parameters."""
    pair = getattr(model, "pair_", None)
    return model.sparse_.size + (0 if pair is None else pair.size) + len(getattr(model, "offset_species_", ()))


def add_frame(model, stats: GroupStats, atoms, lab, sign: float = 1.0, cache=None, index: int | None = None) -> None:
    """Accumulate one frame's whitened observations into ``stats``.

    With ``cache`` (:class:`RowCache`), the frame's whitened rows, targets,
    noise scales and Nystrom residuals are also kept under ``index`` for the
    leave-one-out pass, which then needs no second descriptor and design pass.
    """
    # the frame's GEMMs are (rows x features) @ (features x M): one BLAS thread below a few thousand
    # columns (two OpenBLAS threads on a busy core made the whole assembly 2x slower; kernelpot._threads)
    with _threads.limit(blas_threads=_threads.threads_for_matrix(n_columns(model))):
        _add_frame(model, stats, atoms, lab, sign, cache, index)


def whitened_rows(model, atoms, lab, priors=True, parts=False) -> dict:
    """``{kind: (A, y, scale, nystrom)}`` of one frame: whitened rows with the offset columns
    (:func:`offset_columns`), targets and noise scales (:func:`training_rows`) and, for the
    kinds in ``priors`` (True: all), the reduced Nystrom residual of each row (else None);
    with ``parts`` and a kernel sum, of each SOAP term, (n, D) (see :func:`nystrom_residual`)."""
    rows, ys, scales, pv = training_rows(model, atoms, lab, priors=priors, parts=parts)
    out = {}
    for kind in rows:
        A = offset_columns(model, atoms, kind, whiten(model._Lmm, rows[kind]))
        out[kind] = (A, ys[kind], scales[kind], nystrom_residual(model, A, pv[kind]) if kind in pv else None)
    return out


def _add_frame(model, stats, atoms, lab, sign, cache, index):
    gidx = {g: k for k, g in enumerate(stats.names)}
    # a kernel sum keeps each SOAP term's residual apart: the terms' scales are learned after assembly
    entry = whitened_rows(model, atoms, lab, priors=True if cache is not None else ("energy",), parts=True)
    for kind, (A, y, scale, nys) in entry.items():
        # energies keep their rows for the leave-one-out choice of the energy noise
        stats.add(gidx[group_of(model, kind, atoms)], A, y, scale, sign, nystrom=nys if kind == "energy" else None)
    if cache is not None:
        cache.put(index, entry)


class RowCache:
    """Whitened training rows kept from the assembly pass for the leave-one-out pass of the same fit.

    One sweep over the training structures per fit: the leave-one-out
    calibration (:mod:`kernelpot.gp.loo`) reads each frame's rows back instead
    of computing its descriptor gradients and design rows again.  Entries are
    held in memory up to ``budget`` bytes and written to a temporary folder
    beyond it (``O(n_observations x columns)`` on disk, not in memory; the
    folder is removed by :meth:`close` or when the cache is collected).
    Columns rescaled after assembly (the learned two-body scale, the offsets'
    prior) are rescaled on read (:meth:`scale_columns`), and a sparse set cut
    after assembly (``n_sparse="auto"``) is cut on read (:meth:`select_columns`).
    """

    def __init__(self, n_columns: int, budget: int = 128 * 2**20):
        self._col = np.ones(n_columns)
        self._ny = {}  # SOAP term of a kernel sum -> factor on its kept Nystrom residuals
        self._keep = self._dropped = None
        self._mem = {}
        self._used = 0
        self._budget = int(budget)
        self._dir = None

    def put(self, index: int, entry: dict) -> None:
        """Keep ``entry`` (``{kind: (A, y, scale, nystrom)}``) of frame ``index``."""
        size = sum(A.nbytes for A, *_ in entry.values())
        if self._used + size <= self._budget:
            self._mem[index] = entry
            self._used += size
            return
        import tempfile
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="kernelpot-rows-")
        arrays = {}
        for k, (A, y, sc, ny) in entry.items():
            arrays.update({f"{k}.A": A, f"{k}.y": y, f"{k}.ny": ny})
            if sc is not None:
                arrays[f"{k}.scale"] = sc
        np.savez(self._path(index), **arrays)
        self._mem[index] = [k for k in entry]

    def _path(self, index: int) -> str:
        import os
        return os.path.join(self._dir.name, f"{int(index)}.npz")

    def __contains__(self, index) -> bool:
        return index in self._mem

    def get(self, index: int) -> dict:
        """Entry of frame ``index`` with the current column scales applied."""
        entry = self._mem[index]
        if isinstance(entry, list):  # on disk: the kinds, in order
            with np.load(self._path(index), allow_pickle=False) as f:
                entry = {k: (f[f"{k}.A"], f[f"{k}.y"], f[f"{k}.scale"] if f"{k}.scale" in f else None, f[f"{k}.ny"])
                         for k in entry}
        if self._keep is not None:
            entry = {k: (A[:, self._keep], y, sc, None if ny is None else ny + np.sum(A[:, self._dropped] ** 2, axis=1))
                     for k, (A, y, sc, ny) in entry.items()}
        return {k: (A * self._col, y, sc, self._nystrom(ny)) for k, (A, y, sc, ny) in entry.items()}

    def _nystrom(self, ny):
        """One residual per row: a kernel sum's (n, D) kept residuals summed with their current factors."""
        if ny is None or np.ndim(ny) == 1:
            return ny
        w = np.ones(ny.shape[1])
        for d, f in self._ny.items():
            w[d] = f
        return ny @ w

    def select_columns(self, ix: np.ndarray, n_soap: int) -> None:
        """Read only the columns ``ix`` from now on (ascending; see :func:`kernelpot.gp.sparse_size.sub_statistics`).

        The first ``n_soap`` columns are SOAP's: the Nystrom residual of each
        row grows by what its dropped SOAP columns represented.  Call before
        any :meth:`scale_columns` of the cut columns.
        """
        ix = np.asarray(ix, np.int64)
        if self._keep is not None:
            raise ValueError("RowCache.select_columns: the columns were already cut once")
        self._keep = ix
        self._dropped = np.setdiff1d(np.arange(n_soap), ix)
        self._col = self._col[ix]

    def scale_columns(self, mask: np.ndarray, r: float, nystrom_part: int | None = None) -> None:
        """As :meth:`kernelpot.gp.likelihood.GroupStats.scale_columns`: columns ``mask`` times ``r``."""
        self._col[np.asarray(mask, bool)] *= r
        if nystrom_part is not None:
            self._ny[nystrom_part] = self._ny.get(nystrom_part, 1.0) * r * r

    def close(self) -> None:
        """Drop every entry and remove the temporary folder."""
        self._mem.clear()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def chunks(n: int, chunk_size: int) -> list:
    """Slices of ``chunk_size`` consecutive frames covering ``range(n)``."""
    step = max(int(chunk_size), 1)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _compute_features(descriptor, frames):
    return [descriptor.compute(a) for a in frames]


def compute_features(model, frames) -> list:
    """Descriptors without gradients (for sparse selection), on Dask workers when ``model.client``."""
    if model.client is None:
        return [model.descriptor_.compute(a) for a in progress(frames, model.verbose, "descriptors")]
    parts = chunks(len(frames), model.chunk_size)
    futs = model.client.map(_compute_features, [model.descriptor_] * len(parts), [frames[c] for c in parts],
                            pure=False)
    return [f for part in model.client.gather(futs) for f in part]


def worker_view(model):
    """A copy of the partly fitted model without the client or training frames, to ship to workers."""
    light = copy.copy(model)
    light.client = None
    light._row_cache = None
    light._train_frames = None
    light._stats = None
    return light


def _chunk_stats(model, frames, labels):
    stats = GroupStats.empty(model.noise_groups_, n_columns(model))
    for a, lab in zip(frames, labels):
        add_frame(model, stats, a, lab)
    return stats


def accumulate(model, frames, labels, cache=None) -> GroupStats:
    """Whitened statistics of all observations, in chunks of ``chunk_size`` frames.

    With a Dask ``client`` each chunk's statistics (M x M per noise group)
    are computed on a worker and summed here: the reduced normal equations
    of the whitened design, so memory per worker is O(M^2 + rows of one chunk).
    ``cache`` (:class:`RowCache`, in memory only: not with a client) also
    keeps every frame's rows for the leave-one-out pass.
    """
    stats = GroupStats.empty(model.noise_groups_, n_columns(model))
    if model.client is None:
        for i, a in progress(list(enumerate(frames)), model.verbose, "design"):
            add_frame(model, stats, a, labels[i], cache=cache, index=i)
        return stats
    parts = chunks(len(frames), model.chunk_size)
    light = worker_view(model)
    futs = model.client.map(_chunk_stats, [light] * len(parts), [frames[c] for c in parts],
                            [labels[c] for c in parts], pure=False)
    for part in progress(model.client.gather(futs, asynchronous=False), model.verbose, "design", len(parts)):
        stats.merge(part)
    return stats


def memory_estimate(model, frames) -> int:
    """Bytes at the peak of assembly: the M x M group statistics plus one frame's rows."""
    M = n_columns(model)
    G = max(len(getattr(model, "noise_groups_", KINDS)), 1)
    F = sum(d.get_number_of_features() for d in [model.descriptor_, *getattr(model, "extra_descriptors_", ())])
    nmax = max(len(a) for a in frames)
    pairs = nmax * 60
    return 8 * (G * M * M + 3 * M * M + 3 * nmax * M + pairs * 3 * F + min(pairs, 4096) * 3 * M)
