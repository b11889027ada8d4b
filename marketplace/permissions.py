from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import SAFE_METHODS, BasePermission

from marketplace.models import ApiKey


class IsOrganizationMember(BasePermission):
    """An organization's API key; a read-only key may only read."""

    message = "Authentication with an organization's API key is required."

    def has_permission(self, request, view) -> bool:
        if not (request.user and getattr(request.user, "organization", None) is not None):
            return False
        if request.method not in SAFE_METHODS and request.auth.scope != ApiKey.Scope.FULL:
            raise PermissionDenied("This API key is read-only: use a full key to change anything.")
        return True


class IsProvider(IsOrganizationMember):
    message = "Only provider organizations may do this."

    def has_permission(self, request, view) -> bool:
        return super().has_permission(request, view) and request.user.organization.is_provider


class IsLab(IsOrganizationMember):
    message = "Only lab organizations may do this."

    def has_permission(self, request, view) -> bool:
        return super().has_permission(request, view) and request.user.organization.is_lab
