"""Analyze every official template workflow in one process, as `analyze_workflow` would:
read + validate, models (with the presence lookup), custom nodes. The node map is loaded
inside the timing, once, as a fresh process does. Goal: <= 3 s in total.
Run: .venv/bin/python bench/analyze.py
"""

import time

import embedded  # noqa: F401  (first: a fresh embedded ComfyHub)
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
    print(f"{len(results)} workflows, {models} model requirements: {total:.2f} s total")


if __name__ == "__main__":
    main()
