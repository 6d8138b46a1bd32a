"""The fork server that prepare_data.py's feature worker processes are forked from.

A module of its own, importing nothing but multiprocessing, so that prepare_data.py can start the server
before it imports anything else: the server's imports (the workers' modules) then run on another core
while the main process imports the stage (transformers, for its flags), reads the export and plans, and
the workers are ready when the first recording is. Each worker is forked
with those modules imported once (a worker spawned afresh would import them again), not from the main
process, whose threads (S3 downloads) make fork unsafe.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress

# pandas: pyarrow imports it on its first pa.array, to recognise a Series; here, once, not in
# each worker's first recording.
WORKER_MODULES = ("whisper_pipeline.prepare.worker", "audiomentations", "pandas")


def start_worker_server() -> multiprocessing.context.ForkServerContext:
    """Start the fork server unless it runs already; returns at once (its imports run in the server).
    Forking a worker waits for them."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_MODULES))
    multiprocessing.forkserver.ensure_running()
    return context


@contextmanager
def worker_server_for_command() -> Iterator[None]:
    """The fork server for the length of a command: started on entering, stopped on leaving.

    Stopped, not left to notice that its parent is gone: that it notices only once its imports are done,
    and a command that ends without forking workers (its cache current, a mistake in its inputs) would
    leave it importing for a second more, holding the terminal's pipe (run_pipeline.sh's `| tee`) open."""
    start_worker_server()
    try:
        yield
    finally:
        # multiprocessing keeps the server's pid, unexposed; the workers have ended (the build waits for them)
        pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
        if pid is not None:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
