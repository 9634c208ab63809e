"""Committee baseline: spread behaves like an epistemic uncertainty; estimator contract."""

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from sklearn.base import clone

from kernelpot import SparseGP
from kernelpot.uq.committee import Committee
from conftest import emt_frames


@pytest.fixture(scope="module")
def data():
    train = emt_frames(16, size=(1, 1, 2), seed=21, noise={"forces": 0.02})
    test = emt_frames(6, size=(1, 1, 2), seed=22)
    far = emt_frames(6, size=(1, 1, 2), seed=23, rattle=0.25, strain=0.08)
    return train, test, far


@pytest.fixture(scope="module")
def template(small_soap):
    return SparseGP(descriptor=small_soap, n_sparse=30)


@pytest.fixture(scope="module")
def committee(data, template):
    return Committee(template, n_members=3, method="subsample", random_state=1).fit(data[0])


def _force_rms(x):
    return float(np.sqrt(np.mean(np.square(x))))


def test_spread_shrinks_with_more_data(data, template, committee):
    train, test, _ = data
    small = Committee(template, n_members=3, method="subsample", random_state=1).fit(train[:3])
    s_small = small.predict(test)["forces_std"].mean()
    s_large = committee.predict(test)["forces_std"].mean()
    assert s_large < 0.7 * s_small


def test_spread_larger_far_from_data(data, committee):
    _, test, far = data
    near = committee.predict(test)
    away = committee.predict(far)
    assert away["forces_std"].mean() > 3 * near["forces_std"].mean()
    assert np.median(away["energy_std"] / away["n_atoms"]) > 3 * np.median(near["energy_std"] / near["n_atoms"])


def test_mean_close_to_single_model_in_distribution(data, template, committee):
    train, test, _ = data
    single = clone(template).fit(train).predict(test)
    pred = committee.predict(test)
    ref = np.concatenate([a.get_forces() for a in test])
    diff = _force_rms(pred["forces"] - single["forces"])
    # the single model lies inside the committee's spread, far below the force scale
    assert diff < 2 * _force_rms(pred["forces_std"])
    assert diff < 0.05 * _force_rms(ref)
    # and the committee mean is about as accurate as the single model
    assert _force_rms(pred["forces"] - ref) < 1.5 * _force_rms(single["forces"] - ref)


def test_prediction_is_mean_and_std_over_members(data, committee, template):
    _, test, _ = data
    pred = committee.predict(test, return_members=True)
    members = pred["members"]
    assert len(members) == 3
    for k in ("energy", "forces", "stress"):
        stack = np.stack([m[k] for m in members])
        np.testing.assert_allclose(pred[k], stack.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(pred[f"{k}_std"], stack.std(axis=0, ddof=1), rtol=1e-12)
        np.testing.assert_array_equal(pred[f"{k}_std_epistemic"], pred[f"{k}_std"])
    # same keys as a single model's prediction
    single_keys = set(committee.members_[0].predict(test[:2]).keys())
    assert single_keys == set(committee.predict(test[:2]).keys())
    # members really differ, else the spread would be zero
    assert np.all(pred["forces_std"] > 0)


def test_calculator_over_committee(data, committee):
    _, test, _ = data
    a = test[0].copy()
    a.calc = committee.calculator()
    f = a.get_forces()
    p = committee.predict([test[0]])
    np.testing.assert_allclose(f, p["forces"], rtol=1e-10)
    np.testing.assert_allclose(a.calc.results["forces_std"], p["forces_std"], rtol=1e-10)
    assert a.get_potential_energy() == pytest.approx(p["energy"][0], rel=1e-12)


def test_estimator_contract(template, data):
    c = Committee(template, n_members=2, method="bootstrap", random_state=7)
    assert c.get_params(deep=False) == {"model": template, "n_members": 2, "method": "bootstrap",
                                        "random_state": 7}
    assert c.get_params()["model__n_sparse"] == 30
    assert not hasattr(c, "members_")
    c2 = clone(c)
    assert c2.get_params()["n_members"] == 2 and c2.model is not template
    train = emt_frames(5, size=(1, 1, 1), seed=8)
    assert c.fit(train) is c
    assert len(c.members_) == 2
    assert len({id(m) for m in c.members_}) == 2 and all(m is not template for m in c.members_)
    assert not hasattr(template, "alpha_")  # the template is never fitted
    # bootstrap: n draws with replacement
    for idx in c.member_frames_:
        assert len(idx) == len(train) and idx.min() >= 0 and idx.max() < len(train)
    assert any(len(np.unique(idx)) < len(idx) for idx in c.member_frames_)
    # deterministic given random_state
    d = clone(c).fit(train)
    for a, b in zip(c.member_frames_, d.member_frames_):
        np.testing.assert_array_equal(a, b)


def test_subsample_and_sparse_methods(template):
    train = emt_frames(7, size=(1, 1, 1), seed=9)
    sub = Committee(template, n_members=3, method="subsample").fit(train)
    for idx in sub.member_frames_:
        assert len(idx) == 4 and len(np.unique(idx)) == 4
    assert len({tuple(i) for i in sub.member_frames_}) > 1
    sp = Committee(SparseGP(descriptor=template.descriptor, n_sparse=10), n_members=3, method="sparse").fit(train)
    for idx in sp.member_frames_:
        np.testing.assert_array_equal(idx, np.arange(len(train)))
    seeds = {m.random_state for m in sp.members_}
    assert len(seeds) == 3
    assert len({tuple(m.sparse_index_) for m in sp.members_}) > 1


def test_isolated_atoms_go_to_every_member(template):
    frames = emt_frames(4, size=(1, 1, 1), seed=5)
    atom = Atoms("Cu", positions=[[0.0, 0.0, 0.0]], cell=[12.0] * 3, pbc=False)
    atom.calc = EMT()
    e = atom.get_potential_energy()
    atom.calc = SinglePointCalculator(atom, energy=e, forces=np.zeros((1, 3)))
    atom.info["config_type"] = "isolated_atom"
    frames = frames[:3] + [atom] + frames[3:]
    c = Committee(template, n_members=2, method="subsample").fit(frames)
    for idx, m in zip(c.member_frames_, c.members_):
        assert 3 in idx and len(idx) == 1 + 2
        assert m.e0_[29] == pytest.approx(e)


@pytest.mark.parametrize("kw, err", [({"n_members": 1}, ValueError), ({"method": "jackknife"}, ValueError),
                                     ({"model": "SparseGP"}, TypeError)])
def test_bad_parameters(kw, err, data):
    with pytest.raises(err):
        Committee(**kw).fit(data[0][:4])


def test_predict_before_fit():
    with pytest.raises(RuntimeError, match="not fitted"):
        Committee().predict(emt_frames(1, size=(1, 1, 1)))
