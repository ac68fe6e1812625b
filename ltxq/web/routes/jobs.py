"""One job: its page and parts, metrics and log (JSON, from an offset), files, and actions."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from ltxq.errors import BadArgument, LtxqError
from ltxq.spool import Spool, State
from ltxq.web import data
from ltxq.web.routes.common import context, failure, job_id, message, page
from ltxq.web.security import action

PARTS = {"summary": "_job_summary.html", "samples": "_samples.html",
         "files": "_job_files.html"}


def _job_context(spool: Spool, jid: int) -> dict[str, Any]:
    record = data.job_record(spool, jid)
    folder = data.output_dir(spool, jid)
    log, offset = data.log_tail(spool, jid)
    return {"job": record, "samples": data.samples(folder),
            "checkpoints": data.checkpoints(folder), "downloads": data.downloads(folder),
            "log": log, "log_offset": offset}


async def job_page(request: Request) -> Response:
    try:
        values = await run_in_threadpool(_job_context, context(request).spool,
                                         job_id(request))
    except LtxqError as e:
        return page(request, "error.html", 404, text=str(e))
    return page(request, "job.html", **values)


async def job_summary(request: Request) -> Response:
    try:
        values = await run_in_threadpool(_job_context, context(request).spool,
                                         job_id(request))
    except LtxqError as e:
        return message(request, str(e), 404)
    name = PARTS.get(request.query_params.get("part", "summary"), PARTS["summary"])
    return page(request, name, **values)


async def job_metrics(request: Request) -> Response:
    try:
        jid = job_id(request)
        offset = max(0, int(request.query_params.get("offset", "0")))
        folder = await run_in_threadpool(data.output_dir, context(request).spool, jid)
    except (LtxqError, ValueError) as e:
        return JSONResponse({"error": str(e)}, 404)
    return JSONResponse(await run_in_threadpool(data.metrics, folder, offset))


async def job_log(request: Request) -> Response:
    spool = context(request).spool
    try:
        jid = job_id(request)
        offset = max(0, int(request.query_params.get("offset", "0")))
        await run_in_threadpool(spool.get, jid)
    except (LtxqError, ValueError) as e:
        return JSONResponse({"error": str(e)}, 404)
    text, end = await run_in_threadpool(data.log_tail, spool, jid, offset)
    return JSONResponse({"text": text, "offset": end})


async def job_file(request: Request) -> Response:
    try:
        jid = job_id(request)
        folder = await run_in_threadpool(data.output_dir, context(request).spool, jid)
    except LtxqError:
        return PlainTextResponse("not found", 404)
    path = data.resolve_file(folder, request.path_params["kind"], request.path_params["name"])
    if path is None:
        return PlainTextResponse("not found", 404)
    media = "video/mp4" if path.suffix == ".mp4" else None
    download = None if media else path.name
    return FileResponse(path, media_type=media, filename=download,
                        content_disposition_type="attachment" if download else "inline")


@action
async def cancel(request: Request) -> Response:
    try:
        jid = job_id(request)
        state = await run_in_threadpool(context(request).spool.cancel, jid)
    except LtxqError as e:
        return failure(request, e)
    text = (f"job {jid} stopping (it stops at its next step)" if state is State.RUNNING
            else f"job {jid} cancelled")
    return message(request, text, back=f"/jobs/{jid}")


@action
async def resume(request: Request) -> Response:
    posted = await request.form()
    fresh = posted.get("fresh") in ("1", "true", "on")
    try:
        jid = job_id(request)
        new = await run_in_threadpool(context(request).spool.resume, jid, fresh)
    except LtxqError as e:
        return failure(request, e)
    text = f"job {new} queued (a fresh copy of {jid})" if fresh else f"job {jid} queued"
    return message(request, text, back=f"/jobs/{new}")


@action
async def priority(request: Request) -> Response:
    posted = await request.form()
    try:
        jid = job_id(request)
        raw = str(posted.get("priority", "")).strip()
        if not raw.lstrip("-").isdigit() or len(raw) > 7:
            raise BadArgument(f"priority must be a whole number, got {raw!r}")
        await run_in_threadpool(context(request).spool.set_priority, jid, int(raw))
    except LtxqError as e:
        return failure(request, e)
    return message(request, f"job {jid} priority {int(raw)}")
