"""The workflows package stays layered: parse <- templates <- nodemap <- analyze <- catalog,
with no import circle (not even one hidden inside a function), and analysis reads no
database."""

import ast
from pathlib import Path

from comfyhub.workflows import analyze, nodemap, parse

PACKAGE = Path(analyze.__file__).parent


def workflows_imports(path: Path) -> set[str]:
    """The comfyhub.workflows modules a file imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "comfyhub.workflows":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "comfyhub.workflows."
        ):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.split(".")[2]
                for alias in node.names
                if alias.name.startswith("comfyhub.workflows.")
            )
    return found


def test_no_module_of_the_workflows_package_imports_itself_back_through_others():
    graph = {path.stem: workflows_imports(path) for path in PACKAGE.glob("*.py")}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for name in graph.get(start, ()):
            if name == goal or (name not in seen and reaches(name, goal, seen | {name})):
                return True
        return False

    circles = [name for name in graph if reaches(name, name, {name})]
    assert circles == []


def test_analysing_a_workflow_needs_no_database():
    # No django_db mark: pytest-django fails any query this analysis would make.
    nodes = [{"id": 1, "type": "CheckpointLoaderSimple", "widgets_values": ["a.safetensors"]}]
    small = nodemap.NodeMap.core_only({"CheckpointLoaderSimple"}, "test")
    result = analyze.analyze(parse.from_json({"nodes": nodes}), node_map=small)
    assert [(m.directory, m.name, m.present) for m in result.models] == [
        ("checkpoints", "a.safetensors", None)
    ]
