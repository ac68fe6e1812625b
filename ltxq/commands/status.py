"""`ltxq status`: the queue as a table, or as JSON records."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ltxq.cli_params import DAY, Seconds
from ltxq.commands.common import STATE_CHOICES, pass_spool
from ltxq.spool import Spool


def _view(spool: Spool, ids: list[int], state: str | None, name: str | None,
          *, fold: bool = False) -> Any:
    """Return the StatusView of `status`: these IDS, or the jobs in STATE matching NAME."""
    from fnmatch import fnmatchcase

    from ltxq.status import StatusReader, StatusView

    reader = StatusReader(spool)
    if ids:
        records = [r for r in reader.records_of(ids)
                   if not name or fnmatchcase(r["name"], name)]
        return StatusView(records, {})
    return reader.view(state, name=name, fold=fold)


def _records(spool: Spool, ids: list[int], state: str | None,
             name: str | None) -> list[dict[str, Any]]:
    """Return the `status --json` records (never folded)."""
    return _view(spool, ids, state, name).records


@click.command()
@click.argument("ids", nargs=-1, type=int)
@click.option("--state", type=click.Choice(STATE_CHOICES), help="Only jobs in this state.")
@click.option("--name", metavar="GLOB", help="Only jobs whose name matches (e.g. 'cake*').")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of job records.")
@click.option("--all", "show_all", is_flag=True,
              help="Show every job (no folding of old finished or later pending jobs).")
@click.option("--watch", type=Seconds(0, DAY), is_flag=False, flag_value=5.0, default=None,
              metavar="[SECONDS]", help="Refresh in place every SECONDS (default 5).")
@pass_spool
def status(spool: Spool, ids: tuple[int, ...], state: str | None, name: str | None,
           as_json: bool, show_all: bool, watch: float | None) -> None:
    """Show jobs (all states by default).

    The table folds old finished jobs and pending jobs beyond the next 20 to run into summary
    lines (--all shows every row); --json always lists every job.
    """
    from ltxq.status.render import json_array, status_table

    def render() -> str:
        if as_json:
            return json_array(_records(spool, list(ids), state, name))
        view = _view(spool, list(ids), state, name,
                     fold=not ids and state is None and not show_all)
        return status_table(view.records, paused=spool.paused, folded=view.folded)

    if watch is None:
        click.echo(render())
        return
    try:
        while True:
            text = render()
            # Home + clear to end: the table is redrawn in place, without flicker or scroll.
            click.echo(f"\x1b[H\x1b[2J{time.strftime('%H:%M:%S')}  every {watch:g}s, "
                       f"Ctrl-C to stop\n{text}")
            sys.stdout.flush()
            time.sleep(watch)
    except KeyboardInterrupt:
        pass
