"""Sparse Gaussian process with energy, force and stress observations."""

from kernelpot.gp.sparse import SparseGP

__all__ = ["SparseGP"]
