"""What happens after a failure: per-category policy, delays from tenacity's arithmetic."""

from dataclasses import dataclass, replace

import tenacity

from recovery.choices import Category
from recovery.conf import setting


class Action:
    RETRY = "retry"  # back off exponentially (+ jitter), honouring Retry-After
    FAIL = "fail"  # needs the user: fail now with the fix-it message
    RESTART = "restart"  # discard what was done and start again from zero, once
    PAUSE = "pause"  # wait for the user (e.g. free disk space), then resume


@dataclass(frozen=True)
class Policy:
    action: str
    max_attempts: int = 1
    base: float = 2.0
    cap: float = 300.0
    jitter: float = 1.0

    def delay(self, failures: int, retry_after: float | None = None, rng=None) -> float:
        """Seconds before the next attempt after `failures` consecutive failures."""
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = max(1, failures)
        wait = tenacity.wait_exponential(multiplier=self.base, max=self.cap)
        if self.jitter:
            wait = wait + tenacity.wait_random(0, self.jitter)
        seconds = wait(state) * setting("RECOVERY_BACKOFF_SCALE")
        if retry_after is not None:
            seconds = max(seconds, min(retry_after, setting("RECOVERY_RETRY_AFTER_CAP")))
        return seconds

    def gives_up(self, failures: int) -> bool:
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = failures
        return tenacity.stop_after_attempt(self.max_attempts)(state)


DEFAULTS = {
    Category.NETWORK: Policy(Action.RETRY, max_attempts=8, base=2, cap=300),
    Category.TIMEOUT: Policy(Action.RETRY, max_attempts=8, base=2, cap=300),
    Category.SERVER: Policy(Action.RETRY, max_attempts=6, base=5, cap=600),
    Category.RATE_LIMITED: Policy(Action.RETRY, max_attempts=10, base=30, cap=3600),
    Category.UNKNOWN: Policy(Action.RETRY, max_attempts=2, base=5, cap=60),
    Category.INTEGRITY: Policy(Action.RESTART, max_attempts=2),
    Category.DISK_FULL: Policy(Action.PAUSE),
    Category.AUTH: Policy(Action.FAIL),
    Category.NOT_FOUND: Policy(Action.FAIL),
    Category.PERMISSION: Policy(Action.FAIL),
    Category.VALIDATION: Policy(Action.FAIL),
    Category.DEPENDENCY: Policy(Action.FAIL),
    Category.CANCELLED: Policy(Action.FAIL),
}


def policy_for(kind: str, category: str, overrides: dict | None = None) -> Policy:
    """Defaults < settings.RECOVERY_POLICIES < RECOVERY_KIND_POLICIES[kind] < the kind's own."""
    policy = DEFAULTS[Category(category)]
    layers = (
        setting("RECOVERY_POLICIES"),
        setting("RECOVERY_KIND_POLICIES").get(kind, {}),
        overrides or {},
    )
    for layer in layers:
        policy = replace(policy, **layer.get(category, {}))
    return policy
