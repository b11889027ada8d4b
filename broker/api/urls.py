from django.urls import path
from rest_framework.routers import SimpleRouter

from broker.api import views

router = SimpleRouter(trailing_slash=False)
router.register("compute-requests", views.ComputeRequestViewSet, basename="compute-request")
router.register("contracts", views.ContractViewSet, basename="contract")

urlpatterns = [
    path("listings/<int:pk>/book", views.ListingBookView.as_view(), name="listing-book"),
    *router.urls,
]
