"""kernelpot: sparse Gaussian-process interatomic potentials.

Fits total energies, forces and virial stresses jointly with a sparse GP on
SOAP power-spectrum descriptors, with learned noise and calibrated uncertainty.
"""

__version__ = "0.1.0"
