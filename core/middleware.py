"""Request middleware that knows nothing of the apps."""

import io
from collections.abc import Callable

from django.conf import settings
from django.core.handlers.wsgi import LimitedStream
from django.http import HttpRequest, HttpResponse, JsonResponse

from core.errors import error_body

API_PREFIX = "/api/"


class ApiBodySizeLimitMiddleware:
    """Refuse oversized API bodies with 413 before anything parses them.

    A chunked body has no Content-Length, and Django reads a request without one as empty.
    Where the server has already decoded the chunks and marks the input as terminated
    (gunicorn sets ``wsgi.input_terminated``), the body is read here, up to the limit, and
    handed on with its length, so a chunked POST is the same request as a sized one.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(API_PREFIX):
            if _is_chunked(request) and not _read_chunked_body(request):
                message = f"Request body exceeds {settings.API_MAX_BODY_BYTES} bytes."
                return JsonResponse(error_body("payload_too_large", message), status=413)
            raw_length = request.META.get("CONTENT_LENGTH") or "0"
            try:
                length = int(raw_length)
            except ValueError:
                return JsonResponse(error_body("malformed_request", "Invalid Content-Length header."), status=400)
            if length > settings.API_MAX_BODY_BYTES:
                message = f"Request body exceeds {settings.API_MAX_BODY_BYTES} bytes."
                return JsonResponse(error_body("payload_too_large", message), status=413)
        return self.get_response(request)


def _is_chunked(request: HttpRequest) -> bool:
    return (
        "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
        and not request.META.get("CONTENT_LENGTH")
        and bool(request.META.get("wsgi.input_terminated"))
    )


def _read_chunked_body(request: HttpRequest) -> bool:
    """Read the decoded chunked body into the request; False if it is over the limit."""
    limit = settings.API_MAX_BODY_BYTES
    data = request.META["wsgi.input"].read(limit + 1)
    if len(data) > limit:
        return False
    request.META["CONTENT_LENGTH"] = str(len(data))
    request._stream = LimitedStream(io.BytesIO(data), len(data))
    return True
