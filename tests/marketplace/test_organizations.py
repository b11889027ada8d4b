import re

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from marketplace.models import ApiKey, Organization
from tests.conftest import assert_error

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
    )
    assert response.status_code == 200
    [secret] = re.findall(r'<code class="api-key-secret">([\w-]+)</code>', response.content.decode())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/organization").json()["name"] == "Via Admin"


class TestKeyScopes:
    def _key(self, client, **body) -> dict:
        response = client.post("/api/v1/api-keys", {"name": "k", **body}, format="json")
        assert response.status_code == 201, response.content
        return response.json()

    def _as(self, secret: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client

    def test_a_key_is_full_unless_asked_read_only_and_its_scope_is_listed(self, provider_client):
        full, read_only = self._key(provider_client), self._key(provider_client, scope="read_only")
        assert (full["scope"], read_only["scope"]) == ("full", "read_only")
        listed = {key["id"]: key["scope"] for key in provider_client.get("/api/v1/api-keys").json()["results"]}
        assert (listed[full["id"]], listed[read_only["id"]]) == ("full", "read_only")

    def test_a_read_only_key_reads_but_changes_nothing(self, provider_client):
        reader = self._as(self._key(provider_client, scope="read_only")["secret"])
        assert reader.get("/api/v1/api-keys").status_code == 200
        assert reader.get("/api/v1/clusters").status_code == 200
        keys_before = ApiKey.objects.count()
        error = assert_error(reader.post("/api/v1/api-keys", {"name": "minted"}, format="json"), 403)
        assert "read-only" in error["message"]
        assert_error(reader.post(f"/api/v1/api-keys/{provider_client.organization.api_keys.first().pk}/revoke"), 403)
        cluster = {"name": "c", "gpu_model": "h100-sxm-80gb", "region": "us-east-1", "interconnect": "infiniband",
                   "gpus_per_node": 8, "node_count": 1}  # fmt: skip
        assert_error(reader.post("/api/v1/clusters", cluster, format="json"), 403)
        assert ApiKey.objects.count() == keys_before
        assert not ApiKey.objects.filter(revoked_at__isnull=False).exists()

    def test_an_unknown_scope_is_400(self, provider_client):
        error = assert_error(provider_client.post("/api/v1/api-keys", {"scope": "admin"}, format="json"), 400)
        assert "scope" in error["fields"]
