from django.contrib import admin, messages

from core.admin import AuditedAdmin, ReadOnlyAdmin
from events.models import Event, WebhookDelivery, WebhookEndpoint
from events.services import webhook_deliveries_retry_now, webhook_endpoint_disable, webhook_endpoint_enable


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "organization", "type", "dedupe_key"]
    list_filter = ["type"]
    search_fields = ["=id", "organization__name", "dedupe_key"]
    list_select_related = ["organization"]
    show_full_result_count = False


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(AuditedAdmin):
    """Endpoints are registered by their owners through the API; operators may disable or enable
    one. The signing secret is never shown (it is stored nowhere), nor its salt."""

    list_display = ["id", "organization", "url", "status", "disabled_at", "created_at"]
    list_filter = ["status"]
    search_fields = ["url", "organization__name"]
    list_select_related = ["organization"]
    fields = ["organization", "url", "event_types", "description", "status", "disabled_reason", "disabled_at"]
    readonly_fields = fields
    actions = ["disable", "enable"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(
        permissions=["operate"], description="Disable (the organization gets a webhook_endpoint.disabled event)"
    )
    def disable(self, request, queryset):
        for endpoint in queryset:
            webhook_endpoint_disable(
                endpoint=endpoint,
                reason="Disabled by the broker's operators.",
                actor_label=request.user.get_username(),
                notify=True,
            )
        self.message_user(request, "Disabled.", messages.SUCCESS)

    @admin.action(permissions=["operate"], description="Enable")
    def enable(self, request, queryset):
        for endpoint in queryset:
            webhook_endpoint_enable(endpoint=endpoint, actor_label=request.user.get_username())
        self.message_user(request, "Enabled.", messages.SUCCESS)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "endpoint", "event", "status", "attempts", "last_status_code", "last_error", "next_attempt_at",
        "created_at",
    ]  # fmt: skip
    list_filter = ["status"]
    search_fields = ["=endpoint__id", "=event__id", "endpoint__url"]
    list_select_related = ["endpoint", "event"]
    raw_id_fields = ["endpoint", "event"]
    show_full_result_count = False
    actions = ["retry_now"]

    @admin.action(permissions=["operate"], description="Retry now (a new 3-day window; endpoint must be enabled)")
    def retry_now(self, request, queryset):
        count = webhook_deliveries_retry_now(
            delivery_ids=list(queryset.values_list("pk", flat=True)), actor_label=request.user.get_username()
        )
        self.message_user(request, f"{count} deliveries due now.", messages.SUCCESS)
