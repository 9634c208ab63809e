"""Tests for kernelpot.validate: every failure kind is reported with frame index and field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from kernelpot.io import read
from kernelpot.io.validation import ValidationReport, validate

REPO = Path(__file__).resolve().parents[1]
from conftest import SHARED, needs_shared  # $KERNELPOT_DATA, default ../shared/data


def _frame(config_type="bulk", energy=-3.5, forces=None, stress=None, description=None,
           rattle_seed=0):
    """A valid labelled 8-atom periodic Cu cell; keyword arguments override its labels."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.positions += np.random.default_rng(rattle_seed).normal(0, 0.02, (len(atoms), 3))
    forces = np.full((len(atoms), 3), 0.1) if forces is None else forces
    stress = np.full(6, 0.001) if stress is None else stress
    energy = energy * len(atoms)
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
    atoms.info["config_type"] = config_type
    if description is not None:
        atoms.info["description"] = description
    return atoms


def _molecule(energy=-30.0):
    atoms = molecule("H2O")
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((3, 3)))
    return atoms


def _single_error(frames, **kwargs):
    report = validate(frames, raise_on_error=False, **kwargs)
    assert len(report.errors) == 1, report.errors
    return report.errors[0]


def test_valid_frames_pass():
    frames = [_frame(), _molecule(), _frame(rattle_seed=1)]
    report = validate(frames, require=("energy", "forces", "stress"))
    assert isinstance(report, ValidationReport)
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.n_frames == 3
    assert "3 frames: 0 error(s), 0 warning(s)" in str(report)


def test_wrong_force_shape_names_frame_group_and_field():
    frames = [_frame(), _frame("Vacancy", forces=np.zeros((8, 2)))]
    assert _single_error(frames) == "frame 1 ('Vacancy'): forces have shape (8, 2), expected (8, 3)"


@pytest.mark.parametrize("field,make", [
    ("positions", lambda a: a.positions.__setitem__((2, 1), np.nan)),
    ("energy", lambda a: a.calc.results.__setitem__("energy", np.nan)),
    ("forces", lambda a: a.calc.results["forces"].__setitem__((5, 0), np.inf)),
    ("stress", lambda a: a.calc.results["stress"].__setitem__(3, np.nan)),
])
def test_non_finite_values(field, make):
    atoms = _frame("AIMD", description="Snapshot 7")
    make(atoms)
    frames = [_frame(), _frame(), atoms]
    msg = _single_error(frames)
    assert msg.startswith("frame 2 ('AIMD', 'Snapshot 7'): " + field)
    assert "not finite" in msg
    if field == "positions":
        assert "atoms [2]" in msg
    if field == "forces":
        assert "atoms [5]" in msg
    if field == "stress":
        assert "'yz'" in msg


def test_close_atoms_non_periodic_names_pair_and_distance():
    """Covalent-radius thresholds: H-H (r = 0.31 Å) errors below 0.217 Å, warns below 0.372 Å."""
    atoms = Atoms("H3", positions=[[0, 0, 0], [3.0, 0, 0], [3.2, 0, 0]])
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0)
    msg = _single_error([_molecule(), atoms])
    assert msg.startswith("frame 1: distances: 1 pair(s) closer than 0.35 x the sum of covalent radii")
    assert "atoms 1 (H) and 2 (H) at 0.2000 Å" in msg
    # a fixed min_distance is an error threshold for every pair
    msg = _single_error([atoms], min_distance=0.25)
    assert msg.startswith("frame 0: distances: 1 pair(s) closer than min_distance=0.25 Å")
    assert validate([atoms], min_distance=0.15).ok


def test_close_atoms_use_minimum_image():
    """Atoms 0.2 Å apart only through the periodic boundary; fine when not periodic."""
    atoms = Atoms("Cu2", positions=[[0.1, 1, 1], [9.9, 1, 1]], cell=[10, 10, 10], pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0)
    msg = _single_error([atoms])
    assert msg == ("frame 0: distances: 1 pair(s) closer than 0.35 x the sum of covalent radii: "
                   "atoms 0 (Cu) and 1 (Cu) (periodic image) at 0.2000 Å")
    atoms.pbc = False
    atoms.calc.atoms.pbc = False
    assert validate([atoms]).ok


def test_atom_too_close_to_its_own_image():
    atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=[0.4, 5, 5], pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0)
    msg = _single_error([atoms])
    assert "atoms 0 (Cu) and 0 (Cu) (periodic image) at 0.4000 Å" in msg


def test_periodic_without_cell():
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [2, 0, 0]], pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((2, 3)))
    msg = _single_error([_frame(), atoms])
    assert msg.startswith("frame 1: cell: pbc=[True, True, True]")
    assert "volume 0 Å^3" in msg
    # A slab periodic in x, y only needs only those two vectors.
    slab = Atoms("Cu2", positions=[[0, 0, 0], [2, 0, 0]], cell=[[4, 0, 0], [0, 4, 0], [0, 0, 0]],
                 pbc=[True, True, False])
    slab.calc = SinglePointCalculator(slab, energy=-1.0)
    assert validate([slab]).ok


def test_missing_required_labels():
    bare = bulk("Cu", "fcc", a=3.6, cubic=True)              # no calculator at all
    energy_only = _molecule()
    energy_only.calc.results.pop("forces")
    frames = [bare, energy_only, _molecule()]
    report = validate(frames, require=("energy", "forces", "stress"), raise_on_error=False)
    assert report.errors == [
        "frame 0: energy is missing (required; no value in atoms.calc.results — read the file "
        "with kernelpot.io.read to attach labels)",
        "frame 0: forces is missing (required; no value in atoms.calc.results — read the file "
        "with kernelpot.io.read to attach labels)",
        "frame 0: stress is missing (required; no value in atoms.calc.results — read the file "
        "with kernelpot.io.read to attach labels)",
        "frame 1: forces is missing (required; no value in atoms.calc.results — read the file "
        "with kernelpot.io.read to attach labels)",
    ]   # no stress demanded of the non-periodic molecules
    assert validate([bare], require=()).ok


def test_stale_labels():
    atoms = _frame()
    atoms.positions[0] += 0.3
    msg = _single_error([atoms])
    assert msg.startswith("frame 0 ('bulk'): calculator: labels belong to a different structure")
    assert "positions" in msg


def test_all_problems_are_collected_and_raised_together():
    frames = [
        _frame(),                                              # 0: fine
        _frame("Vacancy", forces=np.zeros((8, 2))),            # 1: force shape
        _frame(energy=np.nan),                                 # 2: energy
        bulk("Cu"),                                            # 3: no energy
        _frame(stress=np.zeros(4)),                            # 4: stress shape
        _frame(forces=np.full((8, 3), np.nan)),                # 5: forces NaN
    ]
    report = validate(frames, raise_on_error=False)
    assert not report.ok
    assert [m.split(":")[0] for m in report.errors] == [
        "frame 1 ('Vacancy')", "frame 2 ('bulk')", "frame 3", "frame 4 ('bulk')",
        "frame 5 ('bulk')"]
    assert "stress has shape (4,), expected (6,)" in report.errors[3]
    with pytest.raises(ValueError) as excinfo:
        validate(frames)
    for msg in report.errors:
        assert msg in str(excinfo.value)
    assert len(frames) == 6                                   # nothing dropped


def test_warnings_for_suspicious_units():
    big_force = np.zeros((8, 3))
    big_force[4] = [120.0, 0.0, 0.0]
    frames = [
        _frame(forces=big_force),                              # 0: |F| > 100 eV/Å
        _frame(stress=np.full(6, 150.0 * units.GPa)),          # 1: |stress| > 100 GPa
        _frame(energy=-2.0e4),                                 # 2: |E/atom| > 1e4 eV
        _frame(energy=+0.3),                                   # 3: E/atom > 0
        _frame(energy=+0.1),                                   # 4: E/atom > 0
    ]
    report = validate(frames)        # warnings never raise
    assert report.ok
    w = report.warnings
    assert len(w) == 5
    # the five frames are one structure with five label sets: also reported as conflicting duplicates
    assert w[4].startswith("duplicates: 4 pair(s) of identical structures with different labels")
    assert w[0].startswith("frame 0 ('bulk'): forces: |F| = 120 eV/Å on atom 4")
    assert w[1].startswith("frame 1 ('bulk'): stress: max |component| = 150 GPa")
    assert w[2].startswith("frame 2 ('bulk'): energy per atom is -20000 eV")
    assert w[3].startswith("energy: energy per atom > 0 eV in 2 of 5 frames (frames 3, 4)")
    assert "warning: frame 0" in str(report)


def test_stress_on_non_periodic_frame_is_flagged():
    atoms = _molecule()
    atoms.calc.results["stress"] = np.zeros(6)
    report = validate([atoms])
    assert report.ok and len(report.warnings) == 1
    assert report.warnings[0].startswith("frame 0: stress is given but the frame is not periodic")


def test_frames_are_not_modified():
    frames = [_frame(), _frame(forces=np.zeros((8, 2)))]
    before = [(a.positions.copy(), dict(a.calc.results)) for a in frames]
    validate(frames, raise_on_error=False)
    for a, (pos, res) in zip(frames, before):
        np.testing.assert_array_equal(a.positions, pos)
        assert a.calc.results.keys() == res.keys()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown label"):
        validate([_frame()], require=("energies",))
    with pytest.raises(ValueError, match="min_distance"):
        validate([_frame()], min_distance=-1.0)
    report = validate([_frame(), "not atoms"], raise_on_error=False)
    assert report.errors == ["frame 1: expected ase.Atoms, got str"]


def test_single_atoms_object_is_accepted():
    assert validate(_frame()).n_frames == 1


@needs_shared()
@pytest.mark.parametrize("relpath,require", [
    ("mlearn/Si/training.json", ("energy", "forces", "stress")),
    ("mlearn/Li/test.json", ("energy", "forces", "stress")),
    ("acac/train_300K.xyz", ("energy", "forces")),
    ("acac/isolated_atoms.xyz", ("energy",)),
    ("acac/test_dihedral.xyz", ("energy",)),
])
def test_real_data_passes(relpath, require):
    report = validate(read(SHARED / relpath), require=require)
    assert report.ok and report.warnings == []


@needs_shared("mlearn", "Si", "test.json")
def test_real_data_problems_are_found():
    """Corrupt a real mlearn frame in two ways; both are reported, with group and description."""
    frames = read(SHARED / "mlearn" / "Si" / "test.json")
    k = next(i for i, a in enumerate(frames) if a.info["config_type"] == "Vacancy")
    bad = frames[k]
    n = len(bad)
    forces = bad.get_forces()[:, :2]
    bad.calc = SinglePointCalculator(bad, energy=bad.get_potential_energy(), forces=forces,
                                     stress=bad.get_stress() / units.GPa * 1000)
    report = validate(frames, require=("energy", "forces", "stress"), raise_on_error=False)
    name = f"frame {k} ('Vacancy', {bad.info['description']!r})"
    assert report.errors == [f"{name}: forces have shape ({n}, 2), expected ({n}, 3)"]
    assert len(report.warnings) == 1 and report.warnings[0].startswith(f"{name}: stress")


def _dimer(symbol, d):
    atoms = Atoms(symbol * 2, positions=[[0, 0, 0], [0, 0, d]])
    atoms.calc = SinglePointCalculator(atoms, energy=1.0)
    return atoms


def test_hh_dimer_scan_is_not_an_error():
    """A dimer curve at 0.35-0.50 Å is legitimate data: never an error, a warning only below 0.6 x 0.62 Å."""
    frames = [_dimer("H", d) for d in np.linspace(0.35, 0.50, 7)]
    report = validate(frames)
    assert report.ok
    flagged = [w for w in report.warnings if "distances" in w]
    assert [w.split(":")[0] for w in flagged] == ["frame 0"]           # 0.35 Å < 0.372 Å only
    assert "0.6 x the sum of covalent radii" in flagged[0] and "at 0.3500 Å" in flagged[0]


@pytest.mark.parametrize("symbol", ["H", "Si", "Cu"])
def test_distance_exactly_at_the_threshold_is_not_flagged(symbol):
    from ase.data import atomic_numbers, covalent_radii
    from kernelpot.io.validation import DISTANCE_ERROR_FACTOR, DISTANCE_WARN_FACTOR
    r = 2 * covalent_radii[atomic_numbers[symbol]]
    for factor, field in ((DISTANCE_ERROR_FACTOR, "errors"), (DISTANCE_WARN_FACTOR, "warnings")):
        d = float(f"{factor * r:.4f}")             # written to 4 decimals, as files do
        at = validate([_dimer(symbol, d)], raise_on_error=False)
        below = validate([_dimer(symbol, d - 0.01)], raise_on_error=False)
        assert not any("distances" in m for m in getattr(at, field) + at.errors), (symbol, factor)
        assert any("distances" in m for m in getattr(below, field)), (symbol, factor)


def test_distance_thresholds_scale_with_the_pair():
    """0.9 Å is an error for Cu-Cu (< 0.92 Å) but fine for a C-H bond (1.07 Å sum, warns < 0.64 Å)."""
    cu = _dimer("Cu", 0.9)
    ch = Atoms("CH", positions=[[0, 0, 0], [0, 0, 0.9]])
    ch.calc = SinglePointCalculator(ch, energy=-1.0)
    assert _single_error([cu]).startswith("frame 0: distances: 1 pair(s) closer than 0.35 x")
    report = validate([ch])
    assert report.ok and report.warnings == []


def test_fixed_min_distance_still_works_and_rounds_safely():
    atoms = _dimer("H", 0.5)
    assert validate([atoms], min_distance=0.5).ok                       # at the threshold: not flagged
    assert not validate([atoms], min_distance=0.5001, raise_on_error=False).ok


def test_placeholder_element_is_an_error_naming_frame_and_atom(tmp_path):
    """ASE reads an unknown symbol 'X' as atomic number 0; it passed read and validate and failed deep in the
    descriptor ('atomic number 0 is outside 1..118', no file or frame)."""
    import re
    import kernelpot
    from ase.calculators.emt import EMT
    from kernelpot.workflows.sampling import label
    frames = label([bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 2)) for _ in range(2)], EMT())
    path = tmp_path / "x.xyz"
    kernelpot.write(path, frames)
    lines = path.read_text().splitlines()
    first_atom = 2 + len(frames[0]) + 2 + 3   # frame 1, atom 3
    lines[first_atom] = "X" + lines[first_atom][2:]
    path.write_text("\n".join(lines) + "\n")
    report = kernelpot.validate(kernelpot.read(path), raise_on_error=False)
    assert any(re.search(r"frame 1.*atoms \[3\] have atomic number 0 \(element 'X'\)", e) for e in report.errors), \
        report.errors
    with pytest.raises(ValueError, match=r"frame 1.*atomic number 0"):
        kernelpot.SparseGP(n_sparse=10, verbose=False).fit(kernelpot.read(path))


def test_identical_structures_with_different_labels_are_named():
    """A copy relabelled (or two merged runs) passed validate and fit silently; only screen found it."""
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a.rattle(0.02, seed=3)

    def labelled(e, f_shift=0.0):
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=e, forces=np.full((len(b), 3), f_shift))
        return b

    report = validate([labelled(-14.0), labelled(-13.0), labelled(-14.0), labelled(-14.0, 0.5)],
                      raise_on_error=False)
    dup = [w for w in report.warnings if w.startswith("duplicates:")]
    assert len(dup) == 1, report.warnings
    assert "2 pair(s)" in dup[0] and "frames 0 and 1 (energy: 0.25 eV/atom)" in dup[0]
    assert "frames 0 and 3 (forces: 0.5 eV/Å)" in dup[0]
    clean = validate([labelled(-14.0), labelled(-14.0)], raise_on_error=False)
    assert not any(w.startswith("duplicates:") for w in clean.warnings)


def test_a_whole_data_set_in_bohr_is_named():
    """Every relative check passes a file whose positions and cell are all in Bohr; the nearest neighbours,
    1.89x their covalent radii sum apart in every structure, do not.  Crystals, molecules and solid argon
    (van der Waals contacts, left out) in Å pass."""
    from ase.calculators.emt import EMT
    frames = []
    for k in range(6):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        a.rattle(0.05, seed=k)
        a.calc = EMT()
        a.calc = SinglePointCalculator(a, energy=a.get_potential_energy(), forces=a.get_forces())
        frames.append(a)
    frames.append(_molecule())
    bohr = []
    for a in frames:
        b = a.copy()
        b.set_cell(b.cell / units.Bohr, scale_atoms=True)
        b.positions = a.positions / units.Bohr   # the molecule has no cell to scale with
        b.calc = SinglePointCalculator(b, **a.calc.results)
        bohr.append(b)
    warned = [w for w in validate(bohr, raise_on_error=False).warnings if w.startswith("positions:")]
    assert len(warned) == 1 and "in Bohr (x1.89)" in warned[0] and "7 structures checked" in warned[0]
    argon = bulk("Ar", "fcc", a=5.26, cubic=True)
    argon.calc = SinglePointCalculator(argon, energy=-0.3)
    for ok in (frames, [argon] * 3, frames + [argon] * 20):
        assert not [w for w in validate(ok, raise_on_error=False).warnings if w.startswith("positions:")]


def _atom(cell=None, pbc=False, forces=None, config_type="isolated_atom"):
    atoms = Atoms("Cu", positions=[[2.5, 2.5, 2.5]], cell=cell or [12.0] * 3, pbc=pbc)
    atoms.calc = SinglePointCalculator(atoms, energy=-0.2, forces=np.zeros((1, 3)) if forces is None else forces)
    atoms.info["config_type"] = config_type
    return atoms


def test_frames_named_isolated_atoms_that_are_not_used_as_one_are_named():
    """config_type isolated_atom on a 5 Å periodic box or on a dimer: fitted as a structure and e0 left
    unset, which the user did not ask for; an isolated atom with a force (zero by symmetry) is named too."""
    dimer = Atoms("Cu2", positions=[[0, 0, 0], [2.3, 0, 0]], cell=[12.0] * 3)
    dimer.calc = SinglePointCalculator(dimer, energy=-1.0, forces=np.zeros((2, 3)))
    dimer.info["config_type"] = "Isolated_Atoms"                  # one of the spellings in use
    frames = [_atom(),                                             # 0: a true isolated atom: nothing to say
              _atom(cell=[5.0] * 3, pbc=True),                     # 1: images 5 Å away
              dimer,                                               # 2: two atoms
              _atom(forces=[[0.3, 0.0, 0.0]]),                     # 3: an isolated atom with a force
              _atom(cell=[5.0] * 3, pbc=True, config_type="bulk"),  # 4: a 1-atom crystal: a structure
              _atom(cell=[12.0] * 3, pbc=True)]                    # 5: a DFT box, images 12 Å away
    w = [m for m in validate(frames).warnings if "isolated" in m]
    assert len(w) == 3, w
    assert w[0].startswith("frame 1 ('isolated_atom'): config_type says isolated atom, but its nearest periodic "
                           "image is 5 Å away")
    assert w[1].startswith("frame 2 ('Isolated_Atoms'): config_type says isolated atom, but it has 2 atoms")
    assert w[2].startswith("frame 3 ('isolated_atom'): forces: an isolated atom has |F| = 0.3 eV/Å")
    # the spellings in use name a DFT box's atom an isolated atom, as GAP's IsolatedAtom does
    from kernelpot.io.labels import is_isolated_atom
    for name in ("Isolated_Atom", "isolated-atoms", "IsolatedAtom"):
        assert is_isolated_atom(_atom(cell=[12.0] * 3, pbc=True, config_type=name))
    assert not is_isolated_atom(_atom(cell=[12.0] * 3, pbc=True, config_type="isolated_atom_dimer_scan"))


def test_a_per_atom_force_sigma_below_the_floor_names_the_atom():
    atoms = _frame()
    sig = np.full(len(atoms), 0.05)
    sig[5] = 1e-6
    atoms.arrays["force_atom_sigma"] = sig
    w = [m for m in validate([atoms]).warnings if "noise floor" in m]
    assert len(w) == 1 and w[0].startswith("frame 0 ('bulk'): force_atom_sigma of atom 5 = 1e-06 eV/Å is below")


def test_a_config_type_that_swallowed_the_keys_after_it_is_named(tmp_path):
    """An unbalanced quote in an extxyz comment line: ASE reads the rest of the line into config_type, and the
    frame's energy and pbc are silently gone."""
    good = 'Lattice="4 0 0 0 4 0 0 0 4" Properties=species:S:1:pos:R:3 energy=-1.0 config_type=b pbc="T T T"'
    bad = 'Lattice="4 0 0 0 4 0 0 0 4" Properties=species:S:1:pos:R:3 config_type="b energy=-1.0 pbc="T T T"'
    path = tmp_path / "quote.xyz"
    path.write_text("".join(f"2\n{c}\nCu 0 0 0\nCu 2 0 0\n" for c in (good, bad)))
    frames = read(path)
    w = [m for m in validate(frames, raise_on_error=False).warnings if "key=value" in m]
    assert len(w) == 1 and w[0].startswith("config_type of frame 1 is 'b energy=-1.0 pbc=T': key=value text")


def test_a_lowercase_lattice_key_is_named(tmp_path):
    """``lattice=`` (lowercase) and no pbc=: ASE reads no cell and keeps the key in info, so a bulk file became
    clusters without a word (fit later blamed the forces' units). The key is named; Lattice= still reads."""
    a = _frame()
    a.write(tmp_path / "ok.xyz", format="extxyz")
    text = (tmp_path / "ok.xyz").read_text()
    lower = text.replace("Lattice=", "lattice=").replace(' pbc="T T T"', "")
    (tmp_path / "lower.xyz").write_text(lower)
    frames = read(tmp_path / "lower.xyz")
    assert not frames[0].pbc.any() and "lattice" in frames[0].info
    report = validate(frames, raise_on_error=False)
    assert [e for e in report.errors if "frame 0 ('bulk'): info['lattice'] holds a cell but the frame has none" in e
            and "Lattice= (capital L)" in e]
    assert not validate(read(tmp_path / "ok.xyz"), raise_on_error=False).errors
    # cell= with three lengths, or a matrix written as text, is the same slip
    for key, value in (("cell", '"7.2 3.6 3.6"'), ("cell", '"[[7.2,0,0],[0,3.6,0],[0,0,3.6]]"')):
        bad = text.replace('Lattice="7.2 0.0 0.0 0.0 3.6 0.0 0.0 0.0 3.6"', f"{key}={value}").replace(' pbc="T T T"', "")
        (tmp_path / "cell.xyz").write_text(bad)
        frames = read(tmp_path / "cell.xyz")
        assert not frames[0].pbc.any()
        errors = validate(frames, raise_on_error=False).errors
        assert [e for e in errors if f"info['{key}'] holds a cell but the frame has none" in e], (value, errors)
