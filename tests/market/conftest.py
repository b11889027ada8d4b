import pytest
import time_machine

from tests.marketplace.factories import NOW


@pytest.fixture
def frozen(db):
    """The clock stopped at ``NOW`` (2031-03-10 09:17:23 UTC); ``frozen.move_to(...)`` moves it."""
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller
