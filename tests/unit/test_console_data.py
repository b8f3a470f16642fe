"""The console's pure helpers (gateway/console/data.py): what a live row may carry, the error
budget bar, page cursors and the display formats."""
from __future__ import annotations

import pytest

from gateway.console import data

ROW = {"request_id": "req_1", "ts": 1_800_000_000.25, "agent_id": "builder", "action": "llm.chat",
       "resource_type": "model", "resource_name": "gpt-4o-mini", "api": "openai", "decision": "deny",
       "reasons": ["tier 2 may not use o3"], "status": 403, "latency_ms": 1.5, "upstream_ms": None,
       "policy_input": {"agent": {"id": "builder"}}, "client_ip": "10.0.0.9", "error": "echo: my prompt",
       "input_digest": "abc", "workspace": "finance"}


def test_a_live_row_carries_only_its_fields() -> None:
    out = data.live_row(ROW)
    assert set(out) == set(data.LIVE_FIELDS)
    assert "policy_input" not in out and "client_ip" not in out and "error" not in out
    assert out["reasons"] == ["tier 2 may not use o3"]
    assert data.live_row({**ROW, "reasons": '["a", "b"]'})["reasons"] == ["a", "b"]  # JSON text from a store
    assert data.live_row({**ROW, "reasons": None})["reasons"] == []


def agent(budget: dict | None, **counters: object) -> dict:
    return {"budget": budget, "counters": {"total_errors": 0, "violations": 0, "same_errors": {}, **counters}}


BUDGET = {"max_total_errors": 8, "max_same_error_repeats": 2, "max_procedure_violations": 1, "window_s": 86400}


@pytest.mark.parametrize("counters,used", [
    ({}, 0.0),
    ({"total_errors": 2}, 0.25),
    ({"total_errors": 2, "same_errors": {"deny:x": 1}}, 0.5),  # the most consumed count
    ({"violations": 1}, 1.0),
    ({"total_errors": 20}, 1.0),  # capped
])
def test_error_budget_use_is_the_most_consumed_count(counters, used) -> None:
    assert data.budget_use(agent(BUDGET, **counters)) == pytest.approx(used)


def test_no_budget_means_no_bar() -> None:
    assert data.budget_use(agent(None)) is None


@pytest.mark.parametrize("text,expected", [
    ("1800000000.25:req_1", (1800000000.25, "req_1")), ("1800000000:req_a:b", (1800000000.0, "req_a:b")),
    (None, None), ("", None), ("nonsense", None), ("x:req", None),
])
def test_cursors(text, expected) -> None:
    assert data.cursor(text) == expected


def test_formats() -> None:
    assert data.fmt_ts(1_800_000_000) == "2027-01-15 08:00:00Z"
    assert data.fmt_ts(None) == "-"
    assert data.fmt_ms(1.234) == "1.2 ms" and data.fmt_ms(None) == "-"
    assert data.fmt_pct(0.6667) == "66.7%" and data.fmt_pct(None) == "-"
    assert data.day_start(1_800_000_000.0) == 1_799_971_200.0  # midnight UTC of that day


def test_every_window_has_a_bounded_number_of_points() -> None:
    for span, bucket in data.WINDOWS.values():
        assert span % bucket == 0 and 50 <= span // bucket <= 200 and bucket % 60 == 0
