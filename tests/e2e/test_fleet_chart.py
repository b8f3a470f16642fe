"""The rendered config boots: 3 replicas from the chart's ConfigMap, command and environment.

The chart is rendered for fleet values (Redis limits, PostgreSQL audit, ConfigMap policies,
fail closed). Three `portcullis serve` subprocesses run it (tests/support/fleet.py) with a
private redis-server and a throwaway PostgreSQL database as their Secrets' values, the
chart's policies ConfigMap as a kubelet-style volume they share, and a round-robin load
balancer in front. Requests go through the balancer on a new connection each, so every
replica serves some.

The tests share one fleet (booting it is most of the cost) and run in file order: the
last four take Redis away for a while, then the replicas one by one.
"""
from __future__ import annotations

import asyncio
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import asyncpg
import httpx
import pytest

from tests.support import chart, pg
from tests.support.fleet import Fleet, policy_files, portcullis_exe
from tests.support.harness import KEYS, LoopThread
from tests.support.lb import fresh_client
from tests.support.redis_process import RedisProcess
from tests.support.services import pg_dsn, unique
from tests.support.upstream_server import UpstreamServer
from tests.support.volumes import ConfigMapVolume, edit_json
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(240)

DATA = "portcullis/config/data.json"
EMBED = {"model": "text-embedding-3-small", "input": "x"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
ROUTES = [{"match": "gpt-*", "upstream": "openai", "models": ["gpt-4o-mini"]},
          {"match": "text-embedding-*", "upstream": "openai", "models": ["text-embedding-3-small"]}]


@pytest.fixture(scope="module")
def rig(loop_thread: LoopThread, upstream: UpstreamServer,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("fleet")
    rendered = chart.render(chart.fleet_values(upstream.url, config={"routes": ROUTES}))
    volume = ConfigMapVolume(tmp / "policies")
    # The first test drives an agent into its rate limit on purpose: its 429s must not count
    # against its error budget (the lifecycle would revoke it, as configured, for the rest).
    files = edit_json(policy_files(rendered), DATA,
                      lambda d: d["lifecycle"].__setitem__("rate_limited_errors_after", 0))
    volume.write(files)
    admin_dsn, database = pg_dsn(), unique("fleet_")
    dsn = loop_thread.run(pg.create_database(admin_dsn, database))  # the Secret's pg-dsn
    redis = RedisProcess(tmp)  # private: the test stops and restarts it
    fleet = None
    try:
        redis.start()
        secrets = {"redis-url": redis.url, "pg-dsn": dsn,
                   "openai-api-key": "sk-fleet-openai-secret", "anthropic-api-key": "sk-fleet-anthropic-secret"}
        fleet = Fleet(rendered, tmp, secrets=secrets, policy_dir=volume.mount)
        fleet.start(loop_thread)
        yield {"fleet": fleet, "redis": redis, "dsn": dsn, "volume": volume, "files": files,
               "table": chart.gateway_config(rendered)["audit"]["table"], "env": fleet.replicas[0].env}
    finally:
        if fleet is not None:
            fleet.stop(loop_thread)
        redis.kill()
        loop_thread.run(pg.drop_database(admin_dsn, database))


def rows(rig: dict[str, Any], loop: LoopThread) -> dict[str, dict[str, Any]]:
    found = loop.run(pg.fetch(rig["dsn"], f'SELECT * FROM "{rig["table"]}" ORDER BY chain_id, seq'))
    return {r["request_id"]: r for r in found}


def rows_for(rig: dict[str, Any], loop: LoopThread, ids: set[str], timeout: float = 20) -> dict[str, dict[str, Any]]:
    def check() -> dict[str, dict[str, Any]] | None:
        stored = rows(rig, loop)
        return stored if ids <= set(stored) else None
    return eventually(check, f"the audit rows of {len(ids)} requests", timeout=timeout, interval=0.1)


async def send(url: str, n: int, key: str, body: dict[str, Any], concurrency: int = 6) -> list[httpx.Response | Exception]:
    """`n` POSTs through the balancer, each on a new connection."""
    path = "/v1/embeddings" if "input" in body else "/v1/chat/completions"
    gate = asyncio.Semaphore(concurrency)
    async with fresh_client(url, timeout=20, headers={"authorization": f"Bearer {key}"}) as c:
        async def one() -> httpx.Response | Exception:
            async with gate:
                try:
                    return await c.post(path, json=body)
                except httpx.HTTPError as e:
                    return e
        return await asyncio.gather(*(one() for _ in range(n)))


def verify(rig: dict[str, Any], *configs: Path) -> list[tuple[int, str, str]]:
    """`portcullis audit verify --config C` for each config, run side by side: (code, stdout, stderr)."""
    procs = [subprocess.Popen([portcullis_exe(), "audit", "verify", "--config", str(c)], env=rig["env"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=c.parent)
             for c in configs]
    done = [p.communicate(timeout=60) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, done)]


def test_the_three_replicas_together_admit_exactly_the_agents_limit(rig, loop_thread):
    fleet: Fleet = rig["fleet"]
    before = list(fleet.lb.connections)
    t0 = time.monotonic()
    got = loop_thread.run(send(fleet.url, 45, KEYS["observer"], EMBED))
    elapsed = time.monotonic() - t0
    statuses = [r.status_code for r in got]  # a transport error would fail here, naming it
    ok = statuses.count(200)
    # tier 0: 20 requests/min for the agent across the fleet (each replica alone would admit
    # 20); the shared bucket refills one every 3 s of the run.
    assert 20 <= ok <= 20 + int(elapsed / 3), (ok, elapsed)
    assert statuses.count(429) == 45 - ok
    assert all(a - b == 15 for a, b in zip(fleet.lb.connections, before))  # 45 connections, 15 each
    stored = rows_for(rig, loop_thread, {r.headers["x-request-id"] for r in got})
    mine = [stored[r.headers["x-request-id"]] for r in got]
    assert sorted(r["decision"] for r in mine) == sorted(["allow"] * ok + ["rate_limited"] * (45 - ok))
    assert {r["chain_id"] for r in mine} == {r.name for r in fleet.replicas}


def test_every_request_has_a_row_and_audit_verify_covers_every_chain(rig, loop_thread):
    fleet: Fleet = rig["fleet"]
    got = loop_thread.run(send(fleet.url, 12, KEYS["architect"], CHAT))
    assert [r.status_code for r in got] == [200] * 12
    stored = rows_for(rig, loop_thread, {r.headers["x-request-id"] for r in got})
    chains = {r["chain_id"] for r in stored.values()}
    assert chains == {r.name for r in fleet.replicas}
    # Each replica's own heads file (its chain's first and last links), and every chain in the store.
    for code, out, err in verify(rig, *(r.config for r in fleet.replicas)):
        assert code == 0 and "BROKEN" not in out, out + err
        for chain in chains:
            assert re.search(rf"^chain {chain}: \d+ rows, ok$", out, re.M), out
        assert "sk-fleet" not in out + err and rig["dsn"] not in out + err


def test_a_policy_edit_in_the_shared_volume_reaches_every_replica(rig, loop_thread):
    from adapters.policy.bundle import collect  # the revision a load of the new files computes

    fleet: Fleet = rig["fleet"]
    old = {r.revision() for r in fleet.replicas}
    assert len(old) == 1
    edited = edit_json(rig["files"], DATA,
                       lambda d: d["tiers"]["4"]["obligations"].__setitem__("requests_per_minute", 599))
    rig["volume"].write(edited)  # kubelet's ..data swap
    new = collect(rig["volume"].mount).revision
    assert new not in old
    eventually(lambda: all(r.revision() == new for r in fleet.replicas), "every replica on the new revision",
               timeout=30, interval=0.2)
    got = loop_thread.run(send(fleet.url, 6, KEYS["architect"], CHAT))
    assert [r.status_code for r in got] == [200] * 6
    stored = rows_for(rig, loop_thread, {r.headers["x-request-id"] for r in got})
    mine = [stored[r.headers["x-request-id"]] for r in got]
    assert {r["policy_revision"] for r in mine} == {new}
    assert {r["chain_id"] for r in mine} == {r.name for r in fleet.replicas}


def test_losing_redis_gives_audited_503s_and_its_return_recovers_the_fleet(rig, loop_thread):
    fleet: Fleet = rig["fleet"]
    pids = [r.proc.pid for r in fleet.replicas]
    rig["redis"].kill()
    try:
        got = loop_thread.run(send(fleet.url, 6, KEYS["architect"], CHAT))
        assert [r.status_code for r in got] == [503] * 6, [r.text for r in got]
        stored = rows_for(rig, loop_thread, {r.headers["x-request-id"] for r in got})
        mine = [stored[r.headers["x-request-id"]] for r in got]
        assert {(r["decision"], r["status"]) for r in mine} == {("error", 503)}
        assert {r["chain_id"] for r in mine} == {r.name for r in fleet.replicas}
        for replica in fleet.replicas:  # not ready, naming what is missing (a Service stops routing)
            ready = eventually(lambda r=replica: (x := httpx.get(r.url + "/readyz", timeout=5)).status_code == 503
                               and x, f"{replica.name} to report not ready", timeout=15)
            assert ready.json()["dependencies"]["redis"]["ok"] is False, ready.text
    finally:
        rig["redis"].start()  # the same port, empty, as a restarted Redis pod
    def all_admit() -> bool:
        got = loop_thread.run(send(fleet.url, 3, KEYS["architect"], CHAT))
        return [r.status_code for r in got] == [200] * 3
    eventually(all_admit, "every replica admitting again", timeout=30, interval=0.5)
    eventually(lambda: all(r.ready() for r in fleet.replicas), "every replica ready again", timeout=30)
    assert [r.proc.pid for r in fleet.replicas] == pids and all(r.alive() for r in fleet.replicas)


class Load:
    """Chat requests from 6 workers through the balancer, a new connection each, until stopped."""

    def __init__(self, fleet: Fleet, loop: LoopThread) -> None:
        self.answered: list[httpx.Response] = []
        self._stop = asyncio.Event()
        self._loop = loop
        self._task = asyncio.run_coroutine_threadsafe(self._run(fleet.url), loop.loop)

    async def _run(self, url: str) -> None:
        async with fresh_client(url, timeout=30, headers={"authorization": f"Bearer {KEYS['architect']}"}) as c:
            async def worker() -> None:
                while not self._stop.is_set():
                    try:
                        self.answered.append(await c.post("/v1/chat/completions", json=CHAT))
                    except httpx.HTTPError:
                        pass  # cut by a kill: no answer, so no promise
            await asyncio.gather(*(worker() for _ in range(6)))

    def wait_for(self, n: int, what: str) -> int:
        eventually(lambda: len(self.answered) >= n, f"{n} answers {what}", timeout=60)
        return len(self.answered)

    def stop(self) -> list[httpx.Response]:
        self._loop.loop.call_soon_threadsafe(self._stop.set)
        self._task.result(60)
        return self.answered


def test_a_replica_stopped_mid_load_loses_no_row_of_an_answered_request(rig, loop_thread):
    """SIGTERM, as Kubernetes stops a pod (rollout, eviction, scale-down): it drains and flushes."""
    fleet: Fleet = rig["fleet"]
    leaving = fleet.replicas[2]
    load = Load(fleet, loop_thread)
    try:
        load.wait_for(30, "before SIGTERM")
        leaving.terminate()
        leaving.wait()
        load.wait_for(len(load.answered) + 30, "after the replica left")
    finally:
        answered = load.stop()
    assert leaving.proc.returncode == 0, leaving.log_tail()
    assert {r.status_code for r in answered} == {200}
    stored = rows_for(rig, loop_thread, {r.headers["x-request-id"] for r in answered})
    assert leaving.name in {stored[r.headers["x-request-id"]]["chain_id"] for r in answered}


def test_a_replica_killed_mid_load_leaves_a_serving_fleet_whose_chains_verify(rig, loop_thread):
    """SIGKILL (a crash, the OOM killer): the balancer skips the dead replica, every answer after
    the kill has its row, and every chain, the victim's cut short, still verifies."""
    fleet: Fleet = rig["fleet"]
    victim, survivor = fleet.replicas[1], fleet.replicas[0]
    load = Load(fleet, loop_thread)
    try:
        load.wait_for(30, "before the kill")
        victim.kill()  # no drain, no flush
        after = len(load.answered)
        load.wait_for(after + 30, "after the kill")
    finally:
        answered = load.stop()
    assert {r.status_code for r in answered} == {200}
    rows_for(rig, loop_thread, {r.headers["x-request-id"] for r in answered[after:]})
    for code, out, err in verify(rig, survivor.config, victim.config):
        assert code == 0 and "BROKEN" not in out, out + err
        assert re.search(rf"^chain {victim.name}: \d+ rows, ok$", out, re.M), out


def test_a_replica_killed_loses_no_row_of_a_request_it_answered(rig, loop_thread):
    fleet: Fleet = rig["fleet"]
    victim = fleet.replicas[0]
    assert victim.alive()

    async def go() -> list[str]:
        conn = await asyncpg.connect(rig["dsn"], timeout=10)
        try:
            async with conn.transaction():  # the store is slow: the writer's batch waits on this lock
                await conn.execute(f'LOCK TABLE "{rig["table"]}" IN ACCESS EXCLUSIVE MODE')
                async with httpx.AsyncClient(base_url=victim.url, timeout=10,
                                             headers={"authorization": f"Bearer {KEYS['architect']}"}) as c:
                    got = [await c.post("/v1/chat/completions", json=CHAT) for _ in range(3)]
                victim.kill()
        finally:
            await conn.close()
        assert [r.status_code for r in got] == [200] * 3
        return [r.headers["x-request-id"] for r in got]

    ids = loop_thread.run(go())
    assert not set(ids) & set(rows(rig, loop_thread))  # the lock is gone, the rows were only queued
    # kubelet restarts the container on the same emptyDir: the journal there is replayed.
    victim.start()
    eventually(victim.ready, f"{victim.name} to be ready again", timeout=90, interval=0.1)
    stored = rows_for(rig, loop_thread, set(ids))
    assert {stored[i]["chain_id"] for i in ids} == {victim.name}
    assert {(stored[i]["decision"], stored[i]["status"]) for i in ids} == {("allow", 200)}
    every = loop_thread.run(pg.fetch(rig["dsn"], f'SELECT request_id FROM "{rig["table"]}"'))
    assert len(every) == len({r["request_id"] for r in every})  # none stored twice
    for code, out, err in verify(rig, victim.config):
        assert code == 0 and "BROKEN" not in out, out + err
