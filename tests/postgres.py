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


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int

    def url(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@{self.host}:{self.port}/{database}"


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


@contextlib.contextmanager
def running_server() -> Iterator[PostgresServer]:
    """initdb into a temporary folder, start ``postgres`` on 127.0.0.1, stop and delete it afterwards."""
    bin_dir = binaries()
    if bin_dir is None:
        unavailable("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)")
        raise AssertionError("unreachable")
    folder = Path(tempfile.mkdtemp(prefix="imagebot-pg-"))  # not under pytest's 0700 root-only folders
    data, password_file = folder / "data", folder / "password"
    password_file.write_text(PASSWORD)
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in (folder, password_file):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    subprocess.run(
        _as_owner(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={password_file}", *_INITDB_OPTIONS]
        ),
        check=True,
        capture_output=True,
    )
    with open(folder / "server.log", "wb") as server_log:  # the child keeps its own copy of the handle
        server = subprocess.Popen(
            _as_owner(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-k",
                    str(folder),
                    *_SERVER_OPTIONS,
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=server_log,
        )
    try:
        _wait_until_ready(bin_dir, port, server, folder)
        yield PostgresServer("127.0.0.1", port)
    finally:
        server.terminate()  # SIGTERM: "smart" shutdown, waits for clients; the tests have closed theirs
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_ready(bin_dir: Path, port: int, server: subprocess.Popen[bytes], folder: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"postgres exited: {(folder / 'server.log').read_text(errors='replace')[-2000:]}")
        ready = subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"], check=False
        ).returncode
        if ready == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("postgres did not accept connections within 30 s")
