"""The ways forward from a check's findings, and carrying out those that need no choice.

A finding without its fix leaves the user stuck, and the usual findings have one fix that
ComfyHub can find and prove before offering it:

- `No module named 'X'` (ComfyUI's start, or a pack's import): the distribution that
  provides X (MODULES: the well-known names that differ; else X itself), offered only
  when a dry run under the project's constraints and date resolves it.
- A node type the workflow's pack dropped: the newest commit of that pack, in its git
  mirror, that still defines it (history.search): "Pin PACK to COMMIT".
- A node type of a known pack that is not installed: install that pack.
- A model or input file not in place: download it (when a link is known) or go without.

`auto` marks the fixes that need no choice; `fix_project` and the install's check step
apply those (the check step only the modules: its verdict then holds for what ComfyUI
really runs).
"""

import re
import subprocess
from pathlib import Path

from comfyhub.config import normalize
from comfyhub.projects import envs, history, mirrors, tools
from comfyhub.projects.models import Project, model_key, sources_of
from comfyhub.projects.runtime import NO_MODULE
from recovery.errors import Defer, JobError
from recovery.models import Category, Status

# Import names whose distribution is named otherwise (the rest install under their own).
MODULES = {
    "cv2": "opencv-python",
    "PIL": "pillow",
    "yaml": "PyYAML",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "bs4": "beautifulsoup4",
    "dateutil": "python-dateutil",
    "dotenv": "python-dotenv",
    "git": "GitPython",
    "google.protobuf": "protobuf",
    "fitz": "PyMuPDF",
    "Crypto": "pycryptodome",
    "jwt": "PyJWT",
    "serial": "pyserial",
    "OpenGL": "PyOpenGL",
    "websocket": "websocket-client",
    "zmq": "pyzmq",
    "attr": "attrs",
    "docx": "python-docx",
    "pkg_resources": "setuptools",
    "magic": "python-magic",
    "Levenshtein": "levenshtein",
    "segment_anything": "segment-anything",
    "mpl_toolkits": "matplotlib",
}
MODULE_ROUNDS = 4  # the check step's rounds: one module often hides the next
FIX_ROUNDS = 3  # fix_project's rounds: an older pack may need a module of its own
DISTRIBUTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def distribution(module: str) -> str:
    """The distribution that provides `module` (dotted names: the known dotted one, else
    its top-level package's)."""
    top = module.split(".")[0]
    return MODULES.get(module) or MODULES.get(top) or top


def offered(project: Project, found: dict) -> list[dict]:
    """Every fix for the findings `found` ({"kind", "target", "detail", "auto", ...})."""
    return [
        *module_fixes(project, found),
        *node_fixes(project, found),
        *file_fixes(project, found),
    ]


def module_fixes(project: Project, found: dict) -> list[dict]:
    """`install_module` for each missing module a dry run can resolve."""
    needs = []
    if (error := found.get("comfyui_error")) and error.get("module"):
        needs.append((error["module"], "ComfyUI does not start without it", ""))
    for pack in found.get("packs_failed", []):
        if match := NO_MODULE.search(pack.get("error", "")):
            why = f"the pack {pack['name']} does not import without it"
            needs.append((match["module"], why, pack["name"]))
    fixes: dict[str, dict] = {}
    installed = envs.frozen_versions(envs.freeze(project)) if needs else {}
    for module, why, pack in needs:
        name = distribution(module)
        # Installed already: it is there and broken (or the name is wrong); no install helps.
        if name in fixes or normalize(name) in installed:
            continue
        folder = pack_dir(project, pack)
        if own_module(project, module, folder) or not resolvable(project, name, folder):
            continue
        detail = f"Install {name}, which provides the module {module}: {why}."
        fixes[name] = {"kind": "install_module", "target": name, "module": module, "pack": pack}
        fixes[name] |= {"detail": detail, "auto": True}
    return list(fixes.values())


def own_module(project: Project, module: str, pack: Path | None) -> bool:
    """A module of ComfyUI itself (comfy.x, nodes, folder_paths), of the failing pack (a
    `utils.py` it imports as if it were on sys.path) or named like a pack folder: code
    that is there and was not found, never a package of that name from the index."""
    top = module.split(".")[0]
    homes = [project.comfyui_dir, project.comfyui_dir / "custom_nodes", *([pack] if pack else [])]
    return any((home / top).is_dir() or (home / f"{top}.py").is_file() for home in homes)


def pack_dir(project: Project, pack: str) -> Path | None:
    """The folder of the pack a module fix is for (its date applies), None for ComfyUI."""
    return project.comfyui_dir / "custom_nodes" / pack if project.has_pack(pack) else None


def resolvable(project: Project, name: str, folder: Path | None) -> bool:
    """Whether installing `name` resolves under the project's constraints and date (the
    pack's in `folder`, else ComfyUI's) and leaves its protected packages as they are
    (uv's or pip's dry run)."""
    if not DISTRIBUTION.match(name):
        return False
    try:
        envs.refuse_protected_changes(
            envs.installer_for(project, folder),
            wish_file(project, name),
            name,
            envs.constraints_file(project),
        )
    except (subprocess.CalledProcessError, JobError):
        tools.append(project.install_log, f"== no fix: {name} does not resolve here")
        return False
    return True


def node_fixes(project: Project, found: dict) -> list[dict]:
    """For missing node types: `install_pack` for a known pack that is not installed,
    `pin_pack` for an installed git pack whose history still has them."""
    providers = found.get("providers", {})
    left_out = {pack["name"] for pack in found.get("packs_failed", [])}  # installing fails again
    pins = {pin["repository"].lower(): pin for pin in project.node_pins if pin.get("repository")}
    wanted: dict[str, list[str]] = {}
    for node_type in found.get("node_types_missing", []):
        repository = providers.get(node_type)
        if repository and repository not in left_out:
            wanted.setdefault(repository, []).append(node_type)
    fixes = []
    for repository, types in wanted.items():
        pin = pins.get(repository.lower())
        if pin is None:
            detail = f"Install the pack {repository}, which provides {', '.join(types)}."
            fixes.append({"kind": "install_pack", "target": repository, "types": types})
            fixes[-1] |= {"detail": detail, "auto": True}
        elif pin.get("commit"):
            fixes += pin_fixes(project, pin, types)
    return fixes


def pin_fixes(project: Project, pin: dict, types: list[str]) -> list[dict]:
    """One `pin_pack` per commit that brings back some of `types`; none when the pack never
    had them. The newest commit with every type the workflow uses of this pack (the
    missing ones and those it has now) needs no choice; a commit that brings some back
    but loses others says which, and is the user's choice."""
    used = sorted({*types, *pack_types(project, pin["repository"])})
    log = project.install_log
    try:
        whole = history.search(pin["repository"], used, log)
        found = whole if len(whole) == 1 else history.search(pin["repository"], types, log)
    except (subprocess.CalledProcessError, JobError):
        return []
    fixes = []
    for entry in found:
        if entry["commit"] == pin["commit"]:
            continue  # the installed version has them: it did not load them (packs_failed)
        lost = [t for t in used if t not in entry["types"] and not defines(pin, entry, t, log)]
        detail = (
            f"Pin {pin['name']} to {entry['commit'][:12]} ({entry['date'][:10]}), the last "
            f"version with {', '.join(t for t in entry['types'] if t in types)}"
        )
        detail += f"; it lacks {', '.join(lost)}, which this workflow also uses." if lost else "."
        fixes.append({"kind": "pin_pack", "target": pin["repository"], **entry})
        fixes[-1] |= {"detail": detail, "auto": len(found) == 1 and not lost}
    return fixes


def pack_types(project: Project, repository: str) -> list[str]:
    """The node types the spec says this workflow uses of the pack."""
    nodes = project.spec.get("nodes", [])
    return [t for n in nodes if n.get("repository") == repository for t in n.get("node_types", [])]


def defines(pin: dict, entry: dict, node_type: str, log: Path) -> bool:
    mirror = mirrors.mirror_path(pin["repository"])
    return history.defined(mirror, entry["commit"], node_type, log)


def file_fixes(project: Project, found: dict) -> list[dict]:
    """`download` (a link is known) and `go_without` for each model or input not in place."""
    entries = {model_key(m): m for m in project.spec.get("models", [])}
    entries |= {f["path"]: f for f in project.spec.get("files", [])}
    fixes = []
    for key in [*found.get("models_missing", []), *found.get("inputs_missing", [])]:
        urls = sources_of(entries.get(key, {}))
        if urls:
            detail = f"Download {key} from {urls[0]}."
            fixes.append({"kind": "download", "target": key, "url": urls[0], "detail": detail})
            fixes[-1]["auto"] = False
        detail = f"Go without {key}: the workflow may not run until you add it yourself."
        fixes.append({"kind": "go_without", "target": key, "detail": detail, "auto": False})
    return fixes


def apply(project: Project, fix: dict) -> None:
    """Carry out one fix of APPLY; ComfyUI must be stopped (packs and modules load only
    when it starts)."""
    if fix["kind"] not in APPLY:
        raise JobError(f"A {fix['kind']} fix needs your choice.", category=Category.VALIDATION)
    tools.append(project.install_log, f"== fix: {fix['detail']}")
    APPLY[fix["kind"]](project, fix)


def install_module(project: Project, fix: dict) -> None:
    name, folder = fix["target"], pack_dir(project, fix.get("pack", ""))
    if not DISTRIBUTION.match(name):
        raise JobError(f"{name!r} is no distribution name.", category=Category.VALIDATION)
    installer = envs.installer_for(project, folder)
    installer.install(wish_file(project, name), envs.constraints_file(project))


def wish_file(project: Project, name: str) -> Path:
    """A requirements file of the one distribution `name` (checked by DISTRIBUTION)."""
    wish = project.folder / "fix-requirements.txt"
    wish.write_text(f"{name}\n")
    return wish


def pin_pack(project: Project, fix: dict) -> None:
    from comfyhub.projects import restore

    restore.pin_pack(project, fix["target"], fix["commit"])


def install_pack(project: Project, fix: dict) -> None:
    from comfyhub.projects import restore

    restore.add_node(project, fix["target"])


# The fixes ComfyHub carries out itself; the others (download, go_without) are the user's
# choice, made on the page's Models list or with fix_project --without.
APPLY = {"install_module": install_module, "pin_pack": pin_pack, "install_pack": install_pack}


def chosen(project: Project, wanted: dict) -> list[dict]:
    """The fixes of the last check that APPLY carries out named by `wanted` ({"kind",
    "target"}, and "commit" to pick one of several pins)."""
    same = [f for f in project.last_check.get("fixes", []) if f["kind"] in APPLY]
    same = [f for f in same if (f["kind"], f["target"]) == (wanted["kind"], wanted["target"])]
    return [f for f in same if not wanted.get("commit") or f.get("commit") == wanted["commit"]]


def needing_no_choice(found: dict, done: list[dict]) -> list[dict]:
    """The fixes of `found` that need no choice and are not among `done`."""
    return not_done([fix for fix in found.get("fixes", []) if fix.get("auto")], done)


def not_done(fixes: list[dict], done: list[dict]) -> list[dict]:
    seen = {(fix["kind"], fix["target"]) for fix in done}
    return [fix for fix in fixes if (fix["kind"], fix["target"]) not in seen]


def public(fix: dict) -> dict:
    return {key: fix[key] for key in ("kind", "target", "detail")}


def fix_all(project: Project, job) -> None:
    """The `project_fix` job: once the install has ended well, the fix the user chose
    (`only`) or every fix of the last check that needs no choice, then ComfyUI is asked
    again. Applied fixes are kept in the job's checkpoint (`applied`), so a re-run after a
    kill never applies one twice."""
    wait_for_install(project)
    if only := job.params.get("only"):
        apply_and_ask(project, job, not_done(chosen(project, only), applied_by(job)))
        return
    for round_ in range(FIX_ROUNDS):  # an older pack may miss a module of its own
        todo = needing_no_choice(project.last_check, applied_by(job))
        if round_ and not todo:
            return
        apply_and_ask(project, job, todo)


def applied_by(job) -> list[dict]:
    return job.checkpoint_data.get("applied", [])


def apply_and_ask(project: Project, job, todo: list[dict]) -> None:
    from comfyhub.projects import check, runtime

    runtime.stop(project)
    for fix in todo:
        apply(project, fix)
        job.checkpoint(applied=[*applied_by(job), public(fix)])
    check.check(project, fresh=True)


def wait_for_install(project: Project) -> None:
    """Defer while the install runs; fail, saying what to do, when it is paused or ended
    badly (never retried: only the install's own Retry helps)."""
    install = project.install_job
    if install is None or install.status == Status.SUCCEEDED:
        return
    if install.status == Status.PAUSED:
        raise JobError(
            f"The install of {project.name} is paused; resume it, then fix again.",
            category=Category.VALIDATION,
        )
    if not install.is_terminal:
        raise Defer(f"Waiting for the install of {project.name} to finish.", seconds=2)
    raise JobError(
        f"The install of {project.name} stopped: {install.error_message or install.status}. "
        "Press Retry on the install first (fix_project runs it for you).",
        category=Category.DEPENDENCY,
    )
