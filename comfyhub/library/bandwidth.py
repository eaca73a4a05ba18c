"""One bandwidth budget for every download of this process (COMFYHUB_BANDWIDTH_LIMIT).

A token bucket shared by all connections: each takes what it read and sleeps off any
debt, so together they stay near the limit however many run. The value on the Settings
page (a Preference row) wins over the environment's and is re-read every few seconds by
the download threads that own a database connection (`refresh`); the connection threads
only call `take`, which never touches the database.

The limit is per worker process: the embedded default runs one worker, so there it is the
whole machine's; N workers may use up to N times the limit.
"""

import threading
import time

from django.conf import settings

from comfyhub.config import parse_rate
from comfyhub.library.models import Preference, PreferenceName

BURST_SECONDS = 0.25  # a connection idle for a while may catch up this much at once
SLICE_SECONDS = 0.25  # the longest a debt is slept off before stop and the rate are seen


class Limiter:
    def __init__(self, every: float = 3.0, clock=time.monotonic):
        self.every = every  # seconds between two reads of the Settings page's value
        self.clock = clock
        self.rate: int | None = None
        self.read_at: float | None = None
        self.allowance = 0.0
        self.filled_at = clock()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # set_rate wakes every sleeper
        self.generation = 0  # counts rate changes: a sleeper's debt ends with its rate

    def refresh(self) -> None:
        """Pick up a changed limit; cheap to call often (reads the DB every `every` s)."""
        now = self.clock()
        if self.read_at is not None and now - self.read_at < self.every:
            return
        self.read_at = now
        self.set_rate(current_limit())

    def set_rate(self, rate: int | None) -> None:
        with self.lock:
            if rate != self.rate:
                self.rate, self.allowance, self.filled_at = rate, 0.0, self.clock()
                self.generation += 1
                self.changed.notify_all()

    def take(self, count: int, stop: threading.Event | None = None) -> None:
        """Account for `count` bytes just read; sleep to keep the rate, in slices, so a
        changed rate (set_rate wakes sleepers: the debt ends with the rate it was run up
        under) or `stop` ends the sleep at once, and pause or cancel is never held up."""
        delay = self.debt_after(count)
        if delay <= 0:
            return
        end = time.monotonic() + delay
        with self.lock:
            generation = self.generation
            while (left := end - time.monotonic()) > 0 and self.generation == generation:
                if stop is not None and stop.is_set():
                    return
                self.changed.wait(min(SLICE_SECONDS, left))

    def debt_after(self, count: int) -> float:
        with self.lock:
            rate = self.rate
            if not rate:
                return 0.0
            now = self.clock()
            earned = (now - self.filled_at) * rate
            self.filled_at = now
            self.allowance = min(rate * BURST_SECONDS, self.allowance + earned) - count
            return -self.allowance / rate if self.allowance < 0 else 0.0


def current_limit() -> int | None:
    """The Settings page's limit if it set one, else COMFYHUB_BANDWIDTH_LIMIT."""
    stored = Preference.objects.value_of(PreferenceName.BANDWIDTH_LIMIT)
    if stored is None:
        return settings.BANDWIDTH_LIMIT
    try:
        return parse_rate(stored)
    except ValueError:
        # Only the Settings form writes this row, and it checks first; a row written any
        # other way must not stop downloads.
        return settings.BANDWIDTH_LIMIT


LIMITER = Limiter()
