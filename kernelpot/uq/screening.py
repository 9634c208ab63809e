"""Screen a training set for mislabelled structures.

Each training structure is left out in turn (in closed form, see
:func:`kernelpot.uq.leave_one_out`) and its labels are compared with the
prediction of the model fitted to all the others.  A structure whose labels
the rest of the data cannot reproduce -- a wrong energy reference, a force
with a sign error, a stress in the wrong unit -- stands out by its
leave-one-out (LOO) z-scores.

Suspicion score
---------------
For structure ``g`` with structure-LOO z-scores ``z`` (label minus LOO
prediction, divided by the LOO predictive std ``loo_std_predictive``, which
includes the Nystrom residual exactly as :meth:`SparseGP.predict` does for a
structure it has not seen; the same std the held-out rows of a refit round
use):

1. Robust calibration per config_type.  Each kind's z-scores are centred on
   their median and divided by a robust spread ``1.4826 MAD`` (``MAD``:
   median absolute deviation from the median; it estimates the standard
   deviation of a normal sample without being moved by the outliers
   themselves), so an over-confident model does not flag everything.
   Honest errors are heteroscedastic -- hot MD frames have larger ones than
   a perfect crystal -- so the median and the spread are estimated per
   ``config_type``, shrunk towards the global ones with the weight of
   :data:`_PRIOR_COUNT` pseudo-observations (ten energies of one config_type
   are too few for a MAD of their own) -- except the energies' median, which
   is the group's own from :data:`_OWN_LOCATION` structures on: a group the
   model predicts off as a whole (its own reference, or the model's limit
   there) is the group's matter, not each member's, and is listed under the
   table instead (``ScreenTable.findings``) -- and the spread never below
   the global scale nor below one: spreads below one occur when outliers
   have inflated the learned noise, and dividing by them would amplify the
   heavy tails of the clean structures' residuals (swamping).  Energies are
   the exception: their spread may fall below one down to the z-score of a
   1 meV/atom residual when a refit round follows
   (:func:`_energy_min_scale`), since a learned energy noise far above DFT
   precision hides every reference shift; and structure by structure no
   energy counts more than one std per 1 meV/atom off
   (:func:`_energy_floor`).  The spread is widened by
   ``sqrt(1 + pi / (2 n))`` for the uncertainty of the median, and when a
   MAD scale is applied the standardised values are referred to Student's t
   with ``0.3675 n`` degrees of freedom (the MAD's efficiency) instead of
   N(0, 1).
2. One p-value per test (``F`` the tail of N(0, 1) or of that t):

   * ``energy``: two-sided, ``p = 2 F(|z_E|)``;
   * ``energy_self``: the energy with *only its own label* left out, the
     structure's forces and stress kept (single-observation closed-form
     LOO, ``TrainingDiagnostics.z_obs``).  The forces are the negative
     gradient of the energy that labels the structure: under the model's
     local-energy decomposition they fix the energy up to what the rest of
     the data says about the constant, so an energy inconsistent with its
     own forces stands out even for a structure with no neighbours in the
     data.  Equal to an explicit refit without that energy label
     (``SparseGP.refit``, tested);
   * ``forces``: the largest ``|z|`` of the structure's ``3 n`` components,
     Sidak-corrected, ``p = 1 - (1 - 2 F(max |z_F|))^(3 n)``;
   * ``net_force``: forces that are the gradient of a translation-invariant
     energy sum to zero.  With the learned force noise ``sigma`` per
     component, honest errors give a net force ``~ N(0, n sigma^2)`` per
     axis, so ``q = |sum F|^2 / (n sigma^2)`` is referred to ``chi2(3)``
     (conservative: most DFT codes remove the drift exactly).  A sign error
     on one atom shows up here without any model;
   * ``stress``: the largest of the 6 components, as for forces;
   * ``chi2``: the Mahalanobis norm ``chi2_g`` of all the structure's
     LOO residuals together (``frame_chi2``, under the fitted DTC model
     without the Nystrom residual, ``dof_g`` observations; catches
     many moderate errors that no single component shows, e.g. a wrong
     geometry).  Model errors are correlated within a structure, which
     widens the distribution of ``chi2_g`` beyond ``chi2(dof_g)``, so
     ``chi2_g`` is mapped to a normal deviate with the Wilson-Hilferty
     transformation and robustly standardised per config_type (location
     ``>= 0``), ``p = F(w_std)`` (one-sided);
   * ``duplicate``: near-duplicates (same composition, equal mean and
     spread of the atomic descriptors, :func:`kernelpot.uq.diagnosis.duplicates`,
     and equal nearest-neighbour distances) must repeat their labels: the
     energy per atom within the model's energy noise of both and 1 meV/atom;
     for copies of the same structure (mean descriptors equal to 1e-6) the
     forces and the stress too, compared through what a rotation, a
     permutation of the atoms or a supercell leaves unchanged (the sorted
     force norms ``|F_i|``, as quantiles when the atom counts differ; the
     sorted principal stresses), with a per-component spread of DFT precision
     (0.01 eV/Å, 0.1 GPa) and, when the data hold at least
     :data:`_MIN_DUPLICATE_PAIRS` pairs, the median spread over them (how
     well this data set repeats itself), ``q = sum d^2 / (2 s^2)`` referred
     to ``chi2`` with one dof per compared value.  Two copies are compared
     with each other and both carry the p-value (the copies alone cannot
     tell which is wrong) unless the model's own tests flag one and not the
     other; three or more are compared with their element-wise median, so
     the wrong one stands out whichever came first.  Repeats of an earlier
     structure do not enter the robust calibrations (each structure counts
     once: 25 copies predicting each other exactly had set a config_type's
     spread).  Each label's p-value is
     Bonferroni-corrected over the labels compared, and the smallest names
     the suspect.  Copies must agree to DFT precision, far below any model's
     error, so this finds noisy or unit-slipped labels that the model-based
     tests miss where the copy itself makes the leave-one-out residual small;
   * ``neighbours``: the median nearest-neighbour distance over the
     covalent radii sum (:func:`kernelpot.uq.diagnosis.neighbour_ratio`,
     about 1 in any bonded structure) against the data set's, on a log scale,
     robustly standardised per config_type (shrunk towards the whole set
     with 5 pseudo-observations: a binding curve spans 0.7-2.7x on purpose)
     with a spread of at least 10 %, two-sided.  Positions in Bohr read as Å
     (x1.89), in nm, or fractional coordinates read as Cartesian put a
     structure many spreads out, while its labels, those of the real
     geometry, can stay within the model's wide uncertainty for so unusual a
     structure.  Needs no model.  Without config_types a deliberately
     stretched structure among crystals is flagged too (its diagnosis says
     so); a whole config_type in the wrong length unit is not seen.

   Whole groups: a config_type whose energies or stresses all follow another
   convention (another unit, the opposite sign, shear components in another
   order) has residuals that are all alike, which its own robust scale
   absorbs.  Its labels are compared instead with what its own physics
   implies (energies from the forces, up to one constant per species;
   stress from energies and forces: the model without that kind's
   observations, :mod:`kernelpot.gp.conventions`); such groups are listed in
   ``ScreenTable.findings`` and under the table, not flagged structure by
   structure.

   Empirical null: the maximum-type tests (forces, stress, net force) are
   turned into normal deviates ``u = F^-1(1 - p)`` and robustly standardised
   per config_type like ``chi2`` (location ``>= 0``, scale ``>= 1``):
   heavy tails and correlated components of honest model errors widen the
   distribution of a maximum beyond what the per-component calibration
   predicts (Efron's empirical null for large-scale testing).

   Isolated-atom reference frames (one atom) are not energy-screened: their
   energy is the per-element reference ``e0`` itself, so leaving it out
   leaves the whole cohesive energy as "residual" (thousands of meV/atom),
   which says nothing about the label.

3. Combined (Sidak over the ``T`` tests present): ``p = 1 - (1 - min_t p_t)^T``,
   ``T min_t p_t`` to within ``O(T p^2)`` where it matters, but continuous below
   the threshold too, so structures that no test flags are still ranked by
   their evidence rather than tied at ``p = 1``; score ``= -log10 p``;
   flagged when ``p < alpha / n_structures``
   (Bonferroni over the training set, so on data that follow the model up to
   a per-config_type miscalibration the chance of any false flag is about
   ``alpha``).

4. Diagnosis of each flagged structure (:mod:`kernelpot.uq.diagnosis`):
   the label the evidence points at (``suspect``: energy, forces, stress, or
   geometry when two or more labels are off at once) and the most likely
   kind of error (``diagnosis``: reference shift, unit slip, sign error,
   swapped labels, conflicting duplicate, stale or noisy forces, ...).  A
   flagged structure with a leverage far above the median is said to be
   unusual: its labels may be right and the data around it missing.

p-values are computed in log space, so scores stay finite for any z.

Masking and refit rounds
------------------------
Gross errors inflate the learned noise (the likelihood is Gaussian), which
hides smaller errors of the same kind.  With ``refit_rounds > 0`` the model
is fitted again from scratch (``same_model_class(model).fit``: new offsets,
sparse set and hyperparameters; the descriptor the fit chose is kept) without the flagged structures, except a
config_type more than half of which (three structures or more) is flagged:
that is the group's matter (a convention, or the model's limit there), and
a refit without the group would judge it by extrapolation, so it stays in; the kept structures
are screened again by closed-form LOO, and the removed ones by their
out-of-sample prediction from the refitted model (z-scores from the full
predictive std; ``chi2`` as the sum of their squares, correlations ignored).
This repeats until the flagged set no longer changes or the rounds run out.
Each round is announced on stderr when the model is ``verbose`` (like the
fit's own progress lines), with the structures it removes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from ase.units import GPa
from scipy import special, stats

from kernelpot.gp.assembly import note
from kernelpot.io.labels import DataWarning, _list, config_type, frame_labels, is_isolated_atom
from kernelpot.gp.loo import TrainingDiagnostics, leave_one_out
from kernelpot.gp import conventions
from kernelpot.uq.diagnosis import diagnose, duplicates, mean_descriptors, moved_atom, neighbour_ratio, scale_slip

__all__ = ["COLUMNS", "GroupOffset", "ScreenTable", "screen", "robust_scale"]

_MAD_TO_SD = 1.4826  # 1 / Phi^-1(3/4): MAD of a normal sample times this is its std
_MAD_EFFICIENCY = 0.3675  # asymptotic efficiency of the MAD scale relative to the std (normal data)
_KINDS = ("energy", "forces", "stress")
_TESTS = ("energy", "energy_self", "forces", "net_force", "stress", "chi2", "duplicate", "neighbours")
_DUPLICATE_PRECISION = 0.001  # eV/atom: energies of the same structure differ by less in a converged DFT set
#: per-component precision of repeated DFT labels of one structure (forces eV/Å, stress eV/Å^3)
_DUPLICATE_LABEL_PRECISION = {"forces": 0.01, "stress": 0.1 * GPa}
_MIN_DUPLICATE_PAIRS = 5  # near-duplicate pairs needed to estimate the data set's own repeat spread
#: relative distance of mean descriptors below which two structures are the same one (positions
#: written to 1e-6 Å), so their forces and stress must agree too; mlearn's repeats are at 1e-16, MD
#: frames 0.5 fs apart at 3e-4
_SAME_STRUCTURE_TOL = 1e-6
#: near-duplicates also have nearest-neighbour ratios equal to this (relative): MD steps move them ~1e-3
_DUPLICATE_NEIGHBOUR_TOL = 0.01
#: smallest robust spread of log(neighbour_ratio) over a data set: strain and EOS sets (+-20 % in
#: volume) stay far inside it, a length-unit slip (x1.89 Bohr, x10 nm) is many spreads out
_NEIGHBOUR_MIN_LOG_SPREAD = 0.1
#: pseudo-observations of the whole set's neighbour distances in a config_type's: geometry is
#: physics, not model error, so five structures of a kind (a binding curve) already set their own
_NEIGHBOUR_PRIOR_COUNT = 5
#: two significant labels point at the geometry when the weaker is at least this share as far past
#: the threshold (in log p) as the stronger; otherwise the stronger label alone is suspected
_GEOMETRY_SHARE = 0.25
#: share of a structure's squared z-scores in one label above which a chi-square flag names that label
_CHI2_SHARE = 0.8
_HIGH_LEVERAGE = 5.0  # leverage this many times the median: the structure mostly fits itself
_PRIOR_COUNT = 30  # pseudo-observations of the global scale in each config_type's robust scale
_OWN_LOCATION = 5  # members from which a config_type is centred on its own median
_SWAP_Z = 4.0  # swapped energies: each label within this many predictive stds of the other's prediction
#: a refit round keeps a config_type in when more than this share of it (and at least _GROUP_MIN_FLAGGED
#: structures) is flagged: the group is then the matter, and its held-out prediction an extrapolation
_GROUP_MAX_REMOVED = 0.5
_GROUP_MIN_FLAGGED = 3
_LN10 = float(np.log(10.0))

#: column name -> (unit, description); the order is the column order.
COLUMNS = {
    "index": ("", "training structure index"),
    "config_type": ("", "atoms.info['config_type']"),
    "n_atoms": ("", "number of atoms"),
    "leverage": ("", "trace of the structure's hat-matrix block H_GG: how much its own labels decide its fit"),
    "energy_residual": ("meV/atom", "energy label minus LOO prediction, per atom (NaN for isolated-atom "
                        "reference frames: their energy is the e0 reference itself, so leaving it out "
                        "leaves the cohesive energy as residual, not an error; not screened)"),
    "energy_z": ("", "LOO energy z-score, robustly standardised per config_type (at most one per 1 meV/atom "
                 "of residual)"),
    "energy_self_residual": ("meV/atom", "energy label minus its prediction with only the energy left out "
                             "(the structure's own forces and stress kept)"),
    "energy_self_z": ("", "z-score of energy_self_residual, robustly standardised per config_type"),
    "forces_rms": ("eV/Å", "RMS of the LOO force residual over the structure's components"),
    "forces_max_z": ("", "largest |LOO force z-score|, robustly standardised per config_type"),
    "net_force": ("eV/Å", "|sum of the force labels| (zero for the gradient of a translation-invariant energy)"),
    "stress_rms": ("GPa", "RMS of the LOO stress residual over the 6 components"),
    "stress_max_z": ("", "largest |LOO stress z-score|, robustly standardised per config_type"),
    "chi2_dof": ("", "structure chi-square per degree of freedom (before standardisation)"),
    "duplicate_of": ("", "index of an earlier near-duplicate (same composition, mean descriptor equal), -1 none"),
    "neighbour_ratio": ("", "median nearest-neighbour distance over the pair's covalent radii sum "
                        "(kernelpot.uq.diagnosis.neighbour_ratio; ~1 in any bonded structure)"),
    "worst": ("", "test with the smallest p-value"),
    "p_value": ("", "combined p-value (Sidak over tests)"),
    "score": ("", "-log10 p_value"),
    "flag": ("", "p_value < alpha / n_structures"),
    "suspect": ("", "flagged: the label the evidence points at (energy, forces, stress, geometry)"),
    "diagnosis": ("", "flagged: the most likely kind of error (kernelpot.uq.diagnosis)"),
    "held_out": ("", "statistics from an out-of-sample prediction of a refitted model (refit rounds)"),
}


def robust_scale(z) -> float:
    """Robust standard deviation ``1.4826 * MAD`` of z-scores.

    Parameters
    ----------
    z : array_like
        z-scores (NaN ignored).

    Returns
    -------
    float
        The scale, or 1.0 when it cannot be estimated (fewer than 2 finite
        values, or all equal).

    Examples
    --------
    >>> round(robust_scale(np.random.default_rng(0).normal(scale=2.0, size=20000)), 1)
    2.0
    """
    z = np.asarray(z, dtype=float).ravel()
    z = z[np.isfinite(z)]
    if z.size < 2:
        return 1.0
    s = _MAD_TO_SD * float(np.median(np.abs(z - np.median(z))))
    return s if np.isfinite(s) and s > 0 else 1.0


def _log_sf(x, nu: float):
    """log of the upper tail of N(0, 1) (``nu`` infinite) or of Student's t with ``nu`` dof."""
    x, nu = np.broadcast_arrays(np.asarray(x, float), np.asarray(nu, float))
    fin = np.isfinite(nu)
    out = stats.norm.logsf(x)
    if np.any(fin):
        out = np.where(fin, stats.t.logsf(x, np.where(fin, nu, 1.0)), out)
    return out if out.ndim else float(out)


def _chi2_logsf(q: float, k: float) -> float:
    """log of the upper tail of ``chi2(k)`` at ``q``, finite where scipy's underflows to ``-inf``.

    Far in the tail ``log sf ~ (k/2 - 1) log(q/2) - q/2 - log Gamma(k/2)`` (the
    leading term of the incomplete gamma function's asymptotic series).
    """
    out = float(stats.chi2.logsf(q, k))
    if np.isfinite(out):
        return out
    return float((k / 2.0 - 1.0) * np.log(q / 2.0) - q / 2.0 - special.gammaln(k / 2.0))


def _sidak_log(logp_min: np.ndarray, n_tests: np.ndarray) -> np.ndarray:
    """Log of the Sidak-combined p-value ``1 - (1 - p_min)^T`` of the smallest of ``T`` p-values.

    Equal to Bonferroni's ``T p_min`` where it matters (``p_min`` small: the flags), but below one and
    strictly increasing in ``p_min`` everywhere, so the structures below the threshold are still ranked
    by their evidence instead of all tying at ``p = 1``.  Computed in log space (finite for any
    ``p_min``); ``T = 0`` gives ``p = 1``.

    References
    ----------
    Z. Sidak, J. Am. Stat. Assoc. 62, 626 (1967).
    """
    t = np.maximum(np.asarray(n_tests, float), 1.0)
    lp = np.minimum(np.asarray(logp_min, float), 0.0)
    out = lp + np.log(t)  # the small-p limit, exact to O(T p^2)
    big = lp > -30.0
    with np.errstate(divide="ignore"):
        # log(1 - (1 - p)^T) = log1mexp(T log(1 - p)), log(1 - p) = log1mexp(log p), each in its
        # accurate form, so p near 1 keeps its digits too (1 - (1 - p)^T does not round to 1)
        out[big] = _log1mexp(t[big] * _log1mexp(lp[big]))
    out[np.asarray(n_tests) == 0] = 0.0
    return out


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate everywhere (Maechler 2012: ``log(-expm1(x))`` near 0,
    ``log1p(-exp(x))`` below ``-log 2``); ``-inf`` at ``x = 0``."""
    x = np.asarray(x, float)
    with np.errstate(divide="ignore"):
        return np.where(x > -np.log(2.0), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def _isf_log(logp: np.ndarray) -> np.ndarray:
    """Normal deviate ``u`` with upper tail ``exp(logp)``, finite for any ``logp <= 0``."""
    logp = np.minimum(np.asarray(logp, float), 0.0)
    out = stats.norm.isf(np.exp(np.maximum(logp, -700.0)))
    tiny = logp < -700.0
    # asymptotic inverse of log sf(u) ~ -u^2/2 - log(u sqrt(2 pi))
    v = -2.0 * logp[tiny]
    out[tiny] = np.sqrt(v - np.log(v) - np.log(2.0 * np.pi))
    return np.clip(out, -8.3, None)


def _calibration(v: np.ndarray, robust: bool, clip_location: bool = False,
                 min_scale: float = 1.0) -> tuple[float, float, float]:
    """Robust ``(location, scale, dof)`` to standardise ``v`` with; identity when not ``robust``.

    The scale is ``max(min_scale, 1.4826 MAD)`` times ``sqrt(1 + pi / (2 n))`` (the
    variance of the median subtracted).  When the MAD scale is applied (> min_scale) it
    is an estimate, so standardised values follow Student's t with
    ``0.3675 n`` degrees of freedom (the efficiency of the MAD relative to the
    standard deviation for normal data), not N(0, 1).
    """
    n = v.size
    if not robust or n < 2:
        return 0.0, 1.0, np.inf
    loc = float(np.median(v))
    if clip_location:
        loc = max(loc, 0.0)
    s = robust_scale(v)
    nu = _MAD_EFFICIENCY * n if s > min_scale else np.inf
    return loc, max(s, min_scale) * np.sqrt(1.0 + np.pi / (2.0 * n)), nu


class ScreenTable:
    """Result of :func:`screen`: one row per training structure, most suspicious first.

    Attributes
    ----------
    columns : dict of str -> ndarray
        Column name -> array of length ``n_structures`` in row order (see
        :data:`COLUMNS` for names and units).  NaN where a structure has no
        label of that kind.
    flagged : ndarray of int
        Training indices of the flagged structures, most suspicious first.
    alpha : float
        Family-wise error rate of the flag.
    threshold : float
        Per-structure p-value below which a structure is flagged
        (``alpha / n_structures``).
    scales : dict
        Robust calibration used, for each of ``energy``, ``forces``,
        ``stress`` (z-scores) and ``chi2`` (Wilson-Hilferty deviates):
        ``"<kind>_location"``, ``"<kind>_scale"`` (the standardised value is
        ``(v - location) / scale``) and ``"<kind>_dof"`` (degrees of freedom
        of the reference t distribution, ``inf`` for normal).
    rounds : int
        Refit rounds performed (0: a single pass on the given model).
    model : SparseGP
        The model the final statistics come from (the given one, or the last
        refit without the flagged structures).
    diagnostics : TrainingDiagnostics
        The per-observation leave-one-out results of the given model (the
        first pass; later rounds use the refitted model's).
    findings : list of kernelpot.gp.conventions.ConventionFinding and GroupOffset
        Whole groups (config_types) whose energies match what their forces
        imply, or whose stress matches what their energies and forces imply,
        only in another convention (unit, sign, shear order;
        :func:`kernelpot.gp.conventions.check`); and groups whose energies
        the model predicts off as a whole (:class:`GroupOffset`).
        A per-structure test cannot see these: the group's residuals are all
        alike.  Listed under the table; its structures are not flagged.
    """

    def __init__(self, columns: dict, alpha: float, threshold: float, scales: dict,
                 diagnostics: TrainingDiagnostics, rounds: int = 0, model=None):
        self.columns = columns
        self.alpha = alpha
        self.threshold = threshold
        self.scales = scales
        self.diagnostics = diagnostics
        self.rounds = rounds
        self.model = model
        self.features = None
        self.findings = []
        self.offsets = []
        self.flagged = columns["index"][columns["flag"]]

    def __len__(self) -> int:
        return len(self.columns["index"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def to_pandas(self):
        """The table as a :class:`pandas.DataFrame` (needs pandas).

        Raises
        ------
        ImportError
            When pandas is not installed; use ``.columns`` (a dict of numpy
            arrays) instead.
        """
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError("ScreenTable.to_pandas needs pandas (pip install pandas); "
                              "the same data are in ScreenTable.columns as numpy arrays") from err
        return pd.DataFrame({k: v for k, v in self.columns.items()})

    def to_string(self, top: int | None = 20) -> str:
        """Aligned text table of the ``top`` most suspicious rows (all when None)."""
        n = len(self) if top is None else min(int(top), len(self))
        fmt = {"leverage": "{:.2f}", "energy_residual": "{:.2f}", "energy_z": "{:+.1f}",
               "energy_self_z": "{:+.1f}", "forces_rms": "{:.3f}", "forces_max_z": "{:.1f}",
               "stress_rms": "{:.3f}", "stress_max_z": "{:.1f}", "chi2_dof": "{:.2f}", "p_value": "{:.2g}",
               "score": "{:.1f}"}
        head = {"index": "index", "config_type": "config_type", "n_atoms": "atoms", "leverage": "lev",
                "energy_residual": "dE meV/at", "energy_z": "zE", "energy_self_z": "zE|F",
                "forces_rms": "dF eV/Å", "forces_max_z": "max|zF|", "stress_rms": "dS GPa",
                "stress_max_z": "max|zS|", "chi2_dof": "chi2/dof", "worst": "worst", "p_value": "p",
                "score": "score", "flag": "flag", "diagnosis": "diagnosis (suspect: kind)"}
        cells = [list(head.values())]
        for r in range(n):
            row = []
            for k in head:
                v = self.columns[k][r]
                if k == "flag":
                    row.append(("*" if v else "") + (" (held out)" if self.columns["held_out"][r] else ""))
                elif k == "diagnosis":
                    sus = self.columns["suspect"][r]
                    dup = self.columns["duplicate_of"][r]
                    txt = f"{sus}: {v}" if sus else ""
                    if dup >= 0 and "duplicate" not in txt:
                        txt = (txt + "; " if txt else "") + f"duplicate of #{dup}"
                    row.append(txt)
                elif k == "config_type":
                    row.append(str(v)[:18])
                elif k in fmt:
                    row.append("-" if not np.isfinite(v) else fmt[k].format(v))
                else:
                    row.append(str(v))
            cells.append(row)
        widths = [max(len(c[j]) for c in cells) for j in range(len(head))]
        left = {list(head).index(k) for k in ("config_type", "worst", "diagnosis")}  # text columns
        lines = ["  ".join(c.ljust(w) if j in left else c.rjust(w)
                           for j, (c, w) in enumerate(zip(row, widths))).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        nf = len(self.flagged)
        foot = (f"{len(self)} structures, {nf} flagged (p < {self.alpha:g}/{len(self)} = {self.threshold:.2g})"
                + (f"; showing the top {n}" if n < len(self) else ""))
        groups = [f"  - {f.message}" for f in self.findings]
        if groups:
            groups.insert(0, "Whole groups whose labels follow another convention (kernelpot.gp.conventions):")
        return "\n".join(lines + [foot] + groups)

    def __str__(self) -> str:
        return self.to_string()

    def to_chemiscope(self, path, frames, features=None, name: str = "kernelpot screening") -> None:
        """Write an interactive chemiscope file: structures, screening columns and a descriptor map.

        Open it at https://chemiscope.org or with ``chemiscope.show_input(path)``
        in a notebook, and click through the flagged structures.  The map is
        the first two principal components of each structure's mean
        descriptor (SOAP power spectrum), coloured by ``score``.

        Parameters
        ----------
        path : str or Path
            Output file, ``.json`` or ``.json.gz`` (written atomically).
        frames : list of ase.Atoms
            The training frames, in training order (the ``frames`` given to
            :func:`screen`).
        features : ndarray, shape (n_frames, F), optional
            Per-structure descriptors for the map; default the mean descriptors
            computed by :func:`screen` (``duplicate_tol`` not None), else none.
        name : str
            Dataset name shown by chemiscope.

        Raises
        ------
        ImportError
            When chemiscope is not installed (``pip install chemiscope``).
        ValueError
            When ``frames`` does not match the table.

        Examples
        --------
        >>> table.to_chemiscope("screen.json.gz", frames)   # doctest: +SKIP
        """
        try:
            import chemiscope
        except ImportError as err:
            raise ImportError("ScreenTable.to_chemiscope needs chemiscope (pip install chemiscope, "
                              "or pip install kernelpot[chemiscope])") from err
        from kernelpot.io.files import atomic_write
        frames = list(frames)
        if len(frames) != len(self):
            raise ValueError(f"frames has {len(frames)} structures, the table {len(self)}; "
                             "pass the training frames in training order")
        order = np.argsort(self.columns["index"])  # rows back to frame order
        props = {}
        for k, (unit, desc) in COLUMNS.items():
            v = self.columns[k][order]
            if k in ("config_type", "worst", "suspect", "diagnosis"):
                props[k] = {"target": "structure", "values": [str(x) or "-" for x in v], "description": desc}
            else:
                v = np.asarray(v, dtype=float)
                # chemiscope's JSON has no NaN: missing values (no label of that kind) become 0 with
                # the description saying so
                props[k] = {"target": "structure", "values": np.where(np.isfinite(v), v, 0.0),
                            "description": desc + ("; 0 where missing" if not np.all(np.isfinite(v)) else "")}
                if unit:
                    props[k]["units"] = unit
        feats = self.features if features is None else np.asarray(features, float)
        settings = None
        if feats is not None and len(feats) == len(frames) and len(frames) >= 2:
            X = feats - feats.mean(axis=0)
            u, sv, _ = np.linalg.svd(X, full_matrices=False)
            pcs = u[:, :2] * sv[:2]
            if pcs.shape[1] < 2:
                pcs = np.column_stack([pcs, np.zeros(len(frames))])
            props["PCA"] = {"target": "structure", "values": pcs,
                            "description": "principal components of the mean descriptor per structure"}
            settings = {"map": {"x": {"property": "PCA[1]"}, "y": {"property": "PCA[2]"},
                                "color": {"property": "score"}}}
        data = chemiscope.create_input(
            structures=frames, properties=props, settings=settings,
            metadata={"name": name, "description": (f"{len(self)} structures, {len(self.flagged)} flagged "
                                                    f"(alpha {self.alpha:g}); columns from kernelpot.screen")})
        import gzip
        import json
        gz = str(path).endswith(".gz")
        with atomic_write(path, suffix=".json.gz" if gz else ".json") as tmp:
            with (gzip.open(tmp, "wt", encoding="utf-8") if gz else open(tmp, "w", encoding="utf-8")) as fh:
                json.dump(data, fh)

    def __repr__(self) -> str:
        return f"<ScreenTable: {len(self)} structures, {len(self.flagged)} flagged>"

    def plot(self, ax=None):
        """Leverage against the combined LOO z-score, flagged structures labelled.

        The combined z-score is the two-sided normal quantile of the combined
        p-value (``|z|`` whose two-sided p equals ``p_value``), so the dashed
        line at the flag threshold separates flagged from unflagged rows.

        Returns
        -------
        fig, ax
            From :func:`kernelpot.plot.influence`.
        """
        from kernelpot.plot import influence
        logp = -self.columns["score"] * _LN10
        zc = -stats.norm.ppf(np.exp(logp) / 2.0)
        # for p that underflow, use the asymptotic inverse of log(2 Phi(-z)) ~ -z^2/2
        tiny = logp < -700
        zc[tiny] = np.sqrt(-2.0 * logp[tiny])
        zthr = float(-stats.norm.ppf(self.threshold / 2.0))
        labels = []
        for i, ct, sus, dg in zip(self.columns["index"], self.columns["config_type"], self.columns["suspect"],
                                  self.columns["diagnosis"]):
            short = str(dg).split("; ")[-1].split(" (")[0].split(":")[0]
            short = ("unusual, " if str(dg).startswith("unusual") else "") + short
            labels.append(f"{i} {ct}" + (f" - {sus}: {short}" if sus and sus != "geometry" else
                                         (f" - geometry{', unusual' if short.startswith('unusual') else ''}"
                                          if sus else "")))
        fig, ax = influence(self.columns["leverage"], zc, labels=labels, flagged=self.columns["flag"],
                            ax=ax, z_threshold=zthr, points="structures")
        ax.set_ylabel("combined z-score (from p-value)")
        return fig, ax


def screen(model, frames=None, alpha: float = 0.05, robust: bool = True,
           refit_rounds: int = 1, duplicate_tol: float | None = 1e-4) -> ScreenTable:
    """Rank the training structures of a fitted model by how suspicious their labels are.

    Parameters
    ----------
    model : SparseGP
        Fitted model (not modified).
    frames : list of ase.Atoms, optional
        The model's training frames, in training order.  Needed for a model
        loaded from a file (which does not store its training set); default
        the frames the model was fitted on.
    alpha : float, default 0.05
        Family-wise false-flag rate over the whole training set (Bonferroni:
        a structure is flagged when its combined p-value is below
        ``alpha / n_structures``).
    robust : bool, default True
        Robust calibration of the z-scores and the chi-square (see the module
        docstring).  With ``False`` the model's own uncertainties are taken at
        face value.
    refit_rounds : int, default 1
        At most this many refits without the flagged structures, against
        masking (see the module docstring).  Each costs about one fit plus
        one leave-one-out pass; none is done when nothing is flagged.  The
        default of one round is what finds energy-reference shifts of
        10-30 meV/atom hidden by a few gross energy errors (mlearn Si and Li
        with 5 % corrupted: ROC AUC 0.887 / 0.955 in a single pass, 0.961 /
        1.0 with one round; ``benchmarks/outliers.py``); ``0`` is a single
        pass in about half the time.  A refit's warnings about the data are
        not repeated (they were given, numbered by the whole set, when
        ``model`` was fitted); its other warnings are, prefixed with the round.
    duplicate_tol : float or None, default 1e-4
        Relative distance of mean descriptors below which two structures of
        the same composition are near-duplicates (:func:`kernelpot.uq.diagnosis.duplicates`);
        their energies per atom are compared.  None skips the check (and the
        descriptor pass it needs).

    Returns
    -------
    ScreenTable
        One row per structure, sorted by decreasing score.

    Examples
    --------
    >>> table = kernelpot.screen(model)                 # doctest: +SKIP
    >>> print(table)                                     # doctest: +SKIP
    >>> table.flagged                                    # doctest: +SKIP
    """
    if isinstance(alpha, bool) or not (isinstance(alpha, (float, int, np.floating)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    if isinstance(refit_rounds, bool) or not isinstance(refit_rounds, (int, np.integer)) or refit_rounds < 0:
        raise ValueError(f"refit_rounds must be a non-negative integer, got {refit_rounds!r}")
    known = getattr(model, "_train_frames", None)
    if frames is None:
        if known is None:
            raise ValueError("this model does not carry its training frames (loaded from a file?); "
                             "pass them: screen(model, frames=training_frames)")
        frames = list(model._train_frames)
    else:
        frames = list(frames)
        if hasattr(model, "check_training_frames"):
            model.check_training_frames(frames)
        elif known is not None and len(known) != len(frames):
            raise ValueError(f"frames has {len(frames)} structures but the model was fitted on "
                             f"{len(known)}; pass the training frames in training order")
    n = len(frames)
    own = known is not None and all(a is b for a, b in zip(frames, known))  # the model's own training frames
    diag = getattr(model, "training_diagnostics_", None) if own else None
    if diag is None:
        diag = leave_one_out(model, frames)
    extra = _physics(model, frames, diag, duplicate_tol)
    # the fit's own whole-group check when it saw these frames at this alpha, else the check again
    findings = getattr(model, "conventions_", None) if own and alpha == conventions.ALPHA else None
    if findings is None:
        findings = conventions.check(model, frames, alpha)

    def scored(ev, deflate_energy, fitted, rounds=0):
        t = _table(ev, frames, alpha, robust, extra, deflate_energy=deflate_energy)
        t.diagnostics, t.model, t.rounds = diag, fitted, rounds
        t.features = extra.get("features")
        t.findings = list(findings) + t.offsets
        return t

    first = _loo_evidence(diag, np.arange(n))
    # a first pass that only chooses what a refit round holds out may deflate the energy scale
    table = scored(first, refit_rounds > 0, model)
    removed = np.zeros(n, bool)
    ctype = np.array([config_type(a, "") for a in frames], dtype=object)
    for r in range(refit_rounds):
        flag = np.zeros(n, bool)
        flag[table.flagged] = True
        # most of a config_type flagged at once is the group's matter (a convention, or the model's limit
        # there), not outliers among it: without the group, the refit would judge it by extrapolation
        # (a tester's clean EMT slabs, all 24 flagged at +40..+178 meV/atom), so it stays in
        for g in np.unique(ctype[flag]):
            in_g = ctype == g
            if flag[in_g].sum() >= _GROUP_MIN_FLAGGED and flag[in_g].mean() > _GROUP_MAX_REMOVED:
                flag[in_g] = False
        if np.array_equal(flag, removed) or flag.all():
            break
        removed = flag
        keep = np.flatnonzero(~removed)
        out = np.flatnonzero(removed)
        note(getattr(model, "verbose", False),
             f"screen: refit round {r + 1} (at most {refit_rounds}): removing {out.size} flagged "
             f"structure(s) {_list(out)} and fitting again on the other {keep.size}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from kernelpot.gp.sparse import same_model_class
            refit = same_model_class(model).fit([frames[i] for i in keep])
        _rewarn(caught, f"screen: refit round {r + 1} (without frames {_list(out)})")
        rdiag = getattr(refit, "training_diagnostics_", None)
        ev = _merge(_loo_evidence(leave_one_out(refit) if rdiag is None else rdiag, keep),
                    _heldout_evidence(refit, frames, np.flatnonzero(removed), diag.frame_leverage), n)
        table = scored(ev, True, refit, r + 1)
    if refit_rounds > 0 and table.rounds == 0:
        # no refit followed the first pass (nothing flagged): report it as a single pass, undeflated
        table = scored(first, False, model)
    return table


def _rewarn(caught, where: str) -> None:
    """Pass on a refit's warnings, except those about the data.

    The refit's data are a subset of structures already checked as a whole
    (validation and label conventions warn when ``model`` is fitted), and its
    messages number the subset's frames: a screen of 25 frames without frames
    8 and 12 named file frame 22 for the duplicate of frame 24.  What remains
    (the fit's own state: hyperparameters at their bounds, a noise that
    explains little) is said with ``where`` in front.
    """
    for w in caught:
        if not issubclass(w.category, DataWarning):
            warnings.warn(f"{where}: {w.message}", w.category, stacklevel=3)


def _physics(model, frames, diag: TrainingDiagnostics, duplicate_tol: float) -> dict:
    """Per-frame inputs of the label-only tests: force and energy noise, near-duplicates."""
    n = len(frames)
    kind = np.asarray(diag.kind)
    fsig, esig = np.full(n, np.nan), np.full(n, np.nan)
    f = kind == "forces"
    if f.any():
        # rms noise std of the frame's force components
        fsig[:] = np.sqrt(np.bincount(diag.frame[f], weights=diag.sigma[f] ** 2, minlength=n)
                          / np.maximum(np.bincount(diag.frame[f], minlength=n), 1))
        fsig[np.bincount(diag.frame[f], minlength=n) == 0] = np.nan
    e = kind == "energy"
    esig[diag.frame[e]] = diag.sigma[e]
    nn = np.array([neighbour_ratio(a) for a in frames])
    out = {"force_sigma": fsig, "energy_sigma": esig, "neighbour_ratio": nn}
    if duplicate_tol is not None and duplicate_tol > 0:
        feats = mean_descriptors(model, frames)
        out["features"] = feats
        dup = duplicates(frames, feats, duplicate_tol)
        # atoms without neighbours within r_cut all have the isolated atom's descriptor: a dimer at 6 Å
        # and one at 7 Å (or a cell in Bohr) are not copies of each other; their nearest neighbours say so
        for g in np.flatnonzero(dup >= 0):
            a_, b_ = nn[g], nn[dup[g]]
            if not ((np.isnan(a_) and np.isnan(b_)) or abs(np.log(a_ / b_)) <= _DUPLICATE_NEIGHBOUR_TOL):
                dup[g] = -1
        out["duplicate_of"] = dup
        has = dup >= 0
        dist = np.full(n, np.nan)
        dist[has] = (np.linalg.norm(feats[has] - feats[dup[has]], axis=1)
                     / np.maximum(np.linalg.norm(feats[has], axis=1), 1e-300))
        out["duplicate_distance"] = dist
    return out


def _loo_evidence(diag: TrainingDiagnostics, frame_ids: np.ndarray) -> dict:
    """Per-observation and per-frame statistics from closed-form LOO; frames renumbered by ``frame_ids``."""
    kind = np.asarray(diag.kind)
    e = kind == "energy"
    self_z = np.full(len(frame_ids), np.nan)
    self_r = np.full(len(frame_ids), np.nan)
    # energy left out alone, the structure's own forces and stress kept (single-observation LOO)
    self_z[diag.frame[e]] = diag.z_obs[e]
    self_r[diag.frame[e]] = diag.loo_residual_obs[e]
    return {"kind": kind, "frame": frame_ids[diag.frame], "residual": diag.loo_residual,
            "z": diag.z_predictive, "chi2": diag.frame_chi2, "dof": diag.frame_dof.astype(float),
            "leverage": np.asarray(diag.frame_leverage, float), "frames": frame_ids,
            "held_out": np.zeros(len(frame_ids), bool), "energy_self_z": self_z, "energy_self_residual": self_r}


def _heldout_evidence(model, frames, ids: np.ndarray, leverage: np.ndarray) -> dict:
    """Statistics of frames ``ids`` predicted out of sample by ``model`` (label minus prediction)."""
    kinds, fr, res, zs, chi2, dof = [], [], [], [], [], []
    use = {"energy": True, "forces": model.fit_forces, "stress": model.fit_stress}
    for g in ids:
        a = frames[g]
        lab = frame_labels(a, int(g))
        # raw GP stds, like the leave-one-out z-scores of the kept structures
        p = model.predict_frame(a, return_std=True, forces="forces" in lab and use["forces"], calibrated=False)
        k_r, k_z = [], []
        n = len(a)
        for kind in _KINDS:
            if kind not in lab or not use[kind]:
                continue
            r = np.ravel(lab[kind] - p[kind])
            sd = np.ravel(p[f"{kind}_std"])
            if kind == "energy":
                r, sd = r / n, sd / n
            ok = np.isfinite(r) & np.isfinite(sd) & (sd > 0)
            if not ok.any():
                continue
            r, sd = r[ok], sd[ok]
            kinds += [kind] * r.size
            fr.append(np.full(r.size, g))
            k_r.append(r)
            k_z.append(r / sd)
        res += k_r
        zs += k_z
        zz = np.concatenate(k_z) if k_z else np.zeros(0)
        chi2.append(float(zz @ zz))
        dof.append(float(zz.size))
    cat = (lambda v: np.concatenate(v)) if fr else (lambda v: np.zeros(0))
    return {"kind": np.array(kinds, dtype=str) if kinds else np.zeros(0, str), "frame": cat(fr).astype(int),
            "residual": cat(res), "z": cat(zs), "chi2": np.array(chi2), "dof": np.array(dof),
            "leverage": leverage[ids], "frames": ids, "held_out": np.ones(len(ids), bool),
            "energy_self_z": np.full(len(ids), np.nan), "energy_self_residual": np.full(len(ids), np.nan)}


def _merge(a: dict, b: dict, n: int) -> dict:
    out = {k: np.concatenate([a[k], b[k]]) for k in ("kind", "frame", "residual", "z")}
    for k in ("chi2", "dof", "leverage", "held_out", "energy_self_z", "energy_self_residual"):
        v = np.zeros(n, dtype=a[k].dtype)
        v[a["frames"]] = a[k]
        v[b["frames"]] = b[k]
        out[k] = v
    out["frames"] = np.arange(n)
    return out


def _energy_floor(z_std: np.ndarray, z_raw: np.ndarray, residual: np.ndarray, scale) -> np.ndarray:
    """Standardised energy z-scores, each at most one std per ``_DUPLICATE_PRECISION`` (1 meV/atom) off.

    ``z_std = (z_raw - location) / scale`` with the structure's predictive
    std per atom ``sigma = |residual / z_raw|``: the std behind ``z_std`` is
    ``scale * sigma``, floored here at DFT precision, structure by structure
    (:func:`_energy_min_scale` floors the data set's median only).
    """
    z_std, z_raw, r = (np.asarray(x, float) for x in (z_std, z_raw, residual))
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.abs(r / z_raw) * np.asarray(scale, float)
        factor = np.where(np.isfinite(sigma) & (sigma > 0) & (sigma < _DUPLICATE_PRECISION),
                          sigma / _DUPLICATE_PRECISION, 1.0)
    return z_std * factor


def _energy_min_scale(residual: np.ndarray, z: np.ndarray) -> float:
    """Smallest robust spread of energy z-scores: ``min(1, median(1 meV/atom / sigma_i))``.

    ``sigma_i = |residual_i / z_i|`` is each structure's predicted std per
    atom.  With a learned energy noise near DFT precision this is 1, the
    floor every other test has.  When gross errors elsewhere (a unit slip,
    positions in Bohr) have inflated the learned noise far above DFT
    precision -- 0.5 eV/atom on mlearn Si with 10 % corrupted, against
    0.7 meV/atom clean -- every energy z-score is squeezed towards 0 and a
    20 meV/atom reference shift had ``|z| = 0.4``, p = 1.  The spread of the
    bulk of the z-scores (Efron's empirical null) then sets the scale, but
    never below the z-score of a 1 meV/atom residual: an error DFT itself
    does not resolve never counts as more than one standard deviation, so
    clean structures' honest errors are not amplified (swamping).

    Used when a refit round follows or is being scored (:func:`screen`'s
    default), not in a single pass (``refit_rounds=0``).  A first pass on a
    model fitted to the gross errors too has poor energies everywhere:
    honest AIMD frames were off by 15-23 meV/atom and the deflated scale
    flagged 34 of 193 clean structures (mlearn Si, 10 % corrupted).  When a
    refit round follows, that pass only chooses what to hold out, and the
    refit without them predicts the clean ones well again: reference-shift
    AUC 0.49 -> 0.67, SCF noise 0.49 -> 0.86, overall 0.90 -> 0.95, 1 false
    flag, clean data unchanged (1 of 214).
    """
    r, z = np.abs(np.asarray(residual, float)), np.abs(np.asarray(z, float))
    ok = np.isfinite(r) & np.isfinite(z) & (r > 0) & (z > 0)
    if ok.sum() < 2:
        return 1.0
    return float(min(1.0, np.median(_DUPLICATE_PRECISION * z[ok] / r[ok])))


def _group_calibration(v: np.ndarray, groups: np.ndarray, robust: bool, clip_location: bool = False,
                       min_scale: float = 1.0, prior_count: float = None, own_location: bool = False):
    """Per-element ``(location, scale, dof)`` arrays to standardise ``v``, per config_type group.

    Each group's MAD scale is shrunk towards the global one with the weight
    of :data:`_PRIOR_COUNT` pseudo-observations (a config_type with ten
    structures has ten energies: too few for its own MAD), and a group's
    scale is never below the global one (a tight group does not amplify the
    tails of its residuals).  The location is shrunk the same way, except
    with ``own_location`` (one value per structure: the energy tests), where
    it is the group's own median from :data:`_OWN_LOCATION` members on (its
    uncertainty is in the scale's ``sqrt(1 + pi / (2 n))``): a group offset as
    a whole is not an outlier among it (:func:`_group_offsets` reports it).
    ``prior_count`` replaces :data:`_PRIOR_COUNT`.
    Returns the arrays and the global calibration.
    """
    prior = _PRIOR_COUNT if prior_count is None else prior_count
    glob = _calibration(v, robust, clip_location, min_scale)
    loc = np.full(v.shape, glob[0])
    scale = np.full(v.shape, glob[1])
    dof = np.full(v.shape, glob[2])
    if not robust or v.size < 2:
        return loc, scale, dof, glob
    med_all, s_all = float(np.median(v)), robust_scale(v)
    for g in np.unique(groups):
        sel = groups == g
        n_g = int(sel.sum())
        if n_g == v.size or n_g < 2:
            continue
        w = n_g / (n_g + prior)
        # the location is the group's own median once it has a few members: a group offset as a whole
        # (its own reference, or the model's limit there) is the group's matter, not each structure's
        own = own_location and n_g >= _OWN_LOCATION
        lo = float(np.median(v[sel])) if own else w * float(np.median(v[sel])) + (1 - w) * med_all
        if clip_location:
            lo = max(lo, 0.0)
        s_g = np.sqrt(w * robust_scale(v[sel]) ** 2 + (1 - w) * s_all ** 2) * np.sqrt(1.0 + np.pi / (2.0 * n_g))
        loc[sel] = lo
        if s_g > glob[1]:
            scale[sel] = s_g
            dof[sel] = _MAD_EFFICIENCY * (n_g + prior)
    return loc, scale, dof, glob


def _calibrate_on(v: np.ndarray, groups: np.ndarray, fit: np.ndarray, robust: bool, **kw):
    """``(location, scale, dof)`` for every element of ``v`` from the per-group calibration of ``v[fit]``.

    :func:`_group_calibration` on the elements that define the null (``fit``:
    not held out, not a repeat of an earlier structure); every element of a
    group gets that group's values, a group with none in ``fit`` the global
    ones.  Returns the three arrays and the global calibration.
    """
    groups = np.asarray(groups).astype(str)
    lo_f, sc_f, nu_f, glob = _group_calibration(v[fit], groups[fit], robust, **kw)
    loc, sc, nu = (np.full(v.shape, glob[i], dtype=float) for i in range(3))
    for g in np.unique(groups[fit]):
        m_fit = groups[fit] == g
        m_all = groups == g
        loc[m_all], sc[m_all], nu[m_all] = lo_f[m_fit][0], sc_f[m_fit][0], nu_f[m_fit][0]
    return loc, sc, nu, glob


def _label_invariant(kind: str, x, m: int | None = None) -> np.ndarray:
    """What a rotation, an atom permutation or a supercell leaves unchanged in a force or stress label.

    Forces: the sorted norms ``|F_i|``, as the empirical quantiles at
    ``(k + 1/2) / m`` when ``m`` (the smallest atom count among the copies
    compared) is given and differs: a k-fold supercell repeats each atom's
    force k times.  Stress (Voigt ``xx, yy, zz, yz, xz, xy`` or 3x3): the
    sorted principal values.  Same units as the label.
    """
    if kind == "stress":
        v = np.ravel(np.asarray(x, float))
        if v.size == 6:
            v = np.array([[v[0], v[5], v[4]], [v[5], v[1], v[3]], [v[4], v[3], v[2]]])
        t = np.reshape(v, (3, 3))
        return np.linalg.eigvalsh(0.5 * (t + t.T))
    norms = np.sort(np.linalg.norm(np.reshape(np.asarray(x, float), (-1, 3)), axis=1))
    if m is None or m == norms.size:
        return norms
    # the empirical quantile (no interpolation): a k-fold supercell's sorted norms, each repeated k times
    return np.quantile(norms, (np.arange(m) + 0.5) / m, method="inverted_cdf")


def _duplicate_conflicts(frames, dup: np.ndarray, same: np.ndarray, esig):
    """Log p-value that each structure's labels disagree with its copies', and the label and copy named.

    Copies are grouped by their first member (a chain of near-duplicates is
    taken a link at a time).  Energies per
    atom are compared within a group of near-duplicates; forces and stress
    only among copies of the same structure (``same``: the group's first
    member and those equal to their earlier copy), through
    :func:`_label_invariant` on the group's smallest atom count.  Two copies
    are compared with each other (both get the p-value: the copies alone
    cannot tell which is wrong); three
    or more with their element-wise median, so a wrong copy is the one that
    stands out, whichever came first.  Variances: the energy as before
    (model noise of both, capped, plus 1 meV/atom); forces and stress twice
    the per-component spread (DFT precision plus, with at least
    ``2 _MIN_DUPLICATE_PAIRS`` copies, the data set's median spread of a copy
    about its group's centre).

    Returns
    -------
    (logp, label) : tuple of ndarray, shape (n_frames,)
        Bonferroni-combined log p over the labels compared (NaN where there
        is no copy) and the label with the smallest p.
    partner : ndarray of int, shape (n_frames,)
        A copy it was compared with (-1 where none).
    copies : ndarray of int, shape (n_frames,)
        Number of copies the label named was compared among (0 where none).
    """
    n = len(frames)
    logp, label, partner = np.full(n, np.nan), np.full(n, "", dtype=object), np.full(n, -1)
    copies = np.zeros(n, int)
    # a group is a first copy and the structures whose earliest copy it is; a structure whose earliest
    # copy has an earlier copy itself (a chain of near-duplicates, each step under the tolerance) is
    # compared with that copy alone: chained, the ends of a slow path would be judged by its middle
    groups: dict = {}
    for g in np.flatnonzero(dup >= 0):
        r = int(dup[g])
        key = r if dup[r] < 0 else (r, int(g))
        groups.setdefault(key, [r]).append(int(g))
    labels = [frame_labels(a, g) for g, a in enumerate(frames)]
    # per-label, per-member values on a common footing within each group
    values: dict = {}
    for r, members in groups.items():
        m_atoms = min(len(frames[g]) for g in members)
        for g in members:
            lab = labels[g]
            if "energy" in lab and esig is not None:
                values.setdefault(("energy", r), {})[g] = np.array([lab["energy"] / len(frames[g])])
            if g != members[0] and not same[g]:
                continue  # near, not the same structure: its forces and stress may honestly differ
            for k in ("forces", "stress"):
                if k in lab:
                    values.setdefault((k, r), {})[g] = _label_invariant(k, lab[k], m_atoms)
    # how well this data set repeats itself: each copy's per-component spread about its group's centre
    # (the median of three or more, the mean of two), the median over all copies -- a wrong copy, even
    # a group's first, moves neither the centre of its group nor that median
    dev: dict = {"forces": [], "stress": []}
    for (k, r), v in values.items():
        if k in dev and len(v) >= 2:
            X = np.array(list(v.values()))
            c = np.median(X, axis=0) if len(v) >= 3 else X.mean(axis=0)
            dev[k] += [float(np.mean((x - c) ** 2)) * len(v) / (len(v) - 1) for x in X]
    spread = {}
    for k in ("forces", "stress"):
        s2 = _DUPLICATE_LABEL_PRECISION[k] ** 2
        if len(dev[k]) >= 2 * _MIN_DUPLICATE_PAIRS:
            s2 += float(np.median(dev[k]))
        spread[k] = s2
    per = [dict() for _ in range(n)]
    for (k, r), v in values.items():
        if len(v) < 2:
            continue
        ids = list(v)
        X = np.array([v[g] for g in ids])
        centre = None if len(ids) == 2 else np.median(X, axis=0)
        # the copies nearest the median first: the one to name in the diagnosis
        nearest = None if centre is None else [ids[i] for i in np.argsort(np.sum((X - centre) ** 2, axis=1))]
        for a_, g in enumerate(ids):
            if centre is None:
                other, d = ids[1 - a_], X[a_] - X[1 - a_]
            else:
                other = nearest[0] if nearest[0] != g else nearest[1]
                d = X[a_] - centre
            if k == "energy":
                s2 = esig[g] ** 2 + esig[other] ** 2 + _DUPLICATE_PRECISION ** 2
                if not (s2 > 0 and np.isfinite(s2)):
                    continue
                lp = np.log(2.0) + float(stats.norm.logsf(abs(float(d[0])) / np.sqrt(s2)))
            else:
                lp = _chi2_logsf(float(d @ d) / (2.0 * spread[k]), d.size)
            if k not in per[g] or lp < per[g][k][0]:     # a chain link belongs to two pairs
                per[g][k] = (lp, other, len(ids))
    for g in range(n):
        if per[g]:
            k = min(per[g], key=lambda k_: per[g][k_][0])
            logp[g] = min(0.0, per[g][k][0] + np.log(len(per[g])))
            label[g], partner[g], copies[g] = k, per[g][k][1], per[g][k][2]
    return (logp, label), partner, copies


def _is_reference_atom(a) -> bool:
    """An isolated-atom reference frame (:func:`kernelpot.io.labels.is_isolated_atom`): one atom
    without periodic neighbours, not a one-atom primitive cell of a crystal (screened like any other)."""
    return is_isolated_atom(a)


def _table(ev: dict, frames, alpha: float, robust: bool, extra: dict | None = None,
           deflate_energy: bool = False) -> ScreenTable:
    """The screening table from per-observation statistics (see :func:`_loo_evidence`).

    ``extra`` (from :func:`_physics`): per-frame force noise ``force_sigma``
    for the net-force test, and ``duplicate_of`` for the duplicate check.
    """
    extra = extra or {}
    n_frames = len(frames)
    order_f = np.argsort(ev["frames"])
    chi2_raw, dof = ev["chi2"][order_f], ev["dof"][order_f]
    lev, held = ev["leverage"][order_f], ev["held_out"][order_f]
    self_z = ev.get("energy_self_z", np.full(n_frames, np.nan))[order_f]
    self_r = ev.get("energy_self_residual", np.full(n_frames, np.nan))[order_f]
    ctype = np.array([config_type(a, "") for a in frames], dtype=object)
    ref_atom = np.array([_is_reference_atom(a) for a in frames], bool)
    # observations sorted by frame (stable: keeps component order within a frame)
    o = np.argsort(ev["frame"], kind="stable")
    kind_obs, frame_obs, r_obs, z_obs = ev["kind"][o], ev["frame"][o], ev["residual"][o], ev["z"][o]
    # isolated-atom reference frames: their energy defines e0, leaving it out removes the reference
    use_obs = ~((kind_obs == "energy") & ref_atom[frame_obs])
    # repeats of an earlier structure predict each other almost exactly: 25 copies in a config_type
    # set its robust spread and every other structure looked extreme, so they are scored, not used
    # to calibrate (each structure counts once)
    dup = np.asarray(extra.get("duplicate_of", np.full(n_frames, -1)))
    null_frame = ~held & (dup < 0)
    fitted_obs = null_frame[frame_obs] & use_obs
    group_obs = ctype[frame_obs].astype(str)
    obs_scale, obs_centre, obs_dof = np.ones(z_obs.shape), np.zeros(z_obs.shape), np.full(z_obs.shape, np.inf)
    cal = {}
    # with deflate_energy (a refit round follows, or this is one), the energies' spread may fall below
    # one, down to the z-score of DFT precision (_energy_min_scale): a learned energy noise far above
    # it was inflated by gross errors
    e_fit = (kind_obs == "energy") & fitted_obs
    min_scale = {"energy": _energy_min_scale(r_obs[e_fit], z_obs[e_fit]) if deflate_energy else 1.0}
    for k in _KINDS:
        m = kind_obs == k
        # per-group values for every observation of kind k (held-out frames use their group's)
        obs_centre[m], obs_scale[m], obs_dof[m], cal[k] = _calibrate_on(
            z_obs[m], group_obs[m], fitted_obs[m], robust, min_scale=min_scale.get(k, 1.0),
            own_location=k == "energy")
    z = (z_obs - obs_centre) / obs_scale
    # ... and, structure by structure, an energy never counts more than one std per 1 meV/atom off
    # (a model near-certain of one structure, a std of 0.015 meV/atom, had z = 27 for 0.41 meV/atom)
    e_obs = kind_obs == "energy"
    z[e_obs] = _energy_floor(z[e_obs], z_obs[e_obs], r_obs[e_obs], obs_scale[e_obs])

    cols = {k: np.full(n_frames, np.nan) for k in
            ("energy_residual", "energy_z", "energy_self_z", "forces_rms", "forces_max_z", "net_force",
             "stress_rms", "stress_max_z")}
    logp = np.full((n_frames, len(_TESTS)), np.nan)
    for kind in _KINDS:
        sel = (kind_obs == kind) & use_obs
        fr = frame_obs[sel]
        if fr.size == 0:
            continue
        zk, rk, nuk = z[sel], r_obs[sel], obs_dof[sel]
        starts = np.flatnonzero(np.r_[True, fr[1:] != fr[:-1]])
        ids = fr[starts]
        count = np.diff(np.r_[starts, fr.size])
        maxz = np.maximum.reduceat(np.abs(zk), starts)
        rms = np.sqrt(np.add.reduceat(rk ** 2, starts) / count)
        if kind == "energy":
            cols["energy_residual"][ids] = rk[starts] * 1000.0
            cols["energy_z"][ids] = zk[starts]
            logp[ids, _TESTS.index("energy")] = np.log(2.0) + _log_sf(maxz, nuk[starts])
        else:
            cols[f"{kind}_rms"][ids] = rms / GPa if kind == "stress" else rms
            cols[f"{kind}_max_z"][ids] = maxz
            # Sidak: the p-value of the largest of ``count`` two-sided |z| (uniform under the null,
            # which the empirical null below needs; ~ count * p1 for small p1)
            lp1 = np.log(2.0) + _log_sf(maxz, nuk[starts])
            logp[ids, _TESTS.index(kind)] = _sidak_log(lp1, count)

    # energy with only its own label left out (own forces/stress kept): robust per config_type
    ok = np.isfinite(self_z) & ~ref_atom
    if ok.any():
        lo, sc, nu, cal["energy_self"] = _calibrate_on(
            self_z[ok], ctype[ok], null_frame[ok], robust, own_location=True,
            min_scale=_energy_min_scale(self_r[ok & ~held], self_z[ok & ~held]) if deflate_energy else 1.0)
        zs = _energy_floor((self_z[ok] - lo) / sc, self_z[ok], self_r[ok], sc)
        cols["energy_self_z"][ok] = zs
        logp[ok, _TESTS.index("energy_self")] = np.log(2.0) + _log_sf(np.abs(zs), nu)

    # geometry: nearest-neighbour distances against the data set's (a length-unit slip, fractional
    # coordinates read as Cartesian); physics of the positions alone, so always robust
    nn = np.asarray(extra.get("neighbour_ratio", np.full(n_frames, np.nan)), float)
    nn_ok = np.isfinite(nn) & (nn > 0) & ~ref_atom
    nn_typical = np.full(n_frames, np.nan)
    if nn_ok.sum() >= 2:
        # per config_type, shrunk towards the whole set's (a binding curve labelled 'dimer' spans
        # 0.7-2.7x on purpose; a slipped frame among its own kind stands out)
        v = np.log(nn[nn_ok])
        loc, sc, nu, cal["neighbours"] = _calibrate_on(v, ctype[nn_ok], (dup < 0)[nn_ok], True,
                                                       min_scale=_NEIGHBOUR_MIN_LOG_SPREAD,
                                                       prior_count=_NEIGHBOUR_PRIOR_COUNT)
        nn_typical[nn_ok] = np.exp(loc)
        logp[nn_ok, _TESTS.index("neighbours")] = np.log(2.0) + _log_sf(np.abs(v - loc) / sc, nu)

    # net force: forces that are the gradient of a translation-invariant energy sum to zero
    fsig = extra.get("force_sigma")
    if fsig is not None:
        for g, a in enumerate(frames):
            lab = frame_labels(a, g)
            if "forces" not in lab or not np.isfinite(fsig[g]) or fsig[g] <= 0:
                continue
            net = lab["forces"].sum(axis=0)
            cols["net_force"][g] = float(np.linalg.norm(net))
            # honest per-component errors of size sigma give a net force ~ N(0, n sigma^2) per axis
            q = float(net @ net) / (len(a) * fsig[g] ** 2)
            logp[g, _TESTS.index("net_force")] = _chi2_logsf(q, 3)

    # duplicates with conflicting labels
    dup_label = np.full(n_frames, "", dtype=object)
    esig = extra.get("energy_sigma")
    if esig is not None:
        # the learned noise is inflated by gross errors elsewhere; the robust spread of the energy
        # LOO residuals (per atom) bounds honest label noise without being moved by them
        e_fit = (kind_obs == "energy") & fitted_obs
        if e_fit.sum() >= 2:
            esig = np.minimum(esig, robust_scale(r_obs[e_fit]))
    dist = np.asarray(extra.get("duplicate_distance", np.full(n_frames, np.inf)), float)
    lp_dup, dup_partner, dup_copies = _duplicate_conflicts(frames, dup, dist <= _SAME_STRUCTURE_TOL, esig)
    logp[:, _TESTS.index("duplicate")] = lp_dup[0]
    for g in np.flatnonzero(np.isfinite(lp_dup[0]) & (lp_dup[0] < np.log(alpha / n_frames))):
        dup_label[g] = lp_dup[1][g]

    has_obs = (dof > 0) & ~ref_atom
    d = np.where(has_obs, dof, 1.0)
    w = ((chi2_raw / d) ** (1.0 / 3.0) - (1.0 - 2.0 / (9.0 * d))) / np.sqrt(2.0 / (9.0 * d))
    lw, sw, nw, cal["chi2"] = _calibrate_on(w, ctype, has_obs & null_frame, robust, clip_location=True)
    logp[has_obs, _TESTS.index("chi2")] = _log_sf((w[has_obs] - lw[has_obs]) / sw[has_obs], nw[has_obs])
    # empirical null of the max-type tests (Efron): their p-values as normal deviates, robustly
    # standardised per config_type like the chi-square -- heavy tails and correlated components of
    # honest model errors widen the distribution of a maximum beyond what the per-component
    # calibration predicts; the location is never below 0 nor the scale below 1
    if robust:
        for t in ("forces", "stress", "net_force"):
            c = _TESTS.index(t)
            have = np.isfinite(logp[:, c])
            u = _isf_log(logp[:, c])
            refm = have & null_frame
            if refm.sum() < 2:
                continue
            lu, su, nuu, cal[f"{t}_null"] = _calibrate_on(u, ctype, refm, robust, clip_location=True)
            logp[have, c] = _log_sf((u[have] - lu[have]) / su[have], nuu[have])
    # two copies that disagree: when the model's own tests single out one of them, the other is not blamed
    c_dup = _TESTS.index("duplicate")
    own = np.where(np.isfinite(logp), logp, 0.0)
    own[:, c_dup] = 0.0
    own = own.min(axis=1)
    lt = np.log(alpha / n_frames)
    sided = np.zeros(n_frames, bool)
    for g in np.flatnonzero((dup_copies == 2) & np.isfinite(logp[:, c_dup])):
        h = dup_partner[g]
        if own[h] < lt <= own[g]:
            logp[g, c_dup] = np.nan
            dup_label[g] = ""
            sided[h] = True
    scales = {}
    for k, (lo_, s_, nu_) in cal.items():
        scales.update({f"{k}_location": lo_, f"{k}_scale": s_, f"{k}_dof": nu_})
    n_tests = np.sum(np.isfinite(logp), axis=1)
    filled = np.where(np.isfinite(logp), logp, np.inf)
    worst = np.argmin(filled, axis=1)
    logp_comb = _sidak_log(np.min(filled, axis=1), n_tests)
    score = -logp_comb / _LN10 + 0.0  # + 0.0 turns -0.0 into 0.0 for printing
    threshold = alpha / n_frames
    flag = logp_comb < np.log(threshold)
    dup_text = np.array([f"conflicts with duplicate #{p}" + (", which the model reproduces" if sd else
                                                              " (one of the two is wrong)" if c == 2 else "")
                         for p, c, sd in zip(dup_partner, dup_copies, sided)], dtype=object)
    # each label's share of the structure's squared z-scores, for a flag by the chi-square alone
    share = {k: np.bincount(frame_obs[(kind_obs == k) & use_obs], weights=z_obs[(kind_obs == k) & use_obs] ** 2,
                            minlength=n_frames) for k in _KINDS}
    tot = np.maximum(sum(share.values()), 1e-300)
    share = {k: v / tot for k, v in share.items()}
    suspect, kind_txt = _diagnoses(flag, logp, threshold, frames, kind_obs, frame_obs, r_obs, z_obs, dup_text,
                                   dup_label, share)
    # a structure far from the rest of the data can be right and still unpredictable: say so
    lev_med = float(np.median(lev[np.isfinite(lev)])) if np.isfinite(lev).any() else np.nan
    for g in np.flatnonzero(flag & (lev > _HIGH_LEVERAGE * lev_med)):
        kind_txt[g] = f"unusual structure (leverage {lev[g]:.1f}), labels may be right; " + kind_txt[g]
    # ... unless its nearest neighbours say the positions themselves are wrong
    lp_nn = logp[:, _TESTS.index("neighbours")]
    for g in np.flatnonzero(flag & np.isfinite(lp_nn) & (lp_nn < np.log(threshold))):
        f = nn[g] / nn_typical[g]
        slip = scale_slip(f)
        suspect[g] = "geometry"
        cluster = len(frames[g]) <= 4 or not np.all(frames[g].pbc)   # a dimer or cluster may be stretched
        kind_txt[g] = (f"nearest neighbours x{f:.3g} the data set's: "
                       + (f"positions in another unit ({slip})" if slip
                          else "scaled positions or fractional coordinates read as Cartesian")
                       + (", unless stretched or compressed on purpose" if cluster or not slip else ""))

    out = {
        "index": np.arange(n_frames),
        "config_type": ctype,
        "n_atoms": np.array([len(a) for a in frames]),
        "leverage": lev,
        **cols,
        "energy_self_residual": self_r * 1000.0,
        "chi2_dof": np.where(has_obs, chi2_raw / d, np.nan),
        "duplicate_of": dup,
        "neighbour_ratio": nn,
        "worst": np.array([_TESTS[k] if t else "" for k, t in zip(worst, n_tests)], dtype=object),
        "p_value": np.exp(logp_comb),
        "score": score,
        "flag": flag,
        "suspect": suspect,
        "diagnosis": kind_txt,
        "held_out": held,
    }
    out = {k: out[k] for k in COLUMNS}
    order = np.lexsort((out["index"], -score))
    out = {k: v[order] for k, v in out.items()}
    table = ScreenTable(out, alpha, threshold, scales, None)
    e_obs = (kind_obs == "energy") & use_obs & ~ref_atom[frame_obs]
    table.offsets = _group_offsets(r_obs[e_obs], z_obs[e_obs], group_obs[e_obs], frame_obs[e_obs],
                                   fitted_obs[e_obs], alpha)
    return table


@dataclass
class GroupOffset:
    """A config_type whose energies the model predicts off as a whole (listed under the screening table).

    Attributes
    ----------
    group : str
        The config_type.
    frames : ndarray of int
        Its structures.
    offset : float
        Mean energy residual of the group minus that of the other groups (those not offset), meV/atom.
    p_value : float
        Bonferroni-corrected (over the groups compared) p-value of the offset.
    message : str
    """

    group: str
    frames: np.ndarray
    offset: float
    p_value: float
    message: str
    label: str = "energy"


def _group_offsets(residual, z, groups, frames, fit, alpha: float) -> list:
    """Config_types (from :data:`_OWN_LOCATION` structures) whose energy residuals are off as a group.

    The offset test of :func:`kernelpot.audit` (:func:`kernelpot.io.dft_audit._offset_tests`: each
    group's mean residual against the other groups', z-test Bonferroni over the groups, groups found
    offset left out of the reference one at a time) on the structures' leave-one-out energy residuals,
    with DFT precision (1 meV/atom) as the smallest offset reported.  The energy tests centre each such
    group on its own median (:func:`_group_calibration`), so without this a group in a reference of
    its own would pass unseen.  ``residual`` per atom (eV), one entry per structure; ``z`` is not used
    by the test, only its finiteness.
    """
    from kernelpot.io.dft_audit import _offset_tests

    groups = np.asarray(groups).astype(str)
    use = np.asarray(fit, bool) & np.isfinite(residual) & np.isfinite(z)
    tests = _offset_tests("config_type", list(groups[use]), 1000.0 * np.asarray(residual, float)[use],
                          1000.0 * _DUPLICATE_PRECISION, alpha)
    n_groups = len(tests)
    out = []
    for t in tests:
        if not t.flagged or t.n_frames < _OWN_LOCATION:
            continue
        g = str(t.group)
        idx = np.unique(frames[groups == g])
        p = min(1.0, n_groups * t.p_value)
        out.append(GroupOffset(g, idx, t.offset_meV, p, (
            f"config_type {g!r} ({len(idx)} structures): energies {t.offset_meV:+.1f} meV/atom from the "
            f"other config_types' as a group (p = {p:.2g}), not flagged one by one: a reference of their own "
            f"(another functional, pseudopotential, code or setting: kernelpot.audit compares them), or "
            f"structures the model does not reach")))
    return out


_LABEL_OF_TEST = {"energy": "energy", "energy_self": "energy", "forces": "forces", "net_force": "forces",
                  "stress": "stress", "chi2": "geometry", "duplicate": "duplicate", "neighbours": "geometry"}


def _swap_partners(energy: dict) -> dict:
    """Structures whose energy labels are each other's: ``{g: h}`` for mutually best-matching pairs.

    ``energy[g] = (n_atoms, label, prediction, predictive std)`` (total
    energies, eV).  ``h`` matches ``g`` when both have the same number of
    atoms, exchanging their labels leaves under a quarter of the residual,
    and each label is within ``_SWAP_Z`` predictive stds of the other's
    prediction; ``g`` and ``h`` are paired when each is the other's best
    match (smallest residual after the exchange).
    """
    best = {}
    for g, (ng, eg, pg, sg) in energy.items():
        cands = []
        for h, (nh, eh, ph, sh) in energy.items():
            if h == g or nh != ng:
                continue
            after = abs(eg - ph) + abs(eh - pg)
            if after < 0.25 * (abs(eg - pg) + abs(eh - ph)) and abs(eg - ph) <= _SWAP_Z * sh \
                    and abs(eh - pg) <= _SWAP_Z * sg:
                cands.append((after, h))
        if cands:
            best[g] = min(cands)[1]
    return {g: h for g, h in best.items() if best.get(h) == g}


def _diagnoses(flag, logp, threshold, frames, kind_obs, frame_obs, r_obs, z_obs, dup_text, dup_label, share):
    """Suspected label and most likely kind of error of each flagged structure (see :mod:`.diagnosis`)."""
    n = len(frames)
    suspect = np.full(n, "", dtype=object)
    what = np.full(n, "", dtype=object)
    lt = np.log(threshold)
    col = {t: i for i, t in enumerate(_TESTS)}
    labs, preds = {}, {}
    forces_sig, chi2_only = np.zeros(n, bool), np.zeros(n, bool)
    for g in np.flatnonzero(flag):
        row = np.where(np.isfinite(logp[g]), logp[g], np.inf)
        sig_labels = {lab for t, lab in _LABEL_OF_TEST.items()
                      if lab in _KINDS and row[col[t]] < lt}
        best = _TESTS[int(np.argmin(row))]
        s = _LABEL_OF_TEST[best]
        # how far past the threshold each significant label's strongest test is (log p): several labels
        # far off together point at the structure itself; one label far beyond the others (the others
        # just past the threshold, e.g. a refit's side effects) at that label alone
        excess = {lab: min(row[col[t]] for t, lab_ in _LABEL_OF_TEST.items() if lab_ == lab) - lt
                  for lab in sig_labels}
        ranked = sorted(excess, key=excess.get)
        if len(ranked) >= 2 and excess[ranked[1]] <= _GEOMETRY_SHARE * excess[ranked[0]]:
            s = "geometry"
        elif len(ranked) >= 2:
            s = ranked[0]
        elif s == "geometry" and len(sig_labels) == 1:
            s = next(iter(sig_labels))
        suspect[g] = s
        forces_sig[g] = "forces" in sig_labels
        chi2_only[g] = best == "chi2" and not sig_labels
        lab = frame_labels(frames[g], g)
        pred = {}
        for k in _KINDS:
            m = (frame_obs == g) & (kind_obs == k)
            if k not in lab or not m.any():
                continue
            r = r_obs[m] * (len(frames[g]) if k == "energy" else 1.0)
            L = np.asarray(lab[k], float)
            if r.size != L.size:
                continue
            pred[k] = L - r.reshape(L.shape) if k != "energy" else float(L - r[0])
        labs[g], preds[g] = lab, pred
    # swapped energies: two flagged energy suspects of the same size matching each other's predictions,
    # each the other's best match, and each label within _SWAP_Z predictive stds of the other's
    # prediction (two independent shifts of opposite sign had been paired, not even mutually)
    partner = {}
    e_sus = [g for g in np.flatnonzero(flag) if suspect[g] == "energy" and "energy" in preds[g]]
    e_std = {}
    for g in e_sus:
        m = (frame_obs == g) & (kind_obs == "energy")
        r, z = float(r_obs[m][0]), float(z_obs[m][0])
        # total-energy predictive std (eV), never below DFT precision per atom (as _energy_floor)
        e_std[g] = max(abs(r / z), _DUPLICATE_PRECISION) * len(frames[g]) if z != 0 else np.inf
    for g, h in _swap_partners({g: (len(frames[g]), labs[g]["energy"], preds[g]["energy"], e_std[g])
                                for g in e_sus}).items():
        partner[g] = f"swapped with #{h}"
    for g in np.flatnonzero(flag):
        conflict = dup_label[g] and suspect[g] in (dup_label[g], "duplicate")
        if conflict:
            suspect[g] = dup_label[g]
            if suspect[g] == "energy":
                partner.setdefault(g, dup_text[g])
        net_sig = np.isfinite(logp[g, col["net_force"]]) and logp[g, col["net_force"]] < lt
        what[g] = diagnose(suspect[g], labs[g], preds[g], len(frames[g]), net_force_significant=net_sig,
                           partner=partner.get(g))
        if conflict and suspect[g] != "energy":
            what[g] = "; ".join(filter(None, (what[g], dup_text[g])))
        # an energy off like a reference shift, but with the force residual on one atom and the neighbour it
        # pushes: a shift leaves forces untouched, an atom moved after the calculation does not
        j = None
        if suspect[g] == "energy" and not conflict and what[g].startswith("reference shift"):
            zf = z_obs[(frame_obs == g) & (kind_obs == "forces")]
            j = moved_atom(frames[g], labs[g], preds[g], zf.reshape(-1, 3) if zf.size == 3 * len(frames[g]) else None)
        if j is not None:
            suspect[g] = "geometry"
            what[g] = (f"one atom misplaced (atom {j}): the energy off "
                       f"{what[g][len('reference shift '):]} with the forces on it and a neighbour")
        # significant forces off on one atom alone, not flipped: a machine-written force block rarely
        # has that, an atom moved after the calculation (a mis-wrapped or hand-edited coordinate) does
        # -- and then the energy is off too, often by more decades than the forces
        f_what = what[g] if suspect[g] == "forces" else (
            diagnose("forces", labs[g], preds[g], len(frames[g])) if forces_sig[g] and not conflict else "")
        if f_what.startswith("one atom wrong"):
            suspect[g] = "geometry"
            what[g] = f_what.replace("one atom wrong", "one atom misplaced, or its force wrong")
        elif chi2_only[g]:
            main = max(_KINDS, key=lambda k: share[k][g])
            if share[main][g] >= _CHI2_SHARE and main in labs[g]:
                # many small deviations, most of them in one label: that label, as a whole
                suspect[g] = main
                what[g] = diagnose(main, labs[g], preds[g], len(frames[g]))
            else:
                what[g] = ("many small deviations together (chi-square), no single label off: the geometry, "
                           "the species, or a structure unlike the rest")
    return suspect, what
