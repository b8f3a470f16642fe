"""The chart's PrometheusRule and Grafana dashboard name only series a real gateway exports.

A real gateway (fleet backends: Redis limits, PostgreSQL audit) serves a few requests of
each outcome; its /metrics is parsed with prometheus_client's exposition parser, and every
metric named in an alert or panel expression must be there, with every label it matches on.
"""
from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import pg
from tests.support.chart import find, render
from tests.support.harness import KEYS
from tests.support.services import pg_dsn, redis_url, unique
from tests.support.redis_process import delete_prefix
from tests.support.waiting import eventually

# Labels Prometheus adds from the scrape target, not the gateway.
TARGET_LABELS = {"namespace", "job", "pod", "instance"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}
_SELECTOR = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])\s*(\{[^}]*\})?(?!\s*\()")


def series(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of each vector selector in a PromQL expression.

    A small tokenizer rather than a full parser: string literals, range and subquery brackets
    and the label lists of by/without/on/ignoring/group_* are removed first; what remains that
    is an identifier not followed by "(" (a function or aggregation) is a metric name.
    """
    text = re.sub(r"\[[^\]]*\]", "", expr)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    found = []
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # matcher values; label names stay
    for m in _SELECTOR.finditer(text):
        name, matchers = m.group(1), m.group(2) or ""
        if name.lower() in _KEYWORDS:
            continue
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
        found.append((name, labels))
    return found


def test_the_tokenizer_finds_each_selector() -> None:
    expr = ('sum by (pod) (rate(portcullis_requests_total{job="x",status=~"502|504"}[5m]))'
            ' / on (pod) group_left sum(rate(other_total{a="b,c"}[1m] offset 5m)) > 0.5 * 1e3'
            ' or histogram_quantile(0.99, sum by (le) (rate(h_bucket{namespace="$namespace"}[$__rate_interval])))'
            ' and count(count by (revision) (info_metric)) > 1')
    assert series(expr) == [("portcullis_requests_total", {"job", "status"}), ("other_total", {"a"}),
                            ("h_bucket", {"namespace"}), ("info_metric", set())]


_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
             "summary": ("", "_sum", "_count"), "info": ("_info",)}


def exported(text: str) -> dict[str, set[str] | None]:
    """Sample name -> label names, from a /metrics body (counters' _total, histograms' _bucket/_sum/_count).

    A labelled metric that has not counted anything yet (no 429 so far, say) is declared by its
    HELP and TYPE lines only: its sample names are derived from its type, its labels unknown (None).
    """
    out: dict[str, set[str] | None] = {}
    for family in text_string_to_metric_families(text):
        if not family.samples:
            for suffix in _SUFFIXES.get(family.type, ()):
                out.setdefault(family.name + suffix, None)
        for s in family.samples:
            labels = out.get(s.name) or set()
            out[s.name] = labels | set(s.labels)
    return out


def problems(exprs: dict[str, str], metrics: dict[str, set[str] | None]) -> list[str]:
    out = []
    for where, expr in exprs.items():
        named = series(expr)
        if not named:
            out.append(f"{where}: names no series: {expr}")
        for name, labels in named:
            if name not in metrics:
                out.append(f"{where}: {name} is not exported")
            elif metrics[name] is not None and (missing := labels - TARGET_LABELS - metrics[name]):
                out.append(f"{where}: {name} has no label {sorted(missing)}")
    return out


def rule_exprs() -> dict[str, str]:
    rule = find(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    return {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}


def dashboard_exprs() -> dict[str, str]:
    cm = find(render({}), "ConfigMap", "portcullis-dashboard")
    dash = json.loads(cm["data"]["portcullis.json"])
    return {f"{p['title']} [{t['refId']}]": t["expr"] for p in dash["panels"] for t in p["targets"]}


@pytest.fixture
def fleet_gateway(make_gateway, loop_thread):
    url, dsn = redis_url(), pg_dsn()
    prefix, table = unique("portcullis:test:alerts:"), unique("audit_alerts_")
    gw = make_gateway(limits__backend="redis", limits__redis_url=url, limits__key_prefix=prefix,
                      audit__backend="postgres", audit__dsn=dsn, audit__table=table)
    yield gw
    gw.stop()
    loop_thread.run(pg.drop_table(dsn, table))
    delete_prefix(url, prefix)


def scrape_after_traffic(gw: Any) -> dict[str, set[str] | None]:
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        allowed = c.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {KEYS['builder']}"})
        denied = c.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {KEYS['observer']}"})
        failed = c.post("/v1/chat/completions", json={**chat, "model": "fault-500"},  # tier 4 reaches fault-*
                        headers={"Authorization": f"Bearer {KEYS['architect']}"})
        assert (allowed.status_code, denied.status_code) == (200, 403)
        assert failed.status_code >= 500
        assert c.post("/v1/chat/completions", json=chat).status_code == 401
        # Probes Redis and PostgreSQL (the dependency series); ready once the start's background
        # policy compilation no longer delays the probes past their 0.8 s.
        eventually(lambda: c.get("/readyz").status_code == 200, "the gateway ready")
        return exported(c.get("/metrics").text)


def test_every_alert_and_panel_names_real_series(fleet_gateway) -> None:
    metrics = scrape_after_traffic(fleet_gateway)
    assert "portcullis_requests_total" in metrics and "portcullis_overhead_seconds_bucket" in metrics
    alerts = rule_exprs()
    assert {"PortcullisAuditQueueNearFull", "PortcullisAuditWriteFailures", "PortcullisPolicyReloadRejected",
            "PortcullisPolicyEngineFailing", "PortcullisDenyRateHigh", "PortcullisRateLimitedHigh",
            "PortcullisUpstreamErrors", "PortcullisPolicyRevisionDrift", "PortcullisDependencyDown"} <= set(alerts)
    assert not problems(alerts, metrics), problems(alerts, metrics)
    panels = dashboard_exprs()
    assert not problems(panels, metrics), problems(panels, metrics)


def test_a_rule_naming_a_missing_series_or_label_is_caught(fleet_gateway) -> None:
    metrics = scrape_after_traffic(fleet_gateway)
    assert problems({"typo": "rate(portcullis_request_total[5m]) > 0"}, metrics)
    assert problems({"no suffix": "rate(portcullis_overhead_seconds[5m]) > 0"}, metrics)  # a histogram's name
    assert problems({"label": 'portcullis_audit_queue_depth{agent="a"} > 0'}, metrics)
    assert "portcullis_rate_limited_total" in metrics  # declared, though nothing was refused yet
    assert problems({"declared": "rate(portcullis_rate_limited[5m]) > 0"}, metrics)
    assert not problems({"ok": 'portcullis_audit_queue_depth{pod="p"} > 0'}, metrics)


def test_revision_info_is_exported_from_the_start(fleet_gateway) -> None:
    """The revision-drift alert counts portcullis_policy_info series by revision."""
    text = httpx.get(f"{fleet_gateway.url}/metrics", timeout=10).text
    info = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == "portcullis_policy_info"]
    assert len(info) == 1 and info[0].labels["revision"]
