"""What one page socket watches (comfyhub.live.page.Watch): the few queries a look costs,
the fragments it sends, and the downloads summary and breaker notes it keeps live."""

import re
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from comfyhub.library.models import Download
from comfyhub.library.templatetags.humanize_bytes import duration
from comfyhub.live.page import Watch, page_url
from comfyhub.projects.models import ProjectStatus
from recovery.models import BreakerState, CircuitBreaker, Job, Status
from tests.conftest import page_socket
from tests.projectpages import make

pytestmark = pytest.mark.django_db

MINUTE_AGO = timezone.now() - timedelta(minutes=1)


def watching(jobs=(), panels=(), **objects) -> Watch:
    """The watch of a page rendered now, after its first look."""
    url = page_url(jobs, panels=panels, **objects)
    watch = Watch.from_query(url.split("?", 1)[1].encode())
    watch.poll()
    return watch


def downloads(n: int, host: str = "files.example", **job_fields) -> list[Download]:
    fields = {"kind": "download", "status": Status.RUNNING, "updated_at": MINUTE_AGO}
    fields.update(breaker_key=host, **job_fields)
    jobs = Job.objects.bulk_create([Job(**fields) for _ in range(n)])
    rows = [
        Download(job=job, source_url=f"https://{host}/{job.pk}", dest=f"vae/{job.pk}.bin")
        for job in jobs
    ]
    for row in rows:
        row.host, row.total_bytes, row.bytes_done, row.speed = host, 10_000_000, 4_000_000, 1e6
    return Download.objects.bulk_create(rows)


def write(*downloads: Download, **fields) -> None:
    pks = [download.job_id for download in downloads]
    Job.objects.filter(pk__in=pks).update(updated_at=timezone.now(), **fields)


def queries(watch: Watch) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as captured:
        fragments = watch.poll()
    return len(captured), fragments


def test_a_look_costs_the_same_few_queries_for_none_one_or_500_changed_downloads():
    rows = downloads(500)
    watch = watching([row.job_id for row in rows], panels=["banner", "downloads"])
    none, sent = queries(watch)
    assert sent == []
    write(rows[7], progress_done=5)
    one, sent = queries(watch)
    assert [f for f in sent if 'id="job-' in f] and len(sent) == 1
    write(*rows, progress_done=6)
    started = time.perf_counter()
    every, sent = queries(watch)
    took = time.perf_counter() - started
    assert len(sent) == 500 and (none, one, every) == (4, 7, 7)
    print(f"\none look rendering 500 changed download cards: {took * 1000:.0f} ms")


def test_a_job_stamped_before_a_long_wait_for_the_write_lock_is_still_sent():
    rows = downloads(2)
    watch = watching([row.job_id for row in rows])
    write(rows[0], progress_done=1)
    assert len(watch.poll()) == 1
    # The writer stamped its row, then waited 10 s for SQLite's lock: it lands behind
    # the newest version already sent, minus MARGIN.
    stamped = timezone.now() - timedelta(seconds=10)
    Job.objects.filter(pk=rows[1].job_id).update(status=Status.SUCCEEDED, updated_at=stamped)
    (card,) = watch.poll()
    assert f'id="job-{rows[1].job_id}"' in card and "status-succeeded" in card


def test_a_project_stamped_before_a_long_wait_for_the_write_lock_is_still_sent():
    first, second = make(), make(name="Second")
    type(first).objects.update(updated_at=MINUTE_AGO)
    watch = watching(projects=[first.pk, second.pk])
    type(first).objects.filter(pk=first.pk).update(updated_at=timezone.now())
    assert len(watch.poll()) == 1
    stamped = timezone.now() - timedelta(seconds=10)
    type(first).objects.filter(pk=second.pk).update(status=ProjectStatus.READY, updated_at=stamped)
    (badge,) = watch.poll()
    assert f'id="project-status-{second.pk}"' in badge and ">Ready</span>" in badge


def test_a_look_at_many_projects_costs_the_same_queries_as_at_one():
    projects = [make(name=f"P{n}") for n in range(5)]
    type(projects[0]).objects.update(updated_at=MINUTE_AGO)
    one, many = watching(projects=[projects[0].pk]), watching(projects=[p.pk for p in projects])
    assert queries(one)[0] == queries(many)[0] == 1
    type(projects[0]).objects.update(updated_at=timezone.now())
    (n_one, sent_one), (n_many, sent_many) = queries(one), queries(many)
    assert (n_one, n_many, len(sent_one), len(sent_many)) == (2, 2, 1, 5)


def test_a_card_sent_terminal_leaves_the_watch_and_its_hint_group():
    rows = downloads(3)
    watch = watching([row.job_id for row in rows])
    write(rows[0], status=Status.SUCCEEDED)
    assert len(watch.poll()) == 1
    assert f"job-{rows[0].job_id}" not in watch.groups and len(watch.groups) == 2
    write(rows[0], status=Status.FAILED)
    assert watch.poll() == []


def test_a_host_whose_breaker_opens_is_named_on_its_cards_with_the_next_probe():
    down, fine = downloads(2, host="hf.example"), downloads(1, host="other.example")
    watch = watching([row.job_id for row in down + fine])
    opened = timezone.now().replace(hour=10, minute=0, second=0)
    CircuitBreaker.objects.create(
        key="hf.example", state=BreakerState.OPEN, opened_at=opened, cooldown_seconds=90
    )
    sent = watch.poll()
    assert len(sent) == 2 and all("hf.example is not answering" in card for card in sent)
    assert all("tried again at <time" in card and "10:01:30 UTC" in card for card in sent)
    CircuitBreaker.objects.filter(key="hf.example").update(state=BreakerState.CLOSED)
    sent = watch.poll()
    assert len(sent) == 2 and not any("not answering" in card for card in sent)


def test_the_downloads_page_names_the_host_that_is_down_on_its_cards(client):
    downloads(1, host="hf.example", status=Status.WAITING)
    CircuitBreaker.objects.create(key="hf.example", state=BreakerState.HALF_OPEN)
    html = client.get("/downloads/").content.decode()
    assert "hf.example is not answering; a download is trying it now." in html


def test_the_downloads_page_sums_speed_and_time_left_of_everything_in_flight(client):
    downloads(2)
    Download.objects.update(speed=1.5e6)
    queued = downloads(1, status=Status.QUEUED)
    Download.objects.filter(pk=queued[0].pk).update(total_bytes=None, bytes_done=0)
    downloads(1, status=Status.SUCCEEDED)
    html = client.get("/downloads/").content.decode()
    glance = re.search(r'<div id="downloads-glance".*?</div>', html, re.S).group(0)
    assert "3 in flight" in glance and "2 running at 3.0 MB/s" in glance
    assert "12.0 MB to go, about 4 s left" in glance and "plus 1 of unknown size" in glance


def test_the_summary_is_re_sent_when_what_it_says_changes_and_only_then():
    (row,) = downloads(1)
    watch = watching(panels=["downloads"])
    assert watch.poll() == []
    Download.objects.filter(pk=row.pk).update(speed=2e6)
    (sent,) = watch.poll()
    assert 'id="downloads-glance" class="glance" hx-swap-oob="true"' in sent and "2.0 MB/s" in sent
    assert watch.poll() == []


def test_with_nothing_in_flight_the_summary_says_so(client):
    assert "Nothing is downloading right now." in client.get("/downloads/").content.decode()


def test_the_project_status_badge_is_re_sent_when_the_project_changes():
    project = make()
    type(project).objects.filter(pk=project.pk).update(updated_at=MINUTE_AGO)
    watch = watching(projects=[project.pk])
    assert watch.poll() == []
    type(project).objects.filter(pk=project.pk).update(
        status=ProjectStatus.READY, updated_at=timezone.now()
    )
    (badge,) = watch.poll()
    assert f'id="project-status-{project.pk}"' in badge and 'hx-swap-oob="true"' in badge
    assert ">Ready</span>" in badge


def test_the_project_page_watches_its_badge_and_its_install_over_one_socket(client):
    project = make()
    html = client.get(f"/projects/{project.slug}/").content.decode()
    assert html.count("ws-connect=") == 1 and f"projects={project.pk}" in html
    assert f"jobs={project.install_job_id}" in html and 'id="attention-banner"' in html


def test_a_launch_card_pushed_to_the_projects_list_still_goes_back_to_the_list(client):
    project = make(status=ProjectStatus.READY)
    job = Job.objects.create(kind="project_launch", params={"project": project.pk})
    Job.objects.filter(pk=job.pk).update(updated_at=MINUTE_AGO)
    watch = Watch.from_query(
        page_socket(client.get("/").content.decode()).split("?", 1)[1].encode()
    )
    watch.poll()
    Job.objects.filter(pk=job.pk).update(status=Status.FAILED, updated_at=timezone.now())
    (card,) = [f for f in watch.poll() if f'id="job-{job.pk}"' in f]
    assert "Launch again" in card
    back = re.search(r'name="next" value="([^"]*)"', card).group(1)
    response = client.post(f"/projects/{project.slug}/launch/", {"next": back})
    assert response["Location"] == "/"


@pytest.mark.parametrize("next", ["//evil.example/", "https://evil.example/", "/\\evil"])
def test_a_socket_url_whose_next_leaves_the_site_is_refused(next):
    with pytest.raises(ValueError, match="next is a path on this site"):
        Watch.from_query(page_url(next=next).split("?", 1)[1].encode())


def test_the_recovery_page_opens_no_socket_and_shows_no_banner(client):
    html = client.get("/recovery/").content.decode()
    assert "ws-connect" not in html and 'id="attention-banner"' not in html


def test_every_other_page_keeps_the_banner_live(client):
    html = client.get("/settings/").content.decode()
    assert 'ws-connect="/ws/page/?since=' in html and "panels=banner" in html


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(None, "0 s"), (44.6, "45 s"), (720, "12 min"), (12000, "3 h 20 min"), (7200, "2 h")],
)
def test_time_left_reads_as_people_say_it(seconds, said):
    assert duration(seconds) == said
