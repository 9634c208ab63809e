"""Material properties of a SparseGP fitted to EMT copper, with posterior error bars, vs EMT.

Usage::

    python benchmarks/properties.py [--quick]

Training data (EMT Cu at its lattice constant a = 3.59 Å, all from
:mod:`kernelpot.sampling`; seeds fixed):

* thermal rattles of the 32-atom cubic 2x2x2 cell at 300 K and 900 K,
* :func:`~kernelpot.sampling.strain_set` of the 4-atom cubic cell (hydrostatic
  -3 % .. +3 % in 7 steps, shears +-2 % on yz, xz, xy),
* vacancy cells: the 31-atom 2x2x2 cell with one atom removed, EMT-relaxed,
  plus thermal rattles of it at 300 K,
* (111) slabs: the 5-layer, 20-atom slab that
  :func:`kernelpot.properties.surface_energy` builds, EMT-relaxed, plus
  thermal rattles at 300 K,
* Langevin MD snapshots of the 32-atom cell at 600 K.

Model: ``kernelpot.SparseGP()`` with its defaults (SOAP r_cut 5, n_max 8, l_max 6,
1000 sparse points per species, zeta 4, hyperparameters by marginal likelihood);
nothing changed.

Properties, each with EMT directly and with ``model.posterior_calculators(n)``
(mean +- std over posterior weight samples): lattice constant and bulk modulus
(Birch-Murnaghan EOS, primitive cell), C11, C12, C44 (relaxed-ion stress-strain,
4-atom cubic cell at each calculator set's own lattice constant), vacancy
formation energy (2x2x2 cubic supercell, 32 atoms, relaxed at fixed cell), (111)
surface energy (5 layers, relaxed), NVE drift per atom per ps (32 atoms, 300 K,
1 fs).

Writes ``benchmarks/results/properties.txt`` (``properties_quick.txt`` with
``--quick``).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from ase.build import bulk, surface
from ase.calculators.calculator import Calculator as ASECalculator, all_changes
from ase.calculators.emt import EMT
from ase.optimize import BFGS

import kernelpot
from kernelpot import properties as props
from kernelpot import sampling

RESULTS = Path(__file__).resolve().parent / "results" / "properties.txt"
A0 = 3.59  # EMT Cu lattice constant (Å), close enough for generating data


class FullyPeriodic(ASECalculator):
    """Evaluate ``inner`` on a copy of the structure with ``pbc`` True in all directions.

    Workaround for slabs (pbc True, True, False) with a non-orthogonal in-plane cell,
    which kernelpot.descriptors.neighbors rejects at present (see ``slab_workaround_needed``).  The
    slabs here have 16 Å of vacuum between images, more than any cutoff involved
    (SOAP 5 Å, EMT < 6 Å), so energies and forces are those of the isolated slab.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        work.pbc = True
        work.calc = self.inner
        e = work.get_potential_energy()
        self.results = {"energy": e, "free_energy": e, "forces": work.get_forces()}


def slab_workaround_needed() -> bool:
    """True when kernelpot's neighbour list refuses the (111) slab of surface_energy."""
    from kernelpot.descriptors.neighbors import neighbor_list

    slab = surface(bulk("Cu", "fcc", a=A0, cubic=True), (1, 1, 1), 5, vacuum=8.0)
    try:
        neighbor_list(slab, 5.0)
    except ValueError:
        return True
    return False


def settings(quick: bool) -> dict:
    if quick:
        return dict(n_300=3, n_900=2, n_vac=2, n_slab=2, n_md=2, n_samples=4, nve_steps=100)
    return dict(n_300=6, n_900=4, n_vac=5, n_slab=4, n_md=5, n_samples=10, nve_steps=500)


def _relaxed(atoms, fmax=1e-3):
    work = atoms.copy()
    work.calc = EMT()
    BFGS(work, logfile=None).run(fmax=fmax, steps=500)
    work.calc = None
    return work


def training_data(cfg, periodic_slabs: bool) -> list:
    emt = EMT()
    cubic = bulk("Cu", "fcc", a=A0, cubic=True)
    sc = cubic.repeat((2, 2, 2))
    frames = []
    frames += sampling.thermal_rattle(sc, emt, 300.0, cfg["n_300"], random_state=1)
    frames += sampling.thermal_rattle(sc, emt, 900.0, cfg["n_900"], random_state=2)
    frames += sampling.strain_set(cubic, emt, hydrostatic=(-0.03, 0.03, 7), shear=(0.02, 3))
    vac = sc.copy()
    del vac[0]
    vac = _relaxed(vac)
    vac.info["config_type"] = "vacancy"
    frames += sampling.label([vac], emt)
    for f in sampling.thermal_rattle(vac, emt, 300.0, cfg["n_vac"], random_state=3):
        f.info["config_type"] = "vacancy_rattle_300K"
        frames.append(f)
    slab = _relaxed(surface(cubic, (1, 1, 1), 5, vacuum=8.0))
    if periodic_slabs:
        slab.pbc = True  # see FullyPeriodic; 16 Å of vacuum between images
    slab.info["config_type"] = "surface_111"
    frames += sampling.label([slab], emt)
    for f in sampling.thermal_rattle(slab, emt, 300.0, cfg["n_slab"], random_state=4):
        f.info["config_type"] = "surface_111_rattle_300K"
        frames.append(f)
    frames += sampling.md_sample(sc, emt, [600.0], cfg["n_md"], interval=20, equilibration=100,
                                 random_state=5).frames
    return frames


def compute_properties(calc, nve_steps: int, periodic_slabs: bool = False) -> dict:
    """All benchmark properties for one calculator or a list of them; values as Estimates."""
    out = {}
    eos = props.equation_of_state(bulk("Cu", "fcc", a=A0), calc)
    out["a0"], out["B"] = eos.a0, eos.B
    a_eq = eos.a0.value
    cubic_cell = bulk("Cu", "fcc", a=a_eq, cubic=True)
    cc = props.cubic(props.elastic_constants(cubic_cell, calc))
    out["C11"], out["C12"], out["C44"] = cc.C11, cc.C12, cc.C44
    out["E_vac"] = props.vacancy_formation_energy(cubic_cell, calc, supercell=(2, 2, 2), relax=True)
    slab_calc = calc
    if periodic_slabs:
        slab_calc = [FullyPeriodic(c) for c in calc] if isinstance(calc, list) else FullyPeriodic(calc)
    out["gamma_111"] = props.surface_energy(cubic_cell, slab_calc, (1, 1, 1), layers=5, vacuum=8.0,
                                            relax=True).gamma
    nve = props.nve_drift(cubic_cell.repeat((2, 2, 2)), calc, temperature=300.0, n_steps=nve_steps)
    out["nve_drift"] = nve.drift
    out["nve_fluct"] = nve.fluctuation
    return out


# name, label, unit, display scale, display format, target kind, target value
ROWS = [
    ("a0", "lattice constant", "Å", 1.0, ".5f", "rel", 0.005),
    ("B", "bulk modulus (EOS)", "GPa", 1.0, ".2f", "rel", 0.10),
    ("C11", "C11", "GPa", 1.0, ".2f", "rel", 0.10),
    ("C12", "C12", "GPa", 1.0, ".2f", "rel", 0.10),
    ("C44", "C44", "GPa", 1.0, ".2f", "rel", 0.10),
    ("E_vac", "vacancy formation energy", "eV", 1.0, ".4f", "abs", 0.05),
    ("gamma_111", "(111) surface energy", "J/m^2", 1.0, ".4f", "rel", 0.10),
    ("nve_drift", "NVE drift", "meV/atom/ps", 1e3, ".2e", "abs", 1.0),
    ("nve_fluct", "NVE fluctuation", "meV/atom", 1e3, ".2e", None, None),
]
# Targets from the brief: a0 0.5 %, elastic constants 10 %, vacancy 0.05 eV.  Ours (marked *):
# B 10 % like the elastic constants, surface energy 10 %, |NVE drift| below 1 meV/atom/ps.
OWN_TARGETS = {"B", "gamma_111", "nve_drift"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer samples (smoke test)")
    args = parser.parse_args(argv)
    cfg = settings(args.quick)
    warnings.filterwarnings("ignore", message="hyperparameters at their bounds")
    lines: list[str] = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    t0 = time.perf_counter()
    workaround = slab_workaround_needed()
    frames = training_data(cfg, workaround)
    counts: dict[str, int] = {}
    for f in frames:
        counts[f.info.get("config_type", "?")] = counts.get(f.info.get("config_type", "?"), 0) + 1
    t_data = time.perf_counter() - t0
    t1 = time.perf_counter()
    model = kernelpot.SparseGP().fit(frames)
    t_fit = time.perf_counter() - t1

    out("kernelpot benchmark: properties of SparseGP() fitted to EMT Cu vs EMT")
    out(f"mode: {'quick' if args.quick else 'full'}; {len(frames)} training frames, "
        f"{sum(len(f) for f in frames)} atoms: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    out(f"model: SparseGP() defaults; {model.sparse_.size} sparse points; delta {model.delta_:.3g} eV; "
        "noise " + ", ".join(f"{k} {v:.3g}" for k, v in model.noise_.items())
        + f"; data {t_data:.0f} s, fit {t_fit:.0f} s")

    t2 = time.perf_counter()
    ref = compute_properties(EMT(), cfg["nve_steps"])
    t_emt = time.perf_counter() - t2
    t3 = time.perf_counter()
    # samples scaled to the calibrated predictive distribution at the bulk cubic cell (SparseGP.posterior_calculators)
    from ase.build import bulk
    calcs = model.posterior_calculators(cfg["n_samples"], random_state=0,
                                        reference=bulk("Cu", "fcc", a=3.59, cubic=True))
    gp = compute_properties(calcs, cfg["nve_steps"], periodic_slabs=workaround)
    t_gp = time.perf_counter() - t3
    if workaround:
        out("note: kernelpot.descriptors.neighbors rejects slabs with pbc (T, T, F) and a hexagonal in-plane cell; slabs were "
            "made fully periodic (16 Å vacuum between images, beyond every cutoff) for the model")
    ratios = ", ".join(f"{k} {v:.3g}" for k, v in calcs[0].scales[0].items())
    out(f"error bars: std over {cfg['n_samples']} posterior weight samples, deviations scaled by f = "
        f"{calcs[0].scale:.3g}, the largest calibrated/sampled sigma ratio at the 4-atom cubic cell ({ratios}): "
        "there every kind spreads at least as its calibrated *_std_epistemic says; "
        f"EMT {t_emt:.0f} s, model {t_gp:.0f} s")
    out()
    out(f"{'property':<26}{'unit':>12}{'EMT':>11}{'model mean':>12}{'± std':>9}{'error':>11}"
        f"{'target':>10}{'pass':>6}{'|err|<=2σ':>11}")
    n_fail = n_cover = n_cover_total = 0
    for key, name, unit, scale, fmt, kind, tol in ROWS:
        r, g = ref[key].value * scale, gp[key].value * scale
        s = gp[key].std * scale
        err = g - r
        if kind == "rel":
            err_s, ok = f"{100 * err / r:+.3f}%", abs(err) <= tol * abs(r)
            tgt = f"{100 * tol:g}%"
        elif kind == "abs":
            if key == "nve_drift":  # target on the drift itself, not on its difference from EMT
                err_s, ok, tgt = f"{err:+{fmt}}", abs(g) <= tol, f"|x|<{tol:g}"
            else:
                err_s, ok, tgt = f"{err:+.4f}", abs(err) <= tol, f"{tol:g}"
        else:
            err_s, ok, tgt = f"{err:+{fmt}}", None, "-"
        if key in OWN_TARGETS:
            tgt += "*"
        covered = abs(err) <= 2 * s
        static = not key.startswith("nve")
        if static:
            n_cover_total += 1
            n_cover += covered
        n_fail += ok is False
        passed = "-" if ok is None else ("yes" if ok else "NO")
        cover = ("yes" if covered else "no") if static else "-"
        out(f"{name:<26}{unit:>12}{r:>11{fmt}}{g:>12{fmt}}{s:>9.2g}{err_s:>11}{tgt:>10}{passed:>6}{cover:>11}")
    out()
    out("* target chosen here (the brief sets a0 0.5 %, elastic constants 10 %, vacancy 0.05 eV).")
    out(f"targets missed: {n_fail}; EMT value within the 2-sigma posterior band for {n_cover} of "
        f"{n_cover_total} static properties")
    out("(NVE rows excluded: different potentials give different trajectories, so their spread is no error bar).")
    out("The bands come from posterior samples of the GP weights (model.posterior_calculators) scaled to the")
    out("calibrated sigma of the binding kind at the bulk cell (a linearised propagation of the calculator's")
    out("predictive distribution that stays one potential);")
    out("where a band misses EMT the error bar is too narrow there by the model bias")
    out("(descriptor cut-off 5 Å vs EMT's range; the mean offset), which no weight sample can express.")
    out(f"EMT NVE drift {ref['nve_drift'].value * 1e3:+.3g} meV/atom/ps over {cfg['nve_steps']} steps of 1 fs.")
    out(f"total wall time {time.perf_counter() - t0:.0f} s")
    path = RESULTS.with_name("properties_quick.txt") if args.quick else RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
