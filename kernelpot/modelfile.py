"""Model files: one ``.npz`` with a JSON header, readable without pickle.

Layout: the npz holds the arrays of the fitted model and one entry
``header`` (a unicode string) with the JSON document::

    {"format": "kernelpot-model", "version": 1, "kernelpot_version": "...",
     "params": {...SparseGP constructor arguments...},
     "descriptor": {...SOAP parameters...}, "baseline": {...} or null,
     "fitted": {scalars: delta_, noise_, e0_, mean_, species_, noise_groups_, ...}}

``np.load(..., allow_pickle=False)`` is used, so a file can never execute code.
Reading a truncated or corrupted file, a file of another format, or a file
written by a newer format version raises ``ValueError`` saying which.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "kernelpot-model"
VERSION = 1

_ARRAYS = ("alpha_", "theta_", "sparse_index_")


def save_model(model, path) -> None:
    """Write a fitted SparseGP to ``path`` (``.npz`` appended by numpy if missing)."""
    from kernelpot import __version__
    model._check_fitted()
    params = model.get_params(deep=False)
    params.pop("descriptor")
    params.pop("baseline")
    params.pop("client")  # a live connection, not a setting of the model
    params["sparse_points"] = None if params["sparse_points"] is None else [list(map(int, p)) for p in params["sparse_points"]]
    if isinstance(params["e0"], dict):
        params["e0"] = {str(k): float(v) for k, v in params["e0"].items()}
    header = {
        "format": FORMAT, "version": VERSION, "kernelpot_version": __version__,
        "params": params,
        "descriptor": _jsonable(model.descriptor_.get_params()),
        "baseline": None if model.baseline is None else model.baseline.to_dict(),
        "fitted": {
            "delta_": model.delta_,
            "noise_": model.noise_,
            "noise_groups_": list(model.noise_groups_),
            "e0_": {str(k): v for k, v in model.e0_.items()},
            "mean_": {str(k): v for k, v in model.mean_.items()},
            "species_": [int(z) for z in model.species_],
            "log_marginal_likelihood_": model.log_marginal_likelihood_,
            "std_weights_": {k: list(v) for k, v in getattr(model, "std_weights_", {}).items()},
        },
    }
    arrays = {k: getattr(model, k) for k in _ARRAYS}
    arrays.update(sparse_X=model.sparse_.X, sparse_numbers=model.sparse_.numbers,
                  Lmm=model._Lmm, Lc=model._Lc, Kmm=model._Kmm, a=model._a)
    np.savez_compressed(path, header=np.array(json.dumps(header)), **arrays)


def _jsonable(d):
    out = {}
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, (np.integer,)):
            v = int(v)
        elif isinstance(v, (np.floating,)):
            v = float(v)
        elif isinstance(v, (list, tuple)):
            v = [int(x) if isinstance(x, np.integer) else x for x in v]
        out[k] = v
    return out


def load_model(path):
    """Read a model written by :meth:`SparseGP.save`.

    Raises
    ------
    ValueError
        If the file is missing, truncated or corrupted, not a kernelpot model,
        or written by a newer format version.
    """
    from kernelpot.descriptors import SOAP
    from kernelpot.gp.design import SparseSet
    from kernelpot.gp.sparse import SparseGP
    path = Path(path)
    if not path.exists() and Path(str(path) + ".npz").exists():
        path = Path(str(path) + ".npz")
    if not path.exists():
        raise ValueError(f"cannot read model file {str(path)!r}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot read model file {str(path)!r}: it is truncated or corrupted "
                         f"(not a readable npz archive: {exc})") from exc
    if "header" not in data:
        raise ValueError(f"cannot read model file {str(path)!r}: no 'header' entry, so it is not a kernelpot model")
    try:
        header = json.loads(str(data["header"]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"cannot read model file {str(path)!r}: its header is not valid JSON ({exc})") from exc
    if header.get("format") != FORMAT:
        raise ValueError(f"cannot read model file {str(path)!r}: format is {header.get('format')!r}, "
                         f"expected {FORMAT!r}")
    if int(header.get("version", -1)) > VERSION:
        raise ValueError(f"cannot read model file {str(path)!r}: it has format version {header['version']}, "
                         f"newer than this kernelpot reads ({VERSION}); upgrade kernelpot")
    needed = set(_ARRAYS) | {"sparse_X", "sparse_numbers", "Lmm", "Lc", "Kmm", "a"}
    missing = needed - set(data)
    if missing:
        raise ValueError(f"cannot read model file {str(path)!r}: arrays {sorted(missing)} are missing")
    baseline = None
    if header.get("baseline") is not None:
        from kernelpot.baselines import from_dict
        baseline = from_dict(header["baseline"])
    params = dict(header["params"])
    if params.get("sparse_points") is not None:
        params["sparse_points"] = [tuple(p) for p in params["sparse_points"]]
    model = SparseGP(descriptor=SOAP(**header["descriptor"]), baseline=baseline, **params)
    fit = header["fitted"]
    model.descriptor_ = SOAP(**header["descriptor"])
    model.delta_ = float(fit["delta_"])
    model.noise_ = {k: float(v) for k, v in fit["noise_"].items()}
    model.noise_groups_ = list(fit["noise_groups_"])
    model.e0_ = {int(k): float(v) for k, v in fit["e0_"].items()}
    model.mean_ = {int(k): float(v) for k, v in fit["mean_"].items()}
    model._offset = {z: model.e0_[z] + model.mean_[z] for z in model.e0_}
    model.species_ = np.array(fit["species_"], dtype=int)
    model.log_marginal_likelihood_ = float(fit["log_marginal_likelihood_"])
    if fit.get("std_weights_"):
        model.std_weights_ = {k: (float(v[0]), float(v[1])) for k, v in fit["std_weights_"].items()}
    elif fit.get("std_scale_"):  # files written by 0.1.0 before the two-weight recalibration: one scale
        model.std_weights_ = {k: (float(v) ** 2, float(v) ** 2) for k, v in fit["std_scale_"].items()}
    for k in _ARRAYS:
        setattr(model, k, data[k])
    model.sparse_ = SparseSet(data["sparse_X"], data["sparse_numbers"])
    model._Lmm, model._Lc, model._Kmm, model._a = data["Lmm"], data["Lc"], data["Kmm"], data["a"]
    return model
