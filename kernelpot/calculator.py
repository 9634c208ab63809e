"""ASE calculator over a fitted kernelpot model.

Results (ASE units; stress in ASE's Voigt order xx yy zz yz xz xy, with the ASE
sign: a compressed cell has negative stress):

=========================  ==========  =============================================
key                        shape       meaning
=========================  ==========  =============================================
``energy``                 scalar      total energy (eV)
``free_energy``            scalar      same as ``energy`` (no electronic entropy)
``energies``               (n,)        local energies (eV), summing to ``energy``
``forces``                 (n, 3)      eV/Å
``stress``                 (6,)        eV/Å^3 (periodic cells only)
``energy_std``             scalar      total predictive std of the energy (eV):
                                       epistemic and aleatoric (learned noise)
``forces_std``             (n, 3)      total predictive std per force component
``stress_std``             (6,)        total predictive std per stress component
``energy_std_epistemic``   scalar      posterior std of the model alone
``forces_std_epistemic``   (n, 3)      posterior std of the model alone
``stress_std_epistemic``   (6,)        posterior std of the model alone
``energies_std``           (n,)        posterior std of each local energy (eV); local
                                       energies are never observed, so this is
                                       epistemic only (with the energy kind's
                                       calibration).  Labels fix only sums of
                                       local energies, so most of it is how the
                                       energy may be split among atoms and
                                       species: it is no measure of how unusual
                                       an atom's environment is (a surface atom
                                       can read below a bulk one); for that use
                                       ``forces_std`` or ``extrapolation``
``extrapolation``          scalar      the structure's largest latent variance over
                                       the largest the calibration's held-out data
                                       reached: above 1, every std is the GP's own,
                                       checked by no held-out error (a lower bound);
                                       NaN for an uncalibrated model
=========================  ==========  =============================================

Every std includes, where two atoms are closer than any pair of their
elements in the training data, the repulsion prior of :mod:`kernelpot.gp.wall`.

The uncertainty keys are filled when the calculator was made with
``uncertainty=True`` (the default); MD users who do not need them save about
half the cost per step with ``uncertainty=False``.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator as _ASECalculator, all_changes

__all__ = ["Calculator"]

UNCERTAINTY_KEYS = ("energy_std", "forces_std", "stress_std",
                    "energy_std_epistemic", "forces_std_epistemic", "stress_std_epistemic", "energies_std",
                    "extrapolation")

_SHAPES = {"energy_std": (), "energy_std_epistemic": (), "forces_std": ("natoms", 3),
           "forces_std_epistemic": ("natoms", 3), "stress_std": (6,), "stress_std_epistemic": (6,),
           "energies_std": ("natoms",), "extrapolation": ()}


def _register_with_ase() -> None:
    """Make the uncertainty keys known ASE outputs, so ``atoms.get_properties`` accepts results that carry them.

    ASE keeps a registry of the outputs a calculator may return
    (``ase.outputs.all_outputs``); unknown keys made ``get_properties`` raise.
    Registering is idempotent.  They are deliberately *not* added to
    ``ase.calculators.calculator.all_properties``: ASE's extxyz reader would then
    move a ``forces_std`` column of a prediction file into a calculator.  So
    ``SinglePointCalculator(atoms, **calc.results)`` needs the standard keys only:
    ``{k: v for k, v in calc.results.items() if k in all_properties}``.
    """
    try:
        from ase import outputs
    except ImportError:  # older ASE without the outputs registry
        return
    for name, shape in _SHAPES.items():
        if name not in outputs.all_outputs:
            outputs._defineprop(name, float, shape=shape)


_register_with_ase()


class Calculator(_ASECalculator):
    """ASE calculator for a fitted :class:`kernelpot.SparseGP`.

    Parameters
    ----------
    model : SparseGP
        A fitted model (or anything with the same ``predict_frame``).
    uncertainty : bool
        Also compute the predictive standard deviations.

    Examples
    --------
    >>> atoms.calc = kernelpot.Calculator(model)         # doctest: +SKIP
    >>> atoms.get_forces(); atoms.calc.results["forces_std"]   # doctest: +SKIP
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", *UNCERTAINTY_KEYS]

    def __init__(self, model, uncertainty: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.uncertainty = uncertainty

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        periodic = bool(np.all(a.pbc)) and a.cell.volume > 1e-8
        if "stress" in properties and not periodic:
            from ase.calculators.calculator import PropertyNotImplementedError
            raise PropertyNotImplementedError("stress needs a periodic cell (all pbc True, non-zero volume)")
        r = self.model.predict_frame(a, return_std=self.uncertainty, forces=True, stress=periodic)
        self.results["energy"] = r["energy"]
        self.results["free_energy"] = r["energy"]
        self.results["energies"] = r["energies"]
        self.results["forces"] = r["forces"]
        if periodic:
            self.results["stress"] = r["stress"]
        if self.uncertainty:
            for k in UNCERTAINTY_KEYS:
                if (k.startswith("stress") and not periodic) or k not in r:
                    continue  # e.g. a Committee has no local-energy std
                self.results[k] = r[k]
