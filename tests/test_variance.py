"""Prior variances of derivative observations equal mixed finite differences of the kernel."""

import numpy as np
import pytest
from sklearn.base import clone

from kernelpot.gp.variance import prior_energy_var, prior_force_var, prior_stress_var
from kernelpot.gp.kernels import dot_kernel
from conftest import emt_frames

ZETA = 4.0


def _K(desc, a, b):
    """Double-sum reduced kernel between two structures (same central species only)."""
    fa, fb = desc.compute(a), desc.compute(b)
    same = fa.numbers[:, None] == fb.numbers[None, :]
    return float(np.sum(dot_kernel(fa.features, fb.features, ZETA)[same]))


@pytest.fixture(scope="module")
def setup(small_soap):
    a = emt_frames(1, symbols=("Cu", "Au"), size=(1, 1, 2), seed=31)[0]
    desc = clone(small_soap).set_params(species=[29, 79])
    return desc, a


def test_energy_prior_variance(setup):
    desc, a = setup
    assert prior_energy_var(desc.compute(a), ZETA) == pytest.approx(_K(desc, a, a), rel=1e-12)


@pytest.mark.parametrize("j,c", [(0, 0), (3, 2), (6, 1)])
def test_force_prior_variance_is_mixed_second_derivative(setup, j, c):
    desc, a = setup
    h = 1e-4
    feat = desc.compute(a, gradients=True)
    exact = prior_force_var(feat, ZETA)[j, c]

    def shifted(s):
        b = a.copy()
        b.positions[j, c] += s
        return b

    fd = (_K(desc, shifted(h), shifted(h)) - _K(desc, shifted(h), shifted(-h))
          - _K(desc, shifted(-h), shifted(h)) + _K(desc, shifted(-h), shifted(-h))) / (4 * h * h)
    assert exact == pytest.approx(fd, rel=1e-4)


@pytest.mark.parametrize("v", [0, 4])
def test_stress_prior_variance_is_mixed_second_strain_derivative(setup, v):
    desc, a = setup
    h = 1e-4
    feat = desc.compute(a, gradients=True, strain=True)
    V = a.cell.volume
    exact = prior_stress_var(feat, ZETA, V)[v]
    pairs = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    p, q = pairs[v]

    def strained(s):
        eps = np.zeros((3, 3))
        eps[p, q] += s
        eps[q, p] += s
        if p == q:
            eps[p, p] = s
        b = a.copy()
        b.set_cell(a.cell @ (np.eye(3) + eps), scale_atoms=True)
        return b

    # symmetric off-diagonal strain moves eps_pq and eps_qp together: d/ds = 2 d/deps_pq
    f = 1.0 if p == q else 0.5
    fd = f * f * (_K(desc, strained(h), strained(h)) - _K(desc, strained(h), strained(-h))
                  - _K(desc, strained(-h), strained(h)) + _K(desc, strained(-h), strained(-h))) / (4 * h * h)
    assert exact * V ** 2 == pytest.approx(fd, rel=1e-4)
