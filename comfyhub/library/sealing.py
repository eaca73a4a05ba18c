"""Host tokens sealed at rest with Fernet (AES-CBC + HMAC-SHA256, from `cryptography`).

The database holds only sealed tokens, so a dump, a copied SQLite file or the admin shows
none. The keys are settings.TOKEN_KEY (COMFYHUB_TOKEN_KEY) when set, else the key file in
the data dir; the first key seals, every key opens. They are read on every use (a few
bytes), so `rotate_token_key` run beside a live `serve` takes effect without a restart.
"""

import os
from typing import TYPE_CHECKING

from django.conf import settings

from comfyhub.config import file_token_keys, new_token_key, token_keys

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet


def keys() -> list[str]:
    if settings.TOKEN_KEY:
        return token_keys(settings.TOKEN_KEY)
    return file_token_keys(settings.TOKEN_KEY_FILE)


def ring() -> "MultiFernet":
    # Imported here, not above: every command loads this module with the models, and
    # `cryptography` costs ~15 ms that only a command touching a token should pay.
    from cryptography.fernet import Fernet, MultiFernet

    return MultiFernet([Fernet(key) for key in keys()])


def seal(value: str) -> str:
    return ring().encrypt(value.encode()).decode()


def unseal(sealed: str) -> str | None:
    """The sealed value, or None when no key opens it (the key that sealed it is gone)."""
    from cryptography.fernet import InvalidToken

    try:
        return ring().decrypt(sealed.encode()).decode()
    except InvalidToken:
        return None


def reseal(sealed: str) -> str | None:
    """The value sealed again under the first key, or None when no key opens it."""
    from cryptography.fernet import InvalidToken

    try:
        return ring().rotate(sealed.encode()).decode()
    except InvalidToken:
        return None


def keys_in_file() -> bool:
    """False when the keys live in the environment, where only the user can change them."""
    return not settings.TOKEN_KEY


def add_key() -> None:
    """Put a new key first in the key file; the old ones keep opening what they sealed."""
    write_keys([new_token_key(), *keys()])


def drop_old_keys() -> None:
    write_keys(keys()[:1])


def write_keys(new: list[str]) -> None:
    """Replace the key file whole: a reader sees the old list or the new, never a mix."""
    path = settings.TOKEN_KEY_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(new) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
