"""Atomic-environment descriptors."""

from kernelpot.descriptors.soap import SOAP, SOAPFeatures

__all__ = ["SOAP", "SOAPFeatures"]
