"""A real gateway auditing into the real PostgreSQL through an outage of the database.

What every audit store does end to end (SDK traffic, `portcullis audit tail/verify`,
tampering) is tested over SQLite and PostgreSQL alike in test_audit_ops.py.
"""
from __future__ import annotations

import httpx
import orjson
import pytest

from tests.e2e.test_audit_ops import ENV, MSG, cli, client
from tests.support import pg
from tests.support.services import pg_dsn, unique
from tests.support.waiting import eventually


@pytest.fixture
def pg_database(loop_thread):
    """A database of its own, which the test may make unavailable; dropped at the end."""
    admin, name = pg_dsn(), unique("portcullis_")
    dsn = loop_thread.run(pg.create_database(admin, name))
    yield admin, name, dsn
    loop_thread.run(pg.drop_database(admin, name))


def spooled(path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_database_outage_spools_every_row_then_replays_in_chain(pg_database, make_gateway, loop_thread):
    admin, name, dsn = pg_database
    gw = make_gateway(audit__backend="postgres", audit__dsn=dsn, audit__table="audit_log",
                      audit__retry_interval_s=0.05, audit__timeout_s=2)
    spool = gw.settings.path(gw.settings.audit.spool_path)
    c = client(gw, "architect")

    def chat(n: int) -> list[str]:
        return [c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
                .headers["x-request-id"] for _ in range(n)]

    before = chat(5)
    eventually(lambda: len(gw.audit_rows()) == 5, "the 5 rows before the outage")
    # Ready once the start's background policy compilation no longer delays the probes (0.8 s).
    eventually(lambda: httpx.get(gw.url + "/readyz").status_code == 200, "ready before the outage")

    loop_thread.run(pg.set_connectable(admin, name, False))
    readyz = eventually(lambda: (r := httpx.get(gw.url + "/readyz")).status_code == 503 and r, "/readyz to answer 503")
    assert "audit store not writable" in readyz.json()["problems"]
    during = chat(20)  # still served: the rows go to the spool
    eventually(lambda: len(spooled(spool)) == 20, "all 20 rows in the spool")
    assert [r["request_id"] for r in spooled(spool)] == during
    assert [r["seq"] for r in spooled(spool)] == list(range(6, 26))
    failures = [ln for ln in httpx.get(gw.url + "/metrics").text.splitlines()
                if ln.startswith("portcullis_audit_write_failures_total")]
    assert failures and float(failures[0].split()[-1]) >= 1

    loop_thread.run(pg.set_connectable(admin, name, True))
    eventually(lambda: not spool.exists(), "the spool to be replayed")
    after = chat(5)
    eventually(lambda: len(gw.audit_rows()) == 30, "all 30 rows in PostgreSQL")
    # /readyz reuses its probes for up to a second (readiness.probe_cache_s): ready again after that.
    eventually(lambda: httpx.get(gw.url + "/readyz").status_code == 200, "/readyz to answer 200 again")
    rows = gw.audit_rows()
    assert [r["request_id"] for r in rows] == before + during + after
    assert [r["seq"] for r in rows] == list(range(1, 31))
    assert all(r["prev_hash"] == p["hash"] for p, r in zip(rows, rows[1:]))
    gw.stop()
    r = cli("audit", "verify", "--config", str(gw.config_path), env=ENV)
    assert r.returncode == 0 and "chain test: 30 rows, ok" in r.stdout, r.stdout + r.stderr
