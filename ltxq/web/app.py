"""The dashboard's Starlette app: the URL table, the guard, the watcher's lifespan.

One more client of the spool: reads through ltxq.status and the output folders, acts through
the Spool API, keeps no job state; one Watcher pushes changes to every page over SSE. The
endpoints live in ltxq.web.routes, by concern.
URLs are a contract (issue 13): /, /jobs/{id}, /jobs/{id}/files/{kind}/{name}, /compare,
/submit, /datasets, /events, /api/jobs; actions are POSTs (CSRF-checked) to /jobs/{id}/cancel,
/jobs/{id}/resume, /jobs/{id}/priority, /clear, /pause, /unpause.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ltxq.spool import Spool
from ltxq.web.datasets import Datasets
from ltxq.web.routes import compare, datasets, events, jobs, queue, submit
from ltxq.web.routes.common import Context, templates
from ltxq.web.security import LOOPBACK_NAMES, Guard, this_machine_names
from ltxq.web.watcher import Watcher

HERE = Path(__file__).parent
PAGE_ROWS = 500  # the queue's rows per page: rendering 10,000 rows takes seconds

POST = ["POST"]


def _routes() -> list[BaseRoute]:
    """Return the URL table (built per app: StaticFiles checks its folder when made)."""
    return [
        Route("/", queue.queue),
        Route("/fragments/queue", queue.queue_fragment),
        Route("/api/jobs", queue.api_jobs),
        Route("/events", events.events),
        Route("/jobs/{job_id}", jobs.job_page),
        Route("/jobs/{job_id}/part", jobs.job_summary),
        Route("/jobs/{job_id}/metrics", jobs.job_metrics),
        Route("/jobs/{job_id}/log", jobs.job_log),
        Route("/jobs/{job_id}/files/{kind}/{name:path}", jobs.job_file),
        Route("/jobs/{job_id}/cancel", jobs.cancel, methods=POST),
        Route("/jobs/{job_id}/resume", jobs.resume, methods=POST),
        Route("/jobs/{job_id}/priority", jobs.priority, methods=POST),
        Route("/clear", queue.clear, methods=POST),
        Route("/pause", queue.pause, methods=POST),
        Route("/unpause", queue.unpause, methods=POST),
        Route("/compare", compare.compare_page),
        Route("/compare/metrics", compare.compare_metrics),
        Route("/submit", submit.submit_page, methods=["GET"]),
        Route("/submit", submit.submit_post, methods=POST),
        Route("/datasets", datasets.datasets_page, methods=["GET"]),
        Route("/datasets", datasets.dataset_create, methods=POST),
        Route("/datasets/{name}", datasets.dataset_page),
        Route("/datasets/{name}/upload", datasets.dataset_upload, methods=POST),
        Route("/datasets/{name}/clips/{clip}", datasets.dataset_clip),
        Route("/datasets/{name}/clips/{clip}/caption", datasets.dataset_caption_edit,
              methods=POST),
        Route("/datasets/{name}/jobs/{kind}", datasets.dataset_job, methods=POST),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]


@dataclass
class Settings:
    """What the server was started with."""

    spool_path: Path
    datasets: Path
    token: str | None = None
    host: str = "127.0.0.1"
    base_dir: Path | None = None  # relative paths of submitted jobs resolve here (the cwd)
    allow_hosts: tuple[str, ...] = ()  # more names the Host header may carry (--allow-host)


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    watcher = app.state.ltxq.watcher
    await watcher.start()
    try:
        yield
    finally:
        await watcher.stop()


def _allowed_hosts(settings: Settings) -> set[str]:
    """Return the names the Host header may carry: ours, and this machine's on a wildcard."""
    hosts = set(LOOPBACK_NAMES) | {settings.host} | set(settings.allow_hosts)
    if settings.host in ("0.0.0.0", "::", ""):
        hosts |= this_machine_names()
    return hosts


def create_app(settings: Settings) -> Starlette:
    """Return the dashboard app for SETTINGS (no I/O until it serves)."""
    spool = Spool(settings.spool_path)
    ctx = Context(spool=spool, datasets=Datasets(settings.datasets), watcher=Watcher(spool),
                  env=templates(), base_dir=(settings.base_dir or Path.cwd()).absolute(),
                  page_rows=PAGE_ROWS)
    app = Starlette(routes=_routes(), lifespan=_lifespan, middleware=[
        Middleware(Guard, allowed_hosts=_allowed_hosts(settings), token=settings.token)])
    app.state.ltxq = ctx
    app.state.watcher = ctx.watcher
    return app
