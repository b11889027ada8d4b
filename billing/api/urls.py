from rest_framework.routers import SimpleRouter

from billing.api import views

router = SimpleRouter(trailing_slash=False)
router.register("usage", views.UsageViewSet, basename="usage")
router.register("invoices", views.InvoiceViewSet, basename="invoice")
router.register("payouts", views.PayoutViewSet, basename="payout")

urlpatterns = router.urls
