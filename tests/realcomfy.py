"""The real ComfyUI v0.8.0 and two real packs, at their GitHub addresses, with no network.

Git bundles of the real repositories (../shared/real-comfyui, see its README) are cloned
bare into a folder, and git is told to read `https://github.com/` as that folder
(`url.<folder>/.insteadOf`, set through GIT_CONFIG_* variables in this process's
environment, which ComfyHub's git subprocesses inherit). ComfyHub then clones
`https://github.com/comfyanonymous/ComfyUI.git` exactly as it would for a user: nothing in
it changes, and local repositories stay refused (no COMFYHUB_ALLOW_LOCAL_REPOS).
"""

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLES_VARIABLE = "COMFYHUB_REAL_COMFYUI_BUNDLES"
BUNDLES = {
    "comfyanonymous/ComfyUI": "ComfyUI-v0.8.0.bundle",
    "city96/ComfyUI-GGUF": "ComfyUI-GGUF.bundle",
    "pythongosssss/ComfyUI-Custom-Scripts": "ComfyUI-Custom-Scripts.bundle",
}
COMFYUI = "https://github.com/comfyanonymous/ComfyUI.git"
GGUF = "https://github.com/city96/ComfyUI-GGUF"
GIT_MAPPING = ("GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0")


def bundles_dir() -> Path | None:
    """The folder holding every bundle: $COMFYHUB_REAL_COMFYUI_BUNDLES when set, else
    ../shared/real-comfyui beside the checkout, else /work/shared/real-comfyui."""
    named = os.environ.get(BUNDLES_VARIABLE)
    places = [Path(named)] if named else []
    places += [ROOT.parent / "shared" / "real-comfyui", Path("/work/shared/real-comfyui")]
    for place in places:
        if all((place / bundle).is_file() for bundle in BUNDLES.values()):
            return place
    return None


def missing_bundles() -> str:
    return (
        f"the real-ComfyUI tests need the git bundles {', '.join(BUNDLES.values())} in "
        f"${BUNDLES_VARIABLE}, ../shared/real-comfyui or /work/shared/real-comfyui"
    )


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=True
    )
    return done.stdout.strip()


class GitHub:
    """A folder that `https://github.com/OWNER/NAME(.git)` resolves to while `mapped()`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def publish(self, repo_path: Path | str, owner: str, name: str) -> str:
        """Make `repo_path` (a repository or a bundle) reachable at its GitHub address,
        with and without `.git`; that address."""
        bare = self.root / owner / f"{name}.git"
        bare.parent.mkdir(parents=True, exist_ok=True)
        git("clone", "--quiet", "--bare", str(repo_path), str(bare))
        (self.root / owner / name).symlink_to(bare.name)
        return f"https://github.com/{owner}/{name}"

    @contextlib.contextmanager
    def mapped(self) -> Iterator["GitHub"]:
        """git in this process and its children reads https://github.com/ as the folder;
        the environment as it was afterwards."""
        saved = {name: os.environ.get(name) for name in GIT_MAPPING}
        os.environ["GIT_CONFIG_COUNT"] = "1"
        os.environ["GIT_CONFIG_KEY_0"] = f"url.{self.root}/.insteadOf"
        os.environ["GIT_CONFIG_VALUE_0"] = "https://github.com/"
        try:
            yield self
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def real_github(root: Path, bundles: Path) -> GitHub:
    """`root` holding ComfyUI and the two packs at their owners' names."""
    github = GitHub(root)
    for repository, bundle in BUNDLES.items():
        owner, name = repository.split("/")
        github.publish(bundles / bundle, owner, name)
    return github


def remote_commit(url: str, ref: str) -> str:
    """The commit `ref` names at `url`, asked through git as ComfyHub would reach it."""
    listed = git("ls-remote", url, ref, f"{ref}^{{}}").splitlines()
    # An annotated tag lists its object first and the commit it points at (^{}) last.
    return listed[-1].split()[0]


def kill_processes_under(folder: Path) -> None:
    """SIGKILL every process whose command line names a path inside `folder` (a project's
    ComfyUI and its log pump both do): what a failed test may have left running."""
    needle = str(folder).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
