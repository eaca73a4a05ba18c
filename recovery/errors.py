"""Errors a task raises on purpose. Anything else is classified by recovery.classify."""

from recovery.models import Category


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

    The engine puts the job back to `waiting` for `seconds` without counting an attempt.
    """

    def __init__(self, message: str, seconds: float = 2.0):
        super().__init__(message)
        self.message = message
        self.seconds = seconds
