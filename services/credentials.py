"""The one form of an ID number that may leave the enroll service: a keyed digest.

A hospital's 1101 presents a credential (身份证号码); the insured city must find the person without
ever holding raw ID numbers. Enroll publishes HMAC-SHA256(key, certno) with each enrolment; the
settle API computes the same digest from the presented number and the insured city matches it.
The key (YIBAO_CERT_DIGEST_KEY) is shared by enroll and settle only; without it the digest cannot
be reversed by trying every possible number.
"""

from __future__ import annotations

import hashlib
import hmac

from services.settings import CommonSettings


def cert_digest(certno: str, key: str | None = None) -> str:
    k = key if key is not None else CommonSettings().cert_digest_key
    return hmac.new(k.encode(), certno.strip().upper().encode(), hashlib.sha256).hexdigest()
