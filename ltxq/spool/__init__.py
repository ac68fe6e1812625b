"""The spool: ltxq's state machine on disk, and its Python API (`from ltxq import Spool`).
Never prints, never imports torch.

The protocol (DESIGN.md §1-2), in ten lines:
- A job is one TOML file named by its zero-padded id; its state is the folder it is in.
- Ids come from `locks/last-id`, raised under `locks/spool.lock`; they are never reused.
- Every write is staged in `tmp/`, fsynced, published with one rename; then the folder is fsynced.
- `locks/<id>.lock` (flock) is held by whoever moves or rewrites a job, and by the owner for as
  long as the job is in `running/`. Losing a rename race (FileNotFoundError) is a normal case.
- Claim: take the job's lock without blocking, then rename pending/ -> running/.
- Recovery: a `running/` file whose lock can be taken and whose owner process is gone has no
  live owner: requeue it (attempts + 1), or fail it after max_attempts.
- A `pending/` file with any other name is adopted (validated, given an id, renamed); a broken
  one is moved to `invalid/` byte for byte, its error written beside it as NAME.error.

Where each rule lives: layout.py (states, names, paths, creating a spool) · store.py (reading) ·
intake.py (submit, adoption, invalid/, the tmp/ cleaner) · table.py (THE transition table and
its policies) · transitions.py (the daemon's moves) · actions.py (the users' moves) · deps.py
(the `after` graph) · claimindex.py (what a claim needs, cached exactly) · liveness.py (is an
owner alive).
"""

from __future__ import annotations

from ltxq.spool.actions import Actions
from ltxq.spool.intake import apply_overrides, fresh_job
from ltxq.spool.layout import FINISHED, State, file_name, stem
from ltxq.spool.store import Dropped, Entry, Invalid, Scanned
from ltxq.spool.table import TABLE, Ending, Op
from ltxq.spool.transitions import Claim, Claimed, run_order

__all__ = ["FINISHED", "TABLE", "Claim", "Claimed", "Dropped", "Ending", "Entry", "Invalid",
           "Op", "Scanned", "Spool", "State", "apply_overrides", "file_name", "fresh_job",
           "run_order", "stem"]


class Spool(Actions):
    """A spool folder: the queue's whole state. Constructing one does no I/O.

    Reading (store.py): get, state_of, ids, jobs, scan, scan_with, invalid, dropped.
    Intake (intake.py): create, submit, prepare, publish, clean_tmp.
    Moves by table.TABLE: the daemon's (transitions.py) claim, next_pending, settle, finish,
    update, recover, take_orphan, adopt_running; the users' (actions.py) cancel, take_ended,
    resume, set_priority, replace_pending, clear, pause, unpause.
    """
