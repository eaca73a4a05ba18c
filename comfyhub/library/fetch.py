"""Streaming a model file into place: resume from the last byte, verify, then rename.

Bytes go to `<dest>.part` beside the destination, with a sidecar `<dest>.part.json`
(written before the first byte) naming the URL and validators they came from. A resumed
attempt re-hashes the kept prefix and asks for the rest with `Range` + `If-Range`. Only
a file whose size and sha256 check out is fsynced and `os.replace`d onto the destination,
so the destination never holds partial or unverified bytes.

The network is read on the job's thread while a second thread writes and hashes (both
release the GIL), so download, hashing and disk overlap. A large file from a server that
honours Range goes over several connections instead (segments.py), still into one .part.
"""

import contextlib
import enum
import errno
import hashlib
import json
import os
import queue
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpcore
import httpx
from django.conf import settings

from comfyhub.library import index, mirrors, segments, sources, store
from comfyhub.library.bandwidth import LIMITER
from comfyhub.library.models import Download
from comfyhub.library.paths import (
    BadInput,
    check_url,
    open_own_file,
    open_unfollowed,
    refuse_planted,
)
from recovery.errors import Defer, JobError
from recovery.models import Category, Job

# sha256 states of .part prefixes this process has already hashed, so a retry in the same
# process resumes without re-reading a 20 GB prefix. Trusted only while the file's size
# and mtime are exactly what they were when the state was taken.
PREFIX_HASHES: dict[str, tuple[int, int, "hashlib._Hash"]] = {}

CHUNK = 1 << 20
QUEUE_DEPTH = 4  # chunks in flight to the writer: bounds memory and bytes lost to a kill
SYNC_EVERY = 64 * CHUNK  # written bytes between two background flushes to disk
REPORT_SECONDS = 0.5
REDIRECTS = 10
RESTARTS = 3

# httpcore reads a connection 64 KiB at a time, and every read is a GIL hand-off: with
# several connections in one process the hand-offs cost more than the bytes (512 MiB over
# loopback, 8 connections: 4.9 s of CPU at 64 KiB, 3.4 s at 1 MiB; one connection 3.7 s).
# A read returns whatever has arrived, so small answers are unaffected. httpcore has no
# other knob than this class constant.
httpcore.HTTP11Connection.READ_NUM_BYTES = CHUNK


def fetch(job: Job) -> None:
    download = Download.objects.get(job=job)
    # Requests from a launcher file or an old row were never checked: a bad URL or name
    # fails here, plainly and at once (BadInput is a validation error).
    check_url(download.source)
    download.hold_dest()
    if finish_if_present(download, job):
        return
    acquire_slot(download)
    timeout = httpx.Timeout(30.0, read=settings.STALL_TIMEOUT)
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            if not download.url:
                resolve_into(download, client)
            transfer = Transfer(download, job)
            transfer.prepare()
            stream(client, transfer)
    except Exception as exc:
        mirrors.leave_if_gone(download, job, exc)  # raises to go on from the next source
        raise
    transfer.place()


def finish_if_present(download: Download, job: Job) -> bool:
    """A file already at the destination with the expected sha256 (or, without one, the
    expected size), or an expected sha256 the one-copy store holds (linked into place),
    finishes the download without touching the network."""
    path = download.path
    if not path.is_file():
        return finish_from_store(download, job)
    size = path.stat().st_size
    if download.expected_size is not None and size != download.expected_size:
        return finish_from_store(download, job)
    digest = hash_file(path, size)
    if download.expected_sha256 and digest != download.expected_sha256:
        return finish_from_store(download, job)
    record_done(download, job, digest, size)
    return True


def finish_from_store(download: Download, job: Job) -> bool:
    sha256 = download.expected_sha256
    size = store.link_into(download.path, sha256, download.expected_size) if sha256 else None
    if size is None:
        return False
    record_done(download, job, sha256, size)
    return True


def acquire_slot(download: Download) -> None:
    """The global limit counts downloads, the per-host one connections: a download starts
    with one (it takes more when it splits, segments.connections_for). This job is already
    `running`, so it counts itself; two jobs racing for the last slot may both step back,
    or briefly both go ahead, never wait on each other."""
    running = Download.objects.running_on().count()
    held = Download.objects.connections_on(download.host, besides=download.pk)
    if running > settings.DOWNLOADS_MAX or held >= settings.CONNECTIONS_PER_HOST:
        message = f"Waiting for a free download slot ({held} connections open to {download.host})."
        raise Defer(message, seconds=random.uniform(1.0, 3.0))  # noqa: S311 (jitter)
    download.connections = 1
    download.save(update_fields=["connections"])


def resolve_into(download: Download, client: httpx.Client) -> None:
    resolved = sources.resolve(download.source, client)
    download.url = check_url(resolved.url)  # an API's answer is input like any other
    download.expected_sha256 = download.expected_sha256 or resolved.sha256
    download.total_bytes = download.expected_size or resolved.size_hint
    download.save(update_fields=["url", "expected_sha256", "total_bytes"])
    adopt_part(download)


def adopt_part(download: Download) -> None:
    """Keep a .part that came from another URL (another mirror) when the expected sha256
    is known: the final hash check catches a different file. Its validator belongs to the
    other server, so it is dropped (a plain Range, no If-Range). Without a sha256 the
    .part is not kept (Transfer.prepare discards it): two files of one size would be
    joined with nothing to notice."""
    state = read_sidecar(download)
    if not download.expected_sha256 or state.get("url") in (None, download.url):
        return
    if not download.part_path.is_file():
        return
    refuse_planted(*download.working_paths)
    state.update(url=download.url, validator="")
    write_sidecar(download, state)


def write_sidecar(download: Download, state: dict) -> None:
    """Write the sidecar beside its temporary name, then rename it into place: a link
    planted at the sidecar itself is replaced, never written through."""
    tmp = download.sidecar_tmp_path
    fd = open_own_file(tmp)
    try:
        os.ftruncate(fd, 0)
        write_all(fd, json.dumps(state).encode())
    finally:
        os.close(fd)
    os.replace(tmp, download.sidecar_path)


def stream(client: httpx.Client, transfer: "Transfer") -> None:
    transfer.check_space()  # before the first request when the size is known already
    LIMITER.refresh()
    for _ in range(RESTARTS):
        if transfer.segments:
            answer = segments.resume(client, transfer)
        else:
            answer = stream_one(client, transfer)
        if answer != Answer.AGAIN:
            return
    raise JobError(
        f"{transfer.download.host} kept answering with parts that do not fit together; "
        "retrying from the start.",
        category=Category.SERVER,
    )


def stream_one(client: httpx.Client, transfer: "Transfer") -> "Answer":
    """One request; a 206 for a large file becomes several connections."""
    with contextlib.closing(open_response(client, transfer)) as response:
        answer = accept(response, transfer)
        if answer == Answer.BODY:
            transfer.check_space()
            if segments.worth_splitting(transfer, response):
                return segments.split(client, transfer, response)
            pump(response, transfer)
        return answer


def open_response(client: httpx.Client, transfer: "Transfer") -> httpx.Response:
    """GET with Range/If-Range, following redirects by hand so a token never leaves its
    own host."""
    visited = [transfer.download.url]
    for _ in range(REDIRECTS):
        url = visited[-1]
        headers = {**transfer.range_headers(), **sources.auth_headers(url)}
        headers["Accept-Encoding"] = "identity"
        response = client.send(client.build_request("GET", url, headers=headers), stream=True)
        if not response.is_redirect:
            return response
        response.close()
        visited.append(follow(url, response.headers.get("location", "")))
    raise redirect_loop(transfer.download, visited)


def redirect_loop(download: Download, visited: list[str]) -> JobError:
    """Retrying a loop only repeats it: fail at once, with the chain in the detail."""
    looped = len(set(visited)) < len(visited)
    what = "redirects in a loop" if looped else f"redirected more than {REDIRECTS} times"
    return JobError(
        f"The link on {download.host} {what}, so the file cannot be reached there. Open it "
        "in a browser to check it, or use another link.",
        category=Category.NOT_FOUND,
        detail="Redirects followed:\n" + "\n".join(visited),
    )


def follow(url: str, location: str) -> str:
    try:
        return check_url(urljoin(url, location))
    except BadInput as exc:
        raise JobError(
            f"The server redirected to an address that cannot be used: {exc}",
            category=Category.VALIDATION,
        ) from None


class Answer(enum.Enum):
    """What a response means for the .part."""

    BODY = "body"  # its body continues (206) or replaces (200) the .part
    COMPLETE = "complete"  # 416 for a whole .part: its body (often an HTML page) is no data
    AGAIN = "again"  # the .part was reset; ask again


def accept(response: httpx.Response, transfer: "Transfer") -> Answer:
    status = response.status_code
    if status == 206:
        return Answer.BODY if transfer.continue_from(response) else Answer.AGAIN
    if status == 200:
        transfer.restart(response)
        return Answer.BODY
    if status == 416:
        return Answer.COMPLETE if transfer.check_complete(response) else Answer.AGAIN
    if status in (401, 403):
        raise auth_error(transfer.download, status)
    response.read()
    response.raise_for_status()
    raise JobError(
        f"Unexpected answer HTTP {status} from {transfer.download.host}.", category=Category.SERVER
    )


def auth_error(download: Download, status: int) -> JobError:
    setting, _ = sources.token_for(download.url)
    if setting:
        fix = f"Set {setting} in Settings to a token that may download this file, then retry."
    elif sources.endpoint_over_https(download.url):
        fix = (
            "Use the https:// link instead: your access token is never sent over plain "
            "http, where anyone on the way could read it."
        )
    else:
        fix = "This file needs an access you do not have; check the link."
    return JobError(
        f"{download.host} refused the download (HTTP {status}). {fix}", category=Category.AUTH
    )


def pump(response: httpx.Response, transfer: "Transfer") -> None:
    try:
        with Sink(transfer) as sink:
            gather(response, sink, transfer)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise transfer.disk_full() from exc
        raise
    finally:
        transfer.remember_hash()
        transfer.record_progress()
    if transfer.total is not None and transfer.offset < transfer.total:
        raise JobError(
            f"The connection to {transfer.download.host} closed after {transfer.offset:,} of "
            f"{transfer.total:,} bytes; resuming from there.",
            category=Category.NETWORK,
        )


def gather(response: httpx.Response, sink: "Sink", transfer: "Transfer") -> None:
    """Hand the writer ~1 MiB of pieces at a time (it joins them, off this thread); when
    the connection drops, every byte that did arrive is still written, so the next
    attempt resumes from the very last one."""
    pieces, size = [], 0
    try:
        for piece in response.iter_raw():
            pieces.append(piece)
            size += len(piece)
            # Counted as it arrives: progress, pause and cancel keep pace with a slow link.
            transfer.advance(len(piece))
            LIMITER.take(len(piece))
            if size >= CHUNK:
                sink.put(pieces)
                pieces, size = [], 0
    finally:
        if pieces:
            sink.put(pieces)


class Sink:
    """Writes and hashes chunks on a thread of its own, in order; a third thread pushes
    written data to disk as the download goes on, so the final fsync is short."""

    def __init__(self, transfer: "Transfer"):
        self.transfer = transfer
        # A raw descriptor: blocks are large, and a failed write must surface here, not at
        # close. Appending to what prepare() kept.
        self.fd = open_own_file(transfer.part)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self.error: OSError | None = None
        self.unsynced = 0
        self.sync_wanted = threading.Event()
        self.closing = False
        self.writer = threading.Thread(target=self.drain, daemon=True)
        self.syncer = threading.Thread(target=self.sync_behind, daemon=True)

    def __enter__(self) -> "Sink":
        self.writer.start()
        self.syncer.start()
        return self

    def put(self, pieces: list[bytes]) -> None:
        if self.error:
            raise self.error
        self.queue.put(pieces)

    def drain(self) -> None:
        while (pieces := self.queue.get()) is not None:
            block = b"".join(pieces)
            if self.error is None:
                try:
                    write_all(self.fd, block)
                    self.transfer.hasher.update(block)
                except OSError as exc:
                    self.error = exc
                self.note_written(len(block))

    def note_written(self, count: int) -> None:
        self.unsynced += count
        if self.unsynced >= SYNC_EVERY:
            self.unsynced = 0
            self.sync_wanted.set()

    def sync_behind(self) -> None:
        while self.sync_wanted.wait() and not self.closing:
            self.sync_wanted.clear()
            # Best effort: the final fsync in __exit__ is the one whose error counts.
            with contextlib.suppress(OSError):
                os.fdatasync(self.fd)

    def __exit__(self, *exc_info) -> None:
        self.queue.put(None)
        self.writer.join()
        self.closing = True
        self.sync_wanted.set()
        self.syncer.join()
        try:
            if self.error is None:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
        if self.error:
            raise self.error


@dataclass
class Transfer:
    """The state of one attempt: how many bytes the .part holds and their running hash."""

    download: Download
    job: Job
    offset: int = 0
    total: int | None = None
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    validator: str = ""
    speed: float = 0.0
    reported_at: float = field(default_factory=time.monotonic)
    reported_bytes: int = 0
    # A split download (segments.py): its segments, and how much of the contiguous
    # prefix `hasher` holds. `single`: this attempt stays on one stream.
    segments: list | None = None
    hashed: int = 0
    single: bool = False

    @property
    def part(self):
        return self.download.part_path

    @property
    def connections(self) -> int:
        """Connections wanted: the job's own (`download --connections`), else the setting."""
        return self.job.params.get("connections") or settings.DOWNLOAD_CONNECTIONS

    def may_split(self) -> bool:
        return self.connections > 1 and not self.single

    def prepare(self) -> None:
        """Keep the .part only if the sidecar says it came from this URL; re-hash it.

        Links planted at the .part or its sidecars are refused before anything is read."""
        download = self.download
        refuse_planted(*download.working_paths)
        state = read_sidecar(download)
        kept = self.part.exists() and state.get("url") == download.url
        if kept and state.get("segments") is not None:
            kept = self.resume_segments(state)
        elif kept:
            self.offset = self.part.stat().st_size
            self.hasher = self.prefix_hash()
            self.validator = state.get("validator", "")
        if not kept:
            download.discard_partial()
            self.part.parent.mkdir(parents=True, exist_ok=True)
            os.close(open_own_file(self.part))
        self.reported_bytes = self.offset
        self.total = self.total or self.download.expected_size or self.download.total_bytes
        self.save_sidecar()

    def resume_segments(self, state: dict) -> bool:
        """Take up a split .part where its sidecar says each segment stopped."""
        found = segments.from_sidecar(state, self.part.stat().st_size)
        expected = self.download.expected_size
        if found is None or (expected is not None and expected != state["total"]):
            return False
        self.segments, self.total = found, state["total"]
        self.validator = state.get("validator", "")
        self.offset = sum(segment.done for segment in found)
        self.hasher, self.hashed = self.segments_prefix_hash(segments.frontier(found))
        return True

    def segments_prefix_hash(self, length: int) -> tuple["hashlib._Hash", int]:
        known = PREFIX_HASHES.get(str(self.part) + segments.MEMO)
        if known and known[0] <= length and known[1] == self.part.stat().st_mtime_ns:
            hasher, start = known[2].copy(), known[0]
        else:
            hasher, start = hashlib.sha256(), 0
        hash_into(self.part, length, hasher, start)
        return hasher, length

    def prefix_hash(self) -> "hashlib._Hash":
        stat = self.part.stat()
        known = PREFIX_HASHES.get(str(self.part))
        if known and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2].copy()
        hasher = hashlib.sha256()
        hash_into(self.part, stat.st_size, hasher)
        return hasher

    def remember_hash(self) -> None:
        stat = self.part.stat() if self.part.exists() else None
        if stat and self.segments:
            memo = (self.hashed, stat.st_mtime_ns, self.hasher.copy())
            PREFIX_HASHES[str(self.part) + segments.MEMO] = memo
        elif stat and stat.st_size == self.offset:
            PREFIX_HASHES[str(self.part)] = (stat.st_size, stat.st_mtime_ns, self.hasher.copy())

    def range_headers(self) -> dict[str, str]:
        if not self.offset:
            # Asking for everything as a range tells at once whether segments can work.
            small = self.total is not None and self.total < 2 * segments.MIN_SEGMENT
            return {"Range": "bytes=0-"} if self.may_split() and not small else {}
        headers = {"Range": f"bytes={self.offset}-"}
        if self.validator:
            headers["If-Range"] = self.validator
        return headers

    def continue_from(self, response: httpx.Response) -> bool:
        start, total = content_range(response.headers.get("content-range", ""))
        changed = self.validator and validator_of(response) not in ("", self.validator)
        if start != self.offset or changed:
            self.reset()
            return False
        self.total = total if total is not None else self.total
        if not self.offset:  # "bytes=0-" answered: this is where the file's version is known
            self.validator = validator_of(response)
            self.save_sidecar()
        return True

    def restart(self, response: httpx.Response) -> None:
        """A full body (200): whatever we had is replaced from byte zero."""
        self.reset()
        self.validator = validator_of(response)
        length = response.headers.get("content-length")
        self.total = int(length) if length and length.isdigit() else self.download.expected_size
        self.save_sidecar()

    def check_complete(self, response: httpx.Response) -> bool:
        """416: we asked past the end; either the .part is whole, or start over."""
        _, total = content_range(response.headers.get("content-range", ""))
        if total is not None and total == self.offset:
            self.total = total
            return True
        self.reset()
        return False

    def reset(self) -> None:
        self.offset, self.validator, self.hasher = 0, "", hashlib.sha256()
        self.reported_bytes, self.segments, self.hashed = 0, None, 0
        fd = open_own_file(self.part)
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def save_sidecar(self) -> None:
        data = {
            "url": self.download.url,
            "validator": self.validator,
            "expected_sha256": self.download.expected_sha256,
            "total": self.total,
        }
        if self.segments:
            data["segments"] = [[s.start, s.end, s.done] for s in self.segments]
        write_sidecar(self.download, data)

    def check_space(self) -> None:
        needed = (self.total or 0) - self.offset
        if needed > shutil.disk_usage(self.part.parent).free:
            raise self.disk_full()

    def disk_full(self) -> JobError:
        folder = self.part.parent
        kept = self.part.stat().st_size if self.part.exists() else 0
        needed = max(0, (self.total or self.offset) - kept)
        free = shutil.disk_usage(folder).free
        return JobError(
            f"Not enough disk space in {folder}: this download needs {human(needed)} more and "
            f"{human(free)} is free. Free some space, then press Retry; it resumes where it "
            "stopped.",
            category=Category.DISK_FULL,
        )

    def record_progress(self) -> None:
        """Whatever ends the stream, the bytes that did arrive count as progress (a short
        attempt between two drops may never reach a timed report)."""
        self.job.progress_done = max(self.job.progress_done, self.offset)
        self.download.report(self.offset, self.total, self.speed, None)

    def advance(self, count: int) -> None:
        self.offset += count
        now = time.monotonic()
        if now - self.reported_at >= REPORT_SECONDS:
            self.report(now)

    def report(self, now: float) -> None:
        instant = (self.offset - self.reported_bytes) / max(now - self.reported_at, 1e-6)
        self.speed = instant if not self.speed else 0.3 * instant + 0.7 * self.speed
        self.reported_at, self.reported_bytes = now, self.offset
        left = (self.total - self.offset) if self.total else None
        eta = left / self.speed if left is not None and self.speed else None
        self.download.report(self.offset, self.total, self.speed, eta)
        self.job.progress(self.offset, self.total, "bytes")
        LIMITER.refresh()

    def place(self) -> None:
        """Verify size and sha256, then fsync and atomically rename onto the destination."""
        size = self.part.stat().st_size
        digest = self.hasher.hexdigest()
        expected = self.download.expected_sha256
        if expected and digest != expected:
            self.reject(f"its sha256 is {digest[:16]}…, expected {expected[:16]}…")
        if self.download.expected_size is not None and size != self.download.expected_size:
            self.reject(f"it has {size:,} bytes, expected {self.download.expected_size:,}")
        target = self.download.path
        PREFIX_HASHES.pop(str(self.part), None)
        PREFIX_HASHES.pop(str(self.part) + segments.MEMO, None)
        # Checked again just before the rename: a link swapped in while the bytes flowed
        # must not become the destination.
        refuse_planted(self.part)
        os.replace(self.part, target)
        fsync_dir(target.parent)
        self.download.sidecar_path.unlink(missing_ok=True)
        record_done(self.download, self.job, digest, size)

    def reject(self, why: str) -> None:
        self.download.discard_partial()
        raise JobError(
            f"The file from {self.download.host} failed verification: {why}. It was "
            "discarded and is downloaded again once; if that fails too, the source file "
            "is probably different from the one expected.",
            category=Category.INTEGRITY,
        )


def write_all(fd: int, chunk: bytes) -> None:
    """A raw write may be partial (e.g. just before the disk fills)."""
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


def read_sidecar(download: Download) -> dict:
    try:
        return json.loads(download.sidecar_path.read_text())
    except (OSError, ValueError):
        return {}


def validator_of(response: httpx.Response) -> str:
    """A validator If-Range may carry: a strong ETag, else Last-Modified."""
    etag = response.headers.get("etag", "")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("last-modified", "")


def content_range(header: str) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000)."""
    unit, _, spec = header.partition(" ")
    span, _, total = spec.partition("/")
    if unit != "bytes":
        return None, None
    start = span.partition("-")[0]
    return (
        int(start) if start.isdigit() else None,
        int(total) if total.isdigit() else None,
    )


def hash_into(path, length: int, hasher, start: int = 0) -> None:
    """Feed bytes [start, length) of `path` to `hasher`."""
    with open(open_unfollowed(path), "rb") as fh:
        fh.seek(start)
        remaining = length - start
        while remaining and (block := fh.read(min(CHUNK * 4, remaining))):
            hasher.update(block)
            remaining -= len(block)


def hash_file(path, size: int) -> str:
    hasher = hashlib.sha256()
    hash_into(path, size, hasher)
    return hasher.hexdigest()


def fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def record_done(download: Download, job: Job, digest: str, size: int) -> None:
    # Only models join the store: a .downloads zip or input image is no model, and an
    # input file made read-only would be read-only in every project it is linked into.
    if index.is_model(download.path, settings.MODELS_DIR.resolve()):
        store.keep(download.path, digest)
        index.record(download.path, digest)
    download.sha256 = digest
    download.report(size, size, download.speed, 0)
    download.save(update_fields=["sha256"])
    job.progress(size, size, "bytes")


def human(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"
