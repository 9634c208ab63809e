"""Label conventions of whole groups of structures, checked against their own physics.

The labels of one structure are not independent: the forces are minus the
position derivatives of the energy, the stress its strain derivative.  A
model fitted without one kind of label therefore predicts it from the
others, from physics: the energies from the forces (up to one constant per
species), the stress from the energies and forces.  When one group of
structures (a ``config_type``, or the whole data set) holds a label written
in another convention than the reader assumed -- energies in Hartree or
kcal/mol, stress in kBar or with VASP's pressure-positive sign, shear
components in another order (VASP writes ``xy yz zx``, LAMMPS ``xy xz yz``,
ASE's Voigt order is ``yz xz xy``) -- its labels disagree with that physics
in the same way structure after structure.

A robust per-structure test cannot see such a slip: the group's residuals are
all alike, so its own location and scale absorb them.
:func:`stress_conventions` and :func:`energy_conventions` look at the group
instead.  For each candidate convention (for stress every order of the three
shear components; for both a least-squares factor ``c``,
``label ~ c * physics``, when it is a known unit ratio or a sign flip:
unnamed factors are model error, not a convention) they compare the group's
residual sum of squares with that of the labels as read; a convention is
reported when it explains at least half of that sum
(:data:`MIN_IMPROVEMENT`) and the likelihood ratio, counted with one degree
of freedom per *structure* (the components of one structure share their
model error), is significant after a Bonferroni correction over groups and
candidates.  :func:`check` runs both on a fitted model; ``SparseGP.fit``
warns and ``kernelpot.screen`` lists what it finds.

The physics prediction is the posterior mean of the fitted model with that
kind's observations removed (their noise sent to infinity; the sparse set,
``delta`` and the other noises as fitted), plus the baseline's share.  Found
on mlearn's Si set, where the AIMD and vacancy structures hold their shear
stress with ``yz`` and ``xz`` exchanged relative to the elastic ones: with
the stress labels removed, the model reproduces the vacancies' shear labels
with RMS 0.51 GPa as read and 0.24 GPa exchanged, and the elastic ones as
read.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import stats

from kernelpot.io.labels import config_type, frame_labels, is_isolated_atom, is_periodic
from kernelpot.io.units import GPA as _GPA, unit_slip as _unit_slip

__all__ = ["ConventionFinding", "check", "energy_conventions", "physics_energy", "physics_stress",
           "stress_conventions", "MIN_IMPROVEMENT"]

#: a convention is reported when it at least halves the group's residual sum of squares
MIN_IMPROVEMENT = 2.0
#: a factor within this log ratio of -1 is a sign flip (x0.83 - x1.2)
_SIGN_LOG_TOL = 0.2
#: noise sent to this many times its fitted value: that kind's observations leave the posterior
_DROP = 1e8
#: structures with the labels needed before :func:`check` tests a kind
_MIN_FRAMES = 3
_ALL = "(all structures)"
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
        Indices of the group's structures with that label.
    label : str
        ``"stress"`` or ``"energy"``.
    order : tuple of str
        Stress: for the label's ASE Voigt shear components ``(yz, xz, xy)``,
        the component of the physics each one matches (``("yz", "xz", "xy")``:
        in order).  Energy: ``()``.
    factor : float
        ``c`` in ``label ~ c * physics`` (1 when no factor is needed).
    rms_as_read, rms_converted : float
        RMS of label minus physics over the group's components, as read and
        in the convention found: GPa (stress), meV/atom after the
        per-species term (energy).
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

    def convert(self, value):
        """A label as the physics reads it: a stress (6,) (ASE Voigt, eV/Å^3) reordered, and divided by ``factor``.

        An energy (eV) is divided by ``factor``; its reference may still differ
        from the other groups' (see :func:`kernelpot.audit`).
        """
        if self.label == "energy":
            return float(value) / self.factor
        s = np.array(value, dtype=float)
        out = s.copy()
        for k, comp in enumerate(self.order):
            out[3 + _SHEAR.index(comp)] = s[3 + k]
        return out / self.factor


def _posterior_without(model, frames, kind: str):
    """The fitted posterior with every ``kind`` observation's noise multiplied by ``_DROP`` (no weight).

    The sparse set, ``delta`` and the other noises stay as fitted.  The
    statistics of the fit are reused when the model holds them, else
    assembled again from ``frames`` (a loaded model).
    """
    from kernelpot.gp import assembly
    from kernelpot.gp.likelihood import GroupStats
    from kernelpot.gp.posterior import Posterior

    post = model.posterior_
    theta = np.array(model.theta_, float)
    for k, g in enumerate(model.noise_groups_):
        if g.split(":")[0] == kind:
            theta[1 + k] += np.log(_DROP)
    if np.array_equal(theta, model.theta_):
        return post
    st = getattr(model, "_stats", None)
    if st is None:
        labels = assembly.labels_in_groups(model, frames)
        st = GroupStats.empty(model.noise_groups_, assembly.n_columns(model))
        for a, lab in zip(frames, labels):
            assembly.add_frame(model, st, a, lab)
    return Posterior.from_statistics(theta, st, post.sparse, post.zeta, post.Kmm, post.Lmm, post.offset_species,
                                     post.kappa, post.pair)


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

    phys = _posterior_without(model, frames, "stress")
    out = np.full((len(frames), 6), np.nan)
    for i, a in enumerate(frames):
        if not is_periodic(a):
            continue
        feat = assembly.describe(model, a, gradients=False, strain=True)
        out[i] = phys.mean(feat, a.cell.volume, forces=False, stress=True)["stress"] + model._baseline_compute(a)[2]
    return out


def physics_energy(model, frames) -> np.ndarray:
    """Total energy of each structure predicted from the fitted model's forces (and stress) alone.

    Forces fix the potential-energy surface up to one constant per species,
    which the fitted offsets do not know without energy labels: compare
    these energies only after removing a per-species term, as
    :func:`energy_conventions` does.

    Parameters
    ----------
    model : SparseGP
        A fitted model.
    frames : list of ase.Atoms

    Returns
    -------
    (n_frames,) array
        eV: the posterior mean with every energy observation's noise
        multiplied by ``1e8`` (statistics as :func:`physics_stress`), plus
        the baseline's energy.
    """
    from kernelpot.gp import assembly

    phys = _posterior_without(model, frames, "energy")
    out = np.empty(len(frames))
    for i, a in enumerate(frames):
        feat = assembly.describe(model, a)
        out[i] = phys.mean(feat, None, forces=False)["energies"].sum() + model._baseline_compute(a)[0]
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
    groups = _groups(frames, groups)
    labels = np.full((len(frames), 6), np.nan)
    for i, a in enumerate(frames):
        lab = frame_labels(a, i)
        if "stress" in lab:
            labels[i] = lab["stress"]
    ok = np.all(np.isfinite(labels), axis=1) & np.all(np.isfinite(physics), axis=1)
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
        msg = (f"{_group_name(g)} ({len(idx)} structures with stress): {what}. Against the stress their own "
               f"energies and forces imply, RMS {rms0:.2f} GPa as read, {rms1:.2f} GPa so (p = {p:.2g}); "
               "check how this group's stress was written")
        found.append(ConventionFinding(str(g), idx, "stress", tuple(order), float(c if name else 1.0),
                                       float(rms0), float(rms1), p, msg))
    found.sort(key=lambda f: f.p_value)
    return found


def energy_conventions(frames, physics: np.ndarray, alpha: float = 0.05, groups=None) -> list:
    """Groups whose energy labels match the energies their forces imply only in another unit or sign.

    For each group, the energies per atom (labels and ``physics``) are
    regressed on the group's composition (atom fractions per species: forces
    know no per-species constant) and the remainders compared: the labels as
    read (``c = 1``) against ``c`` times the physics, ``c`` by least squares,
    when ``c`` is a known energy unit ratio (Hartree, Rydberg, kcal/mol,
    kJ/mol per eV) or ``-1``, with a cosine of at least 0.9 between the two.
    Reported under the rule of :func:`stress_conventions` (halves the residual
    sum of squares, significant with one degree of freedom per structure).

    Parameters
    ----------
    frames : list of ase.Atoms
        Labelled structures; those without an energy label and isolated
        atoms are skipped.
    physics : (n_frames,) array
        Total energies from the forces alone (:func:`physics_energy`), eV.
    alpha : float
        Family-wise error rate over the groups.
    groups : sequence of str, optional
        As :func:`stress_conventions`.

    Returns
    -------
    list of ConventionFinding
        ``label="energy"``, ``order=()``; RMS in meV/atom after the
        per-species term is removed.
    """
    frames = list(frames)
    physics = np.asarray(physics, float)
    if physics.shape != (len(frames),):
        raise ValueError(f"physics must have shape ({len(frames)},), got {physics.shape}")
    groups = _groups(frames, groups)
    E = np.full(len(frames), np.nan)
    for i, a in enumerate(frames):
        lab = frame_labels(a, i)
        if "energy" in lab and not is_isolated_atom(a):
            E[i] = lab["energy"]
    ok = np.isfinite(E) & np.isfinite(physics)
    names = sorted({g for g in groups[ok]}, key=str)
    found = []
    for g in names:
        idx = np.flatnonzero(ok & (groups == g))
        n_at = np.array([len(frames[i]) for i in idx], float)
        species = sorted({int(z) for i in idx for z in frames[i].numbers})
        N = np.array([[np.count_nonzero(frames[i].numbers == z) for z in species] for i in idx], float) / n_at[:, None]
        Q, R = np.linalg.qr(N)
        rank = int(np.sum(np.abs(np.diag(R)) > 1e-10))
        if len(idx) < rank + 3:
            continue
        Q = Q[:, :rank]
        L, P = E[idx] / n_at, physics[idx] / n_at
        L, P = L - Q @ (Q.T @ L), P - Q @ (Q.T @ P)
        sse0 = float(L @ L - 2 * L @ P + P @ P)
        pp, ll, lp = float(P @ P), float(L @ L), float(L @ P)
        if sse0 <= 0 or pp <= 0 or ll <= 0:
            continue
        c, cos = lp / pp, lp / np.sqrt(pp * ll)
        if c < 0 and abs(np.log(-c)) < _SIGN_LOG_TOL and cos < -0.9:
            what = "energies with the opposite sign"
        else:
            slip = _unit_slip("energy", c, cos) if cos >= 0.9 else None
            if not slip:
                continue
            what = "energies " + slip.replace("unit slip (", "in another unit (")
        sse = float(np.sum((L - c * P) ** 2))
        p = _evidence(sse0, sse, len(idx), max(1, len(names)), alpha)
        if p is None:
            continue
        rms0, rms1 = 1e3 * np.sqrt(sse0 / len(idx)), 1e3 * np.sqrt(sse / len(idx))
        msg = (f"{_group_name(g)} ({len(idx)} structures with energy): {what}. Against the energies their own "
               f"forces imply (up to one constant per species), RMS {rms0:.3g} meV/atom as read, {rms1:.3g} "
               f"meV/atom so (p = {p:.2g}); check how this group's energies were written")
        found.append(ConventionFinding(str(g), idx, "energy", (), float(c), float(rms0), float(rms1), p, msg))
    found.sort(key=lambda f: f.p_value)
    return found


def check(model, frames, alpha: float = 0.05) -> list:
    """Every whole-group convention check the fitted model's data allow, most significant first.

    Energies (:func:`energy_conventions`) when forces were fitted and at least
    three structures carry an energy; stress (:func:`stress_conventions`)
    when stress was fitted and at least three periodic structures carry one.
    Used by :meth:`SparseGP.fit` (a ``DataWarning`` per finding) and
    :func:`kernelpot.screen` (``ScreenTable.findings``).

    Returns
    -------
    list of ConventionFinding
        ``frames`` indices refer to ``frames``.
    """
    frames = list(frames)
    found = []
    labels = [frame_labels(a, i) for i, a in enumerate(frames)]
    if getattr(model, "fit_forces", True):
        have = [i for i, (a, lab) in enumerate(zip(frames, labels))
                if "energy" in lab and "forces" in lab and not is_isolated_atom(a)]
        if len(have) >= _MIN_FRAMES:
            found += _reindex(energy_conventions([frames[i] for i in have],
                                                 physics_energy(model, [frames[i] for i in have]), alpha), have)
    if getattr(model, "fit_stress", True):
        have = [i for i, (a, lab) in enumerate(zip(frames, labels)) if "stress" in lab and is_periodic(a)]
        if len(have) >= _MIN_FRAMES:
            found += _reindex(stress_conventions([frames[i] for i in have],
                                                 physics_stress(model, [frames[i] for i in have]), alpha), have)
    return sorted(found, key=lambda f: f.p_value)


def _reindex(found: list, have: list) -> list:
    for f in found:
        f.frames = np.asarray(have)[f.frames]
    return found


def _groups(frames, groups) -> np.ndarray:
    if groups is None:
        has_ct = any("config_type" in a.info for a in frames)
        groups = [config_type(a) if has_ct else _ALL for a in frames]
    return np.asarray(groups, dtype=object)


def _group_name(g) -> str:
    return "all structures" if g == _ALL else f"config_type {g!r}"
