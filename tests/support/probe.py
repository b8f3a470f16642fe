"""The bad-input probe's client side: send one request, check its answer, remember it.

`Prober` sends every probe through one shared httpx client to one gateway and checks,
per request, that the answer is not a 5xx and that an error is in the format of the
surface the path belongs to, carrying the gateway's request id. It keeps the request
ids it was given (one audit row each is checked at the end), every response body and
every credential it sent, so the suite can look for secrets afterwards.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from tests.support.harness import KEYS, PROVIDER_KEYS

# Credentials the probe invents carry this prefix, so finding one anywhere is meaningful.
FAKE_KEY_PREFIX = "pk-probe-"
LLM_SURFACES = {
    "/v1/chat/completions": "openai", "/v1/completions": "openai", "/v1/embeddings": "openai",
    "/v1/responses": "openai", "/v1/messages": "anthropic", "/v1/messages/count_tokens": "anthropic",
}


@dataclass(frozen=True)
class Probe:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()  # a tuple of pairs, so a header may repeat
    body: bytes = b""
    strict: bool = False  # the gateway itself must refuse it (4xx), never forward it
    expect: int | None = None  # the exact status issue 9 asks for, when it names one
    label: str = ""

    def describe(self) -> str:
        body = self.body if len(self.body) < 300 else self.body[:300] + b"...(%d bytes)" % len(self.body)
        return f"[{self.label}] {self.method} {self.path} headers={list(self.headers)!r} body={body!r}"


def surface_of(probe: Probe) -> str:
    """The error format the gateway must answer `probe` in."""
    path, names = probe.path.split("?")[0], {k.lower() for k, _ in probe.headers}
    if re.fullmatch(r"/mcp/[^/]+", path):
        return "mcp"
    if path in LLM_SURFACES:
        return LLM_SURFACES[path]
    if path.startswith("/v1/messages") or "anthropic-version" in names:
        return "anthropic"
    if path.startswith("/v1/models") or path.startswith("/tools/"):
        return "openai"
    return "any"  # an unknown route: OpenAI's or Anthropic's format, chosen per request


def error_problem(surface: str, body: Any, rid: str | None) -> str | None:
    """Why `body` is not an error in `surface`'s format carrying `rid` (any id when None)."""
    if surface == "any":
        problems = [error_problem(s, body, rid) for s in ("openai", "anthropic")]
        return None if None in problems else " / ".join(p for p in problems if p)
    if not isinstance(body, dict):
        return f"not a JSON object: {body!r:.200}"
    if surface == "openai":
        err = body.get("error")
        if not (isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("type"), str)):
            return f"not an OpenAI error: {body!r:.300}"
        return None if rid in (None, err.get("request_id")) else f"OpenAI error without request_id {rid}"
    if surface == "anthropic":
        err = body.get("error")
        if body.get("type") != "error" or not (isinstance(err, dict) and isinstance(err.get("type"), str)
                                               and isinstance(err.get("message"), str)):
            return f"not an Anthropic error: {body!r:.300}"
        return None if rid in (None, body.get("request_id")) else f"Anthropic error without request_id {rid}"
    return jsonrpc_error_problem(body, rid)


def jsonrpc_error_problem(body: dict[str, Any], rid: str | None) -> str | None:
    err = body.get("error")
    if body.get("jsonrpc") != "2.0" or "id" not in body or not (
            isinstance(err, dict) and isinstance(err.get("code"), int) and isinstance(err.get("message"), str)):
        return f"not a JSON-RPC error object: {body!r:.300}"
    # The gateway's own refusals carry its request id; a JSON-RPC error the MCP server
    # wrote is relayed as it is (x-request-id still names the exchange).
    data = err.get("data")
    own = -31999 <= err["code"] <= -31000 or (isinstance(data, dict) and "request_id" in data)
    if own and rid is not None and not (isinstance(data, dict) and data.get("request_id") == rid):
        return f"JSON-RPC error without the gateway's request_id {rid}: {body!r:.300}"
    return None


@dataclass
class Sent:
    probe: Probe
    status: int
    request_id: str | None
    body: bytes


# What the server layer (uvicorn's httptools parser) answers to a request line it cannot
# parse (a lower-case or unknown method): the request never reaches the app, so it has
# no request id and no audit row.
UNPARSED = (400, b"Invalid HTTP request received.")


@dataclass
class Prober:
    """One gateway, one shared client; `send` checks each answer as it comes.

    An upstream's own error (a provider's 400, a broken tool's 500) is relayed as it is:
    it need not carry the gateway's request id, and only it may be a 5xx. Such answers
    are kept in `relayed`; the audit rows must then show the upstream answered them.
    """
    base_url: str
    client: httpx.Client = field(init=False)
    sent: list[Sent] = field(default_factory=list, repr=False)
    credentials: set[str] = field(default_factory=set, repr=False)
    relayed: dict[str, str] = field(default_factory=dict, repr=False)  # request id -> what was sent

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(15.0))

    def close(self) -> None:
        self.client.close()

    def send(self, probe: Probe) -> Sent:
        for k, v in probe.headers:
            if k.lower() in ("authorization", "x-api-key") and len(v) >= 12:
                self.credentials.add(v.split(" ", 1)[-1] if k.lower() == "authorization" else v)
        req = self.client.build_request(probe.method, probe.path, content=probe.body or None,
                                        headers=list(probe.headers))
        if not probe.body and "content-length" not in req.headers and probe.method in ("POST", "PUT", "PATCH"):
            req.headers["content-length"] = "0"
        resp = self.client.send(req)
        sent = Sent(probe, resp.status_code, resp.headers.get("x-request-id"), resp.content)
        self.sent.append(sent)
        self.check(sent, resp)
        return sent

    def check(self, sent: Sent, resp: httpx.Response) -> None:
        probe, status = sent.probe, sent.status
        what = f"{probe.describe()}\n -> {status} {resp.content[:500]!r}"
        if not sent.request_id and (status, resp.content) == UNPARSED:
            return
        assert sent.request_id, f"answer without x-request-id (unaudited?): {what}"
        if status >= 500:  # only an upstream's own answer, passed on (a broken tool)
            assert sent.request_id.encode() not in resp.content, f"gateway answered 5xx: {what}"
            self.relayed[sent.request_id] = what
            return
        if probe.expect is not None:
            assert status == probe.expect, f"expected {probe.expect}: {what}"
        if probe.strict:
            assert 400 <= status < 500, f"expected a 4xx refusal: {what}"
        surface = surface_of(probe)
        if status < 400 and resp.headers.get("content-type", "").startswith("text/event-stream"):
            # The test upstream ends every stream properly: no error event may be added.
            assert surface == "mcp" or not _error_events(resp.content), f"error event in a good stream: {what}"
        if probe.method == "HEAD":
            return  # an answer to HEAD has no body to check
        if status >= 400 or (surface == "mcp" and _is_json_rpc_refusal(resp)):
            try:
                body = orjson.loads(resp.content)
            except orjson.JSONDecodeError:
                body = resp.content
            problem = error_problem(surface, body, sent.request_id)
            if problem is not None and error_problem(surface, body, None) is None:
                self.relayed[sent.request_id] = what  # the surface's shape, another id: an upstream's
                return
            assert problem is None, f"{problem}: {what}"

    def secrets(self) -> set[str]:
        return {*KEYS.values(), *PROVIDER_KEYS.values(), *self.credentials}


def _error_events(stream: bytes) -> list[bytes]:
    """The events of an SSE body that are errors, in OpenAI's ({"error"}) or Anthropic's form."""
    found = []
    for event in stream.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(ln[5:].strip() for ln in event.split(b"\n") if ln.startswith(b"data:"))
        try:
            obj = orjson.loads(data) if data and data != b"[DONE]" else None
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and (obj.get("type") == "error" or set(obj) == {"error"}):
            found.append(event)
    return found


def _is_json_rpc_refusal(resp: httpx.Response) -> bool:
    """A 200 MCP answer carrying the gateway's own refusal (-31xxx) must be well formed too."""
    if not resp.headers.get("content-type", "").startswith("application/json"):
        return False
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return False
    err = body.get("error") if isinstance(body, dict) else None
    return isinstance(err, dict) and isinstance(err.get("code"), int) and -31999 <= err["code"] <= -31000


class LogCapture(logging.Handler):
    """Every log record of the process, rendered with its extras, to look for secrets in."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("httpx", "httpcore", "hpack")):
            return  # the probe's own client
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(f"{record.name} {record.levelname} {text} {record.__dict__!r}")


def leaks(secrets: set[str], texts: list[str]) -> list[tuple[str, str]]:
    """(secret, where) for each secret found in one of `texts`."""
    return [(s, t[:300]) for t in texts for s in secrets if s in t]
