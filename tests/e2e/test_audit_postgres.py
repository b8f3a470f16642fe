"""A real gateway auditing into the real PostgreSQL: SDK traffic, `portcullis audit`, an outage."""
from __future__ import annotations

import json
import time

import httpx
import orjson
import pytest

from tests.support import pg
from tests.support.harness import KEYS, PROVIDER_KEYS
from tests.support.services import pg_dsn, unique
from tests.e2e.test_audit_ops import MSG, cli, client, mixed_traffic

ENV = {"PATH": "/usr/bin:/bin", **PROVIDER_KEYS}


def until(pred, what: str):
    """Poll; pytest-timeout bounds the wait, so there is no timing threshold here."""
    while not (found := pred()):
        time.sleep(0.02)
    return found


@pytest.fixture
def pg_table(loop_thread):
    dsn, table = pg_dsn(), unique("audit_e2e_")
    yield dsn, table
    loop_thread.run(pg.drop_table(dsn, table))


@pytest.fixture
def pg_database(loop_thread):
    """A database of its own, which the test may make unavailable; dropped at the end."""
    admin, name = pg_dsn(), unique("portcullis_")
    dsn = loop_thread.run(pg.create_database(admin, name))
    yield admin, name, dsn
    loop_thread.run(pg.drop_database(admin, name))


def test_sdk_traffic_is_audited_in_postgres_and_the_cli_verifies_it(pg_table, make_gateway, loop_thread):
    dsn, table = pg_table
    gw = make_gateway(audit__backend="postgres", audit__dsn=dsn, audit__table=table)
    rids = mixed_traffic(gw)
    rows = [gw.audit_row(r) for r in rids]
    assert [(r["decision"], r["status"]) for r in rows] == [
        ("allow", 200), ("deny", 403), ("error", 401), ("allow", 500), ("error", 404)]
    deny = rows[1]
    assert json.loads(deny["reasons"]) == ["tier 1 may not use model gpt-4o"]
    assert json.loads(deny["policy_input"])["resource"] == {"type": "model", "name": "gpt-4o", "upstream": "openai"}
    assert [r["seq"] for r in gw.audit_rows()] == [1, 2, 3, 4, 5]
    gw.stop()  # flushes the queue

    dump = loop_thread.run(pg.fetch(dsn, f'SELECT t::text AS row FROM "{table}" t'))
    text = "\n".join(r["row"] for r in dump)
    for secret in [*KEYS.values(), *PROVIDER_KEYS.values(), "pk-bogus"]:
        assert secret not in text
    tail = cli("audit", "tail", "-n", "10", "--config", str(gw.config_path), env=ENV)
    assert tail.returncode == 0 and all(r in tail.stdout for r in rids), tail.stdout + tail.stderr
    ok = cli("audit", "verify", "--config", str(gw.config_path), env=ENV)
    assert ok.returncode == 0 and "chain test: 5 rows, ok" in ok.stdout, ok.stdout + ok.stderr

    def tamper(sql: str, *args) -> None:
        assert loop_thread.run(pg.execute(dsn, sql.format(t=f'"{table}"'), *args)).endswith(" 1")

    tamper("UPDATE {t} SET decision = 'allow' WHERE request_id = $1", rids[1])
    bad = cli("audit", "verify", "--config", str(gw.config_path), env=ENV)
    assert bad.returncode == 1 and f"BROKEN at seq {deny['seq']}: edited" in bad.stdout, bad.stdout + bad.stderr
    tamper("UPDATE {t} SET decision = 'deny' WHERE request_id = $1", rids[1])
    assert cli("audit", "verify", "--config", str(gw.config_path), env=ENV).returncode == 0
    tamper("DELETE FROM {t} WHERE seq = 3")
    bad = cli("audit", "verify", "--config", str(gw.config_path), env=ENV)
    assert bad.returncode == 1 and "BROKEN at seq 4: deleted rows before seq 4" in bad.stdout, bad.stdout


def test_a_client_supplied_nul_does_not_wedge_the_audit(pg_table, make_gateway):
    """PostgreSQL text refuses NUL; a 404 path or model name with one must still be stored."""
    dsn, table = pg_table
    gw = make_gateway(audit__backend="postgres", audit__dsn=dsn, audit__table=table)
    nul = httpx.get(gw.url + "/nope%00x")  # no credential needed to reach the audit
    ok = client(gw, "architect").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    row = gw.audit_row(nul.headers["x-request-id"])
    assert row["status"] == 404
    gw.audit_row(ok.headers["x-request-id"])
    gw.stop()
    r = cli("audit", "verify", "--config", str(gw.config_path), env=ENV)
    assert r.returncode == 0 and "2 rows, ok" in r.stdout, r.stdout + r.stderr
    assert "/nope\x00x" in cli("audit", "tail", "--config", str(gw.config_path), env=ENV).stdout


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
    until(lambda: len(gw.audit_rows()) == 5, "rows before the outage")
    assert httpx.get(gw.url + "/readyz").status_code == 200

    loop_thread.run(pg.set_connectable(admin, name, False))
    readyz = until(lambda: (r := httpx.get(gw.url + "/readyz")).status_code == 503 and r, "not ready")
    assert "audit store not writable" in readyz.json()["problems"]
    during = chat(20)  # still served: the rows go to the spool
    until(lambda: len(spooled(spool)) == 20, "all 20 rows spooled")
    assert [r["request_id"] for r in spooled(spool)] == during
    assert [r["seq"] for r in spooled(spool)] == list(range(6, 26))
    failures = [ln for ln in httpx.get(gw.url + "/metrics").text.splitlines()
                if ln.startswith("portcullis_audit_write_failures_total")]
    assert failures and float(failures[0].split()[-1]) >= 1

    loop_thread.run(pg.set_connectable(admin, name, True))
    until(lambda: not spool.exists(), "spool replayed")
    after = chat(5)
    until(lambda: len(gw.audit_rows()) == 30, "every row in PostgreSQL")
    assert httpx.get(gw.url + "/readyz").status_code == 200
    rows = gw.audit_rows()
    assert [r["request_id"] for r in rows] == before + during + after
    assert [r["seq"] for r in rows] == list(range(1, 31))
    assert all(r["prev_hash"] == p["hash"] for p, r in zip(rows, rows[1:]))
    gw.stop()
    r = cli("audit", "verify", "--config", str(gw.config_path), env=ENV)
    assert r.returncode == 0 and "chain test: 30 rows, ok" in r.stdout, r.stdout + r.stderr
