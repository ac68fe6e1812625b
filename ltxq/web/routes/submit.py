"""The New-job form: its page, and the POST that queues the job(s) or shows the errors."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ltxq.errors import LtxqError
from ltxq.web import form
from ltxq.web.routes.common import context, page
from ltxq.web.security import action

MAX_TOML_BYTES = 1 << 20


async def submit_page(request: Request) -> Response:
    return page(request, "submit.html", sections=form.sections(), values={}, errors={},
                datasets=context(request).datasets.names(),
                chosen=request.query_params.get("dataset", ""), pasted="")


async def _pasted(posted: FormData, values: dict[str, str]) -> str:
    """Return the TOML given with the form: an uploaded file's, else the pasted text."""
    pasted = values.pop("toml", "")
    upload = posted.get("toml_file")
    if upload is not None and not isinstance(upload, str) and upload.filename:
        raw = await upload.read(MAX_TOML_BYTES)
        try:
            pasted = raw.decode("utf-8")
        except UnicodeDecodeError:
            pasted = "\x00"  # reported as invalid TOML
    return pasted


@action
async def submit_post(request: Request) -> Response:
    ctx = context(request)
    posted = await request.form()
    values = {k: v for k, v in posted.items() if isinstance(v, str)}
    pasted = await _pasted(posted, values)
    chosen = values.pop("dataset", "")
    dataset = None
    errors: dict[str, str] = {}
    if chosen:
        try:
            dataset = ctx.datasets.folder(chosen)
        except LtxqError as e:
            errors["data.dataset"] = str(e)
    if not errors:
        outcome = await run_in_threadpool(form.submit_form, ctx.spool, values, pasted, dataset,
                                          ctx.datasets.root, ctx.base_dir)
        errors = outcome.errors
    if errors:
        return page(request, "submit.html", 422, sections=form.sections(), values=values,
                    errors=errors, datasets=ctx.datasets.names(), chosen=chosen,
                    pasted=pasted)
    if len(outcome.ids) == 1:
        return RedirectResponse(f"/jobs/{outcome.ids[0]}", 303)
    return RedirectResponse("/?submitted=" + ",".join(map(str, outcome.ids)), 303)
