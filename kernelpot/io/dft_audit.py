"""Audit a training set for inconsistent DFT settings and energy offsets.

Two checks, both report-only (``audit`` never drops or edits a frame):

1. **Settings.** DFT settings stored with each frame in ``atoms.info`` (also
   one level into dict values there) or ``atoms.calc.parameters`` are matched
   case-insensitively against known key names, and frames are grouped by
   identical settings. K-point meshes are compared through their density
   ``kpts_i / |b_i|`` (k-points per Å^-1 of reciprocal length, i.e. Å; ``b`` the
   reciprocal vectors including 2 pi) with a relative tolerance, so cells of
   different size sampled equally densely fall in one group.

2. **Energy offsets.** From per-frame energy residuals (reference minus
   model, eV) the mean residual per atom of each ``config_type`` (and of each
   settings group) is compared with that of all other frames. A group whose
   offset is both statistically significant (z-test, Bonferroni-corrected)
   and larger than a threshold (default 5 meV/atom) is flagged: the typical
   sign of data computed with different settings or codes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from scipy.stats import norm

from kernelpot.io.labels import frame_labels

__all__ = ["AuditReport", "OffsetTest", "SettingsGroup", "audit", "dft_settings", "kpoint_density"]

# canonical field -> accepted key names (lower case)
SETTING_KEYS: dict[str, tuple[str, ...]] = {
    "functional": ("functional", "xc", "gga", "metagga", "xc_functional"),
    "pseudopotentials": (
        "pseudopotentials", "pseudopotential", "potcar", "potcars", "pp", "setups"
    ),
    "encut": ("encut", "ecut", "ecutwfc", "plane_wave_cutoff"),
    "kpts": ("kpts", "kpoints", "kspacing"),
    "smearing": ("smearing", "sigma", "ismear", "degauss"),
    "spin": ("spin", "ispin", "spinpol", "nspin"),
}
_KEY_TO_FIELD = {k: f for f, keys in SETTING_KEYS.items() for k in keys}
_FIELDS = tuple(SETTING_KEYS)
_MISSING = "-"


def _normalize(value):
    """Hashable, comparison-friendly form of a settings value."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(f"{float(value):.10g}")
    if isinstance(value, str):
        return value.strip().lower()
    if isinstance(value, dict):
        return tuple(sorted((str(k).lower(), _normalize(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        return _normalize(value.tolist())
    if isinstance(value, (list, tuple)):
        return tuple(_normalize(v) for v in value)
    return repr(value)


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return "{" + ", ".join(f"{k}: {_format(v)}" for k, v in value) + "}"
        return "(" + ", ".join(_format(v) for v in value) + ")"
    return str(value)


def _show(values: dict[str, object]) -> str:
    return ", ".join(f"{k}={_format(_normalize(v))}" for k, v in sorted(values.items()))


def dft_settings(atoms: Atoms) -> dict[str, dict[str, object]]:
    """Raw DFT settings found on one frame.

    Parameters
    ----------
    atoms : ase.Atoms
        Frame; ``atoms.info`` (and dict values inside it, one level deep) and
        ``atoms.calc.parameters`` are searched, ``info`` taking precedence.

    Returns
    -------
    dict
        ``{field: {source_key: value}}`` for the fields in ``SETTING_KEYS``
        that are present; source keys are lower case.

    Examples
    --------
    >>> from ase.build import bulk
    >>> a = bulk("Cu"); a.info.update(ENCUT=520, xc="PBE")
    >>> dft_settings(a)
    {'functional': {'xc': 'PBE'}, 'encut': {'encut': 520}}
    """
    sources = [atoms.info]
    sources += [v for v in atoms.info.values() if isinstance(v, dict)]
    params = getattr(atoms.calc, "parameters", None) if atoms.calc is not None else None
    if isinstance(params, dict):
        sources.append(params)
    found: dict[str, dict[str, object]] = {}
    for source in sources:
        for key, value in source.items():
            fld = _KEY_TO_FIELD.get(str(key).lower())
            if fld is None or value is None:
                continue
            found.setdefault(fld, {}).setdefault(str(key).lower(), value)
    return {f: found[f] for f in _FIELDS if f in found}


def _reciprocal_lengths(atoms: Atoms) -> np.ndarray:
    return np.linalg.norm(2.0 * np.pi * atoms.cell.reciprocal(), axis=1)


def _parse_mesh(key: str, value, atoms: Atoms) -> np.ndarray | None:
    """Monkhorst-Pack mesh (3 ints) from a k-point setting, or None if not a mesh."""
    if atoms.cell.rank != 3:
        return None
    if key == "kspacing":
        try:
            spacing = float(value)
        except (TypeError, ValueError):
            return None
        if not spacing > 0:
            return None
        return np.maximum(1, np.ceil(_reciprocal_lengths(atoms) / spacing - 1e-8)).astype(int)
    if isinstance(value, dict):
        low = {str(k).lower(): v for k, v in value.items()}
        if "size" in low:
            value = low["size"]
        elif "density" in low:
            # ASE convention: kpts_i = ceil(density * |b_i|), b including 2 pi
            dens = float(low["density"])
            return np.maximum(1, np.ceil(dens * _reciprocal_lengths(atoms) - 1e-8)).astype(int)
        else:
            return None
    if isinstance(value, str):
        parts = value.replace("x", " ").replace(",", " ").split()
        try:
            value = [int(p) for p in parts]
        except ValueError:
            return None
    arr = np.asarray(value)
    if arr.shape != (3,) or not np.issubdtype(arr.dtype, np.number):
        return None
    if not np.allclose(arr, np.round(arr)) or np.any(arr < 1):
        return None
    return np.round(arr).astype(int)


def kpoint_density(atoms: Atoms, kpts) -> np.ndarray:
    """K-point density per direction, ``kpts_i / |b_i|``.

    Parameters
    ----------
    atoms : ase.Atoms
        Frame with a 3-D cell (Å).
    kpts : (int, int, int)
        Monkhorst-Pack mesh.

    Returns
    -------
    ndarray, shape (3,)
        K-points per Å^-1 of reciprocal length (units Å), ``b`` including
        2 pi. The k-spacing in Å^-1 is its inverse.

    Examples
    --------
    >>> from ase.build import bulk
    >>> a = bulk("Cu", cubic=True, a=3.6)
    >>> round(float(kpoint_density(a, (6, 6, 6))[0]), 4)  # 6 * 3.6 / (2 pi)
    3.4377
    """
    if atoms.cell.rank != 3:
        raise ValueError("kpoint_density needs a 3-D cell; this frame's cell is degenerate")
    kpts = np.asarray(kpts, dtype=float)
    if kpts.shape != (3,):
        raise ValueError(f"kpts must be a mesh of 3 integers, got {kpts!r}")
    return kpts / _reciprocal_lengths(atoms)


@dataclass
class SettingsGroup:
    """Frames sharing identical DFT settings.

    Attributes
    ----------
    id : int
        Group number (in order of first appearance).
    settings : dict of str to str
        Display value per field (``"-"`` when absent).
    k_density : (float, float) or None
        Range (min, max) of the frames' k-point density (Å; k-points per Å^-1).
    frames : list of int
        Frame indices.
    config_types : dict of str to int
        Frame count per ``config_type``.
    """

    id: int
    settings: dict[str, str]
    k_density: tuple[float, float] | None
    frames: list[int]
    config_types: dict[str, int]


@dataclass
class OffsetTest:
    """Energy-offset test of one group against all other frames.

    Attributes
    ----------
    grouping : str
        ``"config_type"`` or ``"settings"``.
    group : str
        Group name.
    n_frames : int
        Frames in the group.
    mean_meV : float
        Group mean residual (meV/atom), residual = reference - model.
    offset_meV : float
        Group mean minus the mean of all other frames (meV/atom).
    stderr_meV : float
        Standard error of ``offset_meV`` (meV/atom).
    z : float
        ``offset_meV / stderr_meV``.
    p_value : float
        Two-sided normal p-value (not corrected; the flag uses Bonferroni).
    flagged : bool
        Significant and ``|offset_meV|`` above the threshold.
    reference : str
        Frames compared against: ``"all other frames"``, or ``"clean groups"``
        (all other frames of unflagged groups) once some group was flagged.
    """

    grouping: str
    group: str
    n_frames: int
    mean_meV: float
    offset_meV: float
    stderr_meV: float
    z: float
    p_value: float
    flagged: bool
    reference: str = "all other frames"


def _ranges(indices: Sequence[int]) -> str:
    idx = sorted(indices)
    parts, start = [], None
    for k, i in enumerate(idx):
        if start is None:
            start = i
        if k + 1 == len(idx) or idx[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ", ".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[c]) for r in rows]) for c, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


@dataclass
class AuditReport:
    """Result of :func:`audit`.

    Attributes
    ----------
    n_frames : int
        Frames audited.
    groups : list of SettingsGroup
        Frames grouped by identical DFT settings.
    differing : list of str
        Settings fields whose values differ between groups.
    k_density : ndarray, shape (n_frames,)
        Frame k-point density (Å; nan where not available).
    offsets : list of OffsetTest
        Energy-offset tests (empty without residuals).
    threshold_meV : float
        Offset threshold used for flagging (meV/atom).
    alpha : float
        Family-wise significance level used for flagging.
    settings_found : bool
        Whether any frame carried DFT settings.
    residuals : str
        Where the offset tests' residuals came from: ``"leave-one-out"`` (the
        model's own training frames, from its ``training_diagnostics_``),
        ``"model"`` (predictions on frames the model was not trained on),
        ``"in-sample"`` (its training frames without leave-one-out
        diagnostics: offsets are absorbed by the fit and understated),
        ``"given"`` or ``"none"``.
    """

    n_frames: int
    groups: list[SettingsGroup]
    differing: list[str]
    k_density: np.ndarray
    offsets: list[OffsetTest] = field(default_factory=list)
    threshold_meV: float = 5.0
    alpha: float = 0.01
    settings_found: bool = True
    residuals: str = "none"

    @property
    def settings_consistent(self) -> bool:
        """True when all frames share one settings group."""
        return len(self.groups) <= 1

    @property
    def flagged(self) -> list[OffsetTest]:
        """Offset tests that were flagged."""
        return [t for t in self.offsets if t.flagged]

    @property
    def ok(self) -> bool:
        """True when settings are consistent and no offset is flagged."""
        return self.settings_consistent and not self.flagged

    def __str__(self) -> str:
        out = [f"kernelpot audit of {self.n_frames} frames"]
        out.append("")
        if not self.settings_found:
            out.append("DFT settings: none found in atoms.info or atoms.calc.parameters")
        else:
            status = "consistent" if self.settings_consistent else "INCONSISTENT"
            diff = f"; differing: {', '.join(self.differing)}" if self.differing else ""
            out.append(f"DFT settings: {len(self.groups)} group(s), {status}{diff}")
            header = ["group", "n", *_FIELDS, "k-density (Å)", "config_types"]
            rows = []
            for g in self.groups:
                kd = "-" if g.k_density is None else (
                    f"{g.k_density[0]:.3g}" if np.isclose(*g.k_density) else
                    f"{g.k_density[0]:.3g}-{g.k_density[1]:.3g}"
                )
                cts = ", ".join(f"{k}({v})" for k, v in g.config_types.items())
                settings = [g.settings[f] for f in _FIELDS]
                rows.append([str(g.id), str(len(g.frames)), *settings, kd, cts])
            out.append(_table(header, rows))
            if not self.settings_consistent:
                out.append("")
                for g in self.groups:
                    out.append(f"  group {g.id} frames: {_ranges(g.frames)}")
        out.append("")
        if not self.offsets:
            out.append("Energy offsets: not tested (no residuals given, or a single group)")
        else:
            out.append(
                "Energy offsets (residual = reference - model, meV/atom); flagged when "
                f"|offset| > {self.threshold_meV:g} and significant at alpha={self.alpha:g} "
                "(Bonferroni):"
            )
            header = ["grouping", "group", "n", "mean", "offset", "stderr", "z", "p", "vs", "flag"]
            rows = [
                [
                    t.grouping,
                    t.group,
                    str(t.n_frames),
                    f"{t.mean_meV:+.2f}",
                    f"{t.offset_meV:+.2f}",
                    f"{t.stderr_meV:.2f}",
                    f"{t.z:+.1f}",
                    f"{t.p_value:.1e}",
                    t.reference,
                    "OFFSET" if t.flagged else "",
                ]
                for t in self.offsets
            ]
            out.append(_table(header, rows))
        return "\n".join(out)


def _frame_k(atoms: Atoms, kpts_settings: dict[str, object] | None):
    """(k-density, normalized raw value) of a frame's k-point setting."""
    if not kpts_settings:
        return np.nan, None
    key, value = next(iter(kpts_settings.items()))
    mesh = _parse_mesh(key, value, atoms)
    periodic = np.asarray(atoms.pbc, dtype=bool)
    if mesh is None or not periodic.any():
        return np.nan, _normalize(value)
    dens = kpoint_density(atoms, mesh)[periodic]
    sampled = mesh[periodic] > 1
    # a direction sampled by one k-point (slab vacuum, big supercell) says nothing
    # about sampling density when other directions are sampled
    return float(dens[sampled].min() if sampled.any() else dens.min()), None


def _cluster(values: np.ndarray, rtol: float) -> np.ndarray:
    """Labels grouping values whose relative spread is within rtol."""
    labels = np.full(len(values), -1)
    finite = np.flatnonzero(np.isfinite(values))
    order = finite[np.argsort(values[finite])]
    label, start = -1, None
    for i in order:
        if start is None or values[i] > start * (1.0 + rtol):
            label += 1
            start = values[i]
        labels[i] = label
    return labels


def _is_training_set(frames: Sequence[Atoms], model) -> bool:
    """Whether ``frames`` are the model's training frames (same order, numbers and positions)."""
    train = getattr(model, "_train_frames", None)
    if train is None or len(train) != len(frames):
        return False
    return all(a is b or (len(a) == len(b) and np.array_equal(a.numbers, b.numbers)
                          and np.allclose(a.positions, b.positions, rtol=0, atol=1e-8))
               for a, b in zip(frames, train))


def _loo_residuals(frames: Sequence[Atoms], model) -> np.ndarray | None:
    """Structure-leave-one-out energy residuals (eV) from ``model.training_diagnostics_`` (duck typed).

    The diagnostics hold one ``loo_residual`` per observation with ``kind``
    and ``frame``; energies are per atom (eV/atom), so the frame's residual is
    that times its number of atoms.  None when the model has no diagnostics.
    """
    diag = getattr(model, "training_diagnostics_", None)
    if diag is None:
        return None
    kind, frame, r = np.asarray(diag.kind), np.asarray(diag.frame), np.asarray(diag.loo_residual, float)
    res = np.full(len(frames), np.nan)
    sel = kind == "energy"
    res[frame[sel]] = r[sel] * np.array([len(frames[i]) for i in frame[sel]])
    missing = np.flatnonzero(~np.isfinite(res))
    if missing.size:
        raise ValueError(f"frame {missing[0]}: no leave-one-out energy residual in the model's "
                         f"training_diagnostics_ (the frame has no energy label?)")
    return res


def _residuals(frames: Sequence[Atoms], model_residuals) -> tuple[np.ndarray, str]:
    if hasattr(model_residuals, "predict"):
        if _is_training_set(frames, model_residuals):
            # in-sample residuals of a flexible fit absorb a group's offset: use leave-one-out
            loo = _loo_residuals(frames, model_residuals)
            if loo is not None:
                return loo, "leave-one-out"
            import warnings
            warnings.warn("audit: the frames are the model's training set but it has no leave-one-out "
                          "diagnostics (fitted with calibrate=False, or refit/updated); in-sample residuals "
                          "understate offsets: fit with calibrate=True or audit held-out frames",
                          UserWarning, stacklevel=3)
            how = "in-sample"
        else:
            how = "model"
        ref = np.empty(len(frames))
        for i, a in enumerate(frames):
            lab = frame_labels(a, i)
            if "energy" not in lab:
                raise ValueError(f"frame {i}: no reference energy (atoms.calc is None or has no energy)")
            ref[i] = lab["energy"]
        pred = np.asarray(model_residuals.predict(list(frames))["energy"], dtype=float)
        return ref - pred, how
    res = np.asarray(model_residuals, dtype=float)
    if res.shape != (len(frames),):
        raise ValueError(
            f"model_residuals has shape {res.shape}, expected ({len(frames)},): one energy "
            "residual (eV) per frame"
        )
    bad = np.flatnonzero(~np.isfinite(res))
    if bad.size:
        raise ValueError(f"frame {bad[0]}: energy residual is {res[bad[0]]}")
    return res, "given"


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Offset of mean(a) over mean(b), its standard error and z."""
    var_b = b.var(ddof=1) if len(b) > 1 else 0.0
    # a single frame has no spread of its own: assume the scatter of the reference
    var_a = a.var(ddof=1) if len(a) > 1 else var_b
    se = float(np.sqrt(var_a / len(a) + var_b / len(b)))
    offset = float(a.mean() - b.mean())
    if se > 0:
        z = offset / se
    else:
        z = 0.0 if offset == 0 else float(np.copysign(np.inf, offset))
    return offset, se, z


def _offset_tests(
    grouping: str, names: list[str], r_meV: np.ndarray, threshold: float, alpha: float
) -> list[OffsetTest]:
    """Flag groups offset from the rest, removing flagged groups from the reference.

    Groups are flagged one at a time (largest |z| first, the smaller group on a
    tie) and then excluded from the reference pool, so that one offset group
    does not drag the reference and make clean groups look offset.
    """
    uniq = list(dict.fromkeys(names))
    if len(uniq) < 2:
        return []
    names_arr = np.asarray(names, dtype=object)
    masks = {g: names_arr == g for g in uniq}
    z_crit = norm.isf(alpha / (2.0 * len(uniq)))
    flagged: list[str] = []

    def passes(offset: float, z: float) -> bool:
        return abs(z) > z_crit and abs(offset) > threshold

    while len(uniq) - len(flagged) >= 2:
        clean = [g for g in uniq if g not in flagged]
        best = None
        for g in clean:
            pool = np.logical_or.reduce([masks[h] for h in clean if h != g])
            offset, _, z = _compare(r_meV[masks[g]], r_meV[pool])
            if passes(offset, z):
                key = (-abs(z), int(masks[g].sum()))
                if best is None or key < best[0]:
                    best = (key, g)
        if best is None:
            break
        flagged.append(best[1])

    clean = [g for g in uniq if g not in flagged]
    tests = []
    for g in uniq:
        others = [h for h in clean if h != g]
        if others:
            pool = np.logical_or.reduce([masks[h] for h in others])
            reference = "clean groups" if flagged else "all other frames"
        else:
            pool = ~masks[g]
            reference = "all other frames"
        a = r_meV[masks[g]]
        offset, se, z = _compare(a, r_meV[pool])
        tests.append(
            OffsetTest(
                grouping=grouping,
                group=g,
                n_frames=int(masks[g].sum()),
                mean_meV=float(a.mean()),
                offset_meV=offset,
                stderr_meV=se,
                z=float(z),
                p_value=float(2.0 * norm.sf(abs(z))),
                flagged=g in flagged,
                reference=reference,
            )
        )
    return tests


def audit(
    frames: Sequence[Atoms],
    model_residuals=None,
    *,
    n_atoms: Sequence[int] | None = None,
    threshold_meV: float = 5.0,
    alpha: float = 0.01,
    k_rtol: float = 0.05,
) -> AuditReport:
    """Check a training set for mixed DFT settings and per-atom energy offsets.

    Nothing is dropped or modified; the report says what differs and where.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Training frames, with ``info["config_type"]`` where known and DFT
        settings in ``info`` or ``calc.parameters`` where known.
    model_residuals : array of shape (n_frames,) or fitted model, optional
        Per-frame energy residuals ``E_reference - E_model`` (eV), or a model
        exposing ``predict(frames) -> {"energy": (n_frames,)}`` from which they
        are computed against the frames' reference energies
        (:func:`kernelpot.io.labels.frame_labels`).  When ``frames`` are the
        model's own training frames, its structure-leave-one-out residuals
        (``model.training_diagnostics_``, kept by a fit with ``calibrate=True``)
        are used instead: in-sample residuals absorb a group's offset.
    n_atoms : sequence of int, optional
        Atoms per frame for the per-atom normalisation; defaults to ``len(frame)``.
    threshold_meV : float, default 5.0
        Smallest per-atom offset (meV/atom) worth flagging.
    alpha : float, default 0.01
        Family-wise significance level of the offset z-tests (Bonferroni over
        the groups of one grouping).
    k_rtol : float, default 0.05
        Relative tolerance within which k-point densities count as equal.

    Returns
    -------
    AuditReport
        Settings groups, differing fields, per-frame k-density and offset
        tests; ``print(report)`` gives tables.

    Examples
    --------
    >>> from ase.build import bulk
    >>> frames = [bulk("Cu"), bulk("Cu")]
    >>> frames[0].info.update(encut=400, kpts=(8, 8, 8))
    >>> frames[1].info.update(encut=520, kpts=(8, 8, 8))
    >>> audit(frames).differing
    ['encut']
    """
    frames = list(frames)
    if not frames:
        raise ValueError("audit needs at least one frame")
    for i, a in enumerate(frames):
        if not isinstance(a, Atoms):
            raise TypeError(f"frame {i}: expected ase.Atoms, got {type(a).__name__}")
    if not threshold_meV >= 0:
        raise ValueError(f"threshold_meV must be >= 0, got {threshold_meV!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not k_rtol >= 0:
        raise ValueError(f"k_rtol must be >= 0, got {k_rtol!r}")

    config_types = [str(a.info.get("config_type", "<none>")) for a in frames]
    raw = [dft_settings(a) for a in frames]
    settings_found = any(raw)

    k_density = np.full(len(frames), np.nan)
    k_raw = []
    for i, (a, s) in enumerate(zip(frames, raw)):
        k_density[i], r = _frame_k(a, s.get("kpts"))
        k_raw.append(r)
    k_labels = _cluster(k_density, k_rtol)

    signatures = []
    for i, s in enumerate(raw):
        sig = []
        for f in _FIELDS:
            if f == "kpts":
                if k_labels[i] >= 0:
                    sig.append(("kpts", ("density", int(k_labels[i]))))
                elif k_raw[i] is not None:
                    sig.append(("kpts", ("raw", k_raw[i])))
                else:
                    sig.append(("kpts", None))
                continue
            vals = s.get(f)
            if vals is None:
                sig.append((f, None))
            else:
                sig.append((f, tuple(sorted((k, _normalize(v)) for k, v in vals.items()))))
        signatures.append(tuple(sig))

    group_of: dict[tuple, int] = {}
    members: dict[int, list[int]] = {}
    for i, sig in enumerate(signatures):
        gid = group_of.setdefault(sig, len(group_of))
        members.setdefault(gid, []).append(i)

    groups = []
    for sig, gid in group_of.items():
        idx = members[gid]
        first = raw[idx[0]]
        shown = {}
        for f in _FIELDS:
            if not first.get(f):
                shown[f] = _MISSING
            elif f == "kpts" and np.isfinite(k_density[idx[0]]):
                # one density group may hold different meshes (different cells)
                shown[f] = " | ".join(sorted({_show(raw[i]["kpts"]) for i in idx}))
            else:
                shown[f] = _show(first[f])
        kd = k_density[idx]
        kd = kd[np.isfinite(kd)]
        groups.append(
            SettingsGroup(
                id=gid,
                settings=shown,
                k_density=None if kd.size == 0 else (float(kd.min()), float(kd.max())),
                frames=idx,
                config_types=dict(Counter(config_types[i] for i in idx)),
            )
        )

    differing = []
    if len(groups) > 1:
        for pos, f in enumerate(_FIELDS):
            if len({sig[pos][1] for sig in group_of}) > 1:
                differing.append(f)

    offsets: list[OffsetTest] = []
    if model_residuals is not None:
        res, how = _residuals(frames, model_residuals)
        counts = np.asarray([len(a) for a in frames] if n_atoms is None else n_atoms, dtype=float)
        if counts.shape != (len(frames),) or np.any(counts < 1):
            raise ValueError(
                f"n_atoms must hold one positive count per frame ({len(frames)}), got {counts!r}"
            )
        r_meV = 1000.0 * res / counts
        offsets += _offset_tests("config_type", config_types, r_meV, threshold_meV, alpha)
        if len(groups) > 1:
            names = [""] * len(frames)
            for g in groups:
                for i in g.frames:
                    names[i] = f"settings {g.id}"
            offsets += _offset_tests("settings", names, r_meV, threshold_meV, alpha)

    return AuditReport(
        n_frames=len(frames),
        groups=groups,
        differing=differing,
        k_density=k_density,
        offsets=offsets,
        threshold_meV=threshold_meV,
        alpha=alpha,
        settings_found=settings_found,
        residuals="none" if model_residuals is None else how,
    )
