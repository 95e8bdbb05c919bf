"""The compose files an operator starts from: one bot (docker-compose.yml) and three processes sharing PostgreSQL,
Redis and the result volume (docker-compose.scale.yml). Read as compose reads them (YAML anchors and merges),
their environment loaded through the bot's own settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices

from bot.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SINGLE, SCALE = ROOT / "docker-compose.yml", ROOT / "docker-compose.scale.yml"
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[?-][^}]*)?\}")
PASSWORDS = {"POSTGRES_PASSWORD": "pg-secret", "REDIS_PASSWORD": "rd-secret"}


def compose(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


def bots(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in config["services"].items() if service.get("image") == "imagebot"}


def interpolate(value: str) -> str:
    """${NAME:?message} as compose fills it from .env (here: made-up passwords)."""
    return _INTERPOLATION.sub(lambda found: PASSWORDS[found.group(1)], str(value))


def known_names() -> set[str]:
    """Every environment name the settings read: the upper-case aliases, and IMAGEBOT_<FIELD>."""
    names = set()
    for name, field in Settings.model_fields.items():
        names.add("IMAGEBOT_" + name.upper())
        if isinstance(field.validation_alias, AliasChoices):
            names |= {str(choice) for choice in field.validation_alias.choices if str(choice).isupper()}
    return names


def settings_of(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as patch:
        for key, value in service["environment"].items():
            patch.setenv(key, interpolate(value))
        return load_settings()


def seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


def test_the_single_bot_file_is_unchanged_one_bot() -> None:
    assert list(compose(SINGLE)["services"]) == ["imagebot"]


def test_three_processes_share_the_shards_the_database_redis_and_the_results(monkeypatch: pytest.MonkeyPatch) -> None:
    config = compose(SCALE)
    processes = bots(config)
    assert len(processes) == 3
    loaded = {name: settings_of(service, monkeypatch) for name, service in processes.items()}

    counts = {settings.discord_shard_count for settings in loaded.values()}
    assert len(counts) == 1, "every process must agree on IMAGEBOT_DISCORD_SHARD_COUNT"
    (count,) = counts
    assert count is not None
    held = [shard for settings in loaded.values() for shard in settings.discord_shards or ()]
    assert sorted(held) == list(range(count)), "each shard in exactly one process"

    databases = {settings.database_url.get_secret_value() for settings in loaded.values() if settings.database_url}
    redises = {settings.redis_url.get_secret_value() for settings in loaded.values() if settings.redis_url}
    assert len(databases) == 1 and len(redises) == 1
    database, redis = urlsplit(databases.pop()), urlsplit(redises.pop())
    postgres_env = config["services"]["postgres"]["environment"]
    assert (database.hostname, database.port, database.username) == ("postgres", 5432, postgres_env["POSTGRES_USER"])
    assert database.path == "/" + postgres_env["POSTGRES_DB"]
    assert database.password == interpolate(postgres_env["POSTGRES_PASSWORD"])
    assert (redis.hostname, redis.port) == ("redis", 6379)
    assert redis.password == interpolate(config["services"]["redis"]["environment"]["REDIS_PASSWORD"])

    for name, service in processes.items():
        settings = loaded[name]
        data_volume = next(v for v in service["volumes"] if v.endswith(":" + str(settings.data_dir)))
        assert data_volume.split(":")[0] in config["volumes"], "results on a named volume every process mounts"
        assert {dep: cond["condition"] for dep, cond in service["depends_on"].items()} == {
            "postgres": "service_healthy",
            "redis": "service_healthy",
        }
        assert seconds(service["stop_grace_period"]) >= settings.shutdown_grace + 5
        assert settings.web_host == "0.0.0.0"  # noqa: S104 - each container publishes its own port
        assert set(service["environment"]) <= known_names(), "a name the bot does not read"
    assert len({tuple(service["volumes"]) for service in processes.values()}) == 1
    ports = [port.split(":")[0] for service in processes.values() for port in service["ports"]]
    assert len(set(ports)) == 3


@pytest.mark.parametrize("service", ["postgres", "redis"])
def test_the_servers_have_official_images_healthchecks_and_volumes(service: str) -> None:
    config = compose(SCALE)
    server = config["services"][service]
    assert server["image"].split(":")[0] == service  # the Docker official image
    assert server["healthcheck"]["test"]
    assert all(volume.split(":")[0] in config["volumes"] for volume in server["volumes"])
