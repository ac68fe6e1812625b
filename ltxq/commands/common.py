"""What every spool command shares: the Spool passed in (made or required), id and value
parsing."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from ltxq.spool import Spool, State

STATE_CHOICES = [str(s) for s in State] + ["all"]
# The commands that own a spool may create one (DESIGN habit 14); the others need it to exist.
CREATING = frozenset({"submit", "daemon"})


def pass_spool(f: Callable[..., Any]) -> Callable[..., Any]:
    """Pass the command the Spool; it must exist unless the command is one of CREATING.

    Checked here, after the command's arguments were parsed, so `--help` and usage errors need
    no spool. submit makes the spool when it publishes (after validating), daemon at its start.
    """
    @functools.wraps(f)
    def with_spool(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        spool = ctx.find_object(Spool)
        assert spool is not None, "the group makes the Spool"
        if ctx.command.name not in CREATING:
            spool.require()
        return f(spool, *args, **kwargs)

    return with_spool


def parse_ids(values: tuple[str, ...]) -> list[int]:
    """Accept job ids as `3 4`, `3,4` or repeated options."""
    out = []
    for value in values:
        for part in str(value).replace(",", " ").split():
            if not part.isdigit():
                raise click.BadParameter(f"not a job id: {part!r}")
            out.append(int(part))
    return out
