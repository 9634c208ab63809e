"""Tests for kernelpot.metrics on synthetic errors with known distributions."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from kernelpot import metrics

N = 200_000
GAUSS_COVERAGE = np.array([0.6826894921, 0.9544997361, 0.9973002039])  # erf(k / sqrt 2)


@pytest.fixture(scope="module")
def calibrated():
    """Heteroscedastic errors drawn exactly from N(0, sigma)."""
    rng = np.random.default_rng(1234)
    sigma = rng.uniform(0.05, 2.0, N)
    return rng.normal(size=N) * sigma, sigma


@pytest.fixture(scope="module")
def overconfident(calibrated):
    """Errors whose true standard deviation is 2 sigma."""
    errors, sigma = calibrated
    return 2.0 * errors, sigma


def _expected_area_true_std(ratio):
    """Analytic miscalibration area when the true std is ``ratio * sigma``."""

    def gap(p):
        observed = 2.0 * stats.norm.cdf(stats.norm.ppf((1.0 + p) / 2.0) / ratio) - 1.0
        return abs(observed - p)

    return integrate.quad(gap, 0.0, 1.0, limit=200)[0]


# --------------------------------------------------------------------------
# known answers
# --------------------------------------------------------------------------
def test_mae_rmse_known_values():
    e = np.array([[3.0, -4.0], [0.0, 1.0]])
    assert metrics.mae(e) == pytest.approx(2.0)
    assert metrics.rmse(e) == pytest.approx(np.sqrt(26.0 / 4.0))


def test_residuals_sign_and_shape_check():
    np.testing.assert_allclose(metrics.residuals([1.0, 2.0], [1.5, 1.0]), [0.5, -1.0])
    with pytest.raises(ValueError, match=r"y_true has shape \(2,\) but y_pred has shape \(3,\)"):
        metrics.residuals([1.0, 2.0], [1.0, 2.0, 3.0])


def test_coverage_calibrated_matches_gaussian(calibrated):
    cov = metrics.coverage(*calibrated)
    assert cov.shape == (3,)
    np.testing.assert_allclose(cov, GAUSS_COVERAGE, atol=0.01)


def test_coverage_scalar_k_and_exact_counts():
    e = np.array([0.5, 1.0, -1.5, 2.5, -3.5])
    assert metrics.coverage(e, 1.0, k=1.0) == pytest.approx(2 / 5)  # |e| <= 1 inclusive
    np.testing.assert_allclose(metrics.coverage(e, 1.0, k=(1, 2, 3)), [2 / 5, 3 / 5, 4 / 5])
    with pytest.raises(ValueError, match="k must be positive"):
        metrics.coverage(e, 1.0, k=(0, 1))


def test_coverage_overconfident(overconfident):
    expected = 2.0 * stats.norm.cdf(np.array([1.0, 2.0, 3.0]) / 2.0) - 1.0
    assert expected[0] == pytest.approx(0.383, abs=1e-3)
    np.testing.assert_allclose(metrics.coverage(*overconfident), expected, atol=0.01)


def test_msz(calibrated, overconfident):
    assert metrics.mean_squared_z(*calibrated) == pytest.approx(1.0, abs=0.02)
    assert metrics.mean_squared_z(*overconfident) == pytest.approx(4.0, abs=0.08)


def test_miscalibration_area_calibrated_small(calibrated):
    assert metrics.miscalibration_area(*calibrated) < 0.01


def test_miscalibration_area_overconfident_matches_analytic(overconfident):
    expected = _expected_area_true_std(2.0)
    assert expected > 0.15  # sanity: far from calibrated
    assert metrics.miscalibration_area(*overconfident) == pytest.approx(expected, abs=0.005)


def test_miscalibration_area_underconfident_matches_analytic(calibrated):
    errors, sigma = calibrated
    expected = _expected_area_true_std(0.5)
    assert metrics.miscalibration_area(0.5 * errors, sigma) == pytest.approx(expected, abs=0.005)


def test_miscalibration_area_extremes():
    # zero errors: every interval covers everything, observed(p) = 1 -> area 0.5
    assert metrics.miscalibration_area(np.zeros(100), 1.0) == pytest.approx(0.5)
    # enormous errors: nothing is covered below p ~ 1 -> area close to 0.5
    assert metrics.miscalibration_area(np.full(100, 1e6), 1.0) > 0.49


def test_nll_equals_analytic():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.1, 3.0, 50)
    errors = rng.normal(size=50) * 3.0
    expected = -np.mean(stats.norm.logpdf(errors, loc=0.0, scale=sigma))
    assert metrics.nll(errors, sigma) == pytest.approx(expected, rel=1e-12)
    assert metrics.nll([0.0], [1.0]) == pytest.approx(0.5 * np.log(2 * np.pi))


def test_nll_calibrated_expectation(calibrated):
    errors, sigma = calibrated
    expected = np.mean(0.5 * np.log(2 * np.pi * sigma**2)) + 0.5
    assert metrics.nll(errors, sigma) == pytest.approx(expected, abs=0.01)


def test_recalibration_scale_recovers_factor_two(overconfident):
    errors, sigma = overconfident
    z = errors / sigma
    s = metrics.recalibration_scale(z)
    assert s == pytest.approx(2.0, rel=0.01)
    new_sigma = metrics.recalibrate(sigma, s)
    assert metrics.mean_squared_z(errors, new_sigma) == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(metrics.coverage(errors, new_sigma), GAUSS_COVERAGE, atol=0.01)


def test_recalibration_bad_inputs():
    with pytest.raises(ValueError, match="all zero"):
        metrics.recalibration_scale(np.zeros(5))
    with pytest.raises(ValueError, match="positive and finite"):
        metrics.recalibrate([1.0], 0.0)
    with pytest.raises(ValueError, match="positive and finite"):
        metrics.recalibrate([1.0], np.nan)


def test_spearman_monotone():
    sigma = np.linspace(0.1, 1.0, 30)
    assert metrics.spearman(sigma**3, sigma) == pytest.approx(1.0)
    assert metrics.spearman(1.0 / sigma, sigma) == pytest.approx(-1.0)
    # signed errors are ranked by magnitude
    signs = np.where(np.arange(30) % 2, 1.0, -1.0)
    assert metrics.spearman(signs * sigma**2, sigma) == pytest.approx(1.0)


def test_spearman_of_constant_input_is_nan_without_a_warning():
    """Zero errors (a model evaluated on its own predictions) or one sigma: undefined, NaN as documented, and
    no scipy ConstantInputWarning leaking to the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(metrics.spearman(np.zeros(10), np.linspace(0.1, 1.0, 10)))
        assert np.isnan(metrics.spearman(np.linspace(0.1, 1.0, 10), np.full(10, 0.3)))


def test_spearman_calibrated_is_positive_but_below_one(calibrated):
    errors, sigma = calibrated
    rho = metrics.spearman(np.abs(errors), sigma)
    assert 0.2 < rho < 0.8


def test_calibration_curve_calibrated(calibrated):
    curve = metrics.calibration_curve(*calibrated, n_bins=10)
    assert curve.rmv.shape == curve.rmse.shape == curve.counts.shape == (10,)
    assert curve.counts.sum() == N
    assert curve.counts.max() - curve.counts.min() <= 1
    assert np.all(np.diff(curve.rmv) > 0)
    np.testing.assert_allclose(curve.rmse, curve.rmv, rtol=0.03)
    assert curve.ence < 0.02


def test_calibration_curve_overconfident(overconfident):
    rmv, rmse, ence, counts = metrics.calibration_curve(*overconfident, n_bins=8)
    np.testing.assert_allclose(rmse / rmv, 2.0, rtol=0.03)
    assert ence == pytest.approx(1.0, abs=0.05)


def test_calibration_curve_bins_by_sigma_exactly():
    sigma = np.array([4.0, 1.0, 3.0, 2.0])
    errors = np.array([40.0, 10.0, 30.0, 20.0])
    curve = metrics.calibration_curve(errors, sigma, n_bins=2)
    np.testing.assert_allclose(curve.rmv, [np.sqrt(2.5), np.sqrt(12.5)])
    np.testing.assert_allclose(curve.rmse, [np.sqrt(250.0), np.sqrt(1250.0)])
    assert curve.ence == pytest.approx(9.0)
    with pytest.raises(ValueError, match="n_bins=5 is larger"):
        metrics.calibration_curve(errors, sigma, n_bins=5)
    with pytest.raises(ValueError, match="positive integer"):
        metrics.calibration_curve(errors, sigma, n_bins=0)


def test_force_per_atom():
    norm, sig = metrics.force_per_atom([[3.0, 4.0, 0.0], [1.0, 2.0, 2.0]],
                                       [[1.0, 2.0, 2.0], [0.0, 0.0, 2.0]])
    np.testing.assert_allclose(norm, [5.0, 3.0])
    np.testing.assert_allclose(sig, [3.0, 2.0])
    with pytest.raises(ValueError, match=r"errors has shape \(4,\), expected \(n_atoms, 3\)"):
        metrics.force_per_atom(np.zeros(4), np.ones(4))
    with pytest.raises(ValueError, match=r"errors has shape \(2, 3\) but sigma has shape \(3, 3\)"):
        metrics.force_per_atom(np.zeros((2, 3)), np.ones((3, 3)))


def test_force_per_atom_sigma_is_rms_of_error_norm():
    rng = np.random.default_rng(3)
    sigma = rng.uniform(0.01, 0.5, (50_000, 3))
    errors = rng.normal(size=sigma.shape) * sigma
    norm, sig = metrics.force_per_atom(errors, sigma)
    # E|dF|^2 = sum of component variances = sig^2
    assert np.mean(norm**2 / sig**2) == pytest.approx(1.0, abs=0.02)
    assert metrics.spearman(norm, sig) > 0.3


# --------------------------------------------------------------------------
# bad inputs and NaN handling
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "func",
    [metrics.coverage, metrics.miscalibration_area, metrics.nll, metrics.mean_squared_z,
     metrics.calibration_curve, metrics.summary],
)
def test_shape_mismatch_names_arguments(func):
    with pytest.raises(ValueError, match=r"errors has shape \(10,\) but sigma has shape \(9,\)"):
        func(np.zeros(10), np.ones(9))


def test_spearman_shape_mismatch_names_arguments():
    with pytest.raises(ValueError, match=r"abs_error has shape \(4, 3\) but sigma has shape \(12,\)"):
        metrics.spearman(np.zeros((4, 3)), np.ones(12))


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_nonpositive_sigma_raises(bad):
    sigma = np.ones(10)
    sigma[3] = bad
    with pytest.raises(ValueError, match="sigma must be strictly positive: 1 of 10"):
        metrics.nll(np.zeros(10), sigma)
    with pytest.raises(ValueError, match="strictly positive"):
        metrics.summary(np.zeros(10), sigma)


def test_infinite_values_raise():
    with pytest.raises(ValueError, match="sigma contains infinite"):
        metrics.coverage([0.0, 1.0], [1.0, np.inf])
    with pytest.raises(ValueError, match="errors contains infinite"):
        metrics.rmse([0.0, np.inf])


def test_nan_entries_skipped_with_count(calibrated):
    errors, sigma = (a[:1000].copy() for a in calibrated)
    errors[[3, 7]] = np.nan
    sigma[11] = np.nan
    keep = ~(np.isnan(errors) | np.isnan(sigma))
    with pytest.warns(RuntimeWarning, match="skipped 3 of 1000"):
        value = metrics.nll(errors, sigma)
    assert value == pytest.approx(metrics.nll(errors[keep], sigma[keep]))
    with pytest.warns(RuntimeWarning, match="skipped 2 of 1000"):
        assert metrics.mae(errors) == pytest.approx(np.nanmean(np.abs(errors)))
    with pytest.warns(RuntimeWarning, match="skipped 3 of 1000"):
        row = metrics.summary(errors, sigma)
    assert row["n"] == 997 and row["n_skipped"] == 3


def test_all_nan_raises():
    with pytest.raises(ValueError, match="no usable entries"):
        metrics.coverage([np.nan, np.nan], [1.0, 1.0])


def test_clean_input_does_not_warn(calibrated):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.summary(*calibrated)


# --------------------------------------------------------------------------
# summary and table
# --------------------------------------------------------------------------
def test_summary_consistent_with_functions(calibrated):
    errors, sigma = (a[:5000] for a in calibrated)
    row = metrics.summary(errors, sigma)
    assert set(row) == {"n", "n_skipped", "mae", "rmse", "coverage_1", "coverage_2",
                        "coverage_3", "miscal_area", "nll", "spearman", "msz"}
    cov = metrics.coverage(errors, sigma)
    assert (row["coverage_1"], row["coverage_2"], row["coverage_3"]) == tuple(cov)
    assert row["mae"] == metrics.mae(errors)
    assert row["rmse"] == metrics.rmse(errors)
    assert row["miscal_area"] == metrics.miscalibration_area(errors, sigma)
    assert row["nll"] == metrics.nll(errors, sigma)
    assert row["spearman"] == metrics.spearman(np.abs(errors), sigma)
    assert row["msz"] == metrics.mean_squared_z(errors, sigma)
    assert row["n"] == 5000 and row["n_skipped"] == 0


def test_format_table_alignment_and_values():
    rows = {
        "sparse GP": {"mae": 0.012345678, "rmse": 0.02, "n": 1200},
        "committee": {"mae": 123.456, "nll": -1.5},
    }
    text = metrics.format_table(rows)
    lines = text.split("\n")
    assert len(lines) == 4
    header = lines[0].split()
    assert header == ["model", "mae", "rmse", "n", "nll"]
    assert set(lines[1]) <= {"-", " "}
    assert len({len(line) for line in lines}) == 1  # every line padded to the same width
    first = lines[2][len("sparse GP"):].split()
    assert float(first[0]) == pytest.approx(0.012345678, rel=1e-3)
    assert first[2] == "1200"
    second = lines[3][len("committee"):].split()
    assert second == ["123.5", "-", "-", "-1.5"]
    assert metrics.format_table(rows, columns=["nll"]).split("\n")[0].split() == ["model", "nll"]


# --------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-3, 1e3),
    ratio=st.floats(0.1, 10.0),
)
def test_scale_invariance_and_bounds(seed, scale, ratio):
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.1, 1.0, 200)
    errors = rng.normal(size=200) * sigma * ratio
    area = metrics.miscalibration_area(errors, sigma)
    assert 0.0 <= area <= 0.5
    assert metrics.miscalibration_area(errors * scale, sigma * scale) == pytest.approx(area)
    np.testing.assert_allclose(metrics.coverage(errors * scale, sigma * scale),
                               metrics.coverage(errors, sigma))
    assert metrics.mean_squared_z(errors * scale, sigma * scale) == pytest.approx(
        metrics.mean_squared_z(errors, sigma))
    # NLL shifts by log(scale) under a change of units
    assert metrics.nll(errors * scale, sigma * scale) == pytest.approx(
        metrics.nll(errors, sigma) + np.log(scale))


def test_spearman_calibrated_two_sigma_levels_closed_form():
    """Half the sigma 1, half k: a calibrated model's Spearman(|e|, sigma) tends to
    (sqrt(3)/2)(2 AUC - 1) with AUC = P(k|z1| > |z2|) = (2/pi) arctan(k) for half-normal |z|."""
    for k in (1.5, 3.0, 10.0):
        s = np.repeat([1.0, k], 10000)
        want = np.sqrt(3) / 2 * (4 * np.arctan(k) / np.pi - 1)
        assert metrics.spearman_calibrated(s, n_draws=20) == pytest.approx(want, abs=0.01)
    # nearly equal sigma: even perfect ones cannot rank the errors
    assert abs(metrics.spearman_calibrated(np.linspace(1.0, 1.01, 2000))) < 0.02
    assert np.isnan(metrics.spearman_calibrated(np.full(10, 2.0)))
    for bad in ([1.0, 0.0, 2.0], [0.0, 0.0], [1.0, np.inf]):
        with pytest.raises(ValueError, match="> 0"):
            metrics.spearman_calibrated(bad)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.spearman_calibrated([1.0, np.nan])
