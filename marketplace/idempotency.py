"""Idempotency-Key replay for the API's mutating calls.

A record belongs to the organization of the API key that made the request, so idempotency
lives here, with the API keys.
"""

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.utils import timezone

from core.errors import error_body
from core.middleware import API_PREFIX
from core.parsers import BodyRefused, parse_json_body
from marketplace.models import IdempotencyRecord
from marketplace.selectors import api_key_from_authorization_header
from marketplace.throttling import ApiKeyRateThrottle

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON = "application/json"  # what the API answers; anything else (a streamed file, say) is not kept


def _fingerprint(request: HttpRequest) -> str:
    body = request.body
    try:
        canonical = json.dumps(parse_json_body(body), sort_keys=True, separators=(",", ":")).encode()
    except BodyRefused:
        canonical = body  # the view refuses it; the fingerprint of its bytes is enough
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.path.encode(), canonical):
        digest.update(part)
        digest.update(b"\x00")
    return digest.hexdigest()


class IdempotencyMiddleware:
    """Honour ``Idempotency-Key`` on every mutating API call.

    The record is inserted in the same transaction as the work. A concurrent retry with
    the same key blocks on the unique index until the first commits, then replays its
    response; if the first failed, its rollback removes the record and the retry runs.
    Only successful (2xx) responses are kept, like Stripe, byte for byte (a replay is the same
    bytes as the first answer; an empty one, a 204, is replayed empty), and never one that
    carries a secret (it says ``Cache-Control: no-store``) or is streamed: its retry is answered
    409, since a secret is shown once and stored nowhere. A refusal (not 2xx) rolls back the
    record with whatever the request wrote; a success always commits its work.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        key = request.headers.get("Idempotency-Key")
        if (
            key is None
            or request.method not in MUTATING_METHODS
            or not request.path.startswith(API_PREFIX)
            or not _routed(request)
        ):
            return self.get_response(request)
        key = key.strip()
        if not key or len(key) > 255:
            return JsonResponse(
                error_body(
                    "invalid", "Idempotency-Key must be 1 to 255 characters.", {"Idempotency-Key": ["Invalid."]}
                ),
                status=400,
            )
        # Read again by the authentication, after the claim: the claim may wait on another
        # request with this key, and a key revoked meanwhile must be refused.
        api_key = api_key_from_authorization_header(request.headers.get("Authorization", ""))
        if api_key is None:
            return self.get_response(request)  # the view answers 401 in the error shape

        fingerprint = _fingerprint(request)
        with transaction.atomic():
            record_id = _claim(api_key.organization_id, key, fingerprint)
            while record_id is None:
                record = IdempotencyRecord.objects.filter(organization_id=api_key.organization_id, key=key).first()
                if record is not None:
                    return _answer_again(api_key, record, fingerprint)
                # Purged between the two statements, as it reached its expiry: claim it afresh.
                record_id = _claim(api_key.organization_id, key, fingerprint)
            response = self.get_response(request)
            if not 200 <= response.status_code < 300:
                transaction.set_rollback(True)
            elif _carries_secret(response) or response.streaming or not _replayable(response):
                _keep(record_id, response.status_code, content=None, withheld=True)
            else:
                _keep(record_id, response.status_code, content=response.content, withheld=False)
            return response


# The claim of a key: its record, inserted with the work's transaction, or nothing when the
# organization has a record of that key. A record of the key inserted by a request not yet
# committed makes the insert wait (the unique index): committed, it is answered again;
# rolled back, this request runs.
_CLAIM = """
INSERT INTO marketplace_idempotencyrecord (organization_id, key, fingerprint, withheld, created_at)
VALUES (%(organization)s, %(key)s, %(fingerprint)s, false, %(now)s)
ON CONFLICT (organization_id, key) DO NOTHING
RETURNING id"""
_EXPIRED = "DELETE FROM marketplace_idempotencyrecord WHERE organization_id = %s AND key = %s AND created_at < %s"
_KEEP = """
UPDATE marketplace_idempotencyrecord SET response_status = %s, response_content = %s, withheld = %s WHERE id = %s"""


def _claim(organization_id: int, key: str, fingerprint: str) -> int | None:
    """The new record's id, or None when a live record of the key exists. An expired record
    (older than IDEMPOTENCY_KEY_TTL_HOURS) is deleted, and the key claimed afresh."""
    now = timezone.now()
    parameters = {"organization": organization_id, "key": key, "fingerprint": fingerprint, "now": now}
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM, parameters)
        claimed = cursor.fetchone()
        if claimed is None:
            expired_before = now - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
            cursor.execute(_EXPIRED, [organization_id, key, expired_before])
            if cursor.rowcount:
                cursor.execute(_CLAIM, parameters)
                claimed = cursor.fetchone()
    return None if claimed is None else claimed[0]


def _keep(record_id: int, status: int, *, content: bytes | None, withheld: bool) -> None:
    with connection.cursor() as cursor:
        cursor.execute(_KEEP, [status, content, withheld, record_id])


def _answer_again(api_key, record: IdempotencyRecord, fingerprint: str) -> HttpResponse:
    """A retry of a key already used: the first answer again, or why not (409, 429)."""
    if record.fingerprint != fingerprint:
        return JsonResponse(
            error_body(
                "idempotency_key_reused",
                "This Idempotency-Key was used with a different request.",
            ),
            status=409,
        )
    if record.withheld:
        return JsonResponse(
            error_body(
                "idempotent_replay_withheld",
                "The first request with this Idempotency-Key succeeded, and its response carried a "
                "secret, which is shown once and never stored. List what it created instead.",
            ),
            status=409,
        )
    throttle = ApiKeyRateThrottle()
    if not throttle.allow_api_key(api_key):  # a replay counts against the key's limit too
        refused = JsonResponse(
            error_body("throttled", f"Request was throttled. Expected available in {throttle.wait()} seconds."),
            status=429,
        )
        refused["Retry-After"] = str(throttle.wait())
        return refused
    if record.response_content is not None and not record.response_content:
        replay = HttpResponse(status=record.response_status)  # a 204: no body, no type
        del replay["Content-Type"]
    elif record.response_content is not None:
        replay = HttpResponse(bytes(record.response_content), status=record.response_status, content_type=JSON)
    else:
        replay = JsonResponse(record.response_body, status=record.response_status, safe=False)
    replay["Idempotent-Replayed"] = "true"
    return replay


def _routed(request: HttpRequest) -> bool:
    """Whether a view takes this method at this path: if not, the answer is the 404 or 405
    whatever the key, and nothing is recorded against the key."""
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return False
    method = request.method.lower()
    actions = getattr(match.func, "actions", None)  # a DRF viewset's method -> action
    if actions is not None:
        return method in actions
    view = getattr(match.func, "cls", None) or getattr(match.func, "view_class", None)
    return view is not None and method in view.http_method_names and hasattr(view, method)


def _replayable(response: HttpResponse) -> bool:
    """A JSON answer, or an empty one: what a replay can give back as it was."""
    return not response.content or response.get("Content-Type", "").startswith(JSON)


def _carries_secret(response: HttpResponse) -> bool:
    """A response that must not be stored anywhere says so (``Cache-Control: no-store``)."""
    return "no-store" in response.get("Cache-Control", "")
