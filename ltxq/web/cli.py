"""The `web` and `up` commands (registered in ltxq.cli). The web stack is imported only when
one of them runs, so the quick commands stay quick."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ltxq.spool import Spool

TOKEN_ENV = "LTXQ_WEB_TOKEN"


def _options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--datasets", type=click.Path(file_okay=False, path_type=Path),
                     default=Path("datasets"), show_default=True,
                     help="Folder whose subfolders the Datasets page lists and the form "
                          "offers.")(f)
    f = click.option("--token", envvar=TOKEN_ENV, metavar="TOKEN",
                     help=f"Require this token (env {TOKEN_ENV}); needed for a non-loopback "
                          "--host. Send it as `Authorization: Bearer`, or open ?token=TOKEN "
                          "once.")(f)
    f = click.option("--port", type=click.IntRange(1, 65535), default=8765,
                     show_default=True, help="TCP port.")(f)
    f = click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
                     help="Another name clients use for this server (a Host header accepted "
                          "besides loopback, --host and, for 0.0.0.0, this machine's names).")(f)
    return click.option("--host", default="127.0.0.1", show_default=True,
                        help="Address to listen on; anything but loopback needs --token.")(f)


def _check(host: str, token: str | None) -> None:
    from ltxq.web.security import is_loopback

    if not is_loopback(host) and not token:
        raise click.BadParameter(f"{host} is reachable from other machines: set --token "
                                 f"(or {TOKEN_ENV}) to serve on it", param_hint="--host")
    if token is not None and len(token) < 16:
        raise click.BadParameter("use at least 16 characters", param_hint="--token")


def _serve(spool: Spool, host: str, port: int, token: str | None, datasets: Path,
           allow_hosts: tuple[str, ...]) -> None:
    import uvicorn

    from ltxq.web.app import Settings, create_app

    app = create_app(Settings(spool_path=spool.path, datasets=datasets.absolute(), token=token,
                              host=host, allow_hosts=allow_hosts))
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"ltxq web: http://{shown}:{port}/ (spool {spool.path}, datasets "
               f"{datasets.absolute()})", err=True)
    if token:
        click.echo(f"ltxq web: open http://{shown}:{port}/?token=... once with your token "
                   "(it becomes a cookie), or send Authorization: Bearer", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=2)


@click.command()
@_options
@click.pass_obj
def web(spool: Spool, host: str, port: int, token: str | None, datasets: Path,
        allow_hosts: tuple[str, ...]) -> None:
    """Serve the dashboard: queue, jobs' curves and videos, new jobs, datasets.

    The spool need not exist yet: the first job submitted from the form makes it, as
    `ltxq submit` does.
    """
    _check(host, token)
    _serve(spool, host, port, token, datasets, allow_hosts)


@click.command()
@_options
@click.option("--device", help="The daemon's device: cpu, cuda, or cuda:N.")
@click.pass_obj
def up(spool: Spool, host: str, port: int, token: str | None, datasets: Path,
       allow_hosts: tuple[str, ...], device: str | None) -> None:
    """Start one daemon and the dashboard together; Ctrl-C stops both (the running job
    checkpoints and is requeued, as when a daemon gets SIGTERM)."""
    _check(host, token)
    spool.create()
    cmd = [sys.executable, "-m", "ltxq", "--spool", str(spool.path), "daemon"]
    if device:
        cmd += ["--device", device]
    # Its own process group: a terminal's Ctrl-C reaches us only, and we pass on SIGTERM, so
    # the daemon stops exactly as `kill` stops it.
    daemon = subprocess.Popen(cmd, start_new_session=True)
    click.echo(f"ltxq up: daemon pid {daemon.pid}", err=True)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        _serve(spool, host, port, token, datasets, allow_hosts)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if daemon.poll() is None:
            click.echo("ltxq up: stopping the daemon (the running job checkpoints and is "
                       "requeued)", err=True)
            os.kill(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait()
        except KeyboardInterrupt:
            daemon.wait()
