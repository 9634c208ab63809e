"""Workflows on top of a fitted model and its calculator.

- :mod:`~kernelpot.workflows.sampling`: thermal rattles, strain sets, MD sampling with de-duplication;
- :mod:`~kernelpot.workflows.active`: on-the-fly active learning on the epistemic force uncertainty;
- :mod:`~kernelpot.workflows.properties`: EOS, elastic constants, vacancy, surface, phonons, NVE drift,
  each with posterior error bars.
"""
