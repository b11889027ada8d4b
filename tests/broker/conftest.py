import pytest
import time_machine

from tests.marketplace.factories import NOW


@pytest.fixture
def frozen():
    """The clock stopped at ``NOW`` (09:17:23 UTC); ``frozen.move_to(...)`` moves it."""
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller
