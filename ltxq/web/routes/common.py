"""What every route shares: the app's Context, and rendering a page, a message or a failure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from ltxq.errors import JobNotFound, LtxqError, WrongState
from ltxq.progress import format_duration
from ltxq.spool import Spool
from ltxq.web.datasets import Datasets
from ltxq.web.watcher import Watcher

TEMPLATES = Path(__file__).parent.parent / "templates"


@dataclass(frozen=True)
class Context:
    """What one app's routes share (kept in `app.state.ltxq`; no job state lives here)."""

    spool: Spool
    datasets: Datasets
    watcher: Watcher
    env: jinja2.Environment
    base_dir: Path  # relative paths of submitted jobs resolve here
    page_rows: int  # the queue's rows per page


def context(request: Request) -> Context:
    """Return the Context of the app serving REQUEST."""
    return request.app.state.ltxq


def templates() -> jinja2.Environment:
    """Return the Jinja environment of the pages, with the filters they use."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["duration"] = lambda s: format_duration(s) if s is not None else ""
    env.filters["loss"] = lambda v: f"{v:.4f}" if isinstance(v, int | float) else ""
    env.filters["sci"] = lambda v: f"{v:.2e}" if isinstance(v, int | float) else ""
    env.filters["when"] = lambda t: (t or "")[:19].replace("T", " ")
    env.filters["pct"] = lambda r: (min(100, int(100 * (r["step"] or 0) / r["total_steps"]))
                                    if r.get("total_steps") else 0)
    env.filters["tojson_attr"] = lambda v: json.dumps(v)
    return env


def page(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    """Render TEMPLATE with VALUES and what every page shows (CSRF token, paused)."""
    ctx = context(request)
    values.update(request=request, csrf=request.scope.get("state", {}).get("csrf", ""),
                  paused=ctx.spool.exists() and ctx.spool.paused)
    return HTMLResponse(ctx.env.get_template(template).render(**values), status)


def message(request: Request, text: str, status: int = 200, *, back: str = "/") -> Response:
    """Answer an action: a flash fragment for htmx, else plain text (error) or a redirect."""
    if request.headers.get("hx-request"):
        kind = "ok" if status < 400 else "error"
        return HTMLResponse(context(request).env.get_template("_flash.html")
                            .render(kind=kind, text=text), status)
    if status >= 400:
        return PlainTextResponse(text, status)
    return RedirectResponse(back, 303)


def failure(request: Request, e: LtxqError, back: str = "/") -> Response:
    """Answer an action that failed with E: 404 no such job, 409 wrong state, else 400."""
    status = (404 if isinstance(e, JobNotFound) else 409 if isinstance(e, WrongState)
              else 400)
    return message(request, str(e), status, back=back)


def job_id(request: Request) -> int:
    """Return the job id in REQUEST's path (JobNotFound for anything but a short number)."""
    raw = request.path_params["job_id"]
    if not raw.isdigit() or len(raw) > 9:
        raise JobNotFound(f"no job {raw!r}")
    return int(raw)
