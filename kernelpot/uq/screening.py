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

1. Robust calibration.  Each kind's z-scores are centred on their median and
   divided by a robust global spread ``s_k = max(1, 1.4826 MAD(z_k))`` over
   the whole training set (``MAD``: median absolute deviation from the
   median; ``1.4826 MAD`` estimates the standard deviation of a normal sample
   without being moved by the outliers themselves), so an over-confident
   model does not flag everything.  Spreads below one are not applied: they
   occur when outliers have inflated the learned noise, and dividing by them
   would amplify the heavy tails of the clean structures' residuals instead
   (swamping).  The median is subtracted because an energy offset fitted
   with outliers in the data shifts every clean structure's residual alike.
   Both are estimates: the spread is widened by ``sqrt(1 + pi / (2 n))`` for
   the uncertainty of the median, and when ``s_k`` is applied the
   standardised values are referred to Student's t with ``0.3675 n_k``
   degrees of freedom (the MAD's efficiency) instead of N(0, 1) -- this
   matters for energies, one per structure, and keeps the false-flag rate
   near ``alpha`` on small training sets.
2. One p-value per test (``F`` the tail of N(0, 1) or of that t):

   * energy: two-sided, ``p = 2 F(|z_E|)``;
   * forces: Bonferroni over the structure's ``3 n`` components with the
     largest ``|z|``, ``p = min(1, 3 n * 2 F(max |z_F|))``;
   * stress: the same over the 6 components;
   * whole structure: the Mahalanobis norm ``chi2_g`` of all the structure's
     LOO residuals together (``frame_chi2``, under the fitted DTC model
     without the Nystrom residual, ``dof_g`` observations; catches
     many moderate errors that no single component shows).  Model errors are
     correlated within a structure, which widens the distribution of
     ``chi2_g`` beyond ``chi2(dof_g)`` (for a 64-atom cell, ``chi2/dof`` of 2
     would be a 7-sigma event).  So ``chi2_g`` is mapped to a normal deviate
     with the Wilson-Hilferty transformation,
     ``w = ((chi2/dof)^(1/3) - 1 + 2/(9 dof)) / sqrt(2/(9 dof))``, which is
     robustly standardised over the training set like the z-scores (location
     ``max(0, median w)``), and ``p = F(w_std)`` (one-sided: only too-large
     residuals are suspicious).

3. Combined (Bonferroni over the tests present): ``p = min(1, T min_t p_t)``,
   score ``= -log10 p``; flagged when ``p < alpha / n_structures``
   (Bonferroni over the training set, so on data that follow the model up to
   a global miscalibration the chance of any false flag is about ``alpha``).

p-values are computed in log space, so scores stay finite for any z.

Masking and refit rounds
------------------------
Gross errors inflate the learned noise (the likelihood is Gaussian), which
hides smaller errors of the same kind.  With ``refit_rounds > 0`` the model
is fitted again from scratch (``clone(model).fit``: new offsets, sparse
set and hyperparameters) without the flagged structures; the kept structures
are screened again by closed-form LOO, and the removed ones by their
out-of-sample prediction from the refitted model (z-scores from the full
predictive std; ``chi2`` as the sum of their squares, correlations ignored).
This repeats until the flagged set no longer changes or the rounds run out.
"""

from __future__ import annotations

import numpy as np
from ase.units import GPa
from scipy import stats
from sklearn.base import clone

from kernelpot.io.labels import config_type, frame_labels
from kernelpot.gp.loo import TrainingDiagnostics, leave_one_out

__all__ = ["COLUMNS", "ScreenTable", "screen", "robust_scale"]

_MAD_TO_SD = 1.4826  # 1 / Phi^-1(3/4): MAD of a normal sample times this is its std
_MAD_EFFICIENCY = 0.3675  # asymptotic efficiency of the MAD scale relative to the std (normal data)
_KINDS = ("energy", "forces", "stress")
_TESTS = ("energy", "forces", "stress", "chi2")
_LN10 = float(np.log(10.0))

#: column name -> (unit, description); the order is the column order.
COLUMNS = {
    "index": ("", "training structure index"),
    "config_type": ("", "atoms.info['config_type']"),
    "n_atoms": ("", "number of atoms"),
    "leverage": ("", "trace of the structure's hat-matrix block H_GG"),
    "energy_residual": ("meV/atom", "energy label minus LOO prediction, per atom"),
    "energy_z": ("", "LOO energy z-score, robustly standardised"),
    "forces_rms": ("eV/Å", "RMS of the LOO force residual over the structure's components"),
    "forces_max_z": ("", "largest |LOO force z-score|, robustly standardised"),
    "stress_rms": ("GPa", "RMS of the LOO stress residual over the 6 components"),
    "stress_max_z": ("", "largest |LOO stress z-score|, robustly standardised"),
    "chi2_dof": ("", "structure chi-square per degree of freedom (before standardisation)"),
    "worst": ("", "test with the smallest p-value"),
    "p_value": ("", "combined p-value (Bonferroni over tests)"),
    "score": ("", "-log10 p_value"),
    "flag": ("", "p_value < alpha / n_structures"),
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
    return stats.norm.logsf(x) if not np.isfinite(nu) else stats.t.logsf(x, nu)


def _calibration(v: np.ndarray, robust: bool, clip_location: bool = False) -> tuple[float, float, float]:
    """Robust ``(location, scale, dof)`` to standardise ``v`` with; identity when not ``robust``.

    The scale is ``max(1, 1.4826 MAD)`` times ``sqrt(1 + pi / (2 n))`` (the
    variance of the median subtracted).  When the MAD scale is applied (> 1) it
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
    nu = _MAD_EFFICIENCY * n if s > 1.0 else np.inf
    return loc, max(s, 1.0) * np.sqrt(1.0 + np.pi / (2.0 * n)), nu


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
               "forces_rms": "{:.3f}", "forces_max_z": "{:.1f}", "stress_rms": "{:.3f}",
               "stress_max_z": "{:.1f}", "chi2_dof": "{:.2f}", "p_value": "{:.2g}", "score": "{:.1f}"}
        head = {"index": "index", "config_type": "config_type", "n_atoms": "atoms", "leverage": "lev",
                "energy_residual": "dE meV/at", "energy_z": "zE", "forces_rms": "dF eV/Å",
                "forces_max_z": "max|zF|", "stress_rms": "dS GPa", "stress_max_z": "max|zS|",
                "chi2_dof": "chi2/dof", "worst": "worst", "p_value": "p", "score": "score", "flag": "flag"}
        cells = [list(head.values())]
        for r in range(n):
            row = []
            for k in head:
                v = self.columns[k][r]
                if k == "flag":
                    row.append(("*" if v else "") + (" (held out)" if self.columns["held_out"][r] else ""))
                elif k == "config_type":
                    row.append(str(v)[:18])
                elif k in fmt:
                    row.append("-" if not np.isfinite(v) else fmt[k].format(v))
                else:
                    row.append(str(v))
            cells.append(row)
        widths = [max(len(c[j]) for c in cells) for j in range(len(head))]
        left = {1, 11}  # config_type and worst are text
        lines = ["  ".join(c.ljust(w) if j in left else c.rjust(w)
                           for j, (c, w) in enumerate(zip(row, widths))).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        nf = len(self.flagged)
        foot = (f"{len(self)} structures, {nf} flagged (p < {self.alpha:g}/{len(self)} = {self.threshold:.2g})"
                + (f"; showing the top {n}" if n < len(self) else ""))
        return "\n".join(lines + [foot])

    def __str__(self) -> str:
        return self.to_string()

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
        labels = [f"{i} {ct}" for i, ct in zip(self.columns["index"], self.columns["config_type"])]
        fig, ax = influence(self.columns["leverage"], zc, labels=labels, flagged=self.columns["flag"],
                            ax=ax, z_threshold=zthr)
        ax.set_ylabel("combined LOO z-score")
        return fig, ax


def screen(model, frames=None, alpha: float = 0.05, robust: bool = True,
           refit_rounds: int = 1) -> ScreenTable:
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
        pass in about half the time.

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
        if known is not None and len(known) != len(frames):
            raise ValueError(f"frames has {len(frames)} structures but the model was fitted on "
                             f"{len(known)}; pass the training frames in training order")
    n = len(frames)
    diag = getattr(model, "training_diagnostics_", None)
    if diag is None or known is None or any(a is not b for a, b in zip(frames, known)):
        diag = leave_one_out(model, frames)
    ev = _loo_evidence(diag, np.arange(n))
    table = _table(ev, frames, alpha, robust)
    table.diagnostics, table.model = diag, model
    removed = np.zeros(n, bool)
    for r in range(refit_rounds):
        flag = np.zeros(n, bool)
        flag[table.flagged] = True
        if np.array_equal(flag, removed) or flag.all():
            break
        removed = flag
        keep = np.flatnonzero(~removed)
        refit = clone(model).fit([frames[i] for i in keep])
        rdiag = getattr(refit, "training_diagnostics_", None)
        ev = _merge(_loo_evidence(leave_one_out(refit) if rdiag is None else rdiag, keep),
                    _heldout_evidence(refit, frames, np.flatnonzero(removed), diag.frame_leverage), n)
        table = _table(ev, frames, alpha, robust)
        table.diagnostics, table.model, table.rounds = diag, refit, r + 1
    return table


def _loo_evidence(diag: TrainingDiagnostics, frame_ids: np.ndarray) -> dict:
    """Per-observation and per-frame statistics from closed-form LOO; frames renumbered by ``frame_ids``."""
    return {"kind": np.asarray(diag.kind), "frame": frame_ids[diag.frame], "residual": diag.loo_residual,
            "z": diag.z_predictive, "chi2": diag.frame_chi2, "dof": diag.frame_dof.astype(float),
            "leverage": np.asarray(diag.frame_leverage, float), "frames": frame_ids,
            "held_out": np.zeros(len(frame_ids), bool)}


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
            "leverage": leverage[ids], "frames": ids, "held_out": np.ones(len(ids), bool)}


def _merge(a: dict, b: dict, n: int) -> dict:
    out = {k: np.concatenate([a[k], b[k]]) for k in ("kind", "frame", "residual", "z")}
    for k in ("chi2", "dof", "leverage", "held_out"):
        v = np.zeros(n, dtype=a[k].dtype)
        v[a["frames"]] = a[k]
        v[b["frames"]] = b[k]
        out[k] = v
    out["frames"] = np.arange(n)
    return out


def _table(ev: dict, frames, alpha: float, robust: bool) -> ScreenTable:
    """The screening table from per-observation statistics (see :func:`_loo_evidence`)."""
    n_frames = len(frames)
    order_f = np.argsort(ev["frames"])
    chi2_raw, dof = ev["chi2"][order_f], ev["dof"][order_f]
    lev, held = ev["leverage"][order_f], ev["held_out"][order_f]
    # observations sorted by frame (stable: keeps component order within a frame)
    o = np.argsort(ev["frame"], kind="stable")
    kind_obs, frame_obs, r_obs, z_obs = ev["kind"][o], ev["frame"][o], ev["residual"][o], ev["z"][o]
    fitted_obs = ~held[frame_obs]
    cal = {k: _calibration(z_obs[(kind_obs == k) & fitted_obs], robust) for k in _KINDS}
    obs_scale, obs_centre = np.ones(z_obs.shape), np.zeros(z_obs.shape)
    for k in _KINDS:
        obs_centre[kind_obs == k], obs_scale[kind_obs == k] = cal[k][:2]
    z = (z_obs - obs_centre) / obs_scale

    cols = {k: np.full(n_frames, np.nan) for k in
            ("energy_residual", "energy_z", "forces_rms", "forces_max_z", "stress_rms", "stress_max_z")}
    logp = np.full((n_frames, len(_TESTS)), np.nan)
    for kind in _KINDS:
        sel = kind_obs == kind
        fr = frame_obs[sel]
        if fr.size == 0:
            continue
        zk, rk = z[sel], r_obs[sel]
        starts = np.flatnonzero(np.r_[True, fr[1:] != fr[:-1]])
        ids = fr[starts]
        count = np.diff(np.r_[starts, fr.size])
        maxz = np.maximum.reduceat(np.abs(zk), starts)
        rms = np.sqrt(np.add.reduceat(rk ** 2, starts) / count)
        if kind == "energy":
            cols["energy_residual"][ids] = rk[starts] * 1000.0
            cols["energy_z"][ids] = zk[starts]
            logp[ids, 0] = np.log(2.0) + _log_sf(maxz, cal[kind][2])
        else:
            cols[f"{kind}_rms"][ids] = rms / GPa if kind == "stress" else rms
            cols[f"{kind}_max_z"][ids] = maxz
            logp[ids, _TESTS.index(kind)] = np.minimum(np.log(2.0 * count) + _log_sf(maxz, cal[kind][2]), 0.0)
    has_obs = dof > 0
    d = np.where(has_obs, dof, 1.0)
    w = ((chi2_raw / d) ** (1.0 / 3.0) - (1.0 - 2.0 / (9.0 * d))) / np.sqrt(2.0 / (9.0 * d))
    ref = has_obs & ~held
    cal["chi2"] = _calibration(w[ref], robust, clip_location=True)
    loc, sc, nu = cal["chi2"]
    logp[has_obs, 3] = _log_sf((w[has_obs] - loc) / sc, nu)
    scales = {}
    for k, (lo, s_, nu_) in cal.items():
        scales.update({f"{k}_location": lo, f"{k}_scale": s_, f"{k}_dof": nu_})
    n_tests = np.sum(np.isfinite(logp), axis=1)
    filled = np.where(np.isfinite(logp), logp, np.inf)
    worst = np.argmin(filled, axis=1)
    logp_comb = np.minimum(np.min(filled, axis=1) + np.log(np.maximum(n_tests, 1)), 0.0)
    logp_comb[n_tests == 0] = 0.0
    score = -logp_comb / _LN10 + 0.0  # + 0.0 turns -0.0 into 0.0 for printing
    threshold = alpha / n_frames

    out = {
        "index": np.arange(n_frames),
        "config_type": np.array([config_type(a, "") for a in frames], dtype=object),
        "n_atoms": np.array([len(a) for a in frames]),
        "leverage": lev,
        **cols,
        "chi2_dof": np.where(has_obs, chi2_raw / d, np.nan),
        "worst": np.array([_TESTS[k] if t else "" for k, t in zip(worst, n_tests)], dtype=object),
        "p_value": np.exp(logp_comb),
        "score": score,
        "flag": logp_comb < np.log(threshold),
        "held_out": held,
    }
    out = {k: out[k] for k in COLUMNS}
    order = np.lexsort((out["index"], -score))
    out = {k: v[order] for k, v in out.items()}
    return ScreenTable(out, alpha, threshold, scales, None)
