"""Warm models: a process-wide cache of loaded base components, reused job after job.

A daemon runs jobs one after another in one process; loading the base model is most of the
gap between them. The cache holds the most recently used components (one set: a second
model would double the GPU memory) keyed by (source, revision, dtype, device) and the load
options (single-file base, quantization). Only the transformer is kept on the device between
jobs; the VAE and T5 wait on the CPU, and another model's entry is freed (its device memory
returned) before the next one loads. A job borrows
them clean and must hand them back clean (adapters removed, base weights untouched, eval
mode); if it fails to, the entry is dropped rather than risk the next job.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator

import torch

from ltxq.errors import LtxqError
from ltxq.trainer.models import Components, load_components

_lock = threading.Lock()
_Key = tuple[str, str | None, str, str, str]
_cache: dict[_Key, Components] = {}


def _key(source: str, revision: str | None, dtype: torch.dtype, device: torch.device,
         options: dict[str, object]) -> _Key:
    return (source, revision, str(dtype), str(device), repr(sorted(options.items())))


@contextlib.contextmanager
def components(source: str, *, revision: str | None, dtype: torch.dtype, device: torch.device,
               log: Callable[[str], None] = print, **options: object) -> Iterator[Components]:
    """Lend the components of SOURCE, loading them only if the cache holds others.

    OPTIONS go to `models.load_components` (base, quantization, ...) and into the cache key.

    The borrower must leave them clean (`lora.remove_lora`, in a `finally`). They go back
    into the cache when the block ends normally or with an LtxqError (a user-facing failure
    such as bad data, after that cleanup ran); any other exception (a bug, out of memory, a
    failed cleanup) drops them, so a model in an unknown state is never lent again.
    """
    key = _key(source, revision, dtype, device, options)
    with _lock:
        cached = _cache.pop(key, None)
        dropped = bool(_cache)
        _cache.clear()  # one model at a time: free the previous one before loading
    if dropped:
        _release(device)
    if cached is None:
        loaded = load_components(source, revision=revision, dtype=dtype, device=device,
                                 **options)
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


def _release(device: torch.device) -> None:
    """Return a dropped model's device memory to the driver before the next one loads."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _keep(key: _Key, loaded: Components) -> None:
    with _lock:
        _cache.clear()
        _cache[key] = loaded


def clear() -> None:
    """Forget every cached model (frees its memory once no job holds it)."""
    with _lock:
        _cache.clear()

