"""Electrostatics of fixed point charges: Ewald sum (periodic) or direct Coulomb sum (molecules)."""

from __future__ import annotations

from numbers import Real
from typing import Any

import numpy as np
from scipy.special import erfc
from sklearn.base import BaseEstimator

from ._pair_kernels import (
    COULOMB_CONSTANT,
    accumulate_pairs,
    neighbor_pairs,
    parse_species_mapping,
    symbol,
    virial_to_stress,
)

__all__ = ["Ewald", "COST_RATIO"]

# Largest number of (atom, k-vector) phases held at once in the reciprocal sum.
_PHASE_CHUNK = 2_000_000

# Cost of one real-space pair term (ASE neighbour list + erfc) over one reciprocal (atom, g)
# term, measured on rattled NaCl cells of 64-1000 atoms; enters the default alpha. With
# ratio 1 (equal costs) a 1000-atom cell took 32 s, with 250 it takes 2 s.
COST_RATIO = 250.0


class Ewald(BaseEstimator):
    """Coulomb energy of fixed point charges, ``E = k/2 sum_{i != j} q_i q_j / r_ij`` (eV).

    Fully periodic cells (any shape) use the Ewald sum,
    ``E = E_real + E_reciprocal + E_self`` with

    - ``E_real = k/2 sum_{i,j,n}' q_i q_j erfc(alpha r) / r`` over neighbour images with
      ``r < r_cut``,
    - ``E_reciprocal = (2 pi k / V) sum_{0 < |g| < k_cut} exp(-g^2 / (4 alpha^2)) / g^2 |S(g)|^2``,
      ``S(g) = sum_j q_j exp(i g . r_j)``,
    - ``E_self = -k alpha / sqrt(pi) sum_i q_i^2``,

    and ``k = e^2 / (4 pi eps0) = 14.399645`` eV Å. Non-periodic structures (``pbc`` all
    False) use the direct pair sum. Forces and stress are the analytic derivatives of the
    truncated sums (real part: pair virial; reciprocal part:
    ``(1/V) sum_g E_g [(2/g^2 + 1/(2 alpha^2)) g g^T - I]``).

    Parameters
    ----------
    charges : dict or array-like
        Charges in units of e: a dict element (symbol or atomic number) -> charge, or one
        charge per atom, shape ``(n_atoms,)`` (then every structure must have that many
        atoms, in that order).
    accuracy : float, default 1e-8
        Target truncation error, 0 < accuracy < 1. Sets ``r_cut = sqrt(-ln accuracy) / alpha``
        and ``k_cut = 2 alpha sqrt(-ln accuracy)``, so that ``erfc(alpha r_cut)`` and
        ``exp(-k_cut^2 / (4 alpha^2))`` are both about ``accuracy``. The relative error of
        the energy is then about ``accuracy``; forces and stress, derivatives of the truncated
        sums, carry about ten times that.
    alpha : float or None, default None
        Splitting parameter (1/Å). ``None``: ``sqrt(pi) (w N / V^2)^(1/6)`` for each structure
        (N atoms, volume V), which minimises the total work of the two sums at the given
        accuracy (Perram, Petersen & de Leeuw 1988), ``w = COST_RATIO = 250`` being the
        measured cost of a real-space pair term relative to a reciprocal one. The converged
        energy does not depend on it.

    Examples
    --------
    >>> from ase.build import bulk
    >>> nacl = bulk("NaCl", "rocksalt", a=2.0)      # nearest-neighbour distance 1 Å
    >>> energy, forces, stress = Ewald({"Na": 1, "Cl": -1}).compute(nacl)
    >>> round(-energy / 14.399645, 6)                 # Madelung constant of rock salt
    1.747565
    """

    kind = "ewald"

    def __init__(self, charges: dict | np.ndarray, accuracy: float = 1e-8, alpha: float | None = None):
        self.charges = charges
        self.accuracy = accuracy
        self.alpha = alpha

    # ------------------------------------------------------------------ validation
    def _check_params(self) -> dict[int, float] | np.ndarray:
        acc = self.accuracy
        if isinstance(acc, bool) or not isinstance(acc, Real) or not 0.0 < acc < 1.0:
            raise ValueError(f"Ewald: accuracy={acc!r} is not allowed; expected a number with 0 < accuracy < 1")
        alpha = self.alpha
        if alpha is not None and (
            isinstance(alpha, bool) or not isinstance(alpha, Real) or not np.isfinite(alpha) or alpha <= 0
        ):
            raise ValueError(f"Ewald: alpha={alpha!r} is not allowed; expected None or a finite number > 0 (1/Å)")
        if isinstance(self.charges, dict):
            return parse_species_mapping(self.charges, "Ewald charges")
        try:
            q = np.asarray(self.charges, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(
                "Ewald: charges must be a dict element -> charge or an array of one charge per atom, "
                f"got {type(self.charges).__name__}"
            ) from None
        if q.ndim != 1:
            raise ValueError(f"Ewald: per-atom charges have shape {q.shape}, expected (n_atoms,)")
        if not np.all(np.isfinite(q)):
            bad = int(np.flatnonzero(~np.isfinite(q))[0])
            raise ValueError(f"Ewald: per-atom charge {bad} is {q[bad]}, expected a finite number")
        return q

    def atom_charges(self, atoms) -> np.ndarray:
        """Charge of each atom of ``atoms`` (e), shape ``(n_atoms,)``.

        Raises
        ------
        ValueError
            If an element has no charge or the per-atom array has the wrong length.
        """
        table = self._check_params()
        if isinstance(table, dict):
            numbers = np.asarray(atoms.numbers)
            missing = sorted(set(int(z) for z in numbers) - set(table))
            if missing:
                given = ", ".join(symbol(z) for z in sorted(table)) or "none"
                names = ", ".join(f"{symbol(z)} (Z={z})" for z in missing)
                raise ValueError(
                    f"Ewald: no charge for element {names} in {atoms.get_chemical_formula()}; "
                    f"charges are given for: {given}. Add it to `charges`."
                )
            return np.array([table[int(z)] for z in numbers], dtype=float)
        if len(table) != len(atoms):
            raise ValueError(
                f"Ewald: {len(table)} per-atom charges given but the structure "
                f"({atoms.get_chemical_formula()}) has {len(atoms)} atoms; give one charge per atom "
                "or a dict element -> charge"
            )
        return table.copy()

    def split_parameters(self, atoms) -> tuple[float, float, float]:
        """``(alpha, r_cut, k_cut)`` used for ``atoms``: 1/Å, Å, 1/Å."""
        self._check_params()
        eta = np.sqrt(-np.log(float(self.accuracy)))
        if self.alpha is None:
            alpha = np.sqrt(np.pi) * (COST_RATIO * len(atoms) / atoms.get_volume() ** 2) ** (1.0 / 6.0)
        else:
            alpha = float(self.alpha)
        return float(alpha), float(eta / alpha), float(2.0 * alpha * eta)

    # ------------------------------------------------------------------ compute
    def compute(self, atoms) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy (eV), forces ``(n_atoms, 3)`` (eV/Å) and ASE Voigt stress ``(6,)`` (eV/Å^3).

        Raises
        ------
        ValueError
            For a periodic cell with non-zero total charge, for mixed periodicity, or for a
            periodic structure without a 3-D cell.
        """
        q = self.atom_charges(atoms)
        if len(atoms) == 0:
            return 0.0, np.zeros((0, 3)), np.zeros(6)
        pbc = np.asarray(atoms.pbc, bool)
        if not pbc.any():
            energy, forces = _direct_coulomb(np.asarray(atoms.positions, float), q)
            return energy, forces, np.zeros(6)
        if not pbc.all():
            raise ValueError(
                f"Ewald: mixed periodicity pbc={pbc.tolist()} is not supported; supported are fully "
                "periodic cells (pbc all True, Ewald sum) and non-periodic structures (pbc all False, "
                "direct Coulomb sum). For slabs, add vacuum and use pbc all True."
            )
        if atoms.cell.rank != 3:
            raise ValueError(
                f"Ewald: the structure is periodic but its cell has rank {atoms.cell.rank}; "
                "a fully periodic structure needs three linearly independent cell vectors"
            )
        total = float(q.sum())
        if abs(total) > 1e-8 * max(1.0, float(np.abs(q).sum())):
            raise ValueError(
                f"Ewald: the periodic cell ({atoms.get_chemical_formula()}) has total charge {total:+.10g} e; "
                "the Ewald sum needs a neutral cell. Adjust the charges so they sum to zero."
            )
        alpha, r_cut, k_cut = self.split_parameters(atoms)
        volume = atoms.get_volume()
        e_r, f_r, w_r = _real_space(atoms, q, alpha, r_cut)
        e_k, f_k, w_k = _reciprocal_space(np.asarray(atoms.positions, float), np.asarray(atoms.cell), q, alpha, k_cut)
        e_self = -COULOMB_CONSTANT * alpha / np.sqrt(np.pi) * float(np.dot(q, q))
        energy = e_r + e_k + e_self
        return float(energy), f_r + f_k, virial_to_stress(w_r + w_k, volume)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings; element keys become symbols, arrays become lists."""
        table = self._check_params()
        if isinstance(table, dict):
            charges: Any = {symbol(z): table[z] for z in sorted(table)}
        else:
            charges = table.tolist()
        return {
            "kind": self.kind,
            "charges": charges,
            "accuracy": float(self.accuracy),
            "alpha": None if self.alpha is None else float(self.alpha),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Ewald":
        """Rebuild from :meth:`to_dict` output."""
        charges = d["charges"]
        charges = dict(charges) if isinstance(charges, dict) else np.asarray(charges, dtype=float)
        return cls(charges=charges, accuracy=d.get("accuracy", 1e-8), alpha=d.get("alpha"))


def _direct_coulomb(positions: np.ndarray, q: np.ndarray) -> tuple[float, np.ndarray]:
    """Open-boundary Coulomb energy (eV) and forces (eV/Å), rows chunked to bound memory."""
    n = len(q)
    forces = np.zeros((n, 3))
    energy = 0.0
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        D = positions[None, :, :] - positions[start:stop, None, :]  # i -> j
        r = np.linalg.norm(D, axis=2)
        rows = np.arange(start, stop)
        r[rows - start, rows] = np.inf
        if np.any(r == 0.0):
            a, b = np.argwhere(r == 0.0)[0]
            raise ValueError(f"Ewald: atoms {start + a} and {b} are at the same position; the Coulomb energy is infinite")
        qq = COULOMB_CONSTANT * q[start:stop, None] * q[None, :]
        u = qq / r
        energy += 0.5 * float(u.sum())
        # F_i = -dE/dx_i = sum_j u'(r) D_ij / r with u' = -qq / r^2
        forces[start:stop] = np.einsum("ij,ijk->ik", -u / r**2, D)
    return energy, forces


def _real_space(atoms, q: np.ndarray, alpha: float, r_cut: float) -> tuple[float, np.ndarray, np.ndarray]:
    i, j, r, D = neighbor_pairs(atoms, r_cut)
    if np.any(r == 0.0):
        k = int(np.flatnonzero(r == 0.0)[0])
        raise ValueError(f"Ewald: atoms {i[k]} and {j[k]} are at the same position; the Coulomb energy is infinite")
    qq = COULOMB_CONSTANT * q[i] * q[j]
    ec = erfc(alpha * r)
    u = qq * ec / r
    dudr = -qq * (ec / r**2 + 2.0 * alpha / np.sqrt(np.pi) * np.exp(-((alpha * r) ** 2)) / r)
    return accumulate_pairs(len(atoms), i, u, dudr, r, D)


def _half_space_kvectors(cell: np.ndarray, k_cut: float) -> np.ndarray:
    """Reciprocal vectors ``g`` (1/Å) with ``0 < |g| <= k_cut``, one of each ``+-g`` pair."""
    recip = 2.0 * np.pi * np.linalg.inv(cell).T  # rows b_i with a_i . b_j = 2 pi delta_ij
    # |m_i| = |g . a_i| / (2 pi) <= k_cut |a_i| / (2 pi): a bound valid for any cell shape
    m_max = np.floor(k_cut * np.linalg.norm(cell, axis=1) / (2.0 * np.pi)).astype(int)
    ranges = [np.arange(-m, m + 1) for m in m_max]
    m = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    half = (m[:, 0] > 0) | ((m[:, 0] == 0) & ((m[:, 1] > 0) | ((m[:, 1] == 0) & (m[:, 2] > 0))))
    g = m[half] @ recip
    g2 = np.einsum("ij,ij->i", g, g)
    return g[g2 <= k_cut**2]


def _reciprocal_space(
    positions: np.ndarray, cell: np.ndarray, q: np.ndarray, alpha: float, k_cut: float
) -> tuple[float, np.ndarray, np.ndarray]:
    volume = abs(float(np.linalg.det(cell)))
    g = _half_space_kvectors(cell, k_cut)
    n = len(q)
    energy = 0.0
    forces = np.zeros((n, 3))
    virial = np.zeros((3, 3))
    if len(g) == 0:
        return energy, forces, virial
    # factor 2 for the +-g pairs folded into the half space
    pref = 2.0 * 2.0 * np.pi * COULOMB_CONSTANT / volume
    chunk = max(1, _PHASE_CHUNK // max(n, 1))
    for start in range(0, len(g), chunk):
        gc = g[start : start + chunk]
        g2 = np.einsum("ij,ij->i", gc, gc)
        f = np.exp(-g2 / (4.0 * alpha**2)) / g2
        phase = positions @ gc.T  # (n, k)
        cos, sin = np.cos(phase), np.sin(phase)
        s_re = q @ cos
        s_im = q @ sin
        e_g = pref * f * (s_re**2 + s_im**2)  # energy of each +-g pair
        energy += float(e_g.sum())
        # F_i = 2 pref q_i sum_g f g (S_re sin_i - S_im cos_i)
        w = (sin * s_re[None, :] - cos * s_im[None, :]) * (2.0 * pref * f)[None, :]
        forces += q[:, None] * (w @ gc)
        # dE_g/d eps = E_g [(2/g^2 + 1/(2 alpha^2)) g g^T - I]
        c = e_g * (2.0 / g2 + 0.5 / alpha**2)
        virial += (gc * c[:, None]).T @ gc - np.eye(3) * float(e_g.sum())
    return energy, forces, virial
