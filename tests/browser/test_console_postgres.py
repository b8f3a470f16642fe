"""The console on the fleet's audit backend: the machine's real PostgreSQL (skipped locally when
it is absent, failed under CI=true). The decisions chart comes from the statement-level
trigger's rollup and the live stream from the (ts) index there; both are checked in the browser
with real `openai` SDK traffic, like the SQLite module (test_console.py) does."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import axe_check, screenshot
from tests.browser.console_support import (
    allowed,
    check_chart_reflects_a_burst,
    check_denial_in_live_stream,
    open_as,
    session_cookie,
)
from tests.support import pg
from tests.support.admin_api import WRITE_TOKEN, admin_overrides
from tests.support.harness import Gateway, LoopThread, gateway_config
from tests.support.services import pg_dsn, unique
from tests.support.upstream_server import UpstreamServer


@pytest.fixture(scope="module")
def gw(loop_thread: LoopThread, upstream: UpstreamServer,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    dsn, table = pg_dsn(), unique("console_audit_")
    cfg = gateway_config(tmp_path_factory.mktemp("console_pg"), upstream.url, audit__backend="postgres",
                         audit__dsn=dsn, audit__table=table, **admin_overrides())
    g = Gateway(loop_thread, cfg).start()
    try:
        yield g
    finally:
        g.stop()
        base = table[:48]  # the console's objects beside the table (adapters/audit/console_postgres.py)
        loop_thread.run(pg.execute(dsn, f'DROP TABLE IF EXISTS "{table}", "{base}_rollup", "{base}_minutes"'))
        loop_thread.run(pg.execute(dsn, f'DROP FUNCTION IF EXISTS "{base}_rollup_fn"() CASCADE'))


@pytest.fixture(scope="module")
def base(gw: Gateway) -> str:
    return gw.admin_url


@pytest.fixture(scope="module")
def writer_cookie(base: str) -> dict[str, Any]:
    return session_cookie(base, WRITE_TOKEN)


def test_postgres_decisions_chart_reflects_a_burst(gw: Gateway, base: str, page: Any,
                                                   writer_cookie: dict[str, Any]) -> None:
    assert gw.settings.audit.backend == "postgres"
    check_chart_reflects_a_burst(gw, base, page, writer_cookie, n_allow=5, n_deny=3)
    screenshot(page, "overview-postgres")
    axe_check(page)


def test_postgres_denial_appears_in_the_live_stream_within_two_seconds(gw: Gateway, base: str, page: Any,
                                                                       writer_cookie: dict[str, Any]) -> None:
    check_denial_in_live_stream(gw, base, page, writer_cookie)


def test_postgres_agents_and_agent_page_list_its_requests(gw: Gateway, base: str, page: Any,
                                                          writer_cookie: dict[str, Any]) -> None:
    rid = allowed(gw)
    gw.audit_row(rid)
    open_as(page, base, writer_cookie, "/console/agents")
    expect(page.locator("tr[data-testid='agent-row'][data-agent='intern-bot']")).to_contain_text("allow")
    open_as(page, base, writer_cookie, "/console/agents/intern-bot")
    expect(page.get_by_test_id("agent-rows")).to_contain_text("gpt-4o-mini")
