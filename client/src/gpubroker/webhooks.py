"""Checking a webhook delivery's signature, as the API documents it:
``Webhook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the secret>``."""

from __future__ import annotations

import hashlib
import hmac
import time

DEFAULT_TOLERANCE_SECONDS = 300


def signature(secret: str, body: bytes, t: int) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def verify(
    secret: str, header: str, body: bytes, *, tolerance: int = DEFAULT_TOLERANCE_SECONDS, now: float | None = None
) -> bool:
    """Whether ``header`` signs the raw ``body`` with ``secret``, at a time within ``tolerance``
    seconds of now (older deliveries could be replays). Any of several ``v1`` signatures may match."""
    t, candidates = None, []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit():
            t = int(value)
        elif name == "v1":
            candidates.append(value)
    if t is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = signature(secret, body, t)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
