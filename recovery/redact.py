"""Removes secrets from text before it is logged, stored or shown.

Everything a failure records (user message, technical detail) and everything the console
log prints passes through `redact()`. It knows token *shapes* (Authorization headers,
secret-looking URL parameters, URL passwords, Hugging Face and GitHub tokens) plus the
exact values of the settings named in `RECOVERY_SECRET_SETTINGS`, e.g.
`["HF_TOKEN", "CIVITAI_API_TOKEN"]`.

This module is imported while Django configures logging, before apps are ready: it must
not import models.
"""

import logging
import re
from urllib.parse import quote

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

MASK = "[redacted]"

# Shorter values would redact ordinary words and numbers all over the text.
MIN_SECRET_LENGTH = 6

_AUTH_NAME = r"(?:proxy-)?authorization"
_SENSITIVE_PARAM = r"[\w.-]*?(?:token|key|sig|signature|password|passwd|secret)"

_PATTERNS = [
    # Python reprs of headers: {"authorization": "Bearer x"}, (b"Authorization", b"x")
    (
        re.compile(rf"""(?i)(b?(['"]){_AUTH_NAME}\2\s*[:,]\s*b?(['"])).*?\3"""),
        rf"\g<1>{MASK}\g<3>",
    ),
    (re.compile(rf"""(?i)(\b{_AUTH_NAME}\s*:\s*)[^\r\n'"]+"""), rf"\g<1>{MASK}"),
    (re.compile(rf"""(?i)([?&;]{_SENSITIVE_PARAM}=)[^&#\s'"]+"""), rf"\g<1>{MASK}"),
    # scheme://user:password@host: greedy up to the last "@" of the authority, since
    # people paste passwords with a raw "@" in them and URL parsers split at the last one.
    (re.compile(r"""(?i)(\b[a-z][a-z0-9+.-]*://[^\s/:@'"]*:)[^\s/?#'"]+@"""), rf"\g<1>{MASK}@"),
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), MASK),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"), MASK),
]


def redact(text: str) -> str:
    for value in _configured_secrets():
        text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _configured_secrets() -> list[str]:
    """Values of the settings named in RECOVERY_SECRET_SETTINGS, as written and URL-encoded."""
    try:
        names = getattr(settings, "RECOVERY_SECRET_SETTINGS", [])
    except ImproperlyConfigured:  # used outside a configured Django project
        return []
    values = {str(getattr(settings, name, "") or "") for name in names}
    values |= {quote(value, safe="") for value in values}
    # Longest first, so a secret that contains another is masked whole.
    return sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


class RedactingFilter(logging.Filter):
    """Redacts a record's message, exception text and stack before any handler formats it.

    Attach it to handlers: a filter on a logger does not see records from its children.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(_message(record))
        record.args = None
        if record.exc_info and not record.exc_text:
            # Formatters reuse a cached exc_text, so filling it here keeps the raw
            # exception text (which may quote a secret) out of every handler's output.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError, KeyError):
        # A bad format string must not make logging raise; keep the raw parts, redacted.
        return f"{record.msg} % {record.args!r}"
