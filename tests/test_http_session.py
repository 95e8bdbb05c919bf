"""The process's HTTP session honours proxies and .netrc from the environment when there are any, and only then
(aiohttp's ``trust_env`` looks both up again, in worker threads, for every request)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from bot.bootstrap import environment_configures_http, new_http_session

PROXY_VARIABLES = ("http_proxy", "https_proxy", "ws_proxy", "wss_proxy", "all_proxy", "no_proxy", "ftp_proxy")


@pytest.fixture
def plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


async def test_without_proxies_or_netrc_the_environment_is_not_consulted(plain_environment: Path) -> None:
    assert environment_configures_http() is False
    async with new_http_session() as session:
        assert session.trust_env is False


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "HTTP_PROXY"])
async def test_a_proxy_in_the_environment_is_honoured(
    plain_environment: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "http://127.0.0.1:3128")
    assert environment_configures_http() is True
    async with new_http_session() as session:
        assert session.trust_env is True


async def test_a_netrc_file_is_honoured(plain_environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (plain_environment / ".netrc").write_text("machine example.com login a password b\n")
    assert environment_configures_http() is True
    (plain_environment / ".netrc").unlink()
    monkeypatch.setenv("NETRC", str(plain_environment / "elsewhere"))
    assert environment_configures_http() is True


async def test_requests_go_through_the_proxy_the_environment_names(
    plain_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        seen.append(str(request.url) if request.raw_path.startswith("http") else request.raw_path)
        return web.Response(text="via proxy")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        async with new_http_session() as session, session.get("http://images.invalid/v1/models") as response:
            assert await response.text() == "via proxy"
    finally:
        await runner.cleanup()
    assert seen and seen[0].endswith("/v1/models")
