"""POST a run's verdict as JSON to a webhook whose URL comes from an environment variable.

The URL may carry a secret (a token in the path or query, user:password): nothing here ever returns it.
`shown(url)` is all a log may print (scheme and host), and error texts are scrubbed of the URL. A failure is
reported to the caller, never raised: a webhook that is down must not turn a good run into a failed one.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Delivery:
    sent: bool
    message: str  # for the log: names the variable and the scheme+host only


def shown(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


def post(env_name: str, payload: dict[str, Any]) -> Delivery:
    """Send `payload` to the URL in `$env_name`; a Delivery says what happened, in words safe to log."""
    url = os.environ.get(env_name, "").strip()
    if not url:
        return Delivery(False, f"${env_name} is not set: no verdict sent")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Delivery(False, f"${env_name} does not hold an http(s) URL: no verdict sent")
    where = shown(url)
    body = json.dumps(_finite(payload), sort_keys=True, allow_nan=False).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "mlci-periodic"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
            return Delivery(True, f"verdict sent to {where} (HTTP {answer.status})")
    except urllib.error.HTTPError as exc:
        why = f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        why = str(exc.reason)
    except (OSError, ValueError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    return Delivery(False, f"POST to {where} failed: {_scrub(why, url, parts)}")


def _scrub(text: str, url: str, parts: urllib.parse.SplitResult) -> str:
    """Remove the URL and every secret-bearing piece of it from an error text."""
    for secret in sorted({url, parts.netloc, parts.path, parts.query, parts.password or ""}, key=len, reverse=True):
        if secret and secret not in ("/", parts.hostname):
            text = text.replace(secret, "<redacted>")
    return text


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: send null for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
