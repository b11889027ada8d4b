"""A lab's whole flow through ``gpb`` against the served API: search, book, a request followed with
``--wait`` until the matching engine (a real worker) fills it, contracts, the invoice preview."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from broker.models import ComputeRequest, Contract

pytestmark = [pytest.mark.postgres, pytest.mark.worker]


def whole_hour(hours: int) -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=hours)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def market(as_org):
    """A provider's cluster and metered listing, made with gpb, and a lab."""
    provider, lab = as_org("Client Provider", "provider"), as_org("Client Lab", "lab")
    start = whole_hour(2)
    cluster = provider.json("clusters", "create", "--name", "cli-h100", "--gpu-model", "h100-sxm-80gb",
                            "--region", "us-south-1", "--interconnect", "infiniband", "--gpus-per-node", "8",
                            "--nodes", "6")  # fmt: skip
    listing = provider.json("listings", "create", "--cluster", str(cluster["id"]), "--nodes", "4",
                            "--start", iso(start), "--end", iso(start + timedelta(days=2)), "--price", "2.10",
                            "--billing-mode", "metered", "--min-hours", "1")  # fmt: skip
    return provider, lab, start, cluster, listing


def test_a_lab_searches_books_waits_for_a_request_and_reads_contracts_and_the_preview(market):
    provider, lab, start, cluster, listing = market

    found = lab.json("search", "--gpu-model", "h100-sxm-80gb", "--gpus", "16", "--start", iso(start),
                     "--hours", "24", "--max-price", "2.50")  # fmt: skip
    assert [(item["id"], item["available_gpus"]) for item in found] == [(listing["id"], 32)]

    book = lab.json("market", "book", "h100-sxm-80gb", "--start", iso(start), "--end", iso(start + timedelta(hours=24)))
    assert [(level["price_per_gpu_hour"], level["gpus"]) for level in book["asks"]] == [("2.1000", 32)]

    booked = lab.json("book", str(listing["id"]), "--gpus", "16", "--start", iso(start), "--hours", "24")
    trades = lab.json("market", "trades", "h100-sxm-80gb")
    assert [(trade["price_per_gpu_hour"], trade["gpu_count"], trade["hours"]) for trade in trades] == [
        ("2.1000", 16, 24)
    ]
    assert (booked["listing"], booked["gpu_count"], booked["node_count"], len(booked["nodes"])) == (
        listing["id"], 16, 2, 2,
    )  # fmt: skip

    # The rest of the listing goes to a request, filled by the worker's matching run.
    request = lab.json("requests", "create", "--gpu-model", "h100-sxm-80gb", "--gpus", "16", "--start", iso(start),
                       "--hours", "12", "--max-price", "2.50", "--wait", "--poll-interval", "0.1",
                       "--timeout", "60")  # fmt: skip
    assert request["status"] == "filled"
    [filled_by] = request["contracts"]
    assert ComputeRequest.objects.get(pk=request["id"]).status == "filled"
    assert Contract.objects.get(pk=filled_by).request_id == request["id"]

    listed = lab.json("contracts", "list")
    assert sorted(contract["id"] for contract in listed) == sorted([booked["id"], filled_by])
    shown = lab.json("contracts", "show", str(filled_by))
    assert (shown["gpu_count"], shown["node_count"], shown["provider"]) == (16, 2, "Client Provider")

    # Nothing is left: a second booking is a conflict, exit code 3, with the API's code.
    refused = lab("book", str(listing["id"]), "--gpus", "8", "--start", iso(start), "--hours", "1", code=3)
    assert "capacity_unavailable" in refused.stderr

    terminated = lab.json("contracts", "terminate", str(booked["id"]))
    assert terminated["status"] == "terminated"

    preview = lab.json("invoices", "preview", "--period", f"{start:%Y-%m}")
    assert preview["period"] == f"{start:%Y-%m}"
    assert "total" in preview and isinstance(preview["lines"], list)

    table = lab("requests", "show", str(request["id"])).stdout
    assert "filled" in table and str(filled_by) in table


def test_a_request_that_cannot_fill_is_followed_until_the_timeout_with_exit_code_6(market):
    provider, lab, start, cluster, listing = market
    result = lab("requests", "create", "--gpu-model", "h100-sxm-80gb", "--gpus", "64", "--start", iso(start),
                 "--hours", "4", "--max-price", "2.50", "--wait", "--poll-interval", "0.1", "--timeout", "1",
                 code=6)  # fmt: skip
    assert "still open" in result.stderr
    [request] = lab.json("requests", "list", "--status", "open")
    cancelled = lab.json("requests", "cancel", str(request["id"]))
    assert cancelled["status"] == "cancelled"


def test_the_command_line_as_a_subprocess_prints_tables_and_documented_exit_codes(market):
    provider, lab, start, cluster, listing = market
    table = lab.run("search", "--gpu-model", "h100-sxm-80gb", "--start", iso(start), "--hours", "4").stdout
    assert f"{listing['id']}" in table and "Client Provider" in table and "cli-h100" in table

    # A provider may not book: 403, exit code 4; a listing that does not exist: 404, exit code 1.
    denied = provider.run("book", str(listing["id"]), "--gpus", "8", "--start", iso(start), "--hours", "1",
                                 code=4)  # fmt: skip
    assert "permission_denied" in denied.stderr
    missing = lab.run("--json", "contracts", "show", "999999", code=1)
    assert missing.stdout == ""
    assert '"code": "not_found"' in missing.stderr
    # A bad option is a usage error, exit code 2, before any request.
    lab.run("book", str(listing["id"]), "--gpus", "zero", "--start", iso(start), "--hours", "1", code=2)
    # A bad key: exit code 4.
    lab.key = "gpb_wrong"
    lab.run("contracts", "list", code=4)


def test_gpb_login_checks_the_key_and_later_commands_use_the_stored_one(market, tmp_path):
    provider, lab, start, cluster, listing = market
    key, lab.key = lab.key, ""  # from here on, only the config file has it
    stored = lab.run("--url", lab.url, "login", input=key + "\n")
    assert "Stored the key for Client Lab" in stored.stderr
    assert key not in stored.stdout + stored.stderr
    config = lab.home / ".config" / "gpubroker" / "config.toml"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    env_free = lab.run("--json", "whoami", env_url=False)
    assert json.loads(env_free.stdout)["name"] == "Client Lab"
    # A key the API refuses is not stored: exit code 4, the stored one stays.
    lab.run("login", "--api-key", "gpb_not_a_key", code=4)
    assert key in config.read_text()


def test_a_lab_resells_unused_hours_of_a_committed_contract(as_org):
    provider, lab, other_lab = as_org("Resale Provider", "provider"), as_org("Reseller Lab", "lab"), as_org(
        "Second Lab", "lab"
    )
    start = whole_hour(2)
    cluster = provider.json("clusters", "create", "--name", "resale-h100", "--gpu-model", "h100-sxm-80gb",
                            "--region", "us-south-1", "--interconnect", "infiniband", "--gpus-per-node", "8",
                            "--nodes", "2")  # fmt: skip
    listing = provider.json("listings", "create", "--cluster", str(cluster["id"]), "--nodes", "2",
                            "--start", iso(start), "--end", iso(start + timedelta(days=1)), "--price", "2.00",
                            "--billing-mode", "committed", "--min-hours", "1")  # fmt: skip
    contract = lab.json("book", str(listing["id"]), "--gpus", "16", "--start", iso(start), "--hours", "24")
    resale = lab.json("listings", "create", "--contract", str(contract["id"]), "--nodes", "1",
                      "--start", iso(start + timedelta(hours=12)), "--end", iso(start + timedelta(hours=24)),
                      "--price", "3.00", "--min-hours", "1")  # fmt: skip
    assert (resale["resale"], resale["node_count"], resale["price_per_gpu_hour"]) == (True, 1, "3.0000")
    found = other_lab.json("search", "--gpu-model", "h100-sxm-80gb", "--start", iso(start + timedelta(hours=12)),
                           "--hours", "6")  # fmt: skip
    assert [item["id"] for item in found] == [resale["id"]]
    # Both a cluster and a contract, or neither: a usage error before any request.
    lab("listings", "create", "--cluster", "1", "--contract", str(contract["id"]), "--nodes", "1",
        "--start", iso(start), "--end", iso(start + timedelta(hours=1)), "--price", "3.00", code=2)  # fmt: skip


def test_a_lab_takes_a_quote_and_accepts_it(market):
    provider, lab, start, cluster, listing = market
    quote = lab.json("quotes", "create", "--gpu-model", "h100-sxm-80gb", "--gpus", "16", "--start", iso(start),
                     "--hours", "10")  # fmt: skip
    assert quote["status"] == "open"
    assert [(line["listing_id"], line["gpu_count"], line["price_per_gpu_hour"]) for line in quote["lines"]] == [
        (listing["id"], 16, "2.1000")
    ]
    assert quote["total_amount"] == "336.00"  # 16 GPUs x 10 hours x 2.10
    accepted = lab.json("quotes", "accept", str(quote["id"]))
    [contract_id] = accepted["contract_ids"]
    assert (accepted["status"], Contract.objects.get(pk=contract_id).gpu_count) == ("accepted", 16)
    # Terms nothing fills now: a conflict, exit code 3, with the API's code.
    refused = lab("quotes", "create", "--gpu-model", "h100-sxm-80gb", "--gpus", "4096", "--start", iso(start),
                  "--hours", "10", code=3)  # fmt: skip
    assert "capacity_unavailable" in refused.stderr
    assert [item["id"] for item in lab.json("quotes", "list")] == [quote["id"]]
