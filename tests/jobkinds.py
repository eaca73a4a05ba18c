"""Job kinds used by the tests. Worker subprocesses load them via COMFYHUB_JOB_MODULES."""

import time
from pathlib import Path

import httpx

from recovery.choices import Category
from recovery.errors import Defer, JobError
from recovery.models import Job
from recovery.registry import recoverable


def note(job: Job, line: str) -> None:
    if job.params.get("log"):
        with open(job.params["log"], "a") as fh:
            fh.write(line + "\n")


def wait_for_file(path: str, timeout: float = 120) -> None:
    """A gate the test opens by creating a file: no guessing how long a step takes."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.05)


@recoverable("test.steps")
def steps(job: Job) -> None:
    """params: steps, log, gate_step + gate (wait for a file before that step's checkpoint)."""
    total = job.params.get("steps", 3)
    for step in range(job.checkpoint_data.get("done", 0), total):
        note(job, f"start {step}")
        if step == job.params.get("gate_step"):
            wait_for_file(job.params["gate"])
        note(job, f"end {step}")
        job.checkpoint(done=step + 1)
        job.progress(step + 1, total, "steps")


@recoverable("test.script")
def script(job: Job) -> None:
    """params.errors: categories raised by attempts 1..n (null = succeed); then success.

    With params.advance, each attempt makes progress before failing; with
    params.advance_on, only the attempts of those numbers do.
    """
    errors = job.params.get("errors", [])
    if job.params.get("advance") or job.attempt in job.params.get("advance_on", []):
        job.progress(job.progress_done + 1, 1000)
    if job.attempt <= len(errors) and errors[job.attempt - 1]:
        raise JobError(
            f"scripted {errors[job.attempt - 1]}",
            category=errors[job.attempt - 1],
            retry_after=job.params.get("retry_after"),
        )


@recoverable("test.self_interrupt")
def self_interrupt(job: Job) -> None:
    """Asks for params.action (pause/cancel) on itself mid-way, as a user would."""
    for step in range(job.checkpoint_data.get("done", 0), 3):
        note(job, f"step {step}")
        if step == 1 and job.attempt == 1:
            getattr(Job.objects.get(pk=job.pk), job.params["action"])()
            job.renew_lease()
        job.checkpoint(done=step + 1)


@recoverable("test.noop")
def noop(job: Job) -> None:
    job.progress(1, 1)


@recoverable("test.leaky")
def leaky(job: Job) -> None:
    """Calls params.url with params.token in the query and the Authorization header."""
    token = job.params["token"]
    url = f"{job.params['url']}?token={token}"
    response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    response.raise_for_status()


CANCELLED_JOBS: list[int] = []


@recoverable("test.deferring", on_cancel=lambda job: CANCELLED_JOBS.append(job.pk))
def deferring(job: Job) -> None:
    """Defers while params.busy_file exists, as a download waits for a free slot."""
    if Path(job.params.get("busy_file", "/nonexistent")).exists():
        raise Defer("Waiting for a free slot.", seconds=5)


@recoverable("test.asked_then_ends", on_cancel=lambda job: CANCELLED_JOBS.append(job.pk))
def asked_then_ends(job: Job) -> None:
    """Asks params.action (pause/cancel) of itself, as a user would from a page, then,
    before any checkpoint could notice, fails with params.category (null = succeeds)."""
    getattr(Job.objects.get(pk=job.pk), job.params["action"])()
    category = job.params.get("category", Category.NETWORK)
    if category:
        raise JobError(f"scripted {category}", category=category)


def next_key(job: Job, refused: frozenset) -> bool:
    """Reroute to the first of params.keys not refused; params.stubborn keeps the key."""
    if job.params.get("stubborn"):
        return True
    keys = [key for key in job.params.get("keys", []) if key not in refused]
    if keys:
        job.breaker_key = keys[0]
        job.save(update_fields=["breaker_key"])
    return bool(keys)


@recoverable("test.rerouted", reroute=next_key)
def rerouted(job: Job) -> None:
    job.checkpoint(ran_behind=job.breaker_key)
