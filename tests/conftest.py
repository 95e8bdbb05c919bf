"""Shared test set-up: a clean environment (no real credentials ever reach a test)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.postgres import PostgresServer, running_server
from tests.redis_server import RedisServer
from tests.redis_server import running_server as running_redis

_OURS = ("OPENAI_", "IMAGEBOT_", "DISCORD_", "SLACK_")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test starts without any imagebot/OpenAI/Discord/Slack variable and outside any .env file."""
    for name in list(os.environ):
        if name.startswith(_OURS):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    yield


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A fake OpenAI Images API on 127.0.0.1 that expects the key ``DEFAULT_KEY``."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (see tests/postgres.py); skips locally without the binaries."""
    with running_server() as server:
        yield server


@pytest.fixture
async def postgres_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """The URL of a fresh, empty database on the session's server (dropped afterwards)."""
    name = "test_" + secrets.token_hex(6)
    admin = await asyncpg.connect(postgres_server.url())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield postgres_server.url(name)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real Redis server for the session (see tests/redis_server.py); skips locally without the binary."""
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL (with its password) of the session's Redis server, emptied for this test."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()  # a test that stopped it
    redis_server.flush()
    return redis_server.url()
