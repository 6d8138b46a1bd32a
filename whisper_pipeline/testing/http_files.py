"""A local http server of audio files with injected faults, for the http(s) audio path (as s3_proxy.py
does for S3): answers with an ETag (of the content) and Content-Length, serves one-byte ranges (unless
told to ignore them, as some servers do), redirects the paths it is told to, and on demand fails the next
requests with a status, cuts their body short, resets the connection or answers too late. POST and DELETE
are answered as GET is (their body read and ignored), so that what a client sends again can be counted."""

from __future__ import annotations

import hashlib
import re
import socket
import struct
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
STALL_S = 2.0  # how late a "stall" fault answers: past the read timeout of the tests that use it
_WRITE_BYTES = 1 << 16


class HttpFileServer:
    """Serves the files under `root` at http://127.0.0.1:<port>/<relative path> (query strings ignored:
    presigned-style URLs work). `requests` lists the paths asked, without their query, `authorized` those
    asked with an Authorization header; `sent` counts the body bytes written (a client that stops reading
    stops it once the socket buffers are full)."""

    def __init__(self, root: Path, *, ranges: bool = True) -> None:
        self.root = Path(root)
        self.ranges = ranges
        self.requests: list[str] = []
        self.authorized: list[str] = []
        self.sent = 0
        self._redirects: dict[str, tuple[int, str]] = {}
        self._faults: deque[tuple[str, int]] = deque()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._answer(self)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server._answer(self)

            do_DELETE = do_POST

            def log_message(self, *_) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http-files", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> HttpFileServer:
        self._thread.start()
        return self

    def __exit__(self, *exception) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fail_next(self, count: int, kind: str = "status", status: int = 503) -> None:
        """The next `count` requests fail: "status" (answered with `status`), "truncate" (half the body
        of a full Content-Length), "reset" (the connection closed with a TCP reset) or "stall" (answered
        normally, but STALL_S late)."""
        with self._lock:
            self._faults.extend([(kind, status)] * count)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        """Requests of `path` are answered with `status` and `Location: location`."""
        with self._lock:
            self._redirects[path] = (status, location)

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = unquote(urlsplit(handler.path).path)
        with self._lock:
            self.requests.append(path)
            if handler.headers.get("Authorization"):
                self.authorized.append(path)
            fault = self._faults.popleft() if self._faults else None
            redirect = self._redirects.get(path)
        target = (self.root / path.lstrip("/")).resolve()
        if fault and fault[0] == "reset":
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.close_connection = True
            return
        if fault and fault[0] == "status":
            handler.send_error(fault[1])
            return
        if fault and fault[0] == "stall":
            time.sleep(STALL_S)
        if redirect:
            handler.send_response(redirect[0])
            handler.send_header("Location", redirect[1])
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if not target.is_relative_to(self.root.resolve()) or not target.is_file():
            handler.send_error(404)
            return
        data = target.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        wanted = self.ranges and _RANGE.fullmatch(handler.headers.get("Range", ""))
        status, body = 200, data
        if wanted:
            first = int(wanted.group(1))
            last = int(wanted.group(2)) if wanted.group(2) else len(data) - 1
            status, body = 206, data[first : last + 1]
        handler.send_response(status)
        handler.send_header("Content-Type", "audio/wav")
        handler.send_header("ETag", etag)
        handler.send_header("Content-Length", str(len(body)))
        if status == 206:
            handler.send_header("Content-Range", f"bytes {first}-{first + len(body) - 1}/{len(data)}")
        handler.end_headers()
        if fault and fault[0] == "truncate":
            handler.wfile.write(body[: len(body) // 2])
            handler.close_connection = True
            return
        try:
            for start in range(0, len(body), _WRITE_BYTES):
                chunk = body[start : start + _WRITE_BYTES]
                handler.wfile.write(chunk)
                with self._lock:
                    self.sent += len(chunk)
        except OSError:  # the client closed the connection without reading the rest
            handler.close_connection = True
