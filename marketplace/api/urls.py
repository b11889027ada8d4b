from django.urls import path

from core.routers import ApiRouter
from marketplace.api import capacity_views, ssh_key_views, views

router = ApiRouter()
router.register("api-keys", views.ApiKeyViewSet, basename="api-key")
router.register("gpu-models", views.GpuModelViewSet, basename="gpu-model")
router.register("clusters", capacity_views.ClusterViewSet, basename="cluster")
router.register("ssh-keys", ssh_key_views.SshKeyViewSet, basename="ssh-key")

urlpatterns = [
    path("organization", views.OrganizationView.as_view(), name="organization"),
    *router.urls,
]
