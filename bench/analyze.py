"""Analyze every official template workflow in one process, as `analyze_workflow` would:
read + validate, models (with the presence lookup), custom nodes. The node map is loaded
inside the timing, once, as a fresh process does. Goal: <= 3 s in total, offline too.
Run: .venv/bin/python bench/analyze.py [--offline]
--offline: no ComfyUI-Manager data (package hidden, its site a closed local port), so
custom-node resolution degrades to "unavailable" after one attempt.
"""

import os
import socket
import sys
import time

if "--offline" in sys.argv[1:]:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    os.environ["COMFYHUB_MANAGER_DATA_PACKAGE"] = "0"
    os.environ["COMFYHUB_MANAGER_DATA_URL"] = f"http://127.0.0.1:{port}/"

import embedded  # noqa: F401  (before Django imports: a fresh embedded ComfyHub)
from django.core.management import call_command

from comfyhub.workflows import templates
from comfyhub.workflows.analyze import analyze_file


def main() -> None:
    call_command("migrate", verbosity=0)
    paths = [templates.path(name) for name in templates.names()]
    started = time.perf_counter()
    results = [analyze_file(path) for path in paths]
    total = time.perf_counter() - started
    models = sum(len(r.models) for r in results)
    degraded = sum(bool(r.custom_nodes_unavailable) for r in results)
    print(f"{len(results)} workflows, {models} model requirements: {total:.2f} s total")
    if degraded:
        print(f"custom nodes unavailable for {degraded}: {results[0].custom_nodes_unavailable}")


if __name__ == "__main__":
    main()
