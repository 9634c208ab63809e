"""Learning curve on rigid-ion NaCl: a local GP against the same GP on top of an Ewald baseline.

Data: ``data/nacl_train.xyz`` / ``data/nacl_test.xyz`` (made by ``data/make_nacl.py``): rock salt
labelled with the Tosi-Fumi rigid-ion model, i.e. formal charges +1/-1 plus a Born-Mayer-Huggins
short range. Two models are fitted on nested random subsets of the training frames:

(a) ``local``  -- ``SparseGP`` alone; everything, Coulomb included, must come from atomic
    environments within the descriptor cutoff;
(b) ``ewald``  -- the same ``SparseGP`` with ``baseline=Ewald({"Na": +1, "Cl": -1})``, so the GP only
    learns what the point charges leave over (here: the short-range Tosi-Fumi terms).

The baseline has exactly the reference's charges, so (b) is the best case for a physics
baseline; the benchmark measures how much data the local model needs to make up for it.

Settings (chosen for run time on a shared 2-core machine; the same for both models):

- full run: ``SOAP(r_cut=5.0, n_max=8, l_max=6, atom_sigma=0.5)`` (the kernelpot default
  descriptor), ``zeta=4``, ``n_sparse=300`` per species (default 1000; the full training set has
  about 1100 environments per species), sizes 5, 10, 20, 40, 80, 100 frames;
- ``--quick``: ``SOAP(r_cut=4.0, n_max=4, l_max=3)``, ``n_sparse=60``, sizes 5, 10, 20, 40.

Noise and kernel scale are learned (marginal likelihood) for every fit. Subsets are nested: the
first n frames of one fixed random permutation (seed 0).

Run::

    python benchmarks/ionic.py            # about 15-30 min; writes results/ionic.txt, ionic.png
    python benchmarks/ionic.py --quick    # a few minutes; writes results/ionic_quick.{txt,png}
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

import kernelpot
from kernelpot import SOAP, SparseGP
from kernelpot.baselines import Ewald
from kernelpot.uq.evaluation import error_table, evaluate

ROOT = Path(__file__).resolve().parents[1]
CHARGES = {"Na": 1.0, "Cl": -1.0}

SETTINGS = {
    "full": {"descriptor": dict(r_cut=5.0, n_max=8, l_max=6, atom_sigma=0.5), "n_sparse": 300,
             "sizes": [5, 10, 20, 40, 80, None]},
    "quick": {"descriptor": dict(r_cut=4.0, n_max=4, l_max=3, atom_sigma=0.5), "n_sparse": 60,
              "sizes": [5, 10, 20, 40]},
}
MODELS = {"local": None, "ewald": Ewald(CHARGES)}
LABELS = {"local": "local GP", "ewald": "GP + Ewald (q = +-1)"}


def fit_and_score(train, test, baseline, descriptor, n_sparse):
    """Fit one model; return its error table, per-config_type energy MAE and notes."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = SparseGP(descriptor=SOAP(**descriptor), n_sparse=n_sparse, baseline=baseline).fit(train)
    fit_time = time.perf_counter() - t0
    ev = evaluate(model, test, return_std=False)
    rows = error_table(ev)
    per_type = {}
    types = np.array([a.info.get("config_type", "default") for a in test])
    for ct in dict.fromkeys(types):
        per_type[ct] = 1000.0 * float(np.mean(np.abs(ev["energy"]["err"][types == ct])))
    notes = sorted({str(w.message).split(";")[0] for w in caught if issubclass(w.category, RuntimeWarning)})
    return {"rows": rows, "per_type": per_type, "fit_time": fit_time, "notes": notes,
            "noise": dict(model.noise_), "delta": model.delta_, "n_sparse": int(model.sparse_.size)}


def format_report(mode, settings, test, sizes, atoms, results) -> str:
    desc = ", ".join(f"{k}={v}" for k, v in settings["descriptor"].items())
    lines = [
        "NaCl rigid-ion learning curve: local GP vs GP + Ewald baseline",
        f"mode: {mode}; descriptor SOAP({desc}), zeta=4, n_sparse={settings['n_sparse']} per species",
        f"test set: {len(test)} frames, {sum(len(a) for a in test)} atoms (data/nacl_test.xyz)",
        "MAE on the test set: energy per atom (meV/atom), force components (eV/Å), stress components (GPa);",
        "ratio = local / ewald (> 1: the baseline helps); sigma_E = learned energy noise (meV/atom), local/ewald",
        "",
        f"{'n_train':>7} {'atoms':>6} | {'E local':>8} {'E ewald':>8} {'ratio':>6} | {'F local':>8} {'F ewald':>8} "
        f"{'ratio':>6} | {'S local':>8} {'S ewald':>8} | {'sigma_E':>11} | {'fit s':>9}",
    ]
    for n, n_at, res in zip(sizes, atoms, results):
        lo, ew = res["local"]["rows"], res["ewald"]["rows"]
        e_l, e_e = lo["energy"]["MAE"], ew["energy"]["MAE"]
        f_l, f_e = lo["forces"]["MAE"], ew["forces"]["MAE"]
        s_l, s_e = lo["stress"]["MAE"], ew["stress"]["MAE"]
        t = f"{res['local']['fit_time']:.0f}/{res['ewald']['fit_time']:.0f}"
        sig = f"{1000 * res['local']['noise']['energy']:.2f}/{1000 * res['ewald']['noise']['energy']:.2f}"
        lines.append(f"{n:>7d} {n_at:>6d} | {e_l:>8.3f} {e_e:>8.3f} {e_l / e_e:>6.1f} | {f_l:>8.4f} {f_e:>8.4f} "
                     f"{f_l / f_e:>6.1f} | {s_l:>8.4f} {s_e:>8.4f} | {sig:>11} | {t:>9}")
    last = results[-1]
    lines += ["", f"energy MAE (meV/atom) per test config_type at n_train = {sizes[-1]}:",
              f"{'config_type':<12} {'frames':>6} {'local':>8} {'ewald':>8} {'ratio':>6}"]
    types = [a.info.get("config_type", "default") for a in test]
    for ct in dict.fromkeys(types):
        lo, ew = last["local"]["per_type"][ct], last["ewald"]["per_type"][ct]
        lines.append(f"{ct:<12} {types.count(ct):>6d} {lo:>8.3f} {ew:>8.3f} {lo / ew:>6.1f}")
    lines += ["", "learned hyperparameters at the largest size:"]
    for name in MODELS:
        r = last[name]
        noise = ", ".join(f"{k} {v:.3g}" for k, v in r["noise"].items())
        lines.append(f"  {name:<6} delta {r['delta']:.3g} eV, noise: {noise}; sparse points {r['n_sparse']}")
    notes = [(n, name, note) for n, res in zip(sizes, results) for name in MODELS for note in res[name]["notes"]]
    if notes:
        lines += ["", "warnings during fitting:"] + [f"  n={n} {name}: {note}" for n, name, note in notes]
    return "\n".join(lines) + "\n"


def plot(sizes, results, path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    from kernelpot.plot import learning_curve

    fig = Figure(figsize=(8.0, 3.4), layout="constrained")
    ax_e, ax_f = fig.subplots(1, 2)
    learning_curve(sizes, {LABELS[m]: [r[m]["rows"]["energy"]["MAE"] for r in results] for m in MODELS},
                   ax=ax_e, ylabel="energy MAE", units="meV/atom")
    learning_curve(sizes, {LABELS[m]: [r[m]["rows"]["forces"]["MAE"] for r in results] for m in MODELS},
                   ax=ax_f, ylabel="force MAE", units="eV/Å")
    ax_e.set_title("NaCl (Tosi-Fumi), test energies", fontsize=9)
    ax_f.set_title("test forces", fontsize=9)
    for ax in (ax_e, ax_f):  # plain-number ticks: the sizes on x, 1-2-5 steps on y
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(FormatStrFormatter("%d"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    fig.savefig(path, dpi=150)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small descriptor and sizes (a few minutes)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output directory")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    settings = SETTINGS[mode]
    train = kernelpot.read(ROOT / "data" / "nacl_train.xyz")
    test = kernelpot.read(ROOT / "data" / "nacl_test.xyz")
    order = np.random.default_rng(0).permutation(len(train))
    sizes = [len(train) if n is None else n for n in settings["sizes"]]

    results, atoms = [], []
    for n in sizes:
        subset = [train[i] for i in order[:n]]
        atoms.append(sum(len(a) for a in subset))
        res = {}
        for name, baseline in MODELS.items():
            res[name] = fit_and_score(subset, test, baseline, settings["descriptor"], settings["n_sparse"])
            r = res[name]["rows"]
            print(f"n={n:4d} {name:6s} E {r['energy']['MAE']:8.3f} meV/atom  F {r['forces']['MAE']:.4f} eV/Å  "
                  f"fit {res[name]['fit_time']:.0f} s", flush=True)
        results.append(res)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = "ionic" if mode == "full" else "ionic_quick"
    report = format_report(mode, settings, test, sizes, atoms, results)
    (args.out / f"{stem}.txt").write_text(report, encoding="utf-8")
    plot(sizes, results, args.out / f"{stem}.png")
    print()
    print(report)
    print(f"wrote {args.out / (stem + '.txt')} and {args.out / (stem + '.png')}")


if __name__ == "__main__":
    main()
