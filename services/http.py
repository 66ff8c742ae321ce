"""HTTP plumbing shared by the four APIs: readable 4xx answers, /healthz, and serving."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("yibao.http")
MAX_BODY_BYTES = 2 * 1024 * 1024  # a 2304 of 2,000 fee lines is ~0.5 MB

_ERROR = {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string", "description": "what to fix"}}}}}}
# Listed on every route of every API (the hospital interface answers them in its national shape).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "a request the service refuses, with a sentence saying why"} | _ERROR,
    401: {"description": "no or a wrong identity (signature, credentials)"} | _ERROR,
    403: {"description": "the caller may not do this, or not on this data"} | _ERROR,
    404: {"description": "no such thing, or no such route"} | _ERROR,
    405: {"description": "the route exists for other methods: see the Allow header"} | _ERROR,
    409: {"description": "the request clashes with one made before"} | _ERROR,
    413: {"description": f"the body is over {MAX_BODY_BYTES // 1024 // 1024} MiB"} | _ERROR,
    422: {"description": "the body or a parameter does not match the contract; the fields are named"} | _ERROR,
    503: {"description": "the database is unavailable for a moment: retry (Retry-After)"} | _ERROR,
}


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with 413 as it arrives."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, f"the request body is over {self.limit // 1024} KiB: send less "
                                             "(a settlement's fee lines may also be uploaded in parts, 2204/2301)")
            return message

        await self.app(scope, limited, send)


def json_response(data: Any, status_code: int = 200) -> Response:
    """JSON bytes straight from orjson: the hot path skips FastAPI's encoder walk over the dict."""
    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json")


def describe_errors(errors: Any) -> str:
    """Pydantic errors as one sentence per field: `input.data.psn_no: Field required`."""
    parts = []
    for e in list(errors)[:8]:
        if e.get("type") == "json_invalid":  # its loc is ("body", the character where parsing failed)
            at = (e.get("loc") or ("?",))[-1]
            parts.append(f"the body is not valid JSON (parsing stopped at character {at}); "
                         "send one JSON object with content-type: application/json")
            continue
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc or '(body)'}: {e.get('msg')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI, national_paths: tuple[str, ...] = ()) -> None:
    """Every error a caller can cause is a 4xx with a sentence; the hospital interface keeps its shape."""
    app.add_middleware(BodyLimit)

    def body(request: Request, status: int, message: str, extra: dict[str, Any] | None = None) -> JSONResponse:
        if request.url.path.startswith(national_paths) if national_paths else False:
            content: dict[str, Any] = {"infcode": -1, "err_msg": message, "output": None}
        else:
            content = {"error": message}
        content.update(extra or {})
        return JSONResponse(content, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return body(request, 422, "请求不合规 (invalid request): " + describe_errors(exc.errors()),
                    {"detail": jsonable(exc.errors())})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        answer = body(request, exc.status_code, str(exc.detail))
        answer.headers.update(exc.headers or {})  # 405: Allow
        return answer

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("%s %s: database unavailable (%s)", request.method, request.url.path, exc.orig)
        answer = body(request, 503, "数据库暂不可用 (the database is unavailable): retry in a few seconds; "
                                    "a request sent again with the same msgid is answered once")
        answer.headers["Retry-After"] = "5"
        return answer

    @app.exception_handler(ValueError)
    async def _value(request: Request, exc: ValueError) -> JSONResponse:
        return body(request, 400, str(exc))


def map_errors(app: FastAPI, statuses: dict[type[Exception], int]) -> None:
    """Domain errors to HTTP answers in one place: their message is the sentence the caller reads."""

    async def handler(_req: Request, exc: Exception) -> JSONResponse:
        status = next(code for cls, code in statuses.items() if isinstance(exc, cls))
        body: dict[str, Any] = {"error": str(exc)}
        if isinstance(getattr(exc, "code", None), str):
            body["code"] = exc.code  # type: ignore[attr-defined]
        return JSONResponse(body, status_code=status)

    for cls in statuses:
        app.add_exception_handler(cls, handler)


def jsonable(errors: Any) -> list[dict[str, Any]]:
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]


def add_healthz(app: FastAPI, service: str, health: Any) -> None:
    """The endpoints every service has for its operators: /healthz and /metrics."""
    from services.metrics import add_metrics

    add_metrics(app, service)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        """Liveness and readiness of this service: 503 while a consumer loop is down (each consumer's
        state, lag and counts are listed)."""
        ok, consumers = health()
        return JSONResponse({"service": service, "ok": ok, "consumers": consumers}, status_code=200 if ok else 503)


# How long an idle keep-alive connection stays open. Longer than the clients' own idle limits
# (aiohttp 15 s, a proxy's 60 s): a client then closes first, and never sends a request on a
# connection the server is closing at that moment (uvicorn's 5 s did that to hospitals' requests).
KEEP_ALIVE_S = 75


async def serve(app: FastAPI, host: str, port: int, stop: asyncio.Event) -> None:
    """Run uvicorn inside the current loop until `stop` is set."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", http="httptools",
                            access_log=False, timeout_keep_alive=KEEP_ALIVE_S)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await task
