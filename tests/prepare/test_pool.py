"""The bound on recordings in flight between their download and their result."""

import threading

from whisper_pipeline.prepare.pool import InFlight


def test_in_flight_recordings_are_bounded_by_count_and_bytes_and_a_large_one_goes_alone():
    stop = threading.Event()
    in_flight = InFlight(count=3, budget=100)
    assert in_flight.acquire(60, stop) and in_flight.acquire(40, stop)
    stop.set()
    assert not in_flight.acquire(1, stop)  # over the byte budget: it waits, and gives up once stopped
    in_flight.release(60)
    in_flight.release(40)
    stop.clear()
    assert in_flight.acquire(500, stop)  # alone, a recording larger than the budget still goes
    stop.set()
    assert not in_flight.acquire(1, stop)
    in_flight.release(500)
    stop.clear()
    assert all(in_flight.acquire(1, stop) for _ in range(3))
    stop.set()
    assert not in_flight.acquire(1, stop)  # the count bound
