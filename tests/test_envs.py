"""Python environments: uv with one shared cache, pip's configuration, protected torch.

Every package comes from a find-links folder of tiny wheels the test writes (a fake torch
2.5.0 and 2.0.0, `helper`, `extra`), named by a pip.conf the test writes: nothing from
this machine's pip configuration and no network.
"""

import pytest

from comfyhub.projects import check, envs, install, mirrors, restore, tools
from comfyhub.projects.models import Project, ProjectStatus
from recovery.engine import run_foreground
from recovery.models import Category, Job
from tests.fakecomfy import MAIN_PY, comfyui_repo, commit_files, make_repo
from tests.wheels import seed_wheels, write_wheel

pytestmark = pytest.mark.django_db(transaction=True)
PIP_VARIABLES = ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT")


def write_pip_conf(path, monkeypatch, **values) -> None:
    lines = ["[global]", *(f"{key.replace('_', '-')} = {value}" for key, value in values.items())]
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(path))
    for name in (*PIP_VARIABLES, "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def wheels(tmp_path, monkeypatch, project_dirs):
    folder = tmp_path / "wheels"
    seed_wheels(folder)
    write_wheel(folder, "torch", "2.5.0")
    write_wheel(folder, "torch", "2.0.0")
    write_wheel(folder, "helper", "1.0", ("torch>=2",))
    write_wheel(folder, "extra", "1.0")
    conf = dict(no_index="true", find_links=folder, extra_index_url="", constraint="")
    write_pip_conf(tmp_path / "pip.conf", monkeypatch, **conf)
    monkeypatch.setenv("UV_OFFLINE", "1")
    return folder


@pytest.fixture
def comfy(tmp_path):
    files = {"main.py": MAIN_PY, "requirements.txt": "torch==2.5.0\nhelper\n"}
    return make_repo(tmp_path / "repos" / "ComfyUI", files, {"README.md": "fake\n"})


def pack(tmp_path, name: str, requirements: str) -> dict:
    repo, commits = make_repo(
        tmp_path / "repos" / name,
        {"__init__.py": "", "requirements.txt": requirements},
        {"VERSION": "2\n"},
    )
    return {"repository": str(repo), "commit": commits[0]}


def build(name: str, comfy, nodes=()) -> Project:
    repo, commits = comfy
    spec = {"comfyui": {"repository": str(repo), "commit": commits[0]}, "nodes": list(nodes)}
    project = install.create(name, {**spec, "models": []})
    run_foreground(project.install_job_id)
    project.refresh_from_db()
    return project


def installed(project: Project) -> dict[str, str]:
    return envs.frozen_versions(envs.freeze(project))


def site_file(project: Project, relative: str):
    return next(project.venv.glob(f"lib/python*/site-packages/{relative}"))


def test_pips_configuration_files_and_variables_become_uvs_settings(tmp_path, monkeypatch):
    conf = dict(
        index_url="https://mirror.example/simple",
        extra_index_url="file:///a/simple file:///b/simple",
        find_links="/wheels",
        constraint="/etc/pins.txt",
    )
    write_pip_conf(tmp_path / "pip.conf", monkeypatch, **conf)
    monkeypatch.setenv("PIP_FIND_LINKS", "/one /two")  # a variable beats the files, as in pip
    config = envs.pip_config()
    env = envs.uv_environment(config)
    assert env["UV_DEFAULT_INDEX"] == "https://mirror.example/simple"
    assert env["UV_INDEX"] == "file:///a/simple file:///b/simple"
    assert env["UV_FIND_LINKS"] == "/one,/two" and env["UV_LINK_MODE"] == "hardlink"
    assert envs.config_constraints(config) == ["/etc/pins.txt"]


def test_auto_torch_backend_defers_to_a_configured_index_and_a_forced_one_is_passed(settings):
    assert envs.torch_flags({}) == ["--torch-backend", "auto"]
    assert envs.torch_flags({"find-links": "/wheels"}) == []
    settings.TORCH_BACKEND = "cu126"
    assert envs.torch_flags({"find-links": "/wheels"}) == ["--torch-backend", "cu126"]
    settings.TORCH_BACKEND = "index"
    assert envs.torch_flags({}) == []


def test_two_projects_share_one_cache_through_hard_links_and_keep_pip(wheels, comfy):
    first, second = build("One", comfy), build("Two", comfy)
    assert first.status == second.status == ProjectStatus.READY
    a, b = site_file(first, "torch/__init__.py"), site_file(second, "torch/__init__.py")
    assert a.stat().st_ino == b.stat().st_ino and a.stat().st_nlink >= 3  # + the cache
    assert installed(first)["torch"] == "2.5.0" and "pip" in installed(second)
    pins = envs.constraints_file(first).read_text()
    assert "torch==2.5.0" in pins and "helper" not in pins


def test_a_pack_needing_another_torch_is_left_out_as_dependency_and_torch_stays(
    wheels, comfy, tmp_path
):
    old = pack(tmp_path, "Old-Torch-Nodes", "torch==2.0.0\n")
    project = build("Pinned", comfy, [old])
    # The install goes on without it, and ComfyUI's check names it.
    assert project.status == ProjectStatus.ATTENTION
    assert [p["name"] for p in project.last_check["packs_failed"]] == [old["repository"]]
    [failed] = Job.objects.get(pk=project.install_job_id).checkpoint_data["packs_failed"]
    assert failed["category"] == Category.DEPENDENCY
    assert all(word in failed["message"] for word in ("Old-Torch-Nodes", "torch", "2.0.0", "2.5.0"))
    assert installed(project)["torch"] == "2.5.0"
    assert not (project.comfyui_dir / "custom_nodes" / "Old-Torch-Nodes").exists()


def test_a_pack_whose_requirements_name_another_index_is_refused_quoting_the_line(
    wheels, comfy, tmp_path
):
    project = build("Guarded", comfy)
    evil = pack(tmp_path, "Evil-Nodes", "--index-url https://evil.example/simple\nextra\n")
    with pytest.raises(envs.PackRefused) as error:
        restore.add_node(project, evil["repository"], evil["commit"])
    assert error.value.category == Category.VALIDATION
    assert "'--index-url https://evil.example/simple'" in error.value.message
    assert "extra" not in installed(project)


@pytest.mark.parametrize(
    "line",
    [
        "-e .",
        "--extra-index-url https://evil.example/simple",
        "-f https://evil.example/wheels",
        "-r ../../other/requirements.txt",
        "torch @ https://evil.example/torch.whl",
        "git+https://evil.example/pkg.git",
        "/opt/elsewhere/pkg",
    ],
)
def test_option_lines_and_places_outside_the_pack_are_refused(tmp_path, line):
    (tmp_path / "requirements.txt").write_text(f"numpy>=1.0  # fine\n{line}\n")
    assert repr(line) in envs.refused_line(tmp_path / "requirements.txt", tmp_path)


def test_plain_requirements_and_includes_inside_the_pack_pass(tmp_path):
    (tmp_path / "more.txt").write_text("pyyaml\n")
    text = 'numpy>=1.0; python_version >= "3.8"\nopencv-python[extra]\n-r more.txt\n./vendored\n'
    (tmp_path / "requirements.txt").write_text(text)
    assert envs.refused_line(tmp_path / "requirements.txt", tmp_path) == ""


def test_rollback_syncs_the_venv_back_to_the_frozen_set(wheels, comfy, tmp_path):
    project = build("Back", comfy)
    before = installed(project)
    more = pack(tmp_path, "More-Nodes", "extra\n")
    point = restore.add_node(project, more["repository"], more["commit"])
    assert installed(project)["extra"] == "1.0"
    restore.rollback(project, point)
    assert installed(project) == before and "extra" not in before


def test_pip_check_findings_go_to_the_project_check(wheels, comfy):
    project = build("Checked", comfy)
    assert (project.log_dir / envs.PIP_CHECK).read_text() == ""
    assert project.status == ProjectStatus.READY and project.last_check["environment"] == []
    installer = envs.Installer(project.venv, project.install_log)
    installer.uv_run(["pip", "uninstall"], "--python", envs.python(project.venv), "torch")
    findings = envs.check_environment(project)
    assert "helper" in findings and "torch" in findings
    assert (project.log_dir / envs.PIP_CHECK).read_text() == findings
    found = check.check(project, timeout=60)
    assert not found["ok"] and any("helper" in line for line in found["environment"])
    assert Project.objects.get(pk=project.pk).status == ProjectStatus.ATTENTION


def test_uv_that_cannot_run_leaves_the_work_to_pip_and_says_so(wheels, comfy, monkeypatch):
    import uv

    broken = wheels.parent / "uv-broken"
    broken.write_text("not a program")  # not executable: uv cannot run
    monkeypatch.setattr(uv, "find_uv_bin", lambda: str(broken))
    project = Project.objects.create(name="Plain", slug="plain")
    envs.make_venv(project)
    assert "uv cannot run" in project.install_log.read_text()
    assert (project.venv / "bin" / "pip").exists()


def test_a_second_clone_comes_from_the_mirror_and_keeps_the_real_origin(project_dirs):
    repo, commits = comfyui_repo(project_dirs / "repos")
    log = project_dirs / "git.log"
    tools.clone(str(repo), project_dirs / "projects" / "a", log, commits[0])
    log.write_text("")
    tools.clone(str(repo), project_dirs / "projects" / "b", log, commits[1])
    assert "fetch" not in log.read_text()  # both commits were in the mirror already
    origin = tools.git(log, "remote", "get-url", "origin", cwd=project_dirs / "projects" / "b")
    assert origin.strip() == str(repo)
    newer = commit_files(repo, {"NEW": "3\n"}, "third")
    tools.clone(str(repo), project_dirs / "projects" / "c", log, newer)
    assert "fetch" in log.read_text()
    tools.checkout(project_dirs / "projects" / "c", newer, log)
    assert mirrors.mirror_path(str(repo)).is_dir()
