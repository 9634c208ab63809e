"""What is wrong with a flagged training structure, and which structures are duplicates.

Used by :func:`kernelpot.uq.screening.screen`; numbers only (the figures are
in :mod:`kernelpot.plot`).

Diagnosis
---------
For a flagged structure the label under suspicion is the one whose test has
the smallest p-value (energy, the energy left out with the structure's own
forces kept, forces, the net force, stress), except that when two or more of
energy / forces / stress are each significant, the weaker at least a quarter
as far past the threshold (in log p) as the stronger, the structure itself is
suspected (``"geometry"``: wrong positions, species or cell; a labels-only
error rarely spoils several labels alike), and that forces off on one atom
alone, not flipped, point at that atom's position (a machine-written force
block is rarely wrong on one atom; a coordinate edited or mis-wrapped after
the calculation is).  The kind is then read off the labels and the
leave-one-out prediction ``P`` of the same label:

* a least-squares factor ``c = <L, P> / <P, P>`` near a known unit ratio
  (Hartree, Rydberg, kcal/mol, kJ/mol per eV; Bohr per Å; kBar, eV/Å^3 per GPa)
  -> unit slip; close to -1 -> sign error;
* energies of two flagged structures of the same size that match each
  other's predictions -> swapped labels; a duplicate with another energy ->
  conflicting duplicate;
* otherwise an energy error is a reference shift (a per-atom constant),
  unless the force residual sits on one atom and the bonded neighbour it
  pushes (at least 90 % of it on the two, the first atom's force off beyond
  its uncertainty): a reference shift leaves the forces untouched, an atom
  moved after the calculation spoils its energy and those forces together
  (``geometry``, :func:`moved_atom`);
* force residuals concentrated on one or two atoms -> one atom (its sign
  flipped when label and prediction are anti-parallel and of one size, else
  that atom misplaced or its force off); spread over all atoms and
  uncorrelated with the prediction -> stale forces (from another geometry);
  spread but correlated -> noisy forces (unconverged SCF);
* a net force far above its noise -> the forces are not the gradient of
  any translation-invariant energy;
* forces or stress exactly zero where the model predicts otherwise -> not
  written or not computed; a stress off by no common factor -> its RMS size;
* nearest-neighbour distances out of line with the rest of the data set
  (:func:`neighbour_ratio`) -> positions in the wrong length unit (Bohr,
  nm) or fractional coordinates read as Cartesian.

The rules are physics of how labels go wrong, not fitted to a benchmark.
"""

from __future__ import annotations

import numpy as np

from kernelpot.io.labels import neighbour_ratio
from kernelpot.io.units import BOHR as _BOHR, GPA as _GPA, UNIT_FACTORS, unit_slip as _unit_slip

__all__ = ["UNIT_FACTORS", "diagnose", "duplicates", "force_concentration", "mean_descriptors", "moved_atom",
           "neighbour_ratio", "scale_slip"]

#: a force sign error: label and prediction on the atom anti-parallel (cos below -this) and of the
#: same size within this log ratio (x1.5); otherwise one atom's position or force is simply off
_SIGN_COS, _SIGN_LOG_RATIO = 0.8, float(np.log(1.5))
_UNIT_TOL = 0.03  # sign error: label / prediction within 3 % of -1
#: force residuals on one or two atoms carrying more than this share of a structure's: one atom's force off
_ONE_ATOM_SHARE = 0.6
#: ... more than this share with an energy flag: an atom moved after the calculation, its force and its
#: bonded neighbour's (equal and opposite) off together while a reference shift leaves forces untouched
#: (clean acetylacetone frames: median 0.43, largest 0.78 of 150; one H moved 0.05-0.15 Å: 0.96-0.99)
_MOVED_ATOM_SHARE = 0.9
#: ... in at least this many atoms (in fewer, two atoms carry most of any residual by chance: a clean
#: 6-atom mlearn Li surface cell reached 0.9), the two atoms bonded (within this factor of their
#: covalent radii's sum), and the moved atom's force off beyond its own uncertainty (chi-square of its
#: three z-scores at this level: a concentration of residuals that are all within their uncertainty
#: is no evidence of anything)
_MOVED_MIN_ATOMS = 8
_BOND_FACTOR = 1.3
_MOVED_ALPHA = 0.05


def force_concentration(label: np.ndarray, pred: np.ndarray) -> tuple[int, int, float]:
    """The two atoms with the largest force residuals and their share of the structure's.

    Parameters
    ----------
    label, pred : (n_atoms, 3) arrays
        Force labels and their prediction (eV/Å).

    Returns
    -------
    first, second : int
        Indices of the atoms with the largest and second-largest ``|label - pred|``
        (``second == first`` for a single atom; both -1 for none).
    share : float
        ``(r_1^2 + r_2^2) / sum_i r_i^2`` of the squared residual norms: near one when
        one atom (and the neighbour its displacement pushes) carries the whole residual, about ``2 / n``
        for residuals spread evenly.  NaN when the residual is zero.
    """
    r2 = np.sum((np.asarray(label, float) - np.asarray(pred, float)) ** 2, axis=1)
    if r2.size == 0:
        return -1, -1, np.nan
    top = np.argsort(r2)[::-1]
    tot = float(r2.sum())
    return int(top[0]), int(top[min(1, len(top) - 1)]), (float(r2[top[:2]].sum()) / tot if tot > 0 else np.nan)


def _factor(label: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Least-squares factor ``c`` with ``label ~ c pred`` and the cosine between them."""
    label, pred = np.ravel(label), np.ravel(pred)
    pp, ll = float(pred @ pred), float(label @ label)
    if pp <= 0 or ll <= 0:
        return np.nan, np.nan
    lp = float(label @ pred)
    return lp / pp, lp / np.sqrt(pp * ll)


def moved_atom(atoms, labels: dict, pred: dict, z: np.ndarray | None = None) -> int | None:
    """The atom an energy error points at when it was moved after the calculation, else None.

    A wrong energy whose structure's force residual sits on one atom and
    the bonded neighbour its displacement pushes reads as a misplaced atom,
    not as a reference shift, which leaves forces untouched.  All of these
    must hold: at least ``_MOVED_MIN_ATOMS`` atoms; the two largest residuals
    carry ``_MOVED_ATOM_SHARE`` of it (:func:`force_concentration`); the two
    atoms are within ``_BOND_FACTOR`` times their covalent radii's sum of
    each other; and, with ``z``, the first atom's force is off beyond its
    own uncertainty (``chi2_3`` of its three z-scores at ``_MOVED_ALPHA``).

    Parameters
    ----------
    atoms : ase.Atoms
        The structure as labelled (its positions, cell and species).
    labels, pred : dict
        ``"forces"`` (n_atoms, 3), eV/Å: labels and their leave-one-out prediction.
    z : (n_atoms, 3) array, optional
        The force z-scores (residual over predictive std).

    Returns
    -------
    int or None
        Index of the atom read as moved, or None when the evidence does not point at one.
    """
    from ase.data import covalent_radii
    from scipy import stats

    n = len(atoms)
    if n < _MOVED_MIN_ATOMS or "forces" not in labels or "forces" not in pred:
        return None
    L, P = np.asarray(labels["forces"], float), np.asarray(pred["forces"], float)
    if L.shape != P.shape or L.shape != (n, 3):
        return None
    j, k, share = force_concentration(L, P)
    if not (np.isfinite(share) and share >= _MOVED_ATOM_SHARE):
        return None
    Z = atoms.numbers
    if atoms.get_distance(j, k, mic=bool(atoms.pbc.any())) > _BOND_FACTOR * (covalent_radii[Z[j]] +
                                                                             covalent_radii[Z[k]]):
        return None
    if z is not None and np.shape(z) == (n, 3):
        if stats.chi2.sf(float(np.sum(np.square(z[j]))), 3) >= _MOVED_ALPHA:
            return None
    return j


def diagnose(suspect: str, labels: dict, pred: dict, n_atoms: int, *, net_force_significant: bool = False,
             partner: str | None = None) -> str:
    """Most likely kind of error of one structure, given the label under suspicion.

    Parameters
    ----------
    suspect : {"energy", "forces", "stress", "geometry"}
        The label the evidence points at.
    labels, pred : dict
        The structure's labels and their leave-one-out prediction: ``"energy"``
        (total, eV), ``"forces"`` ((n_atoms, 3), eV/Å), ``"stress"`` ((6,), eV/Å^3);
        missing keys are allowed.
    n_atoms : int
    net_force_significant : bool
        Whether the net-force test is significant.
    partner : str, optional
        Description of a swap partner or a conflicting duplicate, found by
        the caller from the other structures (takes precedence for energies).

    Returns
    -------
    str
        Short text, e.g. ``"sign error on atom 12"`` or ``"reference shift"``.

    Examples
    --------
    >>> diagnose("stress", {"stress": np.ones(6) * 10}, {"stress": np.ones(6)}, 8)
    'unit slip (kBar read as GPa, x10)'
    """
    if suspect == "geometry":
        return "geometry or species: energy, forces and stress all inconsistent"
    if suspect == "duplicate":
        return partner or "conflicting duplicate"
    if suspect not in labels or suspect not in pred:
        return ""
    L, P = np.asarray(labels[suspect], float), np.asarray(pred[suspect], float)
    if suspect != "energy" and L.size and not np.any(L) and np.any(P):
        what = "force" if suspect == "forces" else "stress"
        return f"every {what} component exactly zero (not written or not computed?)"
    if suspect == "energy":
        if partner:
            return partner
        c, _ = _factor(L, P)
        slip = _unit_slip("energy", c, 1.0)
        if slip:
            return slip
        if np.isfinite(c) and abs(c + 1.0) < _UNIT_TOL:
            return "sign error"
        shift = 1000.0 * float(L - P) / n_atoms
        return f"reference shift ({shift:+.0f} meV/atom)" if abs(shift) >= 9.5 else \
            f"reference shift ({shift:+.2g} meV/atom)"
    c, cos = _factor(L, P)
    slip = _unit_slip(suspect, c, cos)
    if slip:
        return slip
    if np.isfinite(cos) and cos < -0.8:
        return "sign error (all components)"
    if suspect == "stress":
        if np.isfinite(c) and abs(c - 1.0) > 0.2:
            return f"stress off (label ~ {c:.2g} x prediction)"
        # not a scale: say by how much
        return f"stress off by {np.sqrt(np.mean((L - P) ** 2)) / _GPA:.2g} GPa (RMS)"
    # forces
    j, _, share = force_concentration(L, P)
    if n_atoms > 4 and share > _ONE_ATOM_SHARE:
        # a flipped force: the label is minus the prediction, direction and size
        nl, npred = float(np.linalg.norm(L[j])), float(np.linalg.norm(P[j]))
        cos_j = float(L[j] @ P[j]) / max(nl * npred, 1e-300)
        if cos_j < -_SIGN_COS and abs(np.log(max(nl, 1e-300) / max(npred, 1e-300))) < _SIGN_LOG_RATIO:
            return f"sign error on atom {j}"
        return f"one atom wrong (atom {j})"
    if net_force_significant:
        return "not a gradient (net force)"
    if not np.isfinite(cos) or cos < 0.5:
        return "stale forces (uncorrelated with this geometry)"
    return "noisy forces (unconverged SCF?)"


def mean_descriptors(model, frames) -> np.ndarray:
    """Mean and spread of each structure's atomic descriptors, shape ``(n_frames, 2 F)``.

    The spread (standard deviation over the atoms, per feature) tells a
    rattled cell from the perfect crystal, whose mean descriptors are almost
    equal.
    """
    desc = getattr(model, "descriptor_", None)
    if desc is None:
        raise ValueError("the model has no fitted descriptor_; fit it first")
    feats = desc.create(list(frames))
    return np.array([np.concatenate([np.mean(f, axis=0), np.std(f, axis=0)]) for f in feats])


def duplicates(frames, features: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """For each structure the index of an earlier near-duplicate, -1 when none.

    Two structures are near-duplicates when they have the same composition
    (atom counts per element, up to a common factor: a supercell of the same
    crystal is one) and mean descriptors closer than ``tol`` relative to
    their norm.

    Parameters
    ----------
    frames : list of ase.Atoms
    features : ndarray, shape (n_frames, F)
        From :func:`mean_descriptors`.
    tol : float, default 1e-4
        Relative distance below which two mean descriptors are the same.

    Returns
    -------
    ndarray of int, shape (n_frames,)

    Examples
    --------
    >>> from ase.build import bulk
    >>> a = bulk("Cu"); b = a.repeat(2)
    >>> duplicates([a, b], np.ones((2, 3))).tolist()
    [-1, 0]
    """
    n = len(frames)
    out = np.full(n, -1)
    comp = []
    for a in frames:
        z, c = np.unique(a.numbers, return_counts=True)
        comp.append((tuple(z.tolist()), tuple((c / np.gcd.reduce(c)).tolist())))
    groups: dict = {}
    for i, key in enumerate(comp):
        groups.setdefault(key, []).append(i)
    norm = np.linalg.norm(features, axis=1)
    for idx in groups.values():
        if len(idx) < 2:
            continue
        X = features[idx]
        d = np.linalg.norm(X[:, None, :] - X[None, :, :], axis=-1)
        scale = np.maximum(norm[idx][:, None], norm[idx][None, :])
        close = d <= tol * np.maximum(scale, 1e-300)
        for a_, i in enumerate(idx):
            earlier = np.flatnonzero(close[a_, :a_])
            if earlier.size:
                out[i] = idx[int(earlier[0])]
    return out


#: length-unit slips: factor by which the written positions exceed the real ones
_LENGTH_SLIPS = ((1.0 / _BOHR, "Bohr read as Å"), (_BOHR, "Å read as Bohr"), (10.0, "Å read as nm"),
                 (0.1, "nm read as Å"))


def scale_slip(factor: float, tol: float = 0.1) -> str | None:
    """Name a known length-unit slip whose factor matches ``factor`` within ``tol`` (relative), else None.

    The tolerance allows for the structure's own nearest-neighbour ratio
    differing from its data set's typical one (a surface, a hot frame: a few %).

    Examples
    --------
    >>> scale_slip(1.87)
    'Bohr read as Å'
    """
    for f, what in _LENGTH_SLIPS:
        if abs(np.log(factor / f)) < tol:
            return what
    return None
