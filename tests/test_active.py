"""Tests for kernelpot.active: on-the-fly learning with EMT Cu as the reference."""

import json

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT

from kernelpot import SOAP, SparseGP, sampling
from kernelpot.workflows.active import ActiveLearner, random_selection_baseline, run_active_md

# Fixed hyperparameters keep every fit and update free of likelihood optimisation (fast);
# delta sets the prior force scale so that 1200 K configurations are clearly uncertain.
# fixed hyperparameters and raw GP variances: the thresholds below are in units of the raw epistemic std
FIXED = dict(delta=3.0, sigma_energy=1e-3, sigma_force=0.01, sigma_stress=1e-3, calibrate=False)


@pytest.fixture(scope="module")
def cell():
    return bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 2))  # 8 atoms


@pytest.fixture(scope="module")
def soap():
    return SOAP(r_cut=4.0, n_max=4, l_max=3, atom_sigma=0.5)


@pytest.fixture(scope="module")
def init_frames(cell):
    return sampling.thermal_rattle(cell, EMT(), 100.0, 3, random_state=1)


@pytest.fixture(scope="module")
def hot_frames(cell):
    """Reference (EMT) Langevin snapshots at 1200 K: far hotter than the 100 K training data."""
    return sampling.md_sample(cell, EMT(), [1200.0], 3, interval=15, equilibration=30, random_state=5).frames


@pytest.fixture(scope="module")
def model(soap, init_frames):
    return SparseGP(descriptor=soap, n_sparse=40, **FIXED).fit(init_frames)


def _max_std(model, frames):
    return max(float(model.predict_frame(a)["forces_std_epistemic"].max()) for a in frames)


def test_triggers_when_uncertain_and_logs_every_call(model, cell, init_frames, tmp_path):
    path = tmp_path / "al.jsonl"
    seen = []
    al = ActiveLearner(EMT(), model, threshold=0.03, check_interval=2, refit_every=3,
                       temperature=1200.0, max_reference_calls=3, max_steps=60, log_path=path,
                       callback=lambda m, n: seen.append((n, len(m._train_frames))))
    al.run(cell)
    assert al.stop_reason_ == "max_reference_calls"
    assert len(al.log_) == 3
    assert len(al.frames_) == len(init_frames) + 3
    for k, e in enumerate(al.log_, start=1):
        assert e["call"] == k and e["trigger"] == "forces"
        assert e["forces_std_max"] > al.threshold
        assert e["step"] % al.check_interval == 0
        assert e["force_rmse"] > 0 and e["force_max_error"] >= e["force_rmse"]
    # the labelled frames are exactly the triggering configurations, with EMT labels
    for e, frame in zip(al.log_, al.frames_[len(init_frames):]):
        assert frame.info["config_type"] == "active_learning"
        ref = frame.copy()
        ref.calc = EMT()
        np.testing.assert_allclose(frame.get_forces(), ref.get_forces(), atol=1e-10)
    # JSON lines hold the same records; the callback saw the start and every call
    lines = [json.loads(s) for s in path.read_text().splitlines()]
    assert [d["call"] for d in lines] == [1, 2, 3]
    assert lines[1]["forces_std_max"] == pytest.approx(al.log_[1]["forces_std_max"])
    assert seen == [(0, 3), (1, 4), (2, 5), (3, 6)]
    # the caller's model is not modified
    assert len(model._train_frames) == len(init_frames)


def test_no_trigger_below_threshold(model, cell):
    al = ActiveLearner(EMT(), model, threshold=50.0, temperature=1200.0, max_steps=12,
                       check_interval=3).run(cell)
    assert al.log_ == [] and al.stop_reason_ == "max_steps" and al.last_run_steps_ == 12
    assert len(al.frames_) == len(model._train_frames)
    # an element the model has never seen: named as the learner's limit, before any MD step or reference call
    alloy = cell.copy()
    alloy[0].symbol = "Ag"
    with pytest.raises(ValueError, match=r"ActiveLearner.run: the starting structure holds \['Ag'\].*seed the "
                                         r"learner with labelled structures that contain Ag"):
        al.run(alloy)
    assert al.log_ == [] and al._n_runs == 1


def test_energy_trigger(model, cell):
    al = ActiveLearner(EMT(), model, threshold=50.0, energy_threshold=1e-6, temperature=1200.0,
                       max_reference_calls=1, max_steps=5).run(cell)
    assert [e["trigger"] for e in al.log_] == ["energy"]
    assert al.log_[0]["energy_std_per_atom"] > 1e-6 and al.log_[0]["threshold"] == 1e-6
    # the threshold is per atom: twice the per-atom std (a quarter of the total-energy std of
    # these 8 atoms) at the same first configuration does not trigger
    assert al.log_[0]["step"] == 1
    big = 2 * al.log_[0]["energy_std_per_atom"]
    quiet = ActiveLearner(EMT(), model, threshold=50.0, energy_threshold=big, temperature=1200.0,
                          max_steps=1).run(cell)
    assert quiet.log_ == []


@pytest.mark.parametrize("rule, params, steps_check", [
    ("max_steps", dict(threshold=50.0, max_steps=9), lambda n: n == 9),
    ("patience", dict(threshold=50.0, max_steps=100, patience=7), lambda n: n == 7),
    ("max_time", dict(threshold=50.0, max_steps=100, max_time=1e-9), lambda n: n == 1),
    ("max_reference_calls", dict(threshold=1e-3, max_steps=100, max_reference_calls=1),
     lambda n: n == 1),
    ("max_restarts", dict(threshold=50.0, max_steps=100, max_force=1e-6, max_restarts=3),
     lambda n: n == 4),
])
def test_each_stopping_rule(model, cell, rule, params, steps_check):
    al = ActiveLearner(EMT(), model, temperature=1200.0, **params).run(cell)
    assert al.stop_reason_ == rule
    assert steps_check(al.last_run_steps_), al.last_run_steps_
    if rule == "max_restarts":
        assert len(al.restarts_) == 4 and all(r["reason"] == "max_force" for r in al.restarts_)
    if rule == "max_reference_calls":
        # the budget is over the learner's life: a second run stops at once
        al.run(cell)
        assert al.stop_reason_ == "max_reference_calls" and al.last_run_steps_ == 0
        assert len(al.log_) == 1


def test_min_distance_guard_restores_last_safe_configuration(model, cell):
    # a guard distance larger than any real neighbour distance fires at the first check
    al = ActiveLearner(EMT(), model, threshold=50.0, temperature=300.0, max_steps=50,
                       min_distance=3.0, max_restarts=1, check_interval=2).run(cell)
    assert al.stop_reason_ == "max_restarts"
    assert [r["reason"] for r in al.restarts_] == ["min_distance", "min_distance"]
    assert al.restarts_[0]["value"] < 3.0
    assert [r["restored_step"] for r in al.restarts_] == [0, None]
    # after the first restart the atoms were put back at the start (the last safe state)
    # and moved only one more check interval
    disp = np.linalg.norm(al.atoms_.positions - cell.positions, axis=1).max()
    assert disp < 0.1


def test_uncertainty_lower_after_learning(model, soap, init_frames, cell, hot_frames):
    before = _max_std(model, hot_frames)
    al = ActiveLearner(EMT(), model, threshold=0.03, check_interval=2, refit_every=2,
                       temperature=1200.0, max_reference_calls=6, max_steps=80).run(cell)
    assert len(al.log_) >= 4
    after = _max_std(al.model_, hot_frames)
    assert after < 0.8 * before, (before, after)
    # and the force error on those fresh reference snapshots went down with it
    ref = np.concatenate([a.get_forces() for a in hot_frames])
    err = lambda m: np.sqrt(np.mean((m.predict(hot_frames, return_std=False)["forces"] - ref) ** 2))
    assert err(al.model_) < err(model)


def test_update_between_full_fits_keeps_sparse_set(soap, init_frames, cell):
    snaps = []

    def record(m, n):
        snaps.append((n, id(m), m.sparse_.X.copy(), len(m._train_frames)))

    small = SparseGP(descriptor=soap, n_sparse=10, **FIXED)
    al = ActiveLearner(EMT(), small, threshold=1e-3, check_interval=1, refit_every=3,
                       novelty_threshold=None, temperature=600.0, max_reference_calls=4,
                       max_steps=40, callback=record)
    al.fit(init_frames).run(cell)
    kinds = [e["model_update"] for e in al.log_]
    assert kinds == ["update", "update", "fit", "update"]
    assert [e["n_train"] for e in al.log_] == [4, 5, 6, 7]
    # between full fits: same model object, same sparse set, one more training frame each time
    for (n0, id0, S0, t0), (n1, id1, S1, t1) in zip(snaps[:2], snaps[1:3]):
        assert id1 == id0 and t1 == t0 + 1
        np.testing.assert_array_equal(S1, S0)
    # the full fit re-selects sparse points from all six frames
    assert snaps[3][1] != snaps[2][1] and snaps[3][3] == 6
    assert not np.array_equal(snaps[3][2], snaps[2][2])
    assert snaps[4][1] == snaps[3][1]
    np.testing.assert_array_equal(snaps[4][2], snaps[3][2])


def test_novelty_triggers_full_fit(soap, init_frames, hot_frames):
    from kernelpot.workflows.active import _Trainer

    m = SparseGP(descriptor=soap, n_sparse=10, **FIXED).fit(init_frames)
    tr = _Trainer(m, init_frames, refit_every=None, novelty_threshold=2.0)
    # the training environments define the covered radius: their novelty is <= 1
    assert max(tr.residual(a).max() for a in init_frames) / tr.coverage() == pytest.approx(1.0)
    # hot configurations lie far outside it and force a full fit
    info = tr.add(hot_frames[0])
    assert info["novelty"] > 2.0 and info["model_update"] == "fit" and info["refit_reason"] == "novelty"
    assert tr.model is not m and len(tr.model._train_frames) == len(init_frames) + 1


def test_random_selection_baseline(model, soap, init_frames, hot_frames, cell):
    seen = []
    res = random_selection_baseline(hot_frames, 2, SparseGP(descriptor=soap, n_sparse=40, **FIXED),
                                    initial_frames=init_frames, refit_every=5, random_state=3,
                                    callback=lambda m, n: seen.append(n))
    assert seen == [0, 1, 2]
    assert len(res.indices) == 2 and len(set(res.indices.tolist())) == 2
    assert len(res.frames) == len(init_frames) + 2
    assert [res.frames[len(init_frames) + k] is hot_frames[i] for k, i in enumerate(res.indices)] == [True, True]
    # same seed, same choice; unlabelled pool frames need the reference
    res2 = random_selection_baseline(hot_frames, 2, model, random_state=3, refit_every=5)
    np.testing.assert_array_equal(res2.indices, res.indices)
    bare = [a.copy() for a in hot_frames]
    with pytest.raises(ValueError, match="no labels"):
        random_selection_baseline(bare, 1, model)
    res3 = random_selection_baseline(bare, 1, model, reference=EMT(), random_state=3)
    np.testing.assert_allclose(res3.frames[-1].get_forces(), hot_frames[res3.indices[0]].get_forces(),
                               atol=1e-10)


def test_run_active_md_and_input_checks(soap, init_frames, cell):
    al = run_active_md(cell, EMT(), frames=init_frames, model=SparseGP(descriptor=soap, n_sparse=40, **FIXED),
                       threshold=50.0, max_steps=3, dynamics="verlet")
    assert al.stop_reason_ == "max_steps" and len(al.frames_) == len(init_frames)
    with pytest.raises(RuntimeError, match="fit"):
        ActiveLearner(EMT(), SparseGP()).run(cell)
    with pytest.raises(ValueError, match="threshold"):
        ActiveLearner(EMT(), threshold=-0.1).fit(init_frames)
    with pytest.raises(ValueError, match="dynamics"):
        ActiveLearner(EMT(), dynamics="nose").fit(init_frames)


def test_continues_with_reference_forces_after_label(model, cell):
    # one velocity-Verlet step, labelled at once: the second half kick must use the EMT
    # forces at the new positions, not the model's
    start = cell.copy()
    rng = np.random.default_rng(0)
    start.positions += rng.normal(scale=0.15, size=start.positions.shape)  # where the model errs
    start.set_momenta(rng.normal(scale=0.5, size=(len(start), 3)))
    dt = 2.0 * units.fs
    al = ActiveLearner(EMT(), model, threshold=1e-6, dynamics="verlet", timestep=dt,
                       max_reference_calls=1, max_steps=5).run(start)
    assert len(al.log_) == 1 and al.last_run_steps_ == 1
    m = start.get_masses()[:, None]
    p0, x0 = start.get_momenta(), start.get_positions()
    f_model0 = model.predict_frame(start, return_std=False)["forces"]
    x1 = x0 + dt * (p0 + 0.5 * dt * f_model0) / m
    np.testing.assert_allclose(al.atoms_.positions, x1, atol=1e-10)
    moved = start.copy()
    moved.positions = x1
    moved.calc = EMT()
    f_ref1 = moved.get_forces()
    f_model1 = model.predict_frame(moved, return_std=False)["forces"]
    assert np.abs(f_ref1 - f_model1).max() > 1e-3  # the two choices are distinguishable
    np.testing.assert_allclose(al.atoms_.get_momenta(), p0 + 0.5 * dt * (f_model0 + f_ref1), atol=1e-10)
