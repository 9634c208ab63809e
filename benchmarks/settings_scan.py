"""Does the evidence pick better SOAP settings?  One setting changed at a time on mlearn Si.

    python benchmarks/settings_scan.py

Fits ``SparseGP()`` and one-setting variants of it (``zeta``, ``atom_sigma``,
``r_cut``) on ``../shared/data/mlearn/Si/training.json`` and prints, per
variant, the optimised log marginal likelihood (the criterion
:func:`kernelpot.select_settings` ranks by with ``method="likelihood"``) beside
the test-set energy MAE (meV/atom; also for the two Surface structures alone)
and force-component MAE (eV/Å), best evidence first.  The question it answers
for issue 13: whether choosing descriptor settings by the evidence inside the
default fit would move the test errors, and which of them.  Results:
``benchmarks/results/settings_scan.txt``.  Run alone (each fit takes ~40 s on
2 cores; timings are not the point).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mlearn" / "Si"

VARIANTS = {
    "default": {},
    "zeta=2": {"zeta": 2.0},
    "zeta=6": {"zeta": 6.0},
    "atom_sigma=0.4": {"soap": {"atom_sigma": 0.4}},
    "atom_sigma=0.6": {"soap": {"atom_sigma": 0.6}},
    "r_cut=4.5": {"soap": {"r_cut": 4.5}},
    "r_cut=5.5": {"soap": {"r_cut": 5.5}},
}


def run(name: str, settings: dict, train, test) -> dict:
    import kernelpot
    kw = dict(settings)
    if "soap" in kw:
        kw["descriptor"] = kernelpot.SOAP(**kw.pop("soap"))
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = kernelpot.SparseGP(verbose=False, **kw).fit(train)
    fit_s = time.perf_counter() - t
    calc = model.calculator(uncertainty=False)
    e_err, f_err, surface = [], [], []
    for a in test:
        b = a.copy()
        b.calc = calc
        de = abs(b.get_potential_energy() - a.get_potential_energy()) / len(a) * 1e3
        e_err.append(de)
        if a.info.get("config_type") == "Surface":
            surface.append(de)
        f_err.append(np.abs(b.get_forces() - a.get_forces()).ravel())
    return {"name": name, "lml": model.log_marginal_likelihood_, "E_MAE": float(np.mean(e_err)),
            "E_surface": float(np.mean(surface)) if surface else float("nan"),
            "F_MAE": float(np.mean(np.concatenate(f_err))), "fit_s": fit_s}


def main() -> int:
    import kernelpot
    train = kernelpot.read(DATA / "training.json")
    test = kernelpot.read(DATA / "test.json")
    rows = []
    for name, settings in VARIANTS.items():
        rows.append(run(name, settings, train, test))
        r = rows[-1]
        print(f"{r['name']:<16} log evidence {r['lml']:10.1f}  E MAE {r['E_MAE']:5.2f} (surface {r['E_surface']:5.2f})"
              f"  F MAE {r['F_MAE']:.4f}  fit {r['fit_s']:.0f} s", flush=True)
    rows.sort(key=lambda r: -r["lml"])
    lines = ["mlearn Si, SparseGP() with one setting changed; best evidence first",
             f"{'setting':<16} {'log evidence':>12} {'E MAE':>7} {'E surface':>10} {'F MAE':>8} {'fit s':>6}",
             *[f"{r['name']:<16} {r['lml']:12.1f} {r['E_MAE']:7.2f} {r['E_surface']:10.2f} {r['F_MAE']:8.4f}"
               f" {r['fit_s']:6.0f}" for r in rows]]
    from scipy.stats import spearmanr
    rho = spearmanr([r["lml"] for r in rows], [-r["F_MAE"] for r in rows])[0]
    rho_e = spearmanr([r["lml"] for r in rows], [-r["E_MAE"] for r in rows])[0]
    lines.append(f"Spearman(log evidence, -F MAE) = {rho:.2f}; Spearman(log evidence, -E MAE) = {rho_e:.2f}")
    text = "\n".join(lines)
    print("\n" + text)
    out = ROOT / "benchmarks" / "results" / "settings_scan.txt"
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
