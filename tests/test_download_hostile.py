"""Downloads against hostile input: planted links, passwords in URLs, absurd sizes and
names, tokens asked for over plain http. Each is refused plainly and loses nothing."""

import hashlib
import json
import os

import pytest

from comfyhub.library import index
from comfyhub.library.models import Download
from comfyhub.workflows import parse
from recovery.engine import run_foreground
from recovery.errors import JobError
from recovery.models import Category, Status
from recovery.redact import redact
from tests.conftest import ROOT

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("models_dir")]

DATA = os.urandom(256 * 1024)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def outside(tmp_path):
    """A file outside the models folder that nothing may change."""
    path = tmp_path / "outside.txt"
    path.write_text("precious")
    return path


def started(url: str, dest: str = "checkpoints/m.bin") -> Download:
    """A download whose .part and sidecar a previous attempt left (the sidecar matches)."""
    download, _ = Download.objects.request(url, dest)
    Download.objects.filter(pk=download.pk).update(url=url)
    download.refresh_from_db()
    download.path.parent.mkdir(parents=True, exist_ok=True)
    return download


@pytest.mark.parametrize("planted", [".part.tmp", ".part", ".part.json"])
def test_a_link_planted_beside_a_download_is_refused_and_its_target_untouched(
    file_server, outside, planted
):
    download = started(file_server.add("/m.bin", DATA))
    if planted != ".part.json":
        download.sidecar_path.write_text(f'{{"url": "{download.url}", "validator": ""}}')
    download.path.with_name(download.path.name + planted).symlink_to(outside)
    job = run_foreground(download.job_id)
    assert job.status == Status.FAILED and job.error_category == Category.VALIDATION
    assert "is a link or not a plain file" in job.error_message
    assert outside.read_text() == "precious" and not download.path.exists()


def test_a_hard_link_planted_at_the_part_is_refused(file_server, outside):
    download = started(file_server.add("/m.bin", DATA))
    download.sidecar_path.write_text(f'{{"url": "{download.url}", "validator": ""}}')
    os.link(outside, download.part_path)
    job = run_foreground(download.job_id)
    assert job.error_category == Category.VALIDATION and outside.read_text() == "precious"


def test_a_destination_linked_outside_is_refused_and_left_alone(file_server, outside, models_dir):
    (models_dir / "checkpoints").mkdir()
    (models_dir / "checkpoints/m.bin").symlink_to(outside)
    download, _ = Download.objects.request(file_server.add("/m.bin", DATA), "checkpoints/m.bin")
    job = run_foreground(download.job_id)
    assert job.status == Status.FAILED and job.error_category == Category.VALIDATION
    assert "leads outside the models folder" in job.error_message
    assert outside.read_text() == "precious" and file_server.requests == []


def test_a_model_linked_from_outside_is_not_present(models_dir, outside):
    (models_dir / "vae").mkdir()
    (models_dir / "vae/a.bin").symlink_to(outside)
    assert not index.is_present("vae", "a.bin")
    assert index.scan() == 0


def test_a_url_password_never_reaches_host_breaker_or_messages(file_server):
    url = file_server.add("/m.bin", DATA, auth="Bearer right").replace("://", "://me:hunter2@pw@")
    download, _ = Download.objects.request(url, "checkpoints/m.bin")
    job = run_foreground(download.job_id)
    download.refresh_from_db()
    assert job.error_category == Category.AUTH and download.host == file_server.base[7:]
    shown = [download.host, job.breaker_key, job.error_message, job.error_detail]
    shown += [a.message + a.detail for a in job.attempts.all()]
    assert not [text for text in shown if "hunter2" in text]


def test_a_password_with_an_at_sign_is_redacted_whole():
    assert redact("GET https://me:hunter2@pw@host/x") == "GET https://me:[redacted]@host/x"


def test_a_launcher_file_size_beyond_any_disk_is_refused_when_parsed():
    launcher = json.loads((ROOT / "tests/data/workflows/launcher.json").read_text())
    launcher["files"][0][0]["size"] = 10**30
    with pytest.raises(JobError) as error:
        parse.from_json(launcher)
    assert error.value.category == Category.VALIDATION
    assert "size must be a whole number of bytes" in error.value.message


def test_a_url_with_a_line_break_fails_at_once_as_validation():
    download, _ = Download.objects.request("http://127.0.0.1:9/m.bin\r\nX: y", "vae/m.bin")
    job = run_foreground(download.job_id)
    assert job.status == Status.FAILED and job.error_category == Category.VALIDATION
    assert job.attempt == 1 and "line break" in job.error_message


def test_a_redirect_loop_gives_up_at_once_and_says_so(file_server):
    url = file_server.add("/a.bin", DATA, script=["redirect:/b.bin"] * 20)
    file_server.add("/b.bin", DATA, script=["redirect:/a.bin"] * 20)
    download, _ = Download.objects.request(url, "vae/m.bin")
    job = run_foreground(download.job_id)
    assert job.status == Status.FAILED and job.attempt == 1
    assert "redirects in a loop" in job.error_message and "/b.bin" in job.error_detail
    assert len(file_server.requests) <= 10
