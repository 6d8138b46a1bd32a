"""Audio (and Label Studio's API) over http(s): fetched like S3 objects.

Streamed with a size bound, retried with backoff on 5xx, resets, timeouts and bodies cut short (a POST
only when the server certainly did not act on it); the same private CA bundle (AWS_CA_BUNDLE) and timeouts
as S3. A GET follows a few redirects, each within --allowed-hosts; any other 3xx is an error naming where it
points. A URL is identified without its content by its ETag / Last-Modified and size (a ranged GET of one
byte: presigned URLs are signed for GET, not HEAD). Query strings (presigned signatures, tokens) and
credentials never appear in a message: every URL shown goes through `redact`. One urllib3 pool manager per
process (thread-safe).

Label Studio's key goes to its server only: a legacy key as `Authorization: Token KEY`; a personal access
token (a JWT refresh token, what Label Studio 1.23 gives new users) is exchanged at its
`/api/token/refresh/` for a short-lived access token sent as `Bearer`, exchanged again when the server
answers 401 (an access token lasts minutes, a run hours).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

from whisper_pipeline.errors import ConfigError

ATTEMPTS = 5  # requests of one URL before giving up
MAX_REDIRECTS = 5  # followed by one GET
BACKOFF_S = 0.2  # first wait between attempts, doubled each time
MAX_AUDIO_BYTES = 2 * 2**30  # one recording's size bound (HTTP_MAX_AUDIO_BYTES overrides)
MAX_API_BYTES = 2**20  # an access token's answer
CHUNK_BYTES = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes \d+-\d+/(\d+)")


@dataclass(frozen=True)
class HttpSettings:
    """How URLs are fetched; `token` (Label Studio's API key) goes only to `token_origin`, never shown."""

    ca_bundle: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_bytes: int = MAX_AUDIO_BYTES
    allowed_hosts: tuple[str, ...] = ()  # empty: any host
    token: str | None = field(default=None, repr=False)
    token_origin: str | None = None  # scheme://host:port of the Label Studio server
    token_refresh_url: str | None = None  # where a personal access token is exchanged for access tokens


def is_refresh_token(token: str) -> bool:
    """A JWT whose payload says `"token_type": "refresh"`: a Label Studio personal access token (a legacy
    key is 40 hex digits)."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(payload, dict) and payload.get("token_type") == "refresh"


# query parameters that sign or authorise a URL (S3, GCS, Azure SAS, CloudFront, generic tokens): never
# shown, and not part of what identifies the file (a re-signed URL names the same file)
_SIGNING_PARAMS = frozenset(
    {
        *("signature", "expires", "awsaccesskeyid", "key-pair-id", "policy"),  # S3 v2, CloudFront
        *("sig", "se", "st", "sp", "sv", "sr", "spr", "ses"),  # Azure SAS
        *("ske", "skoid", "sks", "skt", "sktid", "skv"),
        *("token", "access_token", "api_key", "apikey"),
    }
)


def redact(url: str) -> str:
    """A URL as it may be shown and as it identifies its file: no credentials, no signing or token
    parameters; other query parameters (which may choose the file) as a short hash of their text, except
    Label Studio's local-files path (`?d=`), which names a file, not a secret."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    shown = f"{parts.scheme}://{host}{parts.path}"
    kept = [
        (name, value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if name.lower() not in _SIGNING_PARAMS and not name.lower().startswith(("x-amz-", "x-goog-"))
    ]
    if parts.path.endswith("/data/local-files/") and [name for name, _ in kept] == ["d"]:
        return f"{shown}?d={kept[0][1]}"
    if kept:
        shown += "?…" + hashlib.sha256(urlencode(kept).encode()).hexdigest()[:10]
    return shown


def origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


class HttpError(Exception):
    """A URL that cannot be fetched: `reason` as AudioSourceError's, `transient` when a rerun may work,
    `unprocessed` when the server certainly did not act on the request (so that even a POST may be sent
    again), `maybe_done` when a request not sent again may have been acted on."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        transient: bool = False,
        status: int = 0,
        unprocessed: bool = False,
        maybe_done: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason, self.transient, self.status, self.unprocessed = reason, transient, status, unprocessed
        self.maybe_done = maybe_done


@dataclass(frozen=True)
class UrlInfo:
    size: int
    validator: str  # ETag, else Last-Modified, else "" (nothing tells a changed file from the same one)


class HttpAccess:
    """The settings and this process's pool manager (made on first use), with the retries counted."""

    def __init__(self, settings: HttpSettings) -> None:
        self.settings = settings
        self.retries = 0
        self._manager = None
        self._lock = threading.Lock()
        self._access_token: str | None = None  # from a personal access token
        self._access_lock = threading.Lock()

    def manager(self):
        import urllib3

        with self._lock:
            if self._manager is None:
                bundle = self.settings.ca_bundle
                if bundle and not Path(bundle).is_file():
                    raise ConfigError(f"AWS_CA_BUNDLE={bundle}: no such file")
                self._manager = urllib3.PoolManager(
                    num_pools=16,
                    maxsize=64,
                    ca_certs=bundle or None,
                    timeout=urllib3.Timeout(
                        connect=self.settings.connect_timeout, read=self.settings.read_timeout
                    ),
                    retries=False,  # retried (and redirects followed) here, body included
                )
            return self._manager

    def check_host(self, url: str) -> None:
        allowed = self.settings.allowed_hosts
        host = (urlsplit(url).hostname or "").lower()
        named = self.settings.token_origin == origin(url)  # the Label Studio server the user named
        if allowed and not named and host not in {name.lower() for name in allowed}:
            raise HttpError("host_not_allowed", f"{redact(url)}: host {host!r} is not in --allowed-hosts")

    def headers(self, url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        token = self.settings.token
        if token and self.settings.token_origin == origin(url):
            if is_refresh_token(token):
                headers["Authorization"] = f"Bearer {self._access(stale=None)}"
            else:
                headers["Authorization"] = f"Token {token}"
        return headers

    def _access(self, stale: str | None) -> str:
        """The access token of the personal access token: exchanged once, and again when `stale` (the one
        the server refused) is still the current one, so that threads refused together exchange once."""
        with self._access_lock:
            if self._access_token is None or self._access_token == stale:
                self._access_token = self._exchange()
            return self._access_token

    def _exchange(self) -> str:
        url = self.settings.token_refresh_url
        if not url:  # a caller's bug: the server's URL was not given with its key
            raise RuntimeError("a personal access token needs HttpSettings.token_refresh_url")
        payload = json.dumps({"refresh": self.settings.token}).encode()

        def once() -> bytes:
            response = self._send(url, {"Content-Type": "application/json"}, method="POST", body=payload)
            return self._read(url, _checked(url, response), MAX_API_BYTES)

        try:  # (an exchange changes nothing on the server: retried as a GET is)
            access = json.loads(self._retried(url, once)).get("access")
        except (ValueError, AttributeError):
            access = None
        if not isinstance(access, str) or not access:
            raise HttpError("access_denied", f"{redact(url)}: no access token in the answer", status=401)
        return access

    def get(self, url: str, *, headers: Mapping[str, str] | None = None, limit: int | None = None) -> bytes:
        """The whole body, retried (with backoff) on 5xx, network errors, timeouts and short bodies."""
        limit = self.settings.max_bytes if limit is None else limit
        return self._retried(url, lambda: self._get_once(url, headers, limit))

    def post_json(self, url: str, body: object) -> bytes:
        """A JSON POST's answer (Label Studio's API), sent again only when the server certainly did not
        act on it: a POST answered late or with a 500 may have been done (predictions imported twice)."""
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}

        def once() -> bytes:
            return self._read(url, self._request(url, headers, method="POST", body=payload), MAX_AUDIO_BYTES)

        return self._retried(url, once, idempotent=False)

    def delete(self, url: str) -> None:
        """A DELETE (Label Studio's API), retried like a GET; a 404 (gone already) is no error."""

        def once() -> None:
            try:
                self._read(url, self._request(url, None, method="DELETE"), MAX_AUDIO_BYTES)
            except HttpError as error:
                if error.status != 404:
                    raise

        self._retried(url, once)

    def info(self, url: str) -> UrlInfo:
        """Size and validator without the content (a one-byte ranged GET); a server that ignores the
        range and names no validator has its body hashed instead."""
        return self._retried(url, lambda: self._info_once(url))

    def _retried(self, url: str, call, *, idempotent: bool = True):
        self.check_host(url)
        last: HttpError | None = None
        for attempt in range(ATTEMPTS):
            if attempt:
                with self._lock:
                    self.retries += 1
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                return call()
            except HttpError as error:
                if not error.transient:
                    raise
                if not idempotent and not error.unprocessed:
                    message = f"{error} (not sent again: the server may have acted on it)"
                    raise HttpError(
                        error.reason, message, transient=True, status=error.status, maybe_done=True
                    ) from None
                last = error
        assert last is not None
        raise HttpError(
            last.reason, f"{last} (after {ATTEMPTS} attempts)", transient=True, status=last.status
        )

    def _request(
        self, url: str, headers: Mapping[str, str] | None, *, method: str = "GET", body: bytes | None = None
    ):
        """A response with a status under 300; a GET follows redirects, each checked against
        --allowed-hosts and authorized anew (the key goes to the Label Studio server only)."""
        target = url
        for _ in range(MAX_REDIRECTS + 1):
            response = self._authorized(target, headers, method=method, body=body)
            location = response.get_redirect_location()
            if method != "GET" or not location:  # a write is not sent on: _checked names where to
                return _checked(url, response)
            _discard(response)
            target = urljoin(target, location)
            try:
                self.check_host(target)
            except HttpError as error:
                raise HttpError(error.reason, f"{redact(url)} redirects to {error}") from None
        raise HttpError("download_failed", f"{redact(url)}: more than {MAX_REDIRECTS} redirects")

    def _authorized(self, url: str, headers: Mapping[str, str] | None, *, method: str, body: bytes | None):
        """One request authorized for the Label Studio server, sent again once if its access token
        expired."""
        authorized = self.headers(url, headers)
        response = self._send(url, authorized, method=method, body=body)
        used = authorized.get("Authorization", "")
        if response.status == 401 and used.startswith("Bearer "):  # the access token expired
            _discard(response)
            authorized["Authorization"] = f"Bearer {self._access(stale=used.removeprefix('Bearer '))}"
            response = self._send(url, authorized, method=method, body=body)
        return response

    def _send(self, url: str, headers: Mapping[str, str], *, method: str = "GET", body: bytes | None = None):
        """One request as it is, a network failure as a (transient) HttpError."""
        import urllib3

        try:
            response = self.manager().request(
                method, url, body=body, headers=headers, preload_content=False, redirect=False
            )
        except urllib3.exceptions.ConnectTimeoutError as error:  # (NewConnectionError too): nothing sent
            raise HttpError(
                "download_failed", f"{redact(url)}: {type(error).__name__}", transient=True, unprocessed=True
            ) from None
        except urllib3.exceptions.SSLError:
            raise HttpError(
                "download_failed",
                f"{redact(url)}: the server's certificate is not trusted: set AWS_CA_BUNDLE to your CA's PEM",
            ) from None
        except urllib3.exceptions.HTTPError as error:
            raise HttpError(
                "download_failed", f"{redact(url)}: {type(error).__name__}", transient=True
            ) from None
        return response

    def _get_once(self, url: str, headers: Mapping[str, str] | None, limit: int) -> bytes:
        return self._read(url, self._request(url, headers), limit)

    def _read(self, url: str, response, limit: int) -> bytes:
        """A response's body within `limit` bytes, all of it (Content-Length checked)."""
        import urllib3

        try:
            expected = int(response.headers.get("Content-Length", -1))
            if expected > limit:
                raise HttpError("too_large", f"{redact(url)}: {expected} bytes, over the {limit}-byte bound")
            chunks, size = [], 0
            for chunk in response.stream(CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise HttpError("too_large", f"{redact(url)}: over the {limit}-byte bound")
                chunks.append(chunk)
        except urllib3.exceptions.HTTPError as error:  # reset, read timeout, body cut short
            raise HttpError(
                "download_failed", f"{redact(url)}: {type(error).__name__}", transient=True
            ) from None
        finally:
            response.release_conn()
        data = b"".join(chunks)
        if expected >= 0 and len(data) != expected:
            message = f"{redact(url)}: {len(data)} of {expected} bytes"
            raise HttpError("download_failed", message, transient=True)
        return data

    def _info_once(self, url: str) -> UrlInfo:
        response = self._request(url, {"Range": "bytes=0-0"})
        try:
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified") or ""
            total = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if response.status == 206 and total:
                return UrlInfo(int(total.group(1)), validator)
            length = response.headers.get("Content-Length")
            if validator and length is not None:
                return UrlInfo(int(length), validator)
        finally:
            if response.status == 206:  # one byte: read, and the connection kept
                response.drain_conn()
                response.release_conn()
            else:  # the whole file, the range ignored: not read
                _discard(response)
        data = self._get_once(url, None, self.settings.max_bytes)
        return UrlInfo(len(data), "sha256:" + hashlib.sha256(data).hexdigest())


def _discard(response) -> None:
    """Closed unread: an error page, a redirect's or a whole file's body may be any size, and reading it
    only to keep the connection is not worth it."""
    response.close()
    response.release_conn()


def _checked(url: str, response):
    """The response, or the HttpError its status of 300 or more is (a redirect named by where it goes)."""
    if response.status >= 300:
        _discard(response)
        location = response.headers.get("Location")
        if 300 <= response.status < 400 and location:
            message = f"{redact(url)}: redirected ({response.status}) to {redact(urljoin(url, location))}"
            raise HttpError("download_failed", message, status=response.status)
        raise _status_error(url, response.status)
    return response


def _status_error(url: str, status: int) -> HttpError:
    if status == 404:
        return HttpError("missing_object", f"{redact(url)}: not found (404)", status=status)
    if status in (401, 403):
        return HttpError("access_denied", f"{redact(url)}: access denied ({status})", status=status)
    transient = status >= 500 or status == 429
    unprocessed = status in (429, 503)  # rate-limited or unavailable: refused before any work
    message = f"{redact(url)}: HTTP {status}"
    return HttpError("download_failed", message, transient=transient, status=status, unprocessed=unprocessed)
