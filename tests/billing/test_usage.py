"""Usage ingestion: POST/GET /api/v1/usage and billing.services.usage_ingest."""

import json
import threading
from contextlib import contextmanager
from datetime import date
from decimal import Decimal

import pytest
import time_machine
from django.db import DEFAULT_DB_ALIAS, IntegrityError, OperationalError, connection, connections, transaction

from billing.locks import USAGE_LOCK
from billing.models import UsageRecord, UsageTotal
from billing.services import usage_ingest, usage_totals_rebuild
from core.db import bulk_insert
from tests.billing.conftest import METERED_START, NODE_NAMES, SPANNING_START
from tests.billing.factories import METERED, close, contract_create, hours_later, make_lab, record, utc
from tests.conftest import assert_error, make_client

URL = "/api/v1/usage"
NOW = utc(2026, 10, 20, 12, 30)
H1 = hours_later(METERED_START, 1)  # the metered contract's first hour ends
H2 = hours_later(METERED_START, 2)


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


pytestmark = pytest.mark.django_db


def post(client, records):
    return client.post(URL, {"records": records}, format="json")


def stored() -> list[tuple]:
    return list(UsageRecord.objects.order_by("event_id").values_list("event_id", "gpu_seconds"))


class TestAcceptDuplicateReject:
    def test_each_record_is_accepted_duplicate_or_rejected_and_valid_ones_are_kept(
        self, provider_client, metered_contract, foreign_contract, clock
    ):
        contract = metered_contract
        records = [
            record("ok-1", contract, METERED_START, H1, 3600),
            record("ok-1", contract, METERED_START, H1, 3600),  # again in the same call
            record("foreign", foreign_contract, METERED_START, H1, 10),
            record("before", contract, hours_later(METERED_START, -1), METERED_START, 10),
            record("after", contract, hours_later(METERED_START, 47), hours_later(METERED_START, 49), 10),
            record("too-much", contract, METERED_START, H1, "57600.001"),  # 16 GPUs x 3,600 s is 57,600
            record("ok-full", contract, H1, H2, 57600),
            record("node-too-much", contract, METERED_START, H1, 28801, node=NODE_NAMES[0]),
            record("ok-node", contract, METERED_START, H1, 28800, node=NODE_NAMES[1]),
            record("unknown-node", contract, METERED_START, H1, 1, node="gpu-x99"),
            record("no-such-contract", contract, METERED_START, H1, 1) | {"contract": 2**40},
            record("ok-decimals", contract, METERED_START, H1, 1234.567),
        ]
        response = post(provider_client, records)

        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) == {"accepted", "duplicates", "rejected"}
        assert sorted(body["accepted"]) == ["ok-1", "ok-decimals", "ok-full", "ok-node"]
        assert body["duplicates"] == ["ok-1"]
        assert sorted((r["index"], r["id"], r["code"]) for r in body["rejected"]) == [
            (2, "foreign", "unknown_contract"),
            (3, "before", "outside_contract"),
            (4, "after", "outside_contract"),
            (5, "too-much", "exceeds_capacity"),
            (7, "node-too-much", "exceeds_capacity"),
            (9, "unknown-node", "unknown_node"),
            (10, "no-such-contract", "unknown_contract"),
        ]
        assert all(r["message"] for r in body["rejected"])
        assert stored() == [
            ("ok-1", Decimal("3600.000")),
            ("ok-decimals", Decimal("1234.567")),
            ("ok-full", Decimal("57600.000")),
            ("ok-node", Decimal("28800.000")),
        ]
        node_record = UsageRecord.objects.get(event_id="ok-node")
        assert node_record.node.hostname == NODE_NAMES[1]
        assert node_record.period.isoformat() == "2026-10-01"

    def test_a_record_sent_again_is_counted_once_and_reported_as_duplicate(
        self, provider_client, metered_contract, clock
    ):
        batch = [record(f"r{i}", metered_contract, METERED_START, H1, 100 + i) for i in range(3)]
        assert post(provider_client, batch).json()["accepted"] == ["r0", "r1", "r2"]

        # A retry, even with changed figures, is the same event: the first version stands.
        retry = batch[:2] + [record("r3", metered_contract, METERED_START, H1, 7)]
        retry[0] = retry[0] | {"gpu_seconds": 999}
        body = post(provider_client, retry).json()

        assert (body["accepted"], sorted(body["duplicates"]), body["rejected"]) == (["r3"], ["r0", "r1"], [])
        assert stored() == [
            ("r0", Decimal("100.000")),
            ("r1", Decimal("101.000")),
            ("r2", Decimal("102.000")),
            ("r3", Decimal("7.000")),
        ]

    def test_an_invalid_copy_of_an_id_is_rejected_and_a_valid_copy_accepted(
        self, provider_client, metered_contract, clock
    ):
        records = [
            record("twice", metered_contract, METERED_START, H1, 99999),  # more than 16 GPUs deliver
            record("twice", metered_contract, METERED_START, H1, 5),
            record("twice", metered_contract, METERED_START, H1, 6),
        ]
        body = post(provider_client, records).json()
        assert body["accepted"] == ["twice"]
        assert body["duplicates"] == ["twice"]
        assert [(r["index"], r["code"]) for r in body["rejected"]] == [(0, "exceeds_capacity")]
        assert stored() == [("twice", Decimal("5.000"))]

    def test_event_ids_belong_to_each_provider(self, provider_client, other_provider_client, lab_client, clock):
        other_contract = contract_create(
            lab=lab_client.organization,
            provider=other_provider_client.organization,
            starts_at=METERED_START,
            hours=4,
            mode=METERED,
        )
        mine = contract_create(
            lab=lab_client.organization,
            provider=provider_client.organization,
            starts_at=METERED_START,
            hours=4,
            mode=METERED,
        )
        assert post(provider_client, [record("e-1", mine, METERED_START, H1, 5)]).json()["accepted"] == ["e-1"]
        body = post(other_provider_client, [record("e-1", other_contract, METERED_START, H1, 6)]).json()
        assert body["accepted"] == ["e-1"]
        assert UsageRecord.objects.filter(event_id="e-1").count() == 2

    def test_another_providers_contract_is_rejected(self, other_provider_client, metered_contract, clock):
        error = assert_error(
            post(other_provider_client, [record("x", metered_contract, METERED_START, H1, 5)]), 422, "all_rejected"
        )
        assert error["fields"]["rejected"][0]["code"] == "unknown_contract"
        assert not UsageRecord.objects.exists()


class TestAllRejected:
    """A batch of which nothing was stored is not a success: a 422 that gives each record's reason."""

    def test_a_batch_whose_every_record_is_rejected_is_a_422_with_the_reasons(
        self, provider_client, metered_contract, clock
    ):
        records = [
            record("early", metered_contract, hours_later(METERED_START, -1), METERED_START, 10),
            record("too-much", metered_contract, METERED_START, H1, 99999),
            {"contract": metered_contract.pk},
        ]
        error = assert_error(post(provider_client, records), 422, "all_rejected")
        assert error["message"].startswith("Nothing was stored: all 3 record(s) were rejected; record 0 (id 'early'): ")
        assert set(error["fields"]) == {"rejected"}
        assert [(r["index"], r["id"], r["code"]) for r in error["fields"]["rejected"]] == [
            (0, "early", "outside_contract"),
            (1, "too-much", "exceeds_capacity"),
            (2, None, "invalid"),
        ]
        assert all(set(r) == {"index", "id", "code", "message"} and r["message"] for r in error["fields"]["rejected"])
        assert not UsageRecord.objects.exists()

    def test_one_record_kept_makes_it_a_200(self, provider_client, metered_contract, clock):
        records = [
            record("early", metered_contract, hours_later(METERED_START, -1), METERED_START, 10),
            record("ok", metered_contract, METERED_START, H1, 10),
        ]
        response = post(provider_client, records)
        assert response.status_code == 200, response.content
        assert (response.json()["accepted"], len(response.json()["rejected"])) == (["ok"], 1)

    def test_duplicates_and_rejections_are_a_200_the_duplicates_are_stored(
        self, provider_client, metered_contract, clock
    ):
        kept = record("kept", metered_contract, METERED_START, H1, 10)
        post(provider_client, [kept])
        response = post(provider_client, [kept, record("bad", metered_contract, METERED_START, H1, 99999)])
        assert response.status_code == 200, response.content
        body = response.json()
        assert (body["accepted"], body["duplicates"], [r["id"] for r in body["rejected"]]) == ([], ["kept"], ["bad"])

    def test_an_all_rejected_batch_may_be_sent_again_with_its_idempotency_key(
        self, provider_client, metered_contract, clock
    ):
        """Nothing was stored, so nothing is replayed: the corrected retry is done."""
        late = record("late", metered_contract, hours_later(METERED_START, -1), METERED_START, 10)
        headers = {"HTTP_IDEMPOTENCY_KEY": "usage-1"}
        first = provider_client.post(URL, {"records": [late]}, format="json", **headers)
        assert_error(first, 422, "all_rejected")
        again = provider_client.post(URL, {"records": [late]}, format="json", **headers)
        assert_error(again, 422, "all_rejected")
        assert "Idempotent-Replayed" not in again

    def test_capacity_is_the_contracts_gpus_over_the_interval(self, provider_client, metered_contract, clock):
        half_hour = METERED_START.replace(minute=30)
        records = [
            record("half-ok", metered_contract, METERED_START, half_hour, 28800),  # 16 GPUs x 1,800 s
            record("half-over", metered_contract, METERED_START, half_hour, "28800.001"),
            record("node-ok", metered_contract, half_hour, H1, 14400, node=NODE_NAMES[0]),  # 8 GPUs x 1,800 s
            record("node-over", metered_contract, half_hour, H1, "14400.001", node=NODE_NAMES[0]),
            record("zero", metered_contract, METERED_START, half_hour, 0),  # nothing more in a full half hour
        ]
        body = post(provider_client, records).json()
        assert sorted(body["accepted"]) == ["half-ok", "node-ok", "zero"]
        assert sorted(r["id"] for r in body["rejected"]) == ["half-over", "node-over"]

    def test_usage_after_an_early_release_is_outside_the_contract(self, provider_client, lab_client):
        from broker.services import contract_terminate

        contract = contract_create(
            lab=lab_client.organization,
            provider=provider_client.organization,
            starts_at=METERED_START,
            hours=10,
            mode=METERED,
        )
        with time_machine.travel(hours_later(METERED_START, 2).replace(minute=20), tick=False):
            contract_terminate(contract=contract, lab=lab_client.organization)  # released at 03:00
        with time_machine.travel(NOW, tick=False):
            body = post(
                provider_client,
                [
                    record("in", contract, H2, hours_later(METERED_START, 3), 100),
                    record("out", contract, hours_later(METERED_START, 3), hours_later(METERED_START, 4), 100),
                ],
            ).json()
        assert body["accepted"] == ["in"]
        assert body["rejected"][0]["code"] == "outside_contract"

    def test_numeric_ids_and_string_figures_are_read_like_their_json_twins(
        self, provider_client, metered_contract, clock
    ):
        records = [
            record("a", metered_contract, METERED_START, H1, "1e2") | {"id": 17},
            record("b", metered_contract, METERED_START, H1, "0.5"),
            record("c", metered_contract, METERED_START, H1, 2.25),
        ]
        body = post(provider_client, records).json()
        assert (sorted(body["accepted"]), body["rejected"]) == (["17", "b", "c"], [])
        assert stored() == [("17", Decimal("100.000")), ("b", Decimal("0.500")), ("c", Decimal("2.250"))]

    def test_provider_lists_its_own_records(self, provider_client, other_provider_client, metered_contract, clock):
        post(provider_client, [record("mine", metered_contract, METERED_START, H1, 1.5, node=NODE_NAMES[0])])
        response = provider_client.get(URL)
        assert response.status_code == 200
        rows = response.json()["results"]
        assert [(r["id"], r["contract"], r["node"], r["gpu_seconds"]) for r in rows] == [
            ("mine", metered_contract.pk, NODE_NAMES[0], "1.500")
        ]
        assert other_provider_client.get(URL).json()["results"] == []

    def test_filtering_by_contract_reveals_no_other_organizations_ids(
        self, provider_client, other_provider_client, metered_contract, clock
    ):
        post(provider_client, [record("mine", metered_contract, METERED_START, H1, 1.5)])
        assert [r["id"] for r in provider_client.get(URL, {"contract": metered_contract.pk}).json()["results"]] == [
            "mine"
        ]
        # Someone else's contract and one that does not exist: the same empty answer.
        foreign = other_provider_client.get(URL, {"contract": metered_contract.pk})
        missing = other_provider_client.get(URL, {"contract": metered_contract.pk + 10_000})
        assert (foreign.status_code, foreign.json()) == (missing.status_code, missing.json())
        assert (foreign.status_code, foreign.json()["results"]) == (200, [])
        assert_error(other_provider_client.get(URL, {"contract": "abc"}), 400)
        assert_error(other_provider_client.get(URL, {"contract": str(2**70)}), 400)


class TestEachRecordAlone:
    def test_every_rejection_reason_is_reported_for_its_record_and_the_valid_ones_are_kept(
        self, provider_client, lab_client, metered_contract, foreign_contract, spanning_contract, clock
    ):
        sibling = contract_create(
            lab=lab_client.organization,
            provider=provider_client.organization,
            starts_at=METERED_START,
            hours=4,
            hostnames=["gpu-s01"],
            mode=METERED,
        )
        contract = metered_contract
        records = [
            record("ok", contract, METERED_START, H1, 100),
            record("invalid", contract, METERED_START, H1, "lots"),
            record("future", contract, hours_later(NOW, -1), hours_later(NOW, 1), 1),
            record("spans", spanning_contract, utc(2026, 9, 30, 23), utc(2026, 10, 1, 1), 1),
            record("foreign", foreign_contract, METERED_START, H1, 1),
            record("outside", contract, hours_later(METERED_START, 48), hours_later(METERED_START, 49), 1),
            record("sibling-node", contract, METERED_START, H1, 1, node="gpu-s01"),
            record("over", contract, METERED_START, H1, 57601),
            record("node-over", contract, METERED_START, H1, 28801, node=NODE_NAMES[0]),
            record("ok-node", contract, H1, H2, 28800, node=NODE_NAMES[0]),
            record("ok-sibling", sibling, METERED_START, H1, 28800, node="gpu-s01"),
        ]
        body = post(provider_client, records).json()

        assert body["accepted"] == ["ok", "ok-node", "ok-sibling"]
        assert body["duplicates"] == []
        assert sorted((r["index"], r["id"], r["code"]) for r in body["rejected"]) == [
            (1, "invalid", "invalid"),
            (2, "future", "in_the_future"),
            (3, "spans", "spans_months"),
            (4, "foreign", "unknown_contract"),
            (5, "outside", "outside_contract"),
            (6, "sibling-node", "unknown_node"),
            (7, "over", "exceeds_capacity"),
            (8, "node-over", "exceeds_capacity"),
        ]
        assert stored() == [
            ("ok", Decimal("100.000")),
            ("ok-node", Decimal("28800.000")),
            ("ok-sibling", Decimal("28800.000")),
        ]

    def test_a_hostname_is_resolved_within_the_contracts_own_nodes(self, provider_client, lab_client, clock):
        """Hostnames are unique per cluster only: two contracts may each have a gpu-m01."""
        first, second = (
            contract_create(
                lab=lab_client.organization,
                provider=provider_client.organization,
                starts_at=METERED_START,
                hours=4,
                hostnames=["gpu-m01"],
                mode=METERED,
            )
            for _ in range(2)
        )
        body = post(
            provider_client,
            [
                record("on-first", first, METERED_START, H1, 1, node="gpu-m01"),
                record("on-second", second, METERED_START, H1, 2, node="gpu-m01"),
            ],
        ).json()
        assert body["accepted"] == ["on-first", "on-second"]
        nodes = dict(UsageRecord.objects.values_list("event_id", "node_id"))
        assert nodes == {
            "on-first": first.allocations.get().node_id,
            "on-second": second.allocations.get().node_id,
        }
        assert nodes["on-first"] != nodes["on-second"]

    def test_capacity_is_checked_to_the_microsecond(self, provider_client, metered_contract, clock):
        """16 GPUs deliver 8 GPU-seconds in half a second, and 0.000016 in a microsecond."""
        start = "2026-10-05T00:00:00Z"
        records = [
            record("half-ok", metered_contract, METERED_START, H1, "8")
            | {"started_at": start, "ended_at": "2026-10-05T00:00:00.500000Z"},
            record("half-over", metered_contract, METERED_START, H1, "8.001")
            | {"started_at": start, "ended_at": "2026-10-05T00:00:00.5Z"},
            record("micro-zero", metered_contract, METERED_START, H1, 0)
            | {"started_at": start, "ended_at": "2026-10-05T00:00:00.000001Z"},
            record("micro-over", metered_contract, METERED_START, H1, "0.001")
            | {"started_at": start, "ended_at": "2026-10-05T00:00:00.000001Z"},
        ]
        body = post(provider_client, records).json()
        assert body["accepted"] == ["half-ok", "micro-zero"]
        assert [(r["id"], r["code"]) for r in body["rejected"]] == [
            ("half-over", "exceeds_capacity"),
            ("micro-over", "exceeds_capacity"),
        ]
        half = UsageRecord.objects.get(event_id="half-ok")
        assert (half.ended_at - half.started_at).total_seconds() == 0.5

    def test_times_with_an_offset_fall_in_their_utc_month(self, provider_client, spanning_contract, clock):
        """00:30 on October 1st at +02:00 is 22:30 on September 30th in UTC."""
        body = post(
            provider_client,
            [
                record("september", spanning_contract, SPANNING_START, SPANNING_START, 3600)
                | {"started_at": "2026-10-01T00:30:00+02:00", "ended_at": "2026-10-01T01:30:00+02:00"},
                record("across", spanning_contract, SPANNING_START, SPANNING_START, 3600)
                | {"started_at": "2026-10-01T01:30:00+02:00", "ended_at": "2026-10-01T02:30:00+02:00"},
                record("october", spanning_contract, SPANNING_START, SPANNING_START, 3600)
                | {"started_at": "2026-10-01T02:00:00+02:00", "ended_at": "2026-10-01T03:00:00+02:00"},
            ],
        ).json()
        assert body["accepted"] == ["september", "october"]
        assert [(r["id"], r["code"]) for r in body["rejected"]] == [("across", "spans_months")]
        periods = dict(UsageRecord.objects.values_list("event_id", "period"))
        assert {key: f"{value:%Y-%m}" for key, value in periods.items()} == {
            "september": "2026-09",
            "october": "2026-10",
        }


class TestDuplicates:
    def test_duplicates_within_a_batch_and_across_batches(self, provider_client, metered_contract, clock):
        first = [record(name, metered_contract, METERED_START, H1, 10) for name in ("a", "b")]
        assert post(provider_client, first).json()["accepted"] == ["a", "b"]

        second = [
            record("a", metered_contract, METERED_START, H1, 11),  # sent before
            record("c", metered_contract, METERED_START, H1, 12),
            record("c", metered_contract, METERED_START, H1, 13),  # again in this call
            record("n", metered_contract, METERED_START, H1, 14) | {"id": 17},
            record("17", metered_contract, METERED_START, H1, 15),  # the same id, as text
            record("b", metered_contract, METERED_START, H1, 99999),  # sent before, but invalid now
        ]
        body = post(provider_client, second).json()

        assert body["accepted"] == ["c", "17"]
        assert sorted(body["duplicates"]) == ["17", "a", "c"]
        assert [(r["id"], r["code"]) for r in body["rejected"]] == [("b", "exceeds_capacity")]
        assert stored() == [
            ("17", Decimal("14.000")),
            ("a", Decimal("10.000")),
            ("b", Decimal("10.000")),
            ("c", Decimal("12.000")),
        ]

    def test_a_batch_of_only_duplicates_stores_nothing(self, provider_client, metered_contract, clock):
        batch = [record(f"d{i}", metered_contract, METERED_START, H1, i) for i in range(5)]
        post(provider_client, batch)
        body = post(provider_client, batch).json()
        assert (body["accepted"], body["duplicates"], body["rejected"]) == ([], [r["id"] for r in batch], [])
        assert UsageRecord.objects.count() == 5


class TestDatabaseKeys:
    """What the database itself refuses, whatever the service checks."""

    def row(self, contract, provider, **changes) -> UsageRecord:
        fields = {
            "provider": provider,
            "contract": contract,
            "event_id": "direct",
            "started_at": METERED_START,
            "ended_at": H1,
            "gpu_seconds": Decimal("1"),
            "period": METERED_START.date().replace(day=1),
        }
        return UsageRecord(**(fields | changes))

    def test_usage_of_another_providers_contract_is_refused(self, provider_client, metered_contract, foreign_contract):
        with pytest.raises(IntegrityError, match="usage_contract_of_provider"), transaction.atomic():
            self.row(foreign_contract, provider_client.organization).save()
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        self.row(metered_contract, provider_client.organization).save()
        assert UsageRecord.objects.count() == 1

    def test_usage_of_a_missing_contract_or_node_is_refused(self, provider_client, metered_contract):
        from broker.models import Contract

        missing = Contract(pk=2**40, provider=provider_client.organization)
        for row in (
            self.row(missing, provider_client.organization),
            self.row(metered_contract, provider_client.organization, node_id=2**40),
        ):
            with pytest.raises(IntegrityError), transaction.atomic():
                row.save()
                with connection.cursor() as cursor:
                    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        assert not UsageRecord.objects.exists()


class TestBatchLimits:
    def test_a_thousand_records_are_accepted_in_one_call(self, provider_client, metered_contract, clock):
        batch = [record(f"b{i:04d}", metered_contract, METERED_START, H1, 1) for i in range(1000)]
        body = post(provider_client, batch).json()
        assert len(body["accepted"]) == 1000 and body["duplicates"] == body["rejected"] == []
        assert UsageRecord.objects.count() == 1000

    def test_a_thousand_and_one_records_are_refused_whole(self, provider_client, metered_contract, clock):
        batch = [record(f"b{i:04d}", metered_contract, METERED_START, H1, 1) for i in range(1001)]
        error = assert_error(post(provider_client, batch), 400, "invalid")
        assert "records" in error["fields"]
        assert not UsageRecord.objects.exists()

    def test_an_empty_batch_is_refused(self, provider_client, clock):
        assert_error(post(provider_client, []), 400, "invalid")


class TestBadPayloads:
    @pytest.mark.parametrize(
        "body",
        [
            [],
            ["records"],
            "records",
            {},
            {"records": None},
            {"records": "r1"},
            {"records": {"id": "r1"}},
            {"records": 5},
            {"records": [], "extra": 1},
            {"items": []},
        ],
        ids=["list", "list-of-str", "string", "empty", "null", "str", "object", "number", "extra-key", "wrong-key"],
    )
    def test_a_malformed_body_is_a_400_in_the_error_shape(self, provider_client, clock, body):
        response = provider_client.post(URL, json.dumps(body), content_type="application/json")
        assert_error(response, 400)

    @pytest.mark.parametrize("raw", ['{"records": [NaN]}', '{"records": "', "\xff\xfe", '{"records": [Infinity]}'])
    def test_unparseable_json_is_a_400(self, provider_client, clock, raw):
        response = provider_client.post(URL, raw, content_type="application/json")
        assert_error(response, 400)

    def test_nan_gpu_seconds_is_a_400(self, provider_client, metered_contract, clock):
        raw = json.dumps({"records": [record("nan", metered_contract, METERED_START, H1, 1)]})
        response = provider_client.post(
            URL, raw.replace('"gpu_seconds": 1', '"gpu_seconds": NaN'), content_type="application/json"
        )
        assert_error(response, 400)
        assert not UsageRecord.objects.exists()

    def test_bad_records_are_rejected_one_by_one(self, provider_client, metered_contract, clock):
        good = record("good", metered_contract, METERED_START, H1, 10)
        bad = [
            "not an object",
            None,
            [1, 2],
            good | {"id": None},
            good | {"id": ""},
            good | {"id": "x" * 129},
            good | {"id": True},
            good | {"id": "g-bool", "gpu_seconds": True},
            good | {"id": "g-huge", "gpu_seconds": 1e30},
            good | {"id": "g-bigint", "gpu_seconds": 10**40},
            good | {"id": "g-inf", "gpu_seconds": "Infinity"},
            good | {"id": "g-nan", "gpu_seconds": "NaN"},
            good | {"id": "g-neg", "gpu_seconds": -1},
            good | {"id": "g-places", "gpu_seconds": "1.0001"},
            good | {"id": "g-text", "gpu_seconds": "ten"},
            good | {"id": "g-list", "gpu_seconds": [1]},
            good | {"id": "g-missing", "gpu_seconds": None},
            good | {"id": "t-naive", "started_at": "2026-10-05T00:00:00"},
            good | {"id": "t-date", "started_at": "2026-10-05"},
            good | {"id": "t-garbage", "ended_at": "soon"},
            good | {"id": "t-number", "ended_at": 1790000000},
            good | {"id": "t-before-year-1", "started_at": "0001-01-01T00:30:00+01:00"},
            good | {"id": "t-after-year-9999", "ended_at": "9999-12-31T23:30:00-01:00"},
            good | {"id": "t-reversed", "started_at": good["ended_at"], "ended_at": good["started_at"]},
            good | {"id": "t-empty", "ended_at": good["started_at"]},
            good | {"id": "t-spans", "started_at": "2026-09-30T23:00:00Z", "ended_at": "2026-10-01T01:00:00Z"},
            good | {"id": "c-str", "contract": str(metered_contract.pk)},
            good | {"id": "c-bool", "contract": True},
            good | {"id": "c-huge", "contract": 2**70},
            good | {"id": "c-neg", "contract": -1},
            good | {"id": "n-int", "node": 5},
            good | {"id": "n-empty", "node": ""},
            good | {"id": "unknown-field", "gpu_hours": 1},
        ]
        response = post(provider_client, [*bad, good])

        assert response.status_code == 200, response.content
        body = response.json()
        assert body["accepted"] == ["good"]
        assert sorted(r["index"] for r in body["rejected"]) == list(range(len(bad)))
        assert {r["code"] for r in body["rejected"]} <= {"invalid", "spans_months"}
        assert stored() == [("good", Decimal("10.000"))]

    def test_ids_are_stored_exactly_as_sent(self, provider_client, metered_contract, clock):
        ids = ["événement-😀", 'quote"back\\slash', "tab\tnew\nline", "x" * 128]
        batch = [record(event_id, metered_contract, METERED_START, H1, 1) for event_id in ids]
        assert post(provider_client, batch).json()["accepted"] == ids
        assert sorted(UsageRecord.objects.values_list("event_id", flat=True)) == sorted(ids)
        assert post(provider_client, batch).json()["duplicates"] == ids

    def test_ids_the_database_cannot_store_as_text_are_rejected(self, provider_client, metered_contract, clock):
        good = record("good", metered_contract, METERED_START, H1, 10)
        raw = json.dumps({"records": [good | {"id": "nul\u0000"}, good | {"id": "x"}, good]})
        raw = raw.replace('"x"', '"\\ud800"')  # a lone surrogate: valid JSON, not UTF-8
        response = provider_client.post(URL, raw, content_type="application/json")
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["accepted"] == ["good"]
        assert [(r["index"], r["code"]) for r in body["rejected"]] == [(0, "invalid"), (1, "invalid")]
        assert stored() == [("good", Decimal("10.000"))]

    def test_an_offset_time_is_read_as_utc(self, provider_client, metered_contract, clock):
        body = post(
            provider_client,
            [
                record("offset", metered_contract, METERED_START, H1, 10)
                | {"started_at": "2026-10-05T02:00:00+02:00", "ended_at": "2026-10-05T03:00:00+02:00"}
            ],
        ).json()
        assert body["accepted"] == ["offset"]
        assert UsageRecord.objects.get().started_at == METERED_START


class TestPermissions:
    def test_labs_may_not_report_usage(self, lab_client, metered_contract, clock):
        assert_error(post(lab_client, [record("l", metered_contract, METERED_START, H1, 1)]), 403)
        assert_error(lab_client.get(URL), 403)

    def test_anonymous_callers_are_refused(self, anon_client, clock):
        response = anon_client.post(URL, {"records": []}, format="json")
        assert response.status_code in (401, 403)
        assert_error(response, response.status_code)

    def test_usage_ingest_refuses_a_lab_contract_it_does_not_sell(self, lab_client, metered_contract, clock):
        other_lab = make_lab()
        result = usage_ingest(
            provider=other_lab, records=[record("l", metered_contract, METERED_START, H1, 1) | {"id": "l"}]
        )
        assert result.accepted == [] and result.rejected[0]["code"] == "unknown_contract"


@pytest.mark.django_db(transaction=True)
class TestConcurrentRetries:
    def test_two_retries_at_the_same_moment_store_the_batch_once(self, clock):
        provider_client = make_client("Racing Provider", "provider")
        lab = make_lab()
        contract = contract_create(
            lab=lab, provider=provider_client.organization, starts_at=METERED_START, hours=24, mode=METERED
        )
        batch = [record(f"race-{i}", contract, METERED_START, H1, 10 + i) for i in range(50)]
        barrier = threading.Barrier(2)
        bodies: list = [None, None]
        errors: list = []

        def send(slot: int) -> None:
            try:
                client = make_client_for(provider_client)
                barrier.wait(timeout=10)
                response = post(client, batch)
                bodies[slot] = (response.status_code, response.json())
            except Exception as exc:  # surfaced below
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=send, args=(slot,)) for slot in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert errors == []
        assert [status for status, _ in bodies] == [200, 200]
        ids = sorted(r["id"] for r in batch)
        accepted = sorted(bodies[0][1]["accepted"] + bodies[1][1]["accepted"])
        duplicates = sorted(bodies[0][1]["duplicates"] + bodies[1][1]["duplicates"])
        assert accepted == ids
        assert duplicates == ids
        # One call stored the whole batch; the other saw only duplicates.
        assert sorted(len(body["accepted"]) for _, body in bodies) == [0, 50]
        assert UsageRecord.objects.count() == 50

    def test_overlapping_batches_in_opposite_orders_at_the_same_moment(self, clock):
        """Each id is stored once and accepted by exactly one of the calls; neither call fails."""
        provider_client = make_client("Racing Provider", "provider")
        contract = contract_create(
            lab=make_lab(), provider=provider_client.organization, starts_at=METERED_START, hours=24, mode=METERED
        )
        # 600 records of one hour, 11,700 GPU-seconds in all: within its 8 GPUs (28,800).
        records = [record(f"overlap-{i:03d}", contract, METERED_START, H1, i % 40) for i in range(600)]
        batches = [records[:400], records[200:][::-1]]
        barrier = threading.Barrier(2)
        bodies: list = [None, None]
        errors: list = []

        def send(slot: int) -> None:
            try:
                client = make_client_for(provider_client)
                barrier.wait(timeout=10)
                response = post(client, batches[slot])
                bodies[slot] = (response.status_code, response.json())
            except Exception as exc:  # surfaced below
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=send, args=(slot,)) for slot in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert errors == []
        assert [status for status, _ in bodies] == [200, 200], bodies
        accepted = bodies[0][1]["accepted"] + bodies[1][1]["accepted"]
        duplicates = bodies[0][1]["duplicates"] + bodies[1][1]["duplicates"]
        assert sorted(accepted) == [r["id"] for r in records]
        assert sorted(duplicates) == [r["id"] for r in records[200:400]]
        assert UsageRecord.objects.count() == 600


def make_client_for(client):
    """Another API client with the same key, for another thread."""
    from tests.conftest import OrgClient

    twin = OrgClient()
    twin.credentials(HTTP_AUTHORIZATION=f"Bearer {client.secret}")
    twin.organization = client.organization
    return twin


class TestUsageTotals:
    """PostgreSQL keeps usage summed per (contract, month, closing month) for the month close."""

    def totals(self) -> list[tuple]:
        return list(
            UsageTotal.objects.order_by("contract_id", "period", "billed_in").values_list(
                "contract_id", "period", "billed_in", "gpu_seconds", "records"
            )
        )

    def test_each_stored_record_is_added_once(self, provider_client, metered_contract, clock):
        october = date(2026, 10, 1)
        batch = [
            record("t-1", metered_contract, METERED_START, H1, "100.5"),
            record("t-2", metered_contract, H1, H2, 200, node=NODE_NAMES[0]),
        ]
        assert len(post(provider_client, batch).json()["accepted"]) == 2
        resent = post(provider_client, [*batch, record("t-3", metered_contract, H1, H2, "0.25")]).json()
        assert (len(resent["accepted"]), len(resent["duplicates"])) == (1, 2)
        assert self.totals() == [(metered_contract.pk, october, october, Decimal("300.750"), 3)]

    def test_late_usage_is_totalled_for_the_next_close(self, provider_client, metered_contract):
        october, november = date(2026, 10, 1), date(2026, 11, 1)
        with time_machine.travel(utc(2026, 10, 20), tick=False):
            post(provider_client, [record("on-time", metered_contract, METERED_START, H1, 10)])
        close(october)
        with time_machine.travel(utc(2026, 11, 2), tick=False):
            post(provider_client, [record("late", metered_contract, H1, H2, 7)])
        assert self.totals() == [
            (metered_contract.pk, october, october, Decimal("10.000"), 1),
            (metered_contract.pk, october, november, Decimal("7.000"), 1),
        ]

    def test_rows_written_by_copy_are_totalled_too(self, provider_client, metered_contract):
        october = date(2026, 10, 1)
        rows = [
            (provider_client.organization.pk, f"copy-{n}", metered_contract.pk, METERED_START, H1, Decimal(n), october)
            for n in (1, 2, 3)
        ]
        bulk_insert(
            UsageRecord,
            (
                "provider_id",
                "event_id",
                "contract_id",
                "started_at",
                "ended_at",
                "gpu_seconds",
                "period",
                "received_at",
            ),
            [(*row, METERED_START) for row in rows],
        )
        assert self.totals() == [(metered_contract.pk, october, october, Decimal("6.000"), 3)]

    def test_usage_records_are_append_only(self, provider_client, metered_contract, clock):
        post(provider_client, [record("fixed", metered_contract, METERED_START, H1, 10)])
        with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
            UsageRecord.objects.update(gpu_seconds=Decimal("1"))
        with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
            UsageRecord.objects.all().delete()
        assert stored() == [("fixed", Decimal("10.000"))]
        assert self.totals()[0][3] == Decimal("10.000")


def test_an_invoice_line_names_its_contracts_own_provider(provider_client, metered_contract, foreign_contract, clock):
    from billing.models import Invoice, InvoiceLine

    invoice = Invoice.objects.create(lab=metered_contract.lab, period=date(2026, 10, 1))
    line = InvoiceLine(
        invoice=invoice,
        contract=metered_contract,
        provider=foreign_contract.provider,
        kind=InvoiceLine.Kind.METERED,
        service_period=date(2026, 10, 1),
        description="wrong provider",
        quantity=Decimal("1"),
        unit_price=Decimal("1"),
        amount=Decimal("1.00"),
        fee_rate=Decimal("0.05"),
        fee_amount=Decimal("0.05"),
    )
    with pytest.raises(IntegrityError, match="invoice_line_contract_of_provider"), transaction.atomic():
        line.save()
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    line.provider = metered_contract.provider
    line.save()
    assert InvoiceLine.objects.count() == 1


class TestUsageLock:
    """One advisory lock orders usage and closes: ingestion, and the totals trigger under any
    INSERT (COPY included), take it shared; a close and a rebuild of the totals take it alone.
    Another session holds it here; what waits for it gives up after a short lock timeout."""

    @pytest.fixture
    def other_session(self):
        other = connections.create_connection(DEFAULT_DB_ALIAS)
        try:
            yield other
        finally:
            other.close()  # its session-level lock goes with it

    def hold(self, session, *, shared: bool) -> None:
        function = "pg_advisory_lock_shared" if shared else "pg_advisory_lock"
        with session.cursor() as cursor:
            cursor.execute(f"SELECT {function}(%s, %s)", USAGE_LOCK)

    @contextmanager
    def waits_for_the_lock(self):
        with pytest.raises(OperationalError, match="lock timeout"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '200ms'")
            yield

    def copy_one(self, contract, event_id: str) -> None:
        """A usage row written by COPY: no service takes the lock, only the trigger."""
        bulk_insert(
            UsageRecord,
            ("provider_id", "event_id", "contract_id", "started_at", "ended_at", "gpu_seconds", "period",
             "received_at"),
            [(contract.provider_id, event_id, contract.pk, METERED_START, H1, Decimal(1), date(2026, 10, 1), NOW)],
        )  # fmt: skip

    def test_ingestion_and_the_totals_trigger_wait_while_a_close_holds_it(
        self, provider_client, metered_contract, clock, other_session
    ):
        self.hold(other_session, shared=False)
        with self.waits_for_the_lock():
            usage_ingest(
                provider=provider_client.organization, records=[record("api", metered_contract, METERED_START, H1, 1)]
            )
        with self.waits_for_the_lock():
            self.copy_one(metered_contract, "copy")
        assert not UsageRecord.objects.exists()

    def test_ingestion_shares_it_and_a_close_and_a_rebuild_wait_for_it(
        self, provider_client, metered_contract, clock, other_session
    ):
        self.hold(other_session, shared=True)
        usage_ingest(
            provider=provider_client.organization, records=[record("api", metered_contract, METERED_START, H1, 1)]
        )
        self.copy_one(metered_contract, "copy")
        assert UsageTotal.objects.get().records == 2
        with self.waits_for_the_lock():
            usage_totals_rebuild()
        with self.waits_for_the_lock():
            close(date(2026, 9, 1))
