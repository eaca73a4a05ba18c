"""Rows written before the download hardening are brought in line by its migrations."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from comfyhub.library.models import Download
from recovery.models import CircuitBreaker

BEFORE = [("library", "0004_preferences"), ("recovery", "0001_initial")]


def migrate(targets) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor


@pytest.mark.django_db(transaction=True)
def test_old_rows_lose_url_passwords_and_the_newest_unfinished_one_holds_its_file():
    old = migrate(BEFORE).loader.project_state(BEFORE).apps
    Job, Row = old.get_model("recovery", "Job"), old.get_model("library", "Download")
    for status, host in [("succeeded", "me:pw@h"), ("queued", "me:pw@h"), ("running", "h")]:
        job = Job.objects.create(kind="download", status=status, breaker_key=host)
        Row.objects.create(job=job, source_url=f"http://{host}/a", dest="vae/a.bin", host=host)
    old.get_model("recovery", "CircuitBreaker").objects.create(key="me:pw@h")
    executor = MigrationExecutor(connection)
    migrate(executor.loader.graph.leaf_nodes())
    rows = Download.objects.order_by("pk").select_related("job")
    assert [(d.host, d.job.breaker_key, d.active_dest) for d in rows] == [
        ("h", "h", None),
        ("h", "h", None),
        ("h", "h", "vae/a.bin"),
    ]
    assert not CircuitBreaker.objects.filter(key__contains="pw").exists()
