"""Stage 1's workforce: download threads feeding feature worker processes, with bounded memory.

Threads fetch the audio (one S3 client, thread-safe), worker processes forked from the fork server decode,
augment and featurize it (one BLAS thread each), and at most a few recordings are in flight between the
two: memory stays flat however large the export.
"""

from __future__ import annotations

import math
import multiprocessing.context
import os
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from whisper_pipeline.prepare.sources import AudioAccess, AudioRef, AudioSourceError
from whisper_pipeline.prepare.worker import (
    RecordingOutcome,
    RecordingWork,
    WorkerSetup,
    init_worker,
    process_recording,
)

IN_FLIGHT_BYTES = 256 * 2**20  # encoded audio downloaded and not yet featurized, at most (see InFlight)


def worker_count(num_workers: int) -> int:
    """--num-workers, or one worker per CPU this process may use."""
    return num_workers or usable_cpus()


def usable_cpus(
    cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> int:
    """The CPUs this process may run on (its affinity: taskset, docker --cpuset-cpus), capped by its cgroup
    v2 CPU quota (docker --cpus, compose `cpus:`, a Kubernetes limit) and every parent's. os.cpu_count()
    counts the host's CPUs: in a container limited to 4 of 64, 64 workers would share 4 CPUs' time."""
    cpus = len(os.sched_getaffinity(0))
    try:  # cgroup v2: "0::/path" (inside a container's cgroup namespace: "0::/")
        relative = next(line[3:] for line in proc_cgroup.read_text().splitlines() if line.startswith("0::"))
    except (OSError, StopIteration):
        return cpus
    folder = cgroup_root / relative.strip().lstrip("/")
    for level in (folder, *folder.parents):
        try:
            quota, period = (level / "cpu.max").read_text().split()
        except (OSError, ValueError):
            quota = "max"
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
        if level == cgroup_root:
            break
    return cpus


class InFlight:
    """Recordings between the start of their download and their result: at most `count` of them and
    `budget` bytes of encoded audio (a larger recording goes alone). Small files keep every download
    thread busy behind a slow bucket; large ones cannot pile up in memory."""

    def __init__(self, count: int, budget: int) -> None:
        self._count, self._budget = count, budget
        self._items = self._bytes = 0
        self._changed = threading.Condition()

    def acquire(self, size: int, stop: threading.Event) -> bool:
        """Wait for room; False once `stop` is set."""
        with self._changed:
            while not self._fits(size):
                if stop.is_set():
                    return False
                self._changed.wait(0.2)
            self._items, self._bytes = self._items + 1, self._bytes + size
            return True

    def _fits(self, size: int) -> bool:
        return self._items < self._count and (self._items == 0 or self._bytes + size <= self._budget)

    def release(self, size: int) -> None:
        with self._changed:
            self._items, self._bytes = self._items - 1, self._bytes - size
            self._changed.notify_all()


@contextmanager
def feature_workers(
    count: int, setup: WorkerSetup, context: multiprocessing.context.ForkServerContext
) -> Iterator[ProcessPoolExecutor]:
    """The feature worker processes, started at once so that they are ready when the main process has
    loaded the tokenizer and planned. The executor starts a process for each task submitted while none is
    idle: one trivial task per worker starts them all; a thread does that, since each start waits for the
    fork server's imports. Leaving cancels what has not started."""
    workers = ProcessPoolExecutor(count, mp_context=context, initializer=init_worker, initargs=(setup,))

    def start_all() -> None:
        for _ in range(count):
            workers.submit(os.getpid)

    starting = threading.Thread(target=start_all, name="start-workers", daemon=True)
    starting.start()
    try:
        yield workers
    finally:
        starting.join()
        workers.shutdown(wait=True, cancel_futures=True)


def fetch_and_process(
    pending: Sequence[RecordingWork],
    refs: Mapping[str, AudioRef],
    sizes: Mapping[str, int],
    *,
    workers: ProcessPoolExecutor,
    in_flight: int,
    download_concurrency: int,
    access: AudioAccess,
) -> Iterator[tuple[RecordingWork, RecordingOutcome | AudioSourceError]]:
    """Each pending recording downloaded by a thread and processed by a worker; yields, in the calling
    thread and in the order they finish, each one's outcome or the download's AudioSourceError. Any other
    error stops the work and is raised here. At most `in_flight` recordings (and IN_FLIGHT_BYTES) are
    between their download and their result."""
    room = InFlight(in_flight, IN_FLIGHT_BYTES)
    stop = threading.Event()
    finished: queue.Queue[tuple[RecordingWork, Future | None, BaseException | None]] = queue.Queue()
    if any(refs[work.audio_uri].kind == "s3" for work in pending):
        access.s3.client()  # made here: a setting it refuses is raised in this thread

    def fetch_and_submit(work: RecordingWork) -> None:
        size = sizes[work.audio_uri]
        if not room.acquire(size, stop):
            return
        try:
            data = access.read(refs[work.audio_uri])
            future = workers.submit(process_recording, work, data)
        except BaseException as error:  # handed to the calling thread, which decides
            room.release(size)
            finished.put((work, None, error))
            return

        def finish(completed: Future) -> None:
            room.release(size)
            finished.put((work, completed, None))

        future.add_done_callback(finish)

    with ThreadPoolExecutor(max(1, download_concurrency)) as downloads:
        try:
            for work in pending:
                downloads.submit(fetch_and_submit, work)
            for _ in pending:
                work, future, error = finished.get()
                if error is not None and not isinstance(error, AudioSourceError):
                    raise error
                yield work, error if future is None else future.result()
        finally:
            stop.set()
