"""Server-side render time of /downloads/ with 500 downloads, on the embedded SQLite default,
and what one look of its page socket costs (comfyhub.live.page.Watch.poll) with all 500
watched: when nothing changed, and when every running download reported; and the template
gallery's first page with its pictures.

The whole Django stack (middleware, view, template, banner) through the test client, on a
mix of running, waiting, failed, paused and finished downloads, each with its live card and
action forms. Goal: ≤ 150 ms median. The gallery (48 cards, each picture's URL, version
and size decided at render time) is timed after the process's first render built the
catalog: goal ≤ 150 ms median too.
Run: .venv/bin/python bench/pages.py [DOWNLOADS] [RENDERS]
"""

import statistics
import sys
import time
from datetime import timedelta

import embedded  # noqa: F401  (first: a fresh embedded ComfyHub)
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from comfyhub.library.models import Download
from comfyhub.live.page import Watch, page_url
from recovery.models import TERMINAL, Job, Status

MIX = [
    {"status": Status.SUCCEEDED},
    {"status": Status.SUCCEEDED},
    {"status": Status.RUNNING},
    {"status": Status.WAITING, "transient_failures": 2, "max_attempts": 10},
    {"status": Status.PAUSED, "error_category": "disk_full", "error_message": "Disk full."},
    {
        "status": Status.FAILED,
        "error_category": "auth",
        "error_message": "huggingface.co refused the download (HTTP 401). Set HF_TOKEN.",
        "error_detail": "httpx.HTTPStatusError: Client error '401 Unauthorized'\n" * 5,
    },
]


def populate(n: int) -> None:
    soon = timezone.now() + timedelta(minutes=5)
    jobs = Job.objects.bulk_create(
        Job(kind="download", next_attempt_at=soon, **MIX[i % len(MIX)]) for i in range(n)
    )
    Download.objects.bulk_create(
        Download(
            job=job,
            source_url=f"https://huggingface.co/org/m{i}/resolve/main/model.safetensors",
            dest=f"checkpoints/model-{i}.safetensors",
            host="huggingface.co",
            bytes_done=i * 1_000_000,
            total_bytes=2_000_000_000,
            speed=12_500_000,
            eta_seconds=150,
        )
        for i, job in enumerate(jobs)
    )


def main(n: int, renders: int) -> None:
    call_command("migrate", verbosity=0)
    populate(n)
    client = Client(HTTP_HOST="127.0.0.1")
    first = client.get("/downloads/")
    assert first.status_code == 200 and first.content.count(b'class="job ') == n, "not all shown"
    timings = []
    for _ in range(renders):
        start = time.perf_counter()
        response = client.get("/downloads/")
        timings.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200
    print(f"downloads: {n}, renders: {renders}, page: {len(first.content) / 1024:.0f} KiB")
    print(f"median: {statistics.median(timings):.1f} ms")
    print(f"min:    {min(timings):.1f} ms")
    print(f"max:    {max(timings):.1f} ms")
    socket_looks(renders)


def socket_looks(looks: int) -> None:
    """Median time of one page-socket look, idle and with every running download changed."""
    unfinished = Download.objects.exclude(job__status__in=TERMINAL)
    watched = list(unfinished.values_list("job_id", flat=True))
    url = page_url(watched, panels=["banner", "downloads"])
    watch = Watch.from_query(url.split("?", 1)[1].encode())
    watch.poll()
    running = Job.objects.filter(status=Status.RUNNING)
    idle, busy = [], []
    for _ in range(looks):
        idle.append(timed(watch.poll))
        running.update(updated_at=timezone.now())
        busy.append(timed(watch.poll))
    print(f"socket look, {len(watched)} watched, none changed: {statistics.median(idle):.1f} ms")
    print(f"socket look, {running.count()} running changed: {statistics.median(busy):.1f} ms")


def timed(func) -> float:
    start = time.perf_counter()
    func()
    return (time.perf_counter() - start) * 1000


def gallery(renders: int) -> None:
    client = Client(HTTP_HOST="127.0.0.1")
    start = time.perf_counter()
    first = client.get("/projects/new/")
    built = (time.perf_counter() - start) * 1000
    assert first.status_code == 200
    timings = []
    for _ in range(renders):
        start = time.perf_counter()
        assert client.get("/projects/new/").status_code == 200
        timings.append((time.perf_counter() - start) * 1000)
    pictures = first.content.count(b'<img class="picture"')
    print(f"gallery: {pictures} pictures on its first page, first render {built:.0f} ms")
    print(f"median: {statistics.median(timings):.1f} ms")
    print(f"max:    {max(timings):.1f} ms")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    main(*(args + [500, 20][len(args) :]))
    gallery(args[1] if len(args) > 1 else 20)
