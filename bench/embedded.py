"""Imported first by a bench: Django set up on a fresh embedded (SQLite) ComfyHub in a
temp data dir, whatever COMFYHUB_* database or Redis the caller's environment names."""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
DATA_DIR = tempfile.mkdtemp(prefix="comfyhub-bench-")
os.environ["COMFYHUB_DATA_DIR"] = DATA_DIR
os.environ.pop("COMFYHUB_DATABASE_URL", None)
os.environ.pop("COMFYHUB_REDIS_URL", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfyhub.settings")

import django  # noqa: E402

django.setup()
