"""The `ltxq` command line: click commands, exit codes, and calls into the spool and render.

Exit codes: 0 success; 2 bad usage or an invalid config (the message names file and key);
1 any other failure (no such job, wrong state). The trainer is imported only by the commands
that train; submit/status/cancel/logs/clear/workers never load torch. Only submit and daemon
make a spool; every other spool command needs one (`ltxq: no spool at PATH`, exit 1).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from ltxq.commands import jobs, run, status, submit
from ltxq.errors import LtxqError
from ltxq.spool import Spool


class LtxqGroup(click.Group):
    """A group that turns ltxq's own errors into one stderr line and an exit code."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.BadParameter as e:  # --spool naming a file: one line, like the others
            click.echo(f"ltxq: {e.format_message()}", err=True)
            raise click.exceptions.Exit(2) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.BadParameter as e:  # a bad value: one line naming the option, like a config
            click.echo(f"ltxq: {e.format_message()}", err=True)
            ctx.exit(2)
        except LtxqError as e:
            click.echo(f"ltxq: {e}", err=True)
            ctx.exit(e.exit_code)
        except BrokenPipeError:  # `ltxq status | head`: the reader left; that is fine
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except OSError as e:  # a spool on a full disk, no permission: not a traceback
            click.echo(f"ltxq: {e}", err=True)
            ctx.exit(1)


@click.group(cls=LtxqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--spool", "spool_path", envvar="LTXQ_SPOOL", default="spool", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Spool folder (env LTXQ_SPOOL). submit and daemon make it (in a new or "
                   "empty folder); the other commands need it to exist.")
@click.version_option(package_name="ltxq")
@click.pass_context
def cli(ctx: click.Context, spool_path: Path) -> None:
    """ltxq: a file-spool job queue for LTX-Video LoRA fine-tuning."""
    ctx.obj = Spool(spool_path)


def main() -> None:
    """Run the command line (the `ltxq` console script)."""
    cli(prog_name="ltxq")


# The commands live in one module per concern; the web and caption stacks load only when their
# commands run.
for _command in (submit.submit, status.status, jobs.cancel, jobs.resume, jobs.logs, jobs.clear,
                 jobs.priority, jobs.edit, jobs.wait, jobs.pause, jobs.unpause, run.daemon,
                 run.workers, run.train, run.preprocess, run.demo_data):
    cli.add_command(_command)

from ltxq.caption.cli import caption as _caption  # noqa: E402 - after the group it joins
from ltxq.web import cli as _web_cli  # noqa: E402

cli.add_command(_web_cli.web)
cli.add_command(_web_cli.up)
cli.add_command(_caption)
