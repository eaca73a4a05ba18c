"""A pack that failed to import gets its one-click fix: its requirements (and install.py)
installed again, then ComfyUI asked again. Real installs, the stand-in ComfyUI."""

import pytest

from comfyhub.projects.models import ProjectStatus
from recovery.engine import run_foreground
from recovery.models import Job, Status
from tests.fakecomfy import make_repo
from tests.test_project_check import build, comfy, folders, node  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# The pack imports only once its install.py has fetched its "weights".
NEEDY = {
    "__init__.py": (
        "import pathlib\n"
        "if not (pathlib.Path(__file__).parent / 'weights.txt').exists():\n"
        "    raise RuntimeError('boom: the weights are missing')\n"
        "NODE_CLASS_MAPPINGS = {'FakeSampler': object}\n"
    ),
    "install.py": (
        "import pathlib\n(pathlib.Path(__file__).parent / 'weights.txt').write_text('w')\n"
    ),
}


def needy_project(comfy, tmp_path):  # noqa: F811 (the fixture's value)
    path, commits = make_repo(tmp_path / "repos" / "Needy-Nodes", NEEDY, {"README.md": "x\n"})
    needy = {"repository": str(path), "commit": commits[0]}
    return build("Needy", comfy, nodes=[needy], workflow=[node(1, "FakeSampler")])


def test_reinstalling_a_failed_packs_requirements_fixes_it_and_the_check_clears_it(
    comfy,  # noqa: F811
    tmp_path,
    client,
):
    project = needy_project(comfy, tmp_path)
    assert project.status == ProjectStatus.READY  # install.py ran at install
    weights = project.comfyui_dir / "custom_nodes/Needy-Nodes/weights.txt"
    weights.unlink()  # lost since: ComfyUI now fails to import the pack
    assert run_foreground(project.queue_job("project_check", dispatch=False).pk).status == (
        Status.SUCCEEDED
    )
    project.refresh_from_db()
    assert project.status == ProjectStatus.ATTENTION
    assert [p["name"] for p in project.last_check["packs_failed"]] == ["Needy-Nodes"]
    page = client.get(f"/projects/{project.slug}/").content.decode()
    assert 'action="/projects/needy/packs/fix/"' in page and 'value="Needy-Nodes"' in page
    response = client.post(f"/projects/{project.slug}/packs/fix/", {"pack": "Needy-Nodes"})
    assert response.status_code == 302
    job = Job.objects.get(kind="project_fix_pack")
    assert job.params == {"project": project.pk, "pack": "Needy-Nodes"}
    assert run_foreground(job.pk).status == Status.SUCCEEDED
    project.refresh_from_db()
    assert weights.is_file() and project.status == ProjectStatus.READY
    assert project.last_check["packs_failed"] == []


def test_a_pack_the_last_check_did_not_see_fail_is_refused_plainly(comfy, tmp_path, client):  # noqa: F811
    project = needy_project(comfy, tmp_path)
    for name in ("Needy-Nodes", "../../etc", ""):
        response = client.post(f"/projects/{project.slug}/packs/fix/", {"pack": name})
        assert response.status_code == 400 and "no failed pack named" in response.content.decode()
    assert not Job.objects.filter(kind="project_fix_pack").exists()
