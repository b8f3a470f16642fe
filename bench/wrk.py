"""Driving wrk: make sure it is installed, run one scenario, parse what it prints.

Each scenario is a Lua script in bench/lua/ with report.lua appended, so wrk
ends with one `@@BENCH {json}` line; the human summary wrk prints is parsed
as a fallback (and is what `parse` is tested on).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

LUA_DIR = Path(__file__).resolve().parent / "lua"
SCENARIOS = ("chat", "stream", "deny_mix", "cold_mix")


class WrkUnavailable(RuntimeError):
    """wrk is missing and could not be installed."""


def ensure_wrk() -> str:
    """Path to wrk, installing it with apt-get when missing (needs root)."""
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise WrkUnavailable("wrk is not installed and cannot be installed automatically "
                             "(needs root and apt-get); install it with: apt-get install -y wrk")
    print("wrk not found: installing it with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "wrk"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        # The package lists may be missing or stale on a fresh machine.
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise WrkUnavailable(f"apt-get install wrk failed: {r.stderr.strip()[-500:]}")
    found = shutil.which("wrk")
    if not found:
        raise WrkUnavailable("apt-get reported success but wrk is still not on PATH")
    return found


@dataclass
class WrkResult:
    requests: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    status_errors: int = 0   # HTTP status >= 400 (wrk: "Non-2xx or 3xx responses")
    socket_errors: dict[str, int] = field(default_factory=dict)
    cpu_us_per_req: float | None = None  # the server's CPU per request, when measured

    @property
    def non2xx_share(self) -> float:
        return self.status_errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"requests": self.requests, "rps": round(self.rps, 1), "p50_ms": round(self.p50_ms, 3),
                "p90_ms": round(self.p90_ms, 3), "p99_ms": round(self.p99_ms, 3),
                "mean_ms": round(self.mean_ms, 3), "non2xx": self.status_errors,
                "socket_errors": sum(self.socket_errors.values()),
                "cpu_us_per_req": None if self.cpu_us_per_req is None else round(self.cpu_us_per_req, 1)}


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(output: str) -> WrkResult:
    """Parse wrk's stdout: the @@BENCH line when present, else wrk's own summary."""
    r = WrkResult()
    bench = re.search(r"^@@BENCH (\{.*\})$", output, re.M)
    if bench:
        d = json.loads(bench.group(1))
        r.requests, r.duration_s = d["requests"], d["duration_us"] / 1e6
        r.rps = r.requests / r.duration_s if r.duration_s else 0.0
        r.p50_ms, r.p90_ms, r.p99_ms = d["p50_us"] / 1e3, d["p90_us"] / 1e3, d["p99_us"] / 1e3
        r.mean_ms = d["mean_us"] / 1e3
        r.status_errors = d["status_errors"]
        r.socket_errors = {k: d[k + "_errors"] for k in ("connect", "read", "write")}
        r.socket_errors["timeout"] = d["timeouts"]
        return r
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", output)
    if not m:
        raise ValueError("wrk output has no request count:\n" + output[-2000:])
    r.requests, r.duration_s = int(m.group(1)), _ms(m.group(2)) / 1e3
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    r.rps = float(rps.group(1)) if rps else r.requests / max(r.duration_s, 1e-9)
    for pct, attr in (("50", "p50_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        pm = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", output, re.M)
        if pm:
            setattr(r, attr, _ms(pm.group(1)))
    lat = re.search(r"^\s+Latency\s+(\S+)", output, re.M)
    if lat:
        r.mean_ms = _ms(lat.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    r.status_errors = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sock:
        r.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups())))
    return r


def script_path(scenario: str, workdir: Path) -> Path:
    """The scenario's Lua with report.lua appended, written into `workdir`."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
    out = workdir / f"{scenario}.lua"
    if not out.exists():
        out.write_text((LUA_DIR / f"{scenario}.lua").read_text() + "\n"
                       + (LUA_DIR / "report.lua").read_text())
    return out


def run(url: str, scenario: str, *, duration_s: float, connections: int, workdir: Path,
        env: dict[str, str] | None = None, cpus: str | None = None, threads: int = 1,
        server_pid: int | Sequence[int] | None = None) -> WrkResult:
    """One wrk run against `url`, pinned to `cpus` (e.g. "1") when taskset exists.

    With `server_pid`, the server's CPU time over the run is divided by the
    requests served (cpu_us_per_req).
    """
    from bench.procs import cpu_seconds  # noqa: PLC0415
    wrk = ensure_wrk()
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency",
           "--timeout", "10s", "-s", str(script_path(scenario, workdir)), url]
    if cpus is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", cpus, *cmd]
    cpu0 = cpu_seconds(server_pid)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=duration_s + 60)
    cpu = cpu_seconds(server_pid) - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    result = parse(proc.stdout)
    if server_pid is not None and result.requests:
        result.cpu_us_per_req = cpu / result.requests * 1e6
    return result
