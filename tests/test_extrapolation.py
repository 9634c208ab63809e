"""Error bars off the training distribution (issue: a Cu3Au-only model asked about other compositions).

A model fitted only on L1_2 Cu3Au cells (EMT labels) cannot know how the energy
splits between Cu and Au: every training structure has three Cu per Au.  It must
say so at fit time, and its sigma for pure Cu, pure Au, CuAu L1_0 and isolated
atoms must cover the actual errors (within 3 sigma).  Before the offsets were
Bayesian parameters and the calibration saw held-out groups, these errors were
4.4, 9.6 and 10.5 sigma with no warning.
"""

import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from kernelpot import SOAP, SparseGP
from conftest import label


def _l12(a0=3.75):
    cell = Atoms("AuCu3", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
                 cell=np.eye(3) * a0, pbc=True)
    return cell.repeat((2, 2, 2))


def _train_frames():
    """24 L1_2 Cu3Au cells, a +-3 % and sheared by up to 2 %, rattled 0.05 Å, EMT labels."""
    rng = np.random.default_rng(0)
    train = []
    for _ in range(24):
        a = _l12()
        eps = rng.uniform(-0.02, 0.02, (3, 3))
        eps = (eps + eps.T) / 2 + np.eye(3) * rng.uniform(-0.03, 0.03)
        a.set_cell(a.cell @ (np.eye(3) + eps), scale_atoms=True)
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        train.append(label(a, EMT()))
    return train


@pytest.fixture(scope="module")
def cu3au_model():
    train = _train_frames()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = SparseGP(n_sparse=80, descriptor=SOAP(r_cut=4.0, n_max=4, l_max=3), verbose=False).fit(train)
    return model, [str(w.message) for w in caught]


def _others():
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    cu.rattle(0.02, seed=1)
    au = bulk("Au", "fcc", a=4.06, cubic=True).repeat(2)
    au.rattle(0.02, seed=2)
    l10 = Atoms("Cu2Au2", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
                cell=[3.9, 3.9, 3.7], pbc=True).repeat(2)
    atoms = [Atoms(s, positions=[[5.0, 5.0, 5.0]], cell=[10.0, 10.0, 10.0], pbc=False) for s in ("Cu", "Au")]
    return {"Cu": cu, "Au": au, "CuAu L1_0": l10, "Cu atom": atoms[0], "Au atom": atoms[1]}


def test_fit_warns_that_offsets_cannot_be_separated(cu3au_model):
    _, messages = cu3au_model
    assert any("cannot separate the energy offsets of Au, Cu" in m for m in messages)


@pytest.mark.parametrize("name", ["Cu", "Au", "CuAu L1_0", "Cu atom", "Au atom"])
def test_energy_errors_of_other_compositions_within_three_sigma(cu3au_model, name):
    model, _ = cu3au_model
    a = label(_others()[name], EMT())
    p = model.predict_frame(a)
    err = a.get_potential_energy() - p["energy"]
    assert abs(err) > 0.05 * len(a) or len(a) == 1 or name == "CuAu L1_0"   # a real extrapolation error
    assert abs(err) <= 3 * p["energy_std"], f"{name}: error {err:.3f} eV, sigma {p['energy_std']:.3f} eV"
    if len(a) > 1 and name != "CuAu L1_0":      # L1_0 forces vanish by symmetry
        fe = a.get_forces() - p["forces"]
        # forces of the pure metals: at most 1 % of components beyond 3 sigma
        assert np.mean(np.abs(fe) > 3 * p["forces_std"]) <= 0.01


def test_extrapolation_names_what_the_calibration_never_saw(cu3au_model):
    """``extrapolation`` compares a structure's latent variance with the largest the calibration's held-out
    data reached.  A training structure's variance is below its own held-out one (more data never widens a
    GP posterior at fixed hyperparameters), so every training structure reads at most 1; pure metals, L1_0
    and isolated atoms, none of which a Cu3Au cell resembles, read above it; uncalibrated, it is NaN."""
    from kernelpot.gp.posterior import extrapolation, _full_weights
    model, _ = cu3au_model
    train = [model.predict_frame(a)["extrapolation"] for a in _train_frames()]
    assert 0.0 < max(train) <= 1.0 + 1e-9
    for name, a in _others().items():
        x = model.predict_frame(a)["extrapolation"]
        assert x > 1.0, (name, x)
        assert np.isnan(model.predict_frame(a, calibrated=False)["extrapolation"])
    # the definition: per-atom force amplitude (mean variance of the three components) over a_max
    v = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    w = (1.0, 1.0, 1.0, 1.0, 1.0, 4.0, 1.0)
    assert extrapolation(v, w, "forces") == pytest.approx(0.5)
    assert np.isnan(extrapolation(v, (1.0, 1.0), "forces"))
    assert _full_weights(model.std_weights_["forces"])[5] > 0


def _ni3al_fcc_frames():
    """EMT cells in four config_types: 16 L1_2 Ni3Al (2x2x1), 4 with a vacancy, 8 fcc Ni, 6 fcc Al; strained
    by ~2 % and rattled 0.06 Å.  Holding out fcc Al (the group LOO does) leaves the weights of Al-rich
    environments unknown: the largest held-out variance is a posterior one, the Nystrom residual stays small."""
    rng = np.random.default_rng(0)

    def cell(a, lin=0.02, shear=0.01, rattle=0.06, ct="L12"):
        a = a.copy()
        eps = rng.normal(scale=shear, size=(3, 3))
        a.set_cell(a.cell @ (np.eye(3) + (eps + eps.T) / 2 + np.eye(3) * rng.uniform(-lin, lin)), scale_atoms=True)
        a.positions += rng.normal(scale=rattle, size=a.positions.shape)
        a = label(a, EMT())
        a.info["config_type"] = ct
        return a

    l12 = Atoms("Ni3Al", scaled_positions=[[.5, .5, 0], [.5, 0, .5], [0, .5, .5], [0, 0, 0]],
                cell=np.eye(3) * 3.661, pbc=True)
    frames = [cell(l12.repeat((2, 2, 1))) for _ in range(16)]
    for _ in range(4):
        v = l12.repeat(2)
        del v[int(rng.integers(len(v)))]
        frames.append(cell(v, lin=0.01, rattle=0.04, ct="vacancy"))
    frames += [cell(bulk("Ni", "fcc", a=3.52, cubic=True).repeat((2, 1, 1)), ct="fcc_Ni") for _ in range(8)]
    frames += [cell(bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 1, 1)), ct="fcc_Al") for _ in range(6)]
    return frames


def test_nystrom_weight_fades_beyond_the_residuals_it_was_fitted_on():
    """A Ni2 dimer asked of a model of Ni3Al, Ni and Al cells: its variance is almost all Nystrom residual, 100x
    the largest of the calibration data, while its total amplitude is far below the largest held-out one (a
    held-out composition's).  The Nystrom weight (~0.004) measured only where the sparse set represents the
    data once made the dimer's force sigma 8x narrower than the GP's own (1.6 eV/Å errors 46 sigma out); now
    beyond its data it fades back to the GP's own sigma, and ``extrapolation`` says so."""
    model = SparseGP(descriptor=SOAP(r_cut=4.0, n_max=6, l_max=4), n_sparse=150, verbose=False).fit(
        _ni3al_fcc_frames())
    dimer = Atoms("Ni2", positions=[[0, 0, 0], [0, 0, 2.5]])
    cal, raw = model.predict_frame(dimer), model.predict_frame(dimer, calibrated=False)
    w = model.std_weights_["forces"]
    assert w[2] < 0.05 and len(w) == 9     # the Nystrom weight is small where it was fitted ...
    # ... and has faded here (the bond's forces: across it the std is the aleatoric part, calibrated apart)
    np.testing.assert_allclose(cal["forces_std_epistemic"][:, 2], raw["forces_std_epistemic"][:, 2], rtol=0.05)
    err = cal["forces"] - label(dimer, EMT()).get_forces()
    assert np.abs(err / cal["forces_std"])[:, 2].max() < 8
    assert cal["extrapolation"] > 10
    # a training cell is where the weights were measured: untouched by the fade
    a = _ni3al_fcc_frames()[0]
    from kernelpot.gp.posterior import variance
    # (amplitudes below v_fade, where only the Nystrom reach can fade the weight)
    v, amp = (np.array([1.0, 1.0]), np.array([0.5, 0.5])), np.full(2, 0.5 * w[6])
    seven = variance(w[:7], 0.0, *v[:1], amp, v[1])[0]
    eight = variance(w, 0.0, *v[:1], amp, v[1], nystrom_amplitude=np.array([0.5 * w[7], 2.0 * w[7]]))[0]
    assert eight[0] == pytest.approx(seven[0]) and eight[1] > seven[1]
    assert model.predict_frame(a)["extrapolation"] <= 1.0 + 1e-9


def test_own_sparse_residual_is_the_nystrom_residual_without_those_points():
    """The block-inverse update against a direct Nystrom residual computed from the reduced sparse set."""
    from kernelpot.gp.loo import own_sparse_residual
    rng = np.random.default_rng(3)
    X = rng.normal(size=(12, 5))                  # sparse environments
    Kmm = (X @ X.T) ** 2 + 1e-9 * np.eye(12)
    Y = rng.normal(size=(7, 5))                   # observations (local energies)
    k = (Y @ X.T) ** 2
    prior = np.sum(Y * Y, axis=1) ** 2
    L = np.linalg.cholesky(Kmm)
    A = np.linalg.solve(L, k.T).T                 # whitened rows
    out = np.array([3, 4, 9])
    keep = np.setdiff1d(np.arange(12), out)
    full = prior - np.sum(A ** 2, axis=1)
    reduced = prior - np.einsum("ij,ij->i", k[:, keep], np.linalg.solve(Kmm[np.ix_(keep, keep)], k[:, keep].T).T)
    np.testing.assert_allclose(full + own_sparse_residual(L, A, out), reduced, rtol=1e-6, atol=1e-9 * prior.max())
    assert np.all(own_sparse_residual(L, A, np.zeros(0, int)) == 0.0)


def _al_cells(rng, n, scale=1.0, repeat=(1, 1, 1), shear=0.0):
    """``n`` EMT-labelled fcc Al cells: a = 4.05 Å x ``scale`` +-2 %, strained by up to ``shear`` per component
    (none drawn at 0), rattled 0.05 Å."""
    out = []
    for _ in range(n):
        a = bulk("Al", "fcc", a=4.05 * scale * rng.uniform(0.98, 1.02), cubic=True).repeat(repeat)
        if shear:
            a.set_cell(a.cell @ (np.eye(3) + rng.uniform(-shear, shear, (3, 3))), scale_atoms=True)
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        out.append(label(a, EMT()))
    return out


def test_in_distribution_cells_are_not_extrapolation_when_their_atoms_are_sparse_points():
    """EMT aluminium, 16 cells of 8 atoms; the sparse set holds 84 of the 128 training atoms (the others are
    numerically dependent on them).  A training energy's Nystrom residual is then zero to round-off, while a new
    cell drawn from the same distribution has one: measured with each cell's own atoms in the sparse set, the
    largest calibration residual made these in-distribution test cells read extrapolation up to 37 (300 on a
    fresh tester's 30 cells).  Measured with each structure's own environments left out of the sparse set, they
    read below 1; a cell compressed 12 % stays far above."""
    rng = np.random.default_rng(0)
    train, test = _al_cells(rng, 16, repeat=(2, 1, 1)), _al_cells(rng, 10, repeat=(2, 1, 1))
    compressed = _al_cells(rng, 2, 0.88, repeat=(2, 1, 1))
    model = SparseGP(descriptor=SOAP(r_cut=4.0, n_max=6, l_max=4), verbose=False).fit(train)
    x = [model.predict_frame(a)["extrapolation"] for a in test]
    assert max(model.predict_frame(a)["extrapolation"] for a in train) <= 1.0 + 1e-9
    assert np.median(x) < 1.0 and max(x) < 3.0, x
    assert min(model.predict_frame(a)["extrapolation"] for a in compressed) > 100.0


def test_in_distribution_cells_are_not_extrapolation_when_every_atom_is_a_sparse_point():
    """Six 4-atom Al cells, (nearly) every atom a sparse point (found by a fresh tester).  Each held-out cell's
    energy variance then sits in the posterior of its own sparse weights, which the other cells' forces pin down,
    while a new cell's sits in its Nystrom residual, which no data reduce: against the largest held-out energy
    variance (a_max) new cells drawn alike read up to 18 here (104 in the tester's set).  ``extrapolation``
    compares with the held-out variance measured as a new cell's would be (posterior part plus the residual
    without its own sparse points, ``x_max``)."""
    rng = np.random.default_rng(1)
    train, test = _al_cells(rng, 6, shear=0.01), _al_cells(rng, 10, shear=0.01)
    model = SparseGP(descriptor=SOAP(r_cut=4.0, n_max=4, l_max=3), verbose=False).fit(train)
    assert model.sparse_.size >= 22       # of 24 atoms (one may be numerically dependent)
    w = model.std_weights_["energy"]
    # the calibration measures each held-out cell as a new one (without its own sparse points): its largest
    # energy variance (a_max, and x_max) is far above what the cells read with their environments in the basis
    d = model.training_diagnostics_
    in_sparse = np.max((d.loo_std_predictive ** 2 - d.sigma ** 2)[d.kind == "energy"])
    assert w[8] >= w[5] > 10 * in_sparse
    x = [model.predict_frame(a)["extrapolation"] for a in test]
    assert max(x) < 2.0, x
    assert min(model.predict_frame(a)["extrapolation"] for a in _al_cells(rng, 2, 0.88, shear=0.01)) > 100.0
