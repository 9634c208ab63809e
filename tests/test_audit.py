"""Tests for kernelpot.audit on synthetic frames with known settings and offsets."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from kernelpot.io.dft_audit import AuditReport, audit, dft_settings, kpoint_density


def _reciprocal_lengths(cell):
    """|b_i| with b_i = 2 pi (a_j x a_k) / (a_1 . a_2 x a_3), written out independently."""
    a1, a2, a3 = np.asarray(cell)
    vol = np.dot(a1, np.cross(a2, a3))
    pairs = ((a2, a3), (a3, a1), (a1, a2))
    return np.array([np.linalg.norm(2 * np.pi * np.cross(x, y) / vol) for x, y in pairs])


def _frame(atoms, config_type, **settings):
    a = atoms.copy()
    a.info["config_type"] = config_type
    a.info.update(settings)
    return a


@pytest.fixture
def mixed_frames():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    base = dict(xc="PBE", potcar="Cu_pv", encut=520, ismear=1, sigma=0.1, ispin=1)
    frames = [_frame(cu, "bulk", kpts=(6, 6, 6), **base) for _ in range(6)]
    # twice as long along x with half the k-points: same density, same group
    frames += [_frame(cu.repeat((2, 1, 1)), "supercell", kpts=(3, 6, 6), **base) for _ in range(3)]
    # a different cutoff (upper-case key) and a coarser mesh
    other = dict(base, encut=400)
    frames += [_frame(cu, "lowcut", **{k.upper(): v for k, v in other.items()}, KPTS=(6, 6, 6))
               for _ in range(2)]
    frames += [_frame(cu, "coarse", kpts=(4, 4, 4), **base) for _ in range(2)]
    return frames


def test_settings_groups_and_differing_keys(mixed_frames):
    report = audit(mixed_frames)
    assert isinstance(report, AuditReport)
    assert not report.settings_consistent
    groups = {tuple(g.frames): g for g in report.groups}
    assert set(groups) == {tuple(range(9)), (9, 10), (11, 12)}
    assert groups[tuple(range(9))].config_types == {"bulk": 6, "supercell": 3}
    assert groups[(9, 10)].config_types == {"lowcut": 2}
    assert groups[(9, 10)].settings["encut"] == "encut=400"
    assert sorted(report.differing) == ["encut", "kpts"]
    # k-density = kpts_i / |b_i| = 6 * 3.6 / (2 pi) for the cubic frames
    np.testing.assert_allclose(report.k_density[:11], 6 * 3.6 / (2 * np.pi), rtol=1e-12)
    np.testing.assert_allclose(report.k_density[11:], 4 * 3.6 / (2 * np.pi), rtol=1e-12)
    text = str(report)
    for word in ("INCONSISTENT", "encut=400", "lowcut(2)", "coarse(2)", "9-10", "11-12"):
        assert word in text


def test_consistent_set_is_one_group(mixed_frames):
    report = audit(mixed_frames[:9])
    assert report.settings_consistent and report.ok and report.differing == []
    assert "consistent" in str(report)


def test_k_density_non_cubic_cells():
    # triclinic cell: compare with an independent reciprocal-lattice computation
    cell = np.array([[4.0, 0.0, 0.0], [1.3, 5.1, 0.0], [-0.7, 0.9, 6.2]])
    tri = Atoms("Cu", cell=cell, pbc=True)
    np.testing.assert_allclose(
        kpoint_density(tri, (5, 4, 3)), np.array([5, 4, 3]) / _reciprocal_lengths(cell), rtol=1e-12
    )
    # hexagonal: |b1| = |b2| = 4 pi / (sqrt(3) a), |b3| = 2 pi / c
    a, c = 3.2, 5.2
    hcp = bulk("Mg", "hcp", a=a, c=c)
    dens = kpoint_density(hcp, (8, 8, 5))
    np.testing.assert_allclose(dens[:2], 8 * np.sqrt(3) * a / (4 * np.pi), rtol=1e-12)
    assert dens[2] == pytest.approx(5 * c / (2 * np.pi), rel=1e-12)
    # audit reports the smallest density over sampled directions
    f1 = _frame(hcp, "hcp", kpts=(8, 8, 5), encut=500)
    f2 = _frame(hcp.repeat((1, 1, 2)), "hcp2", kpts=(8, 8, 3), encut=500)
    f3 = _frame(tri, "tri", kpts="5x4x3", encut=500)
    report = audit([f1, f2, f3])
    expected = [
        min(8 * np.sqrt(3) * a / (4 * np.pi), 5 * c / (2 * np.pi)),
        min(8 * np.sqrt(3) * a / (4 * np.pi), 3 * 2 * c / (2 * np.pi)),
        (np.array([5, 4, 3]) / _reciprocal_lengths(cell)).min(),
    ]
    np.testing.assert_allclose(report.k_density, expected, rtol=1e-12)


def test_kspacing_and_density_forms_agree_with_mesh():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    b = 2 * np.pi / 3.6
    mesh = _frame(cu, "mesh", kpts=(6, 6, 6), encut=520)
    # VASP KSPACING: n_i = ceil(|b_i| / kspacing) = 6 here
    spacing = _frame(cu, "kspacing", KSPACING=b / 5.5, encut=520)
    # ASE density: n_i = ceil(density |b_i|) = 6 here
    dens = _frame(cu, "density", kpts={"density": 5.5 / b}, encut=520)
    coarse = _frame(cu, "coarse", kpts={"size": (5, 5, 5)}, encut=520)
    report = audit([mesh, spacing, dens, coarse])
    np.testing.assert_allclose(report.k_density[:3], 6 / b, rtol=1e-12)
    assert report.k_density[3] == pytest.approx(5 / b)
    assert [g.frames for g in report.groups] == [[0, 1, 2], [3]]
    assert report.differing == ["kpts"]


def test_k_density_tolerance():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    frames = [_frame(cu, "a", kpts=(20, 20, 20)), _frame(cu, "b", kpts=(21, 21, 21))]
    assert len(audit(frames, k_rtol=0.06).groups) == 1  # 5 % apart
    assert len(audit(frames, k_rtol=0.01).groups) == 2


def test_settings_from_calc_parameters_and_nested_info():
    cu = bulk("Cu", "fcc", a=3.6)
    a = cu.copy()
    a.calc = SinglePointCalculator(a, energy=0.0)
    a.calc.parameters.update(Functional="PBE", ecut=30.0)
    b = cu.copy()
    b.info["dft"] = {"XC": "pbe", "ECUT": 30}
    c = cu.copy()
    c.info["dft"] = {"xc": "PBEsol", "ecut": 30}
    assert dft_settings(a) == {"functional": {"functional": "PBE"}, "encut": {"ecut": 30.0}}
    report = audit([a, b, c])
    assert report.differing == ["functional"]
    assert [g.frames for g in report.groups] == [[0], [1], [2]]  # key names differ for 0 and 1
    no_settings = audit([cu.copy(), cu.copy()])
    assert not no_settings.settings_found and no_settings.settings_consistent
    assert "none found" in str(no_settings)


def _offset_set(seed, offset_meV=0.0, noise_meV=2.0):
    rng = np.random.default_rng(seed)
    frames, residuals = [], []
    for ct, n_frames, size in (("bulk", 12, 1), ("surface", 10, 2), ("vacancy", 8, 2)):
        for _ in range(n_frames):
            a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((size, 1, 1))
            a.info["config_type"] = ct
            frames.append(a)
            per_atom = rng.normal(0.0, noise_meV) + (offset_meV if ct == "vacancy" else 0.0)
            residuals.append(1e-3 * per_atom * len(a))
    return frames, np.array(residuals)


def test_offset_detected_on_one_config_type():
    frames, res = _offset_set(0, offset_meV=30.0)
    report = audit(frames, res)
    flagged = report.flagged
    assert [(t.grouping, t.group) for t in flagged] == [("config_type", "vacancy")]
    t = flagged[0]
    assert t.n_frames == 8
    assert abs(t.offset_meV - 30.0) < 4 * t.stderr_meV
    # clean groups are compared with clean frames only (not dragged ~13 meV/atom by the
    # offset group); clean vs clean has a standard error of ~0.9 meV/atom here
    for other in report.offsets:
        if other.group != "vacancy":
            assert other.reference == "clean groups"
            assert abs(other.offset_meV) < 3.0
    text = str(report)
    assert "vacancy" in text and "OFFSET" in text
    assert len(frames) == 30  # nothing dropped


@pytest.mark.parametrize("seed", range(5))
def test_clean_set_not_flagged(seed):
    frames, res = _offset_set(seed)
    report = audit(frames, res)
    assert report.flagged == [] and report.ok
    assert len(report.offsets) == 3


def test_small_offset_below_threshold_not_flagged():
    # 3 meV/atom offset with 0.2 meV noise: significant, but under the 5 meV/atom threshold
    frames, res = _offset_set(1, offset_meV=3.0, noise_meV=0.2)
    report = audit(frames, res)
    vac = next(t for t in report.offsets if t.group == "vacancy")
    assert abs(vac.z) > 10 and not vac.flagged
    assert audit(frames, res, threshold_meV=1.0).flagged[0].group == "vacancy"


def test_offset_from_model_predict_and_settings_group():
    class ShiftedModel:
        """Predicts EMT energies, except 30 meV/atom lower for the 'lowcut' frames."""

        def predict(self, frames):
            e = []
            for f in frames:
                a = f.copy()
                a.calc = EMT()
                shift = 0.03 * len(f) if f.info["config_type"] == "lowcut" else 0.0
                e.append(a.get_potential_energy() - shift + 1e-3 * np.sin(len(e)))
            return {"energy": np.array(e)}

    rng = np.random.default_rng(3)
    frames = []
    for ct, encut in (("bulk", 520), ("rattled", 520), ("lowcut", 400)):
        for _ in range(6):
            a = bulk("Cu", "fcc", a=3.6, cubic=True)
            a.positions += rng.normal(scale=0.03, size=a.positions.shape)
            a.info.update(config_type=ct, encut=encut)
            a.calc = EMT()
            e, f = a.get_potential_energy(), a.get_forces()
            a.calc = SinglePointCalculator(a, energy=e, forces=f)
            frames.append(a)
    report = audit(frames, ShiftedModel())
    assert {(t.grouping, t.group) for t in report.flagged} == {
        ("config_type", "lowcut"), ("settings", "settings 1")
    }
    lowcut = next(t for t in report.flagged if t.group == "lowcut")
    assert lowcut.offset_meV == pytest.approx(30, abs=2)


def test_input_errors():
    cu = bulk("Cu")
    with pytest.raises(ValueError, match="expected \\(2,\\)"):
        audit([cu, cu], np.zeros(3))
    with pytest.raises(ValueError, match="frame 1"):
        audit([cu, cu], np.array([0.0, np.nan]))
    with pytest.raises(TypeError, match="frame 0"):
        audit(["x"])
    with pytest.raises(ValueError, match="at least one frame"):
        audit([])


# ------------------------------------------------------------------ the model's own training set


def _shifted_training_set(shift_meV=15.0):
    from conftest import emt_frames
    frames = emt_frames(24, seed=5)
    for k, a in enumerate(frames):
        group = ("A", "B", "C")[k % 3]
        a.info["config_type"] = group
        if group == "B":                                      # a different DFT setting: +15 meV/atom
            res = dict(a.calc.results)
            res["energy"] = res["energy"] + shift_meV * 1e-3 * len(a)
            a.calc = SinglePointCalculator(a, **res)
    return frames


def test_audit_of_the_training_set_uses_leave_one_out(small_soap):
    """In-sample residuals absorb the offset; the fit's leave-one-out residuals show it."""
    from kernelpot import SparseGP
    frames = _shifted_training_set()
    # a flexible fit with small energy noise: it can bend to the shifted group in-sample
    model = SparseGP(descriptor=small_soap, n_sparse=100, sigma_energy=1e-4).fit(frames)
    report = audit(frames, model)
    assert report.residuals == "leave-one-out"
    b = next(t for t in report.offsets if t.grouping == "config_type" and t.group == "B")
    assert b.flagged
    assert 12.0 < b.offset_meV < 20.0                          # the 15 meV/atom put in, seen held out
    assert not any(t.flagged for t in report.offsets if t.group in ("A", "C"))
    # the old way, in-sample residuals of the same model: the offset is absorbed and not flagged
    in_sample = np.array([a.get_potential_energy() for a in frames]) - model.predict(frames)["energy"]
    old = audit(frames, in_sample)
    assert old.residuals == "given"
    b_old = next(t for t in old.offsets if t.grouping == "config_type" and t.group == "B")
    assert not b_old.flagged and abs(b_old.offset_meV) < 5.0


def test_audit_of_other_frames_uses_predictions(cu_frames, small_soap):
    from kernelpot import SparseGP
    model = SparseGP(descriptor=small_soap, n_sparse=30, calibrate=False).fit(cu_frames[:8])
    assert audit(cu_frames[8:], model).residuals == "model"
    with pytest.warns(UserWarning, match="no leave-one-out diagnostics"):
        assert audit(cu_frames[:8], model).residuals == "in-sample"


def test_cli_audit_of_a_saved_model_on_its_training_file_uses_leave_one_out(small_soap, tmp_path, capsys):
    """``kernelpot audit TRAIN --model m.npz``: the saved model keeps no diagnostics, so the leave-one-out is
    recomputed from the training file; the 15 meV/atom shifted group is flagged (in-sample it was not)."""
    from kernelpot import SparseGP, write
    from kernelpot.cli import main
    frames = _shifted_training_set()
    model = SparseGP(descriptor=small_soap, n_sparse=100, sigma_energy=1e-4, verbose=False).fit(frames)
    model.save(tmp_path / "m.npz")
    write(tmp_path / "train.xyz", frames)
    assert main(["audit", str(tmp_path / "train.xyz"), "--model", str(tmp_path / "m.npz")]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith("config_type")}
    assert "OFFSET" in rows["B"]
    assert "OFFSET" not in rows["A"] and "OFFSET" not in rows["C"]
