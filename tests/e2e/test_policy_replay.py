"""`portcullis policy replay` over an audit store filled by real SDK traffic through a real gateway,
on SQLite and on the real PostgreSQL, run as the CLI in a subprocess.

The candidate is a copy of the default policy with two known edits: tier 1 loses
`gpt-4.1-mini` (tiers add up, so every tier 1-3 agent that used it flips allow -> deny; tier 4's
`*` still reaches it) and tier 2's max_output_tokens drops (builder's other requests show as
an obligation change). The test knows exactly which recorded requests that touches.
"""
from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import anthropic
import openai
import pytest

from tests.support import audit_backends
from tests.support.audit_backends import BACKENDS
from tests.support.harness import KEYS, PROVIDER_KEYS, REPO

MSG = [{"role": "user", "content": "replay me"}]
ENV = {"PATH": "/usr/bin:/bin", **PROVIDER_KEYS}
# (agent, model, times, allowed by the default policy)
TRAFFIC = [("intern-bot", "gpt-4.1-mini", 3, True), ("intern-bot", "gpt-4o-mini", 2, True),
           ("intern-bot", "gpt-4o", 1, False), ("builder", "gpt-4.1-mini", 2, True),
           ("builder", "gpt-4o", 2, True), ("architect", "gpt-4.1-mini", 1, True),
           ("observer", "gpt-4.1-mini", 1, False)]
ROWS, INPUTS = 13, 8  # TRAFFIC plus one anthropic message; the refused credential records no input


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "policy", "replay", *args], check=False,
                          capture_output=True,
                          text=True, cwd=REPO, env=env or ENV, timeout=120)


def candidate(dst: Path) -> Path:
    shutil.copytree(REPO / "policies_rego", dst)
    data_file = dst / "portcullis" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    data["tiers"]["1"]["models"].remove("gpt-4.1-mini")
    data["tiers"]["2"]["obligations"]["max_output_tokens"] = 3072
    data_file.write_text(json.dumps(data, indent=2))
    return dst


def send_traffic(gw) -> None:
    for agent, model, times, allowed in TRAFFIC:
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[agent], max_retries=0)
        for _ in range(times):
            if allowed:
                assert c.chat.completions.create(model=model, messages=MSG).choices
            else:
                with pytest.raises(openai.PermissionDeniedError):
                    c.chat.completions.create(model=model, messages=MSG)
    a = anthropic.Anthropic(base_url=gw.url, api_key=KEYS["intern-bot"], max_retries=0)
    assert a.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=MSG).content
    with pytest.raises(openai.AuthenticationError):  # no identity, no decision: no input to replay
        openai.OpenAI(base_url=gw.url + "/v1", api_key="pk-bogus", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=MSG)


@pytest.fixture(params=BACKENDS)
def recorded(request, tmp_path, make_gateway, loop_thread):
    """A gateway's config whose audit store (SQLite or PostgreSQL) holds TRAFFIC, and the candidate."""
    b = audit_backends.backend(request.param, tmp_path)
    gw = make_gateway(**b.overrides)
    send_traffic(gw)
    gw.stop()  # flushes every row
    assert len(gw.audit_rows()) == ROWS + 1
    yield str(gw.config_path), str(candidate(tmp_path / "candidate"))
    loop_thread.run(b.cleanup())


def test_replay_finds_exactly_the_edits_changes_on_each_store(recorded):
    config, cand = recorded
    r = cli(cand, "--config", config, "--format", "json")
    assert r.returncode == 0 and r.stderr == "", r.stderr  # no TTY: no progress bar, nothing on stderr
    rep = json.loads(r.stdout)
    assert (rep["rows"], rep["inputs"], rep["rows_other_revisions"]) == (ROWS, INPUTS, 0)
    assert rep["changes"] == {"allow_to_deny": {"requests": 5, "inputs": 2},
                              "deny_to_allow": {"requests": 0, "inputs": 0},
                              "obligations": {"requests": 2, "inputs": 1},
                              "lifecycle": {"requests": 0, "inputs": 0},
                              "reasons": {"requests": 0, "inputs": 0}}
    assert rep["unchanged"] == {"requests": 6, "inputs": 5}
    assert rep["breakdown"]["agent"] == [
        {"key": "builder", "requests": 4, "inputs": 2, "allow_to_deny": {"requests": 2, "inputs": 1},
         "obligations": {"requests": 2, "inputs": 1}},
        {"key": "intern-bot", "requests": 3, "inputs": 1, "allow_to_deny": {"requests": 3, "inputs": 1}}]
    assert [(x["key"], x["requests"]) for x in rep["breakdown"]["action"]] == [("llm.chat", 7)]
    assert [(x["key"], x["requests"]) for x in rep["breakdown"]["resource"]] == [
        ("model:gpt-4.1-mini", 5), ("model:gpt-4o", 2)]
    a2d = rep["examples"]["allow_to_deny"]
    assert [(e["input"]["agent"]["id"], e["requests"]) for e in a2d] == [("intern-bot", 3), ("builder", 2)]
    assert a2d[0]["baseline"]["allow"] is True and a2d[0]["baseline"]["reasons"] == []
    assert a2d[0]["candidate"] == {"allow": False, "reasons": ["tier 1 may not use model gpt-4.1-mini"],
                                   "obligations": {"max_output_tokens": 2048, "requests_per_minute": 60,
                                                   "tokens_per_minute": 40000}}
    [ob] = rep["examples"]["obligations"]
    assert ob["input"]["resource"]["name"] == "gpt-4o" and ob["requests"] == 2
    assert (ob["baseline"]["obligations"]["max_output_tokens"], ob["candidate"]["obligations"]["max_output_tokens"]) \
        == (4096, 3072)

    # --fail-on picks which kinds fail the run; server-side filters narrow the rows.
    assert cli(cand, "--config", config, "--fail-on", "allow-to-deny").returncode == 1
    assert cli(cand, "--config", config, "--fail-on", "deny-to-allow").returncode == 0
    only = cli(cand, "--config", config, "--agent", "builder", "--action", "llm.chat", "--fail-on", "any",
               "--format", "json")
    assert only.returncode == 1, only.stderr
    rep = json.loads(only.stdout)
    assert (rep["rows"], rep["changes"]["allow_to_deny"]["requests"], rep["changes"]["obligations"]["requests"]) \
        == (4, 2, 2)
    arch = cli(cand, "--config", config, "--agent", "architect", "--fail-on", "any", "--format", "json")
    assert arch.returncode == 0 and json.loads(arch.stdout)["unchanged"] == {"requests": 1, "inputs": 1}
    old = cli(cand, "--config", config, "--until", "2000-01-01", "--format", "json")
    assert old.returncode == 0 and json.loads(old.stdout)["rows"] == 0


def test_replay_reports_as_markdown_and_table_and_against_another_baseline(recorded):
    config, cand = recorded
    md = cli(cand, "--config", config, "--format", "md", "--limit", "1", "--fail-on", "any")
    assert md.returncode == 1
    assert "| change | requests | distinct inputs |\n|---|---:|---:|\n| allow → deny | 5 | 2 |" in md.stdout
    assert "| obligations changed | 2 | 1 |" in md.stdout and "| unchanged | 6 | 5 |" in md.stdout
    assert "### By agent (requests)" in md.stdout and "| builder | 2 | 2 | 4 |" in md.stdout
    assert md.stdout.count("<details>") == 2  # --limit 1: one example per kind found
    assert "tier 1 may not use model gpt-4.1-mini" in md.stdout and "`--fail-on any`: **failed**" in md.stdout

    table = cli(cand, "--config", config)
    assert table.returncode == 0
    assert [ln.split() for ln in table.stdout.splitlines() if ln.startswith("allow -> deny")] == [
        ["allow", "->", "deny", "5", "2"]]

    # The candidate as its own baseline: nothing changes, and every row was recorded under another revision.
    same = cli(cand, "--config", config, "--baseline", cand, "--format", "json", "--fail-on", "any")
    rep = json.loads(same.stdout)
    assert same.returncode == 0 and rep["unchanged"] == {"requests": ROWS, "inputs": INPUTS}
    assert rep["rows_other_revisions"] == ROWS
    assert "13 of 13 rows were recorded under other policy revisions" in cli(
        cand, "--config", config, "--baseline", cand).stdout


def test_broken_candidate_or_bad_arguments_exit_2(tmp_path):
    broken = candidate(tmp_path / "broken")
    with (broken / "portcullis" / "tiers" / "tiers.rego").open("a") as f:
        f.write("\nbroken if {\n  x := \n}\n")
    r = cli(str(broken), "--config", "config/quickstart.yaml")
    assert r.returncode == 2 and r.stdout == ""
    assert f"candidate {broken}: portcullis/tiers/tiers.rego:79: Rego syntax error" in r.stderr, r.stderr
    bad_data = candidate(tmp_path / "bad-data")
    data_file = bad_data / "portcullis" / "config" / "data.json"
    data_file.write_text(data_file.read_text().replace('"cache_ttl_s": 60', '"cache_ttl_s": "soon"'))
    r = cli(str(bad_data), "--config", "config/quickstart.yaml")
    assert r.returncode == 2 and "portcullis/config/data.json" in r.stderr, r.stderr
    assert cli(str(tmp_path / "bad-data"), "--since", "last tuesday").returncode == 2
    assert cli(str(tmp_path / "bad-data"), "--fail-on", "sometimes").returncode == 2


def on_terminal(*args: str) -> tuple[subprocess.CompletedProcess, bytes]:
    """Run the replay with stderr on a pseudo-terminal; returns the run and what the terminal showed."""
    leader, follower = pty.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "gateway.cli", "policy", "replay", *args], check=False,
                           stdout=subprocess.PIPE,
                           stderr=follower, cwd=REPO, env={**ENV, "TERM": "xterm", "COLUMNS": "120"}, timeout=120)
    finally:
        os.close(follower)
    shown = b""
    try:
        while chunk := os.read(leader, 65536):
            shown += chunk
    except OSError:  # EIO: nothing left to read from a terminal without writers
        pass
    finally:
        os.close(leader)
    return p, shown


def test_progress_bar_only_on_a_terminal_stderr_and_not_with_quiet(recorded):
    config, cand = recorded
    p, shown = on_terminal(cand, "--config", config, "--format", "json")
    assert p.returncode == 0 and json.loads(p.stdout)["rows"] == ROWS  # stdout stays clean JSON
    assert b"evaluating distinct inputs" in shown, shown[-500:]
    p, shown = on_terminal(cand, "--config", config, "--format", "json", "--quiet")
    assert p.returncode == 0 and json.loads(p.stdout)["rows"] == ROWS and shown == b""
