"""SparseGP: exact derivative observations, invariances, posterior variance, learned noise."""

import re
from fractions import Fraction

import numpy as np
import pytest
from ase.calculators.emt import EMT

import kernelpot
from kernelpot import SparseGP
from kernelpot.gp.assembly import describe
from kernelpot.gp.design import model_kernel
from conftest import emt_frames, label


def _rattled(frame, seed=5, scale=0.05):
    a = frame.copy()
    a.positions += np.random.default_rng(seed).normal(scale=scale, size=a.positions.shape)
    return a


def test_forces_are_minus_energy_gradient_periodic_multispecies(cuau_model, cuau_frames):
    a = _rattled(cuau_frames[0])
    a.calc = cuau_model.calculator()
    f = a.get_forces()
    h = 1e-4  # local energies are sums of large +- terms: smaller steps are round-off limited
    for i, c in [(0, 0), (3, 1), (len(a) - 1, 2)]:
        p = a.copy(); p.calc = cuau_model.calculator(uncertainty=False); p.positions[i, c] += h
        m = a.copy(); m.calc = cuau_model.calculator(uncertainty=False); m.positions[i, c] -= h
        fd = -(p.get_potential_energy() - m.get_potential_energy()) / (2 * h)
        # the two-body weights are large and cancel (SE sparse kernel on a fine grid): energies carry
        # ~2e-10 eV of round-off and the pair energy is steep, so central differences are good to
        # ~1e-6 eV/Å here (a sign or factor error would be ~1e-2)
        assert f[i, c] == pytest.approx(fd, rel=1e-6, abs=1e-6)


def test_stress_is_strain_derivative(cuau_model, cuau_frames):
    a = _rattled(cuau_frames[1])
    a.calc = cuau_model.calculator(uncertainty=False)
    s = a.get_stress()
    fd = a.calc.calculate_numerical_stress(a, d=1e-4, voigt=True)
    np.testing.assert_allclose(s, fd, rtol=1e-6, atol=1e-8)


def test_molecule_forces_and_no_stress(small_soap):
    # a molecular (non-periodic) model: rattled Cu13 clusters labelled by EMT
    from ase.cluster import Icosahedron
    rng = np.random.default_rng(0)
    frames = []
    for k in range(6):
        c = Icosahedron("Cu", 2)
        c.positions += rng.normal(scale=0.1, size=c.positions.shape)
        c.info["config_type"] = "cluster"
        frames.append(label(c, EMT()))
    model = SparseGP(descriptor=small_soap, n_sparse=30).fit(frames)
    a = _rattled(frames[0], seed=9)
    a.calc = model.calculator(uncertainty=False)
    f = a.get_forces()
    h = 1e-4
    for i, c in [(0, 0), (5, 2)]:
        p = a.copy(); p.calc = model.calculator(uncertainty=False); p.positions[i, c] += h
        m = a.copy(); m.calc = model.calculator(uncertainty=False); m.positions[i, c] -= h
        fd = -(p.get_potential_energy() - m.get_potential_energy()) / (2 * h)
        assert f[i, c] == pytest.approx(fd, rel=1e-6, abs=1e-7)
    r = model.predict_frame(a)
    assert np.all(np.isnan(r["stress"]))
    assert np.isfinite(r["energy_std"]) and np.all(np.isfinite(r["forces_std"]))
    # asked for explicitly, a molecule's stress is an error that says why, not a silent NaN
    with pytest.raises(ValueError, match=r"structure \('cluster'\): stress=True.*no periodic cell"):
        model.predict_frame(a, stress=True)


@pytest.mark.parametrize("forces,stress", [(True, True), (True, False), (False, True), (False, False)])
def test_mean_is_the_same_with_and_without_uncertainties(cuau_model, cuau_frames, forces, stress):
    """With uncertainties the mean comes from the variance's design rows (one pass): same numbers as
    the direct contraction, also for a posterior sample's weights."""
    assert cuau_model.pair_ is not None and cuau_model.posterior_.n_offsets  # both extra column blocks
    a = _rattled(cuau_frames[3], seed=4)
    w = cuau_model.sample_weights(1, random_state=1)[0]
    keys = ["energy", "energies"] + ["forces"] * forces + ["stress"] * stress
    for alpha in (None, w):
        fast, full = (cuau_model.predict_frame(a, return_std=r, alpha=alpha, forces=forces, stress=stress)
                      for r in (False, True))
        for k in keys:
            np.testing.assert_allclose(full[k], fast[k], rtol=1e-10, atol=1e-10, err_msg=k)
        assert ("forces" in full) == forces and np.all(np.isfinite(full["stress"])) == stress


def test_predict_refuses_paths_and_non_atoms(cuau_model, cuau_frames):
    """A path where frames belong failed deep inside with "'str' object has no attribute 'positions'"."""
    for bad, what in (("frames.xyz", "path 'frames.xyz'"), (["frames.xyz"], "frame 0 is a str"),
                      ([cuau_frames[0], 3], "frame 1 is a int")):
        with pytest.raises(ValueError, match=re.escape(what)):
            cuau_model.predict(bad)
    with pytest.raises(ValueError, match="one ase.Atoms, got a str"):
        cuau_model.predict_frame("frames.xyz")


def test_fit_that_explains_little_of_its_labels_says_so(small_soap):
    """Forces stored as energy gradients (a tester's case) fit 'normally' with energy and stress noise the
    size of the labels and only a bounds warning; now a warning names the kind, its noise and its labels'
    scale. The correctly signed data fit without it."""
    import warnings
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator
    frames = []
    for k in range(6):
        a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 2))
        a.rattle(0.08, seed=k)
        frames.append(label(a, EMT()))
    for sign in (1.0, -1.0):
        data = []
        for a in frames:
            b = a.copy()
            b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(), forces=sign * a.get_forces(),
                                           stress=a.get_stress())
            data.append(b)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = SparseGP(descriptor=small_soap, n_sparse=50, verbose=False).fit(data)
        said = [str(w.message) for w in caught if "explains little" in str(w.message)]
        if sign > 0:
            assert not said, said
        else:
            assert said and any("energy noise" in x or "stress noise" in x for x in said), said
            kind = "energy" if "energy noise" in said[0] else "stress"
            assert f"{m.noise_[kind]:.3g}" in said[0]
            # six structures: too little data is named as a possible cause beside the units
            assert "With 6 structures, too few to learn from may be all it is; else check their sign" in said[0]


def test_predictions_invariant(cuau_model, cuau_frames):
    from scipy.spatial.transform import Rotation
    a = _rattled(cuau_frames[2])
    r0 = cuau_model.predict_frame(a)
    R = Rotation.random(random_state=3).as_matrix()
    b = a.copy()
    b.set_cell(a.cell @ R.T, scale_atoms=False)
    b.positions = a.positions @ R.T + np.array([0.3, -1.2, 2.0])
    r1 = cuau_model.predict_frame(b)
    assert r1["energy"] == pytest.approx(r0["energy"], rel=1e-10)
    np.testing.assert_allclose(r1["forces"], r0["forces"] @ R.T, atol=1e-9)
    np.testing.assert_allclose(r1["forces_std"] ** 2 @ np.ones(3), r0["forces_std"] ** 2 @ np.ones(3), rtol=1e-8)
    s0 = _voigt_to_mat(r0["stress"]); s1 = _voigt_to_mat(r1["stress"])
    np.testing.assert_allclose(s1, R @ s0 @ R.T, atol=1e-10)
    perm = np.random.default_rng(4).permutation(len(a))
    c = a[perm]
    r2 = cuau_model.predict_frame(c)
    assert r2["energy"] == pytest.approx(r0["energy"], rel=1e-10)
    np.testing.assert_allclose(r2["forces"], r0["forces"][perm], atol=1e-10)
    np.testing.assert_allclose(r2["energies"], r0["energies"][perm], atol=1e-10)
    assert r2["energy_std"] == pytest.approx(r0["energy_std"], rel=1e-8)


def _voigt_to_mat(v):
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def test_posterior_variance_limits(cu_frames, small_soap):
    # tiny fixed noise, every environment a sparse point: variance at training data ~ 0
    frames = cu_frames[:3]
    # SOAP's limits (the two-body term's: tests/test_twobody.py)
    model = SparseGP(descriptor=small_soap, n_sparse=10_000, sigma_energy=1e-4, sigma_force=1e-3,
                     sigma_stress=1e-5, delta=1.0, calibrate=False, two_body=False).fit(frames)
    r = model.predict_frame(frames[0])
    prior = model.delta_  # prior std of one local energy is delta
    assert r["energy_std_epistemic"] < 1e-3 * prior * len(frames[0])
    assert np.max(r["forces_std_epistemic"]) < 0.02
    # far from the data (a dilute gas of Cu dimers: nothing like fcc) -> prior
    from ase import Atoms
    far = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 3.0]], cell=[20, 20, 20], pbc=True)
    rf = model.predict_frame(far)
    from kernelpot.gp.variance import prior_energy_var
    feat = describe(model, far)
    prior_e = model.delta_ * np.sqrt(prior_energy_var(feat, model.zeta))
    assert rf["energy_std_epistemic"] == pytest.approx(prior_e, rel=0.15)


def test_learned_noise_recovers_known_noise(small_soap):
    sigma_f = 0.15
    frames = emt_frames(24, seed=7, noise={"forces": sigma_f})
    model = SparseGP(descriptor=small_soap, n_sparse=150).fit(frames)
    assert model.noise_["forces"] == pytest.approx(sigma_f, rel=0.2)


def test_fit_is_reproducible(cu_frames, small_soap):
    m1 = SparseGP(descriptor=small_soap, n_sparse=30, random_state=3).fit(cu_frames)
    m2 = SparseGP(descriptor=small_soap, n_sparse=30, random_state=3).fit(cu_frames)
    assert np.array_equal(m1.alpha_, m2.alpha_)
    assert np.array_equal(m1.sparse_index_, m2.sparse_index_)


def test_save_load_round_trip(cuau_model, cuau_frames, tmp_path):
    path = tmp_path / "m.npz"
    cuau_model.save(path)
    m2 = kernelpot.load(path)
    a = _rattled(cuau_frames[3])
    r1, r2 = cuau_model.predict_frame(a), m2.predict_frame(a)
    for k in ("energy", "forces", "stress", "forces_std", "energy_std", "stress_std"):
        np.testing.assert_array_equal(r1[k], r2[k])
    # the fit does not keep Kmm; the file holds the sparse kernel recomputed as the fit built it, factored by Lmm
    assert cuau_model.posterior_.Kmm is None
    with np.load(path) as f:
        Kmm, Lmm = f["Kmm"], f["Lmm"]
    np.testing.assert_array_equal(Kmm, model_kernel(cuau_model.sparse_, cuau_model.zeta, cuau_model.pair_))
    np.testing.assert_allclose(Lmm @ Lmm.T, Kmm, rtol=1e-8, atol=1e-8 * np.abs(Kmm).max())


def test_bad_model_files(cuau_model, tmp_path):
    path = tmp_path / "m.npz"
    cuau_model.save(path)
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        kernelpot.load(tmp_path / "trunc.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="junk.npz.*not a model file"):
        kernelpot.load(tmp_path / "junk.npz")
    import json
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    h = json.loads(str(arrays["header"]))
    h["version"] = 99
    arrays["header"] = np.array(json.dumps(h))
    np.savez(tmp_path / "new.npz", **arrays)
    with pytest.raises(ValueError, match="newer"):
        kernelpot.load(tmp_path / "new.npz")
    with pytest.raises(ValueError, match="no such file"):
        kernelpot.load(tmp_path / "missing.npz")
    # a header edited by hand no longer describes the stored environments: said at load, naming the file
    # (it was a matmul shape error blamed on the first structure predicted)
    for key, value in (("n_max", h["descriptor"]["n_max"] - 1), ("l_max", h["descriptor"]["l_max"] + 1)):
        e = json.loads(str(arrays["header"]))
        e["version"] = json.loads(str(np.load(path)["header"]))["version"]
        e["descriptor"][key] = value
        edited = dict(arrays, header=np.array(json.dumps(e)))
        np.savez(tmp_path / "edited.npz", **edited)
        with pytest.raises(ValueError, match=r"edited.npz: the descriptor settings in the file give \d+ features"):
            kernelpot.load(tmp_path / "edited.npz")


def test_clear_errors(cuau_model, cu_frames, small_soap):
    from ase.build import bulk
    with pytest.raises(ValueError, match="not trained on"):
        cuau_model.predict_frame(bulk("Al", "fcc", 4.05))
    with pytest.raises(ValueError, match="empty"):
        SparseGP(descriptor=small_soap).fit([])
    bad = cu_frames[0].copy()
    from ase.calculators.singlepoint import SinglePointCalculator
    f = cu_frames[0].get_forces().copy(); f[3, 1] = np.nan
    bad.calc = SinglePointCalculator(bad, energy=-1.0, forces=f)
    with pytest.raises(ValueError, match=r"frame 1 .*forces are not finite"):
        SparseGP(descriptor=small_soap).fit([cu_frames[1], bad])
    with pytest.raises(ValueError, match="n_sparse"):
        SparseGP(descriptor=small_soap, n_sparse=0).fit(cu_frames)
    with pytest.raises(RuntimeError, match="not fitted"):
        SparseGP().predict_frame(cu_frames[0])


def _only(frames, **keep):
    from ase.calculators.singlepoint import SinglePointCalculator
    out = []
    for a in frames:
        b = a.copy()
        b.calc = SinglePointCalculator(b, **{k: a.calc.results[k] for k in keep})
        out.append(b)
    return out


def test_fit_with_nothing_left_to_fit_says_why_before_any_work(cu_frames, small_soap):
    """Force-only frames with fit_forces=False ended in 'need at least one array to concatenate' from the
    calibration pass, after the whole fit."""
    forces_only = _only(cu_frames[:4], forces=True)
    with pytest.raises(ValueError, match=r"no observations to fit in 4 frames: labels found: forces in 4, but "
                                         r"fit_forces=False leaves them out"):
        SparseGP(descriptor=small_soap, n_sparse=40, fit_forces=False, verbose=False).fit(forces_only)


def test_forces_that_say_nothing_count_as_none(cu_frames, small_soap):
    """Force labels that every atom's mask leaves out, or forces of isolated atoms only, are no force data:
    nothing to fit when they are all there is, and the energy-only warning otherwise."""
    import warnings
    from ase import Atoms
    masked = _only(cu_frames[:4], forces=True)
    for a in masked:
        a.new_array("force_mask", np.ones(len(a), dtype=int))
    with pytest.raises(ValueError, match="no observations to fit"):
        SparseGP(descriptor=small_soap, n_sparse=40, verbose=False).fit(masked)
    iso = label(Atoms("Cu", positions=[[5, 5, 5]], cell=[10, 10, 10], pbc=False), EMT())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SparseGP(descriptor=small_soap, n_sparse=40, verbose=False).fit(_only(cu_frames[:5], energy=True) + [iso])
    assert any("no forces were fitted (no structure has force labels on an atom" in str(w.message) for w in caught)


def test_sparse_points_may_be_any_iterable(cu_frames, small_soap):
    pts = [(0, 0), (1, 3), (2, 5)]
    a = SparseGP(descriptor=small_soap, sparse_points=pts, verbose=False).fit(cu_frames[:4])
    b = SparseGP(descriptor=small_soap, sparse_points=(p for p in pts), verbose=False).fit(cu_frames[:4])
    np.testing.assert_array_equal(a.sparse_index_, b.sparse_index_)
    assert len(a.sparse_index_) == 3


@pytest.mark.parametrize("points, match", [([(0, 0), (1, 500)], r"\(1, 500\) names atom 500 of frame 1, which has 32"),
                                           ([(0, 0), (-1, -1)], r"names frame -1, but there are 4 frames"),
                                           ([(0, 0), (0, 0)], "names 1 environment\\(s\\) twice"),
                                           ([(0, 0.5)], "not a pair"), ([], "empty")])
def test_bad_sparse_points_are_named(cu_frames, small_soap, points, match):
    with pytest.raises(ValueError, match=match):
        SparseGP(descriptor=small_soap, sparse_points=points, verbose=False).fit(cu_frames[:4])


def test_fit_without_forces_warns_that_force_sigma_is_unchecked(cu_frames, small_soap):
    """Fitted on energies alone, delta comes from a few energies and no held-out force calibrates the
    force sigma: on 6 EMT cells most force errors lie beyond 4 sigma."""
    import warnings
    train = _only(cu_frames[:6], energy=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = SparseGP(descriptor=small_soap, n_sparse=40, verbose=False).fit(train)
    assert any("no forces were fitted (no frame has force labels)" in str(w.message) for w in caught)
    test = cu_frames[8:]
    pred = [model.predict_frame(a) for a in test]
    z = np.concatenate([np.ravel((p["forces"] - a.get_forces()) / p["forces_std"]) for p, a in zip(pred, test)])
    assert np.mean(np.abs(z) > 4) > 0.2      # what the warning is about: far beyond a Gaussian's 6e-5
    with warnings.catch_warnings(record=True) as caught:   # with forces: no such warning
        warnings.simplefilter("always")
        SparseGP(descriptor=small_soap, n_sparse=40, verbose=False).fit(cu_frames[:6])
    assert not any("no forces were fitted" in str(w.message) for w in caught)


def test_local_energy_std_is_largest_where_the_environment_is_new(small_soap):
    """``energies_std``: a model trained on bulk copper is least sure of the surface atoms of a slab."""
    from ase.build import fcc100
    from conftest import emt_frames
    model = SparseGP(descriptor=small_soap, n_sparse=60, verbose=False).fit(emt_frames(10, seed=7))
    slab = fcc100("Cu", size=(2, 2, 4), a=3.61, vacuum=6.0)
    slab.pbc = True
    r = model.predict_frame(slab)
    z = slab.positions[:, 2]
    surface = (z < z.min() + 0.1) | (z > z.max() - 0.1)
    assert r["energies_std"].shape == (len(slab),) and np.all(r["energies_std"] > 0)
    assert r["energies_std"][surface].min() > 2 * r["energies_std"][~surface].max()
    # the calculator reports the same, and permuting atoms permutes it
    slab.calc = model.calculator()
    slab.get_potential_energy()
    np.testing.assert_allclose(slab.calc.results["energies_std"], r["energies_std"], rtol=1e-12)
    perm = np.random.default_rng(0).permutation(len(slab))
    # (bulk-atom variances are differences of O(1) numbers: round-off ~1e-11 eV)
    np.testing.assert_allclose(model.predict_frame(slab[perm])["energies_std"], r["energies_std"][perm],
                               rtol=1e-8, atol=1e-9)


def test_calculator_results_work_with_ase_tools(cuau_model, cuau_frames):
    """The uncertainty keys are registered ASE outputs: get_properties accepts results that carry them."""
    a = cuau_frames[0].copy()
    a.calc = cuau_model.calculator()
    props = a.get_properties(["energy", "forces"])
    assert props["energy"] == pytest.approx(a.get_potential_energy())
    np.testing.assert_allclose(props["forces"], a.get_forces())


def test_evaluate_takes_one_atoms_like_predict(cuau_model, cuau_frames):
    """evaluate(model, atoms) failed with "'Atom' object has no attribute 'calc'" (it iterated the atoms)."""
    from kernelpot.uq.evaluation import evaluate
    one, many = evaluate(cuau_model, cuau_frames[0]), evaluate(cuau_model, [cuau_frames[0]])
    np.testing.assert_allclose(one["forces"]["err"], many["forces"]["err"])
    assert len(one["energy"]["err"]) == 1


def test_an_element_in_one_structure_is_named_at_fit(small_soap):
    """Ag in one of six copper cells: its environment and energy rest on that structure alone (the fit once said
    only that the posterior precision was ill-conditioned).  Named with its frames; an alloy whose elements all
    appear in three or more structures, with one isolated-atom frame of each, is not."""
    import warnings
    from ase import Atoms
    from kernelpot.io.labels import DataWarning
    frames = emt_frames(6, seed=3)
    ag = frames[4].copy()
    ag[0].symbol = "Ag"
    frames[4] = label(ag, EMT())
    with pytest.warns(DataWarning, match=r"fit: elements held by fewer than 3 of the 6 training structures: Ag in 1 "
                                         r"\(frames \[4\], 1 atoms\)"):
        SparseGP(descriptor=small_soap, n_sparse=40, verbose=False, calibrate=False).fit(frames)
    alloy = emt_frames(4, symbols=("Cu", "Ag"), seed=4)
    atoms = [label(Atoms(s, positions=[[6.0, 6.0, 6.0]], cell=[12.0] * 3, pbc=False), EMT()) for s in ("Cu", "Ag")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SparseGP(descriptor=small_soap, n_sparse=40, verbose=False, calibrate=False).fit(alloy + atoms)
    assert not [w for w in caught if "fewer than 3" in str(w.message)]


@pytest.mark.parametrize("name, bad", [("zeta", "4"), ("zeta", 0.5), ("zeta", True), ("delta", "1"),
                                       ("sigma_force", float("inf")), ("sigma_energy", [0.001]),
                                       ("zeta", Fraction(3))])
def test_bad_kernel_and_noise_settings_are_named(name, bad, cu_frames):
    """A string or list was a numpy TypeError ('ufunc isfinite not supported') before the fit named it."""
    with pytest.raises(ValueError, match=name):
        SparseGP(verbose=False, **{name: bad}).fit(cu_frames[:2])
