"""Thread counts that fit the work: one switch, no pools fighting over the cores.

kernelpot runs numba-parallel kernels (descriptors) and calls BLAS (OpenBLAS,
through numpy and scipy) on matrices whose size ranges from a few kB (one
small cell in MD) to GB (the statistics of a fit). Left alone, every runtime
starts one thread per core: on small work the threads cost more in start-up
and spin-waiting than they save (a 54-atom prediction used 3-7x the CPU time
of the single-threaded run), and under a Dask worker that already runs one
task per core they oversubscribe the machine.

The rules
---------
* ``KERNELPOT_NUM_THREADS`` (environment variable, integer >= 1) caps the
  threads of kernelpot's numba kernels and of the BLAS calls it makes in
  prediction. Unset: the numba default (``NUMBA_NUM_THREADS``, usually the
  number of cores), except inside a Dask worker, where it is 1 (Dask supplies
  the parallelism: one task per worker thread).
* Below :data:`MIN_ATOMS_PER_THREAD` atoms per thread, fewer threads are used
  (a 54-atom cell runs on one thread).
* BLAS is held at one thread inside numba-parallel regions, and at the same
  count as numba otherwise, so the two pools never run at once.
* Dense M x M linear algebra of a fit (Cholesky factors in the hyperparameter
  search, the solve, the leave-one-out) runs on one BLAS thread below
  :data:`MIN_MATRIX_PER_THREAD` sparse points (:func:`threads_for_matrix`): a
  Cholesky of M = 855 took 0.04 s on one thread and 2.7 s on two while the
  other core was busy (spin-waiting threads), so the search of a default EMT
  copper fit went from 110 s to seconds.

The limits are applied around each call and restored afterwards (numba's
thread count is per calling thread; BLAS limits go through threadpoolctl), so
they never change a setting the user made outside kernelpot's calls.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

__all__ = ["ENV_VAR", "MIN_ATOMS_PER_THREAD", "MIN_MATRIX_PER_THREAD", "max_threads", "threads_for",
           "threads_for_matrix", "limit"]

ENV_VAR = "KERNELPOT_NUM_THREADS"
# Per-thread work below which a second thread costs more (start, spin-wait,
# cache traffic) than it saves: measured on SOAP gradients + prediction.
MIN_ATOMS_PER_THREAD = 256
# Order of the M x M matrices below which one BLAS thread is best (a Cholesky of M = 2000 is
# ~0.3 s on one thread; below that a second thread saves little and costs much on a busy machine).
MIN_MATRIX_PER_THREAD = 2000

_lock = threading.Lock()
_controller = {"obj": None, "n_modules": -1}


def _numba_default() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def in_dask_worker() -> bool:
    """True when called from a task running on a Dask worker."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except (ValueError, AttributeError):
        return False
    return True


def max_threads() -> int:
    """The thread cap: ``KERNELPOT_NUM_THREADS``, else 1 in a Dask worker, else numba's default.

    Raises
    ------
    ValueError
        If ``KERNELPOT_NUM_THREADS`` is set to something other than an integer >= 1.
    """
    cap = _numba_default()
    value = os.environ.get(ENV_VAR, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{ENV_VAR}={value!r}: expected an integer >= 1 (or unset for the default)")
        return min(n, cap)
    return 1 if in_dask_worker() else cap


def threads_for(n_atoms: int) -> int:
    """Threads for work on ``n_atoms`` atoms: at least :data:`MIN_ATOMS_PER_THREAD` per thread."""
    return max(1, min(max_threads(), int(n_atoms) // MIN_ATOMS_PER_THREAD))


def threads_for_matrix(m: int) -> int:
    """BLAS threads for dense linear algebra on ``m x m`` matrices (1 below :data:`MIN_MATRIX_PER_THREAD`)."""
    return 1 if m < MIN_MATRIX_PER_THREAD else max_threads()


def _blas_controller():
    """A cached threadpoolctl controller (creating one scans the loaded libraries: ~20 ms).

    Rebuilt when modules were imported since, which is when new native
    thread pools can have been loaded.
    """
    from threadpoolctl import ThreadpoolController

    n_mod = len(sys.modules)
    with _lock:
        if _controller["obj"] is None or _controller["n_modules"] != n_mod:
            _controller["obj"] = ThreadpoolController()
            _controller["n_modules"] = n_mod
        return _controller["obj"]


@contextmanager
def limit(numba_threads: int | None = None, blas_threads: int | None = None):
    """Run the body with at most ``numba_threads`` numba threads and ``blas_threads`` BLAS threads.

    None leaves that runtime alone. Previous settings are restored on exit.

    Examples
    --------
    >>> from kernelpot import _threads
    >>> with _threads.limit(numba_threads=1, blas_threads=1):
    ...     pass
    """
    import numba

    old = None
    if numba_threads is not None:
        old = numba.get_num_threads()
        numba.set_num_threads(max(1, min(int(numba_threads), _numba_default())))
    try:
        if blas_threads is None:
            yield
        else:
            with _blas_controller().limit(limits=max(1, int(blas_threads)), user_api="blas"):
                yield
    finally:
        if old is not None:
            numba.set_num_threads(old)


def for_atoms(fn):
    """Decorator for methods ``fn(self, atoms, ...)``: numba and BLAS threads fitted to ``len(atoms)``."""
    import functools

    @functools.wraps(fn)
    def wrapper(self, atoms, *args, **kwargs):
        n = threads_for(len(atoms))
        with limit(numba_threads=n, blas_threads=n):
            return fn(self, atoms, *args, **kwargs)

    return wrapper
