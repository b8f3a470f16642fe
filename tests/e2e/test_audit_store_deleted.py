"""The audit database deleted, wiped or truncated: nothing lost silently (issue 9, "Nothing lost").

A real gateway writes to a real store; the test deletes the SQLite file while requests
flow, or wipes/truncates the store between runs, then checks the rows, /readyz, the
metric, the ERROR log and `portcullis audit verify`.
"""
from __future__ import annotations

import logging
import os
import threading

import httpx
import pytest

from tests.e2e.test_audit_ops import ENV, MSG, cli, client
from tests.support import audit_backends
from tests.support.audit_backends import BACKENDS
from tests.support.waiting import eventually


def ask(gw) -> str:
    raw = client(gw, "intern-bot").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    return raw.headers["x-request-id"]


def test_db_deleted_while_requests_flow_is_detected_reopened_and_nothing_lost(make_gateway, caplog):
    gw = make_gateway(audit__retry_interval_s=1.0)
    for _ in range(5):
        ask(gw)
    eventually(lambda: len(gw.audit_rows()) == 5, "the first rows stored")

    sent: list[tuple[str, bool]] = []  # (request id, started after the delete)
    deleted, stop, failures = threading.Event(), threading.Event(), []

    def traffic() -> None:
        while not stop.is_set():
            after = deleted.is_set()
            try:
                sent.append((ask(gw), after))
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                failures.append(repr(e))

    worker = threading.Thread(target=traffic)
    with caplog.at_level(logging.ERROR, logger="portcullis.audit"):
        worker.start()
        try:
            eventually(lambda: len(sent) >= 5, "traffic flowing")
            os.unlink(gw.audit_db)
            deleted.set()
            ready = httpx.get(gw.url + "/readyz")
            assert ready.status_code == 503, ready.text
            assert any("removed or replaced" in p for p in ready.json()["problems"]), ready.text
            eventually(lambda: sum(after for _, after in sent) >= 10, "traffic after the delete")
            # Reopened and the spool replayed into the new file: ready again.
            eventually(lambda: httpx.get(gw.url + "/readyz").status_code == 200, "ready again", timeout=20)
        finally:
            stop.set()
            worker.join(30)
    assert not failures, failures
    assert any(r.levelno == logging.ERROR and "removed or replaced" in r.getMessage() for r in caplog.records)

    total = 5 + len(sent)
    eventually(lambda: gw.audit_rows() and gw.audit_rows()[-1]["seq"] == total, "every row stored")
    rows = gw.audit_rows()
    seqs = [r["seq"] for r in rows]
    # The chain carried on in the new file (no restart at seq 1), with no row missing since.
    assert 1 < seqs[0] and seqs == list(range(seqs[0], total + 1)), seqs
    stored = {r["request_id"] for r in rows}
    assert {rid for rid, after in sent if after} <= stored
    assert all(r["prev_hash"] == p["hash"] for p, r in zip(rows, rows[1:]))
    metrics = httpx.get(gw.url + "/metrics").text
    assert "portcullis_audit_store_replaced_total 1.0" in metrics

    gw.stop()
    # What was in the deleted file is gone, and verify says so.
    bad = cli("audit", "verify", "--config", str(gw.config_path), env=ENV)
    assert bad.returncode == 1 and f"BROKEN at seq {seqs[0]}: deleted rows" in bad.stdout, bad.stdout + bad.stderr


def test_db_deleted_while_idle_is_reopened_by_the_periodic_check(make_gateway):
    gw = make_gateway(audit__retry_interval_s=0.5)
    ask(gw)
    eventually(lambda: len(gw.audit_rows()) == 1, "the row stored")
    os.unlink(gw.audit_db)
    assert httpx.get(gw.url + "/readyz").status_code == 503
    eventually(lambda: httpx.get(gw.url + "/readyz").status_code == 200, "reopened", timeout=20)
    assert gw.audit_db.exists()  # recreated by the gateway, not by a reader
    rid = ask(gw)
    assert gw.audit_row(rid)["seq"] == 2


@pytest.fixture(params=BACKENDS)
def audit_backend(request, tmp_path, loop_thread):
    b = audit_backends.backend(request.param, tmp_path)
    yield b
    loop_thread.run(b.cleanup())


def wipe(backend, loop_thread) -> None:
    if isinstance(backend, audit_backends.PostgresBackend):
        loop_thread.run(backend.sql("DELETE FROM {t}"))
    else:
        for p in backend.db.parent.glob(backend.db.name + "*"):
            p.unlink()


def test_verify_detects_a_wiped_store_with_a_new_chain_at_seq_1(audit_backend, make_gateway, loop_thread):
    first = make_gateway(**audit_backend.overrides)
    for _ in range(3):
        ask(first)
    first.stop()
    ok = cli("audit", "verify", "--config", str(first.config_path), env=ENV)
    assert ok.returncode == 0 and "chain test: 3 rows, ok" in ok.stdout, ok.stdout + ok.stderr

    wipe(audit_backend, loop_thread)
    # A writer without the chain-head file (another spool directory) starts the chain at seq 1 again.
    second = make_gateway(**audit_backend.overrides)
    rid = ask(second)
    assert second.audit_row(rid)["seq"] == 1
    second.stop()
    bad = cli("audit", "verify", "--config", str(first.config_path), env=ENV)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "chain test: 1 rows checked, BROKEN at seq 1: restarted" in bad.stdout, bad.stdout


def test_restart_after_a_wipe_carries_the_chain_on(audit_backend, make_gateway, loop_thread):
    first = make_gateway(**audit_backend.overrides)
    for _ in range(3):
        ask(first)
    first.stop()
    wipe(audit_backend, loop_thread)
    again = make_gateway(**audit_backend.overrides, audit__spool_path=str(first.settings.audit.spool_path))
    rid = ask(again)
    assert again.audit_row(rid)["seq"] == 4  # not 1: the chain-head file knows seq 3
    again.stop()
    bad = cli("audit", "verify", "--config", str(first.config_path), env=ENV)
    assert bad.returncode == 1 and "BROKEN at seq 4: deleted rows before seq 4" in bad.stdout, bad.stdout


def test_verify_detects_a_truncated_store(audit_backend, make_gateway, loop_thread):
    gw = make_gateway(**audit_backend.overrides)
    for _ in range(4):
        ask(gw)
    gw.stop()
    assert loop_thread.run(audit_backend.sql("DELETE FROM {t} WHERE seq > 2")) == 2
    bad = cli("audit", "verify", "--config", str(gw.config_path), env=ENV)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "truncated: the store ends at seq 2, the chain reached seq 4" in bad.stdout, bad.stdout


def test_verify_refuses_a_corrupt_chain_head_file(make_gateway):
    gw = make_gateway()
    ask(gw)
    gw.stop()
    heads = gw.settings.path(gw.settings.audit.spool_path + ".heads.json")
    assert '"seq":1' in heads.read_text()
    heads.write_text("{not json")
    bad = cli("audit", "verify", "--config", str(gw.config_path), env=ENV)
    assert bad.returncode == 1 and "chain-head file" in bad.stderr and "not valid JSON" in bad.stderr, bad.stderr
