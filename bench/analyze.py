"""Analyze every official template workflow in one process, as `analyze_workflow` would:
read + validate, models (with the presence lookup), custom nodes. The node map is loaded
inside the timing, once, as a fresh process does. Goal: <= 3 s in total.
Run: .venv/bin/python bench/analyze.py
"""

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["COMFYHUB_DATA_DIR"] = tempfile.mkdtemp(prefix="comfyhub-bench-")
os.environ.pop("COMFYHUB_DATABASE_URL", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfyhub.settings")

import django

django.setup()

from django.core.management import call_command  # noqa: E402

from comfyhub.workflows import templates  # noqa: E402
from comfyhub.workflows.analyze import analyze_file  # noqa: E402


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
