"""Shared fixtures: real components only (moto's S3 server, espeak-ng speech, real Whisper tokenizer).

Modules of tests/fixtures/ that define fixtures are registered here; plain helpers shared by several test
modules (tests.fixtures.training, tests.fixtures.processes, ...) are imported from there, never from a test
module.
"""

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.s3",
    "tests.fixtures.audio",
    "tests.fixtures.cache",
    "tests.fixtures.label_studio",
]
