from django.urls import re_path

from broker.api import incident_views
from core.routers import ID_PATTERN, ApiRouter

router = ApiRouter()
router.register("incidents", incident_views.IncidentViewSet, basename="incident")

urlpatterns = [
    re_path(
        rf"^clusters/(?P<cluster_id>{ID_PATTERN})/nodes/(?P<node_id>{ID_PATTERN})/incidents$",
        incident_views.NodeIncidentView.as_view(),
        name="node-incidents",
    ),
    *router.urls,
]
