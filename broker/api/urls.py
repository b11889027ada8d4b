from django.urls import re_path

from broker.api import listing_views, views
from core.routers import ID_PATTERN, ApiRouter

router = ApiRouter()
# The listings collection takes resales too (broker.resale); the rest of a listing is marketplace's.
router.register("listings", listing_views.ListingViewSet, basename="listing")
router.register("compute-requests", views.ComputeRequestViewSet, basename="compute-request")
router.register("contracts", views.ContractViewSet, basename="contract")

urlpatterns = [
    re_path(rf"^listings/(?P<pk>{ID_PATTERN})/book$", views.ListingBookView.as_view(), name="listing-book"),
    *router.urls,
]
