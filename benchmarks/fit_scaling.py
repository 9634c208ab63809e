"""How the cost of ``SparseGP.fit`` grows with the data and the sparse set, phase by phase.

    python benchmarks/fit_scaling.py [--quick]

Fits ``kernelpot.SparseGP(n_sparse=M, verbose=True)`` (all other settings default)
on nested random subsets of ``../shared/data/mlearn/Si/training.json``:

* n_structures in (25, 54, 107, 214) at M = 1000, and
* M in (250, 500, 1000, 2000) on all 214 structures (214 / 1000 is run once).

``--quick`` runs (10, 20) structures at M = 100 and M in (50, 100) on 20 structures,
a smoke run of a few minutes. Each configuration runs in its own subprocess, so the
peak resident memory (``ru_maxrss``) is that fit's; a small unreported fit first
warms numba's compile cache. For each fit it reports wall time, CPU time (all
threads of the process), peak RSS in GiB, the number of likelihood evaluations of
the hyperparameter search, and the seconds and share of the fit of every phase
``fit`` announces on stderr (``kernelpot: <phase> <seconds> s (detail)``, one
decimal; "other" is the fit time outside the phases). Power-law exponents
``t ~ n_structures**a`` (fixed M) and ``t ~ M**b`` (all structures, actual M) are
fitted by least squares on logs for the total and each phase.

The machine may be shared: the date, the core count and the load average before
and after are printed with the table, which is also written (atomically) to
``benchmarks/results/fit_scaling.txt`` (``fit_scaling_quick.txt`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TRAIN = DATA / "mlearn" / "Si" / "training.json"
PHASE_ORDER = ("descriptors", "sparse selection", "assembly", "hyperparameters", "label conventions",
               "calibration (LOO)")
PHASE_RE = re.compile(r"^kernelpot: (?P<name>\S.*?)\s+(?P<s>\d+(?:\.\d*)?) s(?:  \(.*\))?\s*$")
FULL = {"sizes": (25, 54, 107, 214), "m_fixed": 1000, "sparse": (250, 500, 1000, 2000)}
QUICK = {"sizes": (10, 20), "m_fixed": 100, "sparse": (50, 100)}


def run_one(n_structures: int, n_sparse: int) -> dict:
    """Fit once in this process and return its costs (called in the child)."""
    import kernelpot
    frames = kernelpot.read(TRAIN)
    order = np.random.default_rng(0).permutation(len(frames))[:n_structures]  # nested subsets
    frames = [frames[i] for i in sorted(order)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        t0, c0 = time.perf_counter(), time.process_time()
        model = kernelpot.SparseGP(n_sparse=n_sparse, verbose=True).fit(frames)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    sys.stderr.write(err.getvalue())
    phases = {}
    for line in err.getvalue().splitlines():
        m = PHASE_RE.match(line)
        if m:
            phases[m["name"]] = phases.get(m["name"], 0.0) + float(m["s"])
    return {"n_structures": len(frames), "n_atoms": int(sum(len(a) for a in frames)), "n_sparse": n_sparse,
            "M": int(model.sparse_.size), "wall_s": wall, "cpu_s": cpu,
            "rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "n_lik": getattr(model, "n_likelihood_evaluations_", None), "phases": phases}


def child(n_structures: int, n_sparse: int) -> dict:
    cmd = [sys.executable, __file__, "--one", str(n_structures), str(n_sparse)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"fit of {n_structures} structures, n_sparse {n_sparse} failed ({out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def exponent(x, y) -> float:
    """Slope of log y on log x over the points with y > 0 (nan with fewer than two distinct x)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0) & np.isfinite(y)
    if len(np.unique(x[ok])) < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def format_results(results: list[dict], cfg: dict, header: list[str]) -> str:
    names = [p for p in PHASE_ORDER if any(p in r["phases"] for r in results)]
    names += [p for r in results for p in r["phases"] if p not in names]
    names = list(dict.fromkeys(names)) + ["other"]
    for r in results:
        r["phases"]["other"] = r["wall_s"] - sum(v for k, v in r["phases"].items() if k != "other")
    w = {p: max(len(p), 11) + 2 for p in names}
    lines = [*header, "", ("Per fit: wall and CPU seconds of fit(), peak RSS of the process, likelihood "
                           "evaluations; phase columns: seconds  share of wall (phase lines print 0.1 s steps).")]
    lines.append(f"{'n_str':>6}{'atoms':>7}{'M req':>7}{'M':>6}{'wall s':>9}{'cpu s':>9}{'cpu/wall':>9}"
                 f"{'RSS GiB':>8}{'n_lik':>6}" + "".join(f"{p:>{w[p]}}" for p in names))
    for r in results:
        cells = "".join(f"{r['phases'].get(p, float('nan')):>{w[p] - 5}.1f}"
                        f"{100 * r['phases'].get(p, float('nan')) / r['wall_s']:>4.0f}%" for p in names)
        lines.append(f"{r['n_structures']:>6}{r['n_atoms']:>7}{r['n_sparse']:>7}{r['M']:>6}{r['wall_s']:>9.1f}"
                     f"{r['cpu_s']:>9.1f}{r['cpu_s'] / r['wall_s']:>9.2f}{r['rss_GiB']:>8.2f}"
                     f"{r['n_lik']!s:>6}" + cells)
    by_n = sorted((r for r in results if r["n_sparse"] == cfg["m_fixed"]), key=lambda r: r["n_structures"])
    n_max = max(r["n_structures"] for r in results)
    by_m = sorted((r for r in results if r["n_structures"] == n_max), key=lambda r: r["M"])
    lines += ["", (f"Power-law exponents (least squares on logs): a in t ~ n_structures^a at M = {cfg['m_fixed']} "
                   f"({len(by_n)} fits), b in t ~ M^b on {n_max} structures ({len(by_m)} fits)"),
              f"{'quantity':<20}{'a':>7}{'b':>7}"]
    series = {"wall": lambda r: r["wall_s"], "cpu": lambda r: r["cpu_s"], "peak RSS": lambda r: r["rss_GiB"]}
    series.update({f"  {p}": (lambda r, p=p: r["phases"].get(p, np.nan)) for p in names})
    for name, f in series.items():
        a = exponent([r["n_structures"] for r in by_n], [f(r) for r in by_n])
        b = exponent([r["M"] for r in by_m], [f(r) for r in by_m])
        lines.append(f"{name:<20}{a:>7.2f}{b:>7.2f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, a smoke run of a few minutes")
    p.add_argument("--one", nargs=2, type=int, metavar=("N_STRUCTURES", "N_SPARSE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return 0
    import kernelpot
    cfg = QUICK if args.quick else FULL
    configs = [(n, cfg["m_fixed"]) for n in cfg["sizes"]]
    configs += [(max(cfg["sizes"]), m) for m in cfg["sparse"] if (max(cfg["sizes"]), m) not in configs]
    child(2, 10)  # warm-up: numba compiles or loads its cache here, not in the first timed fit
    load0, t0 = os.getloadavg(), time.perf_counter()
    results = []
    for i, (n, m) in enumerate(configs, 1):
        print(f"[{i}/{len(configs)}] {n} structures, n_sparse {m} ...", end=" ", file=sys.stderr, flush=True)
        results.append(child(n, m))
        print(f"{results[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    header = [(f"SparseGP.fit scaling on mlearn Si ({TRAIN.relative_to(DATA)}), kernelpot {kernelpot.__version__}"
               + (" [--quick]" if args.quick else "")),
              (f"{datetime.datetime.now().isoformat(timespec='seconds')}; {os.cpu_count()} cores "
              f"({len(os.sched_getaffinity(0))} usable); load average (1/5/15 min) "
              f"{'/'.join(f'{x:.2f}' for x in load0)} before, {'/'.join(f'{x:.2f}' for x in load1)} after "
              f"({time.perf_counter() - t0:.0f} s of runs). Shared machine: timings are noisy.")]
    text = format_results(results, cfg, header)
    print(text)
    out = ROOT / "benchmarks" / "results" / ("fit_scaling_quick.txt" if args.quick else "fit_scaling.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, prefix=f".{out.stem}.", suffix=".tmp", delete=False) as f:
        f.write(text + "\n")
    os.replace(f.name, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
