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
"""

import ast
import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.conf import settings

from comfyhub.projects import tools
from recovery.errors import JobError
from recovery.models import Category

# pip merges its settings in this order; a later section wins.
PIP_SECTIONS = ("global", "install", ":env:")
CONSTRAINTS = "constraints.txt"
PIP_CHECK = "pip-check.txt"
SEEDS = ("pip", "setuptools", "wheel")
PLAN_LINE = re.compile(r"^\s*([+-])\s+([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.MULTILINE)
NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")
INCLUDE = re.compile(r"^(-r|-c|--requirement|--constraint)(=|\s+)?(\S+)$")


class PackRefused(JobError):
    """A pack's requirements were refused before anything was installed; the pack is left
    out (its folder removed) and the project keeps working without it."""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def python(venv: Path) -> str:
    return str(venv / "bin" / "python")


def cache_dir() -> Path:
    """One uv cache beside the projects: hard links need the same filesystem."""
    cache = settings.DATA_DIR / "uv-cache"
    projects = settings.PROJECTS_DIR
    with contextlib.suppress(OSError):
        if os.stat(settings.DATA_DIR).st_dev != os.stat(projects).st_dev:
            cache = projects / ".uv-cache"
    return cache


def pip_config() -> dict[str, str]:
    """pip's effective settings ({"find-links": "...", ...}); {} when pip cannot tell."""
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    ranked = []
    for line in listed.splitlines():
        key, sep, raw = line.partition("=")
        section, _, name = key.rpartition(".")
        if sep and section in PIP_SECTIONS:
            ranked.append((PIP_SECTIONS.index(section), name, unquote_value(raw)))
    return {name: value for _, name, value in sorted(ranked, key=lambda item: item[0])}


def unquote_value(raw: str) -> str:
    with contextlib.suppress(ValueError, SyntaxError):
        return str(ast.literal_eval(raw))
    return raw


def uv_environment(config: dict[str, str]) -> dict[str, str]:
    """pip's index settings as uv's variables (UV_FIND_LINKS is comma-separated)."""
    env = {"UV_CACHE_DIR": str(cache_dir()), "UV_LINK_MODE": "hardlink"}
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
    """uv (or pip when uv cannot run) for one venv, with pip's configuration."""

    def __init__(self, venv: Path, log: Path) -> None:
        self.venv, self.log = venv, log
        self.config = pip_config()
        self.uv = uv_binary(log)

    def uv_run(
        self, command: list[str], *args: str, timeout: float = tools.PIP_TIMEOUT
    ) -> tuple[str, str]:
        resolves = command[-1] in ("venv", "install", "sync")  # the rest take no index flags
        flags = uv_index_flags(self.config) if resolves else []
        argv = [self.uv, *command, *flags, *args]
        env = uv_environment(self.config)
        return tools.run_streams(argv, self.log, timeout=timeout, extra_env=env)

    def make_venv(self) -> None:
        if not self.uv:
            tools.make_venv(self.venv, self.log)
            return
        self.uv_run(
            ["venv"], "--seed", "--clear", "--python", sys.executable, str(self.venv), timeout=300
        )

    def install(self, requirements: Path, constraints: Path | None, torch: bool = False) -> None:
        extra = [str(constraints)] if constraints and constraints.is_file() else []
        if not self.uv:
            pip = [python(self.venv), "-m", "pip", "install", "--timeout", "60"]
            # pip adds its own configured constraint files itself.
            limits = [arg for path in extra for arg in ("-c", path)]
            tools.run(
                [*pip, "-r", str(requirements), *limits],
                self.log,
                cwd=requirements.parent,
                timeout=tools.PIP_TIMEOUT,
            )
            return
        limits = [
            arg for path in [*config_constraints(self.config), *extra] for arg in ("-c", path)
        ]
        flags = torch_flags(self.config) if torch else []
        self.uv_run(
            ["pip", "install"],
            "--python",
            python(self.venv),
            *flags,
            "-r",
            str(requirements),
            *limits,
        )

    def planned(self, requirements: Path) -> dict[str, tuple[str, str]]:
        """{package: (installed version or "", version it would get)} for every package
        installing `requirements` would change, without the project's pins."""
        if not self.uv:
            return self.pip_planned(requirements)
        limits = [arg for path in config_constraints(self.config) for arg in ("-c", path)]
        _, said = self.uv_run(
            ["pip", "install"],
            "--dry-run",
            "--python",
            python(self.venv),
            "-r",
            str(requirements),
            *limits,
        )
        removed, added = {}, {}
        for sign, name, version in PLAN_LINE.findall(said):
            (added if sign == "+" else removed)[normalize(name)] = version
        return {name: (removed.get(name, ""), version) for name, version in added.items()}

    def pip_planned(self, requirements: Path) -> dict[str, tuple[str, str]]:
        pip = [python(self.venv), "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-"]
        said = tools.run([*pip, "-r", str(requirements)], self.log, timeout=tools.PIP_TIMEOUT)
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
        if not self.uv:
            tools.pip_install(self.venv, frozen, self.log)
            return
        self.uv_run(["pip", "sync"], "--python", python(self.venv), str(frozen))

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
        tools.run([binary, "--version"], log, timeout=60)
    except (ImportError, OSError, subprocess.CalledProcessError) as exc:
        tools.append(log, f"== uv cannot run ({exc}); installing with pip instead")
        return None
    return binary


def frozen_versions(frozen: str) -> dict[str, str]:
    return {
        normalize(name): version
        for name, version in re.findall(r"(?m)^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", frozen)
    }


def has_lines(requirements: Path) -> bool:
    return requirements.is_file() and bool(requirements.read_text(errors="replace").strip())


def constraints_file(project) -> Path:
    return project.folder / CONSTRAINTS


def make_venv(project) -> None:
    Installer(project.venv, project.install_log).make_venv()


def install_comfyui(project) -> None:
    """ComfyUI's requirements (torch picked here, once), then the protected pins."""
    installer = Installer(project.venv, project.install_log)
    requirements = project.comfyui_dir / "requirements.txt"
    constraints = constraints_file(project)
    constraints.unlink(missing_ok=True)  # a re-run pins what this run installed
    if has_lines(requirements):
        if refusal := refused_line(requirements, project.comfyui_dir):
            raise JobError(f"ComfyUI's {refusal}", category=Category.VALIDATION)
        installer.install(requirements, None, torch=True)
    installed = frozen_versions(installer.freeze())
    pins = [
        f"{name}=={installed[name]}\n" for name in settings.PROTECTED_PACKAGES if name in installed
    ]
    constraints.write_text(
        "# Protected packages (COMFYHUB_PROTECTED_PACKAGES) as ComfyUI's requirements left "
        "them; every later install in this project keeps them.\n" + "".join(pins)
    )


def install_pack(project, folder: Path) -> None:
    """A pack's requirements under the project's pins; a refused pack is removed whole
    (PackRefused) so ComfyUI never imports it half-installed."""
    requirements = folder / "requirements.txt"
    if not has_lines(requirements):
        return
    installer = Installer(project.venv, project.install_log)
    try:
        if refusal := refused_line(requirements, folder):
            raise JobError(f"{folder.name}: {refusal}", category=Category.VALIDATION)
        refuse_protected_changes(installer, requirements, folder.name, constraints_file(project))
    except JobError as exc:
        tools.remove_tree(folder)
        raise PackRefused(exc.message, category=exc.category) from None
    installer.install(requirements, constraints_file(project))


def refuse_protected_changes(
    installer: Installer, requirements: Path, pack: str, constraints: Path
) -> None:
    pinned = frozen_versions(constraints.read_text()) if constraints.is_file() else {}
    for name, (_, wanted) in installer.planned(requirements).items():
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


def restore(project, frozen: str) -> None:
    """The venv back to exactly `frozen` (pip itself stays: install.py scripts need it)."""
    installer = Installer(project.venv, project.install_log)
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
    for line in logical_lines(requirements.read_text(errors="replace")):
        if reason := line_refusal(line, requirements.parent, root):
            return f"requirements line {line!r} is refused: {reason}."
        include = INCLUDE.match(line)
        nested = (requirements.parent / include[3]).resolve() if include else None
        deeper = nested and nested not in seen and nested.is_file()
        if deeper and (refusal := refused_line(nested, root, seen | {nested})):
            return refusal
    return ""


def logical_lines(text: str) -> list[str]:
    joined = re.sub(r"\\\r?\n", " ", text)
    lines = (re.sub(r"(^|\s)#.*$", "", line).strip() for line in joined.splitlines())
    return [line for line in lines if line]


def line_refusal(line: str, here: Path, root: Path) -> str:
    if line.startswith("-"):
        include = INCLUDE.match(line)
        if not include:
            return "options may not change how or from where packages are installed"
        return "" if inside(here / include[3], root) else "it includes a file outside the pack"
    target = line.split(";", 1)[0].strip()
    named = NAME.match(target)
    if named and named[3].startswith("@"):
        return location_refusal(named[3][1:].strip(), here, root)
    if "://" in target or target.startswith(("file:", ".", "/", "~")) or "/" in target:
        return location_refusal(target, here, root)
    return ""


def location_refusal(target: str, here: Path, root: Path) -> str:
    parts = urlsplit(target)
    if parts.scheme and parts.scheme != "file":
        return "packages come only from the configured indexes, not from URLs"
    path = Path(unquote(parts.path)) if parts.scheme else Path(target).expanduser()
    return "" if inside(here / path, root) else "it points outside the pack"


def inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())
