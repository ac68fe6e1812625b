"""The `after` graph: what a job waits for, whether it is done, and the one cycle finder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ltxq.errors import ConfigError
from ltxq.job import Job
from ltxq.spool.layout import State

AfterOf = Callable[[int], "list[int] | None"]   # a job's [job].after, None if it is not there


def find_cycle(start: int, after_of: AfterOf) -> list[int] | None:
    """Return [START, ..., START] if START waits for itself through AFTER_OF, else None."""
    paths = [[start, p] for p in after_of(start) or ()]
    seen: set[int] = set()
    while paths:
        path = paths.pop()
        node = path[-1]
        if node == start:
            return path
        if node in seen:
            continue
        seen.add(node)
        paths.extend([*path, p] for p in after_of(node) or ())
    return None


def check_parents(job: Job, after_of: AfterOf, state_of: Callable[[int], State | None],
                  where: str, file: Path | str | None = None) -> None:
    """Raise ConfigError (key job.after) if a parent of JOB is not in the spool, is JOB itself,
    or waits for JOB: a job must never wait for itself."""
    own = job.meta.id
    for parent in job.meta.after:
        if parent == own:
            raise ConfigError(f"job {own} cannot wait for itself", key="job.after", file=file)
        if state_of(parent) is None:
            raise ConfigError(f"job {parent} is not in {where}", key="job.after", file=file)
    if own is None:
        return  # a new job: nothing can wait for it yet
    cycle = find_cycle(own, lambda i: job.meta.after if i == own else after_of(i))
    if cycle is not None:
        raise ConfigError("dependency cycle: " + " -> ".join(map(str, cycle)), key="job.after",
                          file=file)


def parents_block(after: list[int], state_of: Callable[[int], State | None]
                  ) -> tuple[bool, str | None]:
    """Return (waiting, why_failed) for a pending job whose parents are AFTER: waiting while a
    parent is pending or running; why_failed once a parent failed, was cancelled or is gone."""
    for parent in after:
        state = state_of(parent)
        if state is State.DONE:
            continue
        if state in (State.PENDING, State.RUNNING):
            return True, None
        return True, f"dependency {parent} failed" + (
            " (it was cancelled)" if state is State.CANCELLED else
            " (it is no longer in the spool)" if state is None else "")
    return False, None
