"""classify() and redact() against real failures: sockets, a local HTTP server, real
filesystems (tiny tmpfs mounts when we may mount), git, pip and sleep subprocesses."""

import asyncio
import errno
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from django.core.validators import URLValidator

from recovery.classify import classify
from recovery.errors import Cancelled, JobError
from recovery.models import Category
from recovery.redact import RedactingFilter, redact

NOW = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)
HF_TOKEN = "hf_" + "AbCdEfGhIj" * 3


def raised_by(action) -> BaseException:
    with pytest.raises(BaseException) as raised:
        action()
    return raised.value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Replies(BaseHTTPRequestHandler):
    """Answers GET /<status>/... with that status, the headers queued for it, and a body that
    echoes the request the way some servers' error pages do."""

    def do_GET(self):
        status = int(self.path.split("?")[0].strip("/").split("/")[0])
        body = f"refused {self.path} for {self.headers.get('Authorization')}".encode()
        self.send_response(status)
        for name, value in self.server.headers.get(status, {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Replies)
    server.headers = {}
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def http_error(http_server):
    """GETs /<status> from the local server and returns raise_for_status()'s error."""

    def get(status: int, query: str = "", **headers: str) -> httpx.HTTPStatusError:
        http_server.headers[status] = headers
        url = f"http://127.0.0.1:{http_server.server_port}/{status}{query}"
        response = httpx.get(url, headers={"Authorization": "Bearer sekrit+value/123"})
        return raised_by(response.raise_for_status)

    return get


@pytest.fixture
def silent_server():
    """Accepts connections (the kernel does, from the backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def tmpfs(tmp_path):
    """mount(options) mounts a small tmpfs and returns its path, or None when not allowed."""
    mounted = []

    def mount(options: str) -> Path | None:
        path = tmp_path / f"fs{len(mounted)}"
        path.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
        if not shutil.which("mount") or subprocess.run(command, capture_output=True).returncode:
            return None
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
def read_only_dir(tmp_path, tmpfs):
    # Root ignores permission bits, so as root only a read-only mount really stops writes.
    if os.geteuid() != 0:
        path = tmp_path / "locked"
        path.mkdir(mode=0o500)
        yield path
        path.chmod(0o700)
        return
    path = tmpfs("ro,size=1m")
    if path is None:
        pytest.skip("as root, a read-only directory needs permission to mount a tmpfs")
    yield path


@pytest.fixture
def full_disk(tmpfs):
    """A 64 KiB disk, or None where we may not mount one (see no_space)."""
    return tmpfs("size=64k")


def no_space(write, disk: Path | None, target: Path) -> OSError:
    """Runs write() onto the tiny disk; without one, returns the error it would raise."""
    if disk is None:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
    return raised_by(write)


# --- HTTP ---------------------------------------------------------------------------------


def test_a_closed_port_is_a_network_error():
    port = closed_port()

    failure = classify(raised_by(lambda: httpx.get(f"http://127.0.0.1:{port}/model.bin")))

    assert failure.category == Category.NETWORK
    assert failure.transient
    assert "Could not connect to 127.0.0.1 (connection refused)" in failure.message
    assert "httpx.ConnectError" in failure.detail


def test_a_server_that_never_answers_is_a_timeout(silent_server):
    url = f"http://127.0.0.1:{silent_server}/model.bin"

    failure = classify(raised_by(lambda: httpx.get(url, timeout=0.2)))

    assert failure.category == Category.TIMEOUT
    assert failure.transient
    assert "Timed out waiting for 127.0.0.1 (read timeout)" in failure.message


def test_an_http_error_made_without_a_request_still_classifies():
    failure = classify(httpx.ConnectError("boom"))

    assert failure.category == Category.NETWORK
    assert "Could not connect to the server (boom)" in failure.message


def test_a_non_http_link_is_invalid_input():
    failure = classify(raised_by(lambda: httpx.get("ftp://127.0.0.1/model.bin")))

    assert failure.category == Category.VALIDATION
    assert not failure.transient


@pytest.mark.parametrize(("header", "retry_after"), [("7", 7.0), ("-3", 0.0), ("soon", None)])
def test_a_503_is_a_server_error_that_honours_retry_after(http_error, header, retry_after):
    failure = classify(http_error(503, **{"Retry-After": header}))

    assert failure.category == Category.SERVER
    assert failure.retry_after == retry_after
    assert "HTTP 503" in failure.message


def test_a_429_waits_until_the_http_date_in_retry_after(http_error):
    later = format_datetime(NOW + timedelta(seconds=30), usegmt=True)

    failure = classify(http_error(429, **{"Retry-After": later}), now=NOW)

    assert failure.category == Category.RATE_LIMITED
    assert failure.retry_after == 30.0
    assert failure.transient


def test_a_401_asks_for_a_token_in_settings(http_error):
    failure = classify(http_error(401))

    assert failure.category == Category.AUTH
    assert not failure.transient
    assert "Access was refused by 127.0.0.1" in failure.message
    assert "Settings" in failure.message
    assert "Response body:\nrefused /401" in failure.detail


def test_a_404_names_the_missing_link(http_error, http_server):
    failure = classify(http_error(404))

    assert failure.category == Category.NOT_FOUND
    assert f"http://127.0.0.1:{http_server.server_port}/404" in failure.message
    assert failure.retry_after is None


@pytest.mark.parametrize(
    ("status", "category"),
    [
        (403, Category.AUTH),
        (410, Category.NOT_FOUND),
        (408, Category.TIMEOUT),
        (500, Category.SERVER),
        (400, Category.VALIDATION),
    ],
)
def test_each_http_status_has_its_category(http_error, status, category):
    assert classify(http_error(status)).category == category


def test_retry_after_is_ignored_outside_429_and_5xx(http_error):
    assert classify(http_error(401, **{"Retry-After": "7"})).retry_after is None


# --- Operating system -------------------------------------------------------------------


def test_writing_into_a_read_only_directory_is_a_permission_error(read_only_dir):
    target = read_only_dir / "model.bin"

    failure = classify(raised_by(lambda: target.write_bytes(b"weights")))

    assert failure.category == Category.PERMISSION
    assert not failure.transient
    assert str(target) in failure.message


def test_copying_onto_a_full_disk_names_the_file_it_was_writing(full_disk, tmp_path):
    source, target = tmp_path / "download.bin", (full_disk or tmp_path) / "model.bin"
    source.write_bytes(b"\0" * 1_000_000)

    failure = classify(no_space(lambda: shutil.copyfile(source, target), full_disk, target))

    assert failure.category == Category.DISK_FULL
    assert f"The disk is full, so {target} could not be written" in failure.message
    assert "Free some disk space" in failure.message


def test_writing_a_megabyte_onto_a_full_disk_is_disk_full(full_disk, tmp_path):
    target = (full_disk or tmp_path) / "model.bin"

    failure = classify(no_space(lambda: target.write_bytes(b"\0" * 1_000_000), full_disk, target))

    assert failure.category == Category.DISK_FULL
    assert not failure.transient


def test_a_missing_file_is_not_found(tmp_path):
    missing = tmp_path / "workflow.json"

    failure = classify(raised_by(missing.read_text))

    assert failure.category == Category.NOT_FOUND
    assert f"{missing} does not exist" in failure.message


def test_a_refused_socket_is_a_network_error():
    port = closed_port()

    failure = classify(raised_by(lambda: socket.create_connection(("127.0.0.1", port))))

    assert failure.category == Category.NETWORK
    assert "connection refused" in failure.message


def test_an_asyncio_timeout_is_a_timeout():
    slow = asyncio.wait_for(asyncio.Event().wait(), timeout=0.01)

    failure = classify(raised_by(lambda: asyncio.run(slow)))

    assert failure.category == Category.TIMEOUT
    assert failure.message == "The operation timed out. This is retried automatically."


# --- Subprocesses -------------------------------------------------------------------------


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=True, **kwargs)


def test_cloning_a_missing_repository_is_not_found(tmp_path):
    failed = raised_by(lambda: run("git", "clone", str(tmp_path / "nope"), str(tmp_path / "out")))

    failure = classify(failed)

    assert failure.category == Category.NOT_FOUND
    assert failure.message.startswith("git could not find what it was asked for")
    assert f"fatal: repository '{tmp_path / 'nope'}' does not exist" in failure.detail
    assert "Command: git clone" in failure.detail


def test_git_against_a_closed_port_is_a_network_error(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/x.git"

    failure = classify(raised_by(lambda: run("git", "-C", str(tmp_path), "ls-remote", url)))

    assert failure.category == Category.NETWORK
    assert failure.message.startswith("git could not reach the server")


def test_git_cloning_into_a_read_only_directory_is_a_permission_error(tmp_path, read_only_dir):
    (tmp_path / "repo").mkdir()
    run("git", "init", "-q", str(tmp_path / "repo"))

    failure = classify(
        raised_by(
            lambda: run("git", "clone", "-q", str(tmp_path / "repo"), str(read_only_dir / "out"))
        )
    )

    assert failure.category == Category.PERMISSION
    assert failure.message.startswith("git was not allowed to change a file or folder")


@pytest.mark.parametrize(("status", "category"), [(403, Category.AUTH), (404, Category.NOT_FOUND)])
def test_git_reads_the_http_status_a_server_answers(http_server, tmp_path, status, category):
    url = f"http://127.0.0.1:{http_server.server_port}/{status}/x.git"

    failure = classify(raised_by(lambda: run("git", "-C", str(tmp_path), "ls-remote", url)))

    assert failure.category == category


def test_pip_without_a_matching_package_is_a_dependency_error():
    pip = (sys.executable, "-m", "pip", "install", "--no-index", "comfyhub-no-such-package")

    failure = classify(raised_by(lambda: run(*pip)))

    assert failure.category == Category.DEPENDENCY
    assert os.path.basename(sys.executable) in failure.message
    assert '"ERROR: No matching distribution found for comfyhub-no-such-package"' in (
        failure.message
    )


def test_a_pip_conflict_quotes_the_conflict_not_the_help_link():
    # pip's own text; making real pip find a conflict needs packages we cannot install here.
    pip_output = (
        "ERROR: Cannot install torch==2.1 and xformers because these package versions have "
        "conflicting dependencies.\n\nERROR: ResolutionImpossible: for help visit https://pip.pypa.io"
    )

    failure = classify(raised_by(lambda: run(sys.executable, "-c", f"exit({pip_output!r})")))

    assert failure.category == Category.DEPENDENCY
    assert '"ERROR: Cannot install torch==2.1 and xformers because' in failure.message


def test_a_command_that_runs_too_long_is_a_timeout():
    failure = classify(raised_by(lambda: run("sleep", "5", timeout=0.1)))

    assert failure.category == Category.TIMEOUT
    assert "sleep did not finish within 0.1 seconds" in failure.message
    assert "Command: sleep 5" in failure.detail


# --- Input and our own errors -----------------------------------------------------------


def test_broken_json_is_invalid_input():
    failure = classify(raised_by(lambda: json.loads("{oops")))

    assert failure.category == Category.VALIDATION
    assert "not valid JSON (line 1 column 2)" in failure.message


def test_undecodable_text_is_invalid_input():
    failure = classify(raised_by(lambda: b"model \xff".decode()))

    assert failure.category == Category.VALIDATION
    assert "not valid utf-8 text (byte 6)" in failure.message


def test_a_django_validation_error_quotes_its_messages():
    failure = classify(raised_by(lambda: URLValidator()("not a link")))

    assert failure.category == Category.VALIDATION
    assert "Enter a valid URL." in failure.message


def test_a_job_error_keeps_its_category_message_and_wait():
    error = JobError("The file's checksum is wrong.", category="integrity", detail="abc != def")

    failure = classify(error)

    assert (failure.category, failure.message) == (Category.INTEGRITY, error.message)
    assert failure.detail.startswith("recovery.errors.JobError: The file's checksum is wrong.")
    assert "abc != def" in failure.detail
    assert classify(JobError("Slow down.", retry_after=12)).retry_after == 12


def test_a_cancelled_job_is_cancelled():
    assert classify(Cancelled()).category == Category.CANCELLED


def test_an_unexpected_error_is_unknown():
    failure = classify(raised_by(lambda: {}["model"]))

    assert failure.category == Category.UNKNOWN
    assert failure.message.startswith("Something unexpected went wrong: KeyError. Retry;")
    assert "Traceback (most recent call last)" in failure.detail


def test_a_huge_detail_is_capped_and_keeps_the_end():
    failure = classify(raised_by(lambda: float("9" * 20_000 + "x")))

    assert failure.category == Category.UNKNOWN
    assert len(failure.detail) <= 8000
    assert failure.detail.startswith("ValueError: could not convert string to float: '999")
    assert failure.detail.endswith("x'")


# --- Redaction ----------------------------------------------------------------------------


@pytest.fixture
def secret_settings(settings):
    settings.HF_TOKEN = "sekrit+value/123"
    settings.RECOVERY_SECRET_SETTINGS = ["HF_TOKEN", "MISSING_SETTING"]
    return settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc", "Authorization: [redacted]"),
        ("proxy-authorization: Basic dXNlcjpwdw==\nnext", "proxy-authorization: [redacted]\nnext"),
        ("{'authorization': 'Bearer abc', 'x': 1}", "{'authorization': '[redacted]', 'x': 1}"),
        ("[(b'Authorization', b'Bearer abc')]", "[(b'Authorization', b'[redacted]')]"),
        ("GET /m?x=1&API_KEY=abc&sig=d#f", "GET /m?x=1&API_KEY=[redacted]&sig=[redacted]#f"),
        ("/m?access_token=abc", "/m?access_token=[redacted]"),
        ("clone https://me:pw@git.example/r", "clone https://me:[redacted]@git.example/r"),
        ("http://host:8080/path@x", "http://host:8080/path@x"),
        (f"token {HF_TOKEN}.", "token [redacted]."),
        ("key sekrit+value/123 or sekrit%2Bvalue%2F123", "key [redacted] or [redacted]"),
    ],
)
def test_redact_removes_every_secret_shape(secret_settings, text, expected):
    assert redact(text) == expected


def test_a_failure_never_shows_a_secret(secret_settings, http_error):
    refused = http_error(401, query=f"?token={HF_TOKEN}")

    def download():
        raise RuntimeError(f"download with {HF_TOKEN} / sekrit+value/123 failed") from refused

    failures = [classify(refused), classify(raised_by(download))]

    assert "refused /401?token=[redacted] for Bearer [redacted]" in failures[0].detail
    assert "download with [redacted] / [redacted] failed" in failures[1].detail
    for text in [part for failure in failures for part in (failure.message, failure.detail)]:
        assert HF_TOKEN not in text
        assert "sekrit+value/123" not in text


def test_the_logging_filter_removes_secrets_from_messages_and_tracebacks(secret_settings):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.redact")
    logger.addHandler(handler)
    try:
        raise ValueError(f"bad token {HF_TOKEN}")
    except ValueError:
        logger.exception("fetching %s", "https://hf.example/m?token=sekrit+value/123")
    finally:
        logger.removeHandler(handler)

    assert "fetching https://hf.example/m?token=[redacted]" in stream.getvalue()
    assert "ValueError: bad token [redacted]" in stream.getvalue()
    assert HF_TOKEN not in stream.getvalue()
