"""The daily price index: a day with known trades against a hand computation, the hourly job
(catch-up, once per day, two runs at once), the backfill command and the API."""

import threading
from datetime import UTC, date, datetime
from decimal import Decimal
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from broker.services import contract_cancel
from market.index import price_index_compute
from market.models import PriceIndex, PriceIndexDay
from market.tasks import compute_price_index
from tests.conftest import assert_error, wait_until
from tests.market.factories import listing, resale_listing, signed

INDEX = "/api/v1/market/h100-sxm-80gb/index"
NOW = datetime(2031, 3, 10, 9, 17, 23, tzinfo=UTC)  # yesterday, the last completed day: 2031-03-09


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def window(day: int, hours: int) -> dict:
    return {"starts_at": utc(2031, 3, 12, day), "ends_at": utc(2031, 3, 12, day + hours)}


@pytest.fixture
def trades(db):
    """Trades of 7 and 8 March 2031, signed at known moments (see the hand computation below)."""
    with time_machine.travel(utc(2031, 3, 7, 12), tick=False):
        spot = listing(starts_at=utc(2031, 3, 7, 13), ends_at=utc(2031, 3, 20), price="2.00", nodes=4)
        dear = listing(starts_at=utc(2031, 3, 7, 13), ends_at=utc(2031, 3, 20), price="3.00")
        silly = listing(starts_at=utc(2031, 3, 7, 13), ends_at=utc(2031, 3, 20), price="9.00")
        b200 = listing(starts_at=utc(2031, 3, 7, 13), ends_at=utc(2031, 3, 20), price="4.00", slug="b200")
        resold = resale_listing(spot, price="2.50")
    made = {
        "late on the 7th": signed(spot, at=utc(2031, 3, 7, 23, 59, 59), nodes=1, **window(0, 2)),
        "open": signed(spot, at=utc(2031, 3, 8, 1), nodes=2, **window(0, 10)),  # 16 GPUs x 10 h = 160
        "high": signed(dear, at=utc(2031, 3, 8, 5), nodes=1, **window(0, 5)),  # 8 x 5 = 40
        "close": signed(resold, at=utc(2031, 3, 8, 5), nodes=1, **window(6, 1)),  # 8 x 1 = 8, same moment, later id
        "cancelled": signed(silly, at=utc(2031, 3, 8, 6), nodes=1, **window(0, 1)),
        "b200": signed(b200, at=utc(2031, 3, 8, 7), nodes=1, **window(0, 1)),
    }
    with time_machine.travel(utc(2031, 3, 8, 8), tick=False):
        contract_cancel(contract=made["cancelled"], reason="Entered by mistake")
    return made


def figures(day: date, slug: str = "h100-sxm-80gb") -> tuple:
    row = PriceIndex.objects.get(day=day, gpu_model__slug=slug)
    return row.open, row.high, row.low, row.close, row.notional, row.volume_gpu_hours, row.trades


@pytest.mark.django_db
class TestTheIndex:
    def test_a_day_with_known_trades_matches_a_hand_computation(self, trades, lab_client):
        with time_machine.travel(NOW, tick=False):
            assert compute_price_index() == ["2031-03-07", "2031-03-08", "2031-03-09"]
            response = lab_client.get(INDEX, {"from": "2031-03-06", "to": "2031-03-09"})

        # 8 March: 2.00 x 160 + 3.00 x 40 + 2.50 x 8 = 460.00 over 208 GPU-hours: 2.2115... -> 2.21.
        # The cancelled trade at 9.00 and the B200's at 4.00 are not in it; the 2.50 resale,
        # signed at the same moment as the 3.00 and written after it, closes the day.
        assert response.status_code == 200, response.content
        assert response.json() == {
            "gpu_model": "h100-sxm-80gb",
            "from": "2031-03-06",
            "to": "2031-03-09",
            "days": [
                {
                    "day": "2031-03-07",
                    "open": "2.0000",
                    "high": "2.0000",
                    "low": "2.0000",
                    "close": "2.0000",
                    "vwap": "2.00",
                    "volume_gpu_hours": 16,
                    "trades": 1,
                },
                {
                    "day": "2031-03-08",
                    "open": "2.0000",
                    "high": "3.0000",
                    "low": "2.0000",
                    "close": "2.5000",
                    "vwap": "2.21",
                    "volume_gpu_hours": 208,
                    "trades": 3,
                },
                {
                    "day": "2031-03-09",
                    "open": None,
                    "high": None,
                    "low": None,
                    "close": None,
                    "vwap": None,
                    "volume_gpu_hours": 0,
                    "trades": 0,
                },
            ],
        }
        assert figures(date(2031, 3, 8)) == (
            Decimal("2.0000"),
            Decimal("3.0000"),
            Decimal("2.0000"),
            Decimal("2.5000"),
            Decimal("460.0000"),
            208,
            3,
        )
        assert figures(date(2031, 3, 8), "b200")[4:] == (Decimal("32.0000"), 8, 1)

    def test_the_job_computes_each_completed_day_once_and_catches_up(self, trades):
        with time_machine.travel(NOW, tick=False):
            assert compute_price_index() == ["2031-03-07", "2031-03-08", "2031-03-09"]
            computed_at = dict(PriceIndexDay.objects.values_list("day", "computed_at"))
            rows = list(PriceIndex.objects.values_list("pk", "day", "open", "notional"))
            # Today's trade waits for today to end; a cancellation does not change a computed day.
            spot = trades["open"].listing
            signed(spot, at=NOW, nodes=1, **window(20, 1))
            contract_cancel(contract=trades["high"], reason="Entered by mistake")
            assert compute_price_index() == []
        assert dict(PriceIndexDay.objects.values_list("day", "computed_at")) == computed_at
        assert list(PriceIndex.objects.values_list("pk", "day", "open", "notional")) == rows

        with time_machine.travel(utc(2031, 3, 12, 0, 23), tick=False):  # two days later
            assert compute_price_index() == ["2031-03-10", "2031-03-11"]
        assert figures(date(2031, 3, 10))[4:] == (Decimal("16.0000"), 8, 1)

    def test_no_trade_no_day(self, db):
        with time_machine.travel(NOW, tick=False):
            assert compute_price_index() == []
        assert not PriceIndexDay.objects.exists()

    def test_the_api_leaves_out_days_not_computed(self, trades, lab_client):
        with time_machine.travel(NOW, tick=False):
            price_index_compute(first=date(2031, 3, 8), last=date(2031, 3, 8))
            answer = lab_client.get(INDEX).json()  # the last 30 completed days

        assert (answer["from"], answer["to"]) == ("2031-02-08", "2031-03-09")
        assert [(day["day"], day["trades"]) for day in answer["days"]] == [("2031-03-08", 3)]


@pytest.mark.django_db
class TestBackfill:
    def run(self, *args: str) -> str:
        out = StringIO()
        with time_machine.travel(NOW, tick=False):
            call_command("backfill_price_index", *args, stdout=out)
        return out.getvalue().strip()

    def test_backfill_computes_a_range_once_and_again_with_force(self, trades):
        assert self.run("--from", "2031-03-01", "--to", "2031-03-08") == (
            "Computed 8 day(s) of the price index, 2031-03-01 to 2031-03-08."
        )
        assert self.run("--from", "2031-03-01", "--to", "2031-03-08") == (
            "Every day from 2031-03-01 to 2031-03-08 was already computed."
        )
        assert self.run("--from", "2031-03-08") == "Computed 1 day(s) of the price index, 2031-03-09 to 2031-03-09."

        with time_machine.travel(NOW, tick=False):
            contract_cancel(contract=trades["open"], reason="Entered by mistake")
        assert figures(date(2031, 3, 8))[0] == Decimal("2.0000")
        assert self.run("--from", "2031-03-08", "--to", "2031-03-08", "--force") == (
            "Computed 1 day(s) of the price index, 2031-03-08 to 2031-03-08."
        )
        # Without the 2.00 opening trade: 3.00 x 40 + 2.50 x 8 = 140.00 over 48 GPU-hours.
        assert figures(date(2031, 3, 8)) == (
            Decimal("3.0000"),
            Decimal("3.0000"),
            Decimal("2.5000"),
            Decimal("2.5000"),
            Decimal("140.0000"),
            48,
            2,
        )
        assert PriceIndex.objects.filter(day=date(2031, 3, 8)).count() == 2  # h100 and b200, once each

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--from", "2031-03-01", "--to", "2031-03-10"], "Only completed UTC days"),
            (["--from", "2031-03-05", "--to", "2031-03-04"], "after the last"),
            (["--from", "2031-3-1"], "is not a day"),
            (["--from", "1999-12-31"], "starts at 2000-01-01"),
        ],
    )
    def test_bad_arguments_are_refused(self, db, args, message):
        with pytest.raises(CommandError, match=message):
            self.run(*args)
        assert not PriceIndexDay.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_runs_at_once_compute_each_day_once(trades):
    """A first run has claimed the days and written their figures, not yet committed, when a
    second starts: the second waits for the days, then finds them computed and writes nothing."""
    first_done, release_first = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def first() -> None:
        try:
            with transaction.atomic():
                outcome["first"] = price_index_compute(first=date(2031, 3, 7), last=date(2031, 3, 9))
                first_done.set()
                release_first.wait(timeout=30)
        finally:
            connection.close()

    def second() -> None:
        try:
            outcome["second"] = compute_price_index()
        finally:
            connection.close()

    def waiting_on_a_lock() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return cursor.fetchone()[0] > 0

    with time_machine.travel(NOW, tick=False):
        first_thread = threading.Thread(target=first, daemon=True)
        first_thread.start()
        assert first_done.wait(timeout=30)
        second_thread = threading.Thread(target=second, daemon=True)
        second_thread.start()
        wait_until(waiting_on_a_lock)
        release_first.set()
        first_thread.join(30)
        second_thread.join(30)

    assert outcome == {"first": [date(2031, 3, 7), date(2031, 3, 8), date(2031, 3, 9)], "second": []}
    assert PriceIndexDay.objects.count() == 3
    assert sorted(PriceIndex.objects.values_list("day", "gpu_model__slug")) == [
        (date(2031, 3, 7), "h100-sxm-80gb"),
        (date(2031, 3, 8), "b200"),
        (date(2031, 3, 8), "h100-sxm-80gb"),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2031-03-09", "to": "2031-03-08"}, "to"),
        ({"from": "2030-03-08", "to": "2031-03-09"}, "to"),  # 367 days
        ({"from": "8 March"}, "from"),
        ({"to": "2031-03-09T00:00:00Z"}, "to"),
        ({"from": ""}, "from"),
        ({"from": "1999-12-31", "to": "2000-01-02"}, "from"),
        ({"to": "2100-01-01"}, "to"),
    ],
)
def test_bad_parameters_are_400_naming_them(lab_client, params, field):
    with time_machine.travel(NOW, tick=False):
        error = assert_error(lab_client.get(INDEX, params), 400, "invalid")
    assert field in error["fields"], error


@pytest.mark.django_db
def test_366_days_are_allowed(lab_client):
    with time_machine.travel(NOW, tick=False):
        assert lab_client.get(INDEX, {"from": "2030-03-09", "to": "2031-03-09"}).status_code == 200
