"""Resource exhaustion over real sockets: stalled bodies (408, no audit slot held while
stalled), header limits (431), and request targets no route matches: each answered in
the surface's format with one audit row."""
from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from tests.support.harness import KEYS
from tests.support.waiting import eventually

AUTH = {"authorization": "Bearer " + KEYS["builder"]}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def connect(url: str) -> socket.socket:
    u = urlsplit(url)
    return socket.create_connection((u.hostname, u.port), timeout=30)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def raw(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(url) as sock:
        sock.sendall(request)
        return read_response(sock)


def stalled_post(path: str, *, declared: int = 100, sent: bytes = b"", extra: str = "") -> bytes:
    """A POST that declares `declared` body bytes and sends only `sent`."""
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"authorization: {AUTH['authorization']}\r\n{extra}content-length: {declared}\r\n\r\n"
            ).encode() + sent


def assert_surface_error(fmt: str, status: int, body: bytes, code: str) -> None:
    doc = orjson.loads(body)
    if fmt == "openai":
        assert doc["error"]["code"] == code and doc["error"]["request_id"], doc
    elif fmt == "anthropic":
        assert doc["type"] == "error" and doc["error"]["type"] and doc["request_id"], doc
    else:
        assert doc["jsonrpc"] == "2.0" and doc["error"]["data"]["code"] == code, doc


# ---- body timeout -------------------------------------------------------------------------

def test_stalled_clients_do_not_starve_other_agents(make_gateway):
    """More stalled bodies than audit queue slots; another agent is still served."""
    # on_full=wait: a request that needed a slot a stalled body held would wait past the client's
    # 10 s timeout; refusing instead would also fail a burst that merely outruns the 50 ms flush.
    gw = make_gateway(audit__queue_max=4, audit__on_full="wait", audit__full_wait_s=30,
                      server__body_timeout_s=60)
    stalled = [connect(gw.url) for _ in range(8)]
    try:
        for sock in stalled:
            sock.sendall(stalled_post("/v1/chat/completions", sent=b'{"model"'))
        statuses = []
        with httpx.Client(base_url=gw.url, headers=AUTH, timeout=10) as client:
            for _ in range(20):
                r = client.post("/v1/chat/completions", json=CHAT)
                statuses.append((r.status_code, r.text[:120]))
        assert all(s == 200 for s, _ in statuses), statuses
        for sock in stalled:  # still waiting for their bodies: nothing answered them
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                sock.recv(1)
    finally:
        for sock in stalled:
            sock.close()
    # The clients that gave up are audited too (499: gone before their body arrived).
    gone = eventually(lambda: len(r := gw.audit_rows("status = 499")) == 8 and r, "8 rows of 499", timeout=20)
    assert all(row["error"].startswith("client disconnected") for row in gone)


@pytest.mark.parametrize("path,fmt", [
    ("/v1/chat/completions", "openai"),
    ("/v1/messages", "anthropic"),
    ("/mcp/orders", "mcp"),
])
def test_a_body_that_never_arrives_is_a_408_audited(make_gateway, path, fmt):
    gw = make_gateway(server__body_timeout_s=0.5)
    extra = "anthropic-version: 2023-06-01\r\n" if fmt == "anthropic" else ""
    extra += "accept: application/json, text/event-stream\r\n" if fmt == "mcp" else ""
    status, headers, body = raw(gw.url, stalled_post(path, sent=b'{"x":', extra=extra))
    assert status == 408, body
    assert_surface_error(fmt, status, body, "request_timeout")
    row = gw.audit_row(headers["x-request-id"])
    assert row["status"] == 408 and row["decision"] == "error"
    assert "did not arrive within 0.5 s" in row["error"]


def test_408_rows_are_recorded_while_agents_fill_the_queue(make_gateway):
    """The row of a request refused before governed work takes a reserve slot."""
    gw = make_gateway(server__body_timeout_s=0.5, audit__queue_max=1, audit__reserve_max=4,
                      audit__on_full="refuse", upstreams__openai__read_timeout_s=10)
    slow_answers: list[httpx.Response] = []

    def slow_call() -> None:  # holds the only queue slot while the upstream takes its time
        slow_answers.append(httpx.post(gw.url + "/v1/chat/completions", json={**CHAT, "model": "fault-slow"},
                                       headers={"authorization": "Bearer " + KEYS["architect"]}, timeout=30))

    slow = threading.Thread(target=slow_call)
    slow.start()
    try:
        eventually(lambda: "portcullis_audit_queue_depth 1.0" in httpx.get(gw.url + "/metrics").text,
                   "the slow request to hold the slot")
        assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 503
        status, headers, body = raw(gw.url, stalled_post("/v1/chat/completions"))
        assert status == 408, body
    finally:
        slow.join()
    assert slow_answers[0].status_code == 200  # it held the slot all along
    assert gw.audit_row(headers["x-request-id"])["status"] == 408


# ---- header limits ------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {f"x-h-{i}": "v" for i in range(2000)},
    {"x-big": "a" * 1_000_000},
    {f"x-h-{i}": "b" * 1000 for i in range(80)},  # under the count limit, over the size limit
], ids=["2000 headers", "1 MB header", "80 KB in 80 headers"])
def test_oversized_headers_are_a_431_audited(gateway, headers):
    r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers={**AUTH, **headers}, timeout=30)
    assert r.status_code == 431, r.text
    assert_surface_error("openai", 431, r.content, "headers_too_large")
    row = gateway.audit_row(r.headers["x-request-id"])
    assert row["status"] == 431 and row["decision"] == "error" and row["agent_id"] is None


def test_headers_within_the_limits_are_served(gateway):
    extra = {f"x-h-{i}": "c" * 500 for i in range(80)}  # 80 headers, ~40 KB
    r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers={**AUTH, **extra})
    assert r.status_code == 200, r.text


def test_header_limits_are_configurable(make_gateway):
    gw = make_gateway(server__max_headers=5)
    r = httpx.get(gw.url + "/v1/models", headers={**AUTH, "anthropic-version": "2023-06-01",
                                                   **{f"x-{i}": "1" for i in range(5)}})
    assert r.status_code == 431
    assert_surface_error("anthropic", 431, r.content, "headers_too_large")


# ---- targets no route matches ---------------------------------------------------------------

@pytest.mark.parametrize("request_line", [
    "OPTIONS * HTTP/1.1",
    "GET * HTTP/1.1",
    "OPTIONS /v1/chat/completions/ HTTP/1.1",
    "GET /healthz/ HTTP/1.1",
    "POST /healthz HTTP/1.1",
    "GET http://127.0.0.1/v1/nowhere HTTP/1.1",
])
def test_odd_targets_get_an_audited_404(gateway, request_line):
    status, headers, body = raw(gateway.url, f"{request_line}\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\n\r\n".encode())
    assert status == 404, body
    assert_surface_error("openai", status, body, "unknown_route")
    row = gateway.audit_row(headers["x-request-id"])
    assert row["status"] == 404 and row["decision"] == "error"


def test_a_websocket_handshake_is_refused_and_audited(gateway):
    before = len(gateway.audit_rows("api = 'websocket'"))
    status, _, _ = raw(gateway.url, b"GET /v1/realtime HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\n"
                       b"connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       b"sec-websocket-version: 13\r\n\r\n")
    assert status == 403
    rows = eventually(lambda: len(r := gateway.audit_rows("api = 'websocket'")) > before and r, "a websocket row")
    assert rows[-1]["status"] == 403 and rows[-1]["resource_name"] == "/v1/realtime"
