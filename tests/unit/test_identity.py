"""Callers' bearer tokens and scopes (services/identity.py), and hospitals' nonces kept across a restart."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest
from sqlalchemy import Engine

from schemas.regions import covers_region
from services.bus.db import make_engine
from services.identity import Authenticator, Caller, IdentityError, bearer, issue_token, read_token
from services.settle.auth import AuthError, Gate, hospital_headers
from services.settle.nonces import NonceLog, nonce_engine
from tests.helpers import wait_until

KEY = "test-key"


def test_a_token_names_its_role_scope_and_holder() -> None:
    who = read_token(issue_token("province", "360000", "jx-platform", key=KEY), key=KEY)
    assert who == Caller(role="province", subject="jx-platform", scope="360000")
    assert who.covers("360100") and who.covers("360402") and not who.covers("440100")
    assert read_token(issue_token("operator", "whatever", "ops", key=KEY), key=KEY).scope == "*"


@pytest.mark.parametrize("scope,inside,outside", [
    ("000000", ["110100", "650100"], []),
    ("360000", ["360100", "361100"], ["440100", "350100"]),
    ("360100", ["360100", "360102"], ["360400", "440100"]),
    ("360102", ["360102"], ["360100", "360103"]),
])
def test_regions_cover_their_own_cities_only(scope: str, inside: list[str], outside: list[str]) -> None:
    assert all(covers_region(scope, a) for a in inside)
    assert not any(covers_region(scope, a) for a in outside)


def test_an_insured_person_is_only_themselves() -> None:
    who = read_token(issue_token("insured", "360100000000000001", "app", key=KEY), key=KEY)
    assert who.is_person("360100000000000001") and not who.is_person("360100000000000002")
    assert not who.covers("360100")  # a person is not a region's caller


@pytest.mark.parametrize("mangle,fragment", [
    (lambda t: t[:-2] + ("00" if not t.endswith("00") else "11"), "signature"),
    (lambda t: "Zm9v.bar", "not a yibao token"),
    (lambda t: t.replace("yb1.", "yb1.x"), "signature"),
])
def test_a_forged_or_malformed_token_is_refused(mangle, fragment: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IdentityError, match=fragment):
        read_token(mangle(issue_token("operator", "*", "ops", key=KEY)), key=KEY)


def test_a_token_of_another_key_or_expired_is_refused() -> None:
    with pytest.raises(IdentityError, match="YIBAO_AUTH_KEY"):
        read_token(issue_token("operator", "*", "ops", key="other"), key=KEY)
    with pytest.raises(IdentityError, match="expired"):
        read_token(issue_token("operator", "*", "ops", ttl_s=-1, key=KEY), key=KEY)


def test_tokens_are_not_issued_for_hospitals_or_bad_scopes() -> None:
    with pytest.raises(ValueError, match="x-tif"):
        issue_token("hospital", "H44010400001", "h", key=KEY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="6-digit"):
        issue_token("supervisor", "44", "s", key=KEY)


async def test_one_request_carries_one_identity() -> None:
    async def by_paasid(h: Mapping[str, str]) -> str:
        return h["x-tif-paasid"]

    auth = Authenticator(KEY, hospitals=by_paasid)
    assert (await auth.identify({"x-tif-paasid": "H44010400001"})).role == "hospital"
    token = bearer(issue_token("operator", "*", "ops", key=KEY))
    assert (await auth.identify({k.lower(): v for k, v in token.items()})).role == "operator"
    with pytest.raises(IdentityError, match="one identity"):
        await auth.identify({"x-tif-paasid": "H44010400001", "authorization": token["Authorization"]})
    with pytest.raises(IdentityError, match="who is calling"):
        await auth.identify({})
    with pytest.raises(IdentityError, match="Bearer"):
        await auth.identify({"authorization": "Basic dXNlcjpwYXNz"})
    with pytest.raises(IdentityError, match="hospitals call the settle service"):
        await Authenticator(KEY).identify({"x-tif-paasid": "H44010400001"})


async def test_a_replayed_signed_request_is_refused_after_a_restart(tmp_path: Path) -> None:
    """The nonce goes to a file beside the settle database: a gateway that starts afresh (a new
    engine, as a new process has) still knows it."""
    keys = {"H44010400001": "k-gz"}

    def gate() -> Gate:
        settle = make_engine(f"sqlite:///{tmp_path / 'settle.db'}")
        return Gate(keys, durable=NonceLog(nonce_engine(settle), 300).first_use)
    signed = hospital_headers("H44010400001", "k-gz")
    assert await gate().check(signed) == "H44010400001"
    with pytest.raises(AuthError, match="nonce 已使用"):
        await gate().check(signed)  # a new process, the same headers
    assert await gate().check(hospital_headers("H44010400001", "k-gz")) == "H44010400001"


def test_on_sqlite_the_nonces_have_a_file_of_their_own(tmp_path: Path, engine_factory) -> None:  # type: ignore[no-untyped-def]
    """Their own write lock: a nonce never waits for the hop workers' transactions in settle.db."""
    settle = make_engine(f"sqlite:///{tmp_path / 'settle.db'}")
    assert nonce_engine(settle).url.database == str(tmp_path / "settle-nonces.db")
    memory = make_engine("sqlite://")
    assert nonce_engine(memory) is memory
    other = engine_factory("settle")  # on PostgreSQL the settle database keeps them (row locks)
    assert (nonce_engine(other) is other) == (other.dialect.name == "postgresql")


def _log(engine: Engine) -> NonceLog:
    return NonceLog(engine, 300)


async def _together(log: NonceLog, nonces: list[str], now: float) -> list[bool | BaseException]:
    """Each nonce from a request of its own, all arriving while the loop is busy (the same turn
    of the loop); the answers."""
    return await asyncio.gather(*(log.first_use("H44010400001", n, now) for n in nonces), return_exceptions=True)


async def test_nonces_that_arrive_together_are_written_in_one_transaction(engine_factory) -> None:  # type: ignore[no-untyped-def]
    """The writer takes every waiting nonce; a nonce sent twice among them is accepted once
    (on SQLite, written on the loop, and on PostgreSQL, in the log's thread: its driver reports the
    rows inserted only when asked to)."""
    log, now = _log(engine_factory("settle")), 1_000_000.0
    assert log.in_thread == (log.engine.dialect.name == "postgresql")
    answers = await _together(log, [f"n{i}" for i in range(10)] + ["n3"], now)
    assert log.transactions == 1
    assert [answers[i] for i in range(10) if i != 3] == [True] * 9
    assert sorted([answers[3], answers[10]]) == [False, True]  # one of the two n3
    assert await log.first_use("H44010400001", "n5", now) is False  # committed: refused afterwards
    assert await log.first_use("H44010400002", "n5", now) is True  # another hospital's nonce


async def test_nonces_arriving_during_a_write_go_together_in_the_next(tmp_path: Path) -> None:
    """Where the log writes in its thread (PostgreSQL's way): while the thread writes, the loop goes
    on; what arrives meanwhile waits for the next transaction, all of it in one."""
    log, now = NonceLog(make_engine(f"sqlite:///{tmp_path / 'settle.db'}"), 300, in_thread=True), 1_000_000.0
    held = threading.Event()
    assert log._thread is not None
    log._thread.submit(held.wait, 5)  # the log's thread is busy
    first = asyncio.ensure_future(log.first_use("H44010400001", "a", now))
    await wait_until(lambda: log._writer is not None and not log._waiting, timeout=5,
                     what='the writer to take "a" and wait for the thread')
    assert log.transactions == 0
    later = [asyncio.ensure_future(log.first_use("H44010400001", n, now)) for n in ("b", "c", "a")]
    await wait_until(lambda: len(log._waiting) == 3, timeout=5, what="three nonces waiting behind the write")
    held.set()
    assert await first is True
    assert [await f for f in later] == [True, True, False]
    assert log.transactions == 2


async def test_a_failed_write_reaches_every_request_of_its_batch(tmp_path: Path) -> None:
    log = _log(make_engine(f"sqlite:///{tmp_path / 'settle.db'}"))
    with log.engine.begin() as c:
        c.exec_driver_sql("DROP TABLE settle_gateway_nonce")
    answers = await _together(log, ["a", "b", "c"], 1_000_000.0)
    assert [type(a).__name__ for a in answers] == ["OperationalError"] * 3
    assert "no such table" in str(answers[0])


async def test_nonces_older_than_the_window_are_dropped(engine_factory) -> None:  # type: ignore[no-untyped-def]
    log = _log(engine_factory("settle"))
    assert await log.first_use("H44010400001", "old", 1_000.0)
    assert await log.first_use("H44010400001", "new", 1_000.0 + 301 + 10)  # past the window and the prune interval
    with log.engine.connect() as c:
        assert [r[0] for r in c.exec_driver_sql("SELECT nonce FROM settle_gateway_nonce")] == ["new"]
