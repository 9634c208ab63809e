"""The two-body kernel term: exact derivatives, brute-force pair sums, invariances, the learned scale, files."""

import numpy as np
import pytest
from ase import Atoms

from kernelpot import SparseGP
from kernelpot.descriptors import SOAP
from kernelpot.gp.likelihood import GroupStats, neg_log_marginal_likelihood
from kernelpot.gp.twobody import PairTerm, TwoBody

from conftest import emt_frames, finite_difference_forces_stress, pair_test_structure


def _term(species, r_cut=4.0, scale=1.3, r_min=2.5):
    """A term whose grid starts above some pairs of the test structures (their kernels' tails only)."""
    species = sorted(species)
    pairs = [(a, b) for k, a in enumerate(species) for b in species[k:]]
    r0 = r_min + 0.1 * np.arange(len(pairs))
    return PairTerm(np.array(pairs), np.linspace(r_min - 0.5, r_cut, 13), r0, r_cut, 0.5, 1.0, scale)


def _alloy():
    return pair_test_structure("alloy", compressed=False)


def _energy(term, atoms, w):
    return float(term.design(term.geometry(atoms), None, forces=False)["energy"] @ w)


@pytest.mark.parametrize("system", ["alloy", "molecule", "small cell"])
def test_force_and_stress_rows_are_derivatives_of_the_energy_row(system):
    atoms = pair_test_structure(system, compressed=False)
    term = _term(set(atoms.numbers.tolist()), r_min=1.8 if system == "molecule" else 3.0)
    assert np.any(term.geometry(atoms).r < term.grid[0])  # distances below the grid are exercised
    w = np.random.default_rng(0).standard_normal(term.size)
    periodic = bool(atoms.pbc.all())
    d = term.design(term.geometry(atoms), atoms.get_volume() if periodic else None, forces=True, stress=periodic)
    fd, fd_stress = finite_difference_forces_stress(lambda x: _energy(term, x, w), atoms, stress=periodic)
    np.testing.assert_allclose((d["forces"] @ w).reshape(-1, 3), fd, atol=1e-7 * max(1, np.abs(fd).max()))
    if periodic:
        np.testing.assert_allclose(d["stress"] @ w, fd_stress, atol=1e-8)


def test_energy_row_is_the_sum_over_unordered_pairs():
    """Brute force: every pair i < j (and every periodic image) once, with the cutoff and the SE basis."""
    atoms = _alloy()
    term = _term({29, 79})
    d = term.design(term.geometry(atoms), None, forces=False)
    G = len(term.grid)
    ref = np.zeros(term.size)
    local = np.zeros((len(atoms), term.size))
    cell = atoms.cell.array
    rng = range(-2, 3)
    for i in range(len(atoms)):
        for j in range(len(atoms)):
            for s in [(x, y, z) for x in rng for y in rng for z in rng]:
                if i == j and s == (0, 0, 0):
                    continue
                r = np.linalg.norm(atoms.positions[j] + np.array(s) @ cell - atoms.positions[i])
                if r >= term.r_cut:
                    continue
                x = np.clip((r - (term.r_cut - term.cutoff_width)) / term.cutoff_width, 0, 1)
                t = term._index.lookup[atoms.numbers[i], atoms.numbers[j]]
                k = np.exp(-0.5 * ((r - term.grid) / term.length_scale) ** 2)
                h = 0.5 * (1 + np.cos(np.pi * x)) * k
                ref[t * G:(t + 1) * G] += 0.5 * h * term.scale  # each unordered pair seen twice
                local[i, t * G:(t + 1) * G] += 0.5 * h * term.scale
    np.testing.assert_allclose(d["energy"], ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d["local"], local, rtol=1e-12, atol=1e-14)


def test_rows_are_invariant_under_rotation_translation_and_permutation():
    atoms = _alloy()
    term = _term({29, 79})
    w = np.random.default_rng(1).standard_normal(term.size)
    base = term.design(term.geometry(atoms), atoms.get_volume(), forces=True, stress=True)
    moved = atoms.copy()
    moved.rotate(37, (1, 2, 3), rotate_cell=True)
    moved.translate((0.3, -1.1, 2.0))
    perm = np.random.default_rng(2).permutation(len(atoms))
    moved = moved[perm]
    d = term.design(term.geometry(moved), moved.get_volume(), forces=True, stress=True)
    np.testing.assert_allclose(d["energy"], base["energy"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d["local"], base["local"][perm], rtol=1e-10, atol=1e-12)
    # forces rotate with the structure
    from scipy.spatial.transform import Rotation
    R = Rotation.from_rotvec(np.deg2rad(37) * np.array([1, 2, 3]) / np.sqrt(14)).as_matrix()
    f0 = (base["forces"] @ w).reshape(-1, 3)[perm] @ R.T
    np.testing.assert_allclose((d["forces"] @ w).reshape(-1, 3), f0, atol=1e-10)


def test_scale_gradient_of_the_evidence_matches_finite_differences():
    rng = np.random.default_rng(3)
    M = 12
    mask = np.zeros(M, bool)
    mask[7:10] = True
    stats = GroupStats.empty(["energy", "forces"], M)
    for g, n in ((0, 15), (1, 60)):
        A = rng.standard_normal((n, M))
        stats.add(g, A, A @ rng.standard_normal(M) + 0.1 * rng.standard_normal(n))
    theta = np.array([0.2, -1.5, -1.0, np.log(0.7)])
    _, g = neg_log_marginal_likelihood(theta, stats, scale_mask=mask)
    h = 1e-6
    for k in range(len(theta)):
        tp, tm = theta.copy(), theta.copy()
        tp[k] += h
        tm[k] -= h
        fd = (neg_log_marginal_likelihood(tp, stats, grad=False, scale_mask=mask)
              - neg_log_marginal_likelihood(tm, stats, grad=False, scale_mask=mask)) / (2 * h)
        assert g[k] == pytest.approx(fd, rel=1e-5, abs=1e-6)


def test_evidence_with_a_scale_reads_the_statistics_of_scaled_rows():
    """The copy-free reading of ``scale_mask`` equals the evidence of rows accumulated with those columns scaled."""
    rng = np.random.default_rng(5)
    M, r = 14, 3.1
    mask = np.zeros(M, bool)
    mask[[2, 8, 9]] = True
    plain, scaled = GroupStats.empty(["energy", "forces"], M), GroupStats.empty(["energy", "forces"], M)
    for g, n in ((0, 10), (1, 50)):
        A = rng.standard_normal((n, M))
        y = A @ rng.standard_normal(M) + 0.2 * rng.standard_normal(n)
        plain.add(g, A, y)
        As = A.copy()
        As[:, mask] *= r
        scaled.add(g, As, y)
    theta = np.array([0.3, -1.2, -0.8])
    v, g = neg_log_marginal_likelihood(np.append(theta, np.log(r)), plain, scale_mask=mask)
    v_ref, g_ref = neg_log_marginal_likelihood(theta, scaled)
    assert v == pytest.approx(v_ref, rel=1e-12)
    np.testing.assert_allclose(g[:-1], g_ref, rtol=1e-9)


def test_scale_columns_equals_accumulating_scaled_rows():
    rng = np.random.default_rng(4)
    M, r = 9, 2.7
    mask = np.zeros(M, bool)
    mask[3:6] = True
    rows = [rng.standard_normal((5, M)) for _ in range(3)]
    ys = [rng.standard_normal(5) for _ in range(3)]
    nys = [rng.uniform(0.1, 1.0, 5) for _ in range(3)]  # SOAP's residual: no exact column enters it
    a, b = GroupStats.empty(["energy"], M), GroupStats.empty(["energy"], M)
    for A, y, ny in zip(rows, ys, nys):
        a.add(0, A, y, nystrom=ny)
        As = A.copy()
        As[:, mask] *= r
        b.add(0, As, y, nystrom=ny)
    a.scale_columns(mask, r)
    np.testing.assert_allclose(a.D, b.D)
    np.testing.assert_allclose(a.e, b.e)
    np.testing.assert_allclose(np.concatenate(a.loo_rows), np.concatenate(b.loo_rows))
    np.testing.assert_allclose(np.concatenate(a.loo_nystrom), np.concatenate(b.loo_nystrom))


@pytest.fixture(scope="module")
def alloy_models():
    frames = emt_frames(14, symbols=("Cu", "Au"), size=(2, 1, 1), seed=5)
    kw = dict(descriptor=SOAP(r_cut=3.8, n_max=3, l_max=2), n_sparse=12, verbose=False)
    with pytest.warns(Warning):
        on = SparseGP(**kw).fit(frames)
        off = SparseGP(two_body=False, **kw).fit(frames)
    return frames, on, off


def test_fitted_model_forces_are_derivatives_and_the_term_helps_the_evidence(alloy_models):
    frames, on, off = alloy_models
    assert on.pair_ is not None and off.pair_ is None
    assert on.pair_.size == 3 * len(on.pair_.grid)  # Cu-Cu, Cu-Au, Au-Au
    # EMT is close to a pair potential at this range: the evidence must prefer the sum of kernels
    assert on.log_marginal_likelihood_ > off.log_marginal_likelihood_
    atoms = frames[0].copy()
    atoms.rattle(0.03, seed=11)
    p = on.predict_frame(atoms, return_std=False)
    h = 1e-4  # the pair weights are large and cancel: energies carry ~1e-10 eV of round-off
    for i, c in ((0, 0), (3, 2), (5, 1)):
        a, b = atoms.copy(), atoms.copy()
        a.positions[i, c] += h
        b.positions[i, c] -= h
        fd = -(on.predict_frame(a, return_std=False, stress=False)["energy"]
               - on.predict_frame(b, return_std=False, stress=False)["energy"]) / (2 * h)
        assert p["forces"][i, c] == pytest.approx(fd, rel=1e-6, abs=1e-6)
    # stress xy: (1/V) dE/d eps_xy for the symmetric strain
    e = np.zeros((3, 3))
    e[0, 1] = e[1, 0] = h / 2
    a, b = atoms.copy(), atoms.copy()
    a.set_cell(atoms.cell @ (np.eye(3) + e), scale_atoms=True)
    b.set_cell(atoms.cell @ (np.eye(3) - e), scale_atoms=True)
    fd = (on.predict_frame(a, return_std=False, stress=False)["energy"]
          - on.predict_frame(b, return_std=False, stress=False)["energy"]) / (2 * h) / atoms.get_volume()
    assert p["stress"][5] == pytest.approx(fd, abs=1e-7)


def test_two_body_model_saves_and_loads(alloy_models, tmp_path):
    frames, on, _ = alloy_models
    atoms = frames[2].copy()
    atoms.rattle(0.05, seed=12)
    ref = on.predict_frame(atoms)
    for compact in (False, True):
        on.save(tmp_path / f"m{compact}.npz", compact=compact)
        back = SparseGP.load(tmp_path / f"m{compact}.npz")
        assert back.pair_.scale == pytest.approx(on.pair_.scale)
        got = back.predict_frame(atoms)
        for key in ("energy", "forces", "stress", "forces_std", "energy_std", "energies_std"):
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-9, atol=1e-12)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="length_scale"):
        SparseGP(two_body=TwoBody(length_scale=-1.0)).fit([Atoms("H")])
    with pytest.raises(ValueError, match="two_body"):
        SparseGP(two_body="yes").fit([Atoms("H")])


def test_below_the_data_the_pair_energy_returns_to_zero_and_soap_reports_the_unknown(alloy_models):
    """Below the grid (a length scale under the shortest training distance) the pair term's energy and
    variance vanish, as a GP's far from its inducing points; a compressed dimer is still reported as
    unknown, by SOAP (an environment never seen). With a repulsion baseline it is monotonically
    repulsive (tests/test_gp_baselines.py)."""
    frames, on, _ = alloy_models
    term = on.pair_
    r_min = min(np.min(a.get_all_distances(mic=True)[np.triu_indices(len(a), 1)]) for a in frames)
    assert term.r_min.min() == pytest.approx(r_min)
    assert term.grid[0] == pytest.approx(max(r_min - term.length_scale, 0.5 * r_min))
    def rows(r):
        return term.design(term.geometry(Atoms("Cu2", positions=[[5, 5, 5], [5, 5, 5 + r]], cell=[12, 12, 12])),
                           None, forces=True)["energy"]

    # three length scales below the grid the kernel rows are exp(-9/2) ~ 1 % of what they are in the data
    assert np.abs(rows(term.grid[0] - 3 * term.length_scale)).max() < 0.02 * np.abs(rows(r_min)).max()
    d = Atoms("Cu2", positions=[[5, 5, 5], [5, 5, 5 + 0.6 * r_min]], cell=[12, 12, 12])
    std = on.predict_frame(d, return_std=True, calibrated=False)["energy_std_epistemic"]
    assert std > 0.5 * on.delta_
