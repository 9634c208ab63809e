"""Generate kernelpot's default data set: fcc copper labelled with ASE's EMT potential.

Writes ``emt_cu_train.xyz`` (61 frames) and ``emt_cu_test.xyz`` (20 frames) as
extended XYZ with total energy (eV), forces (eV/Å) and, for periodic frames,
stress (eV/Å^3, ASE sign), grouped by ``config_type``:

==================  =====  ==============================================================
config_type         atoms  what
==================  =====  ==============================================================
isolated_atom       1      one Cu atom, non-periodic (train only; the E0 reference)
bulk_rattle         32     2x2x2 cubic fcc, volume +-1.5 %, Gaussian rattle of
                           0.03 / 0.06 / 0.10 Å per component (info ``rattle_std``;
                           room-temperature Cu has about 0.08 Å)
bulk_hydrostatic    32     lattice constant scaled by 0.96 ... 1.04, rattle 0.01 Å
bulk_shear          32     random symmetric strain (|shear| <= 3 %, |normal| <= 1 %)
                           applied as ``cell @ (I + eps)``, rattle 0.01 Å
vacancy             31     2x2x2 cubic cell minus one random atom, rattle 0.05 Å
surface_111         16     fcc(111) 2x2x4 slab, 6 Å vacuum each side, pbc True, rattle 0.05 Å
surface_100         16     fcc(100) 2x2x4 slab, same settings
==================  =====  ==============================================================

Everything random comes from ``numpy.random.default_rng`` with fixed seeds,
positions are rounded to 1e-8 Å *before* EMT is evaluated (so the labels belong
to the written positions exactly), and energies/stresses are rounded to
1e-10 eV / 1e-12 eV/Å^3, so re-running reproduces both files byte for byte::

    python data/make_data.py            # writes next to this script
    python data/make_data.py --out DIR  # writes into DIR

Needs only numpy and ASE (plus kernelpot for the writer).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from kernelpot.io import write

#: EMT's equilibrium fcc lattice constant for Cu is 3.5898 Å.
A0 = 3.59
SEEDS = {"train": 20240611, "test": 20240612}
FILES = {"train": "emt_cu_train.xyz", "test": "emt_cu_test.xyz"}

#: Frames per config_type and split.
COUNTS = {
    "train": {"bulk_rattle": 8, "bulk_hydrostatic": 10, "bulk_shear": 10, "vacancy": 8,
              "surface": 8},
    "test": {"bulk_rattle": 2, "bulk_hydrostatic": 4, "bulk_shear": 4, "vacancy": 3,
             "surface": 3},
}
RATTLE_STDS = (0.03, 0.06, 0.10)  # Å, per Cartesian component


def _bulk32(a: float = A0) -> Atoms:
    return bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 2))


def _rattle(atoms: Atoms, std: float, rng: np.random.Generator) -> Atoms:
    atoms.positions = atoms.positions + rng.normal(0.0, std, size=(len(atoms), 3))
    return atoms


def _label(atoms: Atoms, config_type: str, **info: float | str) -> Atoms:
    """Round positions, evaluate EMT, store rounded labels in a SinglePointCalculator."""
    atoms.positions = np.round(atoms.positions, 8)
    atoms.cell = np.round(atoms.cell.array, 10)
    atoms.calc = EMT()
    results = {"energy": round(float(atoms.get_potential_energy()), 10),
               "forces": atoms.get_forces()}
    if atoms.pbc.all():
        results["stress"] = np.round(atoms.get_stress(), 12)
    atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info["config_type"] = config_type
    atoms.info.update(info)
    return atoms


def make_frames(split: str) -> list[Atoms]:
    """Build and label the frames of one split (``"train"`` or ``"test"``)."""
    rng = np.random.default_rng(SEEDS[split])
    counts = COUNTS[split]
    frames: list[Atoms] = []

    if split == "train":
        frames.append(_label(Atoms("Cu", pbc=False), "isolated_atom"))

    for std in RATTLE_STDS:
        for _ in range(counts["bulk_rattle"]):
            scale = (1.0 + rng.uniform(-0.015, 0.015)) ** (1.0 / 3.0)
            atoms = _rattle(_bulk32(A0 * scale), std, rng)
            frames.append(_label(atoms, "bulk_rattle", rattle_std=std))

    # Test lattice constants fall between and inside the training ones (no extrapolation).
    lo, hi = (0.96, 1.04) if split == "train" else (0.965, 1.035)
    for scale in np.linspace(lo, hi, counts["bulk_hydrostatic"]):
        atoms = _rattle(_bulk32(A0 * scale), 0.01, rng)
        frames.append(_label(atoms, "bulk_hydrostatic", lattice_scale=float(round(scale, 6))))

    for _ in range(counts["bulk_shear"]):
        eps = np.diag(rng.uniform(-0.01, 0.01, size=3))
        off = rng.uniform(-0.03, 0.03, size=3)
        eps[1, 2] = eps[2, 1] = off[0]
        eps[0, 2] = eps[2, 0] = off[1]
        eps[0, 1] = eps[1, 0] = off[2]
        atoms = _bulk32()
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        frames.append(_label(_rattle(atoms, 0.01, rng), "bulk_shear"))

    for _ in range(counts["vacancy"]):
        atoms = _bulk32()
        del atoms[int(rng.integers(len(atoms)))]
        frames.append(_label(_rattle(atoms, 0.05, rng), "vacancy"))

    for k in range(counts["surface"]):
        build, facet = (fcc111, "111") if k % 2 == 0 else (fcc100, "100")
        atoms = build("Cu", size=(2, 2, 4), a=A0, vacuum=6.0, periodic=True)
        atoms.info.pop("adsorbate_info", None)  # a dict; extxyz cannot store it
        frames.append(_label(_rattle(atoms, 0.05, rng), f"surface_{facet}"))

    return frames


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output directory (default: the directory of this script)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, name in FILES.items():
        frames = make_frames(split)
        write(args.out / name, frames)
        print(f"wrote {len(frames)} frames, {sum(len(a) for a in frames)} atoms to "
              f"{args.out / name}")


if __name__ == "__main__":
    main()
