"""kernelpot: sparse Gaussian-process interatomic potentials.

Fits total energies, forces and virial stresses jointly with a sparse GP on
SOAP power-spectrum descriptors, with learned noise and calibrated uncertainty.

``import kernelpot`` loads the core (reading, descriptors, the GP, the
calculator); workflows, screening, metrics and plotting are loaded on first
use of their names.
"""

from kernelpot._version import __version__  # noqa: E402

from kernelpot.io import read, write, validate  # noqa: E402
from kernelpot.descriptors import SOAP  # noqa: E402
from kernelpot.gp import SparseGP  # noqa: E402
from kernelpot.calculator import Calculator  # noqa: E402

# name -> (module, attribute or None for the module itself), imported on first use
_LAZY = {
    "screen": ("kernelpot.uq.screening", "screen"),
    "audit": ("kernelpot.io.dft_audit", "audit"),
    "Committee": ("kernelpot.uq.committee", "Committee"),
    "metrics": ("kernelpot.uq.metrics", None),
    "uq": ("kernelpot.uq", None),
    "sampling": ("kernelpot.workflows.sampling", None),
    "active": ("kernelpot.workflows.active", None),
    "properties": ("kernelpot.workflows.properties", None),
    "plot": ("kernelpot.plot", None),
}

load = SparseGP.load

__all__ = ["__version__", "SparseGP", "SOAP", "Calculator", "read", "write", "validate", "load", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kernelpot' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
