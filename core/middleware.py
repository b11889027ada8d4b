"""Request middleware that knows nothing of the apps."""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from core.errors import error_body

API_PREFIX = "/api/"


class ApiBodySizeLimitMiddleware:
    """Refuse oversized API bodies with 413 before anything parses them."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(API_PREFIX):
            raw_length = request.META.get("CONTENT_LENGTH") or "0"
            try:
                length = int(raw_length)
            except ValueError:
                return JsonResponse(error_body("malformed_request", "Invalid Content-Length header."), status=400)
            if length > settings.API_MAX_BODY_BYTES:
                message = f"Request body exceeds {settings.API_MAX_BODY_BYTES} bytes."
                return JsonResponse(error_body("payload_too_large", message), status=413)
        return self.get_response(request)
