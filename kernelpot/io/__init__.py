"""Reading, writing and checking labelled structures: the only layer that knows formats and units.

- :mod:`~kernelpot.io.formats`: extxyz, ASE db, mlearn JSON (``read``, ``write``) and every unit conversion;
- :mod:`~kernelpot.io.labels`: what a label is (which keys, shapes, which energy), used by every layer above;
- :mod:`~kernelpot.io.validation`: ``validate`` collects every problem in a data set before a fit;
- :mod:`~kernelpot.io.dft_audit`: ``audit`` groups frames by DFT settings and tests per-group energy offsets.
"""

from kernelpot.io.formats import KBAR, mlearn_stress_to_ase, read, write
from kernelpot.io.labels import DataWarning
from kernelpot.io.validation import ValidationReport, validate

__all__ = ["read", "write", "validate", "ValidationReport", "DataWarning", "KBAR", "mlearn_stress_to_ase"]
