"""The chart's report CronJob, run for real: its command, config and Secret environment as
rendered, against a throwaway PostgreSQL database holding the fleet's lifecycle and audit data.

Like the fleet test, only container paths are mapped to local ones (tests/support/chart.py).
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from adapters.lifecycle.postgres import PostgresLifecycleStore
from gateway.lifecycle.events import GovernanceEvents
from gateway.settings import load_settings
from tests.support import chart, pg
from tests.support.fleet import portcullis_exe
from tests.support.services import pg_dsn, redis_url, unique

pytestmark = pytest.mark.timeout(180)


def job_container(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    cron = chart.find(rendered, "CronJob")
    [c] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return c


async def test_the_cronjob_command_builds_and_stores_a_report(tmp_path: Path) -> None:
    rendered = chart.render(chart.fleet_values(report={"enabled": True, "period": "7d", "format": "md"}))
    c = job_container(rendered)
    admin_dsn, database = pg_dsn(), unique("report_")
    dsn = await pg.create_database(admin_dsn, database)
    try:
        secrets = {"pg-dsn": dsn, "redis-url": redis_url(), "openai-api-key": "sk-report-openai-secret",
                   "anthropic-api-key": "sk-report-anthropic-secret"}
        env = {e["name"]: secrets[e["valueFrom"]["secretKeyRef"]["key"]] for e in c["env"]}
        config = chart.write_local_config(chart.gateway_config(rendered), tmp_path, policy_dir=chart.CHART / "policies",
                                          agents_file=chart.write_agents(rendered, tmp_path))
        settings = load_settings(config, env)

        # What the fleet recorded this week: governance events in the lifecycle store.
        store = PostgresLifecycleStore(settings.lifecycle)
        await store.start()
        try:
            events = GovernanceEvents(store, settings.lifecycle)
            await events.start()
            events.emit("agent.revoked", "CRITICAL", agent_id="billing-bot", workspace="finance",
                        details={"category": "security"})
            events.emit("agent.revoked", "HIGH", agent_id="billing-bot", workspace="finance",
                        details={"category": "security"})
            events.emit("approval.requested", "MEDIUM", agent_id="billing-bot", workspace="finance")
            await events.aclose()

            argv = [portcullis_exe(), *(str(config) if a == chart.CONFIG_PATH else a for a in c["args"])]
            assert c["command"] == ["portcullis"] and "--direct" in argv
            started = time.time()
            done = await asyncio.to_thread(
                subprocess.run, argv, capture_output=True, text=True, timeout=120,
                env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env})
            assert done.returncode == 0, done.stderr
            out = done.stdout
            assert out.startswith("# Portcullis governance report")
            # 25 + 15 + 5 = 45 security risk for billing-bot: above 40, so it is named.
            assert "Review agents with security risk > 40: billing-bot." in out
            assert "| billing-bot | 45 | 45 | 0 | 0 | 0 |" in out
            for secret in secrets.values():  # neither the DSN nor any key reaches the output
                assert secret not in out and secret not in done.stderr
            [stored] = await store.reports()
            assert stored.period_end >= started and stored.period_end - stored.period_start == 7 * 86400
            assert stored.body["events"]["total"] == 3
        finally:
            await store.aclose()
    finally:
        await pg.drop_database(admin_dsn, database)
