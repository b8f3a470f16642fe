"""A throwaway redis-server on a free port (to kill, pause and restart), and key cleanup."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import redis

from tests.support.harness import free_socket
from tests.support.waiting import eventually


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under `prefix` (each test uses its own prefix)."""
    with redis.Redis.from_url(url) as r:
        keys = list(r.scan_iter(match=prefix.replace("[", "\\[") + "*", count=1000))
        if keys:
            r.delete(*keys)


def refusing_url(password: str = "") -> tuple[socket.socket, str]:
    """A Redis URL on a bound, never-listening port: connecting is refused while `sock` is held."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    auth = f":{password}@" if password else ""
    return sock, f"redis://{auth}127.0.0.1:{sock.getsockname()[1]}/0"


class RedisProcess:
    def __init__(self, workdir: Path, password: str | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail("redis-server is not installed (CI=true: the fleet backends must be tested)")
            pytest.skip("redis-server is not installed")
        sock = free_socket()
        self.port = sock.getsockname()[1]
        sock.close()
        self.args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir)]
        if password:
            self.args += ["--requirepass", password]
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "RedisProcess":
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        eventually(self._listening, f"redis-server to listen on port {self.port}", timeout=10)
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited ({self.proc.returncode}) on port {self.port}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server must be able to die
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
