from django.shortcuts import get_object_or_404
from django.utils.cache import add_never_cache_headers
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.pagination import StandardPagination
from core.schema import conflict
from events.api.pagination import EventCursorPagination
from events.api.serializers import (
    DeliveryQuerySerializer,
    EventPageSerializer,
    EventQuerySerializer,
    EventSerializer,
    IssuedWebhookEndpointSerializer,
    WebhookDeliverySerializer,
    WebhookEndpointCreateSerializer,
    WebhookEndpointSerializer,
)
from events.models import WebhookEndpoint
from events.selectors import event_list, webhook_delivery_list, webhook_endpoint_list
from events.services import (
    MAX_ENDPOINTS_PER_ORGANIZATION,
    IssuedEndpoint,
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_disable,
    webhook_endpoint_enable,
    webhook_endpoint_roll_secret,
)


class EventListView(APIView):
    @extend_schema(
        operation_id="events_list",
        parameters=[EventQuerySerializer],
        responses=EventPageSerializer,
        summary="List your events",
        description="What happened that your organization must know of, newest first, a page at a time: follow "
        "`next` (an opaque `cursor`). Events are kept at least 30 days. Webhooks deliver the same events.",
    )
    def get(self, request: Request) -> Response:
        query = EventQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        events = event_list(organization=request.user.organization, type=query.validated_data.get("type"))
        paginator = EventCursorPagination()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(EventSerializer(page, many=True).data)


class EventDetailView(APIView):
    @extend_schema(operation_id="events_retrieve", responses=EventSerializer, summary="Read an event")
    def get(self, request: Request, pk: str) -> Response:
        """One of your organization's events."""
        event = get_object_or_404(event_list(organization=request.user.organization), pk=pk)
        return Response(EventSerializer(event).data)


def _issued(issued: IssuedEndpoint, code: int) -> Response:
    data = IssuedWebhookEndpointSerializer(issued.endpoint).data | {"secret": issued.secret}
    response = Response(data, status=code)
    add_never_cache_headers(response)  # no-store: the secret is kept nowhere, not even for a replay
    return response


class WebhookEndpointViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """Your organization's webhook endpoints: where its events are POSTed, signed."""

    serializer_class = WebhookEndpointSerializer
    pagination_class = StandardPagination

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return WebhookEndpoint.objects.none()
        return webhook_endpoint_list(organization=self.request.user.organization)

    @extend_schema(
        request=WebhookEndpointCreateSerializer,
        responses={
            201: IssuedWebhookEndpointSerializer,
            409: conflict(webhook_endpoint_limit=f"you have {MAX_ENDPOINTS_PER_ORGANIZATION} endpoints already"),
        },
        summary="Register a webhook endpoint",
        description="201 with the endpoint and its signing `secret`, shown this once and stored nowhere "
        "(`Cache-Control: no-store`; a retry with the same Idempotency-Key answers 409). Each event of the "
        "types asked is POSTed to the URL as JSON (`id`, `type`, `created`, `data`, as GET /api/v1/events "
        "shows it) with `Webhook-Id: <event id>` and `Webhook-Signature: t=<unix seconds>,v1=<hex "
        'HMAC-SHA256 of "<t>.<body>" keyed with the secret>`. Delivery is at least once: dedupe by the '
        "event id. A non-2xx answer or a timeout is retried with exponential backoff (30 s doubling, at "
        "most an hour apart) for 3 days; then the endpoint is disabled and a `webhook_endpoint.disabled` "
        "event says so. 400 `invalid` for a URL that is not https, carries credentials, or names a "
        "private, loopback or link-local address.",
    )
    def create(self, request: Request) -> Response:
        serializer = WebhookEndpointCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = webhook_endpoint_create(
            organization=request.user.organization, actor_label=request.user.audit_label, **serializer.validated_data
        )
        return _issued(issued, status.HTTP_201_CREATED)

    @extend_schema(summary="List your webhook endpoints")
    def list(self, request: Request) -> Response:
        """Your endpoints, newest first; never their secrets."""
        return super().list(request)

    @extend_schema(summary="Read a webhook endpoint")
    def retrieve(self, request: Request, pk: str) -> Response:
        """One of your endpoints; never its secret."""
        return super().retrieve(request, pk=pk)

    @extend_schema(summary="Delete a webhook endpoint")
    def destroy(self, request: Request, pk: str) -> Response:
        """Delete the endpoint and its deliveries: nothing more is sent to it. 204."""
        webhook_endpoint_delete(endpoint=self.get_object(), actor_label=request.user.audit_label)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses=WebhookEndpointSerializer, summary="Disable a webhook endpoint")
    @action(detail=True, methods=["post"])
    def disable(self, request: Request, pk: str) -> Response:
        """Stop sending to the endpoint; its pending deliveries fail. Disabling a disabled endpoint changes nothing."""
        endpoint = webhook_endpoint_disable(
            endpoint=self.get_object(), reason="Disabled by its owner.", actor_label=request.user.audit_label
        )
        return Response(WebhookEndpointSerializer(endpoint).data)

    @extend_schema(request=None, responses=WebhookEndpointSerializer, summary="Enable a webhook endpoint")
    @action(detail=True, methods=["post"])
    def enable(self, request: Request, pk: str) -> Response:
        """Send to the endpoint again, from the next event on (events published while it was disabled are not
        sent: read them at GET /api/v1/events). Enabling an enabled endpoint changes nothing."""
        endpoint = webhook_endpoint_enable(endpoint=self.get_object(), actor_label=request.user.audit_label)
        return Response(WebhookEndpointSerializer(endpoint).data)

    @extend_schema(
        request=None,
        responses=IssuedWebhookEndpointSerializer,
        summary="Roll a webhook endpoint's signing secret",
        description="A new signing `secret`, shown this once (`Cache-Control: no-store`; a retry with the same "
        "Idempotency-Key answers 409). The old secret stops signing at once.",
    )
    @action(detail=True, methods=["post"], url_path="roll-secret")
    def roll_secret(self, request: Request, pk: str) -> Response:
        issued = webhook_endpoint_roll_secret(endpoint=self.get_object(), actor_label=request.user.audit_label)
        return _issued(issued, status.HTTP_200_OK)

    @extend_schema(
        parameters=[DeliveryQuerySerializer],
        responses=WebhookDeliverySerializer(many=True),
        summary="List an endpoint's deliveries",
        description="What was sent to the endpoint, newest first: each event's delivery, its attempts and the "
        "last answer.",
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def deliveries(self, request: Request, pk: str) -> Response:
        endpoint = self.get_object()
        query = DeliveryQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        deliveries = webhook_delivery_list(endpoint=endpoint, status=query.validated_data.get("status"))
        page = self.paginate_queryset(deliveries)
        return self.get_paginated_response(WebhookDeliverySerializer(page, many=True).data)
