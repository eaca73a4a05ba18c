"""Hugging Face and CivitAI links, against fakes speaking their real response shapes."""

import hashlib
import os

import pytest

from comfyhub.library import sources
from comfyhub.library.models import Download
from recovery.engine import run_foreground
from recovery.models import Status
from tests.fakeapis import FakeCivitai, FakeHuggingFace
from tests.fileserver import FileServer

pytestmark = pytest.mark.django_db(transaction=True)

DATA = os.urandom(512 * 1024)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(autouse=True)
def _models(models_dir):
    return models_dir


@pytest.fixture
def hf(settings):
    with FakeHuggingFace(token="hf_secret_for_tests_0123456789") as server:
        settings.HF_ENDPOINT = server.base
        settings.HF_TOKEN = "hf_secret_for_tests_0123456789"
        yield server


@pytest.fixture
def cdn():
    with FileServer() as server:
        yield server


@pytest.fixture
def civitai(settings, cdn):
    with FakeCivitai(token="civitai-secret-token") as server:
        settings.CIVITAI_ENDPOINT = server.base
        settings.CIVITAI_API_TOKEN = "civitai-secret-token"
        server.add_version(
            4201,
            130072,
            "v6",
            cdn.add("/cdn/model.safetensors", DATA),
            SHA,
            len(DATA),
            "realistic.safetensors",
        )
        yield server


def fetch(url: str, dest: str = "checkpoints/m.safetensors", sha256: str = ""):
    download, _ = Download.objects.request(url, dest, sha256)
    job = run_foreground(download.job_id)
    download.refresh_from_db()
    return download, job


def test_a_hugging_face_page_link_downloads_the_file(hf):
    hf.add_file("org/model", "unet.safetensors", DATA)
    download, job = fetch(f"{hf.base}/org/model/blob/main/unet.safetensors", sha256=SHA)
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    assert download.url == f"{hf.base}/org/model/resolve/main/unet.safetensors"


def test_hf_token_goes_to_hugging_face_and_never_across_a_redirect(hf, cdn):
    mirror = cdn.add("/lfs/unet.bin", DATA)
    hf.add_file("org/model", "unet.safetensors", DATA, script=[f"redirect:{mirror}"])
    _, job = fetch(f"{hf.base}/org/model/resolve/main/unet.safetensors", sha256=SHA)
    assert job.status == Status.SUCCEEDED
    assert hf.requests[0]["headers"]["authorization"].startswith("Bearer hf_secret")
    assert "authorization" not in cdn.requests[0]["headers"]


def test_a_missing_hf_token_fails_as_auth_naming_the_setting(hf, settings):
    settings.HF_TOKEN = ""
    hf.add_file("org/gated", "model.safetensors", DATA)
    download, job = fetch(f"{hf.base}/org/gated/resolve/main/model.safetensors")
    assert job.status == Status.FAILED and job.error_category == "auth"
    assert "HF_TOKEN" in job.error_message and not download.path.exists()


def test_a_civitai_model_page_resolves_to_its_file_and_hash(civitai, cdn):
    download, job = fetch(f"{civitai.base}/models/4201/realistic?modelVersionId=130072")
    assert job.status == Status.SUCCEEDED
    assert download.expected_sha256 == SHA and download.sha256 == SHA
    assert download.url == civitai.download_url(130072)
    assert "authorization" not in cdn.requests[0]["headers"]


def test_a_civitai_page_without_version_takes_the_newest(civitai, cdn):
    newer = os.urandom(1000)
    civitai.add_version(
        4201,
        140000,
        "v7",
        cdn.add("/cdn/v7.safetensors", newer),
        hashlib.sha256(newer).hexdigest(),
        len(newer),
        "v7.safetensors",
    )
    download, job = fetch(f"{civitai.base}/models/4201")
    assert job.status == Status.SUCCEEDED and download.path.read_bytes() == newer


def test_civitai_without_a_token_fails_as_auth_naming_the_setting(civitai, settings):
    settings.CIVITAI_API_TOKEN = ""
    download, job = fetch(f"{civitai.base}/models/4201?modelVersionId=130072")
    assert job.status == Status.FAILED and job.error_category == "auth"
    assert "CIVITAI_API_TOKEN" in job.error_message and not download.path.exists()


def test_an_unknown_civitai_version_is_not_found(civitai):
    _, job = fetch(f"{civitai.base}/models/4201?modelVersionId=999")
    assert job.status == Status.FAILED and job.error_category == "not_found"


def test_no_token_is_sent_to_any_other_host(hf, cdn):
    _, job = fetch(cdn.add("/plain.bin", DATA))
    assert job.status == Status.SUCCEEDED
    assert "authorization" not in cdn.requests[0]["headers"]


def test_a_token_is_never_sent_over_plain_http_to_its_host(hf, settings):
    settings.HF_ENDPOINT = hf.base.replace("http://", "https://")
    hf.add_file("org/model", "unet.safetensors", DATA)
    _, job = fetch(f"{hf.base}/org/model/resolve/main/unet.safetensors")
    assert job.status == Status.FAILED and job.error_category == "auth"
    assert "authorization" not in hf.requests[0]["headers"]
    assert "https://" in job.error_message


def test_hugging_faces_token_goes_only_to_its_https_origin(settings):
    settings.HF_ENDPOINT, settings.HF_TOKEN = "https://huggingface.co", "hf_only_over_https_0123"
    assert sources.token_for("https://huggingface.co/a")[1] == "hf_only_over_https_0123"
    assert sources.token_for("https://huggingface.co:443/a")[1] == "hf_only_over_https_0123"
    assert sources.token_for("http://huggingface.co/a") == ("", "")
    assert sources.token_for("https://huggingface.co:8443/a") == ("", "")
