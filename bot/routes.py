"""The small routes beside the webhook: health, the thank-you images, and Meta's data deletion callback."""

from __future__ import annotations

import asyncio
import hmac
import logging
from urllib.parse import parse_qs

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response

from bot import health, page_checks, privacy
from bot.bodies import read_body
from bot.config import Mode
from bot.database import DatabaseError
from bot.deletions import deletion_request
from bot.runtime import Runtime

log = logging.getLogger("promobot")

MAX_DELETION_BODY_BYTES = 64 * 1024  # a signed_request is a few hundred bytes


async def healthz(request: Request) -> Response:
    """Liveness and readiness, public and cheap; a failing store or flush is named, never described. With
    `?deep=1` and `Authorization: Bearer <PROMOBOT_HEALTH_TOKEN>`, also the errors' messages, the doctor's
    checks (`checks`; the Graph API's cached for a minute), the worst of them as `status`, and 503 when one
    fails; without the token, 401 or 403 and nothing else."""
    runtime: Runtime = request.app.state.runtime
    deep = request.query_params.get("deep", "") not in ("", "0")
    if deep:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return PlainTextResponse(
                "the health token is needed", status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        expected = runtime.settings.health_token
        # An unset token matches nothing: the deep checks are off.
        if not expected or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            return PlainTextResponse("forbidden", status_code=403)
    # The errors' own words name hosts, databases, buckets and paths: only for whoever holds the token.
    try:
        await asyncio.to_thread(runtime.database.check)
        owed = await asyncio.to_thread(runtime.database.owed)
    except DatabaseError as exc:
        store = str(exc) if deep else "the store cannot be reached (see the bot's log)"
        return JSONResponse({"status": "unavailable", "store": store}, status_code=503)
    answer: dict[str, object] = {
        "status": "ok",
        "campaign": runtime.campaign.id,
        "replies_owed": owed,
    }
    if runtime.flusher.last_error is not None:
        # Events wait in the store meanwhile: the bot still works, the dashboard falls behind.
        error = runtime.flusher.last_error
        answer["flush_error"] = str(error) if deep else "events cannot be written (see the bot's log)"
    if not deep:
        return JSONResponse(answer)
    checks: list[health.Check] = []
    if runtime.settings.mode is not Mode.LOCAL:  # local mode has no page: the simulator stands in
        cached = getattr(request.app.state, "graph_checks", None)
        if cached is None:
            cached = request.app.state.graph_checks = page_checks.CachedGraphChecks()
        checks += await cached.get(runtime.sender.replier.graph, deadline_s=runtime.settings.graph_timeout_s)
    checks.append(page_checks.version_check(runtime.settings.graph_version, runtime.database.clock().date()))
    checks += await asyncio.to_thread(
        health.local_health, runtime.database, flush_seconds=runtime.settings.flush_seconds
    )
    status = health.worst(checks)
    answer["status"] = status
    answer["checks"] = [check.as_dict() for check in checks]
    return JSONResponse(answer, status_code=503 if status is health.Status.FAIL else 200)


async def media(request: Request) -> Response:
    """The campaign's local thank-you images (its own and its variants'), and nothing else from the data
    directory."""
    runtime: Runtime = request.app.state.runtime
    path = runtime.images.get(request.path_params["name"])
    if path is None:
        return PlainTextResponse("not found", status_code=404)
    return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})


async def data_deletion(request: Request) -> Response:
    """Meta's data deletion callback: a form with a `signed_request` signed with the app secret. A valid one
    is recorded and answered at once with its status page's URL and confirmation code; the deletion runs
    after the answer. Anything else is 400 and changes nothing."""
    runtime: Runtime = request.app.state.runtime
    body = await read_body(request, MAX_DELETION_BODY_BYTES)
    if body is None:
        return PlainTextResponse("body too large", status_code=413)
    fields = parse_qs(body.decode("utf-8", errors="replace"))
    try:
        signed = fields.get("signed_request", [""])[0]
        payload = privacy.read_signed_request(signed, runtime.settings.app_secret)
    except privacy.InvalidSignedRequest as exc:
        return PlainTextResponse(str(exc), status_code=400)
    database, files = runtime.database, runtime.flusher.files
    try:
        code = await asyncio.to_thread(
            privacy.request, database, str(payload["user_id"]), privacy.Reason.META_CALLBACK
        )
    except DatabaseError as exc:
        log.error("a data deletion request could not be recorded: %s", exc)
        return PlainTextResponse("the request could not be recorded", status_code=503)
    return JSONResponse(
        {"url": f"{runtime.settings.public_url}{privacy.STATUS_PATH}{code}", "confirmation_code": code},
        background=BackgroundTask(privacy.process_pending, database, files),
    )


async def deletion_status(request: Request) -> Response:
    """A deletion request's status page, found by its confirmation code."""
    runtime: Runtime = request.app.state.runtime
    try:
        found = await asyncio.to_thread(deletion_request, runtime.database, request.path_params["code"])
    except DatabaseError:
        return PlainTextResponse("the status cannot be read now, try again later", status_code=503)
    page = privacy.status_page(found)
    return HTMLResponse(page, status_code=200 if found is not None else 404)
