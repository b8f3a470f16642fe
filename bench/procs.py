"""Starting, pinning, probing and stopping the servers a benchmark runs.

Every server is a child process on 127.0.0.1 with its output in a log file.
Pinning uses taskset (all threads, so aiosqlite's and regorus's threads go
with the proxy); without taskset the servers simply run unpinned.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

PROXY_CPU = "0"   # the proxy under test
LOAD_CPU = "1"    # wrk and the fast upstream


def pinning_available() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start(name: str, cmd: Sequence[str], port: int, logdir: Path, *, cpus: str | None = None,
          env: dict[str, str] | None = None, cwd: Path | None = None) -> Server:
    """Spawn `cmd` (pinned to `cpus` when possible); call wait_ready() next."""
    if cpus is not None and pinning_available():
        cmd = ["taskset", "-c", cpus, *cmd]
    log = logdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    return Server(name, proc, port, log)


def wait_ready(server: Server, timeout_s: float = 60.0, path: str | None = None) -> None:
    """Until the port accepts connections (and `path` answers below 500); raise with the log tail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.5) as s:
                if path is None:
                    return
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                head = s.recv(64)
                if head.startswith(b"HTTP/1.1 ") and head[9:10] in b"234":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready after {timeout_s:.0f}s:\n{server.log_tail()}")


def stop(server: Server, timeout_s: float = 15.0) -> None:
    """SIGTERM (graceful: uvicorn flushes audit rows), then SIGKILL the process group if it lingers."""
    if server.proc.poll() is not None:
        return
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(server.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.proc.wait(5)


def pin(pid: int, cpus: str) -> None:
    """Move a running process (every thread) to `cpus`; no-op without taskset."""
    if pinning_available():
        subprocess.run(["taskset", "-a", "-cp", cpus, str(pid)], capture_output=True, check=False)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of the process plus its descendants, in MB.

    taskset execs in place, so the pid is the server itself; a server that
    forks workers (LiteLLM can) is counted with them.
    """
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += _status_kb(p, "VmHWM")
        todo += _children(p)
    return total / 1024.0


def cpu_busy(seconds: float = 0.5) -> float:
    """Fraction of all CPUs busy over `seconds` (from /proc/stat); 0.0 where unreadable.

    The benchmark machine may be shared: a busy machine makes every number noisy,
    so runs record this and warn.
    """
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals), idle
    try:
        t1, i1 = sample()
        time.sleep(seconds)
        t2, i2 = sample()
    except OSError:
        return 0.0
    return 1.0 - (i2 - i1) / max(1, t2 - t1)


def _own_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_seconds(pid: int | Sequence[int] | None) -> float:
    """User + system CPU time of a process (or of several: a fleet and its balancer) and
    their live descendants so far; 0.0 if unknown.

    CPU per request is the noise-robust measure on a shared machine: another
    process stealing the core lowers requests/s but not the proxy's CPU per
    request. Descendants count because some servers (granian) serve from a worker child.
    """
    if pid is None:
        return 0.0
    total, todo = 0.0, [pid] if isinstance(pid, int) else list(pid)
    while todo:
        p = todo.pop()
        total += _own_cpu_seconds(p)
        todo += _children(p)
    return total
