from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from broker.incidents import incident_open, incident_resolve, incident_start_validate
from broker.models import Allocation, ComputeRequest, Contract, Incident, Replacement, Resale
from broker.selectors import resale_activity
from broker.services import compute_request_rematch, contract_cancel
from core.admin import ReadOnlyAdmin, ReadOnlyInline, ReasonForm, run_form_action
from core.errors import DomainError


@admin.register(ComputeRequest)
class ComputeRequestAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "lab",
        "gpu_model",
        "gpu_count",
        "starts_at",
        "duration_hours",
        "max_price_per_gpu_hour",
        "billing_mode",
        "colocated",
        "status",
        "created_at",
    ]
    list_filter = ["status", "gpu_model", "billing_mode", "colocated"]
    list_select_related = ["lab", "gpu_model"]
    search_fields = ["id", "lab__name"]
    date_hierarchy = "created_at"
    actions = ["rematch"]

    @admin.action(permissions=["operate"], description="Re-run matching for selected open requests")
    def rematch(self, request, queryset):
        for compute_request in queryset:
            try:
                compute_request_rematch(request=compute_request, actor=request.user)
            except DomainError as exc:
                self.message_user(request, f"Request {compute_request.pk}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"Request {compute_request.pk}: matching queued.")


class AllocationInline(ReadOnlyInline):
    model = Allocation
    fields = ["node", "starts_at", "ends_at"]
    readonly_fields = fields
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("node")


@admin.register(Contract)
class ContractAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "lab",
        "provider",
        "cluster",
        "gpu_count",
        "starts_at",
        "ends_at",
        "price_per_gpu_hour",
        "billing_mode",
        "total_amount",
        "status",
        "delivered_at",
        "delivery_late_at",
        "created_at",
    ]
    list_filter = ["status", "billing_mode", "cluster__gpu_model", ("delivery_late_at", admin.EmptyFieldListFilter)]
    list_select_related = ["lab", "provider", "cluster"]
    search_fields = ["id", "lab__name", "provider__name", "cluster__name"]
    date_hierarchy = "created_at"
    inlines = [AllocationInline]
    actions = ["cancel"]

    @admin.action(
        permissions=["operate"],
        description="Cancel selected contracts (with a reason; unpaid invoiced amounts are credited)",
    )
    def cancel(self, request, queryset):
        def apply(contract, data):
            contract = contract_cancel(contract=contract, reason=data["reason"], actor=request.user)
            return f"cancelled; nodes free from {contract.released_at:%Y-%m-%d %H:%M} UTC."

        return run_form_action(self, request, queryset, form_class=ReasonForm, title="Cancel contracts", apply=apply)


@admin.register(Allocation)
class AllocationAdmin(ReadOnlyAdmin):
    list_display = ["id", "contract", "node", "starts_at", "ends_at"]
    list_select_related = ["contract", "node"]
    search_fields = ["node__hostname", "contract__id"]
    show_full_result_count = False


class ReplacementInline(ReadOnlyInline):
    model = Replacement
    fields = ["contract", "failed_node", "replacement_node", "from_hour", "created_at"]
    readonly_fields = fields
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("failed_node", "replacement_node")


class IncidentOpenForm(forms.ModelForm):
    """An operator's report of an incident on a node (its provider's, whoever reports it)."""

    class Meta:
        model = Incident
        fields = ["node", "kind", "started_at", "detail"]

    def clean_started_at(self):
        started_at = self.cleaned_data["started_at"]
        try:
            incident_start_validate(started_at)
        except DomainError as exc:
            raise ValidationError(exc.message) from exc
        return started_at


@admin.register(Incident)
class IncidentAdmin(ReadOnlyAdmin):
    """Incidents are reported by providers through the API, or by operators here ("Add"):
    both call ``incident_open``; the resolve action calls ``incident_resolve``. Read-only
    otherwise."""

    list_display = ["id", "kind", "node", "cluster", "provider", "started_at", "resolved_at", "created_at"]
    list_filter = ["kind", ("resolved_at", admin.EmptyFieldListFilter), "cluster__gpu_model"]
    list_select_related = ["node", "cluster", "provider"]
    search_fields = ["id", "node__hostname", "cluster__name", "provider__name"]
    date_hierarchy = "started_at"
    inlines = [ReplacementInline]
    actions = ["resolve"]
    raw_id_fields = ["node"]

    def has_add_permission(self, request, obj=None) -> bool:
        return self.has_operate_permission(request)

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = IncidentOpenForm
        return super().get_form(request, obj, **kwargs)

    def get_inlines(self, request, obj):
        return [] if obj is None else super().get_inlines(request, obj)

    def get_fields(self, request, obj=None):
        return IncidentOpenForm.Meta.fields if obj is None else super().get_fields(request, obj)

    def save_model(self, request, obj: Incident, form, change: bool) -> None:
        opened = incident_open(
            provider=obj.node.cluster.provider,
            node=obj.node,
            kind=obj.kind,
            started_at=obj.started_at,
            detail=obj.detail,
            actor=request.user,
        )
        obj.pk = opened.incident.pk
        obj.refresh_from_db()

    @admin.action(
        permissions=["operate"], description="Resolve selected incidents now (a failed node returns to service)"
    )
    def resolve(self, request, queryset):
        for incident in queryset.select_related("provider"):
            try:
                incident_resolve(provider=incident.provider, incident=incident, actor=request.user)
            except DomainError as exc:
                self.message_user(request, f"Incident {incident.pk}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"Incident {incident.pk}: resolved.")


@admin.register(Replacement)
class ReplacementAdmin(ReadOnlyAdmin):
    list_display = ["id", "incident", "contract", "failed_node", "replacement_node", "from_hour", "created_at"]
    list_select_related = ["failed_node", "replacement_node"]
    search_fields = ["contract__id", "failed_node__hostname", "replacement_node__hostname"]


@admin.register(Resale)
class ResaleAdmin(ReadOnlyAdmin):
    """Capacity bought and put back on the market (broker.resale): each resale listing, and
    above them the resale activity of each organization, as seller and as buyer."""

    change_list_template = "admin/broker/resale/change_list.html"
    list_display = ["listing", "seller", "contract", "depth", "nodes", "starts_at", "ends_at", "price", "status"]
    list_filter = [("listing__provider", admin.RelatedOnlyFieldListFilter), "listing__status"]
    list_select_related = ["listing__provider", "contract"]
    search_fields = ["listing__provider__name", "contract__id", "listing__id"]
    date_hierarchy = "created_at"

    @admin.display(description="Seller", ordering="listing__provider__name")
    def seller(self, obj: Resale):
        return obj.listing.provider

    @admin.display(description="Depth")
    def depth(self, obj: Resale) -> int:
        return obj.listing.depth

    @admin.display(description="Nodes")
    def nodes(self, obj: Resale) -> int:
        return obj.listing.node_count

    @admin.display(description="Starts", ordering="listing__starts_at")
    def starts_at(self, obj: Resale):
        return obj.listing.starts_at

    @admin.display(description="Ends", ordering="listing__ends_at")
    def ends_at(self, obj: Resale):
        return obj.listing.ends_at

    @admin.display(description="Price per GPU-hour", ordering="listing__price_per_gpu_hour")
    def price(self, obj: Resale):
        return obj.listing.price_per_gpu_hour

    @admin.display(description="Status", ordering="listing__status")
    def status(self, obj: Resale) -> str:
        return obj.listing.get_status_display()

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {**(extra_context or {}), "resale_activity": resale_activity()})
