"""A provider's whole flow through ``gpb`` against the served API: a cluster and a listing, a node
taken out, 100,000 usage records uploaded, interrupted (Ctrl-C) and uploaded again, and the
payout statement of the month once it is closed."""

import json
import signal
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from billing.models import Invoice, UsageRecord
from billing.services import billing_period_close
from marketplace.models import Node
from tests.billing.factories import METERED, contract_create
from tests.conftest import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.worker]

NODES = 10
MINUTES = 10_000  # per node: 100,000 records of one minute each
GPUS_PER_NODE = 8


def last_month() -> date:
    first_of_this = datetime.now(UTC).date().replace(day=1)
    return (first_of_this - timedelta(days=1)).replace(day=1)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def provider(as_org):
    return as_org("Usage Provider", "provider")


@pytest.fixture
def past_contract(provider, as_org):
    """A metered contract of 10 nodes over the first 8 days of last month, booked then."""
    lab = as_org("Usage Lab", "lab")
    period = last_month()
    start = datetime(period.year, period.month, 1, tzinfo=UTC)
    return contract_create(lab=lab.organization, provider=provider.organization, starts_at=start, hours=8 * 24,
                           nodes=NODES, gpus_per_node=GPUS_PER_NODE, mode=METERED,
                           hostnames=[f"usage-node-{index:02d}" for index in range(NODES)])  # fmt: skip


def usage_file(path, contract, start: datetime) -> None:
    """Each node at full use, minute after minute: 8 GPUs x 60 s per record."""
    with path.open("w") as handle:
        for minute in range(MINUTES):
            began = iso(start + timedelta(minutes=minute))
            ended = iso(start + timedelta(minutes=minute + 1))
            for node in range(NODES):
                record = {"id": f"n{node:02d}-m{minute:05d}", "contract": contract.pk, "node": f"usage-node-{node:02d}",
                          "started_at": began, "ended_at": ended, "gpu_seconds": "480"}  # fmt: skip
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")


def test_a_provider_lists_capacity_and_takes_a_node_out(provider):
    cluster = provider.json("clusters", "create", "--name", "dc2-h100", "--gpu-model", "h100-sxm-80gb",
                            "--region", "us-east-1", "--interconnect", "roce", "--gpus-per-node", "8",
                            "--nodes", "60")  # fmt: skip
    assert [item["id"] for item in provider.json("clusters", "list")] == [cluster["id"]]
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=3)
    listing = provider.json("listings", "create", "--cluster", str(cluster["id"]), "--nodes", "3",
                            "--start", iso(start), "--end", iso(start + timedelta(days=1)), "--price", "2.10",
                            "--billing-mode", "committed")  # fmt: skip
    assert (listing["node_count"], listing["price_per_gpu_hour"], listing["status"]) == (3, "2.1000", "active")

    updated = provider.json("listings", "update", str(listing["id"]), "--price", "1.95")
    assert updated["price_per_gpu_hour"] == "1.9500"

    nodes = provider.json("nodes", "list", str(cluster["id"]))  # two pages of 50
    assert len({node["id"] for node in nodes}) == 60
    node = nodes[0]
    changed = provider.json("nodes", "set-status", str(cluster["id"]), str(node["id"]), "maintenance")
    assert changed["status"] == "maintenance"
    assert Node.objects.get(pk=node["id"]).status == "maintenance"

    withdrawn = provider.json("listings", "withdraw", str(listing["id"]))
    assert withdrawn["status"] == "withdrawn"
    assert [(item["id"], item["status"]) for item in provider.json("search", "--mine")] == [
        (listing["id"], "withdrawn")
    ]


def test_an_upload_interrupted_by_ctrl_c_and_run_again_stores_every_record_once(provider, past_contract, tmp_path):
    path = tmp_path / "usage.jsonl"
    usage_file(path, past_contract, past_contract.starts_at)
    total = NODES * MINUTES

    # Ctrl-C once a fifth is stored: the batches already sent are answered and counted, exit 130.
    running = provider.popen("--json", "usage", "upload", str(path), "--concurrency", "2")
    wait_until(lambda: UsageRecord.objects.count() >= total // 5, timeout=60, interval=0.05)
    running.send_signal(signal.SIGINT)
    stdout, stderr = running.communicate(timeout=60)
    assert running.returncode == 130, stderr
    first = json.loads(stdout)
    stored = UsageRecord.objects.count()
    assert first["interrupted"] is True
    assert (first["accepted"], first["duplicates"], first["rejected"]) == (stored, 0, 0)
    assert total // 5 <= stored < total

    # Again, whole: what was stored answers as duplicates, the rest is accepted, nothing twice.
    second = provider.json("usage", "upload", str(path), "--concurrency", "2")
    assert second == {"records": total, "batches": total // 1000, "accepted": total - stored, "duplicates": stored,
                      "rejected": 0, "interrupted": False, "rejects_file": None}  # fmt: skip
    assert UsageRecord.objects.filter(contract=past_contract).count() == total

    # The month closes; the provider's statement bills every GPU-second once: 10 nodes x 8 GPUs x
    # 10,000 minutes = 13,333.33 GPU-hours at 2.50.
    billing_period_close(period=last_month())
    [statement] = provider.json("payouts", "list")
    invoice = Invoice.objects.get(lab=past_contract.lab, period=last_month())
    assert Decimal(statement["gross"]) == invoice.total == Decimal("33333.33")
    assert provider.json("payouts", "show", str(statement["id"]))["id"] == statement["id"]


def test_rejected_records_go_to_the_rejects_file_with_why_and_exit_code_7(provider, past_contract, tmp_path):
    start = past_contract.starts_at
    path = tmp_path / "usage.csv"
    rows = ["id,contract,node,started_at,ended_at,gpu_seconds",
            f"ok-1,{past_contract.pk},usage-node-00,{iso(start)},{iso(start + timedelta(hours=1))},28800",
            f"too-much,{past_contract.pk},usage-node-01,{iso(start)},{iso(start + timedelta(hours=1))},99999",
            f"no-such-node,{past_contract.pk},elsewhere,{iso(start)},{iso(start + timedelta(hours=1))},10",
            f"whole-contract,{past_contract.pk},,{iso(start)},{iso(start + timedelta(minutes=1))},60"]  # fmt: skip
    path.write_text("\n".join(rows) + "\n")
    rejects = tmp_path / "rejects.jsonl"
    result = provider.json("usage", "upload", str(path), "--rejects", str(rejects), code=7)
    assert (result["accepted"], result["duplicates"], result["rejected"]) == (2, 0, 2)
    written = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(item["line"], item["id"], item["code"]) for item in written] == [
        (3, "too-much", "exceeds_capacity"),
        (4, "no-such-node", "unknown_node"),
    ]
    assert written[0]["record"]["gpu_seconds"] == "99999"

    # Every record refused (a 422 all_rejected for the batch): all in the rejects file, as a subprocess.
    path.write_text(rows[0] + "\n" + rows[2] + "\n")
    failed = provider.run("usage", "upload", str(path), "--rejects", str(rejects), code=7)
    assert "0 accepted, 0 duplicates, 1 rejected" in failed.stdout
    assert [json.loads(line)["id"] for line in rejects.read_text().splitlines()] == ["too-much"]
