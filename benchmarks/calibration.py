"""Uncertainty-calibration benchmark: GP error bars against a committee, on real DFT data.

Usage::

    python benchmarks/calibration.py [--quick]

Fits ``SparseGP()`` with default settings to

* mlearn Si and Li (Zuo et al. 2020): ``training.json``, tested on ``test.json``
  (in distribution: same groups of structures);
* acetylacetone (BOTNet data): ``train_300K.xyz``, tested on ``test_MD_300K``
  (in distribution) and ``test_MD_600K`` (extrapolation to hotter geometries),

and scores the force-component uncertainties of

(a) ``GP raw``: the GP's own predictive std (epistemic + learned noise),
    ``calibrate=False``;
(b) ``GP one scale``: (a) times one scale, ``sqrt(mean z^2)`` of the training
    structure-LOO force z-scores (components fixed by symmetry left out);
(c) ``GP calibrated``: the default ``SparseGP()`` sigma, aleatoric and
    epistemic variance weighted by :func:`kernelpot.uq.recalibration_weights`
    (training structure-LOO residuals; no test data used);
(d) ``GP epistemic``: the latent-function posterior std only, raw;
(e) ``committee``: spread of a :class:`kernelpot.Committee` of 5 members, each
    ``SparseGP()`` on a random half of the structures (``method="subsample"``).

Metrics (:mod:`kernelpot.metrics`): force RMSE (eV/Å), coverage of force
components at 1/2/3 sigma, miscalibration area, mean Gaussian NLL (eV/Å
units), Spearman rank correlation between the per-atom force-error norm and
the per-atom sigma (:func:`metrics.force_per_atom`), and mean z^2.
Targets on the in-distribution sets: coverage 68 +- 5 % at 1 sigma and
95 +- 3 % at 2 sigma, miscalibration area < 0.05, Spearman > 0.5.
Results go to stdout and ``benchmarks/results/calibration.txt``
(``calibration_quick.txt`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
COLUMNS = ["n", "rmse", "coverage_1", "coverage_2", "coverage_3", "miscal_area", "nll", "spearman_atom", "msz"]
TARGETS = {"coverage_1": (0.63, 0.73), "coverage_2": (0.92, 0.98), "miscal_area": (0.0, 0.05),
           "spearman_atom": (0.5, 1.0)}


def _row(err: np.ndarray, sigma: np.ndarray, free: np.ndarray) -> dict:
    """Metrics over the force components ``free`` (n_atoms, 3) and the atoms with any of them."""
    from kernelpot import metrics
    s = metrics.summary(err[free], sigma[free])
    atoms = free.any(axis=1)
    norm, sig_atom = metrics.force_per_atom(err[atoms], sigma[atoms])
    out = {k: s[k] for k in ("n", "rmse", "coverage_1", "coverage_2", "coverage_3", "miscal_area", "nll", "msz")}
    out["spearman_atom"] = metrics.spearman(norm, sig_atom)
    return out


def _datasets(quick: bool):
    import kernelpot
    sets = []
    for el in ("Si", "Li"):
        train = kernelpot.read(DATA / "mlearn" / el / "training.json")
        test = kernelpot.read(DATA / "mlearn" / el / "test.json")
        sets.append((el, train, {f"{el} test": (test, True)}))
    train = kernelpot.read(DATA / "acac" / "train_300K.xyz")
    t300 = kernelpot.read(DATA / "acac" / "test_MD_300K.xyz")
    t600 = kernelpot.read(DATA / "acac" / "test_MD_600K.xyz")
    sets.append(("acac", train, {"acac 300K": (t300, True), "acac 600K": (t600, False)}))
    if quick:
        sets = [(name, train[::5], {k: (frames[:10], ind) for k, (frames, ind) in tests.items()})
                for name, train, tests in sets]
    return sets


def main(argv=None) -> int:
    import kernelpot
    from kernelpot import uq
    from kernelpot.uq.evaluation import evaluate
    from kernelpot.uq.metrics import format_table
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small models and data subsets: a smoke run")
    args = p.parse_args(argv)

    def make_model():
        if args.quick:
            return kernelpot.SparseGP(descriptor=kernelpot.SOAP(r_cut=4.0, n_max=4, l_max=3), n_sparse=50)
        return kernelpot.SparseGP()

    rows, notes = {}, []
    in_dist = []
    for name, train, tests in _datasets(args.quick):
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            model = make_model().fit(train)
        t1 = time.perf_counter()
        weights = dict(model.std_weights_)
        diag = model.training_diagnostics_
        model.std_weights_ = {}                       # raw GP sigma for (a), (b), (d)
        evs = {label: evaluate(model, frames) for label, (frames, _) in tests.items()}
        model.std_weights_ = weights
        t2 = time.perf_counter()
        fz = (diag.kind == "forces") & uq.informative(diag)
        one_scale = float(np.sqrt(np.mean(diag.z_predictive[fz] ** 2)))
        t3 = time.perf_counter()
        committee = kernelpot.Committee(make_model(), n_members=5, method="subsample", random_state=0).fit(train)
        t4 = time.perf_counter()
        cps = {label: committee.predict(frames) for label, (frames, _) in tests.items()}
        t5 = time.perf_counter()
        notes.append(f"{name}: {len(train)} training structures, M = {model.sparse_.size} sparse points; "
                     f"noise {', '.join(f'{g} {s:.3g}' for g, s in model.noise_.items())}; "
                     f"calibration weights (aleatoric, epistemic) "
                     f"{', '.join(f'{k} ({v[0]:.3g}, {v[1]:.3g})' for k, v in weights.items())}; "
                     f"one scale (forces) {one_scale:.3f}; "
                     f"fit incl. LOO calibration {t1 - t0:.0f} s, predict {t2 - t1:.0f} s, "
                     f"committee fit {t4 - t3:.0f} s, predict {t5 - t4:.0f} s"
                     + (f"; fit warnings: {sorted(msgs)}" if (msgs := {str(w.message)[:100] for w in caught
                                                                       if issubclass(w.category, RuntimeWarning)})
                        else ""))
        print(notes[-1], flush=True)
        for label, (frames, ind) in tests.items():
            f = evs[label]["forces"]
            ref = f["ref"]
            err = f["err"]
            # Components fixed by symmetry (atoms of a perfect strained crystal, for example)
            # have zero force in every model: zero epistemic std and zero error.  They say
            # nothing about calibration and would make every sigma look right, so they are
            # left out of every row alike.
            epi = f["std_epistemic"]
            free = (epi > 1e-6 * epi.max()) & (cps[label]["forces_std"] > 1e-6 * cps[label]["forces_std"].max())
            n_fixed = int(free.size - free.sum())
            if n_fixed:
                notes.append(f"{label}: {n_fixed} of {free.size} force components fixed by symmetry "
                             f"(max |error| {np.abs(err[~free]).max():.2g} eV/Å) left out")
            noise2 = np.maximum(f["std"] ** 2 - epi ** 2, 0.0)
            wa, we = weights["forces"]
            variants = {
                "GP raw": (err, f["std"]),
                "GP one scale": (err, f["std"] * one_scale),
                "GP calibrated (default)": (err, np.sqrt(wa * noise2 + we * epi ** 2)),
                "GP epistemic": (err, epi),
                "committee (5, subsample)": (cps[label]["forces"] - ref, cps[label]["forces_std"]),
            }
            for v, (e, s) in variants.items():
                key = f"{label} | {v}"
                rows[key] = _row(e, s, free)
                if ind:
                    in_dist.append(key)
                print(format_table({key: rows[key]}, columns=COLUMNS, floatfmt=".3g", name="test set | sigma")
                      .splitlines()[-1], flush=True)
        del committee, cps

    table = format_table(rows, columns=COLUMNS, floatfmt=".3g", name="test set | sigma")
    checks = []
    for key in in_dist:
        r = rows[key]
        missed = [f"{k} {r[k]:.3f} not in [{lo}, {hi}]" for k, (lo, hi) in TARGETS.items()
                  if not (lo <= r[k] <= hi)]
        checks.append(f"  {key:<40} {'meets all targets' if not missed else 'misses: ' + '; '.join(missed)}")
    head = (f"Force-uncertainty calibration, {'--quick smoke run' if args.quick else 'SparseGP() defaults'}; "
            "errors and sigma in eV/Å (NLL in nats, eV/Å units)")
    text = "\n".join([head, table, "", "Targets on in-distribution sets (cov1 0.68+-0.05, cov2 0.95+-0.03, "
                      "miscal area < 0.05, Spearman > 0.5):", *checks, "", *notes])
    print("\n" + text)
    out = ROOT / "benchmarks" / "results" / ("calibration_quick.txt" if args.quick else "calibration.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
