"""The queue: its page and htmx fragment, the JSON of every job, and clear/pause/unpause."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ltxq.errors import LtxqError
from ltxq.spool import State
from ltxq.web import data
from ltxq.web.routes.common import context, failure, message, page
from ltxq.web.security import action

STATE_FILTERS = ["", *[str(s) for s in State], "all"]
CLEAR_STATES = ("done", "failed", "cancelled", "all")


async def queue(request: Request) -> Response:
    return page(request, "queue.html", **await run_in_threadpool(_queue_context, request))


async def queue_fragment(request: Request) -> Response:
    return page(request, "_queue_table.html",
                **await run_in_threadpool(_queue_context, request))


def _queue_context(request: Request) -> dict[str, Any]:
    spool, rows = context(request).spool, context(request).page_rows
    state = request.query_params.get("state", "")
    name = request.query_params.get("name", "")
    if state not in STATE_FILTERS:
        state = ""
    if not spool.exists():
        return {"jobs": [], "problems": [], "folded": {}, "state": state, "name": name,
                "states": STATE_FILTERS, "counts": {}, "no_spool": True, "page": 1,
                "pages": 1}
    # A chosen state lists every job; a page shows `rows` of them (rendering 10,000 rows
    # takes seconds), the newest first.
    page_no = request.query_params.get("page", "1")
    page_no = int(page_no) if page_no.isdigit() and 0 < len(page_no) < 7 else 1
    if state and not name:  # only the page's files are read
        jobs, problems, counts, pages = data.state_page(spool, state, page_no, rows)
        return {"jobs": jobs, "problems": problems, "folded": {}, "state": state,
                "name": name, "states": STATE_FILTERS, "counts": counts,
                "no_spool": False, "page": min(page_no, pages), "pages": pages}
    view = data.queue_view(spool, state or None, name)
    jobs = [r for r in view.records if r["id"] is not None]
    problems = [r for r in view.records if r["id"] is None]
    counts: dict[str, int] = dict(view.folded)
    for r in jobs:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    pages = max(1, -(-len(jobs) // rows))
    page_no = min(page_no, pages)
    if len(jobs) > rows:
        jobs = jobs[::-1][(page_no - 1) * rows:page_no * rows]
    return {"jobs": jobs, "problems": problems, "folded": view.folded, "state": state,
            "name": name, "states": STATE_FILTERS, "counts": counts, "no_spool": False,
            "page": page_no, "pages": pages}


async def api_jobs(request: Request) -> Response:
    spool = context(request).spool
    if not spool.exists():
        return JSONResponse([])
    return JSONResponse(await run_in_threadpool(data.all_records, spool))


@action
async def clear(request: Request) -> Response:
    posted = await request.form()
    which = str(posted.get("state", "done"))
    if which not in CLEAR_STATES:
        return message(request, f"cannot clear {which!r}", 400)
    chosen = ["done", "failed", "cancelled"] if which == "all" else [which]
    try:
        ids = await run_in_threadpool(context(request).spool.clear, chosen)
    except LtxqError as e:
        return failure(request, e)
    return message(request, f"cleared {len(ids)} job(s)")


@action
async def pause(request: Request) -> Response:
    return await _set_paused(request, True)


@action
async def unpause(request: Request) -> Response:
    return await _set_paused(request, False)


async def _set_paused(request: Request, paused: bool) -> Response:
    spool = context(request).spool
    try:
        await run_in_threadpool(spool.pause if paused else spool.unpause)
    except LtxqError as e:
        return failure(request, e)
    return message(request, "paused: daemons claim no new jobs" if paused else "unpaused")
