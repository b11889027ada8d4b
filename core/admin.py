"""Admin building blocks shared by the apps, and the platform's own models."""

from collections.abc import Callable

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_permission_codename
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from core.errors import DomainError
from core.models import AuditEvent
from core.services import audit_record

admin.site.site_header = "GPU brokerage operations"
admin.site.site_title = "GPU brokerage"
admin.site.index_template = "admin/broker_index.html"


class AuditedAdmin(admin.ModelAdmin):
    """Every add, change and delete made in the admin also lands in the audit trail.

    Actions that change the market (cancel, void, pay, suspend...) need the model's
    "change" permission, even where the change form itself is read-only.
    """

    def has_operate_permission(self, request: HttpRequest) -> bool:
        codename = get_permission_codename("change", self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    def log_addition(self, request, obj, message):
        audit_record(action="admin_add", target=obj, actor=request.user, message=_plain(message))
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        audit_record(action="admin_change", target=obj, actor=request.user, message=_plain(message))
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        for obj in queryset:
            audit_record(action="admin_delete", target=obj, actor=request.user)
        return super().log_deletions(request, queryset)


def _plain(message) -> str:
    if isinstance(message, list):
        return "; ".join(
            f"{verb} {', '.join(detail.get('fields', [])) or detail.get('name', '')}".strip()
            for entry in message
            for verb, detail in entry.items()
        )
    return str(message or "")


class ReadOnlyAdmin(AuditedAdmin):
    """Records written only by the business rules: visible, never edited by hand."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class ReasonForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), max_length=2000)


def run_form_action(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet,
    *,
    form_class: type[forms.Form],
    title: str,
    apply: Callable[[object, dict], str],
) -> HttpResponse | None:
    """An admin action that first asks for input (a reason, an amount), then calls a service
    for each selected object. Domain errors become messages, never 500s."""
    if not modeladmin.has_operate_permission(request):
        raise PermissionDenied
    form = form_class(request.POST if "apply" in request.POST else None)
    if "apply" in request.POST and form.is_valid():
        for obj in queryset:
            try:
                note = apply(obj, form.cleaned_data)
            except DomainError as exc:
                modeladmin.message_user(request, f"{obj}: {exc.message}", messages.ERROR)
                continue
            modeladmin.message_user(request, f"{obj}: {note}", messages.SUCCESS)
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "form": form,
        "objects": list(queryset[:50]),
        "queryset_ids": list(queryset.values_list("pk", flat=True)),
        "action": request.POST.get("action"),
        "opts": modeladmin.model._meta,
        "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/action_form.html", context)


admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class AuditedUserAdmin(AuditedAdmin, UserAdmin):
    """Operators' accounts and rights change in the admin too: audited like the market."""


@admin.register(Group)
class AuditedGroupAdmin(AuditedAdmin, GroupAdmin):
    pass


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor_label", "action", "target_type", "target_repr", "message"]
    list_filter = ["action", "target_type"]
    search_fields = ["actor_label", "target_repr", "target_id", "message"]
    date_hierarchy = "created_at"
    list_select_related = ["actor"]


@admin.register(LogEntry)
class LogEntryAdmin(ReadOnlyAdmin):
    list_display = ["action_time", "user", "content_type", "object_repr", "action_flag", "change_message"]
    list_filter = ["action_flag", "content_type"]
    search_fields = ["object_repr", "change_message", "user__username"]
    date_hierarchy = "action_time"
    list_select_related = ["user", "content_type"]
