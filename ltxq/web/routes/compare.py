"""Several jobs side by side: the compare page and their loss curves as JSON."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ltxq.errors import JobNotFound, LtxqError
from ltxq.spool import Spool
from ltxq.web import data
from ltxq.web.routes.common import context, page


def _records_of(spool: Spool, ids: list[int]) -> list[dict[str, Any]]:
    return [data.job_record(spool, i) for i in ids]


async def compare_page(request: Request) -> Response:
    spool = context(request).spool
    try:
        ids = data.parse_ids(",".join(request.query_params.getlist("jobs")))
        values = await run_in_threadpool(data.compare, spool, ids)
    except LtxqError as e:
        return page(request, "error.html", 404 if isinstance(e, JobNotFound) else 400,
                    text=str(e))
    records = {r["id"]: r for r in await run_in_threadpool(_records_of, spool, ids)}
    return page(request, "compare.html", records=records, **values)


async def compare_metrics(request: Request) -> Response:
    spool = context(request).spool
    try:
        ids = data.parse_ids(request.query_params.get("jobs", ""))
        out = {}
        for i in ids:
            folder = await run_in_threadpool(data.output_dir, spool, i)
            out[str(i)] = await run_in_threadpool(data.metrics, folder, 0)
    except LtxqError as e:
        return JSONResponse({"error": str(e)}, 404)
    return JSONResponse(out)
