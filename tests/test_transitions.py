"""The spool's contract, read off its one transition table: for every (operation, state) pair,
the state a job ends in or the refusal, with "every id is in exactly one state folder" checked
after each step; and the table of endings every executor settles through."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from conftest import new_spool

from ltxq import Spool
from ltxq.errors import WrongState
from ltxq.spool import TABLE, Claim, Ending, Entry, Op, State
from ltxq.spool.table import ENDINGS, REFUSED, rule

FINISHED_STATES = (State.DONE, State.FAILED, State.CANCELLED)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return new_spool(tmp_path, settle_seconds=0)


def assert_one_folder_each(spool: Spool) -> None:
    """The invariant: each job id is in exactly one state folder."""
    seen: dict[str, str] = {}
    for state in State:
        for name in os.listdir(spool.dir(state)):
            assert name not in seen, f"{name} is in {seen[name]}/ and {state}/"
            seen[name] = str(state)


def put(spool: Spool, state: State, **meta: object) -> tuple[int, Claim | None]:
    """Make a job in STATE; for RUNNING return the live claim (its lock held)."""
    job_id = spool.submit(spool.path.parent / "job.toml", **meta)
    if state is State.PENDING:
        return job_id, None
    claim = spool.claim("w:1").claim
    assert claim is not None and claim.id == job_id, "put() expects the job to be claimed next"
    if state is State.RUNNING:
        return job_id, claim
    spool.finish(claim, state)
    return job_id, None


def state_after(spool: Spool, op: Op, state: State) -> State | type[WrongState] | None:
    """Apply OP to a fresh job in STATE; return where the job is then, or WrongState."""
    job_id, claim = put(spool, state)
    try:
        if op is Op.CLAIM:
            got = spool.claim("w:2").claim
            if got is None:
                raise WrongState("not claimed")
        elif op is Op.SETTLE:
            claim = claim or Claim(spool.get(job_id), spool.lock(job_id))
            spool.settle(claim, Ending.COMPLETED)
        elif op is Op.RECOVER:
            if claim is not None:
                claim.lock.release()  # its owner died
            if job_id not in [e.id for e in spool.recover()]:
                raise WrongState("not recovered")
        elif op is Op.DEPENDENCY:
            parent, _ = put(spool, State.FAILED, priority=10)  # claimed before the job
            if claim is None:  # (a running job's file is its owner's to write)
                spool._move_locked(job_id, state, state, after=[parent])
            spool.claim("w:2")
            if spool.state_of(job_id) is state:
                raise WrongState("not failed")
        elif op is Op.CANCEL:
            spool.cancel(job_id)
        elif op is Op.RESUME:
            spool.resume(job_id)
        elif op is Op.PRIORITY:
            spool.set_priority(job_id, 5)
        elif op is Op.EDIT:
            path = spool.dir(state) / f"{job_id:06d}.toml"
            data = path.read_bytes()
            spool.replace_pending(job_id, data, data.decode().replace("priority = 0",
                                                                       "priority = 1"))
        elif op is Op.CLEAR and job_id not in spool.clear([state]):
            raise WrongState("not cleared")
    except WrongState:
        return WrongState
    finally:
        assert_one_folder_each(spool)
    return spool.state_of(job_id)


@pytest.mark.parametrize("op,state", list(itertools.product(Op, State)),
                         ids=lambda v: str(v))
def test_every_operation_in_every_state_does_what_the_table_says(spool, op, state):
    result = state_after(spool, op, state)
    allowed = TABLE.get((op, state))
    if allowed is None:
        assert result is WrongState, f"{op} on a {state} job moved it to {result}"
    else:
        assert result in allowed.to, f"{op} on a {state} job gave {result}, table: {allowed.to}"


def test_refusals_name_the_job_and_its_state(spool):
    job_id, _ = put(spool, State.DONE)
    with pytest.raises(WrongState, match=f"job {job_id} is done; only failed or cancelled"):
        spool.resume(job_id)
    with pytest.raises(WrongState, match=f"job {job_id} is already done"):
        spool.cancel(job_id)
    assert set(REFUSED) == set(Op)
    with pytest.raises(WrongState):
        rule(Op.EDIT, State.RUNNING, 3)


@pytest.mark.parametrize("ending,cancel,last_attempt",
                         list(itertools.product(Ending, (False, True), (False, True))),
                         ids=lambda v: str(v))
def test_every_ending_settles_where_the_table_says(spool, ending, cancel, last_attempt):
    job_id, claim = put(spool, State.RUNNING, max_attempts=1 if last_attempt else 3)
    if cancel:
        spool.cancel(job_id)
    entry = spool.settle(claim, ending, why="because")
    assert_one_folder_each(spool)
    assert isinstance(entry, Entry) and spool.state_of(job_id) is entry.state
    assert entry.state in ENDINGS[ending]
    expected = {Ending.COMPLETED: State.DONE, Ending.FAILED: State.FAILED}.get(ending)
    if expected is None:  # stopped, died, not run: a cancel request wins
        expected = State.CANCELLED if cancel else (
            State.FAILED if ending is Ending.DIED and last_attempt else State.PENDING)
    assert entry.state is expected
    attempts = spool.get(job_id).job.meta.attempts
    assert attempts == (1 if ending is Ending.DIED and not cancel else 0)
    assert not claim.lock.held  # settling always releases the owner's lock
