"""The load generator's HTTP client (services/loadclient.py): whole answers over one keep-alive
connection, a new connection after the server closes one, and a clear error for what is not HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from fastapi import FastAPI, Request

from services.bus.broker import free_port
from services.http import serve
from services.loadclient import Connection, HttpError
from tests.helpers import wait_until


async def listening(port: int) -> bool:
    try:
        _, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    w.close()
    return True


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, list[str]]]:
    """uvicorn (as the platform serves) answering a POST with its body, headers and client port."""
    app, peers = FastAPI(), []

    @app.post("/echo")
    async def answer(request: Request) -> dict[str, object]:
        assert request.client is not None
        peers.append(f"{request.client.port}")
        return {"body": (await request.body()).decode(), "sign": request.headers.get("x-tif-signature")}

    port, stop = free_port(), asyncio.Event()
    server = asyncio.create_task(serve(app, "127.0.0.1", port, stop))
    await wait_until(lambda: listening(port), timeout=10, what="the server to listen")
    yield f"http://127.0.0.1:{port}", peers
    stop.set()
    await server


async def test_answers_come_whole_over_one_kept_connection(echo: tuple[str, list[str]]) -> None:
    origin, peers = echo
    c = Connection(origin)
    big = "费" * 200_000  # an answer larger than one read of the socket
    for body in ("一", big, "三"):
        status, raw = await c.post("/echo", f'"{body}"'.encode(), {"content-type": "application/json",
                                                                   "x-tif-signature": "abc"})
        assert status == 200
        assert raw.decode() == f'{{"body":"\\"{body}\\"","sign":"abc"}}'
    assert len(set(peers)) == 1, "each request opened a new connection"
    await c.close()


async def raw_server(reply: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> tuple[str, asyncio.Server]:
    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


async def read_request(r: asyncio.StreamReader) -> None:
    head = await r.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    await r.readexactly(length)


async def test_a_connection_the_server_closes_is_opened_again() -> None:
    opened = 0

    async def once(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal opened
        opened += 1
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await w.drain()
        w.close()

    origin, server = await raw_server(once)
    c = Connection(origin)
    assert await c.post("/", b"{}", {}) == (200, b"ok")
    assert await c.post("/", b"{}", {}) == (200, b"ok")
    assert opened == 2
    await c.close()
    server.close()


async def test_what_is_not_http_or_not_whole_is_an_error_that_says_so() -> None:
    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"SMTP ready\r\n\r\n")
        await w.drain()

    async def cut(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await w.drain()
        w.close()

    for reply, says in ((garbage, "not HTTP"), (cut, "closed before the answer was whole")):
        origin, server = await raw_server(reply)
        c = Connection(origin)
        with pytest.raises(HttpError, match=says):
            await c.post("/", b"{}", {})
        await c.close()
        server.close()


async def test_no_answer_in_time_is_a_timeout() -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        await r.read()  # no answer: until the client gives up and closes the connection

    origin, server = await raw_server(silent)
    c = Connection(origin, timeout_s=0.2)
    with pytest.raises(TimeoutError):
        await c.post("/", b"{}", {})
    await c.close()
    server.close()


def test_only_plain_http_urls() -> None:
    with pytest.raises(ValueError, match="only http://"):
        Connection("https://127.0.0.1:1")


async def test_a_second_request_while_one_is_in_flight_is_refused() -> None:
    release = asyncio.Event()

    async def held(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        await release.wait()
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()

    origin, server = await raw_server(held)
    c = Connection(origin)
    first = asyncio.ensure_future(c.post("/", b"{}", {}))
    await wait_until(lambda: c._conn is not None and c._conn.waiter is not None, timeout=5,
                     what="the first request to be sent")
    with pytest.raises(RuntimeError, match="one request at a time"):
        await c.post("/", b"{}", {})
    release.set()
    assert await first == (200, b"ok")
    await c.close()
    server.close()
