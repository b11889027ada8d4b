from rest_framework.permissions import BasePermission


class IsOrganizationMember(BasePermission):
    message = "Authentication with an organization's API key is required."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and getattr(request.user, "organization", None) is not None)


class IsProvider(IsOrganizationMember):
    message = "Only provider organizations may do this."

    def has_permission(self, request, view) -> bool:
        return super().has_permission(request, view) and request.user.organization.is_provider


class IsLab(IsOrganizationMember):
    message = "Only lab organizations may do this."

    def has_permission(self, request, view) -> bool:
        return super().has_permission(request, view) and request.user.organization.is_lab
