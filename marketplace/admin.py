from functools import partial

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from billing.credit import lab_exposure
from core.admin import AuditedAdmin, ReadOnlyAdmin
from core.errors import DomainError
from marketplace.models import (
    ApiKey,
    Cluster,
    GpuModel,
    IdempotencyRecord,
    Listing,
    Membership,
    Node,
    Organization,
)
from marketplace.services import (
    IssuedApiKey,
    api_key_create,
    api_key_revoke,
    listing_update,
    listing_withdraw,
    node_set_status,
    organization_set_credit_limit,
    organization_set_fee_rate,
    organization_set_status,
)

# Measured by broker.reliability; never edited.
RELIABILITY_FIELDS = [
    "availability_30d",
    "mean_time_to_replace_seconds",
    "late_deliveries_30d",
    "reliability_measured_at",
]


class NoDeleteMixin:
    """Market records are withdrawn, revoked or suspended through their rules, never deleted."""

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ["name", "prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


def _keep_for_this_response(request: HttpRequest, issued: IssuedApiKey) -> None:
    """Hold a new key's secret on the request only, for the page that answers it."""
    request._issued_keys = [*getattr(request, "_issued_keys", []), issued]


def _secrets_page(request: HttpRequest, *, continue_url: str) -> TemplateResponse:
    """Show new keys' secrets once, on the answer itself: never in a message, whose cookie would
    carry the secret to the next page, and never cached."""
    secrets = [
        {"organization": issued.api_key.organization, "name": issued.api_key.name, "secret": issued.secret}
        for issued in request._issued_keys
    ]
    context = {
        **admin.site.each_context(request),
        "title": "New API key",
        "secrets": secrets,
        "continue_url": continue_url,
    }
    response = TemplateResponse(request, "admin/secret_shown_once.html", context)
    add_never_cache_headers(response)
    return response


@admin.register(Organization)
class OrganizationAdmin(NoDeleteMixin, AuditedAdmin):
    list_display = [
        "name",
        "role",
        "status",
        "platform_fee_rate",
        "credit_limit",
        "availability_30d",
        "mean_time_to_replace_seconds",
        "late_deliveries_30d",
        "created_at",
    ]
    list_filter = ["status", "is_provider", "is_lab"]
    search_fields = ["name"]
    date_hierarchy = "created_at"
    readonly_fields = ["exposure", *RELIABILITY_FIELDS]
    inlines = [MembershipInline, ApiKeyInline]
    actions = ["verify", "suspend", "reactivate", "issue_api_key"]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "credit_limit":
            # A callable default makes Django compare the post with a hidden copy of the value
            # first shown; compare it with the organization's limit as it stands instead.
            field.show_hidden_initial = False
        return field

    @admin.display(description="Exposure (what the credit limit bounds)")
    def exposure(self, obj: Organization) -> str:
        if obj.pk is None:
            return "-"
        shown = lab_exposure(obj.pk).figures()
        available = "no limit" if shown["available"] is None else f"{shown['available']:,} available"
        return (
            f"{shown['total']:,} ({shown['committed']:,} committed, {shown['metered']:,} metered at most, "
            f"{shown['unpaid']:,} unpaid invoices); {available}"
        )

    def save_model(self, request: HttpRequest, obj: Organization, form, change: bool) -> None:
        if change and "platform_fee_rate" in form.changed_data:
            organization_set_fee_rate(organization=obj, rate=obj.platform_fee_rate, actor=request.user)
        if change and "credit_limit" in form.changed_data:
            organization_set_credit_limit(organization=obj, limit=obj.credit_limit, actor=request.user)
        if change and "status" in form.changed_data:
            organization_set_status(organization=obj, status=obj.status, actor=request.user)
        super().save_model(request, obj, form, change)
        if not change:
            _keep_for_this_response(request, api_key_create(organization=obj, actor=request.user))

    def response_add(self, request: HttpRequest, obj: Organization, post_url_continue=None):
        response = super().response_add(request, obj, post_url_continue)
        return _secrets_page(request, continue_url=response.url) if hasattr(request, "_issued_keys") else response

    def _set_status(self, request: HttpRequest, queryset: QuerySet, status: str) -> None:
        for organization in queryset:
            organization_set_status(organization=organization, status=status, actor=request.user)
        self.message_user(request, f"{queryset.count()} organization(s) now {status}.")

    @admin.action(permissions=["operate"], description="Verify selected organizations")
    def verify(self, request, queryset):
        self._set_status(request, queryset, Organization.Status.VERIFIED)

    @admin.action(permissions=["operate"], description="Suspend selected organizations (keys stop working)")
    def suspend(self, request, queryset):
        self._set_status(request, queryset, Organization.Status.SUSPENDED)

    @admin.action(permissions=["operate"], description="Reactivate selected organizations")
    def reactivate(self, request, queryset):
        self._set_status(request, queryset, Organization.Status.ACTIVE)

    @admin.action(permissions=["operate"], description="Issue a new API key")
    def issue_api_key(self, request, queryset):
        for organization in queryset:
            _keep_for_this_response(
                request, api_key_create(organization=organization, name="admin-issued", actor=request.user)
            )
        return _secrets_page(request, continue_url=request.get_full_path())


@admin.register(ApiKey)
class ApiKeyAdmin(NoDeleteMixin, AuditedAdmin):
    list_display = ["prefix", "name", "scope", "organization", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    list_select_related = ["organization"]
    search_fields = ["prefix", "name", "organization__name"]
    date_hierarchy = "created_at"
    actions = ["revoke"]

    def get_fields(self, request, obj=None):
        return (
            ["organization", "name", "scope"]
            if obj is None
            else ["organization", "name", "scope", "prefix", "created_at", "last_used_at", "revoked_at"]
        )

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["organization", "scope", "prefix", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = api_key_create(organization=obj.organization, name=obj.name, scope=obj.scope, actor=request.user)
        obj.pk = issued.api_key.pk
        obj.prefix = issued.api_key.prefix
        obj.key_hash = issued.api_key.key_hash
        obj.created_at = issued.api_key.created_at
        _keep_for_this_response(request, issued)

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue=None):
        response = super().response_add(request, obj, post_url_continue)
        return _secrets_page(request, continue_url=response.url) if hasattr(request, "_issued_keys") else response

    def log_addition(self, request, obj, message):
        # api_key_create recorded the issue in the audit trail; only the admin's own log is left.
        return super(AuditedAdmin, self).log_addition(request, obj, message)

    @admin.action(permissions=["operate"], description="Revoke selected keys")
    def revoke(self, request, queryset):
        for api_key in queryset:
            api_key_revoke(api_key=api_key, actor=request.user)
        self.message_user(request, f"{queryset.count()} key(s) revoked.")


@admin.register(Membership)
class MembershipAdmin(AuditedAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role"]
    list_select_related = ["user", "organization"]
    search_fields = ["user__username", "organization__name"]
    autocomplete_fields = ["user", "organization"]


@admin.register(GpuModel)
class GpuModelAdmin(AuditedAdmin):
    list_display = ["name", "slug", "vendor", "memory_gb", "bf16_tflops"]
    list_filter = ["vendor"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(Cluster)
class ClusterAdmin(NoDeleteMixin, AuditedAdmin):
    list_display = [
        "name",
        "provider",
        "gpu_model",
        "region",
        "interconnect",
        "gpus_per_node",
        "availability_30d",
        "mean_time_to_replace_seconds",
        "late_deliveries_30d",
        "created_at",
    ]
    list_filter = ["gpu_model", "interconnect", "region"]
    list_select_related = ["provider", "gpu_model"]
    search_fields = ["name", "provider__name", "region"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "provider",
        "gpu_model",
        "region",
        "interconnect",
        "gpus_per_node",
        "created_at",
        *RELIABILITY_FIELDS,
    ]

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # providers register clusters through the API


@admin.register(Node)
class NodeAdmin(NoDeleteMixin, AuditedAdmin):
    list_display = ["hostname", "cluster", "status"]
    list_filter = ["status"]
    list_select_related = ["cluster"]
    search_fields = ["hostname", "cluster__name"]
    show_full_result_count = False
    readonly_fields = ["cluster", "hostname", "status"]
    actions = ["to_maintenance", "to_service"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def _set_status(self, request, queryset, status):
        for node in queryset:
            try:
                node_set_status(node=node, status=status, actor=request.user)
            except DomainError as exc:
                self.message_user(request, f"{node}: {exc.message}", messages.ERROR)

    @admin.action(permissions=["operate"], description="Take selected nodes out of service (maintenance)")
    def to_maintenance(self, request, queryset):
        self._set_status(request, queryset, Node.Status.MAINTENANCE)

    @admin.action(permissions=["operate"], description="Put selected nodes back in service")
    def to_service(self, request, queryset):
        self._set_status(request, queryset, Node.Status.IN_SERVICE)


@admin.register(Listing)
class ListingAdmin(NoDeleteMixin, AuditedAdmin):
    list_display = [
        "id",
        "provider",
        "cluster",
        "node_count",
        "starts_at",
        "ends_at",
        "price_per_gpu_hour",
        "billing_mode",
        "status",
    ]
    list_filter = ["status", "billing_mode", "cluster__gpu_model"]
    list_select_related = ["provider", "cluster"]
    search_fields = ["provider__name", "cluster__name"]
    date_hierarchy = "starts_at"
    actions = ["pause", "resume", "withdraw"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def _apply(self, request, queryset, change):
        for listing in queryset:
            try:
                change(listing=listing, actor=request.user)
            except DomainError as exc:
                self.message_user(request, f"{listing}: {exc.message}", messages.ERROR)

    @admin.action(permissions=["operate"], description="Pause selected listings")
    def pause(self, request, queryset):
        self._apply(request, queryset, partial(listing_update, status=Listing.Status.PAUSED))

    @admin.action(permissions=["operate"], description="Resume selected listings")
    def resume(self, request, queryset):
        self._apply(request, queryset, partial(listing_update, status=Listing.Status.ACTIVE))

    @admin.action(permissions=["operate"], description="Withdraw selected listings (sold capacity stays sold)")
    def withdraw(self, request, queryset):
        self._apply(request, queryset, listing_withdraw)


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "organization", "key", "response_status"]
    list_select_related = ["organization"]
    search_fields = ["key", "organization__name"]
    date_hierarchy = "created_at"
    show_full_result_count = False
