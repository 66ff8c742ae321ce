"""Credentials without raw identity numbers on the bus: keyed digests, e-voucher tokens, sealed names.

A hospital's 1101 presents a credential (身份证号码); the insured city must find the person without
ever holding raw ID numbers. Enroll publishes HMAC-SHA256(key, certno) with each enrolment; the
settle API computes the same digest from the presented number and the insured city matches it.
The key (YIBAO_CERT_DIGEST_KEY) is shared by enroll and settle only; without it the digest cannot
be reversed by trying every possible number.

Names travel sealed (AES-GCM under a key derived from the same secret): enroll seals a person's
name in enroll.events, the insured city keeps and passes it on sealed, and only the settle API
opens it in the answer to the hospital. A topic reader without the key sees no name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.settings import CommonSettings


def cert_digest(certno: str, key: str | None = None) -> str:
    k = key if key is not None else CommonSettings().cert_digest_key
    return hmac.new(k.encode(), certno.strip().upper().encode(), hashlib.sha256).hexdigest()


def card_digest(card_no: str, card_sn: str, key: str | None = None) -> str:
    """社会保障卡: the card number with its 32-character 卡识别码, digested like an ID number."""
    return cert_digest(f"{card_no.strip().upper()}|{card_sn.strip().upper()}", key)


class TokenError(ValueError):
    """An e-voucher token that is malformed, forged or expired."""


def issue_ectoken(psn_no: str, insuplc_admdvs: str, ttl_s: int = 300, key: str | None = None,
                  now: float | None = None) -> tuple[str, int]:
    """医保电子凭证 (01): a short-lived token the app shows as a QR code; the hospital's scanner
    reads it and sends it as mdtrt_cert_no. Signed, so only enroll can issue and anyone holding
    the key can check it; it names the person by psn_no only."""
    exp = int((time.time() if now is None else now) + ttl_s)
    body = f"{psn_no}.{insuplc_admdvs}.{exp}"
    return f"{body}.{_sign(body, key)}", exp


def read_ectoken(token: str, key: str | None = None, now: float | None = None) -> tuple[str, str]:
    """(psn_no, insuplc_admdvs) of a valid token."""
    parts = token.strip().split(".")
    if len(parts) != 4 or not parts[2].isdigit():
        raise TokenError("电子凭证令牌格式不对：请重新扫码")
    body = ".".join(parts[:3])
    if not hmac.compare_digest(_sign(body, key), parts[3]):
        raise TokenError("电子凭证令牌校验失败：请重新扫码")
    if int(parts[2]) < (time.time() if now is None else now):
        raise TokenError("电子凭证令牌已过期：请刷新二维码后重新扫码")
    return parts[0], parts[1]


def _sign(body: str, key: str | None) -> str:
    k = key if key is not None else CommonSettings().cert_digest_key
    return hmac.new(("ectoken|" + k).encode(), body.encode(), hashlib.sha256).hexdigest()[:32]


SEALED = "sealed:v1:"


def seal(text: str, key: str | None = None) -> str:
    """A name as it may travel on the bus."""
    nonce = secrets.token_bytes(12)
    box = AESGCM(_seal_key(key)).encrypt(nonce, text.encode(), None)
    return SEALED + base64.urlsafe_b64encode(nonce + box).decode()


def unseal(value: str, key: str | None = None) -> str:
    """The name in a sealed value; a value that is not sealed is returned as it is, one that does
    not open with this key as an empty string (never the sealed text)."""
    if not value.startswith(SEALED):
        return value
    try:
        raw = base64.urlsafe_b64decode(value[len(SEALED):])
        return AESGCM(_seal_key(key)).decrypt(raw[:12], raw[12:], None).decode()
    except (ValueError, InvalidTag):
        return ""


def reveal_names(outcome: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    """A SettlementResult's outcome (JSON form) with its names opened: setlinfo, a registration's
    data, a 1101's baseinfo. The input is not changed."""
    out = dict(outcome)
    for part in ("setlinfo", "data"):
        node = out.get(part)
        if isinstance(node, dict):
            node = out[part] = dict(node)
            if isinstance(node.get("psn_name"), str):
                node["psn_name"] = unseal(node["psn_name"], key)
            base = node.get("baseinfo")
            if isinstance(base, dict) and isinstance(base.get("psn_name"), str):
                node["baseinfo"] = base | {"psn_name": unseal(base["psn_name"], key)}
    return out


def _seal_key(key: str | None) -> bytes:
    k = key if key is not None else CommonSettings().cert_digest_key
    return _derived(k)


_KEYS: dict[str, bytes] = {}


def _derived(k: str) -> bytes:
    if k not in _KEYS:
        _KEYS[k] = hashlib.sha256(("seal|" + k).encode()).digest()
    return _KEYS[k]
