"""Hospital authentication at the gateway (reference §1.1): the x-tif-* headers.

A hospital sends `x-tif-paasid` (its fixmedins_code), `x-tif-timestamp` (epoch seconds),
`x-tif-nonce` (random, used once) and `x-tif-signature` = SHA-256 hex of timestamp + key + nonce,
where key is the hospital's secret (reference data `key`, per fixmedins_code). A request is
accepted when the signature matches, the timestamp is within the window and the nonce is new;
the hospital may then act and read only for itself. Nonces are remembered in memory and, through
`durable`, in the settle database, so a replay is refused after a restart too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping

import httpx

from services.identity import IdentityError

WINDOW_S = 300


class AuthError(IdentityError):
    """401: the hospital's signature does not identify it."""


def sign(timestamp: str, key: str, nonce: str) -> str:
    return hashlib.sha256(f"{timestamp}{key}{nonce}".encode()).hexdigest()


def hospital_headers(fixmedins_code: str, key: str) -> dict[str, str]:
    """The headers a hospital (or its adapter) sends with every call."""
    ts, nonce = str(int(time.time())), secrets.token_hex(12)
    return {"x-tif-paasid": fixmedins_code, "x-tif-timestamp": ts, "x-tif-nonce": nonce,
            "x-tif-signature": sign(ts, key, nonce)}


class Gate:
    """Checks the headers against the hospitals' keys; remembers recent nonces against replays."""

    def __init__(self, keys: Mapping[str, str], window_s: int = WINDOW_S, remember: int = 200_000,
                 durable: Callable[[str, str, float], bool] | None = None) -> None:
        """`durable(code, nonce, now)` records a nonce where a restart keeps it; False if it was there."""
        self.keys, self.window_s, self.remember, self.durable = keys, window_s, remember, durable
        self._nonces: OrderedDict[str, float] = OrderedDict()

    def check(self, headers: Mapping[str, str], now: float | None = None) -> str:
        """The authenticated fixmedins_code, or AuthError saying what is wrong."""
        now = time.time() if now is None else now
        missing = [h for h in ("x-tif-paasid", "x-tif-timestamp", "x-tif-nonce", "x-tif-signature")
                   if not headers.get(h)]
        if missing:
            raise AuthError(f"缺少认证头 {', '.join(missing)}：每个请求须带 x-tif-paasid（机构编码）、x-tif-timestamp、"
                            "x-tif-nonce 和 x-tif-signature = sha256(timestamp + 密钥 + nonce)")
        code, ts, nonce = headers["x-tif-paasid"], headers["x-tif-timestamp"], headers["x-tif-nonce"]
        if len(nonce) > 64:
            raise AuthError("x-tif-nonce 过长：最多 64 个字符")
        key = self.keys.get(code)
        if not key:
            raise AuthError(f"x-tif-paasid {code} 不是已登记的定点医药机构")
        try:
            age = abs(now - int(ts))
        except ValueError:
            raise AuthError(f"x-tif-timestamp {ts!r} 须为 Unix 秒") from None
        if age > self.window_s:
            raise AuthError(f"x-tif-timestamp 与平台时间相差 {age:.0f} 秒，超过 {self.window_s} 秒：请校准时钟")
        if not hmac.compare_digest(sign(ts, key, nonce), headers["x-tif-signature"].lower()):
            raise AuthError("x-tif-signature 校验失败：应为 sha256(timestamp + 密钥 + nonce) 的十六进制小写")
        seen = f"{code}:{nonce}"
        if seen in self._nonces or (self.durable is not None and not self.durable(code, nonce, now)):
            raise AuthError("x-tif-nonce 已使用过：每个请求须用新的 nonce（防重放）")
        self._nonces[seen] = now
        while len(self._nonces) > self.remember or (
                self._nonces and next(iter(self._nonces.values())) < now - self.window_s):
            self._nonces.popitem(last=False)
        return code


class SigningAuth(httpx.Auth):
    """httpx auth that signs each call as the hospital it is for: the `fixmedins_code` of a JSON
    body, else the first 12 characters of the msgid in a /claims/{msgid} path (the national msgid
    begins with the hospital's code). For the demo, the benchmark, the tests and adapters."""

    requires_request_body = True

    def __init__(self, keys: Mapping[str, str] | None = None) -> None:
        from schemas.regions import designated_hospitals

        self.keys: Mapping[str, str] = (keys if keys is not None else
                                        {c: str(h["key"]) for c, h in designated_hospitals().items()})

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        code = None
        if request.content:
            try:
                body = json.loads(request.content)
                code = body.get("fixmedins_code") if isinstance(body, dict) else None
            except ValueError:
                code = None
        if code is None and "/claims/" in request.url.path:
            code = request.url.path.rsplit("/", 1)[-1][:12]
        if isinstance(code, str) and code in self.keys:
            request.headers.update(hospital_headers(code, self.keys[code]))
        yield request
