"""Dataset folders: list, one folder's clips, create, upload, captions, and their jobs."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response

from ltxq.errors import ConfigError, LtxqError
from ltxq.web import data
from ltxq.web.datasets import queue_dataset_job
from ltxq.web.routes.common import Context, context, message, page
from ltxq.web.security import action

MAX_CLIPS = 100  # files in one upload


async def datasets_page(request: Request) -> Response:
    datasets = context(request).datasets
    summaries = await run_in_threadpool(lambda: [datasets.summary(n)
                                                 for n in datasets.names()])
    return page(request, "datasets.html", datasets=summaries, root=datasets.root)


def _dataset_jobs(ctx: Context, name: str) -> list[dict[str, Any]]:
    if not ctx.spool.exists():
        return []
    folder = str(ctx.datasets.root / name)
    return [r for r in data.all_records(ctx.spool) if r.get("dataset") == folder][-10:]


async def dataset_page(request: Request) -> Response:
    ctx = context(request)
    name = request.path_params["name"]
    try:
        clips = await run_in_threadpool(ctx.datasets.clips, name)
        summary = await run_in_threadpool(ctx.datasets.summary, name)
    except LtxqError as e:
        return page(request, "error.html", 404, text=str(e))
    jobs = await run_in_threadpool(_dataset_jobs, ctx, name)
    return page(request, "dataset.html", name=name, clips=clips, summary=summary, jobs=jobs)


@action
async def dataset_create(request: Request) -> Response:
    posted = await request.form()
    name = str(posted.get("name", "")).strip()
    try:
        await run_in_threadpool(context(request).datasets.create, name)
    except LtxqError as e:
        return message(request, str(e), 400, back="/datasets")
    return RedirectResponse(f"/datasets/{name}", 303)


@action
async def dataset_upload(request: Request) -> Response:
    datasets = context(request).datasets
    name = request.path_params["name"]
    posted = await request.form(max_files=MAX_CLIPS)
    written, refused = [], []
    for item in posted.getlist("clips"):
        if isinstance(item, str) or not item.filename:
            continue
        try:
            written.append(await run_in_threadpool(datasets.write_clip, name,
                                                   item.filename, item.file))
        except LtxqError as e:
            refused.append(str(e))
    status = 400 if refused and not written else 200
    text = (f"uploaded {len(written)} clip(s)" + (f"; refused: {'; '.join(refused)}"
                                                  if refused else ""))
    return message(request, text, status, back=f"/datasets/{name}")


async def dataset_clip(request: Request) -> Response:
    try:
        path = context(request).datasets.clip(request.path_params["name"],
                                              request.path_params["clip"])
    except LtxqError:
        return PlainTextResponse("not found", 404)
    return FileResponse(path, content_disposition_type="inline")


@action
async def dataset_caption_edit(request: Request) -> Response:
    posted = await request.form()
    name, clip = request.path_params["name"], request.path_params["clip"]
    try:
        await run_in_threadpool(context(request).datasets.set_caption, name, clip,
                                str(posted.get("caption", "")))
    except LtxqError as e:
        return message(request, str(e), 400)
    return message(request, f"caption of {clip} saved", back=f"/datasets/{name}")


@action
async def dataset_job(request: Request) -> Response:
    ctx = context(request)
    name, kind = request.path_params["name"], request.path_params["kind"]
    posted = await request.form()
    try:
        folder = ctx.datasets.folder(name)
        new = await run_in_threadpool(queue_dataset_job, ctx.spool, kind, folder,
                                      str(posted.get("model", "")),
                                      str(posted.get("resolution", "")))
    except (LtxqError, ConfigError) as e:
        return message(request, str(e), 400)
    return message(request, f"{kind} job {new} queued", back=f"/datasets/{name}")
