"""Projects on the real ComfyUI v0.8.0 and real packs (tests/realcomfy.py): what the
stand-in of tests/fakecomfy.py cannot show — real requirements resolved by uv, a real
ComfyUI started and asked, real import failures.

The session shares one uv cache and one set of git mirrors: the first test resolves
ComfyUI's requirements cold (~6 GB), the next ones find them in the cache. pytest runs
these in file order, so the order below is the cheap one: the three projects resolved as
of ComfyUI's commit first, the one resolved at today's versions last.
"""

import json
import shutil
import subprocess

import pytest

from comfyhub.projects import install, runtime
from comfyhub.projects.models import Project, ProjectStatus
from recovery.engine import run_foreground
from tests.conftest import command_json
from tests.fakecomfy import make_repo
from tests.realcomfy import (
    COMFYUI,
    GGUF,
    bundles_dir,
    kill_processes_under,
    missing_bundles,
    real_github,
    remote_commit,
)

pytestmark = [pytest.mark.real, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# A workflow of core nodes that need no model file: nothing is missing when ComfyUI runs.
CORE = {
    "nodes": [
        {
            "id": 1,
            "type": "EmptyLatentImage",
            "mode": 0,
            "outputs": [{"name": "LATENT", "type": "LATENT", "links": [1]}],
            "widgets_values": [512, 512, 1],
        },
        {
            "id": 2,
            "type": "LatentUpscale",
            "mode": 0,
            "inputs": [{"name": "samples", "type": "LATENT", "link": 1}],
            "outputs": [{"name": "LATENT", "type": "LATENT", "links": [2]}],
            "widgets_values": ["nearest-exact", 768, 768, "disabled"],
        },
        {
            "id": 3,
            "type": "SaveLatent",
            "mode": 0,
            "inputs": [{"name": "samples", "type": "LATENT", "link": 2}],
            "widgets_values": ["latents/ComfyHub"],
        },
    ],
    "links": [[1, 1, 0, 2, 0, "LATENT"], [2, 2, 0, 3, 0, "LATENT"]],
}
BROKEN_ERROR = "the weights of foo are missing"
NODE_CLASS = """
class {name}:
    CATEGORY = "comfyhub-tests"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{}}}}

    def run(self):
        return ()
"""


def pack_source(*names: str) -> str:
    """A pack's __init__.py defining these node types."""
    classes = "".join(NODE_CLASS.format(name=name) for name in names)
    mappings = ", ".join(f'"{name}": {name}' for name in names)
    return f"{classes}\nNODE_CLASS_MAPPINGS = {{{mappings}}}\n"


@pytest.fixture(scope="session")
def github(tmp_path_factory):
    """ComfyUI and the two real packs at https://github.com/..., for the whole session."""
    bundles = bundles_dir()
    if bundles is None:
        pytest.skip(missing_bundles())
    with real_github(tmp_path_factory.mktemp("github"), bundles).mapped() as mapped:
        yield mapped


@pytest.fixture(scope="session")
def real_folders(tmp_path_factory):
    """One data dir (its uv cache and git mirrors), projects and models folder for the
    session, on one filesystem (uv hard-links from its cache); removed at its end, with
    anything a failed test left running in it."""
    root = tmp_path_factory.mktemp("real")
    for name in ("data", "projects", "models"):
        (root / name).mkdir()
    yield root
    kill_processes_under(root)
    shutil.rmtree(root, ignore_errors=True)  # ~6 GB of cache: not kept with old basetemps


@pytest.fixture(scope="session")
def comfyui(github) -> str:
    """The commit of ComfyUI v0.8.0, as git finds it at its GitHub address."""
    return remote_commit(COMFYUI, "refs/tags/v0.8.0")


@pytest.fixture
def real(settings, transactional_db, github, real_folders):
    """Settings for a project on the real ComfyUI; every project the test made is deleted
    after it (ComfyUI stopped, folder and venv removed). Returns the GitHub folder, whose
    `publish` puts a made-up pack at a GitHub address."""
    settings.DATA_DIR = real_folders / "data"
    settings.PROJECTS_DIR = real_folders / "projects"
    settings.MODELS_DIR = real_folders / "models"
    settings.ALLOW_LOCAL_REPOS = False
    settings.PORT_RANGE = (4600, 4699)  # no other test file uses it
    settings.RECOVERY_BACKOFF_SCALE = 0
    yield github
    try:
        for project in Project.objects.all():
            runtime.delete(project)
    finally:
        kill_processes_under(settings.PROJECTS_DIR)


def node(node_id: int, node_type: str, *values) -> dict:
    return {"id": node_id, "type": node_type, "mode": 0, "widgets_values": list(values)}


def build(name: str, comfyui: str, workflow: dict, nodes=()) -> Project:
    spec = {
        "comfyui": {"repository": COMFYUI, "commit": comfyui},
        "nodes": list(nodes),
        "models": [],
        "workflow": workflow,
        "workflow_name": name,
    }
    project = install.create(name, spec)
    run_foreground(project.install_job_id)
    project.refresh_from_db()
    return project


def story(project: Project) -> str:
    """What went wrong, for an assertion's message: the job's error, the last check, the
    tails of the install log and of ComfyUI's log."""
    tail = (
        project.install_log.read_text().splitlines()[-25:] if project.install_log.exists() else []
    )
    return "\n".join(
        [
            f"install job: {project.install_job.error_message}",
            f"last check: {json.dumps(project.last_check, indent=1)}",
            *tail,
            runtime.log_tail(project),
        ]
    )


def in_venv(project: Project, code: str) -> subprocess.CompletedProcess:
    python = project.venv / "bin" / "python"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_core_workflow_on_comfyui_v0_8_0_ends_ready_with_the_default_settings(real, comfyui):
    project = build("Core", comfyui, CORE)
    assert project.status == ProjectStatus.READY, story(project)
    assert project.last_check["ok"] and project.last_check["node_types_missing"] == []
    assert project.comfyui_commit == comfyui
    assert project.resolved_as_of.startswith("2026-01-0")
    # The packages of ComfyUI's date start it: no module had to be installed after.
    assert "== fix:" not in project.install_log.read_text()


def test_the_real_gguf_pack_installs_its_requirements_and_a_broken_pack_shows_its_error(
    real, comfyui, tmp_path
):
    # One project for both: one install and one ComfyUI boot instead of two.
    repo, commits = make_repo(
        tmp_path / "broken-pack",
        {"__init__.py": pack_source("BrokenNode")},
        {"__init__.py": f"raise ImportError({BROKEN_ERROR!r})\n"},
    )
    broken = real.publish(repo, "comfyhub-tests", "broken-pack")
    gguf = {"repository": GGUF, "commit": remote_commit(GGUF, "refs/heads/main")}
    workflow = {"nodes": [node(1, "UnetLoaderGGUF", "flux1-dev-Q4_0.gguf")], "links": []}
    project = build(
        "Quantised", comfyui, workflow, [gguf, {"repository": broken, "commit": commits[1]}]
    )
    assert project.status == ProjectStatus.ATTENTION, story(project)
    assert "UnetLoaderGGUF" not in project.last_check["node_types_missing"]
    assert {"name": "broken-pack", "error": BROKEN_ERROR} in project.last_check["packs_failed"]
    imported = in_venv(project, "import gguf")
    assert imported.returncode == 0, imported.stderr


def test_a_pack_whose_history_dropped_a_node_type_is_pinned_back_by_fix_project(
    real, comfyui, tmp_path
):
    repo, (first, second) = make_repo(
        tmp_path / "dropping-pack",
        {"__init__.py": pack_source("OldSampler", "KeptNode")},
        {"__init__.py": pack_source("KeptNode")},
    )
    url = real.publish(repo, "comfyhub-tests", "dropping-pack")
    pack = {"repository": url, "commit": second, "node_types": ["OldSampler", "KeptNode"]}
    workflow = {"nodes": [node(1, "OldSampler"), node(2, "KeptNode")], "links": []}
    project = build("Dropping", comfyui, workflow, [pack])
    assert project.status == ProjectStatus.ATTENTION, story(project)
    assert project.last_check["node_types_missing"] == ["OldSampler"]
    pins = [fix for fix in project.last_check["fixes"] if fix["kind"] == "pin_pack"]
    assert [(pin["target"], pin["commit"]) for pin in pins] == [(url, first)]
    code, report = command_json("fix_project", project.slug)
    assert code == 0 and report["status"] == ProjectStatus.READY, report
    assert report["check"]["ok"] and report["check"]["node_types_missing"] == []
    project.refresh_from_db()
    assert project.status == ProjectStatus.READY


def test_at_the_latest_versions_the_check_installs_the_missing_requests_and_ends_ready(
    real, settings, comfyui
):
    # v0.8.0 imports requests without listing it; a newer huggingface-hub stopped
    # bringing it along, so ComfyUI exits at start until the check installs it.
    settings.RESOLVE_AS_OF = "latest"
    project = build("Latest", comfyui, CORE)
    assert project.status == ProjectStatus.READY, story(project)
    log = project.install_log.read_text().splitlines()
    fixes = [line for line in log if line.startswith("== fix:") and "requests" in line]
    assert fixes and "module requests: ComfyUI does not start without it" in fixes[0]
    assert in_venv(project, "import requests").returncode == 0
