"""Commands on jobs: `cancel`, `resume`, `logs`, `clear`, `priority`, `edit`, `wait`,
`pause`, `unpause`."""

from __future__ import annotations

import os
import shlex
import sys
import time
from datetime import timedelta

import click

from ltxq.cli_params import DAY, Duration, Seconds
from ltxq.commands.common import pass_spool
from ltxq.errors import ConfigError, LtxqError, WrongState
from ltxq.spool import FINISHED, Spool, State, stem


@click.command()
@click.argument("ids", nargs=-1, type=int, required=True)
@pass_spool
def cancel(spool: Spool, ids: tuple[int, ...]) -> None:
    """Cancel jobs: pending ones at once, running ones at their next step."""
    failed = None
    for job_id in ids:
        try:
            state = spool.cancel(job_id)
        except LtxqError as e:
            click.echo(f"ltxq: {e}", err=True)
            failed = e
            continue
        if state is State.RUNNING:
            click.echo(f"{job_id} stopping (cancel requested; it stops at its next step)")
        else:
            click.echo(f"{job_id} cancelled")
    if failed is not None:
        sys.exit(failed.exit_code)


@click.command()
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--fresh", is_flag=True, help="Queue a new job (new id, new output) instead.")
@pass_spool
def resume(spool: Spool, ids: tuple[int, ...], fresh: bool) -> None:
    """Queue failed or cancelled jobs again; they continue from their latest checkpoint."""
    for job_id in ids:
        click.echo(spool.resume(job_id, fresh=fresh))


@click.command()
@click.argument("job_id", metavar="ID", type=int)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("-n", "--lines", type=int, default=None, help="Only the last N lines.")
@pass_spool
def logs(spool: Spool, job_id: int, follow: bool, lines: int | None) -> None:
    """Print a job's log (progress, checkpoints, samples, errors)."""
    if lines is not None and lines < 0:
        raise ConfigError(f"must be 0 or more, got {lines}", key="--lines")
    spool.get(job_id)
    path = spool.log_path(job_id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    text = data.decode("utf-8", errors="replace")
    if lines is None and follow:
        lines = 20
    shown = text.splitlines(keepends=True)
    if lines is not None:
        shown = shown[-lines:] if lines > 0 else []
    click.echo("".join(shown), nl=False)
    if not follow:
        return
    pos = len(data)
    try:
        while True:
            try:
                with open(path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                pos += len(chunk)
                click.echo(chunk.decode("utf-8", errors="replace"), nl=False)
            elif spool.state_of(job_id) in FINISHED | {None}:
                return
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


@click.command()
@click.option("--state", "states", multiple=True, type=click.Choice(
    ["done", "failed", "cancelled", "all"]), help="Which finished jobs (default: done).")
@click.option("--older-than", type=Duration(), metavar="DURATION",
              help="Only jobs finished before, e.g. 7d (s, m, h, d, w; at most 36500d).")
@pass_spool
def clear(spool: Spool, states: tuple[str, ...], older_than: timedelta | None) -> None:
    """Remove finished jobs' spool files and logs (never their outputs)."""
    chosen = ["done", "failed", "cancelled"] if "all" in states else list(states) or ["done"]
    ids = spool.clear(chosen, older_than=older_than)
    click.echo(f"cleared {len(ids)} job(s)" + (": " + " ".join(map(str, ids)) if ids else ""))


@click.command(context_settings={"ignore_unknown_options": True})  # so `priority 3 -1` works
@click.argument("job_id", metavar="ID", type=int)
@click.argument("priority", metavar="N", type=int)
@pass_spool
def priority(spool: Spool, job_id: int, priority: int) -> None:
    """Set the priority of a pending job (higher runs first)."""
    spool.set_priority(job_id, priority)
    click.echo(f"{job_id} priority {priority}")


@click.command()
@click.argument("job_id", metavar="ID", type=int)
@pass_spool
def edit(spool: Spool, job_id: int) -> None:
    """Edit a pending job in $EDITOR; it is validated and replaced atomically.

    If a daemon claims the job meanwhile the edit is refused and your text is kept.
    """
    entry = spool.get(job_id)
    if entry.state is not State.PENDING:
        raise WrongState(f"job {job_id} is {entry.state}; only pending jobs can be edited")
    original = entry.path.read_bytes()
    copy = spool.dir("tmp") / f"edit-{stem(job_id)}-{os.getpid()}.toml"
    copy.write_bytes(original)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    import subprocess  # only `edit` runs a program

    rc = subprocess.call([*shlex.split(editor), str(copy)])
    if rc != 0:
        raise LtxqError(f"the editor exited with status {rc}; job {job_id} unchanged "
                        f"(your text: {copy})")
    text = copy.read_bytes()
    if text == original:
        copy.unlink()
        click.echo(f"{job_id} unchanged")
        return
    try:
        spool.replace_pending(job_id, original, text.decode("utf-8", errors="replace"))
    except LtxqError as e:
        click.echo(f"ltxq: {e}", err=True)
        click.echo(f"ltxq: your edited text is kept in {copy}", err=True)
        sys.exit(e.exit_code)
    copy.unlink()
    click.echo(f"{job_id} updated")


@click.command()
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--poll", type=Seconds(0, DAY), default=1.0, show_default=True,
              help="Seconds between looks.")
@click.option("--timeout", type=Seconds(0, 365 * DAY, low_ok=True), default=None,
              help="Give up after SECONDS (exit 1).")
@pass_spool
def wait(spool: Spool, ids: tuple[int, ...], poll: float, timeout: float | None) -> None:
    """Wait until the jobs end; exit 0 only if every one of them is done."""
    for job_id in ids:
        spool.get(job_id)  # JobNotFound up front, not after an hour
    deadline = time.monotonic() + timeout if timeout is not None else None
    states: dict[int, State | None] = {}
    try:
        while True:
            states = {i: spool.state_of(i) for i in ids}
            if all(s in FINISHED or s is None for s in states.values()):
                break
            if deadline is not None and time.monotonic() >= deadline:
                click.echo("ltxq: timed out waiting", err=True)
                sys.exit(1)
            time.sleep(poll)
    except KeyboardInterrupt:
        sys.exit(130)
    for job_id, state in states.items():
        error = ""
        if state is State.FAILED:
            error = f": {spool.get(job_id).job.meta.error}"
        click.echo(f"{job_id} {state or 'gone (cleared)'}{error}")
    if any(s is not State.DONE for s in states.values()):
        sys.exit(1)


@click.command()
@pass_spool
def pause(spool: Spool) -> None:
    """Stop daemons from claiming new jobs (running jobs go on); holds across restarts."""
    spool.pause()
    click.echo("paused: daemons claim no new jobs until `ltxq unpause`")


@click.command()
@pass_spool
def unpause(spool: Spool) -> None:
    """Let daemons claim jobs again."""
    spool.unpause()
    click.echo("unpaused")
