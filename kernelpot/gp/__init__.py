"""The sparse Gaussian process: kernels, derivative observations, likelihood, posterior, estimator.

Read in the order data flows:

- :mod:`~kernelpot.gp.kernels`: the dot-product kernel and its derivatives;
- :mod:`~kernelpot.gp.design`: reduced design rows of energy, force and stress observations;
- :mod:`~kernelpot.gp.variance`: their prior variances;
- :mod:`~kernelpot.gp.select`: sparse (inducing) environments;
- :mod:`~kernelpot.gp.offsets`: per-species energy offsets;
- :mod:`~kernelpot.gp.assembly`: observations -> whitened M x M statistics (chunks, Dask);
- :mod:`~kernelpot.gp.likelihood`, :mod:`~kernelpot.gp.solve`: marginal likelihood, gradient, Cholesky;
- :mod:`~kernelpot.gp.hyperparameters`: delta and noise from the evidence / leave-one-out;
- :mod:`~kernelpot.gp.posterior`: the fitted posterior (mean, variance, weight samples);
- :mod:`~kernelpot.gp.loo`: leverage and closed-form leave-one-out;
- :mod:`~kernelpot.gp.calibration`: variance weights from held-out residuals;
- :mod:`~kernelpot.gp.wall`: the repulsion prior for pairs closer than any in the training data;
- :mod:`~kernelpot.gp.sparse`: ``SparseGP``, the estimator that ties them together;
- :mod:`~kernelpot.gp.tune`: descriptor settings by evidence or k-fold.
"""

from kernelpot.gp.sparse import SparseGP

__all__ = ["SparseGP"]
