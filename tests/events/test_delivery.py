"""Sending webhooks in-process, to a real HTTP receiver on 127.0.0.1: signatures, retries and
their backoff, giving up after 3 days, the leases that keep two runs from sending one delivery,
and where a webhook may go (checked against the address a name resolves to at delivery)."""

import json
import socket
from datetime import timedelta

import pytest
import time_machine
from django.db import transaction
from django.utils import timezone

from events import services, webhooks
from events.models import EventType, WebhookDelivery, WebhookEndpoint
from events.services import GIVE_UP_AFTER, LEASE, event_publish, retry_delay_seconds, webhook_deliveries_send
from tests.events.conftest import register

pytestmark = pytest.mark.django_db


def publish(client, type=EventType.CONTRACT_CREATED, **data) -> int:
    (event_id,) = event_publish(
        organization_id=client.organization.pk, type=type, data={"object": "contract", "id": 7, **data}
    )
    return event_id


def test_a_delivery_is_signed_with_the_secret_shown_at_registration(lab_client, receiver, loopback_allowed):
    endpoint = register(lab_client, receiver.url(), event_types=["contract.created"])
    event_id = publish(lab_client, status="active")

    assert webhook_deliveries_send() == 1
    (request,) = receiver.requests
    assert receiver.verified(endpoint["secret"], request)
    assert request["headers"]["Webhook-Id"] == str(event_id)
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["User-Agent"] == "gpubroker-webhooks/1"
    assert json.loads(request["body"]) == lab_client.get(f"/api/v1/events/{event_id}").json()
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 1, 200)
    assert delivery.succeeded_at is not None and delivery.next_attempt_at is None
    assert webhook_deliveries_send() == 0  # sent once


def test_only_enabled_endpoints_subscribed_to_the_type_get_it(lab_client, provider_client, receiver, loopback_allowed):
    register(lab_client, receiver.url("/all"))
    register(lab_client, receiver.url("/invoices"), event_types=["invoice.issued"])
    disabled = register(lab_client, receiver.url("/disabled"))
    lab_client.post(f"/api/v1/webhook-endpoints/{disabled['id']}/disable")
    register(provider_client, receiver.url("/provider"))

    event_id = publish(lab_client)
    webhook_deliveries_send()
    assert sorted(r["path"] for r in receiver.requests) == ["/all"]
    assert receiver.event_ids() == [event_id]


def test_a_failure_is_retried_with_backoff(lab_client, receiver, loopback_allowed):
    register(lab_client, receiver.url())
    receiver.statuses = [500, 200]
    publish(lab_client)
    now = timezone.now()
    with time_machine.travel(now, tick=False):
        webhook_deliveries_send()
        delivery = WebhookDelivery.objects.get()
        assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
        assert delivery.last_error == "HTTP 500"
        assert timedelta(seconds=24) <= delivery.next_attempt_at - now <= timedelta(seconds=30)
        assert webhook_deliveries_send() == 0  # not due yet
    with time_machine.travel(now + timedelta(seconds=31), tick=False):
        assert webhook_deliveries_send() == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code, delivery.last_error) == (
        "succeeded", 2, 200, ""
    )  # fmt: skip
    assert len(receiver.requests) == 2
    assert receiver.event_ids()[0] == receiver.event_ids()[1]  # the same event: receivers dedupe by id


@pytest.mark.parametrize("attempts", [1, 2, 3, 5, 7, 8, 20, 1000])
def test_backoff_doubles_from_30_seconds_up_to_an_hour(attempts):
    base = min(30 * 2 ** (attempts - 1), 3600)
    delays = [retry_delay_seconds(attempts) for _ in range(50)]
    assert all(0.8 * base <= delay <= base for delay in delays)


def test_after_3_days_the_endpoint_is_disabled_and_an_event_says_so(lab_client, receiver, loopback_allowed):
    failing = register(lab_client, receiver.url("/failing"), event_types=["contract.created"])
    watcher = register(lab_client, receiver.url("/watcher"), event_types=["webhook_endpoint.disabled"])
    receiver.failing_paths = {"/failing"}
    publish(lab_client)
    delivery = WebhookDelivery.objects.get()
    deadline = delivery.created_at + GIVE_UP_AFTER

    with time_machine.travel(deadline - timedelta(minutes=5), tick=False):
        WebhookDelivery.objects.update(next_attempt_at=timezone.now(), attempts=10)  # an hour apart by now
        webhook_deliveries_send()
        delivery.refresh_from_db()
        assert delivery.status == "pending" and delivery.next_attempt_at == deadline  # the last try, at 3 days
        assert WebhookEndpoint.objects.get(pk=failing["id"]).status == "enabled"

    with time_machine.travel(deadline + timedelta(seconds=1), tick=False):
        webhook_deliveries_send()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.next_attempt_at) == ("failed", None)
    endpoint = WebhookEndpoint.objects.get(pk=failing["id"])
    assert endpoint.status == "disabled" and "3 days" in endpoint.disabled_reason

    events = lab_client.get("/api/v1/events?type=webhook_endpoint.disabled").json()["results"]
    assert [event["data"]["id"] for event in events] == [failing["id"]]
    assert events[0]["data"]["status"] == "disabled"
    # Told through the organization's other endpoints, never the disabled one.
    assert [r["path"] for r in receiver.requests if json.loads(r["body"])["type"] == "webhook_endpoint.disabled"] == [
        "/watcher"
    ]
    sent_at = int((deadline + timedelta(seconds=1)).timestamp())
    assert receiver.verified(watcher["secret"], receiver.requests[-1], now=sent_at)


def test_a_claimed_delivery_is_leased_and_sent_again_only_after_the_lease(lab_client, receiver, loopback_allowed):
    register(lab_client, receiver.url())
    publish(lab_client)
    now = timezone.now()
    with time_machine.travel(now, tick=False):
        (claimed,) = services._claim(10)  # a worker took it, and died before recording anything
        assert services._claim(10) == []  # no other run sends it meanwhile
        assert webhook_deliveries_send() == 0
    with time_machine.travel(now + LEASE + timedelta(seconds=1), tick=False):
        (again,) = services._claim(10)  # at least once: the lease ended
        services._record([claimed], [webhooks.Outcome(500, "HTTP 500")])  # the first run's late outcome
        delivery = WebhookDelivery.objects.get()
        assert (delivery.attempts, delivery.last_status_code) == (2, None)  # ignored: its lease had ended
        services._record([again], [webhooks.Outcome(200, "")])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)


def test_a_redirect_is_not_followed(lab_client, receiver, loopback_allowed):
    register(lab_client, receiver.url())
    receiver.statuses = [302]
    publish(lab_client)
    webhook_deliveries_send()
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.last_status_code) == ("pending", 302)
    assert "redirect" in delivery.last_error
    assert [r["path"] for r in receiver.requests] == ["/hook"]


@pytest.mark.parametrize(
    ("address", "allow_loopback", "why"),
    [
        ("::ffff:127.0.0.1", False, "a loopback address"),
        ("::ffff:127.0.0.1", True, None),
        ("::ffff:169.254.169.254", True, "a link-local address"),
        ("169.254.169.254", True, "a link-local address"),
        ("::", True, "an unspecified address"),
        ("ff02::1", True, "a multicast address"),
        ("192.0.2.1", True, "a private address"),  # documentation range
        ("93.184.216.34", False, None),
        ("2606:4700::1111", False, None),
    ],
)
def test_address_refusals_name_their_rule(address, allow_loopback, why):
    assert webhooks.address_refusal(webhooks._address(address), allow_loopback=allow_loopback) == why


def test_a_timeout_is_a_failure(lab_client, receiver, loopback_allowed, monkeypatch):
    import urllib3

    monkeypatch.setattr(webhooks, "_TIMEOUT", urllib3.Timeout(connect=1, read=0.2))
    register(lab_client, receiver.url())
    receiver.statuses = [-1]  # the receiver takes a second to answer
    publish(lab_client)
    webhook_deliveries_send()
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.last_status_code) == ("pending", None)
    assert "Timeout" in delivery.last_error


def fake_resolver(monkeypatch, answers: dict[str, list[str]]):
    """getaddrinfo as if DNS answered these addresses for these names; counts the lookups."""
    real = socket.getaddrinfo
    lookups = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        family = lambda address: socket.AF_INET6 if ":" in address else socket.AF_INET  # noqa: E731
        return [(family(a), socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(webhooks.socket, "getaddrinfo", getaddrinfo)
    return lookups


@pytest.mark.parametrize(
    ("addresses", "allow_loopback", "why"),
    [
        (["127.0.0.1"], False, "loopback"),
        (["10.1.2.3"], False, "private"),
        (["10.1.2.3"], True, "private"),
        (["169.254.169.254"], True, "link-local"),
        (["93.184.216.34", "192.168.0.7"], True, "private"),  # any forbidden address refuses the name
        (["::ffff:10.0.0.1"], True, "private"),
        (["fd00::1"], True, "private"),
    ],
)
def test_a_name_resolving_to_a_forbidden_address_is_refused_at_delivery(
    lab_client, receiver, settings, monkeypatch, addresses, allow_loopback, why
):
    register(lab_client, "https://hooks.example.com/hook")  # a name: fine at registration
    settings.WEBHOOK_ALLOW_LOOPBACK = allow_loopback
    fake_resolver(monkeypatch, {"hooks.example.com": addresses})
    publish(lab_client)
    assert webhook_deliveries_send() == 1
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and delivery.attempts == 1  # retried like any failure
    assert delivery.last_error.startswith("refused:") and why in delivery.last_error
    assert receiver.requests == []


def test_the_checked_address_is_the_one_connected_to(lab_client, receiver, loopback_allowed, monkeypatch):
    """A name is resolved once per attempt: a second answer (a rebinding DNS) is never asked for."""
    register(lab_client, f"http://localhost:{receiver.port}/hook")
    lookups = fake_resolver(monkeypatch, {"localhost": ["127.0.0.1"]})
    publish(lab_client)
    webhook_deliveries_send()
    assert lookups == ["localhost"]
    (request,) = receiver.requests
    assert request["headers"]["Host"] == f"localhost:{receiver.port}"
    assert WebhookDelivery.objects.get().status == "succeeded"


def test_plain_http_needs_the_loopback_allowance_at_delivery_too(lab_client, receiver, settings):
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    register(lab_client, receiver.url())
    settings.WEBHOOK_ALLOW_LOOPBACK = False  # the setting changed after registration
    publish(lab_client)
    webhook_deliveries_send()
    assert "loopback" in WebhookDelivery.objects.get().last_error
    assert receiver.requests == []


def test_events_of_a_rolled_back_transaction_send_nothing(
    lab_client, receiver, loopback_allowed, django_capture_on_commit_callbacks
):
    register(lab_client, receiver.url())
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(RuntimeError), transaction.atomic():
        publish(lab_client)
        raise RuntimeError("the change failed")
    assert callbacks == []
    assert not WebhookDelivery.objects.exists()
    assert webhook_deliveries_send() == 0
    assert receiver.requests == []


def test_publishing_costs_one_statement_and_queues_only_when_there_are_deliveries(
    lab_client, loopback_allowed, django_assert_num_queries, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks, django_assert_num_queries(1):
        publish(lab_client)
    assert callbacks == []  # no endpoint: no task, no Redis round trip
    register(lab_client, "http://127.0.0.1:9/hook")
    with django_capture_on_commit_callbacks() as callbacks, django_assert_num_queries(1):
        publish(lab_client)
    assert len(callbacks) == 1
    assert WebhookDelivery.objects.count() == 1


def test_publishing_survives_a_session_that_discarded_its_state(lab_client):
    """A pooler's DISCARD ALL (or a DEALLOCATE ALL) between transactions costs a new plan, never an error."""
    from django.db import connection

    publish(lab_client)
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
        cursor.execute("DISCARD PLANS")
    assert publish(lab_client)


def test_a_dedupe_key_publishes_and_delivers_once(lab_client, loopback_allowed):
    register(lab_client, "http://127.0.0.1:9/hook")
    for _ in range(2):
        event_publish(
            organization_id=lab_client.organization.pk,
            type=EventType.CONTRACT_ENDING,
            data={},
            dedupe_key="contract.ending:1:1",
        )
    assert WebhookDelivery.objects.count() == 1


def test_an_answer_longer_than_the_cap_is_not_read_whole(lab_client, loopback_allowed):
    """A receiver that streams a huge body gets its connection closed, not read to the end."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    sent = []

    class Endless(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            try:
                for _ in range(10_000):
                    self.wfile.write(b"x" * 65536)
                    sent.append(1)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        register(lab_client, f"http://127.0.0.1:{server.server_address[1]}/hook")
        publish(lab_client)
        webhook_deliveries_send()
        assert WebhookDelivery.objects.get().status == "succeeded"
        assert len(sent) < 10_000
    finally:
        server.shutdown()
        server.server_close()


def test_https_verifies_the_certificate_for_the_urls_host(lab_client, loopback_allowed, monkeypatch, tmp_path):
    """The connection goes to the checked address, but TLS still checks the URL's host name: a
    certificate nobody vouches for is a failed attempt, never a delivery."""
    import shutil
    import ssl
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    if not shutil.which("openssl"):
        pytest.skip("needs openssl to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=hooks.test",
         "-addext", "subjectAltName=DNS:hooks.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        register(lab_client, f"https://hooks.test:{server.server_address[1]}/hook")
        fake_resolver(monkeypatch, {"hooks.test": ["127.0.0.1"]})
        publish(lab_client)
        webhook_deliveries_send()
        delivery = WebhookDelivery.objects.get()
        assert delivery.status == "pending" and "CERTIFICATE_VERIFY_FAILED" in delivery.last_error
        assert received == []
    finally:
        server.shutdown()
        server.server_close()
