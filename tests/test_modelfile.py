"""Model files: atomic writes, bounded and shape-checked reading, clear errors naming the file."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
import zipfile

import numpy as np
import pytest
from sklearn.base import clone

import kernelpot
from kernelpot import SparseGP


@pytest.fixture(scope="module")
def saved(cuau_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.npz"
    cuau_model.save(path)
    return path


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {n[:-4]: zf.read(n) for n in zf.namelist()}


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _write_members(path, members, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name + ".npy", data)


def _header(saved):
    return json.loads(str(np.load(io.BytesIO(_members(saved)["header"]), allow_pickle=False)))


def _with_header(saved, path, change):
    members = _members(saved)
    h = _header(saved)
    change(h)
    members["header"] = _npy(np.array(json.dumps(h)))
    _write_members(path, members)
    return path


def test_round_trip_predicts_the_same(cuau_model, cuau_frames, saved):
    loaded = kernelpot.load(saved)
    a, b = cuau_model.predict_frame(cuau_frames[0]), loaded.predict_frame(cuau_frames[0])
    assert a["energy"] == pytest.approx(b["energy"], abs=1e-10)
    np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-10)


def _no_temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".part")]


def test_failed_save_keeps_the_old_file(cuau_model, tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    cuau_model.save(path)
    before = path.read_bytes()

    def partial_then_fail(file, *args, **kwargs):
        with open(file, "wb") as fh:
            fh.write(b"PK\x03\x04 half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", partial_then_fail)
    with pytest.raises(OSError, match="No space left"):
        cuau_model.save(path)
    assert path.read_bytes() == before
    assert _no_temp_files(tmp_path) == []
    monkeypatch.undo()
    kernelpot.load(path)                                       # still a good model


def test_save_to_missing_folder_fails_before_writing(cuau_model, tmp_path):
    with pytest.raises(ValueError, match="folder .*nodir.* does not exist"):
        cuau_model.save(tmp_path / "nodir" / "m.npz")


def test_forged_huge_array_is_refused_without_allocating(saved, tmp_path):
    """A small file whose npy headers claim 20000 x 20000 arrays: refused before numpy allocates."""
    members = _members(saved)
    M = 20000
    fake = {"sparse_numbers": (M,), "sparse_index_": (M,), "a": (M,), "alpha_": (M,),
            "Lmm": (M, M), "Lc": (M, M), "Kmm": (M, M), "sparse_X": (M, 10)}
    for name, shape in fake.items():
        dtype = np.dtype(np.int64) if name in ("sparse_numbers", "sparse_index_") else np.dtype(float)
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                    "fortran_order": False, "shape": shape})
        members[name] = b"\x93NUMPY" + head.getvalue()[6:] + b"\0" * 64
    path = tmp_path / "forged.npz"
    _write_members(path, members)
    assert path.stat().st_size < 1_000_000
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"cannot read model file '.*forged\.npz'"):
        SparseGP.load(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20


def test_array_larger_than_its_bytes_is_refused(saved, tmp_path):
    """Consistent shapes but one member's header claims more data than it holds."""
    members = _members(saved)
    lc = np.load(io.BytesIO(members["Lc"]))
    members["Lc"] = _npy(lc)[:-8 * lc.shape[0]]                # truncated data, intact header
    path = tmp_path / "short.npz"
    _write_members(path, members)
    with pytest.raises(ValueError, match=r"short\.npz.*array 'Lc' declares shape"):
        SparseGP.load(path)


def test_highly_compressible_huge_member_is_refused(saved, tmp_path):
    """Consistent shapes for 3000 sparse points, all zeros: 216 MB of arrays in a file of < 1 MB."""
    members = _members(saved)
    h = _header(saved)
    M = 3000
    pair = h["fitted"].get("pair_")
    K = M + (len(pair["pairs"]) * len(pair["grid"]) if pair else 0)  # kernel columns: SOAP, then two-body
    W = K + len(h["fitted"].get("offset_species_", []))
    h["params"]["n_sparse"] = M
    members["header"] = _npy(np.array(json.dumps(h)))
    F = np.load(io.BytesIO(members["sparse_X"])).shape[1]
    shapes = {"sparse_numbers": (M,), "sparse_index_": (M,), "a": (W,), "alpha_": (W,), "sparse_X": (M, F),
              "Lmm": (K, K), "Kmm": (K, K), "Lc": (W, W)}
    for name, shape in shapes.items():
        members[name] = _npy(np.zeros(shape, dtype=int if name in ("sparse_numbers", "sparse_index_") else float))
    path = tmp_path / "zeros.npz"
    _write_members(path, members)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ValueError, match=r"zeros\.npz.*not that compressible"):
        SparseGP.load(path)


@pytest.mark.parametrize("where,key,value", [
    ("descriptor", "r_cut", 1e6),
    ("descriptor", "n_max", 10**6),
    ("descriptor", "l_max", -1),
    ("descriptor", "atom_sigma", float("nan")),
    ("params", "n_sparse", 10**9),
    ("fitted", "delta_", float("inf")),
])
def test_absurd_settings_are_refused(saved, tmp_path, where, key, value):
    path = _with_header(saved, tmp_path / "absurd.npz", lambda h: h[where].__setitem__(key, value))
    with pytest.raises(ValueError, match=rf"absurd\.npz.*{key}"):
        SparseGP.load(path)


@pytest.mark.parametrize("change,key", [
    ({"radial_scaling": -1.0}, "radial_scaling"),
    ({"radial_scaling": "x"}, "radial_scaling"),
    ({"radial_scaling": 1e-300}, "radial_scaling"),
    ({"radial_scaling": 2.0, "radial_exponent": 1e6}, "radial_exponent"),
    ({"cutoff_width": -1.0}, "cutoff_width"),
    ({"center_weight": float("nan")}, "center_weight"),
])
def test_bad_descriptor_settings_are_named_at_load(saved, tmp_path, change, key):
    """Refused by load, with the file's name: not at the first prediction, where the CLI blamed the data."""
    path = _with_header(saved, tmp_path / "forged.npz", lambda h: h["descriptor"].update(change))
    with pytest.raises(ValueError, match=rf"forged\.npz.*{key}"):
        SparseGP.load(path)


def test_unscaled_soap_is_saved_in_the_layout_older_versions_read(saved, cuau_model, cuau_frames, tmp_path):
    """No radial-scaling keys unless scaling is on (kernelpot before it passes every key to SOAP())."""
    assert not {"radial_scaling", "radial_exponent"} & set(_header(saved)["descriptor"])
    scaled = clone(cuau_model).set_params(descriptor__radial_scaling=3.0).fit(cuau_frames)
    scaled.save(tmp_path / "scaled.npz")
    desc = _header(tmp_path / "scaled.npz")["descriptor"]
    assert desc["radial_scaling"] == 3.0 and desc["radial_exponent"] == 4.0
    loaded = SparseGP.load(tmp_path / "scaled.npz")
    np.testing.assert_allclose(loaded.predict(cuau_frames[:2], return_std=False)["energy"],
                               scaled.predict(cuau_frames[:2], return_std=False)["energy"], rtol=0, atol=1e-9)


def test_any_real_setting_is_saved(cuau_model, cuau_frames, tmp_path):
    """A Fraction (a real number validation accepts) once failed save on JSON after the whole fit."""
    from fractions import Fraction
    model = clone(cuau_model).set_params(descriptor__r_cut=Fraction(9, 2)).fit(cuau_frames)
    model.save(tmp_path / "fraction.npz")
    assert _header(tmp_path / "fraction.npz")["descriptor"]["r_cut"] == 4.5
    np.testing.assert_allclose(SparseGP.load(tmp_path / "fraction.npz").predict(cuau_frames[:1], return_std=False)["energy"],
                               model.predict(cuau_frames[:1], return_std=False)["energy"], rtol=0, atol=1e-9)


def test_missing_member_and_corrupt_files(saved, tmp_path):
    members = _members(saved)
    del members["alpha_"]
    _write_members(tmp_path / "missing.npz", members)
    with pytest.raises(ValueError, match=r"missing\.npz.*\['alpha_'\] are missing"):
        SparseGP.load(tmp_path / "missing.npz")
    (tmp_path / "trunc.npz").write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"trunc\.npz.*truncated or corrupted"):
        SparseGP.load(tmp_path / "trunc.npz")
    (tmp_path / "text.npz").write_text("not a model")
    with pytest.raises(ValueError, match=r"text\.npz"):
        SparseGP.load(tmp_path / "text.npz")
    members = _members(saved)
    members["header"] = _npy(np.array("{not json"))
    _write_members(tmp_path / "badjson.npz", members)
    with pytest.raises(ValueError, match=r"badjson\.npz.*not valid JSON"):
        SparseGP.load(tmp_path / "badjson.npz")
    members = _members(saved)
    members["Lc"] = _npy(np.array(["a", "b"]))
    _write_members(tmp_path / "strings.npz", members)
    with pytest.raises(ValueError, match=r"strings\.npz.*'Lc' has dtype"):
        SparseGP.load(tmp_path / "strings.npz")


def test_old_file_with_one_std_scale_still_loads(saved, tmp_path, cuau_frames):
    """Files written by 0.1.0 stored one std scale per kind instead of two weights."""
    def old(h):
        h["fitted"].pop("std_weights_", None)
        h["fitted"]["std_scale_"] = {"forces": 2.0}
    path = _with_header(saved, tmp_path / "old.npz", old)
    model = SparseGP.load(path)
    assert model.std_weights_ == {"forces": (4.0, 4.0)}
    assert np.isfinite(model.predict_frame(cuau_frames[0])["energy"])
    os.remove(path)


@pytest.mark.parametrize("what", ["nan_alpha", "nan_Lc", "negative_delta", "huge_zeta"])
def test_forged_values_are_refused(saved, tmp_path, what):
    """Shapes were checked; values too: NaN/inf arrays, delta <= 0 and absurd zeta raise naming the file."""
    import json
    from kernelpot import load
    with np.load(saved, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    header = json.loads(str(data["header"]))
    if what == "nan_alpha":
        data["alpha_"] = data["alpha_"].copy()
        data["alpha_"][0] = np.nan
    elif what == "nan_Lc":
        data["Lc"] = data["Lc"].copy()
        data["Lc"][1, 0] = np.inf
    elif what == "negative_delta":
        header["fitted"]["delta_"] = -1.0
    else:
        header["params"]["zeta"] = 1e9
    data["header"] = np.array(json.dumps(header))
    bad = tmp_path / "bad.npz"
    np.savez_compressed(bad, **data)
    with pytest.raises(ValueError, match="bad.npz"):
        load(bad)
