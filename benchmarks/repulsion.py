"""Short-distance behaviour of a GP potential with and without a repulsive prior.

Data: the mlearn Si training set (``../shared/data/mlearn/Si/training.json``, PBE; 214
structures, 13,233 atoms) whose smallest interatomic distance ``d_min`` is 1.83 Å: nothing
closer is ever labelled. Three ``SparseGP`` models with identical settings are fitted:

``none``          no prior: below ``d_min`` the energy is whatever the GP extrapolates;
``zbl``           ``baseline=ZBL()`` with its defaults, switched off between 0.67 and 1.33 Å
                  for Si-Si (0.3 and 0.6 of the covalent bond length), i.e. *below* ``d_min``:
                  it changes no training label, so between 1.33 Å and ``d_min`` the GP alone
                  decides;
``zbl_edge``      ``baseline=ZBL(r_outer=d_min + 0.3 Å)`` (r_inner = r_outer / 2): the prior is
                  still switching off where the data end, so it has a repulsive slope there;
                  it contributes to the labels of frames with pairs closer than r_outer (how
                  many, and how much, is reported), and the GP learns the rest.

Measurements

1. Pair scans, from 3.0 Å down to 0.5 Å: an isolated Si2 dimer, and one atom of a 64-atom
   diamond cell pushed along its bond towards a neighbour. Below ``d_min`` the energy should rise
   monotonically as the distance shrinks; reported: whether it does, the largest distance at
   which it stops rising ("turns over"), the lowest energy reached below ``d_min`` and the energy
   at 0.5 Å, both relative to the energy at ``d_min``.
2. Hot MD: Langevin dynamics (ASE) from the 64-atom diamond cell at 3500 K and 5000 K (about two
   and three times the melting point of Si, 1687 K), and at 5000 K in the same cell expanded to
   three times its volume (a hot, dilute system of dimers and small clusters), 1 fs steps, the same
   seed for every model. Reported: the
   smallest interatomic distance seen, the share of steps with some pair closer than ``d_min``
   (the model is extrapolating), and whether and when the run collapses (two atoms closer than
   1.0 Å; the run is stopped there).

Settings: ``SparseGP()`` defaults (SOAP r_cut 5, n_max 8, l_max 6; n_sparse 1000) on all 214
frames, MD 2 ps per run. ``--quick``: every 4th training frame, ``SOAP(r_cut=4, n_max=4, l_max=3)``,
n_sparse 200, MD 0.3 ps at 3500 K (dense) and 5000 K (expanded).

Run::

    python benchmarks/repulsion.py            # 30-60 min on a busy 2-core machine
    python benchmarks/repulsion.py --quick    # results/repulsion_quick.{txt,png}

Writes ``benchmarks/results/repulsion.txt`` (the tables) and ``repulsion.png`` (pair scans).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.md.langevin import Langevin
from ase.units import fs, kB

import kernelpot
from kernelpot import SOAP, SparseGP
from kernelpot.baselines import ZBL
from kernelpot.descriptors.neighbors import smallest_distance

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mlearn" / "Si" / "training.json"

A_SI = 5.468  # Å, PBE lattice constant of diamond Si (the mlearn data are PBE)
EDGE_MARGIN = 0.3  # Å, how far beyond d_min the zbl_edge prior still acts
COLLAPSE = 1.0  # Å
MD = {"timestep": 1.0, "friction": 0.01, "seed": 1}  # fs, 1/fs
#: Lattice scale of the expanded cell (volume x 3): the atoms form dimers and small clusters,
#: environments with one or two close neighbours that the dense training data never show.
EXPANDED = 3.0 ** (1.0 / 3.0)
SETTINGS = {
    "full": {"stride": 1, "descriptor": None, "n_sparse": 1000, "md_steps": 2000,
             "md_runs": ((3500.0, 1.0), (5000.0, 1.0), (5000.0, EXPANDED))},
    "quick": {"stride": 4, "descriptor": dict(r_cut=4.0, n_max=4, l_max=3, atom_sigma=0.5), "n_sparse": 200,
              "md_steps": 300, "md_runs": ((3500.0, 1.0), (5000.0, EXPANDED))},
}
R_SCAN = np.round(np.arange(3.0, 0.499, -0.02), 6)  # Å, decreasing


def dimer(r: float) -> Atoms:
    return Atoms("Si2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, r]], pbc=False)


def crystal(scale: float = 1.0) -> Atoms:
    """64-atom diamond Si, lattice constant ``A_SI * scale``."""
    return bulk("Si", "diamond", a=A_SI * scale, cubic=True).repeat((2, 2, 2))


def pushed(r: float) -> Atoms:
    """64-atom diamond Si with atom 0 moved along its bond towards a nearest neighbour, to distance ``r``."""
    a = crystal()
    d = a.get_distances(0, range(1, len(a)), mic=True, vector=True)
    j = int(np.argmin(np.linalg.norm(d, axis=1)))
    bond = d[j] / np.linalg.norm(d[j])
    a.positions[0] = a.positions[0] + d[j] - bond * r
    return a


def scan(model, build) -> np.ndarray:
    """Energies (eV) along ``R_SCAN``."""
    return np.array([model.predict_frame(build(r), return_std=False, forces=False)["energy"] for r in R_SCAN])


def analyse(energy: np.ndarray, d_min: float) -> dict:
    """Monotonicity of ``energy`` along the decreasing ``R_SCAN`` for distances <= ``d_min``."""
    below = R_SCAN <= d_min + 1e-9
    r, e = R_SCAN[below], energy[below]
    # the value at d_min itself, interpolated from the scan (R_SCAN is decreasing)
    e_edge = float(np.interp(d_min, R_SCAN[::-1], energy[::-1]))
    rises = np.diff(np.concatenate([[e_edge], e])) > 0.0
    falls = np.flatnonzero(~rises)
    turn = None
    if len(falls):
        k = falls[0]
        turn = float(d_min if k == 0 else r[k - 1])
    path = np.concatenate([[e_edge], e])
    # the largest energy given back on the way in: peak so far minus the current energy
    fall = float(np.max(np.maximum.accumulate(path) - path))
    return {"monotone": bool(rises.all()), "turn": turn, "fall": fall, "e_05": float(e[-1] - e_edge),
            "e_edge": e_edge}


def run_md(model, temperature: float, scale: float, n_steps: int) -> dict:
    """Langevin MD of the 64-atom cell (lattice scaled by ``scale``) at ``temperature`` (K); stop at collapse."""
    atoms = crystal(scale)
    atoms.calc = model.calculator(uncertainty=False)
    rng = np.random.default_rng(MD["seed"])
    masses = atoms.get_masses()
    # start at 2 T: about half the kinetic energy of the perfect crystal goes into potential energy
    p = rng.standard_normal((len(atoms), 3)) * np.sqrt(masses * kB * 2.0 * temperature)[:, None]
    atoms.set_momenta(p - masses[:, None] * p.sum(axis=0) / masses.sum())
    dyn = Langevin(atoms, MD["timestep"] * fs, temperature_K=temperature, friction=MD["friction"] / fs,
                   fixcm=False, rng=rng)
    iu = np.triu_indices(len(atoms), 1)
    record = {"d_min": np.inf, "collapse_step": None, "steps": 0, "d_trace": [], "error": None, "temps": []}

    def observe():
        d = float(atoms.get_all_distances(mic=True)[iu].min())
        record["d_trace"].append(d)
        record["d_min"] = min(record["d_min"], d)
        record["temps"].append(float(atoms.get_temperature()))
        return d

    t0 = time.perf_counter()
    observe()
    for step in range(1, n_steps + 1):
        try:
            dyn.run(1)
        except Exception as exc:  # a model can fail (NaN forces); that is a result, not a crash
            record["error"] = f"{type(exc).__name__}: {exc}"[:120]
            break
        record["steps"] = step
        d = observe()
        if not np.all(np.isfinite(atoms.positions)):
            record["error"] = "non-finite positions"
            break
        if d < COLLAPSE:
            record["collapse_step"] = step
            break
    record["seconds"] = time.perf_counter() - t0
    return record


def plot(scans: dict, d_min: float, path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    titles = {"dimer": "isolated Si$_2$ dimer", "pushed": "atom pushed towards a neighbour (64-atom diamond)"}
    styles = {"none": dict(color="C3", ls="--", zorder=3, label="GP, no prior"),
              "zbl": dict(color="C0", label="GP + ZBL (defaults)"),
              "zbl_edge": dict(color="C2", label=f"GP + ZBL (r_outer = d_min + {EDGE_MARGIN} Å)")}
    for ax, kind in zip(axes, ("dimer", "pushed")):
        for name, e in scans[kind].items():
            e_edge = float(np.interp(d_min, R_SCAN[::-1], e[::-1]))
            ax.plot(R_SCAN, e - e_edge, lw=1.4, **styles[name])
        ax.axvspan(0.45, d_min, color="0.9", zorder=0)
        ax.axvline(d_min, color="0.4", ls="--", lw=0.8)
        ax.text(d_min + 0.03, 0.5, f"smallest training\ndistance {d_min:.2f} Å", fontsize=7, color="0.3")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlim(0.45, 3.0)
        ax.set_xlabel("distance r (Å)")
        ax.set_ylabel("E(r) - E(d_min) (eV)")
        ax.set_title(titles[kind], fontsize=9)
        ax.legend(frameon=False, fontsize=7, loc="upper right")
    fig.savefig(path, dpi=150)


def format_report(mode, n_frames, n_atoms, d_min, fits, analysis, md, md_steps, prior_use) -> str:
    lines = [
        "Short-distance behaviour: Si GP without and with a ZBL prior",
        f"mode: {mode}; data: mlearn Si training set, {n_frames} frames, {n_atoms} atoms; "
        f"smallest interatomic distance in the data d_min = {d_min:.3f} Å",
        "models: " + "; ".join(f"{name}: {info['what']} (fit {info['seconds']:.0f} s)" for name, info in fits.items()),
        prior_use,
        "",
        "(1) pair scans from d_min down to 0.5 Å (energies relative to E(d_min))",
        "turns over at: largest distance below d_min at which the energy stops rising; largest fall: the most "
        "energy given back after a turnover",
        f"{'model':<9} {'scan':<7} {'monotone':>8} {'turns over at':>14} {'largest fall':>13} {'E(0.5 Å)':>10}",
    ]
    for name in fits:
        for kind in ("dimer", "pushed"):
            a = analysis[kind][name]
            turn = "-" if a["turn"] is None else f"{a['turn']:.2f} Å"
            lines.append(f"{name:<9} {kind:<7} {('yes' if a['monotone'] else 'NO'):>8} {turn:>14} "
                         f"{a['fall']:>10.3f} eV {a['e_05']:>7.1f} eV")
    lines += [
        "",
        f"(2) Langevin MD from the 64-atom diamond cell (velocities at 2 T; density 1 = a {A_SI} Å, 1/3 = the cell "
        f"expanded to three times the volume), {MD['timestep']} fs steps, "
        f"friction {MD['friction']}/fs, up to {md_steps} steps ({md_steps * MD['timestep'] / 1000:.1f} ps), seed "
        f"{MD['seed']}; collapse = a pair closer than {COLLAPSE} Å; mean T over the second half of the run",
        f"{'model':<9} {'T set':>6} {'density':>7} {'steps run':>9} {'min distance':>13} {'steps < d_min':>14} "
        f"{'collapsed':>10} {'mean T':>8} {'s/step':>7}",
    ]
    for (name, temperature, scale), r in md.items():
        d = np.array(r["d_trace"])
        below = 100.0 * float(np.mean(d[1:] < d_min)) if len(d) > 1 else 0.0
        if r["collapse_step"] is not None:
            collapsed = f"at {r['collapse_step'] * MD['timestep'] / 1000:.3f} ps"
        elif r["error"]:
            collapsed = "error"
        else:
            collapsed = "no"
        temp = np.mean(r["temps"][len(r["temps"]) // 2:]) if r["temps"] else float("nan")
        density = "1" if scale == 1.0 else f"1/{scale ** 3:.0f}"
        lines.append(f"{name:<9} {temperature:>6.0f} {density:>7} {r['steps']:>9d} {r['d_min']:>11.3f} Å "
                     f"{below:>13.1f}% {collapsed:>10} {temp:>6.0f} K {r['seconds'] / max(r['steps'], 1):>7.3f}")
        if r["error"]:
            lines.append(f"          error: {r['error']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="subset of the data, small descriptor, short MD")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output directory")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    settings = SETTINGS[mode]
    if not DATA.exists():
        raise SystemExit(f"{DATA} not found: this benchmark needs the mlearn Si data (see ../shared/data/README.md)")
    frames = kernelpot.read(DATA)[:: settings["stride"]]
    d_min = smallest_distance(frames)
    print(f"{len(frames)} frames, {sum(len(a) for a in frames)} atoms, d_min = {d_min:.3f} Å", flush=True)

    edge = ZBL(r_outer=round(d_min + EDGE_MARGIN, 3))
    priors = {
        "none": (None, "no prior"),
        "zbl": (ZBL(), "ZBL() r_inner/r_outer {:.3f}/{:.3f} Å".format(*ZBL().switch_radii(14, 14))),
        "zbl_edge": (edge, "ZBL(r_outer={:.3f}) r_inner {:.3f} Å".format(edge.r_outer, edge.switch_radii(14, 14)[0])),
    }
    e_edge = np.array([edge.compute(a)[0] / len(a) for a in frames])
    prior_use = (f"zbl_edge prior is non-zero on {int(np.sum(e_edge > 0))} of {len(frames)} training frames, "
                 f"at most {1000 * e_edge.max():.2f} meV/atom (mean {1000 * e_edge.mean():.2f})")
    print(prior_use, flush=True)

    models, fits = {}, {}
    for name, (baseline, what) in priors.items():
        t0 = time.perf_counter()
        desc = SOAP(**settings["descriptor"]) if settings["descriptor"] else None
        models[name] = SparseGP(descriptor=desc, n_sparse=settings["n_sparse"], baseline=baseline).fit(frames)
        fits[name] = {"what": what, "seconds": time.perf_counter() - t0}
        print(f"fitted {name}: {what} in {fits[name]['seconds']:.0f} s", flush=True)

    scans = {"dimer": {}, "pushed": {}}
    analysis = {"dimer": {}, "pushed": {}}
    for kind, build in (("dimer", dimer), ("pushed", pushed)):
        for name, model in models.items():
            scans[kind][name] = scan(model, build)
            analysis[kind][name] = analyse(scans[kind][name], d_min)
            print(f"scan {kind:6s} {name:8s} {analysis[kind][name]}", flush=True)

    md = {}
    for temperature, scale in settings["md_runs"]:
        for name, model in models.items():
            md[(name, temperature, scale)] = r = run_md(model, temperature, scale, settings["md_steps"])
            print(f"MD {temperature:.0f} K x{scale:.3f} {name:8s} steps {r['steps']} min d {r['d_min']:.3f} Å "
                  f"collapse step {r['collapse_step']} error {r['error']} ({r['seconds']:.0f} s)", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = "repulsion" if mode == "full" else "repulsion_quick"
    report = format_report(mode, len(frames), sum(len(a) for a in frames), d_min, fits, analysis, md,
                           settings["md_steps"], prior_use)
    (args.out / f"{stem}.txt").write_text(report, encoding="utf-8")
    plot(scans, d_min, args.out / f"{stem}.png")
    print()
    print(report)
    print(f"wrote {args.out / (stem + '.txt')} and {args.out / (stem + '.png')}")


if __name__ == "__main__":
    main()
