"""A client generated from the schema by a standard generator (openapi-python-client) works
against the served API: a provider creates a cluster and a listing, a lab books it and reads
the contract, through the generated functions and models only, over real HTTP."""

import importlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from drf_spectacular.generators import SchemaGenerator

from marketplace.services import organization_create

pytest.importorskip(
    "openapi_python_client",
    reason="openapi-python-client is not installed (it is a dev dependency: pip install -r requirements-dev.txt)",
)


@pytest.fixture
def generated(tmp_path, monkeypatch):
    """Generate the client package from the schema and import it by its generated name."""
    schema_path = tmp_path / "schema.json"
    schema_path.write_text(json.dumps(SchemaGenerator().get_schema(request=None, public=True), default=str))
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({"post_hooks": []}))  # no ruff run over the generated code
    output = tmp_path / "generated"
    output.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(schema_path),
         "--meta", "none", "--config", str(config_path)],
        cwd=output, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # It still exits 0 when it leaves out an operation it cannot read: none may be left out.
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stdout + result.stderr
    [package] = [path for path in output.iterdir() if path.is_dir()]
    monkeypatch.syspath_prepend(str(output))
    yield package.name, lambda module: importlib.import_module(f"{package.name}.{module}")
    for name in [name for name in sys.modules if name == package.name or name.startswith(f"{package.name}.")]:
        del sys.modules[name]


def test_a_generated_client_creates_a_listing_books_it_and_reads_the_contract(generated, live_server, transactional_db):
    package, module = generated
    client_module, models = module("client"), module("models")
    from_api = module("types").Response

    def as_(role: str):
        organization, issued = organization_create(name=f"Generated client {role}", role=role)
        client = client_module.AuthenticatedClient(
            base_url=live_server.url, token=issued.secret, raise_on_unexpected_status=True
        )
        return organization, client

    def ok(response, status: int):
        assert isinstance(response, from_api)
        assert response.status_code == status, (response.status_code, response.content[:500])
        assert not isinstance(response.parsed, models.Error), response.parsed
        return response.parsed

    provider, provider_client = as_("provider")
    lab, lab_client = as_("lab")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)

    cluster = ok(
        module("api.clusters.clusters_create").sync_detailed(
            client=provider_client,
            body=models.ClusterCreateRequest(
                name="dc1-h100-generated",
                gpu_model="h100-sxm-80gb",
                region="us-south-1",
                interconnect=models.InterconnectEnum.INFINIBAND,
                gpus_per_node=8,
                node_count=4,
            ),
        ),
        201,
    )
    assert isinstance(cluster, models.Cluster)

    listing = ok(
        module("api.listings.listings_create").sync_detailed(
            client=provider_client,
            body=models.ListingCreateRequest(
                cluster=cluster.id,
                node_count=3,
                starts_at=start,
                ends_at=start + timedelta(days=2),
                price_per_gpu_hour="2.10",
                billing_mode=models.BillingModeEnum.METERED,
                min_duration_hours=1,
            ),
            idempotency_key="generated-client-listing",
        ),
        201,
    )
    assert isinstance(listing, models.Listing)
    assert (listing.available_nodes, listing.available_gpus) == (3, 24)

    booked = ok(
        module("api.listings.listings_book_create").sync_detailed(
            listing.id,
            client=lab_client,
            body=models.BookingRequest(gpu_count=16, starts_at=start, duration_hours=24),
            idempotency_key="generated-client-book",
        ),
        201,
    )
    assert isinstance(booked, models.ContractDetail)

    contract = ok(module("api.contracts.contracts_retrieve").sync_detailed(booked.id, client=lab_client), 200)
    assert isinstance(contract, models.ContractDetail)
    assert (contract.id, contract.listing, contract.provider, contract.lab) == (
        booked.id,
        listing.id,
        provider.name,
        lab.name,
    )
    assert (contract.gpu_count, contract.node_count, len(contract.nodes)) == (16, 2, 2)
    assert (contract.starts_at, contract.ends_at) == (start, start + timedelta(hours=24))
    assert contract.price_per_gpu_hour.startswith("2.10")

    request = ok(
        module("api.compute_requests.compute_requests_create").sync_detailed(
            client=lab_client,
            body=models.ComputeRequestCreateRequest(
                gpu_model="h100-sxm-80gb",
                gpu_count=8,
                starts_at=start,
                duration_hours=4,
                max_price_per_gpu_hour="2.50",
                billing_mode=models.BillingModeEnum.METERED,
            ),
            idempotency_key="generated-client-request",
        ),
        201,
    )
    assert isinstance(request, models.ComputeRequest)
