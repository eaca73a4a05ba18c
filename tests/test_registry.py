"""Comfy Registry installs against a local fake registry: the exact version, a safe unpack,
git when the registry lacks the version, pins, restore points and export."""

import io
import os
import stat
import zipfile

import pytest

from comfyhub.library.models import Download
from comfyhub.projects import install, registry, restore, specs, tools
from comfyhub.projects.export import launcher_json
from comfyhub.projects.models import Project, ProjectStatus
from recovery.engine import run_foreground
from recovery.errors import BreakerOpen, JobError
from recovery.models import Category, CircuitBreaker
from tests.fakeapis import FakeRegistry
from tests.fakecomfy import comfyui_repo, make_repo

pytestmark = pytest.mark.django_db(transaction=True)

# Provides the node type the registry nodes below need (registry_node's "Styler").
PACK = {
    "__init__.py": "NODE_CLASS_MAPPINGS = {'Styler': object}\n",
    "nodes/styler.py": "VERSION = 1\n",
}


def pack_zip(files: dict[str, str | bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def link_zip(name: str, target: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        member = zipfile.ZipInfo(name)
        member.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(member, target)
    return out.getvalue()


@pytest.fixture
def fake_registry(settings, project_dirs):
    with FakeRegistry() as running:
        settings.REGISTRY_URL = running.base
        yield running


@pytest.fixture
def project(project_dirs) -> Project:
    return Project.objects.create(name="Packs", slug="packs")


def registry_node(version: str = "1.0.0", **extra) -> dict:
    node = {"repository": "", "commit": "", "cnr_id": "fake-pack", "version": version}
    return {**node, "reason": "properties.cnr_id", "node_types": ["Styler"], **extra}


def files_under(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def build(tmp_path, nodes: list[dict]) -> Project:
    comfy, commits = comfyui_repo(tmp_path / "repos")
    spec = {"comfyui": {"repository": str(comfy), "commit": commits[0]}, "nodes": nodes}
    project = install.create("Registry", {**spec, "models": [], "workflow": {"nodes": []}})
    run_foreground(project.install_job_id)
    project.refresh_from_db()
    return project


def test_a_registry_node_installs_its_version_with_tracking_pin_and_export(fake_registry, tmp_path):
    fake_registry.publish("fake-pack", "1.0.0", pack_zip(PACK))
    fake_registry.publish("fake-pack", "2.0.0", pack_zip({**PACK, "nodes/styler.py": "V = 2\n"}))
    project = build(tmp_path, [registry_node("1.0.0")])
    folder = project.comfyui_dir / "custom_nodes" / "fake-pack"
    assert project.status == ProjectStatus.READY
    assert (folder / "nodes/styler.py").read_text() == "VERSION = 1\n"
    assert (folder / ".tracking").read_text() == "__init__.py\nnodes/styler.py"
    assert project.node_pins == [
        {
            "repository": "",
            "name": "fake-pack",
            "commit": "",
            "cnr_id": "fake-pack",
            "version": "1.0.0",
        }
    ]
    snapshot = launcher_json(project)["snapshot_json"]
    assert snapshot["cnr_custom_nodes"] == {"fake-pack": "1.0.0"}
    assert snapshot["git_custom_nodes"] == {}


def test_without_a_version_the_registry_latest_is_installed_and_pinned(fake_registry, project):
    fake_registry.publish("fake-pack", "1.0.0", pack_zip(PACK))
    fake_registry.publish("fake-pack", "2.0.0", pack_zip({**PACK, "nodes/styler.py": "V = 2\n"}))
    pin = install.install_node(project, registry_node(version=""))
    assert pin["version"] == "2.0.0"
    assert "version" not in fake_registry.requests[0]["query"]
    folder = project.comfyui_dir / "custom_nodes" / "fake-pack"
    assert (folder / "nodes/styler.py").read_text() == "V = 2\n"


def test_a_version_the_registry_lacks_falls_back_to_git_at_the_pinned_commit(
    fake_registry, project, tmp_path
):
    fake_registry.publish("fake-pack", "1.0.0", pack_zip(PACK))
    first = {"__init__.py": PACK["__init__.py"]}
    repo, commits = make_repo(tmp_path / "repos/Styler-Nodes", first, {"VERSION": "2\n"})
    node = registry_node("9.9.9", repository=str(repo), commit=commits[0])
    pin = install.install_node(project, node)
    assert pin == {"repository": str(repo), "name": "Styler-Nodes", "commit": commits[0]}
    assert not (project.comfyui_dir / "custom_nodes/Styler-Nodes/VERSION").exists()
    assert "the Comfy Registry has no fake-pack@9.9.9" in project.install_log.read_text()


def test_a_registry_answering_another_version_than_asked_counts_as_lacking_it(fake_registry):
    fake_registry.publish("fake-pack", "2.0.0", pack_zip(PACK))
    fake_registry.latest_for_unknown = True
    assert registry.install_info("fake-pack", "1.0.0") is None
    assert registry.install_info("fake-pack", "2.0.0")["version"] == "2.0.0"


def test_a_pack_the_registry_lacks_and_without_a_repository_fails_as_not_found(
    fake_registry, project
):
    with pytest.raises(JobError) as error:
        install.install_node(project, registry_node("9.9.9"))
    assert error.value.category == Category.NOT_FOUND
    assert "fake-pack@9.9.9" in error.value.message


HOSTILE = {  # kind: (the zip, what the error says)
    "dot-dot": (lambda tmp: pack_zip({**PACK, "../../../../x": "out"}), "leads out of"),
    "absolute": (lambda tmp: pack_zip({**PACK, str(tmp / "x"): "out"}), "absolute path"),
    "symlink": (lambda tmp: link_zip("x", str(tmp)), "a link or a special file"),
    "too many members": (lambda tmp: pack_zip({f"{n}.py": "" for n in range(6)}), "6 members"),
    "too large": (lambda tmp: pack_zip({**PACK, "w.bin": b"\0" * 6000}), "more than 5000"),
    "tracking folder": (lambda tmp: pack_zip({**PACK, ".tracking/x": "x"}), "take the place of"),
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_zip_fails_as_validation_and_writes_nothing_outside_the_pack_folder(
    fake_registry, project, tmp_path, monkeypatch, kind
):
    # The bounds are constants; small ones make the zips over them small too.
    monkeypatch.setattr(registry, "MAX_MEMBERS", 5)
    monkeypatch.setattr(registry, "MAX_BYTES", 5000)
    archive, says = HOSTILE[kind]
    fake_registry.publish("fake-pack", "1.0.0", archive(tmp_path))
    with pytest.raises(JobError) as error:
        install.install_node(project, registry_node())
    assert error.value.category == Category.VALIDATION and says in error.value.message
    assert not list(tmp_path.rglob("x")) and not project.comfyui_dir.exists()


def test_an_unpack_a_killed_worker_left_behind_is_cleaned_before_the_next(fake_registry, project):
    fake_registry.publish("fake-pack", "1.0.0", pack_zip(PACK))
    leftover = project.comfyui_dir / "custom_nodes" / ".fake-pack.unpacking.disabled"
    leftover.mkdir(parents=True)
    (leftover / "half.py").write_text("")
    install.install_node(project, registry_node())
    assert os.listdir(project.comfyui_dir / "custom_nodes") == ["fake-pack"]
    assert files_under(project.comfyui_dir / "custom_nodes/fake-pack") == [
        ".tracking",
        "__init__.py",
        "nodes/styler.py",
    ]


def test_a_dropped_zip_download_resumes_through_the_download_engine(fake_registry, project):
    weights = os.urandom(400_000)  # random: the zip stays as large as its contents
    archive = pack_zip({**PACK, "weights.bin": weights})
    fake_registry.publish("fake-pack", "1.0.0", archive, script=["drop:150000"])
    install.install_node(project, registry_node())
    folder = project.comfyui_dir / "custom_nodes" / "fake-pack"
    assert (folder / "weights.bin").read_bytes() == weights
    zips = [r for r in fake_registry.requests if r["path"].endswith(".zip")]
    assert len(zips) == 2 and zips[1]["headers"]["range"] == "bytes=150000-"
    download = Download.objects.get()
    assert download.dest == ".downloads/registry/fake-pack/1.0.0.zip"


def test_the_registry_breaker_opens_after_failures_and_leaves_it_unasked(fake_registry, settings):
    settings.RECOVERY_BREAKER_THRESHOLD = 2
    fake_registry.outage = 503
    for _ in range(2):
        with pytest.raises(JobError) as error:
            registry.install_info("fake-pack", "1.0.0")
        assert error.value.category == Category.SERVER
    with pytest.raises(BreakerOpen):
        registry.install_info("fake-pack", "1.0.0")
    assert len(fake_registry.requests) == 2
    assert CircuitBreaker.objects.get(key="registry").state == "open"


def test_a_restore_point_keeps_the_registry_version_and_rollback_reinstalls_it(
    fake_registry, tmp_path
):
    fake_registry.publish("fake-pack", "1.0.0", pack_zip(PACK))
    project = build(tmp_path, [registry_node("1.0.0")])
    folder = project.comfyui_dir / "custom_nodes" / "fake-pack"
    point = restore.take(project, "test")
    assert point.node_pins == project.node_pins
    tools.remove_tree(folder)
    restore.rollback(project, point)
    assert files_under(folder) == [".tracking", "__init__.py", "nodes/styler.py"]


def test_a_registry_pack_cannot_be_moved_to_a_git_commit(project):
    pin = {"repository": "", "name": "fake-pack", "commit": "", "cnr_id": "fake-pack"}
    project.touch(node_pins=[{**pin, "version": "1.0.0"}])
    with pytest.raises(JobError) as error:
        restore.set_node_commit(project, "", "a" * 40)
    assert error.value.category == Category.VALIDATION
    assert "Comfy Registry at version 1.0.0" in error.value.message


def test_a_workflow_node_with_cnr_id_and_ver_becomes_a_project_with_that_registry_version(
    fake_registry, tmp_path
):
    fake_registry.publish("fake-pack", "1.0.0", pack_zip(PACK))
    fake_registry.publish("fake-pack", "2.0.0", pack_zip({**PACK, "VERSION": "2\n"}))
    properties = {"cnr_id": "fake-pack", "ver": "1.0.0"}
    workflow = {"nodes": [{"id": 1, "type": "Styler", "properties": properties}]}
    spec = specs.from_workflow(workflow, "Styled")
    comfy, commits = comfyui_repo(tmp_path / "repos")
    spec["comfyui"] = {"repository": str(comfy), "commit": commits[0]}
    project = install.create("Styled", spec)
    run_foreground(project.install_job_id)
    project.refresh_from_db()
    assert [(p["cnr_id"], p["version"]) for p in project.node_pins] == [("fake-pack", "1.0.0")]
    folder = project.comfyui_dir / "custom_nodes" / "fake-pack"
    assert not (folder / "VERSION").exists()
    # ComfyUI itself sees the node type the workflow needs.
    assert project.status == ProjectStatus.READY and project.last_check["ok"]
