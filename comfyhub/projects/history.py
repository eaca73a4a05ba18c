"""The newest commit of a custom-node pack that still defines node types it has dropped.

A pack rewritten since a workflow was saved no longer has some node types that workflow
uses, but its git history does: pinned to the newest commit that still defines them, the
pack runs the old workflow again. The answer is one commit when one defines them all;
else one commit per group of types that no single commit defines together (each a pin the
user can choose); a type no commit ever defined is simply absent.

"Defines" is the type's name as a quoted string literal ('T' or "T") in a .py file of the
commit's tree: NODE_CLASS_MAPPINGS keys and V3 `node_id="T"` are written so.

The search is bounded, never a grep of every commit. It follows HEAD's first-parent line,
the default branch as it was published (a merge counts as one change against its first
parent). Along that line the types a commit defines change only at a commit whose .py
diff adds or removes a line naming one, and git's pickaxe (`log -G`) lists exactly those
in one run. So HEAD and the first parents of those commits are the only candidates: such
a commit itself defines what the first parent of the next newer one (or HEAD) defines, a
newer candidate already. At most `limit` candidates are confirmed with `git grep`, one run
per candidate and type at worst; the walk stops at the first candidate defining them all.
"""

import functools
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from comfyhub.projects import mirrors, tools

LIMIT = 400
# What a POSIX extended regex (`git log -G`) treats as special; a backslash before any
# other character is not portable (GNU reads \< \> \w as word operators).
ERE_SPECIAL = re.compile(r"([\\.\[\](){}*+?|^$])")


def search(repository: str, types: list[str], log: Path) -> list[dict]:
    """`last_with` on the repository's mirror, fetched from the network only when there
    is no mirror yet: an installed pack was cloned from it, so it holds the history up to
    the installed commit, and the commits before never change."""
    url = tools.check_repo(repository)
    mirror = mirrors.mirror_path(url)
    if not mirror.exists():
        mirror = mirrors.ensure(url, "", log)
    return last_with(mirror, types, log)


def last_with(mirror: Path, types: list[str], log: Path, limit: int = LIMIT) -> list[dict]:
    """[{"commit": sha40, "date": committer ISO date, "types": [...]}]: the newest commit
    defining all `types`; else, group by group, the newest commit defining the most types
    not yet placed (see the module docstring)."""
    wanted = [name for name in dict.fromkeys(types) if one_line(name)]
    if not wanted:
        return []
    commits = candidates(mirror, wanted, log, limit)

    @functools.cache  # the grouping asks again about types a commit was asked about
    def defines(commit: str, name: str) -> bool:
        return defined(mirror, commit, name, log)

    return [
        {"commit": commit, "date": committed(mirror, commit, log), "types": group}
        for commit, group in groups(commits, wanted, defines)
    ]


def one_line(name: str) -> bool:
    """A name a one-line literal can hold; git takes no NUL in an argument."""
    return bool(name) and not any(char in name for char in "\n\r\0")


def candidates(mirror: Path, types: list[str], log: Path, limit: int) -> list[str]:
    """HEAD, then the first parent of each commit on HEAD's first-parent line whose .py
    diff adds or removes a line naming one of `types`, newest first; at most `limit`."""
    out = tools.git(
        log,
        "log",
        "--first-parent",
        "--no-renames",  # a file renamed to .py is all added lines, so -G sees it
        f"--max-count={limit}",
        f"-G{pattern(types)}",
        "--format=%P",
        "--end-of-options",
        "HEAD",
        "--",
        "*.py",
        cwd=mirror,
    )
    parents = [line.split()[0] for line in out.splitlines() if line.strip()]
    return list(dict.fromkeys([tools.head(mirror, log), *parents]))[:limit]


def pattern(types: list[str]) -> str:
    """A POSIX extended regex, as `git log -G` takes, for any of `types` in quotes."""
    names = "|".join(ERE_SPECIAL.sub(r"\\\1", name) for name in types)
    return f"[\"']({names})[\"']"


def defined(mirror: Path, commit: str, name: str, log: Path) -> bool:
    # git grep knows no --end-of-options: the commit, checked hex, is never an option.
    args = ["grep", "-F", "-l", "-e", f'"{name}"', "-e", f"'{name}'"]
    try:
        tools.git(log, *args, tools.check_commit(commit), "--", "*.py", cwd=mirror)
    except subprocess.CalledProcessError as exc:
        if exc.returncode == 1:  # grep's "no match"; anything else is a real failure
            return False
        raise
    return True


def groups(
    commits: list[str], types: list[str], defines: Callable[[str, str], bool]
) -> list[tuple[str, list[str]]]:
    """(commit, the types it is the pin for), until no commit defines a type left."""
    found = []
    left = types
    while left and (best := widest(commits, left, defines)):
        found.append(best)
        left = [name for name in left if name not in best[1]]
    return found


def widest(
    commits: list[str], types: list[str], defines: Callable[[str, str], bool]
) -> tuple[str, list[str]] | None:
    """The commit defining the most of `types` (the newest of equals) and those types;
    the first that defines them all ends the walk."""
    best = None
    for commit in commits:
        have = [name for name in types if defines(commit, name)]
        if len(have) == len(types):
            return commit, have
        if have and (best is None or len(have) > len(best[1])):
            best = commit, have
    return best


def committed(mirror: Path, commit: str, log: Path) -> str:
    return tools.git(
        log, "log", "-1", "--format=%cI", "--end-of-options", commit, cwd=mirror
    ).strip()
