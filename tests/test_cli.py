"""The command line on the shipped data: fit, predict, eval."""

from pathlib import Path

import numpy as np
import pytest

import kernelpot
from kernelpot.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
    import contextlib
    import io
    out = tmp_path_factory.mktemp("cli") / "cu.npz"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["fit", str(DATA / "emt_cu_train.xyz"), "--test", str(DATA / "emt_cu_test.xyz"),
                   "-o", str(out), "--n-sparse", "100", "--quiet"])
    assert rc == 0
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def fitted_model(fit_run):
    return fit_run[0]


def test_fit_writes_model_and_parity_plot(fitted_model, capsys):
    assert fitted_model.exists()
    png = Path(str(fitted_model.with_suffix("")) + "_parity.png")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    assert main(["predict", str(fitted_model), str(DATA / "emt_cu_test.xyz"), "-o", str(out), "--quiet"]) == 0
    pred = kernelpot.read(out)
    ref = kernelpot.read(DATA / "emt_cu_test.xyz")
    assert len(pred) == len(ref)
    model = kernelpot.load(fitted_model)
    direct = model.predict_frame(ref[0])
    assert pred[0].get_potential_energy() == pytest.approx(direct["energy"], rel=1e-10)
    # extxyz stores per-atom arrays with 8 decimals
    np.testing.assert_allclose(pred[0].arrays["forces_std"], direct["forces_std"], rtol=0, atol=1e-8)
    assert pred[0].info["energy_std"] == pytest.approx(direct["energy_std"], rel=1e-8)


def test_eval_and_help(fitted_model, capsys):
    assert main(["eval", str(fitted_model), str(DATA / "emt_cu_test.xyz")]) == 0
    out = capsys.readouterr().out
    assert "forces" in out and "coverage" in out
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "meV/atom" in capsys.readouterr().out


def test_bad_model_file_message(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="truncated or corrupted"):
        main(["eval", str(bad), str(DATA / "emt_cu_test.xyz")])


def test_audit_reports_mixed_settings_and_offsets(fitted_model, tmp_path, capsys):
    frames = kernelpot.read(DATA / "emt_cu_test.xyz")
    for i, a in enumerate(frames):
        a.info["encut"] = 520.0 if i % 2 else 400.0
    path = tmp_path / "mixed.xyz"
    kernelpot.write(path, frames)
    assert main(["audit", str(path), "--model", str(fitted_model)]) == 0
    out = capsys.readouterr().out
    assert "encut" in out and "400" in out and "520" in out
