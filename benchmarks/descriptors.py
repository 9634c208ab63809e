"""SOAP descriptor benchmark: kernelpot vs dscribe vs featomic, in one run, one thread.

Usage::

    python benchmarks/descriptors.py [--repeats 3] [--quick]

Prints µs per atom (median of ``--repeats`` runs, process CPU time, which on a
single thread equals wall time but is not inflated by other load on a shared
machine) for

* (a) features only,
* (b) features + position derivatives,
* (c) features + position + strain (cell) derivatives, where the peer has them,

on rattled Si diamond (216 and 1728 atoms), rattled rock-salt NaCl (512 atoms)
and 100 acetylacetone molecules, with the ratio kernelpot / peer (< 1 means
kernelpot is faster), the peak resident memory of the (untimed) warm-up call
above the process's state after setup (outputs included), and kernelpot's
first-call time (numba compile with an empty cache, and cache load).

Each (system, code) runs in its own fresh process, so memory and allocator
state do not leak between codes. On a machine shared with other jobs the
absolute numbers move by tens of percent from run to run; the ratios, taken
within a few seconds of each other, move less.

Parameter matching (r_cut 5 Å, n_max 8, l_max 6, Gaussian width 0.5 Å):

* kernelpot: cosine cutoff of width 1 Å, centre weight 1, normalised features,
  Löwdin-orthonormal Gaussian radial basis.
* featomic 0.6.7: ShiftedCosine smoothing width 1 Å, Gto radial basis with
  max_radial 7 (= 8 functions), max_angular 6; features not normalised; it
  stores all (n1, n2) pairs (448 per species triple instead of 252).
* dscribe 2.1.2: rbf "gto", no smooth cutoff (its default weighting), features
  not normalised. Its derivatives come as a dense (n, n, 3, F) array and are
  numerical for periodic systems; they are skipped where that array would
  exceed 2 GB. dscribe has no strain derivatives.
"""

from __future__ import annotations

import os

# One thread everywhere, before any numerical library starts its pool.
for _var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import ase.build  # noqa: E402
import ase.io  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ACAC = REPO.parent / "shared" / "data" / "acac" / "train_300K.xyz"
R_CUT, N_MAX, L_MAX, SIGMA, WIDTH = 5.0, 8, 6, 0.5, 1.0
DENSE_LIMIT = 2e9  # bytes


# ----------------------------------------------------------------- systems
def systems(quick: bool):
    si = ase.build.bulk("Si", "diamond", 5.43, cubic=True)
    out = {}
    for reps in ((3,) if quick else (3, 6)):
        a = si * reps
        a.rattle(0.1, seed=0)
        out[f"Si diamond {len(a)}"] = [a]
    if not quick:
        nacl = ase.build.bulk("NaCl", "rocksalt", 5.64, cubic=True) * 4
        nacl.rattle(0.1, seed=0)
        out[f"NaCl rock salt {len(nacl)}"] = [nacl]
    mols = ase.io.read(ACAC, index=":100")
    for m in mols:
        m.pbc = False
    out[f"acac 100 x {len(mols[0])}"] = mols
    return out


# ---------------------------------------------------------------- measuring
def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _reset_peak() -> None:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


TASKS = ("features", "positions", "strain")


def run_worker(system: str, code: str, repeats: int, quick: bool) -> dict:
    """Time the three tasks of one (system, code) in this fresh process.

    Returns µs/atom (median of ``repeats`` after one warm-up call) and the peak
    resident memory during the warm-up call above the resident memory after
    setup (outputs included). Tasks run in order of increasing memory, so
    memory a previous task left cached in the allocator does not hide a peak.
    """
    numba.set_num_threads(1)
    frames = systems(quick)[system]
    cls = {"kernelpot": Kernelpot, "dscribe": Dscribe, "featomic": Featomic}[code]
    obj = cls(frames)
    cls([frames[0][:2]]).features()  # loads numba caches / libraries
    base = _status_bytes("VmRSS")
    n_atoms = sum(len(a) for a in frames)
    out = {"n_features": obj.n_features, "dense_bytes": getattr(obj, "dense_bytes", 0)}
    for task in TASKS:
        fn = getattr(obj, task)
        _reset_peak()
        first = fn()
        if first is None:
            out[task] = None
            continue
        peak = _status_bytes("VmHWM") - base
        del first
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            res = fn()
            times.append(time.process_time() - t0)
            del res
        out[task] = [float(np.median(times)) / n_atoms * 1e6, peak / 2**20]
    return out


# ------------------------------------------------------------------- codes
class Kernelpot:
    name = "kernelpot"

    def __init__(self, frames):
        from kernelpot import SOAP

        self.soap = SOAP(r_cut=R_CUT, n_max=N_MAX, l_max=L_MAX, atom_sigma=SIGMA,
                         cutoff_width=WIDTH).fit(frames)
        self.frames = frames
        self.n_features = self.soap.get_number_of_features()

    def features(self):
        return self.soap.create(self.frames)

    def positions(self):
        return [self.soap.compute(a, gradients=True) for a in self.frames]

    def strain(self):
        if not self.frames[0].pbc.all():
            return None
        return [self.soap.compute(a, gradients=True, strain=True) for a in self.frames]


class Featomic:
    name = "featomic"

    def __init__(self, frames):
        import featomic

        self.calc = featomic.SoapPowerSpectrum(
            cutoff={"radius": R_CUT, "smoothing": {"type": "ShiftedCosine", "width": WIDTH}},
            density={"type": "Gaussian", "width": SIGMA},
            basis={"type": "TensorProduct", "max_angular": L_MAX,
                   "radial": {"type": "Gto", "max_radial": N_MAX - 1}},
        )
        self.frames = frames
        desc = self.calc.compute(frames[:1])
        self.n_features = sum(b.values.shape[1] for b in desc.blocks()) // len(desc.blocks())

    def features(self):
        return self.calc.compute(self.frames)

    def positions(self):
        return self.calc.compute(self.frames, gradients=["positions"])

    def strain(self):
        if not self.frames[0].pbc.all():
            return None
        return self.calc.compute(self.frames, gradients=["positions", "strain"])


class Dscribe:
    name = "dscribe"

    def __init__(self, frames):
        from dscribe.descriptors import SOAP as DSOAP

        species = sorted({s for a in frames for s in a.get_chemical_symbols()})
        self.periodic = bool(frames[0].pbc.all())
        self.soap = DSOAP(species=species, r_cut=R_CUT, n_max=N_MAX, l_max=L_MAX, sigma=SIGMA,
                          periodic=self.periodic, rbf="gto")
        self.frames = frames
        self.n_features = self.soap.get_number_of_features()
        n = max(len(a) for a in frames)
        self.dense_bytes = n * n * 3 * self.n_features * 8

    def features(self):
        return [self.soap.create(a) for a in self.frames]

    def positions(self):
        if self.dense_bytes > DENSE_LIMIT:
            return None
        method = "numerical" if self.periodic else "analytical"
        return [self.soap.derivatives(a, method=method) for a in self.frames]

    def strain(self):
        return None


# ------------------------------------------------------------- compile time
_COMPILE_SNIPPET = textwrap.dedent(
    """
    import time, ase.build, numba
    numba.set_num_threads(1)
    t0 = time.perf_counter()
    from kernelpot import SOAP
    t1 = time.perf_counter()
    a = ase.build.bulk("Si", "diamond", 5.43) * 2
    soap = SOAP(species=["Si"], r_cut=%r, n_max=%d, l_max=%d, atom_sigma=%r)
    soap.fit([a])._tables()
    t2 = time.perf_counter()
    soap.compute(a, gradients=True, strain=True)
    t3 = time.perf_counter()
    soap.compute(a, gradients=True, strain=True)
    t4 = time.perf_counter()
    print(t1 - t0, t2 - t1, t3 - t2, t4 - t3)
    """
) % (R_CUT, N_MAX, L_MAX, SIGMA)


def compile_times():
    rows = []
    with tempfile.TemporaryDirectory() as cold:
        for label, cache in (("cold numba cache (compiles)", cold), ("warm numba cache", None)):
            env = dict(os.environ)
            if cache:
                env["NUMBA_CACHE_DIR"] = cache
            out = subprocess.run([sys.executable, "-c", _COMPILE_SNIPPET], env=env, cwd=REPO,
                                 capture_output=True, text=True, check=True)
            rows.append((label, *map(float, out.stdout.split()[-4:])))
    return rows


# -------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="Si 216 and acac only")
    parser.add_argument("--worker", nargs=2, metavar=("SYSTEM", "CODE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        warnings.filterwarnings("ignore")
        print(json.dumps(run_worker(*args.worker, args.repeats, args.quick)))
        return
    numba.set_num_threads(1)
    import featomic

    import kernelpot

    from importlib.metadata import version

    print(f"kernelpot {kernelpot.__version__}, dscribe {version('dscribe')}, "
          f"featomic {featomic.__version__}; numba {numba.__version__}, threads 1")
    print(f"r_cut {R_CUT} Å, n_max {N_MAX}, l_max {L_MAX}, Gaussian width {SIGMA} Å; "
          f"CPU µs per atom, median of {args.repeats} after one warm-up call; each (system, code, "
          f"task) in a fresh process\n")

    print("first-call cost of kernelpot in a fresh process (Si 16 atoms, gradients + strain):")
    for label, t_import, t_tables, t_first, t_second in compile_times():
        print(f"  {label:28s} import {t_import:6.2f} s | radial tables {t_tables:5.2f} s | "
              f"first call {t_first:6.2f} s | second call {t_second * 1e3:7.2f} ms")
    print()

    header = (f"{'system':20s} {'task':22s} {'kernelpot':>10s} {'dscribe':>10s} {'kp/ds':>7s} "
              f"{'featomic':>10s} {'kp/fa':>7s}   peak MB kp / ds / fa")
    print(header)
    print("-" * len(header))
    notes = []
    for sys_name in systems(args.quick):
        data = {}
        for code in ("kernelpot", "dscribe", "featomic"):
            cmd = [sys.executable, __file__, "--worker", sys_name, code,
                   "--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
            run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if run.returncode != 0:
                raise RuntimeError(f"worker {sys_name}/{code} failed:\n{run.stderr}")
            data[code] = json.loads(run.stdout.strip().splitlines()[-1])
        if data["dscribe"]["positions"] is None:
            notes.append(f"{sys_name}: dscribe derivatives skipped, its dense (n, n, 3, F) "
                         f"array would take {data['dscribe']['dense_bytes'] / 1e9:.1f} GB")
        for task, label in zip(TASKS, ("(a) features", "(b) + d/d positions",
                                       "(c) + d/d pos, strain")):
            res = {code: data[code][task] for code in data}
            kp = res["kernelpot"]
            if kp is None:
                continue

            def cell(name):
                v = res[name]
                return (f"{'-':>10s} {'':>7s}" if v is None
                        else f"{v[0]:10.1f} {kp[0] / v[0]:7.3f}")

            mem = " / ".join("-" if res[c] is None else f"{res[c][1]:.0f}"
                             for c in ("kernelpot", "dscribe", "featomic"))
            print(f"{sys_name:20s} {label:22s} {kp[0]:10.1f} {cell('dscribe')} {cell('featomic')}"
                  f"   {mem}", flush=True)
        print(f"{'':20s} features per atom: kernelpot {data['kernelpot']['n_features']}, dscribe "
              f"{data['dscribe']['n_features']}, featomic {data['featomic']['n_features']} per "
              f"(centre, neighbour, neighbour) species block")
    print()
    print("dscribe has no strain derivatives; its periodic derivatives are numerical, the "
          "molecular ones analytical.")
    print("No strain derivatives are reported for the non-periodic acac molecules.")
    for line in notes:
        print(line)


if __name__ == "__main__":
    main()
