"""Packages as of a date (COMFYHUB_RESOLVE_AS_OF): the cut-off comes from the pinned
commits' dates in real local git repos, and real uv installs under it.

The find-links wheels of test_envs carry no upload time (uv keeps them under any cut-off),
so what the cut-off leaves out is shown by a loopback index whose files are dated.
"""

import json
import sys
from pathlib import Path

import pytest

from comfyhub.projects import envs, restore
from comfyhub.projects.models import Project
from tests.fakecomfy import MAIN_PY, make_repo
from tests.test_envs import build, installed, pack
from tests.wheels import DatedIndex, offline_index, seed_wheels, write_pip_conf, write_wheel

pytestmark = pytest.mark.django_db(transaction=True)
COMFYUI_DAY = "2026-01-07T21:47:02Z"
PACK_DAY = "2026-03-01T08:00:00Z"


def dated(monkeypatch, moment: str) -> None:
    """Commits made from now on are dated `moment`."""
    monkeypatch.setenv("GIT_COMMITTER_DATE", moment)
    monkeypatch.setenv("GIT_AUTHOR_DATE", moment)


@pytest.fixture
def wheels(tmp_path, monkeypatch, project_dirs):
    folder = offline_index(tmp_path, monkeypatch)
    write_wheel(folder, "torch", "2.5.0")
    write_wheel(folder, "extra", "1.0")
    return folder


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    dated(monkeypatch, COMFYUI_DAY)
    files = {"main.py": MAIN_PY, "requirements.txt": "torch==2.5.0\n"}
    return make_repo(tmp_path / "repos" / "ComfyUI", files, {"README.md": "fake\n"})


def install_lines(project: Project) -> list[str]:
    return [
        line
        for line in project.install_log.read_text().splitlines()
        if line.startswith("$") and (" pip install " in line or " pip sync " in line)
    ]


def test_comfyuis_requirements_resolve_as_of_its_commit_plus_a_day(wheels, comfy):
    project = build("Dated", comfy)
    assert project.resolved_as_of == "2026-01-08T21:47:02Z"
    [line] = install_lines(project)
    assert "--exclude-newer 2026-01-08T21:47:02Z" in line
    assert "--index-strategy" not in line  # no undated index: uv's first-index guard stays
    why = "(COMFYHUB_RESOLVE_AS_OF=commit: ComfyUI's commit of 2026-01-07, plus a day)"
    assert f"== packages as of 2026-01-08T21:47:02Z {why}" in project.install_log.read_text()


def test_a_pack_newer_than_comfyui_gets_its_own_later_cut_off(wheels, comfy, tmp_path, monkeypatch):
    dated(monkeypatch, PACK_DAY)
    newer = pack(tmp_path, "Newer-Nodes", "extra\n")
    project = build("Mixed", comfy, [newer])
    folder = project.comfyui_dir / "custom_nodes" / "Newer-Nodes"
    assert envs.as_of_for(project, folder) == "2026-03-02T08:00:00Z"
    assert envs.as_of_for(project) == project.resolved_as_of == "2026-01-08T21:47:02Z"
    assert "--exclude-newer 2026-03-02T08:00:00Z" in install_lines(project)[-1]
    assert "Newer-Nodes's commit of 2026-03-01" in project.install_log.read_text()


def test_a_pack_unzipped_from_the_registry_gets_comfyuis_cut_off(project_dirs, monkeypatch):
    dated(monkeypatch, COMFYUI_DAY)
    project = Project.objects.create(name="Zipped", slug="zipped")
    make_repo(project.comfyui_dir, {"main.py": MAIN_PY}, {"README.md": "fake\n"})
    folder = project.comfyui_dir / "custom_nodes" / "Zip-Nodes"
    folder.mkdir(parents=True)
    assert envs.as_of_for(project, folder) == "2026-01-08T21:47:02Z"
    assert "Zip-Nodes is no git checkout" in envs.installer_for(project, folder).why


def test_latest_has_no_cut_off_and_a_given_date_is_used_as_given(wheels, comfy, settings):
    settings.RESOLVE_AS_OF = "latest"
    project = build("Latest", comfy)
    assert envs.as_of_for(project) == project.resolved_as_of == ""
    assert "--exclude-newer" not in install_lines(project)[0]
    assert (
        "== packages as of today (COMFYHUB_RESOLVE_AS_OF=latest)" in project.install_log.read_text()
    )
    settings.RESOLVE_AS_OF = "2025-06-30T23:59:59Z"
    assert envs.as_of_for(project) == "2025-06-30T23:59:59Z"
    assert envs.installer_for(project).why == "COMFYHUB_RESOLVE_AS_OF=2025-06-30T23:59:59Z"


def test_uv_leaves_out_a_version_uploaded_after_the_cut_off(tmp_path, monkeypatch, project_dirs):
    monkeypatch.delenv("UV_OFFLINE", raising=False)
    seed_wheels(tmp_path / "seeds")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("foo\n")
    with DatedIndex(tmp_path / "index") as index:
        index.add("foo", "1.0", "2025-06-01T00:00:00Z")
        index.add("foo", "2.0", "2026-03-01T00:00:00Z")
        conf = dict(index_url=index.url("simple"), find_links=tmp_path / "seeds")
        write_pip_conf(tmp_path / "pip.conf", monkeypatch, **conf)
        latest = envs.Installer(tmp_path / "venv", tmp_path / "install.log")
        latest.make_venv()
        assert latest.trial(requirements, None) == {"foo": ("", "2.0")}
        as_of = envs.Installer(tmp_path / "venv", tmp_path / "install.log", "2026-01-08T23:59:59Z")
        assert as_of.trial(requirements, None) == {"foo": ("", "1.0")}
        as_of.install(requirements, None)
    assert envs.frozen_versions(as_of.freeze())["foo"] == "1.0"


def test_a_packs_install_py_sees_the_cut_off_in_its_environment(wheels, comfy, tmp_path):
    seen = tmp_path / "seen.txt"
    names = ("UV_EXCLUDE_NEWER", "UV_INDEX_STRATEGY", "PIP_UPLOADED_PRIOR_TO", "UV_CONSTRAINT")
    values = f"[os.environ.get(name) for name in {names!r}]"
    script = f"import json, os\njson.dump({values}, open({str(seen)!r}, 'w'))\n"
    build("Scripted", comfy, [pack(tmp_path, "Script-Nodes", "extra\n", **{"install.py": script})])
    as_of, strategy, pip_as_of, constraint = json.loads(seen.read_text())
    assert as_of == pip_as_of == "2026-01-08T21:47:02Z" and strategy is None
    assert constraint.endswith("constraints.txt")


def test_a_restore_point_records_the_latest_cut_off_and_rollback_syncs_under_it(
    wheels, comfy, tmp_path, monkeypatch
):
    project = build("Points", comfy)
    dated(monkeypatch, PACK_DAY)
    newer = pack(tmp_path, "Newer-Nodes", "extra\n")
    first = restore.add_node(project, newer["repository"], newer["commit"])
    second = restore.take(project, "after the newer pack")
    assert first.resolved_as_of == "2026-01-08T21:47:02Z"
    assert second.resolved_as_of == "2026-03-02T08:00:00Z"  # its packages need the later one
    restore.rollback(project, first)
    sync = install_lines(project)[-1]
    assert " pip sync " in sync and "--exclude-newer 2026-01-08T21:47:02Z" in sync
    assert project.resolved_as_of == first.resolved_as_of and "extra" not in installed(project)


def test_a_pip_that_knows_upload_dates_gets_them_and_an_older_one_says_it_cannot(
    wheels, comfy, settings
):
    this_pip = envs.Installer(
        Path(sys.executable).parents[1], wheels / "log", "2026-01-08T23:59:59Z"
    )
    assert this_pip.pip_as_of() == ("--uploaded-prior-to", "2026-01-08T23:59:59Z")
    settings.INSTALLER = "pip"
    project = build("Old-Pip", comfy)  # the venv's pip is Python 3.11's own, pip 23
    assert installed(project)["torch"] == "2.5.0"
    assert (
        "packages as of 2026-01-08T21:47:02Z could not be applied"
        in project.install_log.read_text()
    )


def test_an_undated_file_index_lets_uv_look_past_it_under_a_cut_off(tmp_path, monkeypatch):
    conf = dict(extra_index_url="file:///opt/pypi/simple https://mirror.example/simple")
    write_pip_conf(tmp_path / "pip.conf", monkeypatch, **conf)
    assert envs.undated_index(envs.pip_config())
    assert envs.as_of_environment("2026-01-08T21:47:02Z")["UV_INDEX_STRATEGY"] == (
        "unsafe-best-match"
    )
    write_pip_conf(tmp_path / "dated.conf", monkeypatch, index_url="https://mirror.example/simple")
    assert "UV_INDEX_STRATEGY" not in envs.as_of_environment("2026-01-08T21:47:02Z")
