"""Outlier-screening benchmark: can :func:`kernelpot.screen` find mislabelled structures?

Usage::

    python benchmarks/outliers.py [--quick]

5 % of the mlearn Si and Li training structures (Zuo et al. 2020) are
corrupted with a fixed seed, each corruption kind on different structures,
in the ways real data sets go wrong:

``shift``
    Energy from another DFT setting: a constant per-atom shift of
    10-30 meV/atom, random sign (the size of total-energy differences between
    a converged and an under-converged plane-wave cutoff / k-point mesh, or
    between two pseudopotential versions, once the isolated-atom reference is
    the same).
``force_sign``
    A sign error on one atom's force: the atom with the largest force has
    ``F -> -F`` (a wrong sign convention in a hand-written converter).
``stress_unit``
    Stress in the wrong unit: a kBar value read as GPa, i.e. the stress is
    ten times too large.
``swap``
    A structure labelled with another structure's energy: the energies of
    two structures with the same number of atoms are swapped (a row
    misalignment in a table); both count as corrupted.

A corruption must change its label by more than typical DFT precision to
count (1 meV/atom, 0.1 eV/Å on the flipped atom, 0.1 GPa on the largest
stress component); structures where it would not (a perfect crystal with
zero forces cannot have a force sign error) are not eligible for that kind.
These thresholds are physical, fixed before looking at any result.

A default :class:`kernelpot.SparseGP` is fitted to the corrupted set, the
training set is screened three times -- a single pass (``refit_rounds=0``, the
closed-form leave-one-out of the fitted model), the default one refit without
the flagged structures (``refit_rounds=1``, against masking by the noise the
gross errors inflate) and up to two refits (``refit_rounds=2``) -- and the
table reports the ROC AUC of the suspicion
score against the corrupted label (``sklearn.metrics.roc_auc_score``) overall
and per kind (that kind's corrupted structures against all clean ones),
recall among the top 5 % of the ranking, and the number flagged (true and
false).  Target: overall ROC AUC >= 0.95.  Results go to stdout and
``benchmarks/results/outliers.txt``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import GPa

KINDS = ("shift", "force_sign", "stress_unit", "swap")
SHIFT_RANGE = (0.010, 0.030)        # eV/atom
MIN_ENERGY_CHANGE = 0.001           # eV/atom
MIN_FORCE_CHANGE = 0.1              # eV/Å
MIN_STRESS_CHANGE = 0.1 * GPa       # eV/Å^3
ROUNDS = (0, 1, 2)                  # single pass, the default one refit, up to two refits
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _labels(atoms):
    r = atoms.calc.results
    return {"energy": float(r["energy"]), "forces": np.array(r["forces"], dtype=float),
            "stress": None if r.get("stress") is None else np.array(r["stress"], dtype=float)}


def _relabel(atoms, lab):
    b = atoms.copy()
    b.calc = SinglePointCalculator(b, **{k: v for k, v in lab.items() if v is not None})
    return b


def corrupt(frames, fraction: float = 0.05, seed: int = 0):
    """Corrupt about ``fraction`` of ``frames``, cycling through :data:`KINDS`.

    Returns
    -------
    frames : list of ase.Atoms
        Copies with corrupted labels where ``kind != ""``.
    kind : ndarray of str, shape (n_frames,)
        Corruption kind per frame (``""`` = clean).
    """
    rng = np.random.default_rng(seed)
    n = len(frames)
    labs = [_labels(a) for a in frames]
    n_atoms = np.array([len(a) for a in frames])
    kind = np.full(n, "", dtype=object)
    target = max(int(round(fraction * n)), len(KINDS))
    order = list(rng.permutation(n))
    new = list(labs)

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
            d = rng.uniform(*SHIFT_RANGE) * rng.choice([-1.0, 1.0])
            new[i] = {**labs[i], "energy": labs[i]["energy"] + d * n_atoms[i]}
        elif what == "force_sign":
            i = take(lambda i: 2 * np.linalg.norm(labs[i]["forces"], axis=1).max() >= MIN_FORCE_CHANGE)
            if i is None:
                continue
            f = labs[i]["forces"].copy()
            j = int(np.argmax(np.linalg.norm(f, axis=1)))
            f[j] *= -1.0
            new[i] = {**labs[i], "forces": f}
        elif what == "stress_unit":
            i = take(lambda i: labs[i]["stress"] is not None
                     and 9 * np.abs(labs[i]["stress"]).max() >= MIN_STRESS_CHANGE)
            if i is None:
                continue
            new[i] = {**labs[i], "stress": 10.0 * labs[i]["stress"]}
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
    out = [a if kind[i] == "" else _relabel(a, new[i]) for i, a in enumerate(frames)]
    for a, b in zip(out, frames):
        a.info = dict(b.info)
    return out, kind.astype(str)


def ranking_row(table, kind) -> dict:
    """ROC AUC, top-5 % recall and flag counts of a screening table against the true corruptions."""
    from sklearn.metrics import roc_auc_score
    n = len(kind)
    s = np.empty(n)
    s[table["index"]] = table["score"]
    flag = np.zeros(n, bool)
    flag[table.flagged] = True
    bad = kind != ""
    row = {"n": n, "n_corrupt": int(bad.sum()), "auc": float(roc_auc_score(bad, s))}
    for k in KINDS:
        sel = (kind == k) | ~bad
        row[f"auc_{k}"] = float(roc_auc_score(kind[sel] == k, s[sel])) if np.any(kind == k) else np.nan
    n_top = max(int(np.ceil(0.05 * n)), 1)
    row["recall_top5%"] = float(np.sum(bad[table["index"][:n_top]]) / max(bad.sum(), 1))
    row["flag_true"] = int(np.sum(flag & bad))
    row["flag_false"] = int(np.sum(flag & ~bad))
    return row, s


def main(argv=None) -> int:
    import kernelpot
    from kernelpot.uq.metrics import format_table
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small model and subsets: a smoke run")
    args = p.parse_args(argv)
    from kernelpot import screen
    rows, details = {}, []
    pooled = {r: ([], []) for r in ROUNDS}
    for el in ("Si", "Li"):
        frames = kernelpot.read(DATA / "mlearn" / el / "training.json")
        if args.quick:
            frames = frames[::4]
            model = kernelpot.SparseGP(descriptor=kernelpot.SOAP(r_cut=4.0, n_max=4, l_max=3), n_sparse=100)
        else:
            model = kernelpot.SparseGP()
        bad_frames, kind = corrupt(frames, 0.05, seed=0)
        t0 = time.perf_counter()
        model.fit(bad_frames)
        fit_s = time.perf_counter() - t0
        for rounds in ROUNDS:
            t0 = time.perf_counter()
            table = screen(model, refit_rounds=rounds)
            row, s = ranking_row(table, kind)
            row["fit_s"], row["screen_s"] = fit_s, time.perf_counter() - t0
            row["rounds"] = table.rounds
            rows[f"{el}, refit_rounds={rounds}"] = row
            pooled[rounds][0].append(s)
            pooled[rounds][1].append(kind)
            lines = [f"{el}, refit_rounds={rounds} (performed {table.rounds}): corrupted structures "
                     f"(index, rank of {len(frames)}, score, kind, config_type)"]
            rank = np.empty(len(frames), int)
            rank[table["index"]] = np.arange(len(frames))
            for i in np.flatnonzero(kind != ""):
                lines.append(f"  {i:4d}  rank {rank[i] + 1:4d}  score {s[i]:8.1f}  {kind[i]:<12} "
                             f"{frames[i].info.get('config_type', '')}")
            lines.append(f"{el}, refit_rounds={rounds}: top of the screening table")
            lines.append(table.to_string(top=20))
            details.append("\n".join(lines))
            print(details[-1], flush=True)
    from sklearn.metrics import roc_auc_score
    for rounds in ROUNDS:
        s, kind = np.concatenate(pooled[rounds][0]), np.concatenate(pooled[rounds][1])
        bad = kind != ""
        row = {"n": len(s), "n_corrupt": int(bad.sum()), "auc": float(roc_auc_score(bad, s))}
        for k in KINDS:
            sel = (kind == k) | ~bad
            row[f"auc_{k}"] = float(roc_auc_score(kind[sel] == k, s[sel])) if np.any(kind == k) else np.nan
        rows[f"Si+Li pooled, refit_rounds={rounds}"] = row
    cols = ["n", "n_corrupt", "auc", *[f"auc_{k}" for k in KINDS], "recall_top5%", "flag_true",
            "flag_false", "rounds", "fit_s", "screen_s"]
    table = format_table(rows, columns=cols, floatfmt=".3g", name="data set")
    head = (f"Outlier screening, {'--quick smoke run' if args.quick else 'SparseGP() defaults'}; "
            f"5 % corrupted (seed 0); target ROC AUC >= 0.95")
    text = head + "\n" + table
    print("\n" + text)
    out = ROOT / "benchmarks" / "results" / ("outliers_quick.txt" if args.quick else "outliers.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n\n" + "\n\n".join(details) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
