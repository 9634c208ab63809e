"""Model files: one ``.npz`` with a JSON header, readable without pickle.

Layout: the npz holds the arrays of the fitted model and one entry
``header`` (a unicode string) with the JSON document::

    {"format": "kernelpot-model", "version": 1, "kernelpot_version": "...",
     "params": {...SparseGP constructor arguments...},
     "descriptor": {...SOAP parameters...}, "baseline": {...} or null,
     "fitted": {scalars: delta_, noise_, e0_, mean_, species_, noise_groups_, ...}}

This module knows the container, not the model: :meth:`SparseGP.save` hands
it the model's state (header and arrays) and :meth:`SparseGP.load` builds the
model from what :func:`read_model_file` returns, so the model layer never
depends on anything built on it.

Writing is atomic (a temporary file renamed into place: a failed write never
destroys the previous file).  Reading uses ``allow_pickle=False`` (a file can
never execute code), reads only the known members, checks every member's
shape and dtype from its npy header before reading its data (a small file
cannot make kernelpot allocate gigabytes), and range-checks the settings.
A missing, truncated or corrupted file, a file of another format or a newer
format version, or inconsistent contents raise ``ValueError`` naming the file.
"""

from __future__ import annotations

import json
import math
import numbers
import zipfile
from pathlib import Path

import numpy as np

from kernelpot._version import __version__
from kernelpot.descriptors.soap import LIMITS as SOAP_LIMITS
from kernelpot.io.files import atomic_write

__all__ = ["FORMAT", "VERSION", "write_model_file", "read_model_file", "jsonable"]

FORMAT = "kernelpot-model"
VERSION = 1
_MAX_HEADER = 64 * 2**20
# settings a loaded file may hold: beyond these a descriptor would need absurd memory
_DESCRIPTOR_LIMITS = SOAP_LIMITS
_MAX_SPARSE = 10**6
_MAX_RATIO = 200  # largest uncompressed / compressed size of a member (deflate reaches ~1000 on zeros)


def jsonable(d: dict) -> dict:
    """A parameter dict with numpy scalars and arrays (and any other real number, e.g. a Fraction) turned into JSON types."""
    out = {}
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, (bool, np.bool_)):
            v = bool(v)
        elif isinstance(v, numbers.Integral):
            v = int(v)
        elif isinstance(v, numbers.Real):
            v = float(v)
        elif isinstance(v, (list, tuple)):
            v = [int(x) if isinstance(x, np.integer) else x for x in v]
        out[k] = v
    return out


def write_model_file(path, header: dict, arrays: dict) -> Path:
    """Write ``header`` (JSON-able) and ``arrays`` to ``path`` atomically.

    ``.npz`` is appended when ``path`` has another ending (as numpy does).

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ValueError
        If the folder does not exist or is not writable (checked before writing).
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = Path(str(path) + ".npz")
    full = {"format": FORMAT, "version": VERSION, "kernelpot_version": __version__, **header}
    with atomic_write(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, header=np.array(json.dumps(full)), **arrays)
    return path


def _fail(path, why):
    return ValueError(f"cannot read model file {str(path)!r}: {why}")


def _member_header(zf, name):
    """Shape and dtype of npz member ``name`` from its npy header, without reading its data."""
    with zf.open(name + ".npy") as fh:
        version = np.lib.format.read_magic(fh)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in reader:
            raise ValueError(f"unsupported npy version {version}")
        shape, _fortran, dtype = reader[version](fh)
        offset = fh.tell()
    return shape, dtype, offset


def _check_sizes(path, zf, meta):
    """Refuse, before any allocation, members whose declared size their stored bytes cannot hold.

    The npy header's shape decides what numpy allocates; it must equal the
    bytes the member holds (the zip directory's uncompressed size), and that
    size must be one deflate can produce from the compressed bytes on disk
    (a model's arrays compress by a few times; a file of zeros by ~1000).
    """
    total = 0
    for n, (shape, dtype, offset) in meta.items():
        info = zf.getinfo(n + ".npy")
        declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        held = info.file_size - offset
        if declared != held:
            raise _fail(path, f"array {n!r} declares shape {tuple(shape)} ({declared} bytes) but holds "
                              f"{held} bytes")
        if info.compress_type != zipfile.ZIP_STORED and held > _MAX_RATIO * info.compress_size + 2**16:
            raise _fail(path, f"array {n!r} claims {held} bytes from {info.compress_size} compressed bytes "
                              f"(ratio > {_MAX_RATIO}); a model's arrays are not that compressible")
        total += info.compress_size
    size = path.stat().st_size
    if total > size:
        raise _fail(path, f"its members claim {total} compressed bytes but the file has {size}")


def _max_sparse(path, header) -> int:
    """Largest number of sparse points the header's settings allow (n_sparse per species)."""
    params = header.get("params") or {}
    species = (header.get("fitted") or {}).get("species_") or []
    if params.get("sparse_points") is not None:
        return len(params["sparse_points"])
    n_sparse = params.get("n_sparse")
    if n_sparse == "auto":  # grown by the evidence within a memory budget: only the file-wide bound applies
        return _MAX_SPARSE
    if not isinstance(n_sparse, int) or isinstance(n_sparse, bool) or not 1 <= n_sparse <= _MAX_SPARSE:
        raise _fail(path, f"n_sparse = {n_sparse!r} is outside [1, {_MAX_SPARSE}]")
    return n_sparse * max(len(species), 1)


def _n_extra(path, header) -> int:
    """Further SOAP descriptors of a kernel sum the header describes (0 for one SOAP)."""
    extra = header.get("extra_descriptors", [])
    if not isinstance(extra, list) or len(extra) > 16:
        raise _fail(path, "its further descriptors ('extra_descriptors') are not a list of up to 16 settings")
    return len(extra)


def _check_settings(path, header):
    desc = header.get("descriptor")
    if not isinstance(desc, dict):
        raise _fail(path, "the header has no descriptor settings")
    for d in [desc] + list(header.get("extra_descriptors", [])):
        if not isinstance(d, dict):
            raise _fail(path, "the header's descriptor settings are not a dict")
        for key, (lo, hi) in _DESCRIPTOR_LIMITS.items():
            v = d.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
                raise _fail(path, f"descriptor setting {key} = {v!r} is outside [{lo}, {hi}]")
    fitted = header.get("fitted")
    if not isinstance(fitted, dict):
        raise _fail(path, "the header has no fitted state")
    scales = fitted.get("sparse_scales_", [])
    if not (isinstance(scales, list) and len(scales) == _n_extra(path, header)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 1e-6 <= v <= 1e6 for v in scales)):
        raise _fail(path, f"its kernel-sum scales {scales!r} are not one number in [1e-6, 1e6] per further "
                          "descriptor")
    for key in ("delta_", "log_marginal_likelihood_"):
        if not isinstance(fitted.get(key), (int, float)) or not math.isfinite(fitted[key]):
            raise _fail(path, f"fitted value {key} = {fitted.get(key)!r} is not a finite number")
    if fitted["delta_"] <= 0:
        raise _fail(path, f"fitted value delta_ = {fitted['delta_']!r} must be > 0")
    zeta = (header.get("params") or {}).get("zeta")
    if not isinstance(zeta, (int, float)) or isinstance(zeta, bool) or not 1 <= zeta <= 20:
        raise _fail(path, f"parameter zeta = {zeta!r} is outside [1, 20]")
    noise = fitted.get("noise_")
    if not isinstance(noise, dict) or not all(isinstance(v, (int, float)) and v > 0 and math.isfinite(v)
                                              for v in noise.values()):
        raise _fail(path, f"fitted noise {noise!r} is not a dict of positive numbers")


def read_model_file(path, names) -> tuple[dict, dict]:
    """Header and the arrays ``names`` of a model file, checked before they are read.

    Parameters
    ----------
    path : str or Path
        The file (``.npz`` is tried as well when ``path`` does not exist).
    names : sequence of str
        Arrays the model needs; any other member is ignored, never read.

    Returns
    -------
    header : dict
    arrays : dict of ndarray

    Raises
    ------
    ValueError
        If the file is missing, truncated or corrupted, not a kernelpot
        model, of a newer format version, has settings out of range, or has
        arrays missing, of the wrong dtype or of shapes that do not fit
        together (``M`` sparse points: ``sparse_X`` (M, F), ``Lmm``/``Lc``/
        ``Kmm`` (M, M), ``a``/``alpha_``/``sparse_index_``/``sparse_numbers`` (M,)).
    """
    path = Path(path)
    if not path.exists() and Path(str(path) + ".npz").exists():
        path = Path(str(path) + ".npz")
    if path.is_dir():
        raise _fail(path, "it is a folder, not a model file")
    if not path.is_file():
        raise _fail(path, "no such file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head[:2] != b"PK":  # every zip archive (an npz, truncated or not) starts with PK
            raise _fail(path, "it is not a model file (a kernelpot model is an .npz archive; is it a structure "
                              "file given in the model's place?)") from exc
        raise _fail(path, f"it is truncated or corrupted (not a readable npz archive: {exc})") from exc
    with zf:
        members = {n[:-4]: zf.getinfo(n) for n in zf.namelist() if n.endswith(".npy")}
        if "header" not in members:
            raise _fail(path, "no 'header' entry, so it is not a kernelpot model")
        if members["header"].file_size > _MAX_HEADER:
            raise _fail(path, f"its header is {members['header'].file_size} bytes, more than a model header can be")
        try:
            with zf.open("header.npy") as fh:
                header = json.loads(str(np.lib.format.read_array(fh, allow_pickle=False)))
        except json.JSONDecodeError as exc:
            raise _fail(path, f"its header is not valid JSON ({exc})") from exc
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as exc:
            raise _fail(path, f"it is truncated or corrupted ({exc})") from exc
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            fmt = header.get("format") if isinstance(header, dict) else None
            raise _fail(path, f"format is {fmt!r}, expected {FORMAT!r}")
        if int(header.get("version", -1)) > VERSION:
            raise _fail(path, f"it has format version {header['version']}, newer than this kernelpot reads "
                              f"({VERSION}); upgrade kernelpot")
        if _n_extra(path, header) and "sparse_X" in names:  # a kernel sum: its further descriptors' features
            names = list(names) + ["sparse_X_extra"]
        missing = set(names) - set(members)
        if missing:
            raise _fail(path, f"arrays {sorted(missing)} are missing")
        _check_settings(path, header)
        try:
            sized = {n: _member_header(zf, n) for n in names}
            meta = {n: m[:2] for n, m in sized.items()}
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, SyntaxError) as exc:
            raise _fail(path, f"it is truncated or corrupted ({exc})") from exc
        _check_shapes(path, meta, len(header["fitted"].get("offset_species_", [])),
                      max_sparse=_max_sparse(path, header), n_pair=_pair_columns(path, header),
                      extra_index=_extra_index(path, header))
        _check_sizes(path, zf, sized)
        arrays = {}
        try:
            for n in names:
                with zf.open(n + ".npy") as fh:
                    arrays[n] = np.lib.format.read_array(fh, allow_pickle=False)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise _fail(path, f"it is truncated or corrupted ({exc})") from exc
    for n, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise _fail(path, f"array {n!r} holds NaN or inf")
    return header, arrays


def _pair_columns(path, header) -> int:
    """Columns of the two-body term the header describes (0 without one), bounded."""
    pair = header.get("fitted", {}).get("pair_")
    if pair is None:
        return 0
    try:
        n = len(pair["pairs"]) * len(pair["grid"])
    except (KeyError, TypeError):
        raise _fail(path, "its two-body term has no 'pairs' or 'grid'") from None
    if not 0 < n <= 10**5:
        raise _fail(path, f"its two-body term has {n} columns, expected 1 to 100000")
    return n


def _extra_index(path, header) -> list:
    """Each further SOAP block's sparse environments (rows of ``sparse_X``) the header lists, as lists of ints."""
    n = _n_extra(path, header)
    ix = header["fitted"].get("sparse_extra_index_", [])
    if not (isinstance(ix, list) and len(ix) == n and all(
            isinstance(i, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in i) for i in ix)):
        raise _fail(path, "its kernel-sum blocks ('sparse_extra_index_') are not one list of environment "
                          "indices per further descriptor")
    return ix


def _check_shapes(path, meta, n_offsets=0, max_sparse=None, n_pair=0, extra_index=()):
    for n, (shape, dtype) in meta.items():
        if dtype.hasobject or dtype.kind not in "fiu":
            raise _fail(path, f"array {n!r} has dtype {dtype}, expected numbers")
    if "sparse_numbers" not in meta:
        return
    M = meta["sparse_numbers"][0][0] if len(meta["sparse_numbers"][0]) == 1 else -1
    limit = _MAX_SPARSE if max_sparse is None else min(max_sparse, _MAX_SPARSE)
    if not 0 < M <= limit:
        raise _fail(path, f"sparse_numbers has shape {meta['sparse_numbers'][0]}, expected (M,) with "
                          f"0 < M <= {limit} (n_sparse x species in the header)")
    if not (isinstance(n_offsets, int) and 0 <= n_offsets <= 200):
        raise _fail(path, f"{n_offsets!r} offset parameters, expected one per species")
    for ix in extra_index:
        if any(b <= a for a, b in zip(ix, ix[1:])) or (ix and not (0 <= ix[0] and ix[-1] < M)):
            raise _fail(path, f"a kernel-sum block lists environments outside 0..{M - 1} or out of order")
    # kernel columns: sparse environments (and each further SOAP block's), then the two-body term's
    K = M + sum(len(ix) for ix in extra_index) + n_pair
    W = K + n_offsets  # whitened weights: kernel columns, then per-species offsets
    expect = {"Lmm": (K, K), "Kmm": (K, K), "Lc": (W, W), "a": (W,), "alpha_": (W,), "sparse_index_": (M,)}
    for n, shp in expect.items():
        if n in meta and tuple(meta[n][0]) != shp:
            raise _fail(path, f"array {n!r} has shape {tuple(meta[n][0])}, expected {shp} for {M} sparse points")
    if "sparse_X" in meta:
        shp = tuple(meta["sparse_X"][0])
        if len(shp) != 2 or shp[0] != M or shp[1] > 10**6:
            raise _fail(path, f"array 'sparse_X' has shape {shp}, expected ({M}, n_features)")
    if "sparse_X_extra" in meta:
        shp = tuple(meta["sparse_X_extra"][0])
        if len(shp) != 1 or shp[0] > 10**9:
            raise _fail(path, f"array 'sparse_X_extra' has shape {shp}, expected one flat array")
