"""Recovery and Settings pages, the attention banner, and stored host tokens."""

import hashlib
import os
from datetime import timedelta

import pytest
from django.test import Client, RequestFactory
from django.utils import timezone

from comfyhub.context_processors import attention
from comfyhub.library import sources
from comfyhub.library.models import Download, StoredToken
from recovery.engine import run_foreground
from recovery.models import Attempt, CircuitBreaker, Job, Outcome, Status
from tests.fakeapis import FakeHuggingFace

HF_SECRET = "hf_StoredSecretValue0123456789abcdX9Q2"


def failed(kind: str = "download", category: str = "network", **fields) -> Job:
    return Job.objects.create(
        kind=kind,
        status=Status.FAILED,
        error_category=category,
        error_message=fields.pop("message", "The server kept dropping the connection."),
        **fields,
    )


# -- the attention banner -------------------------------------------------------------------


@pytest.mark.django_db
def test_the_banner_shows_on_every_page_when_a_job_failed(client):
    failed(category="auth", message="Set HF_TOKEN in Settings.")
    for url in ("/downloads/", "/settings/", "/system/"):
        html = client.get(url).content.decode()
        assert "1 job needs you" in html and "1 needs an access token" in html
        assert 'href="/recovery/">Open Recovery' in html


@pytest.mark.django_db
def test_the_banner_names_a_download_paused_for_disk_space(client):
    Job.objects.create(kind="download", status=Status.PAUSED, error_category="disk_full")
    html = client.get("/settings/").content.decode()
    assert "1 job needs you" in html and "1 paused because the disk is full" in html


@pytest.mark.django_db
def test_there_is_no_banner_while_jobs_retry_on_their_own_or_were_paused_by_the_user(client):
    Job.objects.create(kind="download", status=Status.WAITING, error_category="network")
    Job.objects.create(kind="download", status=Status.PAUSED, error_message="Paused by the user.")
    Job.objects.create(kind="download", status=Status.SUCCEEDED)
    html = client.get("/downloads/").content.decode()
    assert "needs you" not in html and "Open Recovery" not in html


@pytest.mark.django_db
def test_the_banner_costs_one_query_and_none_when_unused(django_assert_num_queries):
    failed()
    with django_assert_num_queries(0):
        context = attention(RequestFactory().get("/"))
    with django_assert_num_queries(1):
        assert context["attention"]["total"] == 1 and context["attention"]["auth"] == 0


# -- /recovery/ -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_recovery_page_says_nothing_needs_you_when_all_is_well(client):
    Job.objects.create(kind="download", status=Status.SUCCEEDED)
    response = client.get("/recovery/")
    assert response.status_code == 200
    assert "Nothing needs you." in response.content.decode()


@pytest.mark.django_db
def test_the_recovery_page_lists_failed_and_disk_full_jobs_with_their_fixes(client):
    job = failed(category="auth", message="huggingface.co refused the download (HTTP 401).")
    paused = Job.objects.create(kind="download", status=Status.PAUSED, error_category="disk_full")
    html = client.get("/recovery/").content.decode()
    assert "refused the download (HTTP 401)" in html and 'href="/settings/"' in html
    assert f'action="/recovery/jobs/{job.pk}/retry/"' in html
    assert f'action="/recovery/jobs/{paused.pk}/resume/"' in html
    assert "Nothing needs you." not in html


@pytest.mark.django_db
def test_a_failed_download_is_named_by_its_destination(client):
    download, _ = Download.objects.request("https://example.org/a.bin", "vae/a.safetensors")
    Job.objects.filter(pk=download.job_id).update(status=Status.FAILED, error_message="Gone.")
    html = client.get("/recovery/").content.decode()
    assert "vae/a.safetensors" in html and f"#job-{download.job_id}" in html


@pytest.mark.django_db
def test_waiting_jobs_are_listed_as_retrying_with_the_seconds_left(client):
    soon = timezone.now() + timedelta(seconds=7.5)
    Job.objects.create(
        kind="download", status=Status.WAITING, next_attempt_at=soon, error_message="Dropped."
    )
    html = client.get("/recovery/").content.decode()
    assert "Retrying on their own" in html and "retrying in 8 s" in html
    assert "Nothing needs you." in html


@pytest.mark.django_db
def test_open_circuit_breakers_show_their_next_probe_time(client):
    opened = timezone.now().replace(microsecond=0)
    CircuitBreaker.objects.create(
        key="huggingface.co", state="open", opened_at=opened, cooldown_seconds=60, trips=2
    )
    CircuitBreaker.objects.create(key="civitai.com", state="closed")
    html = client.get("/recovery/").content.decode()
    assert "huggingface.co" in html and "civitai.com" not in html
    assert f"{opened + timedelta(seconds=60):%H:%M:%S} UTC" in html


@pytest.mark.django_db
def test_the_recovery_page_shows_the_recovery_rate_and_time_to_recover(client):
    now = timezone.now()
    job = Job.objects.create(kind="download", status=Status.SUCCEEDED, finished_at=now)
    Attempt.objects.create(
        job=job, number=1, outcome=Outcome.RETRY, finished_at=now - timedelta(seconds=30)
    )
    Attempt.objects.create(job=job, number=2, outcome=Outcome.SUCCEEDED, finished_at=now)
    html = client.get("/recovery/").content.decode()
    assert "100 % (1 of 1 job that failed" in html and "30.0 s" in html
    assert '<th scope="row">download</th>' in html


@pytest.mark.django_db
def test_the_recovery_page_refuses_post(client):
    assert client.post("/recovery/").status_code == 405


@pytest.mark.django_db
def test_retry_now_requeues_a_failed_job_and_goes_back_to_recovery(client):
    job = failed()
    response = client.post(f"/recovery/jobs/{job.pk}/retry/")
    assert response.status_code == 302 and response["Location"] == "/recovery/"
    assert Job.objects.get(pk=job.pk).status == Status.QUEUED


@pytest.mark.django_db
def test_dismissing_a_failed_job_stops_the_banner(client):
    job = failed(category="auth", message="Set HF_TOKEN in Settings.")
    client.post(f"/recovery/jobs/{job.pk}/dismiss/")
    job.refresh_from_db()
    assert job.status == Status.CANCELLED and "Set HF_TOKEN" in job.error_message
    assert "needs you" not in client.get("/settings/").content.decode()


@pytest.mark.django_db
def test_an_action_that_no_longer_applies_says_nothing_changed(client):
    job = Job.objects.create(kind="download", status=Status.SUCCEEDED)
    response = client.post(f"/recovery/jobs/{job.pk}/retry/", follow=True)
    assert f"Nothing changed: download #{job.pk} is succeeded now." in response.content.decode()
    assert Job.objects.get(pk=job.pk).status == Status.SUCCEEDED


@pytest.mark.django_db
def test_a_job_action_refuses_get_unknown_actions_and_unknown_jobs(client):
    job = failed()
    assert client.get(f"/recovery/jobs/{job.pk}/retry/").status_code == 405
    assert client.post(f"/recovery/jobs/{job.pk}/explode/").status_code == 404
    assert client.post("/recovery/jobs/999999/retry/").status_code == 404
    assert Job.objects.get(pk=job.pk).status == Status.FAILED


@pytest.mark.django_db
def test_a_job_action_without_csrf_is_refused():
    job = failed()
    response = Client(enforce_csrf_checks=True).post(f"/recovery/jobs/{job.pk}/retry/")
    assert response.status_code == 403 and Job.objects.get(pk=job.pk).status == Status.FAILED


# -- /settings/ -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_settings_page_shows_tokens_limits_retry_defaults_and_folders(client, settings):
    settings.HF_TOKEN = settings.CIVITAI_API_TOKEN = ""
    settings.DOWNLOADS_MAX, settings.CONNECTIONS_PER_HOST = 7, 3
    html = client.get("/settings/").content.decode()
    assert html.count("Not set") == 2 and "COMFYHUB_DOWNLOADS_MAX" in html
    assert "<dd>7 <small>" in html and "<dd>3 <small>" in html
    assert "Rate limited" in html and "Retried up to 10 times, waiting 30 s" in html
    assert str(settings.MODELS_DIR) in html and str(settings.PROJECTS_DIR) in html


@pytest.mark.django_db
def test_saving_a_token_stores_it_and_shows_it_only_masked(client):
    response = client.post("/settings/", {"name": "HF_TOKEN", "token": HF_SECRET, "action": "save"})
    assert response.status_code == 302 and response["Location"] == "/settings/"
    assert StoredToken.objects.get(name="HF_TOKEN").value == HF_SECRET
    html = client.get("/settings/").content.decode()
    assert "Set here" in html and "hf_…X9Q2" in html
    assert HF_SECRET not in html and HF_SECRET[3:-4] not in html


@pytest.mark.django_db
def test_an_environment_token_is_shown_masked_and_never_whole(client, settings):
    settings.CIVITAI_API_TOKEN = "0123456789abcdef0123456789abcdef"
    html = client.get("/settings/").content.decode()
    assert "Set in the environment" in html and "012…cdef" in html
    assert settings.CIVITAI_API_TOKEN not in html


@pytest.mark.django_db
def test_clear_removes_the_stored_token(client):
    StoredToken.objects.store("CIVITAI_API_TOKEN", "0123456789abcdef0123")
    response = client.post("/settings/", {"name": "CIVITAI_API_TOKEN", "action": "clear"})
    assert response.status_code == 302 and not StoredToken.objects.exists()
    assert "CivitAI token cleared." in client.get("/settings/").content.decode()


@pytest.mark.django_db
def test_a_malformed_token_is_refused_and_never_echoed(client):
    secret = "hf_has a space inside0123456789"
    response = client.post("/settings/", {"name": "HF_TOKEN", "token": secret, "action": "save"})
    html = response.content.decode()
    assert response.status_code == 400 and "without spaces" in html
    assert "hf_has" not in html and not StoredToken.objects.exists()


@pytest.mark.django_db
def test_saving_without_a_token_or_for_an_unknown_name_is_refused(client):
    empty = client.post("/settings/", {"name": "HF_TOKEN", "token": "", "action": "save"})
    assert empty.status_code == 400 and "Paste the token first" in empty.content.decode()
    unknown = client.post("/settings/", {"name": "SECRET_KEY", "token": "x" * 20, "action": "save"})
    assert unknown.status_code == 400 and "Nothing was saved" in unknown.content.decode()
    assert not StoredToken.objects.exists()


@pytest.mark.django_db
def test_the_settings_page_refuses_put_and_a_post_without_csrf(client):
    assert client.put("/settings/").status_code == 405
    response = Client(enforce_csrf_checks=True).post(
        "/settings/", {"name": "HF_TOKEN", "token": HF_SECRET, "action": "save"}
    )
    assert response.status_code == 403 and not StoredToken.objects.exists()


@pytest.mark.django_db
def test_a_stored_token_wins_over_the_environment_and_goes_only_to_its_host(settings):
    settings.HF_TOKEN = "hf_FromTheEnvironment0123456789"
    assert sources.token_for("https://huggingface.co/org/m/resolve/main/a.bin")[1].endswith("789")
    StoredToken.objects.store("HF_TOKEN", HF_SECRET)
    assert sources.token_for("https://huggingface.co/a") == ("HF_TOKEN", HF_SECRET)
    assert sources.token_for("https://example.org/a") == ("", "")


@pytest.mark.django_db(transaction=True)
def test_a_download_sends_the_stored_token_and_never_records_a_wrong_one(settings, tmp_path):
    settings.MODELS_DIR, settings.HF_TOKEN = tmp_path, ""
    data = os.urandom(4096)
    with FakeHuggingFace(token=HF_SECRET) as hf:
        settings.HF_ENDPOINT = hf.base
        hf.add_file("org/gated", "m.safetensors", data)
        url = f"{hf.base}/org/gated/resolve/main/m.safetensors"
        StoredToken.objects.store("HF_TOKEN", "civ_wrong_but_long_enough_123")
        refused = run_foreground(Download.objects.request(url, "vae/m.safetensors")[0].job_id)
        StoredToken.objects.store("HF_TOKEN", HF_SECRET)
        fine = run_foreground(Download.objects.request(url, "vae/n.safetensors")[0].job_id)
    assert refused.error_category == "auth" and fine.status == Status.SUCCEEDED
    assert (tmp_path / "vae/n.safetensors").read_bytes() == data
    recorded = str(list(Job.objects.values())) + str(list(Attempt.objects.values()))
    assert "civ_wrong" not in recorded and HF_SECRET not in recorded
    assert hashlib.sha256(data).hexdigest() in str(list(Download.objects.values()))
