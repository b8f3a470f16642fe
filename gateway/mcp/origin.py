"""Host and Origin checks on the MCP endpoint: protection against DNS rebinding.

A web page can make a browser send requests to a gateway on localhost or on an
internal network once its own name resolves there (DNS rebinding). The browser
still sends the page's name in `Host` and the page's origin in `Origin`, so the
MCP spec has servers validate `Origin` and refuse what they do not expect.

Host entries are names (any port), `name:port`, or `*` (any host: for a gateway
behind a proxy that rewrites Host). An Origin passes when its host would pass as
a Host, or when it is listed in the allowed origins exactly (`scheme://host[:port]`,
or `*`). Requests without Origin are not from a cross-origin page and need only
pass the Host check; a request without Host (HTTP/1.0) fails it.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
_NAME = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)"
_HOST = re.compile(_NAME + r"(?::(\d{1,5}))?")
_ORIGIN = re.compile(r"(https?)://" + _NAME + r"(?::(\d{1,5}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_host(value: str) -> tuple[str, int | None] | None:
    """(name, port) of a Host header or host entry, the name lowercased; None when malformed."""
    m = _HOST.fullmatch(value.strip())
    if m is None:
        return None
    return m.group(1).lower().rstrip("."), int(m.group(2)) if m.group(2) else None


def parse_origin(value: str) -> tuple[str, str, int] | None:
    """(scheme, name, port) of an Origin, the port made explicit; None for "null" or malformed ones."""
    m = _ORIGIN.fullmatch(value.strip().lower())
    if m is None:
        return None
    scheme = m.group(1)
    return scheme, m.group(2).rstrip("."), int(m.group(3)) if m.group(3) else _DEFAULT_PORTS[scheme]


def host_entry_problem(entry: str) -> str | None:
    if entry == "*" or parse_host(entry) is not None:
        return None
    return f"{entry!r} is not a host name, name:port or *"


def origin_entry_problem(entry: str) -> str | None:
    if entry == "*" or parse_origin(entry) is not None:
        return None
    return f"{entry!r} is not an origin (scheme://host[:port]) or *"


class HostAllowlist:
    def __init__(self, hosts: Iterable[str], origins: Iterable[str] = ()) -> None:
        hosts, origins = list(hosts), list(origins)
        self._any_host = "*" in hosts
        self._any_origin = "*" in origins
        parsed = [p for p in map(parse_host, hosts) if p is not None]
        self._names = {name for name, port in parsed if port is None}
        self._name_ports = {(name, port) for name, port in parsed if port is not None}
        self._origins = {p for p in map(parse_origin, origins) if p is not None}

    def _name_allowed(self, name: str, port: int | None) -> bool:
        return self._any_host or name in self._names or (name, port) in self._name_ports

    def host_allowed(self, host: str | None) -> bool:
        parsed = parse_host(host) if host else None
        return parsed is not None and self._name_allowed(*parsed)

    def origin_allowed(self, origin: str | None) -> bool:
        if origin is None:
            return True
        parsed = parse_origin(origin)
        if parsed is None:
            return False  # "null" (sandboxed frames, file://) or garbage: never expected
        return self._any_origin or parsed in self._origins or self._name_allowed(parsed[1], parsed[2])

    def refusal(self, headers: Mapping[str, str]) -> str | None:
        """Why a request with these (lowercase-named) headers is refused, or None when it may pass."""
        host, origin = headers.get("host"), headers.get("origin")
        if not self.host_allowed(host):
            return f"Host {_show(host)} is not allowed on this endpoint"
        if not self.origin_allowed(origin):
            return f"Origin {_show(origin)} is not allowed on this endpoint"
        return None


def _show(value: str | None) -> str:
    if value is None:
        return "(none)"
    return repr(value if len(value) <= 100 and value.isprintable() else value[:100].encode("unicode_escape").decode())
