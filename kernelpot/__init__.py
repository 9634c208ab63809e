"""kernelpot: sparse Gaussian-process interatomic potentials.

Fits total energies, forces and virial stresses jointly with a sparse GP on
SOAP power-spectrum descriptors, with learned noise and calibrated uncertainty.
"""

__version__ = "0.1.0"

from kernelpot import metrics  # noqa: E402  (kernelpot.plot is imported on demand)

from kernelpot.gp import SparseGP  # noqa: E402
from kernelpot.calculator import Calculator  # noqa: E402
from kernelpot.modelfile import load_model as load  # noqa: E402

from kernelpot import properties, sampling  # noqa: E402,F401
from kernelpot.audit import audit  # noqa: E402,F401

from kernelpot.descriptors import SOAP  # noqa: E402

from kernelpot.io import read, write  # noqa: E402
from kernelpot.validate import validate  # noqa: E402
from kernelpot import active  # noqa: E402,F401
from kernelpot.screen import screen  # noqa: E402,F401
from kernelpot.committee import Committee  # noqa: E402,F401
