"""descriptor=None: the fit compares unscaled and radially scaled SOAP by the evidence.

The chosen model must be the very model an explicit fit with the chosen SOAP gives
(weights, calibration, sigma), each candidate's evidence must be that of its own
fit, and a scaling that does not raise the evidence by ln 100 nats is not taken.
"""

import warnings
from pathlib import Path

import numpy as np
import pytest

import kernelpot
from kernelpot import SOAP, SparseGP
from kernelpot.gp import sparse
from kernelpot.io.labels import DataWarning

from conftest import emt_frames

DATA = Path(__file__).resolve().parents[1] / "data"

KW = dict(n_sparse=30, verbose=False)


@pytest.fixture(scope="module")
def frames():
    return emt_frames(10, seed=5)


@pytest.fixture(scope="module")
def default_fit(frames):
    return SparseGP(**KW).fit(frames)


def _same_model(a, b, atoms):
    pa, pb = a.predict_frame(atoms), b.predict_frame(atoms)
    for key in ("energy", "forces", "stress", "energy_std", "forces_std", "stress_std"):
        np.testing.assert_allclose(pa[key], pb[key], rtol=1e-7, atol=1e-10, err_msg=key)


def test_each_candidate_scores_its_own_fit_and_the_best_is_kept(frames, default_fit):
    choice = default_fit.descriptor_choice_
    r_cut = SOAP().r_cut
    assert [c["radial_scaling"] for c in choice["candidates"]] == [None, 0.5 * r_cut]
    own = [SparseGP(descriptor=SOAP(radial_scaling=c["radial_scaling"]), calibrate=False, **KW).fit(frames)
           for c in choice["candidates"]]
    for c, m in zip(choice["candidates"], own):
        assert c["log_likelihood"] == pytest.approx(m.log_marginal_likelihood_, rel=1e-9)
    gain = own[1].log_marginal_likelihood_ - own[0].log_marginal_likelihood_
    assert choice["chosen"] == (1 if gain > np.log(100.0) else 0)
    assert default_fit.descriptor_.radial_scaling == choice["candidates"][choice["chosen"]]["radial_scaling"]
    assert default_fit.log_marginal_likelihood_ == pytest.approx(max(m.log_marginal_likelihood_ for m in own)
                                                                 if abs(gain) > np.log(100.0) else
                                                                 own[0].log_marginal_likelihood_, rel=1e-9)


def test_the_chosen_model_is_the_explicit_fit_calibration_included(frames, default_fit):
    """The last candidate's calibration is deferred until it has won: same weights, same sigma."""
    r0 = default_fit.descriptor_.radial_scaling
    explicit = SparseGP(descriptor=SOAP(radial_scaling=r0), **KW).fit(frames)
    assert default_fit.std_weights_ and set(default_fit.std_weights_) == set(explicit.std_weights_)
    test = emt_frames(2, seed=6)
    for atoms in test:
        _same_model(default_fit, explicit, atoms)
    assert default_fit.descriptor is None  # the setting is not changed by fit (scikit-learn's contract)
    assert not hasattr(default_fit, "_mean_features") and default_fit._row_cache is None


def test_a_scaling_the_evidence_does_not_prefer_decisively_is_not_taken(frames, monkeypatch):
    """r0 = 1000 A leaves every weight within 1e-8 of 1: the same model, so the unscaled one is kept
    (the earlier candidate wins: the refit path) and equals the explicit unscaled fit."""
    monkeypatch.setattr(sparse, "DEFAULT_RADIAL_SCALING", (200.0,))
    model = SparseGP(**KW).fit(frames)
    lls = [c["log_likelihood"] for c in model.descriptor_choice_["candidates"]]
    assert abs(lls[1] - lls[0]) < np.log(100.0)
    assert model.descriptor_choice_["chosen"] == 0 and model.descriptor_.radial_scaling is None
    _same_model(model, SparseGP(descriptor=SOAP(), **KW).fit(frames), emt_frames(1, seed=7)[0])


def test_a_given_descriptor_is_kept(frames):
    model = SparseGP(descriptor=SOAP(), **KW).fit(frames)
    assert model.descriptor_.radial_scaling is None and not hasattr(model, "descriptor_choice_")


def test_warnings_reach_the_caller_once(frames):
    """EMT's positive energies raise one validation warning per fit, at the caller's line, not one per
    candidate."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SparseGP(**KW).fit(frames)
    data = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(data) == 1 and "energy per atom > 0" in str(data[0].message)
    assert data[0].filename == __file__
    # the kept model's own warnings too: once (not once per candidate), at the caller's line
    bounds = [w for w in caught if "at their bounds" in str(w.message)]
    assert len(bounds) == 1 and bounds[0].filename == __file__


def test_warnings_before_an_error_are_not_lost(frames):
    """A fit that fails after the validation still shows its warnings."""
    with pytest.warns(DataWarning, match="energy per atom > 0"), pytest.raises(ValueError, match="names frame 99"):
        SparseGP(sparse_points=[(99, 0)], **KW).fit(frames)


def test_model_file_keeps_the_chosen_descriptor(default_fit, tmp_path):
    path = tmp_path / "m.npz"
    default_fit.save(path)
    loaded = kernelpot.SparseGP.load(path)
    assert loaded.descriptor_.radial_scaling == default_fit.descriptor_.radial_scaling
    _same_model(default_fit, loaded, emt_frames(1, seed=8)[0])


def test_a_candidate_that_gives_up_a_kind_of_label_is_not_taken():
    """The shipped EMT copper at 30 sparse points: the scaled SOAP's evidence is higher by ~4000 nats, but
    its fit sets the energy noise above the spread of the energies (test energy MAE 34 meV/atom against
    0.8 unscaled), buying the forces with the energies; the unscaled SOAP is kept."""
    frames = kernelpot.read(DATA / "emt_cu_train.xyz")
    model = SparseGP(n_sparse=30, verbose=False).fit(frames)
    unscaled, scaled = model.descriptor_choice_["candidates"]
    assert scaled["log_likelihood"] > unscaled["log_likelihood"] + np.log(100.0)
    assert scaled["unexplained"] == ["energy"] and unscaled["unexplained"] == []
    assert model.descriptor_choice_["chosen"] == 0 and model.descriptor_.radial_scaling is None
    spread = np.std([a.get_potential_energy() / len(a) for a in frames])
    assert model.noise_["energy"] < 0.1 * spread


def test_a_second_fit_keeps_nothing_of_the_first(frames, default_fit):
    """Fit with calibration, then without on other frames: no leave-one-out results of the first fit
    survive (screen would read them)."""
    model = SparseGP(**KW).fit(frames)
    assert hasattr(model, "training_diagnostics_")
    model.set_params(calibrate=False).fit(frames[:6])
    for name in ("training_diagnostics_", "calibration_groups_"):
        assert not hasattr(model, name), name
    assert len(model._train_frames) == 6


def test_committee_members_share_the_first_members_descriptor(frames):
    from kernelpot.uq.committee import Committee
    com = Committee(SparseGP(**KW), n_members=3, random_state=0).fit(frames)
    r0 = [m.descriptor_.radial_scaling for m in com.members_]
    assert r0 == [r0[0]] * 3
    assert hasattr(com.members_[0], "descriptor_choice_")
    assert not any(hasattr(m, "descriptor_choice_") for m in com.members_[1:])  # kept, not chosen again


def test_select_settings_ranks_what_the_default_fits(frames):
    """Without descriptor keys in the grid, each candidate is fitted as SparseGP() fits: its score is the
    evidence of the default fit with that setting (the descriptor chosen in it)."""
    from kernelpot.gp.tune import select_settings
    best, table = select_settings(frames, model=SparseGP(**KW), grid={"zeta": [4.0]})
    assert table[0]["score"] == pytest.approx(SparseGP(**KW).fit(frames).log_marginal_likelihood_, rel=1e-9)


def test_a_failing_scaled_candidate_leaves_the_unscaled_fit(frames, monkeypatch):
    """r0 = 0.05 A is outside SOAP's allowed range, so that candidate's fit raises: the default fit keeps
    unscaled SOAP, says why, and equals the explicit unscaled fit."""
    monkeypatch.setattr(sparse, "DEFAULT_RADIAL_SCALING", (0.01,))
    with pytest.warns(RuntimeWarning, match=r"SOAP\(radial_scaling=0.05\) failed \(ValueError"):
        model = SparseGP(**KW).fit(frames)
    unscaled, failed = model.descriptor_choice_["candidates"]
    assert failed["log_likelihood"] == -np.inf and "radial_scaling" in failed["error"]
    assert model.descriptor_choice_["chosen"] == 0 and model.descriptor_.radial_scaling is None
    _same_model(model, SparseGP(descriptor=SOAP(), **KW).fit(frames), emt_frames(1, seed=9)[0])


def test_a_model_warning_made_an_error_stops_an_explicit_fit_where_it_arises(frames):
    """With RuntimeWarning as an error, "hyperparameters at their bounds" (EMT's noise-free energies put the
    energy noise at its floor) raises inside the hyperparameter search: nothing after it is fitted."""
    model = SparseGP(descriptor=SOAP(), **KW)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeWarning, match="at their bounds"):
            model.fit(frames)
    assert not hasattr(model, "training_diagnostics_") and not hasattr(model, "theta_")
