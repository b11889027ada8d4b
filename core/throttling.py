"""Rate limits counted in the shared cache, and the client address they count against."""

import math

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle


def client_address(request) -> str:
    """The address of the client, as every limit per address counts it.

    DRF's rule (``NUM_PROXIES`` in REST_FRAMEWORK): REMOTE_ADDR, or behind that many reverse
    proxies the address in X-Forwarded-For that the last of them saw. The admin's login
    lockout (django-axes) uses it too, so the two never disagree about who a client is.
    """
    return BaseThrottle().get_ident(request)


class FixedWindowRateThrottle(SimpleRateThrottle):
    """A rate in DRF's syntax, counted per fixed window with one atomic increment.

    DRF's SimpleRateThrottle keeps the time of every request in one list that each request
    reads and writes back whole: 6,000 entries at 6,000/min, and two processes writing at
    once lose each other's hits. Here a window has a counter: an INCR in Redis, shared by
    every process. A window lets through at most twice the rate across its boundary.

    Subclasses name the Django setting that holds their rate, read when the throttle is made
    (so a test can change it), and say what they count in ``get_cache_key``.
    """

    rate_setting: str

    def get_rate(self) -> str | None:
        return getattr(settings, self.rate_setting)

    def allow_request(self, request: Request, view) -> bool:
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        return self.hit(key) <= self.num_requests

    def hit(self, key: str) -> int:
        """Count one more in the current window of ``key``; the count so far."""
        window_key = self._window_key(key)
        try:
            return self.cache.incr(window_key)
        except ValueError:  # the window's first hit
            if self.cache.add(window_key, 1, timeout=self.duration + 1):
                return 1
            return self.cache.incr(window_key)

    def exceeded(self, key: str) -> bool:
        """Whether the current window of ``key`` is full, without counting."""
        return self.cache.get(self._window_key(key), 0) >= self.num_requests

    def wait(self) -> int:
        """Seconds until the current window ends."""
        return max(1, math.ceil(self.duration - self.now % self.duration))

    def _window_key(self, key: str) -> str:
        self.now = self.timer()
        return f"{key}:{int(self.now // self.duration)}"
