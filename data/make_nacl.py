"""Generate the NaCl rigid-ion data set: rock salt labelled with the Tosi-Fumi model.

The reference is a classical rigid-ion model (formal charges +1/-1, Born-Mayer-Huggins
short range with the Tosi-Fumi parameters), so the "right" long-range physics is known
exactly: it is the Coulomb energy of point charges, i.e. :class:`kernelpot.baselines.Ewald`
with charges ``{"Na": +1, "Cl": -1}``. The data set is used by ``benchmarks/ionic.py`` and
``tests/test_gp_baselines.py`` to compare a local GP with a GP on top of that Ewald baseline.

Writes ``nacl_train.xyz`` (100 frames) and ``nacl_test.xyz`` (30 frames), extended XYZ with
total energy (eV), forces (eV/Å) and stress (eV/Å^3, ASE sign), grouped by ``config_type``:

==================  ======  =============================================================
config_type         atoms   what
==================  ======  =============================================================
rattle              8, 16   cubic 8-atom cell or 2x2x2 primitive (rhombohedral) 16-atom
                            cell, lattice constant a0 x U(0.97, 1.03), Gaussian rattle of
                            0.05 / 0.10 / 0.15 Å per component (info ``rattle_std``)
strain              8, 16   random symmetric strain (|normal| <= 3 %, |shear| <= 4 %) applied
                            as ``cell @ (I + eps)``, rattle 0.03 Å
hydrostatic         8       cubic cell, lattice constant a0 x 0.94 ... 1.06 (test:
                            0.95 ... 1.05; info ``lattice_scale``), rattle 0.02 Å
md_300K, md_700K,   64, 16  snapshots of Langevin MD with the reference model in the 2x2x2
md_1000K                    cubic 64-atom cell and in a 1x1x2 tetragonal 16-atom cell
                            (lattice constant a0 x 1.005 / 1.015 / 1.030 for the three
                            temperatures, roughly the thermal expansion)
schottky            62      64-atom cell with one Na and one Cl removed (random pair, so
                            random vacancy-vacancy distance), rattle 0.05 Å
==================  ======  =============================================================

a0 is the static equilibrium lattice constant of the reference model (found by a 1-D
minimisation at start-up, 5.62 Å; experiment at 0 K: 5.60 Å).

Everything random comes from ``numpy.random.default_rng`` with fixed seeds (also the
Maxwell-Boltzmann velocities and the Langevin noise), positions are rounded to 1e-8 Å
*before* the reference is evaluated, and energies/stresses are rounded to 1e-10 eV /
1e-12 eV/Å^3, so re-running on the same machine reproduces both files byte for byte::

    python data/make_nacl.py            # writes next to this script (about 1-2 min)
    python data/make_nacl.py --out DIR  # writes into DIR
    python data/make_nacl.py --check    # finite-difference self-check of the reference only

Needs numpy, scipy and ASE, plus kernelpot (Ewald sum and the extended-XYZ writer).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.neighborlist import neighbor_list
from ase.units import GPa, _e, fs, kB
from scipy.optimize import minimize_scalar

from kernelpot.baselines import Ewald
from kernelpot.io import write

# ---------------------------------------------------------------------------------------------
# Tosi-Fumi rigid-ion model of NaCl.
#
#   u_ij(r) = q_i q_j k / r + A_ij b exp((sigma_ij - r) / rho) - C_ij / r^6 - D_ij / r^8
#
# Parameters of F. G. Fumi and M. P. Tosi, J. Phys. Chem. Solids 25, 31 (1964) ("Huggins-Mayer
# form", ionic radii and rho) and M. P. Tosi and F. G. Fumi, J. Phys. Chem. Solids 25, 45 (1964)
# (van der Waals C and D from Mayer), as tabulated e.g. by Anwar, Frenkel and Noro,
# J. Chem. Phys. 118, 728 (2003) and Lewis, Singer and Woodcock, J. Chem. Soc. Faraday Trans. 2
# 71, 301 (1975):
#   b = 0.338e-19 J;  rho = 0.317 Å;  sigma_Na = 1.170 Å, sigma_Cl = 1.585 Å, sigma_ij = sum;
#   Pauling factors A_ij = 1 + z_i/n_i + z_j/n_j (n = 8 for both ions): A_++ = 1.25,
#   A_+- = 1.00, A_-- = 0.75;
#   C (1e-79 J m^6): ++ 1.68, +- 11.2, -- 116;   D (1e-99 J m^8): ++ 0.8, +- 13.9, -- 233.
# 1e-79 J m^6 = 1e-19 J Å^6 and 1e-99 J m^8 = 1e-19 J Å^8, so both convert with 1e-19 / e.
# ---------------------------------------------------------------------------------------------
_J_TO_EV = 1.0 / _e
B_TF = 0.338e-19 * _J_TO_EV  # eV (0.21096)
RHO_TF = 0.317  # Å
SIGMA_TF = {11: 1.170, 17: 1.585}  # Å
PAULING_TF = {(11, 11): 1.25, (11, 17): 1.00, (17, 17): 0.75}
C6_TF = {(11, 11): 1.68e-19 * _J_TO_EV, (11, 17): 11.2e-19 * _J_TO_EV, (17, 17): 116e-19 * _J_TO_EV}  # eV Å^6
C8_TF = {(11, 11): 0.8e-19 * _J_TO_EV, (11, 17): 13.9e-19 * _J_TO_EV, (17, 17): 233e-19 * _J_TO_EV}  # eV Å^8
CHARGES = {"Na": 1.0, "Cl": -1.0}

#: The short-range pair energy is multiplied by a quintic switch from 1 at R_ON to 0 at R_OFF
#: (value, force and force derivative continuous), so forces are exact derivatives everywhere.
#: At 7 Å the Born-Mayer term is < 1e-6 eV and the Cl-Cl dispersion 6e-4 eV per pair.
R_ON, R_OFF = 7.0, 8.0  # Å


def _switch(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``S = 1 - 10 t^3 + 15 t^4 - 6 t^5``, ``t = (r - R_ON) / (R_OFF - R_ON)`` clipped, and ``dS/dr``."""
    width = R_OFF - R_ON
    t = np.clip((r - R_ON) / width, 0.0, 1.0)
    s = 1.0 - t**3 * (10.0 - 15.0 * t + 6.0 * t * t)
    ds = -30.0 * t * t * (1.0 - t) ** 2 / width
    return s, ds


def _pair_table(table: dict, za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    lo, hi = np.minimum(za, zb), np.maximum(za, zb)
    out = np.empty(len(za))
    for (a, b), value in table.items():
        out[(lo == a) & (hi == b)] = value
    return out


def short_range(atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
    """Tosi-Fumi short-range energy (eV), forces ``(n, 3)`` (eV/Å) and virial ``dE/d eps`` (3, 3) (eV).

    A full neighbour list (every ordered pair, periodic images included) within ``R_OFF``;
    ``E = 1/2 sum u(r) S(r)``.
    """
    numbers = np.asarray(atoms.numbers)
    bad = sorted(set(numbers.tolist()) - {11, 17})
    if bad:
        raise ValueError(f"TosiFumiNaCl: only Na and Cl are parametrised, got atomic numbers {bad}")
    i, j, r, D = neighbor_list("ijdD", atoms, R_OFF)
    zi, zj = numbers[i], numbers[j]
    sigma = np.array([SIGMA_TF[z] for z in zi]) + np.array([SIGMA_TF[z] for z in zj])
    born = _pair_table(PAULING_TF, zi, zj) * B_TF * np.exp((sigma - r) / RHO_TF)
    c6 = _pair_table(C6_TF, zi, zj)
    c8 = _pair_table(C8_TF, zi, zj)
    u = born - c6 / r**6 - c8 / r**8
    dudr = -born / RHO_TF + 6.0 * c6 / r**7 + 8.0 * c8 / r**9
    s, ds = _switch(r)
    energy = 0.5 * float(np.sum(u * s))
    g = (dudr * s + u * ds) / r  # (1/r) d(uS)/dr
    gD = g[:, None] * D
    forces = np.zeros((len(atoms), 3))
    for a in range(3):
        forces[:, a] = np.bincount(i, weights=gD[:, a], minlength=len(atoms))
    virial = 0.5 * gD.T @ D
    return energy, forces, virial


class TosiFumiNaCl(Calculator):
    """Rigid-ion NaCl: Tosi-Fumi short range plus the Coulomb energy of charges +1 / -1.

    Parameters
    ----------
    accuracy : float, default 1e-10
        Truncation accuracy of the Ewald sum (see :class:`kernelpot.baselines.Ewald`); tighter
        than the baseline's default 1e-8 so that the reference is not the baseline computation
        itself.

    Notes
    -----
    Results: ``energy`` (eV), ``forces`` (n, 3) (eV/Å) and, for fully periodic cells,
    ``stress`` (6,) (eV/Å^3, ASE Voigt order and sign). Non-periodic structures use the
    direct Coulomb sum.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, accuracy: float = 1e-10, **kwargs):
        super().__init__(**kwargs)
        self.ewald = Ewald(CHARGES, accuracy=accuracy)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        e_sr, f_sr, w_sr = short_range(a)
        e_q, f_q, s_q = self.ewald.compute(a)
        self.results["energy"] = self.results["free_energy"] = e_sr + e_q
        self.results["forces"] = f_sr + f_q
        if a.pbc.all():
            w = 0.5 * (w_sr + w_sr.T) / a.get_volume()
            s_sr = np.array([w[0, 0], w[1, 1], w[2, 2], w[1, 2], w[0, 2], w[0, 1]])
            self.results["stress"] = s_sr + s_q
        elif "stress" in properties:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("TosiFumiNaCl: stress needs a fully periodic cell")


def lattice_constant() -> float:
    """Static equilibrium lattice constant of the reference model (Å), 8-atom cubic cell."""

    def energy(a):
        atoms = bulk("NaCl", "rocksalt", a=a, cubic=True)
        atoms.calc = TosiFumiNaCl()
        return atoms.get_potential_energy()

    res = minimize_scalar(energy, bounds=(5.3, 6.0), method="bounded", options={"xatol": 1e-6})
    return round(float(res.x), 4)


# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------
SEEDS = {"train": 20240711, "test": 20240712}
FILES = {"train": "nacl_train.xyz", "test": "nacl_test.xyz"}
COUNTS = {
    "train": {"rattle": 40, "strain": 14, "hydrostatic": 14, "md_64": 4, "md_16": 4, "schottky": 8},
    "test": {"rattle": 10, "strain": 4, "hydrostatic": 4, "md_64": 1, "md_16": 2, "schottky": 3},
}
RATTLE_STDS = (0.05, 0.10, 0.15)  # Å per component
MD_TEMPERATURES = {300: 1.005, 700: 1.015, 1000: 1.030}  # K -> lattice scale
MD_TIMESTEP = 2.0  # fs
MD_FRICTION = 0.02  # 1/fs
MD_EQUILIBRATE = 100  # steps before the first snapshot
MD_INTERVAL = 40  # steps between snapshots
#: Ewald accuracy while propagating MD (the trajectory only has to be plausible; the labels of
#: the snapshots are computed afterwards at the reference accuracy).
MD_ACCURACY = 1e-6


def _cubic8(a: float) -> Atoms:
    return bulk("NaCl", "rocksalt", a=a, cubic=True)


def _prim16(a: float) -> Atoms:
    """2x2x2 repetition of the 2-atom primitive fcc cell: a rhombohedral (60 degree) cell."""
    return bulk("NaCl", "rocksalt", a=a).repeat((2, 2, 2))


def _rattle(atoms: Atoms, std: float, rng: np.random.Generator) -> Atoms:
    atoms.positions = atoms.positions + rng.normal(0.0, std, size=(len(atoms), 3))
    return atoms


def _label(atoms: Atoms, config_type: str, **info) -> Atoms:
    """Round positions, evaluate the reference, store rounded labels in a SinglePointCalculator."""
    atoms = Atoms(atoms.numbers, positions=np.round(atoms.positions, 8), cell=np.round(atoms.cell.array, 10), pbc=True)
    atoms.wrap()
    atoms.positions = np.round(atoms.positions, 8)
    atoms.calc = TosiFumiNaCl()
    results = {
        "energy": round(float(atoms.get_potential_energy()), 10),
        "forces": atoms.get_forces(),
        "stress": np.round(atoms.get_stress(), 12),
    }
    atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info["config_type"] = config_type
    atoms.info.update(info)
    return atoms


def _md_snapshots(atoms: Atoms, temperature: float, n: int, rng: np.random.Generator) -> list[Atoms]:
    """``n`` Langevin snapshots at ``temperature`` (K), every ``MD_INTERVAL`` steps after equilibration."""
    atoms = atoms.copy()
    atoms.calc = TosiFumiNaCl(accuracy=MD_ACCURACY)
    # Maxwell-Boltzmann momenta at 2 T (about half the kinetic energy goes into the potential
    # energy of the lattice), without centre-of-mass motion
    masses = atoms.get_masses()
    momenta = rng.standard_normal((len(atoms), 3)) * np.sqrt(masses * kB * 2.0 * temperature)[:, None]
    momenta -= masses[:, None] * momenta.sum(axis=0) / masses.sum()
    atoms.set_momenta(momenta)
    dyn = Langevin(atoms, MD_TIMESTEP * fs, temperature_K=temperature, friction=MD_FRICTION / fs,
                   fixcm=False, rng=rng)
    dyn.run(MD_EQUILIBRATE)
    out = []
    for _ in range(n):
        dyn.run(MD_INTERVAL)
        out.append(atoms.copy())
    return out


def make_frames(split: str, a0: float) -> list[Atoms]:
    """Build and label the frames of one split (``"train"`` or ``"test"``)."""
    return list(iter_frames(split, a0))


def iter_frames(split: str, a0: float) -> Iterator[Atoms]:
    """Labelled frames of one split in file order, built one at a time.

    Taking only the first few (``itertools.islice``) gives exactly the first frames of the
    full split, which is how the tests check the shipped files cheaply.
    """
    rng = np.random.default_rng(SEEDS[split])
    counts = COUNTS[split]

    for k in range(counts["rattle"]):
        std = RATTLE_STDS[k % len(RATTLE_STDS)]
        scale = float(rng.uniform(0.97, 1.03))
        atoms = (_cubic8 if k % 2 == 0 else _prim16)(a0 * scale)
        yield _label(_rattle(atoms, std, rng), "rattle", rattle_std=std)

    for k in range(counts["strain"]):
        eps = np.diag(rng.uniform(-0.03, 0.03, size=3))
        off = rng.uniform(-0.04, 0.04, size=3)
        eps[1, 2] = eps[2, 1] = off[0]
        eps[0, 2] = eps[2, 0] = off[1]
        eps[0, 1] = eps[1, 0] = off[2]
        atoms = (_cubic8 if k % 2 == 0 else _prim16)(a0)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        yield _label(_rattle(atoms, 0.03, rng), "strain")

    # Test lattice constants lie inside the training range (no extrapolation in density).
    lo, hi = (0.94, 1.06) if split == "train" else (0.95, 1.05)
    for scale in np.linspace(lo, hi, counts["hydrostatic"]):
        atoms = _rattle(_cubic8(a0 * scale), 0.02, rng)
        yield _label(atoms, "hydrostatic", lattice_scale=float(round(scale, 6)))

    for temperature, scale in MD_TEMPERATURES.items():
        ct = f"md_{temperature}K"
        big = _cubic8(a0 * scale).repeat((2, 2, 2))
        tetragonal = _cubic8(a0 * scale).repeat((1, 1, 2))
        for atoms in _md_snapshots(big, temperature, counts["md_64"], rng):
            yield _label(atoms, ct, temperature=float(temperature))
        for atoms in _md_snapshots(tetragonal, temperature, counts["md_16"], rng):
            yield _label(atoms, ct, temperature=float(temperature))

    for _ in range(counts["schottky"]):
        atoms = _cubic8(a0 * float(rng.uniform(0.99, 1.01))).repeat((2, 2, 2))
        na = np.flatnonzero(atoms.numbers == 11)
        cl = np.flatnonzero(atoms.numbers == 17)
        remove = [int(rng.choice(na)), int(rng.choice(cl))]
        separation = float(atoms.get_distance(*remove, mic=True))
        del atoms[sorted(remove, reverse=True)]
        yield _label(_rattle(atoms, 0.05, rng), "schottky", vacancy_separation=round(separation, 6))


# ---------------------------------------------------------------------------------------------
# Self-check
# ---------------------------------------------------------------------------------------------
def finite_difference_errors(atoms: Atoms, h: float = 1e-4) -> tuple[float, float]:
    """Largest |analytic - central difference| of forces (eV/Å) and stress (eV/Å^3)."""
    atoms = atoms.copy()
    atoms.calc = TosiFumiNaCl()
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    num_f = np.zeros_like(forces)
    for i in range(len(atoms)):
        for a in range(3):
            e = []
            for sign in (1, -1):
                b = atoms.copy()
                b.calc = TosiFumiNaCl()
                b.positions[i, a] += sign * h
                e.append(b.get_potential_energy())
            num_f[i, a] = -(e[0] - e[1]) / (2 * h)
    num_s = np.zeros(6)
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    for v, (p, q) in enumerate(voigt):
        e = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[p, q] = eps[q, p] = sign * h
            b = atoms.copy()
            b.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            b.calc = TosiFumiNaCl()
            e.append(b.get_potential_energy())
        # shear: dE/d eps_pq with eps_pq = eps_qp = h, so dE/dh = 2 dE/deps_pq
        num_s[v] = (e[0] - e[1]) / (2 * h) / atoms.get_volume() / (1.0 if p == q else 2.0)
    return float(np.abs(forces - num_f).max()), float(np.abs(stress - num_s).max())


def self_check() -> None:
    """Print and assert finite-difference consistency of the reference on a skewed rattled cell."""
    rng = np.random.default_rng(0)
    atoms = _prim16(5.6)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + np.array([[0.02, 0.03, 0], [0.03, -0.01, 0.01], [0, 0.01, 0.0]])),
                   scale_atoms=True)
    _rattle(atoms, 0.12, rng)
    df, ds = finite_difference_errors(atoms)
    print(f"finite differences (h = 1e-4): max |dF| = {df:.2e} eV/Å, max |dS| = {ds:.2e} eV/Å^3")
    if df > 1e-5 or ds > 1e-7:
        raise SystemExit("self-check FAILED: analytic forces/stress disagree with finite differences")
    a0 = lattice_constant()
    atoms = _cubic8(a0)
    atoms.calc = TosiFumiNaCl()
    print(f"static lattice constant a0 = {a0:.4f} Å, lattice energy {atoms.get_potential_energy() / 4:.4f} eV "
          f"per NaCl pair, pressure {-atoms.get_stress()[:3].mean() / GPa:.2e} GPa")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output directory (default: the directory of this script)")
    parser.add_argument("--check", action="store_true",
                        help="only run the finite-difference self-check of the reference model")
    args = parser.parse_args(argv)
    if args.check:
        self_check()
        return
    a0 = lattice_constant()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, name in FILES.items():
        frames = make_frames(split, a0)
        write(args.out / name, frames)
        print(f"wrote {len(frames)} frames, {sum(len(a) for a in frames)} atoms to {args.out / name}")


if __name__ == "__main__":
    main()
