"""One file over several connections at once, into the same single `.part`.

A file of known size from a server that answered a Range request with 206 is split into
segments of at least MIN_SEGMENT bytes, one connection each (fetch.stream decides). The
`.part` is pre-sized and every segment writes at its own offset; the sidecar lists each
segment as [start, end, done], where `done` counts only bytes fdatasynced before it was
recorded, so after a SIGKILL each segment resumes on its own and refetches at most what
arrived since the last checkpoint (about one CHUNK per segment).

Threads: the job's thread coordinates (progress, pause/cancel, checkpoints, the database);
one thread per connection reads, pwrites and never touches the database; one hashes the
contiguous prefix [0, frontier) from the page cache as it grows, so when the last segment
lands only its tail is left to hash.

A segment answered with a changed validator restarts the whole file cleanly; one answered
with 200 for the same file (a server that does not honour Range after all) ends the split:
the contiguous prefix is kept and the rest comes over one stream. A dropped segment is
retried by itself a few times; if it stays dead the attempt fails as `network` and the job's
next attempt resumes each unfinished segment from the sidecar.

The first request resolves redirects (by hand, fetch.open_response); the other segments ask
its final URL directly, with a token only if that URL's own origin (scheme, host, port) has
one. A refusal (401/403/410) from that final URL is taken for an expired signed link: the
segment resolves again from the download's own URL and carries on from there. A split takes
what the host's connection budget has left (connections_for) and records it on the row.
"""

import contextlib
import enum
import errno
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

import httpx
from django.conf import settings

from comfyhub.library import fetch, sources
from comfyhub.library.bandwidth import LIMITER
from comfyhub.library.models import Download
from comfyhub.library.paths import open_own_file, open_unfollowed
from recovery.errors import JobError
from recovery.models import Category

MIN_SEGMENT = 4 << 20
HASH_BLOCK = 4 << 20
# One connection is watched for RAMP_SECONDS at a time before the others open: one that
# moves FAST_CONNECTION or more is already faster than hashing and the disk (a LAN, a local
# mirror; on loopback 8 connections were 1.5x slower than 1), so more would only add CPU.
# CDNs cap each connection far below that, and the others open after the first window.
RAMP_SECONDS = 0.25
FAST_CONNECTION = 96 << 20  # bytes/s
CHECKPOINT_GAP = 0.1  # least seconds between two size-triggered checkpoints (fdatasync)
SEGMENT_TRIES = 4  # tries in a row without a byte before a segment waits for the next attempt
SEGMENT_BACKOFF = 0.25  # seconds, doubled after each such try
MEMO = "#segments"  # PREFIX_HASHES key suffix for a segmented .part's hashed prefix


@dataclass
class Segment:
    start: int
    end: int  # exclusive
    done: int = 0  # recorded in the sidecar: written and synced
    written: int = 0  # in the .part, maybe not yet on disk

    @property
    def position(self) -> int:
        return self.start + self.written

    @property
    def finished(self) -> bool:
        return self.position >= self.end


def plan(offset: int, total: int, count: int) -> list[Segment]:
    """[0, offset) already held is a finished segment; the rest is cut into `count` parts
    (fewer if that would make them shorter than MIN_SEGMENT), on CHUNK boundaries."""
    held = [Segment(0, offset, offset, offset)] if offset else []
    count = max(1, min(count, (total - offset) // MIN_SEGMENT))
    step = -(-(total - offset) // count)
    step = -(-step // fetch.CHUNK) * fetch.CHUNK
    return held + [Segment(s, min(total, s + step)) for s in range(offset, total, step)]


def from_sidecar(state: dict, size: int) -> list[Segment] | None:
    """The sidecar's segments if they tile [0, total) sanely and fit the .part, else None.

    Every segment's recorded bytes must lie inside the .part's `size`: a .part truncated
    just before a kill (a reset, a fall back to one stream) while its sidecar still names
    bytes beyond its new end would otherwise be taken up with zeros as those bytes."""
    total, rows = state.get("total"), state.get("segments")
    if not isinstance(total, int) or not isinstance(rows, list) or size > total:
        return None
    segments, edge = [], 0
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and all(isinstance(v, int) for v in row)):
            return None
        start, end, done = row
        if start != edge or end <= start or not 0 <= done <= end - start or start + done > size:
            return None
        segments.append(Segment(start, end, done, done))
        edge = end
    return segments if edge == total else None


def frontier(segments: list[Segment]) -> int:
    """End of the contiguous prefix of written bytes."""
    edge = 0
    for segment in segments:
        if segment.start != edge:  # a list read just as a segment was cut in two
            break
        edge = segment.position
        if not segment.finished:
            break
    return edge


def connections_for(transfer) -> int:
    """What this download may open: the connections it wants, less what other running
    downloads from the same host already hold of CONNECTIONS_PER_HOST (at least one). Two
    downloads deciding at once may briefly exceed the budget; neither waits on the other."""
    download = transfer.download
    held = Download.objects.connections_on(download.host, besides=download.pk)
    return max(1, min(transfer.connections, settings.CONNECTIONS_PER_HOST - held))


def worth_splitting(transfer, response: httpx.Response) -> bool:
    """A 206 proves Range works; the size must leave two segments of MIN_SEGMENT."""
    return (
        response.status_code == 206
        and transfer.may_split()
        and transfer.total is not None
        and transfer.total - transfer.offset >= 2 * MIN_SEGMENT
    )


def split(client: httpx.Client, transfer, response: httpx.Response) -> "fetch.Answer":
    """Carry on from `response` (a 206 from transfer.offset) over several connections."""
    count = connections_for(transfer)
    transfer.segments = plan(transfer.offset, transfer.total, count)
    transfer.hashed = transfer.offset  # the hasher already holds the kept prefix
    url = str(response.request.url)
    return Split(client, transfer, url, count).run(first=response)


def resume(client: httpx.Client, transfer) -> "fetch.Answer":
    """Continue a segmented .part (from the sidecar) with every segment's own Range."""
    return Split(client, transfer, transfer.download.url, connections_for(transfer)).run()


class Ending(enum.Enum):
    CHANGED = "changed"  # the file changed on the server: start over
    NO_RANGE = "no_range"  # a 200 for a segment: keep the prefix, go on with one stream
    AUTH = "auth"


class Split:
    def __init__(self, client: httpx.Client, transfer, url: str, connections: int):
        self.client, self.transfer = client, transfer
        self.segments: list[Segment] = transfer.segments
        self.pending = deque(s for s in self.segments if not s.finished)
        self.active: set[int] = set()  # id() of the segments a connection is working on
        left = sum(s.end - s.position for s in self.pending)
        self.connections = max(1, min(connections, max(len(self.pending), left // MIN_SEGMENT)))
        # A resumed .part may have fewer segments left than connections: cut them before
        # asking, not after (a cut after the ask wastes what that answer had in flight).
        while len(self.pending) < self.connections and (back := self.cut_in_two(self.pending)):
            self.pending.append(back)
        self.url = url  # where segments are asked: the first answer's address after redirects
        self.home = transfer.download.url  # where a stale address is resolved again from
        # Computed here, on the thread that may read the database: the token of each of the
        # two starting addresses' origins (scheme, host, port), and nothing for any other.
        self.tokens = {
            sources.origin(start): sources.auth_headers(start) for start in (url, self.home)
        }
        self.stop = threading.Event()  # every connection ends at its next piece
        self.wake = threading.Event()  # a connection has something worth recording
        self.grown = threading.Event()  # the contiguous prefix may have grown
        self.lock = threading.Lock()
        self.ending: Ending | None = None
        self.status = 0  # of an AUTH ending
        self.error: BaseException | None = None
        self.checkpointed_at = time.monotonic()

    def run(self, first: httpx.Response | None = None) -> "fetch.Answer":
        download = self.transfer.download
        if download.connections != self.connections:
            download.connections = self.connections
            download.save(update_fields=["connections"])
        self.transfer.save_sidecar()  # the segments are on record before the .part grows
        self.fd = open_own_file(self.transfer.part)
        try:
            if os.fstat(self.fd).st_size < self.transfer.total:
                os.ftruncate(self.fd, self.transfer.total)
            self.coordinate(first)
        except OSError as exc:
            raise self.disk_full_or(exc) from None
        finally:
            os.close(self.fd)
            self.transfer.remember_hash()
        return self.outcome()

    def coordinate(self, first: httpx.Response | None) -> None:
        # The first answer carries the bytes from transfer.offset: the segment starting
        # there is its own, whichever thread starts first.
        opening = (first, self.next_segment()) if first is not None else (None, None)
        workers = [
            threading.Thread(
                target=self.work, args=opening if n == 0 else (None, None), daemon=True
            )
            for n in range(self.connections)
        ]
        hasher = threading.Thread(target=self.hash_behind, daemon=True)
        started: list[threading.Thread] = []
        try:
            # Started inside the try: if one fails to start, those already running are
            # still stopped and joined before run() closes the descriptor they write to.
            for thread in [workers[0], hasher]:
                thread.start()
                started.append(thread)
            ramp = Ramp(self.written(), waiting=len(workers) > 1)
            while any(worker.is_alive() for worker in workers):
                self.wake.wait(min(fetch.REPORT_SECONDS, ramp.wait()))
                self.wake.clear()
                wanted = ramp.more_wanted(self.written())
                if wanted:
                    for thread in workers[1:]:
                        thread.start()
                        started.append(thread)
                if wanted is not None:
                    self.opened(len(workers) if wanted else 1)
                self.keep_up()
        finally:
            self.stop.set()
            for worker in workers:
                if worker in started:
                    worker.join()
            self.grown.set()
            if hasher in started:
                hasher.join()
            self.checkpoint()
            self.transfer.offset = sum(s.written for s in self.segments)
            self.transfer.record_progress()

    def written(self) -> int:
        return sum(s.written for s in self.segments)

    def opened(self, count: int) -> None:
        """Record the connections in use (the card says how many)."""
        download = self.transfer.download
        if download.connections != count:
            download.connections = count
            download.save(update_fields=["connections"])

    def keep_up(self) -> None:
        """Between two wake-ups: checkpoint if due, report progress (which raises on
        pause or cancel), re-read the bandwidth limit."""
        unrecorded = sum(s.written - s.done for s in self.segments)
        now = time.monotonic()
        due = now - self.checkpointed_at >= fetch.REPORT_SECONDS
        gap = now - self.checkpointed_at >= CHECKPOINT_GAP
        if (unrecorded >= self.connections * fetch.CHUNK and gap) or (unrecorded and due):
            self.checkpoint()
        self.transfer.offset = sum(s.written for s in self.segments)
        if now - self.transfer.reported_at >= fetch.REPORT_SECONDS:
            self.transfer.report(now)

    def checkpoint(self) -> None:
        with self.lock:  # a segment cut in two while the sidecar is written would not tile
            marks = [s.written for s in self.segments]
            os.fdatasync(self.fd)
            for segment, mark in zip(self.segments, marks, strict=True):
                segment.done = mark
            self.transfer.save_sidecar()
        self.checkpointed_at = time.monotonic()

    # --- connection threads: no database here ------------------------------------------

    def work(self, first: httpx.Response | None, segment: Segment | None) -> None:
        try:
            while not self.stop.is_set() and (segment := segment or self.next_segment()):
                try:
                    self.fetch_segment(segment, first)
                finally:
                    with self.lock:
                        self.active.discard(id(segment))
                first, segment = None, None
        except BaseException as exc:  # handed to the job's thread
            self.end_with(exc)
        finally:
            if first is not None:
                first.close()
            self.wake.set()

    def next_segment(self) -> Segment | None:
        """A segment nobody started yet, else the back half of the one in flight with the
        most left: a fast connection never idles while a slow one has far to go."""
        with self.lock:
            if self.pending:
                segment = self.pending.popleft()
            else:
                segment = self.cut_in_two(s for s in self.segments if id(s) in self.active)
            if segment:
                self.active.add(id(segment))
            return segment

    def cut_in_two(self, candidates) -> Segment | None:
        """The back half of the candidate with the most left, if both halves are worth
        a connection; the segments list takes it in."""
        widest = max(candidates, key=lambda s: s.end - s.position, default=None)
        if widest is None or widest.end - widest.position < 2 * MIN_SEGMENT:
            return None
        # At least MIN_SEGMENT - CHUNK ahead of its connection, which reads `end` before
        # each piece and is never more than a piece or two beyond `position`.
        cut = widest.position + (widest.end - widest.position) // 2
        back = Segment(cut - cut % fetch.CHUNK, widest.end)
        widest.end = back.start
        self.segments = sorted([*self.segments, back], key=lambda s: s.start)
        self.transfer.segments = self.segments
        return back

    def fetch_segment(self, segment: Segment, response: httpx.Response | None) -> None:
        """Ask again after a drop, at once while bytes keep coming, with a growing pause
        after each try that brought none; after SEGMENT_TRIES of those, give up."""
        failures, start = 0, self.url
        while not segment.finished and not self.stop.is_set():
            before = segment.written
            failure = None
            try:
                if response is None:
                    response = self.open_segment(segment, start)
                self.receive(response, segment)
            except httpx.TransportError as exc:
                failure = exc
            except Stale:
                # A signed link that expired (or was revoked): resolve again from the
                # download's own address, as the first request did, and carry on.
                response, start = None, self.home
                continue
            response, start = None, self.url
            if segment.finished or self.stop.is_set():
                return
            failures = 0 if segment.written > before else failures + 1
            if failures >= SEGMENT_TRIES:
                raise failure or self.cut_short(segment)
            self.stop.wait(SEGMENT_BACKOFF * 2 ** (failures - 1) if failures else 0)

    def receive(self, response: httpx.Response, segment: Segment) -> None:
        with contextlib.closing(response):
            if self.usable(response, segment):
                self.copy(response, segment)

    def open_segment(self, segment: Segment, start: str | None = None) -> httpx.Response:
        """Ask `start` (by default the split's address) for the segment's bytes, following
        redirects by hand; the token goes only to the starting address's own origin
        (scheme, host and port: never to plain http on the same host)."""
        start = start or self.url
        headers = {"Accept-Encoding": "identity"}
        headers["Range"] = f"bytes={segment.position}-{segment.end - 1}"
        if self.transfer.validator:
            headers["If-Range"] = self.transfer.validator
        token = self.tokens.get(sources.origin(start), {})
        url, visited = start, [start]
        for _ in range(fetch.REDIRECTS):
            mine = token if sources.origin(url) == sources.origin(start) else {}
            request = self.client.build_request("GET", url, headers={**headers, **mine})
            response = self.client.send(request, stream=True)
            if not response.is_redirect:
                if start == self.home and url != self.url:
                    self.url = url  # resolved afresh: the other segments ask here too
                response.stale = start != self.home
                return response
            response.close()
            url = fetch.follow(url, response.headers.get("location", ""))
            visited.append(url)
        raise fetch.redirect_loop(self.transfer.download, visited)

    def usable(self, response: httpx.Response, segment: Segment) -> bool:
        """Whether the body is this segment's bytes; otherwise say how the split ends."""
        status = response.status_code
        if status == 206:
            return self.fits(response, segment)
        if status == 200:
            length = response.headers.get("content-length")
            other = self.changed(response) or length not in (None, str(self.transfer.total))
            return self.end(Ending.CHANGED if other else Ending.NO_RANGE)
        if status == 416:  # a range inside the file we knew: it shrank
            return self.end(Ending.CHANGED)
        if status in (401, 403, 410) and getattr(response, "stale", False):
            raise Stale(status)
        if status in (401, 403):
            self.status = status
            return self.end(Ending.AUTH)
        response.read()
        response.raise_for_status()
        raise JobError(
            f"Unexpected answer HTTP {status} from {self.transfer.download.host}.",
            category=Category.SERVER,
        )

    def fits(self, response: httpx.Response, segment: Segment) -> bool:
        start, total = fetch.content_range(response.headers.get("content-range", ""))
        if self.changed(response) or total != self.transfer.total:
            return self.end(Ending.CHANGED)
        if start != segment.position:
            raise JobError(
                f"{self.transfer.download.host} answered a request for bytes from "
                f"{segment.position:,} with bytes from {start}; retrying.",
                category=Category.SERVER,
            )
        return True

    def changed(self, response: httpx.Response) -> bool:
        validator = self.transfer.validator
        return bool(validator) and fetch.validator_of(response) not in ("", validator)

    def copy(self, response: httpx.Response, segment: Segment) -> None:
        unannounced = 0
        for piece in response.iter_raw():
            if self.stop.is_set():
                return
            piece = piece[: segment.end - segment.position]  # the first answer is open-ended
            write_at(self.fd, piece, segment.position)
            segment.written += len(piece)
            unannounced += len(piece)
            if unannounced >= fetch.CHUNK or segment.finished:
                unannounced = 0
                self.wake.set()
                self.grown.set()
            LIMITER.take(len(piece), self.stop)
            if segment.finished:
                return

    def end(self, ending: Ending) -> bool:
        with self.lock:
            self.ending = self.ending or ending
        self.stop.set()
        return False

    def end_with(self, exc: BaseException) -> None:
        with self.lock:
            self.error = self.error or exc
        if not isinstance(exc, httpx.TransportError | CutShort):
            self.stop.set()  # a dead segment lets the others finish; anything else stops all

    def cut_short(self, segment: Segment) -> "CutShort":
        return CutShort(
            f"The connection to {self.transfer.download.host} for bytes {segment.position:,} "
            f"to {segment.end:,} kept closing early; resuming from there.",
            category=Category.NETWORK,
        )

    def hash_behind(self) -> None:
        """Hash [transfer.hashed, frontier) as it grows, reading back what was written."""
        reader = open_unfollowed(self.transfer.part)
        try:
            while self.transfer.hashed < self.transfer.total:
                edge = frontier(self.segments)
                if self.transfer.hashed < edge:
                    length = min(HASH_BLOCK, edge - self.transfer.hashed)
                    block = os.pread(reader, length, self.transfer.hashed)
                    self.transfer.hasher.update(block)
                    self.transfer.hashed += len(block)
                elif self.stop.is_set():
                    return  # caught up with what was written: the prefix to keep is hashed
                else:
                    self.grown.wait(0.2)
                    self.grown.clear()
        finally:
            os.close(reader)

    # --- back on the job's thread ------------------------------------------------------

    def outcome(self) -> "fetch.Answer":
        transfer = self.transfer
        if self.ending == Ending.AUTH:
            raise fetch.auth_error(transfer.download, self.status)
        if self.ending == Ending.CHANGED:
            transfer.reset()
            transfer.save_sidecar()
            return fetch.Answer.AGAIN
        if self.ending == Ending.NO_RANGE:
            return self.go_on_as_one_stream()
        if self.error is not None:
            raise self.disk_full_or(self.error)
        if transfer.hashed != transfer.total:
            raise JobError(
                f"The download from {transfer.download.host} stopped before its end; resuming.",
                category=Category.NETWORK,
            )
        transfer.offset = transfer.total
        return fetch.Answer.COMPLETE

    def go_on_as_one_stream(self) -> "fetch.Answer":
        """Keep the contiguous prefix (already hashed), drop bytes beyond it that one
        stream could not keep, and let fetch.stream ask for the rest."""
        transfer = self.transfer
        keep = transfer.hashed
        # On record before the .part shrinks: a kill in between resumes the kept prefix.
        transfer.segments = [Segment(0, keep, keep, keep)] if keep else []
        if keep < transfer.total:
            transfer.segments.append(Segment(keep, transfer.total))
        transfer.save_sidecar()
        fd = open_own_file(transfer.part)
        try:
            os.ftruncate(fd, keep)
        finally:
            os.close(fd)
        transfer.offset, transfer.segments, transfer.single = keep, None, True
        transfer.save_sidecar()
        return fetch.Answer.AGAIN

    def disk_full_or(self, exc: BaseException) -> BaseException:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return self.transfer.disk_full()
        return exc


class Stale(Exception):
    """A refusal from an address other than the download's own: a signed link expired."""


class CutShort(JobError):
    """A segment's connection kept closing before its end."""


def write_at(fd: int, chunk: bytes, offset: int) -> None:
    view = memoryview(chunk)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class Ramp:
    """When a split opens its other connections: after a window of RAMP_SECONDS in which
    the one connection moved less than FAST_CONNECTION (at once, or later if it slows)."""

    def __init__(self, written: int, waiting: bool, clock=time.monotonic):
        self.clock = clock
        self.window_start, self.window_bytes = clock(), written
        self.waiting = waiting  # connections not opened yet

    def wait(self) -> float:
        """Seconds until the current window ends (how long the coordinator may sleep)."""
        if not self.waiting:
            return fetch.REPORT_SECONDS
        return max(0.0, self.window_start + RAMP_SECONDS - self.clock())

    def more_wanted(self, written: int) -> bool | None:
        """At the end of each window while some are not open: True (open them now; said
        once) or False (one is fast enough); None between windows and once all are open."""
        now = self.clock()
        if not self.waiting or now - self.window_start < RAMP_SECONDS:
            return None
        rate = (written - self.window_bytes) / (now - self.window_start)
        self.window_start, self.window_bytes = now, written
        self.waiting = rate >= FAST_CONNECTION
        return not self.waiting
