"""Checks at every entrance: fit, predict_frame, predict and the calculator say what validate says.

Also: warnings reach the user at fit time, and noise given in the data (GAP keys) is honoured.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from kernelpot import SparseGP, validate
from kernelpot.io.validation import DataWarning


def _validate_errors(frames):
    return validate(frames, require=(), raise_on_error=False).errors


def _nan_frame(frames, k=3):
    bad = frames[1].copy()
    bad.calc = SinglePointCalculator(bad, **frames[1].calc.results)
    bad.positions[k, 2] = np.nan
    return bad


# ------------------------------------------------------------------------------------ fit


def test_fit_rejects_nan_positions_with_validates_message(cu_frames, small_soap):
    frames = [cu_frames[0], _nan_frame(cu_frames)]
    msg = _validate_errors(frames)
    assert msg == ["frame 1 ('rattle'): positions are not finite (NaN/inf) for atoms [3]"]
    with pytest.raises(ValueError) as exc:
        SparseGP(descriptor=small_soap, n_sparse=10).fit(frames)
    assert msg[0] in str(exc.value)


def test_fit_rejects_empty_structure_and_degenerate_cell(cu_frames, small_soap):
    empty = Atoms()
    empty.calc = SinglePointCalculator(empty, energy=0.0)
    flat = cu_frames[2].copy()
    flat.calc = SinglePointCalculator(flat, energy=cu_frames[2].get_potential_energy())
    flat.cell[2] = flat.cell[0] + flat.cell[1]                   # linearly dependent
    frames = [cu_frames[0], empty, flat]
    errors = _validate_errors(frames)
    assert sorted({e.split(":")[0] for e in errors}) == ["frame 1", "frame 2 ('rattle')"]
    # the dependent cell itself is named (not only the labels left behind by the cell change)
    assert any(e.startswith("frame 2 ('rattle'): cell:") and "linearly dependent" in e for e in errors)
    with pytest.raises(ValueError) as exc:
        SparseGP(descriptor=small_soap, n_sparse=10).fit(frames)
    for e in errors:
        assert e in str(exc.value)
    assert "posterior precision" not in str(exc.value)


def test_fit_warns_once_for_many_unit_slips(cu_frames, small_soap):
    """A stress of 507 GPa (a GPa value stored as eV/Å^3 ... ) in several frames: one DataWarning."""
    frames = []
    for i, a in enumerate(cu_frames[:6]):
        b = a.copy()
        res = dict(a.calc.results)
        if i in (1, 2, 4):
            res["stress"] = np.full(6, 507.0 * units.GPa)
        b.calc = SinglePointCalculator(b, **res)
        frames.append(b)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        SparseGP(descriptor=small_soap, n_sparse=10, calibrate=False, sigma_stress=1.0).fit(frames)
    data = [w for w in rec if issubclass(w.category, DataWarning)]
    assert len(data) == 1
    text = str(data[0].message)
    # EMT energies are positive: validate's data-set warning about that is the fourth line
    assert "4 validation warning(s) in 6 frames" in text
    for i in (1, 2, 4):
        assert f"frame {i} ('rattle'): stress: max |component| = 507 GPa" in text


# -------------------------------------------------------------------------------- predict


def test_predict_frame_rejects_nan_positions(cuau_model, cuau_frames):
    bad = _nan_frame(cuau_frames, k=1)
    with pytest.raises(ValueError, match=r"structure \('rattle'\): positions are not finite \(NaN/inf\) for "
                                         r"atoms \[1\]"):
        cuau_model.predict_frame(bad)
    # the calculator goes through predict_frame
    bad.calc = cuau_model.calculator()
    with pytest.raises(ValueError, match="positions are not finite"):
        bad.get_potential_energy()
    # a batch names the frame before computing anything
    with pytest.raises(ValueError, match=r"frame 2 \('rattle'\): positions are not finite"):
        cuau_model.predict([cuau_frames[0], cuau_frames[1], bad])


def test_predict_rejects_inf_position_and_bad_cell(cuau_model, cuau_frames):
    a = cuau_frames[0].copy()
    a.positions[0, 0] = np.inf
    with pytest.raises(ValueError, match="positions are not finite"):
        cuau_model.predict_frame(a)
    b = cuau_frames[0].copy()
    b.cell[1] = 0.0
    with pytest.raises(ValueError, match=r"cell: pbc=\[True, True, True\] but the periodic lattice vectors"):
        cuau_model.predict_frame(b)


def test_empty_structure_is_rejected_by_every_prediction_path(cuau_model, cuau_frames):
    empty = Atoms()
    with pytest.raises(ValueError, match="structure: the structure has no atoms"):
        cuau_model.predict_frame(empty)
    with pytest.raises(ValueError, match=r"(?s)predict: 1 problem\(s\).*frame 1: the structure has no atoms"):
        cuau_model.predict([cuau_frames[0], empty, cuau_frames[1]])
    empty.calc = cuau_model.calculator()
    with pytest.raises(ValueError, match="no atoms"):
        empty.get_potential_energy()
    with pytest.raises(ValueError, match="at least one frame"):
        cuau_model.predict([])
    # the good frames of the batch still predict on their own, unchanged
    p = cuau_model.predict([cuau_frames[0], cuau_frames[1]])
    assert p["energy"][0] == pytest.approx(cuau_model.predict_frame(cuau_frames[0])["energy"])


def test_unknown_species_named_in_every_path(cuau_model):
    al = bulk("Al", "fcc", 4.05)
    with pytest.raises(ValueError, match=r"species: structure contains elements \['Al'\] that the model was "
                                         r"not trained on"):
        cuau_model.predict_frame(al)
    with pytest.raises(ValueError, match=r"frame 0: species: .*\['Al'\]"):
        cuau_model.predict([al])


# ------------------------------------------------------------------ noise given in the data


def _fit(frames, small_soap):
    model = SparseGP(descriptor=small_soap, n_sparse=30, sigma_energy=0.002, sigma_force=0.05,
                     sigma_stress=0.005, delta=1.0, calibrate=False)
    return model.fit(frames)


def _copy(a, **changes):
    b = a.copy()
    res = dict(a.calc.results) | changes
    b.calc = SinglePointCalculator(b, **res)
    return b


def test_huge_given_sigma_removes_a_frames_influence(cu_frames, small_soap):
    """A frame with wrong labels and huge energy/force/virial sigma changes the predictions ~not at all."""
    clean = [_copy(a) for a in cu_frames]
    wrong = _copy(cu_frames[3], energy=cu_frames[3].get_potential_energy() + 2.0,
                  forces=cu_frames[3].get_forces() + 1.0, stress=cu_frames[3].get_stress() + 0.05)
    test = cu_frames[:3]
    ref = _fit(clean, small_soap).predict(test, return_std=False)
    naive = _fit(clean[:3] + [wrong] + clean[4:], small_soap).predict(test, return_std=False)
    def with_sigma(a):
        b = _copy(a)
        b.info.update(energy_sigma=1e4, force_sigma=1e4, virial_sigma=1e6)
        return b

    given = _fit(clean[:3] + [with_sigma(wrong)] + clean[4:], small_soap).predict(test, return_std=False)
    # (the frame stays in the data, so the sparse set is the same: only its labels' weight changes)
    right = _fit(clean[:3] + [with_sigma(clean[3])] + clean[4:], small_soap).predict(test, return_std=False)
    # without the sigmas the wrong labels move the forces by ~9 meV/Å ...
    assert np.abs(naive["forces"] - ref["forces"]).max() > 0.005
    # ... with them the labels of that frame, right or wrong, do not matter
    np.testing.assert_allclose(given["forces"], right["forces"], atol=1e-4)
    np.testing.assert_allclose(given["energy"] / 8, right["energy"] / 8, atol=1e-4)


def test_given_sigmas_are_absolute_when_noise_is_fixed(cu_frames, small_soap):
    """energy_sigma (eV, total) equal to n * sigma_energy is the same fit as no sigma (GAP units)."""
    frames = [_copy(a) for a in cu_frames]
    base = _fit(frames, small_soap).predict(cu_frames[:2], return_std=False)
    same = [_copy(a) for a in cu_frames]
    for a in same:
        a.info.update(energy_sigma=0.002 * len(a), force_sigma=0.05)
    again = _fit(same, small_soap).predict(cu_frames[:2], return_std=False)
    np.testing.assert_allclose(again["forces"], base["forces"], atol=1e-9)
    np.testing.assert_allclose(again["energy"], base["energy"], atol=1e-9)


def test_masked_forces_do_not_enter(cu_frames, small_soap):
    frames = [_copy(a) for a in cu_frames]
    f = cu_frames[5].get_forces().copy()
    f[[0, 4]] += 3.0                                          # wrong forces on two atoms ...
    mask = np.zeros(len(f), dtype=bool)
    mask[[0, 4]] = True                                        # ... masked (GAP force_mask)
    bad = _copy(cu_frames[5], forces=f)
    bad.arrays["force_mask"] = mask
    good = _copy(cu_frames[5])
    good.arrays["force_mask"] = mask.copy()
    p_bad = _fit(frames[:5] + [bad] + frames[6:], small_soap).predict(cu_frames[:2], return_std=False)
    p_good = _fit(frames[:5] + [good] + frames[6:], small_soap).predict(cu_frames[:2], return_std=False)
    np.testing.assert_allclose(p_bad["forces"], p_good["forces"], atol=1e-9)
    unmasked = _copy(cu_frames[5], forces=f)
    p_un = _fit(frames[:5] + [unmasked] + frames[6:], small_soap).predict(cu_frames[:2], return_std=False)
    assert np.abs(p_un["forces"] - p_good["forces"]).max() > 0.01


def test_masked_forces_with_leave_one_out(cu_frames, small_soap):
    """The calibration pass (leave-one-out) runs with masked atoms and lists only the fitted ones."""
    frames = [_copy(a) for a in cu_frames]
    mask = np.zeros(len(frames[2]), dtype=bool)
    mask[[1, 2]] = True
    frames[2].arrays["force_mask"] = mask
    model = SparseGP(descriptor=small_soap, n_sparse=30).fit(frames)
    d = model.training_diagnostics_
    atoms2 = d.atom[(d.frame == 2) & (d.kind == "forces")]
    assert sorted(set(atoms2.tolist())) == [0] + list(range(3, len(frames[2])))


# ------------------------------------------------------------------ one label definition in fit


def test_fit_uses_free_energy_and_says_so(cu_frames, small_soap):
    """energy and free_energy differ: the fit is that of free_energy alone, with one DataWarning."""
    plain = [_copy(a) for a in cu_frames]
    both = []
    for a in cu_frames:
        e = a.get_potential_energy()
        both.append(_copy(a, energy=e + 0.4, free_energy=e))   # 'energy' is the sigma->0 value: not fitted
    only_free = []
    for a in cu_frames:
        b = a.copy()
        res = {k: v for k, v in a.calc.results.items() if k != "energy"}
        b.calc = SinglePointCalculator(b, free_energy=a.get_potential_energy(), **res)
        only_free.append(b)
    ref = _fit(plain, small_soap).predict(cu_frames[:2], return_std=False)
    with pytest.warns(DataWarning, match=r"energy and free_energy differ in 12 of 12 frames"):
        p_both = _fit(both, small_soap).predict(cu_frames[:2], return_std=False)
    p_free = _fit(only_free, small_soap).predict(cu_frames[:2], return_std=False)
    for p in (p_both, p_free):
        np.testing.assert_allclose(p["energy"], ref["energy"], atol=1e-8)
        np.testing.assert_allclose(p["forces"], ref["forces"], atol=1e-8)


def test_fit_accepts_3x3_float32_stress_as_voigt(cu_frames, small_soap):
    from ase.stress import voigt_6_to_full_3x3_stress
    plain = [_copy(a) for a in cu_frames]
    full = [_copy(a, stress=voigt_6_to_full_3x3_stress(a.get_stress()).astype(np.float32),
                  forces=a.get_forces().astype(np.float32)) for a in cu_frames]
    assert validate(full, require=("energy", "forces", "stress")).ok
    ref = _fit(plain, small_soap).predict(cu_frames[:2], return_std=False)
    p = _fit(full, small_soap).predict(cu_frames[:2], return_std=False)
    np.testing.assert_allclose(p["stress"], ref["stress"], rtol=1e-4, atol=1e-6)   # float32 round-off
    np.testing.assert_allclose(p["forces"], ref["forces"], atol=1e-5)


def test_refit_and_update_check_structures_like_fit(small_soap):
    """refit/update are entrances too: NaN positions and unknown species are refused, naming the frame."""
    from kernelpot import SparseGP
    from conftest import emt_frames
    frames = emt_frames(6, seed=3)
    model = SparseGP(descriptor=small_soap, n_sparse=20, verbose=False, calibrate=False).fit(frames)
    bad = frames[1].copy()
    bad.calc = frames[1].calc
    bad.positions[2, 0] = np.nan
    with pytest.raises(ValueError, match="frame 1"):
        model.update([frames[0], bad])
    with pytest.raises(ValueError, match="not finite|NaN"):
        model.refit([frames[0], bad])
    au = frames[2].copy()
    au.calc = frames[2].calc
    au.numbers[0] = 79
    with pytest.raises(ValueError, match="Au"):
        model.update([au])


def test_a_given_sigma_below_the_noise_floor_is_fitted_at_the_floor(cu_frames, small_soap):
    """GAP's energy_sigma = 1e-6 eV on one structure (or a force/stress sigma far below DFT's reach) is
    fitted with the noise floor: the same fit as a sigma at the floor, a warning naming frame and field,
    and a default (calibrated) fit and leave-one-group-out that run instead of failing on rounding."""
    from kernelpot.io.labels import NOISE_FLOOR
    n = len(cu_frames[2])
    tiny, at_floor = [_copy(a) for a in cu_frames], [_copy(a) for a in cu_frames]
    tiny[2].info.update(energy_sigma=1e-6, force_sigma=1e-7, stress_sigma=1e-9)
    at_floor[2].info.update(energy_sigma=n * NOISE_FLOOR["energy"], force_sigma=NOISE_FLOOR["forces"],
                            stress_sigma=NOISE_FLOOR["stress"])
    with pytest.warns(DataWarning) as rec:
        p = _fit(tiny, small_soap).predict(cu_frames[:2], return_std=False)
    text = "\n".join(str(w.message) for w in rec)
    for field in ("energy_sigma = 1e-06 eV", "force sigma = 1e-07 eV/Å", "stress sigma = 1e-09 eV/Å^3"):
        assert f"frame 2 ('rattle'): {field}" in text
    q = _fit(at_floor, small_soap).predict(cu_frames[:2], return_std=False)
    np.testing.assert_allclose(p["forces"], q["forces"], atol=1e-12)
    np.testing.assert_allclose(p["energy"], q["energy"], atol=1e-12)
    # the default fit calibrates on leave-one-group-out, whose downdate of the posterior precision
    # lost positive definiteness to rounding with the sigma as given
    frames = [_copy(a) for a in cu_frames]
    for a in frames[:4]:
        a.info["config_type"] = "first"
    frames[0].info["energy_sigma"] = 1e-6
    model = SparseGP(descriptor=small_soap, n_sparse=30).fit(frames)
    assert set(model.std_weights_) >= {"energy", "forces"}


def test_noise_of_labels_with_their_own_sigma_is_reported_as_used(cu_frames, small_soap):
    """With learned noise a sigma in the data is a relative weight: one sigma on every frame cancels, and
    the noise those labels are fitted with equals the noise learned without it.  ``model.noise_`` is then the
    noise of a label without a sigma (here ~200x the stress labels' noise): it must not trip the 'explains little'
    warning, and ``noise_as_used`` / the CLI report the noise as used."""
    from kernelpot.cli import _noise_table
    from kernelpot.gp.assembly import noise_as_used
    plain = SparseGP(descriptor=small_soap, n_sparse=30, calibrate=False).fit(cu_frames)
    given = [_copy(a) for a in cu_frames]
    for a in given:
        a.info.update(energy_sigma=0.001 * len(a), force_sigma=0.05, stress_sigma=1e-5)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        model = SparseGP(descriptor=small_soap, n_sparse=30, calibrate=False).fit(given)
    assert not [w for w in rec if "explains little" in str(w.message)]
    used = noise_as_used(model, given)
    assert set(used) == {"energy", "forces", "stress"}
    assert all(list(idx) == list(range(len(given))) for _, idx in used.values())
    for kind in ("forces", "stress"):
        assert used[kind][0] == pytest.approx(plain.noise_[kind], rel=0.05)   # (optimiser tolerance)
    assert model.noise_["stress"] > 100 * used["stress"][0]
    assert "as fitted (precision-weighted mean over the 12 frames that give their own sigma" in _noise_table(model)
    assert noise_as_used(plain, cu_frames) == {}
    # sigmas that call every label worthless (1e12): the noise as used dwarfs the labels, and the fit says so
    # (it returned with delta at its bound, force sigma ~5 meV/Å against errors of 1 eV/Å, and a bounds warning)
    for a in given:
        a.info.update(energy_sigma=1e12, force_sigma=1e12, stress_sigma=1e12)
    with pytest.warns(RuntimeWarning, match=r"forces noise the labels are fitted with \(their own sigmas\) "
                                            r"[0-9.e+]+ eV/Å is [0-9.e+]+ times the RMS"):
        SparseGP(descriptor=small_soap, n_sparse=30, calibrate=False).fit(given)
