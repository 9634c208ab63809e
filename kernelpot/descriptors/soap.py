"""Smooth Overlap of Atomic Positions (SOAP) power spectrum with analytic derivatives.

Definitions (all lengths in Å)
------------------------------
Neighbour density around centre i, species a::

    rho_i^a(r) = sum_{j in a, |r_ij| < r_cut} u(r_ij) fc(r_ij) exp(-|r - r_ij|^2 / (2 sigma^2))
                 + [a == a_i] center_weight exp(-|r|^2 / (2 sigma^2))

with the cosine cutoff fc(r) = 1 for r <= r_cut - w, 0.5 (1 + cos(pi (r - r_cut + w) / w))
for r_cut - w < r < r_cut, and 0 beyond (w = ``cutoff_width``; value and first
derivative are continuous at r_cut), and u = 1 unless ``radial_scaling`` r0 is
given: then u(r) = 1 / (1 + (r / r0)^m) (:func:`willatt_scaling`). The centre
itself is not a neighbour; its periodic images are.

Expansion coefficients c^a_{nlm} = sum_j G_nl(r_ij) Y_lm(rhat_ij) with real
spherical harmonics Y_lm and the radial integral::

    G_nl(r) = fc(r) 4 pi int_0^{r_cut} R_n(x) x^2 exp(-(x^2 + r^2) / (2 sigma^2))
                                      i_l(x r / sigma^2) dx

(i_l modified spherical Bessel function of the first kind). Power spectrum::

    p^{ab}_{n n' l} = pi sqrt(8 / (2l + 1)) sum_m c^a_{nlm} c^b_{n'lm}

kept for species pairs a <= b (sorted by atomic number) and, when a == b, for
n <= n'; entries with (a, n) != (b, n') are multiplied by sqrt(2) so the dot
product of two compressed vectors equals that of the full (a, b, n, n', l)
spectra. Feature order: species pair, then n, then n', then l (fastest).

Radial basis
------------
R_n are ``n_max`` Gaussians exp(-(x - x_k)^2 / (2 w_b^2)) centred at
x_k = k r_cut / n_max (k = 0..n_max-1) with width w_b = r_cut / n_max,
Löwdin-orthonormalised (S^{-1/2}) under the weight x^2 on [0, r_cut] by
composite Gauss-Legendre quadrature. The basis depends only on r_cut and
n_max, not on the species or on atom_sigma.

Numerics
--------
I_nl(r) = G_nl(r) / fc(r) (times u(r) with radial scaling) and its r-derivative (differentiated under the
integral, using i_l' = (l i_{l-1} + (l+1) i_{l+1}) / (2l+1); no finite
differences) are tabulated once per parameter set on a uniform grid on
[0, r_cut] with exponentially scaled Bessel functions (scipy.special.ive), and
evaluated by cubic Hermite interpolation. The grid is refined until the
interpolant matches direct quadrature at the interval midpoints to 1e-8 of the
largest |I_nl| for each l. fc is applied analytically, so every returned
derivative is the exact derivative of the returned features.
"""

from __future__ import annotations

import math
import numbers as _numbers
import sys
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from scipy.special import ive
from sklearn.base import BaseEstimator

from kernelpot import _threads
from kernelpot.descriptors import _soap_kernels
from kernelpot.descriptors.neighbors import neighbor_list

__all__ = ["SOAP", "SOAPFeatures"]

_TABLE_RTOL = 1e-8
_GL_ORDER = 20
_BUFFER_LOCK = threading.Lock()


def _refcount(pool: dict, name: str) -> int:
    buf = pool[name]
    return sys.getrefcount(buf)


# references to a pooled buffer that nothing else holds, counted through the same code
# path (the count of a local name differs between Python versions)
_FREE_REFCOUNT = _refcount({"probe": np.empty(1)}, "probe")


#: Largest settings a SOAP may have (the model file loader uses the same): beyond these the
#: descriptor's size or neighbour count grows past anything a potential uses.
LIMITS = {"r_cut": (0.0, 30.0), "n_max": (1, 40), "l_max": (0, 30), "atom_sigma": (0.0, 10.0)}
#: Range of the radial scaling's r0 (Å) and exponent m: below 0.5 Å every neighbour's weight is ~0, and
#: m < 2 (u'' singular at r = 0) or m > 12 (a near step) needs radial tables of 10^4-10^5 knots.
RADIAL_SCALING_RANGE = (0.5, 1000.0)
RADIAL_EXPONENT_RANGE = (2.0, 12.0)


@dataclass
class SOAPFeatures:
    """SOAP features of one structure and, optionally, their derivatives.

    Attributes
    ----------
    features : ndarray, shape (n_atoms, F)
        Power spectrum of each atom (unit-norm rows when ``normalize=True``).
    numbers : ndarray of int, shape (n_atoms,)
        Atomic numbers of the centres.
    pair_center : ndarray of int64, shape (n_pairs,) or None
        Centre atom i of each derivative block (``gradients=True``).
    pair_neighbor : ndarray of int64, shape (n_pairs,) or None
        Atom j of each block; periodic images are folded into their atom and
        the self term (i, i) is included. Sorted by i, then j.
    pair_grad : ndarray, shape (n_pairs, 3, F) or None
        d features[i] / d positions[j, alpha], 1/Å. Contiguous, one (3, F)
        block per pair. A view of an output buffer that the descriptor hands
        out again on a later call only once every array from this call has
        been released: results that are kept are never overwritten.
    strain_grad : ndarray, shape (n_atoms, 6, F) or None
        d features[i] / d eps_v (``strain=True``), Voigt order xx yy zz yz xz
        xy, for the strain cell -> cell @ (I + eps) with symmetric eps (atoms
        move with the cell), so stress_v = (1/V) sum_i dE/dfeatures[i] . strain_grad[i, v].
        Pooled like ``pair_grad``.
    """

    features: np.ndarray
    numbers: np.ndarray
    pair_center: np.ndarray | None = None
    pair_neighbor: np.ndarray | None = None
    pair_grad: np.ndarray | None = None
    strain_grad: np.ndarray | None = None


def _scaled_sph_in(l_top: int, z: np.ndarray) -> np.ndarray:
    """exp(-z) i_l(z) for l = 0..l_top, shape (l_top + 1, *z.shape); stable for all z >= 0.

    Power series below z = 1e-3; above, the two highest orders from
    ``scipy.special.ive`` (exp(-z) i_l(z) = sqrt(pi / (2z)) ive(l + 1/2, z))
    and the downward recurrence i_{l-1} = i_{l+1} + (2l + 1) / z i_l, which
    is stable for the modified spherical Bessel functions.
    """
    out = np.empty((l_top + 1,) + z.shape)
    small = z < 1e-3
    zs = np.where(small, 1.0, z)
    pref = np.sqrt(np.pi / (2.0 * zs))
    out[l_top] = pref * ive(l_top + 0.5, zs)
    if l_top > 0:
        out[l_top - 1] = pref * ive(l_top - 0.5, zs)
    for l in range(l_top - 1, 0, -1):
        out[l - 1] = out[l + 1] + (2 * l + 1) / zs * out[l]
    zz = z[small]
    ez = np.exp(-zz)
    dfact = 1.0
    for l in range(l_top + 1):
        if l > 0:
            dfact *= 2 * l + 1
        # i_l(z) = z^l / (2l+1)!! (1 + z^2 / (2(2l+3)) + z^4 / (8 (2l+3)(2l+5)) + ...)
        out[l][small] = ez * zz**l / dfact * (
            1.0 + zz**2 / (2 * (2 * l + 3)) + zz**4 / (8 * (2 * l + 3) * (2 * l + 5))
        )
    return out


class _RadialTables:
    """Tabulated radial integrals I_nl(r) and dI_nl/dr for one parameter set."""

    def __init__(self, r_cut: float, n_max: int, l_max: int, sigma: float,
                 scaling: float | None = None, exponent: float = 4.0):
        self.r_cut = r_cut
        self.n_max = n_max
        self.l_max = l_max
        self.sigma = sigma
        self.scaling = scaling
        self.exponent = exponent
        w_b = r_cut / n_max
        panel = 0.5 * min(sigma, w_b)
        n_pan = int(math.ceil(r_cut / panel))
        xg, wg = np.polynomial.legendre.leggauss(_GL_ORDER)
        edges = np.linspace(0.0, r_cut, n_pan + 1)
        half = 0.5 * np.diff(edges)
        mid = 0.5 * (edges[1:] + edges[:-1])
        x = (mid[:, None] + half[:, None] * xg[None, :]).ravel()
        wq = (half[:, None] * wg[None, :]).ravel()
        centres = r_cut * np.arange(n_max) / n_max
        phi = np.exp(-((x[None, :] - centres[:, None]) ** 2) / (2.0 * w_b**2))
        overlap = (phi * (wq * x**2)) @ phi.T
        evals, evecs = np.linalg.eigh(overlap)
        s_inv_half = (evecs / np.sqrt(evals)) @ evecs.T
        self.basis_coefficients = s_inv_half  # R_n = sum_k S^{-1/2}_{nk} phi_k
        radial = s_inv_half @ phi  # (n_max, Q)
        self._x = x
        self._weights = 4.0 * np.pi * radial * (wq * x**2)[None, :]  # (n_max, Q)

        n_int = int(math.ceil(r_cut / (0.025 * min(sigma, w_b))))
        while True:
            grid = np.linspace(0.0, r_cut, n_int + 1)
            values, derivs = self.evaluate(grid)
            mids = 0.5 * (grid[1:] + grid[:-1])
            exact, _ = self.evaluate(mids)
            interp = _hermite_numpy(grid, values, derivs, mids)
            scale = np.max(np.abs(values), axis=(0, 1))  # per l
            scale = np.where(scale > 0, scale, 1.0)
            err = np.max(np.abs(interp - exact), axis=(0, 1)) / scale
            if np.all(err < _TABLE_RTOL) or n_int >= 2**16:
                break
            n_int *= 2
        self.h = r_cut / n_int
        self.values = np.ascontiguousarray(values)
        self.derivatives = np.ascontiguousarray(derivs)
        self.max_rel_error = float(np.max(err))

    def evaluate(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Direct quadrature of I_nl(r) and dI_nl/dr, each of shape (len(r), n_max, l_max + 1)."""
        r = np.asarray(r, dtype=np.float64)
        s2 = self.sigma**2
        x = self._x
        out = np.empty((len(r), self.n_max, self.l_max + 1))
        dout = np.empty_like(out)
        for c0 in range(0, len(r), 128):
            rc = r[c0 : c0 + 128]
            z = rc[:, None] * x[None, :] / s2
            gauss = np.exp(-((x[None, :] - rc[:, None]) ** 2) / (2.0 * s2))
            k = _scaled_sph_in(self.l_max + 1, z)
            for l in range(self.l_max + 1):
                kl = k[l]
                dkl = (l * k[l - 1] if l > 0 else 0.0) + (l + 1) * k[l + 1]
                dkl = dkl / (2 * l + 1)
                integrand = gauss * kl
                dintegrand = gauss * (-(rc[:, None] / s2) * kl + (x[None, :] / s2) * dkl)
                out[c0 : c0 + 128, :, l] = integrand @ self._weights.T
                dout[c0 : c0 + 128, :, l] = dintegrand @ self._weights.T
        if self.scaling is not None:
            u, du = willatt_scaling(r, self.scaling, self.exponent)
            dout = du[:, None, None] * out + u[:, None, None] * dout
            out = u[:, None, None] * out
        return out, dout


def willatt_scaling(r, r0: float, m: float):
    """Willatt's radial scaling u(r) = 1 / (1 + (r / r0)^m) and du/dr.

    Each neighbour's Gaussian in the density is weighted by u(r_ij), so that
    the many distant neighbours do not outweigh the few near ones in the
    kernel: Willatt, Musil, Ceriotti, Phys. Chem. Chem. Phys. 20, 29661 (2018)
    (featomic's ``Willatt2018`` scaling with ``rate`` c = 1; dscribe's
    ``weighting={"function": "poly"}`` is another form of the same idea).

    Parameters
    ----------
    r : ndarray
        Distances, Å.
    r0 : float
        Distance at which the weight is 1/2, Å.
    m : float
        Exponent (the decay beyond r0 is r^-m).

    Returns
    -------
    u, du : ndarray, each of the shape of ``r``
    """
    x = (np.asarray(r, dtype=np.float64) / r0) ** m
    u = 1.0 / (1.0 + x)
    r_safe = np.where(r > 0, r, 1.0)
    du = np.where(r > 0, -m / r_safe * u * (1.0 - u), 0.0)  # x u^2 = u (1 - u): finite when x overflows
    return u, du


def _hermite_numpy(grid, values, derivs, r):
    """Reference cubic Hermite interpolation (used to size the table)."""
    h = grid[1] - grid[0]
    k = np.minimum((r / h).astype(np.int64), len(grid) - 2)
    t = (r / h - k)[:, None, None]
    h00 = 2 * t**3 - 3 * t**2 + 1
    h10 = (t**3 - 2 * t**2 + t) * h
    h01 = -2 * t**3 + 3 * t**2
    h11 = (t**3 - t**2) * h
    return h00 * values[k] + h10 * derivs[k] + h01 * values[k + 1] + h11 * derivs[k + 1]


def _ylm_normalisation(l_max: int) -> np.ndarray:
    """N_lm of the real spherical harmonics, indexed lm = l^2 + l + m."""
    out = np.empty((l_max + 1) ** 2)
    for l in range(l_max + 1):
        for m in range(-l, l + 1):
            # (l - |m|)! / (l + |m|)! via lgamma to stay finite for large l.
            ratio = math.exp(math.lgamma(l - abs(m) + 1) - math.lgamma(l + abs(m) + 1))
            val = math.sqrt((2 * l + 1) / (4 * math.pi) * ratio)
            if m != 0:
                val *= math.sqrt(2.0)
            out[l * l + l + m] = val
    return out


def _feature_tables(n_species: int, n_max: int, l_max: int):
    """Index of each (a <= b, n, n', l) feature in the kernel's P[l, a, n, b, n'], with prefactor.

    Returns ``feat_index`` (F,) and ``feat_factor`` (F,) = pi sqrt(8 / (2l + 1)),
    times sqrt(2) when (a, n) != (b, n'). The order (species pair, n, n', l)
    is also hard-wired in :func:`_soap_kernels._assemble`.
    """
    n_l = l_max + 1
    nq = n_species * n_max
    feat_index = []
    feat_factor = []
    for a in range(n_species):
        for b in range(a, n_species):
            for n in range(n_max):
                for n2 in range(n if a == b else 0, n_max):
                    for l in range(n_l):
                        feat_index.append(((l * nq + a * n_max + n) * nq) + b * n_max + n2)
                        fac = math.pi * math.sqrt(8.0 / (2 * l + 1))
                        if a != b or n != n2:
                            fac *= math.sqrt(2.0)
                        feat_factor.append(fac)
    return np.array(feat_index, dtype=np.int64), np.array(feat_factor, dtype=np.float64)


def _to_atomic_number(value) -> int:
    if isinstance(value, str):
        if value not in atomic_numbers:
            raise ValueError(f"species: unknown chemical symbol {value!r}")
        return atomic_numbers[value]
    if isinstance(value, _numbers.Integral) and not isinstance(value, bool):
        if not 1 <= int(value) < len(chemical_symbols):
            raise ValueError(
                f"species: atomic number {value!r} is outside 1..{len(chemical_symbols) - 1}"
            )
        return int(value)
    raise TypeError(f"species: entries must be chemical symbols or atomic numbers, got {value!r}")


def _describe(numbers) -> str:
    return "[" + ", ".join(f"{chemical_symbols[z]} ({z})" for z in numbers) + "]"


class SOAP(BaseEstimator):
    """SOAP power-spectrum descriptor with analytic position and strain derivatives.

    Parameters
    ----------
    species : sequence of str or int, optional
        Elements the descriptor covers (symbols or atomic numbers; order does
        not matter, they are sorted by atomic number). When None they are taken
        from the frames passed to :meth:`fit`, or from the first structure
        passed to :meth:`compute`.
    r_cut : float
        Cutoff radius, Å (> 0).
    n_max : int
        Number of radial basis functions (>= 1).
    l_max : int
        Maximum angular momentum (>= 0).
    atom_sigma : float
        Width of the atomic Gaussians, Å (> 0).
    cutoff_width : float
        Width of the cosine transition of the cutoff function, Å
        (0 < cutoff_width <= r_cut).
    center_weight : float
        Weight of the central atom's own Gaussian (GAP's ``central_weight``;
        finite, >= 0). It only enters the l = 0 channel of the centre's species
        and keeps an isolated atom's descriptor non-zero.
    normalize : bool
        Return p / |p| (with the matching derivative) instead of p.
    radial_scaling : float, optional
        r0 (Å) of the radial scaling u(r) = 1 / (1 + (r / r0)^m) that weights
        each neighbour's Gaussian (Willatt, Musil, Ceriotti, Phys. Chem. Chem.
        Phys. 20, 29661 (2018); featomic's ``Willatt2018`` with rate 1), so
        that the many far neighbours do not outweigh the few near ones in the
        kernel. ``None`` (default): no scaling, as in GAP.
    radial_exponent : float
        m of the radial scaling (unused without ``radial_scaling``).
        r0 must lie in [0.5, 1000] Å and m in [2, 12] (:data:`RADIAL_SCALING_RANGE`,
        :data:`RADIAL_EXPONENT_RANGE`): below 0.5 Å every neighbour weighs ~0, and
        outside that m the radial tables need 10^4-10^5 knots to reach 1e-8.

    Attributes
    ----------
    species_ : ndarray of int
        Sorted atomic numbers the descriptor was resolved for.

    Examples
    --------
    >>> import ase.build
    >>> soap = SOAP(species=["Si"], r_cut=4.0, n_max=4, l_max=3)
    >>> out = soap.compute(ase.build.bulk("Si", "diamond", 5.43), gradients=True)
    >>> out.features.shape, out.pair_grad.shape[1:]
    ((2, 40), (3, 40))
    """

    def __init__(
        self,
        species: Sequence[str | int] | None = None,
        r_cut: float = 5.0,
        n_max: int = 8,
        l_max: int = 6,
        atom_sigma: float = 0.5,
        cutoff_width: float = 1.0,
        center_weight: float = 1.0,
        normalize: bool = True,
        radial_scaling: float | None = None,
        radial_exponent: float = 4.0,
    ):
        self.species = species
        self.r_cut = r_cut
        self.n_max = n_max
        self.l_max = l_max
        self.atom_sigma = atom_sigma
        self.cutoff_width = cutoff_width
        self.center_weight = center_weight
        self.normalize = normalize
        self.radial_scaling = radial_scaling
        self.radial_exponent = radial_exponent

    # ------------------------------------------------------------------ checks
    def _validate_params(self) -> np.ndarray | None:
        """Check every hyperparameter; return the sorted species (or None)."""

        def positive_float(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, _numbers.Real):
                raise TypeError(f"{name} must be a real number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
            return float(value)

        def int_at_least(name, low):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, _numbers.Integral):
                raise TypeError(f"{name} must be an integer >= {low}, got {value!r}")
            if value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
            return int(value)

        r_cut = positive_float("r_cut")
        positive_float("atom_sigma")
        for name, (_, hi) in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, _numbers.Real) and value > hi:
                raise ValueError(f"{name} = {value!r} is larger than kernelpot allows ({hi}): the descriptor "
                                 f"would need far more memory and time than any potential uses")
        width = positive_float("cutoff_width")
        if width > r_cut:
            raise ValueError(
                f"cutoff_width must be in (0, r_cut={r_cut}], got {self.cutoff_width!r}"
            )
        int_at_least("n_max", 1)
        int_at_least("l_max", 0)
        cw = self.center_weight
        real = isinstance(cw, _numbers.Real) and not isinstance(cw, bool)
        if not real or not math.isfinite(cw) or cw < 0:
            raise ValueError(f"center_weight must be a finite number >= 0, got {cw!r}")
        if self.radial_scaling is not None:
            for name, (lo, hi) in (("radial_scaling", RADIAL_SCALING_RANGE),
                                   ("radial_exponent", RADIAL_EXPONENT_RANGE)):
                if not lo <= positive_float(name) <= hi:
                    raise ValueError(f"{name} must be in [{lo:g}, {hi:g}], got {getattr(self, name)!r}")
        if not isinstance(self.normalize, (bool, np.bool_)):
            raise TypeError(f"normalize must be True or False, got {self.normalize!r}")
        if self.species is None:
            return None
        if isinstance(self.species, (str, _numbers.Integral)):
            raise TypeError(
                f"species must be a sequence of symbols or atomic numbers, got {self.species!r}; "
                f"wrap a single element in a list"
            )
        zs = [_to_atomic_number(s) for s in self.species]
        if len(zs) == 0:
            raise ValueError("species must list at least one element (or be None)")
        if len(set(zs)) != len(zs):
            raise ValueError(f"species contains duplicates: {list(self.species)!r}")
        return np.array(sorted(zs), dtype=np.int64)

    def _resolve_species(self, frames) -> np.ndarray:
        given = self._validate_params()
        if given is not None:
            self.species_ = given
        elif not hasattr(self, "species_"):
            zs = sorted({int(z) for atoms in frames for z in atoms.numbers})
            if not zs:
                raise ValueError(
                    "cannot infer species from structures without atoms; pass species="
                )
            self.species_ = np.array(zs, dtype=np.int64)
        return self.species_

    def _check_numbers(self, numbers: np.ndarray, index: int | None = None) -> np.ndarray:
        size = max(int(numbers.max(initial=0)), int(self.species_.max())) + 1
        lookup = np.full(size, -1, np.int64)
        lookup[self.species_] = np.arange(len(self.species_))
        idx = lookup[numbers]
        if np.any(idx < 0):
            bad = sorted(set(int(z) for z in numbers[idx < 0]))
            where = "structure" if index is None else f"structure {index}"
            raise ValueError(
                f"{where} contains element(s) {_describe(bad)} not in the descriptor's species "
                f"{_describe(self.species_)}; pass species=... including them"
            )
        return idx

    # ------------------------------------------------------------------ tables
    def _tables(self):
        """Radial and index tables for the current parameters, cached on the instance."""
        scaling = (None, None) if self.radial_scaling is None else (float(self.radial_scaling),
                                                                     float(self.radial_exponent))
        rad_key = (float(self.r_cut), int(self.n_max), int(self.l_max), float(self.atom_sigma), *scaling)
        key = rad_key + (len(self.species_),)
        cache = self.__dict__.setdefault("_table_cache", {})
        if key not in cache:
            radial = cache.get(rad_key)
            if radial is None:
                radial = _RadialTables(*rad_key)
                cache[rad_key] = radial
            l_max = int(self.l_max)
            l_of_lm = np.repeat(np.arange(l_max + 1), 2 * np.arange(l_max + 1) + 1).astype(np.int64)
            cache[key] = (radial, _ylm_normalisation(l_max), l_of_lm) + _feature_tables(
                len(self.species_), int(self.n_max), l_max
            )
        return cache[key]

    # ------------------------------------------------------------------ public
    def fit(self, frames, y=None) -> "SOAP":
        """Resolve ``species_`` from ``frames`` (unless ``species`` was given).

        Parameters
        ----------
        frames : ase.Atoms or list of ase.Atoms
        y : ignored

        Returns
        -------
        self
        """
        frames = [frames] if hasattr(frames, "numbers") else list(frames)
        if hasattr(self, "species_") and self.species is None:
            del self.species_
        self._resolve_species(frames)
        for k, atoms in enumerate(frames):
            self._check_numbers(np.asarray(atoms.numbers), k)
        return self

    def get_number_of_features(self) -> int:
        """Length F of the feature vector for the resolved species."""
        species = self._validate_params()
        if species is None:
            if not hasattr(self, "species_"):
                raise ValueError(
                    "species unknown: pass species=... or call fit(frames) / compute(atoms) first"
                )
            species = self.species_
        n_sp, n, n_l = len(species), int(self.n_max), int(self.l_max) + 1
        return n_l * (n_sp * n * (n + 1) // 2 + n_sp * (n_sp - 1) // 2 * n * n)

    def compute(self, atoms, gradients: bool = False, strain: bool = False) -> SOAPFeatures:
        """Features of every atom of one structure, optionally with derivatives.

        Parameters
        ----------
        atoms : ase.Atoms
            Structure (periodic in any direction, any cell, or a molecule).
        gradients : bool
            Also return d features / d positions as sparse (i, j) blocks.
        strain : bool
            Also return d features / d strain (Voigt).

        Returns
        -------
        SOAPFeatures
        """
        self._resolve_species([atoms])
        numbers = np.asarray(atoms.numbers, dtype=np.int64)
        spec_idx = self._check_numbers(numbers)
        return self._run([atoms], [spec_idx], gradients, strain)[0]

    def create(self, atoms_or_list):
        """Features only, dscribe-style.

        Parameters
        ----------
        atoms_or_list : ase.Atoms or list of ase.Atoms

        Returns
        -------
        ndarray of shape (n_atoms, F), or a list of such arrays for a list input
        (all structures are processed in one kernel call).
        """
        single = hasattr(atoms_or_list, "numbers")
        frames = [atoms_or_list] if single else list(atoms_or_list)
        self._resolve_species(frames)
        spec = [
            self._check_numbers(np.asarray(a.numbers, np.int64), k) for k, a in enumerate(frames)
        ]
        out = [res.features for res in self._run(frames, spec, False, False)]
        return out[0] if single else out

    def saved_params(self) -> dict:
        """``get_params()`` as a model file stores them: the radial-scaling keys only when scaling is on.

        A file of an unscaled SOAP then has the layout kernelpot wrote before radial scaling existed,
        and older versions read it.
        """
        params = self.get_params()
        if params["radial_scaling"] is None:
            del params["radial_scaling"], params["radial_exponent"]
        return params

    # ------------------------------------------------------------------ buffers
    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_buffers", None)  # scratch, not state: never pickled or shipped to workers
        return state

    def _output(self, name: str, shape: tuple) -> np.ndarray:
        """A C-contiguous float64 array of ``shape`` from a buffer reused across calls.

        MD calls the descriptor every step with the same sizes; a fresh output
        array of tens to hundreds of MB each call costs more in page faults
        than the kernel that fills it. The pooled buffer is reused only when
        no array from an earlier call still refers to it (checked by reference
        count under a lock), so a caller that keeps a result gets a new buffer
        next time and never sees its arrays change. A buffer is replaced when
        it is too small or more than 4x too large.
        """
        size = int(np.prod(shape))
        if size == 0:
            return np.empty(shape)
        with _BUFFER_LOCK:
            pool = self.__dict__.setdefault("_buffers", {})
            if name in pool:
                if _refcount(pool, name) != _FREE_REFCOUNT:
                    return np.empty(shape)  # still in use by an earlier result: leave it alone
                if size <= pool[name].size <= 4 * size:
                    return pool[name][:size].reshape(shape)
            buf = np.empty(size)
            pool[name] = buf
            return buf.reshape(shape)

    # ------------------------------------------------------------------ engine
    def _run(self, frames, spec_idx, gradients, strain):
        radial, ylm_norm, l_of_lm, feat_index, feat_factor = self._tables()
        n_feat = len(feat_index)
        r_cut = float(self.r_cut)
        counts_all, species_all, vectors_all, slots_all = [], [], [], []
        pair_off_all, self_slot_all, pair_info = [], [], []
        n_done = 0
        n_pairs_done = 0
        for atoms, sidx in zip(frames, spec_idx):
            n = len(atoms)
            nl = neighbor_list(atoms, r_cut)
            centers = nl.centers
            nbr = nl.neighbors
            counts_all.append(np.diff(nl.offsets))
            species_all.append(sidx[nbr])
            vectors_all.append(nl.vectors)
            if gradients:
                not_self = nbr != centers
                img_key = centers * n + nbr
                keys = np.union1d(img_key[not_self], np.arange(n, dtype=np.int64) * (n + 1))
                pair_offsets = np.searchsorted(keys, np.arange(n + 1, dtype=np.int64) * n)
                slot = np.searchsorted(keys, img_key) - pair_offsets[centers]
                slot[~not_self] = -1
                self_slot = np.searchsorted(keys, np.arange(n) * (n + 1)) - pair_offsets[:-1]
                slots_all.append(slot)
                pair_off_all.append(pair_offsets[:-1] + n_pairs_done)
                self_slot_all.append(self_slot)
                pair_info.append((keys // max(n, 1), keys % max(n, 1)))
                n_pairs_done += len(keys)
            else:
                slots_all.append(np.full(len(nbr), -1, dtype=np.int64))
            n_done += n
        # Concatenate frames into one CSR problem.
        img_offsets = np.zeros(n_done + 1, dtype=np.int64)
        if n_done:
            img_offsets[1:] = np.cumsum(np.concatenate(counts_all))
        img_species = np.ascontiguousarray(np.concatenate(species_all), dtype=np.int64)
        img_vectors = np.ascontiguousarray(
            np.concatenate(vectors_all), dtype=np.float64
        ).reshape(-1, 3)
        img_slot = np.ascontiguousarray(np.concatenate(slots_all), dtype=np.int64)
        center_species = np.ascontiguousarray(np.concatenate(spec_idx), dtype=np.int64)
        if gradients:
            pair_offsets = np.append(np.concatenate(pair_off_all), n_pairs_done).astype(np.int64)
            self_slot = np.concatenate(self_slot_all).astype(np.int64)
        else:
            pair_offsets = np.zeros(n_done + 1, dtype=np.int64)
            self_slot = np.zeros(n_done, dtype=np.int64)
        features = np.empty((n_done, n_feat))
        pair_grad = self._output("pair_grad", (n_pairs_done if gradients else 0, 3, n_feat))
        strain_grad = self._output("strain_grad", (n_done if strain else 0, 6, n_feat))
        # numba threads by work size (kernelpot._threads); no BLAS inside the parallel region
        n_threads = _threads.threads_for(n_done)
        with _threads.limit(numba_threads=n_threads, blas_threads=1):
            _soap_kernels.soap_kernel(
                img_offsets, img_species, img_vectors, img_slot, center_species, pair_offsets,
                self_slot, radial.values, radial.derivatives, radial.h, r_cut,
                float(self.cutoff_width), float(self.center_weight), ylm_norm, l_of_lm,
                feat_index, feat_factor, len(self.species_), bool(gradients), bool(strain),
                bool(self.normalize), features, pair_grad, strain_grad,
                1 if n_threads == 1 else 4 * n_threads,
            )
        results = []
        a0 = 0
        p0 = 0
        for k, atoms in enumerate(frames):
            n = len(atoms)
            res = SOAPFeatures(features[a0 : a0 + n], np.asarray(atoms.numbers).copy())
            if gradients:
                pc, pn = pair_info[k]
                res.pair_center = pc.astype(np.int64)
                res.pair_neighbor = pn.astype(np.int64)
                res.pair_grad = pair_grad[p0 : p0 + len(pc)]
                p0 += len(pc)
            if strain:
                res.strain_grad = strain_grad[a0 : a0 + n]
            results.append(res)
            a0 += n
        return results
