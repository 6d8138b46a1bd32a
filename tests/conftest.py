"""Shared fixtures: real components only (moto's S3 server, espeak-ng speech, real Whisper tokenizer).

Modules of tests/fixtures/ that define fixtures are registered here; plain helpers shared by several test
modules (tests.fixtures.training, tests.fixtures.processes, ...) are imported from there, never from a test
module.
"""

import os

# Under pytest-xdist each worker, and every command it starts, gets its share of the CPUs: torch, OpenMP
# and CTranslate2 (transcribe.cpu_threads) otherwise start a thread per CPU in every process, and threads
# that spin waiting on each other's cores made tests 3 to 4 times slower than alone, not 2.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    threads = str(max(1, len(os.sched_getaffinity(0)) // workers))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(variable, threads)

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.s3",
    "tests.fixtures.audio",
    "tests.fixtures.cache",
    "tests.fixtures.label_studio",
]
