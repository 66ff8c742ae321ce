"""Hospital authentication at the gateway (reference §1.1): the x-tif-* headers.

A hospital sends `x-tif-paasid` (the id its gateway account was given: `paasid` in the hospital
reference data, its fixmedins_code when none is set), `x-tif-timestamp` (epoch seconds),
`x-tif-nonce` (random, used once) and `x-tif-signature`, the lowercase SHA-256 hex of

- `timestamp + secret + nonce + timestamp` (scheme "ts-key-nonce-ts", the default): what the
  public hospital adapters of several provinces send to the national gateway, or
- `timestamp + secret + nonce` (scheme "ts-key-nonce"), for a hospital whose reference data says so.

A request is accepted when the signature matches, the timestamp is within the window and the nonce
is new; the hospital may then act and read only for itself. Nonces are remembered in memory and
on disk through `durable` (services/settle/nonces.py), so a replay is refused after a restart too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator, Mapping

import httpx

from services.identity import IdentityError

WINDOW_S = 300
SCHEMES = {"ts-key-nonce-ts": "sha256(timestamp + 密钥 + nonce + timestamp)",
           "ts-key-nonce": "sha256(timestamp + 密钥 + nonce)"}
DEFAULT_SCHEME = "ts-key-nonce-ts"


class AuthError(IdentityError):
    """401: the hospital's signature does not identify it."""


def sign(timestamp: str, key: str, nonce: str, scheme: str = DEFAULT_SCHEME) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"signature scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    text = f"{timestamp}{key}{nonce}" + (timestamp if scheme == "ts-key-nonce-ts" else "")
    return hashlib.sha256(text.encode()).hexdigest()


def hospital_headers(fixmedins_code: str, key: str, scheme: str = DEFAULT_SCHEME,
                     paasid: str | None = None) -> dict[str, str]:
    """The headers a hospital (or its adapter) sends with every call."""
    ts, nonce = str(int(time.time())), secrets.token_hex(12)
    return {"x-tif-paasid": paasid or fixmedins_code, "x-tif-timestamp": ts, "x-tif-nonce": nonce,
            "x-tif-signature": sign(ts, key, nonce, scheme)}


class Gate:
    """Checks the headers against the hospitals' keys; remembers recent nonces against replays."""

    def __init__(self, keys: Mapping[str, str], window_s: int = WINDOW_S, remember: int = 200_000,
                 durable: Callable[[str, str, float], Awaitable[bool]] | None = None,
                 schemes: Mapping[str, str] | None = None,
                 paasids: Mapping[str, str] | None = None) -> None:
        """`keys` and `schemes` by fixmedins_code (scheme default: DEFAULT_SCHEME); `paasids` maps an
        assigned paasid to its fixmedins_code. `durable(code, nonce, now)` records a nonce where a
        restart keeps it; False if it was there."""
        self.keys, self.window_s, self.remember, self.durable = keys, window_s, remember, durable
        self.schemes, self.paasids = schemes or {}, paasids or {}
        self._nonces: OrderedDict[str, float] = OrderedDict()

    async def check(self, headers: Mapping[str, str], now: float | None = None) -> str:
        """The authenticated fixmedins_code, or AuthError saying what is wrong. Pure but for the
        nonce's durable record, which the event loop awaits (services/settle/nonces.py)."""
        now = time.time() if now is None else now
        missing = [h for h in ("x-tif-paasid", "x-tif-timestamp", "x-tif-nonce", "x-tif-signature")
                   if not headers.get(h)]
        if missing:
            raise AuthError(f"缺少认证头 {', '.join(missing)}：每个请求须带 x-tif-paasid、x-tif-timestamp、"
                            f"x-tif-nonce 和 x-tif-signature = {SCHEMES[DEFAULT_SCHEME]}")
        paasid, ts, nonce = headers["x-tif-paasid"], headers["x-tif-timestamp"], headers["x-tif-nonce"]
        if len(nonce) > 64:
            raise AuthError("x-tif-nonce 过长：最多 64 个字符")
        code = self.paasids.get(paasid, paasid)
        key = self.keys.get(code)
        if not key:
            raise AuthError(f"x-tif-paasid {paasid} 不是已登记的定点医药机构")
        try:
            age = abs(now - int(ts))
        except ValueError:
            raise AuthError(f"x-tif-timestamp {ts!r} 须为 Unix 秒") from None
        if age > self.window_s:
            raise AuthError(f"x-tif-timestamp 与平台时间相差 {age:.0f} 秒，超过 {self.window_s} 秒：请校准时钟")
        scheme = self.schemes.get(code, DEFAULT_SCHEME)
        if not hmac.compare_digest(sign(ts, key, nonce, scheme), headers["x-tif-signature"].lower()):
            raise AuthError(f"x-tif-signature 校验失败：{paasid} 应签 {SCHEMES[scheme]} 的十六进制小写")
        seen = f"{code}:{nonce}"
        if seen in self._nonces or (self.durable is not None and not await self.durable(code, nonce, now)):
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

        hospitals = designated_hospitals()
        self.keys: Mapping[str, str] = (keys if keys is not None else
                                        {c: str(h["key"]) for c, h in hospitals.items()})
        self.schemes = {c: str(h.get("signature") or DEFAULT_SCHEME) for c, h in hospitals.items()}
        self.paasids = {c: str(h.get("paasid") or c) for c, h in hospitals.items()}

    def headers(self, code: str) -> dict[str, str]:
        """The x-tif-* headers of hospital `code`, signed as its reference data says."""
        return hospital_headers(code, self.keys[code], self.schemes.get(code, DEFAULT_SCHEME), self.paasids.get(code))

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
            request.headers.update(self.headers(code))
        yield request
