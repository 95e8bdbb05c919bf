"""A real PostgreSQL server for the tests: Debian's binaries, a throw-away cluster on a free loopback port.

PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres`` system user (the
Debian package creates it). Without the binaries the tests that need the server skip, except in CI
(``CI=true``), where ``.ci/run`` installs them: there they fail.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
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

USER = "imagebot"
PASSWORD = "pg-" + secrets.token_hex(8)  # a password on the URL, so the tests see it masked everywhere
_INITDB_OPTIONS = ("-A", "scram-sha-256", "-E", "UTF8", "--no-sync")
# a throw-away cluster: durability off for speed
_SERVER_OPTIONS = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]


def binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``postgres``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; .ci/run installs PostgreSQL (apt-get install postgresql)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_owner(command: list[str]) -> list[str]:
    """Run as the ``postgres`` user when we are root (PostgreSQL will not run as root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class PostgresServer:
    """A running cluster: its address, and what it takes to stop or restart it."""

    host: str
    port: int
    bin_dir: Path
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@{self.host}:{self.port}/{database}"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def start(self) -> None:
        with open(self.folder / "server.log", "ab") as server_log:  # the child keeps its own copy of the handle
            server = subprocess.Popen(
                _as_owner(
                    [
                        *(str(self.bin_dir / "postgres"), "-D", str(self.data)),
                        *("-h", self.host, "-p", str(self.port), "-k", str(self.folder)),
                        *_SERVER_OPTIONS,
                    ]
                ),
                stdout=subprocess.DEVNULL,
                stderr=server_log,
            )
        self.process = server
        _wait_until_ready(self, server)

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as when a database server restarts under a client."""
        subprocess.run(
            _as_owner([str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30"]),
            check=True,
            capture_output=True,
        )
        if self.process is not None:
            self.process.wait(timeout=30)  # runuser, once postgres has gone

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def running_server() -> Iterator[PostgresServer]:
    """initdb into a temporary folder, start ``postgres`` on 127.0.0.1, stop and delete it afterwards."""
    bin_dir = binaries()
    if bin_dir is None:
        unavailable("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)")
        raise AssertionError("unreachable")
    folder = Path(tempfile.mkdtemp(prefix="imagebot-pg-"))  # not under pytest's 0700 root-only folders
    password_file = folder / "password"
    password_file.write_text(PASSWORD)
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in (folder, password_file):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    server = PostgresServer("127.0.0.1", _free_port(), bin_dir, folder)
    try:
        subprocess.run(
            _as_owner(
                [
                    *(str(bin_dir / "initdb"), "-D", str(server.data), "-U", USER),
                    *(f"--pwfile={password_file}", *_INITDB_OPTIONS),
                ]
            ),
            check=True,
            capture_output=True,
        )
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_ready(server: PostgresServer, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (server.folder / "server.log").read_text(errors="replace")
            raise RuntimeError(f"postgres exited: {log[-2000:]}")
        probe = [str(server.bin_dir / "pg_isready"), "-h", server.host, "-p", str(server.port), "-q"]
        if subprocess.run(probe, check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("postgres did not accept connections within 30 s")
