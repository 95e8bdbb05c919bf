"""A real Redis server for the tests: Debian's ``redis-server`` on a free loopback port in a temporary folder.

The server asks for a password (it is on the URL the tests hand out), so every test also sees that the password
is masked wherever the URL could show up. Without the binary the tests that need it skip, except in CI
(``CI=true``), where ``.ci/run`` installs it (``apt-get install redis-server``): there they fail.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PASSWORD = "rd-" + secrets.token_hex(8)


def binary() -> str | None:
    return shutil.which("redis-server") or next(
        (path for path in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.path.exists(path)), None
    )


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; .ci/run installs Redis (apt-get install redis-server)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RedisServer:
    """A running ``redis-server``: its address, and what it takes to stop or restart it."""

    host: str
    port: int
    executable: str
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0, *, password: str = PASSWORD) -> str:
        return f"redis://:{password}@{self.host}:{self.port}/{db}"

    def start(self) -> None:
        command = [
            self.executable,
            *("--bind", self.host, "--port", str(self.port), "--dir", str(self.folder)),
            *("--requirepass", PASSWORD, "--save", "", "--appendonly", "no"),
            *("--daemonize", "no", "--protected-mode", "yes", "--logfile", str(self.folder / "server.log")),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_until_ready(self, self.process)

    def stop(self) -> None:
        """Gone at once, as when the Redis host dies under its clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        """Empty every database (between tests)."""
        with socket.create_connection((self.host, self.port), timeout=5) as conn:
            conn.sendall(_command("AUTH", PASSWORD) + _command("FLUSHALL"))
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = conn.recv(1024)
                if not chunk:
                    break
                answer += chunk
        if answer != b"+OK\r\n+OK\r\n":
            raise RuntimeError(f"redis FLUSHALL failed: {answer!r}")


def _command(*parts: str) -> bytes:
    encoded = [part.encode() for part in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded)


@contextlib.contextmanager
def running_server() -> Iterator[RedisServer]:
    """Start ``redis-server`` on 127.0.0.1 in a temporary folder; stop it and delete the folder afterwards."""
    executable = binary()
    if executable is None:
        unavailable("Redis is not installed (no redis-server)")
        raise AssertionError("unreachable")
    folder = Path(tempfile.mkdtemp(prefix="imagebot-redis-"))
    server = RedisServer("127.0.0.1", _free_port(), executable, folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_ready(server: RedisServer, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_file = server.folder / "server.log"
            log = log_file.read_text(errors="replace") if log_file.exists() else ""
            raise RuntimeError(f"redis-server exited: {log[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((server.host, server.port), timeout=1) as conn:
            conn.sendall(_command("AUTH", PASSWORD) + _command("PING"))
            if conn.recv(64).startswith(b"+OK"):
                return
        time.sleep(0.05)
    raise RuntimeError("redis-server did not accept connections within 20 s")
