"""Training-set screening: planted label errors are found, clean data are left alone."""

import re
import warnings
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import GPa
from scipy import stats

import kernelpot
from kernelpot import SparseGP, screen
from kernelpot.uq.screening import _LABEL_OF_TEST, COLUMNS, ScreenTable, _loo_evidence, _table, robust_scale
from kernelpot.uq import TrainingDiagnostics
from conftest import SHARED, emt_frames, needs_shared

NOISE = {"energy": 0.002, "forces": 0.05, "stress": 0.001}
# frame -> (corruption, the test that should catch it)
PLANTED = {3: "energy", 7: "forces", 11: "stress"}


def _relabel(atoms, **kw):
    lab = dict(atoms.calc.results)
    lab.update(kw)
    b = atoms.copy()
    b.calc = SinglePointCalculator(b, energy=lab["energy"], forces=lab["forces"], stress=lab["stress"])
    return b


def _corrupt(frames):
    out = list(frames)
    a = frames[3]
    out[3] = _relabel(a, energy=a.calc.results["energy"] + 0.1 * len(a))       # +0.1 eV/atom
    f = frames[7].calc.results["forces"].copy()
    j = int(np.argmax(np.linalg.norm(f, axis=1)))
    f[j] *= -1.0                                                               # sign error, largest force
    out[7] = _relabel(frames[7], forces=f)
    out[11] = _relabel(frames[11], stress=10.0 * frames[11].calc.results["stress"])  # kBar read as GPa
    return out


@pytest.fixture(scope="module")
def clean():
    return emt_frames(40, size=(1, 1, 2), seed=3, noise=NOISE)


@pytest.fixture(scope="module")
def dirty(clean):
    return _corrupt(clean)


@pytest.fixture(scope="module")
def clean_model(clean, small_soap):
    return SparseGP(descriptor=small_soap, n_sparse=100).fit(clean)


@pytest.fixture(scope="module")
def dirty_model(dirty, small_soap):
    return SparseGP(descriptor=small_soap, n_sparse=100).fit(dirty)


@pytest.fixture(scope="module")
def dirty_table(dirty_model):
    return screen(dirty_model, refit_rounds=0)


def test_planted_errors_rank_top_and_are_flagged(dirty_table, dirty):
    t = dirty_table
    top = set(t["index"][:4].tolist())
    assert set(PLANTED) <= top
    assert set(PLANTED) <= set(t.flagged.tolist())
    # each is caught by the test for its kind of error
    for i, kind in PLANTED.items():
        row = int(np.flatnonzero(t["index"] == i)[0])
        assert _LABEL_OF_TEST[t["worst"][row]] == kind      # net_force is a test of the forces
    # the residual columns carry the planted errors in display units
    row = {i: int(np.flatnonzero(t["index"] == i)[0]) for i in PLANTED}
    assert t["energy_residual"][row[3]] == pytest.approx(100.0, abs=15.0)  # meV/atom
    f = dirty[7].calc.results["forces"]
    flipped = 2 * np.linalg.norm(f, axis=1).max()
    assert t["forces_rms"][row[7]] == pytest.approx(flipped / np.sqrt(f.size), rel=0.3)
    s = dirty[11].calc.results["stress"]
    assert t["stress_rms"][row[11]] == pytest.approx(0.9 * np.sqrt(np.mean(s ** 2)) / GPa, rel=0.3)
    # and most of the clean data is not flagged
    assert len(set(t.flagged.tolist()) - set(PLANTED)) <= 3


def test_refit_round_leaves_exactly_the_planted_errors(dirty_model, capsys):
    capsys.readouterr()
    t = screen(dirty_model, refit_rounds=2)
    # each refit round is announced (verbose model, stderr) with the structures it removes
    rounds = [line for line in capsys.readouterr().err.splitlines() if "refit round" in line]
    assert len(rounds) == t.rounds
    # round 1 removes what the first pass flagged: the planted errors, and possibly a few clean
    # structures (that pass may deflate the energy scale, screening._energy_min_scale), which the
    # refit then predicts held out
    m = re.fullmatch(r"kernelpot: screen: refit round 1 \(at most 2\): removing (\d+) flagged "
                     r"structure\(s\) \[([\d, ]+)\] and fitting again on the other (\d+)", rounds[0])
    assert m is not None, rounds[0]
    first = [int(x) for x in m.group(2).split(",")]
    assert set(PLANTED) <= set(first) and len(first) <= len(PLANTED) + 3
    assert int(m.group(1)) == len(first) and int(m.group(3)) == 40 - len(first)
    assert t.rounds >= 1
    assert set(t.flagged.tolist()) == set(PLANTED)
    assert set(t["index"][:3].tolist()) == set(PLANTED)
    held = set(t["index"][t["held_out"]].tolist())
    assert set(PLANTED) <= held
    # the refitted model no longer has the inflated force noise
    assert t.model.noise_["forces"] < 0.5 * dirty_model.noise_["forces"]
    assert t.model is not dirty_model and len(t.model._train_frames) == 40 - len(held)


def test_clean_data_flags_none_or_almost_none(clean_model):
    t = screen(clean_model, refit_rounds=0)
    assert len(t.flagged) <= 1
    assert not t["held_out"].any() and t.rounds == 0
    # the default refit round (without whatever was flagged) does not start a cascade of flags
    t1 = screen(clean_model)
    assert len(t1.flagged) <= 1


def test_table_sorted_and_p_values_follow_the_documented_rule(dirty_table, dirty):
    t = dirty_table
    n = len(dirty)
    assert sorted(t["index"].tolist()) == list(range(n))
    assert np.all(np.diff(t["score"]) <= 0)
    np.testing.assert_allclose(t["score"], -np.log10(t["p_value"]), rtol=1e-9, atol=1e-12,
                               equal_nan=False) if np.all(t["p_value"] > 0) else None
    np.testing.assert_array_equal(t["flag"], t["p_value"] < 0.05 / n)
    assert t.threshold == pytest.approx(0.05 / n)
    # recompute the combined p-value of the clean rows from the printed columns
    sc = t.scales

    def sf(x, kind):
        nu = sc[f"{kind}_dof"]
        return stats.norm.sf(x) if np.isinf(nu) else stats.t.sf(x, nu)

    # the combined p is Sidak's 1 - (1 - p_min)^T: at most T x each test's p, equal to Sidak's formula for
    # the worst; the energy tests are reproducible from the printed columns (one config_type: global scales)
    for r in range(n):
        n_tests = 7  # energy, energy_self, forces, net_force, stress, chi2, neighbours (no duplicates)
        p_e = 2 * sf(abs(t["energy_z"][r]), "energy")
        p_s = 2 * sf(abs(t["energy_self_z"][r]), "energy_self") if np.isfinite(t["energy_self_z"][r]) else 1.0
        assert t["p_value"][r] <= min(1.0, n_tests * p_e) * (1 + 1e-6) + 1e-300
        assert t["p_value"][r] <= min(1.0, n_tests * p_s) * (1 + 1e-6) + 1e-300
        if t["worst"][r] in ("energy", "energy_self"):
            p = p_e if t["worst"][r] == "energy" else p_s
            assert t["p_value"][r] == pytest.approx(-np.expm1(n_tests * np.log1p(-p)), rel=1e-6, abs=1e-300)
    # n_atoms, config_type and leverage (trace of the structure's hat block) per row
    assert set(t["config_type"]) == {"rattle"}
    assert np.all(t["n_atoms"] == 8)
    d = t.diagnostics
    for r in range(3):
        g = t["index"][r]
        assert t["leverage"][r] == pytest.approx(d.leverage[d.frame == g].sum(), rel=1e-12)


def _fake_diagnostics(rng, n_frames, n_atoms=8, z_scale=1.0):
    """LOO diagnostics of a model whose structure-LOO z-scores are i.i.d. N(0, z_scale^2)."""
    kind, frame, z = [], [], []
    m = 1 + 3 * n_atoms + 6
    for g in range(n_frames):
        kind += ["energy"] + ["forces"] * (3 * n_atoms) + ["stress"] * 6
        frame.append(np.full(m, g))
        z.append(z_scale * rng.standard_normal(m))
    z = np.concatenate(z)
    frame = np.concatenate(frame)
    chi2 = np.bincount(frame, weights=z ** 2)
    nan = np.full(z.size, np.nan)
    return TrainingDiagnostics(kind=np.array(kind), frame=frame, atom=nan, component=nan, residual=nan,
                               leverage=nan, sigma=nan, loo_residual_obs=nan, z_obs=nan,
                               loo_residual=0.01 * z, loo_std=np.full(z.size, 0.01), z=z,
                               loo_std_predictive=np.full(z.size, 0.01), z_predictive=z, frame_chi2=chi2,
                               frame_dof=np.full(n_frames, m), frame_leverage=np.full(n_frames, 0.5))


@pytest.mark.parametrize("z_scale", [1.0, 3.0])
def test_false_flag_rate_is_bonferroni_controlled(z_scale):
    """On data that follow the model (up to a global over-confidence), any flag is rare."""
    rng = np.random.default_rng(0)
    frames = [Atoms("Cu8")] * 30
    n_sets, any_flag = 300, 0
    for _ in range(n_sets):
        d = _fake_diagnostics(rng, 30, z_scale=z_scale)
        t = _table(_loo_evidence(d, np.arange(30)), frames, 0.05, robust=True)
        any_flag += len(t.flagged) > 0
    # family-wise rate at most alpha = 0.05 (binomial sd at 300 sets: 0.013)
    assert any_flag / n_sets < 0.08


def test_global_overconfidence_needs_the_robust_scale():
    rng = np.random.default_rng(1)
    frames = [Atoms("Cu8")] * 30
    d = _fake_diagnostics(rng, 30, z_scale=3.0)
    assert len(_table(_loo_evidence(d, np.arange(30)), frames, 0.05, robust=False).flagged) > 10
    t = _table(_loo_evidence(d, np.arange(30)), frames, 0.05, robust=True)
    assert t.scales["forces_scale"] == pytest.approx(3.0, rel=0.1)
    assert t.scales["energy_dof"] == pytest.approx(0.3675 * 30)
    # a real error still stands out after the rescaling: a 10-sigma (in model units) energy
    d.z_predictive[(d.kind == "energy") & (d.frame == 5)] = 30.0
    t = _table(_loo_evidence(d, np.arange(30)), frames, 0.05, robust=True)
    assert t["index"][0] == 5 and 5 in t.flagged and t["worst"][0] == "energy"


def test_robust_scale():
    rng = np.random.default_rng(2)
    z = rng.normal(scale=2.0, size=4000)
    z[:200] = 1e3  # 5 % gross outliers do not move it
    assert robust_scale(z) == pytest.approx(2.0, rel=0.08)
    assert robust_scale([1.0]) == 1.0 and robust_scale([2.0, 2.0, 2.0]) == 1.0


def test_pandas_and_plain_columns(dirty_table, monkeypatch):
    t = dirty_table
    df = t.to_pandas()
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == len(t) == 40
    np.testing.assert_array_equal(df["index"].to_numpy(), t["index"])
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pandas"):
        t.to_pandas()
    assert isinstance(t.columns, dict) and all(isinstance(v, np.ndarray) for v in t.columns.values())
    assert all(len(v) == 40 for v in t.columns.values())
    text = str(t)
    lines = text.splitlines()
    assert lines[0].split()[0] == "index" and len(lines) == 2 + 20 + 1
    assert lines[2].split()[0] == str(t["index"][0])
    assert "flagged" in lines[-1]
    assert len(t.to_string(top=None).splitlines()) == 2 + 40 + 1


def test_plot_labels_flagged(dirty_table):
    fig, ax = dirty_table.plot()
    notes = [tx for tx in ax.texts if tx.get_gid() == "flag-label"]
    flagged = dirty_table.flagged
    assert len(notes) == min(len(flagged), 10)                  # the plot labels at most 10
    assert {tx.get_text().split()[0] for tx in notes} <= {str(i) for i in flagged}
    # the legend counts structures (one point per training structure), as the table does
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    n = len(dirty_table.columns["flag"])
    assert f"structures ({n - len(flagged)})" in legend and f"flagged ({len(flagged)})" in legend


def test_loaded_model_needs_frames_and_cli(dirty_model, dirty, tmp_path, capsys):
    path = tmp_path / "m.npz"
    dirty_model.save(path)
    model = kernelpot.load(path)
    with pytest.raises(ValueError, match="pass them"):
        screen(model)
    t = screen(model, dirty)
    np.testing.assert_allclose(np.sort(t["score"]), np.sort(screen(dirty_model)["score"]), rtol=1e-6)
    assert t.rounds == 1
    train = tmp_path / "train.xyz"
    kernelpot.write(train, dirty)
    png = tmp_path / "influence.png"
    from kernelpot.cli import main
    assert main(["screen", str(train), "--model", str(path), "--top", "5", "--plot", str(png)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[0] == "index"
    assert {int(line.split()[0]) for line in out[2:5]} <= set(PLANTED) | {5, 39}
    assert any("flagged" in line for line in out)
    assert png.stat().st_size > 1000


def test_screen_refuses_frames_that_are_not_the_training_set(dirty_model, dirty, tmp_path, capsys):
    """Same number of structures is not the same training set: another file gave a leave-one-out of the wrong
    data or 'n-th leading minor ... not positive definite' (a tester). A fingerprint kept in the model file
    (numbers that survive an extxyz round trip) tells them apart."""
    import copy
    path = tmp_path / "m.npz"
    dirty_model.save(path)
    model = kernelpot.load(path)
    other = [copy.deepcopy(a) for a in dirty]
    other[0], other[1] = other[1], other[0]                       # same structures, other order
    relabelled = [copy.deepcopy(a) for a in dirty]
    relabelled[3].calc.results["energy"] += 0.5                  # one label changed
    for m in (dirty_model, model):
        for frames in (other, relabelled):
            with pytest.raises(ValueError, match="not the frames this model was fitted on"):
                screen(m, frames)
    # its own training set, written to extxyz and read back, is recognised
    train = tmp_path / "train.xyz"
    kernelpot.write(train, dirty)
    model.check_training_frames(kernelpot.read(train))
    wrong = tmp_path / "wrong.xyz"
    kernelpot.write(wrong, relabelled)
    from kernelpot.cli import main
    assert main(["screen", str(wrong), "--model", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the training file of" in err[0], err


def test_bad_arguments(dirty_model, dirty):
    with pytest.raises(ValueError, match="alpha"):
        screen(dirty_model, alpha=0.0)
    with pytest.raises(ValueError, match="refit_rounds"):
        screen(dirty_model, refit_rounds=-1)
    with pytest.raises(ValueError, match="training order"):
        screen(dirty_model, dirty[:10])
    assert isinstance(screen.__doc__, str) and isinstance(ScreenTable.__doc__, str)


# --------------------------------------------------------------------------------------------
# evidence from each structure's own physics, diagnosis, per-config_type scales, duplicates,
# chemiscope export (issue 15)

def _without_energy(atoms):
    b = atoms.copy()
    r = atoms.calc.results
    b.calc = SinglePointCalculator(b, forces=r["forces"], stress=r["stress"])
    return b


def test_energy_self_matches_refit_without_that_energy(clean_model, clean):
    """The closed-form 'energy left out, own forces kept' equals an explicit refit without it."""
    import copy
    t = screen(clean_model, refit_rounds=0, duplicate_tol=None)
    for g in (4, 17):
        frames = list(clean)
        frames[g] = _without_energy(clean[g])
        brute = copy.deepcopy(clean_model).refit(frames)  # same sparse set, offsets, hyperparameters
        pred = brute.predict_frame(clean[g])["energy"]
        expect = 1000.0 * (clean[g].get_potential_energy() - pred) / len(clean[g])   # meV/atom
        row = int(np.flatnonzero(t["index"] == g)[0])
        assert t["energy_self_residual"][row] == pytest.approx(expect, rel=1e-4, abs=1e-4)
        # and it differs from the whole-structure LOO (own forces do inform the energy)
        assert t["energy_self_residual"][row] != pytest.approx(t["energy_residual"][row], rel=1e-6)


def test_net_force_test_by_hand(clean_model, clean):
    frames = list(clean)
    f = clean[7].get_forces().copy()
    j = int(np.argmax(np.linalg.norm(f, axis=1)))
    f[j] *= -1.0
    frames[7] = _relabel(clean[7], forces=f)
    t = screen(clean_model, frames, refit_rounds=0, duplicate_tol=None)
    row = int(np.flatnonzero(t["index"] == 7)[0])
    net = f.sum(axis=0)
    assert t["net_force"][row] == pytest.approx(np.linalg.norm(net), rel=1e-9)
    # the clean frames' noisy forces do not sum to zero, but within their noise: none flagged by it
    assert not np.any((t["worst"] == "net_force") & t["flag"] & (t["index"] != 7))
    # the p-value by hand: chi2(3) of the net force against n sigma^2 (then the empirical null,
    # which leaves the location at 0 and the scale at 1 on these data)
    d = t.diagnostics
    sel = (d.frame == 7) & (np.asarray(d.kind) == "forces")
    q = float(net @ net) / (len(clean[7]) * np.mean(d.sigma[sel] ** 2))
    assert t.scales["net_force_null_scale"] >= 1.0
    assert stats.chi2.sf(q, 3) < 1e-6  # a single flipped atom breaks translation invariance clearly


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_heteroscedastic_clean_set_within_false_flag_bound(seed):
    """Hot MD frames with 3x larger honest errors: per-config_type scales keep false flags near alpha."""
    rng = np.random.default_rng(seed)
    n = 40
    frames = [Atoms("Cu8", info={"config_type": "AIMD" if g % 2 else "bulk"}) for g in range(n)]
    n_sets, any_flag, any_flag_global = 150, 0, 0
    for _ in range(n_sets):
        d = _fake_diagnostics(rng, n, z_scale=1.0)
        hot = d.frame % 2 == 1
        d.z_predictive[hot] *= 3.0
        d.frame_chi2 = np.bincount(d.frame, weights=d.z_predictive ** 2)
        ev = _loo_evidence(d, np.arange(n))
        any_flag += len(_table(ev, frames, 0.05, robust=True).flagged) > 0
        one = [Atoms("Cu8")] * n
        any_flag_global += len(_table(ev, one, 0.05, robust=True).flagged) > 0
    assert any_flag / n_sets <= 0.10          # within 2x of alpha = 0.05
    assert any_flag_global / n_sets > 0.2      # one global scale cries wolf on the same data


def test_clean_emt_set_few_flags(clean_model):
    t = screen(clean_model, refit_rounds=0)
    assert len(t.flagged) <= 1
    assert np.all(t["suspect"][~t["flag"]] == "")


def test_diagnosis_of_planted_errors(dirty_table, dirty):
    t = dirty_table
    row = {i: int(np.flatnonzero(t["index"] == i)[0]) for i in PLANTED}
    assert t["suspect"][row[3]] == "energy"
    assert re.fullmatch(r"reference shift \(\+1[01]\d meV/atom\)", t["diagnosis"][row[3]])   # +100 planted
    f = dirty[7].calc.results["forces"]
    j = int(np.argmax(np.linalg.norm(f, axis=1)))
    assert t["suspect"][row[7]] == "forces" and t["diagnosis"][row[7]].endswith(f"sign error on atom {j}")
    assert t["suspect"][row[11]] == "stress" and "kBar read as GPa" in t["diagnosis"][row[11]]
    assert "diagnosis" in t.to_string().splitlines()[0]


def test_swapped_energies_and_conflicting_duplicate(clean, small_soap):
    frames = list(clean)
    e = np.array([a.get_potential_energy() for a in clean])
    i, j = int(np.argmin(e)), int(np.argmax(e))          # the pair with the most different energies
    assert len(clean[i]) == len(clean[j]) and (e[j] - e[i]) / len(clean[i]) > 0.05
    frames[i] = _relabel(clean[i], energy=e[j])
    frames[j] = _relabel(clean[j], energy=e[i])
    dup = clean[12].copy()
    dup.calc = SinglePointCalculator(dup, energy=clean[12].get_potential_energy() + 0.05 * len(dup),
                                     forces=clean[12].get_forces(), stress=clean[12].get_stress())
    frames.append(dup)
    model = SparseGP(descriptor=small_soap, n_sparse=100, verbose=False).fit(frames)
    t = screen(model, refit_rounds=0)
    row = {k: int(np.flatnonzero(t["index"] == k)[0]) for k in (i, j, 12, len(frames) - 1)}
    assert {i, j} <= set(t.flagged.tolist())
    assert t["diagnosis"][row[i]] == f"swapped with #{j}" and t["diagnosis"][row[j]] == f"swapped with #{i}"
    assert t["duplicate_of"][row[len(frames) - 1]] == 12 and t["duplicate_of"][row[12]] == -1
    assert len(frames) - 1 in t.flagged
    # two copies alone cannot tell which is wrong: both are named, each pointing at the other
    assert t["diagnosis"][row[len(frames) - 1]] == "conflicts with duplicate #12 (one of the two is wrong)"
    assert 12 in t.flagged
    assert t["diagnosis"][row[12]] == f"conflicts with duplicate #{len(frames) - 1} (one of the two is wrong)"


def test_swap_partners_are_mutual_and_within_the_uncertainty():
    """Two structures' energies are swapped when each label is the other's prediction within a few
    predictive stds, and each is the other's best match; two independent shifts of opposite sign that
    nearly exchange (a residual of many stds left) are not, nor is a chain g -> h -> k."""
    from kernelpot.uq.screening import _swap_partners
    # (n_atoms, label, prediction, std), eV
    assert _swap_partners({1: (8, -30.0, -28.0, 0.05), 2: (8, -28.02, -30.0, 0.05)}) == {1: 2, 2: 1}
    # 18 % of the residual left after exchanging (the old rule's 25 % accepted it), 6 stds each
    assert _swap_partners({1: (8, -30.0, -28.3, 0.05), 2: (8, -28.0, -29.7, 0.05)}) == {}
    # ... which within a wide uncertainty is a swap again
    assert _swap_partners({1: (8, -30.0, -28.3, 0.5), 2: (8, -28.0, -29.7, 0.5)}) == {1: 2, 2: 1}
    # different sizes never
    assert _swap_partners({1: (8, -30.0, -28.0, 0.05), 2: (9, -28.0, -30.0, 0.05)}) == {}
    # 3's best match is 1, but 1 and 2 match each other best: only they are paired
    got = _swap_partners({1: (8, -30.0, -28.0, 0.05), 2: (8, -28.0, -30.0, 0.05), 3: (8, -28.03, -30.5, 0.5)})
    assert got == {1: 2, 2: 1}


def _rotated_supercell_copy(a, forces, stress, rng):
    """The same structure and labels seen another way: a 2x1x1 supercell, rotated, atoms permuted."""
    from scipy.spatial.transform import Rotation
    R = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
    b = a.repeat((2, 1, 1))
    f = np.tile(forces, (2, 1))
    perm = rng.permutation(len(b))
    b = b[perm]
    f = f[perm] @ R.T
    b.set_cell(b.cell @ R.T, scale_atoms=False)
    b.positions = b.positions @ R.T
    S = np.array([[stress[0], stress[5], stress[4]], [stress[5], stress[1], stress[3]],
                  [stress[4], stress[3], stress[2]]])
    S = R @ S @ R.T
    b.calc = SinglePointCalculator(b, energy=2 * a.get_potential_energy(), forces=f,
                                   stress=S[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]])
    return b


def test_duplicate_force_and_stress_conflicts_against_brute_force(clean, small_soap):
    """Duplicates must repeat their forces and stress to DFT precision, whatever the cell's orientation."""
    rng = np.random.default_rng(5)
    frames = list(clean)
    src = clean[12]
    f0, s0 = src.get_forces(), src.get_stress()
    frames.append(_rotated_supercell_copy(src, f0, s0, rng))          # an honest duplicate
    noisy = f0 + rng.normal(scale=0.05, size=f0.shape)                  # unconverged SCF, 0.05 eV/Å
    frames.append(_rotated_supercell_copy(src, noisy - noisy.mean(axis=0), s0, rng))
    frames.append(_rotated_supercell_copy(src, f0, 10.0 * s0, rng))     # stress in kBar read as GPa
    near = src.copy()                                                   # not the same structure: moved
    near.positions += rng.normal(scale=3e-5, size=near.positions.shape)   # like MD frames a step apart
    near.calc = SinglePointCalculator(near, energy=src.get_potential_energy(), forces=noisy - noisy.mean(axis=0),
                                      stress=s0)
    frames.append(near)
    # three copies of another structure, the FIRST one wrong (stress in kBar): the copies' median blames it
    src2 = clean[15]
    frames[15] = _relabel(src2, stress=10.0 * src2.get_stress())
    frames += [_rotated_supercell_copy(src2, src2.get_forces(), src2.get_stress(), rng) for _ in range(2)]
    model = SparseGP(descriptor=small_soap, n_sparse=100, verbose=False).fit(frames)
    t = screen(model, refit_rounds=0)
    r15 = {k: int(np.flatnonzero(t["index"] == k)[0]) for k in (15, 44, 45)}
    assert 15 in t.flagged and t["suspect"][r15[15]] == "stress" and t["worst"][r15[15]] in ("duplicate", "stress")
    assert "kBar read as GPa" in t["diagnosis"][r15[15]]
    assert 44 not in t.flagged and 45 not in t.flagged
    # the moved copy is a near-duplicate, not the same structure: its forces may honestly differ
    from kernelpot.uq.diagnosis import mean_descriptors
    feats = mean_descriptors(model, [src, near])
    rel = np.linalg.norm(feats[1] - feats[0]) / np.linalg.norm(feats[1])
    assert 1e-6 < rel < 1e-4
    r43 = int(np.flatnonzero(t["index"] == 43)[0])
    assert t["duplicate_of"][r43] == 12 and t["worst"][r43] != "duplicate"
    row = {k: int(np.flatnonzero(t["index"] == k)[0]) for k in (40, 41, 42)}
    assert [t["duplicate_of"][row[k]] for k in (40, 41, 42)] == [12, 12, 12]
    # the honest duplicate agrees (rotation, supercell, permutation change nothing) ...
    assert 40 not in t.flagged and 12 not in t.flagged
    # ... the noisy forces and the slipped stress conflict, each named as the label that does
    assert {41, 42} <= set(t.flagged.tolist())
    assert t["suspect"][row[41]] == "forces" and t["suspect"][row[42]] == "stress"
    assert re.search(r"conflicts with duplicate #(12|40|42)$", t["diagnosis"][row[41]])
    assert "kBar read as GPa" in t["diagnosis"][row[42]]
    # brute force: the 2x supercell has each norm twice (take every other); the median of the four copies'
    # invariants is the clean one's; chi2 of the difference at 0.01 eV/Å per component (fewer than 5
    # duplicate pairs: no data-set spread), Bonferroni over 3 labels
    a = np.sort(np.linalg.norm(f0, axis=1))
    m = len(src)
    d = np.sort(np.linalg.norm(frames[41].get_forces(), axis=1))[::2] - a
    lp_f = stats.chi2.logsf(d @ d / (2 * 0.01 ** 2), m)
    # 8 tests for a structure with a duplicate (Bonferroni over them as well)
    assert t["worst"][row[41]] == "duplicate"
    assert np.log(t["p_value"][row[41]]) == pytest.approx(lp_f + np.log(3) + np.log(8), rel=1e-6)


def test_sidak_combination_known_values_and_ranking():
    from kernelpot.uq.screening import _sidak_log
    p = np.array([1e-300, 1e-20, 1e-6, 0.01, 0.3, 0.9, 1.0, 0.5])
    t = np.array([8, 8, 8, 8, 8, 8, 8, 0])
    got = np.exp(_sidak_log(np.log(p), t))
    # direct formula where double precision resolves it, T p below; no tests: p = 1
    want = np.where(p > 1e-12, 1.0 - (1.0 - p) ** t, t * p)
    want[t == 0] = 1.0
    np.testing.assert_allclose(got, want, rtol=1e-9)
    # never above one, and strictly increasing in p_min: clean structures are ranked, not tied at p = 1
    assert np.all(got <= 1.0)
    assert np.all(np.diff(_sidak_log(np.log(p[:6]), t[:6])) > 0)
    # Bonferroni's T p where it matters
    assert got[2] == pytest.approx(8e-6, rel=1e-4)
    # p near one keeps its digits: 1 - (1 - p)^8 for p = 1 - 1e-3 is 1 - 1e-24, log -1e-24, not 0
    lq = _sidak_log(np.array([np.log1p(-1e-3)]), np.array([8]))[0]
    assert lq < 0 and lq == pytest.approx(-1e-24, rel=1e-6)


def test_group_offsets_known_case():
    """A config_type whose energies are all 5 meV/atom off is reported as a group, at the right size; groups
    that differ by their noise only, or by less than DFT precision, are not."""
    from kernelpot.uq.screening import GroupOffset, _group_offsets
    r = np.random.default_rng(3)
    groups = np.repeat(["bulk", "slab", "md"], [30, 12, 40])
    resid = r.normal(0.0, 0.002, groups.size)                 # eV/atom
    resid[groups == "slab"] += 0.005
    z = resid / 0.002
    found = _group_offsets(resid, z, groups, np.arange(groups.size), np.ones(groups.size, bool), 0.05)
    assert [f.group for f in found] == ["slab"] and isinstance(found[0], GroupOffset)
    assert found[0].offset == pytest.approx(5.0, abs=1.5) and list(found[0].frames) == list(range(30, 42))
    assert "'slab' (12 structures): energies +" in found[0].message
    # without the offset: nothing; with it below 1 meV/atom however significant: nothing
    assert _group_offsets(resid - 0.005 * (groups == "slab"), z - 2.5 * (groups == "slab"), groups,
                          np.arange(groups.size), np.ones(groups.size, bool), 0.05) == []
    tight = resid * 0.01 + 0.0005 * (groups == "slab")
    assert _group_offsets(tight, tight / 1e-5, groups, np.arange(groups.size), np.ones(groups.size, bool), 0.05) == []
    # one group only: nothing to compare with
    assert _group_offsets(resid, z, np.full(groups.size, "all"), np.arange(groups.size),
                          np.ones(groups.size, bool), 0.05) == []


def test_energy_floor_per_structure():
    """No structure's energy counts more than one std per 1 meV/atom off, however sure the model is."""
    from kernelpot.uq.screening import _energy_floor
    # a model near-certain of one structure: 0.41 meV/atom off at a std of 0.015 meV/atom (z 27): z 0.41
    assert _energy_floor(np.array([27.3]), np.array([27.3]), np.array([0.00041]), 1.0)[0] == pytest.approx(0.41)
    # a std of 5 meV/atom (scale 2 of a raw 2.5): untouched
    assert _energy_floor(np.array([2.0]), np.array([4.0]), np.array([0.010]), 2.0)[0] == 2.0
    # the scale counts: raw std 0.5 meV/atom, scale 0.5 -> 0.25 meV/atom, floored to 1: z x 0.25
    got = _energy_floor(np.array([-8.0]), np.array([-4.0]), np.array([-0.002]), 0.5)[0]
    assert got == pytest.approx(-2.0)
    # a zero z (no information on the std) is left as it is
    assert _energy_floor(np.array([0.0]), np.array([0.0]), np.array([0.0]), 1.0)[0] == 0.0


def test_neighbour_ratio_known_values_and_invariances():
    from ase.build import bulk, molecule
    from ase.data import covalent_radii
    from kernelpot.uq.diagnosis import neighbour_ratio, scale_slip
    si = bulk("Si", "diamond", a=5.43)
    # diamond: nearest neighbour at a sqrt(3) / 4
    assert neighbour_ratio(si) == pytest.approx(5.43 * np.sqrt(3) / 4 / (2 * covalent_radii[14]), rel=1e-12)
    big = si.repeat((2, 3, 1))
    big.rotate(37, "x", rotate_cell=True)
    assert neighbour_ratio(big) == pytest.approx(neighbour_ratio(si), rel=1e-12)
    scaled = si.copy()
    scaled.set_cell(si.cell / 0.52917721, scale_atoms=True)
    assert neighbour_ratio(scaled) == pytest.approx(neighbour_ratio(si) / 0.52917721, rel=1e-12)
    assert scale_slip(neighbour_ratio(scaled) / neighbour_ratio(si)) == "Bohr read as Å"
    assert scale_slip(1.3) is None
    # a molecule's bonds: C-H 1.09 Å against 0.31 + 0.76 Å
    assert 0.9 < neighbour_ratio(molecule("CH4")) < 1.1
    assert np.isnan(neighbour_ratio(Atoms("Cu", positions=[[5, 5, 5]], cell=[10] * 3)))


def test_positions_in_bohr_flagged_as_geometry(clean, small_soap):
    frames = list(clean)
    a = clean[20].copy()
    a.set_cell(a.cell / 0.52917721, scale_atoms=True)      # positions and cell written in Bohr, read as Å
    a.calc = SinglePointCalculator(a, **{k: clean[20].calc.results[k] for k in ("energy", "forces", "stress")})
    frames[20] = a
    model = SparseGP(descriptor=small_soap, n_sparse=100, verbose=False).fit(frames)
    t = screen(model, refit_rounds=0)
    r = int(np.flatnonzero(t["index"] == 20)[0])
    assert 20 in t.flagged and t["suspect"][r] == "geometry"
    assert "Bohr read as Å" in t["diagnosis"][r]
    assert t["neighbour_ratio"][r] == pytest.approx(np.median(t["neighbour_ratio"]) / 0.52917721, rel=0.1)
    # the other structures' geometry is not in question
    assert not np.any((t["worst"] == "neighbours") & t["flag"] & (t["index"] != 20))


def test_displaced_atom_points_at_the_geometry(clean, small_soap):
    """One atom moved after the calculation: its force (and its neighbours') disagree, not flipped."""
    frames = list(clean)
    a = clean[25].copy()
    j = 3
    a.positions[j] += 0.3 * np.array([0.6, -0.8, 0.0])
    a.calc = SinglePointCalculator(a, **{k: clean[25].calc.results[k] for k in ("energy", "forces", "stress")})
    frames[25] = a
    model = SparseGP(descriptor=small_soap, n_sparse=100, verbose=False).fit(frames)
    t = screen(model, refit_rounds=0)
    r = int(np.flatnonzero(t["index"] == 25)[0])
    assert 25 in t.flagged
    assert t["suspect"][r] == "geometry" and f"one atom misplaced, or its force wrong (atom {j})" in t["diagnosis"][r]


@needs_shared("acac", "train_300K.xyz")
def test_moved_hydrogen_is_not_a_reference_shift(small_soap):
    """An H moved 0.1 Å after the calculation in acetylacetone: the energy is off by ~24 meV/atom, its
    force not significantly; a reference shift would leave the forces alone, here they are off on the H
    and its carbon (equal and opposite), so the screen names the geometry and the atom."""
    from kernelpot.uq.diagnosis import force_concentration
    frames = list(kernelpot.read(SHARED / "acac" / "isolated_atoms.xyz")) + \
        list(kernelpot.read(SHARED / "acac" / "train_300K.xyz"))[:50]
    g = len(frames) - 30
    a = frames[g]
    h = [k for k, s in enumerate(a.get_chemical_symbols()) if s == "H"][2]
    b = a.copy()
    b.positions[h] += 0.1 * np.array([1.0, 0.7, -0.4]) / np.linalg.norm([1.0, 0.7, -0.4])
    b.calc = SinglePointCalculator(b, **a.calc.results)
    b.info.update(a.info)
    frames[g] = b
    model = SparseGP(descriptor=small_soap, n_sparse=100, verbose=False).fit(frames)
    t = screen(model, refit_rounds=1)
    r = int(np.flatnonzero(t["index"] == g)[0])
    assert g in t.flagged and t["worst"][r] == "energy"
    assert t["suspect"][r] == "geometry"
    assert t["diagnosis"][r].startswith(f"one atom misplaced (atom {h})")
    # the evidence: the forces test alone would not flag it, the force residual sits on the H and one neighbour
    assert t["forces_max_z"][r] < 4.0
    rest = SparseGP(descriptor=small_soap, n_sparse=100, verbose=False).fit(frames[:g] + frames[g + 1:])
    j, k, share = force_concentration(a.get_forces(), rest.predict_frame(b, return_std=False)["forces"])
    assert j == h and share > 0.9 and b.get_distance(j, k) < 1.2      # the H and its carbon
    # no clean structure is read as a moved atom
    assert not any(d.startswith("one atom misplaced") for i, d in zip(t["index"], t["diagnosis"]) if i != g)


def _copies(src, n, rng, forces=None):
    out = []
    for k in range(n):
        b = src.copy()
        f = src.get_forces() if forces is None or k not in forces else forces[k]
        b.calc = SinglePointCalculator(b, energy=src.get_potential_energy(), forces=f, stress=src.get_stress())
        out.append(b)
    return out


@pytest.mark.parametrize("wrong", [0, 3, 5])
def test_a_wrong_copy_is_found_wherever_it_sits(clean, wrong):
    """Six copies, one with 0.1 eV/Å noise: the median of the copies blames it, first, middle or last."""
    from kernelpot.uq.screening import _duplicate_conflicts
    rng = np.random.default_rng(1)
    src = clean[5]
    noisy = src.get_forces() + rng.normal(scale=0.1, size=(len(src), 3))
    frames = _copies(src, 6, rng, forces={wrong: noisy})
    dup = np.array([-1, 0, 0, 0, 0, 0])
    (lp, label), partner, copies = _duplicate_conflicts(frames, dup, np.ones(6, bool), np.full(6, 1e-3))
    assert np.argmin(lp) == wrong and label[wrong] == "forces" and copies[wrong] == 6
    assert lp[wrong] < np.log(1e-10)
    # the clean copies agree with the median exactly: p = 1 (Bonferroni over energy, forces, stress)
    assert np.all(np.delete(lp, wrong) == 0.0)
    assert partner[wrong] != wrong


def test_a_chain_of_near_duplicates_is_compared_link_by_link(clean):
    """Each frame a near-duplicate of the previous only: its ends are not judged by its middle."""
    from kernelpot.uq.screening import _duplicate_conflicts
    src = clean[5]
    frames = []
    for k in range(12):                      # energies drift by 0.4 meV/atom per step, 4.4 over the chain
        b = src.copy()
        b.calc = SinglePointCalculator(b, energy=src.get_potential_energy() + 4e-4 * k * len(src),
                                       forces=src.get_forces(), stress=src.get_stress())
        frames.append(b)
    dup = np.r_[-1, np.arange(11)]
    (lp, label), partner, copies = _duplicate_conflicts(frames, dup, np.zeros(12, bool), np.full(12, 1e-4))
    # brute force: each link a pair, |dE| = 0.4 meV/atom against sqrt(2 (0.1)^2 + 1^2) meV/atom
    p_link = 2 * stats.norm.sf(0.4 / np.sqrt(2 * 0.1 ** 2 + 1.0))
    np.testing.assert_allclose(np.exp(lp[1:]), p_link, rtol=1e-9)
    assert np.all(copies[1:] == 2)
    assert all(partner[k] in (k - 1, k + 1) for k in range(1, 12)) and partner[0] == 1


def test_many_copies_do_not_set_the_null(small_soap):
    """25 copies of one structure predict each other exactly; the other structures are not made extreme.

    With the copies in the robust calibration, structures 10 and 20 of this set were flagged.
    """
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from conftest import label
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(30):
        a = bulk("Cu", "fcc", a=3.61 * (1 + rng.uniform(-0.02, 0.02)), cubic=True).repeat(2)
        a.rattle(stdev=rng.uniform(0.02, 0.1), seed=int(rng.integers(1e9)))
        a.info["config_type"] = "bulk_rattle"
        frames.append(label(a, EMT()))
    rng = np.random.default_rng(9)
    src = frames[4]
    for _ in range(25):                                   # honest repeats: 1e-4 eV/Å of noise
        b = src.copy()
        b.calc = SinglePointCalculator(b, energy=src.get_potential_energy() + rng.normal(scale=1e-4),
                                       forces=src.get_forces() + rng.normal(scale=1e-4, size=(len(b), 3)),
                                       stress=src.get_stress())
        b.info["config_type"] = "bulk_rattle"
        frames.append(b)
    model = SparseGP(descriptor=small_soap, n_sparse=100, verbose=False).fit(frames)
    t = screen(model)
    assert np.sum(t["duplicate_of"] >= 0) == 25
    assert len(t.flagged) == 0


def test_chemiscope_file_holds_every_structure_and_column(dirty_table, dirty, tmp_path):
    chemiscope = pytest.importorskip("chemiscope", reason="chemiscope is in the test extra (pip install -e .[test])")
    import gzip
    import json
    path = tmp_path / "screen.json.gz"
    dirty_table.to_chemiscope(path, dirty)
    with gzip.open(path, "rt") as fh:
        data = json.load(fh)
    assert len(data["structures"]) == len(dirty)
    for a, s in zip(dirty, data["structures"]):
        assert s["size"] == len(a)
        np.testing.assert_allclose(s["x"], a.positions[:, 0], atol=1e-9)
    props = data["properties"]
    assert set(COLUMNS) <= set(props) and {"PCA[1]", "PCA[2]"} <= set(props)
    # rows come back in frame order
    assert props["index"]["values"] == list(range(len(dirty)))
    assert props["flag"]["values"][3] == 1.0
    # chemiscope's own validator accepts what it reads back
    chemiscope.create_input(structures=dirty, properties=props)
    assert data["settings"]["map"]["x"]["property"] == "PCA[1]"
    with pytest.raises(ValueError, match="training order"):
        dirty_table.to_chemiscope(tmp_path / "x.json", dirty[:5])
    assert not (tmp_path / "x.json").exists()


def test_influence_plot_readable(dirty_table):
    from matplotlib.text import Text
    fig, ax = dirty_table.plot()
    assert ax.get_yscale() == "symlog"          # scores span decades
    assert "leverage (" in ax.get_xlabel()
    assert any("threshold" in t.get_text() for t in ax.get_legend().get_texts())
    fig.canvas.draw()
    # the texts, not their leader lines (get_window_extent first: it places an annotation's text)
    boxes = [(t.get_window_extent(), Text.get_window_extent(t))[1] for t in ax.texts]
    fb = fig.bbox
    for i, b in enumerate(boxes):
        assert fb.x0 <= b.x0 and b.x1 <= fb.x1 and fb.y0 <= b.y0 and b.y1 <= fb.y1   # not clipped
        assert not any(b.overlaps(o) for o in boxes[i + 1:])                           # not overlapping


def test_refit_round_does_not_renumber_data_warnings(dirty, small_soap):
    """The refit is fitted on the structures that were not flagged; its data warnings numbered that subset's
    frames (a tester's duplicate of file frame 24 was named as frame 22, an unrelated cell). The data were
    checked as a whole when the model was fitted: the refit passes on only the fit's own warnings."""
    from kernelpot.io.labels import DataWarning
    copy = _relabel(dirty[30], energy=dirty[30].calc.results["energy"] + 0.02)  # relabelled duplicate
    frames = list(dirty) + [copy]
    with pytest.warns(DataWarning, match=r"frames 30 and 40"):
        model = SparseGP(descriptor=small_soap, n_sparse=100, verbose=False).fit(frames)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = screen(model, refit_rounds=1)
    assert t.rounds == 1 and min(t.flagged) < 30 and not {30, 40} & set(t["index"][t["held_out"]].tolist())
    assert not [w for w in caught if issubclass(w.category, DataWarning)], [str(w.message)[:200] for w in caught]
