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

from kernelpot.io.labels import config_type, frame_labels
from kernelpot.gp.design import frame_design
from kernelpot.gp.likelihood import GroupStats, whiten
from kernelpot.gp.variance import prior_energy_var, prior_force_var, prior_stress_var

__all__ = ["KINDS", "training_rows", "add_frame", "accumulate", "group_names", "group_of", "chunks",
           "labels_in_groups", "compute_features", "worker_view", "memory_estimate", "progress"]

KINDS = ("energy", "forces", "stress")


def progress(it, verbose, desc, total=None):
    """``it`` wrapped in a tqdm bar when ``verbose``."""
    if not verbose:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, desc=desc, total=total, leave=False)


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
    """Labels of ``frames``, checking that each has a noise group in ``model``."""
    out = []
    for i, a in enumerate(frames):
        lab = frame_labels(a, i)
        for kind in lab:
            used = (kind != "stress" or model.fit_stress) and (kind != "forces" or model.fit_forces)
            g = group_of(model, kind, a)
            if used and g not in model.noise_groups_:
                raise ValueError(f"frame {i} ({config_type(a)!r}): noise group {g!r} is not in this model "
                                 f"({model.noise_groups_}); use fit() to start again")
        out.append(lab)
    return out


def training_rows(model, atoms, lab, priors=False):
    """Reduced design rows, targets and noise scales of one frame's labels.

    Returns
    -------
    rows, ys, scales : dicts keyed by kind
        Design rows (n_obs, M), targets (labels minus fixed physics and
        offsets; eV, eV/Å, eV/Å^3) and noise scales (``n_atoms`` for the total
        energy, whose noise is per atom; ``None`` for unit scale).
    priors : dict, only with ``priors`` (True, or a tuple of kinds)
        Reduced prior variance of those observations.
    """
    want_f = model.fit_forces and "forces" in lab
    want_s = model.fit_stress and "stress" in lab
    feat = model.descriptor_.compute(atoms, gradients=want_f, strain=want_s)
    vol = atoms.cell.volume if want_s else None
    d = frame_design(feat, model.sparse_, model.zeta, vol, forces=want_f, stress=want_s)
    eb, fb, sb = model._baseline_compute(atoms)
    rows, ys, scales = {}, {}, {}
    n = len(atoms)
    if "energy" in lab:
        rows["energy"] = d["energy"][None, :]
        ys["energy"] = np.array([lab["energy"] - eb - sum(model._offset[int(z)] for z in atoms.numbers)])
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
        pv["energy"] = np.array([prior_energy_var(feat, model.zeta)])
    if want_f and "forces" in kinds:
        pv["forces"] = prior_force_var(feat, model.zeta).ravel()
    if want_s and "stress" in kinds:
        pv["stress"] = prior_stress_var(feat, model.zeta, vol)
    return rows, ys, scales, pv


def add_frame(model, stats: GroupStats, atoms, lab, sign: float = 1.0) -> None:
    """Accumulate one frame's whitened observations into ``stats``."""
    gidx = {g: k for k, g in enumerate(stats.names)}
    rows, ys, scales, priors = training_rows(model, atoms, lab, priors=("energy",))
    for kind in rows:
        stats.add(gidx[group_of(model, kind, atoms)], whiten(model._Lmm, rows[kind]), ys[kind], scales[kind], sign,
                  prior=priors.get(kind))


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
    light._train_frames = None
    light._stats = None
    return light


def _chunk_stats(model, frames, labels):
    stats = GroupStats.empty(model.noise_groups_, model.sparse_.size)
    for a, lab in zip(frames, labels):
        add_frame(model, stats, a, lab)
    return stats


def accumulate(model, frames, labels) -> GroupStats:
    """Whitened statistics of all observations, in chunks of ``chunk_size`` frames.

    With a Dask ``client`` each chunk's statistics (M x M per noise group)
    are computed on a worker and summed here: the reduced normal equations
    of the whitened design, so memory per worker is O(M^2 + rows of one chunk).
    """
    M = model.sparse_.size
    stats = GroupStats.empty(model.noise_groups_, M)
    if model.client is None:
        for i, a in progress(list(enumerate(frames)), model.verbose, "design"):
            add_frame(model, stats, a, labels[i])
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
    M = model.sparse_.size
    G = max(len(getattr(model, "noise_groups_", KINDS)), 1)
    F = model.descriptor_.get_number_of_features()
    nmax = max(len(a) for a in frames)
    pairs = nmax * 60
    return 8 * (G * M * M + 3 * M * M + 3 * nmax * M + pairs * 3 * F + min(pairs, 4096) * 3 * M)
