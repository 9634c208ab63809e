"""Command line: ``kernelpot fit | predict | eval | screen | audit``.

Thin front end over the Python API: every command is a few calls to functions
that notebooks use too.  Units on output: energies meV/atom, forces eV/Å,
stresses GPa (tables); files keep ASE units (eV, eV/Å, eV/Å^3).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

UNITS_HELP = ("Units: input files in ASE units (eV, eV/Å, eV/Å^3 with ASE's stress sign; mlearn JSON "
              "is converted from kBar on reading). Tables print energies per atom in meV/atom, force "
              "components in eV/Å and stress components in GPa.")


def _add_common(p):
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")


def _cmd_fit(args) -> int:
    import kernelpot
    from kernelpot.uq.evaluation import evaluate, error_table, format_error_table, parity_dicts
    train = kernelpot.read(args.train)
    kernelpot.validate(train)
    kw = {"verbose": not args.quiet}
    if args.n_sparse is not None:
        kw["n_sparse"] = args.n_sparse
    model = kernelpot.SparseGP(**kw).fit(train)
    out = Path(args.output)
    model.save(out)
    if not args.quiet:
        print(f"model written to {out}")
        print(_noise_table(model))
    if args.test:
        test = kernelpot.read(args.test)
        kernelpot.validate(test)
        ev = evaluate(model, test)
        print(f"test set {args.test} ({len(test)} structures):")
        print(format_error_table(error_table(ev)))
        png = out.with_suffix("").as_posix() + "_parity.png"
        from kernelpot.plot import parity_panel
        fig, _ = parity_panel(*parity_dicts(ev))
        fig.savefig(png, dpi=120)
        if not args.quiet:
            print(f"parity plots written to {png}")
    return 0


def _noise_table(model) -> str:
    from ase.units import GPa
    conv = {"energy": (1000.0, "meV/atom"), "forces": (1.0, "eV/Å"), "stress": (1.0 / GPa, "GPa")}
    lines = ["learned hyperparameters:", f"  delta (kernel scale)        {model.delta_:.4g} eV"]
    for g, s in model.noise_.items():
        f, unit = conv[g.split(":")[0]]
        lines.append(f"  noise {g:<22}{s * f:.4g} {unit}")
    return "\n".join(lines)


def _cmd_predict(args) -> int:
    import kernelpot
    model = kernelpot.load(args.model)
    frames = kernelpot.read(args.frames)
    out = []
    from ase.calculators.singlepoint import SinglePointCalculator
    for a in frames:
        r = model.predict_frame(a, return_std=True)
        b = a.copy()
        b.arrays.pop("forces", None)
        b.info = {k: v for k, v in a.info.items() if k not in ("energy", "stress", "free_energy")}
        b.new_array("forces_std", r["forces_std"])
        b.new_array("forces_std_epistemic", r["forces_std_epistemic"])
        b.new_array("local_energy", r["energies"])
        b.info["energy_std"] = r["energy_std"]
        b.info["energy_std_epistemic"] = r["energy_std_epistemic"]
        res = {"energy": r["energy"], "forces": r["forces"]}
        if np.all(np.isfinite(r["stress"])):
            res["stress"] = r["stress"]
            b.info["stress_std"] = r["stress_std"]
            b.info["stress_std_epistemic"] = r["stress_std_epistemic"]
        b.calc = SinglePointCalculator(b, **res)
        out.append(b)
    kernelpot.write(args.output, out)
    if not args.quiet:
        print(f"{len(out)} predictions with standard deviations written to {args.output}")
    return 0


def _cmd_eval(args) -> int:
    import kernelpot
    from kernelpot.uq.evaluation import evaluate, error_table, format_error_table
    from kernelpot.uq import metrics
    model = kernelpot.load(args.model)
    frames = kernelpot.read(args.frames)
    ev = evaluate(model, frames)
    print(format_error_table(error_table(ev)))
    if "forces" in ev:
        s = metrics.summary(ev["forces"]["err"].ravel(), ev["forces"]["std"].ravel())
        print("force uncertainty: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items() if isinstance(v, float)))
    return 0


def _cmd_screen(args) -> int:
    import kernelpot
    frames = kernelpot.read(args.train)
    kernelpot.validate(frames)
    if args.model:
        model = kernelpot.load(args.model)
    else:
        kw = {"verbose": not args.quiet}
        if args.n_sparse is not None:
            kw["n_sparse"] = args.n_sparse
        model = kernelpot.SparseGP(**kw).fit(frames)
    table = kernelpot.screen(model, frames, alpha=args.alpha, refit_rounds=args.refit_rounds)
    print(table.to_string(top=args.top))
    if args.plot:
        fig, _ = table.plot()
        fig.savefig(args.plot, dpi=120)
        if not args.quiet:
            print(f"influence plot written to {args.plot}")
    return 0


def _cmd_audit(args) -> int:
    import kernelpot
    frames = kernelpot.read(args.frames)
    model = kernelpot.load(args.model) if args.model else None
    report = kernelpot.audit(frames, model, threshold_meV=args.threshold)
    print(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kernelpot", description="Sparse GP interatomic potentials. " + UNITS_HELP)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit a model to labelled structures", description=UNITS_HELP)
    f.add_argument("train", help="training structures (extxyz, ASE db, mlearn JSON, anything ase.io.read reads)")
    f.add_argument("--test", help="test structures: prints MAE/RMSE and writes parity plots")
    f.add_argument("-o", "--output", default="model.npz", help="model file to write (default model.npz)")
    f.add_argument("--n-sparse", type=int, default=None, help="sparse environments per species")
    _add_common(f)
    f.set_defaults(func=_cmd_fit)
    pr = sub.add_parser("predict", help="predict energies, forces, stresses and their std", description=UNITS_HELP)
    pr.add_argument("model")
    pr.add_argument("frames")
    pr.add_argument("-o", "--output", required=True, help="extxyz file with predictions and *_std fields")
    _add_common(pr)
    pr.set_defaults(func=_cmd_predict)
    ev = sub.add_parser("eval", help="error table and uncertainty calibration on labelled structures",
                        description=UNITS_HELP)
    ev.add_argument("model")
    ev.add_argument("frames")
    _add_common(ev)
    ev.set_defaults(func=_cmd_eval)
    sc = sub.add_parser("screen", help="rank training structures by how suspicious their labels are",
                        description="Leave-one-out screen of a training set for mislabelled structures "
                                    "(see kernelpot.screen). " + UNITS_HELP)
    sc.add_argument("train", help="training structures")
    sc.add_argument("--model", help="a fitted model file whose training set is TRAIN (default: fit one "
                                    "with default settings)")
    sc.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    sc.add_argument("--plot", help="write the leverage / z-score influence plot to this file")
    sc.add_argument("--alpha", type=float, default=0.05,
                    help="family-wise false-flag rate over the training set (default 0.05)")
    sc.add_argument("--refit-rounds", type=int, default=1,
                    help="refits without the flagged structures, against masking (default 1; 0 for a "
                         "single pass in half the time)")
    sc.add_argument("--n-sparse", type=int, default=None, help="sparse environments per species (when fitting)")
    _add_common(sc)
    sc.set_defaults(func=_cmd_screen)
    au = sub.add_parser("audit", help="check DFT settings consistency and per-group energy offsets",
                        description="Groups frames by the DFT settings stored with them (functional, "
                        "pseudopotentials, cutoff, k-point density in k-points per Å^-1, smearing) and, "
                        "with --model, flags config_types whose energies are offset by a constant per atom "
                        "(meV/atom) from the rest: the signature of mixed DFT settings. Drops nothing.")
    au.add_argument("frames")
    au.add_argument("--model", help="fitted model whose residuals are used for the offset test")
    au.add_argument("--threshold", type=float, default=5.0, help="smallest offset to flag, meV/atom (default 5)")
    _add_common(au)
    au.set_defaults(func=_cmd_audit)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
