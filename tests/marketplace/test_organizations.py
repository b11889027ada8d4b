import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from marketplace.models import ApiKey, Organization

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("role", "is_provider", "is_lab"), [("provider", True, False), ("lab", False, True), ("both", True, True)]
)
def test_create_organization_prints_a_working_key_last(role, is_provider, is_lab, capsys):
    call_command("create_organization", f"Org {role}", "--role", role)
    lines = capsys.readouterr().out.strip().splitlines()
    secret = lines[-1]
    organization = Organization.objects.get(name=f"Org {role}")
    assert (organization.is_provider, organization.is_lab) == (is_provider, is_lab)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    response = client.get("/api/v1/organization")
    assert response.status_code == 200
    assert response.json()["role"] == role


def test_create_organization_refuses_duplicate_name():
    call_command("create_organization", "Dup", "--role", "lab")
    with pytest.raises(CommandError):
        call_command("create_organization", "dup", "--role", "lab")
    assert Organization.objects.filter(name__iexact="dup").count() == 1
    assert ApiKey.objects.count() == 1


def test_organization_must_have_a_role_in_the_database():
    from django.db import IntegrityError

    with pytest.raises(IntegrityError):
        Organization.objects.create(name="Nobody", is_provider=False, is_lab=False)


def test_admin_creates_organization_and_shows_key_once(admin_client):
    response = admin_client.post(
        "/admin/marketplace/organization/add/",
        {
            "name": "Via Admin",
            "is_provider": "on",
            "status": "active",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
            "api_keys-TOTAL_FORMS": "0",
            "api_keys-INITIAL_FORMS": "0",
        },
        follow=True,
    )
    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    secret = next(m for m in messages if "API key" in m).split(": ")[-1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/organization").json()["name"] == "Via Admin"
