from broker.api import quote_views
from core.routers import ApiRouter

router = ApiRouter()
router.register("quotes", quote_views.QuoteViewSet, basename="quote")

urlpatterns = [*router.urls]
