"""Shared fixtures: real components only (moto's S3 server, espeak-ng speech, real Whisper tokenizer)."""

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.s3",
    "tests.fixtures.audio",
    "tests.fixtures.cache",
]
