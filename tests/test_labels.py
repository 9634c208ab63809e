"""Tests for kernelpot.io.labels: one definition of a label for read, validate, fit and predict."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

import kernelpot
from kernelpot.io.labels import DataWarning, frame_labels, frame_noise, looks_like_label
from kernelpot.io.validation import validate


def _cu(energy=-28.0, **res):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.positions += np.random.default_rng(0).normal(0, 0.02, atoms.positions.shape)
    atoms.calc = SinglePointCalculator(atoms, **({"energy": energy} | res) if energy is not None else res)
    return atoms


def test_free_energy_only_frame_is_one_label_everywhere():
    atoms = _cu(energy=None, free_energy=-27.5, forces=np.zeros((8, 3)))
    assert frame_labels(atoms)["energy"] == -27.5
    report = validate([atoms], require=("energy", "forces"))
    assert report.ok and report.warnings == []


def test_free_energy_is_fitted_when_both_differ_and_validate_says_so():
    frames = [_cu(), _cu(energy=-28.0, free_energy=-28.3), _cu(energy=-28.0, free_energy=-28.0 + 1e-9)]
    assert frame_labels(frames[1])["energy"] == -28.3          # the energy the forces belong to
    assert frame_labels(frames[2])["energy"] == pytest.approx(-28.0)
    report = validate(frames)
    assert report.ok
    assert len(report.warnings) == 1                          # one warning for the data set
    assert report.warnings[0].startswith("energy: energy and free_energy differ in 1 of 3 frames (frames [1])")
    assert "fits free_energy" in report.warnings[0]


@pytest.mark.parametrize("stress", [
    np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]]) * 1e-3,
    (np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]]) * 1e-3).ravel(),
    np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=np.float32) * np.float32(1e-3),
])
def test_3x3_and_float32_stress_accepted_by_validate_and_labels(stress):
    atoms = _cu(forces=np.zeros((8, 3), dtype=np.float32), stress=stress)
    lab = frame_labels(atoms)
    np.testing.assert_allclose(lab["stress"], np.array([1, 2, 3, 4, 5, 6]) * 1e-3, rtol=1e-6)
    assert lab["stress"].dtype == np.float64 and lab["forces"].dtype == np.float64
    assert validate([atoms], require=("energy", "forces", "stress")).ok


def test_bad_label_messages_match_between_validate_and_frame_labels():
    atoms = _cu(forces=np.zeros((8, 2)))
    atoms.info["config_type"] = "Vacancy"
    msg = "frame 4 ('Vacancy'): forces have shape (8, 2), expected (8, 3)"
    with pytest.raises(ValueError) as exc:
        frame_labels(atoms, 4)
    assert str(exc.value) == msg
    report = validate([_cu()] * 4 + [atoms], raise_on_error=False)
    assert report.errors == [msg]
    atoms.calc.results["energy"] = "abc"
    with pytest.raises(ValueError, match="energy is 'abc', expected a number"):
        frame_labels(atoms)


def test_frame_noise_reads_gap_keys_with_units():
    atoms = _cu()
    atoms.info.update(energy_sigma=0.02, force_sigma=0.3, virial_sigma=0.5)
    noise = frame_noise(atoms)
    assert noise["energy_sigma"] == 0.02
    np.testing.assert_array_equal(noise["forces_sigma"], np.full(8, 0.3))
    assert noise["stress_sigma"] == pytest.approx(0.5 / atoms.get_volume())   # virial (eV) -> eV/Å^3
    atoms.arrays["force_atom_sigma"] = np.linspace(0.1, 0.8, 8)
    np.testing.assert_array_equal(frame_noise(atoms)["forces_sigma"], np.linspace(0.1, 0.8, 8))
    assert "force_mask" not in noise


def test_force_mask_and_fixed_atoms():
    atoms = _cu()
    mask = np.zeros(8, dtype=bool)
    mask[[1, 5]] = True                        # GAP: nonzero = not fitted
    atoms.arrays["force_mask"] = mask
    atoms.set_constraint(FixAtoms(indices=[7]))
    fitted = frame_noise(atoms)["force_mask"]
    assert fitted.tolist() == [True, False, True, True, True, False, True, False]


@pytest.mark.parametrize("key,value,match", [
    ("energy_sigma", -1.0, "energy_sigma"),
    ("force_sigma", np.nan, "force_sigma"),
    ("stress_sigma", 0.0, "stress_sigma"),
    ("energy_sigma", "abc", "energy_sigma"),                # not a number (a GAP file's typo)
    ("virial_sigma", [0.1, "x"], "virial_sigma"),
    ("force_sigma", True, "force_sigma"),                      # a flag, not a sigma
])
def test_bad_sigma_named_by_frame_and_field(key, value, match):
    atoms = _cu()
    atoms.info[key] = value
    with pytest.raises(ValueError, match=rf"frame 3: {match}"):
        frame_noise(atoms, 3)
    report = validate([_cu(), _cu(), _cu(), atoms], raise_on_error=False)
    assert len(report.errors) == 1 and report.errors[0].startswith(f"frame 3: {match}")


def test_looks_like_label():
    for name in ("REF_energy", "DFT_forces", "dft_virial", "REF_stress", "energy_dft", "forces"):
        assert looks_like_label(name), name
    # kernelpot's own prediction columns (SparseGP.predict written by kernelpot.write) are not labels
    for name in ("energy_sigma", "force_atom_sigma", "force_mask", "config_type", "energy_std", "numbers",
                 "energy_std_epistemic", "forces_std", "local_energy", "energy_pred", "energies"):
        assert not looks_like_label(name), name


# ---------------------------------------------------------------- read: keys and conventions

_XYZ = """2
Lattice="4 0 0 0 4 0 0 0 4" Properties=species:S:1:pos:R:3:REF_forces:R:3 energy=-1.5 REF_energy=-2.0 REF_stress="0.01 0 0 0 0.02 0 0 0 0.03" pbc="T T T"
Cu 0 0 0 0.1 0.2 0.3
Cu 2 0 0 -0.1 -0.2 -0.3
"""


def _write(tmp_path, text=_XYZ, name="ref.xyz"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_ref_columns_are_not_dropped_and_unused_keys_are_named(tmp_path):
    """``energy=`` plus REF_forces/REF_stress: forces and stress are read, and the user is told."""
    path = _write(tmp_path)
    with pytest.warns(DataWarning) as rec:
        (atoms,) = kernelpot.read(path)
    assert len(rec) == 1
    text = str(rec[0].message)
    assert "'REF_energy' looks like a label but is not used" in text
    assert "different conventions" in text
    lab = frame_labels(atoms)
    assert lab["energy"] == -1.5
    np.testing.assert_allclose(lab["forces"], [[0.1, 0.2, 0.3], [-0.1, -0.2, -0.3]])
    np.testing.assert_allclose(lab["stress"], [0.01, 0.02, 0.03, 0, 0, 0])


def test_label_keys_are_configurable(tmp_path):
    path = _write(tmp_path)
    with pytest.warns(DataWarning) as rec:
        (atoms,) = kernelpot.read(path, ":", None, energy_key="REF_energy", forces_key="REF_forces",
                                  stress_key="REF_stress")
    assert "'energy' looks like a label but is not used" in str(rec[0].message)
    lab = frame_labels(atoms)
    assert lab["energy"] == -2.0
    assert atoms.info["energy_unused"] == -1.5                # nothing lost
    # a key given explicitly must be there
    with pytest.raises(ValueError, match=r"ref.xyz: frame 0: forces_key='DFT_forces' is not in this frame"):
        kernelpot.read(path, forces_key="DFT_forces")


def test_consistent_ref_convention_reads_without_warning(tmp_path):
    text = _XYZ.replace("energy=-1.5 ", "")
    path = _write(tmp_path, text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (atoms,) = kernelpot.read(path)
    assert frame_labels(atoms)["energy"] == -2.0


def test_ref_virial_is_converted_to_stress(tmp_path):
    text = _XYZ.replace('REF_stress="0.01 0 0 0 0.02 0 0 0 0.03"', 'REF_virial="-0.64 0 0 0 -1.28 0 0 0 -1.92"')
    path = _write(tmp_path, text.replace("energy=-1.5 ", ""))
    (atoms,) = kernelpot.read(path)
    np.testing.assert_allclose(frame_labels(atoms)["stress"], [0.01, 0.02, 0.03, 0, 0, 0])  # -virial / 64 Å^3


def test_free_energy_key_in_extxyz(tmp_path):
    text = _XYZ.replace("energy=-1.5 REF_energy=-2.0", "energy=-1.5 free_energy=-1.7")
    path = _write(tmp_path, text)
    with pytest.warns(DataWarning):                             # REF_* with energy=
        (atoms,) = kernelpot.read(path)
    assert frame_labels(atoms)["energy"] == -1.7
    assert any("differ" in w for w in validate([atoms]).warnings)


def test_empty_structure_is_an_error_in_validate():
    atoms = Atoms()
    atoms.calc = SinglePointCalculator(atoms, energy=0.0)
    report = validate([_cu(), atoms], raise_on_error=False)
    assert report.errors == ["frame 1: the structure has no atoms (an empty ase.Atoms); remove it: it has no "
                             "energy to fit or predict"]


# --------------------------------------------------------------------------- overlapping atoms


def test_overlapping_atoms_are_a_structure_error_naming_pair_and_distance():
    from kernelpot.io.labels import OVERLAP_DISTANCE, check_structure, structure_errors
    assert OVERLAP_DISTANCE == 0.1
    # a duplicated atom in a molecule
    mol = Atoms("H2O", positions=[[0, 0, 0], [0.76, 0.59, 0], [0.03, 0.04, 0]])
    errs = structure_errors(mol, "frame 3")
    assert len(errs) == 1
    assert errs[0].startswith("frame 3: overlapping atoms: 1 pair(s) closer than 0.1 Å")
    assert "atoms 0 (H) and 2 (O) at 0.0500 Å" in errs[0]
    with pytest.raises(ValueError, match=r"frame 7: overlapping atoms.*atoms 0 \(H\) and 2 \(O\) at 0\.0500"):
        check_structure(mol, 7)
    # another atom's periodic image, across the boundary only
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.positions[1] = [3.58, 0.01, 0.0]                  # 0.0224 Å from atom 0's image at (3.6, 0, 0)
    errs = structure_errors(cu, "structure")
    assert len(errs) == 1 and "atoms 0 (Cu) and 1 (Cu) (periodic image [" in errs[0]
    assert "at 0.0224 Å" in errs[0]
    cu.pbc = False
    assert structure_errors(cu, "structure") == []
    # an atom and its own image: a cell vector shorter than the threshold
    thin = Atoms("Cu", positions=[[0, 0, 0]], cell=[0.03, 5, 5], pbc=True)
    errs = structure_errors(thin, "structure")
    assert len(errs) == 1 and "atom 0 (Cu) and its own periodic image [1, 0, 0] at 0.0300 Å" in errs[0]
    assert "3 pair(s)" in errs[0] and "[3, 0, 0] at 0.0900 Å" in errs[0]   # shifts 1, 2, 3 along a


def test_short_but_real_contacts_are_not_overlaps():
    from kernelpot.io.labels import structure_errors
    for d in (0.11, 0.3, 0.74):                                      # H-H dimer-scan distances
        assert structure_errors(Atoms("H2", positions=[[0, 0, 0], [0, 0, d]]), "s") == []
    si = bulk("Si", "diamond", a=5.43) * (2, 2, 2)
    si.rattle(0.05, seed=0)
    assert structure_errors(si, "s") == []
    assert structure_errors(Atoms("Cu", cell=[0.4, 5, 5], pbc=True), "s") == []   # own image 0.4 Å away


def test_absurdly_thin_cell_is_reported_not_searched():
    from kernelpot.io.labels import structure_errors
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 1]], cell=[1e-5, 3, 3], pbc=True)
    errs = structure_errors(atoms, "frame 0")
    assert len(errs) == 1 and errs[0].startswith("frame 0: cell: lattice planes only 1e-05 Å apart")


def test_validate_reports_an_overlap_once_whatever_min_distance():
    """validate finds overlaps in its own distance search, with fit's message, listed once."""
    from kernelpot.io.labels import check_structure
    atoms = _cu()
    atoms.positions[3] = atoms.positions[5] + [0.02, 0.0, 0.0]
    atoms.calc = SinglePointCalculator(atoms, energy=-28.0)
    with pytest.raises(ValueError) as fit_msg:
        check_structure(atoms, 1)
    for min_distance in (None, 0.0, 0.05, 1.0):
        report = validate([_cu(), atoms], min_distance=min_distance, raise_on_error=False)
        overlaps = [m for m in report.errors if "overlapping atoms" in m]
        assert overlaps == [str(fit_msg.value)], min_distance
        assert "atoms 3 (Cu) and 5 (Cu) at 0.0200 Å" in overlaps[0]
        assert not any("0.0200" in m for m in report.errors if m not in overlaps)   # not again under distances


def test_predict_refuses_overlapping_atoms(cuau_model, cuau_frames):
    bad = cuau_frames[0].copy()
    bad.positions[1] = bad.positions[0] + [0.0, 0.0, 0.01]
    with pytest.raises(ValueError, match=r"overlapping atoms.*atoms 0 \(\w+\) and 1 \(\w+\) at 0\.0100 Å"):
        cuau_model.predict([bad])


@pytest.mark.parametrize("name", ["acac/train_300K.xyz", "acac/test_H_transfer.xyz", "mlearn/Si/training.json",
                                  "mlearn/Li/training.json"])
def test_shipped_data_has_no_overlaps(name):
    from conftest import SHARED, shared_missing
    from kernelpot.io.labels import frame_name, structure_errors
    if shared_missing(name):
        pytest.skip(shared_missing(name))
    frames = kernelpot.read(SHARED / name, index=":40")
    assert [e for k, a in enumerate(frames) for e in structure_errors(a, frame_name(k, a))] == []


def test_relabelled_replaces_only_what_it_is_given():
    from kernelpot.io.labels import relabelled
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    f = np.arange(12.0).reshape(4, 3)
    s = np.array([1.0, 2, 3, 4, 5, 6]) * 1e-3
    a.calc = SinglePointCalculator(a, energy=-14.0, free_energy=-14.2, forces=f, stress=s)
    a.info["config_type"] = "bulk"
    b = relabelled(a, stress=-s)
    # the fitted energy is still the free energy; forces kept; stress replaced; the original untouched
    assert frame_labels(b)["energy"] == -14.2 and b.info == {"config_type": "bulk"} and b.info is not a.info
    np.testing.assert_array_equal(frame_labels(b)["forces"], f)
    np.testing.assert_array_equal(frame_labels(b)["stress"], -s)
    np.testing.assert_array_equal(frame_labels(a)["stress"], s)
    # a new energy is the energy the fit uses: the free energy it replaces does not come back
    c = relabelled(a, energy=-13.0)
    assert frame_labels(c)["energy"] == -13.0 and "free_energy" not in c.calc.results
    with pytest.raises(ValueError, match="unknown label"):
        relabelled(a, virial=np.zeros(6))
