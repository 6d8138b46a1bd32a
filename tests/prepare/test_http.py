"""http(s) audio through a local server with injected faults: retried, bounded, identified, redacted."""

from __future__ import annotations

import base64
import json

import pytest

from whisper_pipeline.prepare.http import (
    ATTEMPTS,
    HttpAccess,
    HttpError,
    HttpSettings,
    is_refresh_token,
    origin,
    redact,
)
from whisper_pipeline.testing.http_files import HttpFileServer

BODY = bytes(range(256)) * 64


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a clip.wav").write_bytes(BODY)
    with HttpFileServer(tmp_path) as server:
        yield server


@pytest.mark.parametrize("fault", ["status", "truncate", "reset"])
def test_transient_faults_are_retried_until_the_whole_body_arrives(files, fault):
    access = HttpAccess(HttpSettings())
    files.fail_next(2, fault)
    assert access.get(f"{files.url}/a%20clip.wav?X-Amz-Signature=s3cr3t") == BODY
    assert access.retries == 2


def test_persistent_failures_missing_files_bounds_and_hosts_are_errors_without_secrets(files):
    access = HttpAccess(HttpSettings(max_bytes=len(BODY) - 1))
    url = f"{files.url}/a%20clip.wav?X-Amz-Signature=s3cr3t&token=t0k"
    files.fail_next(ATTEMPTS, "status", 503)
    with pytest.raises(HttpError) as failed:
        access.get(url)
    assert failed.value.transient and "s3cr3t" not in str(failed.value) and "t0k" not in str(failed.value)
    with pytest.raises(HttpError, match="over the") as too_large:
        access.get(url)
    assert not too_large.value.transient
    with pytest.raises(HttpError) as missing:
        access.get(f"{files.url}/nothing.wav")
    assert missing.value.reason == "missing_object"
    with pytest.raises(HttpError) as refused:
        HttpAccess(HttpSettings(allowed_hosts=("audio.example",))).get(url)
    assert refused.value.reason == "host_not_allowed"


def test_a_url_is_identified_by_size_and_etag_and_named_without_its_signature(files, tmp_path):
    access = HttpAccess(HttpSettings())
    url = f"{files.url}/a%20clip.wav?X-Amz-Signature=one"
    first = access.info(url)
    assert first.size == len(BODY) and first.validator
    assert access.info(f"{files.url}/a%20clip.wav?X-Amz-Signature=two") == first  # re-signed: same file
    (tmp_path / "a clip.wav").write_bytes(BODY[::-1])
    assert access.info(url).validator != first.validator
    shown = f"{files.url}/a%20clip.wav"
    assert redact(url) == redact(f"{shown}?X-Amz-Signature=two") == shown


def _jwt(payload: dict) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(payload)}.c2lnbmF0dXJl"


def test_a_legacy_key_goes_as_token_to_its_server_only_and_a_refresh_jwt_is_told_apart():
    """(The exchange of a personal access token against the real server: test_label_studio.py.)"""
    key = "5e1f0c3a9b7d4e2f8a6c1b0d9e8f7a6b5c4d3e2f"
    access = HttpAccess(HttpSettings(token=key, token_origin=origin("http://ls.example:8080")))
    assert access.headers("http://ls.example:8080/api/projects/1") == {"Authorization": f"Token {key}"}
    assert access.headers("http://audio.example/a.wav") == {}
    assert access.headers("https://ls.example:8080/api/projects/1") == {}  # another origin
    assert is_refresh_token(_jwt({"token_type": "refresh", "user_id": 1}))
    assert not is_refresh_token(_jwt({"token_type": "access", "user_id": 1}))
    assert not is_refresh_token(key) and not is_refresh_token("a.b.c")
