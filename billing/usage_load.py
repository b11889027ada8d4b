"""How many GPUs a node's or a contract's usage keeps busy at each instant, as a pure rule.

A usage record's GPU-seconds are spread evenly over its [started_at, ended_at): at every
instant of the interval it uses ``gpu_seconds / seconds`` GPUs, its rate. The load at an
instant is the sum of the rates of the records covering it, and usage fits a capacity of
``n`` GPUs when the load never exceeds ``n``. That is the same as: over any interval, the
GPU-seconds the records spend inside it (each record's rate times its overlap) are at most
``n`` times the interval's length.

Times are whole microseconds and GPU-seconds whole milliseconds (``millis``), so a rate is
``1000 * millis / micros`` GPUs, a rational. A load keeps its rates as integers over one
common denominator, the least common multiple of its records' durations: every sum and
comparison is exact, and ordinary records (an hour, half an hour) share one denominator.

No database and no Django: the service loads the stored records and checks the new ones.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from fractions import Fraction
from math import gcd

_MICROS_PER_SECOND = 1_000_000
# Before and after any time a record can have (microseconds from 1970 of years 1 to 9999).
_BEFORE, _AFTER = -(2**63), 2**63


class UsageLoad:
    """The GPUs that records keep busy over time, against a capacity of ``capacity`` GPUs.

    The load is a step function: ``_loads[k]`` GPUs (times ``_scale``) from ``_times[k]`` to
    ``_times[k + 1]``, between two sentinels, so every record's start and end fall inside.
    """

    __slots__ = ("capacity", "_scale", "_limit", "_times", "_loads")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._scale = 1
        self._limit = capacity  # the capacity times the scale
        self._times = [_BEFORE, _AFTER]
        self._loads = [0]

    def fits(self, start: int, end: int, millis: int) -> bool:
        """Whether a record of ``millis`` GPU-milliseconds over [start, end) keeps the load within capacity."""
        rate = self._rate(end - start, millis)
        times = self._times
        return max(self._loads[bisect_right(times, start) - 1 : bisect_left(times, end)]) + rate <= self._limit

    def add(self, start: int, end: int, millis: int) -> None:
        """Count a record of ``millis`` GPU-milliseconds over [start, end)."""
        rate = self._rate(end - start, millis)
        first = self._split(start)
        stop = self._split(end)
        loads = self._loads
        for index in range(first, stop):
            loads[index] += rate

    def within(self, start: int, end: int) -> bool:
        """Whether the load stays within capacity all through [start, end)."""
        times = self._times
        return max(self._loads[bisect_right(times, start) - 1 : bisect_left(times, end)]) <= self._limit

    def peak(self, start: int, end: int) -> Fraction:
        """The most GPUs in use at one instant of [start, end)."""
        first, stop = self._span(start, end)
        return Fraction(max(self._loads[first:stop]), self._scale)

    def used(self, start: int, end: int) -> Fraction:
        """The GPU-seconds the counted records spend inside [start, end)."""
        first, stop = self._span(start, end)
        times = self._times
        total = sum(
            self._loads[index] * (min(times[index + 1], end) - max(times[index], start)) for index in range(first, stop)
        )
        return Fraction(total, self._scale * _MICROS_PER_SECOND)

    def _rate(self, micros: int, millis: int) -> int:
        """The GPUs of ``millis`` GPU-milliseconds over ``micros`` microseconds, times the scale.

        A duration that does not divide the scale grows it (and every load) to a common multiple.
        """
        scale = self._scale
        if scale % micros:
            factor = micros // gcd(scale, micros)
            scale = self._scale = scale * factor
            self._limit = self.capacity * scale
            self._loads = [load * factor for load in self._loads]
        return 1000 * millis * (scale // micros)

    def _span(self, start: int, end: int) -> tuple[int, int]:
        """The steps that overlap [start, end): from the one holding ``start`` to the last before ``end``."""
        return bisect_right(self._times, start) - 1, bisect_left(self._times, end)

    def _split(self, time: int) -> int:
        """The index of the step starting at ``time``, splitting the step that holds it if needed."""
        times = self._times
        index = bisect_left(times, time)
        if times[index] != time:
            times.insert(index, time)
            self._loads.insert(index, self._loads[index - 1])
        return index
