from django.urls import re_path

from market.api import views

GPU_MODEL = rf"(?P<slug>{views.GPU_MODEL_SLUG})"

urlpatterns = [
    re_path(rf"^market/{GPU_MODEL}/book$", views.BookView.as_view(), name="market-book"),
    re_path(rf"^market/{GPU_MODEL}/trades$", views.TradeListView.as_view(), name="market-trades"),
    re_path(rf"^market/{GPU_MODEL}/index$", views.PriceIndexView.as_view(), name="market-index"),
]
