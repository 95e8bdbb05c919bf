"""Settings: packaged defaults, the operator's override file merged over them, then the environment; bad values
stop with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.redact import redact, register_secrets
from bot.settings import SettingsError, load_settings


def test_defaults_come_from_the_toml_file() -> None:
    settings = load_settings()
    assert settings.default_model == "gpt-image-2"
    assert "gpt-image-2.6-sunburst" in settings.models
    assert settings.models["gpt-image-2.5-sunburst"].qualities[-1] == "max"  # inherited through two "like"s


def test_environment_overrides_toml_with_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEBOT_DEFAULT_MODEL", "gpt-image-2.6-flare")
    monkeypatch.setenv("IMAGEBOT_LIMITS__IMAGES_PER_MINUTE", "5")
    settings = load_settings()
    assert settings.default_model == "gpt-image-2.6-flare"
    assert settings.limits.images_per_minute == 5


def test_no_key_means_offline_and_a_key_means_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().provider_name == "offline"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123456")
    assert load_settings().provider_name == "openai"
    monkeypatch.setenv("IMAGEBOT_PROVIDER", "offline")
    assert load_settings().provider_name == "offline"


def test_bad_value_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEBOT_WEB_PORT", "eighty")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = caught.value.user_message
    assert "IMAGEBOT_WEB_PORT" in message
    assert "\n" not in message


def test_unknown_default_model_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEBOT_DEFAULT_MODEL", "dall-e-4")
    with pytest.raises(SettingsError, match="IMAGEBOT_DEFAULT_MODEL"):
        load_settings()


def test_bad_base_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "api.openai.com/v1")
    with pytest.raises(SettingsError, match="OPENAI_BASE_URL"):
        load_settings()


def test_masked_view_never_shows_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-proj-supersecretvalue")
    monkeypatch.setenv("DISCORD_TOKEN", "discord-token-value-123")
    shown = " ".join(load_settings().masked().values())
    assert "supersecret" not in shown
    assert "discord-token-value" not in shown
    assert "set (24 characters)" in shown


def test_the_database_url_is_a_secret_whose_password_alone_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://imagebot:Kq7-db-pass%2Fword@db.internal:5432/imagebot?password=Zz9-query-pass"
    monkeypatch.setenv("IMAGEBOT_DATABASE_URL", url)
    settings = load_settings()
    assert settings.masked()["database_url"] == f"set ({len(url)} characters)"
    assert settings.database_passwords() == ["Kq7-db-pass/word", "Zz9-query-pass"]
    register_secrets(settings.secret_values())
    line = redact("could not post to imagebot: password Kq7-db-pass/word refused, then Zz9-query-pass")
    assert "Kq7" not in line and "Zz9" not in line
    assert line.startswith("could not post to imagebot: ")  # the URL's ordinary words stay readable


def test_a_database_url_that_is_not_postgresql_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEBOT_DATABASE_URL", "sqlite:///root:hunter2@x")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.user_message.startswith("setting IMAGEBOT_DATABASE_URL: must be a PostgreSQL URL")
    assert "hunter2" not in caught.value.user_message


def test_the_redis_url_is_a_secret_whose_password_alone_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "redis://:Rr5-redis-pass@cache.internal:6379/2"
    monkeypatch.setenv("IMAGEBOT_REDIS_URL", url)
    settings = load_settings()
    assert settings.masked()["redis_url"] == f"set ({len(url)} characters)"
    assert settings.database_passwords() == ["Rr5-redis-pass"]
    monkeypatch.setenv("IMAGEBOT_REDIS_URL", "http://:hunter2@cache")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.user_message.startswith("setting IMAGEBOT_REDIS_URL: must be a Redis URL")
    assert "hunter2" not in caught.value.user_message


async def test_the_redis_test_server_is_real_and_wants_its_password(redis_url: str) -> None:
    import redis.asyncio as redis_asyncio
    from redis.exceptions import AuthenticationError

    client = redis_asyncio.from_url(redis_url)
    try:
        assert await client.incr("imagebot:probe") == 1
        assert await client.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, "imagebot:probe", 2) == 3
    finally:
        await client.aclose()
    intruder = redis_asyncio.from_url(redis_url.replace(":rd-", ":wrong-"))
    try:
        with pytest.raises(AuthenticationError):
            await intruder.ping()
    finally:
        await intruder.aclose()


def test_missing_config_file_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("IMAGEBOT_CONFIG_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(SettingsError, match="IMAGEBOT_CONFIG_FILE"):
        load_settings()


def test_like_loop_in_model_table_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('default_model = "a"\n[models.a]\nlike = "b"\n[models.b]\nlike = "a"\n')
    monkeypatch.setenv("IMAGEBOT_CONFIG_FILE", str(config))
    with pytest.raises(SettingsError, match="loop"):
        load_settings()


def test_defaults_ship_inside_the_package_and_need_no_config_folder(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # an empty folder: no ./config/settings.toml
    settings = load_settings()
    assert settings.default_model == "gpt-image-2"
    assert settings.models["dall-e-2"].shutdown is not None


def test_override_file_merges_key_by_key_over_the_defaults(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "settings.toml").write_text(
        '[limits]\nmax_queue = 7\n[models."gpt-image-2"]\nmax_n = 3\n[models."mine"]\nlike = "gpt-image-2"\n'
    )
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.limits.max_queue == 7
    assert settings.limits.per_user_jobs == 3  # untouched key of the same table
    assert settings.models["gpt-image-2"].max_n == 3
    assert settings.models["gpt-image-2"].streaming is True  # untouched field of the same row
    assert settings.models["mine"].max_n == 3  # a new row, inheriting the overridden one
    assert "gpt-image-2.6-flare" in settings.models


def test_environment_wins_over_the_override_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "o.toml"
    config.write_text('default_model = "hq"\n')
    monkeypatch.setenv("IMAGEBOT_CONFIG_FILE", str(config))
    assert load_settings().default_model == "hq"
    monkeypatch.setenv("IMAGEBOT_DEFAULT_MODEL", "fast")
    assert load_settings().default_model == "fast"


def test_malformed_override_file_is_one_line(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "o.toml"
    config.write_text("[limits\nmax_queue = ")
    monkeypatch.setenv("IMAGEBOT_CONFIG_FILE", str(config))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.user_message.startswith("IMAGEBOT_CONFIG_FILE: cannot read")
    assert "\n" not in caught.value.user_message


def test_the_repository_example_override_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "settings.toml"
    monkeypatch.setenv("IMAGEBOT_CONFIG_FILE", str(example))
    with_example = load_settings()
    monkeypatch.delenv("IMAGEBOT_CONFIG_FILE")
    assert with_example.model_dump() == load_settings().model_dump()
