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
# Hosts whose webhook URLs carry the secret in the path (Slack, Discord, Microsoft Teams).
_WEBHOOK_HOSTS = ("hooks.slack.com", "discord.com", "discordapp.com", "webhook.office.com",
                  "outlook.office.com", "outlook.office365.com")


def is_secret_key(key: str) -> bool:
    """True when a key's name says its value is a secret."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    return any(word in _SECRET_WORDS for word in words)


def _is_webhook_host(host: str | None) -> bool:
    return bool(host) and any(host == h or host.endswith(f".{h}")  # type: ignore[union-attr]
                              for h in _WEBHOOK_HOSTS)


def redact_url(url: str, webhook: bool = False) -> str:
    """A URL with its password and query-string values masked (webhook tokens live there).

    A webhook URL (`webhook`, or an http(s) URL of a known webhook host: Slack, Discord,
    Teams) also keeps only the first segment of its path, the rest masked:
    `https://hooks.slack.com/services/***`.
    """
    try:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and (webhook or _is_webhook_host(parts.hostname)):
            first, slash, rest = parts.path.lstrip("/").partition("/")
            if rest:
                url = url.replace(f"{parts.netloc}{parts.path}",
                                  f"{parts.netloc}/{first}{slash}{MASK}", 1)
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


def _redact_match(match: re.Match[str], webhook: bool = False) -> str:
    url = match.group(0)
    core = url.rstrip(".,;:!?)]")  # punctuation after a URL belongs to the sentence
    return redact_url(core, webhook) + url[len(core):]


def _redact_text(text: str, webhook: bool = False) -> str:
    if "://" not in text:
        return text
    return _URL.sub(lambda m: _redact_match(m, webhook), text)


def redact(value: Any, key: str = "") -> Any:
    """`value` with secrets masked: values under secret-looking keys, URL passwords and queries.

    A URL under a secret key (`webhook`) keeps its scheme, host and the first segment of its
    path (so a person can tell which one it is), the rest masked; so does a URL of a known
    webhook host anywhere. A value under any other secret key is masked whole.
    """
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key) for v in value]
    if key and value is not None and is_secret_key(key):
        if isinstance(value, str) and "://" in value:
            return _redact_text(value, webhook=True)
        return MASK
    if isinstance(value, str):
        return _redact_text(value)
    return value


def redact_event(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the same redaction for every log line."""
    return redact(event_dict)  # type: ignore[no-any-return]
