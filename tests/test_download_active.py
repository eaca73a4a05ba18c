"""One active download per destination, kept by the database (a unique `active_dest`),
in step with the job through finish, failure, cancel and retry, and under a real race of
two processes on PostgreSQL."""

import os
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from django.db import IntegrityError

from comfyhub.library.models import Download
from recovery.engine import run_foreground
from recovery.models import Category, Job, Status
from tests.conftest import ROOT
from tests.fileserver import FileServer

DATA = os.urandom(128 * 1024)
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def server(models_dir):
    with FileServer() as running:
        yield running


def holder(dest: str) -> int | None:
    return Download.objects.filter(active_dest=dest).values_list("pk", flat=True).first()


@pytest.mark.django_db
def test_the_database_refuses_a_second_active_download_of_one_file():
    first, _ = Download.objects.request("http://127.0.0.1:9/a", "vae/a.bin")
    job = Job.objects.create(kind="download")
    with pytest.raises(IntegrityError):
        Download.objects.create(
            job=job, source_url=first.source_url, dest=first.dest, active_dest=first.dest
        )


@pytest.mark.django_db(transaction=True)
def test_a_finished_download_lets_its_destination_go(server):
    download, _ = Download.objects.request(server.add("/a.bin", DATA), "vae/a.bin")
    assert holder("vae/a.bin") == download.pk
    assert run_foreground(download.job_id).status == Status.SUCCEEDED
    assert holder("vae/a.bin") is None


@pytest.mark.django_db(transaction=True)
def test_a_failed_download_retried_takes_its_destination_back(server):
    url = server.add("/a.bin", DATA, script=["status:404"])
    download, _ = Download.objects.request(url, "vae/a.bin")
    job = run_foreground(download.job_id)
    assert job.status == Status.FAILED and holder("vae/a.bin") is None
    assert job.retry_now() and holder("vae/a.bin") == download.pk
    assert run_foreground(download.job_id).status == Status.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_a_retry_never_writes_the_file_a_newer_download_is_saving(server):
    old, _ = Download.objects.request(
        server.add("/a.bin", DATA, script=["status:404"]), "vae/a.bin"
    )
    run_foreground(old.job_id)
    new, created = Download.objects.request(server.add("/b.bin", DATA), "vae/a.bin")
    new.path.parent.mkdir(parents=True, exist_ok=True)
    new.part_path.write_bytes(b"the newer download's bytes")
    retried = Job.objects.get(pk=old.job_id)
    assert created and retried.retry_now() and holder("vae/a.bin") == new.pk
    job = run_foreground(old.job_id)
    assert job.status == Status.FAILED and job.error_category == Category.VALIDATION
    assert "Another download is already saving vae/a.bin" in job.error_message
    assert job.dismiss() and new.part_path.read_bytes() == b"the newer download's bytes"


@pytest.mark.django_db(transaction=True)
def test_a_cancelled_download_lets_a_new_request_start_afresh():
    first, _ = Download.objects.request("http://127.0.0.1:9/a", "vae/a.bin")
    assert first.job.cancel() and holder("vae/a.bin") is None
    second, created = Download.objects.request("http://127.0.0.1:9/a", "vae/a.bin")
    assert created and holder("vae/a.bin") == second.pk


# -- a real race: two processes, PostgreSQL ------------------------------------------------

RACER = """
import sys

import django

django.setup()
from comfyhub.library.models import Download

for line in sys.stdin:
    download, created = Download.objects.request("http://127.0.0.1:9/m.bin", line.strip())
    print(download.pk, int(created), flush=True)
"""


@pytest.fixture
def scratch_postgres(tmp_path):
    """A migrated database of its own on the PostgreSQL server (dropped after), whatever
    database the rest of the suite runs on."""
    psycopg = pytest.importorskip("psycopg", reason="PostgreSQL race test needs psycopg")
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES} is unreachable: {exc}")
    name = f"comfyhub_race_{os.getpid()}"
    admin.execute(f"DROP DATABASE IF EXISTS {name}")
    admin.execute(f"CREATE DATABASE {name}")
    url = urlsplit(POSTGRES)._replace(path=f"/{name}").geturl()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("COMFYHUB_")},
        "COMFYHUB_DATA_DIR": str(tmp_path),
        "COMFYHUB_DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "comfyhub.settings",
    }
    migrate = [sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput"]
    migrated = subprocess.run(
        migrate, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert migrated.returncode == 0, migrated.stderr
    try:
        with psycopg.connect(url, autocommit=True) as db:
            yield env, db
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.mark.e2e
def test_two_processes_racing_for_one_file_make_exactly_one_download(scratch_postgres):
    env, db = scratch_postgres
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    answers = []
    for round_ in range(40):
        # Both are blocked on stdin: one line each lets them go at the same moment.
        for racer in racers:
            racer.stdin.write(f"checkpoints/race-{round_}.bin\n")
            racer.stdin.flush()
        answers.append([racer.stdout.readline().split() for racer in racers])
    for racer in racers:
        racer.stdin.close()
        assert racer.wait(timeout=60) == 0
    rows = db.execute("SELECT dest, count(*) FROM library_download GROUP BY dest").fetchall()
    assert len(rows) == 40 and {count for _, count in rows} == {1}
    assert all(a[0] == b[0] and {a[1], b[1]} == {"0", "1"} for a, b in answers)


@pytest.mark.django_db
def test_two_spellings_of_one_destination_are_one_download():
    first, _ = Download.objects.request("http://127.0.0.1:9/a", "vae/a.bin")
    second, created = Download.objects.request("http://127.0.0.1:9/a", "vae//./a.bin")
    third, _ = Download.objects.request("http://127.0.0.1:9/a", "vae\\a.bin")
    assert not created and first.pk == second.pk == third.pk


@pytest.mark.django_db
def test_two_folders_that_are_one_folder_through_a_link_are_one_download(models_dir):
    (models_dir / "diffusion_models").mkdir(parents=True)
    (models_dir / "unet").symlink_to(models_dir / "diffusion_models")
    first, created = Download.objects.request("http://h/x", "diffusion_models/x.bin")
    joined, again = Download.objects.request("http://h/x", "unet/x.bin")
    assert (created, again, joined.pk) == (True, False, first.pk)
