"""The feature workers' fork server: started first by prepare_data.py, stopped when the command ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# In a process of its own: the test process keeps its own fork server (the prepare tests fork workers).
PROBE = """
import json, multiprocessing.forkserver, os, signal
from whisper_pipeline.prepare.fork_server import (
    WORKER_MODULES,
    start_worker_server,
    worker_server_for_command,
)

with worker_server_for_command():
    server = multiprocessing.forkserver._forkserver
    pid = server._forkserver_pid
    start_worker_server()  # as prepare.run_prepare calls it again: the running server is kept
    same = server._forkserver_pid == pid
_, status = os.waitpid(pid, 0)  # still importing its modules when the command ends: stopped, not awaited
print(json.dumps({
    "same_server": same,
    "terminated": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM,
    "preload": list(WORKER_MODULES),
}))
"""


def test_the_fork_server_starts_once_and_is_stopped_when_the_command_ends():
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, cwd=ROOT, timeout=60
    )
    outcome = json.loads(result.stdout)
    assert outcome["same_server"]
    assert outcome["terminated"]
    assert outcome["preload"][0] == "whisper_pipeline.prepare.worker"
