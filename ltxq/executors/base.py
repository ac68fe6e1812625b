"""What runs claimed jobs: one protocol that the daemon's one loop drives for every executor.

The daemon claims a job and hands it to `start`; the executor runs it (in this process, or as a
Slurm job) and later reports from `poll` how the run ended, as an `Ending`. The executor logs
its own human lines in the job log but never moves a job: the daemon settles every reported
ending through `Spool.settle`, the one place that maps an ending to a state, and then runs the
on_finish hooks. An executor holds the lock of every job it started until that job is settled,
or until `detach` lets it go on shutdown.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ltxq.errors import LtxqError
from ltxq.job import Job
from ltxq.spool import Claim, Ending, Spool


@dataclass(frozen=True)
class Settled:
    """A claimed job whose run ended, as its executor saw it."""

    claim: Claim
    ending: Ending
    why: str = ""                             # the job's own error (FAILED), or why it DIED
    changes: Mapping[str, Any] = field(default_factory=dict)  # [job] fields to record
    fatal: LtxqError | None = None            # the executor can run no job: the daemon stops


class Executor(Protocol):
    """Runs claimed jobs for the daemon; every method returns quickly except a local `start`."""

    name: str                                 # "local" or "slurm", shown by `ltxq workers`

    def capacity(self) -> int:
        """Return how many more claimed jobs `start` takes now (0: claim nothing)."""
        ...

    def start(self, claim: Claim) -> None:
        """Run CLAIM (its lock held); how the run ends comes back from `poll`."""
        ...

    def poll(self) -> list[Settled]:
        """Return the jobs whose run ended since the last call, taking over orphans first where
        this executor can follow them."""
        ...

    def busy(self) -> bool:
        """Return True while a started job has not come back from `poll`."""
        ...

    def detach(self) -> list[Settled]:
        """On shutdown: let go of the jobs still running (as this executor must); return the
        ended ones that `poll` has not returned yet."""
        ...


def foreign_owner(job: Job) -> int | None:
    """Return the uid that wrote JOB's content when it is not this process's uid, else None.

    A job file's on_finish and sbatch_args run with this daemon's rights, so they are taken
    only from jobs this uid wrote (as cron takes a crontab only from its owner): anyone who
    can write pending/ would otherwise run commands as the daemon. The spool keeps the author
    across its own rewrites (`Spool.read_for_rewrite`).
    """
    if Spool.trusted(job):
        return None
    return -1 if job.meta.author_uid is None else job.meta.author_uid


def untrusted_note(what: str, uid: int) -> str:
    """Return the job-log line saying WHAT of a file owned by UID is skipped."""
    owner = "nobody known" if uid < 0 else f"uid {uid}"
    return (f"{what} skipped: the job file was written by {owner}, not this daemon's uid "
            f"{os.geteuid()}")
