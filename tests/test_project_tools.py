"""A project's subprocesses: output in the log line by line as it is printed, redacted."""

import subprocess
import sys
import threading

import pytest

from comfyhub.projects import install, tools
from comfyhub.projects.models import Project
from recovery.errors import JobError
from recovery.models import Category
from tests.conftest import free_port, wait_until


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def logged(log) -> str:
    return log.read_text() if log.exists() else ""


def test_output_reaches_the_log_while_the_command_still_runs(tmp_path):
    log, gate = tmp_path / "install.log", tmp_path / "gate"
    # Not flushed, as pip prints: it must still show while the command runs.
    code = (
        f"import os, time\nprint('Collecting', 'torch')\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)"
    )
    runner = threading.Thread(target=tools.run, args=(python(code), log))
    runner.start()
    try:
        wait_until(lambda: "Collecting torch" in logged(log), timeout=30, what="the line")
    finally:
        gate.touch()
        runner.join()


def test_a_timeout_keeps_what_was_printed_and_names_the_command(tmp_path):
    log = tmp_path / "install.log"
    code = "import time\nprint('Building wheel for insightface')\ntime.sleep(600)"
    with pytest.raises(JobError) as error:
        tools.run(python(code), log, timeout=3)
    assert error.value.category == Category.TIMEOUT
    assert "python -c" in error.value.message and "within 3 seconds" in error.value.message
    assert "Building wheel for insightface" in log.read_text()


def test_a_failing_command_still_returns_its_output_to_the_error(tmp_path):
    code = "import sys\nprint('resolving')\nsys.exit('ERROR: No matching distribution')"
    with pytest.raises(subprocess.CalledProcessError) as error:
        tools.run(python(code), tmp_path / "install.log")
    assert error.value.returncode == 1 and error.value.output == "resolving\n"
    assert "No matching distribution" in error.value.stderr


@pytest.mark.django_db
def test_a_custom_node_url_with_a_password_never_lands_in_the_install_log(project_dirs):
    project = Project.objects.create(name="Secret", slug="secret")
    url = f"https://user:hunter2@127.0.0.1:{free_port()}/nodes.git"
    with pytest.raises(subprocess.CalledProcessError):
        install.install_node(project, {"repository": url})
    text = project.install_log.read_text()
    assert "hunter2" not in text
    assert "git clone --mirror --quiet -- https://user:[redacted]@127" in text
    assert "== custom node https://user:[redacted]@127" in text
