"""HTTP plumbing shared by the four APIs: readable 4xx answers, /healthz, and serving."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("yibao.http")


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
        return body(request, exc.status_code, str(exc.detail))

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
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        """Liveness and readiness of this service: 503 while a consumer loop is down (each consumer's
        state, lag and counts are listed)."""
        ok, consumers = health()
        return JSONResponse({"service": service, "ok": ok, "consumers": consumers}, status_code=200 if ok else 503)


async def serve(app: FastAPI, host: str, port: int, stop: asyncio.Event) -> None:
    """Run uvicorn inside the current loop until `stop` is set."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", http="httptools",
                            access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await task
