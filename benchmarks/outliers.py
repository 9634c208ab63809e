"""Outlier-screening benchmark: can :func:`kernelpot.screen` find mislabelled structures?

Usage::

    python benchmarks/outliers.py [--quick] [--elements Si,Li,emt_cu,acac] [--seeds 0,1]
                                  [--magnitudes realistic,subtle]

10 % of the mlearn Si and Li training structures (Zuo et al. 2020), and
with ``--elements`` of acac (300 K) or the project's EMT copper set, are
corrupted with fixed seeds, each corruption kind on different structures,
cycling through ten ways real DFT data sets go wrong (magnitudes
``realistic``; ``--magnitudes subtle`` halves to thirds them where a
magnitude exists):

``shift``           energy from another DFT setting: a per-atom shift of 10-30 meV/atom
                    (subtle 3-10), random sign (cutoff / k-points / pseudopotential version)
``energy_unit``     total energy in Hartree read as eV
``swap``            energies of two structures of the same size swapped (row misalignment);
                    both count as corrupted
``force_sign``      the atom with the largest force has ``F -> -F`` (a hand-written converter)
``force_unit``      forces in eV/Bohr read as eV/Å (x 0.529)
``scf_noise``       unconverged SCF: N(0, 0.1 eV/Å) (subtle 0.05) on every component,
                    drift removed as DFT codes do
``stale_forces``    forces of another structure of the same size and config_type (the
                    previous ionic step written with the new geometry)
``stress_unit``     stress in kBar read as GPa (x 10)
``positions_bohr``  positions and cell in Bohr read as Å (labels of the real geometry)
``displaced_atom``  one atom 0.3 Å (subtle 0.15) off in a random direction (a mis-read or
                    mis-wrapped coordinate), labels of the right geometry

A corruption must change its label by more than typical DFT precision to
count (1 meV/atom, 0.1 eV/Å on the flipped atom, 0.1 GPa on the largest
stress component); structures where it would not (a perfect crystal with
zero forces cannot have a force sign error) are not eligible for that kind.
These thresholds are physical, fixed before looking at any result; the
screen itself is not tuned to the kinds (it is judged on kinds not here).

A default :class:`kernelpot.SparseGP` is fitted to the clean set and to the
corrupted set; each is screened twice -- a single pass (``refit_rounds=0``,
the closed-form leave-one-out of the fitted model) and the default one refit
without the flagged structures (``refit_rounds=1``).  Reported: the ROC AUC
of the suspicion score against the corrupted label
(``sklearn.metrics.roc_auc_score``) overall and per kind (that kind's
corrupted structures against all clean ones), recall among the top 5 % of
the ranking overall and per kind, the number flagged (true and false), the
fraction of flagged true corruptions whose diagnosed ``suspect`` is the
corrupted label (``diag_ok``; ``positions_bohr`` and ``displaced_atom``
count as ``geometry``), and the flags on the uncorrupted data.  Results go to
stdout and ``benchmarks/results/outliers.txt``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import GPa

KINDS = ("shift", "energy_unit", "swap", "force_sign", "force_unit", "scf_noise", "stale_forces",
         "stress_unit", "positions_bohr", "displaced_atom")
#: the label each kind corrupts (what the diagnosis should name)
LABEL_OF_KIND = {"shift": "energy", "energy_unit": "energy", "swap": "energy", "force_sign": "forces",
                 "force_unit": "forces", "scf_noise": "forces", "stale_forces": "forces", "stress_unit": "stress",
                 "positions_bohr": "geometry", "displaced_atom": "geometry"}
#: magnitude -> kind -> parameter (see the module docstring)
MAGNITUDES = {
    "realistic": {"shift": (0.010, 0.030), "scf_noise": 0.10, "displaced_atom": 0.30},
    "subtle": {"shift": (0.003, 0.010), "scf_noise": 0.05, "displaced_atom": 0.15},
}
HARTREE, BOHR = 27.211386, 0.52917721
MIN_ENERGY_CHANGE = 0.001           # eV/atom
MIN_FORCE_CHANGE = 0.1              # eV/Å
MIN_STRESS_CHANGE = 0.1 * GPa       # eV/Å^3
ROUNDS = (0, 1)                     # single pass and the default one refit
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _labels(atoms):
    r = atoms.calc.results
    return {"energy": float(r["energy"]), "forces": np.array(r["forces"], dtype=float),
            "stress": None if r.get("stress") is None else np.array(r["stress"], dtype=float)}


def _relabel(atoms, lab, positions=None, cell=None):
    b = atoms.copy()
    if cell is not None:
        b.set_cell(cell, scale_atoms=False)
    if positions is not None:
        b.positions = positions
    b.calc = SinglePointCalculator(b, **{k: v for k, v in lab.items() if v is not None})
    return b


def corrupt(frames, fraction: float = 0.10, seed: int = 0, magnitude: str = "realistic"):
    """Corrupt about ``fraction`` of ``frames``, cycling through :data:`KINDS`.

    Returns
    -------
    frames : list of ase.Atoms
        Copies with corrupted labels (or geometry) where ``kind != ""``.
    kind : ndarray of str, shape (n_frames,)
        Corruption kind per frame (``""`` = clean).
    """
    mag = MAGNITUDES[magnitude]
    rng = np.random.default_rng(seed)
    n = len(frames)
    labs = [_labels(a) for a in frames]
    n_atoms = np.array([len(a) for a in frames])
    fmax = np.array([np.linalg.norm(l_["forces"], axis=1).max() for l_ in labs])
    kind = np.full(n, "", dtype=object)
    target = max(int(round(fraction * n)), len(KINDS))
    order = list(rng.permutation(n))
    new = list(labs)
    geom = {}

    def take(ok):
        for j, i in enumerate(order):
            if kind[i] == "" and ok(i):
                order.pop(j)
                return i
        return None

    k = 0
    while np.sum(kind != "") < target:
        what = KINDS[k % len(KINDS)]
        k += 1
        if k > 10 * target:
            break
        if what == "shift":
            i = take(lambda i: n_atoms[i] > 1)
            if i is None:
                continue
            d = rng.uniform(*mag["shift"]) * rng.choice([-1.0, 1.0])
            new[i] = {**labs[i], "energy": labs[i]["energy"] + d * n_atoms[i]}
        elif what == "energy_unit":
            # a total energy in Hartree read as eV
            i = take(lambda i: n_atoms[i] > 1)
            if i is None:
                continue
            new[i] = {**labs[i], "energy": labs[i]["energy"] / HARTREE}
        elif what == "force_sign":
            i = take(lambda i: 2 * fmax[i] >= MIN_FORCE_CHANGE)
            if i is None:
                continue
            f = labs[i]["forces"].copy()
            j = int(np.argmax(np.linalg.norm(f, axis=1)))
            f[j] *= -1.0
            new[i] = {**labs[i], "forces": f}
        elif what == "force_unit":
            # forces in eV/Bohr read as eV/Å
            i = take(lambda i: (1 - BOHR) * fmax[i] >= MIN_FORCE_CHANGE)
            if i is None:
                continue
            new[i] = {**labs[i], "forces": labs[i]["forces"] * BOHR}
        elif what == "scf_noise":
            # an unconverged SCF: every force component off by noise of this std
            i = take(lambda i: n_atoms[i] > 1)
            if i is None:
                continue
            noise = rng.normal(scale=mag["scf_noise"], size=labs[i]["forces"].shape)
            # codes remove the drift, so the noisy forces still sum to zero
            new[i] = {**labs[i], "forces": labs[i]["forces"] + noise - noise.mean(axis=0)}
        elif what == "stale_forces":
            # forces of another structure of the same size and kind (from a previous ionic step)
            i = take(lambda i: fmax[i] >= MIN_FORCE_CHANGE and any(
                j != i and n_atoms[j] == n_atoms[i] and fmax[j] >= MIN_FORCE_CHANGE for j in range(n)))
            if i is None:
                continue
            js = [j for j in range(n) if j != i and n_atoms[j] == n_atoms[i] and fmax[j] >= MIN_FORCE_CHANGE
                  and frames[j].info.get("config_type") == frames[i].info.get("config_type")]
            js = js or [j for j in range(n) if j != i and n_atoms[j] == n_atoms[i] and fmax[j] >= MIN_FORCE_CHANGE]
            j = min(js, key=lambda j: abs(j - i))
            new[i] = {**labs[i], "forces": labs[j]["forces"].copy()}
        elif what == "stress_unit":
            i = take(lambda i: labs[i]["stress"] is not None
                     and 9 * np.abs(labs[i]["stress"]).max() >= MIN_STRESS_CHANGE)
            if i is None:
                continue
            new[i] = {**labs[i], "stress": 10.0 * labs[i]["stress"]}
        elif what == "positions_bohr":
            # positions and cell in Bohr read as Å (labels of the real geometry)
            i = take(lambda i: frames[i].pbc.all() and n_atoms[i] > 1)
            if i is None:
                continue
            geom[i] = (frames[i].positions / BOHR, np.array(frames[i].cell) / BOHR)
        elif what == "displaced_atom":
            # one atom's position wrong (a mis-read or mis-wrapped coordinate), labels of the right one
            i = take(lambda i: n_atoms[i] > 1)
            if i is None:
                continue
            pos = frames[i].positions.copy()
            v = rng.normal(size=3)
            pos[rng.integers(n_atoms[i])] += mag["displaced_atom"] * v / np.linalg.norm(v)
            geom[i] = (pos, None)
        else:
            if target - np.sum(kind != "") < 2:
                continue
            pair = None
            for i in [i for i in order if kind[i] == ""]:
                ei = labs[i]["energy"] / n_atoms[i]
                js = [j for j in order if j != i and kind[j] == "" and n_atoms[j] == n_atoms[i]
                      and abs(labs[j]["energy"] / n_atoms[j] - ei) >= MIN_ENERGY_CHANGE]
                if js:
                    pair = (i, js[0])
                    break
            if pair is None:
                continue
            i, j = pair
            order.remove(i)
            order.remove(j)
            new[i] = {**labs[i], "energy": labs[j]["energy"]}
            new[j] = {**labs[j], "energy": labs[i]["energy"]}
            kind[j] = what
        kind[i] = what
    out = []
    for i, a in enumerate(frames):
        if kind[i] == "":
            out.append(a)
        else:
            pos, cell = geom.get(i, (None, None))
            out.append(_relabel(a, new[i], positions=pos, cell=cell))
    for a, b in zip(out, frames):
        a.info = dict(b.info)
    return out, kind.astype(str)


def ranking_row(table, kind) -> dict:
    """ROC AUC and top-5 % recall overall and per kind, flag counts, diagnosis accuracy."""
    from sklearn.metrics import roc_auc_score
    n = len(kind)
    s = np.empty(n)
    s[table["index"]] = table["score"]
    flag = np.zeros(n, bool)
    flag[table.flagged] = True
    suspect = np.empty(n, dtype=object)
    suspect[table["index"]] = table["suspect"]
    bad = kind != ""
    n_top = max(int(np.ceil(0.05 * n)), 1)
    top = np.zeros(n, bool)
    top[table["index"][:n_top]] = True
    row = {"n": n, "n_corrupt": int(bad.sum()), "auc": float(roc_auc_score(bad, s)) if bad.any() else np.nan,
           "recall_top5%": float(np.sum(bad & top) / max(bad.sum(), 1)) if bad.any() else np.nan}
    for k in KINDS:
        sel = (kind == k) | ~bad
        row[f"auc_{k}"] = float(roc_auc_score(kind[sel] == k, s[sel])) if np.any(kind == k) else np.nan
        row[f"rec_{k}"] = float(np.mean(top[kind == k])) if np.any(kind == k) else np.nan
    row["flag_true"] = int(np.sum(flag & bad))
    row["flag_false"] = int(np.sum(flag & ~bad))
    ok = [suspect[i] == LABEL_OF_KIND[kind[i]] for i in np.flatnonzero(flag & bad)]
    row["diag_ok"] = float(np.mean(ok)) if ok else np.nan
    return row, s


def _training_set(name: str):
    """Training frames of a data set named on the command line (see ``--elements``)."""
    import kernelpot
    if name == "acac":
        return kernelpot.read(DATA / "acac" / "train_300K.xyz")
    if name == "emt_cu":
        return kernelpot.read(ROOT / "data" / "emt_cu_train.xyz")
    return kernelpot.read(DATA / "mlearn" / name / "training.json")


def main(argv=None) -> int:
    import kernelpot
    from kernelpot.uq.metrics import format_table
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small model and subsets: a smoke run")
    p.add_argument("--elements", default="Si,Li", help="comma-separated data sets: mlearn elements (Si, Li), "
                   "'acac' (300 K training set) or 'emt_cu' (the project's EMT copper training set)")
    p.add_argument("--magnitudes", default="realistic", help="comma-separated: realistic,subtle")
    p.add_argument("--no-clean", action="store_true", help="skip the uncorrupted data (half the time)")
    p.add_argument("--seeds", default="0", help="comma-separated corruption seeds (which structures, which "
                   "kinds where, which magnitudes); the pooled rows pool them with the elements")
    args = p.parse_args(argv)
    from kernelpot import screen
    rows, details, clean_rows = {}, [], {}
    pooled: dict = {}
    for el in args.elements.split(","):
        frames = _training_set(el)

        def new_model():
            if args.quick:
                return kernelpot.SparseGP(descriptor=kernelpot.SOAP(r_cut=4.0, n_max=4, l_max=3), n_sparse=100,
                                          verbose=False)
            return kernelpot.SparseGP(verbose=False)
        if args.quick:
            frames = frames[::4]
        # the same data uncorrupted: how often the screen cries wolf
        t0 = time.perf_counter()
        model = None if args.no_clean else new_model().fit(frames)
        fit_s = time.perf_counter() - t0
        for rounds in ROUNDS if model is not None else ():
            t0 = time.perf_counter()
            table = screen(model, refit_rounds=rounds)
            clean_rows[f"{el} clean, refit_rounds={rounds}"] = {
                "n": len(frames), "flagged": len(table.flagged), "fraction": len(table.flagged) / len(frames),
                "fit_s": fit_s, "screen_s": time.perf_counter() - t0}
            details.append(f"{el} clean, refit_rounds={rounds}: top of the screening table\n"
                           + table.to_string(top=10))
            print(details[-1], flush=True)
        for mag, seed in [(m, int(k)) for m in args.magnitudes.split(",") for k in args.seeds.split(",")]:
            bad_frames, kind = corrupt(frames, 0.10, seed=seed, magnitude=mag)
            tag = f"{mag}" if args.seeds == "0" else f"{mag} seed {seed}"
            t0 = time.perf_counter()
            model = new_model().fit(bad_frames)
            fit_s = time.perf_counter() - t0
            for rounds in ROUNDS:
                t0 = time.perf_counter()
                table = screen(model, refit_rounds=rounds)
                row, s = ranking_row(table, kind)
                row["fit_s"], row["screen_s"] = fit_s, time.perf_counter() - t0
                row["rounds"] = table.rounds
                rows[f"{el} {tag}, refit_rounds={rounds}"] = row
                pooled.setdefault((mag, rounds), ([], []))
                pooled[(mag, rounds)][0].append(s)
                pooled[(mag, rounds)][1].append(kind)
                lines = [f"{el} {tag}, refit_rounds={rounds} (performed {table.rounds}): corrupted structures "
                         f"(index, rank of {len(frames)}, score, kind, config_type, suspect, diagnosis)"]
                rank = np.empty(len(frames), int)
                rank[table["index"]] = np.arange(len(frames))
                for i in np.flatnonzero(kind != ""):
                    r_ = rank[i]
                    lines.append(f"  {i:4d}  rank {r_ + 1:4d}  score {s[i]:8.1f}  {kind[i]:<14} "
                                 f"{frames[i].info.get('config_type', ''):<10} {table['suspect'][r_] or '-':<9} "
                                 f"{table['diagnosis'][r_]}")
                lines.append(f"{el} {tag}, refit_rounds={rounds}: top of the screening table")
                lines.append(table.to_string(top=25))
                details.append("\n".join(lines))
                print(details[-1], flush=True)
    from sklearn.metrics import roc_auc_score
    for (mag, rounds), (ss, kk) in pooled.items():
        s, kind = np.concatenate(ss), np.concatenate(kk)
        bad = kind != ""
        row = {"n": len(s), "n_corrupt": int(bad.sum()), "auc": float(roc_auc_score(bad, s))}
        for k in KINDS:
            sel = (kind == k) | ~bad
            row[f"auc_{k}"] = float(roc_auc_score(kind[sel] == k, s[sel])) if np.any(kind == k) else np.nan
        rows[f"pooled {mag}, refit_rounds={rounds}"] = row
    summary = format_table(rows, columns=["n", "n_corrupt", "auc", "recall_top5%", "flag_true", "flag_false",
                                          "diag_ok", "rounds", "fit_s", "screen_s"],
                           floatfmt=".3g", name="data set")
    # per kind: the default screen (one refit round) only, and the pooled rows
    shown = {name: r for name, r in rows.items() if name.endswith(f"refit_rounds={ROUNDS[-1]}")}
    per_kind = {k: {**{f"AUC {name}": r.get(f"auc_{k}", np.nan) for name, r in shown.items()},
                    **{f"rec5% {name}": r.get(f"rec_{k}", np.nan) for name, r in shown.items() if "pooled" not in name}}
                for k in KINDS}
    kinds_t = format_table(per_kind, floatfmt=".2f", name="kind")
    clean_t = format_table(clean_rows, floatfmt=".3g", name="uncorrupted data")
    head = (f"Outlier screening, {'--quick smoke run' if args.quick else 'SparseGP() defaults'}; "
            f"10 % corrupted in {len(KINDS)} kinds (seeds {args.seeds}); targets: ROC AUC >= 0.97 overall, "
            f">= 0.9 per kind "
            f"(realistic), clean flagged fraction <= 2 alpha = 0.1, diagnosis names the label for >= 90 % of "
            f"flagged corruptions (diag_ok)")
    text = "\n\n".join([head, summary, "ROC AUC and recall in the top 5 % per kind (rows) and data set, "
                         "default screen (one refit round):\n" + kinds_t,
                         "Flags on the same data uncorrupted (alpha 0.05):\n" + clean_t])
    print("\n" + text)
    out = ROOT / "benchmarks" / "results" / ("outliers_quick.txt" if args.quick else "outliers.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n\n" + "\n\n".join(details) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
