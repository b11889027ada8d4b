from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from core.serializers import QuerySerializer, StrictCharField, StrictIntegerField, StrictSerializer
from events.models import Event, EventType, WebhookDelivery, WebhookEndpoint
from events.webhooks import READ_TIMEOUT_SECONDS

MAX_PAGE_SIZE = 500
UNKNOWN_TYPE = "Unknown event type {input!r}. Valid: " + ", ".join(EventType.values) + "."


class EventSerializer(serializers.ModelSerializer):
    type = serializers.ChoiceField(choices=EventType.choices, help_text="What happened, e.g. `contract.created`.")
    created = serializers.DateTimeField(source="created_at", help_text="When it happened (the change committed).")
    data = serializers.DictField(
        help_text="A snapshot of the object concerned (`object` names its kind, `id` its id), plus what the event "
        "is about (e.g. `replacement` for `contract.node_replaced`)."
    )

    class Meta:
        model = Event
        fields = ["id", "type", "created", "data"]
        read_only_fields = fields
        extra_kwargs = {"id": {"help_text": "The event's id; webhooks carry it too (`Webhook-Id`): dedupe by it."}}


class EventPageSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True, help_text="The URL of the next (older) page; null on the last.")
    previous = serializers.URLField(
        allow_null=True, help_text="The URL of the previous (newer) page; null on the first."
    )
    results = EventSerializer(many=True, help_text="This page's events, newest first.")


class EventQuerySerializer(QuerySerializer):
    type = serializers.ChoiceField(
        choices=EventType.choices,
        required=False,
        help_text="Only events of this type.",
        error_messages={"invalid_choice": UNKNOWN_TYPE},
    )
    cursor = StrictCharField(
        required=False,
        max_length=512,
        help_text="Where a page starts: pass the cursor of a `next` or `previous` link as it is.",
    )
    page_size = StrictIntegerField(
        required=False,
        min_value=1,
        max_value=MAX_PAGE_SIZE,
        help_text=f"Events per page, 1 to {MAX_PAGE_SIZE}; 50 when not given.",
    )


TYPE_CHOICES = [(WebhookEndpoint.ALL_TYPES, "Every event type"), *EventType.choices]


class WebhookEndpointSerializer(serializers.ModelSerializer):
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=TYPE_CHOICES, help_text="An event type, or `*` for all."),
        help_text='The event types sent to it; `["*"]` for all.',
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "event_types", "description", "status", "disabled_reason", "disabled_at", "created_at"]
        read_only_fields = fields
        extra_kwargs = {
            "id": {"help_text": "The endpoint's id."},
            "url": {"help_text": "Where events are POSTed."},
            "description": {"help_text": "Your note about it."},
            "status": {
                "help_text": "enabled: events are sent to it; disabled: by you, or by the broker after a delivery "
                "kept failing for 3 days (see `disabled_reason`)."
            },
            "disabled_reason": {"help_text": "Why it was disabled; empty while enabled."},
            "disabled_at": {"help_text": "When it was disabled; null while enabled."},
            "created_at": {"help_text": "When it was registered."},
        }


class IssuedWebhookEndpointSerializer(WebhookEndpointSerializer):
    secret = serializers.CharField(
        read_only=True,
        help_text="The signing secret (`whsec_...`): shown this once and stored nowhere. Check each request's "
        "`Webhook-Signature` with it.",
    )

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class IssuedWebhookEndpointSchema(OpenApiSerializerExtension):
    """Document an issued endpoint as the endpoint plus its secret (allOf), so the endpoint's
    fields, and the enums among them, are described once."""

    target_class = IssuedWebhookEndpointSerializer

    def map_serializer(self, auto_schema, direction):
        mapped = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        base = WebhookEndpointSerializer.Meta.fields
        own = {name: field for name, field in mapped["properties"].items() if name not in base}
        extension = {
            "type": "object",
            "properties": own,
            "required": [name for name in mapped.get("required", []) if name in own],
        }
        return {"allOf": [auto_schema.resolve_serializer(WebhookEndpointSerializer, direction).ref, extension]}


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Contracts and invoices",
            value={
                "url": "https://hooks.example.com/gpubroker",
                "event_types": ["contract.created", "contract.delivered", "invoice.issued"],
                "description": "Our provisioning service",
            },
            request_only=True,
        )
    ]
)
class WebhookEndpointCreateSerializer(StrictSerializer):
    url = StrictCharField(
        max_length=2048,
        help_text="An https URL on a public address: no credentials, no private, loopback or link-local host "
        "(checked again against what its name resolves to at every delivery). Answer 2xx within "
        f"{int(READ_TIMEOUT_SECONDS)} s; redirects are not followed.",
    )
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=TYPE_CHOICES, help_text="An event type, or `*` for all."),
        min_length=1,
        max_length=len(TYPE_CHOICES),
        help_text='The event types to send to it; `["*"]` for all, alone.',
    )
    description = StrictCharField(
        max_length=200, required=False, default="", allow_blank=True, help_text="A note for yourself."
    )


class WebhookDeliverySerializer(serializers.ModelSerializer):
    event_type = serializers.CharField(source="event.type", read_only=True, help_text="The event's type.")

    class Meta:
        model = WebhookDelivery
        fields = [
            "id", "event", "event_type", "status", "attempts", "next_attempt_at", "last_attempt_at",
            "last_status_code", "last_error", "succeeded_at", "created_at",
        ]  # fmt: skip
        read_only_fields = fields
        extra_kwargs = {
            "id": {"help_text": "The delivery's id."},
            "event": {"help_text": "The event's id (GET /api/v1/events/{id})."},
            "status": {
                "help_text": "pending: to be sent (again) at `next_attempt_at`; succeeded: the endpoint answered "
                "2xx; failed: it kept failing for 3 days, or the endpoint was disabled."
            },
            "attempts": {"help_text": "How many times it was sent."},
            "next_attempt_at": {"help_text": "When it is sent next; null once it succeeded or failed."},
            "last_attempt_at": {"help_text": "When it was last sent; null before the first attempt."},
            "last_status_code": {"help_text": "The HTTP status of the last answer; null if none came."},
            "last_error": {"help_text": "Why the last attempt failed; empty after a success."},
            "succeeded_at": {"help_text": "When the endpoint answered 2xx; null until then."},
            "created_at": {"help_text": "When it was scheduled: its event's time. It is retried for 3 days from then."},
        }


class DeliveryQuerySerializer(QuerySerializer):
    status = serializers.ChoiceField(
        choices=WebhookDelivery.Status.choices, required=False, help_text="Only deliveries in this status."
    )
