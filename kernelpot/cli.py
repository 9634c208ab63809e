"""Command line: ``kernelpot fit | predict | eval | screen | audit``.

Thin front end over the Python API: every command is a few calls to functions
that notebooks use too.  Units on output: energies meV/atom, forces eV/Å,
stresses GPa (tables); files keep ASE units (eV, eV/Å, eV/Å^3).

User errors (a missing or unreadable file, an element the model does not
know, a folder that does not exist, a flag out of range) end with one line
``kernelpot: error: ...`` on stderr and exit code 2; ``--debug`` re-raises
them for the traceback.  Library warnings are printed as one line
``kernelpot: warning: ...`` without source paths.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from kernelpot._version import __version__

UNITS_HELP = ("Units: input files in ASE units (eV, eV/Å, eV/Å^3 with ASE's stress sign; mlearn JSON "
              "is converted from kBar on reading). Tables print energies per atom in meV/atom, force "
              "components in eV/Å and stress components in GPa.")

PREDICT_FIELDS = """\
The output is extended XYZ (read it back with kernelpot.read or ase.io.read). Per structure:
  energy                 predicted total energy, eV
  stress                 predicted stress, eV/Å^3, ASE sign (periodic cells only)
  energy_std             standard deviation of the total energy, eV (aleatoric + epistemic, calibrated)
  energy_std_epistemic   model (posterior) part of it, eV
  stress_std, stress_std_epistemic   per Voigt component xx yy zz yz xz xy, eV/Å^3 (periodic only)
  extrapolation          the structure's largest latent variance over the largest the calibration's
                         held-out data reached: above 1 its std are checked by no held-out error
                         (a lower bound); nan for a model fitted with --no-calibrate
  predicted_by           kernelpot's version and the model file (these are no reference labels)
Per atom:
  forces                 predicted forces, eV/Å
  forces_std, forces_std_epistemic   per Cartesian component, eV/Å
  local_energy           per-atom energies summing to the total, eV
  local_energy_std       posterior std of each local energy, eV (epistemic: no label observes one
                         atom's energy, so it is mostly how the energy may be split among atoms,
                         not how unusual an atom is; the calculator's energies_std)
Input labels (energy, forces, stress) are not copied to the output."""

EVAL_COLUMNS = """\
Printed: an error table (MAE, RMSE and number n of values) for energy per atom (meV/atom), force
components (eV/Å) and stress components (GPa), and an uncertainty table for the same three:
  within 1σ, 2σ   share of errors inside one and two predicted standard deviations
                  (68 % and 95 % when the σ are calibrated)
  miscal. area    miscalibration area: mean gap between expected and observed coverage over all
                  confidence levels (0 = calibrated; < 0.05 is good)
  msz             mean squared z-score, mean((error/σ)^2): 1 when calibrated, > 1 when σ are too
                  small (over-confident), < 1 when too large
  spearman        rank correlation of |error| with σ (does a larger σ mean a larger error?)
  n               values counted: components fixed by symmetry (forces in a perfect strained
                  crystal: zero error in every model) are left out of this table, not the errors
A warning names the structures whose latent variance lies beyond the largest the calibration's held-out
data reached (extrapolation > 1): their σ are checked by no held-out error."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (usage stays in ``--help``).

    Usage errors of a subcommand start with the same ``kernelpot: error:`` as
    every other error (argparse would write ``kernelpot fit: error:``); the
    hint names the subcommand's own help, ``(see kernelpot fit --help)``.
    """

    def error(self, message):
        root = self.prog.split()[0] if self.prog else "kernelpot"
        self.exit(2, f"{root}: error: {message} (see {self.prog} --help)\n")


class _UserError(Exception):
    """An error whose message is the whole story (no traceback needed)."""


def _showwarning(message, category, filename, lineno, file=None, line=None):
    """One line per warning, without the source path and line of the installed package."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"kernelpot: warning: {text}", file=sys.stderr if file is None else file)


def _fit(model, frames):
    """``model.fit(frames)`` without repeating the validation warnings :func:`_validate` printed.

    Only the fit's summary of the same validation report is dropped; every other warning of the fit
    (label conventions found against the physics, disagreeing isolated atoms, a noise as large as the
    labels' spread) reaches the user as ``kernelpot: warning:``.
    """
    from kernelpot.io.labels import DataWarning
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"fit: \d+ validation warning\(s\) in ", category=DataWarning)
        return model.fit(frames)


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s}")
    return v


def _word_or(word: str, parse, expected: str):
    """An argparse type: ``word`` (any case) as itself, else ``parse(s)``; its error names both."""
    def convert(s):
        if str(s).strip().lower() == word:
            return word
        try:
            return parse(s)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected {expected} or '{word}', got {s!r}") from None
    return convert


#: ``--n-sparse``: a positive integer or ``auto``
_sparse_count = _word_or("auto", _positive_int, "a positive integer")
#: ``--radial-scaling``: r0 in Å, or ``none`` (unscaled SOAP, kept as given)
_scaling = _word_or("none", _positive_float, "r0 in Å (a positive number)")


def _read(path, args=None):
    """Frames of ``path``; label keys passed only when given (so older ``read`` works)."""
    import kernelpot
    if not Path(path).exists():
        raise _UserError(f"no such file: {str(path)!r}")
    kw = {}
    for name in ("energy_key", "forces_key", "stress_key"):
        if args is not None and getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    try:
        frames = kernelpot.read(path, **kw)
    except (ValueError, KeyError, OSError, StopIteration, IndexError) as exc:
        if isinstance(exc, ValueError) and str(path) in str(exc):
            raise
        raise _UserError(f"cannot read {str(path)!r}: {exc}") from exc
    if not frames:
        raise _UserError(f"no structures in {str(path)!r} (is it a structure file?)")
    return frames


def _validate(frames, path, quiet):
    """Run :func:`kernelpot.validate`; errors stop, warnings are printed (unless ``quiet``)."""
    import kernelpot
    report = kernelpot.validate(frames, raise_on_error=False)
    if report.errors:
        more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise _UserError(f"{path}: {report.errors[0]}{more}")
    if not quiet:
        for w in report.warnings:
            print(f"kernelpot: warning: {path}: {w}", file=sys.stderr)
    return report


def _model_kwargs(args) -> dict:
    kw = {"verbose": not args.quiet, "n_sparse": args.n_sparse, "max_memory": args.max_memory,
          "random_state": args.seed, "calibrate": not args.no_calibrate}
    from kernelpot import SOAP
    soap = {}
    if args.r_cut is not None:
        width = SOAP().cutoff_width
        if not args.r_cut > width:
            raise ValueError(f"--r-cut {args.r_cut:g} Å: the cutoff radius must exceed the width of SOAP's smooth "
                             f"cut-off, {width:g} Å (and any bond length to see neighbours; 4-6 Å is usual)")
        soap["r_cut"] = args.r_cut
    if args.radial_scaling is not None:
        soap["radial_scaling"] = None if args.radial_scaling == "none" else args.radial_scaling
    if soap:
        kw["descriptor"] = SOAP(**soap)
        try:
            kw["descriptor"]._validate_params()  # named before any file is read
        except ValueError as exc:
            given = {"r_cut": "--r-cut", "radial_scaling": "--radial-scaling"}
            raise ValueError(", ".join(f"{given[k]} {'none' if v is None else '%g Å' % v}" for k, v in soap.items())
                             + f": {exc}") from None
    return kw


def _output(path, flag: str, inputs: dict, suffixes: tuple, writes: str) -> Path:
    """Check an output path before any work: writable, not one of the command's inputs, a fitting name.

    ``inputs`` maps what each input is (``"model file"``) to its path (None: not given).  Writing over an
    input would destroy it (a model replaced by predictions, a training file by a PNG), and a name whose
    suffix says another format (``-o p.db`` holding extxyz) breaks the next read.
    """
    from kernelpot.io.files import check_writable
    out = check_writable(path)
    for what, src in inputs.items():
        if src is not None and Path(src).exists() and out.exists() and out.resolve() == Path(src).resolve():
            raise ValueError(f"{flag} {path} is the {what}: writing it would replace it; write to another file")
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path}: this writes {writes}; give a name ending in {' or '.join(suffixes)}")
    return out


def _savefig(fig, path):
    from kernelpot.io.files import atomic_write
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def _in_file(path, exc: ValueError) -> ValueError:
    """The structures' problems (an element the model does not know), named by their file, not by ``predict``."""
    return ValueError(f"{path}: {str(exc).replace('predict: ', '', 1)}")


def _check_test_elements(test, test_path, train, train_path):
    """Before the fit: a test structure with an element the training file lacks could not be predicted."""
    from ase.data import chemical_symbols
    known = set(np.concatenate([a.numbers for a in train]).tolist())
    bad = [i for i, a in enumerate(test) if not set(a.numbers.tolist()) <= known]
    if bad:
        new = sorted({int(z) for i in bad for z in test[i].numbers} - known)
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        raise ValueError(f"{test_path}: {len(bad)} structure(s) (frames {shown}) contain "
                         f"{[chemical_symbols[z] for z in new]}, which {train_path} does not: the model could not "
                         "predict them (nothing was fitted; remove them from the test file or add training data)")


def _cmd_fit(args) -> int:
    import kernelpot
    out = Path(args.output)
    if out.is_dir():
        raise ValueError(f"-o {args.output} is a folder; give a model file name, e.g. {out / 'model.npz'}")
    if not out.suffix:  # numpy's convention: a bare name gets .npz
        out = Path(str(out) + ".npz")
    inputs = {"training file": args.train, "test file": args.test}
    _output(out, "-o", inputs, (".npz",), "a model file (.npz)")
    png = Path(out.with_suffix("").as_posix() + "_parity.png")
    if args.test:
        _output(png, "the parity plot", inputs, (".png",), "a PNG image")
    kw = _model_kwargs(args)   # a bad setting is named before any file is read
    train = _read(args.train, args)
    _validate(train, args.train, args.quiet)
    test = None
    if args.test:
        test = _read(args.test, args)
        _validate(test, args.test, args.quiet)
        _check_test_elements(test, args.test, train, args.train)
    model = _fit(kernelpot.SparseGP(**kw), train)
    model.save(out, compact=args.compact)
    if not args.quiet:
        print(f"model written to {out}")
        print(_noise_table(model))
    if test is not None:
        from kernelpot.uq.evaluation import evaluate, error_table, format_error_table, parity_dicts
        ev = evaluate(model, test)
        print(f"test set {args.test} ({len(test)} structures):")
        print(format_error_table(error_table(ev)))
        from kernelpot.plot import parity_panel
        fig, _ = parity_panel(*parity_dicts(ev))
        _savefig(fig, png)
        if not args.quiet:
            print(f"parity plots written to {png}")
    return 0


def _noise_table(model) -> str:
    from ase.units import GPa
    from kernelpot.gp.assembly import noise_as_used
    conv = {"energy": (1000.0, "meV/atom"), "forces": (1.0, "eV/Å"), "stress": (1.0 / GPa, "GPa")}
    lines = ["learned hyperparameters:", f"  delta (kernel scale)        {model.delta_:.4g} eV"]
    choice = getattr(model, "descriptor_choice_", None)
    if choice is not None:  # the default descriptor: what the evidence chose, and against what
        from kernelpot.gp.sparse import scaling_label
        rows = choice["candidates"]
        lines.append(f"  SOAP radial scaling         {scaling_label(rows[choice['chosen']]['radial_scaling'])} "
                     "(log evidence " + ", ".join(f"{scaling_label(r['radial_scaling'])} {r['log_likelihood']:.1f}"
                                                  for r in rows) + ")")
    frames = getattr(model, "_train_frames", None)
    used = {} if frames is None else noise_as_used(model, frames)
    for g, s in model.noise_.items():
        f, unit = conv[g.split(":")[0]]
        line = f"  noise {g:<22}{s * f:.4g} {unit}"
        if g in used:
            # with learned noise a sigma given in the data is a relative weight (see kernelpot.io.labels)
            line = (f"  noise {g:<22}{used[g][0] * f:.4g} {unit} as fitted (precision-weighted mean over the "
                    f"{len(used[g][1])} frames that give their own sigma; {s * f:.4g} {unit} for a label without)")
        lines.append(line)
    return "\n".join(lines)


def _load(path):
    import kernelpot
    return kernelpot.load(path)


def _cmd_predict(args) -> int:
    import kernelpot
    from kernelpot.io.files import atomic_write
    _output(args.output, "-o", {"input file (its reference labels)": args.frames, "model file": args.model},
            (".xyz", ".extxyz"), "extended XYZ")
    model = _load(args.model)
    frames = _read(args.frames)
    out = []
    from ase.calculators.singlepoint import SinglePointCalculator
    from kernelpot.io.labels import PREDICTED_KEY
    for i, a in enumerate(frames):
        try:
            r = model.predict_frame(a, return_std=True)
        except ValueError as exc:
            raise ValueError(f"{args.frames}: frame {i}: {exc}") from exc
        b = a.copy()
        b.arrays.pop("forces", None)
        # an input written by predict before (another model's output) has the std columns too: replaced,
        # as its energy and forces are
        b.info = {k: v for k, v in a.info.items()
                  if k not in ("energy", "stress", "free_energy", "stress_std", "stress_std_epistemic")}
        b.set_array("forces_std", r["forces_std"])
        b.set_array("forces_std_epistemic", r["forces_std_epistemic"])
        b.set_array("local_energy", r["energies"])
        b.set_array("local_energy_std", r["energies_std"])
        b.info[PREDICTED_KEY] = f"kernelpot {kernelpot.__version__} model {Path(args.model).name}"
        b.info["extrapolation"] = r["extrapolation"]
        b.info["energy_std"] = r["energy_std"]
        b.info["energy_std_epistemic"] = r["energy_std_epistemic"]
        res = {"energy": r["energy"], "forces": r["forces"]}
        if np.all(np.isfinite(r["stress"])):
            res["stress"] = r["stress"]
            b.info["stress_std"] = r["stress_std"]
            b.info["stress_std_epistemic"] = r["stress_std_epistemic"]
        b.calc = SinglePointCalculator(b, **res)
        out.append(b)
    with atomic_write(args.output, suffix=Path(args.output).suffix) as tmp:
        kernelpot.write(tmp, out)
    if not args.quiet:
        print(f"{len(out)} predictions with standard deviations written to {args.output}")
    return 0


def _uncertainty_table(ev) -> str:
    from kernelpot.uq import metrics
    lines = [f"{'quantity':<10}{'within 1σ':>11}{'within 2σ':>11}{'miscal. area':>14}{'msz':>9}"
             f"{'spearman':>10}{'n':>9}"]
    for k in ("energy", "forces", "stress"):
        if k in ev and "std" in ev[k]:
            free = np.ravel(ev[k]["free"])  # components fixed by symmetry are always "covered": left out
            if not free.any():
                continue
            s = metrics.summary(np.ravel(ev[k]["err"])[free], np.ravel(ev[k]["std"])[free])
            lines.append(f"{k:<10}{100 * s['coverage_1']:>10.0f}%{100 * s['coverage_2']:>10.0f}%"
                         f"{s['miscal_area']:>14.3f} {s['msz']:>8.3g}{s['spearman']:>10.2f}{s['n']:>9d}")
    return "\n".join(lines)


def _cmd_eval(args) -> int:
    from kernelpot.uq.evaluation import evaluate, error_table, format_error_table
    model = _load(args.model)
    frames = _read(args.frames, args)
    from kernelpot.io.labels import _list, frame_labels, prediction_source
    if not any(frame_labels(a, i) for i, a in enumerate(frames)):
        raise ValueError(f"{args.frames} has no reference labels (energy, forces or stress) to evaluate against; "
                         "use kernelpot predict for unlabelled structures")
    predicted = [i for i, a in enumerate(frames) if prediction_source(a) is not None]
    if predicted:
        print(f"kernelpot: warning: {args.frames}: {len(predicted)} of {len(frames)} frames (frames "
              f"{_list(np.array(predicted))}) hold predictions of {prediction_source(frames[predicted[0]])}, not "
              "reference labels: the errors below compare a model with a model", file=sys.stderr)
    try:
        ev = evaluate(model, frames)
    except ValueError as exc:
        raise _in_file(args.frames, exc) from exc
    _warn_extrapolation(args.frames, ev["pred"].get("extrapolation"))
    print("errors (energy per atom in meV/atom, force components in eV/Å, stress components in GPa):")
    print(format_error_table(error_table(ev)))
    print("uncertainty coverage and calibration (see kernelpot eval --help for the columns):")
    print(_uncertainty_table(ev))
    return 0


def _warn_extrapolation(path, extrapolation) -> None:
    """One warning naming the structures predicted beyond the calibration's held-out data (extrapolation > 1)."""
    from kernelpot.io.labels import _list
    if extrapolation is None:
        return
    x = np.asarray(extrapolation, float)
    far = np.flatnonzero(x > 1.0)
    if far.size:
        print(f"kernelpot: warning: {path}: {far.size} of {x.size} structures (frames {_list(far)}) lie beyond the "
              f"largest latent variance the calibration's held-out data reached (up to {x[far].max():.3g} times it): "
              "their σ are the GP's own there, checked by no held-out error; read them as a lower bound",
              file=sys.stderr)


def _cmd_screen(args) -> int:
    import kernelpot
    if args.plot:
        _output(args.plot, "--plot", {"training file": args.train, "model file": args.model}, (".png",),
                "a PNG image")
    if not 0.0 < args.alpha < 1.0:
        raise ValueError(f"--alpha must be strictly between 0 and 1, got {args.alpha}")
    frames = _read(args.train, args)
    model = None
    if args.model:
        model = _load(args.model)
        n_fit = getattr(model, "n_train_frames_", None)
        if n_fit is not None and n_fit != len(frames):
            raise ValueError(f"{args.model} was fitted on {n_fit} structures but {args.train} has {len(frames)}: "
                             "screening needs the model's own training file")
        try:  # the fingerprint kept in the model file (files without one: the count above)
            model.check_training_frames(frames)
        except ValueError as exc:
            raise ValueError(f"{args.train} is not the training file of {args.model} (same number of structures, "
                             "but other structures, labels or order): screening needs the model's own training "
                             "file") from exc
    _validate(frames, args.train, args.quiet)
    if model is None:
        model = _fit(kernelpot.SparseGP(**_model_kwargs(args)), frames)
    table = kernelpot.screen(model, frames, alpha=args.alpha, refit_rounds=args.refit_rounds)
    print(table.to_string(top=args.top))
    if args.plot:
        fig, _ = table.plot()
        _savefig(fig, args.plot)
        if not args.quiet:
            print(f"influence plot written to {args.plot}")
    return 0


def _is_training_set(model, frames) -> bool:
    """Whether ``frames`` are the model's training frames (count and fingerprint; see check_training_frames)."""
    if getattr(model, "n_train_frames_", None) != len(frames):
        return False
    try:
        model.check_training_frames(frames)
    except ValueError:
        return False
    return True


def _cmd_audit(args) -> int:
    import kernelpot
    frames = _read(args.frames, args)
    model = _load(args.model) if args.model else None
    if model is not None and not hasattr(model, "training_diagnostics_") and _is_training_set(model, frames):
        # the model file does not keep the leave-one-out of the fit; with its own training file
        # given, it is recomputed so the audit sees held-out residuals (other frames: plain residuals)
        from kernelpot.gp.loo import leave_one_out
        model._train_frames = frames
        model.training_diagnostics_ = leave_one_out(model, frames)
    try:
        report = kernelpot.audit(frames, model, threshold_meV=args.threshold)
    except ValueError as exc:
        raise _in_file(args.frames, exc) from exc
    print(report)
    return 0


def _add_common(p):
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars, phase lines or summaries (tables are still printed)")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")


def _add_label_keys(p):
    p.add_argument("--energy-key", metavar="KEY", help="name of the energy label in the file "
                   "(default: the calculator's energy, else info['energy'])")
    p.add_argument("--forces-key", metavar="KEY", help="name of the per-atom forces array (default: forces)")
    p.add_argument("--stress-key", metavar="KEY", help="name of the stress label (default: stress)")


def _add_model_settings(p, when=""):
    from kernelpot.gp.sparse import SparseGP
    defaults = SparseGP()
    p.add_argument("--n-sparse", type=_sparse_count, default=defaults.n_sparse, metavar="M",
                   help=f"sparse environments per species{when} (default {defaults.n_sparse}; fewer is faster and "
                        "coarser), or 'auto': grown while the evidence rises, within --max-memory")
    p.add_argument("--max-memory", type=_positive_float, default=defaults.max_memory, metavar="GiB",
                   help=f"memory budget of --n-sparse auto{when} (default {defaults.max_memory} GiB)")
    p.add_argument("--r-cut", type=_positive_float, default=None, metavar="Å",
                   help=f"SOAP cutoff radius in Å{when} (default: the SOAP default, 5 Å)")
    p.add_argument("--radial-scaling", type=_scaling, default=None, metavar="Å",
                   help=f"r0 of SOAP's radial scaling 1 / (1 + (r / r0)^4){when}: near neighbours weigh more "
                        "than far ones; 'none': unscaled, as in GAP (default: with neither this nor --r-cut, "
                        "the fit keeps unscaled SOAP or r0 = r_cut / 2, whichever has the higher evidence)")
    p.add_argument("--seed", type=int, default=0, help=f"seed of the sparse selection{when} (default 0); "
                   "fits are deterministic given it")
    p.add_argument("--no-calibrate", action="store_true",
                   help=f"skip the leave-one-out pass that calibrates the standard deviations{when} "
                        "(faster; the std are then the raw GP ones; default: calibrate)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="kernelpot", description="Sparse GP interatomic potentials. " + UNITS_HELP)
    p.add_argument("--version", action="version", version=f"kernelpot {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    f = sub.add_parser("fit", help="fit a model to labelled structures", formatter_class=fmt,
                       description="Fit a sparse GP to energies, forces and stresses; print each phase with "
                       "its elapsed time, the learned noise and, with --test, the test errors.\n" + UNITS_HELP)
    f.add_argument("train", help="training structures (extxyz, ASE db, mlearn JSON, anything ase.io.read reads)")
    f.add_argument("--test", help="test structures: prints MAE/RMSE (meV/atom, eV/Å, GPa) and writes parity "
                                  "plots to OUTPUT_parity.png (default: no test set)")
    f.add_argument("-o", "--output", default="model.npz",
                   help="model file to write, ending in .npz (a bare name gets it); its folder must exist "
                        "(default model.npz)")
    f.add_argument("--compact", action="store_true",
                   help="write a smaller model file without the two M x M matrices that loading "
                        "recomputes (same predictions and screening; loading costs one Cholesky "
                        "factorisation; default: full file)")
    _add_model_settings(f)
    _add_label_keys(f)
    _add_common(f)
    f.set_defaults(func=_cmd_fit)
    pr = sub.add_parser("predict", help="predict energies, forces, stresses and their std", formatter_class=fmt,
                        description="Predict structures with a fitted model.\n\n" + PREDICT_FIELDS)
    pr.add_argument("model", help="model file written by kernelpot fit (.npz)")
    pr.add_argument("frames", help="structures to predict (any format kernelpot.read reads; labels not needed)")
    pr.add_argument("-o", "--output", required=True,
                    help="extxyz file to write (required); fields and units listed above")
    _add_common(pr)
    pr.set_defaults(func=_cmd_predict)
    ev = sub.add_parser("eval", help="error table and uncertainty calibration on labelled structures",
                        formatter_class=fmt,
                        description="Compare a model with labelled structures.\n\n" + EVAL_COLUMNS)
    ev.add_argument("model", help="model file written by kernelpot fit (.npz)")
    ev.add_argument("frames", help="labelled structures (energy, and forces/stress where available)")
    _add_label_keys(ev)
    _add_common(ev)
    ev.set_defaults(func=_cmd_eval)
    sc = sub.add_parser("screen", help="rank training structures by how suspicious their labels are",
                        description="Leave-one-out screen of a training set for mislabelled structures "
                                    "(see kernelpot.screen). " + UNITS_HELP)
    sc.add_argument("train", help="training structures")
    sc.add_argument("--model", help="a model file whose training set is TRAIN (checked; default: "
                                    "fit one with the settings below)")
    sc.add_argument("--top", type=_positive_int, default=20, help="rows to print (default 20)")
    sc.add_argument("--plot", help="write the leverage / z-score influence plot to this PNG file "
                                   "(default: no plot)")
    sc.add_argument("--alpha", type=_positive_float, default=0.05,
                    help="family-wise false-flag rate over the training set (default 0.05)")
    sc.add_argument("--refit-rounds", type=int, default=1, choices=range(0, 10), metavar="N",
                    help="refits without the flagged structures, against masking (default 1; 0 for a "
                         "single pass in half the time)")
    _add_model_settings(sc, when=" (when fitting)")
    _add_label_keys(sc)
    _add_common(sc)
    sc.set_defaults(func=_cmd_screen)
    au = sub.add_parser("audit", help="check DFT settings consistency and per-group energy offsets",
                        description="Groups frames by the DFT settings stored with them (functional, "
                        "pseudopotentials, cutoff, k-point density in k-points per Å^-1, smearing) and, "
                        "with --model, flags config_types whose energies are offset by a constant per atom "
                        "(meV/atom) from the rest: the signature of mixed DFT settings. Drops nothing.")
    au.add_argument("frames", help="labelled structures with their DFT settings in info")
    au.add_argument("--model", help="fitted model whose residuals are used for the offset test (default: "
                                    "settings only)")
    au.add_argument("--threshold", type=_positive_float, default=5.0,
                    help="smallest offset to flag, meV/atom (default 5)")
    _add_label_keys(au)
    _add_common(au)
    au.set_defaults(func=_cmd_audit)
    return p


def main(argv=None) -> int:
    """Run the command line; returns the exit code (0 success, 2 usage or input error)."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = _showwarning
        try:
            from kernelpot._threads import max_threads
            max_threads()   # a bad KERNELPOT_NUM_THREADS is named as itself, not as a problem of some file
            return args.func(args)
        except (_UserError, ValueError, TypeError, OSError, KeyError) as exc:
            if args.debug:
                raise
            msg = str(exc).strip().splitlines()
            msg = msg[0] if len(msg) == 1 else " ".join(m.strip() for m in msg)
            if isinstance(exc, KeyError):
                msg = f"missing key {msg}"
            print(f"kernelpot: error: {msg or type(exc).__name__}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            if args.debug:
                raise
            # every file is written through a temporary one and renamed (kernelpot.io.files.atomic_write)
            print("kernelpot: interrupted; no output file was left half-written", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
