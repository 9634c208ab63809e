"""Matplotlib figures for accuracy, uncertainty calibration and training-set diagnostics.

Every function accepts an optional ``ax=`` (draw into an existing Axes) and
returns ``(fig, ax)`` (``(fig, axes)`` for multi-panel figures). New figures
are plain :class:`matplotlib.figure.Figure` objects, not registered with
pyplot, so nothing here depends on the backend or calls ``plt.show()``; save
with ``fig.savefig(path)`` or display one in a notebook by evaluating it.

All figures share one look (:func:`_style`) and the colour-blind-safe
Okabe-Ito palette; continuous values use ``viridis``.

This module is imported on demand (``import kernelpot.plot``), not by
``import kernelpot``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from ase.units import GPa
from numpy.typing import ArrayLike
from scipy import special, stats

from kernelpot.uq import metrics

__all__ = [
    "calibration",
    "error_vs_sigma",
    "influence",
    "learning_curve",
    "parity",
    "parity_panel",
    "sparse_coverage",
    "z_histogram",
]

# Okabe & Ito (2008), distinguishable under the common colour-vision deficiencies.
PALETTE = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)
_CMAP = "viridis"
_REF_COLOR = "0.35"  # reference lines (diagonals, thresholds, N(0, 1))
_FIGSIZE = (4.2, 3.8)

def _style(ax: Axes) -> Axes:
    """Apply the house look to ``ax``: light grid, open top/right spines."""
    ax.grid(True, which="major", color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(direction="out", labelsize=9)
    ax.xaxis.label.set_size(10)
    ax.yaxis.label.set_size(10)
    return ax


def _new_axes(ax: Axes | None, figsize=_FIGSIZE) -> tuple[Figure, Axes]:
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    return fig, ax


def _legend(ax: Axes, **kwargs) -> None:
    ax.legend(frameon=False, fontsize=8, **kwargs)


def _flat_pair(a, b, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(
            f"{names[0]} has shape {x.shape} but {names[1]} has shape {y.shape}; they must match"
        )
    return x.ravel(), y.ravel()


def _as_mask(selection, n: int, name: str) -> np.ndarray:
    """Boolean mask of length ``n`` from a mask or an index array (None -> all False)."""
    mask = np.zeros(n, dtype=bool)
    if selection is None:
        return mask
    sel = np.asarray(selection)
    if sel.dtype == bool:
        if sel.shape != (n,):
            raise ValueError(f"{name} is a boolean mask of shape {sel.shape}, expected ({n},)")
        return sel.copy()
    if sel.size == 0:
        return mask
    if not np.issubdtype(sel.dtype, np.integer):
        raise ValueError(f"{name} must be a boolean mask or integer indices, got dtype {sel.dtype}")
    sel = sel.ravel()
    out = (sel < -n) | (sel >= n)
    if np.any(out):
        raise ValueError(f"{name} has index {int(sel[out][0])} out of range for {n} points")
    mask[sel] = True
    return mask


def _next_color(ax: Axes) -> str:
    n = sum(1 for line in ax.lines if line.get_gid() == "data")
    return PALETTE[n % len(PALETTE)]


def _log_ticks(ax: Axes) -> None:
    """Readable tick labels on log axes whose limits are set.

    Matplotlib's default labels minor ticks on axes spanning about a decade
    or less, and ``2×10^-2``, ``3×10^-2`` ... then run into each other.  Here
    only the major ticks carry labels, plain numbers (``0.02``), at 1-2-5
    steps when the range is short and at powers of ten when it is long.
    """
    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log" or not (0 < lo < hi):
            continue
        decades = np.log10(hi / lo)
        subs = (1.0,) if decades > 2.5 else (1.0, 2.0, 5.0) if decades > 0.8 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
        axis.set_major_locator(mpl.ticker.LogLocator(base=10.0, subs=subs))
        axis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(mpl.ticker.NullFormatter())


def _axis_label(text: str, units: str | None) -> str:
    return f"{text} ({units})" if units else text


# --------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------
def parity(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    sigma: ArrayLike | None = None,
    ax: Axes | None = None,
    quantity: str = "energy",
    units: str = "meV/atom",
    label: str | None = None,
) -> tuple[Figure, Axes]:
    """Parity plot of predicted against reference values.

    Parameters
    ----------
    y_true, y_pred : array_like, same shape
        Reference and predicted values, already in ``units`` (no conversion
        is done here). Flattened; pairs with a non-finite value are dropped.
    sigma : array_like, optional, same shape
        Predicted standard deviations in ``units``; points are coloured by
        it and a colorbar is added.
    ax : Axes, optional
        Axes to draw into; a new figure is made otherwise.
    quantity : str, default "energy"
        Name used in the axis labels.
    units : str, default "meV/atom"
        Unit label for axes and legend.
    label : str, optional
        Prefix for the legend entry (e.g. a model name).

    Returns
    -------
    fig : Figure
    ax : Axes
        One scatter collection (the points) and one line (the diagonal);
        the legend shows MAE and RMSE.

    Examples
    --------
    >>> fig, ax = parity([0.0, 1.0, 2.0], [0.1, 0.9, 2.2], units="eV")
    >>> len(ax.collections), len(ax.lines)
    (1, 1)
    """
    t, p = _flat_pair(y_true, y_pred, ("y_true", "y_pred"))
    s = None
    if sigma is not None:
        _, s = _flat_pair(np.asarray(y_true, dtype=float), sigma, ("y_true", "sigma"))
    keep = np.isfinite(t) & np.isfinite(p)
    if not np.any(keep):
        raise ValueError(f"parity: no finite ({quantity}) pairs of y_true and y_pred to plot")
    t, p = t[keep], p[keep]
    err = p - t
    text = f"MAE {np.mean(np.abs(err)):.3g}, RMSE {np.sqrt(np.mean(err**2)):.3g} {units}"
    if label:
        text = f"{label}: {text}"

    fig, ax = _new_axes(ax)
    _style(ax)
    common = dict(s=10, linewidths=0, alpha=0.8, label=text, zorder=2)
    if s is not None:
        cmap = mpl.colormaps[_CMAP].with_extremes(bad="0.6")
        points = ax.scatter(t, p, c=s[keep], cmap=cmap, **common)
        # on top, not at the side: a side colour bar's label crowds the next panel of parity_panel
        cbar = fig.colorbar(points, ax=ax, location="top", fraction=0.05, pad=0.02, aspect=30)
        cbar.set_label(_axis_label("predicted σ", units), fontsize=9)
        cbar.ax.tick_params(labelsize=8)
        cbar.ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(4))
    else:
        ax.scatter(t, p, color=PALETTE[0], **common)

    lo = float(min(t.min(), p.min()))
    hi = float(max(t.max(), p.max()))
    pad = 0.04 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color=_REF_COLOR, linestyle="--", linewidth=0.8, zorder=1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(_axis_label(f"reference {quantity}", units))
    ax.set_ylabel(_axis_label(f"predicted {quantity}", units))
    _legend(ax, loc="upper left")
    return fig, ax


def parity_panel(
    pred: Mapping[str, ArrayLike],
    ref: Mapping[str, ArrayLike],
    axes: Sequence[Axes] | None = None,
) -> tuple[Figure, np.ndarray]:
    """Parity plots for energy, force components and stress side by side.

    Parameters
    ----------
    pred : mapping
        Predictions as returned by ``SparseGP.predict``: ``"energy"``
        ``(n_frames,)`` eV, ``"forces"`` ``(n_atoms_total, 3)`` eV/Å,
        ``"stress"`` ``(n_frames, 6)`` eV/Å^3, and optionally the matching
        ``"energy_std"``, ``"forces_std"``, ``"stress_std"``.
    ref : mapping
        Reference values under the same keys and units, plus ``"n_atoms"``
        ``(n_frames,)`` for per-atom energies (looked up in ``pred`` if
        absent from ``ref``; without it total energies in eV are shown).
    axes : sequence of Axes, optional
        One Axes per panel drawn; a new figure is made otherwise.

    Returns
    -------
    fig : Figure
    axes : ndarray of Axes, shape (n_panels,)
        Panels in the order energy (meV/atom), forces (eV/Å), stress (GPa);
        a quantity missing from either mapping, or entirely NaN (stress of
        non-periodic frames), gets no panel.

    Examples
    --------
    >>> ref = {"energy": np.array([-10.0, -12.0]), "n_atoms": np.array([2, 2])}
    >>> pred = {"energy": np.array([-10.01, -11.98]), "energy_std": np.array([0.01, 0.02])}
    >>> fig, axes = parity_panel(pred, ref)
    >>> len(axes)
    1
    """
    n_atoms = ref.get("n_atoms", pred.get("n_atoms"))
    panels = []
    for key, quantity in (("energy", "energy"), ("forces", "force"), ("stress", "stress")):
        if key not in pred or key not in ref:
            continue
        y_p = np.asarray(pred[key], dtype=float)
        y_t = np.asarray(ref[key], dtype=float)
        if y_p.shape != y_t.shape:
            raise ValueError(
                f"pred[{key!r}] has shape {y_p.shape} but ref[{key!r}] has shape {y_t.shape}"
            )
        std = pred.get(f"{key}_std")
        std = None if std is None else np.asarray(std, dtype=float)
        if std is not None and std.shape != y_p.shape:
            raise ValueError(
                f"pred[{key + '_std'!r}] has shape {std.shape} but pred[{key!r}] has shape {y_p.shape}"
            )
        if key == "energy":
            if n_atoms is not None:
                n = np.asarray(n_atoms, dtype=float)
                if n.shape != y_p.shape:
                    raise ValueError(
                        f"n_atoms has shape {n.shape} but energy has shape {y_p.shape}"
                    )
                scale, units = 1000.0 / n, "meV/atom"
            else:
                scale, units = 1.0, "eV"
        elif key == "forces":
            scale, units = 1.0, "eV/Å"
        else:
            scale, units = 1.0 / GPa, "GPa"  # display only: eV/Å^3 -> GPa
        if not np.any(np.isfinite(y_p) & np.isfinite(y_t)):
            continue
        panels.append(
            (y_t * scale, y_p * scale, None if std is None else std * scale, quantity, units)
        )
    if not panels:
        raise ValueError(
            "parity_panel: pred and ref share no finite 'energy', 'forces' or 'stress'"
        )
    if axes is None:
        fig = Figure(figsize=(_FIGSIZE[0] * len(panels), _FIGSIZE[1]), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
    else:
        axes = np.asarray(axes, dtype=object).ravel()
        if axes.size < len(panels):
            raise ValueError(f"axes has {axes.size} Axes but {len(panels)} panels are needed")
        axes = axes[: len(panels)]
        fig = axes[0].figure
    for ax, (t, p, s, quantity, units) in zip(axes, panels):
        parity(t, p, sigma=s, ax=ax, quantity=quantity, units=units)
    return fig, np.asarray(axes, dtype=object)


# --------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------
def calibration(
    errors: ArrayLike,
    sigma: ArrayLike,
    ax: Axes | None = None,
    n_bins: int = 10,
    label: str | None = None,
    units: str | None = None,
) -> tuple[Figure, Axes]:
    """Error-based calibration curve: binned RMSE against root mean variance.

    Uses :func:`kernelpot.metrics.calibration_curve` (equal-count bins of
    sigma). Call repeatedly on the same ``ax`` with different ``label`` to
    overlay models; the ``y = x`` diagonal is drawn once and stretched to
    cover all curves.

    Parameters
    ----------
    errors, sigma : array_like, same shape
        Signed errors and predicted standard deviations, same units.
    ax : Axes, optional
        Axes to draw into; a new figure is made otherwise.
    n_bins : int, default 10
        Number of sigma bins.
    label : str, optional
        Legend label (the ENCE is appended).
    units : str, optional
        Unit label for the axes.

    Returns
    -------
    fig : Figure
    ax : Axes
        Log-log axes with one line per curve (``gid="data"``) and one
        diagonal (``gid="diagonal"``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> s = rng.uniform(0.1, 1.0, 2000)
    >>> fig, ax = calibration(rng.normal(size=s.size) * s, s, label="GP")
    >>> len(ax.lines)
    2
    """
    curve = metrics.calibration_curve(errors, sigma, n_bins=n_bins)
    fig, ax = _new_axes(ax)
    _style(ax)
    text = f"ENCE {curve.ence:.3f}"
    ax.plot(
        curve.rmv,
        curve.rmse,
        marker="o",
        markersize=4,
        color=_next_color(ax),
        label=f"{label} ({text})" if label else text,
        gid="data",
        zorder=2,
    )
    ax.set_xscale("log")
    ax.set_yscale("log")

    values = np.concatenate(
        [np.concatenate(line.get_data()) for line in ax.lines if line.get_gid() == "data"]
    )
    values = values[np.isfinite(values) & (values > 0)]
    lo, hi = (values.min() / 1.5, values.max() * 1.5) if values.size else (0.1, 10.0)
    diagonal = [line for line in ax.lines if line.get_gid() == "diagonal"]
    if diagonal:
        diagonal[0].set_data([lo, hi], [lo, hi])
    else:
        ax.plot(
            [lo, hi], [lo, hi], color=_REF_COLOR, linestyle="--", linewidth=0.8,
            gid="diagonal", zorder=1,
        )
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    _log_ticks(ax)
    ax.set_xlabel(_axis_label("root mean variance (RMV)", units))
    ax.set_ylabel(_axis_label("RMSE", units))
    _legend(ax, loc="upper left")
    return fig, ax


def error_vs_sigma(
    errors: ArrayLike,
    sigma: ArrayLike,
    ax: Axes | None = None,
    k: Sequence[float] = (1.0, 2.0, 3.0),
    units: str | None = None,
) -> tuple[Figure, Axes]:
    """Absolute error against predicted sigma, with ``|error| = k sigma`` guides.

    Parameters
    ----------
    errors, sigma : array_like, same shape
        Signed errors and predicted standard deviations, same units; NaN
        entries are skipped.
    ax : Axes, optional
        Axes to draw into; a new figure is made otherwise.
    k : sequence of float, default (1, 2, 3)
        Guide lines; the legend gives the observed fraction below each and
        the Gaussian expectation.
    units : str, optional
        Unit label for the axes.

    Returns
    -------
    fig : Figure
    ax : Axes
        Log-log axes with one scatter collection and ``len(k)`` lines.

    Examples
    --------
    >>> fig, ax = error_vs_sigma([0.1, -0.5, 0.02], [0.2, 0.3, 0.05])
    >>> len(ax.collections), len(ax.lines)
    (1, 3)
    """
    e, s, _ = metrics._clean_pair(errors, sigma)
    abs_e = np.abs(e)
    fig, ax = _new_axes(ax)
    _style(ax)
    ax.scatter(s, abs_e, s=6, color=PALETTE[0], alpha=0.5, linewidths=0, zorder=2)
    x = np.geomspace(s.min(), s.max(), 50) if s.max() > s.min() else np.array([s[0] / 2, s[0] * 2])
    observed = metrics._coverage(e / s, tuple(k))
    styles = ("--", "-.", ":", (0, (5, 1, 1, 1)))
    for i, (kk, frac) in enumerate(zip(k, np.atleast_1d(observed))):
        expected = special.erf(kk / np.sqrt(2.0))
        ax.plot(
            x,
            kk * x,
            color=PALETTE[(i + 1) % len(PALETTE)],
            linestyle=styles[i % len(styles)],
            linewidth=1.0,
            label=f"{kk:g}σ: {100 * frac:.1f}% below (Gaussian {100 * expected:.1f}%)",
            zorder=1,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.autoscale_view()
    # the points fill the lower 70 % of the height, the legend the band above them
    pos = abs_e[abs_e > 0]
    if pos.size:
        lo = float(pos.min()) / 1.5
        hi = float(pos.max()) * 1.5
        ax.set_ylim(lo, 10 ** (np.log10(lo) + np.log10(hi / lo) / 0.7))
    _log_ticks(ax)
    ax.set_xlabel(_axis_label("predicted σ", units))
    ax.set_ylabel(_axis_label("|error|", units))
    _legend(ax, loc="upper left")
    return fig, ax


def z_histogram(
    errors: ArrayLike,
    sigma: ArrayLike,
    ax: Axes | None = None,
    bins: int = 40,
) -> tuple[Figure, Axes]:
    """Histogram of z-scores ``error / sigma`` with the standard normal density.

    The range is symmetric, at least ±4 and wide enough for 99% of the
    points; the bars are normalised by the total count, so points beyond the
    range (reported in the legend) lower the bars rather than being ignored.

    Parameters
    ----------
    errors, sigma : array_like, same shape
        Signed errors and predicted standard deviations, same units.
    ax : Axes, optional
        Axes to draw into; a new figure is made otherwise.
    bins : int, default 40
        Number of histogram bins.

    Returns
    -------
    fig : Figure
    ax : Axes
        ``bins`` bar patches and one line (the N(0, 1) density).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> fig, ax = z_histogram(rng.normal(size=500), np.ones(500), bins=20)
    >>> len(ax.patches), len(ax.lines)
    (20, 1)
    """
    e, s, _ = metrics._clean_pair(errors, sigma)
    z = e / s
    n = z.size
    lim = max(4.0, 1.05 * float(np.quantile(np.abs(z), 0.99)))
    edges = np.linspace(-lim, lim, int(bins) + 1)
    n_out = int(np.sum(np.abs(z) > lim))
    fig, ax = _new_axes(ax)
    _style(ax)
    text = f"z (n={n}, mean z² = {np.mean(z * z):.2f})"
    if n_out:
        text += f", {n_out} beyond ±{lim:.1f}"
    ax.hist(
        z, bins=edges, weights=np.full(n, 1.0 / (n * (edges[1] - edges[0]))),
        color=PALETTE[0], alpha=0.6, label=text,
    )
    x = np.linspace(-lim, lim, 400)
    ax.plot(x, stats.norm.pdf(x), color=_REF_COLOR, linewidth=1.2, label="N(0, 1)")
    ax.set_xlim(-lim, lim)
    # headroom above the tallest bar or curve, so the legend covers no bar
    top = max(max((p.get_height() for p in ax.patches), default=0.0), float(stats.norm.pdf(0.0)))
    ax.set_ylim(0.0, 1.5 * top)
    ax.set_xlabel("z = error / σ (dimensionless)")
    ax.set_ylabel("probability density")
    _legend(ax, loc="upper center")
    return fig, ax


# --------------------------------------------------------------------------
# training-set diagnostics
# --------------------------------------------------------------------------
def influence(
    leverage: ArrayLike,
    z: ArrayLike,
    labels: Sequence[str] | None = None,
    flagged: ArrayLike | None = None,
    ax: Axes | None = None,
    z_threshold: float | None = 3.0,
    max_labels: int = 10,
    points: str = "observations",
) -> tuple[Figure, Axes]:
    """Leverage against leave-one-out z-score, the most extreme flagged points labelled.

    Parameters
    ----------
    leverage : array_like, shape (n,)
        Leverage (hat-matrix diagonal) of each observation, dimensionless.
    z : array_like, shape (n,)
        Leave-one-out z-scores of the same observations.
    labels : sequence of str, optional, length n
        Text for flagged points (default: their index).
    flagged : array_like, optional
        Boolean mask of length n or integer indices of points to highlight.
    ax : Axes, optional
        Axes to draw into; a new figure is made otherwise.
    z_threshold : float or None, default 3.0
        Draw horizontal guides at ``±z_threshold``, each labelled at the right
        margin (and named in the legend); None for none.
    max_labels : int, default 10
        At most this many flagged points are labelled: those with the largest
        ``|z|`` (fewer if the axes are too short to stack them). The legend
        says how many of the flagged points carry a label.
    points : str, default "observations"
        What the points are, for the legend (``"structures"`` for a screen).

    Log (symlog for z) axes are used where the values span more than two
    decades, with ticks at 0 and whole decades written as plain numbers.
    Labels are stacked so that they neither overlap nor leave the axes (too
    long a label is shortened with "…"); the legend sits above the axes.

    Returns
    -------
    fig : Figure
    ax : Axes
        One scatter collection for unflagged points, a second for flagged
        points (only when any are flagged), one annotation per labelled
        point (``gid="flag-label"``), two threshold lines and their labels
        (text with ``gid="threshold-label"``).

    Examples
    --------
    >>> fig, ax = influence([0.1, 0.2, 0.9], [0.5, -4.0, 1.0], labels=["a", "b", "c"], flagged=[1, 2])
    >>> len(ax.collections), sorted(t.get_text() for t in ax.texts if t.get_gid() == "flag-label")
    (2, ['b', 'c'])
    """
    h, zz = _flat_pair(leverage, z, ("leverage", "z"))
    n = h.size
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has length {len(labels)}, expected {n} (one per point)")
    if not (isinstance(max_labels, (int, np.integer)) and max_labels >= 0):
        raise ValueError(f"max_labels must be a non-negative integer, got {max_labels!r}")
    mask = _as_mask(flagged, n, "flagged")
    finite = np.isfinite(h) & np.isfinite(zz)
    fig, ax = _new_axes(ax)
    _style(ax)
    normal = finite & ~mask
    ax.scatter(h[normal], zz[normal], s=10, color=PALETTE[0], alpha=0.6, linewidths=0,
               label=f"{points} ({int(normal.sum())})", zorder=2)
    shown = np.flatnonzero(finite & mask)
    # who gets a label: the most extreme first (ties: larger leverage first)
    priority = shown[np.lexsort((-h[shown], -np.abs(zz[shown])))]
    flagged_dots = None
    if shown.size:
        flagged_dots = ax.scatter(h[shown], zz[shown], s=28, color=PALETTE[1], edgecolors="k",
                                  linewidths=0.5, label=f"flagged ({shown.size})", zorder=3)
    if z_threshold is not None:
        for sign in (1.0, -1.0):
            ax.axhline(sign * z_threshold, color=_REF_COLOR, linestyle="--", linewidth=0.8, zorder=1,
                       label=f"flag threshold |z| = {z_threshold:.3g}" if sign > 0 else None)
    # log axes where the values span decades (a gross error at z ~ 1000 next to clean ones at 1)
    hp = h[finite & (h > 0)]
    if hp.size and hp.max() > 100 * hp.min():
        ax.set_xscale("log")
    az = np.abs(zz[finite])
    if az.size and az.max() > 100 * max(np.median(az), 1e-12):
        lin = max(float(z_threshold) if z_threshold is not None else 1.0, 1.0)
        ax.set_yscale("symlog", linthresh=lin, linscale=0.5)
        if np.all(zz[finite] >= 0):
            ax.set_ylim(bottom=0)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 2.0)  # headroom for the top label
        _symlog_ticks(ax, lin)
    _log_ticks(ax)
    if z_threshold is not None:
        # labels of the threshold lines, in the right margin like tick labels (never on the data)
        lo, hi = ax.get_ylim()
        for sign, symbol in ((1.0, "+"), (-1.0, "\u2212")):
            if not lo <= sign * z_threshold <= hi:      # e.g. -threshold when all z >= 0
                continue
            ax.text(1.01, sign * z_threshold, f"z = {symbol}{z_threshold:.3g}",
                    transform=ax.get_yaxis_transform(), ha="left", va="center", fontsize=7,
                    color=_REF_COLOR, clip_on=False, gid="threshold-label")
    ax.set_xlabel("leverage (own labels' weight in own fit, tr H)")
    ax.set_ylabel("leave-one-out z-score")
    n_label = min(int(max_labels), shown.size)

    def flagged_text(k):
        return f"flagged ({shown.size}; {k} largest |z| labelled)" if k < shown.size else \
            f"flagged ({shown.size})"

    if flagged_dots is not None:
        flagged_dots.set_label(flagged_text(n_label))
    # compact legend above the axes, out of the data's way
    ax.legend(frameon=False, fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.01), borderaxespad=0.0,
              ncols=2, handletextpad=0.3, columnspacing=1.0)
    if n_label:
        fig.draw_without_rendering()  # final layout and the transforms of log/symlog axes
        n_done = _label_points(ax, fig, h, zz, priority[:n_label], labels)
        if n_done < n_label:
            flagged_dots.set_label(flagged_text(n_done))
            ax.legend(frameon=False, fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.01),
                      borderaxespad=0.0, ncols=2, handletextpad=0.3, columnspacing=1.0)
    return fig, ax


def _symlog_ticks(ax: Axes, linthresh: float) -> None:
    """Symlog y ticks: 0 and whole decades beyond ``linthresh`` as plain numbers, unlabelled minors.

    Matplotlib's default puts ``10^0``, ``0`` and ``-10^0`` in the squeezed
    linear part, where they run into each other, and writes every decade in
    powers of ten.
    """
    lo, hi = ax.get_ylim()
    top = max(abs(lo), abs(hi))
    k0 = int(np.ceil(np.log10(linthresh)))
    k1 = int(np.floor(np.log10(top))) if top > 0 else k0 - 1
    every = max(1, int(np.ceil((k1 - k0 + 1) / 4)))          # at most ~4 decades labelled per side
    decades = [10.0 ** k for k in range(k0, k1 + 1) if (k - k0) % every == 0]
    major = [0.0] + [s * d for d in decades for s in (1.0, -1.0)]
    minor = [s * m * 10.0 ** k for k in range(k0 - 1, k1 + 1) for m in range(2, 10) for s in (1.0, -1.0)
             if m * 10.0 ** k > linthresh]
    major = sorted(v for v in major if lo <= v <= hi)
    minor = sorted(v for v in minor if lo <= v <= hi and v not in major)
    ax.yaxis.set_major_locator(mpl.ticker.FixedLocator(major))
    ax.yaxis.set_minor_locator(mpl.ticker.FixedLocator(minor))

    def fmt(v, _):
        if v == 0:
            return "0"
        sign = "\u2212" if v < 0 else ""
        return f"{sign}{abs(v):g}" if abs(v) < 1e5 else f"{sign}$10^{{{int(round(np.log10(abs(v))))}}}$"

    ax.yaxis.set_major_formatter(mpl.ticker.FuncFormatter(fmt))
    ax.yaxis.set_minor_formatter(mpl.ticker.NullFormatter())


def _label_points(ax: Axes, fig: Figure, x: np.ndarray, y: np.ndarray, idx: np.ndarray, labels) -> int:
    """Annotate the points ``idx`` (in priority order) without overlap and inside the axes.

    As many as fit stacked in the axes height are labelled (the first ones of
    ``idx``); returns how many. Labels go to the right of their point (left
    when they would not fit there; pinned to the nearer axes edge when they fit
    on neither side; shortened with "…" only when wider than the axes), and
    are pushed apart vertically in display space: a top-down
    pass, then a bottom-up one so that none is pushed below the axes. A thin
    line joins a moved label to its point. Needs a drawn figure.
    """
    to_disp = ax.transData.transform
    text_box = mpl.text.Text.get_window_extent    # the text alone, without the leader line
    bbox = ax.get_window_extent()
    dpp = fig.dpi / 72.0                     # pixels per point
    fontsize = 7
    step = 1.35 * fontsize * dpp             # line height, pixels
    pad = 2.0 * dpp                          # kept free at the axes edges, pixels
    gap = 6.0 * dpp                          # point to text, pixels
    n_fit = int((bbox.height - 2 * pad) // step)
    idx = np.asarray(idx)[:max(n_fit, 0)]
    if idx.size == 0:
        return 0
    pts = to_disp(np.column_stack([x[idx], y[idx]]))
    order = np.argsort(-pts[:, 1], kind="stable")            # top down
    ty = np.empty(idx.size)
    prev = np.inf
    for k in order:
        ty[k] = min(pts[k, 1], bbox.y1 - pad - step / 2, prev - step)
        prev = ty[k]
    nxt = -np.inf
    for k in order[::-1]:                                     # bottom up
        ty[k] = max(ty[k], bbox.y0 + pad + step / 2, nxt + step)
        nxt = ty[k]
    for k in range(idx.size):
        i = idx[k]
        px, py = pts[k]
        text = str(labels[i]) if labels is not None else str(i)
        ann = ax.annotate(
            text, (x[i], y[i]), xytext=(gap / dpp, (ty[k] - py) / dpp), textcoords="offset points",
            fontsize=fontsize, ha="left", va="center", annotation_clip=False, gid="flag-label",
            arrowprops={"arrowstyle": "-", "color": _REF_COLOR, "linewidth": 0.5, "shrinkA": 0, "shrinkB": 2},
        )
        room_right = bbox.x1 - pad - (px + gap)
        room_left = (px - gap) - (bbox.x0 + pad)
        width = text_box(ann).width
        if width > room_right and room_left > room_right:    # the left side has more room
            ann.set_horizontalalignment("right")
            ann.xyann = (-gap / dpp, ann.xyann[1])
            room = room_left
        else:
            room = room_right
        if room < width:
            # fits on neither side of its point: pin it to the nearer axes edge (the leader line
            # still joins it to its point), shortened only if wider than the axes themselves
            inner = bbox.width - 2 * pad
            while len(text) > 1 and text_box(ann).width > inner:
                text = text[:-2] + "…"          # drops one character (two the first time) each pass
                ann.set_text(text)
            if px - bbox.x0 < bbox.x1 - px:
                ann.set_horizontalalignment("left")
                ann.xyann = ((bbox.x0 + pad - px) / dpp, ann.xyann[1])
            else:
                ann.set_horizontalalignment("right")
                ann.xyann = ((bbox.x1 - pad - px) / dpp, ann.xyann[1])
    return int(idx.size)


def learning_curve(
    n_train: ArrayLike,
    errors: Mapping[str, ArrayLike],
    ax: Axes | None = None,
    ylabel: str = "RMSE",
    units: str | None = None,
) -> tuple[Figure, Axes]:
    """Test error against training-set size, log-log, one line per model.

    Parameters
    ----------
    n_train : array_like, shape (n_sizes,)
        Training-set sizes (positive).
    errors : mapping of str to array_like
        Label -> errors of shape ``(n_sizes,)``, or ``(n_sizes, n_repeats)``
        for repeated fits: the mean is drawn with a min-max band.
    ax : Axes, optional
        Axes to draw into; a new figure is made otherwise.
    ylabel : str, default "RMSE"
        Name of the error measure.
    units : str, optional
        Unit label for the y axis.

    Returns
    -------
    fig : Figure
    ax : Axes
        One line per entry of ``errors`` (plus one band per 2-D entry).

    Examples
    --------
    >>> fig, ax = learning_curve([10, 100, 1000], {"GP": [1.0, 0.5, 0.2]})
    >>> len(ax.lines)
    1
    """
    n = np.asarray(n_train, dtype=float).ravel()
    if n.size == 0 or not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise ValueError(f"n_train must be positive finite sizes, got {n_train!r}")
    if not errors:
        raise ValueError("errors is empty; give at least one {label: errors} entry")
    fig, ax = _new_axes(ax)
    _style(ax)
    for label, err in errors.items():
        a = np.asarray(err, dtype=float)
        if a.ndim not in (1, 2) or a.shape[0] != n.size:
            raise ValueError(
                f"errors[{label!r}] has shape {a.shape}, expected ({n.size},) or "
                f"({n.size}, n_repeats) to match n_train"
            )
        color = _next_color(ax)
        text = str(label)
        if a.ndim == 2:
            mean = np.nanmean(a, axis=1)
            ax.fill_between(n, np.nanmin(a, axis=1), np.nanmax(a, axis=1), color=color,
                            alpha=0.2, linewidth=0)
            text += f" (mean; band: min-max of {a.shape[1]} fits)"
        else:
            mean = a
        ax.plot(n, mean, marker="o", markersize=4, color=color, label=text, gid="data")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.autoscale_view()
    _log_ticks(ax)
    ax.set_xlabel("training-set size (structures)")
    ax.set_ylabel(_axis_label(ylabel, units))
    _legend(ax, loc="best")
    return fig, ax


def sparse_coverage(
    features: ArrayLike,
    sparse_idx: ArrayLike,
    ax: Axes | None = None,
    random_state: int | None = 0,
) -> tuple[Figure, Axes]:
    """Two-component PCA map of descriptors with the sparse points highlighted.

    Parameters
    ----------
    features : array_like, shape (n_environments, n_features)
        Descriptor rows (e.g. ``SOAPFeatures.features`` stacked over frames).
    sparse_idx : array_like
        Integer row indices (or a boolean mask) of the sparse points.
    ax : Axes, optional
        Axes to draw into; a new figure is made otherwise.
    random_state : int or None, default 0
        Passed to :class:`sklearn.decomposition.PCA` (randomised solvers).

    Returns
    -------
    fig : Figure
    ax : Axes
        Two scatter collections: all other environments, then sparse points.
        Axis labels give the explained-variance fraction of each component.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> fig, ax = sparse_coverage(rng.normal(size=(50, 6)), [0, 5, 9])
    >>> [len(c.get_offsets()) for c in ax.collections]
    [47, 3]
    """
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(
            f"features has shape {x.shape}, expected (n_environments, n_features) with both >= 2"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("features contains NaN or infinite values")
    mask = _as_mask(sparse_idx, x.shape[0], "sparse_idx")
    pca = PCA(n_components=2, random_state=random_state)
    y = pca.fit_transform(x)
    ratio = pca.explained_variance_ratio_
    fig, ax = _new_axes(ax)
    _style(ax)
    ax.scatter(y[~mask, 0], y[~mask, 1], s=5, color="0.65", alpha=0.6, linewidths=0,
               label=f"environments ({int((~mask).sum())})", zorder=1)
    ax.scatter(y[mask, 0], y[mask, 1], s=16, color=PALETTE[1], edgecolors="k",
               linewidths=0.3, label=f"sparse points ({int(mask.sum())})", zorder=2)
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}% of variance)")
    _legend(ax, loc="best")
    return fig, ax
