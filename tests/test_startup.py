"""What `manage.py download` loads before its first byte (issue 13: start-up counts).

No timing assertions (a busy machine makes them flaky): the modules a command imports are
what its start-up costs, and they do not depend on the machine's load.
"""

import importlib.util
import os
import subprocess
import sys

from tests.conftest import ROOT

# Each costs a download command time and is needed only by other work: the ASGI server,
# token sealing, a project's install/check/restore (pip/uv, node map, workflow analysis)
# and the official template catalog.
NOT_FOR_A_DOWNLOAD = [
    "daphne",
    "cryptography",
    "comfyhub.projects.install",
    "comfyhub.projects.check",
    "comfyhub.projects.restore",
    "comfyhub.projects.envs",
    "comfyhub.workflows.analyze",
    "comfyhub.workflows.nodemap",
    "comfyui_workflow_templates_json",
]

SHOW_MODULES = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfyhub.settings")
import django
django.setup()
from django.core.management import load_command_class
load_command_class("comfyhub.library", "download")
print("\\n".join(sorted(sys.modules)))
"""


def modules_of_a_download_command(data_dir) -> set[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMFYHUB_")}
    env["COMFYHUB_DATA_DIR"] = str(data_dir)
    result = subprocess.run(
        [sys.executable, "-c", SHOW_MODULES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(result.stdout.split())


def test_the_modules_a_download_must_not_load_exist():
    missing = [name for name in NOT_FOR_A_DOWNLOAD if importlib.util.find_spec(name) is None]
    assert missing == []


def test_a_download_command_loads_the_engine_and_nothing_it_does_not_need(tmp_path):
    loaded = modules_of_a_download_command(tmp_path)
    assert {"comfyhub.library.fetch", "recovery.engine", "httpx"} <= loaded
    assert sorted(loaded.intersection(NOT_FOR_A_DOWNLOAD)) == []
