from billing.api import views
from core.routers import ApiRouter

router = ApiRouter()
router.register("usage", views.UsageViewSet, basename="usage")
router.register("invoices", views.InvoiceViewSet, basename="invoice")
router.register("payouts", views.PayoutViewSet, basename="payout")

urlpatterns = router.urls
