"""Bookkeeping cost per attempt on the embedded SQLite default.

One attempt = claim (compare-and-set UPDATE) + Attempt row + running/succeeded status
writes + lease keeper start/stop, around a task that does nothing.
Run: .venv/bin/python bench/recovery.py [N]
"""

import statistics
import sys
import time

import embedded
from django.core.management import call_command

from recovery.engine import recoverable, run_once
from recovery.models import Job, Status


@recoverable("bench.noop")
def noop(job: Job) -> None:
    pass


def main(n: int) -> None:
    call_command("migrate", verbosity=0)
    jobs = Job.objects.bulk_create([Job(kind="bench.noop") for _ in range(n)])
    timings = []
    for job in jobs:
        start = time.perf_counter()
        done = run_once(job.pk, owner="bench:1")
        timings.append((time.perf_counter() - start) * 1000)
        assert done.status == Status.SUCCEEDED
    timings.sort()
    print(f"attempts: {n} (SQLite WAL, {embedded.DATA_DIR})")
    print(f"median: {statistics.median(timings):.2f} ms per attempt")
    print(f"p95:    {timings[int(n * 0.95)]:.2f} ms")
    print(f"mean:   {statistics.fmean(timings):.2f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
