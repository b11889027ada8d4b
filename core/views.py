from django.http import HttpRequest, JsonResponse
from django.urls import URLResolver
from django.views.decorators.csrf import csrf_exempt
from django.views.defaults import page_not_found, server_error
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import error_body


@csrf_exempt  # an unmatched API path is a 404 for every method, never a CSRF page
def not_found(request: HttpRequest, exception: Exception | None = None):
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    return page_not_found(request, exception)


def server_failure(request: HttpRequest):
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("server_error", "Internal server error."), status=500)
    return server_error(request)


class ApiIndexView(APIView):
    """``GET /api/v1/``: the API's resources, each with its URL, and where the schema is."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    patterns: list = []  # the API's URL patterns, given by config.urls

    @extend_schema(
        summary="The API's resources",
        description="Every resource of the API with its URL (no key needed), and the schema and docs.",
        responses=inline_serializer(
            "ApiIndex",
            {
                "resources": serializers.DictField(
                    child=serializers.URLField(), help_text="Resource name -> its URL; ids go after the URL."
                ),
                "schema": serializers.URLField(help_text="The OpenAPI schema."),
                "docs": serializers.URLField(help_text="The interactive documentation."),
            },
        ),
    )
    def get(self, request: Request) -> Response:
        resources = {
            route.rstrip("/"): request.build_absolute_uri(request.path + route)
            for route in _plain_routes(self.patterns)
            if route and route not in {"schema/", "docs/", "redoc/"}
        }
        return Response(
            {
                "resources": dict(sorted(resources.items())),
                "schema": request.build_absolute_uri(request.path + "schema/"),
                "docs": request.build_absolute_uri(request.path + "docs/"),
            }
        )


def _plain_routes(patterns, prefix: str = "") -> list[str]:
    """The routes without parameters among ``patterns`` (and what they include)."""
    routes = []
    for pattern in patterns:
        route = prefix + str(pattern.pattern).lstrip("^").rstrip("$").replace("\\Z", "")
        if isinstance(pattern, URLResolver):
            routes.extend(_plain_routes(pattern.url_patterns, route))
        elif "<" not in route and "(" not in route and "[" not in route and "\\" not in route:
            routes.append(route)
    return routes
