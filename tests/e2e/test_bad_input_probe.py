"""The project probes itself: over a thousand generated bad requests against one real gateway.

Every surface (OpenAI routes, Anthropic messages and count_tokens, MCP POST/GET/DELETE,
HTTP tools, models) gets hypothesis-generated malformed JSON, wrong types, odd strings,
deep nesting, wrong content types, bad and repeated credentials, odd methods and paths,
plus the fixed corpus of issue 9 (tests/support/probe_corpus.py). Each answer must be a
non-5xx, an error in the surface's own format carrying the request id (Prober.check). The
last tests check the gateway is still healthy, that each request left exactly one audit
row, and that no credential reached a row, a log line or a response body.

The examples are derandomized: CI runs the same requests every time.
"""
from __future__ import annotations

import logging
from collections import Counter
import socket
from pathlib import Path
from typing import Iterator

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support import probe_inputs as inputs
from tests.support.harness import KEYS, Gateway, LoopThread, gateway_config
from tests.support.mcp_orders_server import OrdersServer
from tests.support.probe import LogCapture, Prober, Sent, leaks
from tests.support.probe_corpus import JWT_SECRET, JWT_SETTINGS, corpus, duplicate_key_probes
from tests.support.recording_upstream import RecordingUpstream
from tests.support.tool_configs import tools_config
from tests.support.waiting import at_least, eventually

MIN_PROBES = 1000


def probing(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, database=None, deadline=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])


@pytest.fixture(scope="module")
def upstream(loop_thread: LoopThread) -> Iterator[RecordingUpstream]:
    """This module's own test upstream, keeping raw bodies (the duplicate-key check reads them)."""
    server = RecordingUpstream(slow_s=4.0)
    loop_thread.run(server.start())
    yield server
    loop_thread.run(server.stop())


@pytest.fixture(scope="module")
def probe_gateway(loop_thread: LoopThread, upstream: RecordingUpstream, orders: OrdersServer,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp: Path = tmp_path_factory.mktemp("probe")
    cfg = gateway_config(tmp, upstream.url, tools=tools_config(orders.url, upstream.url),
                         identity__jwt=JWT_SETTINGS, server__max_json_depth=inputs.MAX_DEPTH)
    gw = Gateway(loop_thread, cfg, {"PROBE_JWT_SECRET": JWT_SECRET}).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def logs() -> Iterator[LogCapture]:
    root, handler = logging.getLogger(), LogCapture()
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="module")
def prober(probe_gateway: Gateway, logs: LogCapture) -> Iterator[Prober]:
    p = Prober(probe_gateway.url)
    yield p
    p.close()


# -- generated --------------------------------------------------------------------------
# (strategy, examples): 1,150 in all, before the corpus.
GENERATED = {
    "llm_field_mutation": (inputs.llm_field_mutation(), 220),
    "llm_wrong_type_governed": (inputs.llm_wrong_type_governed(), 120),
    "malformed_json": (inputs.malformed_json(), 100),
    "deep_nesting": (inputs.deep_nesting(), 50),
    "huge_strings": (inputs.huge_strings(), 40),
    "control_names": (inputs.control_names(), 40),
    "bad_credentials": (inputs.bad_credentials(), 120),
    "wrong_content_type": (inputs.wrong_content_type(), 60),
    "odd_routes": (inputs.odd_routes(), 120),
    "mcp_messages": (inputs.mcp_messages(), 150),
    "mcp_get_delete": (inputs.mcp_get_delete(), 40),
    "http_tool_calls": (inputs.http_tool_calls(), 50),
    "models_requests": (inputs.models_requests(), 40),
}


def _generated_test(strategy: st.SearchStrategy, n: int):  # type: ignore[no-untyped-def]
    @probing(n)
    @given(probe=strategy)
    def test(prober: Prober, probe: inputs.Probe) -> None:
        prober.send(probe)
    return test


for _name, (_strategy, _n) in GENERATED.items():
    globals()[f"test_generated_{_name}"] = _generated_test(_strategy, _n)


# -- the fixed corpus --------------------------------------------------------------------

@pytest.mark.parametrize("probe", corpus(), ids=lambda p: p.label)
def test_corpus(prober: Prober, probe: inputs.Probe) -> None:
    prober.send(probe)


@pytest.mark.parametrize("probe,marker", duplicate_key_probes(), ids=lambda x: getattr(x, "label", x))
def test_duplicate_keys_never_forward_an_undecided_value(prober: Prober, probe_gateway: Gateway,
                                                         upstream: RecordingUpstream, probe: inputs.Probe,
                                                         marker: str) -> None:
    """Refused, or forwarded so that any upstream reads the model the policy decided on."""
    sent = prober.send(probe)
    if sent.status >= 400:
        return
    decided = probe_gateway.audit_row(sent.request_id)["resource_name"]
    [seen] = upstream.body_with(marker.encode())
    assert seen.count(b'"model"') == 1, f"forwarded with a repeated key: {seen!r}"
    assert orjson.loads(seen)["model"] == decided


def test_tools_call_notification_is_governed(prober: Prober, probe_gateway: Gateway, orders: OrdersServer) -> None:
    """A tools/call without an id is decided like a call: intern-bot may not delete customers."""
    before = len(orders.executed)
    body = b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_customer","arguments":{"customer":"x"}}}'
    sent = prober.send(inputs.Probe("POST", "/mcp/orders", (inputs.auth("intern-bot"), inputs.JSON_CT,
                                                            inputs.MCP_ACCEPT,
                                                            ("mcp-protocol-version", "2026-07-28")), body))
    row = probe_gateway.audit_row(sent.request_id)
    # Refused outright (400), or decided like a call (deny): never an mcp.notify passed on.
    assert row["action"] == "tool.call" and (row["decision"] == "deny" or 400 <= sent.status < 500), row
    assert [e for e in orders.executed[before:] if e[0] == "delete_customer"] == []


def raw_request(url: str, head: bytes) -> tuple[int, dict[str, str]]:
    """Send a request line httpx cannot (`OPTIONS *`); the status and headers of the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line, *lines = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    return int(status_line.split()[1]), {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def test_options_star_is_answered_and_audited(prober: Prober, probe_gateway: Gateway) -> None:
    status, headers = raw_request(probe_gateway.url, b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                     b"Connection: close\r\n\r\n")
    assert status < 500 and "x-request-id" in headers, (status, headers)
    prober.sent.append(Sent(inputs.Probe("OPTIONS", "*", label="options-star"), status, headers["x-request-id"], b""))
    probe_gateway.audit_row(headers["x-request-id"])


# -- afterwards ---------------------------------------------------------------------------

def test_zz_gateway_still_healthy(prober: Prober, probe_gateway: Gateway) -> None:
    assert len(prober.sent) >= MIN_PROBES, f"only {len(prober.sent)} probes were sent"
    statuses = Counter(s.status for s in prober.sent)
    print(f"\n{len(prober.sent)} probes; statuses {sorted(statuses.items())}; {len(prober.relayed)} upstream errors")
    assert httpx.get(probe_gateway.url + "/healthz").status_code == 200
    assert httpx.get(probe_gateway.url + "/readyz").status_code == 200
    ok = httpx.post(probe_gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEYS['executor']}"},
                    json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "still there?"}]})
    assert ok.status_code == 200, ok.text
    prober.sent.append(Sent(inputs.Probe("POST", "/v1/chat/completions", label="health"), ok.status_code,
                            ok.headers["x-request-id"], ok.content))


def test_zz_one_audit_row_per_request(prober: Prober, probe_gateway: Gateway) -> None:
    ids = [s.request_id for s in prober.sent if s.request_id]  # not the requests uvicorn refused
    assert len(set(ids)) == len(ids), "a request id was given twice"
    rows = eventually(at_least(len(ids), probe_gateway.audit_rows), f"{len(ids)} audit rows", timeout=30)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["request_id"]] = counts.get(r["request_id"], 0) + 1
    missing = [s.probe.describe() for s in prober.sent if s.request_id and counts.get(s.request_id, 0) == 0]
    doubled = {rid: n for rid, n in counts.items() if n != 1}
    assert not missing, f"{len(missing)} requests without an audit row, e.g. {missing[:3]}"
    assert not doubled, f"request ids with more than one row: {list(doubled.items())[:5]}"
    extra = set(counts) - set(ids)
    assert not extra, f"rows for requests the probe did not send: {sorted(extra)[:5]}"
    by_id = {r["request_id"]: r for r in rows}
    # An error without the gateway's request id must be an upstream's, passed on.
    not_relayed = [what for rid, what in prober.relayed.items() if by_id[rid]["upstream_ms"] is None]
    assert not not_relayed, f"errors without the request id that no upstream wrote: {not_relayed[:3]}"


def test_zz_no_secret_anywhere(prober: Prober, probe_gateway: Gateway, logs: LogCapture) -> None:
    secrets = prober.secrets()
    rows = [orjson.dumps(r, default=str).decode() for r in probe_gateway.audit_rows()]
    bodies = [s.body.decode("utf-8", "replace") for s in prober.sent]
    assert len(logs.lines) > 0  # the capture works: refusals are logged at DEBUG
    for where, texts in (("audit rows", rows), ("logs", logs.lines), ("response bodies", bodies)):
        found = leaks(secrets, texts)
        assert not found, f"secrets in {where}: {found[:3]}"
