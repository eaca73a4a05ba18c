"""Environment parsing for settings.py.

Every helper raises ConfigError with one line naming the variable and the expected form;
manage.py and asgi.py turn that into a one-line message and exit status 2 instead of a
traceback.
"""

import base64
import binascii
import contextlib
import ipaddress
import os
import re
import secrets
from datetime import UTC, date, datetime, time
from pathlib import Path
from urllib.parse import unquote, urlsplit


class ConfigError(Exception):
    pass


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default


def envint(name: str, default: int, low: int, high: int) -> int:
    raw = env(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer from {low} to {high} (got {raw!r})")
    return value


def envfloat(name: str, default: float, low: float = 0.0) -> float:
    raw = env(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = None
    if value is None or value < low:
        raise ConfigError(f"{name} must be a number >= {low:g} (got {raw!r})")
    return value


RATE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmg])(i?))?b?(?:/s)?", re.IGNORECASE)
RATE_MIN = 1000


def parse_rate(text: str) -> int | None:
    """Bytes per second from "500000", "50M", "2.5MB", "800 KiB/s"; "", "0" or "none" is
    no limit. K/M/G count in thousands, KiB/MiB/GiB in 1024s. ValueError says why."""
    raw = text.strip()
    if raw.lower() in ("", "0", "none"):
        return None
    match = RATE.fullmatch(raw)
    if not match:
        raise ValueError(
            f"{raw!r} is not a speed: write bytes per second, optionally with K, M or G "
            "(for example 50M or 2.5MB)"
        )
    number, prefix, binary = match.groups()
    base = 1024 if binary else 1000
    value = int(float(number) * base ** (" kmg".index(prefix.lower()) if prefix else 0))
    if value < RATE_MIN:
        raise ValueError(f"{raw!r} is too slow to download with: at least {RATE_MIN} bytes/s")
    return value


def envrate(name: str) -> int | None:
    """An optional speed limit in bytes/s (parse_rate); unset or empty is none."""
    try:
        return parse_rate(env(name))
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def envbool(name: str, default: bool = False) -> bool:
    raw = env(name).lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be one of 1/0, true/false, yes/no, on/off (got {raw!r})")


def envchoice(name: str, default: str, pattern: str, form: str) -> str:
    """A lower-case word matching `pattern` (a regex of the whole value)."""
    raw = env(name, default).lower()
    if not re.fullmatch(pattern, raw):
        raise ConfigError(f"{name} must be {form} (got {raw!r})")
    return raw


def envasof(name: str) -> str:
    """`commit` (default), `latest`, or a cut-off given as an ISO date (the end of that
    day, UTC) or datetime (UTC when it names no zone), as uv's --exclude-newer takes it:
    2026-01-08T23:59:59Z."""
    raw = env(name, "commit")
    if raw.lower() in ("commit", "latest"):
        return raw.lower()
    with contextlib.suppress(ValueError):
        return utc_stamp(datetime.combine(date.fromisoformat(raw), time(23, 59, 59), UTC))
    try:
        return utc_stamp(datetime.fromisoformat(raw))
    except ValueError:
        raise ConfigError(
            f"{name} must be commit, latest, or an ISO date or datetime such as 2026-01-08 "
            f"or 2026-01-08T21:47:02Z (got {raw!r})"
        ) from None


def utc_stamp(moment: datetime) -> str:
    """`moment` (UTC when naive) as 2026-01-08T21:47:02Z."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def envnames(name: str, default: str) -> tuple[str, ...]:
    """Comma-separated package names, normalized as PyPI does (PEP 503)."""
    names = [part.strip() for part in env(name, default).split(",") if part.strip()]
    bad = [
        part
        for part in names
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", part)
    ]
    if bad:
        raise ConfigError(f"{name} must be package names separated by commas (got {bad[0]!r})")
    return tuple(normalize(part) for part in names)


def normalize(name: str) -> str:
    """A package name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def envhost(name: str, default: str) -> str:
    raw = env(name, default)
    if raw == "localhost":
        return raw
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        raise ConfigError(
            f"{name} must be an IP address such as 127.0.0.1 or 0.0.0.0 (got {raw!r})"
        ) from None
    return raw


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def envrange(name: str, default: tuple[int, int]) -> tuple[int, int]:
    raw = env(name)
    if not raw:
        return default
    low, sep, high = raw.partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        lo = hi = 0
    if not sep or not 1 <= lo <= hi <= 65535:
        raise ConfigError(f"{name} must be a port range LOW-HIGH such as 4001-4100 (got {raw!r})")
    return lo, hi


def envdir(name: str, default: Path) -> Path:
    raw = env(name)
    path = Path(raw).expanduser() if raw else default
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{name} must be a directory ComfyHub can create ({path}: {exc.strerror})"
        ) from None
    return path.resolve()


def envurl(name: str, default: str, schemes: tuple[str, ...]) -> str:
    raw = env(name, default)
    if raw and urlsplit(raw).scheme not in schemes:
        forms = " or ".join(f"{s}://..." for s in schemes)
        raise ConfigError(f"{name} must be a URL of the form {forms} (got {raw!r})")
    return raw


SQLITE_OPTIONS = {
    # Web, worker and CLI share one file: WAL lets readers run beside the writer,
    # IMMEDIATE takes the write lock up front so two writers queue on the busy timeout
    # instead of failing with "database is locked" mid-transaction.
    "timeout": 30,
    "transaction_mode": "IMMEDIATE",
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
}


def sqlite_database(path: Path) -> dict:
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": path, "OPTIONS": SQLITE_OPTIONS}


def database_from_url(name: str, url: str) -> dict:
    """Turn postgresql://user:pass@host:port/db or sqlite:////abs/path into DATABASES."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite" and parts.path:
        return sqlite_database(Path(unquote(parts.path)))
    if parts.scheme not in ("postgres", "postgresql") or not parts.path.strip("/"):
        raise ConfigError(
            f"{name} must look like postgresql://user:password@host:5432/dbname "
            f"or sqlite:////absolute/path.sqlite3 (got {url!r})"
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{name} has an invalid port (got {url!r})") from None
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.strip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(port or ""),
        "CONN_MAX_AGE": 0,
    }


def write_once(path: Path, value: str) -> None:
    """Create `path` (mode 0600) holding `value`, unless it exists.

    Written aside then hard-linked: web and worker may start at once, and neither may ever
    read a half-written file.
    """
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def secret_key(data_dir: Path) -> str:
    """COMFYHUB_SECRET_KEY, else a key generated once into the data dir (mode 0600)."""
    given = env("COMFYHUB_SECRET_KEY")
    if given:
        return given
    path = data_dir / "secret_key"
    write_once(path, secrets.token_urlsafe(50))
    key = path.read_text().strip()
    if not key:
        raise ConfigError(f"COMFYHUB_SECRET_KEY is unset and {path} is empty; delete it")
    return key


def new_token_key() -> str:
    """A Fernet key, as Fernet.generate_key() makes one: 32 random bytes, url-safe base64.

    Settings are read by every command, and importing `cryptography` costs a command
    ~15 ms that only sealing or opening a token needs (library/sealing.py imports it)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def token_keys(text: str) -> list[str]:
    """The Fernet keys in `text`, comma- or line-separated; the first one seals.

    Raises ValueError when there is none, or one is not a Fernet key (Fernet's own test:
    url-safe base64 of 32 bytes).
    """
    keys = [key for key in re.split(r"[\s,]+", text) if key]
    if not keys:
        raise ValueError("no token key")
    for key in keys:
        try:
            raw = base64.urlsafe_b64decode(key)
        except binascii.Error as exc:
            raise ValueError("not a Fernet key") from exc
        if len(raw) != 32:
            raise ValueError("not a Fernet key")
    return keys


def envkeys(name: str) -> str:
    """Fernet keys from the environment; a bad value is named, never echoed (a secret)."""
    raw = env(name)
    if not raw:
        return raw
    try:
        token_keys(raw)
    except ValueError:
        raise ConfigError(
            f"{name} must be one or more Fernet keys, comma-separated; make one with: python "
            '-c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
        ) from None
    return raw


def file_token_keys(path: Path) -> list[str]:
    """The keys in the token key file, which is generated once (mode 0600) when absent."""
    write_once(path, new_token_key() + "\n")
    try:
        return token_keys(path.read_text())
    except ValueError:
        raise ConfigError(
            f"{path} holds no token key: restore it from a backup, or delete it and enter "
            "the stored tokens again on the Settings page"
        ) from None
