"""Label conventions of whole groups of structures, checked against their own physics.

A stress label is the strain derivative of the same energy whose position
derivatives are the force labels.  A model fitted to the energies and forces
alone therefore predicts every structure's stress from physics, without
seeing a single stress label.  When one group of structures (a
``config_type``, or the whole data set) holds stresses written in another
convention than the reader assumed -- shear components in another order
(VASP writes ``xy yz zx``, LAMMPS ``xy xz yz``, ASE's Voigt order is
``yz xz xy``), the opposite sign (VASP prints pressure-positive stress), or
another unit (kBar, GPa, eV/Å^3) -- its labels disagree with that physics in
the same way structure after structure.

A robust per-structure test cannot see such a slip: the group's residuals are
all alike, so its own scale absorbs them.  :func:`stress_conventions` looks
at the group instead.  For each candidate convention (every order of the
three shear components, each with and without a least-squares factor
``c``, ``label ~ c * physics``) it compares the group's residual sum of
squares with that of the labels as read; a convention is reported when it
explains at least half of that sum (:data:`MIN_IMPROVEMENT`), when a factor
is a known unit ratio or a sign flip (unnamed factors are model error, not a
convention), and when the likelihood ratio, counted with one degree of
freedom per *structure* (the six components of one structure share their
model error), is significant after a Bonferroni correction over groups and
candidates.

The physics prediction is the posterior mean of the fitted model with its
stress observations removed (their noise sent to infinity; the sparse set,
``delta`` and the other noises as fitted), plus the baseline's stress.  Found
on mlearn's Si set, where the AIMD, vacancy and surface structures hold
their shear stress in ``xy xz yz`` order and the elastic ones in VASP's
``xy yz zx``: with the stress labels removed, the model reproduces the
first groups' shear labels with ``yz`` and ``xz`` exchanged (RMS 0.52 ->
0.26 GPa on the vacancies) and the elastic ones as read.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import stats

from kernelpot.io.labels import config_type, frame_labels, is_periodic
from kernelpot.io.units import GPA as _GPA, unit_slip as _unit_slip

__all__ = ["ConventionFinding", "physics_stress", "stress_conventions", "MIN_IMPROVEMENT"]

#: a convention is reported when it at least halves the group's residual sum of squares
MIN_IMPROVEMENT = 2.0
#: a factor within this log ratio of -1 is a sign flip (x0.83 - x1.2)
_SIGN_LOG_TOL = 0.2
#: noise sent to this many times its fitted value: the stress observations leave the posterior
_DROP = 1e8
_SHEAR = ("yz", "xz", "xy")  # ASE Voigt order of components 3, 4, 5
#: shear components, in the order each convention writes them
_ORDERS = {"ASE Voigt": ("yz", "xz", "xy"), "VASP": ("xy", "yz", "xz"), "LAMMPS": ("xy", "xz", "yz")}
_SHOW = {"xz": {"VASP": "zx"}}  # how each convention names a component


@dataclass
class ConventionFinding:
    """A group whose labels match their physics better in another convention.

    Attributes
    ----------
    group : str
        The ``config_type`` (``"(all structures)"`` when there are none).
    frames : ndarray of int
        Training indices of the group's structures with a stress label.
    label : str
        ``"stress"``.
    order : tuple of str
        For the label's ASE Voigt shear components ``(yz, xz, xy)``, the
        component of the physics each one matches (``("yz", "xz", "xy")``:
        in order).
    factor : float
        ``c`` in ``label ~ c * physics`` (1 when no factor is needed).
    rms_as_read, rms_converted : float
        RMS of label minus physics over the group's components (GPa), as read
        and in the convention found.
    p_value : float
        Bonferroni-corrected p-value of the likelihood ratio.
    message : str
        What the finding says, for people.
    """

    group: str
    frames: np.ndarray
    label: str
    order: tuple
    factor: float
    rms_as_read: float
    rms_converted: float
    p_value: float
    message: str

    def convert(self, stress: np.ndarray) -> np.ndarray:
        """A label (6,) in ASE Voigt order (eV/Å^3) as the physics reads it: reordered, divided by ``factor``."""
        s = np.array(stress, dtype=float)
        out = s.copy()
        for k, comp in enumerate(self.order):
            out[3 + _SHEAR.index(comp)] = s[3 + k]
        return out / self.factor


def physics_stress(model, frames) -> np.ndarray:
    """Stress of each structure predicted from the fitted model's energies and forces alone.

    Parameters
    ----------
    model : SparseGP
        A fitted model.
    frames : list of ase.Atoms
        Its training frames (or any others).

    Returns
    -------
    (n_frames, 6) array
        eV/Å^3, ASE sign and Voigt order; NaN for structures that are not
        periodic.  The posterior mean with every stress observation's noise
        multiplied by ``1e8`` (so they carry no weight; the sparse set,
        ``delta`` and the energy and force noises as fitted), plus the
        baseline's stress.  The statistics of the fit are reused when the
        model holds them, else assembled again from ``frames`` (a loaded
        model).
    """
    from kernelpot.gp import assembly
    from kernelpot.gp.likelihood import GroupStats
    from kernelpot.gp.posterior import Posterior

    post = model.posterior_
    st = getattr(model, "_stats", None)
    if st is None:
        labels = assembly.labels_in_groups(model, frames)
        st = GroupStats.empty(model.noise_groups_, assembly.n_columns(model))
        for a, lab in zip(frames, labels):
            assembly.add_frame(model, st, a, lab)
    theta = np.array(model.theta_, float)
    for k, g in enumerate(model.noise_groups_):
        if g.split(":")[0] == "stress":
            theta[1 + k] += np.log(_DROP)
    phys = post if np.array_equal(theta, model.theta_) else Posterior.from_statistics(
        theta, st, post.sparse, post.zeta, post.Kmm, post.Lmm, post.offset_species, post.kappa, post.pair)
    out = np.full((len(frames), 6), np.nan)
    for i, a in enumerate(frames):
        if not is_periodic(a):
            continue
        feat = assembly.describe(model, a, gradients=False, strain=True)
        out[i] = phys.mean(feat, a.cell.volume, forces=False, stress=True)["stress"] + model._baseline_compute(a)[2]
    return out


def _hint(order: tuple) -> str:
    """Which written order, read as which, gives this permutation (``label comp -> physics comp``)."""
    hits = []
    for (wname, written), (rname, read) in itertools.permutations(_ORDERS.items(), 2):
        # slot k holds the true component written[k]; the reader calls it read[k]
        if all(order[_SHEAR.index(read[k])] == written[k] for k in range(3)):
            hits.append(f"{wname} order ({_show(written, wname)}) read as {rname}'s ({_show(read, rname)})")
    return f" (e.g. {' or '.join(hits[:2])})" if hits else ""


def _show(comps: tuple, convention: str) -> str:
    return " ".join(_SHOW.get(c, {}).get(convention, c) for c in comps)


def _describe(order: tuple, factor: float, c_name: str | None) -> str:
    parts = []
    if order != _SHEAR:
        moved = [f"label {lab} is {phys}" for lab, phys in zip(_SHEAR, order) if lab != phys]
        parts.append("shear components in another order: " + ", ".join(moved) + _hint(order))
    if factor != 1.0:
        parts.append(c_name)
    return "stress " + "; and ".join(parts)


def _candidates(L: np.ndarray, P: np.ndarray, order: tuple) -> list:
    """``(sse, order, c, name)`` of labels ``L`` reordered by ``order``: as they are, and scaled by a named factor."""
    Lp = L.copy()
    for k, comp in enumerate(order):
        Lp[:, 3 + _SHEAR.index(comp)] = L[:, 3 + k]
    out = [(float(np.sum((Lp - P) ** 2)), order, 1.0, None)]
    pp, lp = float(np.sum(P * P)), float(np.sum(Lp * P))
    if pp <= 0:
        return out
    c = lp / pp
    cos = lp / np.sqrt(pp * float(np.sum(Lp * Lp)) + 1e-300)
    name = None
    if c < 0 and abs(np.log(-c)) < _SIGN_LOG_TOL:
        name = "with the opposite sign (pressure-positive, as VASP prints it?)"
    elif c > 0:
        slip = _unit_slip("stress", c, cos)
        name = slip and slip.replace("unit slip (", "in another unit (")
    else:
        slip = _unit_slip("stress", -c, -cos)
        name = slip and slip.replace("unit slip (", "with the opposite sign and in another unit (")
    if name:
        out.append((float(np.sum((Lp - c * P) ** 2)), order, c, name))
    return out


def _evidence(sse_from: float, sse_to: float, n: int, n_tests: int, alpha: float) -> float | None:
    """Bonferroni p-value of going from ``sse_from`` to ``sse_to`` over ``n`` structures; None when not reported.

    Reported: the new convention explains at least half of the residual sum of
    squares (:data:`MIN_IMPROVEMENT`) and the likelihood ratio
    ``n/2 log(sse_from / sse_to)`` is significant (``chi2(1)``, one degree of
    freedom per structure: its six components share their model error).
    """
    ratio = sse_from / max(sse_to, 1e-300)
    if ratio < MIN_IMPROVEMENT:
        return None
    p = min(1.0, n_tests * float(stats.chi2.sf(n * np.log(ratio), df=1)))
    return p if p < alpha else None


def stress_conventions(frames, physics: np.ndarray, alpha: float = 0.05, groups=None) -> list:
    """Groups whose stress labels match the physics in another convention (see the module docstring).

    Parameters
    ----------
    frames : list of ase.Atoms
        Labelled structures; those without a stress label are skipped.
    physics : (n_frames, 6) array
        The stress each structure's energies and forces imply
        (:func:`physics_stress`), eV/Å^3.
    alpha : float
        Family-wise error rate over groups and candidate conventions.
    groups : sequence of str, optional
        Group of each frame (default its ``config_type``; one group when no
        frame has one).

    Returns
    -------
    list of ConventionFinding
        Most significant first; empty when every group reads as written.
    """
    frames = list(frames)
    physics = np.asarray(physics, float)
    if physics.shape != (len(frames), 6):
        raise ValueError(f"physics must have shape ({len(frames)}, 6), got {physics.shape}")
    if groups is None:
        has_ct = any("config_type" in a.info for a in frames)
        groups = [config_type(a) if has_ct else "(all structures)" for a in frames]
    labels = np.full((len(frames), 6), np.nan)
    for i, a in enumerate(frames):
        lab = frame_labels(a, i)
        if "stress" in lab:
            labels[i] = lab["stress"]
    ok = np.all(np.isfinite(labels), axis=1) & np.all(np.isfinite(physics), axis=1)
    groups = np.asarray(groups, dtype=object)
    names = sorted({g for g in groups[ok]}, key=str)
    perms = list(itertools.permutations(_SHEAR))
    n_tests = max(1, len(names) * (2 * len(perms) - 1))
    found = []
    for g in names:
        idx = np.flatnonzero(ok & (groups == g))
        L, P = labels[idx], physics[idx]
        sse0 = float(np.sum((L - P) ** 2))
        if sse0 <= 0:
            continue
        cands = [c for order in perms for c in _candidates(L, P, order)]
        # the simplest explanation first: a factor alone (sign, unit); a reordering of the shear
        # components only when it explains at least half of what remains, significantly
        choice = min((c for c in cands if c[1] == _SHEAR), key=lambda c: c[0])
        perm = min((c for c in cands if c[1] != _SHEAR), key=lambda c: c[0])
        if _evidence(choice[0], perm[0], len(idx), n_tests, alpha) is not None:
            choice = perm
        sse, order, c, name = choice
        if order == _SHEAR and name is None:
            continue
        p = _evidence(sse0, sse, len(idx), n_tests, alpha)
        if p is None:
            continue
        n_comp = L.size
        rms0 = np.sqrt(sse0 / n_comp) / _GPA
        rms1 = np.sqrt(sse / n_comp) / _GPA
        what = _describe(tuple(order), c if name else 1.0, name)
        msg = (f"config_type {g!r} ({len(idx)} structures with stress): {what}. Against the stress their own "
               f"energies and forces imply, RMS {rms0:.2f} GPa as read, {rms1:.2f} GPa so (p = {p:.2g}); "
               "check how this group's stress was written")
        if g == "(all structures)":
            msg = msg.replace(f"config_type {g!r}", "all structures")
        found.append(ConventionFinding(str(g), idx, "stress", tuple(order), float(c if name else 1.0),
                                       float(rms0), float(rms1), p, msg))
    found.sort(key=lambda f: f.p_value)
    return found
