"""Atomic-environment descriptors with exact position and strain derivatives.

- :mod:`~kernelpot.descriptors.neighbors`: numba cell-list neighbour lists;
- :mod:`~kernelpot.descriptors.soap`: the SOAP power spectrum (public class ``SOAP``);
- ``_soap_kernels``: the numba kernels behind it (plain arrays in, plain arrays out).
"""

from kernelpot.descriptors.soap import SOAP, SOAPFeatures

__all__ = ["SOAP", "SOAPFeatures"]
