from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from core.pagination import StandardPagination
from core.schema import bad_request, documented_error
from market.api.serializers import (
    BookQuerySerializer,
    BookSerializer,
    IndexQuerySerializer,
    PriceIndexSerializer,
    TradeQuerySerializer,
    TradeSerializer,
)
from market.selectors import market_book, price_index_days, trade_list
from marketplace.models import GpuModel

# A GPU model by its slug, as the catalog spells it (GET /api/v1/gpu-models); any other text in
# its place matches no route and is the JSON 404.
GPU_MODEL_SLUG = "[-a-zA-Z0-9_]{1,64}"
GPU_MODEL_PARAMETER = OpenApiParameter(
    "slug",
    str,
    OpenApiParameter.PATH,
    pattern=f"^{GPU_MODEL_SLUG}$",
    description="The GPU model's slug (GET /api/v1/gpu-models); an unknown one is a 404.",
)
UNKNOWN_MODEL = documented_error("Not found", not_found="an unknown GPU model")
ANONYMOUS = "Anonymous: no organization, listing or contract is named. Any API key reads it."


def _gpu_model(slug: str) -> GpuModel:
    return get_object_or_404(GpuModel, slug=slug)


class BookView(GenericAPIView):
    serializer_class = BookSerializer

    @extend_schema(
        operation_id="market_book",
        parameters=[GPU_MODEL_PARAMETER, BookQuerySerializer],
        responses={
            404: UNKNOWN_MODEL,
            200: BookSerializer,
            400: bad_request(
                "a window bound that is not a whole UTC hour, a start already begun, an end not after the start or "
                "past the horizon"
            ),
        },
        summary="The order book of a GPU model",
        description="Asks and bids by price level for the window [starts_at, ends_at) (the next whole hour "
        "when omitted). Asks: GPUs of active listings free for the whole window, cheapest first. Bids: GPUs that "
        f"open compute requests want for an hour of the window, by their maximum price, highest first. {ANONYMOUS}",
    )
    def get(self, request: Request, slug: str) -> Response:
        model = _gpu_model(slug)
        query = BookQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        book = market_book(
            gpu_model=model,
            starts_at=params["starts_at"],
            ends_at=params["ends_at"],
            region=params.get("region"),
            levels=params["levels"],
        )
        return Response(
            BookSerializer(
                {
                    "gpu_model": model.slug,
                    "region": params.get("region"),
                    "starts_at": params["starts_at"],
                    "ends_at": params["ends_at"],
                    "asks": book.asks,
                    "bids": book.bids,
                }
            ).data
        )


class TradeListView(GenericAPIView):
    serializer_class = TradeSerializer
    pagination_class = StandardPagination
    queryset = GpuModel.objects.none()  # for the schema generator: trades are rows of trade_list

    @extend_schema(
        operation_id="market_trades",
        parameters=[GPU_MODEL_PARAMETER, TradeQuerySerializer],
        responses={
            404: UNKNOWN_MODEL,
            200: TradeSerializer(many=True),
            400: bad_request("a `since` more than 31 days back (older prices are in the daily index)"),
        },
        summary="Recent trades of a GPU model",
        description="Contracts signed since `since` (24 hours back when omitted), newest first: price, GPUs, hours, "
        f"when, and whether a primary sale or a resale. Cancelled contracts are left out. {ANONYMOUS}",
    )
    def get(self, request: Request, slug: str) -> Response:
        model = _gpu_model(slug)
        query = TradeQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        since = query.validated_data["since"]

        def fetch(*, limit: int, offset: int):
            return trade_list(gpu_model=model, since=since, limit=limit, offset=offset)

        rows, links = self.paginator.fetched_page(request, fetch)
        return Response({**links, "results": TradeSerializer(rows, many=True).data})


class PriceIndexView(GenericAPIView):
    serializer_class = PriceIndexSerializer

    @extend_schema(
        operation_id="market_index",
        parameters=[GPU_MODEL_PARAMETER, IndexQuerySerializer],
        responses={
            404: UNKNOWN_MODEL,
            200: PriceIndexSerializer,
            400: bad_request("a day that is not YYYY-MM-DD, `to` before `from`, or more than 366 days"),
        },
        summary="The daily price index of a GPU model",
        description="For each UTC day of [from, to] (the last 30 completed days when omitted): open, high, low and "
        "close prices, the volume-weighted price (VWAP) and the volume in GPU-hours of the contracts signed that "
        "day, cancelled ones left out. A day is computed once, within the hour after it ends; days not computed "
        f"yet are left out, and a day with no trade has volume 0 and null prices. {ANONYMOUS}",
    )
    def get(self, request: Request, slug: str) -> Response:
        model = _gpu_model(slug)
        query = IndexQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        first, last = query.validated_data["from"], query.validated_data["to"]
        days = price_index_days(gpu_model=model, first=first, last=last)
        return Response(PriceIndexSerializer({"gpu_model": model.slug, "from": first, "to": last, "days": days}).data)
