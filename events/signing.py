"""Webhook signatures: the one place a secret is derived, a body signed, a signature checked.

``Webhook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the secret>``.
"""

import base64
import hashlib
import hmac
import secrets
import time

from django.conf import settings

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
DEFAULT_TOLERANCE_SECONDS = 300


def new_salt() -> str:
    """A fresh random salt: the only thing stored of an endpoint's secret."""
    return secrets.token_hex(16)


def endpoint_secret(salt: str) -> str:
    """The signing secret of the endpoint with this salt: derived from ``SECRET_KEY``, never stored."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"webhook-endpoint:{salt}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def signature(secret: str, body: bytes, t: int) -> str:
    """The hex HMAC-SHA256 of ``"<t>.<body>"`` keyed with the secret."""
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, t: int) -> str:
    """The ``Webhook-Signature`` header's value for this body sent at unix time ``t``."""
    return f"t={t},v1={signature(secret, body, t)}"


def verify(
    secret: str, header: str, body: bytes, tolerance: int = DEFAULT_TOLERANCE_SECONDS, now: int | None = None
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time within ``tolerance`` seconds of now."""
    t, candidates = None, []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit():
            t = int(value)
        elif name == "v1":
            candidates.append(value)
    if t is None or not candidates:
        return False
    if abs((int(time.time()) if now is None else now) - t) > tolerance:
        return False
    expected = signature(secret, body, t)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
