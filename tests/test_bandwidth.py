"""The bandwidth limit: one budget for every connection, set in the environment or on the
Settings page, where a change reaches running downloads within seconds."""

import hashlib
import os
import threading
import time

import pytest

from comfyhub import config
from comfyhub.library.bandwidth import LIMITER, Limiter
from comfyhub.library.models import Download, Preference
from recovery.engine import run_foreground
from recovery.models import Status
from recovery.signals import job_changed
from tests.conftest import manage, wait_until
from tests.fileserver import FileServer
from tests.test_config import ENV

MIB = 1 << 20
DATA = os.urandom(16 * MIB)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(autouse=True)
def fresh_limiter(settings):
    settings.DOWNLOAD_CONNECTIONS = 4
    LIMITER.read_at = None  # a download of an earlier test may have read the limit just now
    yield
    LIMITER.read_at, LIMITER.rate = None, None  # the next test reads its own limit


@pytest.fixture
def server():
    with FileServer() as running:
        yield running


def timed_fetch(url: str) -> float:
    started = time.monotonic()
    download, _ = Download.objects.request(url, "checkpoints/m.bin", SHA)
    job = run_foreground(download.job_id)
    download.refresh_from_db()
    assert job.status == Status.SUCCEEDED and download.sha256 == SHA
    return time.monotonic() - started


@pytest.mark.django_db(transaction=True)
def test_the_bandwidth_limit_holds_all_connections_together(server, models_dir):
    Preference.objects.store("COMFYHUB_BANDWIDTH_LIMIT", str(8 * MIB))
    elapsed = timed_fetch(server.add("/m.bin", DATA))
    assert server.most_sending == 4
    assert 1.5 <= elapsed <= 6, elapsed  # 16 MiB at 8 MiB/s is 2 s


@pytest.mark.django_db(transaction=True)
def test_a_limit_changed_on_the_page_applies_to_a_running_download(server, models_dir, monkeypatch):
    monkeypatch.setattr(LIMITER, "every", 0.1)
    Preference.objects.store("COMFYHUB_BANDWIDTH_LIMIT", str(512 * 1024))  # 32 s for 16 MiB

    def lift(sender, job, **kwargs):
        if job.progress_done:
            Preference.objects.store("COMFYHUB_BANDWIDTH_LIMIT", "")

    job_changed.connect(lift)
    try:
        elapsed = timed_fetch(server.add("/m.bin", DATA))
    finally:
        job_changed.disconnect(lift)
    assert elapsed < 8, elapsed


@pytest.mark.django_db
def test_the_page_value_wins_over_the_environment_and_clearing_it_restores_it(settings):
    settings.BANDWIDTH_LIMIT = 5_000_000
    limiter = Limiter(every=0)
    limiter.refresh()
    assert limiter.rate == 5_000_000
    Preference.objects.store("COMFYHUB_BANDWIDTH_LIMIT", "")
    limiter.refresh()
    assert limiter.rate is None
    Preference.objects.all().delete()
    limiter.refresh()
    assert limiter.rate == 5_000_000


def test_a_limiter_spreads_one_budget_over_its_takers():
    now = [0.0]
    limiter = Limiter(clock=lambda: now[0])
    limiter.set_rate(1000)
    assert limiter.debt_after(250) == pytest.approx(0.25)
    now[0] = 10.0  # a long pause earns a quarter second's burst, not ten seconds' worth
    assert limiter.debt_after(250) == 0
    assert limiter.debt_after(500) == pytest.approx(0.5)
    assert limiter.debt_after(500) == pytest.approx(1.0)  # a second taker waits its turn


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("500000", 500_000),
        ("50M", 50_000_000),
        ("2.5MB", 2_500_000),
        ("800 KiB/s", 819_200),
        ("1g", 1_000_000_000),
        ("", None),
        ("0", None),
        ("none", None),
    ],
)
def test_speeds_are_read_in_bytes_per_second_with_optional_suffixes(text, rate):
    assert config.parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "5 T", "-3M", "12 bytes", "999"])
def test_a_speed_that_is_not_one_says_how_to_write_it(text):
    with pytest.raises(ValueError, match=r"not a speed|too slow"):
        config.parse_rate(text)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("COMFYHUB_DOWNLOAD_CONNECTIONS", "0"),
        ("COMFYHUB_DOWNLOAD_CONNECTIONS", "65"),
        ("COMFYHUB_CONNECTIONS_PER_HOST", "many"),
        ("COMFYHUB_BANDWIDTH_LIMIT", "fast"),
    ],
)
def test_a_bad_connection_or_bandwidth_value_fails_at_start_naming_it(tmp_path, name, value):
    result = manage("check", env={**ENV, "COMFYHUB_DATA_DIR": str(tmp_path), name: value})
    assert result.returncode == 2
    assert name in result.stderr and "Traceback" not in result.stderr


@pytest.mark.django_db
def test_saving_a_limit_on_the_settings_page_stores_bytes_per_second(client):
    response = client.post("/settings/bandwidth/", {"limit": "2.5MB", "action": "save"})
    assert response.status_code == 302 and response["Location"] == "/settings/"
    assert Preference.objects.value_of("COMFYHUB_BANDWIDTH_LIMIT") == "2500000"
    html = client.get("/settings/").content.decode()
    assert "2.5 MB/s" in html and "set here" in html


@pytest.mark.django_db
def test_a_bad_limit_is_refused_plainly_and_nothing_is_saved(client):
    response = client.post("/settings/bandwidth/", {"limit": "fast", "action": "save"})
    assert response.status_code == 400
    assert "is not a speed" in response.content.decode()
    assert not Preference.objects.exists()


@pytest.mark.django_db
def test_clearing_the_page_limit_hands_back_to_the_environment(client, settings):
    settings.BANDWIDTH_LIMIT = 3_000_000
    Preference.objects.store("COMFYHUB_BANDWIDTH_LIMIT", "")
    response = client.post("/settings/bandwidth/", {"limit": "", "action": "clear"})
    assert response.status_code == 302 and not Preference.objects.exists()
    assert "3.0 MB/s" in client.get("/settings/").content.decode()


@pytest.mark.django_db
def test_the_bandwidth_form_only_takes_posts(client):
    assert client.get("/settings/bandwidth/").status_code == 405


def test_raising_the_limit_wakes_a_connection_sleeping_off_its_debt_at_once():
    limiter = Limiter()
    limiter.set_rate(1000)
    sleeper = threading.Thread(target=limiter.take, args=(100_000,))  # 100 s of debt
    started = time.monotonic()
    sleeper.start()
    wait_until(lambda: limiter.allowance < 0, timeout=10, what="the debt run up")
    limiter.set_rate(None)
    sleeper.join(timeout=10)
    assert not sleeper.is_alive() and time.monotonic() - started < 5


def test_a_stopped_connection_stops_sleeping_off_its_debt_within_a_slice():
    limiter, stop = Limiter(), threading.Event()
    limiter.set_rate(1000)
    sleeper = threading.Thread(target=limiter.take, args=(100_000, stop))
    started = time.monotonic()
    sleeper.start()
    wait_until(lambda: limiter.allowance < 0, timeout=10, what="the debt run up")
    stop.set()
    sleeper.join(timeout=10)
    assert not sleeper.is_alive() and time.monotonic() - started < 5
