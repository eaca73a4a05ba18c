import re
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import Client
from django.utils import timezone
from django_q.brokers import get_broker

from comfyhub.asgi import application
from comfyhub.library.models import Download
from comfyhub.live.page import page_url
from recovery.models import Job, Requested, Status

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _models(models_dir):
    return models_dir


def queued(dest: str = "loras/a.safetensors", **job_fields) -> Download:
    download, _ = Download.objects.request("http://127.0.0.1:9/a.safetensors", dest)
    if job_fields:
        Job.objects.filter(pk=download.job_id).update(**job_fields)
        download.job.refresh_from_db()
    return download


def test_the_empty_page_says_what_to_do(client):
    response = client.get("/downloads/")
    assert response.status_code == 200 and b"No downloads yet" in response.content


def test_posting_a_url_queues_a_download_for_the_worker(client, django_capture_on_commit_callbacks):
    before = get_broker().queue_size()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/downloads/", {"url": "https://example.org/m.bin", "dest": "vae/m.bin", "sha256": ""}
        )
    assert response.status_code == 302 and response["Location"] == "/downloads/"
    download = Download.objects.get()
    assert (download.dest, download.host, download.job.status) == (
        "vae/m.bin",
        "example.org",
        "queued",
    )
    assert get_broker().queue_size() == before + 1


def test_a_bad_destination_is_refused_with_the_reason(client):
    response = client.post("/downloads/", {"url": "https://example.org/m.bin", "dest": "../x"})
    assert response.status_code == 400
    assert b"may not contain" in response.content and not Download.objects.exists()


def test_a_non_http_url_is_refused(client):
    response = client.post("/downloads/", {"url": "file:///etc/passwd", "dest": "vae/x.bin"})
    assert response.status_code == 400 and b"Only http" in response.content


def test_a_size_and_a_url_with_a_line_break_are_refused_with_the_reason(client):
    response = client.post(
        "/downloads/",
        {"url": "https://example.org/m.bin\r\nX-Evil: 1", "dest": "vae/m.bin", "size": 10**30},
    )
    assert response.status_code == 400 and not Download.objects.exists()
    assert b"line break" in response.content and b"whole number of bytes" in response.content


def test_a_size_given_in_the_form_is_expected_of_the_file(client):
    client.post("/downloads/", {"url": "https://example.org/m.bin", "dest": "vae/m.bin", "size": 7})
    assert Download.objects.get().expected_size == 7


def test_posting_without_csrf_is_refused():
    response = Client(enforce_csrf_checks=True).post(
        "/downloads/", {"url": "https://example.org/m.bin", "dest": "vae/m.bin"}
    )
    assert response.status_code == 403 and not Download.objects.exists()


def test_the_list_refuses_put(client):
    assert client.put("/downloads/").status_code == 405


@pytest.mark.parametrize(("action", "status"), [("pause", "paused"), ("cancel", "cancelled")])
def test_an_action_changes_the_download_and_redirects(client, action, status):
    download = queued()
    response = client.post(f"/downloads/{download.pk}/{action}/")
    assert response.status_code == 302
    assert Job.objects.get(pk=download.job_id).status == status


def test_resume_and_retry_queue_a_paused_download_again(client):
    download = queued()
    download.job.pause()
    client.post(f"/downloads/{download.pk}/resume/")
    assert Job.objects.get(pk=download.job_id).status == Status.QUEUED


def test_an_unknown_action_is_404_and_get_is_405(client):
    download = queued()
    assert client.post(f"/downloads/{download.pk}/explode/").status_code == 404
    assert client.get(f"/downloads/{download.pk}/pause/").status_code == 405
    assert client.post("/downloads/999/pause/").status_code == 404


def test_a_failed_download_shows_the_plain_error_and_the_detail(client):
    download = queued()
    Job.objects.filter(pk=download.job_id).update(
        status=Status.FAILED,
        error_category="auth",
        error_message="Set HF_TOKEN in Settings.",
        error_detail="httpx.HTTPStatusError: 401",
    )
    html = client.get("/downloads/").content.decode()
    assert "Set HF_TOKEN in Settings." in html and "httpx.HTTPStatusError: 401" in html
    assert f"/downloads/{download.pk}/retry/" in html


def test_the_status_filter_lists_only_matching_downloads(client):
    queued("vae/ok.bin", status=Status.SUCCEEDED)
    queued("vae/broken.bin", status=Status.FAILED, error_message="Gone.")
    html = client.get("/downloads/?status=failed").content.decode()
    assert "vae/broken.bin" in html and "vae/ok.bin" not in html
    assert 'href="/downloads/?status=failed" aria-current="true"' in html


def test_an_empty_filter_says_how_to_see_everything(client):
    queued("vae/ok.bin", status=Status.SUCCEEDED)
    html = client.get("/downloads/?status=paused").content.decode()
    assert "No paused downloads." in html and 'href="/downloads/">Show all' in html


def test_an_unknown_filter_is_400_and_lists_everything(client):
    queued("vae/ok.bin")
    response = client.get("/downloads/?status=exploded")
    assert response.status_code == 400
    html = response.content.decode()
    assert "That filter does not exist" in html and "vae/ok.bin" in html


def test_a_waiting_download_shows_its_attempt_and_a_countdown(client):
    due = timezone.now() + timedelta(seconds=6.2)
    queued(
        status=Status.WAITING, attempt=3, transient_failures=2, max_attempts=10, next_attempt_at=due
    )
    html = client.get("/downloads/").content.decode()
    # Whole seconds left when the page rendered: 7, or less on a slow machine.
    left = int(re.search(r'data-retry-in="(\d+)"', html)[1])
    assert "attempt 3/10" in html and 1 <= left <= 7 and f"retrying in {left} s" in html


def test_an_auth_failure_links_to_settings(client):
    queued(status=Status.FAILED, error_category="auth", error_message="Set HF_TOKEN.")
    html = client.get("/downloads/").content.decode()
    assert '<a href="/settings/">Add your token in Settings</a>' in html


def test_dismissing_a_failed_download_deletes_its_partial_file(client, models_dir):
    download = queued(status=Status.FAILED, error_message="Gone.")
    download.part_path.parent.mkdir(parents=True)
    download.part_path.write_bytes(b"half")
    assert client.post(f"/downloads/{download.pk}/dismiss/").status_code == 302
    assert Job.objects.get(pk=download.job_id).status == Status.CANCELLED
    assert not download.part_path.exists()


def test_the_list_takes_five_queries_however_many_downloads_it_shows(
    client, django_assert_num_queries
):
    due = timezone.now() + timedelta(seconds=30)
    for n, status in enumerate([*Status.values] * 4):
        queued(f"vae/{n}.bin", status=status, next_attempt_at=due, transient_failures=1)
    Job.objects.update(error_category="auth", error_message="Set HF_TOKEN.", error_detail="401")
    # The list, the count per status, the open breakers, the totals in flight, the banner.
    with django_assert_num_queries(5):
        assert client.get("/downloads/").content.count(b'class="job ') == 28


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_live_card_of_a_download_carries_a_usable_csrf_token(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    download = await sync_to_async(queued)()
    browser = Client(enforce_csrf_checks=True)
    await sync_to_async(browser.get)("/downloads/")  # sets the CSRF cookie, as a page does
    cookie = browser.cookies[settings.CSRF_COOKIE_NAME].value
    headers = [(b"origin", b"http://127.0.0.1:4000"), (b"cookie", f"csrftoken={cookie}".encode())]
    url = page_url([download.job_id], panels=[])
    running = {"status": Status.RUNNING, "updated_at": timezone.now()}
    await sync_to_async(Job.objects.filter(pk=download.job_id).update)(**running)
    ws = WebsocketCommunicator(application, url, headers=headers)
    assert (await ws.connect())[0]
    fragment = await ws.receive_from(timeout=5)
    await ws.disconnect()
    assert "loras/a.safetensors" in fragment
    cancel = f"/downloads/{download.pk}/cancel/"
    form = re.search(rf'action="{cancel}">.*?name="csrfmiddlewaretoken" value="([^"]+)"', fragment)
    posted = {"csrfmiddlewaretoken": form.group(1)}
    response = await sync_to_async(browser.post)(cancel, posted)
    forged = await sync_to_async(browser.post)(cancel, {"csrfmiddlewaretoken": "b" * 32})
    assert response.status_code == 302 and forged.status_code == 403
    job = await sync_to_async(Job.objects.get)(pk=download.job_id)
    assert job.requested == Requested.CANCEL  # the running download is asked to stop
    await sync_to_async(connections.close_all)()
