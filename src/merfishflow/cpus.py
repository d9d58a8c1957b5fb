"""How many CPUs this process may use, and how many BLAS may: the answers every threaded step shares."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which a cluster job's cgroup narrows), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def blas_threads(n_threads: int):
    """A context in which BLAS uses at most ``n_threads`` threads (0: left as it is).

    So that a step asked for one thread is single-threaded throughout: OpenBLAS's own threads on a
    busy core slow every small product down. threadpoolctl comes with scikit-learn; the limit is
    process-wide while the context is open.
    """
    from contextlib import nullcontext

    if n_threads <= 0:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return nullcontext()
    return threadpool_limits(n_threads, user_api="blas")


def map_in_threads(function, items, n_threads: int) -> list:
    """``[function(item) for item in items]``, up to ``n_threads`` items at a time (one thread each), in order.

    For a job's rounds: their numpy, scipy and tensorstore work releases the GIL, and each round on
    one thread gives the same bytes as a loop. The first exception is raised once every started item
    has finished.
    """
    items = list(items)
    if n_threads <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(int(n_threads), len(items))) as pool:
        return list(pool.map(function, items))
