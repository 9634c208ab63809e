"""Compare a model's predictions with reference labels.

One function, :func:`evaluate`, used by the command line, the benchmarks and the
notebooks, so every error table in kernelpot is computed the same way:
energies per atom (meV/atom), force components (eV/Å), stress components (GPa).
"""

from __future__ import annotations

import numpy as np
from ase.units import GPa

from kernelpot.io.labels import frame_labels
from kernelpot.uq.metrics import informative

__all__ = ["evaluate", "error_table", "format_error_table", "parity_dicts"]


def evaluate(model, frames, return_std: bool = True) -> dict:
    """Predict ``frames`` and pair each prediction with its reference label.

    Returns
    -------
    dict
        ``pred`` (the dict of :meth:`SparseGP.predict`) and, for each of
        ``energy`` (per atom, eV/atom), ``forces`` (components, eV/Å), ``stress``
        (components, eV/Å^3): a dict with ``ref``, ``pred``, ``err`` and, with
        ``return_std``, ``std``, ``std_epistemic`` (same units) and ``free``
        (bool, the components whose prediction is not fixed by symmetry:
        :func:`kernelpot.uq.metrics.informative`; coverage and calibration
        are measured over these), over the frames that have that label.
    """
    frames = [frames] if hasattr(frames, "positions") else list(frames)   # one Atoms, as model.predict takes
    labels = [frame_labels(a, i) for i, a in enumerate(frames)]
    pred = model.predict(frames, return_std=return_std)
    out = {"pred": pred}
    n = pred["n_atoms"]
    have = np.array(["energy" in lab for lab in labels])
    if have.any():
        ref = np.array([lab["energy"] for lab in labels if "energy" in lab]) / n[have]
        d = {"ref": ref, "pred": pred["energy"][have] / n[have]}
        if return_std:
            d["std"] = pred["energy_std"][have] / n[have]
            d["std_epistemic"] = pred["energy_std_epistemic"][have] / n[have]
        out["energy"] = d
    fi = pred["frame_index"]
    have = np.array(["forces" in lab for lab in labels])
    if have.any():
        mask = have[fi]
        d = {"ref": np.concatenate([lab["forces"] for lab in labels if "forces" in lab]),
             "pred": pred["forces"][mask]}
        if return_std:
            d["std"] = pred["forces_std"][mask]
            d["std_epistemic"] = pred["forces_std_epistemic"][mask]
        out["forces"] = d
    have = np.array(["stress" in lab for lab in labels])
    if have.any():
        d = {"ref": np.array([lab["stress"] for lab in labels if "stress" in lab]), "pred": pred["stress"][have]}
        if return_std:
            d["std"] = pred["stress_std"][have]
            d["std_epistemic"] = pred["stress_std_epistemic"][have]
        out["stress"] = d
    for k in ("energy", "forces", "stress"):
        if k in out:
            out[k]["err"] = out[k]["pred"] - out[k]["ref"]
            if return_std:
                out[k]["free"] = informative(out[k]["std_epistemic"], k)
    return out


_UNITS = {"energy": (1000.0, "meV/atom"), "forces": (1.0, "eV/Å"), "stress": (1.0 / GPa, "GPa")}


def error_table(ev: dict) -> dict:
    """MAE and RMSE per quantity in display units (meV/atom, eV/Å, GPa)."""
    rows = {}
    for k, (f, unit) in _UNITS.items():
        if k in ev:
            e = np.ravel(ev[k]["err"]) * f
            rows[k] = {"unit": unit, "MAE": float(np.mean(np.abs(e))), "RMSE": float(np.sqrt(np.mean(e ** 2))),
                       "n": int(e.size)}
    return rows


def format_error_table(rows: dict) -> str:
    lines = [f"{'quantity':<10}{'unit':>10}{'MAE':>12}{'RMSE':>12}{'n':>9}"]
    for k, r in rows.items():
        lines.append(f"{k:<10}{r['unit']:>10}{r['MAE']:>12.4f}{r['RMSE']:>12.4f}{r['n']:>9d}")
    return "\n".join(lines)


def parity_dicts(ev: dict) -> tuple[dict, dict]:
    """``(pred, ref)`` for :func:`kernelpot.plot.parity_panel` from :func:`evaluate` output.

    Energies are already per atom, so ``n_atoms`` is one for every entry.
    """
    pred, ref = {}, {}
    for k in ("energy", "forces", "stress"):
        if k in ev:
            pred[k] = ev[k]["pred"]
            ref[k] = ev[k]["ref"]
            if "std" in ev[k]:
                pred[k + "_std"] = ev[k]["std"]
    if "energy" in ev:
        ref["n_atoms"] = np.ones(len(ev["energy"]["ref"]))
    return pred, ref
