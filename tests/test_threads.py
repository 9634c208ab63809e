"""Thread control: one switch (KERNELPOT_NUM_THREADS), threads by work size, one per Dask worker."""

import numba
import numpy as np
import pytest
from ase.build import bulk

from kernelpot import SOAP, _threads


def test_switch_caps_threads(monkeypatch):
    monkeypatch.setenv(_threads.ENV_VAR, "1")
    assert _threads.max_threads() == 1
    assert _threads.threads_for(10**6) == 1
    monkeypatch.delenv(_threads.ENV_VAR)
    assert _threads.max_threads() == numba.config.NUMBA_NUM_THREADS


@pytest.mark.parametrize("value", ["0", "two", "-3"])
def test_bad_switch_is_named(monkeypatch, value):
    monkeypatch.setenv(_threads.ENV_VAR, value)
    with pytest.raises(ValueError, match=_threads.ENV_VAR):
        _threads.max_threads()


def test_threads_follow_work_size(monkeypatch):
    monkeypatch.delenv(_threads.ENV_VAR, raising=False)
    assert _threads.threads_for(54) == 1  # a small MD cell: one thread
    assert _threads.threads_for(10**6) == _threads.max_threads()


def test_one_thread_inside_dask_workers(monkeypatch):
    monkeypatch.delenv(_threads.ENV_VAR, raising=False)
    monkeypatch.setattr(_threads, "in_dask_worker", lambda: True)
    assert _threads.max_threads() == 1
    monkeypatch.setenv(_threads.ENV_VAR, "2")  # an explicit setting wins
    assert _threads.max_threads() == min(2, numba.config.NUMBA_NUM_THREADS)


def test_limit_restores_numba_threads():
    before = numba.get_num_threads()
    with _threads.limit(numba_threads=1, blas_threads=1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


def test_results_do_not_depend_on_thread_count(monkeypatch):
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (4, 4, 4)  # 512 atoms: two threads by default
    atoms.rattle(0.05, seed=0)
    soap = SOAP(species=["Si"], r_cut=4.0, n_max=4, l_max=3)
    monkeypatch.setenv(_threads.ENV_VAR, "1")
    one = soap.compute(atoms, gradients=True, strain=True)
    monkeypatch.delenv(_threads.ENV_VAR)
    many = soap.compute(atoms, gradients=True, strain=True)
    np.testing.assert_array_equal(one.pair_grad, many.pair_grad)
    np.testing.assert_array_equal(one.strain_grad, many.strain_grad)


def test_matrix_work_uses_one_blas_thread_below_the_threshold():
    from kernelpot import _threads
    assert _threads.threads_for_matrix(855) == 1
    assert _threads.threads_for_matrix(_threads.MIN_MATRIX_PER_THREAD) == _threads.max_threads()
