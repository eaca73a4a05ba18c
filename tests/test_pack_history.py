"""Finding the newest commit of a pack that still defines node types it dropped, in real
local git repos whose commits carry fixed dates."""

import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from comfyhub.projects import history, mirrors, restore, tools
from comfyhub.projects.envs import PackRefused
from comfyhub.projects.models import RestorePoint

# folders (autouse): the projects and data folders in tmp_path, a port range of its own
from tests.test_project_check import build, comfy, folders  # noqa: F401 (fixtures)

START = 1_700_000_000  # commit i is dated START + i hours


def pack(root: Path, *trees: dict[str, str]) -> list[str]:
    """A repo at `root` whose commit i holds exactly the files of trees[i]; its commits."""
    root.mkdir(parents=True)
    git(root, 0, "init", "-q", "-b", "main")
    commits = []
    for number, tree in enumerate(trees):
        for old in root.iterdir():
            if old.name != ".git":
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        for name, text in tree.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        git(root, number, "add", "-A")
        git(root, number, "commit", "-q", "--allow-empty", "-m", f"commit {number}")
        commits.append(git(root, number, "rev-parse", "HEAD"))
    return commits


def git(repo: Path, number: int, *args: str) -> str:
    date = f"@{START + number * 3600} +0000"
    env = {**os.environ, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    who = ["-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]
    done = subprocess.run(
        ["git", *who, *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def nodes(*types: str, other: str = "") -> dict[str, str]:
    """A nodes.py whose NODE_CLASS_MAPPINGS has `types`; other.py holds `other`."""
    keys = ", ".join(f'"{name}": object' for name in types)
    return {"nodes.py": f"NODE_CLASS_MAPPINGS = {{{keys}}}\n", "other.py": f"X = {other!r}\n"}


def found(commits: list[str], index: int, *types: str) -> dict:
    return {"commit": commits[index], "date": dated(index), "types": list(types)}


def dated(number: int) -> str:
    return datetime.fromtimestamp(START + number * 3600, UTC).isoformat()


def commands(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("$ ")]


@pytest.fixture
def log(tmp_path):
    return tmp_path / "history.log"


def test_a_type_removed_in_commit_3_of_5_is_found_at_commit_2(tmp_path, log):
    repo = tmp_path / "pack"
    trees = [nodes("Old"), nodes("Old", "New"), nodes("New"), nodes("New", "B"), nodes("B")]
    commits = pack(repo, *trees)
    assert history.last_with(repo, ["Old"], log) == [found(commits, 1, "Old")]


def test_two_types_removed_at_different_commits_share_the_commit_before_the_first_removal(
    tmp_path, log
):
    repo = tmp_path / "pack"
    commits = pack(repo, nodes("A", "B"), nodes("A", "B", "C"), nodes("B", "C"), nodes("C"))
    assert history.last_with(repo, ["A", "B"], log) == [found(commits, 1, "A", "B")]


def test_two_types_no_commit_defines_together_get_a_commit_each(tmp_path, log):
    repo = tmp_path / "pack"
    commits = pack(repo, nodes("A"), nodes(), nodes("B"), nodes(), nodes("C"))
    result = history.last_with(repo, ["A", "B"], log)
    assert result == [found(commits, 2, "B"), found(commits, 0, "A")]


def test_three_types_are_grouped_by_the_commit_that_defines_the_most_of_them(tmp_path, log):
    repo = tmp_path / "pack"
    commits = pack(repo, nodes("A"), nodes("A", "B"), nodes("B"), nodes("C"), nodes())
    result = history.last_with(repo, ["C", "B", "A"], log)
    assert result == [found(commits, 1, "B", "A"), found(commits, 3, "C")]


def test_a_type_added_again_later_is_found_at_its_newest_commit(tmp_path, log):
    repo = tmp_path / "pack"
    commits = pack(repo, nodes("A"), nodes(), nodes("A"), nodes(), nodes("B"))
    assert history.last_with(repo, ["A"], log) == [found(commits, 2, "A")]


def test_a_type_the_pack_still_defines_is_found_at_head(tmp_path, log):
    repo = tmp_path / "pack"
    commits = pack(repo, nodes("A"), nodes("A", "B"), nodes("A", "B", other="x"))
    assert history.last_with(repo, ["A"], log) == [found(commits, 2, "A")]


def test_a_type_that_never_existed_is_absent_and_the_rest_is_still_found(tmp_path, log):
    repo = tmp_path / "pack"
    commits = pack(repo, nodes("A"), nodes("B"))
    assert history.last_with(repo, ["Ghost"], log) == []
    assert history.last_with(repo, ["Ghost", "A"], log) == [found(commits, 0, "A")]


def test_a_v3_node_id_in_single_quotes_in_a_subfolder_counts(tmp_path, log):
    repo = tmp_path / "pack"
    v3 = {"v3/io.py": "schema = Schema(node_id='Flux Thing')\n"}
    commits = pack(repo, nodes("Other"), nodes("Other") | v3, nodes("Other"))
    assert history.last_with(repo, ["Flux Thing"], log) == [found(commits, 1, "Flux Thing")]


def test_commits_that_never_touch_the_type_are_never_grepped(tmp_path, log):
    repo = tmp_path / "pack"
    trees = [nodes("Old"), nodes()] + [nodes(other=str(n)) for n in range(40)]
    commits = pack(repo, *trees)
    assert history.last_with(repo, ["Old"], log) == [found(commits, 0, "Old")]
    greps = [line for line in commands(log) if line.startswith("$ git grep")]
    assert len(greps) == 2  # HEAD and the parent of the removal


def test_no_more_than_limit_candidates_are_grepped(tmp_path, log):
    repo = tmp_path / "pack"
    trees = [nodes("Old", other=str(n)) | {"old.py": f"OLD = {{'Old': {n}}}\n"} for n in range(12)]
    commits = pack(repo, *trees, nodes())
    assert history.last_with(repo, ["Old"], log, limit=3) == [found(commits, 11, "Old")]
    assert sum(line.startswith("$ git grep") for line in commands(log)) <= 3


def test_types_shaped_like_options_or_regexes_are_only_names(tmp_path, log):
    repo = tmp_path / "pack"
    odd = ["-rf", "--output=pwned", "Resize (v2) | x+", "Mask [a-z]*.^$ {2}\\ é"]
    commits = pack(repo, nodes(*odd), nodes("Resize (v2) | x", "Mask", "rf"))
    assert history.last_with(repo, odd, log) == [found(commits, 0, *odd)]
    ran = {" ".join(line.split()[1:3]) for line in commands(log)}
    assert ran == {"git log", "git rev-parse", "git grep"}
    assert not list(tmp_path.rglob("pwned"))


def test_search_uses_the_existing_mirror_without_its_origin(tmp_path, log):
    repo = tmp_path / "pack"
    commits = pack(repo, nodes("Old"), nodes("New"))
    mirrors.ensure(str(repo), "", log)
    shutil.rmtree(repo)
    log.unlink()
    assert history.search(str(repo), ["Old"], log) == [found(commits, 0, "Old")]
    assert not any("clone" in line or "fetch" in line for line in commands(log))


def rewritten(tmp_path: Path, install_py: str) -> tuple[str, list[str]]:
    """A pack whose first commit defines OldSampler (and has `install_py`), its second
    only NewSampler."""
    repo = tmp_path / "repos" / "Rewritten-Nodes"
    old = {"__init__.py": 'NODE_CLASS_MAPPINGS = {"OldSampler": object}\n'}
    new = {"__init__.py": 'NODE_CLASS_MAPPINGS = {"NewSampler": object}\n'}
    return str(repo), pack(repo, old | {"install.py": install_py}, new)


def pinned(project, repository: str) -> tuple[str, str, str]:
    """The pack's commit: checked out, in its pin, in the spec."""
    folder = project.comfyui_dir / "custom_nodes" / "Rewritten-Nodes"
    spec = next(n for n in project.spec["nodes"] if n["repository"] == repository)
    return tools.head(folder, project.install_log), project.node_pins[0]["commit"], spec["commit"]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_pinning_a_pack_to_the_found_commit_installs_it_there_and_the_spec_keeps_it(
    comfy,  # noqa: F811
    tmp_path,
):
    marker = "import pathlib; pathlib.Path('installed.txt').write_text('old')\n"
    repository, commits = rewritten(tmp_path, marker)
    project = build("Pin", comfy, nodes=[{"repository": repository, "commit": commits[1]}])
    [old] = history.search(repository, ["OldSampler"], project.install_log)
    point = restore.pin_pack(project, repository, old["commit"])
    project.refresh_from_db()
    assert pinned(project, repository) == (commits[0],) * 3
    assert (project.comfyui_dir / "custom_nodes/Rewritten-Nodes/installed.txt").is_file()
    assert point.node_pins[0]["commit"] == commits[1]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_pin_whose_requirements_fail_raises_and_its_restore_point_rolls_it_back(
    comfy,  # noqa: F811
    tmp_path,
):
    repository, commits = rewritten(tmp_path, "raise SystemExit('no such wheel')\n")
    project = build("Pin Fails", comfy, nodes=[{"repository": repository, "commit": commits[1]}])
    with pytest.raises(PackRefused, match="no such wheel"):  # and its folder is gone
        restore.pin_pack(project, repository, commits[0])
    project.refresh_from_db()
    assert project.spec["nodes"][0]["commit"] == commits[1]
    restore.rollback(project, RestorePoint.objects.get(project=project))
    assert pinned(project, repository) == (commits[1],) * 3


def test_a_type_from_a_merged_branch_is_found_at_the_merge_on_the_default_branch(tmp_path, log):
    repo = tmp_path / "pack"
    pack(repo, nodes("A"))
    git(repo, 1, "checkout", "-q", "-b", "side")
    (repo / "side.py").write_text("NODE_CLASS_MAPPINGS = {'B': object}\n")
    git(repo, 1, "add", "-A")
    git(repo, 1, "commit", "-q", "-m", "B on a branch")
    git(repo, 2, "checkout", "-q", "main")
    git(repo, 2, "merge", "-q", "--no-ff", "-m", "merge", "side")
    merge = git(repo, 2, "rev-parse", "HEAD")
    git(repo, 3, "rm", "-q", "side.py")
    git(repo, 3, "commit", "-q", "-m", "B dropped")
    expected = {"commit": merge, "date": dated(2), "types": ["B"]}
    assert history.last_with(repo, ["B"], log) == [expected]
