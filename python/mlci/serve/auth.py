"""Bearer tokens, read from environment variables named in mlci.toml (never from the file itself)."""

from __future__ import annotations

import hmac
import ipaddress
import os

from mlci.errors import ConfigError


def token_from_env(var: str, key: str, source: str, *, required: bool = False) -> bytes | None:
    """The token in $var; None when var is "" or $var is unset or empty (an error when `required`)."""
    value = os.environ.get(var, "") if var else ""
    if value:
        return value.encode()
    if required:
        why = f"environment variable {var!r} is unset or empty; it must hold the bearer token"
        raise ConfigError(source, key, var, why)
    return None


def authorized(headers: list[tuple[bytes, bytes]], token: bytes | None) -> bool:
    if token is None:
        return True
    for name, value in headers:
        if name == b"authorization":
            return value[:7].lower() == b"bearer " and hmac.compare_digest(value[7:].strip(), token)
    return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
