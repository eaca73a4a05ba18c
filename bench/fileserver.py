"""A fast loopback HTTP/1.1 file server for the download benchmarks (stdlib only).

Serves the files of one directory with Content-Length, a strong ETag (size + mtime),
Accept-Ranges, `Range: bytes=N-` and `bytes=N-M` (206 + Content-Range) and If-Range (a
validator that no longer matches gets the whole file, 200). Bodies go out with
sendfile(2), so the kernel copies page cache to socket and the server is never the
bottleneck on loopback.

`FileServer(root, rate=16 * MiB)` caps each response at `rate` bytes/s, as a CDN caps each
connection (and as nginx's `limit_rate` does): the body goes out in sendfile slices of
1/RATE_SLICES s each, paced against the response's own clock, so the server sleeps rather
than spins. `cpu_seconds` is the CPU the handler threads used (time.thread_time), to show
that the server is not what limits a run; `peak_streams` is the most bodies in flight at
once and `first_requests` the monotonic time of each request line, to time a client's
start-up.

`drop_next([n1, n2, ...])` cuts the next GETs after n1, n2, ... body bytes: the socket is
shut down, so the client gets every byte counted and then EOF before Content-Length.
`body_bytes` counts every body byte sent; `drops` and `resumes` hold the monotonic times
of each cut and of the first body byte sent on the request after it.

    with FileServer(folder) as server:
        server.drop_next([1 << 20])
        httpx.get(f"{server.base}/name")
"""

import contextlib
import socket
import threading
import time
from collections import deque
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from typing import Self
from urllib.parse import unquote, urlsplit

SEND_BLOCK = 8 << 20
RATE_SLICES = 50  # slices per second of a capped body


class FileServer:
    def __init__(self, root: Path, host: str = "127.0.0.1", rate: int | None = None):
        self.root = Path(root).resolve()
        self.rate = rate
        self.body_bytes = 0
        self.requests = 0
        self.request_times: list[float] = []
        self.cpu_seconds = 0.0
        self.streams = 0
        self.peak_streams = 0
        self.drops: list[float] = []
        self.resumes: list[float] = []
        self._cuts: deque[int] = deque()
        self._after_drop = False
        self._lock = threading.Lock()
        self._httpd = _HTTPServer((host, 0), self)
        self.base = f"http://{host}:{self._httpd.server_port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
        self._httpd.close_all()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def drop_next(self, after_bytes: list[int]) -> None:
        """Cut each of the next len(after_bytes) GETs after that many body bytes."""
        with self._lock:
            self._cuts.extend(after_bytes)

    def reset(self) -> None:
        """Forget counts, timestamps and any cut not used yet."""
        with self._lock:
            self._cuts.clear()
            self.body_bytes, self.requests = 0, 0
            self.request_times, self.cpu_seconds, self.peak_streams = [], 0.0, self.streams
            self.drops, self.resumes = [], []
            self._after_drop = False

    def take_cut(self) -> int | None:
        with self._lock:
            self.requests += 1
            return self._cuts.popleft() if self._cuts else None

    def asked(self) -> None:
        with self._lock:
            self.request_times.append(time.monotonic())

    def used_cpu(self, seconds: float) -> None:
        with self._lock:
            self.cpu_seconds += seconds

    @contextlib.contextmanager
    def stream(self):
        with self._lock:
            self.streams += 1
            self.peak_streams = max(self.peak_streams, self.streams)
        try:
            yield
        finally:
            with self._lock:
                self.streams -= 1

    def sent(self, count: int, first: bool) -> None:
        with self._lock:
            self.body_bytes += count
            if first and self._after_drop:
                self.resumes.append(time.monotonic())
                self._after_drop = False

    def dropped(self) -> None:
        with self._lock:
            self.drops.append(time.monotonic())
            self._after_drop = True

    def find(self, path: str) -> Path | None:
        target = (self.root / unquote(urlsplit(path).path).lstrip("/")).resolve()
        if target.is_relative_to(self.root) and target.is_file():
            return target
        return None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: FileServer):
        self.app = app
        self.open: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call getfqdn(): a reverse DNS lookup, slow offline.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        self.open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        self.open.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        for sock in list(self.open):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request, client_address) -> None:
        # Clients hanging up mid-body is routine here, not a server fault.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection ends on its own
    server: _HTTPServer

    def log_message(self, format, *args) -> None:
        pass

    def parse_request(self) -> bool:
        self.server.app.asked()
        return super().parse_request()

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def do_GET(self) -> None:
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        started = time.thread_time()
        try:
            self.answer_file(body)
        finally:
            self.server.app.used_cpu(time.thread_time() - started)

    def answer_file(self, body: bool) -> None:
        app = self.server.app
        path = app.find(self.path)
        if path is None:
            self.send_error(404)
            return
        stat = path.stat()
        size = stat.st_size
        etag = f'"{size:x}-{stat.st_mtime_ns:x}"'
        modified = formatdate(stat.st_mtime, usegmt=True)
        span = self.byte_range(etag, modified, size)
        if span is not None and span[0] >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if span is not None else 200)
        start, end = span or (0, size - 1)
        if span is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end + 1 - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", modified)
        self.end_headers()
        self.wfile.flush()
        if body:
            with app.stream():
                self.send_body(path, start, end + 1 - start, app.take_cut())

    def byte_range(self, etag: str, modified: str, size: int) -> tuple[int, int] | None:
        """(first, last) byte asked for (`bytes=N-` or `bytes=N-M`, last clipped to the
        file), or None for the whole file (no Range, a Range form we do not serve, or an
        If-Range that no longer matches)."""
        spec = self.headers.get("Range", "")
        if_range = self.headers.get("If-Range")
        if not spec.startswith("bytes=") or (if_range and if_range not in (etag, modified)):
            return None
        first, dash, last = spec[len("bytes=") :].partition("-")
        if not first.isdigit() or not dash or not (last.isdigit() or not last):
            return None
        if last and int(last) < int(first):
            return None
        return int(first), min(int(last), size - 1) if last else size - 1

    def send_body(self, path: Path, offset: int, length: int, cut: int | None) -> None:
        app = self.server.app
        limit = length if cut is None else min(cut, length)
        block = max(1, min(SEND_BLOCK, app.rate // RATE_SLICES)) if app.rate else SEND_BLOCK
        done = 0
        started = time.monotonic()
        with open(path, "rb") as fh:
            while done < limit:
                if app.rate:
                    time.sleep(max(0.0, started + done / app.rate - time.monotonic()))
                # socket.sendfile, not os.sendfile: the handler's timeout makes the socket
                # non-blocking underneath, and only socket.sendfile waits out EAGAIN.
                count = self.connection.sendfile(fh, offset + done, min(block, limit - done))
                if count == 0:
                    break
                app.sent(count, first=done == 0)
                done += count
        if cut is not None and cut < length:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            app.dropped()
