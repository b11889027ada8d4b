import secrets
import string
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import InvalidInput, InvalidTransition
from marketplace.models import ApiKey, Membership, Organization
from marketplace.selectors import KEY_PREFIX, hash_api_key

_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
LAST_USED_RESOLUTION = timedelta(minutes=1)

ROLE_FLAGS = {"provider": (True, False), "lab": (False, True), "both": (True, True)}


@dataclass(frozen=True)
class IssuedApiKey:
    api_key: ApiKey
    secret: str  # the whole key; shown once, never stored


def api_key_create(*, organization: Organization, name: str = "default") -> IssuedApiKey:
    """Issue a new key for an organization. The returned secret is the only copy."""
    for _ in range(5):
        prefix = f"{KEY_PREFIX}_" + "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(8))
        secret = f"{prefix}_{secrets.token_urlsafe(32)}"
        try:
            with transaction.atomic():
                api_key = ApiKey.objects.create(
                    organization=organization, name=name, prefix=prefix, key_hash=hash_api_key(secret)
                )
        except IntegrityError:
            continue  # prefix collision: draw again
        return IssuedApiKey(api_key=api_key, secret=secret)
    raise RuntimeError("could not draw a unique API key prefix")


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key; requests using it are refused from now on. Revoking twice is a no-op."""
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


def api_key_touch(*, api_key: ApiKey) -> None:
    """Record that a key was used, at most once a minute so reads stay reads."""
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now


def organization_create(*, name: str, role: str, key_name: str = "default") -> tuple[Organization, IssuedApiKey]:
    """Create an organization with one API key."""
    name = name.strip()
    if not name:
        raise InvalidInput("The name may not be blank.", fields={"name": ["This field may not be blank."]})
    if role not in ROLE_FLAGS:
        raise InvalidInput(f"Unknown role {role!r}.", fields={"role": ["Use provider, lab or both."]})
    is_provider, is_lab = ROLE_FLAGS[role]
    with transaction.atomic():
        if Organization.objects.filter(name__iexact=name).exists():
            raise InvalidInput(
                f"An organization named {name!r} exists.", fields={"name": ["An organization with this name exists."]}
            )
        organization = Organization.objects.create(name=name, is_provider=is_provider, is_lab=is_lab)
        issued = api_key_create(organization=organization, name=key_name)
    return organization, issued


def organization_set_status(*, organization: Organization, status: str) -> Organization:
    """Verify, suspend or reactivate an organization."""
    if status not in Organization.Status.values:
        raise InvalidTransition(f"Unknown status {status!r}.")
    Organization.objects.filter(pk=organization.pk).update(status=status)
    organization.status = status
    return organization


def membership_add(*, organization: Organization, username: str, email: str = "", role: str = "member") -> Membership:
    """Add a user (created if new) to an organization with a role."""
    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(username=username, defaults={"email": email})
    membership, created = Membership.objects.get_or_create(
        user=user, organization=organization, defaults={"role": role}
    )
    if not created and membership.role != role:
        membership.role = role
        membership.save(update_fields=["role"])
    return membership
