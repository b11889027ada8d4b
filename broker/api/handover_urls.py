from django.urls import re_path

from broker.api import handover_views
from core.routers import ID_PATTERN

urlpatterns = [
    re_path(
        rf"^contracts/(?P<pk>{ID_PATTERN})/access$", handover_views.ContractAccessView.as_view(), name="contract-access"
    ),
    re_path(
        rf"^contracts/(?P<pk>{ID_PATTERN})/delivered$",
        handover_views.ContractDeliveredView.as_view(),
        name="contract-delivered",
    ),
]
