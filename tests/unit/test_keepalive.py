"""A hospital's keep-alive connection stays open while it idles (services/http.py `serve`): the
server does not close it after uvicorn's 5 s, when a client may be sending its next request on it."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from services.bus.broker import free_port
from services.http import serve
from tests.helpers import wait_until

REQUEST = b"GET /ping HTTP/1.1\r\nHost: test\r\nConnection: keep-alive\r\n\r\n"


async def test_an_idle_connection_outlives_uvicorns_default_keep_alive() -> None:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    port, stop = free_port(), asyncio.Event()
    server = asyncio.create_task(serve(app, "127.0.0.1", port, stop))
    async def connected() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError:  # not listening yet
            return None

    try:
        reader, writer = await wait_until(connected, timeout=10, what="the server to listen")
        writer.write(REQUEST)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await reader.readexactly(len(b'{"pong":"yes"}'))
        try:  # idle past uvicorn's default of 5 s: a server that closes the connection shows EOF here
            got = await asyncio.wait_for(reader.read(1), timeout=5.5)
        except TimeoutError:
            got = None  # nothing came and the connection is still open
        assert got is None, "the server closed an idle keep-alive connection"
        writer.write(REQUEST)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        stop.set()
        await server
