"""``gpb webhooks listen`` checks deliveries as the API signs them (events.signing), prints them and
forwards the verified ones; with ``--register`` it receives what the real worker delivers."""

import json
import socket
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from gpubroker import Client
from gpubroker.webhooks import verify

from events import signing
from events.models import WebhookEndpoint
from tests.conftest import wait_until
from tests.events.conftest import Receiver


@pytest.fixture
def receiver():
    receiver = Receiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_clients_verifier_accepts_what_the_server_signs_and_nothing_else(settings):
    secret = signing.endpoint_secret(signing.new_salt())
    body = b'{"id": 1, "type": "contract.created"}'
    now = int(time.time())
    header = signing.sign(secret, body, now)
    assert verify(secret, header, body)
    assert verify(secret, f"v1=deadbeef, {header}", body)  # any of several signatures
    assert not verify(secret, header, body + b" ")
    assert not verify(signing.endpoint_secret(signing.new_salt()), header, body)
    assert not verify(secret, signing.sign(secret, body, now - 301), body)  # too old: a replay
    assert verify(secret, signing.sign(secret, body, now - 301), body, tolerance=600)
    assert not verify(secret, "t=abc,v1=00", body)
    assert not verify(secret, "", body)


@pytest.mark.postgres
@pytest.mark.worker
def test_listen_refuses_a_bad_signature_and_forwards_a_good_one(as_org, receiver):
    lab = as_org("Listening Lab", "lab")
    secret = signing.endpoint_secret(signing.new_salt())
    port = free_port()
    listener = lab.popen("--json", "webhooks", "listen", "--secret", secret, "--port", str(port),
                         "--forward-to", receiver.url(), "--max-events", "1")  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    wait_until(lambda: _answers(url), timeout=30, interval=0.05)
    body = json.dumps({"id": 41, "type": "invoice.issued", "created": "2026-12-01T00:00:00Z", "data": {}}).encode()
    forged_signature = f"t={int(time.time())},v1=00"
    forged = httpx.post(url, content=body, headers={"Webhook-Id": "41", "Webhook-Signature": forged_signature})
    assert forged.status_code == 400
    signature = signing.sign(secret, body, int(time.time()))
    good = httpx.post(url, content=body, headers={"Content-Type": "application/json", "Webhook-Id": "41",
                                                  "Webhook-Signature": signature})  # fmt: skip
    assert good.status_code == 200
    stdout, stderr = listener.communicate(timeout=30)
    assert listener.returncode == 0, stderr
    refused, accepted = (json.loads(line) for line in stdout.splitlines())
    assert (refused["webhook_id"], refused["verified"]) == ("41", False)
    assert (accepted["verified"], accepted["forwarded"], accepted["event"]["type"]) == (True, 200, "invoice.issued")
    [forwarded] = receiver.requests
    assert forwarded["body"] == body
    assert forwarded["headers"]["Webhook-Signature"] == signature
    assert forwarded["headers"]["Webhook-Id"] == "41"


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True


@pytest.mark.postgres
@pytest.mark.worker
def test_listen_registers_an_endpoint_receives_the_workers_delivery_and_deletes_it(as_org, receiver, live_api):
    provider, lab = as_org("Webhook Provider", "provider"), as_org("Webhook Lab", "lab")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    with Client(provider.key, live_api) as seller:
        cluster = seller.clusters.create(name="hooks-1", gpu_model="h100-sxm-80gb", region="us-south-1",
                                         interconnect="infiniband", gpus_per_node=8, node_count=2)  # fmt: skip
        listing = seller.listings.create(cluster=cluster.id, node_count=2, starts_at=start,
                                         ends_at=start + timedelta(days=1), price_per_gpu_hour="2.10",
                                         billing_mode="committed", min_duration_hours=1)  # fmt: skip
    listener = lab.popen("--json", "webhooks", "listen", "--register", "--events", "contract.created",
                         "--forward-to", receiver.url(), "--max-events", "1")  # fmt: skip
    wait_until(lambda: WebhookEndpoint.objects.filter(organization=lab.organization).exists(), timeout=30,
               interval=0.05)  # fmt: skip
    with Client(lab.key, live_api) as buyer:
        contract = buyer.listings.book(listing.id, gpu_count=8, starts_at=start, duration_hours=2)
    stdout, stderr = listener.communicate(timeout=60)
    assert listener.returncode == 0, stderr
    [delivery] = [json.loads(line) for line in stdout.splitlines()]
    assert (delivery["verified"], delivery["forwarded"], delivery["event"]["type"]) == (True, 200, "contract.created")
    assert delivery["event"]["data"]["id"] == contract.id
    [forwarded] = receiver.requests
    assert json.loads(forwarded["body"]) == delivery["event"]
    assert "registered webhook endpoint" in stderr and "deleted webhook endpoint" in stderr
    assert not WebhookEndpoint.objects.filter(organization=lab.organization).exists(), stderr
