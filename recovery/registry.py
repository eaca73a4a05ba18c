"""Job kinds: the function that runs each kind, its policy overrides, its cancel cleanup.

Knows nothing of the models, so that the models (a cancel runs the kind's cleanup), the
engine and the apps' jobs.py modules can all import it.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from recovery.conf import setting

# A task or cleanup takes the Job it runs for.
Task = Callable[[Any], None]


@dataclass
class Kind:
    name: str
    func: Task
    policies: dict = field(default_factory=dict)
    on_cancel: Task | None = None
    # reroute(job, refused_keys) -> bool: see recoverable().
    reroute: Callable[[Any, frozenset], bool] | None = None


REGISTRY: dict[str, Kind] = {}


def recoverable(
    kind: str,
    *,
    policies: dict | None = None,
    on_cancel: Task | None = None,
    reroute: Callable[[Any, frozenset], bool] | None = None,
):
    """Register `func(job)` as the code for jobs of `kind`.

    `policies` overrides the retry policy per category for this kind, e.g.
    {Category.NETWORK: {"max_attempts": 20}}. `on_cancel(job)` cleans up after a cancel.
    `reroute(job, refused_keys)` is asked when the job's breaker is open: a job that can
    go elsewhere (a download with another mirror) sets `job.breaker_key` to a key not in
    `refused_keys` and returns True, and runs behind that breaker at once instead of
    waiting; False leaves it waiting as usual.
    """

    def register(func: Task) -> Task:
        REGISTRY[kind] = Kind(kind, func, policies or {}, on_cancel, reroute)
        return func

    return register


def load_job_modules() -> None:
    for module in setting("RECOVERY_JOB_MODULES"):
        import_module(module)


def run_cancel_hook(job) -> None:
    kind = REGISTRY.get(job.kind)
    if kind and kind.on_cancel:
        kind.on_cancel(job)
