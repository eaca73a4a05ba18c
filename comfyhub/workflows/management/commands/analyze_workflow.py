import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from comfyhub.library import index, knowledge
from comfyhub.workflows.analyze import analyze_file
from comfyhub.workflows.parse import Format
from recovery.classify import classify

NOTHING = {
    "format": None,
    "models": [],
    "custom_nodes": [],
    "unknown_node_types": [],
    "custom_nodes_unavailable": None,
}


class Command(BaseCommand):
    help = (
        "Show what each workflow needs: model files (and whether they are already in the "
        "models folder), custom node packs (with pinned commits when known) and node types "
        "nobody provides; the model links they declare are remembered for the finder "
        "(find_model). PATH is a workflow, API prompt or launcher.json, or a folder "
        "(every *.json below it, except index*.json catalogs). With --json, one JSON object "
        "per workflow per line. Without ComfyUI-Manager's node map (package missing, its "
        "site unreachable) models are still reported and custom-node resolution is marked "
        '"unavailable: <why>" ("custom_nodes_unavailable" in JSON, null when available); '
        "that is not an error. Exit 0 when every workflow was read, 1 when any had an "
        "error, 2 when a PATH does not exist."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH")
        parser.add_argument("--json", action="store_true", help="one JSON object per line")

    def handle(self, *args, **options) -> None:
        missing = [p for p in options["paths"] if not Path(p).exists()]
        if missing:
            raise CommandError(f"No such file or folder: {', '.join(missing)}", returncode=2)
        failed = False
        for path in workflow_files(options["paths"]):
            report = self.analyze(path)
            failed = failed or report["error"] is not None
            self.stdout.write(json.dumps(report) if options["json"] else summary(report))
        if failed:
            sys.exit(1)

    def analyze(self, path: Path) -> dict:
        try:
            requirements = analyze_file(path)
            index.mark_present(requirements.models)
            knowledge.learn(requirements.models, knowledge.origin(requirements.format, path.name))
            return {"file": str(path), **requirements.as_json(), "error": None}
        except Exception as exc:  # each file gets its own verdict; the others still run
            failure = classify(exc)
            error = {"category": failure.category, "message": failure.message}
            return {"file": str(path), **NOTHING, "error": error}


def workflow_files(paths: list[str]):
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(p for p in given.rglob("*.json") if p.is_file())
            yield from (p for p in found if not p.name.startswith("index"))
        else:
            yield given


def summary(report: dict) -> str:
    if report["error"]:
        return f"{report['file']}: {report['error']['category']}: {report['error']['message']}"
    lines = [f"{report['file']} ({Format(report['format']).label})"]
    lines += [_model_line(model) for model in report["models"]] or ["  no model files"]
    lines += [_pack_line(pack) for pack in report["custom_nodes"]]
    if report["custom_nodes_unavailable"]:
        lines.append(f"  custom nodes: unavailable: {report['custom_nodes_unavailable']}")
    if report["unknown_node_types"]:
        lines.append(f"  unknown node types: {', '.join(report['unknown_node_types'])}")
    return "\n".join(lines)


def _model_line(model: dict) -> str:
    state = {True: "present", False: "missing", None: "?"}[model["present"]]
    state = "in the store, linked at once" if model.get("in_store") else state
    source = f"  <- {model['url']}" if model["url"] else ""
    return f"  [{state}] {model['directory']}/{model['name']}{source}"


def _pack_line(pack: dict) -> str:
    name = pack["repository"] or f"registry id {pack['cnr_id']}"
    pinned = f" @ {pack['version'] or pack['commit']}" if pack["version"] or pack["commit"] else ""
    types = f": {', '.join(pack['node_types'])}" if pack["node_types"] else ""
    return f"  custom nodes {name}{pinned}{types} ({pack['reason']})"
