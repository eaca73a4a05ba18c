"""Errors a task raises on purpose. Anything else is classified by recovery.classify."""

from datetime import datetime, timedelta

from recovery.choices import Category


class JobError(Exception):
    """An error whose category and user message the task already knows.

    `message` is shown to the user as is: plain words, saying what to do. `detail` is the
    technical part (shown expandable). `retry_after` (seconds) asks for a specific delay.
    """

    category = Category.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        category: str | None = None,
        detail: str = "",
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.retry_after = retry_after
        if category:
            self.category = Category(category)


class Cancelled(JobError):
    category = Category.CANCELLED

    def __init__(self, message: str = "Cancelled by the user."):
        super().__init__(message)


class PauseRequested(Exception):
    """Raised at a checkpoint/progress call when the user asked to pause a running job."""


class LeaseLost(Exception):
    """Raised at a checkpoint/progress call when another process took the job over."""


class Defer(Exception):
    """Not a failure: the job cannot start yet (e.g. no free slot). Try again later.

    The engine puts the job back to `waiting` until `due(now)` (`seconds` from now)
    without counting an attempt.
    """

    def __init__(self, message: str, seconds: float = 2.0):
        super().__init__(message)
        self.message = message
        self.seconds = seconds

    def due(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.seconds)


class BreakerOpen(Defer):
    """A circuit breaker refused the call (`CircuitBreaker.guard`): `key` failed several
    times in a row and rests until `retry_at`. A job that meets it waits until then
    without counting an attempt; any other caller shows `message` or its own words."""

    def __init__(self, key: str, retry_at: datetime):
        message = (
            f"{key} failed several times in a row, so it is given a rest; the next try is "
            f"at {retry_at:%H:%M:%S} UTC. Nothing to do."
        )
        super().__init__(message)
        self.key, self.retry_at = key, retry_at

    def due(self, now: datetime) -> datetime:
        return self.retry_at


# Ways a run stops that say nothing about the host it talks to: a breaker records none.
STOPS = (Defer, PauseRequested, LeaseLost, Cancelled)
