"""The agents file is hot-reloaded: a key made with `keys new` works without a restart.

A running gateway watches a copy of config/agents.yaml. Writing a new key into it turns
401 into 200; removing the key again refuses it while a request it started is still in
flight (that request completes); a broken file is rejected, the previous agents stay,
and /metrics counts each outcome.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai

from tests.support.harness import KEYS, REPO
from tests.support.upstream_server import request_id
from tests.support.waiting import eventually

MSG = [{"role": "user", "content": "who am i"}]


def status(gw, key: str, model: str = "gpt-4o-mini") -> int:
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    try:
        c.chat.completions.create(model=model, messages=MSG)
    except openai.APIStatusError as e:
        return e.status_code
    return 200


def keys_new(*args: str) -> tuple[str, str]:
    """`portcullis keys new ARGS`: the key, and the agents.yaml entry it prints."""
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "new", *args], capture_output=True,
                       text=True, cwd=REPO, timeout=60, check=True)
    key = next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("key:"))
    entry = r.stdout[r.stdout.index("  - id:"):]
    return key, entry


def reloads(gw, result: str) -> float:
    line = f'portcullis_agents_reloads_total{{result="{result}"}} '
    text = httpx.get(gw.url + "/metrics").text
    return next((float(ln[len(line):]) for ln in text.splitlines() if ln.startswith(line)), 0.0)


def test_new_key_works_without_restart_and_a_broken_file_is_rejected(make_gateway, upstream, tmp_path: Path):
    agents = tmp_path / "agents.yaml"
    shutil.copy(REPO / "config" / "agents.yaml", agents)
    original = agents.read_text()
    gw = make_gateway(identity__agents_file=str(agents), identity__hot_reload=True,
                      upstreams__openai__read_timeout_s=10)
    key, entry = keys_new("--workspace", "quickstart", "--agent", "architect", "--id", "reloaded")
    assert status(gw, key) == 401

    agents.write_text(original + entry)  # the file ends with its keys: list
    eventually(lambda: status(gw, key) == 200, "the new key to be accepted")
    assert reloads(gw, "ok") >= 1

    # In flight while its key is removed: the request keeps the agent it resolved.
    rid = request_id()
    slow: dict[str, int] = {}

    def call_slow() -> None:
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)
        raw = c.chat.completions.with_raw_response.create(model="fault-slow", messages=MSG,
                                                          extra_headers={"x-request-id": rid})
        slow["status"] = raw.status_code

    t = threading.Thread(target=call_slow)
    t.start()
    eventually(lambda: upstream.received(rid), "the slow request to reach the upstream")
    agents.write_text(original)
    eventually(lambda: status(gw, key) == 401, "the removed key to be refused")
    t.join(30)
    assert slow == {"status": 200}

    ok_before = reloads(gw, "ok")
    agents.write_text(original.replace("tier: 4", "tier: 9") + entry)  # tier out of range, and a new key
    eventually(lambda: reloads(gw, "rejected") >= 1, "the broken file to be rejected and counted")
    assert status(gw, KEYS["intern-bot"]) == 200  # the previous agents stay in use
    assert status(gw, key) == 401  # nothing of the rejected file went live
    assert reloads(gw, "ok") == ok_before
