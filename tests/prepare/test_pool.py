"""The bound on recordings in flight between their download and their result."""

import os
import threading

from whisper_pipeline.prepare.pool import InFlight, usable_cpus, worker_count


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


def _cgroup(tmp_path, relative: str, quotas: dict[str, str]):
    """A cgroup v2 tree under tmp_path: cpu.max per folder, and the /proc/self/cgroup line naming ours."""
    root = tmp_path / "cgroup"
    for folder, quota in quotas.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(f"{quota}\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::{relative}\n")
    return root, proc


def test_workers_follow_the_containers_cpu_quota_not_the_hosts_cpu_count(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    # docker --cpus 1.5 inside the container's namespace ("0::/"): 150000 us per 100000 us, 2 CPUs' worth.
    root, proc = _cgroup(tmp_path, "/", {".": "150000 100000"})
    assert usable_cpus(root, proc) == min(affinity, 2)
    # A parent's limit holds for its children; no limit ("max") leaves the affinity.
    root, proc = _cgroup(
        tmp_path / "b",
        "/system.slice/job",
        {"system.slice": "100000 100000", "system.slice/job": "max 100000"},
    )
    assert usable_cpus(root, proc) == 1
    root, proc = _cgroup(tmp_path / "c", "/", {".": "max 100000"})
    assert usable_cpus(root, proc) == affinity
    # cgroup v1 only (no "0::" line), or no /proc: the affinity mask.
    assert usable_cpus(root, tmp_path / "absent") == affinity
    assert worker_count(3) == 3 and worker_count(0) == usable_cpus()
