from django.urls import path
from rest_framework.routers import SimpleRouter

from marketplace.api import capacity_views, views

router = SimpleRouter(trailing_slash=False)
router.register("api-keys", views.ApiKeyViewSet, basename="api-key")
router.register("gpu-models", views.GpuModelViewSet, basename="gpu-model")
router.register("clusters", capacity_views.ClusterViewSet, basename="cluster")
router.register("listings", capacity_views.ListingViewSet, basename="listing")

urlpatterns = [
    path("organization", views.OrganizationView.as_view(), name="organization"),
    *router.urls,
]
