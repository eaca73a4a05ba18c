"""`manage.py download`: exit codes, JSON, and resuming after the process was SIGKILLed."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from recovery.models import BreakerState, CircuitBreaker
from tests.conftest import ROOT, subprocess_env, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("models_dir")]

DATA = os.urandom(2 * 1024 * 1024)
SHA = hashlib.sha256(DATA).hexdigest()


def download(*args: str) -> dict:
    out = StringIO()
    call_command("download", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.parametrize(
    "args",
    [
        ["ftp://127.0.0.1/x", "--dest", "checkpoints/x.bin"],
        ["http://127.0.0.1/x", "--dest", "/tmp/x.bin"],
        ["http://127.0.0.1/x", "--dest", "checkpoints/../../x.bin"],
        ["http://127.0.0.1/x", "--dest", "checkpoints/x.bin", "--sha256", "nothex"],
        ["http://127.0.0.1/x", "--dest", "checkpoints/x.bin", "--size", "-1"],
        ["http://127.0.0.1/x", "--dest", "checkpoints/x.bin", "--size", "9" * 23],
        ["http://127.0.0.1/x\r\nHost: evil", "--dest", "checkpoints/x.bin"],
        ["http://127.0.0.1/x", "--dest", f"checkpoints/{'x' * 300}.bin"],
    ],
)
def test_bad_input_exits_2_with_a_clear_message(args):
    with pytest.raises(CommandError) as error:
        call_command("download", *args)
    assert error.value.returncode == 2


def test_a_real_bad_invocation_prints_one_line_and_exits_2(tmp_path):
    command = [sys.executable, str(ROOT / "manage.py"), "download", "ftp://h/x", "--dest", "a/b"]
    result = subprocess.run(command, env=subprocess_env(tmp_path), capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "CommandError: Only http:// and https:// URLs can be downloaded (got 'ftp://h/x')."
    )


def test_a_size_beyond_any_disk_is_refused_as_validation():
    with pytest.raises(CommandError) as error:
        call_command("download", "http://h/x", "--dest", "vae/x.bin", "--size", "9" * 23)
    assert error.value.returncode == 2
    assert "--size must be a whole number of bytes from 0 to" in str(error.value)


def test_a_file_name_too_long_for_its_part_json_is_refused_plainly():
    with pytest.raises(CommandError) as error:
        call_command("download", "http://h/x", "--dest", f"vae/{'x' * 300}.bin")
    assert error.value.returncode == 2 and "is 304 bytes long; at most 245 fit" in str(error.value)


def test_a_link_planted_beside_the_destination_is_refused_before_the_job(models_dir, tmp_path):
    (models_dir / "vae").mkdir()
    (models_dir / "vae/x.bin.part").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CommandError) as error:
        call_command("download", "http://h/x", "--dest", "vae/x.bin")
    assert error.value.returncode == 2 and "is a link or not a plain file" in str(error.value)
    assert not (tmp_path / "elsewhere").exists()


def test_a_refused_url_never_echoes_its_password():
    with pytest.raises(CommandError) as error:
        call_command("download", "ftp://me:hunter2@h/x", "--dest", "checkpoints/x.bin")
    assert error.value.returncode == 2 and "hunter2" not in str(error.value)
    assert "ftp://me:[redacted]@h/x" in str(error.value)


def test_json_reports_a_verified_download(file_server, models_dir):
    report = download(file_server.add("/m.bin", DATA), "--dest", "vae/m.bin", "--sha256", SHA)
    assert report == {
        "status": "succeeded",
        "path": str(models_dir.resolve() / "vae/m.bin"),
        "bytes": len(DATA),
        "sha256": SHA,
        "attempts": 1,
        "error": None,
    }


def test_a_failed_download_exits_1_and_explains(file_server, capsys):
    out = StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command(
            "download",
            file_server.add("/m.bin", DATA, script=["status:404"]),
            "--dest",
            "vae/m.bin",
            "--json",
            stdout=out,
        )
    assert exit_info.value.code == 1
    report = json.loads(out.getvalue())
    assert report["status"] == "failed" and report["sha256"] is None
    assert report["error"]["category"] == "not_found" and report["error"]["retryable"] is False


@pytest.mark.e2e
def test_a_killed_download_resumes_its_part_when_run_again(file_server, tmp_path, models_dir):
    size = 12 * 1024 * 1024
    data = os.urandom(size)
    url = file_server.add("/big.bin", data, rate=4 * 1024 * 1024)
    env = subprocess_env(tmp_path, COMFYHUB_MODELS_DIR=str(models_dir))
    sha = hashlib.sha256(data).hexdigest()
    command = [
        sys.executable,
        str(ROOT / "manage.py"),
        "download",
        url,
        "--dest",
        "checkpoints/big.bin",
        "--sha256",
        sha,
        "--json",
    ]
    part = models_dir / "checkpoints/big.bin.part"
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE)
    wait_until(lambda: part.exists() and part.stat().st_size >= 3 * 1024 * 1024, what="3 MiB")
    first.send_signal(signal.SIGKILL)
    first.wait()
    file_server.release_stalls()
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["sha256"] == sha
    assert file_server.requests[-1]["headers"]["range"].startswith("bytes=")
    assert file_server.bytes_sent() <= size + 16 * 1024 * 1024


def test_a_download_waiting_on_an_open_breaker_says_so_and_for_how_long(file_server, capsys):
    file_server.add("/m.bin", DATA)
    host = file_server.url("/m.bin").split("/")[2]
    CircuitBreaker.objects.create(
        key=host, state=BreakerState.OPEN, opened_at=timezone.now(), cooldown_seconds=1.5
    )
    result = download(file_server.url("/m.bin"), "--dest", "checkpoints/m.bin")
    waited = capsys.readouterr().err
    assert result["status"] == "succeeded"
    assert re.search(r"waiting [12] s: .*failed several times in a row", waited), waited
