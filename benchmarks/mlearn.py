"""Accuracy, fit cost and prediction cost on the mlearn Si and Li benchmarks, with defaults.

    python benchmarks/mlearn.py [--elements Si Li acac] [--n-sparse N] [--quick]
                                [--ablation two_body=False n_sparse=2000 ...]

``acac`` fits acetylacetone at 300 K (``../shared/data/acac/train_300K.xyz`` with the
isolated atoms) and tests on every 4th frame of ``test_MD_300K`` and ``test_MD_600K``
(energy, forces; no stress).  ``--ablation`` adds one row per setting changed from the
defaults (``name=value``, value read as a Python literal), each in its own subprocess;
``second_soap=R`` sums the default SOAP's kernel with that of a second SOAP of cut-off
``R`` Å (``descriptor=[SOAP(), SOAP(r_cut=R)]``, its scale learned); ``soap={...}`` sets
the (first) SOAP's parameters, e.g. ``soap={'n_max':12}``.

Fits ``kernelpot.SparseGP()`` exactly as a user would (no argument changed unless
``--n-sparse`` is given) on ``../shared/data/mlearn/<El>/training.json`` and
prints test-set MAE/RMSE of energies (meV/atom), force components (eV/Å) and
stress components (GPa) beside the GAP and FLARE numbers measured on this kind of
machine (``../shared/ANCHORS.md``), with fit wall time, peak resident memory of
the fitting process, and prediction cost per atom for energy + forces + stress
(with and without uncertainties) on a 54-atom and a ~1000-atom cell.

Each element runs in its own subprocess so that peak memory is that fit's.
Results are also written to ``benchmarks/results/mlearn.txt``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mlearn"

# ../shared/ANCHORS.md (E meV/atom, F eV/Å, S GPa; fit s; RSS GiB; predict ms/atom)
ANCHORS = {
    "GAP (Si)": dict(E_MAE=2.77, E_RMSE=4.40, F_MAE=0.0726, F_RMSE=0.1176, S_MAE=0.448, fit_s=469,
                     rss_GiB=3.6, pred_ms_atom=6.0),
    "FLARE (Mo)": dict(E_MAE=25.2, E_RMSE=59.1, F_MAE=0.132, F_RMSE=0.217, S_MAE=1.37, fit_s=1216,
                       rss_GiB=5.6, pred_ms_atom=float("nan")),
}


def _data(element: str, quick: bool):
    """Training frames and ``{name: test frames}``."""
    import kernelpot
    if element == "acac":
        acac = DATA.parent / "acac"
        train = kernelpot.read(acac / "train_300K.xyz")
        tests = {"300 K": kernelpot.read(acac / "test_MD_300K.xyz")[::4],
                 "600 K": kernelpot.read(acac / "test_MD_600K.xyz")[::4]}
        if quick:
            train, tests = train[::10], {k: v[::10] for k, v in tests.items()}
        return train + kernelpot.read(acac / "isolated_atoms.xyz"), tests
    train = kernelpot.read(DATA / element / "training.json")
    test = kernelpot.read(DATA / element / "test.json")
    if quick:
        train, test = train[::6], test[::3]
    return train, {"test": test}


def run_one(element: str, n_sparse: int | None, quick: bool, settings: dict | None = None) -> dict:
    import kernelpot
    from ase.build import bulk
    from kernelpot.uq.evaluation import evaluate, error_table

    train, tests = _data(element, quick)
    kw = dict(settings or {})
    soap = dict(kw.pop("soap", {}))  # settings of the (first) SOAP, e.g. soap={'n_max': 12}
    if soap:
        kw["descriptor"] = kernelpot.SOAP(**soap)
    if "second_soap" in kw:  # a kernel sum over two SOAP cut-offs (see the module docstring)
        kw["descriptor"] = [kernelpot.SOAP(**soap), kernelpot.SOAP(r_cut=float(kw.pop("second_soap")))]
    if n_sparse is not None:
        kw["n_sparse"] = n_sparse
    t0 = time.perf_counter()
    model = kernelpot.SparseGP(**kw).fit(train)
    fit_s = time.perf_counter() - t0
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    evs = {name: evaluate(model, test) for name, test in tests.items()}
    kw = dict(settings or {})  # as given (a descriptor list is not JSON)
    soap_scales = [float(r) for r in model.sparse_.scales]
    if element == "acac":
        return {"element": element, "settings": kw, "fit_s": fit_s, "rss_GiB": rss_gib,
                "n_sparse": int(model.sparse_.n_env), "errors": {k: error_table(ev) for k, ev in evs.items()},
                "pair_scale": None if model.pair_ is None else model.pair_.scale, "soap_scales": soap_scales,
                "log_evidence": float(model.log_marginal_likelihood_)}
    ev = evs["test"]
    test = tests["test"]
    err = error_table(ev)
    if element == "Si" and not quick and not settings:
        readme_figure(ev, ROOT / "benchmarks" / "results" / "readme_figure.png")
    from kernelpot import metrics
    free = ev["forces"]["free"]  # components fixed by symmetry (960 on Si): zero error, always covered
    cov = metrics.coverage(ev["forces"]["err"][free], ev["forces"]["std"][free], k=(1, 2))
    # prediction cost: a 54-atom cell and a ~1000-atom cell of the training crystal, rattled
    res = {"element": element, "settings": kw, "n_train": len(train), "n_test": len(test), "fit_s": fit_s,
           "rss_GiB": rss_gib, "n_sparse": int(model.sparse_.n_env), "delta": model.delta_,
           "noise": model.noise_, "errors": err, "force_coverage_1_2": cov.tolist(),
           "pair_scale": None if model.pair_ is None else model.pair_.scale, "soap_scales": soap_scales,
           "log_evidence": float(model.log_marginal_likelihood_)}
    if settings:  # ablation rows: accuracy and fit cost only
        return res
    if element == "Si":  # 2-atom primitive x 27 = 54; 8-atom cubic x 125 = 1000
        cells = {"54": bulk("Si", "diamond", 5.43).repeat(3), "1000": bulk("Si", "diamond", 5.43, cubic=True).repeat(5)}
    else:  # bcc Li: 2-atom cubic x 27 = 54; x 512 = 1024
        cells = {"54": bulk("Li", "bcc", 3.43, cubic=True).repeat(3), "1000": bulk("Li", "bcc", 3.43, cubic=True).repeat(8)}
    rng = np.random.default_rng(0)
    for name, cell in cells.items():
        cell = cell.copy()
        cell.positions += rng.normal(scale=0.05, size=cell.positions.shape)
        for unc in (False, True):
            reps = 3 if len(cell) < 200 else 1
            model.predict_frame(cell, return_std=unc)  # warm-up (numba compile cache)
            t0 = time.perf_counter()
            for _ in range(reps):
                model.predict_frame(cell, return_std=unc)
            dt = (time.perf_counter() - t0) / reps
            res[f"pred_ms_atom_{name}{'_std' if unc else ''}"] = 1000 * dt / len(cell)
            res[f"natoms_{name}"] = len(cell)
    return res


def readme_figure(ev, path):
    """Parity (E, F, S coloured by predicted sigma) and force calibration curve."""
    from matplotlib.figure import Figure
    from kernelpot import plot
    from kernelpot.uq.evaluation import parity_dicts
    fig = Figure(figsize=(16, 3.8), layout="constrained")
    axes = fig.subplots(1, 4)
    plot.parity_panel(*parity_dicts(ev), axes=axes[:3])
    err, std = ev["forces"]["err"].ravel(), ev["forces"]["std"].ravel()
    free = np.abs(err) > 1e-8  # components fixed by symmetry have zero error and say nothing about calibration
    plot.calibration(err[free], std[free], ax=axes[3], label="forces (total sigma)")
    axes[3].set_title("force calibration, mlearn Si test")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _label(r):
    return r["element"] + "".join(f", {k}={v}" for k, v in r.get("settings", {}).items())


def format_ablation(results: list[dict]) -> str:
    """One row per fit: E/F/S MAE and RMSE per test set, fit wall time and peak memory."""
    lines = ["", "Ablation (defaults unless named): E meV/atom, F eV/Å (acac: meV/Å), S GPa; MAE / RMSE",
             f"{'model':<40}{'test':<8}{'E MAE':>8}{'E RMSE':>8}{'F MAE':>9}{'F RMSE':>9}{'S MAE':>8}"
             f"{'S RMSE':>8}{'fit s':>7}{'GiB':>6}{'2b scale':>9}{'SOAP 2':>8}"]
    for r in results:
        errs = r["errors"] if r["element"] == "acac" else {"test": r["errors"]}
        fs = 1000.0 if r["element"] == "acac" else 1.0
        for name, e in errs.items():
            s = e.get("stress", {"MAE": float("nan"), "RMSE": float("nan")})
            sc = "-" if r.get("pair_scale") is None else f"{r['pair_scale']:.3g}"
            s2 = ", ".join(f"{v:.3g}" for v in r.get("soap_scales", [])) or "-"
            lines.append(f"{_label(r):<40}{name:<8}{e['energy']['MAE']:>8.2f}{e['energy']['RMSE']:>8.2f}"
                         f"{fs * e['forces']['MAE']:>9.4f}{fs * e['forces']['RMSE']:>9.4f}{s['MAE']:>8.3f}"
                         f"{s['RMSE']:>8.3f}{r['fit_s']:>7.0f}{r['rss_GiB']:>6.2f}{sc:>9}{s2:>8}")
    return "\n".join(lines)


def format_results(results: list[dict]) -> str:
    lines = []
    results = [r for r in results if r["element"] != "acac" and not r.get("settings")] or results[:0]
    hdr = (f"{'model':<16}{'E MAE':>8}{'E RMSE':>8}{'F MAE':>8}{'F RMSE':>8}{'S MAE':>8}{'S RMSE':>8}"
           f"{'fit s':>8}{'RSS GiB':>8}{'pred ms/at':>11}")
    lines.append("Test-set errors: E meV/atom, F eV/Å (components), S GPa (components)")
    lines.append(hdr)
    for name, a in ANCHORS.items():
        lines.append(f"{name:<16}{a['E_MAE']:>8.2f}{a['E_RMSE']:>8.2f}{a['F_MAE']:>8.4f}{a['F_RMSE']:>8.4f}"
                     f"{a['S_MAE']:>8.3f}{'-':>8}{a['fit_s']:>8.0f}{a['rss_GiB']:>8.1f}{a['pred_ms_atom']:>11.2f}")
    for r in results:
        e = r["errors"]
        lines.append(f"{'kernelpot (' + r['element'] + ')':<16}{e['energy']['MAE']:>8.2f}{e['energy']['RMSE']:>8.2f}"
                     f"{e['forces']['MAE']:>8.4f}{e['forces']['RMSE']:>8.4f}{e['stress']['MAE']:>8.3f}"
                     f"{e['stress']['RMSE']:>8.3f}{r['fit_s']:>8.0f}{r['rss_GiB']:>8.2f}"
                     f"{r['pred_ms_atom_54_std']:>11.2f}")
    lines.append("")
    lines.append("kernelpot details (pred = energy + forces + stress per atom; _std adds all uncertainties):")
    for r in results:
        lines.append(f"  {r['element']}: {r['n_train']} train / {r['n_test']} test structures, "
                     f"{r['n_sparse']} sparse points, delta {r['delta']:.3g} eV, noise "
                     + ", ".join(f"{k} {v:.3g}" for k, v in r["noise"].items())
                     + f"; force coverage 1/2 sigma {100 * r['force_coverage_1_2'][0]:.1f}/"
                     f"{100 * r['force_coverage_1_2'][1]:.1f} % (components fixed by symmetry left out)")
        lines.append(f"     predict ms/atom: {r['natoms_54']} atoms {r['pred_ms_atom_54']:.3f} "
                     f"({r['pred_ms_atom_54_std']:.3f} with std); {r['natoms_1000']} atoms "
                     f"{r['pred_ms_atom_1000']:.3f} ({r['pred_ms_atom_1000_std']:.3f} with std)")
        if r["element"] == "Si":
            g = ANCHORS["GAP (Si)"]
            e = r["errors"]
            lines.append(f"     ratios kernelpot/GAP: E MAE {e['energy']['MAE'] / g['E_MAE']:.2f}, F MAE "
                         f"{e['forces']['MAE'] / g['F_MAE']:.2f}, S MAE {e['stress']['MAE'] / g['S_MAE']:.2f}, "
                         f"fit time {r['fit_s'] / g['fit_s']:.3f}, peak RSS {r['rss_GiB'] / g['rss_GiB']:.2f}, "
                         f"predict {r['pred_ms_atom_54_std'] / g['pred_ms_atom']:.3f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--elements", nargs="+", default=["Si", "Li"])
    p.add_argument("--n-sparse", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="subsets, for a smoke run")
    p.add_argument("--ablation", nargs="*", default=[], metavar="NAME=VALUE",
                   help="extra fits, each with one setting changed (e.g. two_body=False n_sparse=2000)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.n_sparse, args.quick, json.loads(args.settings)), default=str))
        return 0
    import ast
    variants = [{}] + [{k: ast.literal_eval(v)} for k, v in (a.split("=", 1) for a in args.ablation)]
    results = []
    for el in args.elements:
        for settings in variants:
            cmd = [sys.executable, __file__, "--one", el, "--settings", json.dumps(settings)] + (
                ["--quick"] if args.quick else []) + (["--n-sparse", str(args.n_sparse)] if args.n_sparse else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return out.returncode
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(format_ablation(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    text = format_results(results) + "\n" + format_ablation(results)
    print(text)
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    if not args.quick:
        (ROOT / "benchmarks" / "results" / "mlearn.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
