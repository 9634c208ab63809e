"""Tests for kernelpot.plot: artists drawn, data they carry, and PNG output."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ase.units import GPa  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from kernelpot import metrics, plot  # noqa: E402


def _save(fig, tmp_path, name="fig.png"):
    path = tmp_path / name
    fig.savefig(path, dpi=40)
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def _legend_texts(ax):
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


@pytest.fixture
def calibrated():
    rng = np.random.default_rng(7)
    sigma = rng.uniform(0.05, 1.0, 3000)
    return rng.normal(size=sigma.size) * sigma, sigma


def test_style_applied():
    fig = Figure()
    ax = plot._style(fig.add_subplot())
    assert not ax.spines["top"].get_visible() and not ax.spines["right"].get_visible()
    assert ax.spines["left"].get_visible()


# --------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------
def test_parity_points_diagonal_and_legend(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.normal(size=40)
    pred = y + rng.normal(scale=0.1, size=40)
    pred[5] = np.nan  # dropped
    fig, ax = plot.parity(y, pred, units="eV", quantity="energy")
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    assert len(ax.collections) == 1 and len(ax.lines) == 1
    np.testing.assert_allclose(ax.collections[0].get_offsets(),
                               np.c_[np.delete(y, 5), np.delete(pred, 5)])
    (xd, yd) = ax.lines[0].get_data()
    np.testing.assert_allclose(xd, yd)  # y = x
    err = np.delete(pred - y, 5)
    (text,) = _legend_texts(ax)
    assert f"MAE {np.mean(np.abs(err)):.3g}" in text
    assert f"RMSE {np.sqrt(np.mean(err**2)):.3g}" in text
    assert ax.get_xlabel() == "reference energy (eV)"
    assert len(fig.axes) == 1  # no colorbar without sigma
    _save(fig, tmp_path)


def test_parity_coloured_by_sigma_with_colorbar(tmp_path):
    y = np.linspace(0, 1, 20)
    sigma = np.linspace(0.01, 0.2, 20)
    fig, ax = plot.parity(y, y + 0.01, sigma=sigma, units="meV/atom")
    assert len(fig.axes) == 2  # parity axes + colorbar
    np.testing.assert_allclose(ax.collections[0].get_array(), sigma)
    _save(fig, tmp_path)


def test_parity_draws_into_given_axes_and_checks_shapes():
    fig = Figure()
    ax_in = fig.add_subplot()
    fig_out, ax_out = plot.parity([0.0, 1.0], [0.0, 1.1], ax=ax_in)
    assert ax_out is ax_in and fig_out is fig
    with pytest.raises(ValueError, match=r"y_true has shape \(2,\) but y_pred has shape \(3,\)"):
        plot.parity([0.0, 1.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"sigma has shape \(3,\)"):
        plot.parity([0.0, 1.0], [0.0, 1.0], sigma=[0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="no finite"):
        plot.parity([np.nan], [1.0])


def _frames_dicts(stress_nan):
    rng = np.random.default_rng(1)
    n_atoms = np.array([2, 3, 4])
    n_tot = n_atoms.sum()
    ref = {
        "energy": rng.normal(size=3) * 10,
        "forces": rng.normal(size=(n_tot, 3)),
        "stress": rng.normal(size=(3, 6)) * 0.01,
        "n_atoms": n_atoms,
    }
    pred = {
        "energy": ref["energy"] + 0.01,
        "energy_std": np.full(3, 0.02),
        "forces": ref["forces"] + 0.05,
        "forces_std": np.full((n_tot, 3), 0.05),
        "stress": np.full((3, 6), np.nan) if stress_nan else ref["stress"] * 1.1,
        "stress_std": np.full((3, 6), np.nan) if stress_nan else np.full((3, 6), 1e-3),
    }
    return pred, ref


def test_parity_panel_skips_nan_stress_and_converts_energy(tmp_path):
    pred, ref = _frames_dicts(stress_nan=True)
    fig, axes = plot.parity_panel(pred, ref)
    assert len(axes) == 2
    e_ax, f_ax = axes
    np.testing.assert_allclose(e_ax.collections[0].get_offsets()[:, 0],
                               ref["energy"] / ref["n_atoms"] * 1000.0)
    np.testing.assert_allclose(e_ax.collections[0].get_array(),
                               pred["energy_std"] / ref["n_atoms"] * 1000.0)
    assert "meV/atom" in e_ax.get_xlabel()
    assert len(f_ax.collections[0].get_offsets()) == ref["forces"].size
    _save(fig, tmp_path)


def test_parity_panel_stress_in_gpa(tmp_path):
    pred, ref = _frames_dicts(stress_nan=False)
    fig, axes = plot.parity_panel(pred, ref)
    assert len(axes) == 3
    s_ax = axes[2]
    assert 1.0 / GPa == pytest.approx(160.21766208, rel=1e-6)
    np.testing.assert_allclose(s_ax.collections[0].get_offsets()[:, 0],
                               ref["stress"].ravel() * 160.21766208, rtol=1e-6)
    assert "GPa" in s_ax.get_xlabel()
    _save(fig, tmp_path)


def test_parity_panel_total_energy_without_n_atoms_and_errors():
    pred, ref = _frames_dicts(stress_nan=True)
    del ref["n_atoms"]
    fig, axes = plot.parity_panel({"energy": pred["energy"]}, ref)
    assert len(axes) == 1 and "(eV)" in axes[0].get_xlabel()
    np.testing.assert_allclose(axes[0].collections[0].get_offsets()[:, 0], ref["energy"])
    with pytest.raises(ValueError, match="share no finite"):
        plot.parity_panel({"stress": pred["stress"]}, ref)
    with pytest.raises(ValueError, match=r"pred\['forces'\] has shape"):
        plot.parity_panel({"forces": pred["forces"][:2]}, ref)


# --------------------------------------------------------------------------
# calibration plots
# --------------------------------------------------------------------------
def test_calibration_curve_and_overlay(calibrated, tmp_path):
    errors, sigma = calibrated
    fig, ax = plot.calibration(errors, sigma, n_bins=6, label="A")
    assert len(ax.lines) == 2
    curve = metrics.calibration_curve(errors, sigma, n_bins=6)
    data = [line for line in ax.lines if line.get_gid() == "data"]
    np.testing.assert_allclose(data[0].get_xdata(), curve.rmv)
    np.testing.assert_allclose(data[0].get_ydata(), curve.rmse)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"

    fig2, ax2 = plot.calibration(3.0 * errors, sigma, n_bins=6, label="B", ax=ax)
    assert fig2 is fig and len(ax.lines) == 3  # one more curve, still one diagonal
    (diag,) = [line for line in ax.lines if line.get_gid() == "diagonal"]
    d = np.asarray(diag.get_xdata())
    all_y = np.concatenate([line.get_ydata() for line in ax.lines if line.get_gid() == "data"])
    assert d.min() < curve.rmv.min() and d.max() > all_y.max()  # spans both curves
    texts = _legend_texts(ax)
    assert texts[0].startswith("A (ENCE") and texts[1].startswith("B (ENCE")
    assert data[0].get_color() != [ln for ln in ax.lines if ln.get_gid() == "data"][1].get_color()
    _save(fig, tmp_path)


def test_error_vs_sigma(calibrated, tmp_path):
    errors, sigma = calibrated
    fig, ax = plot.error_vs_sigma(errors, sigma)
    assert len(ax.collections) == 1 and len(ax.lines) == 3
    assert len(ax.collections[0].get_offsets()) == errors.size
    for k, line in zip((1, 2, 3), ax.lines):
        np.testing.assert_allclose(line.get_ydata(), k * np.asarray(line.get_xdata()))
    cov = metrics.coverage(errors, sigma)
    assert f"{100 * cov[0]:.1f}% below" in _legend_texts(ax)[0]
    _save(fig, tmp_path)


def test_z_histogram_density_and_normal(calibrated, tmp_path):
    errors, sigma = calibrated
    fig, ax = plot.z_histogram(errors, sigma, bins=30)
    assert len(ax.patches) == 30 and len(ax.lines) == 1
    heights = np.array([p.get_height() for p in ax.patches])
    widths = np.array([p.get_width() for p in ax.patches])
    z = errors / sigma
    lim = -ax.patches[0].get_x()
    assert np.sum(heights * widths) == pytest.approx(np.mean(np.abs(z) <= lim))
    x, y = ax.lines[0].get_data()
    np.testing.assert_allclose(y, stats.norm.pdf(x))
    # calibrated z: histogram near the N(0,1) density at the centre
    centre = np.argmin(np.abs([p.get_x() + p.get_width() / 2 for p in ax.patches]))
    assert heights[centre] == pytest.approx(stats.norm.pdf(0.0), abs=0.06)
    _save(fig, tmp_path)


# --------------------------------------------------------------------------
# training-set diagnostics
# --------------------------------------------------------------------------
def test_influence_flagged_highlighted_and_labelled(tmp_path):
    rng = np.random.default_rng(2)
    h = rng.uniform(0, 1, 30)
    z = rng.normal(size=30)
    labels = [f"frame{i}" for i in range(30)]
    fig, ax = plot.influence(h, z, labels=labels, flagged=[4, 17])
    assert len(ax.collections) == 2
    assert len(ax.collections[0].get_offsets()) == 28
    np.testing.assert_allclose(ax.collections[1].get_offsets(), np.c_[h[[4, 17]], z[[4, 17]]])
    assert sorted(t.get_text() for t in _flag_labels(ax)) == ["frame17", "frame4"]
    assert sorted(line.get_ydata()[0] for line in ax.lines) == [-3.0, 3.0]
    _save(fig, tmp_path)

    mask = np.zeros(30, bool)
    mask[9] = True
    _, ax2 = plot.influence(h, z, flagged=mask, z_threshold=None)
    assert [t.get_text() for t in ax2.texts] == ["9"] and len(ax2.lines) == 0
    _, ax3 = plot.influence(h, z)
    assert len(ax3.collections) == 1 and _flag_labels(ax3) == []
    with pytest.raises(ValueError, match="out of range"):
        plot.influence(h, z, flagged=[30])
    with pytest.raises(ValueError, match="labels has length 2"):
        plot.influence(h, z, labels=["a", "b"])


def _flag_labels(ax):
    return [t for t in ax.texts if t.get_gid() == "flag-label"]


def test_influence_many_flags_is_readable(tmp_path):
    """200 structures, 40 flagged over four decades of |z|: labels capped at the most extreme,
    inside the axes and apart; threshold lines labelled; decade ticks in plain numbers."""
    rng = np.random.default_rng(5)
    n = 200
    h = 10 ** rng.uniform(-3, 0, n)
    z = rng.normal(size=n)
    flagged = rng.choice(n, 40, replace=False)
    z[flagged] = np.sign(rng.normal(size=40)) * 10 ** rng.uniform(0.5, 3.5, 40)
    labels = [f"{i} bulk_md - energy: label offset" for i in range(n)]
    fig, ax = plot.influence(h, z, labels=labels, flagged=flagged, max_labels=8)
    fig.draw_without_rendering()

    notes = _flag_labels(ax)
    assert len(notes) == 8                                               # capped
    top8 = flagged[np.argsort(-np.abs(z[flagged]))[:8]]
    assert {int(t.get_text().split()[0]) for t in notes} == set(top8.tolist())   # the most extreme
    assert any("40; 8 largest |z| labelled" in t for t in _legend_texts(ax))

    axes_box = ax.get_window_extent()
    # the texts, not their leader lines (get_window_extent first: it places an annotation's text)
    boxes = [(t.get_window_extent(), Text.get_window_extent(t))[1] for t in notes]
    for i, b in enumerate(boxes):
        assert (axes_box.x0 <= b.x0 and b.x1 <= axes_box.x1
                and axes_box.y0 <= b.y0 and b.y1 <= axes_box.y1), (notes[i].get_text(), b, axes_box)
        assert not any(b.overlaps(o) for o in boxes[i + 1:])
    # the legend is outside the axes, so it covers neither points nor labels
    assert ax.get_legend().get_window_extent().y0 >= axes_box.y1 - 1

    # both threshold lines carry a visible label at their height
    thr = [t for t in ax.texts if t.get_gid() == "threshold-label"]
    assert sorted(t.get_text() for t in thr) == ["z = +3", "z = \u22123"]
    assert sorted(t.get_position()[1] for t in thr) == [-3.0, 3.0]
    fb = fig.bbox
    for t in thr:
        b = t.get_window_extent()
        assert fb.x0 <= b.x0 and b.x1 <= fb.x1

    # symlog y axis: 0 and whole decades as plain numbers, nothing crowded in the linear part
    assert ax.get_yscale() == "symlog"
    ticks = [v for v in ax.get_yticks() if ax.get_ylim()[0] <= v <= ax.get_ylim()[1]]
    assert 0.0 in ticks and all(v == 0 or np.log10(abs(v)) % 1 == 0 and abs(v) >= 10 for v in ticks)
    texts = [lab.get_text() for lab in ax.get_yticklabels() if lab.get_text()]
    assert "1000" in texts and "\u2212100" in texts and not any("10^" in t for t in texts)
    assert ax.get_xscale() == "log" and {"0.001", "0.01", "0.1", "1"} <= {
        lab.get_text() for lab in ax.get_xticklabels()}
    _save(fig, tmp_path)

    # the default cap is 10; max_labels=0 labels none; a tiny axes labels only what fits
    assert len(_flag_labels(plot.influence(h, z, flagged=flagged)[1])) == 10
    assert _flag_labels(plot.influence(h, z, flagged=flagged, max_labels=0)[1]) == []
    small = Figure(figsize=(3.2, 2.2), layout="constrained").add_subplot()
    plot.influence(h, z, flagged=flagged, ax=small, max_labels=40)
    small.figure.draw_without_rendering()
    k = len(_flag_labels(small))
    assert 0 < k < 40 and any(f"40; {k} largest" in t for t in _legend_texts(small))
    with pytest.raises(ValueError, match="max_labels"):
        plot.influence(h, z, flagged=flagged, max_labels=-1)


def test_learning_curve(tmp_path):
    n = np.array([10, 30, 100, 300])
    repeats = np.array([[1.0, 1.2], [0.6, 0.7], [0.3, 0.35], [0.2, 0.21]])
    fig, ax = plot.learning_curve(n, {"GP": [1.0, 0.5, 0.25, 0.12], "committee": repeats},
                                  units="meV/atom")
    assert len(ax.lines) == 2
    assert len(ax.collections) == 1  # min-max band of the repeated model
    np.testing.assert_allclose(ax.lines[1].get_ydata(), repeats.mean(axis=1))
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert _legend_texts(ax) == ["GP", "committee (mean; band: min-max of 2 fits)"]
    assert ax.get_ylabel() == "RMSE (meV/atom)"
    _save(fig, tmp_path)
    with pytest.raises(ValueError, match=r"errors\['bad'\] has shape \(3,\)"):
        plot.learning_curve(n, {"bad": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="n_train must be positive"):
        plot.learning_curve([0, 10], {"a": [1.0, 2.0]})


def test_sparse_coverage_matches_pca(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 5)) * np.array([5.0, 2.0, 1.0, 0.5, 0.1])
    idx = np.array([1, 10, 33, 70])
    fig, ax = plot.sparse_coverage(x, idx)
    assert len(ax.collections) == 2
    others, sparse = (c.get_offsets() for c in ax.collections)
    assert len(others) == 76 and len(sparse) == 4
    y = PCA(n_components=2, random_state=0).fit_transform(x)
    np.testing.assert_allclose(sparse, y[idx], atol=1e-10)
    assert "% of variance" in ax.get_xlabel()
    _save(fig, tmp_path)

    mask = np.zeros(80, bool)
    mask[idx] = True
    _, ax2 = plot.sparse_coverage(x, mask)
    np.testing.assert_allclose(ax2.collections[1].get_offsets(), sparse)
    with pytest.raises(ValueError, match="out of range"):
        plot.sparse_coverage(x, [80])
    with pytest.raises(ValueError, match="expected \\(n_environments, n_features\\)"):
        plot.sparse_coverage(x[:, 0], [0])


def test_plot_is_not_imported_by_package():
    import subprocess
    import sys

    code = "import sys, kernelpot; print('kernelpot.plot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------
# layout: every figure read at a glance (no text on text, nothing clipped, units on axes)
# --------------------------------------------------------------------------
def _figures():
    """One rendered figure per plotting function (influence is tested with the screen)."""
    rng = np.random.default_rng(3)
    n = 40
    e_ref = rng.uniform(-3.9, -3.5, n)
    f_ref = rng.normal(size=(n * 8, 3))
    s_ref = rng.normal(scale=0.01, size=(n, 6))
    ref = {"energy": e_ref * 8, "forces": f_ref, "stress": s_ref, "n_atoms": np.full(n, 8)}
    pred = {"energy": (e_ref + rng.normal(scale=0.002, size=n)) * 8,
            "forces": f_ref + rng.normal(scale=0.05, size=f_ref.shape),
            "stress": s_ref + rng.normal(scale=1e-4, size=s_ref.shape),
            "energy_std": np.full(n, 0.016) * rng.uniform(0.5, 2, n),
            "forces_std": rng.uniform(0.01, 0.1, f_ref.shape), "stress_std": rng.uniform(5e-5, 2e-4, (n, 6))}
    sigma = rng.uniform(0.02, 0.3, 3000)
    err = rng.normal(size=sigma.size) * sigma
    yield "parity_panel", plot.parity_panel(pred, ref)[0], True
    yield "parity", plot.parity(e_ref, e_ref + 0.001, sigma=np.full(n, 0.002), units="eV/atom")[0], True
    fig, ax = plot.calibration(err, sigma, units="eV/Å", label="raw")
    plot.calibration(err, 0.7 * sigma, ax=ax, units="eV/Å", label="calibrated")
    yield "calibration", fig, True
    yield "error_vs_sigma", plot.error_vs_sigma(err, sigma, units="eV/Å")[0], True
    yield "z_histogram", plot.z_histogram(err, sigma)[0], False
    reps = np.array([[30.0, 36.0], [12.0, 14.0], [5.0, 6.5], [2.1, 2.4]])
    yield "learning_curve", plot.learning_curve([10, 30, 100, 300], {"GP": [25.0, 10.0, 4.0, 2.0],
                                                 "committee": reps}, units="meV/atom")[0], True
    yield "sparse_coverage", plot.sparse_coverage(rng.normal(size=(200, 8)), np.arange(0, 200, 9))[0], False


def _texts(fig, renderer):
    """Visible, non-empty text artists that are drawn (tick labels beyond the view limits are not)."""
    from matplotlib.text import Text
    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            tol = 1e-9 * max(abs(lo), abs(hi), 1e-300)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - tol <= tick.get_loc() <= hi + tol:
                    hidden.update((id(tick.label1), id(tick.label2)))
    out = []
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip() and id(t) not in hidden:
            out.append((t, t.get_window_extent(renderer)))
    return out


@pytest.mark.parametrize("name, fig, units", list(_figures()), ids=[f[0] for f in _figures()])
def test_layout_no_overlap_inside_figure_units(name, fig, units, tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    fig.savefig(tmp_path / f"{name}.png", dpi=100)  # the constrained layout runs on draw
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    texts = _texts(fig, renderer)
    assert texts
    for t, bb in texts:
        assert (bb.x0 >= box.x0 - 1 and bb.y0 >= box.y0 - 1 and bb.x1 <= box.x1 + 1 and bb.y1 <= box.y1 + 1), \
            f"{name}: {t.get_text()!r} falls outside the figure"
    for i, (t1, b1) in enumerate(texts):
        for t2, b2 in texts[i + 1:]:
            if b1.overlaps(b2):
                inter = min(b1.x1, b2.x1) - max(b1.x0, b2.x0), min(b1.y1, b2.y1) - max(b1.y0, b2.y0)
                # touching edges (a pixel) are not an overlap a reader sees
                assert min(inter) <= 1.0, f"{name}: {t1.get_text()!r} overlaps {t2.get_text()!r}"
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        lb = legend.get_window_extent(renderer)
        # the legend covers no data point and no bar
        for coll in ax.collections:
            offsets = coll.get_offsets()
            if len(offsets) and coll.get_gid() != "diagonal":
                xy = ax.transData.transform(np.asarray(offsets))
                inside = (xy[:, 0] > lb.x0) & (xy[:, 0] < lb.x1) & (xy[:, 1] > lb.y0) & (xy[:, 1] < lb.y1)
                assert not inside.any(), f"{name}: legend covers {int(inside.sum())} points"
        for patch in ax.patches:
            pb = patch.get_window_extent(renderer)
            if pb.height > 1:
                assert not (pb.overlaps(lb) and min(pb.y1, lb.y1) - max(pb.y0, lb.y0) > 1), \
                    f"{name}: legend covers a bar"
    if units:
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                label = ax.get_xlabel() or ax.get_ylabel()
                assert label.endswith(")"), f"{name}: colour bar label {label!r} has no units"
                continue
            for label in (ax.get_xlabel(), ax.get_ylabel()):
                assert label.endswith(")") and "(" in label, f"{name}: axis label {label!r} has no units"
    else:
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel()


def test_parity_panel_labels_do_not_repeat_the_quantity():
    y = np.linspace(0, 1, 20)
    fig, _ = plot.parity(y, y, sigma=np.full(20, 0.1), quantity="energy", units="meV/atom")
    cbar = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"][0]
    assert cbar.get_xlabel() == "predicted σ (meV/atom)"
