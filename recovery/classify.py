"""Turns any exception into a `Failure`: a category, a user message and a technical detail.

The category picks the recovery policy, so it must be right for the failures jobs really
meet: httpx errors, OS errors by errno, failed subprocesses (git, pip), bad input. The
message is for a non-technical user and says what happened and what to do; the detail is
for whoever debugs it. Both pass through `redact()`, so neither ever holds a secret.
"""

import errno
import json
import os
import re
import subprocess
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import NamedTuple

import httpx
from django.core.exceptions import ValidationError
from django.utils import timezone

from recovery.choices import Category
from recovery.errors import BreakerOpen, JobError
from recovery.redact import redact

TRANSIENT = frozenset({Category.NETWORK, Category.TIMEOUT, Category.SERVER, Category.RATE_LIMITED})

DETAIL_LIMIT = 8000
TRACEBACK_FRAMES = 12
TRACEBACK_LIMIT = 4000
OUTPUT_LINES = 40
OUTPUT_LIMIT = 3000
CUT = "\n[...]\n"

RETRIED = "This is retried automatically."
CHECK_CONNECTION = "Check your internet connection; this is retried automatically."


@dataclass(frozen=True)
class Failure:
    category: str
    message: str
    detail: str
    retry_after: float | None = None

    @property
    def transient(self) -> bool:
        """True when retrying the same thing later can succeed on its own."""
        return self.category in TRANSIENT


class _Verdict(NamedTuple):
    category: str
    message: str
    retry_after: float | None = None
    extra: str = ""  # technical text that belongs in the detail, above the traceback


def in_brief(exc: BaseException) -> str:
    """The first sentence of what `classify` says of `exc`, without retry advice: for a
    status line ("unavailable: <why>") where nothing is retried, the next call asks again."""
    message = classify(exc).message
    return re.split(r"(?<=[.!?])\s", message.strip(), maxsplit=1)[0].rstrip(".")


def classify(exc: BaseException, now: datetime | None = None) -> Failure:
    """Classify `exc`; `now` (default: timezone.now()) dates an HTTP-date Retry-After."""
    verdict = _diagnose(exc, now or timezone.now())
    parts = (_summary(exc), verdict.extra, _traceback(exc))
    detail = redact("\n\n".join(part for part in parts if part))
    return Failure(
        category=verdict.category,
        message=redact(verdict.message),
        detail=_clip(detail, DETAIL_LIMIT),
        retry_after=verdict.retry_after,
    )


def _diagnose(exc: BaseException, now: datetime) -> _Verdict:
    for kind, handler in _HANDLERS:
        if isinstance(exc, kind):
            return handler(exc, now)
    return _unknown(exc, now)


def _job_error(exc: JobError, now: datetime) -> _Verdict:
    return _Verdict(exc.category, exc.message, exc.retry_after, exc.detail)


def _breaker_open(exc: BreakerOpen, now: datetime) -> _Verdict:
    # The breaker opened on transient failures, so this passes on its own, like a 503.
    wait = max(0.0, (exc.retry_at - now).total_seconds())
    return _Verdict(Category.SERVER, exc.message, wait)


def _unknown(exc: BaseException, now: datetime) -> _Verdict:
    message = (
        f"Something unexpected went wrong: {type(exc).__name__}. Retry; if it keeps failing, "
        "the technical detail below helps us fix it."
    )
    return _Verdict(Category.UNKNOWN, message)


# --- HTTP (httpx) -------------------------------------------------------------------------

_HTTP_MESSAGES = {
    Category.AUTH: (
        "Access was refused by {host} (HTTP {status}). Add or fix the access token for {host} "
        "in Settings, then retry."
    ),
    Category.NOT_FOUND: (
        "Nothing was found at {url} (HTTP {status}). Check the link; the file may have been "
        "moved or deleted."
    ),
    Category.RATE_LIMITED: (
        "Too many requests were sent to {host} (HTTP {status}). This is retried "
        "automatically once the wait it asked for is over."
    ),
    Category.TIMEOUT: f"The request to {{host}} took too long (HTTP {{status}}). {RETRIED}",
    Category.SERVER: (
        f"The server at {{host}} has a problem on its side (HTTP {{status}}). This is usually "
        f"temporary. {RETRIED}"
    ),
    Category.VALIDATION: (
        "The request to {host} was not accepted (HTTP {status}). Check the link and your "
        "settings, then retry."
    ),
}


def _http_status(exc: httpx.HTTPStatusError, now: datetime) -> _Verdict:
    response = exc.response
    category = _status_category(response.status_code)
    waits = category in (Category.RATE_LIMITED, Category.SERVER)
    message = _HTTP_MESSAGES[category].format(
        host=_host(exc), status=response.status_code, url=exc.request.url
    )
    retry_after = _retry_after(response.headers.get("retry-after", ""), now) if waits else None
    return _Verdict(category, message, retry_after, _body_excerpt(response))


def _status_category(status: int) -> str:
    if status in (401, 403):
        return Category.AUTH
    if status in (404, 410):
        return Category.NOT_FOUND
    if status == 429:
        return Category.RATE_LIMITED
    if status == 408:
        return Category.TIMEOUT
    if status >= 500:
        return Category.SERVER
    return Category.VALIDATION


def _retry_after(value: str, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    value = value.strip()
    if re.fullmatch(r"-?\d+", value):
        return max(0.0, float(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _body_excerpt(response: httpx.Response) -> str:
    # Servers often explain a refusal in the body (a gated model, an expired token).
    try:
        body = response.text.strip()
    except httpx.ResponseNotRead:
        return ""
    return f"Response body:\n{_clip(body, 1000)}" if body else ""


def _http_timeout(exc: httpx.TimeoutException, now: datetime) -> _Verdict:
    message = (
        f"Timed out waiting for {_host(exc)} ({_words(type(exc).__name__)}). {RETRIED} "
        "If it keeps happening, check your internet connection."
    )
    return _Verdict(Category.TIMEOUT, message)


def _http_transport(exc: httpx.TransportError, now: datetime) -> _Verdict:
    reason = _reason(exc) or _words(type(exc).__name__)
    if isinstance(exc, httpx.ConnectError):
        message = f"Could not connect to {_host(exc)} ({reason}). {CHECK_CONNECTION}"
    else:
        message = f"The connection to {_host(exc)} failed ({reason}). {CHECK_CONNECTION}"
    return _Verdict(Category.NETWORK, message)


def _unsupported_protocol(exc: httpx.UnsupportedProtocol, now: datetime) -> _Verdict:
    # Retrying cannot help: the address itself is wrong.
    message = "The address is not a web (http or https) link. Check the link, then retry."
    return _Verdict(Category.VALIDATION, message)


def _host(exc: httpx.HTTPError) -> str:
    try:
        return exc.request.url.host or "the server"
    except RuntimeError:  # httpx raises it for an error made without a request
        return "the server"


# --- Operating system -------------------------------------------------------------------

_ERRNO_CATEGORIES = {
    errno.ENOSPC: Category.DISK_FULL,
    errno.EDQUOT: Category.DISK_FULL,
    errno.EACCES: Category.PERMISSION,
    errno.EPERM: Category.PERMISSION,
    errno.EROFS: Category.PERMISSION,
    errno.ENOENT: Category.NOT_FOUND,
    errno.ECONNREFUSED: Category.NETWORK,
    errno.ECONNRESET: Category.NETWORK,
    errno.ECONNABORTED: Category.NETWORK,
    errno.ENETUNREACH: Category.NETWORK,
    errno.EHOSTUNREACH: Category.NETWORK,
    errno.EPIPE: Category.NETWORK,
    errno.ETIMEDOUT: Category.TIMEOUT,
}

# For errors raised without an errno, e.g. TimeoutError() from asyncio.wait_for.
_OS_CLASS_CATEGORIES = (
    (TimeoutError, Category.TIMEOUT),
    (ConnectionError, Category.NETWORK),
    (PermissionError, Category.PERMISSION),
    (FileNotFoundError, Category.NOT_FOUND),
)


def _os_error(exc: OSError, now: datetime) -> _Verdict:
    category = _ERRNO_CATEGORIES.get(exc.errno) or _os_class_category(exc)
    if category is None:
        return _unknown(exc, now)
    return _Verdict(category, _OS_MESSAGES[category](exc))


def _os_class_category(exc: OSError) -> str | None:
    return next((cat for kind, cat in _OS_CLASS_CATEGORIES if isinstance(exc, kind)), None)


def _disk_full_message(exc: OSError) -> str:
    what = "The disk quota is used up" if exc.errno == errno.EDQUOT else "The disk is full"
    # shutil.copyfile names the source first and the file it was writing second.
    path = _path(exc) if exc.filename2 is None else os.fsdecode(exc.filename2)
    where = f", so {path} could not be written" if path else ""
    return f"{what}{where}. Free some disk space, then retry."


def _permission_message(exc: OSError) -> str:
    path = _path(exc)
    if exc.errno == errno.EROFS:
        return (
            f"{path or 'The folder'} is on a read-only filesystem, so it cannot be changed. "
            "Choose a writable folder (or make this one writable), then retry."
        )
    return (
        f"Permission denied for {path or 'a file or folder'}. Allow access to it (or choose "
        "another folder), then retry."
    )


def _missing_message(exc: OSError) -> str:
    path = _path(exc) or "A file or folder that was needed"
    return f"{path} does not exist. Check the path, then retry."


def _os_network_message(exc: OSError) -> str:
    return f"The network connection failed{_because(exc)}. {CHECK_CONNECTION}"


def _os_timeout_message(exc: OSError) -> str:
    return f"The operation timed out{_because(exc)}. {RETRIED}"


_OS_MESSAGES = {
    Category.DISK_FULL: _disk_full_message,
    Category.PERMISSION: _permission_message,
    Category.NOT_FOUND: _missing_message,
    Category.NETWORK: _os_network_message,
    Category.TIMEOUT: _os_timeout_message,
}


def _path(exc: OSError) -> str:
    return "" if exc.filename is None else os.fsdecode(exc.filename)


# --- Subprocesses ---------------------------------------------------------------------------

# Checked in order: git reports an HTTP 403 as "unable to access ...: error: 403", which
# must read as auth, not as a network failure.
_OUTPUT_MARKERS = (
    (Category.DISK_FULL, ("no space left on device",)),
    (Category.AUTH, ("authentication failed", "permission denied (publickey)", "403")),
    (Category.PERMISSION, ("permission denied", "read-only file system")),
    (
        Category.NOT_FOUND,
        (
            "repository not found",
            "not found",
            "does not exist",
            "did not match any file",
            "not a valid object name",
            "unknown revision",
            "404",
        ),
    ),
    (
        Category.NETWORK,
        (
            "could not resolve host",
            "unable to access",
            "connection refused",
            "connection timed out",
            "network is unreachable",
            "temporary failure in name resolution",
            "failed to connect",
            "couldn't connect",
        ),
    ),
)

_PROCESS_MESSAGES = {
    Category.DISK_FULL: "{program} ran out of disk space. Free some disk space, then retry.",
    Category.AUTH: (
        "{program} was refused access. Check the address; if it is private, add or fix the "
        "access token in Settings, then retry."
    ),
    Category.PERMISSION: (
        "{program} was not allowed to change a file or folder{quote}. Check that the folder "
        "is writable, then retry."
    ),
    Category.NOT_FOUND: (
        "{program} could not find what it was asked for{quote}. Check the address or "
        "version, then retry."
    ),
    Category.NETWORK: f"{{program}} could not reach the server it needed. {CHECK_CONNECTION}",
    Category.DEPENDENCY: (
        "{program} failed (exit code {code}){quote}. The technical detail below has its full "
        "output; fix the cause, then retry."
    ),
}


def _called_process(exc: subprocess.CalledProcessError, now: datetime) -> _Verdict:
    output = f"{_text(exc.stderr)}\n{_text(exc.output)}"
    category = _output_category(output.lower())
    line = _last_line(_text(exc.stderr) or _text(exc.output))
    message = _PROCESS_MESSAGES[category].format(
        program=_program(exc.cmd), code=exc.returncode, quote=f': "{line}"' if line else ""
    )
    return _Verdict(category, message, extra=_process_detail(exc))


def _output_category(output: str) -> str:
    for category, markers in _OUTPUT_MARKERS:
        if any(_has_marker(output, marker) for marker in markers):
            return category
    return Category.DEPENDENCY


def _has_marker(output: str, marker: str) -> bool:
    # Status codes must not match inside port numbers or hashes.
    if marker.isdigit():
        return re.search(rf"\b{marker}\b", output) is not None
    return marker in output


def _timeout_expired(exc: subprocess.TimeoutExpired, now: datetime) -> _Verdict:
    seconds = round(exc.timeout, 2)
    message = f"{_program(exc.cmd)} did not finish within {seconds:g} seconds and was stopped. "
    message += RETRIED
    return _Verdict(Category.TIMEOUT, message, extra=_process_detail(exc))


def _process_detail(exc: subprocess.CalledProcessError | subprocess.TimeoutExpired) -> str:
    code = getattr(exc, "returncode", None)  # TimeoutExpired has none: the child was killed
    lines = [f"Command: {_command(exc.cmd)}"]
    lines += [f"Exit code: {code}"] if code is not None else []
    return "\n".join([*lines, _output_tail(exc)]).strip()


def _output_tail(exc: subprocess.CalledProcessError | subprocess.TimeoutExpired) -> str:
    stderr, stdout = _text(exc.stderr), _text(exc.output)
    label, output = ("stderr", stderr) if stderr.strip() else ("stdout", stdout)
    if not output.strip():
        return ""
    tail = "\n".join(output.rstrip().splitlines()[-OUTPUT_LINES:])
    return f"{label} (last lines):\n{_clip(tail, OUTPUT_LIMIT)}"


def _last_line(output: str) -> str:
    """The line most likely to say why: the last error/fatal line, else the last line."""
    # pip ends a conflict report with a bare link to its docs; the line before says more.
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    lines = [line for line in lines if "for help visit" not in line.lower()]
    errors = [line for line in lines if re.match(r"(?i)(error|fatal)\b", line)]
    return _clip((errors or lines or [""])[-1], 300)


def _argv(cmd) -> list[str]:
    if isinstance(cmd, str | bytes | os.PathLike):
        return os.fsdecode(cmd).split()
    return [os.fsdecode(arg) for arg in cmd]


def _program(cmd) -> str:
    argv = _argv(cmd)
    return os.path.basename(argv[0]) if argv else "A command"


def _command(cmd) -> str:
    return " ".join(_argv(cmd))


def _text(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


# --- Bad input ---------------------------------------------------------------------------


def _json_error(exc: json.JSONDecodeError, now: datetime) -> _Verdict:
    message = (
        f"The data is not valid JSON (line {exc.lineno} column {exc.colno}). Check that the "
        "file or link points to the right content, then retry."
    )
    return _Verdict(Category.VALIDATION, message)


def _unicode_error(exc: UnicodeDecodeError, now: datetime) -> _Verdict:
    message = (
        f"The data is not valid {exc.encoding} text (byte {exc.start}). Check that the file "
        "is the right one, then retry."
    )
    return _Verdict(Category.VALIDATION, message)


def _validation_error(exc: ValidationError, now: datetime) -> _Verdict:
    problems = " ".join(exc.messages)
    return _Verdict(
        Category.VALIDATION, f"The input is not valid: {problems} Correct it, then retry."
    )


# --- Detail -----------------------------------------------------------------------------


def _summary(exc: BaseException) -> str:
    kind = type(exc)
    module = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
    return f"{module}{kind.__qualname__}: {exc}"


def _traceback(exc: BaseException) -> str:
    lines = traceback.format_exception(exc, limit=-TRACEBACK_FRAMES)
    return _clip("".join(lines).rstrip(), TRACEBACK_LIMIT)


def _clip(text: str, limit: int) -> str:
    """Cuts the middle: the start says what failed, the end where it finally broke."""
    if len(text) <= limit:
        return text
    keep = (limit - len(CUT)) // 2
    return text[:keep] + CUT + text[len(text) - keep :]


def _reason(exc: BaseException) -> str:
    """str(exc) as a lower-case phrase: "[Errno 111] Connection refused" -> "connection refused"."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc)).strip().rstrip(".")
    return _clip(text[:1].lower() + text[1:], 200)


def _because(exc: BaseException) -> str:
    reason = _reason(exc)
    return f" ({reason})" if reason else ""


def _words(name: str) -> str:
    """A class name as words: "ReadTimeout" -> "read timeout"."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()


# Order matters: the first matching type wins, so subclasses come before their bases
# (JSONDecodeError and UnicodeDecodeError are ValueErrors; TimeoutException a TransportError).
_HANDLERS = (
    (JobError, _job_error),
    (BreakerOpen, _breaker_open),
    (httpx.HTTPStatusError, _http_status),
    (httpx.UnsupportedProtocol, _unsupported_protocol),
    (httpx.TimeoutException, _http_timeout),
    (httpx.TransportError, _http_transport),
    (subprocess.TimeoutExpired, _timeout_expired),
    (subprocess.CalledProcessError, _called_process),
    (json.JSONDecodeError, _json_error),
    (UnicodeDecodeError, _unicode_error),
    (ValidationError, _validation_error),
    (OSError, _os_error),
)
