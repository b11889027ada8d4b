from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from backoffice.views import market_overview_view
from core.metrics import UNMATCHED
from core.observability import healthz, metrics_view, readyz
from core.views import ApiIndexView, not_found

api_v1 = [
    path("", include("marketplace.api.urls")),
    path("", include("events.api.urls")),
    path("", include("broker.api.urls")),
    path("", include("broker.api.handover_urls")),
    path("", include("broker.api.incident_urls")),
    path("", include("broker.api.quote_urls")),
    path("", include("market.api.urls")),
    path("", include("billing.api.urls")),
    path("schema/", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]), name="schema"),
    # Swagger UI's start-up script is served as a file (docs/?script), not inline: the content
    # security policy lets no inline script run.
    path(
        "docs/",
        SpectacularSwaggerSplitView.as_view(url_name="schema", authentication_classes=[], permission_classes=[]),
        name="docs",
    ),
    path(
        "redoc/",
        SpectacularRedocView.as_view(url_name="schema", authentication_classes=[], permission_classes=[]),
        name="redoc",
    ),
]

api_v1.insert(0, path("", ApiIndexView.as_view(patterns=list(api_v1)), name="api-index"))

urlpatterns = [
    path("", RedirectView.as_view(url="/api/v1/docs/", permanent=False)),
    path("admin/market-overview/", admin.site.admin_view(market_overview_view), name="market-overview"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    re_path(r"^api/", not_found, name=UNMATCHED),
    # For operators' machines, outside the API and its schema: liveness, readiness (answered
    # first by core.observability.HealthProbeMiddleware) and Prometheus metrics.
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
]

handler404 = "core.views.not_found"
handler500 = "core.views.server_failure"
