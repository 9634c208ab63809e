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

Flop bound (column ``bound``)
-----------------------------
A lower bound on the time of features + position gradients, counted per
neighbour pair (i, j) with |r_ij| < r_cut, with n = n_max, L = (l_max + 1)^2
spherical harmonics, S species and F features (``kp/bound`` is kernelpot's
time over it; the target of issue 16 is <= 5 on Si):

* expansion coefficients c^s_{nlm} += G_nl(r) Y_lm(u): n L multiply-adds;
* their gradients d c_{nlm} / d r_j = G'_nl u Y_lm + G_nl grad Y_lm / r, three
  Cartesian components of two terms: 3 x 2 n L;
* the power-spectrum gradient contraction
  T[alpha; n, (b, n'), l] = sum_m dc^s_{n l m, alpha} c^b_{n' l m}, from which
  every d p^{ab}_{n n' l} / d r_j,alpha = T[n; b, n'] + T[n'; a, n] follows:
  3 n (S n) L.

At r_cut 5 Å, n_max 8, l_max 6 (L = 49) on Si (S = 1) that is
392 + 2,352 + 9,408 = 12,152 multiply-adds per pair; rattled diamond has ~28
neighbours within 5 Å (the benchmark counts them), so ~0.35 M multiply-adds
per atom. Converted to time with the single-thread multiply-add rate that
numpy's dgemm reaches on this machine in the same run (the practical peak:
~20-25 G/s on these cores, ~15 µs), plus the time to write the output rows
(3 F doubles per pair, and the self pair) at the store bandwidth measured in
the same run (~1 µs/atom per GB/s: 6 kB per pair x 29 pairs = 175 kB/atom).
The assembly (T + T^T, the normalisation chain rule, ~9 F operations per
pair) and the power spectrum itself are left out, so the bound is optimistic.
For strain (c) the bound adds 6 F multiply-adds per pair (sum_j dp/dr_j r_j).
Periodic cells count every image within r_cut as a neighbour.
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

    # Structures are processed one at a time and each result is released before the next, as
    # kernelpot's consumers do (fit assembly, MD steps): the output buffer is then reused.
    # Keeping all 100 acac results alive instead allocates (and page-faults) a new one per
    # molecule, as every call did before issue 16.
    def _each(self, **kw):
        n_rows = 0
        for a in self.frames:
            out = self.soap.compute(a, **kw)
            n_rows += out.pair_grad.shape[0]
            del out
        return n_rows

    def positions(self):
        return self._each(gradients=True)

    def strain(self):
        if not self.frames[0].pbc.all():
            return None
        return self._each(gradients=True, strain=True)


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


# ---------------------------------------------------------------- flop bound
def machine_rates(size: int = 1024, stream_mb: int = 256) -> tuple[float, float]:
    """Single-thread dgemm multiply-adds per second and store bandwidth (bytes/s), CPU time."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size))
    b = rng.random((size, size))
    a @ b
    best = np.inf
    for _ in range(3):
        t0 = time.process_time()
        a @ b
        best = min(best, time.process_time() - t0)
    mac_rate = size**3 / best
    buf = np.empty(stream_mb * 2**20 // 8)
    buf.fill(1.0)  # fault the pages in first: the bound assumes a reused output buffer
    best = np.inf
    for _ in range(3):
        t0 = time.process_time()
        buf.fill(2.0)
        best = min(best, time.process_time() - t0)
    return mac_rate, buf.nbytes / best


def flop_bound(frames, mac_rate: float, store_rate: float, strain: bool) -> dict:
    """Multiply-adds and output bytes per atom for features + position (+ strain) gradients."""
    from kernelpot import SOAP
    from kernelpot.descriptors.neighbors import neighbor_list

    species = sorted({int(z) for a in frames for z in a.numbers})
    n_sp, n, big_l = len(species), N_MAX, (L_MAX + 1) ** 2
    n_feat = SOAP(species=species, n_max=N_MAX, l_max=L_MAX).get_number_of_features()
    per_pair = n * big_l + 6 * n * big_l + 3 * n * (n_sp * n) * big_l
    if strain:
        per_pair += 6 * n_feat
    n_atoms = sum(len(a) for a in frames)
    pairs = images = 0
    for a in frames:
        nl = neighbor_list(a, R_CUT)
        real = nl.neighbors != nl.centers  # images of the centre itself only enter c
        r = np.linalg.norm(nl.vectors, axis=1)
        images += int(np.sum((r < R_CUT) & (r > 0)))
        keys = np.unique(nl.centers[real] * len(a) + nl.neighbors[real])
        pairs += len(keys) + len(a)  # folded (i, j) blocks plus the self block
    macs = images / n_atoms * per_pair
    out_bytes = pairs / n_atoms * 3 * n_feat * 8 + (6 * n_feat * 8 if strain else 0)
    us = (macs / mac_rate + out_bytes / store_rate) * 1e6
    return {"neighbours": images / n_atoms, "macs": macs, "bytes": out_bytes, "us": us}


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
        # the same fresh cache directory twice: empty (compiles), then filled by that first run (the
        # repository's own __pycache__ may hold entries of another version of the source, which numba
        # recompiles: that would be a cold start counted as a warm one)
        for label in ("cold numba cache (compiles)", "warm numba cache"):
            env = dict(os.environ)
            env["NUMBA_CACHE_DIR"] = cold
            out = subprocess.run([sys.executable, "-c", _COMPILE_SNIPPET], env=env, cwd=REPO,
                                 capture_output=True, text=True, check=True)
            rows.append((label, *map(float, out.stdout.split()[-4:])))
    return rows


# -------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="Si 216 and acac only")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the first-call (numba compile) measurement")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "descriptors.txt"))
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

    lines = []

    def out(line=""):
        print(line, flush=True)
        lines.append(line)

    out(f"kernelpot {kernelpot.__version__}, dscribe {version('dscribe')}, "
        f"featomic {featomic.__version__}; numba {numba.__version__}, threads 1; "
        f"load average {os.getloadavg()[0]:.1f} at start")
    out(f"r_cut {R_CUT} Å, n_max {N_MAX}, l_max {L_MAX}, Gaussian width {SIGMA} Å; "
        f"CPU µs per atom, median of {args.repeats} after one warm-up call; each (system, code, "
        f"task) in a fresh process")
    mac_rate, store_rate = machine_rates()
    out(f"machine (same run, one thread): dgemm {mac_rate / 1e9:.1f} G multiply-adds/s, "
        f"store bandwidth {store_rate / 1e9:.1f} GB/s (the flop bound's rates)")
    out()

    if not args.no_compile:
        out("first-call cost of kernelpot in a fresh process (Si 16 atoms, gradients + strain):")
        for label, t_import, t_tables, t_first, t_second in compile_times():
            out(f"  {label:28s} import {t_import:6.2f} s | radial tables {t_tables:5.2f} s | "
                f"first call {t_first:6.2f} s | second call {t_second * 1e3:7.2f} ms")
        out()

    header = (f"{'system':20s} {'task':22s} {'kernelpot':>10s} {'dscribe':>10s} {'kp/ds':>7s} "
              f"{'featomic':>10s} {'kp/fa':>7s} {'bound':>7s} {'kp/bd':>6s}   peak MB kp / ds / fa")
    out(header)
    out("-" * len(header))
    notes = []
    all_systems = systems(args.quick)
    for sys_name, frames in all_systems.items():
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
        bounds = {task: flop_bound(frames, mac_rate, store_rate, task == "strain")
                  for task in ("positions", "strain")}
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

            bd = (f"{bounds[task]['us']:7.1f} {kp[0] / bounds[task]['us']:6.1f}" if task in bounds
                  else f"{'-':>7s} {'':>6s}")
            mem = " / ".join("-" if res[c] is None else f"{res[c][1]:.0f}"
                             for c in ("kernelpot", "dscribe", "featomic"))
            out(f"{sys_name:20s} {label:22s} {kp[0]:10.1f} {cell('dscribe')} {cell('featomic')} "
                f"{bd}   {mem}")
        b = bounds["positions"]
        out(f"{'':20s} features per atom: kernelpot {data['kernelpot']['n_features']}, dscribe "
            f"{data['dscribe']['n_features']}, featomic {data['featomic']['n_features']} per "
            f"(centre, neighbour, neighbour) species block")
        out(f"{'':20s} bound (b): {b['neighbours']:.1f} neighbours/atom, {b['macs'] / 1e6:.2f} M "
            f"multiply-adds/atom, {b['bytes'] / 1e3:.0f} kB/atom of output")
    out()
    out("dscribe has no strain derivatives; its periodic derivatives are numerical, the "
        "molecular ones analytical.")
    out("No strain derivatives are reported for the non-periodic acac molecules.")
    out("bound: multiply-adds of coefficients, gradients and the gradient contraction at the "
        "dgemm rate, plus the output at store bandwidth (see the module docstring).")
    for line in notes:
        out(line)
    out(f"load average {os.getloadavg()[0]:.1f} at end")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
