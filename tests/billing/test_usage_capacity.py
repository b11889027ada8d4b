"""Usage ingestion never reports more GPUs in use than a node or a contract has.

The rule (``billing.usage_load``): a record's GPU-seconds are spread evenly over its
[started_at, ended_at), so it uses ``gpu_seconds / seconds`` GPUs at every instant of it; at
no instant may the records of a node use more than the node's GPUs, nor the records of a
contract (with or without a node) more than the contract's GPUs. Equivalently, over any
interval a node's (or contract's) records spend at most GPUs x seconds inside it. Stored
records count, across batches and concurrent posts; a record past that is rejected alone.

``metered_contract``: 16 GPUs on two nodes of 8 (gpu-m01, gpu-m02), October 5th 00:00 to
7th 00:00. Figures in the comments are hand-computed.
"""

from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
import time_machine
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.models import UsageRecord
from billing.services import usage_ingest
from broker.models import Allocation
from tests.billing.conftest import METERED_START, NODE_NAMES
from tests.billing.factories import METERED, contract_create, hours_later, make_lab, make_provider, record, utc
from tests.broker.factories import run_at_once
from tests.conftest import assert_error

NOW = utc(2026, 10, 20, 12, 30)
H1 = hours_later(METERED_START, 1)
HALF = METERED_START + timedelta(minutes=30)
NODE, OTHER_NODE = NODE_NAMES

pytestmark = pytest.mark.django_db


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def post(client, records: list[dict]) -> dict:
    response = client.post("/api/v1/usage", {"records": records}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def at(moment, **delta) -> str:
    """An ISO time with microseconds, ``delta`` after ``moment``."""
    return (moment + timedelta(**delta)).isoformat().replace("+00:00", "Z")


def outcome(body: dict) -> tuple[list, list, list]:
    return body["accepted"], body["duplicates"], [(r["id"], r["code"]) for r in body["rejected"]]


def stored_gpu_seconds() -> Decimal:
    return sum(UsageRecord.objects.values_list("gpu_seconds", flat=True), Decimal(0))


class TestTheAuditsCase:
    def test_ten_full_hours_of_one_node_store_one(self, provider_client, metered_contract, clock):
        """10 x 28,800 GPU-seconds for one 8-GPU node and one hour: 8 GPUs x 3,600 s is 28,800, so one fits."""
        records = [record(f"audit-{i}", metered_contract, METERED_START, H1, 28800, node=NODE) for i in range(10)]
        body = post(provider_client, records)

        assert body["accepted"] == ["audit-0"]
        assert [(r["index"], r["id"], r["code"]) for r in body["rejected"]] == [
            (i, f"audit-{i}", "exceeds_capacity") for i in range(1, 10)
        ]
        assert {r["message"] for r in body["rejected"]} == {
            "Node gpu-m01 has 8 GPUs. From 2026-10-05T00:00:00Z to 2026-10-05T01:00:00Z, 28800 GPU-seconds are "
            "already reported for it, up to 8 GPUs at once; 28800 more GPU-seconds (8 GPUs throughout) would use "
            "more GPUs than it has."
        }
        assert stored_gpu_seconds() == Decimal(28800)


class TestNode:
    def test_a_second_full_hour_of_a_node_is_rejected(self, provider_client, metered_contract, clock):
        first = post(provider_client, [record("first", metered_contract, METERED_START, H1, 28800, node=NODE)])
        second = provider_client.post(
            "/api/v1/usage",
            {"records": [record("second", metered_contract, METERED_START, H1, 28800, node=NODE)]},
            format="json",
        )
        assert outcome(first) == (["first"], [], [])
        error = assert_error(second, 422, "all_rejected")  # its only record was rejected
        assert [(r["id"], r["code"]) for r in error["fields"]["rejected"]] == [("second", "exceeds_capacity")]

    def test_two_half_hours_at_full_rate_fit(self, provider_client, metered_contract, clock):
        """8 GPUs x 1,800 s = 14,400 for each half: the halves do not overlap ([) intervals)."""
        body = post(
            provider_client,
            [
                record("first-half", metered_contract, METERED_START, HALF, 14400, node=NODE),
                record("second-half", metered_contract, HALF, H1, 14400, node=NODE),
            ],
        )
        assert outcome(body) == (["first-half", "second-half"], [], [])

    def test_two_records_at_half_rate_fill_the_node_and_one_more_second_is_rejected(
        self, provider_client, metered_contract, clock
    ):
        """14,400 over an hour is 4 GPUs; 4 + 4 = 8, the node's GPUs; then 1 GPU-second more is too many."""
        body = post(
            provider_client,
            [
                record("a", metered_contract, METERED_START, H1, 14400, node=NODE),
                record("b", metered_contract, METERED_START, H1, 14400, node=NODE),
                record("c", metered_contract, METERED_START, H1, 1, node=NODE),
            ],
        )
        assert outcome(body) == (["a", "b"], [], [("c", "exceeds_capacity")])
        assert body["rejected"][0]["message"] == (
            "Node gpu-m01 has 8 GPUs. From 2026-10-05T00:00:00Z to 2026-10-05T01:00:00Z, 28800 GPU-seconds are "
            "already reported for it, up to 8 GPUs at once; 1 more GPU-seconds (about 0.000278 GPUs throughout) "
            "would use more GPUs than it has."
        )

    def test_partial_overlaps_count_only_where_records_overlap(self, provider_client, metered_contract, clock):
        """
        a: 00:00-01:00, 14,400 s: 4 GPUs.     b: 00:30-01:30, 14,400 s: 4 GPUs (8 from 00:30 to 01:00).
        c: 00:45-01:15, 0.001 s: rejected, 8 GPUs are in use from 00:45 to 01:00. Already
           reported in 00:45-01:15: a 4 x 900 + b 4 x 1,800 = 10,800 GPU-seconds.
        d: 01:00-01:30, 7,200 s: 4 GPUs, 4 + 4 = 8 with b.
        e: 01:15-01:45, 3,600 s: 2 GPUs; from 01:15 to 01:30 b and d use 8: rejected. Already
           reported in 01:15-01:45: b 4 x 900 + d 4 x 900 = 7,200 GPU-seconds.
        f: 01:30-02:00, 14,400 s: 8 GPUs, nothing else after 01:30.
        """
        h = lambda minutes: METERED_START + timedelta(minutes=minutes)  # noqa: E731
        body = post(
            provider_client,
            [
                record("a", metered_contract, h(0), h(60), 14400, node=NODE),
                record("b", metered_contract, h(30), h(90), 14400, node=NODE),
                record("c", metered_contract, h(45), h(75), "0.001", node=NODE),
                record("d", metered_contract, h(60), h(90), 7200, node=NODE),
                record("e", metered_contract, h(75), h(105), 3600, node=NODE),
                record("f", metered_contract, h(90), h(120), 14400, node=NODE),
            ],
        )
        assert outcome(body) == (["a", "b", "d", "f"], [], [("c", "exceeds_capacity"), ("e", "exceeds_capacity")])
        c_message, e_message = (r["message"] for r in body["rejected"])
        assert "01:15:00Z, 10800 GPU-seconds are already reported for it, up to 8 GPUs at once;" in c_message
        assert "01:45:00Z, 7200 GPU-seconds are already reported for it, up to 8 GPUs at once; 3600 more" in e_message

    def test_the_check_is_exact_to_the_microsecond(self, provider_client, metered_contract, clock):
        """Full for one second; a record overlapping it by one microsecond is rejected, one touching it is not."""
        second = METERED_START + timedelta(hours=2)
        full = record("full", metered_contract, second, second, 8, node=NODE) | {
            "started_at": at(second),
            "ended_at": at(second, seconds=1),
        }
        # 0.001 GPU-seconds over about a second: a thousandth of a GPU, one microsecond of it in the full second.
        overlapping = full | {
            "id": "overlapping",
            "gpu_seconds": "0.001",
            "started_at": at(second, microseconds=999_999),
            "ended_at": at(second, seconds=2),
        }
        touching = overlapping | {"id": "touching", "started_at": at(second, seconds=1)}
        body = post(provider_client, [full, overlapping, touching])
        assert outcome(body) == (["full", "touching"], [], [("overlapping", "exceeds_capacity")])

    def test_thirds_add_up_exactly(self, provider_client, metered_contract, clock):
        """Three records of 8 GPU-seconds over the same 3 seconds use 8/3 GPUs each: 8 in all, the
        node's GPUs exactly; the least more is rejected."""
        start = METERED_START + timedelta(hours=3)
        thirds = [
            record(f"third-{i}", metered_contract, start, start + timedelta(seconds=3), 8, node=NODE) for i in range(3)
        ]
        more = record("more", metered_contract, start, start + timedelta(seconds=3), "0.001", node=NODE)
        body = post(provider_client, [*thirds, more])
        assert outcome(body) == (["third-0", "third-1", "third-2"], [], [("more", "exceeds_capacity")])

    def test_each_node_has_its_own_gpus(self, provider_client, metered_contract, clock):
        body = post(
            provider_client,
            [
                record("m01", metered_contract, METERED_START, H1, 28800, node=NODE),
                record("m02", metered_contract, METERED_START, H1, 28800, node=OTHER_NODE),
            ],
        )
        assert outcome(body) == (["m01", "m02"], [], [])

    def test_a_node_record_outside_its_allocation_is_rejected(self, provider_client, metered_contract, clock):
        """A node's records lie within its allocation: that is what keeps them all one contract's."""
        Allocation.objects.filter(contract=metered_contract, node__hostname=NODE).update(ends_at=H1)
        body = post(
            provider_client,
            [
                record("inside", metered_contract, METERED_START, H1, 100, node=NODE),
                record("after", metered_contract, H1, hours_later(H1, 1), 100, node=NODE),
                record("contract-level", metered_contract, H1, hours_later(H1, 1), 100),
            ],
        )
        assert outcome(body) == (["inside", "contract-level"], [], [("after", "outside_contract")])
        assert body["rejected"][0]["message"] == (
            "Node gpu-m01 serves the contract from 2026-10-05T00:00Z to 2026-10-05T01:00Z."
        )


class TestContract:
    def test_records_without_a_node_count_against_the_contract(self, provider_client, metered_contract, clock):
        """16 GPUs x 3,600 s = 57,600: two records of 28,800 fill the hour; the third is rejected."""
        body = post(
            provider_client,
            [
                record("a", metered_contract, METERED_START, H1, 28800),
                record("b", metered_contract, METERED_START, H1, 28800),
                record("c", metered_contract, METERED_START, H1, 28800),
            ],
        )
        assert outcome(body) == (["a", "b"], [], [("c", "exceeds_capacity")])
        assert body["rejected"][0]["message"] == (
            f"Contract {metered_contract.pk} has 16 GPUs. From 2026-10-05T00:00:00Z to 2026-10-05T01:00:00Z, 57600 "
            "GPU-seconds are already reported for it, up to 16 GPUs at once; 28800 more GPU-seconds (8 GPUs "
            "throughout) would use more GPUs than it has."
        )

    def test_records_with_a_node_count_against_the_contract_too(self, provider_client, metered_contract, clock):
        """A contract-level 8 GPUs and gpu-m01's 8 fill the contract's 16: gpu-m02, idle itself, has no room."""
        body = post(
            provider_client,
            [
                record("contract-8", metered_contract, METERED_START, H1, 28800),
                record("m01-8", metered_contract, METERED_START, H1, 28800, node=NODE),
                record("m02-8", metered_contract, METERED_START, H1, 28800, node=OTHER_NODE),
                record("m02-later", metered_contract, H1, hours_later(H1, 1), 28800, node=OTHER_NODE),
            ],
        )
        assert outcome(body) == (["contract-8", "m01-8", "m02-later"], [], [("m02-8", "exceeds_capacity")])
        assert body["rejected"][0]["message"].startswith(f"Contract {metered_contract.pk} has 16 GPUs.")

    def test_contracts_do_not_share_capacity(self, provider_client, lab_client, metered_contract, clock):
        sibling = contract_create(
            lab=lab_client.organization,
            provider=provider_client.organization,
            starts_at=METERED_START,
            hours=4,
            mode=METERED,
        )
        body = post(
            provider_client,
            [
                record("mine", metered_contract, METERED_START, H1, 57600),
                record("sibling", sibling, METERED_START, H1, 28800),
            ],
        )
        assert outcome(body) == (["mine", "sibling"], [], [])


class TestAcrossBatches:
    def test_stored_records_count(self, provider_client, metered_contract, clock):
        assert outcome(post(provider_client, [record("a", metered_contract, METERED_START, H1, 14400, node=NODE)])) == (
            ["a"],
            [],
            [],
        )
        # 4 GPUs stored; 4 more fit, then the node is full.
        body = post(
            provider_client,
            [
                record("b", metered_contract, HALF, H1, 7200, node=NODE),
                record("c", metered_contract, METERED_START, HALF, 7200, node=NODE),
                record("d", metered_contract, HALF, H1, 1, node=NODE),
            ],
        )
        assert outcome(body) == (["b", "c"], [], [("d", "exceeds_capacity")])
        assert body["rejected"][0]["message"].startswith(
            "Node gpu-m01 has 8 GPUs. From 2026-10-05T00:30:00Z to 2026-10-05T01:00:00Z, 14400 GPU-seconds"
        )

    @pytest.mark.parametrize("hours", [24, 25, 47])  # a day (the longest kept in the main index) and more
    def test_long_stored_records_count(self, provider_client, metered_contract, clock, hours):
        """A stored record of the contract's 16 GPUs for ``hours`` hours leaves no room in any of them."""
        end = hours_later(METERED_START, hours)
        long = record("long", metered_contract, METERED_START, end, 57600 * hours)
        assert post(provider_client, [long])["accepted"] == ["long"]
        last_hour = hours_later(end, -1)
        body = post(
            provider_client,
            [
                record("first-hour", metered_contract, METERED_START, H1, 1),
                record("last-hour", metered_contract, last_hour, end, 1, node=NODE),
                record("after", metered_contract, end, hours_later(end, 1), 1),
            ],
        )
        assert outcome(body) == (["after"], [], [("first-hour", "exceeds_capacity"), ("last-hour", "exceeds_capacity")])

    def test_a_record_sent_again_is_a_duplicate_and_counted_once(self, provider_client, metered_contract, clock):
        full = record("full", metered_contract, METERED_START, H1, 28800, node=NODE)
        assert post(provider_client, [full])["accepted"] == ["full"]
        # Sent again, alone, twice in a batch, or with other figures: a duplicate, never over capacity.
        changed = full | {"gpu_seconds": 100, "started_at": at(H1), "ended_at": at(H1, hours=1)}
        body = post(provider_client, [full, full, changed])
        assert outcome(body) == ([], ["full", "full", "full"], [])
        assert stored_gpu_seconds() == Decimal(28800)

    def test_a_copy_stored_with_another_interval_takes_no_room(self, provider_client, metered_contract, clock):
        """x was stored for the second hour; sent again for the first, it is a duplicate, so y fills that hour."""
        post(provider_client, [record("x", metered_contract, H1, hours_later(H1, 1), 28800, node=NODE)])
        body = post(
            provider_client,
            [
                record("x", metered_contract, METERED_START, H1, 28800, node=NODE),
                record("y", metered_contract, METERED_START, H1, 28800, node=NODE),
            ],
        )
        assert outcome(body) == (["y"], ["x"], [])
        assert stored_gpu_seconds() == Decimal(57600)

    def test_a_copy_stored_elsewhere_is_a_duplicate_even_where_there_is_no_room(
        self, provider_client, metered_contract, clock
    ):
        post(
            provider_client,
            [
                record("z", metered_contract, H1, hours_later(H1, 1), 100, node=NODE),
                record("full", metered_contract, METERED_START, H1, 28800, node=NODE),
            ],
        )
        body = post(provider_client, [record("z", metered_contract, METERED_START, H1, 28800, node=NODE)])
        assert outcome(body) == ([], ["z"], [])

    def test_a_duplicate_in_a_batch_is_counted_once(self, provider_client, metered_contract, clock):
        """a (4 GPUs) twice, then b (4 GPUs): b fits only if a counts once."""
        a = record("a", metered_contract, METERED_START, H1, 14400, node=NODE)
        b = record("b", metered_contract, METERED_START, H1, 14400, node=NODE)
        assert outcome(post(provider_client, [a, a, b])) == (["a", "b"], ["a"], [])

    def test_the_first_copy_that_fits_wins(self, provider_client, metered_contract, clock):
        post(provider_client, [record("busy", metered_contract, METERED_START, H1, 28800, node=NODE)])
        copies = [
            record("late", metered_contract, METERED_START, H1, 3600, node=NODE),  # no room in that hour
            record("late", metered_contract, H1, hours_later(H1, 1), 3600, node=NODE),  # fits
            record("late", metered_contract, H1, hours_later(H1, 1), 3600, node=NODE),  # a duplicate
        ]
        body = post(provider_client, copies)
        assert outcome(body) == (["late"], ["late"], [("late", "exceeds_capacity")])
        assert UsageRecord.objects.get(event_id="late").started_at == H1


@pytest.mark.django_db(transaction=True)
class TestConcurrentPosts:
    def setup_market(self):
        provider = make_provider("Racing Provider")
        contract = contract_create(
            lab=make_lab(),
            provider=provider,
            starts_at=METERED_START,
            hours=4,
            nodes=2,
            hostnames=NODE_NAMES,
            mode=METERED,
        )
        return provider, contract

    def test_batches_posted_at_once_for_one_node_store_one_full_hour(self, clock):
        """Four batches of the audit's records at the same moment: one record in all fits."""
        provider, contract = self.setup_market()

        def batch(slot: int):
            records = [record(f"s{slot}-{i}", contract, METERED_START, H1, 28800, node=NODE) for i in range(10)]
            return usage_ingest(provider=provider, records=records)

        results = run_at_once(*(lambda slot=slot: batch(slot) for slot in range(4)))

        assert not [r for r in results if isinstance(r, BaseException)], results
        assert sum(len(r.accepted) for r in results) == 1
        assert sum(len(r.rejected) for r in results) == 39
        assert {q["code"] for r in results for q in r.rejected} == {"exceeds_capacity"}
        assert stored_gpu_seconds() == Decimal(28800)

    def test_batches_posted_at_once_for_one_contract_fill_it_once(self, clock):
        """Six batches of 8 GPUs for one hour each, without a node: the contract's 16 take two."""
        provider, contract = self.setup_market()

        def batch(slot: int):
            return usage_ingest(provider=provider, records=[record(f"c{slot}", contract, METERED_START, H1, 28800)])

        results = run_at_once(*(lambda slot=slot: batch(slot) for slot in range(6)))

        assert not [r for r in results if isinstance(r, BaseException)], results
        assert sorted(len(r.accepted) for r in results) == [0, 0, 0, 0, 1, 1]
        assert stored_gpu_seconds() == Decimal(57600)


# --- Property: random records in random batches ------------------------------------------------

NODE_GPUS, CONTRACT_GPUS = 8, 16
TICK = timedelta(minutes=15)  # intervals on a quarter-hour grid, some shifted by microseconds


def oracle_run(batches: list[list[dict]]) -> list[tuple[list, list, list]]:
    """What each batch should answer, by the rule computed from scratch with fractions.

    A record is accepted when it is new and, with the records accepted before it, no instant of
    its interval has a node's records above 8 GPUs or the contract's above 16.
    """
    accepted: list[tuple[str | None, Fraction, Fraction, Fraction]] = []  # node, start, end, GPUs
    seen: set[str] = set()
    answers = []
    for batch in batches:
        taken, duplicates, rejected = [], [], []
        for sent in batch:
            if sent["id"] in seen:
                duplicates.append(sent["id"])
                continue
            start, end = (Fraction(seconds_of(sent[key])) for key in ("started_at", "ended_at"))
            gpus = Fraction(Decimal(str(sent["gpu_seconds"]))) / (end - start)
            node = sent.get("node")
            if fits(accepted, node, start, end, gpus):
                accepted.append((node, start, end, gpus))
                seen.add(sent["id"])
                taken.append(sent["id"])
            else:
                rejected.append(sent["id"])
        answers.append((taken, duplicates, rejected))
    return answers


def fits(accepted, node, start, end, gpus) -> bool:
    """At every instant of [start, end) (the load only changes at interval ends, so at each of
    them and at start), the node's and the contract's GPUs in use stay within theirs."""
    instants = {start} | {t for _, s, e, _ in accepted for t in (s, e) if start < t < end}
    for instant in instants:
        covering = [(n, g) for n, s, e, g in accepted if s <= instant < e]
        if sum((g for _, g in covering), gpus) > CONTRACT_GPUS:
            return False
        if node is not None and sum((g for n, g in covering if n == node), gpus) > NODE_GPUS:
            return False
    return True


def seconds_of(text: str) -> Fraction:
    from datetime import datetime

    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return Fraction((moment - METERED_START) // timedelta(microseconds=1), 1_000_000)


@st.composite
def usage_batches(draw) -> list[list[dict]]:
    """Up to 24 records over two hours in up to 4 batches: quarter-hour bounds, some moved by a
    few microseconds; rates from nothing to a whole node or the whole contract (each fits
    alone); some ids sent again, with other figures."""
    records = []
    for index in range(draw(st.integers(1, 24))):
        first = draw(st.integers(0, 7))
        length = draw(st.integers(1, 8 - first))
        start = METERED_START + first * TICK + timedelta(microseconds=draw(st.sampled_from([0, 0, 0, 1, 7])))
        end = METERED_START + (first + length) * TICK - timedelta(microseconds=draw(st.sampled_from([0, 0, 0, 3])))
        node = draw(st.sampled_from([None, NODE, OTHER_NODE]))
        micros = (end - start) // timedelta(microseconds=1)
        most = (NODE_GPUS if node else CONTRACT_GPUS) * micros // 1000  # GPU-milliseconds the holder delivers
        millis = draw(st.one_of(st.just(most), st.integers(0, most), st.integers(0, most // 4)))
        event_id = f"r{draw(st.integers(0, index))}" if draw(st.booleans()) and index else f"r{index}"
        body = {
            "id": event_id,
            "contract": 0,  # set by the test
            "started_at": start.isoformat().replace("+00:00", "Z"),
            "ended_at": end.isoformat().replace("+00:00", "Z"),
            "gpu_seconds": str(Decimal(millis).scaleb(-3)),
        }
        if node:
            body["node"] = node
        records.append(body)
    cuts = sorted(draw(st.sets(st.integers(1, len(records) - 1), max_size=3))) if len(records) > 1 else []
    bounds = [0, *cuts, len(records)]
    return [records[low:high] for low, high in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=usage_batches())
def test_random_batches_never_exceed_capacity_and_every_rejection_is_justified(metered_contract, batches):
    """Each batch answers exactly what the from-scratch oracle says: accepted records keep every
    node within 8 GPUs and the contract within 16 at each instant, and each rejected one would
    have broken that with the records accepted before it. Each example is rolled back."""
    for batch in batches:
        for sent in batch:
            sent["contract"] = metered_contract.pk
    provider = metered_contract.provider
    with time_machine.travel(NOW, tick=False), transaction.atomic():
        answers = []
        for batch in batches:
            result = usage_ingest(provider=provider, records=batch)
            assert {r["code"] for r in result.rejected} <= {"exceeds_capacity"}, result.rejected
            answers.append((result.accepted, result.duplicates, [r["id"] for r in result.rejected]))
        assert answers == oracle_run(batches)
        transaction.set_rollback(True)


def test_ingestion_leaves_the_usage_keys_deferred_as_declared(provider_client, metered_contract, clock):
    """The insert checks the keys itself (SET CONSTRAINTS ... IMMEDIATE) and defers them again after."""
    from django.db import IntegrityError, connection

    with transaction.atomic():
        usage_ingest(provider=metered_contract.provider, records=[record("ok", metered_contract, METERED_START, H1, 1)])
        UsageRecord.objects.create(  # no such node, and no error yet: the key is checked at commit
            provider=metered_contract.provider,
            contract=metered_contract,
            node_id=2**40,
            event_id="direct",
            started_at=METERED_START,
            ended_at=H1,
            gpu_seconds=Decimal(1),
            period=METERED_START.date().replace(day=1),
        )
        with (
            pytest.raises(IntegrityError, match="usage_node_exists"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        transaction.set_rollback(True)
