import hashlib
import hmac

from django.db.models import QuerySet

from marketplace.models import ApiKey, Organization

KEY_PREFIX = "gpb"


def hash_api_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_key_prefix_of(raw: str) -> str | None:
    """The public prefix of a raw key (``gpb_ab12cd34``), or None if it is not shaped like one."""
    parts = raw.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 8 or not parts[2]:
        return None
    return f"{parts[0]}_{parts[1]}"


def api_key_lookup(*, raw: str) -> ApiKey | None:
    """Return the active key matching ``raw`` whose organization may trade, else None."""
    prefix = api_key_prefix_of(raw)
    if prefix is None:
        return None
    api_key = (
        ApiKey.objects.select_related("organization")
        .filter(prefix=prefix, revoked_at__isnull=True)
        .exclude(organization__status=Organization.Status.SUSPENDED)
        .first()
    )
    if api_key is None or not hmac.compare_digest(api_key.key_hash, hash_api_key(raw)):
        return None
    return api_key


def api_key_from_authorization_header(header: str) -> ApiKey | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return api_key_lookup(raw=token.strip())


def api_key_list(*, organization: Organization) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(organization=organization).order_by("-created_at", "-id")
