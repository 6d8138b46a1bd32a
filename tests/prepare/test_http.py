"""http(s) audio through a local server with injected faults: retried, bounded, identified, redacted."""

from __future__ import annotations

import base64
import json

import pytest

from whisper_pipeline.prepare.http import (
    ATTEMPTS,
    MAX_REDIRECTS,
    HttpAccess,
    HttpError,
    HttpSettings,
    is_refresh_token,
    origin,
    redact,
)
from whisper_pipeline.prepare.label_studio import LabelStudioClient, LabelStudioSettings
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


def test_redirects_are_followed_to_the_file_and_the_key_stays_with_its_server(files):
    """A moved file (CDN, presigned link) is fetched and identified where it is; relative and absolute
    locations; the key goes to the Label Studio server's origin only, not to where it redirects."""
    key = "5e1f0c3a9b7d4e2f8a6c1b0d9e8f7a6b5c4d3e2f"
    access = HttpAccess(HttpSettings(token=key, token_origin=origin(files.url)))
    elsewhere = files.url.replace("127.0.0.1", "localhost")  # the same server under another host name
    files.redirect("/old.wav", f"{elsewhere}/moved.wav", 301)
    files.redirect("/moved.wav", "/a%20clip.wav?X-Amz-Signature=s3cr3t", 307)
    assert access.get(f"{files.url}/old.wav") == BODY
    assert files.requests == ["/old.wav", "/moved.wav", "/a clip.wav"]
    assert files.authorized == ["/old.wav"]
    assert access.info(f"{files.url}/old.wav") == access.info(f"{files.url}/a%20clip.wav")


def test_a_redirect_out_of_the_allowed_hosts_or_in_a_loop_is_an_error(files):
    access = HttpAccess(HttpSettings(allowed_hosts=("127.0.0.1",)))
    away = files.url.replace("127.0.0.1", "localhost") + "/a%20clip.wav?X-Amz-Signature=s3cr3t"
    files.redirect("/away.wav", away)
    with pytest.raises(HttpError) as refused:
        access.get(f"{files.url}/away.wav")
    assert refused.value.reason == "host_not_allowed" and "\n" not in str(refused.value)
    assert "redirects to http://localhost:" in str(refused.value) and "s3cr3t" not in str(refused.value)
    assert files.requests == ["/away.wav"]
    files.redirect("/loop.wav", "/loop.wav")
    with pytest.raises(HttpError, match=f"more than {MAX_REDIRECTS} redirects") as looped:
        access.info(f"{files.url}/loop.wav")
    assert not looped.value.transient and files.requests.count("/loop.wav") == MAX_REDIRECTS + 1


def test_a_post_or_delete_is_not_redirected_nor_sent_again_once_the_server_may_have_acted(files):
    """An API write answered by a redirect fails naming where (an http URL behind an https proxy); one
    refused unprocessed (503) is sent again, one answered late or with a 500 is not: it may have been done."""
    access = HttpAccess(HttpSettings(read_timeout=0.5))
    files.redirect("/api/moved", "https://ls.example/api/moved?token=t0k", 301)
    for write in (lambda url: access.post_json(url, []), access.delete):
        with pytest.raises(HttpError, match=r"redirected \(301\) to https://ls\.example/api/moved") as moved:
            write(f"{files.url}/api/moved")
        assert "t0k" not in str(moved.value)
    url = f"{files.url}/a%20clip.wav"
    files.fail_next(1, "status", 503)
    files.fail_next(1, "stall")
    with pytest.raises(HttpError, match="ReadTimeoutError") as late:
        access.post_json(url, [{"task": 1}])
    assert late.value.maybe_done
    told = LabelStudioClient(LabelStudioSettings(files.url, "key"), access)._describe(late.value, 3)
    assert "did not answer" in told and "whether it was done" in told and "cannot reach" not in told
    files.fail_next(1, "status", 500)
    with pytest.raises(HttpError, match="HTTP 500"):
        access.post_json(url, [{"task": 1}])
    assert files.requests.count("/a clip.wav") == 3


def test_a_server_ignoring_the_range_is_not_read_whole_to_stat_a_file(tmp_path):
    big = 64 * 2**20
    (tmp_path / "long.wav").write_bytes(bytes(big))
    with HttpFileServer(tmp_path, ranges=False) as files:
        found = HttpAccess(HttpSettings()).info(f"{files.url}/long.wav")
        assert found.size == big and found.validator.startswith('"')
        assert files.sent < big // 2  # what the socket buffers took, not the file


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
