"""ComfyHub settings: environment only, validated at import (see README "Configuration")."""

import os
from pathlib import Path

from comfyhub.config import (
    database_from_url,
    env,
    envasof,
    envbool,
    envchoice,
    envdir,
    envfloat,
    envhost,
    envint,
    envkeys,
    envnames,
    envrange,
    envrate,
    envurl,
    file_token_keys,
    is_loopback,
    secret_key,
    sqlite_database,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DATA_DIR = envdir("COMFYHUB_DATA_DIR", BASE_DIR / "var")
MODELS_DIR = envdir("COMFYHUB_MODELS_DIR", DATA_DIR / "models")
PROJECTS_DIR = envdir("COMFYHUB_PROJECTS_DIR", DATA_DIR / "projects")

HOST = envhost("COMFYHUB_HOST", "127.0.0.1")
PORT = envint("COMFYHUB_PORT", 4000, 1, 65535)
PORT_RANGE = envrange("COMFYHUB_PORT_RANGE", (4001, 4100))
DATABASE_URL = envurl("COMFYHUB_DATABASE_URL", "", ("postgres", "postgresql", "sqlite"))
REDIS_URL = envurl("COMFYHUB_REDIS_URL", "", ("redis", "rediss", "unix"))
COMFYUI_REPO = env("COMFYHUB_COMFYUI_REPO", "https://github.com/comfyanonymous/ComfyUI.git")
ALLOW_LOCAL_REPOS = envbool("COMFYHUB_ALLOW_LOCAL_REPOS")
HF_ENDPOINT = envurl("COMFYHUB_HF_ENDPOINT", "https://huggingface.co", ("http", "https"))
CIVITAI_ENDPOINT = envurl("COMFYHUB_CIVITAI_ENDPOINT", "https://civitai.com", ("http", "https"))
# The Comfy Registry: packs known by registry id install their exact version from it.
REGISTRY_URL = envurl("COMFYHUB_REGISTRY_URL", "https://api.comfy.org", ("http", "https"))
HF_TOKEN = env("HF_TOKEN")
CIVITAI_API_TOKEN = env("CIVITAI_API_TOKEN")

# Downloads: no bytes for this long counts as a stall (timeout, then resume).
STALL_TIMEOUT = envfloat("COMFYHUB_STALL_TIMEOUT", 60.0, low=0.1)
DOWNLOADS_MAX = envint("COMFYHUB_DOWNLOADS_MAX", 3, 1, 64)
# Connections, not files, are what a host sees: each download takes up to
# DOWNLOAD_CONNECTIONS of its host's CONNECTIONS_PER_HOST (fetch.acquire_slot).
DOWNLOAD_CONNECTIONS = envint("COMFYHUB_DOWNLOAD_CONNECTIONS", 8, 1, 64)
CONNECTIONS_PER_HOST = envint("COMFYHUB_CONNECTIONS_PER_HOST", 16, 1, 1024)
# All downloads of one worker process together, in bytes/s; the Settings page's value wins.
BANDWIDTH_LIMIT = envrate("COMFYHUB_BANDWIDTH_LIMIT")

# Python environments (comfyhub/projects/envs.py): uv with one shared cache, or pip;
# torch picked once per project and the protected packages pinned after ComfyUI's own.
INSTALLER = envchoice("COMFYHUB_INSTALLER", "uv", r"uv|pip", "uv or pip")
TORCH_BACKEND = envchoice(
    "COMFYHUB_TORCH_BACKEND",
    "auto",
    r"auto|index|cpu|xpu|cu\d{2,3}|rocm\d+(\.\d+){1,2}",
    "auto, index, cpu, xpu, cuNNN (cu126) or rocmX.Y (rocm6.3)",
)
PROTECTED_PACKAGES = envnames(
    "COMFYHUB_PROTECTED_PACKAGES", "torch,torchvision,torchaudio,xformers"
)
# Packages as of a date (envs.as_of_for): `commit` = the pinned commits' date plus a day,
# `latest` = no cut-off, or a date/datetime (normalized to 2026-01-08T23:59:59Z).
RESOLVE_AS_OF = envasof("COMFYHUB_RESOLVE_AS_OF")

# Where ComfyUI-Manager's data (extension-node-map.json, model-list.json) comes from when
# the comfyui-manager package is not installed; cached in the data dir, refreshed by ETag.
MANAGER_DATA_URL = envurl(
    "COMFYHUB_MANAGER_DATA_URL",
    "https://raw.githubusercontent.com/Comfy-Org/ComfyUI-Manager/main/",
    ("http", "https"),
)
# Off: ignore the installed package's copy and always use MANAGER_DATA_URL (tests, and a
# way to follow ComfyUI-Manager's newest lists without upgrading the package).
MANAGER_DATA_PACKAGE = envbool("COMFYHUB_MANAGER_DATA_PACKAGE", True)
FINDER_CACHE_SECONDS = envint("COMFYHUB_FINDER_CACHE_SECONDS", 24 * 3600, 0, 30 * 24 * 3600)
# Per-request timeout of the finder's remote sources: a dead source must not hang a search.
FINDER_TIMEOUT = envfloat("COMFYHUB_FINDER_TIMEOUT", 10.0, low=0.1)

# How often a live page re-reads its object when no cross-process channel layer can wake
# it, and how stale the worker heartbeat may be before /healthz says the worker is down.
LIVE_POLL_SECONDS = envfloat("COMFYHUB_LIVE_POLL_SECONDS", 0.5, low=0.05)
WORKER_TICK_SECONDS = envfloat("COMFYHUB_WORKER_TICK_SECONDS", 1.0, low=0.05)
WORKER_STALE_SECONDS = envfloat("COMFYHUB_WORKER_STALE_SECONDS", 15.0, low=1.0)

SECRET_KEY = secret_key(DATA_DIR)
# Tokens saved on the Settings page are sealed with these Fernet keys (see
# comfyhub/library/sealing.py): COMFYHUB_TOKEN_KEY when set (comma-separated; the first
# seals, the others still open), else the file generated once beside the secret key. Every
# process sharing a database needs the same keys.
TOKEN_KEY = envkeys("COMFYHUB_TOKEN_KEY")
TOKEN_KEY_FILE = DATA_DIR / "token_key"
if not TOKEN_KEY:
    file_token_keys(TOKEN_KEY_FILE)
DEBUG = envbool("COMFYHUB_DEBUG")

# Off loopback, ComfyHub is reachable by others: every page and socket needs a login.
LOGIN_REQUIRED = not is_loopback(HOST)
if HOST in ("0.0.0.0", "::"):  # noqa: S104 (a comparison, not a bind)
    ALLOWED_HOSTS = ["*"]
else:
    ALLOWED_HOSTS = sorted({HOST, "127.0.0.1", "localhost", "[::1]"})

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "django_q",
    "recovery",
    "comfyhub",
    "comfyhub.live",
    "comfyhub.library",
    "comfyhub.workflows",
    "comfyhub.projects",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]
if LOGIN_REQUIRED:
    MIDDLEWARE.append("django.contrib.auth.middleware.LoginRequiredMiddleware")

ROOT_URLCONF = "comfyhub.urls"
ASGI_APPLICATION = "comfyhub.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "comfyhub.context_processors.attention",
                "comfyhub.context_processors.live",
            ],
        },
    },
]

if DATABASE_URL:
    DATABASES = {"default": database_from_url("COMFYHUB_DATABASE_URL", DATABASE_URL)}
else:
    DATABASES = {"default": sqlite_database(DATA_DIR / "comfyhub.sqlite3")}
    # A file (not :memory:) so worker subprocesses in tests can share it; per process so
    # two test runs on one checkout never trample each other's database.
    DATABASES["default"]["TEST"] = {"NAME": DATA_DIR / f"test-{os.getpid()}.sqlite3"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

Q_CLUSTER = {
    "name": "comfyhub",
    "workers": envint("COMFYHUB_WORKERS", 2, 1, 64),
    "timeout": 24 * 3600,
    "retry": 24 * 3600 + 60,
    # Our own Job rows carry retries; django-q2 only delivers each task once.
    "max_attempts": 1,
    "ack_failures": True,
    "save_limit": 200,
    "catch_up": False,
    "poll": 0.2,
    "label": "Worker queue",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# recovery/ (the jobs engine): see recovery/conf.py for every knob and its default.
RECOVERY_LEASE_SECONDS = envfloat("COMFYHUB_LEASE_SECONDS", 30.0, low=0.5)
RECOVERY_BACKOFF_SCALE = envfloat("COMFYHUB_BACKOFF_SCALE", 1.0)
RECOVERY_RETENTION_DAYS = envint("COMFYHUB_RETENTION_DAYS", 30, 1, 3650)
RECOVERY_BREAKER_THRESHOLD = envint("COMFYHUB_BREAKER_THRESHOLD", 5, 1, 1000)
RECOVERY_BREAKER_COOLDOWN = envfloat("COMFYHUB_BREAKER_COOLDOWN", 30.0)
RECOVERY_MAX_LOST_ATTEMPTS = envint("COMFYHUB_MAX_LOST_ATTEMPTS", 3, 1, 1000)
RECOVERY_JOB_MODULES = [m for m in env("COMFYHUB_JOB_MODULES").split(",") if m]
RECOVERY_SECRET_SETTINGS = ["HF_TOKEN", "CIVITAI_API_TOKEN", "SECRET_KEY", "TOKEN_KEY"]
RECOVERY_TICK_HOOKS = ["comfyhub.projects.runtime.watch"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/admin/login/"
LOGIN_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# Serve straight from the app and static/ folders: no collectstatic step to forget.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

SESSION_COOKIE_HTTPONLY = True
# A pasted workflow may be as large as an uploaded one (the parser's 20 MB limit).
DATA_UPLOAD_MAX_MEMORY_SIZE = 21 * 1024 * 1024
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"redact": {"()": "recovery.redact.RedactingFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact"],
        }
    },
    "root": {"handlers": ["console"], "level": env("COMFYHUB_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
    },
}
