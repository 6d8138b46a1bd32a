"""Where audio (and the export itself) comes from: S3 (AWS, or MinIO behind a private CA) or local files.

S3 settings come from the environment / `.env` with the seed's names (`S3_ENDPOINT_URL`, `S3_BUCKET_NAME`,
...) and the standard AWS ones. One boto3 client per process (clients are thread-safe, sessions are not);
botocore retries requests (adaptive mode), and the body stream, which botocore does not retry, is retried
here. Every failure is an AudioSourceError with a short `reason` for the report; messages never hold
credentials.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from whisper_pipeline.errors import ConfigError, S3Error
from whisper_pipeline.prepare.http import HttpAccess, HttpError, HttpSettings, redact

BODY_ATTEMPTS = 5  # reads of one object's body before giving up (each after botocore's own retries)
BODY_BACKOFF_S = 0.2  # first wait between body reads, doubled each time
LIST_MIN_OBJECTS = 32  # below this many objects in a bucket, HEAD each: cheaper than listing
LIST_OVERREAD = 10  # list at most this many objects per object needed, then HEAD the rest
LOCAL_FILES_PREFIX = "/data/local-files/"
UPLOAD_PREFIX = "/data/upload/"
LABEL_STUDIO_ROOT_FLAGS = {LOCAL_FILES_PREFIX: "--local-files-root", UPLOAD_PREFIX: "--upload-root"}


class AudioSourceError(Exception):
    """An item that cannot be fetched: `reason` is the skip reason; `transient` failures are retried by
    the next run (network, 5xx), the others are permanent (missing, forbidden, refused)."""

    def __init__(self, reason: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.transient = transient


class UnresolvableAudioError(AudioSourceError):
    """An audio URI that names no place we may read from."""


@dataclass(frozen=True)
class S3Settings:
    """Connection settings; the secret never appears in repr, logs or errors."""

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str = "us-east-1"
    bucket_name: str | None = None
    ca_bundle: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_attempts: int = 8

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> S3Settings:
        def get(*names: str) -> str | None:
            return next((environ[name] for name in names if environ.get(name, "").strip()), None)

        def number(name: str, default: float) -> float:
            value = get(name)
            try:
                return float(value) if value is not None else default
            except ValueError:
                raise ConfigError(f"{name}={value!r} is not a number") from None

        return cls(
            endpoint_url=get("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            access_key_id=get("AWS_ACCESS_KEY_ID"),
            secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
            session_token=get("AWS_SESSION_TOKEN"),
            region=get("AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
            bucket_name=get("S3_BUCKET_NAME"),
            ca_bundle=get("AWS_CA_BUNDLE"),
            connect_timeout=number("S3_CONNECT_TIMEOUT", 10.0),
            read_timeout=number("S3_READ_TIMEOUT", 60.0),
            max_attempts=int(number("S3_MAX_ATTEMPTS", 8)),
        )

    @property
    def endpoint_name(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"


def http_settings(settings: S3Settings, **more) -> HttpSettings:
    """http(s) audio fetched with S3's CA bundle (AWS_CA_BUNDLE) and timeouts: one private network's
    settings serve both; `more`: HttpSettings' other fields."""
    return HttpSettings(
        ca_bundle=settings.ca_bundle,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        **more,
    )


def load_env_file(path: str | Path = ".env") -> None:
    """Settings from a .env file, never overriding the real environment."""
    from dotenv import load_dotenv

    if Path(path).is_file():
        load_dotenv(path, override=False)


@dataclass(frozen=True)
class AudioRef:
    """A resolved audio URI: an S3 object, a local file or an http(s) URL (`url`, never shown: `uri` is
    what messages name, the URL without its query string)."""

    uri: str
    kind: str  # "s3", "local" or "http"
    bucket: str | None = None
    key: str | None = None
    path: Path | None = None
    url: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ObjectInfo:
    """What identifies an object's content without reading it: part of the cache fingerprint."""

    size: int
    etag: str


class TransferStats:
    """Thread-safe counts of what was downloaded and how many retries it took."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.objects = 0
        self.bytes = 0
        self.retries = 0

    def add(self, *, objects: int = 0, size: int = 0, retries: int = 0) -> None:
        with self._lock:
            self.objects += objects
            self.bytes += size
            self.retries += retries


def split_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of `s3://bucket/key`; the key is kept as written (`?` and `#` are legal in keys)."""
    uri = uri.strip()
    bucket, _, key = uri[len("s3://") :].partition("/") if uri.startswith("s3://") else ("", "", "")
    if not bucket or not key:
        raise UnresolvableAudioError("unsupported_uri", f"{uri}: not an s3://bucket/key URI")
    return bucket, key


def resolve_audio_uri(
    uri: str,
    *,
    default_bucket: str | None,
    local_files_root: Path | None,
    upload_root: Path | None = None,
    allowed_buckets: Sequence[str] | None = None,
    label_studio_url: str | None = None,
) -> AudioRef:
    """Where `uri` (as written in the export) points; refuses what escapes the allowed places. Label Studio
    file paths resolve under their root when it is given, else through the server (`label_studio_url`)."""
    uri = uri.strip()
    parsed = urlparse(uri)
    roots = {LOCAL_FILES_PREFIX: local_files_root, UPLOAD_PREFIX: upload_root}
    if parsed.scheme == "s3":
        bucket, key = split_s3_uri(uri)
        return _checked_bucket(AudioRef(uri, "s3", bucket=bucket, key=key), allowed_buckets)
    if parsed.scheme in ("http", "https"):
        prefix = next((p for p in roots if parsed.path.startswith(p)), None)
        if prefix and (roots[prefix] is not None or not label_studio_url):
            return _label_studio_file(uri, parsed, roots)
        if not parsed.hostname:
            raise UnresolvableAudioError("unsupported_uri", f"{redact(uri)}: no host")
        return AudioRef(redact(uri), "http", url=uri)  # (the export's URI is shown the same way)
    if parsed.scheme == "file":
        return _local(uri, Path(unquote(parsed.path)))
    if parsed.scheme:
        raise UnresolvableAudioError("unsupported_uri", f"{uri}: unsupported scheme {parsed.scheme!r}")
    if uri.startswith((LOCAL_FILES_PREFIX, UPLOAD_PREFIX)):
        prefix = LOCAL_FILES_PREFIX if uri.startswith(LOCAL_FILES_PREFIX) else UPLOAD_PREFIX
        if roots[prefix] is None and label_studio_url:
            return AudioRef(uri, "http", url=label_studio_url.rstrip("/") + uri)
        return _label_studio_file(uri, parsed, roots)
    if uri.startswith("/"):
        return _local(uri, Path(uri))
    if not default_bucket:
        raise UnresolvableAudioError(
            "no_bucket", f"{uri}: a bare key needs a bucket: set S3_BUCKET_NAME or use s3://bucket/key"
        )
    return _checked_bucket(AudioRef(uri, "s3", bucket=default_bucket, key=uri), allowed_buckets)


@dataclass(frozen=True)
class AudioAccess:
    """How the audio an export names is reached: S3 (bare keys in the default bucket, only the allowed
    buckets), Label Studio's files under their roots or else through its server (`label_studio_url`; its
    key is in `http`), http(s). One object for every command that reads a project's audio (prepare_data.py,
    evaluate --ctranslate2, preannotate, transcribe), so that a URI resolves and reads the same in each."""

    s3: S3Access
    http: HttpAccess
    local_files_root: Path | None = None
    upload_root: Path | None = None
    allowed_buckets: tuple[str, ...] = ()
    label_studio_url: str | None = None

    def resolve(self, location: str) -> AudioRef:
        """Where `location` (as the export writes it) points; UnresolvableAudioError where we may not read."""
        return resolve_audio_uri(
            location,
            default_bucket=self.s3.settings.bucket_name,
            local_files_root=self.local_files_root,
            upload_root=self.upload_root,
            allowed_buckets=self.allowed_buckets or None,
            label_studio_url=self.label_studio_url,
        )

    def stat(self, ref: AudioRef) -> ObjectInfo:
        return stat(ref, self.s3.client() if ref.kind == "s3" else None, self.http)

    def read(self, ref: AudioRef) -> bytes:
        return read_bytes(ref, self.s3.client() if ref.kind == "s3" else None, self.s3.stats, self.http)


def _checked_bucket(ref: AudioRef, allowed_buckets: Sequence[str] | None) -> AudioRef:
    if allowed_buckets and ref.bucket not in allowed_buckets:
        raise UnresolvableAudioError(
            "bucket_not_allowed", f"{ref.uri}: bucket {ref.bucket!r} is not in --allowed-buckets"
        )
    return ref


def _local(uri: str, path: Path) -> AudioRef:
    return AudioRef(uri, "local", path=path)


def local_files_path(parsed) -> str:
    """The file a /data/local-files/?d=<relative> URL (urlsplit) names under the local-files root ("" if
    none)."""
    return (parse_qs(parsed.query).get("d") or [""])[0]


def _label_studio_file(uri: str, parsed, roots: Mapping[str, Path | None]) -> AudioRef:
    """/data/local-files/?d=<relative> under --local-files-root, /data/upload/<project>/<file> under
    --upload-root (Label Studio keeps them apart: LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT and
    <data-dir>/media/upload)."""
    prefix = LOCAL_FILES_PREFIX if parsed.path.startswith(LOCAL_FILES_PREFIX) else UPLOAD_PREFIX
    flag = LABEL_STUDIO_ROOT_FLAGS[prefix]
    if prefix == LOCAL_FILES_PREFIX:
        relative = local_files_path(parsed)
    else:
        relative = unquote(parsed.path)[len(UPLOAD_PREFIX) :]
    root = roots[prefix]
    if root is None:
        reason = f"{flag.removeprefix('--').replace('-', '_')}_required"
        raise UnresolvableAudioError(
            reason, f"{uri}: a Label Studio file path needs {flag} (or --label-studio-url to fetch it)"
        )
    base = Path(root).resolve()
    target = (base / relative.lstrip("/")).resolve()  # symlinks followed, then checked
    if not relative or not target.is_relative_to(base) or target == base:
        raise UnresolvableAudioError("path_escapes_root", f"{uri}: the path leaves {flag}")
    return AudioRef(uri, "local", path=target)


# --- S3 ----------------------------------------------------------------------------------------------


def make_s3_client(settings: S3Settings):
    """A boto3 S3 client from a session of its own: path-style (MinIO), adaptive retries, timeouts."""
    import boto3
    import botocore.session
    from botocore.config import Config

    if settings.ca_bundle and not Path(settings.ca_bundle).is_file():
        raise ConfigError(f"AWS_CA_BUNDLE={settings.ca_bundle}: no such file")
    if bool(settings.access_key_id) != bool(settings.secret_access_key):
        missing = "AWS_SECRET_ACCESS_KEY" if settings.access_key_id else "AWS_ACCESS_KEY_ID"
        raise S3Error(f"{missing} is not set (S3 credentials come in pairs)")
    core = botocore.session.get_session()
    # Objects are identified by size and ETag: no response timestamp is ever read, so they stay text
    # instead of going through dateutil (a quarter of the time a 600-object listing takes to parse).
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
    session = boto3.session.Session(
        botocore_session=core,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        region_name=settings.region,
    )
    # Without explicit keys boto3's own chain (profile, instance role) may still provide some.
    if session.get_credentials() is None:
        raise S3Error(
            f"no S3 credentials for {settings.endpoint_name}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    config = Config(
        region_name=settings.region,
        signature_version="s3v4",
        retries={"mode": "adaptive", "max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=64,
        s3={"addressing_style": "path"},
    )
    return session.client(
        "s3", endpoint_url=settings.endpoint_url, verify=settings.ca_bundle or True, config=config
    )


class S3Access:
    """The S3 settings and, created on first use, this process's one client (thread-safe), with the
    counts of what it transferred."""

    def __init__(self, settings: S3Settings):
        self.settings = settings
        self.stats = TransferStats()
        self._client = None
        self._lock = threading.Lock()

    def client(self):
        with self._lock:
            if self._client is None:
                self._client = make_s3_client(self.settings)
            return self._client


def _error_code(error) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


def _status(error) -> int:
    return int(getattr(error, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _describe_s3_failure(error: Exception, endpoint: str, what: str) -> str:
    """One line that names the setting to fix, for an exception of botocore."""
    from botocore import exceptions

    text = str(error)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return f"the certificate of {endpoint} is not trusted: set AWS_CA_BUNDLE to your CA's PEM bundle"
    if isinstance(error, exceptions.SSLError):
        return f"TLS with {endpoint} failed: check that S3_ENDPOINT_URL's scheme (http/https) is the server's"
    if isinstance(error, exceptions.NoCredentialsError | exceptions.PartialCredentialsError):
        return f"no S3 credentials for {endpoint}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if isinstance(error, exceptions.ConnectionError | exceptions.HTTPClientError):
        return f"cannot reach S3_ENDPOINT_URL={endpoint} ({type(error).__name__}): check the host and port"
    code, status = _error_code(error), _status(error)
    if code == "NoSuchBucket" or status == 404:
        return f"{what} does not exist at {endpoint}: check S3_BUCKET_NAME or the export's s3:// URIs"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or status == 403:
        return (
            f"{endpoint} rejected the credentials for {what} ({code or status}): check AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY"
        )
    return f"S3 request for {what} at {endpoint} failed: {code or status or type(error).__name__}"


def _fail_fast(caught_exception: Exception | None = None, **_: object) -> None:
    """A `needs-retry` hook: the first connection or TLS failure ends the call (no adaptive retries)."""
    if caught_exception is not None:
        raise caught_exception


def preflight(client, buckets: Sequence[str]) -> None:
    """Check each bucket answers before any heavy work: a wrong setting fails in seconds, in one line."""
    from botocore.exceptions import BotoCoreError, ClientError

    event, hook_id = "needs-retry.s3.HeadBucket", "whisper-pipeline-preflight"
    client.meta.events.register_first(event, _fail_fast, unique_id=hook_id)
    try:
        for bucket in buckets:
            try:
                client.head_bucket(Bucket=bucket)
            except (BotoCoreError, ClientError) as error:
                raise S3Error(
                    _describe_s3_failure(error, client.meta.endpoint_url, f"bucket {bucket!r}")
                ) from None
    finally:
        client.meta.events.unregister(event, unique_id=hook_id)


@contextmanager
def _local_file_errors(ref: AudioRef) -> Iterator[None]:
    """A local file's OSError as the skip it is."""
    try:
        yield
    except FileNotFoundError:
        raise AudioSourceError("missing_file", f"{ref.uri}: no such file") from None
    except OSError as error:
        raise AudioSourceError("unreadable_file", f"{ref.uri}: {error.strerror}") from None


@contextmanager
def _http_errors(ref: AudioRef) -> Iterator[None]:
    """An http(s) failure as the skip it is (its message already redacted)."""
    try:
        yield
    except HttpError as error:
        raise AudioSourceError(error.reason, str(error), transient=error.transient) from None


def stat(ref: AudioRef, client, http: HttpAccess | None = None) -> ObjectInfo:
    """Size and ETag (S3), size and mtime (local), or size and ETag / Last-Modified (http) without
    reading the content."""
    if ref.kind == "local":
        with _local_file_errors(ref):
            info = ref.path.stat()
        return ObjectInfo(size=info.st_size, etag=f"{info.st_size}-{info.st_mtime_ns}")
    if ref.kind == "http":
        with _http_errors(ref):
            found = _require_http(http).info(ref.url)
        return ObjectInfo(size=found.size, etag=found.validator)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        head = client.head_object(Bucket=ref.bucket, Key=ref.key)
    except ClientError as error:
        raise _classified(ref, error) from None
    except BotoCoreError as error:
        raise AudioSourceError(
            "download_failed", f"{ref.uri}: {type(error).__name__}", transient=True
        ) from None
    return ObjectInfo(size=int(head["ContentLength"]), etag=head["ETag"].strip('"'))


@dataclass(frozen=True)
class Listing:
    """A bucket's objects under one prefix, scanned for the size and ETag of `objects` of them."""

    bucket: str
    prefix: str
    objects: int

    @property
    def budget(self) -> int:
        """Objects read at most: past that, HEAD each object the scan did not reach."""
        return LIST_OVERREAD * self.objects


@dataclass(frozen=True)
class Scan:
    """What a listing returned; `complete` when it reached the end of its prefix."""

    found: Mapping[str, ObjectInfo]
    complete: bool


def _keys_by_bucket(refs: Sequence[AudioRef]) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    for ref in refs:
        if ref.kind == "s3":
            keys.setdefault(ref.bucket, set()).add(ref.key)
    return keys


def listings(refs: Sequence[AudioRef]) -> list[Listing]:
    """The listings stat_all makes for `refs`: one per bucket holding at least LIST_MIN_OBJECTS of them,
    under their common prefix (S3 prefixes are character prefixes, not path components)."""
    plans = []
    for bucket, keys in sorted(_keys_by_bucket(refs).items()):
        if len(keys) >= LIST_MIN_OBJECTS:
            first, last = min(keys), max(keys)
            shared = next(
                (i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), len(first)
            )
            plans.append(Listing(bucket, first[:shared], len(keys)))
    return plans


def stat_all(
    refs: Sequence[AudioRef],
    client,
    concurrency: int,
    scanned: Mapping[Listing, Scan] | None = None,
    http: HttpAccess | None = None,
) -> dict[str, ObjectInfo | AudioSourceError]:
    """`stat` of many recordings by URI: a bucket's objects from its listing (one request per 1000), the
    rest (local files, objects the listing did not show, buckets we may not list) one by one, concurrently.
    A rerun that finds its cache current costs a few requests, not one per recording. A complete scan in
    `scanned` (see `scan`) that covers a listing's prefix stands for that listing."""
    listed: dict[tuple[str, str], ObjectInfo] = {}
    keys_by_bucket = _keys_by_bucket(refs)
    for listing in listings(refs):
        keys = keys_by_bucket[listing.bucket]
        covering = [
            done
            for plan, done in (scanned or {}).items()
            if done.complete and plan.bucket == listing.bucket and listing.prefix.startswith(plan.prefix)
        ]
        found = covering[0].found if covering else scan(client, listing, keys).found
        listed.update(((listing.bucket, key), found[key]) for key in keys & found.keys())

    def one(ref: AudioRef) -> ObjectInfo | AudioSourceError:
        try:
            return stat(ref, client, http)
        except AudioSourceError as error:
            return error

    unlisted = [ref for ref in refs if (ref.bucket, ref.key) not in listed]
    with ThreadPoolExecutor(max(1, min(concurrency, len(unlisted)))) as pool:
        asked = dict(zip((ref.uri for ref in unlisted), pool.map(one, unlisted), strict=True))
    return {ref.uri: asked[ref.uri] if ref.uri in asked else listed[ref.bucket, ref.key] for ref in refs}


def scan(client, listing: Listing, wanted: set[str] | None = None) -> Scan:
    """Size and ETag of the objects ListObjectsV2 shows under the listing's prefix, up to its budget (or
    until every `wanted` key is found). Empty when listing is not allowed or fails: the caller then asks
    object by object."""
    from botocore.exceptions import BotoCoreError, ClientError

    found: dict[str, ObjectInfo] = {}
    budget = listing.budget
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=listing.bucket, Prefix=listing.prefix)
        for page in pages:
            for item in page.get("Contents", ()):
                budget -= 1
                if wanted is None or item["Key"] in wanted:
                    found[item["Key"]] = ObjectInfo(size=int(item["Size"]), etag=item["ETag"].strip('"'))
            if (wanted is not None and wanted <= found.keys()) or budget <= 0:
                return Scan(found, complete=not page.get("IsTruncated", False))
    except (BotoCoreError, ClientError):
        return Scan({}, complete=False)  # e.g. no s3:ListBucket permission: every object gets its own HEAD
    return Scan(found, complete=True)


def _classified(ref: AudioRef, error) -> AudioSourceError:
    code, status = _error_code(error), _status(error)
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return AudioSourceError("missing_object", f"{ref.uri}: no such object")
    if code in ("AccessDenied", "403") or status == 403:
        return AudioSourceError("access_denied", f"{ref.uri}: access denied")
    return AudioSourceError("download_failed", f"{ref.uri}: {code or status}", transient=status >= 500)


def read_bytes(
    ref: AudioRef, client, stats: TransferStats | None = None, http: HttpAccess | None = None
) -> bytes:
    """The whole object, file or URL. botocore retries the request; a body cut short, reset or stalled
    while streaming is read again here (with backoff), since botocore does not retry the stream (http.py
    does the same for URLs)."""
    stats = stats or TransferStats()
    if ref.kind == "local":
        with _local_file_errors(ref):
            data = ref.path.read_bytes()
        stats.add(objects=1, size=len(data))
        return data
    if ref.kind == "http":
        access = _require_http(http)
        before = access.retries
        with _http_errors(ref):
            data = access.get(ref.url)
        stats.add(objects=1, size=len(data), retries=access.retries - before)
        if not data:
            raise AudioSourceError("empty_object", f"{ref.uri}: the body is empty (0 bytes)")
        return data
    from botocore.exceptions import BotoCoreError, ClientError

    last = ""
    for attempt in range(BODY_ATTEMPTS):
        if attempt:
            stats.add(retries=1)
            time.sleep(BODY_BACKOFF_S * 2 ** (attempt - 1))
        try:
            response = client.get_object(Bucket=ref.bucket, Key=ref.key)
            stats.add(retries=int(response["ResponseMetadata"].get("RetryAttempts", 0)))
            expected = int(response.get("ContentLength", -1))
            data = response["Body"].read()
        except ClientError as error:  # an HTTP answer that outlived botocore's retries: final
            stats.add(retries=int(error.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)))
            raise _classified(ref, error) from None
        except (BotoCoreError, OSError) as error:  # reset, timeout, truncated stream
            last = type(error).__name__
            continue
        if expected >= 0 and len(data) != expected:
            last = f"{len(data)} of {expected} bytes"
            continue
        if not data:  # (an empty local file is the decoder's to report, as empty_audio)
            raise AudioSourceError("empty_object", f"{ref.uri}: the object is empty (0 bytes)")
        stats.add(objects=1, size=len(data))
        return data
    raise AudioSourceError(
        "download_failed", f"{ref.uri}: failed after {BODY_ATTEMPTS} attempts ({last})", transient=True
    )


def _require_http(http: HttpAccess | None) -> HttpAccess:
    if http is None:  # a caller's bug, not the user's
        raise RuntimeError("an http(s) audio reference needs an HttpAccess")
    return http
