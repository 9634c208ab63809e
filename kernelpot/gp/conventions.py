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
candidates.  Guards against naming the model's own error: a factor names a
unit within 35 % of it, the residuals choosing between neighbouring units
(both are named when they cannot); a stress factor must show in the
structures' differences from the group mean too, and a stress is judged only
where its physics is pinned (residual at least three times the physics'
epistemic std); the converted group must then sit about as close to its
physics as the groups read as written do to theirs (:func:`_plausible`).
:func:`check` runs both on a fitted model; ``SparseGP.fit`` warns and
``kernelpot.screen`` lists what it finds.  Tested by two fresh testers on
~180 random clean multi-group sets (hot and cold MD, relaxed cells, EOS
scans, vacancies, alloys, reference shifts, noisy labels, slabs, other
potentials): no false finding after these guards.  Small groups (3-5
structures) and slabs, whose stress the energies and forces pin poorly, can
hide a slip.

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

from kernelpot.io.labels import frame_labels, is_isolated_atom, is_periodic, relabelled
from kernelpot.io.units import GPA as _GPA, UNIT_FACTORS

__all__ = ["ConventionFinding", "check", "energy_conventions", "physics_energy", "physics_stress",
           "stress_conventions", "MIN_IMPROVEMENT"]

#: a convention is reported when it at least halves the group's residual sum of squares
MIN_IMPROVEMENT = 2.0
#: family-wise error rate of :func:`check` by default (the fit's own check uses it)
ALPHA = 0.05
#: a group is judged only where its physics is pinned: residual as read at least this many times the
#: physics' own epistemic std (relaxed cells at one volume leave dE/dV, so the stress, open)
_MIN_Z = 3.0
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
    convention : str
        The convention found, in words (``"stress in another unit (kBar
        read as GPa, x10)"``).
    message : str
        What the finding says, for people: the group, the convention, the
        evidence.
    groups : tuple of str
        The config_types the finding covers: ``(group,)``, or every group
        judged when one finding stands for all of them (``"(all structures)"``).
    per_atom : bool
        Energy: the labels are energies per atom where the total belongs
        (``label ~ physics / n_atoms``; ``factor`` is then 1).
    """

    group: str
    frames: np.ndarray
    label: str
    order: tuple
    factor: float
    rms_as_read: float
    rms_converted: float
    p_value: float
    convention: str
    message: str
    groups: tuple = ()
    per_atom: bool = False

    def __post_init__(self):
        self.groups = tuple(self.groups) or (self.group,)

    def convert(self, value, n_atoms: int | None = None):
        """A label as the physics reads it: a stress (6,) (ASE Voigt, eV/Å^3) reordered, and divided by ``factor``.

        An energy (eV) is divided by ``factor``, or, for a ``per_atom``
        finding, multiplied by ``n_atoms`` (the structure's atom count; required
        then); its reference may still differ from the other groups' (see
        :func:`kernelpot.audit`).
        """
        if self.label == "energy":
            if self.per_atom:
                if n_atoms is None:
                    raise ValueError("an energy written per atom converts with the structure's n_atoms")
                return float(value) * n_atoms
            return float(value) / self.factor
        return _reorder(np.atleast_2d(np.asarray(value, dtype=float)), self.order)[0] / self.factor

    def apply(self, frames) -> list:
        """Copies of ``frames`` with this label converted (:meth:`convert`) in the groups the finding covers.

        The groups are matched by ``config_type`` (``groups``; every structure
        when the data set has none), so the same finding converts a test set
        written the same way.  Only structures of the kind the check judged
        are converted: with the label, and for an energy finding with forces
        and not an isolated atom (the energies were judged against the
        energies their forces imply; an isolated atom's energy is its own
        reference).  Others -- including groups too small to be judged, which
        even a finding on ``"(all structures)"`` does not cover -- are
        returned as they are (the same objects); ``frames`` is not changed.
        Whether to convert is the user's call: a finding is evidence about
        how a file was written, not proof.

        Parameters
        ----------
        frames : list of ase.Atoms

        Returns
        -------
        list of ase.Atoms

        Raises
        ------
        ValueError
            If a structure of a covered group has a malformed label (the
            message of :func:`kernelpot.io.labels.frame_labels`).
        """
        out = []
        for i, a in enumerate(frames):
            g = _ALL if self.groups == (_ALL,) else str(a.info.get("config_type", _NONE))
            lab = frame_labels(a, i) if g in self.groups else {}
            judged = self.label in lab and (self.label != "energy" or ("forces" in lab and not is_isolated_atom(a)))
            out.append(relabelled(a, **{self.label: self.convert(lab[self.label], len(a))}) if judged else a)
        return out


def _statistics(model, frames):
    """The fit's whitened statistics: kept by a model fitted in this session, else assembled from ``frames``.

    ``frames`` must then be the model's training frames, all of them (a
    loaded model does not store its statistics).
    """
    from kernelpot.gp import assembly

    st = getattr(model, "_stats", None)
    return st if st is not None else assembly.accumulate(model, frames, assembly.labels_in_groups(model, frames))


def _posterior_without(model, stats, kind: str):
    """The fitted posterior with every ``kind`` observation's noise multiplied by ``_DROP`` (no weight).

    The sparse set, ``delta`` and the other noises stay as fitted.
    """
    from kernelpot.gp.posterior import Posterior

    post = model.posterior_
    theta = np.array(model.theta_, float)
    for k, g in enumerate(model.noise_groups_):
        if g.split(":")[0] == kind:
            theta[1 + k] += np.log(_DROP)
    if np.array_equal(theta, model.theta_):
        return post
    return Posterior.from_statistics(theta, stats, post.sparse, post.zeta, post.Kmm, post.Lmm, post.offset_species,
                                     post.kappa, post.pair)


def _physics(model, frames, pe=None, ps=None) -> tuple:
    """Energies from posterior ``pe`` (without energies) and stress from ``ps`` (without stress), one descriptor pass.

    Means only, contracted with the weights (no design rows).  NaN where a
    posterior is None or (stress) the structure is not periodic.
    """
    from kernelpot.gp import assembly

    E = np.full(len(frames), np.nan)
    S = np.full((len(frames), 6), np.nan)
    for i, a in enumerate(frames):
        per = ps is not None and is_periodic(a)
        feat = assembly.describe(model, a, gradients=False, strain=per)
        base = model._baseline_compute(a)
        if pe is not None:
            E[i] = pe.mean(feat, None, forces=False)["energies"].sum() + base[0]
        if per:
            S[i] = ps.mean(feat, a.cell.volume, forces=False, stress=True)["stress"] + base[2]
    return E, S


def _stress_std(model, frames, ps) -> np.ndarray:
    """Epistemic std (n_frames, 6) of the stress under ``ps`` (without the stress observations).

    How well energies and forces pin the stress: a set of relaxed structures
    at one volume leaves dE/dV open.  Needs each structure's stress design
    rows, so :func:`check` asks for it only where a group has a candidate
    finding.
    """
    from kernelpot.gp import assembly
    from kernelpot.gp.variance import prior_of, prior_stress_var

    out = np.zeros((len(frames), 6))
    # the rows of up to 256 structures in one pair of triangular solves (six at a time read L from
    # memory for every structure: half the check's time on mlearn Si)
    for c0 in range(0, len(frames), 256):
        rows, prior = [], []
        for a in frames[c0:c0 + 256]:
            vol = a.cell.volume
            feat = assembly.describe(model, a, gradients=False, strain=True)
            rows.append(ps.design(feat, vol, forces=False, stress=True)["stress"])
            prior.append(prior_of(prior_stress_var, feat, ps.sparse, ps.zeta, vol))
        var = ps.latent_variance(np.vstack(rows), np.concatenate(prior))
        out[c0:c0 + len(rows)] = np.sqrt(var).reshape(len(rows), 6)
    return out


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
        model: pass all its training frames).
    """
    frames = list(frames)
    return _physics(model, frames, ps=_posterior_without(model, _statistics(model, frames), "stress"))[1]


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
    frames = list(frames)
    return _physics(model, frames, pe=_posterior_without(model, _statistics(model, frames), "energy"))[0]


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
    if factor != 1.0:
        parts.append(c_name)
    if order != _SHEAR:
        moved = [f"label {lab} is {phys}" for lab, phys in zip(_SHEAR, order) if lab != phys]
        parts.append("shear components in another order: " + ", ".join(moved) + _hint(order))
    return "stress " + "; and ".join(parts)


def _reorder(L: np.ndarray, order: tuple) -> np.ndarray:
    """Stress labels (n, 6) with their shear components put where ``order`` says the physics has them."""
    out = L.copy()
    for k, comp in enumerate(order):
        out[:, 3 + _SHEAR.index(comp)] = L[:, 3 + k]
    return out


#: a least-squares factor names a unit (or sign) within this log ratio of it (x0.74 - x1.35): the
#: physics has a scale error of its own (10-20 % on an alloy); the residuals choose between neighbours
_FACTOR_LOG_WINDOW = 0.3
#: |cosine| between labels and physics below which a factor names nothing: stress has its own guard
#: (the physics' std, :data:`_MIN_Z`) and slabs' stress comes out of energies and forces at ~0.9
_MIN_COS = {"stress": 0.8, "energy": 0.9}


def _factor_candidates(kind: str, c: float, cos: float) -> list:
    """``(factor, words)`` a least-squares factor ``label ~ c physics`` may stand for: a sign flip, unit slips."""
    if not (np.isfinite(c) and np.isfinite(cos)) or abs(cos) < _MIN_COS[kind] or c == 0:
        return []
    what = "" if kind == "stress" else "energies "
    out = []
    if c < 0 and abs(np.log(-c)) < _FACTOR_LOG_WINDOW:
        out.append((-1.0, what + ("with the opposite sign (pressure-positive, as VASP prints it?)"
                                  if kind == "stress" else "with the opposite sign")))
    for f, read in UNIT_FACTORS[kind].items():
        if abs(np.log(abs(c) / f)) < _FACTOR_LOG_WINDOW:
            sign = "with the opposite sign and " if c < 0 else ""
            out.append((float(np.sign(c)) * f, f"{what}{sign}in another unit ({read}, x{f:.3g})"))
    return out


def _best_factor(sse_of, kind: str, c: float, cos: float):
    """The candidate factor with the smallest residual, ``(factor, words, sse)``, or None.

    Candidates whose residual is within ``MIN_IMPROVEMENT`` of the best are
    named together (``"... or ..."``): the data cannot tell them apart.
    """
    cands = sorted(((sse_of(f), f, w) for f, w in _factor_candidates(kind, c, cos)), key=lambda t: t[0])
    if not cands:
        return None
    sse, f, words = cands[0]
    close = [w for e, _, w in cands[1:] if e < MIN_IMPROVEMENT * sse]
    return f, " or ".join([words] + close), sse


def _evidence(sse_from: float, sse_to: float, n: int, n_tests: int, alpha: float) -> float | None:
    """Bonferroni p-value of going from ``sse_from`` to ``sse_to`` over ``n`` structures; None when not reported.

    Reported: the new convention explains at least half of the residual sum of
    squares (:data:`MIN_IMPROVEMENT`) and the likelihood ratio
    ``n/2 log(sse_from / sse_to)`` is significant (``chi2(1)``, one degree of
    freedom per structure: its components share their model error).
    """
    ratio = sse_from / max(sse_to, 1e-300)
    if ratio < MIN_IMPROVEMENT:
        return None
    p = min(1.0, n_tests * float(stats.chi2.sf(n * np.log(ratio), df=1)))
    return p if p < alpha else None


def _stress_group(L: np.ndarray, P: np.ndarray, n_tests: int, alpha: float):
    """``(order, c, name, p)`` of the convention the group's stress labels follow, or None (as read).

    First a factor on all six components (sign, unit), which the
    structures' differences from the group mean must show too; then, with
    that factor, a reordering of the shear components judged on the shear
    components alone (a reordering cannot help the diagonal, whose model
    error would otherwise hide a shear slip of fixed-volume MD).
    """
    c, name, p_c = 1.0, None, None
    pp, lp = float(np.sum(P * P)), float(np.sum(L * P))
    # the factor must also hold for the structures' differences from the group's mean stress: a group
    # at one volume (relaxed cells) has one stress, and a physics wrong about its dE/dV is wrong by a
    # constant that a sign flip can mimic
    Lc, Pc = L - L.mean(axis=0), P - P.mean(axis=0)
    pc, lc, ll = float(np.sum(Pc * Pc)), float(np.sum(Lc * Pc)), float(np.sum(Lc * Lc))
    c_dev, cos_dev = (lc / pc, lc / np.sqrt(pc * ll)) if pc > 0 and ll > 0 else (np.nan, np.nan)
    if pp > 0:
        best = _best_factor(lambda f: float(np.sum((L - f * P) ** 2)), "stress", lp / pp,
                            lp / np.sqrt(pp * float(np.sum(L * L)) + 1e-300))
        # the differences follow the physics (cosine >= 0.5) with a factor of the same sign, within x2
        if best and abs(cos_dev) >= 0.5 and c_dev / best[0] > 0 and abs(np.log(c_dev / best[0])) < np.log(2.0):
            p_c = _evidence(float(np.sum((L - P) ** 2)), best[2], len(L), n_tests, alpha)
            if p_c is not None:
                c, name = best[0], best[1]
    sh = slice(3, 6)
    base = float(np.sum((L[:, sh] - c * P[:, sh]) ** 2))
    sse = {o: float(np.sum((_reorder(L, o)[:, sh] - c * P[:, sh]) ** 2)) for o in itertools.permutations(_SHEAR)}
    best = min((o for o in sse if o != _SHEAR), key=sse.get)
    p_o = _evidence(base, sse[best], len(L), n_tests, alpha)
    order = best if p_o is not None else _SHEAR
    if name is None and order == _SHEAR:
        return None
    return order, c, name, min(p for p in (p_c, p_o) if p is not None)


def stress_conventions(frames, physics: np.ndarray, alpha: float = 0.05, groups=None, physics_std=None) -> list:
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
        frame has one, ``"(no config_type)"`` for frames without one among
        frames with).
    physics_std : (n_frames, 6) array, optional
        Epistemic std of ``physics`` (:func:`check` passes it).  A group is
        then judged only when its residual as read is at least three times
        this std (RMS over the components judged): where energies and forces
        do not pin the stress, disagreeing with it says nothing.

    Returns
    -------
    list of ConventionFinding
        Most significant first; empty when every group reads as written.

    Raises
    ------
    ValueError
        When ``physics`` or ``groups`` does not have one entry per frame.
    """
    frames, physics = _inputs(frames, physics, (6,))
    if physics_std is not None:
        physics_std = np.asarray(physics_std, float)
        if physics_std.shape != physics.shape:
            raise ValueError(f"physics_std must have shape {physics.shape}, got {physics_std.shape}")
    groups = _groups(frames, groups)
    labels = np.full((len(frames), 6), np.nan)
    for i, a in enumerate(frames):
        lab = frame_labels(a, i)
        if "stress" in lab:
            labels[i] = lab["stress"]
    ok = np.all(np.isfinite(labels), axis=1) & np.all(np.isfinite(physics), axis=1)
    names = sorted({g for g in groups[ok]}, key=str)
    n_tests = max(1, len(names) * 2)  # a factor and a reordering per group
    rows = {}
    for g in names:
        idx = np.flatnonzero(ok & (groups == g))
        L, P = labels[idx], physics[idx]
        res = _stress_group(L, P, n_tests, alpha) if np.sum((L - P) ** 2) > 0 else None
        # residual and label size over all components and over the shear ones (GPa)
        fit = {k: (np.sqrt(np.mean((L[:, c] - P[:, c]) ** 2)) / _GPA, np.sqrt(np.mean(L[:, c] ** 2)) / _GPA)
               for k, c in (("all", slice(0, 6)), ("shear", slice(3, 6)))}
        rows[g] = (idx, res, fit, L, P)
    found = []
    for g, (idx, res, fit, L, P) in rows.items():
        if res is None:
            continue
        order, c, name, p = res
        conv = _reorder(L, order) / c
        # a reordering alone is judged on the shear components, whatever the diagonal's model error
        comp = slice(0, 6) if name else slice(3, 6)
        key = "all" if name else "shear"
        if physics_std is not None and fit[key][0] * _GPA < _MIN_Z * np.sqrt(np.mean(physics_std[idx][:, comp] ** 2)):
            continue
        judged = np.sqrt(np.mean((conv[:, comp] - P[:, comp]) ** 2)) / _GPA
        others = [r[2][key] for h, r in rows.items() if r[1] is None and h != g]
        if not _plausible(judged, np.sqrt(np.mean(conv[:, comp] ** 2)) / _GPA, others, _STRESS_PRECISION):
            continue
        rms0, rms1 = fit["all"][0], np.sqrt(np.mean((conv - P) ** 2)) / _GPA
        what = _describe(order, c, name)
        msg = (f"{_group_name(g)} ({len(idx)} structures with stress): {what}. Against the stress their own "
               f"energies and forces imply, RMS {rms0:.2g} GPa as read, {rms1:.2g} GPa converted "
               f"(p = {p:.2g}); check how this group's stress was written")
        found.append(ConventionFinding(str(g), idx, "stress", tuple(order), float(c), float(rms0), float(rms1), p,
                                       what, msg))
    return _merge(found, len(rows))


#: DFT precision of a label's residual: below it, a converted group is as good as any (GPa, meV/atom)
_STRESS_PRECISION, _ENERGY_PRECISION = 0.1, 1.0
#: a finding needs the physics to reproduce the other groups to this fraction of their labels' size, and
#: its converted residual within this many times theirs (or DFT precision)
_OTHERS_FIT, _OTHERS_RATIO = 0.75, 3.0
#: energies converted this close to their physics (RMS over their spread) are plausible on their own
_ENERGY_EXPLAINED = 0.35


def _plausible(rms_converted: float, size_converted: float, others: list, precision: float) -> bool:
    """Whether a group's converted labels fit the physics about as well as the groups read as written do.

    ``others``: ``(rms as read, label size)`` of the groups without a finding
    (those with labels of at least twice DFT precision on the components
    judged).  Without them, the converted residual must be under half the
    converted labels' size.  With them, the physics must reproduce them
    (median residual at most 3/4 of their size: else it is the model, not the
    labels) and the converted group must come within three times their
    median residual or DFT precision (a stress written in a rotated frame
    is not a reordering, however much better the reordering fits).
    """
    # groups whose labels are near zero on these components (pure-diagonal elastic strains have no
    # shear) cannot show how well the physics does there
    others = [(r, z) for r, z in others if z >= 2.0 * precision]
    if not others:
        return rms_converted <= _OTHERS_FIT * size_converted
    rms_o = float(np.median([r for r, _ in others]))
    size_o = float(np.median([z for _, z in others]))
    return rms_o <= _OTHERS_FIT * size_o and rms_converted <= max(_OTHERS_RATIO * rms_o, precision)


def _merge(found: list, n_groups: int) -> list:
    """One finding for the whole data set when every group has the same one; else most significant first."""
    if n_groups > 1 and len(found) == n_groups and len({f.convention for f in found}) == 1:
        f0 = found[0]
        frames = np.sort(np.concatenate([f.frames for f in found]))
        w = [len(f.frames) for f in found]
        rms0 = float(np.sqrt(np.average([f.rms_as_read ** 2 for f in found], weights=w)))
        rms1 = float(np.sqrt(np.average([f.rms_converted ** 2 for f in found], weights=w)))
        p = min(f.p_value for f in found)
        unit = "GPa" if f0.label == "stress" else "meV/atom"
        msg = (f"all structures, in every config_type ({len(frames)} with {f0.label}): {f0.convention}. "
               f"Against what their own physics implies, RMS {rms0:.3g} {unit} as read, {rms1:.3g} {unit} "
               f"converted (p = {p:.2g}); check how the {f0.label} labels were written")
        return [ConventionFinding(_ALL, frames, f0.label, f0.order, f0.factor, rms0, rms1, p, f0.convention, msg,
                                  tuple(g for f in found for g in f.groups), f0.per_atom)]
    return sorted(found, key=lambda f: f.p_value)


def energy_conventions(frames, physics: np.ndarray, alpha: float = 0.05, groups=None) -> list:
    """Groups whose energy labels match the energies their forces imply only in another unit or sign.

    For each group, the energies per atom (labels and ``physics``) are
    regressed on the group's composition (atom fractions per species: forces
    know no per-species constant) and the remainders compared: the labels as
    read (``c = 1``) against ``c`` times the physics, ``c`` by least squares,
    when ``c`` is within 35 % of a known energy unit ratio (Hartree, Rydberg,
    kcal/mol, kJ/mol per eV) or of ``-1``, with a cosine of at least 0.9
    between the two; the residuals choose between neighbouring units, and
    name both when they cannot.  One more candidate: energies per atom
    written where the total belongs (``label ~ physics / n_atoms``), named
    when its residual (in the labels' units, as the units' are) is the
    smallest.
    Reported under the rule of :func:`stress_conventions` (halves the residual
    sum of squares, significant with one degree of freedom per structure,
    and plausible against the other groups).

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

    Raises
    ------
    ValueError
        When ``physics`` or ``groups`` does not have one entry per frame.
    """
    frames, physics = _inputs(frames, physics, ())
    groups = _groups(frames, groups)
    E = np.full(len(frames), np.nan)
    for i, a in enumerate(frames):
        lab = frame_labels(a, i)
        if "energy" in lab and not is_isolated_atom(a):
            E[i] = lab["energy"]
    ok = np.isfinite(E) & np.isfinite(physics)
    names = sorted({g for g in groups[ok]}, key=str)
    rows = {}
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
        # energies per atom written as totals: label ~ physics / n_atoms.  Judged like the unit candidates,
        # by the labels' residual against that prediction (in the labels' own units: comparing residuals in
        # the physics' units instead favoured a unit ratio within 35 % of 1/n_atoms, such as Hartree's 1/27
        # for 32-atom cells); converted back: n_atoms * label
        P_pa = physics[idx] / n_at ** 2
        P_pa = P_pa - Q @ (Q.T @ P_pa)
        L_pa = E[idx] - Q @ (Q.T @ E[idx])
        sse0 = float(np.sum((L - P) ** 2))
        pp, ll, lp = float(P @ P), float(L @ L), float(L @ P)
        res = None
        if sse0 > 0 and pp > 0 and ll > 0:
            best = _best_factor(lambda f: float(np.sum((L - f * P) ** 2)), "energy", lp / pp, lp / np.sqrt(pp * ll))
            sse_pa = float(np.sum((L - P_pa) ** 2))
            # as for a unit: the labels must follow that prediction (cosine), and converted back they must
            # halve the residual in the physics' units too -- else 1/n_atoms^2 only shrinks a poor physics
            # prediction towards labels of little spread (mlearn Li's elastic cells, 0.2 meV/atom)
            cos_pa = float(L @ P_pa) / np.sqrt(ll * float(P_pa @ P_pa)) if float(P_pa @ P_pa) > 0 else 0.0
            if (sse_pa < sse0 and (best is None or sse_pa < best[2]) and cos_pa >= _MIN_COS["energy"]
                    and MIN_IMPROVEMENT * float(np.sum((L_pa - P) ** 2)) <= sse0):
                best = (None, "energies per atom where the total energy belongs (x n_atoms)", sse_pa)
            p = best and _evidence(sse0, best[2], len(idx), max(1, len(names)), alpha)
            res = (best[0], best[1], p) if best and p is not None else None
        rows[g] = (idx, res, 1e3 * np.sqrt(sse0 / len(idx)), 1e3 * np.sqrt(ll / len(idx)), L, P, L_pa)
    found = []
    for g, (idx, res, rms0, size, L, P, L_pa) in rows.items():
        if res is None:
            continue
        c, what, p = res
        converted = L_pa if c is None else L / c
        rms1 = 1e3 * np.sqrt(np.mean((converted - P) ** 2))
        size1 = 1e3 * np.sqrt(np.mean(converted ** 2))
        # an alloy's energies come out of its forces less well than a pure metal's: a conversion that
        # leaves under a third of the converted labels' spread is plausible whatever the other groups show
        if not (rms1 <= _ENERGY_EXPLAINED * size1 or _plausible(
                rms1, size1, [(r[2], r[3]) for h, r in rows.items() if r[1] is None and h != g],
                _ENERGY_PRECISION)):
            continue
        msg = (f"{_group_name(g)} ({len(idx)} structures with energy): {what}. Against the energies their own "
               f"forces imply (up to one constant per species), RMS {rms0:.3g} meV/atom as read, {rms1:.3g} "
               f"meV/atom converted (p = {p:.2g}); check how this group's energies were written")
        found.append(ConventionFinding(str(g), idx, "energy", (), 1.0 if c is None else float(c), float(rms0),
                                       float(rms1), p, what, msg, (), c is None))
    return _merge(found, len(rows))


def check(model, frames, alpha: float = ALPHA) -> list:
    """Every whole-group convention check the fitted model's data allow, most significant first.

    Energies (:func:`energy_conventions`) when forces were fitted and at least
    three structures carry an energy and forces; stress
    (:func:`stress_conventions`) when at least three periodic structures
    carry one (also when the model was fitted without stress: its stress is
    then physics already).  One descriptor pass for both means, and one
    more over the groups with a candidate stress finding, for the physics'
    std.  Used by
    :meth:`SparseGP.fit` (a ``DataWarning`` per finding) and
    :func:`kernelpot.screen` (``ScreenTable.findings``).

    Returns
    -------
    list of ConventionFinding
        ``frames`` indices refer to ``frames``.
    """
    frames = list(frames)
    labels = [frame_labels(a, i) for i, a in enumerate(frames)]
    he = [i for i, (a, lab) in enumerate(zip(frames, labels))
          if "energy" in lab and "forces" in lab and not is_isolated_atom(a)]
    if not getattr(model, "fit_forces", True):
        he = []
    hs = [i for i, (a, lab) in enumerate(zip(frames, labels)) if "stress" in lab and is_periodic(a)]
    do_e, do_s = len(he) >= _MIN_FRAMES, len(hs) >= _MIN_FRAMES
    if not (do_e or do_s):
        return []
    use = sorted(set(he if do_e else []) | set(hs if do_s else []))
    # the statistics from every frame (a loaded model's are assembled again), each posterior once
    st = _statistics(model, frames)
    pe = _posterior_without(model, st, "energy") if do_e else None
    ps = _posterior_without(model, st, "stress") if do_s else None
    E, S = _physics(model, [frames[i] for i in use], pe, ps)
    pos = {i: k for k, i in enumerate(use)}
    found = []
    if do_e:
        found += _reindex(energy_conventions([frames[i] for i in he], E[[pos[i] for i in he]], alpha), he)
    if do_s:
        sub, Ss = [frames[i] for i in hs], S[[pos[i] for i in hs]]
        # the physics' std (design rows per structure) only for the groups with a candidate finding: a
        # group's verdict depends on its own std alone, so the rest need none
        prelim = stress_conventions(sub, Ss, alpha)
        if prelim:
            need = np.unique(np.concatenate([f.frames for f in prelim]))
            std = np.full_like(Ss, np.inf)
            std[need] = _stress_std(model, [sub[j] for j in need], ps)
            found += _reindex(stress_conventions(sub, Ss, alpha, physics_std=std), hs)
    return sorted(found, key=lambda f: f.p_value)


def _inputs(frames, physics, tail: tuple) -> tuple:
    """``frames`` as a list and ``physics`` as an array of shape ``(n_frames, *tail)`` (ValueError otherwise)."""
    frames = list(frames)
    physics = np.asarray(physics, float)
    if physics.shape != (len(frames), *tail):
        raise ValueError(f"physics must have shape {(len(frames), *tail)}, got {physics.shape}")
    return frames, physics


def _reindex(found: list, have: list) -> list:
    for f in found:
        f.frames = np.asarray(have)[f.frames]
    return found


def _groups(frames, groups) -> np.ndarray:
    if groups is None:
        has_ct = any("config_type" in a.info for a in frames)
        groups = [str(a.info.get("config_type", _NONE)) if has_ct else _ALL for a in frames]
    if len(groups) != len(frames):
        raise ValueError(f"groups must have one entry per frame ({len(frames)}), got {len(groups)}")
    return np.asarray(groups, dtype=object)


_NONE = "(no config_type)"


def _group_name(g) -> str:
    return {_ALL: "all structures", _NONE: "structures without a config_type"}.get(g, f"config_type {g!r}")
