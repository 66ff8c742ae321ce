"""Who is calling, and what they may touch: one identity per request on every API.

Hospitals sign with the gateway's x-tif-* headers (services/settle/auth.py). Everyone else sends
`Authorization: Bearer <token>`, a token signed with YIBAO_AUTH_KEY that names a role and a scope:

- province   — a provincial platform; scope is its province (`360000`) or one city (`360100`)
- supervisor — 智能监控 staff; scope is the region they supervise (`000000` = the whole country)
- operator   — the platform's operators; scope `*`
- insured    — an insured person (what the national app's login vouches for); scope is their psn_no

`yibao token --role province --scope 360000 --name jx-platform` issues one. A route names the
roles it admits (`allow(...)`); the handler then checks that the data is within the scope.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson
from fastapi import Depends, HTTPException, Request

from schemas.regions import covers_region
from services.settings import CommonSettings

Role = Literal["hospital", "province", "supervisor", "operator", "insured"]
ROLES: tuple[str, ...] = get_args(Role)
TOKEN_PREFIX = "yb1"
NATION = "000000"


class IdentityError(Exception):
    """401: the caller could not be identified (no, a malformed, a forged or an expired credential)."""


@dataclass(frozen=True)
class Caller:
    role: Role
    subject: str  # who: a fixmedins_code, a psn_no or a person's or system's name
    scope: str  # what data: see the module docstring

    def covers(self, admdvs: str | None) -> bool:
        """Whether a region (6-digit admdvs) is within this caller's scope."""
        if self.role == "operator":
            return True
        if self.role not in ("province", "supervisor") or not admdvs:
            return False
        return covers_region(self.scope, admdvs)

    def is_person(self, psn_no: str) -> bool:
        return self.role == "insured" and self.scope == psn_no

    def __str__(self) -> str:
        return f"{self.role}:{self.subject}"


def issue_token(role: Role, scope: str, subject: str, ttl_s: int = 8 * 3600, key: str | None = None,
                now: float | None = None) -> str:
    if role not in ROLES or role == "hospital":
        raise ValueError(f"role {role!r}: tokens are for {', '.join(r for r in ROLES if r != 'hospital')} "
                         "(hospitals sign with x-tif-* headers)")
    if role == "operator":
        scope = "*"
    elif role in ("province", "supervisor") and not (len(scope) == 6 and scope.isdigit()):
        raise ValueError(f"scope {scope!r}: a {role} token's scope is a 6-digit admdvs (000000 for the country)")
    elif not scope:
        raise ValueError("scope: an insured person's token names their psn_no")
    claims = {"r": role, "s": scope, "n": subject, "exp": int((time.time() if now is None else now) + ttl_s)}
    body = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    return f"{TOKEN_PREFIX}.{body}.{_sign(body, key)}"


def read_token(token: str, key: str | None = None, now: float | None = None) -> Caller:
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise IdentityError("the bearer token is not a yibao token (yb1.<claims>.<signature>): "
                            "get one with `yibao token --role … --scope …`")
    if not hmac.compare_digest(_sign(parts[1], key), parts[2]):
        raise IdentityError("the bearer token's signature does not match: it was not issued with this platform's "
                            "YIBAO_AUTH_KEY")
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        role, scope, subject, exp = claims["r"], claims["s"], claims["n"], int(claims["exp"])
    except (ValueError, KeyError, TypeError):
        raise IdentityError("the bearer token's claims cannot be read: issue a new one") from None
    if role not in ROLES or role == "hospital":
        raise IdentityError(f"the bearer token names an unknown role {role!r}")
    if exp < (time.time() if now is None else now):
        raise IdentityError("the bearer token has expired: issue a new one")
    return Caller(role=role, subject=str(subject), scope=str(scope))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def headers_for(role: Role, scope: str = "*", subject: str = "yibao", key: str | None = None) -> dict[str, str]:
    """The Authorization header of a fresh token: for the demo, the benchmark, the CLI and the tests."""
    return bearer(issue_token(role, scope, subject, key=key))


def province_of(admdvs: str) -> str:
    return admdvs[:2] + "0000"


def _sign(body: str, key: str | None) -> str:
    k = key if key is not None else CommonSettings().auth_key
    return hmac.new(("caller|" + k).encode(), body.encode(), hashlib.sha256).hexdigest()[:43]


# --- on the APIs ----------------------------------------------------------------------------

HospitalCheck = Callable[[Mapping[str, str]], Awaitable[str]]  # headers → the authenticated fixmedins_code


class Authenticator:
    """Turns a request's headers into a Caller. `hospitals` checks x-tif-* signatures (settle only)."""

    def __init__(self, key: str, hospitals: HospitalCheck | None = None) -> None:
        self.key, self.hospitals = key, hospitals

    async def identify(self, headers: Mapping[str, str], roles: tuple[str, ...] = ROLES) -> Caller:
        """The caller; `roles` only shapes the message when no identity is sent (a hospital route
        names the x-tif-* headers it misses)."""
        signed, auth = headers.get("x-tif-paasid"), headers.get("authorization")
        if signed and auth:
            raise IdentityError("send one identity: either the x-tif-* signature (hospitals) or a bearer token")
        if signed or (not auth and roles == ("hospital",) and self.hospitals is not None):
            if self.hospitals is None:
                raise IdentityError("hospitals call the settle service (/fsi/callService); this service takes "
                                    "bearer tokens (Authorization: Bearer …)")
            code = await self.hospitals(headers)
            return Caller(role="hospital", subject=code, scope=code)
        if not auth:
            raise IdentityError("who is calling? send Authorization: Bearer <token> (`yibao token --role … "
                                "--scope …`), or the x-tif-* signature if you are a hospital")
        kind, _, token = auth.partition(" ")
        if kind.lower() != "bearer" or not token:
            raise IdentityError("the Authorization header must be `Bearer <token>`")
        return read_token(token, self.key)


def install(app: Any, authenticator: Authenticator) -> None:
    app.state.authenticator = authenticator


def allow(*roles: Role) -> Any:
    """A route dependency: the Caller, when their role is one of `roles`; else 401 or 403. Async:
    on the event loop, not in a thread of the pool that FastAPI runs plain functions in."""

    async def dependency(request: Request) -> Caller:
        try:
            who = await request.app.state.authenticator.identify(request.headers, roles)
        except IdentityError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        if who.role not in roles:
            raise HTTPException(403, f"{who} may not call {request.method} {request.url.path}: "
                                     f"it is for {', '.join(roles)}")
        return who

    return Depends(dependency)


def not_yours(what: str) -> HTTPException:
    """404 for data outside the caller's scope: whether it exists elsewhere is not told."""
    return HTTPException(404, f"{what} is not found within your scope")
