"""THE transition table: every (operation, state) pair the spool allows, and the policies.

Everything that moves a job between folders asks this module what the move is; a pair that is
not in TABLE is refused with WrongState and the operation's own message. A contract test walks
the whole table (tests/test_transitions.py). DESIGN.md §2 is the prose of this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from ltxq.errors import WrongState
from ltxq.job import JobMeta
from ltxq.spool.layout import State

P, R, D, F, C = State.PENDING, State.RUNNING, State.DONE, State.FAILED, State.CANCELLED


class Op(StrEnum):
    """What can happen to a job that is already in the spool."""

    CLAIM = "claim"            # a daemon takes the first runnable pending job
    SETTLE = "settle"          # its executor reports how the run ended (see Ending)
    RECOVER = "recover"        # a running job whose owner died is requeued or failed
    DEPENDENCY = "dependency"  # a pending job whose parent failed, or in a cycle, fails
    CANCEL = "cancel"          # a user stops a job
    RESUME = "resume"          # a user queues a failed or cancelled job again
    PRIORITY = "priority"      # a user reorders a pending job
    EDIT = "edit"              # a user rewrites a pending job
    CLEAR = "clear"            # a user removes a finished job's files (None: gone)


class Ending(StrEnum):
    """How a claimed job's run ended, as its executor saw it."""

    COMPLETED = "completed"  # every step ran; the final LoRA is written
    FAILED = "failed"        # the job's own error (bad data, the trainer raised)
    STOPPED = "stopped"      # stopped at a checkpoint: shutdown, preemption, time limit, cancel
    DIED = "died"            # no result: kill -9, node failure, OOM kill, Slurm refused it
    NOT_RUN = "not_run"      # the executor could not start it (no trainer): not the job's fault


@dataclass(frozen=True)
class Rule:
    """One row of the table: where a job in a state may go, who moves it, and how."""

    to: tuple[State | None, ...]
    who: str
    how: str


TABLE: dict[tuple[Op, State], Rule] = {
    (Op.CLAIM, P): Rule((R,), "a daemon", "take the job lock without blocking, then rename; "
                        "highest priority first, then lowest id; parents in `after` all done"),
    (Op.SETTLE, R): Rule((D, F, C, P), "the lock holder",
                         "by the Ending: see ENDINGS; record the outcome, rename, release"),
    (Op.RECOVER, R): Rule((P, F), "any daemon", "lock free and owner process gone: attempts+1 "
                          "and requeue, failed at max_attempts; never a job with a Slurm id"),
    (Op.DEPENDENCY, P): Rule((F,), "a daemon's claim", "a parent failed, was cancelled or is "
                             "gone, or the job waits for itself"),
    (Op.CANCEL, P): Rule((C,), "a user", "under the job lock; a claim race is settled by it"),
    (Op.CANCEL, R): Rule((R, C), "a user", "ask the owner (control/<id>.cancel): it stops at "
                         "the next step; at once if the owner is gone and no Slurm job lives"),
    (Op.RESUME, F): Rule((P,), "a user", "attempts reset; continues from its checkpoint"),
    (Op.RESUME, C): Rule((P,), "a user", "attempts reset; continues from its checkpoint"),
    (Op.PRIORITY, P): Rule((P,), "a user", "rewrite under the job lock"),
    (Op.EDIT, P): Rule((P,), "a user", "compare-and-swap under the job lock"),
    (Op.CLEAR, D): Rule((None,), "a user", "remove the file and its log (never outputs)"),
    (Op.CLEAR, F): Rule((None,), "a user", "remove the file and its log (never outputs)"),
    (Op.CLEAR, C): Rule((None,), "a user", "remove the file and its log (never outputs)"),
}

# How each refused operation explains itself ({id}, {state} filled in).
REFUSED: dict[Op, str] = {
    Op.CLAIM: "job {id} is {state}; only pending jobs are claimed",
    Op.SETTLE: "job {id} is {state}; only a running job's owner settles it",
    Op.RECOVER: "job {id} is {state}; only running jobs are recovered",
    Op.DEPENDENCY: "job {id} is {state}; only pending jobs wait for parents",
    Op.CANCEL: "job {id} is already {state}",
    Op.RESUME: "job {id} is {state}; only failed or cancelled jobs resume (use --fresh for a "
               "new run of the same config)",
    Op.PRIORITY: "job {id} is {state}; only pending jobs can be reordered",
    Op.EDIT: "job {id} is {state}; only pending jobs can be edited",
    Op.CLEAR: "job {id} is {state}; clear only removes finished jobs",
}


def rule(op: Op, state: State, job_id: int | str = "?") -> Rule:
    """Return the rule for OP on a job in STATE; WrongState if the table has none."""
    found = TABLE.get((op, state))
    if found is None:
        raise WrongState(REFUSED[op].format(id=job_id, state=state))
    return found


def allowed(op: Op, state: State) -> bool:
    """Return True if the table lets OP act on a job in STATE."""
    return (op, state) in TABLE


# --- the policies ------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """A decided move: the new state, the [job] fields to record, and the log line."""

    state: State
    changes: dict[str, Any]
    message: str


def interruption(meta: JobMeta, why: str, now: datetime) -> Move:
    """An interruption that was not the job's fault counts an attempt: requeue to resume, or
    fail once max_attempts are used (THE rule; recovery and executors all come here)."""
    attempts = meta.attempts + 1
    if attempts >= meta.max_attempts:
        error = (f"interrupted {attempts} times (max_attempts {meta.max_attempts}); "
                 f"last time: {why}")
        return Move(F, {"attempts": attempts, "error": error, "finished_at": now}, error)
    return Move(P, {"attempts": attempts, "worker": None, "worker_start": None,
                    "slurm_job_id": None},
                f"{why}; requeued to resume (attempt {attempts} of {meta.max_attempts} used)")


def ending_move(ending: Ending, meta: JobMeta, *, cancel_requested: bool, why: str,
                now: datetime) -> Move:
    """Turn how a run ended into the job's move (THE outcome -> state mapping)."""
    if ending is Ending.COMPLETED:
        return Move(D, {"finished_at": now, "error": None}, why)
    if ending is Ending.FAILED:
        return Move(F, {"finished_at": now, "error": why}, f"failed: {why}")
    if cancel_requested and ending in (Ending.STOPPED, Ending.DIED, Ending.NOT_RUN):
        return Move(C, {"finished_at": now}, f"cancelled: {why}" if why else "cancelled")
    if ending is Ending.DIED:
        return interruption(meta, why, now)
    # STOPPED (shutdown, preemption, time limit) or NOT_RUN: requeued, no attempt counted.
    return Move(P, {"worker": None, "worker_start": None, "slurm_job_id": None},
                f"{why}; requeued" if why else "requeued")


ENDINGS: dict[Ending, tuple[State, ...]] = {
    Ending.COMPLETED: (D,), Ending.FAILED: (F,), Ending.STOPPED: (P, C),
    Ending.DIED: (P, F, C), Ending.NOT_RUN: (P, C),
}
