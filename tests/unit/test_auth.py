"""The gateway's x-tif-* signature check (reference §1.1)."""

from __future__ import annotations

import pytest

from services.settle.auth import AuthError, Gate, hospital_headers, sign

KEYS = {"H44010400001": "k-gz", "H36010200001": "k-nc"}


def test_a_signed_call_names_its_hospital_once() -> None:
    gate = Gate(KEYS)
    h = hospital_headers("H44010400001", "k-gz")
    assert gate.check(h) == "H44010400001"
    with pytest.raises(AuthError, match="nonce 已使用"):
        gate.check(h)  # the same headers again: a replay


@pytest.mark.parametrize("change,fragment", [
    ({"x-tif-signature": None}, "缺少认证头"),
    ({"x-tif-paasid": "H99999900001"}, "不是已登记"),
    ({"x-tif-timestamp": "yesterday"}, "Unix 秒"),
    ({"x-tif-timestamp": "1000"}, "校准时钟"),
    ({"x-tif-signature": sign("1", "k-gz", "n")}, "校验失败"),
])
def test_what_is_wrong_is_said(change: dict[str, str | None], fragment: str) -> None:
    h = hospital_headers("H44010400001", "k-gz")
    for k, v in change.items():
        if v is None:
            h.pop(k)
        else:
            h[k] = v
    with pytest.raises(AuthError, match=fragment):
        Gate(KEYS).check(h)


def test_a_key_of_another_hospital_does_not_sign() -> None:
    with pytest.raises(AuthError, match="校验失败"):
        Gate(KEYS).check(hospital_headers("H44010400001", "k-nc"))
