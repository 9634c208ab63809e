"""What users do with the predictive distribution: metrics, evaluation, screening, committees.

The leave-one-out maths and the variance calibration are part of the fitted
posterior and live in :mod:`kernelpot.gp` (``gp.loo``, ``gp.calibration``);
they are re-exported here because this is where users look for them.

- :mod:`~kernelpot.uq.metrics`: coverage, miscalibration area, NLL, Spearman (plain arrays);
- :mod:`~kernelpot.uq.evaluation`: errors and stds of a model on labelled frames;
- :mod:`~kernelpot.uq.screening`: ``screen`` ranks training structures by leave-one-out evidence;
- ``energy_conventions`` and ``stress_conventions`` (:mod:`kernelpot.gp.conventions`): whole groups
  whose energies match what their forces imply, or whose stress matches what their energies and
  forces imply, only in another convention (unit, sign, shear order);
- :mod:`~kernelpot.uq.committee`: ``Committee`` of models on subsamples (a baseline for the GP variance).
"""

from kernelpot.gp.calibration import informative, recalibrate, recalibration_weights
from kernelpot.gp.conventions import energy_conventions, physics_energy, physics_stress, stress_conventions
from kernelpot.gp.group_loo import calibration_groups
from kernelpot.gp.loo import TrainingDiagnostics, leave_one_out
from kernelpot.gp.posterior import variance

__all__ = ["TrainingDiagnostics", "leave_one_out", "calibration_groups", "informative", "recalibration_weights",
           "recalibrate", "variance", "energy_conventions", "physics_energy", "physics_stress", "stress_conventions",
           "screen", "Committee"]


def __getattr__(name):
    # screening and the committee pull in scipy.stats and the estimator: imported on first use
    if name == "screen":
        from kernelpot.uq.screening import screen
        return screen
    if name == "Committee":
        from kernelpot.uq.committee import Committee
        return Committee
    raise AttributeError(f"module 'kernelpot.uq' has no attribute {name!r}")
