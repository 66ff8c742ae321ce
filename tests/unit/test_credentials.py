"""Credentials without raw numbers: digests and e-voucher tokens."""

from __future__ import annotations

import pytest

from services.credentials import TokenError, card_digest, cert_digest, issue_ectoken, read_ectoken


def test_digests_are_keyed_and_normalised() -> None:
    assert cert_digest("11010519491231002x", "k") == cert_digest("11010519491231002X", "k")
    assert cert_digest("11010519491231002X", "k") != cert_digest("11010519491231002X", "other")
    assert "11010519491231002X" not in cert_digest("11010519491231002X", "k")
    assert card_digest("A36010001", "0" * 32, "k") != card_digest("A36010001", "1" * 32, "k")


def test_tokens_name_the_person_until_they_expire() -> None:
    token, exp = issue_ectoken("P1", "360100", ttl_s=60, key="k", now=1000)
    assert exp == 1060 and read_ectoken(token, "k", now=1059) == ("P1", "360100")
    with pytest.raises(TokenError, match="过期"):
        read_ectoken(token, "k", now=1061)
    with pytest.raises(TokenError, match="校验失败"):
        read_ectoken(token, "other", now=1000)
    with pytest.raises(TokenError, match="格式"):
        read_ectoken("nonsense", "k")
