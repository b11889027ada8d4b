from django.urls import path, re_path

from core.routers import ID_PATTERN, ApiRouter
from events.api import views

router = ApiRouter()
router.register("webhook-endpoints", views.WebhookEndpointViewSet, basename="webhook-endpoint")

urlpatterns = [
    path("events", views.EventListView.as_view(), name="event-list"),
    re_path(rf"^events/(?P<pk>{ID_PATTERN})$", views.EventDetailView.as_view(), name="event-detail"),
    *router.urls,
]
