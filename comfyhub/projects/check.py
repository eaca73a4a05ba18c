"""Asking a project's ComfyUI what it sees: the truth behind "ready".

ComfyHub's bookkeeping can call a project complete while ComfyUI cannot find a model (a
folder missing from extra_model_paths.yaml) or a node (a pack that failed to import). The
check asks ComfyUI itself: `GET /object_info` for the node types, `GET /models/<folder>`
for the files of each folder a model is in, and the lines its current run wrote to its log
for the packs that failed to import. A ComfyUI that was not running is started for the
check and stopped after; one that was running is asked as it is and left running. A
ComfyUI that exits while starting is a finding too (`comfyui_error`: the exception's own
line, not its whole log), and each finding comes with its fixes (comfyhub.projects.fixes).

Its current run's lines begin at `Project.run_log_start`, recorded when ComfyHub started
it (runtime.boot): a ComfyUI found running was started by ComfyHub too, so the offset
is that run's, and an earlier run's import failures never count.
"""

import re
import time
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import httpx
from django.conf import settings
from django.utils import timezone

from comfyhub.library.folders import LEGACY
from comfyhub.library.paths import BadInput, models_path
from comfyhub.projects import envs, runtime
from comfyhub.projects.models import Project, ProjectStatus, RunState, model_key
from comfyhub.workflows import nodemap
from comfyhub.workflows.analyze import needs_no_pack
from comfyhub.workflows.parse import all_nodes, from_json
from recovery.errors import JobError
from recovery.lifeline import exited_within
from recovery.models import Category

ASK_TIMEOUT = 60.0  # /object_info of an install with many packs takes seconds
RUN_LOG_BYTES = 16 * 2**20  # import failures are printed first; a long run's log is large
CANNOT_IMPORT = re.compile(r"Cannot import (?P<path>.+?) module for custom nodes: (?P<error>.*)")
IMPORT_FAILED = re.compile(r"\(IMPORT FAILED\): (?P<path>.+)")
# What ComfyUI's /models/<folder> lists (folder_paths.supported_pt_extensions). A file of
# another kind (.gguf, .onnx) is read by a pack through a folder of its own: ComfyUI's list
# cannot vouch for it, so the file on disk does.
LISTED_EXTENSIONS = frozenset(
    {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
)
TRACEBACK_SCAN = 400  # how far back a failure's "Traceback" line is looked for
TRACEBACK_LINES = 40  # the most kept of a failure's traceback: its last frames
FINDINGS = (
    "node_types_missing",
    "models_missing",
    "inputs_missing",
    "packs_failed",
    "environment",
    "comfyui_error",
)


def check(project: Project, timeout: float = runtime.HEALTH_TIMEOUT, fresh: bool = False) -> dict:
    """Ask the project's ComfyUI, store the result on the project (and, when it is
    installed, READY or ATTENTION as its status) and return it. `fresh`: a ComfyUI that
    runs is restarted first (after an install it loaded packs that have changed since)."""
    was_running = in_use(project, timeout)
    if was_running and fresh:
        runtime.stop(project)
        was_running = False
    if not was_running:
        try:
            runtime.boot(project, timeout)
        except runtime.StartFailed as exc:
            return record(project, not_started(project, exc.cause))
    try:
        found = ask(project)
    finally:
        if not was_running:
            runtime.stop(project)
    return record(project, found)


def in_use(project: Project, timeout: float) -> bool:
    """Whether ComfyUI runs already; one that a launch is starting is waited for."""
    runtime.refresh(project)
    deadline = time.monotonic() + timeout
    while project.run_state == RunState.STARTING and not runtime.answers(project):
        if time.monotonic() > deadline:
            raise JobError(
                f"ComfyUI of {project.name} is starting and did not answer within "
                f"{timeout:.0f} s; check again once it runs.",
                category=Category.TIMEOUT,
            )
        exited_within(project.pid, 0.2)  # no notification for HTTP readiness: probe
        runtime.refresh(project)
    return project.run_state in (RunState.RUNNING, RunState.STARTING)


def ask(project: Project) -> dict:
    """The findings (FINDINGS), and `failure_lines`: {pack: the log lines of its failure}."""
    known = get(project, "object_info")
    lines = run_lines(project.run_log, project.run_log_start)
    return {
        "node_types_missing": sorted(node_types(project.spec) - set(known)),
        "models_missing": models_missing(project),
        "inputs_missing": inputs_missing(project),
        "packs_failed": packs_left_out(project) + packs_failed(lines),
        "environment": envs.environment_findings(project),
        "comfyui_error": None,
        "failure_lines": failure_lines(lines),
    }


def not_started(project: Project, cause: dict) -> dict:
    """The findings of a ComfyUI that exited while starting: why (`comfyui_error`), what
    its run printed about packs before it, and what the disk says; nothing was asked."""
    lines = run_lines(project.run_log, project.run_log_start)
    return {
        "node_types_missing": [],
        "models_missing": [],
        "inputs_missing": inputs_missing(project),
        "packs_failed": packs_left_out(project) + packs_failed(lines),
        "environment": envs.environment_findings(project),
        "comfyui_error": cause,
        "failure_lines": failure_lines(lines),
    }


def packs_left_out(project: Project) -> list[dict]:
    """Packs the install left out whole (a requirement that would replace a protected
    package, a refused requirements line): ComfyUI never saw them to fail."""
    job = project.install_job
    left = job.checkpoint_data.get("packs_failed", []) if job else []
    return [{"name": pack["repository"], "error": pack["message"]} for pack in left]


def get(project: Project, path: str):
    """ComfyUI's JSON answer to GET `path`; None when it answers 404 (an unknown folder)."""
    try:
        response = httpx.get(f"{project.url}{path}", timeout=ASK_TIMEOUT)
    except httpx.TimeoutException:
        raise JobError(
            f"ComfyUI did not answer GET /{path} within {ASK_TIMEOUT:.0f} s.",
            category=Category.TIMEOUT,
        ) from None
    except httpx.HTTPError as exc:
        raise JobError(
            f"ComfyUI could not be reached for GET /{path}: {exc}", category=Category.NETWORK
        ) from None
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise JobError(
            f"ComfyUI answered GET /{path} with HTTP {response.status_code}.",
            category=Category.SERVER,
        )
    return response.json()


def node_types(spec: dict) -> set[str]:
    """Every node type the workflow (subgraphs and muted nodes included: it must open
    without missing nodes) and the spec's packs need ComfyUI to know."""
    types = {t for node in spec.get("nodes", []) for t in node.get("node_types") or []}
    if not spec.get("workflow"):
        return types
    workflow = from_json(spec["workflow"])
    types |= {node["type"] for node in all_nodes(workflow)}
    return {t for t in types if not needs_no_pack(t, workflow)}


def models_missing(project: Project) -> list[str]:
    """Each required model (skipped ones aside) as "DIR/NAME" that ComfyUI does not list
    in the folder it reads that directory into (a legacy name: its new folder)."""
    listed: dict[str, set[str]] = {}
    missing = []
    for model in project.required_models():
        folder = LEGACY.get(model["directory"], model["directory"])
        if folder not in listed:
            listed[folder] = set(get(project, f"models/{quote(folder, safe='')}") or [])
        name = model["name"].replace("\\", "/")
        if name not in listed[folder] and not read_by_a_pack(model):
            missing.append(model_key(model))
    return missing


def inputs_missing(project: Project) -> list[str]:
    """Each input file of the workflow ("input/NAME"), left-out ones aside, that is not a
    file in the project's ComfyUI: ComfyUI reads inputs from there only."""
    skipped = set(project.models_skipped)
    missing = []
    for file in project.spec.get("files", []):
        parts = PurePosixPath(file["path"]).parts
        if file["path"] in skipped or ".." in parts:
            continue
        if not project.comfyui_dir.joinpath(*parts).is_file():
            missing.append(file["path"])
    return missing


def read_by_a_pack(model: dict) -> bool:
    """A file ComfyUI's own lists never show (see LISTED_EXTENSIONS) that is on disk."""
    if Path(model["name"]).suffix.lower() in LISTED_EXTENSIONS:
        return False
    try:
        return models_path(model_key(model), settings.MODELS_DIR).is_file()
    except BadInput:
        return False


def packs_failed(lines: list[str]) -> list[dict]:
    """[{"name": custom_nodes folder, "error": message}] from ComfyUI's failure lines
    ("Cannot import … module for custom nodes: …", "… (IMPORT FAILED): …")."""
    failed: dict[str, str] = {}
    for line in lines:
        if match := CANNOT_IMPORT.search(line):
            failed[Path(match["path"]).name] = match["error"].strip() or "It failed to import."
        elif match := IMPORT_FAILED.search(line):
            failed.setdefault(Path(match["path"].strip()).name, "It failed to import.")
    return [{"name": name, "error": error} for name, error in failed.items()]


def failure_lines(lines: list[str]) -> dict[str, str]:
    """{custom_nodes folder: the traceback ComfyUI printed before its "Cannot import"
    line, and that line}: what the page shows beside the finding."""
    found = {}
    for number, line in enumerate(lines):
        if match := CANNOT_IMPORT.search(line):
            before = lines[max(0, number - TRACEBACK_SCAN) : number]
            # Another pack's failure before this one bounds it: its traceback is not ours.
            ends = [i for i, text in enumerate(before) if CANNOT_IMPORT.search(text)]
            before = before[ends[-1] + 1 :] if ends else before
            starts = [i for i, text in enumerate(before) if text.startswith("Traceback")]
            kept = before[starts[-1] :][-TRACEBACK_LINES:] if starts else []
            found[Path(match["path"]).name] = "\n".join([*kept, line])
    return found


def run_lines(log: Path, start: int) -> list[str]:
    if not log.is_file():
        return []
    with log.open("rb") as lines:
        # A log cut short since (rotated by hand) starts over.
        lines.seek(start if start <= log.stat().st_size else 0)
        return lines.read(RUN_LOG_BYTES).decode(errors="replace").splitlines()


def record(project: Project, found: dict) -> dict:
    from comfyhub.projects import fixes  # it finds pins through the install's machinery

    result = {
        "ok": not any(found[key] for key in FINDINGS),
        **found,
        "providers": providers(project.spec, found["node_types_missing"]),
        "checked_at": timezone.now().isoformat(),
    }
    result["fixes"] = fixes.offered(project, result)
    fields = {"last_check": result}
    if project.installed:
        fields["status"] = ProjectStatus.READY if result["ok"] else ProjectStatus.ATTENTION
    project.touch(**fields)
    return result


def providers(spec: dict, missing: list[str]) -> dict[str, str]:
    """A pack that provides each missing node type, where one is known: the spec's pack
    for it, else the one ComfyUI-Manager's node map names (core types: none)."""
    if not missing:
        return {}
    claimed = {
        t: n.get("repository") for n in spec.get("nodes", []) for t in n.get("node_types") or []
    }
    node_map = nodemap.default()
    found = {t: claimed.get(t) or node_map.repository(t, {}) for t in missing}
    return {t: repo for t, repo in found.items() if repo and repo != nodemap.CORE}


def as_json(found: dict, error: dict | None = None) -> dict:
    """A check as every command and page reports it (one contract): `found` is a
    project's last_check ({} when ComfyUI could not be asked: then `error` says why)."""
    from comfyhub.projects.fixes import public

    return {
        "ok": bool(found.get("ok")) and error is None,
        **{key: found.get(key) or [] for key in FINDINGS if key != "comfyui_error"},
        "comfyui_error": found.get("comfyui_error"),
        "fixes": [public(fix) | extra(fix) for fix in found.get("fixes", [])],
        "checked_at": found.get("checked_at"),
        "error": error,
    }


def extra(fix: dict) -> dict:
    """What a fix names beyond its target: the commit of a pin, the module, the link."""
    return {key: fix[key] for key in ("module", "commit", "date", "types", "url") if key in fix}


def plain_lines(report: dict) -> list[str]:
    """A check (as_json) in plain words, one line per finding, the cause first; each
    fix that needs no choice follows its finding as "fix: …"."""
    lines = []
    if error := report.get("comfyui_error"):
        lines.append(f"ComfyUI does not start: {error['message']}")
    lines += [f"ComfyUI does not know the node type {t}." for t in report["node_types_missing"]]
    lines += [f"ComfyUI cannot see the model {key}." for key in report["models_missing"]]
    lines += [f"The input file {path} is not in place." for path in report["inputs_missing"]]
    failed = report["packs_failed"]
    lines += [f"The pack {pack['name']} failed to import: {pack['error']}" for pack in failed]
    lines += [f"The Python environment is inconsistent: {x}" for x in report["environment"]]
    fixes = [f"fix: {fix['detail']}" for fix in report["fixes"] if fix["kind"] != "go_without"]
    return lines + fixes
