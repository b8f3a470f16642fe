"""The tracing seam: W3C traceparent parsing, exporter header secrets, and "off costs nothing"."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import ConfigError, check, load_settings
from gateway.context import Exchange
from gateway.stages.forward import timed
from gateway.tracing import NOOP, client_trace_id, parse_headers
from tests.support.harness import PROVIDER_KEYS, REPO, gateway_config

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("header,expected", [
    (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
    (f"00-{TRACE}-00f067aa0ba902b7-00", TRACE),  # not sampled by the client: still its trace
    (f" 00-{TRACE}-00f067aa0ba902b7-01 ", TRACE),
    (f"cc-{TRACE}-00f067aa0ba902b7-01-future", TRACE),  # a later version may add fields
    (f"00-{TRACE}-00f067aa0ba902b7-01-extra", None),  # version 00 has exactly four
    (f"ff-{TRACE}-00f067aa0ba902b7-01", None),  # version ff is forbidden
    (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
    (f"00-{TRACE}-{'0' * 16}-01", None),
    (f"00-{TRACE.upper()}-00f067aa0ba902b7-01", None),  # lowercase hex only
    (f"00-{TRACE[:-1]}-00f067aa0ba902b7-01", None),
    ("", None), (None, None), ("garbage", None),
])
def test_client_trace_id(header: str | None, expected: str | None) -> None:
    assert client_trace_id(header) == expected


def test_exporter_headers_format() -> None:
    assert parse_headers("Authorization=Bearer%20t0k,x-tenant = acme ,") == {
        "authorization": "Bearer t0k", "x-tenant": "acme"}
    with pytest.raises(ValueError, match="entry 2 is not key=value") as e:
        parse_headers("a=1,secretvalue")
    assert "secretvalue" not in str(e.value)


async def test_an_untraced_call_makes_no_span_and_passes_headers_on() -> None:
    ex = Exchange(request_id="r", api="openai", client_ip=None)
    headers = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
    async with timed(ex, "upstream") as t:
        assert t.span is None
        assert t.outbound(headers) is headers  # no copy: the client's header goes on as is
    assert ex.upstream_ms is not None
    with NOOP as sp:  # what an unsampled request's children get
        sp.set("portcullis.cache_hit", True)


def _config(tmp_path: Path, **tracing) -> Path:
    return gateway_config(tmp_path, "http://127.0.0.1:9", tracing=tracing)


def test_headers_env_is_resolved_and_never_shown(tmp_path: Path) -> None:
    path = _config(tmp_path, enabled=True, headers_env="OTLP_HEADERS")
    s = load_settings(path, {**PROVIDER_KEYS, "OTLP_HEADERS": "authorization=Bearer%20sekrit"})
    assert s.tracing.headers == {"authorization": "Bearer sekrit"}
    assert "sekrit" not in repr(s) and "sekrit" not in s.model_dump_json()
    with pytest.raises(ConfigError) as e:
        load_settings(path, PROVIDER_KEYS)
    assert e.value.problems == [("tracing.headers_env", "environment variable OTLP_HEADERS is not set")]
    assert ("tracing.headers_env", "environment variable OTLP_HEADERS: entry 1 is not key=value") in \
        check(path, {**PROVIDER_KEYS, "OTLP_HEADERS": "sekrit"})


def test_bad_tracing_settings_name_their_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(_config(tmp_path, sample_ratio=1.5, endpoint="localhost:4318"), PROVIDER_KEYS)
    assert {p for p, _ in e.value.problems} == {"tracing.sample_ratio", "tracing.endpoint"}


def test_off_never_imports_the_sdk(tmp_path: Path) -> None:
    """The default config builds a gateway without importing OpenTelemetry at all."""
    path = _config(tmp_path)
    code = ("import sys; from gateway.settings import load_settings; from gateway.app import create_app; "
            f"app = create_app(load_settings({str(path)!r}, {PROVIDER_KEYS!r})); "
            "assert app.state.services.tracer is None; "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_span_drops_are_logged_once_per_interval() -> None:
    import logging

    from adapters.tracing.otel import DropsLogged
    f = DropsLogged(interval_s=3600)

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("opentelemetry.sdk._shared_internal", logging.WARNING, __file__, 1, msg,
                                 ("span",), None)
    first = record("Queue full, dropping %s.")
    assert f.filter(first) and "1 span(s) dropped" in first.getMessage()
    assert [f.filter(record("Queue full, dropping %s.")) for _ in range(5)] == [False] * 5
    assert f.filter(record("Exception while exporting %s."))  # anything else passes
