from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from django_q.brokers import get_broker

from recovery.models import Job, Status, WorkerHeartbeat
from tests.conftest import watched_jobs

pytestmark = pytest.mark.django_db


def test_healthz_reports_ok_database_and_a_down_worker_without_heartbeat(client):
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["worker"] == "down"
    assert body["channel_layer"] in ("InMemoryChannelLayer", "RedisChannelLayer")


def test_healthz_reports_the_worker_ok_after_a_fresh_heartbeat(client):
    WorkerHeartbeat.beat("host:1")
    assert client.get("/healthz").json()["worker"] == "ok"


def test_healthz_reports_the_worker_down_when_its_heartbeat_is_stale(client):
    WorkerHeartbeat.objects.create(name="host:1", seen_at=timezone.now() - timedelta(minutes=5))
    assert client.get("/healthz").json()["worker"] == "down"


def test_healthz_refuses_post(client):
    assert client.post("/healthz").status_code == 405


def test_every_page_carries_htmx_the_ws_extension_and_the_navigation(client):
    html = client.get("/system/").content.decode()
    assert "/static/vendor/htmx-2.0.11.min.js" in html
    assert "/static/vendor/htmx-ext-ws-2.0.4.min.js" in html
    for href in ('href="/"', "/downloads/", "/recovery/", "/settings/", "/admin/"):
        assert href in html
    assert "X-CSRFToken" in html


def test_vendored_htmx_is_served_from_static(client):
    response = client.get("/static/vendor/htmx-2.0.11.min.js")
    assert response.status_code == 200
    assert b"htmx" in b"".join(response.streaming_content)


def test_posting_the_self_test_queues_a_job_for_the_worker_and_redirects(
    django_capture_on_commit_callbacks, client
):
    broker = get_broker()
    before = broker.queue_size()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/system/")
    assert broker.queue_size() == before + 1
    job = Job.objects.get(kind="selftest")
    assert job.status == Status.QUEUED
    assert response.status_code == 302
    assert response["Location"] == f"/system/?job={job.pk}#job-{job.pk}"


def test_the_system_page_connects_an_unfinished_job_to_its_websocket(client):
    job = Job.objects.create(kind="selftest")
    html = client.get("/system/").content.decode()
    assert watched_jobs(html) == {job.pk}
    assert f'id="job-{job.pk}"' in html


def test_the_self_test_refuses_a_post_without_csrf_token():
    csrf_client = Client(enforce_csrf_checks=True)
    assert csrf_client.post("/system/").status_code == 403
    assert not Job.objects.exists()


def test_the_system_page_refuses_put(client):
    assert client.put("/system/").status_code == 405
