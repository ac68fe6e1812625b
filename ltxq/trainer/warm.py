"""Warm models: a process-wide cache of loaded base components, reused job after job.

A daemon runs jobs one after another in one process; loading the base model is most of the
gap between them. The cache holds the most recently used components (one set: a second
model would double the GPU memory) keyed by (source, revision, dtype, device). A job borrows
them clean and must hand them back clean (adapters removed, base weights untouched, eval
mode); if it fails to, the entry is dropped rather than risk the next job.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch

from ltxq.errors import LtxqError
from ltxq.trainer.models import Components, load_components

_lock = threading.Lock()
_cache: dict[tuple[str, str | None, str, str], Components] = {}


def _key(source: str, revision: str | None, dtype: torch.dtype,
         device: torch.device) -> tuple[str, str | None, str, str]:
    return (source, revision, str(dtype), str(device))


@contextlib.contextmanager
def components(source: str, *, revision: str | None, dtype: torch.dtype, device: torch.device,
               log: Callable[[str], None] = print) -> Iterator[Components]:
    """Lend the components of SOURCE, loading them only if the cache holds others.

    The borrower must leave them clean (`lora.remove_lora`, in a `finally`). They go back
    into the cache when the block ends normally or with an LtxqError (a user-facing failure
    such as bad data, after that cleanup ran); any other exception (a bug, out of memory, a
    failed cleanup) drops them, so a model in an unknown state is never lent again.
    """
    key = _key(source, revision, dtype, device)
    with _lock:
        cached = _cache.pop(key, None)
        _cache.clear()  # one model at a time: free the previous one before loading
    if cached is None:
        loaded = load_components(source, revision=revision, dtype=dtype, device=device)
    else:
        log(f"model {source} already loaded (warm)")
        loaded = cached
    try:
        yield loaded
    except LtxqError:
        _keep(key, loaded)
        raise
    else:
        _keep(key, loaded)


def _keep(key: tuple[str, str | None, str, str], loaded: Components) -> None:
    with _lock:
        _cache.clear()
        _cache[key] = loaded


def clear() -> None:
    """Forget every cached model (frees its memory once no job holds it)."""
    with _lock:
        _cache.clear()

