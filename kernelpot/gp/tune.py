"""Choosing descriptor and kernel settings from a small grid.

Noise levels and ``delta`` are continuous and come from the marginal likelihood
inside every fit; the discrete settings (``r_cut``, ``atom_sigma``, ``n_max``,
``l_max``, ``zeta``) are chosen here by one of two criteria:

* ``"likelihood"``: the optimised log marginal likelihood of each candidate
  (the Bayesian evidence of that kernel for the same data; cheap, no held-out
  data needed);
* ``"kfold"``: k-fold cross-validation over structures of the force RMSE
  (``SparseGP.score``), the criterion that does not trust the model's own
  probabilities.
"""

from __future__ import annotations

import itertools

import numpy as np
from sklearn.base import clone

__all__ = ["select_settings", "DEFAULT_GRID"]

DEFAULT_GRID = {
    "descriptor__r_cut": [4.5, 5.0, 5.5],
    "descriptor__l_max": [4, 6],
    "zeta": [2.0, 4.0],
}


def select_settings(frames, model=None, grid: dict | None = None, method: str = "likelihood",
                    cv: int = 3, random_state: int = 0, verbose: bool = False):
    """Fit every combination of ``grid`` and rank them.

    Parameters
    ----------
    frames : list of ase.Atoms
        Labelled training frames.
    model : SparseGP, optional
        Template (default ``SparseGP()``); grid keys use scikit-learn's nested
        names, e.g. ``"descriptor__r_cut"``, ``"zeta"``.  With the default
        ``descriptor=None`` each candidate is fitted as ``SparseGP()`` fits
        (its SOAP chosen by the evidence) unless the grid sets a
        ``descriptor__`` key: then the candidates are ``SOAP()`` with those
        settings, unscaled unless ``descriptor__radial_scaling`` is in the grid.
    grid : dict of lists, optional
        Default :data:`DEFAULT_GRID` (12 fits).
    method : {"likelihood", "kfold"}
    cv : int
        Folds for ``"kfold"``.

    Returns
    -------
    best : dict
        The winning settings.
    table : list of dict
        One row per candidate: its settings and ``score`` (log marginal
        likelihood, or mean negative force RMSE in eV/Å over folds), best first.

    Examples
    --------
    >>> best, table = select_settings(frames, grid={"zeta": [2.0, 4.0]})   # doctest: +SKIP
    >>> best, table = select_settings(frames, grid={"descriptor__radial_scaling": [None, 2.0, 3.0]})  # doctest: +SKIP
    >>> model = SparseGP(zeta=best["zeta"]).fit(frames)                     # doctest: +SKIP
    """
    from kernelpot.gp.sparse import SparseGP
    if method not in ("likelihood", "kfold"):
        raise ValueError(f"method must be 'likelihood' or 'kfold', got {method!r}")
    template = SparseGP() if model is None else model
    grid = DEFAULT_GRID if grid is None else grid
    keys = list(grid)
    if template.descriptor is None and any(k.startswith("descriptor__") for k in keys):
        # descriptor settings need a descriptor to set: the unscaled SOAP unless the grid scales it
        from kernelpot.descriptors import SOAP
        template = clone(template).set_params(descriptor=SOAP())
    valid = set(template.get_params(deep=True))
    bad = [k for k in keys if k not in valid]
    if bad:
        raise ValueError(f"unknown settings {bad}; valid names include {sorted(k for k in valid if '__' in k)[:12]} ...")
    frames = list(frames)
    rows = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        est = clone(template).set_params(**params)
        if method == "likelihood":
            score = est.fit(frames).log_marginal_likelihood_
        else:
            from sklearn.model_selection import KFold, cross_val_score
            score = float(np.mean(cross_val_score(est, frames, cv=KFold(cv, shuffle=True,
                                                                          random_state=random_state))))
        rows.append({**params, "score": float(score)})
        if verbose:
            print(params, f"score {score:.6g}")
    rows.sort(key=lambda r: -r["score"])
    best = {k: rows[0][k] for k in keys}
    return best, rows
