"""The load generator's HTTP client: one keep-alive HTTP/1.1 connection per hospital, as a
hospital's HIS holds, written straight to an asyncio transport and its answers parsed by httptools.

The benchmark's generator shares the machine's cores with the platform it measures, so whatever it
spends per request is taken from the platform. This client builds a request's bytes in one join
and parses the answer in C; the answer's body comes back as bytes, for the caller to read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import urlsplit

import httptools


class HttpError(Exception):
    """The connection closed or broke before a whole answer came, or the answer was not HTTP."""


class _Answer(asyncio.Protocol):
    """One connection's transport and parser; at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.reusable = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.reusable = True

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"the answer is not HTTP/1.1: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail(HttpError(f"the connection closed before the answer was whole ({exc or 'closed by the server'})"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))
        self.waiter, self.body = None, []

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.waiter = None

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class Connection:
    """A keep-alive connection to one origin, opened on first use and again after the server
    closes it. `post` sends one request and waits for its whole answer: (status, body); one
    request at a time (a hospital's HIS, like the benchmark, opens a connection per request in
    flight)."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url}: only http://host:port URLs are served by this client")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout_s = timeout_s
        self._host_header = f"Host: {parts.netloc}\r\n".encode()
        self._conn: _Answer | None = None

    async def _open(self) -> _Answer:
        if self._conn is None or not self._conn.reusable:
            loop = asyncio.get_running_loop()
            _, self._conn = await loop.create_connection(_Answer, self.host, self.port)
        return self._conn

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        conn = await self._open()
        if conn.waiter is not None:
            raise RuntimeError("a Connection carries one request at a time: open one per request in flight")
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        waiter = conn.waiter = asyncio.get_running_loop().create_future()
        assert conn.transport is not None
        conn.transport.write(b"".join((f"POST {path} HTTP/1.1\r\n".encode(), self._host_header,
                                       f"{head}content-length: {len(body)}\r\n\r\n".encode(), body)))
        try:
            async with asyncio.timeout(self.timeout_s):
                return await waiter
        except TimeoutError:
            conn.close()  # an answer still coming would belong to no one
            raise

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
