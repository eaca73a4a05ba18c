"""A loopback HTTP file server whose misbehaviour is scripted per request.

Download tests point a real HTTP client at `FileServer` and script what each GET of a path
does: drop the connection after N body bytes, stall, answer an error status with
Retry-After, ignore Range, flip a byte, redirect. Pure stdlib, one daemon thread per
connection; `stop()` releases stalled handlers and closes every open connection, so
teardown never waits on a client.
"""

import contextlib
import json
import socket
import sys
import threading
from collections import deque
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Self
from urllib.parse import urlsplit

CHUNK = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections give up on their own even if nobody calls stop().
    timeout = 10

    def do_GET(self) -> None:
        self.server.app.dispatch(self)

    do_HEAD = do_GET

    def log_message(self, format, *args) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: "LoopbackServer"):
        self.app = app
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can block offline.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        # Tracked here, in the accept loop, so stop() cannot miss a just-accepted connection.
        with self.app.closed:
            self.app.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self.app.closed:
            self.app.connections.discard(request)
            self.app.closed.notify_all()
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # A client hanging up mid-response is what these tests provoke, not a server bug.
        if not isinstance(sys.exception(), OSError):
            super().handle_error(request, client_address)


class LoopbackServer:
    """Start/stop plumbing shared by the fake servers: a free port on `host`, a record of
    every request, and `handle(handler, record)` for subclasses to answer with."""

    def __init__(self, host: str = "127.0.0.1"):
        self.requests: list[dict] = []
        self.connections: set[socket.socket] = set()
        self.closed = threading.Condition()  # notified whenever a connection ends
        self._httpd = _HTTPServer((host, 0), self)
        self.base = f"http://{host}:{self._httpd.server_port}"
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._stalls: list[threading.Event] = []

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.01,), name=self.base, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.release_stalls()
        if self._thread:
            self._httpd.shutdown()
            self._thread.join()
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        with self.closed:
            self.closed.wait_for(lambda: not self.connections, timeout=2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def url(self, path: str) -> str:
        return self.base + "/" + path.lstrip("/")

    def release_stalls(self) -> None:
        """Unblock every handler stalled so far; stop() calls this too."""
        with self._lock:
            for stall in self._stalls:
                stall.set()
            self._stalls.clear()

    def bytes_sent(self, path: str | None = None) -> int:
        return sum(r["sent"] for r in self.requests if path is None or r["path"] == path)

    def dispatch(self, h: BaseHTTPRequestHandler) -> None:
        target = urlsplit(h.path)
        record = {
            "path": target.path,
            "query": target.query,
            "method": h.command,
            "headers": {name.lower(): value for name, value in h.headers.items()},
            "status": None,
            "sent": 0,
        }
        self.requests.append(record)
        self.handle(h, record)

    def handle(self, h: BaseHTTPRequestHandler, record: dict) -> None:
        raise NotImplementedError

    def send_head(self, h, record: dict, status: int, headers: dict[str, str]) -> None:
        record["status"] = status
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()

    def reply(self, h, record, status: int, body: bytes, headers: dict | None = None) -> None:
        """A complete, well-behaved response (Content-Length always matches the body)."""
        head = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
        self.send_head(h, record, status, {**head, "Content-Length": str(len(body))})
        if h.command != "HEAD":
            self.write(h, record, body)

    def reply_json(self, h, record, status: int, payload, headers: dict | None = None) -> None:
        head = {"Content-Type": "application/json", **(headers or {})}
        self.reply(h, record, status, json.dumps(payload).encode(), head)

    def write(self, h, record: dict, body: bytes, rate: int | None = None) -> bool:
        """Write `body` (throttled to `rate` bytes/s if given); False if the client left or
        the server is stopping."""
        size = max(1, min(CHUNK, rate // 20)) if rate else CHUNK
        for start in range(0, len(body), size):
            chunk = body[start : start + size]
            # Counted before the write: once the client holds the last byte, the record must
            # already say so. A failed write overcounts, which keeps "at most" checks honest.
            record["sent"] += len(chunk)
            try:
                h.wfile.write(chunk)
            except OSError:
                h.close_connection = True
                return False
            if rate and self._stopped.wait(len(chunk) / rate):
                h.close_connection = True
                return False
        return True

    def stall(self) -> None:
        """Block until release_stalls() or stop()."""
        event = threading.Event()
        with self._lock:
            if self._stopped.is_set():
                return
            self._stalls.append(event)
        event.wait()


@dataclass
class _File:
    data: bytes
    etag: str | None
    last_modified: str | None
    script: deque
    rate: int | None
    auth: str | None
    body_416: bytes
    ranges: bool = True  # False: no Accept-Ranges, and every Range is ignored (200)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/octet-stream"}
        if self.ranges:
            headers["Accept-Ranges"] = "bytes"
        if self.etag:
            headers["ETag"] = self.etag
        if self.last_modified:
            headers["Last-Modified"] = self.last_modified
        return headers


def parse_step(entry: str) -> tuple[str, str]:
    """Split a script entry at its first colon: "drop:100" -> ("drop", "100").

    Redirect URLs keep their colons; "status:503:<HTTP date>" leaves "503:<HTTP date>",
    which the status reply splits once more, so Retry-After dates keep theirs too."""
    kind, _, arg = entry.partition(":")
    valid = {
        "ok": not arg,
        "ignore_range": not arg,
        "drop": arg.isdigit(),
        "short": arg.isdigit(),
        "stall": arg.isdigit(),
        "flip": arg.isdigit(),
        "status": arg.partition(":")[0].isdigit(),
        "redirect": bool(arg),
    }
    if not valid.get(kind):
        raise ValueError(f"bad script entry {entry!r}")
    return kind, arg


def requested_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range asked for as (start, end-exclusive), or None to send it all.
    Syntax we do not understand is ignored, as RFC 9110 allows; start >= size means 416."""
    unit, _, spec = (header or "").partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or not dash or not (first + last).isdigit():
        return None
    if not first:
        suffix = int(last)
        return (max(0, size - suffix), size) if suffix else (size, size)
    start = int(first)
    if start >= size:
        return start, size
    if last and int(last) < start:
        return None
    return start, (min(size, int(last) + 1) if last else size)


def if_range_matches(value: str, etag: str | None, last_modified: str | None) -> bool:
    if value.startswith(('"', "W/")):
        # If-Range needs a strong comparison: weak validators never match.
        return etag is not None and not etag.startswith("W/") and value == etag
    if last_modified is None:
        return False
    try:
        return parsedate_to_datetime(value) == parsedate_to_datetime(last_modified)
    except (TypeError, ValueError):
        return False


class FileServer(LoopbackServer):
    """Serves bytes registered with add(); each GET of a path takes the next entry of its
    script (see parse_step), then behaves normally. HEAD never consumes the script, and
    neither does a request refused for missing auth."""

    def __init__(self, host: str = "127.0.0.1"):
        super().__init__(host)
        self.files: dict[str, _File] = {}
        self.sending = 0  # bodies being written right now
        self.most_sending = 0  # the most at any one time: how many connections a client used

    def add(
        self,
        path: str,
        data: bytes,
        *,
        etag: str | None = '"v1"',
        last_modified: str | None = None,
        script: list[str] | None = None,
        rate: int | None = None,
        auth: str | None = None,
        body_416: bytes = b"",
        ranges: bool = True,
    ) -> str:
        """Serve `data` at `path`. `body_416` is what a Range past the end gets beside its
        416 status: CDNs send an HTML error page there. `ranges=False` is a server that
        knows no Range at all."""
        path = "/" + path.lstrip("/")
        steps = deque(parse_step(entry) for entry in script or [])
        self.files[path] = _File(data, etag, last_modified, steps, rate, auth, body_416, ranges)
        return self.url(path)

    def replace(
        self, path: str, data: bytes, etag: str | None = '"v2"', *, last_modified: str | None = None
    ) -> None:
        """A new version of the file for later requests; its script carries on."""
        path = "/" + path.lstrip("/")
        old = self.files[path]
        self.files[path] = _File(
            data, etag, last_modified, old.script, old.rate, old.auth, old.body_416, old.ranges
        )

    def handle(self, h, record: dict) -> None:
        file = self.files.get(record["path"])
        if file is None:
            return self.reply(h, record, 404, b"not found\n")
        if file.auth and h.headers.get("Authorization") != file.auth:
            return self.reply(h, record, 401, b"unauthorized\n", {"WWW-Authenticate": "Bearer"})
        kind, arg = self.next_step(file) if h.command == "GET" else ("ok", "")
        if kind == "status":
            return self.reply_status(h, record, arg)
        if kind == "redirect":
            return self.reply(h, record, 302, b"", {"Location": arg})
        self.serve(h, record, file, kind, arg)

    def next_step(self, file: _File) -> tuple[str, str]:
        # popleft, not a check then a pop: two concurrent GETs may race for the last entry.
        with contextlib.suppress(IndexError):
            return file.script.popleft()
        return "ok", ""

    def reply_status(self, h, record: dict, arg: str) -> None:
        code, _, retry_after = arg.partition(":")
        headers = {"Retry-After": retry_after} if retry_after else {}
        self.reply(h, record, int(code), f"scripted {code}\n".encode(), headers)

    def serve(self, h, record: dict, file: _File, kind: str, arg: str) -> None:
        size = len(file.data)
        wanted = self.chosen_range(h, file, kind)
        headers = file.headers()
        if wanted and wanted[0] >= size:
            headers["Content-Range"] = f"bytes */{size}"
            if file.body_416:
                headers["Content-Type"] = "text/html; charset=utf-8"
            return self.reply(h, record, 416, file.body_416, headers)
        start, end = wanted or (0, size)
        body = file.data[start:end]
        if kind == "flip" and start <= int(arg) < end:
            at = int(arg) - start
            body = body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1 :]
        if wanted:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Content-Length"] = str(len(body))
        self.send_head(h, record, 206 if wanted else 200, headers)
        if h.command != "HEAD":
            cut = int(arg) if kind in {"drop", "short", "stall"} else len(body)
            self.count_sending(+1)
            try:
                self.write(h, record, body[:cut], file.rate)
            finally:
                self.count_sending(-1)
            self.misbehave(h, kind)

    def count_sending(self, step: int) -> None:
        with self._lock:
            self.sending += step
            self.most_sending = max(self.most_sending, self.sending)

    def chosen_range(self, h, file: _File, kind: str) -> tuple[int, int] | None:
        """RFC 9110: when If-Range no longer matches, the Range is ignored, not refused."""
        if_range = h.headers.get("If-Range")
        if (
            kind == "ignore_range"
            or not file.ranges
            or (if_range and not if_range_matches(if_range, file.etag, file.last_modified))
        ):
            return None
        return requested_range(h.headers.get("Range"), len(file.data))

    def misbehave(self, h, kind: str) -> None:
        if kind == "stall":
            self.stall()
        if kind == "drop":
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
        if kind in {"drop", "short", "stall"}:
            h.close_connection = True
