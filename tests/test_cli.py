"""The command line on the shipped data: fit, predict, eval, and what a user sees when something is wrong."""

import contextlib
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import kernelpot
from kernelpot import cli
from kernelpot.cli import build_parser, main

DATA = Path(__file__).resolve().parents[1] / "data"
TEST = str(DATA / "emt_cu_test.xyz")


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "cu.npz"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["fit", str(DATA / "emt_cu_train.xyz"), "--test", TEST,
                   "-o", str(out), "--n-sparse", "100", "--quiet"])
    assert rc == 0
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def fitted_model(fit_run):
    return fit_run[0]


@pytest.fixture(scope="module")
def small_train(tmp_path_factory):
    """Six training frames: enough for a fit of a few seconds."""
    path = tmp_path_factory.mktemp("small") / "train.xyz"
    kernelpot.write(path, kernelpot.read(DATA / "emt_cu_train.xyz")[:6])
    return path


def test_fit_writes_model_and_parity_plot(fitted_model):
    assert fitted_model.exists()
    png = Path(str(fitted_model.with_suffix("")) + "_parity.png")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in fitted_model.parent.iterdir()) == ["cu.npz", "cu_parity.png"]


def test_fit_prints_test_errors(fit_run):
    out = fit_run[1]
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in
            (["energy"], ["forces"], ["stress"])}
    assert set(rows) == {"energy", "forces", "stress"}
    assert rows["energy"][1] == "meV/atom" and rows["stress"][1] == "GPa"
    # EMT Cu is smooth: even 100 sparse points give force MAE well below 0.1 eV/Å
    assert 0 < float(rows["forces"][2]) < 0.1


def test_predict_writes_values_and_stds(fitted_model, tmp_path):
    out = tmp_path / "pred.xyz"
    assert main(["predict", str(fitted_model), TEST, "-o", str(out), "--quiet"]) == 0
    pred = kernelpot.read(out)
    ref = kernelpot.read(TEST)
    assert len(pred) == len(ref)
    model = kernelpot.load(fitted_model)
    direct = model.predict_frame(ref[0])
    assert pred[0].get_potential_energy() == pytest.approx(direct["energy"], rel=1e-10)
    # extxyz stores per-atom arrays with 8 decimals
    np.testing.assert_allclose(pred[0].arrays["forces_std"], direct["forces_std"], rtol=0, atol=1e-8)
    assert pred[0].info["energy_std"] == pytest.approx(direct["energy_std"], rel=1e-8)
    np.testing.assert_allclose(pred[0].arrays["local_energy_std"], direct["energies_std"], rtol=0, atol=1e-8)
    # every field the help promises is in the file
    help_text = build_parser()._subparsers._group_actions[0].choices["predict"].format_help()
    for field in ("energy_std", "energy_std_epistemic", "stress_std", "stress_std_epistemic", "forces_std",
                  "forces_std_epistemic", "local_energy", "local_energy_std"):
        assert field in help_text
        assert field in pred[0].info or field in pred[0].arrays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.xyz"]


def test_predict_on_a_predicted_file_replaces_its_columns(fitted_model, tmp_path):
    """Predicting again on predict's own output (a second model compared on the first's file) died with ASE's
    'Array forces_std already present'; the old prediction columns are replaced like its energy and forces."""
    first, second = tmp_path / "p1.xyz", tmp_path / "p2.xyz"
    assert main(["predict", str(fitted_model), TEST, "-o", str(first), "--quiet"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its labels are predictions: said, and beside the point here
        assert main(["predict", str(fitted_model), str(first), "-o", str(second), "--quiet"]) == 0
        a, b = kernelpot.read(first), kernelpot.read(second)
    direct = kernelpot.load(fitted_model).predict_frame(kernelpot.read(TEST)[1])
    for k in ("forces_std", "forces_std_epistemic", "local_energy", "local_energy_std"):
        assert b[1].arrays[k].shape == a[1].arrays[k].shape
        np.testing.assert_allclose(b[1].arrays[k], a[1].arrays[k], rtol=0, atol=2e-8)
    assert b[1].info["stress_std"] == pytest.approx(direct["stress_std"], rel=1e-6)


def test_predictions_read_back_are_named_as_predictions(fitted_model, tmp_path, capsys):
    """A file written by predict holds a model's output: read back as labels, validate, fit and eval say so
    (eval of the model that wrote it once printed MAE 0.0000 and 100 % coverage without a word)."""
    out = tmp_path / "pred.xyz"
    assert main(["predict", str(fitted_model), TEST, "-o", str(out), "--quiet"]) == 0
    pred = kernelpot.read(out)
    assert pred[0].info["predicted_by"] == f"kernelpot {kernelpot.__version__} model {fitted_model.name}"
    report = kernelpot.validate(pred, raise_on_error=False)
    assert [w for w in report.warnings if f"{len(pred)} of {len(pred)} frames hold predictions of kernelpot" in w]
    assert not [w for w in kernelpot.validate(kernelpot.read(TEST), raise_on_error=False).warnings
                if "predictions" in w]
    capsys.readouterr()
    assert main(["eval", str(fitted_model), str(out)]) == 0
    err = capsys.readouterr().err
    assert f"pred.xyz: {len(pred)} of {len(pred)} frames" in err and "compare a model with a model" in err
    # a file of an earlier version (no predicted_by) is known by its uncertainty columns
    del pred[1].info["predicted_by"]
    assert "forces_std" in kernelpot.io.labels.prediction_source(pred[1])


def test_eval_names_structures_beyond_the_calibration(fitted_model, tmp_path, capsys):
    """Cells compressed by 12 % (EMT labels) lie far beyond any latent variance the calibration's held-out data
    reached: eval names them in one warning and predict writes each structure's extrapolation; the test set
    the model was made for is not named."""
    from ase.calculators.emt import EMT
    from conftest import label
    frames = kernelpot.read(TEST)[:4]
    squeezed = []
    for a in frames:
        b = a.copy()
        b.set_cell(b.cell * 0.88, scale_atoms=True)
        squeezed.append(label(b, EMT()))
    path = tmp_path / "squeezed.xyz"
    kernelpot.write(path, squeezed)
    capsys.readouterr()
    assert main(["eval", str(fitted_model), str(path)]) == 0
    err = capsys.readouterr().err
    assert "squeezed.xyz: 4 of 4 structures (frames [0, 1, 2, 3]) lie beyond the largest latent variance" in err
    assert main(["eval", str(fitted_model), TEST]) == 0
    assert "lie beyond" not in capsys.readouterr().err
    out = tmp_path / "pred.xyz"
    assert main(["predict", str(fitted_model), str(path), "-o", str(out), "--quiet"]) == 0
    assert all(a.info["extrapolation"] > 1.0 for a in kernelpot.read(out))


def test_eval_prints_uncertainty_for_every_quantity(fitted_model, capsys):
    assert main(["eval", str(fitted_model), TEST]) == 0
    out = capsys.readouterr().out
    unc = out.split("uncertainty")[1].splitlines()
    header = unc[1]
    assert "within 1σ" in header and "miscal. area" in header and "msz" in header
    rows = {line.split()[0]: line.split() for line in unc[2:] if line.strip()}
    assert set(rows) == {"energy", "forces", "stress"}
    for r in rows.values():
        assert 0 <= float(r[1].rstrip("%")) <= 100 and float(r[4]) > 0   # coverage in %, msz > 0


def test_uncertainty_table_columns_stay_apart_for_any_value():
    """A test set in the wrong unit (Hartree) gives msz ~1e5: its column must not run into the area's."""
    from kernelpot.cli import _uncertainty_table
    from kernelpot.uq import metrics
    rng = np.random.default_rng(0)
    err, std = rng.normal(size=50), np.full(50, 1e-3)
    line = _uncertainty_table({"energy": {"err": err, "std": std, "free": np.ones(50, bool)}}).splitlines()[1]
    fields = line.split()
    assert len(fields) == 7, line
    s = metrics.summary(err, std)
    assert float(fields[3]) == pytest.approx(s["miscal_area"], abs=5e-4)
    assert float(fields[4]) == pytest.approx(s["msz"], rel=5e-3) and s["msz"] > 1e5


def test_eval_leaves_symmetry_fixed_components_out_of_coverage(fitted_model, tmp_path, capsys):
    """Forces of a perfect strained crystal are zero in the labels and in every model: counted, they are
    "covered" for free (mlearn Si: 76 % within 1 sigma with them, 70 % without)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from kernelpot.uq.evaluation import evaluate
    from kernelpot.uq.metrics import summary
    rattled = kernelpot.read(TEST)[:3]
    perfect = []
    for strain in (0.99, 1.02):
        a = bulk("Cu", "fcc", a=3.6 * strain, cubic=True).repeat(2)
        a.calc = EMT()
        a.get_potential_energy(), a.get_forces(), a.get_stress()
        perfect.append(a)
    path = tmp_path / "mixed.xyz"
    kernelpot.write(path, rattled + perfect)
    frames = kernelpot.read(path)
    model = kernelpot.load(fitted_model)
    ev = evaluate(model, frames)
    n_rattled = sum(len(a) for a in rattled)   # atoms; forces are (n_atoms, 3)
    free = ev["forces"]["free"]
    assert not free[n_rattled:].any() and free[:n_rattled].all()
    assert np.abs(ev["forces"]["err"][n_rattled:]).max() < 1e-8    # the fixed components' error is zero
    # the rule is absolute: symmetric crystals alone are still recognised, and a structure far from the data
    # (a pair at 0.6 Å: latent std 1e3x the others') does not hide the rest (a rule relative to the largest did)
    assert not evaluate(model, perfect)["forces"]["free"].any()
    close = rattled[0].copy()
    close.positions[1] = close.positions[0] + [0.6, 0.0, 0.0]
    close.calc = EMT()
    close.get_potential_energy(), close.get_forces(), close.get_stress()
    ev_close = evaluate(model, rattled + [close])
    assert ev_close["forces"]["free"].all() and ev_close["stress"]["free"].all()
    assert main(["eval", str(fitted_model), str(path)]) == 0
    unc = capsys.readouterr().out.split("uncertainty")[1].splitlines()
    row = next(line.split() for line in unc if line.startswith("forces"))
    assert int(row[-1]) == 3 * n_rattled
    want = summary(ev["forces"]["err"][:n_rattled], ev["forces"]["std"][:n_rattled])
    assert float(row[1].rstrip("%")) == pytest.approx(100 * want["coverage_1"], abs=0.5)


def test_compact_model_predicts_identically(fitted_model, tmp_path):
    model = kernelpot.load(fitted_model)
    model.save(tmp_path / "compact.npz", compact=True)
    small = kernelpot.load(tmp_path / "compact.npz")
    # Kmm and Lmm are left out (on the 854-point Cu model of the README: 12.6 MB -> 4.5 MB)
    assert (tmp_path / "compact.npz").stat().st_size < 0.8 * fitted_model.stat().st_size
    atoms = kernelpot.read(TEST)[3]
    a, b = model.predict_frame(atoms), small.predict_frame(atoms)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------ user errors
def _run(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


def _one_line_error(rc, err):
    assert rc == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0], err
    return lines[0]


@pytest.mark.parametrize("argv, words", [
    (["fit", "no_such_file.xyz"], "no such file"),
    (["eval", "no_such_model.npz", TEST], "no such file"),
    (["predict", "no_such_model.npz", TEST, "-o", "x.xyz"], "no such file"),
    (["fit", str(DATA.parent / "README.md")], "no structures"),
    (["screen", str(DATA / "emt_cu_train.xyz"), "--plot", "no_such_folder/p.png"], "does not exist"),
    (["audit", "no_such_file.xyz"], "no such file"),
    (["fit", TEST, "--r-cut", "0.5"], "--r-cut 0.5 Å: the cutoff radius must exceed the width of SOAP's smooth"),
    (["fit", TEST, "--radial-scaling", "0.01"], "--radial-scaling 0.01 Å: radial_scaling must be in [0.5, 1000]"),
])
def test_input_errors_are_one_line_exit_2(argv, words, capsys):
    assert words in _one_line_error(*_run(argv, capsys))


@pytest.mark.parametrize("argv", [
    ["fit", TEST, "--n-sparse", "0"],
    ["fit", TEST, "--n-sparse", "many"],
    ["fit", TEST, "--r-cut", "-2"],
    ["fit", TEST, "--radial-scaling", "0"],
    ["screen", TEST, "--alpha", "0"],
    ["screen", TEST, "--refit-rounds", "-1"],
    ["eval", "only_one_argument"],
    ["frobnicate"],
])
def test_bad_flags_are_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "error:" in err


@pytest.mark.parametrize("argv, help_of", [
    (["fit"], "kernelpot fit --help"),
    (["fit", TEST, "--n-sparse", "0"], "kernelpot fit --help"),
    (["eval", "only_one_argument"], "kernelpot eval --help"),
    (["screen", TEST, "--refit-rounds", "11"], "kernelpot screen --help"),
    (["frobnicate"], "kernelpot --help"),
])
def test_usage_errors_have_the_same_prefix_as_other_errors(argv, help_of, capsys):
    """A subcommand's usage error starts with ``kernelpot: error:`` like every other error (argparse's own
    prefix would be ``kernelpot fit: error:``), still exits 2, and points to that subcommand's help."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("kernelpot: error: ") and err.count("error:") == 1, err
    assert err.rstrip().endswith(f"(see {help_of})"), err


def test_missing_output_folder_fails_before_fitting(capsys, monkeypatch):
    monkeypatch.setattr(kernelpot, "read", lambda *a, **k: pytest.fail("read before checking the output folder"))
    line = _one_line_error(*_run(["fit", TEST, "-o", "no_such_folder/m.npz"], capsys))
    assert "no_such_folder" in line and "does not exist" in line


def test_bad_model_file_and_unknown_species(fitted_model, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    assert "it is not a model file" in _one_line_error(*_run(["eval", str(bad), TEST], capsys))
    # the arguments swapped: a structure file in the model's place (it was called truncated or corrupted)
    line = _one_line_error(*_run(["predict", TEST, str(fitted_model), "-o", str(tmp_path / "p.xyz")], capsys))
    assert "emt_cu_test.xyz" in line and "structure file given in the model's place" in line
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator
    au = bulk("Au", cubic=True)
    au.calc = SinglePointCalculator(au, energy=-10.0, forces=np.zeros((len(au), 3)))
    kernelpot.write(tmp_path / "au.xyz", [au])
    line = _one_line_error(*_run(["predict", str(fitted_model), str(tmp_path / "au.xyz"), "-o",
                                  str(tmp_path / "p.xyz")], capsys))
    assert "Au" in line and "not trained on" in line
    with pytest.raises(ValueError, match="not a model file"):
        main(["eval", str(bad), TEST, "--debug"])


def test_library_warnings_are_one_line_without_paths(monkeypatch, capsys):
    def warns(args):
        warnings.warn("hyperparameters at their bounds:\n  ['delta']", RuntimeWarning)
        return 0
    monkeypatch.setattr(cli, "_cmd_audit", warns)
    assert main(["audit", TEST]) == 0
    err = capsys.readouterr().err
    assert err == "kernelpot: warning: hyperparameters at their bounds: ['delta']\n"


def test_validation_warnings_are_printed(capsys, tmp_path):
    # EMT energies are positive: validate warns, and the command says so (it used to throw it away)
    cli._validate(kernelpot.read(TEST), TEST, quiet=False)
    err = capsys.readouterr().err
    assert err.startswith("kernelpot: warning: ") and "energy per atom > 0 eV" in err


# ------------------------------------------------------------------ help and version
def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"kernelpot {kernelpot.__version__}"


def _subparsers():
    return build_parser()._subparsers._group_actions[0].choices


@pytest.mark.parametrize("command", ["fit", "predict", "eval", "screen", "audit"])
def test_help_documents_every_argument_and_default(command):
    p = _subparsers()[command]
    for action in p._actions:
        if action.dest in ("help",):
            continue
        assert action.help, f"{command} {action.dest}: no help"
        if action.option_strings and action.default not in (None, False) and action.required is False:
            shown = f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
            assert "default" in action.help and shown in action.help, (command, action.dest)
    text = p.format_help()
    assert "meV/atom" in text or "eV" in text


def test_help_explains_outputs():
    sub = _subparsers()
    ev = sub["eval"].format_help()
    for word in ("msz", "miscalibration area", "energy", "forces", "stress", "within 1σ", "spearman"):
        assert word in ev.replace("force components", "forces"), word
    pr = sub["predict"].format_help()
    assert "eV/Å^3" in pr and "eV/Å" in pr and "forces_std" in pr
    assert "default 1000" in " ".join(sub["fit"].format_help().split())  # argparse may wrap between the words


# ------------------------------------------------------------------ console output
def test_fit_with_radial_scaling_keeps_it_in_the_model_file(small_train, tmp_path):
    """--radial-scaling reaches SOAP, and the saved model predicts what the same fit in memory does."""
    out = tmp_path / "rs.npz"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["fit", str(small_train), "-o", str(out), "--n-sparse", "20", "--radial-scaling", "2.5",
                     "--quiet"]) == 0
    loaded = kernelpot.SparseGP.load(out)
    assert loaded.descriptor_.radial_scaling == 2.5
    same = kernelpot.SparseGP(n_sparse=20, descriptor=kernelpot.SOAP(radial_scaling=2.5), verbose=False)
    same.fit(kernelpot.read(small_train))
    plain = kernelpot.SparseGP(n_sparse=20, descriptor=kernelpot.SOAP(), verbose=False)
    plain.fit(kernelpot.read(small_train))
    frames = kernelpot.read(TEST)[:3]
    e_loaded, e_same, e_plain = (m.predict(frames, return_std=False)["energy"] for m in (loaded, same, plain))
    np.testing.assert_allclose(e_loaded, e_same, rtol=0, atol=1e-9)
    assert np.max(np.abs(e_same - e_plain)) > 1e-6  # the scaling changed the model


def test_fit_radial_scaling_none_is_kept_and_no_flag_lets_the_evidence_choose(small_train, tmp_path):
    """`--radial-scaling none` fits unscaled SOAP as given; without the flag the CLI fits what SparseGP()
    does (unscaled or r0 = r_cut / 2 by the evidence)."""
    frames = kernelpot.read(small_train)
    test = kernelpot.read(TEST)[:3]
    for flag, kw in ((["--radial-scaling", "none"], {"descriptor": kernelpot.SOAP()}), ([], {})):
        out = tmp_path / f"m{len(flag)}.npz"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["fit", str(small_train), "-o", str(out), "--n-sparse", "20", "--quiet", *flag]) == 0
        loaded = kernelpot.SparseGP.load(out)
        same = kernelpot.SparseGP(n_sparse=20, verbose=False, **kw).fit(frames)
        assert loaded.descriptor_.radial_scaling == same.descriptor_.radial_scaling
        assert hasattr(same, "descriptor_choice_") == (not flag)
        np.testing.assert_allclose(loaded.predict(test, return_std=False)["energy"],
                                   same.predict(test, return_std=False)["energy"], rtol=0, atol=1e-9)


def test_redirected_fit_has_phase_lines_and_no_carriage_returns(small_train, tmp_path):
    """A fit with output redirected to files: one line per phase, no progress-bar floods."""
    env = dict(os.environ, PYTHONWARNINGS="default")
    r = subprocess.run([sys.executable, "-m", "kernelpot", "fit", str(small_train), "--n-sparse", "30",
                        "-o", str(tmp_path / "m.npz")], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stdout and "\r" not in r.stderr
    # progress on stderr, one line per phase of each fit with its time; results on stdout.  The default
    # descriptor fits each candidate SOAP (and the unscaled one again when an earlier candidate wins);
    # one calibration, of the chosen model
    lines = r.stderr.splitlines()
    chose = [x for x in lines if x.startswith("kernelpot: default descriptor: ")]
    assert len(chose) == 1, r.stderr
    n_fits = sum(x.startswith("kernelpot: default descriptor, candidate ") for x in lines) + (
        "chose unscaled" in chose[0])
    assert n_fits in (2, 3)
    for phase in ("descriptors", "sparse selection", "assembly", "hyperparameters", "calibration (LOO)"):
        line = [x for x in lines if x.startswith(f"kernelpot: {phase} ")]
        assert len(line) == (1 if phase.startswith("calibration") else n_fits), (phase, r.stderr)
        assert all(" s" in x for x in line)
    assert "site-packages" not in r.stderr and "Traceback" not in r.stderr
    assert all(x.startswith("kernelpot: ") for x in r.stderr.splitlines()), r.stderr
    assert r.stdout.startswith("model written to ") and "kernelpot: descriptors" not in r.stdout


def test_subprocess_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kernelpot", "fit", "missing.xyz"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2
    assert r.stderr == "kernelpot: error: no such file: 'missing.xyz'\n"


def test_audit_reports_mixed_settings_and_offsets(fitted_model, tmp_path, capsys):
    frames = kernelpot.read(TEST)
    for i, a in enumerate(frames):
        a.info["encut"] = 520.0 if i % 2 else 400.0
    path = tmp_path / "mixed.xyz"
    kernelpot.write(path, frames)
    assert main(["audit", str(path), "--model", str(fitted_model)]) == 0
    out = capsys.readouterr().out
    assert "encut" in out and "400" in out and "520" in out


def test_compile_note_only_without_numba_cache(tmp_path, monkeypatch, capsys):
    import sys as _sys
    from kernelpot.gp import assembly
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert not assembly.kernels_compiled()
    assembly.announce_compilation(True)
    assert capsys.readouterr().err == ("kernelpot: compiling kernels (first run only; a few minutes, "
                                       "cached for later runs)\n")
    assembly.announce_compilation(False)
    assert capsys.readouterr().err == ""
    # numba's index files for every kernel module (as numba names them): nothing to say
    tag = f"py{_sys.version_info.major}{_sys.version_info.minor}"
    mods = {"_soap_kernels", "neighbors"} | {m.rsplit(".", 1)[1] for m in _sys.modules
                                            if m.startswith("kernelpot.descriptors._") and "kernels" in m}
    for mod in mods:
        (tmp_path / f"{mod}.f-1.{tag}.nbi").write_bytes(b"")
    assert assembly.kernels_compiled()
    assembly.announce_compilation(True)
    assert capsys.readouterr().err == ""


def test_first_run_compiles_step_by_step_with_progress(monkeypatch, capsys):
    """Without a numba cache, fit compiles the kernels before its first phase: one line per finished
    step and, while a step runs, a line every few seconds (here every 0.01 s), so it never looks hung."""
    import time
    import kernelpot
    from kernelpot.gp import assembly
    monkeypatch.setattr(assembly, "kernels_compiled", lambda: False)
    with assembly._Ticker(True, "working", every=0.01):
        time.sleep(0.1)
    ticks = capsys.readouterr().err.splitlines()
    assert len(ticks) >= 3 and all(t.startswith("kernelpot:   ... working (") for t in ticks)
    assembly.announce_compilation(True, kernelpot.SOAP(species=[29], r_cut=4.0))
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("kernelpot: compiling kernels (first run only")
    import re
    done = [e for e in err if e.startswith("kernelpot: compiled ")]
    assert len(done) == 2
    assert re.fullmatch(r"kernelpot: compiled 1/2: neighbour lists \(\d+ s\)", done[0])
    assert re.fullmatch(r"kernelpot: compiled 2/2: SOAP features and derivatives \(\d+ s\)", done[1])
    assert err[-1].startswith("kernelpot: kernels compiled in ")
    assembly.announce_compilation(False, kernelpot.SOAP(species=[29]))
    assert capsys.readouterr().err == ""


def test_predict_refuses_to_overwrite_its_input(fitted_model, tmp_path, capsys):
    """``predict -o`` the input file would replace the reference labels with predictions."""
    import hashlib
    data = tmp_path / "mydata.xyz"
    data.write_bytes(Path(TEST).read_bytes())
    before = hashlib.md5(data.read_bytes()).hexdigest()
    line = _one_line_error(*_run(["predict", str(fitted_model), str(data), "-o", str(data)], capsys))
    assert "input file" in line
    assert hashlib.md5(data.read_bytes()).hexdigest() == before


def test_no_output_replaces_an_input_or_takes_another_formats_name(fitted_model, tmp_path, capsys):
    """Every output option is checked before any work: a model file replaced by predictions, a training
    file by a PNG, or extxyz under a .db name would each destroy or mislabel data (found by a tester)."""
    import hashlib
    model = tmp_path / "m.npz"
    model.write_bytes(Path(fitted_model).read_bytes())
    train = tmp_path / "train.xyz"
    train.write_bytes(Path(TEST).read_bytes())
    digest = {p: hashlib.md5(p.read_bytes()).hexdigest() for p in (model, train)}
    cases = [(["predict", str(model), str(train), "-o", str(model)], "is the model file"),
             (["predict", str(model), str(train), "-o", str(tmp_path / "p.db")], "extended XYZ"),
             (["fit", str(train), "-o", str(tmp_path / "m.xyz")], "a model file (.npz)"),
             (["fit", str(train), "-o", str(tmp_path)], "is a folder; give a model file name"),
             (["screen", str(train), "--plot", str(train)], "is the training file"),
             (["screen", str(train), "--plot", str(tmp_path / "influence.txt")], ".png")]
    for argv, want in cases:
        line = _one_line_error(*_run(argv, capsys))
        assert want in line, (argv, line)
    for p, d in digest.items():
        assert hashlib.md5(p.read_bytes()).hexdigest() == d
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "train.xyz"]


def test_predict_errors_name_file_and_frame(fitted_model, tmp_path, capsys):
    import ase.io
    frames = ase.io.read(TEST, ":3")
    for a in frames:
        a.calc = None                       # structures to predict, no labels
    frames[1].positions[0, 0] = np.nan
    bad = tmp_path / "nan.xyz"
    ase.io.write(bad, frames)
    line = _one_line_error(*_run(["predict", str(fitted_model), str(bad), "-o", str(tmp_path / "p.xyz")], capsys))
    assert "nan.xyz: frame 1" in line and "not finite" in line


def test_screen_refuses_a_model_fitted_on_other_data(fitted_model, capsys):
    """The leave-one-out of a model is about its own training set: another file is an error, said in one line."""
    line = _one_line_error(*_run(["screen", TEST, "--model", str(fitted_model)], capsys))
    assert "was fitted on" in line and "structures" in line


def test_eval_refuses_unlabelled_frames(fitted_model, tmp_path, capsys):
    import ase.io
    frames = ase.io.read(TEST, ":2")
    for a in frames:
        a.calc = None
    bare = tmp_path / "bare.xyz"
    ase.io.write(bare, frames)
    line = _one_line_error(*_run(["eval", str(fitted_model), str(bare)], capsys))
    assert "no reference labels" in line


def test_mlearn_record_with_wrong_num_atoms_stops_fit_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """A record whose num_atoms disagrees with its sites: one error line naming file, record and field; no fit,
    no model file."""
    import json
    monkeypatch.setattr(kernelpot.SparseGP, "fit", lambda *a, **k: pytest.fail("fitted on an inconsistent file"))
    item = {"structure": {"lattice": {"matrix": [[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]]},
                          "sites": [{"species": [{"element": "Si", "occu": 1}], "xyz": [0, 0, 0]},
                                    {"species": [{"element": "Si", "occu": 1}], "xyz": [1.5, 1.5, 1.5]}]},
            "outputs": {"energy": -10.0, "forces": [[0.1, 0, 0], [-0.1, 0, 0]],
                        "virial_stress": [1, 2, 3, 0, 0, 0]},
            "num_atoms": 2}
    data = tmp_path / "si.json"
    data.write_text(json.dumps([item, dict(item, num_atoms=3)]))
    out = tmp_path / "m.npz"
    line = _one_line_error(*_run(["fit", str(data), "-o", str(out)], capsys))
    assert "si.json: frame 1: num_atoms = 3" in line and "2 sites" in line, line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["si.json"]


def test_fit_checks_the_test_file_elements_before_fitting(small_train, tmp_path, capsys):
    """A test structure with an element the training file lacks was found only after the whole fit, with a
    message that did not name the test file; nothing may be written."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    alloy = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((1, 1, 2))
    alloy.numbers[[1, 4]] = [46, 79]
    alloy.calc = EMT()
    alloy.get_potential_energy(), alloy.get_forces()
    test = tmp_path / "alloy_test.xyz"
    kernelpot.write(test, [kernelpot.read(TEST)[0], alloy])
    out = tmp_path / "m.npz"
    line = _one_line_error(*_run(["fit", str(small_train), "--test", str(test), "-o", str(out), "--quiet"], capsys))
    assert f"{test}: 1 structure(s) (frames 1) contain ['Pd', 'Au'], which {small_train} does not" in line
    assert "nothing was fitted" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alloy_test.xyz"]


def test_bad_thread_setting_is_named_as_itself(fitted_model, capsys, monkeypatch):
    monkeypatch.setenv("KERNELPOT_NUM_THREADS", "two")
    line = _one_line_error(*_run(["eval", str(fitted_model), TEST], capsys))
    assert line == "kernelpot: error: KERNELPOT_NUM_THREADS='two': expected an integer >= 1 (or unset for the default)"


@pytest.mark.parametrize("command", ["eval", "audit"])
def test_an_element_the_model_lacks_is_one_short_line_naming_the_file(fitted_model, tmp_path, capsys, command):
    """Six alloy frames gave the same message six times ('predict: 6 problem(s)...'); audit did not name the file."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    frames = []
    for k in range(6):
        a = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((1, 1, 2))
        a.numbers[[1, 4]] = [46, 79]
        a.rattle(0.02, seed=k)
        a.calc = EMT()
        a.get_potential_energy(), a.get_forces(), a.get_stress()
        frames.append(a)
    path = tmp_path / "alloy.xyz"
    kernelpot.write(path, frames)
    argv = ["eval", str(fitted_model), str(path)] if command == "eval" else ["audit", str(path), "--model",
                                                                             str(fitted_model)]
    line = _one_line_error(*_run(argv, capsys))
    assert line.startswith(f"kernelpot: error: {path}: 6 problem(s)") and "predict" not in line
    assert line.count("not trained on") == 1 and "6 frames [0, 1, 2, 3, 4, 5]" in line


def test_interrupt_is_one_line_and_leaves_no_file(small_train, tmp_path, monkeypatch, capsys):
    """Ctrl-C during a fit printed a 20-line traceback; it is one line, exit code 130 (the shell's for SIGINT),
    and the model file being written is not left behind, half or whole."""
    import kernelpot.modelfile as mf

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(mf.np, "savez", interrupted)
    monkeypatch.setattr(mf.np, "savez_compressed", interrupted)
    out = tmp_path / "m.npz"
    capsys.readouterr()
    assert main(["fit", str(small_train), "-o", str(out), "--n-sparse", "20", "--quiet"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "kernelpot: interrupted; no output file was left half-written"
    assert "Traceback" not in "\n".join(err)
    assert list(tmp_path.iterdir()) == []
