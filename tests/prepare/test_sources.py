"""audio_sources against moto's real S3 server: TLS with a private CA, plain HTTP behind a fault proxy."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from botocore.exceptions import EndpointConnectionError

from whisper_pipeline.errors import ConfigError, S3Error
from whisper_pipeline.prepare.sources import (
    LIST_MIN_OBJECTS,
    AudioRef,
    AudioSourceError,
    Listing,
    ObjectInfo,
    S3Settings,
    Scan,
    TransferStats,
    UnresolvableAudioError,
    _fail_fast,
    listings,
    make_s3_client,
    preflight,
    read_bytes,
    resolve_audio_uri,
    scan,
    split_s3_uri,
    stat,
    stat_all,
)
from whisper_pipeline.testing.local_s3 import free_port
from whisper_pipeline.testing.s3_proxy import FaultRule, S3Proxy

REPO = Path(__file__).resolve().parents[2]
SECRET = "SECRET-canary-123"


def _refused(uri: str, reason: str, **kwargs) -> UnresolvableAudioError:
    settings = {"default_bucket": None, "local_files_root": None, **kwargs}
    with pytest.raises(UnresolvableAudioError) as caught:
        resolve_audio_uri(uri, **settings)
    assert caught.value.reason == reason and not caught.value.transient
    return caught.value


# --- resolving URIs ----------------------------------------------------------------------------------


def test_s3_uris_keep_the_key_as_written():
    ref = resolve_audio_uri(" s3://clips/a b/x#1?.wav ", default_bucket="other", local_files_root=None)
    assert ref == AudioRef("s3://clips/a b/x#1?.wav", "s3", bucket="clips", key="a b/x#1?.wav")
    assert split_s3_uri("s3://exports/ls/project.json") == ("exports", "ls/project.json")
    for uri in ("s3://clips", "s3://clips/", "s3:///key.wav"):
        _refused(uri, "unsupported_uri")


def test_bare_keys_use_the_default_bucket():
    ref = resolve_audio_uri("audio/one.flac", default_bucket="clips", local_files_root=None)
    assert (ref.kind, ref.bucket, ref.key) == ("s3", "clips", "audio/one.flac")
    assert "S3_BUCKET_NAME" in str(_refused("audio/one.flac", "no_bucket"))


def test_label_studio_paths_resolve_under_their_own_roots(tmp_path):
    """Local files under --local-files-root, uploads under --upload-root: one export may mix both."""
    root, uploads = tmp_path / "root", tmp_path / "media" / "upload"
    (root / "audio dir").mkdir(parents=True)
    (root / "audio dir" / "a+b.wav").write_bytes(b"x")
    (uploads / "7").mkdir(parents=True)
    (uploads / "7" / "f1-clip.mp3").write_bytes(b"x")
    cases = {
        "/data/local-files/?d=audio%20dir%2Fa%2Bb.wav": root / "audio dir" / "a+b.wav",
        "http://ls.example:8080/data/local-files/?d=audio%20dir/a%2Bb.wav": root / "audio dir" / "a+b.wav",
        "/data/upload/7/f1-clip.mp3": uploads / "7" / "f1-clip.mp3",
        "https://ls.example/data/upload/7/f1-clip.mp3": uploads / "7" / "f1-clip.mp3",
    }
    for uri, expected in cases.items():
        ref = resolve_audio_uri(uri, default_bucket="clips", local_files_root=root, upload_root=uploads)
        assert (ref.uri, ref.kind, ref.path) == (uri, "local", expected.resolve()), uri
    assert "--upload-root" in str(_refused("/data/upload/7/f1-clip.mp3", "upload_root_required"))
    _refused("/data/upload/7/f1-clip.mp3", "upload_root_required", local_files_root=root)
    _refused("/data/local-files/?d=a.wav", "local_files_root_required", upload_root=uploads)


def test_paths_that_leave_the_root_are_refused(tmp_path):
    root = tmp_path / "root"
    (root / "audio").mkdir(parents=True)
    (tmp_path / "outside.wav").write_bytes(b"x")
    (root / "audio" / "inside.wav").write_bytes(b"x")
    os.symlink(tmp_path / "outside.wav", root / "audio" / "escape.wav")
    os.symlink(root / "audio" / "inside.wav", root / "audio" / "alias.wav")
    for uri in (
        "/data/local-files/?d=../../etc/passwd",
        "/data/local-files/?d=audio/../../outside.wav",
        "/data/local-files/?d=audio%2F..%2F..%2Foutside.wav",
        "/data/local-files/?d=audio/escape.wav",
        "/data/upload/../../outside.wav",
        "/data/local-files/?d=",
    ):
        _refused(uri, "path_escapes_root", local_files_root=root, upload_root=root)
    inside = resolve_audio_uri(
        "/data/local-files/?d=audio/alias.wav", default_bucket=None, local_files_root=root
    )
    assert inside.path == (root / "audio" / "inside.wav").resolve()


def test_absolute_and_file_uris_are_plain_local_files(tmp_path):
    path = tmp_path / "a clip.wav"
    assert resolve_audio_uri(str(path), default_bucket="b", local_files_root=None).path == path
    ref = resolve_audio_uri(path.as_uri(), default_bucket="b", local_files_root=None)
    assert (ref.kind, ref.path) == ("local", path)


def test_allowed_buckets_and_unsupported_uris():
    allowed = {"default_bucket": "clips", "allowed_buckets": ["clips"]}
    assert resolve_audio_uri("s3://clips/a.wav", local_files_root=None, **allowed).bucket == "clips"
    assert resolve_audio_uri("a.wav", local_files_root=None, **allowed).bucket == "clips"
    _refused("s3://elsewhere/a.wav", "bucket_not_allowed", allowed_buckets=["clips"])
    _refused("a.wav", "bucket_not_allowed", default_bucket="elsewhere", allowed_buckets=["clips"])
    assert resolve_audio_uri("s3://any/a.wav", default_bucket=None, local_files_root=None, allowed_buckets=[])
    url = "https://u:p@example.com/a.flac?X-Amz-Signature=s&v=2"
    ref = resolve_audio_uri(url, **allowed, local_files_root=None)
    assert (ref.kind, ref.url) == ("http", url)
    assert ref.uri.startswith("https://example.com/a.flac?…") and "s&" not in ref.uri and "u:p" not in ref.uri
    _refused("ftp://example.com/a.flac", "unsupported_uri")


# --- settings and clients ----------------------------------------------------------------------------


def test_settings_never_show_the_secret():
    settings = S3Settings.from_env(
        {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": SECRET}
    )
    assert settings.secret_access_key == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings) and "AKIDEXAMPLE" in repr(settings)


def test_endpoint_and_region_precedence_empty_means_unset():
    env = {
        "S3_ENDPOINT_URL": "https://minio.internal:9000",
        "AWS_ENDPOINT_URL_S3": "https://s3-specific",
        "AWS_ENDPOINT_URL": "https://generic",
    }
    assert S3Settings.from_env(env).endpoint_url == "https://minio.internal:9000"
    assert S3Settings.from_env({**env, "S3_ENDPOINT_URL": ""}).endpoint_url == "https://s3-specific"
    only_generic = {"S3_ENDPOINT_URL": "", "AWS_ENDPOINT_URL_S3": "", "AWS_ENDPOINT_URL": "https://generic"}
    assert S3Settings.from_env(only_generic).endpoint_url == "https://generic"
    empty = S3Settings.from_env({"AWS_REGION": "", "S3_BUCKET_NAME": "", "AWS_CA_BUNDLE": ""})
    assert (empty.endpoint_url, empty.region, empty.bucket_name, empty.ca_bundle) == (
        None,
        "us-east-1",
        None,
        None,
    )
    assert S3Settings.from_env({"AWS_DEFAULT_REGION": "eu-west-3"}).region == "eu-west-3"
    assert (
        S3Settings.from_env({"AWS_REGION": "ap-southeast-1", "AWS_DEFAULT_REGION": "x"}).region
        == "ap-southeast-1"
    )


def test_a_missing_ca_bundle_file_is_a_config_error(s3_bucket, tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=f"AWS_CA_BUNDLE={missing}: no such file"):
        make_s3_client(S3Settings.from_env({**s3_bucket.env, "AWS_CA_BUNDLE": str(missing)}))


def test_missing_credentials_name_the_variables(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(S3Error, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        make_s3_client(S3Settings(endpoint_url="https://127.0.0.1:1"))
    with pytest.raises(S3Error, match="AWS_SECRET_ACCESS_KEY is not set"):
        make_s3_client(S3Settings(endpoint_url="https://127.0.0.1:1", access_key_id="AKIDEXAMPLE"))


# --- preflight: one line naming the setting to fix, after one attempt -----------------------------------

PREFLIGHT_RETRY_EVENT = "needs-retry.s3.HeadBucket"


def _retry_hooks(client) -> list:
    """The handlers botocore calls, in order, to decide whether a failed HeadBucket is retried. botocore
    has no public listing: the client's EventAliaser wraps a HierarchicalEmitter whose trie holds them."""
    return list(client.meta.events._emitter._handlers.prefix_search(PREFLIGHT_RETRY_EVENT))


def _sends(client) -> list[int]:
    """One entry per HeadBucket request the client sends from now on: botocore's retries included."""
    sent: list[int] = []
    client.meta.events.register("before-send.s3.HeadBucket", lambda **_: sent.append(1))
    return sent


def _one_line_s3_error(env: dict[str, str], buckets: list[str]) -> tuple[str, int]:
    """preflight's error with a fresh client for `env`, and how many HeadBucket requests it sent."""
    client = make_s3_client(S3Settings.from_env(env))
    sent = _sends(client)
    with pytest.raises(S3Error) as caught:
        preflight(client, buckets)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message, len(sent)


def test_preflight_holds_its_fail_fast_hook_only_while_it_runs(s3_bucket):
    """While preflight's HeadBuckets run, the hook decides ahead of botocore's retry handler; after each call,
    passed or failed, it is gone (so the next preflight can put it back: botocore ignores a second
    registration under the same unique_id, which calling preflight twice alone would never notice)."""
    client = make_s3_client(S3Settings.from_env(s3_bucket.env))
    before = _retry_hooks(client)
    assert _fail_fast not in before
    (retry,) = [hook for hook in before if getattr(hook, "__name__", "") == "needs_retry"]  # botocore's
    during: list[list] = []
    client.meta.events.register("before-send.s3.HeadBucket", lambda **_: during.append(_retry_hooks(client)))
    preflight(client, [s3_bucket.name])
    assert _retry_hooks(client) == before
    with pytest.raises(S3Error, match="does not exist"):
        preflight(client, [s3_bucket.name, f"{s3_bucket.name}-absent"])
    assert _retry_hooks(client) == before
    assert len(during) == 3  # one request per bucket, each made with the hook in place, ahead of botocore's
    for hooks in during:
        assert [hook for hook in hooks if hook is not _fail_fast] == before
        assert hooks.count(_fail_fast) == 1 and hooks.index(_fail_fast) < hooks.index(retry)


def test_after_a_failed_preflight_the_client_retries_again(s3_bucket):
    """What the hook's removal is for, seen from outside: the same client's next HeadBucket to the same
    unreachable endpoint is retried by botocore (S3_MAX_ATTEMPTS=2: three requests), preflight's is not."""
    endpoint = f"https://127.0.0.1:{free_port()}"
    env = {**s3_bucket.env, "S3_ENDPOINT_URL": endpoint, "S3_MAX_ATTEMPTS": "2"}
    client = make_s3_client(S3Settings.from_env(env))
    sent = _sends(client)
    with pytest.raises(S3Error, match="cannot reach"):
        preflight(client, [s3_bucket.name])
    assert len(sent) == 1
    sent.clear()
    with pytest.raises(EndpointConnectionError):
        client.head_bucket(Bucket=s3_bucket.name)
    assert len(sent) == 3


def test_an_untrusted_certificate_fails_fast_naming_aws_ca_bundle(s3_bucket):
    message, requests = _one_line_s3_error({**s3_bucket.env, "AWS_CA_BUNDLE": ""}, [s3_bucket.name])
    assert "certificate" in message and "AWS_CA_BUNDLE" in message, message
    assert requests == 1  # no retry of a TLS failure (botocore's own policy makes up to 9 attempts)


def test_an_unknown_bucket_is_named(s3_bucket):
    missing = f"{s3_bucket.name}-absent"
    message, requests = _one_line_s3_error(s3_bucket.env, [s3_bucket.name, missing])
    assert repr(missing) in message and "S3_BUCKET_NAME" in message, message
    assert requests == 2  # one per bucket, stopping at the missing one


def test_an_unreachable_endpoint_fails_fast_naming_it(s3_bucket):
    endpoint = f"https://127.0.0.1:{free_port()}"
    message, requests = _one_line_s3_error({**s3_bucket.env, "S3_ENDPOINT_URL": endpoint}, [s3_bucket.name])
    assert f"S3_ENDPOINT_URL={endpoint}" in message, message
    assert requests == 1  # refused connections are not retried (botocore's own policy makes up to 9 attempts)


def test_a_failing_cli_prints_one_line_and_never_the_secret(s3_bucket):
    code = (
        "import os, sys\n"
        "from whisper_pipeline.prepare.sources import S3Settings, make_s3_client, preflight\n"
        "from whisper_pipeline.errors import exit_on_user_error\n"
        "@exit_on_user_error\n"
        "def main():\n"
        "    preflight(make_s3_client(S3Settings.from_env(os.environ)), [os.environ['S3_BUCKET_NAME']])\n"
        "sys.exit(main())\n"
    )
    env = {**os.environ, **s3_bucket.env, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": SECRET}
    env.pop("AWS_CA_BUNDLE")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert SECRET not in output and "Traceback" not in output, output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, output
    assert "AWS_CA_BUNDLE" in result.stderr, output


# --- stat and read_bytes ------------------------------------------------------------------------------


def test_stat_and_read_over_tls_with_the_ca_bundle(s3_bucket):
    data = os.urandom(300_000)
    ref = resolve_audio_uri(s3_bucket.put("clips/a.flac", data), default_bucket=None, local_files_root=None)
    info = stat(ref, s3_bucket.client)
    assert info == ObjectInfo(size=len(data), etag=hashlib.md5(data).hexdigest())
    stats = TransferStats()
    assert read_bytes(ref, s3_bucket.client, stats) == data
    assert (stats.objects, stats.bytes, stats.retries) == (1, len(data), 0)


def test_missing_and_empty_objects_are_permanent_skips(s3_bucket):
    missing = AudioRef(s3_bucket.uri("absent.wav"), "s3", bucket=s3_bucket.name, key="absent.wav")
    for operation in (stat, read_bytes):
        with pytest.raises(AudioSourceError) as caught:
            operation(missing, s3_bucket.client)
        assert (caught.value.reason, caught.value.transient) == ("missing_object", False)
        assert str(caught.value) == f"{missing.uri}: no such object"
    s3_bucket.put("empty.wav", b"")
    empty = AudioRef(s3_bucket.uri("empty.wav"), "s3", bucket=s3_bucket.name, key="empty.wav")
    with pytest.raises(AudioSourceError) as caught:
        read_bytes(empty, s3_bucket.client)
    assert (caught.value.reason, caught.value.transient) == ("empty_object", False)


def _calls(client) -> list[str]:
    """The S3 operations the client sends from now on, in order."""
    calls: list[str] = []
    client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    return calls


def test_stat_all_lists_a_bucket_instead_of_one_request_per_object(s3_bucket, tmp_path):
    count = LIST_MIN_OBJECTS + 8
    data = {f"calls/{index:03d}.flac": os.urandom(100 + index) for index in range(count)}
    for key, body in data.items():
        s3_bucket.put(key, body)
    s3_bucket.put("other/unrelated.flac", b"x")
    refs = [
        resolve_audio_uri(s3_bucket.uri(key), default_bucket=None, local_files_root=None)
        for key in [*data, "calls/absent.flac"]
    ]
    local = tmp_path / "a.wav"
    local.write_bytes(b"RIFF")
    refs.append(AudioRef(str(local), "local", path=local))
    calls = _calls(s3_bucket.client)
    infos = stat_all(refs, s3_bucket.client, concurrency=4)
    assert calls.count("ListObjectsV2") == 1 and calls.count("HeadObject") == 1  # the absent one
    for ref in refs[:count]:
        assert infos[ref.uri] == stat(ref, s3_bucket.client)
    assert isinstance(infos[s3_bucket.uri("calls/absent.flac")], AudioSourceError)
    assert infos[str(local)] == stat(refs[-1], None)


def test_a_complete_scan_made_ahead_stands_for_the_listing_and_a_partial_one_does_not(s3_bucket):
    count = LIST_MIN_OBJECTS + 2
    keys = [f"ahead/take/{index:03d}.flac" for index in range(count)]
    for key in keys:
        s3_bucket.put(key, key.encode())
    refs = [resolve_audio_uri(s3_bucket.uri(key), default_bucket=None, local_files_root=None) for key in keys]
    (listing,) = listings(refs)
    assert listing == Listing(s3_bucket.name, "ahead/take/0", count)  # their common character prefix
    wider = Listing(s3_bucket.name, "ahead/", count)  # a previous run's listing: covers this one
    ahead = scan(s3_bucket.client, wider)
    assert ahead.complete and set(ahead.found) == set(keys)
    fresh = stat_all(refs, s3_bucket.client, concurrency=2)
    calls = _calls(s3_bucket.client)
    assert stat_all(refs, s3_bucket.client, concurrency=2, scanned={wider: ahead}) == fresh
    assert calls == []  # nothing asked: the scan made ahead answered for every object
    # A scan that stopped before the end of its prefix, or of another prefix, or of a bucket that cannot be
    # listed, stands for nothing: the listing is made again.
    other, missing = Listing(s3_bucket.name, "elsewhere/", count), Listing("no-such-bucket", "ahead/", count)
    assert scan(s3_bucket.client, missing) == Scan({}, complete=False)
    scans = {
        Listing(s3_bucket.name, "ahead/t", count): Scan(ahead.found, complete=False),
        other: scan(s3_bucket.client, other),
        missing: Scan({}, complete=False),
    }
    calls.clear()
    assert stat_all(refs, s3_bucket.client, concurrency=2, scanned=scans) == fresh
    assert calls == ["ListObjectsV2"]


def test_stat_all_asks_each_object_when_there_are_few(s3_bucket):
    refs = [
        resolve_audio_uri(
            s3_bucket.put(f"few/{index}.wav", b"RIFF"), default_bucket=None, local_files_root=None
        )
        for index in range(3)
    ]
    calls = _calls(s3_bucket.client)
    infos = stat_all(refs, s3_bucket.client, concurrency=2)
    assert sorted(calls) == ["HeadObject"] * 3
    assert all(info == ObjectInfo(size=4, etag=hashlib.md5(b"RIFF").hexdigest()) for info in infos.values())


def test_local_files_stat_and_read(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(b"RIFF....")
    ref = AudioRef(str(path), "local", path=path)
    info = path.stat()
    assert stat(ref, None) == ObjectInfo(size=8, etag=f"8-{info.st_mtime_ns}")
    assert read_bytes(ref, None) == b"RIFF...."
    gone = AudioRef(str(tmp_path / "gone.wav"), "local", path=tmp_path / "gone.wav")
    for operation in (stat, read_bytes):
        with pytest.raises(AudioSourceError) as caught:
            operation(gone, None)
        assert caught.value.reason == "missing_file"


@pytest.fixture
def http_bucket(s3_server):
    """A bucket on the plain HTTP server, which the fault proxy can sit in front of."""
    name = f"faults-{os.urandom(8).hex()}"
    s3_server.create_bucket(name)
    return name


def _through(proxy: S3Proxy, server, **overrides: str):
    return make_s3_client(
        S3Settings.from_env({**server.env(), "S3_ENDPOINT_URL": proxy.endpoint_url, **overrides})
    )


def test_bodies_cut_short_or_reset_are_read_again(s3_server, http_bucket):
    data = os.urandom(200_000)
    s3_server.put_bytes(http_bucket, "clip.wav", data)
    ref = AudioRef(f"s3://{http_bucket}/clip.wav", "s3", bucket=http_bucket, key="clip.wav")
    faults = [FaultRule("truncate", "/clip.wav", times=2), FaultRule("reset", "/clip.wav", times=1)]
    with S3Proxy(s3_server.port, faults=faults) as proxy:
        stats = TransferStats()
        assert read_bytes(ref, _through(proxy, s3_server), stats) == data
    assert proxy.injected["truncate"] == 2 and proxy.injected["reset"] == 1
    assert stats.retries >= 3 and (stats.objects, stats.bytes) == (1, len(data))


def test_failures_that_outlive_the_retries_are_transient(s3_server, http_bucket):
    s3_server.put_bytes(http_bucket, "cut.wav", b"x" * 10_000)
    s3_server.put_bytes(http_bucket, "busy.wav", b"x" * 10_000)
    faults = [
        FaultRule("truncate", "/cut.wav", times=float("inf")),
        FaultRule("503", "/busy.wav", times=float("inf")),
        FaultRule("503", "/busy.wav", method="HEAD", times=float("inf")),
    ]
    with S3Proxy(s3_server.port, faults=faults) as proxy:
        client = _through(proxy, s3_server, S3_MAX_ATTEMPTS="2")
        for key in ("cut.wav", "busy.wav"):
            ref = AudioRef(f"s3://{http_bucket}/{key}", "s3", bucket=http_bucket, key=key)
            with pytest.raises(AudioSourceError) as caught:
                read_bytes(ref, client)
            assert (caught.value.reason, caught.value.transient) == ("download_failed", True), key
        with pytest.raises(AudioSourceError) as caught:
            stat(ref, client)
        assert (caught.value.reason, caught.value.transient) == ("download_failed", True)


def test_transfer_stats_count_across_threads():
    stats = TransferStats()

    def work() -> None:
        for _ in range(1000):
            stats.add(objects=1, size=3, retries=2)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (stats.objects, stats.bytes, stats.retries) == (8000, 24000, 16000)
