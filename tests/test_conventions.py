"""Whole groups of stress labels in another convention (kernelpot.gp.conventions)."""

import copy
import warnings

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import GPa

from conftest import emt_frames
from kernelpot import SparseGP
from kernelpot.gp.posterior import Posterior
from kernelpot.io.labels import DataWarning, relabelled
from kernelpot.gp.conventions import ConventionFinding, check, physics_energy, physics_stress, stress_conventions


def _two_groups():
    """16 strained, rattled EMT copper cells (shear stresses of ~1 GPa), in two config_types."""
    frames = emt_frames(16, seed=11, strain=0.04)
    for i, a in enumerate(frames):
        a.info["config_type"] = "A" if i % 2 == 0 else "B"
    return frames


def _relabel_stress(frames, fn, group="B"):
    return [relabelled(a, stress=fn(a.get_stress(voigt=True).copy())) if a.info["config_type"] == group else a
            for a in frames]


@pytest.fixture(scope="module")
def clean():
    return _two_groups()


@pytest.fixture(scope="module")
def clean_model(clean, small_soap):
    return SparseGP(descriptor=small_soap, n_sparse=60, verbose=False, calibrate=False).fit(clean)


def test_physics_stress_is_the_model_without_its_stress_data(clean_model, clean):
    """The stress from energies and forces alone: equal to the posterior built from statistics that never held a
    stress observation, and close to EMT's own stress (physics, not the labels' echo)."""
    m = clean_model
    phys = physics_stress(m, clean)
    st = copy.deepcopy(m._stats)
    for k, g in enumerate(m.noise_groups_):
        if g.startswith("stress"):
            st.D[k] = 0.0
            st.e[k] = 0.0
    p = m.posterior_
    post = Posterior.from_statistics(m.theta_, st, p.sparse, p.zeta, p.Kmm, p.Lmm, p.offset_species, p.kappa,
                                     p.pair)
    from kernelpot.gp import assembly
    for a, s in zip(clean, phys):
        feat = assembly.describe(m, a, strain=True)
        ref = post.mean(feat, a.cell.volume, forces=False, stress=True)["stress"]
        np.testing.assert_allclose(s, ref, rtol=1e-6, atol=1e-9)
    lab = np.array([a.get_stress(voigt=True) for a in clean])
    err = np.sqrt(np.mean((phys - lab) ** 2)) / GPa
    spread = np.sqrt(np.mean(lab[:, 3:] ** 2)) / GPa
    assert spread > 0.5          # the shear components carry signal
    assert err < 0.25 * spread   # and the stress-free model reproduces them


def test_clean_groups_read_as_written(clean_model, clean, small_soap):
    assert stress_conventions(clean, physics_stress(clean_model, clean)) == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SparseGP(descriptor=small_soap, n_sparse=60, verbose=False, calibrate=False).fit(clean)
    assert not [w for w in caught if "stress was written" in str(w.message)]


@pytest.mark.parametrize("slip, order, factor, words", [
    (lambda s: s[[0, 1, 2, 4, 3, 5]], ("xz", "yz", "xy"), 1.0, "label yz is xz, label xz is yz"),
    (lambda s: s[[0, 1, 2, 5, 3, 4]], ("xy", "yz", "xz"), 1.0, "VASP order (xy yz zx) read as ASE Voigt"),
    (lambda s: -s, ("yz", "xz", "xy"), -1.0, "opposite sign"),
    (lambda s: 10.0 * s, ("yz", "xz", "xy"), 10.0, "kBar read as GPa"),
])
def test_a_group_in_another_convention_is_found_and_named(clean, small_soap, slip, order, factor, words):
    frames = _relabel_stress(clean, slip)
    with pytest.warns(DataWarning, match=r"config_type 'B' \(8 structures with stress\).*stress was written"):
        model = SparseGP(descriptor=small_soap, n_sparse=60, verbose=False, calibrate=False).fit(frames)
    found = stress_conventions(frames, physics_stress(model, frames))
    assert [f.group for f in found] == ["B"]
    f = found[0]
    assert isinstance(f, ConventionFinding)
    assert f.order == order
    assert f.factor == pytest.approx(factor, rel=0.15)
    assert words in f.message and "config_type 'B' (8 structures" in f.message
    assert f.rms_converted < 0.5 * f.rms_as_read
    # converting the labels back gives the physics' convention
    for i in f.frames:
        np.testing.assert_allclose(f.convert(frames[i].get_stress(voigt=True)), clean[i].get_stress(voigt=True),
                                   rtol=0.2 if factor != 1.0 else 1e-12, atol=1e-12)
    # ... and so does applying the finding to the whole set: its group converted, the other one as it was
    back = f.apply(frames)
    for a, b, c in zip(frames, back, clean):
        if a.info["config_type"] == "B":
            assert b is not a and b.info == a.info
            np.testing.assert_allclose(b.get_stress(voigt=True), f.convert(a.get_stress(voigt=True)), rtol=1e-12)
            np.testing.assert_array_equal(b.get_forces(), a.get_forces())
            assert b.get_potential_energy() == a.get_potential_energy()
        else:
            assert b is a


def test_screen_lists_the_group_under_the_table(clean, small_soap):
    from kernelpot import screen
    frames = _relabel_stress(clean, lambda s: s[[0, 1, 2, 4, 3, 5]])
    model = SparseGP(descriptor=small_soap, n_sparse=60, verbose=False, calibrate=False).fit(frames)
    table = screen(model, refit_rounds=0)
    assert [f.group for f in table.findings] == ["B"]
    assert "Whole groups whose labels follow another convention" in str(table)
    assert "config_type 'B'" in str(table)


def test_bad_shape():
    with pytest.raises(ValueError, match=r"physics must have shape \(2, 6\)"):
        stress_conventions(emt_frames(2), np.zeros((3, 6)))


@pytest.mark.parametrize("factor, words", [(1 / 27.211386, "Hartree read as eV"), (23.060548, "kcal/mol read as eV"),
                                           (-1.0, "opposite sign")])
def test_a_group_of_energies_in_another_unit_is_found(clean, small_soap, factor, words):
    """Energies of one config_type in another unit (or sign): the energies the forces imply say so."""
    frames = []
    for a in clean:
        b = a.copy()
        e = a.get_potential_energy() * (factor if a.info["config_type"] == "B" else 1.0)
        b.calc = SinglePointCalculator(b, energy=e, forces=a.get_forces(), stress=a.get_stress(voigt=True))
        frames.append(b)
    with pytest.warns(DataWarning, match=r"config_type 'B' \(8 structures with energy\): energies .*"
                                         r"energies were written"):
        model = SparseGP(descriptor=small_soap, n_sparse=60, verbose=False, calibrate=False).fit(frames)
    found = [f for f in check(model, frames) if f.label == "energy"]
    assert [f.group for f in found] == ["B"]
    f = found[0]
    assert words in f.message
    assert f.factor == pytest.approx(factor, rel=0.15)
    assert f.rms_converted < 0.5 * f.rms_as_read
    assert list(f.frames) == [i for i, a in enumerate(frames) if a.info["config_type"] == "B"]
    # converting: group B's energies back to the unit of their forces; a frame of B without forces was not
    # judged (the energies were compared with what forces imply) and stays as it is
    bare = frames[1].copy()
    bare.calc = SinglePointCalculator(bare, energy=frames[1].get_potential_energy())
    bare.info = dict(frames[1].info)
    # a one-atom periodic cell of B was judged like the rest (it is no isolated atom) and is converted
    from ase.build import bulk
    one = bulk("Cu", "fcc", a=3.6)
    one.calc = SinglePointCalculator(one, energy=-3.7 * factor, forces=np.zeros((1, 3)))
    one.info["config_type"] = "B"
    back = f.apply(frames + [bare, one])
    assert back[-1].get_potential_energy() == pytest.approx(-3.7 * factor / f.factor)
    back = back[:-1]
    assert back[-1] is bare
    np.testing.assert_allclose([b.get_potential_energy() for b in back[:-1]],
                               [c.get_potential_energy() * (factor / f.factor if c.info["config_type"] == "B" else 1.0)
                                for c in clean], rtol=1e-12)


@pytest.mark.parametrize("group, noise", [("B", 0.0), (None, 0.0), ("B", 0.002)])
def test_energies_written_per_atom_are_found_and_converted_back(clean, small_soap, group, noise):
    """Energies per atom where the total belongs, in one config_type or in all (a fit on them passed without a
    word): named as such, and ``apply`` multiplies them back by each structure's atom count.  With DFT-like
    noise (2 meV/atom) on 32-atom cells, 1/32 is within the window of Hartree's 1/27: the residuals must
    still name it per atom (compared in the physics' units they named Hartree)."""
    rng = np.random.default_rng(5)
    clean = [relabelled(a, energy=a.get_potential_energy() + noise * len(a) * rng.normal()) for a in clean]
    frames = [relabelled(a, energy=a.get_potential_energy() / len(a)) if group in (None, a.info["config_type"])
              else a for a in clean]
    where = r"config_type 'B' \(8 structures" if group else r"all structures, in every config_type \(16"
    with pytest.warns(DataWarning, match=where + r".*energies per atom where the total energy belongs"):
        model = SparseGP(descriptor=small_soap, n_sparse=60, verbose=False, calibrate=False).fit(frames)
    found = [f for f in check(model, frames) if f.label == "energy"]
    assert len(found) == 1 and found[0].per_atom and found[0].rms_converted < 0.5 * found[0].rms_as_read
    back = found[0].apply(frames)
    np.testing.assert_allclose([b.get_potential_energy() for b in back], [c.get_potential_energy() for c in clean],
                               rtol=1e-12)


def test_energies_from_forces_follow_the_labels_up_to_a_constant(clean_model, clean):
    """physics_energy: the energies the forces imply; per atom, their spread around the one constant matches
    EMT's energies (a pure Cu set: one species, one constant)."""
    phys = physics_energy(clean_model, clean) / np.array([len(a) for a in clean])
    lab = np.array([a.get_potential_energy() / len(a) for a in clean])
    d = (phys - phys.mean()) - (lab - lab.mean())
    assert np.std(lab) > 0.01                    # 10 meV/atom of spread to reproduce
    assert np.sqrt(np.mean(d ** 2)) < 0.2 * np.std(lab)


def test_clean_data_have_no_energy_finding(clean_model, clean):
    assert [f for f in check(clean_model, clean) if f.label == "energy"] == []


def _fixed_volume(n, seed, group, rattle=0.15):
    """Rattled copper at one volume (strain 0.2 %): shear stress from the rattle alone, a volume derivative the
    energies cannot pin (the physics' diagonal is off by ~1-10 GPa, its shear right)."""
    from ase.build import bulk
    from conftest import label
    from ase.calculators.emt import EMT
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        eps = rng.uniform(-0.002, 0.002, (3, 3))
        a.set_cell(a.cell @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
        a.positions += rng.normal(scale=rattle, size=a.positions.shape)
        a.info["config_type"] = group
        out.append(label(a, EMT()))
    return out


def test_a_shear_reordering_is_judged_on_the_shear(small_soap):
    """A fixed-volume MD group with yz and xz exchanged: the diagonal's model error must not hide it (found by a
    tester: all six components together improved by 1.04x only, the shear by 10^4)."""
    frames = _fixed_volume(15, 1, "A") + _fixed_volume(15, 2, "B")
    frames = _relabel_stress(frames, lambda s: s[[0, 1, 2, 4, 3, 5]])
    model = SparseGP(descriptor=small_soap, n_sparse=60, verbose=False, calibrate=False).fit(frames)
    found = check(model, frames)
    assert [(f.group, f.label, f.order) for f in found] == [("B", "stress", ("xz", "yz", "xy"))]


def test_a_rotated_frame_is_not_called_a_reordering(clean, small_soap):
    """Stress written in a frame rotated 90 degrees about z: a reordering fits its shear better, but the converted
    group still sits far from its physics while the other group matches it, so nothing is named."""
    R = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress
    frames = _relabel_stress(clean, lambda s: full_3x3_to_voigt_6_stress(R @ voigt_6_to_full_3x3_stress(s) @ R.T))
    model = SparseGP(descriptor=small_soap, n_sparse=60, verbose=False, calibrate=False).fit(frames)
    assert [f for f in check(model, frames) if f.label == "stress"] == []


def test_one_slip_in_every_group_is_one_finding(clean, small_soap):
    frames = _relabel_stress(_relabel_stress(clean, lambda s: 10.0 * s, "A"), lambda s: 10.0 * s, "B")
    model = SparseGP(descriptor=small_soap, n_sparse=60, verbose=False, calibrate=False).fit(frames)
    found = [f for f in check(model, frames) if f.label == "stress"]
    assert len(found) == 1 and found[0].group == "(all structures)"
    assert "all structures, in every config_type (16 with stress)" in found[0].message
    assert "kBar read as GPa" in found[0].convention and list(found[0].frames) == list(range(16))
    assert set(found[0].groups) == {"A", "B"}
    # applied to a set with a config_type the check never judged (an isolated atom's reference frame, a
    # cell of another group): those stay as they are, the judged groups are converted
    from ase import Atoms
    iso = Atoms("Cu", positions=[[5.0, 5.0, 5.0]], cell=[10.0] * 3, pbc=True)
    iso.calc = SinglePointCalculator(iso, energy=-0.5, stress=np.full(6, 0.01))
    iso.info["config_type"] = "IsolatedAtom"
    other = relabelled(frames[0])
    other.info["config_type"] = "C"
    back = found[0].apply(frames + [iso, other])
    assert back[-2] is iso and back[-1] is other
    np.testing.assert_allclose([b.get_stress(voigt=True) for b in back[:16]],
                               [a.get_stress(voigt=True) / found[0].factor for a in frames], rtol=1e-12)


def test_stress_is_checked_when_not_fitted(clean, small_soap):
    """fit_stress=False: the model's stress is physics already, and the labels are still worth checking."""
    frames = _relabel_stress(clean, lambda s: -s)
    model = SparseGP(descriptor=small_soap, n_sparse=60, verbose=False, calibrate=False, fit_stress=False).fit(frames)
    assert [(f.group, f.label) for f in check(model, frames)] == [("B", "stress")]


def test_groups_of_the_wrong_length():
    frames = emt_frames(3)
    with pytest.raises(ValueError, match=r"groups must have one entry per frame \(3\), got 2"):
        stress_conventions(frames, np.zeros((3, 6)), groups=["a", "b"])


def _cells(n, rattle, strain, seed, group, alloy_conc=None):
    """Rattled, strained 2x2x2 fcc Cu cells (Au on a fraction ``alloy_conc[k]`` of the sites), unlabelled."""
    from ase.build import bulk
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        if alloy_conc is not None:
            a.numbers[rng.permutation(len(a))[:int(round(alloy_conc[k % len(alloy_conc)] * len(a)))]] = 79
        eps = rng.uniform(-strain, strain, (3, 3))
        a.set_cell(a.cell @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
        a.positions += rng.normal(scale=rattle, size=a.positions.shape)
        a.info["config_type"] = group
        out.append(a)
    return out


def test_relaxed_cells_at_one_volume_are_not_called_a_sign_flip(small_soap):
    """Cells near one volume (rattle 0.003 Å, strain 0.1 %) carry one stress, ~-2 GPa from EMT's own lattice
    constant; energies at one volume leave dE/dV open, and a physics wrong about it by a constant was named
    "the opposite sign" (a tester's case, reproduced here: a relaxed, a noisy and an alloy group).  The
    differences between the structures show no such factor."""
    from conftest import label
    from ase.calculators.emt import EMT
    rng = np.random.default_rng(9)
    assert list(rng.choice(["md_cold", "md_hot", "relaxed", "eos", "vac", "shift", "alloy", "small", "noisy",
                            "eos_prim"], size=rng.integers(2, 5), replace=False)) == ["relaxed", "noisy", "alloy"]
    frames = [label(a, EMT()) for a in _cells(int(rng.integers(4, 8)), 0.003, 0.001, 900, "relaxed")]
    for a in _cells(int(rng.integers(5, 12)), 0.05, 0.03, 901, "noisy"):
        b = label(a, EMT())
        e = b.get_potential_energy() + rng.uniform(0.001, 0.005) * len(a) * rng.standard_normal()
        b.calc = SinglePointCalculator(b, energy=e, forces=b.get_forces(), stress=b.get_stress(voigt=True))
        frames.append(b)
    frames += [label(a, EMT()) for a in _cells(int(rng.integers(5, 12)), 0.05, 0.03, 902, "alloy",
                                                 rng.uniform(0.05, 0.5, 12))]
    model = SparseGP(descriptor=small_soap, n_sparse=60, verbose=False, calibrate=False).fit(frames)
    assert [f.message for f in check(model, frames) if f.group == "relaxed"] == []


def test_cli_fit_prints_the_finding(clean, tmp_path, capsys):
    """``kernelpot fit`` drops only its repeat of the validation summary; a group written with the opposite stress
    sign is named on stderr as the Python fit names it (the CLI once filtered every ``fit: `` warning away)."""
    from kernelpot import write
    from kernelpot.cli import main
    path = tmp_path / "flip.xyz"
    write(path, _relabel_stress(clean, lambda s: -s))
    rc = main(["fit", str(path), "--n-sparse", "60", "--no-calibrate", "--quiet", "-o", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err
    assert rc == 0
    found = [line for line in err.splitlines() if "opposite sign" in line]
    assert len(found) == 1 and found[0].startswith("kernelpot: warning: fit: config_type 'B'"), err
