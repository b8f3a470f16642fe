"""A fleet on 127.0.0.1 started from what the Helm chart renders (tests/support/chart.py).

Each replica is a real `portcullis serve --config ...` subprocess, the Deployment's own
command, with the Deployment's environment: every variable the chart takes from a Secret
gets the local service's value for that Secret key. The rendered gateway.yaml is changed
only where a pod differs from a process on a shared host: the container paths (config,
agents, policies, data) become temp dirs, and the listen port is a free one. The pod name,
which is the hostname and so the default audit chain id, becomes `audit.chain_id`.
A round-robin load balancer (tests/support/lb.py) stands in for the Service.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support import chart
from tests.support.harness import LoopThread, free_socket
from tests.support.lb import RoundRobinLB
from tests.support.waiting import eventually

Rendered = dict[str, list[dict[str, Any]]]


def portcullis_exe() -> str:
    """The console script installed beside this interpreter: the image's `portcullis`."""
    exe = Path(sys.executable).parent / "portcullis"
    assert exe.exists(), f"{exe} is missing: install the project (pip install -e .)"
    return str(exe)


@dataclass
class Replica:
    name: str
    config: Path
    port: int
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=self.config.parent, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        if not self.alive():
            raise AssertionError(f"{self.name} exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}")
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def revision(self) -> str:
        text = httpx.get(self.url + "/metrics", timeout=5).text
        m = re.search(r'portcullis_policy_info\{revision="([0-9a-f]*)"\}', text)
        assert m, f"{self.name}: no portcullis_policy_info in /metrics"
        return m.group(1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 40) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def policy_files(rendered: Rendered) -> dict[str, bytes]:
    """The chart's policies ConfigMap as the pod sees it: each key at its item's path."""
    items = next(v["configMap"]["items"] for v in chart.pod_spec(rendered)["volumes"] if v["name"] == "policies")
    data = chart.find(rendered, "ConfigMap", f"{chart.RELEASE}-policies")["data"]
    return {item["path"]: data[item["key"]].encode() for item in items}


class Fleet:
    """`replicas` gateways from one rendered chart, sharing its policy volume and agents file."""

    def __init__(self, rendered: Rendered, tmp: Path, *, secrets: dict[str, str], policy_dir: Path,
                 replicas: int = 3) -> None:
        argv = chart.gateway_argv(rendered)
        assert argv == chart.ENTRYPOINT, argv  # what the test runs is what the pod runs
        env_from = chart.gateway_env(rendered)
        missing = {key for _, key in env_from.values()} - set(secrets)
        assert not missing, f"no local value for Secret keys {sorted(missing)}"
        env = {**os.environ, **{name: secrets[key] for name, (_, key) in env_from.items()}}
        cfg = chart.gateway_config(rendered)
        agents = chart.write_agents(rendered, tmp)  # /etc/portcullis/agents/agents.yaml
        self.replicas: list[Replica] = []
        for i in range(replicas):
            name = f"portcullis-{i}"  # the pod name: its hostname, so its chain id
            home = tmp / name
            home.mkdir()
            sock = free_socket()
            port = sock.getsockname()[1]
            sock.close()
            path = chart.write_local_config({**cfg, "audit": {**cfg["audit"], "chain_id": name}}, home,
                                            policy_dir=policy_dir, agents_file=agents, port=port)
            local_argv = [portcullis_exe(), *argv[1:-1], str(path)]
            self.replicas.append(Replica(name, path, port, local_argv, env, home / "replica.log"))
        self.lb: RoundRobinLB | None = None

    @property
    def url(self) -> str:
        assert self.lb is not None
        return self.lb.url

    def start(self, loop: LoopThread) -> "Fleet":
        for r in self.replicas:
            r.start()
        try:
            for r in self.replicas:  # boot together (each compiles the policies), then wait
                eventually(r.ready, f"{r.name} to be ready", timeout=90, interval=0.1)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.logs()}") from None
        self.lb = loop.run(RoundRobinLB([r.url for r in self.replicas]).start())
        return self

    def stop(self, loop: LoopThread) -> None:
        if self.lb is not None:
            loop.run(self.lb.aclose())
        for r in self.replicas:
            r.terminate()
        for r in self.replicas:
            r.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {r.name}\n{r.log_tail()}" for r in self.replicas)
