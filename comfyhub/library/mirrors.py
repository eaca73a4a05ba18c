"""Mirrors: one download, several sources, tried in order within the same job.

A source is left when it fails for good (FOR_GOOD: the file is gone there, or closed to
us) or when its host's breaker is open (the engine asks `reroute` then; without an
expected sha256 a non-empty .part waits for the breaker instead, as no other mirror
could keep its bytes). The next source is the first one after the current, wrapping
around, that has not failed for good; it is resolved afresh and runs behind its own
host's breaker. The bytes already in the .part are kept for it when the expected sha256
is known (fetch.adopt_part): the final hash catches a mirror that serves another file.
When every source has failed for good, the job fails naming each one's reason.

Leaving a source ends the attempt with a Defer due at once (the worker runs the next
attempt in place): the next source's host then passes the engine's breaker check like any
other, and the left host's breaker hears nothing of the next one's faults.
"""

import httpx

from comfyhub.library.models import Download
from comfyhub.library.paths import host_of
from recovery.classify import classify, in_brief
from recovery.errors import Defer, JobError
from recovery.models import Category, Job

# Failures after which a source is left for the next: retrying them would only repeat them.
FOR_GOOD = frozenset({Category.NOT_FOUND, Category.AUTH})


def leave_if_gone(download: Download, job: Job, exc: BaseException) -> None:
    """Called with the failure of the current source: returns when the failure is not
    for good (the job's own retry policy handles it); else raises a Defer that goes on
    from the next source, or, with none left, a JobError naming every source's reason."""
    failure = classify(exc)
    if failure.category not in FOR_GOOD or not remote(exc):
        return
    download.refresh_from_db(fields=["sources", "sources_failed"])  # joined since we began
    if len(download.sources) < 2:
        return
    left = f"mirror {download.source_index + 1} of {len(download.sources)} ({download.host})"
    download.fail_source(in_brief(exc))
    following = next_source(download)
    if following is None:
        raise all_failed(download, failure.category) from exc
    download.use_source(following)
    job.breaker_key = download.host
    raise Defer(
        f"{left[0].upper()}{left[1:]} failed for good ({in_brief(exc)}); going on from "
        f"{download.mirror}.",
        seconds=0,
    )


def remote(exc: BaseException) -> bool:
    """Whether `exc` is the source's own answer (an HTTP status, or the engine's reading of
    one), not a local fault such as a vanished folder (FileNotFoundError, also `not_found`)."""
    return isinstance(exc, httpx.HTTPStatusError | JobError)


def next_source(download: Download, refused_hosts: frozenset = frozenset()) -> int | None:
    """The index of the first source after the current one (wrapping around) that has not
    failed for good and whose host is not in `refused_hosts`; None when there is none."""
    count = len(download.sources)
    for step in range(1, count):
        index = (download.source_index + step) % count
        refused = host_of(download.sources[index]) in refused_hosts
        if str(index) not in download.sources_failed and not refused:
            return index
    return None


def all_failed(download: Download, category: str) -> JobError:
    reasons = "; ".join(
        f"{int(index) + 1}. {why}"
        for index, why in sorted(download.sources_failed.items(), key=lambda kv: int(kv[0]))
    )
    return JobError(
        f"None of the {len(download.sources)} sources of {download.dest} worked: {reasons}.",
        category=category,
    )


def reroute(job: Job, refused: frozenset) -> bool:
    """The engine's question when the breaker of the job's current source is open: go on
    from the next source whose host is not resting (True), or wait (False)."""
    download = Download.objects.filter(job=job).first()
    if download is None or len(download.sources) < 2:
        return False
    if not download.expected_sha256 and holds_bytes(download):
        # The next mirror could not keep them (fetch.adopt_part): waiting for this one's
        # breaker costs less than fetching a big .part again from byte zero.
        return False
    resting = download.mirror
    following = next_source(download, refused)
    if following is None:
        return False
    download.use_source(following)
    job.write(
        breaker_key=download.host,
        error_message=f"{resting[0].upper()}{resting[1:]} is resting after repeated "
        f"failures; going on from {download.mirror}.",
    )
    return True


def holds_bytes(download: Download) -> bool:
    try:
        return download.part_path.stat().st_size > 0
    except OSError:
        return False
