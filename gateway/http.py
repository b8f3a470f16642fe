"""Small pure-ASGI helpers shared by the endpoints."""
from __future__ import annotations

from typing import Any, Iterable

from gateway.errors import InvalidRequest


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def header(scope: dict[str, Any], name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


# Headers that say who is calling or what is asked: sent twice, a fronting proxy reading the
# first and the gateway reading the last would disagree, so more than one is refused.
SINGLE_HEADERS = frozenset({"authorization", "x-api-key", "x-agent-id", "host", "origin",
                            "mcp-session-id", "mcp-method"})


def headers_dict(scope: dict[str, Any]) -> dict[str, str]:
    # ASGI servers give lowercase names. Duplicates are rare: counted only when the dict is short.
    raw = scope["headers"]
    out = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}
    if len(out) != len(raw):
        names = [k.decode("latin-1") for k, _ in raw]
        twice = sorted(n for n in SINGLE_HEADERS if names.count(n) > 1)
        if twice:
            raise InvalidRequest(f"more than one {', '.join(twice)} header: send each once",
                                 code="duplicate_header", param=twice[0])
    return out


async def send_bytes(send: Any, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]],
                     content_type: bytes = b"application/json") -> None:
    hdrs = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})
