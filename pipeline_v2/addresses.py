"""`daemon.http` addresses: parse "host:port" and tell loopback from the rest. Pure."""

from __future__ import annotations

import ipaddress

TOKEN_ENV = "PIPELINE_HTTP_TOKEN"


def parse_address(text: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; raises ValueError saying what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f'expected "host:port" (like "127.0.0.1:8765"), got "{text}"')
    host = host.removeprefix("[").removesuffix("]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'expected a port 0-65535 after the colon, got "{text}"')
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 / ::1; a name or 0.0.0.0 is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
