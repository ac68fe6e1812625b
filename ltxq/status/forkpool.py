"""Spread CPU-bound work over forked processes (a cold `status` parsing thousands of job files).

The function is not pickled: workers are forked after it is set, so they inherit it with the
whole reader state. Only the items and the results cross process boundaries, so both must be
plain, picklable data. Where forking is unsafe or cannot help, `fork_map` declines and the
caller does the work itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

CHUNKS_PER_WORKER = 4  # small enough to even out a slow chunk, big enough to batch the pickling

_work: Callable[[Any], Any] | None = None  # what the forked workers run, set around the fork


def cpus() -> int:
    """Return the number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def fork_map(fn: Callable[[Any], Any], items: Sequence[Any],
             workers: int | None = None) -> list[Any] | None:
    """Return [FN(item) for item in ITEMS], computed in forked workers (one per CPU by default).

    Returns None, having run nothing, where that cannot be faster or safe: fewer than two
    workers, no fork on this platform, other threads alive (a fork copies their held locks),
    or the fork itself failing (an OSError, from FN too: the caller redoes the work). FN should
    catch its own errors: any other one it raises is raised here.
    """
    workers = min(workers or cpus(), len(items))
    if workers < 2 or threading.active_count() > 1:
        return None
    import multiprocessing  # only a run with many files to read pays for this import

    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    global _work
    _work = fn
    size = -(-len(items) // (workers * CHUNKS_PER_WORKER))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            done = pool.map(_run_chunk, chunks, chunksize=1)
    except OSError:  # no memory or processes left to fork: do it in this process
        return None
    finally:
        _work = None
    return [result for chunk in done for result in chunk]


def _run_chunk(chunk: Sequence[Any]) -> list[Any]:
    assert _work is not None, "fork_map sets the work before forking"
    return [_work(item) for item in chunk]
