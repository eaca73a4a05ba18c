"""Python environments: uv with one shared cache (pip as the fallback), torch chosen once,
the protected packages pinned, requirement files checked before anything installs them.

- `COMFYHUB_INSTALLER=uv` (default): `uv venv --seed` (pip stays in the venv: custom nodes'
  install.py and ComfyUI-Manager call it) and `uv pip install`, every project sharing one
  cache on the projects' filesystem so packages are hard-linked into each venv. When uv
  cannot run, pip does the work and the install log says so.
- uv does not read pip's configuration; `python -m pip config list` (config files at every
  level and PIP_* variables, as pip itself merges them) is translated, so uv works
  wherever pip works: a local index, find-links, a corporate mirror, constraint files.
- After ComfyUI's requirements, the versions of `COMFYHUB_PROTECTED_PACKAGES` go into the
  project's constraints.txt, used by every later install. A pack whose requirements would
  change one of them is refused (dependency) before anything is installed.
- Packages as of a date (`COMFYHUB_RESOLVE_AS_OF`, one home: `cut_off`): an old ComfyUI
  with today's packages may not even start (a dependency stopped bringing another), so by
  default every install resolves as the pinned commits' day saw the indexes: uv's
  --exclude-newer, pip's --uploaded-prior-to, and the same for a pack's install.py.
"""

import ast
import contextlib
import functools
import json
import os
import re
import shlex
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.conf import settings

from comfyhub.config import normalize, utc_stamp
from comfyhub.projects import tools
from comfyhub.projects.tools import python
from recovery.classify import classify
from recovery.errors import JobError
from recovery.models import Category

# pip merges its settings in this order; a later section wins.
PIP_SECTIONS = ("global", "install", ":env:")
CONSTRAINTS = "constraints.txt"
PIP_CHECK = "pip-check.txt"
SEEDS = ("pip", "setuptools", "wheel")
# Where pip looks for its config files.
PIP_LOCATIONS = ("HOME", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS", "VIRTUAL_ENV")
PLAN_LINE = re.compile(r"^\s*([+-])\s+([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.MULTILINE)
NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")
INCLUDES = ("-r", "-c", "--requirement", "--constraint")
INCLUDE = re.compile(r"^(-r|-c|--requirement=|--constraint=)(.+)$")
LINE_OPTIONS = ("--hash", "--config-settings")
# A commit's packages may be released a little after it (a fix the same evening, a time
# zone away): its day plus this still counts as "as of the commit".
GRACE = timedelta(days=1)
# Undated mirrors: a configured file:// index publishes no upload times, so under a
# cut-off uv drops every one of its files (a find-links folder's it keeps). With uv's
# default strategy (the first index that has a package is the only one asked) a package
# such a mirror holds then has no version at all; unsafe-best-match lets uv take it from
# the dated indexes (PyPI) instead. It is what pip always does with its indexes; it is
# used only with a cut-off and such an index (undated_index), as it gives up uv's
# first-index guard against a look-alike on another index.
AS_OF_STRATEGY = "unsafe-best-match"


class PackRefused(JobError):
    """A pack's requirements were refused before anything was installed; the pack is left
    out (its folder removed) and the project keeps working without it."""


def cache_dir() -> Path:
    """One uv cache beside the projects: hard links need the same filesystem."""
    cache = settings.DATA_DIR / "uv-cache"
    projects = settings.PROJECTS_DIR
    with contextlib.suppress(OSError):
        # Made first: a projects folder appearing later on another filesystem would move
        # the cache, and every venv made before would stop sharing it.
        projects.mkdir(parents=True, exist_ok=True)
        if os.stat(settings.DATA_DIR).st_dev != os.stat(projects).st_dev:
            cache = projects / ".uv-cache"
    return cache


def pip_config() -> dict[str, str]:
    """pip's effective settings ({"find-links": "...", ...}); {} when pip cannot tell.

    Asked once per process for each set of PIP_* variables and config-file locations (a
    config file edited while ComfyHub runs is seen after a restart)."""
    key = tuple(
        sorted(
            (name, value)
            for name, value in os.environ.items()
            if name.startswith("PIP_") or name in PIP_LOCATIONS
        )
    )
    return dict(ask_pip_config(key))


@functools.cache
def ask_pip_config(key: tuple) -> tuple[tuple[str, str], ...]:
    listed = ask_pip(sys.executable, "config", "list")
    if listed is None:
        return ()
    ranked = []
    for line in listed.splitlines():
        key, sep, raw = line.partition("=")
        section, _, name = key.rpartition(".")
        if sep and section in PIP_SECTIONS:
            ranked.append((PIP_SECTIONS.index(section), name, unquote_value(raw)))
    merged = {name: value for _, name, value in sorted(ranked, key=lambda item: item[0])}
    return tuple(merged.items())


def unquote_value(raw: str) -> str:
    with contextlib.suppress(ValueError, SyntaxError):
        return str(ast.literal_eval(raw))
    return raw


def uv_environment(config: dict[str, str]) -> dict[str, str]:
    """pip's settings as uv's variables (UV_FIND_LINKS is comma-separated). uv reads no
    uv.toml of its own (UV_NO_CONFIG): the worker's working folder must not redirect it."""
    env = {"UV_CACHE_DIR": str(cache_dir()), "UV_LINK_MODE": "hardlink", "UV_NO_CONFIG": "1"}
    env |= {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    if config.get("index-url"):
        env["UV_DEFAULT_INDEX"] = config["index-url"]
    if extra := config.get("extra-index-url", "").split():
        env["UV_INDEX"] = " ".join(extra)
    if links := config.get("find-links", "").split():
        env["UV_FIND_LINKS"] = ",".join(links)
    if hosts := config.get("trusted-host", "").split():
        env["UV_INSECURE_HOST"] = " ".join(hosts)
    if config.get("cert"):
        env["SSL_CERT_FILE"] = config["cert"]
    if config.get("proxy"):
        env["HTTPS_PROXY"] = env["HTTP_PROXY"] = config["proxy"]
    with contextlib.suppress(ValueError):  # pip accepts "--timeout" and "--default-timeout"
        seconds = float(config.get("timeout") or config.get("default-timeout") or "")
        env["UV_HTTP_TIMEOUT"] = str(max(1, round(seconds)))
    return env


def uv_index_flags(config: dict[str, str]) -> list[str]:
    return (
        ["--no-index"] if config.get("no-index", "").lower() in ("1", "true", "yes", "on") else []
    )


def config_constraints(config: dict[str, str]) -> list[str]:
    return config.get("constraint", "").split()


def torch_flags(config: dict[str, str]) -> list[str]:
    """`auto` lets uv pick the CUDA/ROCm/CPU build from PyTorch's own index, unless pip is
    configured with an index of its own (a mirror, an offline wheel folder): there torch
    comes from that index like everything else, as it does for pip."""
    backend = settings.TORCH_BACKEND
    own_index = any(config.get(key) for key in ("index-url", "extra-index-url", "find-links"))
    if backend == "index" or (backend == "auto" and (own_index or uv_index_flags(config))):
        return []
    return ["--torch-backend", backend]


class Installer:
    """uv (or pip when uv cannot run) for one venv, with pip's configuration. Every
    install, trial and sync gets the same torch flags, so a pack or a rollback resolves
    torch from where ComfyUI's requirements got it."""

    def __init__(self, venv: Path, log: Path, as_of: str = "", why: str = "") -> None:
        """`as_of`: the cut-off of every install, trial and sync ("" = none, the latest
        packages), `why` it is that one, for the install log (installer_for sets both)."""
        self.venv, self.log = venv, log
        self.as_of, self.why = as_of, why
        self.config = pip_config()
        self.uv = uv_binary(log)

    def uv_run(
        self, command: list[str], *args: str, timeout: float = tools.PIP_TIMEOUT
    ) -> tuple[str, str]:
        resolves = command[-1] in ("venv", "install", "sync")  # the rest take no index flags
        flags = uv_index_flags(self.config) if resolves else []
        if command[-1] in ("install", "sync") and self.as_of:
            flags += ["--exclude-newer", self.as_of]
            flags += ["--index-strategy", AS_OF_STRATEGY] if undated_index(self.config) else []
        argv = [self.uv, *command, *flags, *args]
        env = uv_environment(self.config)
        return tools.run_streams(argv, self.log, timeout=timeout, extra_env=env)

    def limits(self, constraints: Path | None) -> list[str]:
        """`-c` arguments: the configured constraint files (uv only: pip adds its own)
        and `constraints` when it exists."""
        files = config_constraints(self.config) if self.uv else []
        files += [str(constraints)] if constraints and constraints.is_file() else []
        return [arg for path in files for arg in ("-c", path)]

    def make_venv(self) -> None:
        if not self.uv:
            tools.make_venv(self.venv, self.log)
            return
        self.uv_run(
            ["venv"], "--seed", "--clear", "--python", sys.executable, str(self.venv), timeout=300
        )

    def note_as_of(self) -> None:
        why = f" ({self.why})" if self.why else ""
        tools.append(self.log, f"== packages as of {self.as_of or 'today'}{why}")

    def pip_as_of(self) -> tuple[str, ...]:
        """pip's --uploaded-prior-to (pip 26 and later); an older pip cannot take a cut-off,
        and the install log says so."""
        if not self.as_of:
            return ()
        if pip_takes_dates(python(self.venv)):
            return ("--uploaded-prior-to", self.as_of)
        tools.append(
            self.log,
            f"== this venv's pip has no --uploaded-prior-to: packages as of {self.as_of} "
            "could not be applied; it installs the latest",
        )
        return ()

    def install(self, requirements: Path, constraints: Path | None) -> None:
        self.note_as_of()
        if not self.uv:
            pins = (constraints,) if constraints and constraints.is_file() else ()
            tools.pip_install(self.venv, requirements, self.log, pins, self.pip_as_of())
            return
        self.uv_run(
            ["pip", "install"],
            "--python",
            python(self.venv),
            *torch_flags(self.config),
            "-r",
            str(requirements),
            *self.limits(constraints),
        )

    def planned(self, requirements: Path, constraints: Path) -> dict[str, tuple[str, str]]:
        """{package: (installed version or "", version it would get)} for every package
        installing `requirements` would change: under `constraints` when they allow it
        (the pins choose among compatible versions), else without them, so a conflict
        names the versions the pack wants."""
        try:
            return self.trial(requirements, constraints)
        except subprocess.CalledProcessError:
            if not constraints.is_file():
                raise
            return self.trial(requirements, None)

    def trial(self, requirements: Path, constraints: Path | None) -> dict[str, tuple[str, str]]:
        if not self.uv:
            return self.pip_trial(requirements, constraints)
        _, said = self.uv_run(
            ["pip", "install"],
            "--dry-run",
            "--python",
            python(self.venv),
            *torch_flags(self.config),
            "-r",
            str(requirements),
            *self.limits(constraints),
        )
        removed, added = {}, {}
        for sign, name, version in PLAN_LINE.findall(said):
            (added if sign == "+" else removed)[normalize(name)] = version
        return {name: (removed.get(name, ""), version) for name, version in added.items()}

    def pip_trial(self, requirements: Path, constraints: Path | None) -> dict[str, tuple[str, str]]:
        pip = [python(self.venv), "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-"]
        said = tools.run(
            [*pip, *self.pip_as_of(), "-r", str(requirements), *self.limits(constraints)],
            self.log,
            timeout=tools.PIP_TIMEOUT,
        )
        installed = frozen_versions(self.freeze())
        wanted = [item["metadata"] for item in json.loads(said).get("install", [])]
        return {
            normalize(meta["name"]): (installed.get(normalize(meta["name"]), ""), meta["version"])
            for meta in wanted
        }

    def freeze(self) -> str:
        if not self.uv:
            return tools.pip_freeze(self.venv, self.log)
        return self.uv_run(["pip", "freeze"], "--python", python(self.venv), timeout=120)[0]

    def sync(self, frozen: Path) -> None:
        """Exactly the packages in `frozen`: extra ones removed, changed ones put back."""
        self.note_as_of()
        if not self.uv:
            self.pip_sync(frozen)
            return
        self.uv_run(
            ["pip", "sync"], "--python", python(self.venv), *torch_flags(self.config), str(frozen)
        )

    def pip_sync(self, frozen: Path) -> None:
        """pip has no sync: what `frozen` lacks is uninstalled (pip and its seeds stay),
        then `frozen` is installed."""
        wanted = frozen_versions(frozen.read_text())
        current = frozen_versions(self.freeze())
        extra = [name for name in current if name not in wanted and name not in SEEDS]
        if extra:
            uninstall = [python(self.venv), "-m", "pip", "uninstall", "--yes", *extra]
            tools.run(uninstall, self.log, timeout=tools.PIP_TIMEOUT)
        tools.pip_install(self.venv, frozen, self.log, options=self.pip_as_of())

    def check(self) -> str:
        """`pip check`'s findings ("" when every requirement is met)."""
        try:
            if self.uv:
                out, said = self.uv_run(
                    ["pip", "check"], "--python", python(self.venv), timeout=120
                )
                return "" if "All installed packages are compatible" in said + out else out + said
            return (
                tools.run([python(self.venv), "-m", "pip", "check"], self.log, timeout=120) and ""
            )
        except subprocess.CalledProcessError as exc:
            return (exc.output or "") + (exc.stderr or "")


def uv_binary(log: Path) -> str | None:
    """uv's binary, or None (pip does the work) when not wanted or it cannot run."""
    if settings.INSTALLER != "uv":
        return None
    try:
        from uv import find_uv_bin

        binary = find_uv_bin()
    except (ImportError, OSError) as exc:
        problem = str(exc)
    else:
        problem = uv_problem(binary)
    if problem:
        tools.append(log, f"== uv cannot run ({problem}); installing with pip instead")
        return None
    return binary


@functools.cache
def uv_problem(binary: str) -> str:
    """Why `binary` cannot run ("" when it can); asked once per binary in a process."""
    try:
        subprocess.run([binary, "--version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    return ""


@functools.cache
def pip_takes_dates(interpreter: str) -> bool:
    """Whether the pip of `interpreter` has --uploaded-prior-to; asked once per venv."""
    return "--uploaded-prior-to" in (ask_pip(interpreter, "install", "--help") or "")


def ask_pip(interpreter: str, *args: str) -> str | None:
    """What `interpreter -m pip ARGS` prints; None when it cannot run or fails."""
    try:
        return subprocess.run(
            [interpreter, "-m", "pip", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def commit_date(folder: Path, log: Path) -> datetime | None:
    """The committer date of `folder`'s HEAD; None when the folder is no git checkout of
    its own (a pack unzipped from the Comfy Registry: git would answer for ComfyUI's)."""
    if not (folder / ".git").exists():
        return None
    return datetime.fromisoformat(
        tools.git(log, "log", "-1", "--format=%cI", "HEAD", cwd=folder).strip()
    )


def cut_off(project, folder: Path | None = None) -> tuple[str, str]:
    """(The cut-off for installing into `project`'s venv, as uv takes it, "" for none; why,
    for the install log.) ComfyUI's requirements by default (COMFYHUB_RESOLVE_AS_OF=commit)
    resolve as of its commit's day plus GRACE; the pack in `folder`, as of the later of that
    and its own commit's, since a pack newer than ComfyUI may need newer packages.
    `latest` has no cut-off, and a date is used as given."""
    rule = settings.RESOLVE_AS_OF
    setting = f"COMFYHUB_RESOLVE_AS_OF={rule}"
    if rule != "commit":
        return ("" if rule == "latest" else rule), setting
    log = project.install_log
    comfyui = commit_date(project.comfyui_dir, log)
    pack = commit_date(folder, log) if folder else None
    if comfyui is None:
        return "", f"{setting}, but ComfyUI's folder is no git checkout"
    why = f"ComfyUI's commit of {comfyui:%Y-%m-%d}"
    if pack is not None:
        mine = f"{folder.name}'s commit of {pack:%Y-%m-%d}"
        why = f"{mine}, later than {why}" if pack > comfyui else f"{why}, later than {mine}"
    elif folder:
        why += f" ({folder.name} is no git checkout)"
    grace = "plus a day" if GRACE.days == 1 else f"plus {GRACE.days} days"
    return utc_stamp(max(comfyui, pack or comfyui) + GRACE), f"{setting}: {why}, {grace}"


def as_of_for(project, folder: Path | None = None) -> str:
    """The cut-off for ComfyUI's requirements, or for the pack in `folder` ("" = none)."""
    return cut_off(project, folder)[0]


def installer_for(project, folder: Path | None = None) -> Installer:
    """The Installer for `project`'s venv under ComfyUI's cut-off, or the pack's."""
    return Installer(project.venv, project.install_log, *cut_off(project, folder))


def as_of_environment(as_of: str) -> dict[str, str]:
    """The cut-off for a uv or pip that a pack's install.py runs (a pip older than 26
    ignores PIP_UPLOADED_PRIOR_TO)."""
    if not as_of:
        return {}
    env = {"UV_EXCLUDE_NEWER": as_of, "PIP_UPLOADED_PRIOR_TO": as_of}
    if undated_index(pip_config()):
        env["UV_INDEX_STRATEGY"] = AS_OF_STRATEGY
    return env


def undated_index(config: dict[str, str]) -> bool:
    """Whether pip's configuration names a file:// index (no upload times: AS_OF_STRATEGY)."""
    urls = [config.get("index-url", ""), *config.get("extra-index-url", "").split()]
    return any(url.lower().startswith("file:") for url in urls)


def restore_point_as_of(project, packs: list[Path]) -> str:
    """The cut-off under which every package now in the venv resolves again: the latest of
    ComfyUI's recorded one and each git pack's (a pack newer than ComfyUI may have brought
    newer packages); "" when one of them had none."""
    cut_offs = [project.resolved_as_of, *(as_of_for(project, folder) for folder in packs)]
    return "" if "" in cut_offs else max(cut_offs)


def frozen_versions(frozen: str) -> dict[str, str]:
    return {
        normalize(name): version
        for name, version in re.findall(r"(?m)^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", frozen)
    }


def constraints_file(project) -> Path:
    return project.folder / CONSTRAINTS


def make_venv(project) -> None:
    Installer(project.venv, project.install_log).make_venv()


def install_comfyui(project) -> None:
    """ComfyUI's requirements (torch picked here, once) as of its cut-off, recorded on the
    project, then the protected pins."""
    installer = installer_for(project)
    requirements = project.comfyui_dir / "requirements.txt"
    constraints = constraints_file(project)
    constraints.unlink(missing_ok=True)  # a re-run pins what this run installed
    if tools.has_lines(requirements):
        if refusal := refused_line(requirements, project.comfyui_dir):
            raise JobError(f"ComfyUI's {refusal}", category=Category.VALIDATION)
        installer.install(requirements, None)
    installed = frozen_versions(installer.freeze())
    pins = [
        f"{name}=={installed[name]}\n" for name in settings.PROTECTED_PACKAGES if name in installed
    ]
    constraints.write_text(
        "# Protected packages (COMFYHUB_PROTECTED_PACKAGES) as ComfyUI's requirements left "
        "them; every later install in this project keeps them.\n" + "".join(pins)
    )
    project.touch(resolved_as_of=installer.as_of)


def install_pack(project, folder: Path) -> None:
    """A pack's requirements under the project's pins; a refused pack is removed whole
    (PackRefused) so ComfyUI never imports it half-installed."""
    requirements = folder / "requirements.txt"
    if not tools.has_lines(requirements):
        return
    installer = installer_for(project, folder)
    try:
        if refusal := refused_line(requirements, folder):
            raise JobError(f"{folder.name}: {refusal}", category=Category.VALIDATION)
        refuse_protected_changes(installer, requirements, folder.name, constraints_file(project))
    except JobError as exc:
        tools.remove_tree(folder)
        raise PackRefused(exc.message, category=exc.category) from None
    installer.install(requirements, constraints_file(project))


def child_environment(project) -> dict[str, str]:
    """PIP_CONSTRAINT and UV_CONSTRAINT (space-separated files) for a pack's install.py:
    a pip or uv it runs keeps the protected packages too. PIP_CONSTRAINT replaces pip's
    configured constraint files, so those are named again."""
    pins = constraints_file(project)
    files = [*config_constraints(pip_config()), *([str(pins)] if pins.is_file() else [])]
    return {"PIP_CONSTRAINT": " ".join(files), "UV_CONSTRAINT": " ".join(files)} if files else {}


def run_install_script(project, folder: Path) -> None:
    """A pack's install.py, under the project's pins and the pack's cut-off (a uv or pip it
    runs reads them from its environment). When it fails as `dependency` (say,
    its pip wanted another torch) the pack is left out like a refused requirements file
    (PackRefused); any other failure (network, disk) fails the step, to be retried."""
    installer = installer_for(project, folder)
    installer.note_as_of()
    try:
        tools.run(
            [python(project.venv), "install.py"],
            project.install_log,
            cwd=folder,
            timeout=tools.PIP_TIMEOUT,
            extra_env=child_environment(project) | as_of_environment(installer.as_of),
        )
    except subprocess.CalledProcessError as exc:
        failure = classify(exc)
        if failure.category != Category.DEPENDENCY:
            raise
        tools.remove_tree(folder)
        raise PackRefused(
            f"{folder.name}: its install.py failed and the pack was left out (its pip may "
            f"not change the protected packages pinned in {CONSTRAINTS}): {failure.message}",
            category=Category.DEPENDENCY,
        ) from None


def refuse_protected_changes(
    installer: Installer, requirements: Path, pack: str, constraints: Path
) -> None:
    pinned = frozen_versions(constraints.read_text()) if constraints.is_file() else {}
    for name, (_, wanted) in installer.planned(requirements, constraints).items():
        if name in pinned and wanted != pinned[name]:
            raise JobError(
                f"{pack} needs {name} {wanted}, but this project's {name} is {pinned[name]} "
                "and is protected (COMFYHUB_PROTECTED_PACKAGES). The pack was left out and "
                "nothing was changed; pick another version of the pack, or another project.",
                category=Category.DEPENDENCY,
            )


def check_environment(project) -> str:
    """`pip check` after every pack is in; its findings in logs/pip-check.txt ("" = ok)."""
    findings = Installer(project.venv, project.install_log).check()
    (project.log_dir / PIP_CHECK).write_text(findings)
    return findings


def environment_findings(project) -> list[str]:
    """What the last `pip check` found, one line per problem (none before it ran)."""
    path = project.log_dir / PIP_CHECK
    return path.read_text().splitlines() if path.is_file() else []


def freeze(project) -> str:
    return Installer(project.venv, project.install_log).freeze()


def restore(project, frozen: str, as_of: str = "") -> None:
    """The venv back to exactly `frozen` (pip itself stays: install.py scripts need it),
    resolved under `as_of` (a restore point's cut-off)."""
    installer = Installer(project.venv, project.install_log, as_of, "the restore point's")
    wanted = frozen_versions(frozen)
    current = frozen_versions(installer.freeze())
    seeds = [
        f"{name}=={current[name]}\n" for name in SEEDS if name in current and name not in wanted
    ]
    target = project.folder / "restore-requirements.txt"
    target.write_text(frozen.rstrip("\n") + "\n" + "".join(seeds))
    installer.sync(target)


def refused_line(requirements: Path, root: Path, seen: frozenset = frozenset()) -> str:
    """Why a line of `requirements` (or of a file it includes) is refused, quoting it;
    "" when every line is a plain requirement or an include inside `root`."""
    text = requirement_text(requirements)
    if text is None:
        return f"requirements file {requirements.name!r} is refused: it is not UTF-8 text."
    for line in logical_lines(text):
        if reason := line_refusal(line, requirements.parent, root):
            return f"requirements line {line!r} is refused: {reason}."
        included = include_path(line)
        nested = (requirements.parent / included).resolve() if included else None
        if not nested or nested in seen:
            continue
        if not nested.is_file():
            return f"requirements line {line!r} is refused: the file it includes cannot be read."
        if refusal := refused_line(nested, root, seen | {nested}):
            return refusal
    return ""


def requirement_text(requirements: Path) -> str | None:
    """The file's text, None when it is not UTF-8: pip would honour a UTF-16/32 byte-order
    mark (or guess another encoding) and read lines this check never saw."""
    try:
        return requirements.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None


def logical_lines(text: str) -> list[str]:
    joined = re.sub(r"\\\r?\n", " ", text)
    lines = (re.sub(r"(^|\s)#.*$", "", line).strip() for line in joined.splitlines())
    return [line for line in lines if line]


def include_path(line: str) -> str | None:
    """The file an `-r`/`-c` line includes, unquoted as pip's shlex split does; None when
    `line` is no include."""
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    if len(words) == 2 and words[0] in INCLUDES:
        return words[1]
    glued = INCLUDE.match(words[0]) if len(words) == 1 else None
    return glued[2] if glued else None


def line_refusal(line: str, here: Path, root: Path) -> str:
    if "${" in line:
        return "'${' would expand an environment variable"
    if "\ufeff" in line:
        return "it holds a byte-order mark"
    if line.startswith("-"):
        included = include_path(line)
        if included is None:
            return "options may not change how or from where packages are installed"
        return "" if inside(here / included, root) else "it includes a file outside the pack"
    requirement, options = split_options(line)
    if any(word.startswith("-") and not word.startswith(LINE_OPTIONS) for word in options):
        return "a requirement line may carry only --hash and --config-settings options"
    target = requirement.split(";", 1)[0].strip()
    named = NAME.match(target)
    if named and named[3].startswith("@"):
        return location_refusal(named[3][1:].strip(), here, root)
    if "://" in target or target.startswith(("file:", ".", "/", "~")) or "/" in target:
        return location_refusal(target, here, root)
    return ""


def split_options(line: str) -> tuple[str, list[str]]:
    """A requirement line as pip cuts it: the requirement, then the words from the first
    one starting with "-" (pip reads them as options; uv cannot parse most of them)."""
    words = line.split()
    first = next((i for i, word in enumerate(words) if word.startswith("-")), len(words))
    return " ".join(words[:first]), words[first:]


def location_refusal(target: str, here: Path, root: Path) -> str:
    parts = urlsplit(target)
    if parts.scheme and parts.scheme != "file":
        return "packages come only from the configured indexes, not from URLs"
    path = Path(unquote(parts.path)) if parts.scheme else Path(target).expanduser()
    return "" if inside(here / path, root) else "it points outside the pack"


def inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())
