"""One redaction function for logs, notifications and `config show`: secrets never leave."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

MASK = "***"
# A key names a secret when one of its words is one of these (`http_token`, `apiKey`, `password`).
_SECRET_WORDS = {"token", "secret", "password", "passwd", "key", "apikey", "authorization",
                 "auth", "credential", "credentials", "webhook"}
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")


def is_secret_key(key: str) -> bool:
    """True when a key's name says its value is a secret."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    return any(word in _SECRET_WORDS for word in words)


def redact_url(url: str) -> str:
    """A URL with its password and query-string values masked (webhook tokens live there)."""
    try:
        parts = urlsplit(url)
        # Edit the original text in place: urlunsplit drops the empty host of `sqlite:///x.db`
        # (`sqlite:/x.db`) and turns `sqlite:////abs/x.db` into host `abs`.
        if parts.password is not None:
            netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
            url = url.replace(parts.netloc, netloc, 1)
        if parts.query:
            query = urlencode([(k, MASK) for k, _ in parse_qsl(parts.query,
                                                                keep_blank_values=True)],
                              safe="*")
            url = url.replace(f"?{parts.query}", f"?{query}", 1)
        return url
    except ValueError:
        return MASK


def redact_secret_url(url: str) -> str:
    """A URL stored under a secret key (a webhook): scheme, host and the path's first segment
    kept, the rest of the path masked too (Slack, Discord and Teams put the token there)."""
    url = redact_url(url)
    try:
        path = urlsplit(url).path
    except ValueError:
        return MASK
    first, _, rest = path.lstrip("/").partition("/")
    if not rest:
        return url
    return url.replace(path, f"/{first}/{MASK}", 1)


def _redact_match(match: re.Match[str]) -> str:
    url = match.group(0)
    core = url.rstrip(".,;:!?)]")  # punctuation after a URL belongs to the sentence
    return redact_url(core) + url[len(core):]


def _redact_text(text: str) -> str:
    return _URL.sub(_redact_match, text) if "://" in text else text


def redact(value: Any, key: str = "") -> Any:
    """`value` with secrets masked: values under secret-looking keys, URL passwords and queries.

    A URL under a secret key (a webhook) keeps its scheme, host and first path segment (so a
    person can tell which one it is) and nothing after; any other value under a secret key is
    masked whole.
    """
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key) for v in value]
    if key and value is not None and is_secret_key(key):
        if isinstance(value, str) and _URL.fullmatch(value.strip()):
            return redact_secret_url(value.strip())
        return MASK
    if isinstance(value, str):
        return _redact_text(value)
    return value


def redact_event(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the same redaction for every log line."""
    return redact(event_dict)  # type: ignore[no-any-return]
