"""The repulsion prior below the training data (kernelpot.gp.wall): shape, derivatives, coverage, files, samples."""

import copy

import numpy as np
import pytest

from kernelpot import SparseGP
from kernelpot.baselines.zbl import zbl_pair
from kernelpot.descriptors.neighbors import SpeciesPairs
from kernelpot.gp.wall import WallPrior, wall_shape

from conftest import emt_frames, finite_difference_forces_stress, pair_test_structure


def test_shape_is_zbl_beyond_its_third_order_taylor_polynomial():
    za, zb, r0 = np.array([29]), np.array([79]), np.array([2.4])
    r = np.array([1.2])
    u, du = zbl_pair(r, za, zb)
    h = 1e-3
    # Taylor coefficients at r0 by finite differences of ZBL's energy itself
    e = [zbl_pair(r0 + k * h, za, zb)[0] for k in (-2, -1, 0, 1, 2)]
    d1 = (e[3] - e[1]) / (2 * h)
    d2 = (e[3] - 2 * e[2] + e[1]) / h ** 2
    d3 = (e[4] - 2 * e[3] + 2 * e[1] - e[0]) / (2 * h ** 3)
    x = r - r0
    w, dw = wall_shape(r, za, zb, r0)
    np.testing.assert_allclose(w, u - e[2] - d1 * x - d2 * x ** 2 / 2 - d3 * x ** 3 / 6, rtol=1e-5)
    np.testing.assert_allclose(dw, du - d1 - d2 * x - d3 * x ** 2 / 2, rtol=1e-5)
    # zero at and above the edge; value and slope vanish to fourth and third order below it
    assert np.all(wall_shape(np.array([2.4, 2.5, 4.0]), np.full(3, 29), np.full(3, 79), np.full(3, 2.4))[0] == 0)
    eps = np.array([1e-2, 5e-3])
    w, dw = wall_shape(2.4 - eps, np.full(2, 29), np.full(2, 79), np.full(2, 2.4))
    assert w[0] / w[1] == pytest.approx(16.0, rel=0.03) and dw[0] / dw[1] == pytest.approx(8.0, rel=0.03)
    assert np.all(w > 0) and np.all(dw < 0)  # ZBL is completely monotone: the rest steepens the repulsion


def _alloy():
    return pair_test_structure("alloy", compressed=True)


def _prior(atoms, r_min):
    pairs = SpeciesPairs.of(atoms.numbers).pairs
    return WallPrior(pairs, r_min + 0.1 * np.arange(len(pairs)))


def _energy(prior, atoms, xi):
    rows = prior.rows(atoms, forces=False)
    return 0.0 if rows is None else float(rows["energy"] @ xi)


@pytest.mark.parametrize("system", ["alloy", "molecule", "small cell"])
def test_force_and_stress_rows_are_derivatives_of_the_energy_row(system):
    atoms = pair_test_structure(system, compressed=True)
    prior = _prior(atoms, {"alloy": 2.6, "molecule": 1.5, "small cell": 2.4}[system])
    periodic = bool(atoms.pbc.all())
    rows = prior.rows(atoms, forces=True, stress=periodic)
    assert rows is not None and np.count_nonzero(rows["energy"]) >= 1
    xi = np.random.default_rng(0).standard_normal(len(prior.pairs))
    fd, fd_stress = finite_difference_forces_stress(lambda x: _energy(prior, x, xi), atoms, stress=periodic)
    np.testing.assert_allclose(rows["forces"] @ xi, fd, atol=1e-6 * max(1, np.abs(fd).max()))
    np.testing.assert_allclose(rows["local"].sum(axis=0), rows["energy"], rtol=1e-12)
    if periodic:
        np.testing.assert_allclose(rows["stress"] @ xi, fd_stress, atol=1e-7)
    # the variances are those of E = sum_t xi_t row_t with xi ~ N(0, 1)
    var = prior.variances(atoms, forces=True, stress=periodic)
    np.testing.assert_allclose(var["forces"], np.sum(rows["forces"] ** 2, axis=2))
    np.testing.assert_allclose(var["energy"], [np.sum(rows["energy"] ** 2)])


def test_energy_row_is_the_sum_over_unordered_pairs_below_the_data():
    """Brute force over atom pairs and periodic images: each pair below its species pair's r_min once."""
    atoms = _alloy()
    prior = _prior(atoms, 2.6)
    ref = np.zeros(len(prior.pairs))
    cell = atoms.cell.array
    shifts = [(x, y, z) for x in range(-2, 3) for y in range(-2, 3) for z in range(-2, 3)]
    for i in range(len(atoms)):
        for j in range(i, len(atoms)):
            for s in shifts:
                if i == j and s <= (0, 0, 0):  # an atom and its own image: each image pair once
                    continue
                r = np.linalg.norm(atoms.positions[j] + np.array(s) @ cell - atoms.positions[i])
                za, zb = sorted((atoms.numbers[i], atoms.numbers[j]))
                t = [tuple(p) for p in prior.pairs.tolist()].index((za, zb))
                ref[t] += wall_shape(np.array([r]), np.array([za]), np.array([zb]), prior.r_min[[t]])[0][0]
    assert np.count_nonzero(ref) >= 2
    np.testing.assert_allclose(prior.rows(atoms, forces=False)["energy"], ref, rtol=1e-12, atol=1e-14)


@pytest.fixture(scope="module")
def cold_hot(small_soap):
    """A copper model fitted on cells rattled by 0.03 Å, and cells rattled by 0.15 Å (pairs far below the data)."""
    cold = emt_frames(16, rattle=0.03, strain=0.01, seed=11)
    hot = emt_frames(4, rattle=0.15, strain=0.01, seed=12)
    model = SparseGP(descriptor=small_soap, n_sparse=60, verbose=False).fit(cold)
    return model, cold, hot


def _force_z(model, frames):
    z = []
    for a in frames:
        p = model.predict_frame(a)
        z.append(np.abs(p["forces"] - a.get_forces()).ravel() / p["forces_std"].ravel())
    return np.concatenate(z)


def test_compressed_pairs_are_covered_and_only_by_the_prior(cold_hot):
    """The issue's cold -> hot case: forces >= 90 % within 2 sigma and <= 1 % beyond 4 sigma; without the prior, not."""
    model, cold, hot = cold_hot
    assert model.wall_.r_min[0] > 2.3  # the cold data's shortest Cu-Cu distance
    z = _force_z(model, hot)
    assert np.mean(z < 2) >= 0.9 and np.mean(z > 4) <= 0.01
    wall, model.wall_ = model.wall_, None
    try:
        z_without = _force_z(model, hot)
        assert np.mean(z_without < 2) < 0.7  # the GP's own sigma misses the steepening repulsion
        # on the training structures (no pair below the data) the prior adds nothing
        for a in cold[:3]:
            p0 = model.predict_frame(a)
            model.wall_ = wall
            p1 = model.predict_frame(a)
            model.wall_ = None
            for key in ("energy_std", "forces_std", "stress_std", "energies_std"):
                np.testing.assert_array_equal(p0[key], p1[key])
    finally:
        model.wall_ = wall


def test_update_lowers_the_edge_and_files_keep_it(cold_hot, tmp_path):
    model, cold, hot = cold_hot
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = SparseGP.load(path)
    np.testing.assert_array_equal(loaded.wall_.r_min, model.wall_.r_min)
    a = hot[0]
    np.testing.assert_allclose(loaded.predict_frame(a)["forces_std"], model.predict_frame(a)["forces_std"], rtol=1e-10)
    shortest = min(float(np.min(h.get_all_distances(mic=True)[np.triu_indices(len(h), 1)])) for h in hot[:2])
    with pytest.raises(RuntimeError, match="refit"):
        loaded.update(hot[:2])
    grown = copy.deepcopy(model).update(hot[:2], optimize=False)
    assert grown.wall_.r_min[0] == pytest.approx(shortest)


GOOD = {"pairs": [[29, 29], [29, 79], [79, 79]], "r_min": [2.3, 2.4, 3.5]}


@pytest.mark.parametrize("entry, match", [
    ("not a dict", "exactly the keys"),
    ({"pairs": GOOD["pairs"]}, "exactly the keys"),
    ({**GOOD, "pairs": [29, 29, 29, 79, 79, 79]}, "list of \\[Z_a, Z_b\\]"),            # flat list
    ({**GOOD, "pairs": [[29, 29, 1], [29, 79, 1]], "r_min": [2.3, 2.4]}, "list of"),   # three columns
    ({**GOOD, "pairs": [[29, 29], [29.7, 79], [79, 79]]}, "list of"),                  # not an integer
    ({**GOOD, "r_min": [2.3, True, 3.5]}, "'r_min' must be"),
    ({**GOOD, "r_min": [2.3, 2.4]}, "'r_min' must be"),
    ({"pairs": [], "r_min": []}, "not the species pairs"),                             # prior switched off
    ({"pairs": [[1, 1]], "r_min": [0.7]}, "not the species pairs"),
    ({"pairs": [[29, 29], [29, 79]], "r_min": [2.3, 2.4]}, "not the species pairs"),   # a pair missing
    ({"pairs": [[29, 29], [29, 29], [79, 79]], "r_min": [2.3, 1.0, 3.5]}, "not the species pairs"),
    ({**GOOD, "r_min": [2.3, 1e4, 3.5]}, "in \\(0, 5"),                                # beyond the cutoff
    ({**GOOD, "r_min": [2.3, 0.0, 3.5]}, "in \\(0, 5"),
    ({**GOOD, "r_min": [2.3, float("nan"), 3.5]}, "in \\(0, 5"),
])
def test_a_file_entry_that_does_not_describe_the_model_is_refused(entry, match):
    with pytest.raises(ValueError, match="wall prior .*" + match):
        WallPrior.from_dict(entry, species=[29, 79], r_cut=5.0)
    assert WallPrior.from_dict(GOOD, species=[79, 29], r_cut=5.0).r_min.tolist() == GOOD["r_min"]


def test_load_names_the_file_of_a_forged_entry(cold_hot, tmp_path):
    import json
    model = cold_hot[0]
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    header = json.loads(str(data["header"]))
    header["fitted"]["wall_"]["r_min"] = [1e4]
    data["header"] = np.array(json.dumps(header))
    bad = tmp_path / "forged.npz"
    np.savez_compressed(bad, **data)
    with pytest.raises(ValueError, match="forged.npz.*wall prior"):
        SparseGP.load(bad)


def test_posterior_calculators_carry_the_prior_exactly(cold_hot):
    """Samples spread at a compressed cell by the weight posterior plus the prior's variance, unscaled."""
    model, cold, hot = cold_hot
    a = hot[0]
    n = 400
    energies = {}
    for key, wall in (("with", model.wall_), ("without", None)):
        saved, model.wall_ = model.wall_, wall
        try:
            energies[key] = np.array([c.model.predict_frame(a)["energy"] for c in model.posterior_calculators(n)])
        finally:
            model.wall_ = saved
    extra = energies["with"] - energies["without"]  # the same weight samples: the prior's term alone
    want = model.wall_.variances(a, forces=False)["energy"][0]
    assert want > 0
    assert np.var(extra) == pytest.approx(want, rel=4 * np.sqrt(2 / n))
    # the prior enters the samples, not the factor that scales the weight deviations
    scale = model.posterior_calculators(2, reference=a)[0].scale
    wall, model.wall_ = model.wall_, None
    try:
        assert model.posterior_calculators(2, reference=a)[0].scale == pytest.approx(scale)
    finally:
        model.wall_ = wall
