from django.urls import re_path

from broker.api import views
from core.routers import ID_PATTERN, ApiRouter

router = ApiRouter()
router.register("compute-requests", views.ComputeRequestViewSet, basename="compute-request")
router.register("contracts", views.ContractViewSet, basename="contract")

urlpatterns = [
    re_path(rf"^listings/(?P<pk>{ID_PATTERN})/book$", views.ListingBookView.as_view(), name="listing-book"),
    *router.urls,
]
