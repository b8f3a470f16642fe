"""SIGKILL loses no audit row of an answered request (gateway/audit/journal.py).

`portcullis serve` runs as a subprocess, as in a pod, with an audit flush interval of 2 s so
that rows sit in the queue, not in the store, when the process is killed mid-load (the real
openai SDK, plain and streamed). Restarted on the same data directory, as kubelet restarts
the container on its emptyDir, it replays its journal: every request that got a response has
exactly one row, requests cut by the kill have an `interrupted` row, and `portcullis audit
verify` passes. For SQLite and PostgreSQL.

A last test spies on the ASGI server's side of the gateway: the row is in the journal before
the response's last body chunk is sent, so no kill can land between an answer and its row.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import orjson
import pytest

from gateway.app import create_app
from gateway.audit.journal import INTERRUPTED, journal_path
from gateway.settings import load_settings
from tests.support import pg
from tests.support.fleet import portcullis_exe
from tests.support.harness import KEYS, PROVIDER_KEYS, LoopThread, free_socket, gateway_config, serve
from tests.support.services import pg_dsn, unique
from tests.support.upstream_server import UpstreamServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(180)
MSG = [{"role": "user", "content": "one two three four five"}]


class Replica:
    """`portcullis serve --config C`; start() again after kill() is the container's restart."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.parent / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        cfg = load_settings(config, PROVIDER_KEYS)
        self.settings = cfg
        self.url = f"http://127.0.0.1:{cfg.server.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([portcullis_exe(), "serve", "--config", str(self.config)],
                                         cwd=self.config.parent, env={**os.environ, **PROVIDER_KEYS},
                                         stdout=out, stderr=subprocess.STDOUT)
        eventually(self._ready, "the gateway to be ready", timeout=120, interval=0.1)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.log.read_text(errors='replace')}")
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def one_request(url: str, i: int) -> str:
    """A chat completion, streamed every other time; the request id once the whole answer is in."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEYS["architect"], max_retries=0, timeout=30)
    if i % 2:
        with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MSG,
                                                                     stream=True) as resp:
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
            assert text
            return resp.headers["x-request-id"]
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    assert raw.parse().choices[0].message.content
    return raw.headers["x-request-id"]


def load_until_killed(replica: Replica, answers_before_kill: int) -> list[str]:
    """6 workers; SIGKILL once `answers_before_kill` answers are in; the ids of all answers."""
    answered: list[str] = []
    stop = threading.Event()

    def worker(w: int) -> None:
        i = w
        while not stop.is_set():
            try:
                answered.append(one_request(replica.url, i))
            except (openai.APIError, httpx.HTTPError):
                pass  # cut by the kill: no (whole) answer, so no promise
            i += 6

    with ThreadPoolExecutor(6) as pool:
        for w in range(6):
            pool.submit(worker, w)
        eventually(lambda: len(answered) >= answers_before_kill, "answers before the kill", timeout=60, interval=0.01)
        replica.kill()
        stop.set()
    return list(answered)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {}
        return
    dsn, table = pg_dsn(), unique("audit_kill_")
    yield {"audit__backend": "postgres", "audit__dsn": dsn, "audit__table": table}
    asyncio.run(pg.drop_table(dsn, table))


def stored(replica: Replica) -> list[dict[str, Any]]:
    audit = replica.settings.audit
    if audit.backend == "postgres":
        return asyncio.run(pg.audit_rows(audit))
    con = sqlite3.connect(replica.settings.path(audit.path))
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM audit_log ORDER BY seq")]
    finally:
        con.close()


def test_a_sigkilled_replica_restarted_on_its_data_dir_has_a_row_for_every_answer(
        tmp_path: Path, upstream: UpstreamServer, backend: dict[str, Any]) -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    config = gateway_config(tmp_path, upstream.url, server__port=port, audit__flush_interval_ms=2000,
                            audit__batch_size=10_000, **backend)
    replica = Replica(config)
    replica.start()
    try:
        answered = load_until_killed(replica, 40)
        spool = replica.settings.path(replica.settings.audit.spool_path)
        assert journal_path(spool).exists()
        before = {r["request_id"] for r in stored(replica)}
        assert not set(answered) <= before  # the kill did catch answered rows still queued
        replica.start()  # kubelet's restart: the same config and data directory
        def all_there() -> list[dict[str, Any]] | None:
            rows = stored(replica)
            return rows if set(answered) <= {r["request_id"] for r in rows} else None
        rows = eventually(all_there, "a row for every answered request", timeout=30, interval=0.2)
        ids = [r["request_id"] for r in rows]
        assert len(ids) == len(set(ids)), "a request has two rows"
        by_id = {r["request_id"]: r for r in rows}
        assert {(by_id[i]["decision"], by_id[i]["status"]) for i in answered} == {("allow", 200)}
        assert all(by_id[i]["output_tokens"] for i in answered)  # streams' usage included
        for r in rows:  # the others were cut by the kill: recorded as such, or finished unseen
            assert r["request_id"] in answered or r["error"] == INTERRUPTED or r["status"] == 200, r
        out = subprocess.run([portcullis_exe(), "audit", "verify", "--config", str(config)], cwd=tmp_path,
                             env={**os.environ, **PROVIDER_KEYS}, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "BROKEN" not in out.stdout, out.stdout + out.stderr
        assert f"{len(rows)} rows" in out.stdout, out.stdout
    finally:
        replica.stop()
    assert replica.proc is not None and replica.proc.returncode == 0
    assert not journal_path(spool).exists()  # a clean stop: everything stored, nothing to replay


def test_the_row_is_in_the_journal_before_the_last_body_chunk_is_sent(
        tmp_path: Path, loop_thread: LoopThread, upstream: UpstreamServer) -> None:
    settings = load_settings(gateway_config(tmp_path, upstream.url, audit__flush_interval_ms=3_600_000,
                                            audit__batch_size=10_000), PROVIDER_KEYS)
    journal = journal_path(settings.path(settings.audit.spool_path))
    seen: dict[str, dict[str, Any]] = {}  # request id -> its journaled row when its last chunk went out

    async def start() -> Any:
        app = create_app(settings)

        async def spy(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)
            rid = None

            async def watch(message: dict[str, Any]) -> None:
                nonlocal rid
                if message["type"] == "http.response.start":
                    rid = dict(message["headers"]).get(b"x-request-id", b"").decode()
                elif not message.get("more_body", False):
                    rows = [orjson.loads(line[1:]) for line in journal.read_bytes().splitlines()
                            if line.startswith(b"F")]
                    seen[rid] = next((r for r in rows if r["request_id"] == rid), {})
                await send(message)
            await app(scope, receive, watch)
        return await serve(spy, lifespan="on")

    served = loop_thread.run(start())
    try:
        url = served.url
        ids = [one_request(url, 0), one_request(url, 1)]  # plain, streamed
        refused = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEYS['observer']}"},
                             json={"model": "gpt-4o", "messages": MSG})
        assert refused.status_code == 403
        missing = httpx.post(url + "/v1/nothing", headers={"authorization": f"Bearer {KEYS['observer']}"})
        assert missing.status_code == 404
        for rid, status in [(ids[0], 200), (ids[1], 200), (refused.headers["x-request-id"], 403),
                            (missing.headers["x-request-id"], 404)]:
            assert seen[rid].get("status") == status, (rid, seen[rid])
        assert seen[ids[1]]["stream"] is True and seen[ids[1]]["output_tokens"]  # the stream's usage
        assert seen[refused.headers["x-request-id"]]["decision"] == "deny"
    finally:
        loop_thread.run(served.stop())
