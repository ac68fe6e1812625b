"""The owner's side of a multi-rank launch without launching: events, verdicts, imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ltxq.trainer.distributed import Ranks
from ltxq.trainer.launch import Control, _EventReader, _failure, _torchrun_failures

TORCHRUN_REPORT = """\
[W] something unrelated
Failures:
[1]:
  time      : 2026-01-01_00:00:01
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 101)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-01-01_00:00:00
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 102)  (SIGKILL)
"""


def test_event_reader_returns_whole_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    reader = _EventReader(path)
    assert reader.read() == []  # not written yet
    path.write_bytes(b'{"event": "log", "message": "a"}\n{"event": "pro')
    assert reader.read() == [{"event": "log", "message": "a"}]
    with open(path, "ab") as f:
        f.write(b'gress", "step": 1}\n')
    assert reader.read() == [{"event": "progress", "step": 1}]
    assert reader.read() == []


def _control(tmp_path: Path, statuses: dict[int, dict | None], log: str = "") -> Control:
    control = Control(tmp_path)
    control.log.write_text(log)
    for rank, status in statuses.items():
        control.pid_file(rank).write_text(str(1000 + rank))
        if status is not None:
            control.write_json(control.status_file(rank), status)
    return control


def test_the_verdict_names_the_cause_not_its_followers(tmp_path: Path) -> None:
    peer_lost = {"state": "error", "message": "RuntimeError: Connection reset by peer"}
    control = _control(tmp_path, {0: peer_lost, 1: None}, TORCHRUN_REPORT)
    assert _torchrun_failures(control.log) == {0: 1, 1: -9}
    statuses = {0: control.status(0), 1: control.status(1)}
    assert _failure(1, statuses, control) == "rank 1 of 2 died (killed by SIGKILL)"
    # A user error wins: it is the same on every rank and the user's to fix.
    user = {"state": "training_error", "message": "dataset folder not found: /x"}
    assert _failure(1, {0: user, 1: None}, control) == "dataset folder not found: /x"
    # No death: the first rank that crashed.
    crash = {"state": "error", "message": "ValueError: bad"}
    assert _failure(1, {0: {"state": "terminated"}, 1: crash}, control) == \
        "rank 1 of 2 failed: ValueError: bad"
    # torchrun itself failed before any rank started.
    assert _failure(2, {0: None, 1: None}, Control(tmp_path / "empty")) == \
        "the ranks failed (torchrun exit status 2)"


def test_one_process_ranks_change_nothing() -> None:
    ranks = Ranks()
    assert ranks.is_main and ranks.count == 1
    assert ranks.shard(3) == slice(0, 3)
    assert ranks.any(True) and not ranks.any(False)
    assert ranks.from_main(7) == 7
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    loss = torch.tensor(1.5)
    assert ranks.average([p], loss) is loss and torch.equal(p.grad, torch.full((2,), 3.0))


@pytest.mark.parametrize("module", ["ltxq.trainer", "ltxq.trainer.launch"])
def test_the_owner_side_imports_no_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
