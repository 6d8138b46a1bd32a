"""A loopback proxy in front of the local S3 server: makes it look remote (latency) or faulty.

Real buckets are far away and sometimes fail; the local moto server is neither. The benchmarks put a
round-trip latency in between (`latency_s`: a TCP relay, so it works over TLS as well); the reliability
tests inject the faults real S3 and MinIO produce (`faults`, plain HTTP only, since the proxy must read the
requests): HTTP 500, 503 SlowDown, connection resets, stalls past the client's read timeout and bodies cut
short. Each rule applies to the first `times` matching requests, so transient and permanent faults are both
expressible.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

FAULT_KINDS = ("500", "503", "reset", "stall", "truncate")
_ERROR_BODIES = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
}


@dataclass
class FaultRule:
    """Fault the first `times` requests whose method and path match (`path_contains` a substring)."""

    kind: str
    path_contains: str
    method: str = "GET"
    times: float = 1  # float("inf"): a permanent fault
    stall_s: float = 5.0
    seen: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes


class S3Proxy:
    """`with S3Proxy(upstream_port, ...) as proxy:` then point the client at `proxy.endpoint_url`."""

    def __init__(
        self,
        upstream_port: int,
        *,
        scheme: str = "http",
        latency_s: float = 0.0,
        faults: Sequence[FaultRule] = (),
    ):
        if faults and scheme != "http":
            raise ValueError("faults need a plain HTTP upstream (the proxy must read the requests)")
        self.upstream_port = upstream_port
        self.scheme = scheme
        self.latency_s = latency_s
        self.faults = list(faults)
        self.injected: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    @property
    def endpoint_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> S3Proxy:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        self._listener.close()

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            handler = self._serve_http if self.faults else self._relay_tcp
            self._spawn(handler, client)

    # --- latency: a TCP relay, each chunk delayed by half the round trip in each direction ------------

    def _relay_tcp(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        for source, target in ((client, upstream), (upstream, client)):
            self._spawn(self._pump, source, target)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(1 << 16):
                if self.latency_s:
                    time.sleep(self.latency_s / 2)
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    # --- faults: HTTP aware, one request at a time per connection -------------------------------------

    def _serve_http(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        try:
            while request := _read_request(reader):
                if not self._answer(client, request):
                    break
        except OSError:
            pass
        finally:
            reader.close()
            client.close()

    def _rule_for(self, request: _Request) -> FaultRule | None:
        with self._lock:
            for rule in self.faults:
                matches = rule.method == request.method and rule.path_contains in request.path
                if matches and rule.seen < rule.times:
                    rule.seen += 1
                    self.injected[rule.kind] += 1
                    return rule
        return None

    def _answer(self, client: socket.socket, request: _Request) -> bool:
        """Serve one request; False when the connection must end (a reset or a cut body)."""
        if self.latency_s:
            time.sleep(self.latency_s)
        rule = self._rule_for(request)
        if rule is not None and rule.kind in _ERROR_BODIES:
            status, code, message = _ERROR_BODIES[rule.kind]
            body = f'<?xml version="1.0"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
            head = _response_head(status, [("Content-Type", "application/xml")], len(body))
            client.sendall(head + body.encode())
            return True
        if rule is not None and rule.kind == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return False
        if rule is not None and rule.kind == "stall":
            time.sleep(rule.stall_s)
            return False
        status, headers, body, length = self._forward(request)
        if rule is not None and rule.kind == "truncate" and len(body) > 1:
            client.sendall(_response_head(status, headers, length) + body[: len(body) // 2])
            return False
        client.sendall(_response_head(status, headers, length) + body)
        return True

    def _forward(self, request: _Request) -> tuple[int, list[tuple[str, str]], bytes, int]:
        """The upstream's answer: status, headers, body and the Content-Length to announce (a HEAD
        announces the object's length and sends no body)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            headers = {name: value for name, value in request.headers if name.lower() != "connection"}
            connection.request(request.method, request.path, body=request.body or None, headers=headers)
            response = connection.getresponse()
            body = response.read()
            length = int(response.getheader("Content-Length") or 0) if request.method == "HEAD" else len(body)
            kept = [
                (name, value)
                for name, value in response.getheaders()
                if name.lower() not in ("content-length", "connection", "transfer-encoding")
            ]
            return response.status, kept, body, length
        finally:
            connection.close()


def _read_request(reader) -> _Request | None:
    line = reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while (header := reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    length = next((int(value) for name, value in headers if name.lower() == "content-length"), 0)
    return _Request(method, path, headers, reader.read(length) if length else b"")


def _response_head(status: int, headers: list[tuple[str, str]], length: int) -> bytes:
    reason = http.client.responses.get(status, "")
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers)]
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
