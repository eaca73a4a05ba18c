"""A fast loopback HTTP/1.1 file server for the download benchmarks (stdlib only).

Serves the files of one directory with Content-Length, a strong ETag (size + mtime),
Accept-Ranges, `Range: bytes=N-` (206 + Content-Range) and If-Range (a validator that no
longer matches gets the whole file, 200). Bodies go out with sendfile(2), so the kernel
copies page cache to socket and the server is never the bottleneck on loopback.

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


class FileServer:
    def __init__(self, root: Path, host: str = "127.0.0.1"):
        self.root = Path(root).resolve()
        self.body_bytes = 0
        self.requests = 0
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
            self.drops, self.resumes = [], []
            self._after_drop = False

    def take_cut(self) -> int | None:
        with self._lock:
            self.requests += 1
            return self._cuts.popleft() if self._cuts else None

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

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def do_GET(self) -> None:
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        app = self.server.app
        path = app.find(self.path)
        if path is None:
            self.send_error(404)
            return
        stat = path.stat()
        size = stat.st_size
        etag = f'"{size:x}-{stat.st_mtime_ns:x}"'
        modified = formatdate(stat.st_mtime, usegmt=True)
        start = self.range_start(etag, modified)
        if start is not None and start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start is not None else 200)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        start = start or 0
        self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", modified)
        self.end_headers()
        self.wfile.flush()
        if body:
            self.send_body(path, start, size - start, app.take_cut())

    def range_start(self, etag: str, modified: str) -> int | None:
        """The first byte asked for, or None for the whole file (no Range, a Range form we
        do not serve, or an If-Range that no longer matches)."""
        spec = self.headers.get("Range", "")
        if_range = self.headers.get("If-Range")
        if not spec.startswith("bytes=") or (if_range and if_range not in (etag, modified)):
            return None
        first, dash, last = spec[len("bytes=") :].partition("-")
        if not first.isdigit() or not dash or last:
            return None
        return int(first)

    def send_body(self, path: Path, offset: int, length: int, cut: int | None) -> None:
        app = self.server.app
        limit = length if cut is None else min(cut, length)
        done = 0
        with open(path, "rb") as fh:
            while done < limit:
                # socket.sendfile, not os.sendfile: the handler's timeout makes the socket
                # non-blocking underneath, and only socket.sendfile waits out EAGAIN.
                count = self.connection.sendfile(fh, offset + done, min(SEND_BLOCK, limit - done))
                if count == 0:
                    break
                app.sent(count, first=done == 0)
                done += count
        if cut is not None and cut < length:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            app.dropped()
