"""A local http server of audio files with injected faults, for the http(s) audio path (as s3_proxy.py
does for S3): answers with an ETag (of the content) and Content-Length, serves one-byte ranges, and on
demand fails the next requests with a status, cuts their body short, or resets the connection."""

from __future__ import annotations

import hashlib
import re
import socket
import struct
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class HttpFileServer:
    """Serves the files under `root` at http://127.0.0.1:<port>/<relative path> (query strings ignored:
    presigned-style URLs work). `requests` lists the paths asked, without their query."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.requests: list[str] = []
        self._faults: deque[tuple[str, int]] = deque()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._answer(self)

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
        of a full Content-Length) or "reset" (the connection closed with a TCP reset)."""
        with self._lock:
            self._faults.extend([(kind, status)] * count)

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = unquote(urlsplit(handler.path).path)
        with self._lock:
            self.requests.append(path)
            fault = self._faults.popleft() if self._faults else None
        target = (self.root / path.lstrip("/")).resolve()
        if fault and fault[0] == "reset":
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.close_connection = True
            return
        if fault and fault[0] == "status":
            handler.send_error(fault[1])
            return
        if not target.is_relative_to(self.root.resolve()) or not target.is_file():
            handler.send_error(404)
            return
        data = target.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        wanted = _RANGE.fullmatch(handler.headers.get("Range", ""))
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
        handler.wfile.write(body)
