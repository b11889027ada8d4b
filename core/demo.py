"""The demo market that `make run` serves."""

from marketplace.models import ApiKey, Organization
from marketplace.services import api_key_create, organization_create

DEMO_KEY_NAME = "demo"
DEMO_ORGANIZATIONS = [
    ("Colossus Compute", "provider"),
    ("Frontier Lab", "lab"),
]


def _organization_with_fresh_key(name: str, role: str) -> tuple[Organization, str]:
    """Return the organization and a new demo key; older demo keys are revoked."""
    organization = Organization.objects.filter(name=name).first()
    if organization is None:
        organization, issued = organization_create(name=name, role=role, key_name=DEMO_KEY_NAME)
        return organization, issued.secret
    from django.utils import timezone

    ApiKey.objects.filter(organization=organization, name=DEMO_KEY_NAME, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    return organization, api_key_create(organization=organization, name=DEMO_KEY_NAME).secret


def seed_demo_market() -> dict[str, str]:
    """Create or refresh the demo organizations; return their fresh API keys by name."""
    keys = {}
    for name, role in DEMO_ORGANIZATIONS:
        _, secret = _organization_with_fresh_key(name, role)
        keys[f"{name} ({role})"] = secret
    return keys
