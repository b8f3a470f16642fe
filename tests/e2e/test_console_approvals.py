"""Approving a pending approval from the console (issue 13): a destructive MCP tool call by a
supervised T3 agent is refused with an approval id; the approval shows on /console/approvals
(with buttons only for a write token); approving it there lets the agent's retry through, and
the approval is audited as the admin API's `approvals.approve`."""
from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.test_lifecycle_gates import call_delete, refusal
from tests.support.admin_api import READ_TOKEN, WRITE_TOKEN, WRITER, admin_overrides
from tests.support.harness import KEYS
from tests.support.tool_configs import tools_config
from tests.support.waiting import eventually

CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


@pytest.fixture
def gw(make_gateway, upstream, orders):
    """The orders MCP server behind the gateway: `executor` deleting a customer needs approval."""
    return make_gateway(tools=tools_config(orders.url, upstream.url), **admin_overrides())


@contextlib.contextmanager
def logged_in(url: str, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/console/login", data={"token": token}, follow_redirects=False).status_code == 303
        yield c


def test_approving_from_the_console_lets_the_retry_through(loop_thread, gw) -> None:
    err = refusal(call_delete(loop_thread, gw, KEYS["executor"]), "approval_required")
    approval_id = err["data"]["approval_id"]

    with logged_in(gw.admin_url, READ_TOKEN) as reader:
        page = reader.get("/console/approvals").text
        assert f'data-approval="{approval_id}"' in page
        assert f'data-testid="approve-{approval_id}"' not in page  # no write scope, no button

    with logged_in(gw.admin_url, WRITE_TOKEN) as writer:
        page = writer.get("/console/approvals").text
        row = re.search(rf'<tr data-testid="approval-row" data-approval="{approval_id}".*?</tr>', page, re.DOTALL)
        assert row and "executor" in row.group(0) and "delete_customer" in row.group(0)
        assert f'data-testid="approve-{approval_id}"' in row.group(0)
        csrf = CSRF.search(page).group(1)
        r = writer.post(f"/console/approvals/{approval_id}/approve",
                        data={"csrf": csrf, "reason": "checked by phone", "next": "/console/approvals"})
        assert (r.status_code, r.headers["location"]) == (303, "/console/approvals")
        after = writer.get("/console/approvals").text
        assert 'data-testid="flash"' in after and f"Approval {approval_id} approved." in after
        assert f'data-approval="{approval_id}"' not in after  # no longer pending
        again = writer.post(f"/console/approvals/{approval_id}/approve", data={"csrf": csrf},
                            headers={"accept": "application/json"})
        assert again.status_code == 400  # decided already: the handler's own refusal

    done = call_delete(loop_thread, gw, KEYS["executor"], approval_id)
    assert "error" not in done and not done.get("isError"), done
    rows = eventually(lambda: gw.audit_rows("action = 'admin.approvals.approve' AND decision = 'allow'"),
                      "the approval's admin row")
    assert rows[0]["resource_name"] == approval_id
    assert json.loads(rows[0]["reasons"]) == [f"{WRITER}: approvals.approve (checked by phone)"]
