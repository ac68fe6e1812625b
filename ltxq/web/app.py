"""The dashboard's Starlette app: pages, fragments for htmx, JSON, actions, files, events.

One more client of the spool: reads through ltxq.status and the output folders, acts through
the Spool API, keeps no job state; one Watcher pushes changes to every page over SSE.
URLs are a contract (issue 13): /, /jobs/{id}, /jobs/{id}/files/{kind}/{name}, /compare,
/submit, /datasets, /events, /api/jobs; actions are POSTs (CSRF-checked) to /jobs/{id}/cancel,
/jobs/{id}/resume, /jobs/{id}/priority, /clear, /pause, /unpause.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ltxq.errors import BadArgument, ConfigError, JobNotFound, LtxqError, WrongState
from ltxq.progress import format_duration
from ltxq.spool import State
from ltxq.web import data, form
from ltxq.web.datasets import Datasets, queue_dataset_job
from ltxq.web.security import LOOPBACK_NAMES, Guard, action, this_machine_names
from ltxq.web.watcher import Watcher

HERE = Path(__file__).parent
KEEPALIVE_S = 15.0
STATE_FILTERS = ["", *[str(s) for s in State], "all"]
CLEAR_STATES = ("done", "failed", "cancelled", "all")
PAGE_ROWS = 500


@dataclass
class Settings:
    """What the server was started with."""

    spool_path: Path
    datasets: Path
    token: str | None = None
    host: str = "127.0.0.1"
    base_dir: Path | None = None  # relative paths of submitted jobs resolve here (the cwd)
    allow_hosts: tuple[str, ...] = ()  # more names the Host header may carry (--allow-host)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["duration"] = lambda s: format_duration(s) if s is not None else ""
    env.filters["loss"] = lambda v: f"{v:.4f}" if isinstance(v, int | float) else ""
    env.filters["sci"] = lambda v: f"{v:.2e}" if isinstance(v, int | float) else ""
    env.filters["when"] = lambda t: (t or "")[:19].replace("T", " ")
    env.filters["pct"] = lambda r: (min(100, int(100 * (r["step"] or 0) / r["total_steps"]))
                                    if r.get("total_steps") else 0)
    env.filters["tojson_attr"] = lambda v: json.dumps(v)
    return env


def create_app(settings: Settings) -> Starlette:
    """Return the dashboard app for SETTINGS (no I/O until it serves)."""
    from ltxq.spool import Spool

    spool = Spool(settings.spool_path)
    datasets = Datasets(settings.datasets)
    watcher = Watcher(spool)
    env = _templates()
    base_dir = (settings.base_dir or Path.cwd()).absolute()

    def page(request: Request, template: str, status: int = 200, **context: Any
             ) -> HTMLResponse:
        context.update(request=request, csrf=request.scope.get("state", {}).get("csrf", ""),
                       paused=spool.exists() and spool.paused)
        return HTMLResponse(env.get_template(template).render(**context), status)

    def message(request: Request, text: str, status: int = 200, *,
                back: str = "/") -> Response:
        if request.headers.get("hx-request"):
            kind = "ok" if status < 400 else "error"
            return HTMLResponse(env.get_template("_flash.html").render(kind=kind, text=text),
                                status)
        if status >= 400:
            return PlainTextResponse(text, status)
        return RedirectResponse(back, 303)

    def failure(request: Request, e: LtxqError, back: str = "/") -> Response:
        status = (404 if isinstance(e, JobNotFound) else 409 if isinstance(e, WrongState)
                  else 400)
        return message(request, str(e), status, back=back)

    def job_id(request: Request) -> int:
        raw = request.path_params["job_id"]
        if not raw.isdigit() or len(raw) > 9:
            raise JobNotFound(f"no job {raw!r}")
        return int(raw)

    # --- pages -------------------------------------------------------------------------------

    async def queue(request: Request) -> Response:
        return page(request, "queue.html", **await run_in_threadpool(_queue_context, request))

    def _queue_context(request: Request) -> dict[str, Any]:
        state = request.query_params.get("state", "")
        name = request.query_params.get("name", "")
        if state not in STATE_FILTERS:
            state = ""
        if not spool.exists():
            return {"jobs": [], "problems": [], "folded": {}, "state": state, "name": name,
                    "states": STATE_FILTERS, "counts": {}, "no_spool": True, "page": 1,
                    "pages": 1}
        # A chosen state lists every job; a page shows PAGE_ROWS of them (rendering 10,000
        # rows takes seconds), the newest first.
        page_no = request.query_params.get("page", "1")
        page_no = int(page_no) if page_no.isdigit() and 0 < len(page_no) < 7 else 1
        if state and not name:  # only the page's files are read
            jobs, problems, counts, pages = data.state_page(spool, state, page_no, PAGE_ROWS)
            return {"jobs": jobs, "problems": problems, "folded": {}, "state": state,
                    "name": name, "states": STATE_FILTERS, "counts": counts,
                    "no_spool": False, "page": min(page_no, pages), "pages": pages}
        view = data.queue_view(spool, state or None, name)
        jobs = [r for r in view.records if r["id"] is not None]
        problems = [r for r in view.records if r["id"] is None]
        counts: dict[str, int] = dict(view.folded)
        for r in jobs:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        pages = max(1, -(-len(jobs) // PAGE_ROWS))
        page_no = min(page_no, pages)
        if len(jobs) > PAGE_ROWS:
            jobs = jobs[::-1][(page_no - 1) * PAGE_ROWS:page_no * PAGE_ROWS]
        return {"jobs": jobs, "problems": problems, "folded": view.folded, "state": state,
                "name": name, "states": STATE_FILTERS, "counts": counts, "no_spool": False,
                "page": page_no, "pages": pages}

    async def queue_fragment(request: Request) -> Response:
        context = await run_in_threadpool(_queue_context, request)
        return page(request, "_queue_table.html", **context)

    async def api_jobs(request: Request) -> Response:
        if not spool.exists():
            return JSONResponse([])
        return JSONResponse(await run_in_threadpool(data.all_records, spool))

    async def job_page(request: Request) -> Response:
        try:
            context = await run_in_threadpool(_job_context, job_id(request))
        except LtxqError as e:
            return page(request, "error.html", 404, text=str(e))
        return page(request, "job.html", **context)

    def _job_context(jid: int) -> dict[str, Any]:
        record = data.job_record(spool, jid)
        folder = data.output_dir(spool, jid)
        log, offset = data.log_tail(spool, jid)
        return {"job": record, "samples": data.samples(folder),
                "checkpoints": data.checkpoints(folder), "downloads": data.downloads(folder),
                "log": log, "log_offset": offset}

    async def job_summary(request: Request) -> Response:
        try:
            context = await run_in_threadpool(_job_context, job_id(request))
        except LtxqError as e:
            return message(request, str(e), 404)
        part = request.query_params.get("part", "summary")
        name = {"summary": "_job_summary.html", "samples": "_samples.html",
                "files": "_job_files.html"}.get(part, "_job_summary.html")
        return page(request, name, **context)

    async def job_metrics(request: Request) -> Response:
        try:
            jid = job_id(request)
            offset = max(0, int(request.query_params.get("offset", "0")))
            folder = await run_in_threadpool(data.output_dir, spool, jid)
        except (LtxqError, ValueError) as e:
            return JSONResponse({"error": str(e)}, 404)
        return JSONResponse(await run_in_threadpool(data.metrics, folder, offset))

    async def job_log(request: Request) -> Response:
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
            folder = await run_in_threadpool(data.output_dir, spool, jid)
        except LtxqError:
            return PlainTextResponse("not found", 404)
        path = data.resolve_file(folder, request.path_params["kind"],
                                 request.path_params["name"])
        if path is None:
            return PlainTextResponse("not found", 404)
        media = "video/mp4" if path.suffix == ".mp4" else None
        download = None if media else path.name
        return FileResponse(path, media_type=media, filename=download,
                            content_disposition_type="attachment" if download else "inline")

    async def compare_page(request: Request) -> Response:
        try:
            ids = data.parse_ids(",".join(request.query_params.getlist("jobs")))
            context = await run_in_threadpool(data.compare, spool, ids)
        except LtxqError as e:
            return page(request, "error.html", 404 if isinstance(e, JobNotFound) else 400,
                        text=str(e))
        records = {r["id"]: r for r in await run_in_threadpool(_records_of, ids)}
        return page(request, "compare.html", records=records, **context)

    def _records_of(ids: list[int]) -> list[dict[str, Any]]:
        return [data.job_record(spool, i) for i in ids]

    async def compare_metrics(request: Request) -> Response:
        try:
            ids = data.parse_ids(request.query_params.get("jobs", ""))
            out = {}
            for i in ids:
                folder = await run_in_threadpool(data.output_dir, spool, i)
                out[str(i)] = await run_in_threadpool(data.metrics, folder, 0)
        except LtxqError as e:
            return JSONResponse({"error": str(e)}, 404)
        return JSONResponse(out)

    # --- new job -----------------------------------------------------------------------------

    async def submit_page(request: Request) -> Response:
        return page(request, "submit.html", sections=form.sections(), values={}, errors={},
                    datasets=datasets.names(), chosen=request.query_params.get("dataset", ""),
                    pasted="")

    @action
    async def submit_post(request: Request) -> Response:
        posted = await request.form()
        values = {k: v for k, v in posted.items() if isinstance(v, str)}
        pasted = values.pop("toml", "")
        upload = posted.get("toml_file")
        if upload is not None and not isinstance(upload, str) and upload.filename:
            raw = await upload.read(1 << 20)
            try:
                pasted = raw.decode("utf-8")
            except UnicodeDecodeError:
                pasted = "\x00"  # reported as invalid TOML
        chosen = values.pop("dataset", "")
        dataset = None
        errors: dict[str, str] = {}
        if chosen:
            try:
                dataset = datasets.folder(chosen)
            except LtxqError as e:
                errors["data.dataset"] = str(e)
        if not errors:
            outcome = await run_in_threadpool(form.submit_form, spool, values, pasted, dataset,
                                              datasets.root, base_dir)
            errors = outcome.errors
        if errors:
            return page(request, "submit.html", 422, sections=form.sections(), values=values,
                        errors=errors, datasets=datasets.names(), chosen=chosen, pasted=pasted)
        if len(outcome.ids) == 1:
            return RedirectResponse(f"/jobs/{outcome.ids[0]}", 303)
        return RedirectResponse("/?submitted=" + ",".join(map(str, outcome.ids)), 303)

    # --- actions -----------------------------------------------------------------------------

    @action
    async def cancel(request: Request) -> Response:
        try:
            jid = job_id(request)
            state = await run_in_threadpool(spool.cancel, jid)
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
            new = await run_in_threadpool(spool.resume, jid, fresh)
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
            await run_in_threadpool(spool.set_priority, jid, int(raw))
        except LtxqError as e:
            return failure(request, e)
        return message(request, f"job {jid} priority {int(raw)}")

    @action
    async def clear(request: Request) -> Response:
        posted = await request.form()
        which = str(posted.get("state", "done"))
        if which not in CLEAR_STATES:
            return message(request, f"cannot clear {which!r}", 400)
        chosen = ["done", "failed", "cancelled"] if which == "all" else [which]
        try:
            ids = await run_in_threadpool(spool.clear, chosen)
        except LtxqError as e:
            return failure(request, e)
        return message(request, f"cleared {len(ids)} job(s)")

    @action
    async def pause(request: Request) -> Response:
        try:
            await run_in_threadpool(spool.pause)
        except LtxqError as e:
            return failure(request, e)
        return message(request, "paused: daemons claim no new jobs")

    @action
    async def unpause(request: Request) -> Response:
        try:
            await run_in_threadpool(spool.unpause)
        except LtxqError as e:
            return failure(request, e)
        return message(request, "unpaused")

    # --- datasets ----------------------------------------------------------------------------

    async def datasets_page(request: Request) -> Response:
        summaries = await run_in_threadpool(lambda: [datasets.summary(n)
                                                     for n in datasets.names()])
        return page(request, "datasets.html", datasets=summaries, root=datasets.root)

    async def dataset_page(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            clips = await run_in_threadpool(datasets.clips, name)
            summary = await run_in_threadpool(datasets.summary, name)
        except LtxqError as e:
            return page(request, "error.html", 404, text=str(e))
        jobs = await run_in_threadpool(_dataset_jobs, name)
        return page(request, "dataset.html", name=name, clips=clips, summary=summary,
                    jobs=jobs)

    def _dataset_jobs(name: str) -> list[dict[str, Any]]:
        if not spool.exists():
            return []
        folder = str(datasets.root / name)
        return [r for r in data.all_records(spool) if r.get("dataset") == folder][-10:]

    @action
    async def dataset_create(request: Request) -> Response:
        posted = await request.form()
        name = str(posted.get("name", "")).strip()
        try:
            await run_in_threadpool(datasets.create, name)
        except LtxqError as e:
            return message(request, str(e), 400, back="/datasets")
        return RedirectResponse(f"/datasets/{name}", 303)

    @action
    async def dataset_upload(request: Request) -> Response:
        name = request.path_params["name"]
        posted = await request.form(max_files=100)
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
            path = datasets.clip(request.path_params["name"], request.path_params["clip"])
        except LtxqError:
            return PlainTextResponse("not found", 404)
        return FileResponse(path, content_disposition_type="inline")

    @action
    async def dataset_caption_edit(request: Request) -> Response:
        posted = await request.form()
        try:
            await run_in_threadpool(datasets.set_caption, request.path_params["name"],
                                    request.path_params["clip"], str(posted.get("caption", "")))
        except LtxqError as e:
            return message(request, str(e), 400)
        return message(request, f"caption of {request.path_params['clip']} saved",
                       back=f"/datasets/{request.path_params['name']}")

    @action
    async def dataset_job(request: Request) -> Response:
        name, kind = request.path_params["name"], request.path_params["kind"]
        posted = await request.form()
        try:
            folder = datasets.folder(name)
            new = await run_in_threadpool(queue_dataset_job, spool, kind, folder,
                                          str(posted.get("model", "")),
                                          str(posted.get("resolution", "")))
        except (LtxqError, ConfigError) as e:
            return message(request, str(e), 400)
        return message(request, f"{kind} job {new} queued", back=f"/datasets/{name}")

    # --- events ------------------------------------------------------------------------------

    async def events(request: Request) -> Response:
        queue = watcher.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    yield f"data: {json.dumps(event)}\n\n"
            finally:
                watcher.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await watcher.start()
        try:
            yield
        finally:
            await watcher.stop()

    hosts = set(LOOPBACK_NAMES) | {settings.host} | set(settings.allow_hosts)
    if settings.host in ("0.0.0.0", "::", ""):
        hosts |= this_machine_names()
    routes = [
        Route("/", queue),
        Route("/fragments/queue", queue_fragment),
        Route("/api/jobs", api_jobs),
        Route("/events", events),
        Route("/jobs/{job_id}", job_page),
        Route("/jobs/{job_id}/part", job_summary),
        Route("/jobs/{job_id}/metrics", job_metrics),
        Route("/jobs/{job_id}/log", job_log),
        Route("/jobs/{job_id}/files/{kind}/{name:path}", job_file),
        Route("/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/jobs/{job_id}/resume", resume, methods=["POST"]),
        Route("/jobs/{job_id}/priority", priority, methods=["POST"]),
        Route("/clear", clear, methods=["POST"]),
        Route("/pause", pause, methods=["POST"]),
        Route("/unpause", unpause, methods=["POST"]),
        Route("/compare", compare_page),
        Route("/compare/metrics", compare_metrics),
        Route("/submit", submit_page, methods=["GET"]),
        Route("/submit", submit_post, methods=["POST"]),
        Route("/datasets", datasets_page, methods=["GET"]),
        Route("/datasets", dataset_create, methods=["POST"]),
        Route("/datasets/{name}", dataset_page),
        Route("/datasets/{name}/upload", dataset_upload, methods=["POST"]),
        Route("/datasets/{name}/clips/{clip}", dataset_clip),
        Route("/datasets/{name}/clips/{clip}/caption", dataset_caption_edit, methods=["POST"]),
        Route("/datasets/{name}/jobs/{kind}", dataset_job, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[
        Middleware(Guard, allowed_hosts=hosts, token=settings.token)])
    app.state.watcher = watcher
    return app

