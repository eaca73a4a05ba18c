"""Bookkeeping cost per attempt on the embedded SQLite default.

One attempt = claim (compare-and-set UPDATE) + Attempt row + running/succeeded status
writes + lease keeper start/stop, around a task that does nothing.
Run: .venv/bin/python bench/recovery.py [N]
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["COMFYHUB_DATA_DIR"] = tempfile.mkdtemp(prefix="comfyhub-bench-")
os.environ.pop("COMFYHUB_DATABASE_URL", None)
os.environ.pop("COMFYHUB_REDIS_URL", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfyhub.settings")

import django

django.setup()

from django.core.management import call_command  # noqa: E402

from recovery.engine import recoverable, run_once  # noqa: E402
from recovery.models import Job, Status  # noqa: E402


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
    print(f"attempts: {n} (SQLite WAL, {os.environ['COMFYHUB_DATA_DIR']})")
    print(f"median: {statistics.median(timings):.2f} ms per attempt")
    print(f"p95:    {timings[int(n * 0.95)]:.2f} ms")
    print(f"mean:   {statistics.fmean(timings):.2f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
