"""SOAP descriptor: invariances, supercells, derivatives against finite differences, errors."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import read
from scipy.spatial.transform import Rotation
from scipy.special import eval_legendre
from sklearn.base import clone

from conftest import SHARED
from kernelpot import SOAP
from kernelpot.descriptors.soap import _RadialTables, _hermite_numpy, willatt_scaling

SMALL = dict(r_cut=4.0, n_max=4, l_max=3, atom_sigma=0.5)
ACAC = SHARED / "acac" / "train_300K.xyz"


def acac():
    if ACAC.exists():
        return read(ACAC, index=0)
    return molecule("CH3COCH3")  # pragma: no cover - data ships with the repository


def triclinic_nacl(seed=0):
    """Small (3 Å) triclinic cell: every neighbour is seen through several images."""
    rng = np.random.default_rng(seed)
    cell = [[3.1, 0.0, 0.0], [0.9, 3.3, 0.0], [0.5, 0.8, 3.0]]
    return Atoms("NaClClNaO", scaled_positions=rng.random((5, 3)), cell=cell, pbc=True)


def rattled_rocksalt(seed=1):
    """8-atom conventional rock salt: a mix of single- and multi-image neighbours at r_cut 4."""
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    a.rattle(0.15, seed=seed)
    eps = [[0.02, 0.01, 0.0], [0.01, -0.01, 0.02], [0.0, 0.02, 0.01]]
    a.set_cell(a.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
    return a


def relerr(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def dense_position_grad(out, n_atoms):
    """(n_atoms, n_atoms, 3, F) from the sparse blocks (test helper only; tiny systems)."""
    g = np.zeros((n_atoms, n_atoms, 3, out.features.shape[1]))
    g[out.pair_center, out.pair_neighbor] = out.pair_grad
    return g


def strained(atoms, eps):
    b = atoms.copy()
    x = np.eye(3) + eps
    if atoms.pbc.any():
        b.set_cell(atoms.cell[:] @ x, scale_atoms=True)
    else:
        b.positions = atoms.positions @ x
    return b


VOIGT = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]


# --------------------------------------------------------------------- basics
def test_feature_counts_match_dscribe():
    assert SOAP(species=["Si"], n_max=8, l_max=6).get_number_of_features() == 252
    assert SOAP(species=["Na", "Cl"], n_max=8, l_max=6).get_number_of_features() == 952
    soap = SOAP(species=["Na", "Cl", "O"], **SMALL)
    out = soap.compute(triclinic_nacl())
    assert out.features.shape == (5, soap.get_number_of_features())
    np.testing.assert_array_equal(out.numbers, triclinic_nacl().numbers)


def test_sklearn_contract():
    soap = SOAP(species=["O", "H"], r_cut=3.0, n_max=3)
    twin = clone(soap)
    assert twin.get_params() == soap.get_params()
    assert twin.species == ["O", "H"]  # __init__ stores arguments untouched
    soap.fit([molecule("H2O")])
    np.testing.assert_array_equal(soap.species_, [1, 8])
    assert not hasattr(clone(soap), "species_")


def test_species_inferred_by_fit_and_first_compute():
    water = molecule("H2O")
    fitted = SOAP(**SMALL).fit([water, molecule("CH4")])
    np.testing.assert_array_equal(fitted.species_, [1, 6, 8])
    lazy = SOAP(**SMALL)
    lazy.compute(water)
    np.testing.assert_array_equal(lazy.species_, [1, 8])
    with pytest.raises(ValueError, match=r"C \(6\).*\[H \(1\), O \(8\)\]"):
        lazy.compute(molecule("CH4"))


def test_radial_basis_orthonormal_and_tables_accurate():
    tab = _RadialTables(4.0, 4, 3, 0.5)
    x = tab._x
    radial = tab.basis_coefficients @ np.exp(
        -((x[None, :] - 4.0 * np.arange(4)[:, None] / 4) ** 2) / (2 * (4.0 / 4) ** 2)
    )
    w = tab._weights / (4 * np.pi * radial)  # quadrature weight times x^2
    overlap = (radial * w[0]) @ radial.T
    np.testing.assert_allclose(overlap, np.eye(4), atol=1e-10)
    # Interpolated tables vs direct quadrature at random radii.
    r = np.random.default_rng(0).uniform(0, 4.0, 200)
    exact, dexact = tab.evaluate(r)
    grid = np.arange(len(tab.values)) * tab.h
    interp = _hermite_numpy(grid, tab.values, tab.derivatives, r)
    assert relerr(interp, exact) < 1e-8
    # The analytic r-derivative under the integral matches finite differences.
    hstep = 1e-5
    fd = (tab.evaluate(r + hstep)[0] - tab.evaluate(r - hstep)[0]) / (2 * hstep)
    assert relerr(dexact, fd) < 1e-7


@pytest.mark.parametrize("scaling", [None, (1.5, 4.0), (2.0, 6.0)], ids=["plain", "r0=1.5,m=4", "r0=2,m=6"])
def test_power_spectrum_against_legendre_double_sum(scaling):
    """p_{nn'l} = pi sqrt(8/(2l+1)) (2l+1)/(4 pi) sum_jk G_nl(r_j) G_n'l(r_k) P_l(cos theta_jk).

    With radial scaling each neighbour's G is multiplied by u(r) = 1 / (1 + (r / r0)^m)
    (Willatt, Musil, Ceriotti 2018), written out here, not taken from the module.
    """
    atoms = molecule("CH3OH")
    extra = {} if scaling is None else dict(radial_scaling=scaling[0], radial_exponent=scaling[1])
    soap = SOAP(species=[1, 6, 8], center_weight=0.0, normalize=False, cutoff_width=1.5, **SMALL, **extra)
    feats = soap.compute(atoms).features
    tab = _RadialTables(4.0, 4, 3, 0.5)
    i = 1  # the oxygen
    d = np.delete(atoms.positions - atoms.positions[i], i, axis=0)
    z = np.delete(atoms.numbers, i)
    r = np.linalg.norm(d, axis=1)
    fc = np.where(r <= 2.5, 1.0, 0.5 * (1 + np.cos(np.pi * (r - 2.5) / 1.5)))
    if scaling is not None:
        fc = fc / (1.0 + (r / scaling[0]) ** scaling[1])
    g = tab.evaluate(r)[0] * fc[:, None, None]  # (n_nb, n, l)
    cos = (d @ d.T) / np.outer(r, r)
    spec = [1, 6, 8]
    expected = []
    for a in range(3):
        for b in range(a, 3):
            for n in range(4):
                for n2 in range(n if a == b else 0, 4):
                    for l in range(4):
                        ma = z == spec[a]
                        mb = z == spec[b]
                        s = np.einsum("j,k,jk->", g[ma, n, l], g[mb, n2, l],
                                      eval_legendre(l, cos[np.ix_(ma, mb)]))
                        val = np.pi * np.sqrt(8 / (2 * l + 1)) * (2 * l + 1) / (4 * np.pi) * s
                        expected.append(val * (np.sqrt(2) if (a != b or n != n2) else 1.0))
    # tolerance = table interpolation error (~1e-8), the angular algebra is exact
    np.testing.assert_allclose(feats[i], expected, rtol=0, atol=1e-7 * np.max(np.abs(expected)))


def test_isolated_atom_is_finite_and_normalised():
    soap = SOAP(species=["Cu"], **SMALL)
    out = soap.compute(Atoms("Cu", positions=[[0, 0, 0]]), gradients=True, strain=True)
    np.testing.assert_allclose(np.linalg.norm(out.features), 1.0)
    assert out.pair_grad.shape == (1, 3, soap.get_number_of_features())
    np.testing.assert_array_equal(out.pair_grad, 0.0)


def test_create_matches_compute():
    soap = SOAP(species=["H", "C", "O", "Na", "Cl"], **SMALL)
    frames = [molecule("CH3OH"), triclinic_nacl(), rattled_rocksalt()]
    batch = soap.create(frames)
    for f, b in zip(frames, batch):
        np.testing.assert_array_equal(soap.compute(f).features, b)
    np.testing.assert_array_equal(soap.create(frames[0]), batch[0])


# ----------------------------------------------------------------- invariances
@pytest.mark.parametrize("make", [acac, triclinic_nacl])
def test_rotation_translation_invariance(make):
    atoms = make()
    soap = SOAP(species=["H", "C", "O", "Na", "Cl"], **SMALL)
    ref = soap.compute(atoms).features
    rot = Rotation.random(random_state=3).as_matrix()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T + [0.3, -1.7, 2.2]
    if atoms.pbc.any():
        moved.set_cell(atoms.cell[:] @ rot.T, scale_atoms=False)
        moved.wrap()
    assert relerr(soap.compute(moved).features, ref) < 1e-10


def test_atom_permutation_permutes_features_and_gradients():
    atoms = rattled_rocksalt()
    soap = SOAP(species=["Na", "Cl"], **SMALL)
    out = soap.compute(atoms, gradients=True, strain=True)
    perm = np.random.default_rng(5).permutation(len(atoms))
    pout = soap.compute(atoms[perm], gradients=True, strain=True)
    np.testing.assert_allclose(pout.features, out.features[perm], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(pout.strain_grad, out.strain_grad[perm], rtol=1e-10, atol=1e-13)
    dense = dense_position_grad(out, len(atoms))
    pdense = dense_position_grad(pout, len(atoms))
    np.testing.assert_allclose(pdense, dense[np.ix_(perm, perm)], rtol=1e-10, atol=1e-13)


def test_species_order_is_irrelevant():
    atoms = molecule("CH3CH2OH")
    a = SOAP(species=[8, 1, 6], **SMALL).compute(atoms, gradients=True)
    b = SOAP(species=["H", "C", "O"], **SMALL).compute(atoms, gradients=True)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.pair_grad, b.pair_grad)


@pytest.mark.parametrize(
    "prim",
    [
        bulk("Cu", "fcc", a=3.6),  # one atom, cell far smaller than r_cut
        bulk("Si", "diamond", a=5.43),
        bulk("NaCl", "rocksalt", a=5.64),
    ],
    ids=["fcc", "diamond", "rocksalt"],
)
def test_supercell_gives_same_per_atom_features(prim):
    prim = prim.copy()
    prim.rattle(0.05, seed=2)  # break symmetry so a wrong image sum shows
    soap = SOAP(species=sorted(set(prim.get_chemical_symbols())), **SMALL)
    small = soap.compute(prim, gradients=True, strain=True)
    sup = prim * (2, 2, 2)
    big = soap.compute(sup, gradients=True, strain=True)
    n = len(prim)
    np.testing.assert_allclose(big.features, np.tile(small.features, (8, 1)),
                               rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(big.strain_grad, np.tile(small.strain_grad, (8, 1, 1)), rtol=1e-9,
                               atol=1e-11)
    # Position derivatives: the primitive folds the 8 supercell copies of each neighbour.
    dense = dense_position_grad(big, len(sup))
    folded = dense[:n].reshape(n, 8, n, 3, -1).sum(axis=1)
    np.testing.assert_allclose(folded, dense_position_grad(small, n), rtol=1e-9, atol=1e-11)


# ------------------------------------------------------------------ derivatives
def check_position_fd(soap, atoms, atoms_to_move=None, hstep=1e-5):
    out = soap.compute(atoms, gradients=True)
    dense = dense_position_grad(out, len(atoms))
    # translation invariance: every centre's blocks sum to zero
    np.testing.assert_allclose(dense.sum(axis=1), 0.0, atol=1e-12 * np.abs(dense).max())
    worst = 0.0
    for j in atoms_to_move if atoms_to_move is not None else range(len(atoms)):
        for al in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[j, al] += hstep
            minus.positions[j, al] -= hstep
            fd = (soap.compute(plus).features - soap.compute(minus).features) / (2 * hstep)
            worst = max(worst, relerr(dense[:, j, al], fd))
    assert worst < 1e-6, worst


def check_strain_fd(soap, atoms, hstep=1e-5):
    out = soap.compute(atoms, strain=True)
    sg = out.strain_grad
    for v, (a, b) in enumerate(VOIGT):
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = hstep
        fd = (soap.compute(strained(atoms, eps)).features
              - soap.compute(strained(atoms, -eps)).features) / (2 * hstep)
        if a != b:
            fd /= 2  # both eps_ab and eps_ba were moved (ASE's convention)
        assert relerr(sg[:, v], fd) < 1e-6, (v, relerr(sg[:, v], fd))
    # the same numbers come out when gradients are requested too
    both = soap.compute(atoms, gradients=True, strain=True).strain_grad
    np.testing.assert_allclose(both, sg, rtol=1e-10, atol=1e-12 * np.abs(sg).max())


@pytest.mark.parametrize("normalize", [True, False])
def test_gradients_periodic_triclinic_multispecies(normalize):
    soap = SOAP(species=["Na", "Cl", "O"], normalize=normalize, **SMALL)
    atoms = triclinic_nacl()
    check_position_fd(soap, atoms)
    check_strain_fd(soap, atoms)


def test_gradients_rocksalt_mixed_images():
    soap = SOAP(species=["Na", "Cl"], **SMALL)
    atoms = rattled_rocksalt()
    check_position_fd(soap, atoms, atoms_to_move=[0, 3, 6])
    check_strain_fd(soap, atoms)


@pytest.mark.parametrize("r0, m", [(2.0, 4.0), (1.2, 6.0)])
def test_gradients_with_radial_scaling(r0, m):
    """Exact position and strain derivatives with the scaling folded into the radial tables."""
    soap = SOAP(species=["Na", "Cl", "O"], radial_scaling=r0, radial_exponent=m, **SMALL)
    atoms = triclinic_nacl(seed=3)
    check_position_fd(soap, atoms)
    check_strain_fd(soap, atoms)
    mol = SOAP(species=["H", "C", "O"], radial_scaling=r0, radial_exponent=m, **SMALL)
    check_position_fd(mol, acac(), atoms_to_move=[0, 5, 10])


def test_radial_scaling_weights_and_tables():
    """u(0) = 1, u(r0) = 1/2, du/dr against finite differences; the scaled table still interpolates to 1e-8."""
    r = np.linspace(0.0, 4.0, 81)
    u, du = willatt_scaling(r, 2.0, 4.0)
    assert u[0] == 1.0 and abs(u[40] - 0.5) < 1e-14  # r[40] = 2.0
    h = 1e-6
    fd = (willatt_scaling(r[1:] + h, 2.0, 4.0)[0] - willatt_scaling(r[1:] - h, 2.0, 4.0)[0]) / (2 * h)
    np.testing.assert_allclose(du[1:], fd, rtol=1e-7, atol=1e-10)
    scaled = _RadialTables(4.0, 4, 3, 0.5, 2.0, 4.0)
    x = np.random.default_rng(1).uniform(0.1, 4.0, 50)
    gs = scaled.evaluate(x)[0]
    grid = np.arange(len(scaled.values)) * scaled.h
    assert relerr(_hermite_numpy(grid, scaled.values, scaled.derivatives, x), gs) < 1e-8


def test_gradients_molecule():
    soap = SOAP(species=["H", "C", "O"], r_cut=4.0, n_max=5, l_max=4, atom_sigma=0.4)
    atoms = acac()
    check_position_fd(soap, atoms)
    check_strain_fd(soap, atoms)


def test_continuity_at_cutoff():
    soap = SOAP(species=["H", "O"], **SMALL)
    # The far H is a neighbour of the O only (it is r_cut + 0.96 Å from the other H).
    u = np.array([0.6, 0.0, 0.8])
    base = Atoms("OHH", positions=[[0, 0, 0], -0.96 * u, [0, 0, 0]])
    outs = []
    for r in (4.0 - 1e-6, 4.0 + 1e-6):
        atoms = base.copy()
        atoms.positions[2] = r * u
        outs.append(soap.compute(atoms, gradients=True, strain=True))
    inside, outside = outs
    scale = np.abs(inside.pair_grad).max()
    np.testing.assert_allclose(inside.features, outside.features, rtol=0, atol=1e-10)
    np.testing.assert_allclose(inside.strain_grad, outside.strain_grad, atol=1e-4 * scale)
    # the far H has a (vanishing) block from the O centre inside, none outside
    d_in = dense_position_grad(inside, 3)
    d_out = dense_position_grad(outside, 3)
    assert np.abs(d_in[0, 2]).max() < 1e-4 * scale
    np.testing.assert_allclose(d_in, d_out, atol=1e-4 * scale)
    assert not np.any((outside.pair_center == 0) & (outside.pair_neighbor == 2))


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_max=0), "n_max must be an integer >= 1"),
        (dict(n_max=2.5), "n_max must be an integer"),
        (dict(l_max=-1), "l_max must be an integer >= 0"),
        (dict(r_cut=0.0), "r_cut must be a finite number > 0"),
        (dict(r_cut=-3.0), "r_cut must be a finite number > 0"),
        (dict(atom_sigma=0.0), "atom_sigma must be a finite number > 0"),
        (dict(cutoff_width=6.0), r"cutoff_width must be in \(0, r_cut=5.0\]"),
        (dict(center_weight=-1.0), "center_weight must be a finite number >= 0"),
        (dict(radial_scaling=0.0), "radial_scaling must be a finite number > 0"),
        (dict(radial_scaling="2"), "radial_scaling must be a real number"),
        (dict(radial_scaling=0.1), r"radial_scaling must be in \[0.5, 1000\]"),
        (dict(radial_scaling=1e-300), r"radial_scaling must be in \[0.5, 1000\]"),
        (dict(radial_scaling=2.0, radial_exponent=1.5), r"radial_exponent must be in \[2, 12\]"),
        (dict(radial_scaling=2.0, radial_exponent=1e6), r"radial_exponent must be in \[2, 12\]"),
        (dict(radial_scaling=2.0, radial_exponent=float("inf")), "radial_exponent must be a finite number > 0"),
        (dict(species=["Xx"]), "unknown chemical symbol 'Xx'"),
        (dict(species=["H", 1]), "duplicates"),
        (dict(species=[]), "at least one element"),
    ],
)
def test_bad_parameters_are_named(kwargs, match):
    soap = SOAP(**kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        soap.compute(molecule("H2O"))


def test_unknown_element_is_named():
    soap = SOAP(species=["H", "O"], **SMALL)
    with pytest.raises(ValueError, match=r"N \(7\).*allowed|N \(7\).*\[H \(1\), O \(8\)\]"):
        soap.compute(molecule("NH3"))
    with pytest.raises(ValueError, match=r"structure 1 contains element\(s\) \[C \(6\)\]"):
        soap.create([molecule("H2O"), molecule("CH4")])


# --------------------------------------------------------------- output buffers
def test_output_buffers_reused_only_when_released():
    # MD calls the descriptor every step: the gradient outputs come from a buffer kept on the
    # descriptor, reused once the previous results are released, never while they are held
    kw = dict(species=["Na", "Cl", "O"], **SMALL)
    a, b = rattled_rocksalt(1), triclinic_nacl(2)
    fresh_a = SOAP(**kw).compute(a, gradients=True, strain=True)
    fresh_b = SOAP(**kw).compute(b, gradients=True, strain=True)
    soap = SOAP(**kw)
    out_a = soap.compute(a, gradients=True, strain=True)
    address = out_a.pair_grad.__array_interface__["data"][0]
    out_b = soap.compute(b, gradients=True, strain=True)  # out_a still held
    assert not np.shares_memory(out_a.pair_grad, out_b.pair_grad)
    assert not np.shares_memory(out_a.strain_grad, out_b.strain_grad)
    for out, ref in ((out_a, fresh_a), (out_b, fresh_b)):
        np.testing.assert_array_equal(out.pair_grad, ref.pair_grad)
        np.testing.assert_array_equal(out.strain_grad, ref.strain_grad)
        np.testing.assert_array_equal(out.features, ref.features)
    del out_a, out_b
    again = soap.compute(a, gradients=True, strain=True)
    assert again.pair_grad.__array_interface__["data"][0] == address  # released: reused
    np.testing.assert_array_equal(again.pair_grad, fresh_a.pair_grad)
    np.testing.assert_array_equal(again.strain_grad, fresh_a.strain_grad)


def test_md_steps_with_reused_buffers_match_fresh_descriptor():
    kw = dict(species=["Si"], **SMALL)
    soap = SOAP(**kw)
    cell = bulk("Si", "diamond", 5.43, cubic=True)
    for step in range(3):
        atoms = cell.copy()
        atoms.rattle(0.05, seed=step)
        out = soap.compute(atoms, gradients=True, strain=True)
        ref = SOAP(**kw).compute(atoms, gradients=True, strain=True)
        np.testing.assert_array_equal(out.pair_grad, ref.pair_grad)
        np.testing.assert_array_equal(out.strain_grad, ref.strain_grad)
        assert out.pair_grad.flags.c_contiguous


def test_buffers_are_not_pickled():
    import pickle

    soap = SOAP(species=["Si"], **SMALL)
    out = soap.compute(bulk("Si", "diamond", 5.43), gradients=True)
    twin = pickle.loads(pickle.dumps(soap))
    assert "_buffers" in soap.__dict__ and "_buffers" not in twin.__dict__
    np.testing.assert_array_equal(twin.compute(bulk("Si", "diamond", 5.43), gradients=True).pair_grad,
                                  out.pair_grad)


def test_settings_beyond_the_limits_are_refused_like_the_model_file_refuses_them():
    """A SOAP the model loader would refuse cannot be fitted either (r_cut 31 used to save but not load)."""
    from kernelpot import SOAP
    from kernelpot.descriptors.soap import LIMITS
    from kernelpot.modelfile import _DESCRIPTOR_LIMITS
    assert _DESCRIPTOR_LIMITS is LIMITS
    for name, value in (("r_cut", 31.0), ("n_max", 10 ** 6), ("l_max", 31)):
        with pytest.raises(ValueError, match=f"{name} = .* larger than kernelpot allows"):
            SOAP(**{name: value})._validate_params()
    SOAP(r_cut=30.0, n_max=40, l_max=30)._validate_params()
